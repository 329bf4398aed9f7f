//! Part 8: one app flooding does not slow another (issue 9). A daemon of
//! its own with the default rate limits (1000 calls/s per app, bursts of
//! 5000); two apps, which are one helper binary (`latchkey-bench-app`)
//! copied to two paths — the daemon knows a program by its executable's
//! path and hash, so they are two apps with two buckets. App B makes
//! cached `token.get` calls at a steady 500 a second (a busy, normal app)
//! and times them, alone and while app A floods at 10,000 calls a second
//! over 4 connections; the two conditions alternate for [`ROUNDS`] rounds
//! (alone, flooded, alone, flooded, …) so that other load on a shared
//! machine falls on both alike, and B's samples are pooled per condition.
//! Printed: B's p50/p99 alone and flooded side by side, with the ratio;
//! A's answered and refused counts; the daemon's CPU per call during the
//! floods; other processes' share of the machine.
//!
//! `LATCHKEY_BENCH_FLOOD_RATE` (default 10000) and
//! `LATCHKEY_BENCH_FLOOD_SECS` (B's measuring time per condition, all
//! rounds together; default 12 s) change the plan. Every wait is bounded
//! (a helper that runs past its time by 30 s is killed).

use crate::daemon::{self, DaemonGuard, Env, Limits, CREDENTIAL};
use crate::load::{new_histogram, p50, p99, us};
use crate::procfs;
use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;
use latchkey_testkit::token_endpoint::TokenEndpoint;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// B's pace: a busy app, well under the default 1000 calls/s.
pub const MEASURE_RATE: f64 = 500.0;
/// A's connections.
pub const FLOOD_CONNECTIONS: usize = 4;
/// Alone, then flooded, this many times.
pub const ROUNDS: u32 = 3;
/// A starts this long before B measures (its burst is spent by then, at
/// least in the first round) and goes on as long after B ends.
const FLOOD_LEAD: Duration = Duration::from_secs(1);
/// How long past its planned time a helper may run before it is killed.
const HELPER_GRACE: Duration = Duration::from_secs(30);
/// The target this bench holds the claim to: B's p99 with A flooding at
/// most this many times its p99 alone.
pub const TARGET_P99_RATIO: f64 = 2.0;

/// What B measured under one condition, all rounds pooled.
pub struct Measured {
    pub latency: Histogram<u64>,
    /// B's calls refused (a normal app's should be none).
    pub refused: u64,
}

impl Measured {
    fn new() -> Measured {
        Measured {
            latency: new_histogram(),
            refused: 0,
        }
    }
}

/// What A did, all rounds together.
#[derive(Default)]
pub struct Flooded {
    pub answered: u64,
    pub refused: u64,
    pub other: u64,
    pub secs: f64,
    pub retry_after: Option<u64>,
}

impl Flooded {
    pub fn rate(&self) -> f64 {
        (self.answered + self.refused + self.other) as f64 / self.secs.max(f64::EPSILON)
    }
}

/// Part 8's figures.
pub struct Outcome {
    pub target_rate: f64,
    /// B's measuring time per condition, all rounds.
    pub secs: f64,
    pub idle: Measured,
    pub flooded: Measured,
    pub flood: Flooded,
    /// Daemon CPU µs per call during the flooded phases (A's and B's).
    pub daemon_cpu_us: Option<f64>,
    /// Other processes' share of the machine, mean over the rounds: B
    /// alone, B flooded.
    pub others: [Option<f64>; 2],
}

impl Outcome {
    pub fn ratio(&self) -> f64 {
        p99(&self.flooded.latency) as f64 / p99(&self.idle.latency).max(1) as f64
    }

    pub fn met(&self) -> bool {
        self.ratio() <= TARGET_P99_RATIO && self.flooded.refused == 0 && self.idle.refused == 0
    }
}

fn env_f64(name: &str, default: f64) -> Result<f64> {
    match std::env::var(name) {
        Ok(v) => v
            .parse::<f64>()
            .ok()
            .filter(|v| *v > 0.0)
            .with_context(|| format!("{name}={v:?} is not a positive number")),
        Err(_) => Ok(default),
    }
}

/// Runs part 8 with its own daemon (`daemon_bin`) and the helper app
/// (`app_bin`), in a temp dir of its own.
pub fn run(rt: &tokio::runtime::Runtime, daemon_bin: &Path, app_bin: &Path) -> Result<Outcome> {
    let target_rate = env_f64("LATCHKEY_BENCH_FLOOD_RATE", 10_000.0)?;
    let secs = env_f64("LATCHKEY_BENCH_FLOOD_SECS", 12.0)?;
    let round_secs = secs / f64::from(ROUNDS);
    println!(
        "\n[8] one app flooding, another app measured (a daemon with the default rate limits)"
    );
    let dir = tempfile::Builder::new()
        .prefix("latchkey-bench-flood-")
        .tempdir()?;
    let env = Env::new(dir.path());
    let daemon = DaemonGuard::start_with(daemon_bin, &env, Limits::Defaults)?;
    let endpoint: TokenEndpoint = rt.block_on(async {
        let endpoint = TokenEndpoint::start().await?;
        daemon::set_up_vault(&env.socket, &endpoint).await?;
        // Warm the cache: from here on every call of A and B is a hit.
        let mut c = latchkey_client::Client::connect_to(&env.socket).await?;
        c.token(CREDENTIAL).await?;
        anyhow::Ok(endpoint)
    })?;
    let a = copy_app(app_bin, &dir.path().join("app-a"))?;
    let b = copy_app(app_bin, &dir.path().join("app-b"))?;
    println!(
        "  daemon pid {} (default limits: 1000 calls/s per app, bursts of 5000); app A {}, app B {} (one binary, two paths: two apps)",
        daemon.pid(),
        a.display(),
        b.display()
    );
    println!(
        "  plan: {ROUNDS} rounds of: B makes cached token.get calls at {MEASURE_RATE:.0}/s for {round_secs:.1} s alone, then as long while A floods at {target_rate:.0}/s over {FLOOD_CONNECTIONS} connections (from {} s before B starts to {} s after)",
        FLOOD_LEAD.as_secs(),
        FLOOD_LEAD.as_secs()
    );

    let mut idle = Measured::new();
    let mut flooded = Measured::new();
    let mut flood = Flooded::default();
    let mut others_seen = [Vec::new(), Vec::new()];
    let mut daemon_cpu = Some(0.0);
    let mut flooded_calls = 0u64;
    for round in 1..=ROUNDS {
        let before = procfs::CpuSnapshot::take_with_children(daemon.pid());
        let alone = measure(&b, &env.socket, round_secs)?;
        let share = others(before, daemon.pid());
        print_round(round, "B alone         ", &alone, share);
        others_seen[0].extend(share);
        alone.pool_into(&mut idle);

        let before = procfs::CpuSnapshot::take_with_children(daemon.pid());
        let cpu_before = daemon.cpu();
        let flood_secs = round_secs + 2.0 * FLOOD_LEAD.as_secs_f64();
        let flooding = Helper::spawn(
            &a,
            &env.socket,
            &[
                "flood",
                &target_rate.to_string(),
                &flood_secs.to_string(),
                &FLOOD_CONNECTIONS.to_string(),
            ],
            flood_secs,
        )?;
        std::thread::sleep(FLOOD_LEAD);
        let with_flood = measure(&b, &env.socket, round_secs)?;
        let this = flooding.finish().and_then(|r| parse_flood(&r))?;
        let cpu_after = daemon.cpu();
        let share = others(before, daemon.pid());
        print_round(round, "B while A floods", &with_flood, share);
        others_seen[1].extend(share);
        println!(
            "           A: {:.0} calls/s over {:.1} s: {} answered, {} refused",
            this.rate(),
            this.secs,
            this.answered,
            this.refused
        );
        let calls = this.answered + this.refused + this.other + with_flood.calls();
        flooded_calls += calls;
        daemon_cpu = daemon_cpu
            .zip(cpu_before.zip(cpu_after))
            .map(|(sum, (b, a))| sum + (a.total() - b.total()) * 1e6);
        with_flood.pool_into(&mut flooded);
        flood.answered += this.answered;
        flood.refused += this.refused;
        flood.other += this.other;
        flood.secs += this.secs;
        flood.retry_after = flood.retry_after.or(this.retry_after);
    }
    let daemon_cpu_us = daemon_cpu.map(|us| us / flooded_calls.max(1) as f64);
    let mean = |v: &[f64]| (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64);
    let outcome = Outcome {
        target_rate,
        secs,
        others: [mean(&others_seen[0]), mean(&others_seen[1])],
        idle,
        flooded,
        flood,
        daemon_cpu_us,
    };
    let (i, f) = (&outcome.idle.latency, &outcome.flooded.latency);
    println!(
        "  B, {} rounds pooled: alone {} calls p50 {} p99 {} p99.9 {}; while A floods {} calls p50 {} p99 {} p99.9 {}",
        ROUNDS,
        i.len(),
        us(p50(i)),
        us(p99(i)),
        us(i.value_at_quantile(0.999)),
        f.len(),
        us(p50(f)),
        us(p99(f)),
        us(f.value_at_quantile(0.999)),
    );
    let fl = &outcome.flood;
    println!(
        "  A: {:.0} calls/s over {:.1} s in all: {} answered, {} refused (rate_limited, retry_after {}), {} other errors; daemon CPU {} per call during the floods (A's and B's)",
        fl.rate(),
        fl.secs,
        fl.answered,
        fl.refused,
        fl.retry_after.map_or("-".into(), |s| format!("{s} s")),
        fl.other,
        outcome
            .daemon_cpu_us
            .map_or("?".into(), |c| format!("{c:.1} µs")),
    );
    println!(
        "  B p99 alone {}  with A flooding {}  = {:.2}× (target ≤ {TARGET_P99_RATIO}×); B's calls refused: {}",
        us(p99(i)),
        us(p99(f)),
        outcome.ratio(),
        outcome.idle.refused + outcome.flooded.refused,
    );
    println!(
        "  token endpoint requests: {} (the warm-up's; every flood call is a cache hit or a refusal)",
        endpoint.served()
    );
    drop(daemon);
    Ok(outcome)
}

/// `app` copied to `dir`: another path, so another app to the daemon.
fn copy_app(app: &Path, dir: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let to = dir.join("latchkey-bench-app");
    std::fs::copy(app, &to).with_context(|| format!("failed to copy {}", app.display()))?;
    Ok(to)
}

/// Other processes' share since `before` (as the other parts measure it).
fn others(before: Option<procfs::CpuSnapshot>, daemon_pid: u32) -> Option<f64> {
    let after = procfs::CpuSnapshot::take_with_children(daemon_pid)?;
    Some(after.others_since(&before?).0)
}

/// One phase's figures (B's own quantiles) and the machine's other load.
fn print_round(round: u32, label: &str, m: &Phase, others: Option<f64>) {
    println!(
        "  round {round} {label}: {} calls  p50 {}  p99 {}  max {}{}  (other processes {}{})",
        m.calls(),
        us(m.p50),
        us(m.p99),
        us(m.max),
        if m.refused > 0 {
            format!("  {} REFUSED", m.refused)
        } else {
            String::new()
        },
        others.map_or("?".into(), |o| format!("{:.0}%", o * 100.0)),
        if others.is_some_and(|o| o > 0.1) {
            ": skewed"
        } else {
            ""
        }
    );
}

/// One run of B: its samples and its own quantiles.
struct Phase {
    samples: Vec<u64>,
    refused: u64,
    p50: u64,
    p99: u64,
    max: u64,
}

impl Phase {
    fn calls(&self) -> u64 {
        self.samples.len() as u64
    }

    fn pool_into(&self, into: &mut Measured) {
        for &s in &self.samples {
            into.latency.saturating_record(s);
        }
        into.refused += self.refused;
    }
}

/// Runs B's measurement for `secs` and reads its samples and figures.
fn measure(b: &Path, socket: &Path, secs: f64) -> Result<Phase> {
    let out = Helper::spawn(
        b,
        socket,
        &["measure", &MEASURE_RATE.to_string(), &secs.to_string()],
        secs,
    )?
    .finish()?;
    let f = fields(&out)?;
    let get = |k: &str| -> Result<u64> {
        f.get(k)
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("no {k} in the helper's RESULT line: {out}"))
    };
    let samples = out
        .lines()
        .find_map(|l| l.strip_prefix("SAMPLES "))
        .context("the helper printed no SAMPLES line")?
        .split(',')
        .filter(|v| !v.is_empty())
        .map(|v| v.parse::<u64>().context("a sample is a number of ns"))
        .collect::<Result<Vec<u64>>>()?;
    anyhow::ensure!(
        samples.len() as u64 == get("calls")?,
        "the helper's samples and its count disagree"
    );
    Ok(Phase {
        samples,
        refused: get("refused")?,
        p50: get("p50")?,
        p99: get("p99")?,
        max: get("max")?,
    })
}

fn parse_flood(out: &str) -> Result<Flooded> {
    let f = fields(out)?;
    let get = |k: &str| -> Result<&str> {
        f.get(k)
            .copied()
            .with_context(|| format!("no {k} in the helper's RESULT line: {out}"))
    };
    let num = |k: &str| -> Result<u64> { get(k)?.parse().with_context(|| format!("{k} in {out}")) };
    Ok(Flooded {
        answered: num("answered")?,
        refused: num("refused")?,
        other: num("other")?,
        secs: get("secs")?.parse().context("secs")?,
        retry_after: get("retry_after")?.parse().ok(),
    })
}

/// The `key=value` fields of the helper's `RESULT` line.
fn fields(out: &str) -> Result<HashMap<&str, &str>> {
    let line = out
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .with_context(|| format!("the helper printed no RESULT line: {out}"))?;
    Ok(line
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .collect())
}

/// A running helper app, killed if it outlives its plan by [`HELPER_GRACE`].
struct Helper {
    /// `None` once [`Helper::finish`] took it.
    child: Option<Child>,
    deadline: Instant,
}

impl Helper {
    fn spawn(app: &Path, socket: &Path, args: &[&str], secs: f64) -> Result<Helper> {
        let child = Command::new(app)
            .arg(socket)
            .arg(CREDENTIAL)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("failed to start {}", app.display()))?;
        Ok(Helper {
            child: Some(child),
            deadline: Instant::now() + Duration::from_secs_f64(secs) + HELPER_GRACE,
        })
    }

    /// Waits (bounded) and returns its stdout; an error if it failed.
    fn finish(mut self) -> Result<String> {
        let mut child = self.child.take().expect("finished once");
        loop {
            if child.try_wait()?.is_some() {
                break;
            }
            if Instant::now() > self.deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("a flood helper ran past its time and was killed");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = child.wait_with_output()?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            bail!(
                "a flood helper failed ({}): {stdout}{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(stdout)
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
