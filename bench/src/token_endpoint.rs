//! A tiny OAuth token endpoint on 127.0.0.1 for the daemon to call: HTTP/1.1
//! with keep-alive, answers every `POST` with a fresh bearer token valid for
//! an hour, and counts the requests it served (the cached phase must cause
//! exactly one). It also notes whether the client authenticated with HTTP
//! Basic, as `client_secret_basic` requires.

use anyhow::{Context, Result};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Bounds on what one request may send.
const MAX_HEAD: usize = 16 * 1024;
const MAX_BODY: usize = 16 * 1024;

#[derive(Default)]
pub struct Counters {
    /// Token requests answered with a token.
    pub served: AtomicU64,
    /// Every one of them carried `Authorization: Basic …` and
    /// `grant_type=client_credentials`.
    pub all_basic_cc: AtomicBool,
}

pub struct TokenEndpoint {
    pub url: String,
    pub counters: Arc<Counters>,
}

impl TokenEndpoint {
    /// Listens on an ephemeral loopback port; serves on the current runtime.
    pub async fn start() -> Result<TokenEndpoint> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("failed to bind the token endpoint")?;
        let url = format!("http://{}/oauth/token", listener.local_addr()?);
        let counters = Arc::new(Counters {
            all_basic_cc: AtomicBool::new(true),
            ..Counters::default()
        });
        let c = Arc::clone(&counters);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(connection(stream, Arc::clone(&c)));
            }
        });
        Ok(TokenEndpoint { url, counters })
    }

    pub fn served(&self) -> u64 {
        self.counters.served.load(Ordering::SeqCst)
    }
}

/// The token the n-th request gets: `bench-` and 64 hex digits, a typical
/// opaque-token length.
pub fn token_for(n: u64) -> String {
    format!("bench-{n:064x}")
}

async fn connection(mut stream: TcpStream, counters: Arc<Counters>) {
    let mut buf = Vec::with_capacity(4096);
    loop {
        // Head: up to the blank line.
        let head_end = loop {
            if let Some(i) = find(&buf, b"\r\n\r\n") {
                break i + 4;
            }
            if buf.len() > MAX_HEAD || !read_more(&mut stream, &mut buf).await {
                return;
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let header = |name: &str| {
            head.lines()
                .filter_map(|l| l.split_once(':'))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case(name))
                .map(|(_, v)| v.trim().to_owned())
        };
        let body_len: usize = header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if body_len > MAX_BODY {
            return;
        }
        while buf.len() < head_end + body_len {
            if !read_more(&mut stream, &mut buf).await {
                return;
            }
        }
        let body = String::from_utf8_lossy(&buf[head_end..head_end + body_len]).into_owned();
        let basic = header("authorization").is_some_and(|v| v.starts_with("Basic "));
        if !basic || !body.contains("grant_type=client_credentials") {
            counters.all_basic_cc.store(false, Ordering::SeqCst);
        }
        buf.drain(..head_end + body_len);

        let n = counters.served.fetch_add(1, Ordering::SeqCst) + 1;
        let json = format!(
            "{{\"access_token\":\"{}\",\"token_type\":\"Bearer\",\"expires_in\":3600}}",
            token_for(n)
        );
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nCache-Control: no-store\r\nContent-Length: {}\r\n\r\n{json}",
            json.len()
        );
        if stream.write_all(response.as_bytes()).await.is_err() {
            return;
        }
    }
}

async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 4096];
    match stream.read(&mut chunk).await {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
