//! An app for the flood part (part 8): the bench copies this binary to two
//! paths, and the daemon, which knows a program by its executable's path
//! and hash, sees two apps. One measures cached `token.get` calls at a
//! steady pace; the other floods. Each prints a `RESULT` line (and the
//! measuring one its samples).
//!
//! ```text
//! latchkey-bench-app SOCKET CREDENTIAL measure CALLS_PER_SEC SECS
//! latchkey-bench-app SOCKET CREDENTIAL flood CALLS_PER_SEC SECS CONNECTIONS
//! ```

use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;
use latchkey_client::protocol::ErrorKind;
use latchkey_client::{Client, Error};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Untimed calls before measuring (connections warm, pages touched).
const WARMUP: u32 = 50;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [socket, credential, mode, rate, secs, rest @ ..] = args.as_slice() else {
        bail!("usage: latchkey-bench-app SOCKET CREDENTIAL measure|flood CALLS_PER_SEC SECS [CONNECTIONS]");
    };
    let socket = PathBuf::from(socket);
    let rate: f64 = rate.parse().context("CALLS_PER_SEC is a number")?;
    let secs: f64 = secs.parse().context("SECS is a number")?;
    anyhow::ensure!(
        rate > 0.0 && secs > 0.0,
        "rate and seconds must be positive"
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .worker_threads(2)
        .build()?;
    let duration = Duration::from_secs_f64(secs);
    match mode.as_str() {
        "measure" => runtime.block_on(measure(&socket, credential, rate, duration)),
        "flood" => {
            let conns: usize = rest
                .first()
                .context("flood needs CONNECTIONS")?
                .parse()
                .context("CONNECTIONS is a number")?;
            runtime.block_on(flood(&socket, credential, rate, duration, conns.max(1)))
        }
        other => bail!("unknown mode {other:?}: measure or flood"),
    }
}

/// One connection, one call every `1/rate` s for `duration` (bounded),
/// each timed; prints the quantiles, and every sample (ns) on a
/// `SAMPLES` line for the bench to pool across rounds.
async fn measure(socket: &Path, credential: &str, rate: f64, duration: Duration) -> Result<()> {
    let mut client = Client::connect_to(socket).await?;
    for _ in 0..WARMUP {
        client.token(credential).await?;
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
    let mut samples = Vec::new();
    let mut refused = 0u64;
    let period = Duration::from_secs_f64(1.0 / rate);
    let calls = (duration.as_secs_f64() * rate).ceil() as u64;
    let start = tokio::time::Instant::now();
    for i in 0..calls {
        tokio::time::sleep_until(start + period.mul_f64(i as f64)).await;
        let t = Instant::now();
        match client.token(credential).await {
            Ok(_) => {
                let nanos = t.elapsed().as_nanos() as u64;
                hist.saturating_record(nanos);
                samples.push(nanos.to_string());
            }
            Err(e) if e.kind() == Some(ErrorKind::RateLimited) => refused += 1,
            Err(e) => return Err(e.into()),
        }
    }
    println!("SAMPLES {}", samples.join(","));
    println!(
        "RESULT calls={} refused={refused} p50={} p99={} p999={} max={}",
        hist.len(),
        hist.value_at_quantile(0.50),
        hist.value_at_quantile(0.99),
        hist.value_at_quantile(0.999),
        hist.max()
    );
    Ok(())
}

/// `conns` connections sharing `rate` calls a second for `duration`
/// (each catches up to its schedule, then sleeps a millisecond; a call is
/// sequential on its connection, so a slow daemon slows the flood rather
/// than piling calls up); prints how many were answered and refused.
async fn flood(
    socket: &Path,
    credential: &str,
    rate: f64,
    duration: Duration,
    conns: usize,
) -> Result<()> {
    let per_conn = rate / conns as f64;
    let mut clients = Vec::with_capacity(conns);
    for _ in 0..conns {
        clients.push(Client::connect_to(socket).await?);
    }
    // The schedule starts once every connection is open.
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for mut client in clients {
        let credential = credential.to_owned();
        tasks.spawn(async move {
            let (mut answered, mut refused, mut other) = (0u64, 0u64, 0u64);
            let mut retry_after = None;
            loop {
                let elapsed = start.elapsed();
                if elapsed >= duration {
                    break;
                }
                // Rounded up: each connection is at most one call ahead.
                let due = (elapsed.as_secs_f64() * per_conn).ceil() as u64;
                if answered + refused + other >= due {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    continue;
                }
                match client.token(&credential).await {
                    Ok(_) => answered += 1,
                    Err(Error::Daemon {
                        kind: ErrorKind::RateLimited,
                        retry_after: r,
                        ..
                    }) => {
                        refused += 1;
                        retry_after = retry_after.or(r);
                    }
                    Err(e) if e.kind().is_some() => other += 1,
                    Err(e) => return Err(anyhow::Error::from(e)),
                }
            }
            anyhow::Ok((answered, refused, other, retry_after))
        });
    }
    let (mut answered, mut refused, mut other, mut retry_after) = (0, 0, 0, None);
    while let Some(done) = tasks.join_next().await {
        let (a, r, o, after) = done??;
        answered += a;
        refused += r;
        other += o;
        retry_after = retry_after.or(after);
    }
    // Every call counted started within the schedule: its length is the
    // time the rate is over.
    println!(
        "RESULT answered={answered} refused={refused} other={other} secs={:.3} retry_after={}",
        duration.as_secs_f64(),
        retry_after.map_or("-".into(), |s: u64| s.to_string())
    );
    Ok(())
}
