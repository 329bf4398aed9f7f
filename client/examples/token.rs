//! Prints when a credential's access token expires, using the async client.
//!
//! Run with: `cargo run -p latchkey-client --example token -- NAME`

use latchkey_client::{Client, ErrorKind};
use secrecy::ExposeSecret;

#[tokio::main]
async fn main() {
    let name = std::env::args().nth(1).unwrap_or_else(|| "github".into());
    let result = async {
        let mut client = Client::connect().await?;
        client.token(&name).await
    }
    .await;
    match result {
        Ok(token) => {
            // Hand the token to the resource server; never log it.
            let _authorization = format!("Bearer {}", token.access_token.expose_secret());
            match token.expires_at {
                Some(at) => {
                    let left = at - latchkey_client::unix_now();
                    println!(
                        "{name}: {} token, expires at {at} (Unix time, in {left} s)",
                        token.token_type
                    );
                }
                None => println!(
                    "{name}: {} token; the provider did not say when it expires",
                    token.token_type
                ),
            }
        }
        Err(e) if e.kind() == Some(ErrorKind::ReauthRequired) => {
            eprintln!("{e}");
            std::process::exit(6);
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
