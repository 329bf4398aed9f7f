//! Part 1, the floor: a bare Unix-socket request→reply server in this
//! process, on its own multi-thread tokio runtime (as the daemon has), that
//! answers every newline-terminated request with a fixed reply — the same
//! bytes a real `token.get` gets — and a bare client that writes the same
//! request line and reads up to the newline. No JSON, no locks, no daemon.

use crate::load::Conn;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

/// The fixed-reply server. Its runtime stops when this is dropped.
pub struct RawServer {
    runtime: Option<tokio::runtime::Runtime>,
    pub path: PathBuf,
}

impl RawServer {
    /// Binds `path` and serves `reply` (newline included) to every line.
    /// Call outside any runtime: the server gets its own worker threads,
    /// named `thread_name` (so their CPU time can be read).
    pub fn start(path: &Path, reply: Vec<u8>, thread_name: &str) -> Result<RawServer> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name(thread_name)
            .build()
            .context("failed to start the raw server's runtime")?;
        let listener = runtime
            .block_on(async { UnixListener::bind(path) })
            .with_context(|| format!("failed to bind {}", path.display()))?;
        let reply: Arc<[u8]> = reply.into();
        runtime.spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, Arc::clone(&reply)));
            }
        });
        Ok(RawServer {
            runtime: Some(runtime),
            path: path.to_owned(),
        })
    }
}

impl Drop for RawServer {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

async fn serve(stream: UnixStream, reply: Arc<[u8]>) {
    let mut reader = BufReader::with_capacity(8 * 1024, stream);
    loop {
        let chunk = match reader.fill_buf().await {
            Ok([]) | Err(_) => return,
            Ok(chunk) => chunk,
        };
        match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => {
                reader.consume(i + 1);
                if reader.get_mut().write_all(&reply).await.is_err() {
                    return;
                }
            }
            None => {
                let n = chunk.len();
                reader.consume(n);
            }
        }
    }
}

/// A bare client connection: write the request, read one line.
pub struct RawConn {
    reader: BufReader<UnixStream>,
    request: Arc<[u8]>,
    reply_len: usize,
    buf: Vec<u8>,
}

impl RawConn {
    pub async fn connect(path: &Path, request: Arc<[u8]>, reply_len: usize) -> Result<RawConn> {
        let stream = UnixStream::connect(path)
            .await
            .with_context(|| format!("failed to connect to {}", path.display()))?;
        Ok(RawConn {
            reader: BufReader::new(stream),
            request,
            reply_len,
            buf: Vec::with_capacity(1024),
        })
    }
}

impl Conn for RawConn {
    async fn round_trip(&mut self) -> Result<()> {
        self.reader.get_mut().write_all(&self.request).await?;
        self.buf.clear();
        self.reader.read_until(b'\n', &mut self.buf).await?;
        if self.buf.len() != self.reply_len {
            bail!(
                "raw reply of {} bytes, expected {}",
                self.buf.len(),
                self.reply_len
            );
        }
        Ok(())
    }
}
