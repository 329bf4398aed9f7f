//! Part 8: one app flooding does not slow another (issue 9). A daemon of
//! its own with the default rate limits (1000 calls/s per app, bursts of
//! 5000); two apps, which are one helper binary (`latchkey-bench-app`)
//! copied to two paths — the daemon knows a program by its executable's
//! path and hash, so they are two apps with two buckets. App B makes
//! cached `token.get` calls at a steady 500 a second (a busy, normal app)
//! and times them, first alone, then while app A floods at 10,000 calls a
//! second over 4 connections. Printed: B's p50/p99 idle and flooded side
//! by side, with the ratio; A's answered and refused counts; the daemon's
//! CPU per call of the flood; other processes' share of the machine.
//!
//! `LATCHKEY_BENCH_FLOOD_RATE` (default 10000) and
//! `LATCHKEY_BENCH_FLOOD_SECS` (B's measuring time, default 10 s) change
//! the plan. Every wait is bounded (a helper that runs past its time by
//! 30 s is killed).

use crate::daemon::{self, DaemonGuard, Env, Limits, CREDENTIAL};
use crate::load::us;
use crate::procfs;
use anyhow::{bail, Context, Result};
use latchkey_testkit::token_endpoint::TokenEndpoint;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// B's pace: a busy app, well under the default 1000 calls/s.
pub const MEASURE_RATE: f64 = 500.0;
/// A's connections.
pub const FLOOD_CONNECTIONS: usize = 4;
/// A starts this long before B measures (its burst is spent by then) and
/// goes on as long after B ends.
const FLOOD_LEAD: Duration = Duration::from_secs(2);
/// How long past its planned time a helper may run before it is killed.
const HELPER_GRACE: Duration = Duration::from_secs(30);
/// The target this bench holds the claim to: B's p99 with A flooding at
/// most this many times its p99 alone.
pub const TARGET_P99_RATIO: f64 = 2.0;

/// What B measured in one phase.
pub struct Measured {
    pub calls: u64,
    pub refused: u64,
    pub p50: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

/// What A did.
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
    pub secs: f64,
    pub idle: Measured,
    pub flooded: Measured,
    pub flood: Flooded,
    /// Daemon CPU µs per call during the flooded phase (A's and B's).
    pub daemon_cpu_us: Option<f64>,
    /// Other processes' share of the machine: idle phase, flooded phase.
    pub others: [Option<f64>; 2],
}

impl Outcome {
    pub fn ratio(&self) -> f64 {
        self.flooded.p99 as f64 / self.idle.p99.max(1) as f64
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
    let secs = env_f64("LATCHKEY_BENCH_FLOOD_SECS", 10.0)?;
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
        "  plan: B makes cached token.get calls at {MEASURE_RATE:.0}/s for {secs} s, alone, then while A floods at {target_rate:.0}/s over {FLOOD_CONNECTIONS} connections (from {} s before B starts to {} s after)",
        FLOOD_LEAD.as_secs(),
        FLOOD_LEAD.as_secs()
    );

    let before = procfs::CpuSnapshot::take_with_children(daemon.pid());
    let idle = measure(&b, &env.socket, secs)?;
    let idle_others = others(before, daemon.pid());
    print_measured("B alone         ", &idle);

    let before = procfs::CpuSnapshot::take_with_children(daemon.pid());
    let cpu_before = daemon.cpu();
    let flood_secs = secs + 2.0 * FLOOD_LEAD.as_secs_f64();
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
    let flooded = measure(&b, &env.socket, secs)?;
    let flood = flooding.finish().and_then(|r| parse_flood(&r))?;
    let cpu_after = daemon.cpu();
    let flooded_others = others(before, daemon.pid());
    print_measured("B while A floods", &flooded);
    let total_calls =
        flood.answered + flood.refused + flood.other + flooded.calls + flooded.refused;
    let daemon_cpu_us = cpu_before
        .zip(cpu_after)
        .map(|(b, a)| a.per_call_us(b, total_calls).total());
    println!(
        "  A: {:.0} calls/s over {:.1} s: {} answered, {} refused (rate_limited, retry_after {}), {} other errors; daemon CPU {} per call (A's and B's)",
        flood.rate(),
        flood.secs,
        flood.answered,
        flood.refused,
        flood.retry_after.map_or("-".into(), |s| format!("{s} s")),
        flood.other,
        daemon_cpu_us.map_or("?".into(), |c| format!("{c:.1} µs")),
    );
    let outcome = Outcome {
        target_rate,
        secs,
        idle,
        flooded,
        flood,
        daemon_cpu_us,
        others: [idle_others, flooded_others],
    };
    println!(
        "  B p99 alone {}  with A flooding {}  = {:.2}× (target ≤ {TARGET_P99_RATIO}×); p50 {} → {}",
        us(outcome.idle.p99),
        us(outcome.flooded.p99),
        outcome.ratio(),
        us(outcome.idle.p50),
        us(outcome.flooded.p50),
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

/// Prints other processes' share since `before` (as the other parts do).
fn others(before: Option<procfs::CpuSnapshot>, daemon_pid: u32) -> Option<f64> {
    let after = procfs::CpuSnapshot::take_with_children(daemon_pid)?;
    let (others, steal) = after.others_since(&before?);
    println!(
        "  other processes used {:.0}% of the machine meanwhile (steal {:.0}%){}",
        others * 100.0,
        steal * 100.0,
        if others > 0.1 {
            ": figures are skewed, rerun on a quiet machine"
        } else {
            ""
        }
    );
    Some(others)
}

fn print_measured(label: &str, m: &Measured) {
    println!(
        "  {label}: {} calls  p50 {}  p99 {}  p99.9 {}  max {}{}",
        m.calls,
        us(m.p50),
        us(m.p99),
        us(m.p999),
        us(m.max),
        if m.refused > 0 {
            format!("  ({} REFUSED)", m.refused)
        } else {
            String::new()
        }
    );
}

/// Runs B's measurement for `secs` and reads its figures.
fn measure(b: &Path, socket: &Path, secs: f64) -> Result<Measured> {
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
    Ok(Measured {
        calls: get("calls")?,
        refused: get("refused")?,
        p50: get("p50")?,
        p99: get("p99")?,
        p999: get("p999")?,
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
