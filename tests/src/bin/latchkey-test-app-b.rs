//! App B of the access-policy tests: another program than app A (see
//! `latchkey_tests::app`).
fn main() -> std::process::ExitCode {
    latchkey_tests::app::main("app-b")
}
