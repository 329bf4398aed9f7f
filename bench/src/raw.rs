//! Part 1, the floor: two bare Unix-socket request→reply servers in this
//! process that answer every newline-terminated request with a fixed reply
//! — the same bytes a real `token.get` gets — and a bare client that writes
//! the same request line and reads up to the newline. No JSON, no locks, no
//! daemon. One server runs on its own multi-thread tokio runtime (as the
//! daemon does, [`RawServer`]); the other is the classic shape, one OS
//! thread per connection with blocking reads and writes ([`ThreadServer`]):
//! which of the two is faster depends on the machine and the client count,
//! so the faster one at each point is the floor.

use crate::load::Conn;
use crate::procfs::Cpu;
use anyhow::{bail, Context, Result};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
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

/// The thread-per-connection server: a std `UnixListener` whose accept
/// thread starts one OS thread per connection, each reading and writing
/// with blocking calls. Each connection thread adds its own CPU time
/// (`getrusage(RUSAGE_THREAD)`) to a shared total as it ends, so the server's
/// CPU per round trip can be read once every connection has closed (threads
/// that have exited no longer show in `/proc/self/task`).
pub struct ThreadServer {
    pub path: PathBuf,
    shared: Arc<Shared>,
    accept: Option<std::thread::JoinHandle<()>>,
}

/// What the accept thread and the connection threads share.
#[derive(Default)]
struct Shared {
    /// Set on drop: the accept thread stops at its next accept.
    stopping: AtomicBool,
    /// (connection threads running, CPU of those that have ended).
    threads: Mutex<(usize, Cpu)>,
    ended: std::sync::Condvar,
}

impl ThreadServer {
    /// Binds `path` and serves `reply` (newline included) to every line.
    pub fn start(path: &Path, reply: Vec<u8>) -> Result<ThreadServer> {
        let listener = std::os::unix::net::UnixListener::bind(path)
            .with_context(|| format!("failed to bind {}", path.display()))?;
        let shared = Arc::new(Shared::default());
        let reply: Arc<[u8]> = reply.into();
        let accept_shared = Arc::clone(&shared);
        let accept = std::thread::Builder::new()
            .name("raw-accept".into())
            .spawn(move || {
                for stream in listener.incoming() {
                    if accept_shared.stopping.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(stream) = stream else { continue };
                    let shared = Arc::clone(&accept_shared);
                    let reply = Arc::clone(&reply);
                    lock(&shared.threads).0 += 1;
                    let spawned = std::thread::Builder::new().name("raw-conn".into()).spawn({
                        let shared = Arc::clone(&shared);
                        move || {
                            serve_blocking(stream, &reply);
                            let cpu = thread_cpu();
                            let mut threads = lock(&shared.threads);
                            threads.0 -= 1;
                            threads.1.user += cpu.user;
                            threads.1.sys += cpu.sys;
                            shared.ended.notify_all();
                        }
                    });
                    if spawned.is_err() {
                        lock(&shared.threads).0 -= 1;
                    }
                }
            })
            .context("failed to start the thread server's accept thread")?;
        Ok(ThreadServer {
            path: path.to_owned(),
            shared,
            accept: Some(accept),
        })
    }

    /// CPU time all connection threads used, once every one has ended
    /// (the clients closed their connections); `None` if some are still
    /// running after a few seconds.
    pub fn cpu_once_closed(&self) -> Option<Cpu> {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut threads = lock(&self.shared.threads);
        while threads.0 > 0 {
            let left = deadline.checked_duration_since(Instant::now())?;
            threads = self
                .shared
                .ended
                .wait_timeout(threads, left)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
        Some(threads.1)
    }
}

impl Drop for ThreadServer {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        // Wake the accept thread, blocked in accept, so it sees the flag.
        let _ = std::os::unix::net::UnixStream::connect(&self.path);
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
    }
}

/// Locks `m`; a panicked holder left plain counters, still usable.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One connection, blocking: the same line logic as [`serve`].
fn serve_blocking(mut stream: std::os::unix::net::UnixStream, reply: &[u8]) {
    let mut buf = [0u8; 8 * 1024];
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        for _ in buf[..n].iter().filter(|&&b| b == b'\n') {
            if stream.write_all(reply).is_err() {
                return;
            }
        }
    }
}

/// The calling thread's CPU time so far.
fn thread_cpu() -> Cpu {
    // SAFETY: getrusage writes into the struct we pass; all-zero is a
    // valid `rusage`.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; RUSAGE_THREAD is the calling thread.
    if unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) } != 0 {
        return Cpu::default();
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Cpu {
        user: secs(usage.ru_utime),
        sys: secs(usage.ru_stime),
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
