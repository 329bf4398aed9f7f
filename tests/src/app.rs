//! The tiny apps of the access-policy tests (`src/bin/latchkey-test-app-*`):
//! each asks the daemon for a token of the credential named by its first
//! argument, as an app would, through the client library (which presents
//! `LATCHKEY_APP_KEY` when it is set). Prints `ok NAME` or the error kind
//! on stdout, the message on stderr; exits 0 or 1.

use latchkey_client::blocking::Client;

/// Runs the app called `name`.
pub fn main(name: &str) -> std::process::ExitCode {
    let Some(credential) = std::env::args().nth(1) else {
        eprintln!("usage: {name} CREDENTIAL");
        return std::process::ExitCode::from(2);
    };
    let result = Client::connect().and_then(|mut c| c.token(&credential));
    match result {
        Ok(_) => {
            println!("ok {name}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            println!("{}", e.kind().map_or("client_error", |k| k.as_str()));
            eprintln!("{name}: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
