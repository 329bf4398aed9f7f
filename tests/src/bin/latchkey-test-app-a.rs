//! App A of the access-policy tests (see `latchkey_tests::app`).
fn main() -> std::process::ExitCode {
    latchkey_tests::app::main("app-a")
}
