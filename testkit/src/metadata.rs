//! A static-document HTTP server on 127.0.0.1 for discovery tests: each
//! `GET` of a registered path gets its JSON document, anything else a 404.
//! One request per connection (`Connection: close`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// 16 KiB: a GET request line and headers are far smaller.
const MAX_HEAD: usize = 16 * 1024;

/// Serves the documents (path → JSON body) that `make` returns for the
/// server's base URL (`http://127.0.0.1:PORT`: documents name their own
/// issuer) on an ephemeral loopback port, on the current runtime; returns
/// the base URL.
pub async fn serve(make: impl FnOnce(&str) -> Vec<(String, String)>) -> std::io::Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr: SocketAddr = listener.local_addr()?;
    let base = format!("http://{addr}");
    let documents: Arc<HashMap<String, String>> = Arc::new(make(&base).into_iter().collect());
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let documents = Arc::clone(&documents);
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut chunk = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_HEAD {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&chunk[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&head);
                let path = head.split_whitespace().nth(1).unwrap_or_default();
                let (status, body) = match documents.get(path) {
                    Some(body) => ("200 OK", body.as_str()),
                    None => ("404 Not Found", ""),
                };
                let response = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
            });
        }
    });
    Ok(base)
}
