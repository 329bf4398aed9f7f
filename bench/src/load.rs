//! The load drivers shared by the raw baseline and the real `token.get`:
//! a latency run on one connection and a fixed-duration throughput run over
//! N connections, each recording every round trip (timed with
//! `std::time::Instant`) into an HDR histogram of nanoseconds.

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use std::future::Future;
use std::time::{Duration, Instant};

/// One connection that can make a request→reply round trip.
pub trait Conn: Send + 'static {
    /// Sends one request and waits for its whole reply.
    fn round_trip(&mut self) -> impl Future<Output = Result<()>> + Send;
}

/// Latency and throughput figures of one side (raw or cached).
pub struct Figures {
    /// Round-trip latency on one connection, sequential calls.
    pub latency: Histogram<u64>,
    /// (clients, result) per throughput point.
    pub throughput: Vec<(usize, Throughput)>,
    /// Every round trip made, warm-ups included (for CPU per call).
    pub calls: u64,
}

impl Figures {
    /// Requests/s at `clients` concurrent connections.
    pub fn rate(&self, clients: usize) -> f64 {
        self.throughput
            .iter()
            .find(|(n, _)| *n == clients)
            .map_or(f64::NAN, |(_, t)| t.per_sec)
    }
}

/// The result of one throughput point.
pub struct Throughput {
    pub per_sec: f64,
    pub total: u64,
    pub elapsed: Duration,
    pub latency: Histogram<u64>,
}

/// 1 ns to 60 s, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("these bounds are valid")
}

/// A value in nanoseconds as microseconds with one decimal.
pub fn us(nanos: u64) -> String {
    format!("{:.1} µs", nanos as f64 / 1000.0)
}

pub fn p50(h: &Histogram<u64>) -> u64 {
    h.value_at_quantile(0.50)
}

pub fn p99(h: &Histogram<u64>) -> u64 {
    h.value_at_quantile(0.99)
}

/// `warmup` untimed round trips, then `iters` timed ones.
pub async fn latency<C: Conn>(mut conn: C, warmup: usize, iters: usize) -> Result<Histogram<u64>> {
    for _ in 0..warmup {
        conn.round_trip().await?;
    }
    let mut hist = new_histogram();
    for _ in 0..iters {
        let start = Instant::now();
        conn.round_trip().await?;
        hist.saturating_record(start.elapsed().as_nanos() as u64);
    }
    Ok(hist)
}

/// Every connection makes sequential round trips in its own task until
/// `duration` has passed; returns completed round trips per second.
/// The caller opens the connections; each makes `warmup` untimed calls
/// here before the clock starts.
pub async fn throughput<C: Conn>(
    mut conns: Vec<C>,
    warmup: usize,
    duration: Duration,
) -> Result<Throughput> {
    for conn in &mut conns {
        for _ in 0..warmup {
            conn.round_trip().await?;
        }
    }
    let start = Instant::now();
    let deadline = start + duration;
    let tasks: Vec<_> = conns
        .into_iter()
        .map(|mut conn| {
            tokio::spawn(async move {
                let mut hist = new_histogram();
                let mut done = 0u64;
                loop {
                    let t = Instant::now();
                    if t >= deadline {
                        break;
                    }
                    conn.round_trip().await?;
                    hist.saturating_record(t.elapsed().as_nanos() as u64);
                    done += 1;
                }
                anyhow::Ok((done, hist))
            })
        })
        .collect();
    let mut total = 0;
    let mut latency = new_histogram();
    for task in tasks {
        let (done, hist) = task.await.context("a client task panicked")??;
        total += done;
        latency.add(&hist).expect("histograms share bounds");
    }
    // The last round trip of each client may end a little after the
    // deadline: divide by the real time the whole run took.
    let elapsed = start.elapsed();
    Ok(Throughput {
        per_sec: total as f64 / elapsed.as_secs_f64(),
        total,
        elapsed,
        latency,
    })
}

/// Untimed round trips per connection before a throughput point starts.
const POINT_WARMUP: usize = 20;

/// The fixed plan both sides run: a latency run, then throughput at each
/// client count. `connect` opens one connection.
pub struct Plan {
    pub warmup: usize,
    pub latency_iters: usize,
    pub clients: &'static [usize],
    pub point_duration: Duration,
}

impl Plan {
    pub async fn run<C, F, Fut>(&self, label: &str, mut connect: F) -> Result<Figures>
    where
        C: Conn,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<C>>,
    {
        let conn = connect().await?;
        // In a spawned task, on a worker thread as an application's task
        // runs; not on the thread blocked in `block_on`, which would add a
        // thread hop (a futex wake-up) to every round trip.
        let latency = tokio::spawn(latency(conn, self.warmup, self.latency_iters))
            .await
            .context("the latency task panicked")??;
        println!(
            "  latency, 1 client, {} round trips: p50 {}  p99 {}  p99.9 {}  max {}",
            self.latency_iters,
            us(p50(&latency)),
            us(p99(&latency)),
            us(latency.value_at_quantile(0.999)),
            us(latency.max()),
        );
        let mut points = Vec::new();
        let mut calls = (self.warmup + self.latency_iters) as u64;
        for &n in self.clients {
            let mut conns = Vec::with_capacity(n);
            for _ in 0..n {
                conns.push(
                    connect()
                        .await
                        .with_context(|| format!("{label}: opening connection"))?,
                );
            }
            let t = throughput(conns, POINT_WARMUP, self.point_duration).await?;
            calls += (n * POINT_WARMUP) as u64 + t.total;
            println!(
                "  throughput, {n:>2} client(s): {:>9.0} req/s  ({} round trips in {:.2} s; p50 {}  p99 {})",
                t.per_sec,
                t.total,
                t.elapsed.as_secs_f64(),
                us(p50(&t.latency)),
                us(p99(&t.latency)),
            );
            points.push((n, t));
        }
        Ok(Figures {
            latency,
            throughput: points,
            calls,
        })
    }
}
