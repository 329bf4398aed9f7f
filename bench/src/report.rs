//! Printing: the machine line, the cached/raw ratios, and the closing
//! summary with every figure and MET / NOT MET against each target.

use crate::load::{p50, p99, us, Figures, Plan};
use crate::process::CliFigures;
use crate::procfs::Cpu;
use crate::refresh;

/// Targets (DESIGN.md "Measured here" floors and the bench brief).
pub const TARGET_P50_RATIO: f64 = 2.0;
pub const TARGET_P99_RATIO: f64 = 5.0;
pub const TARGET_RATE_SHARE: f64 = 0.5;
pub const TARGET_RSS_KIB: u64 = 12 * 1024;

/// Everything the summary reports.
pub struct Results {
    pub raw: Figures,
    pub cached: Figures,
    /// CPU µs per round trip as (server, client), for raw then cached.
    pub cpu_us: [(Option<Cpu>, Option<Cpu>); 2],
    /// Share of the machine other processes used during raw and cached.
    pub others: [Option<f64>; 2],
    /// Token-endpoint requests during the cached phase.
    pub served: u64,
    pub cli: Option<CliFigures>,
    /// Idle VmRSS in KiB.
    pub rss: Option<u64>,
}

pub fn machine(plan: Option<&Plan>, refresh_secs: Option<u64>) {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
            })
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!(
        "latchkey-bench: {cpus} CPU(s), {model}, Linux {}, {}",
        kernel.trim(),
        load_average()
    );
    if let Some(plan) = plan {
        println!(
            "plan: {} warm-up + {} timed round trips for latency; {} s per throughput point at {:?} clients",
            plan.warmup,
            plan.latency_iters,
            plan.point_duration.as_secs(),
            plan.clients
        );
    }
    if let Some(secs) = refresh_secs {
        println!(
            "plan: refresh parts: a burst of {} concurrent callers, then a {secs}-s steady run (LATCHKEY_BENCH_REFRESH_SECS)",
            refresh::BURST_CALLERS
        );
    }
}

pub fn ratios(raw: &Figures, cached: &Figures) {
    println!(
        "  cached/raw: p50 {:.2}×  p99 {:.2}×  req/s at 1: {:.0}%  at 8: {:.0}%  at 64: {:.0}%",
        p50(&cached.latency) as f64 / p50(&raw.latency) as f64,
        p99(&cached.latency) as f64 / p99(&raw.latency) as f64,
        100.0 * cached.rate(1) / raw.rate(1),
        100.0 * cached.rate(8) / raw.rate(8),
        100.0 * cached.rate(64) / raw.rate(64),
    );
}

/// One summary line: the claim, then the verdict in a column.
fn verdict_line(claim: String, ok: bool) {
    println!("{claim:<62} {}", if ok { "MET" } else { "NOT MET" });
}

/// The closing summary of whichever parts ran.
pub fn summary(base: Option<&Results>, refresh: Option<&refresh::Outcome>) {
    println!("\n==================== summary ====================");
    if let Some(r) = base {
        base_summary(r);
    }
    if let Some(o) = refresh {
        refresh_summary(o);
    }
    let busy = |v: Option<f64>| v.map_or("?".into(), |v| format!("{:.0}%", v * 100.0));
    let mut during = Vec::new();
    if let Some(r) = base {
        during.push(format!("{} during raw", busy(r.others[0])));
        during.push(format!("{} during cached", busy(r.others[1])));
    }
    if let Some(o) = refresh {
        during.push(format!("{} during the burst", busy(o.others[0])));
        during.push(format!("{} during the steady run", busy(o.others[1])));
    }
    println!(
        "other processes' share of the machine: {}; {} at the end",
        during.join(", "),
        load_average()
    );
    println!("=================================================");
}

fn refresh_summary(o: &refresh::Outcome) {
    let b = &o.burst;
    verdict_line(
        format!(
            "refreshes per {} concurrent expiring callers = {} (must be 1)",
            b.callers, b.refresh_requests
        ),
        b.met(),
    );
    if !b.met() {
        println!(
            "  ({} refused as reused; {} of {} callers failed{}; {} distinct token(s) came back)",
            b.refresh_rejected,
            b.failed,
            b.callers,
            b.first_error
                .as_ref()
                .map_or(String::new(), |e| format!(", first error: {e}")),
            b.distinct_tokens
        );
    }
    let s = &o.steady;
    verdict_line(
        format!(
            "token.get calls that waited on the network once warm = {} of {} (goal 0)",
            s.stats.waits, s.calls
        ),
        s.met(),
    );
    println!(
        "  ({} s run, {}-s tokens, {} clients × 1 call / {} ms; {} refreshes at the endpoint; latency p50 {}  p99 {}  max {}{}{})",
        s.secs,
        s.lifetime,
        refresh::STEADY_CLIENTS,
        refresh::STEADY_PERIOD.as_millis(),
        s.refresh_requests,
        us(p50(&s.latency)),
        us(p99(&s.latency)),
        us(s.latency.max()),
        refresh::waited_max(&s.waited_seen).map_or(String::new(), |m| format!("; waited max {}", us(m.as_nanos() as u64))),
        if s.failed > 0 {
            format!("; {} calls FAILED", s.failed)
        } else {
            String::new()
        }
    );
}

fn base_summary(r: &Results) {
    let (raw, cached) = (&r.raw, &r.cached);
    let p50_ratio = p50(&cached.latency) as f64 / p50(&raw.latency) as f64;
    let p99_ratio = p99(&cached.latency) as f64 / p99(&raw.latency) as f64;
    let share = cached.rate(64) / raw.rate(64);
    let cpu = |v: Option<Cpu>| v.map_or("?".into(), |v| format!("{:.1} µs", v.total()));
    for (label, f, (server, client)) in [
        ("raw baseline    ", raw, r.cpu_us[0]),
        ("cached token.get", cached, r.cpu_us[1]),
    ] {
        println!(
            "{label}  p50 {}  p99 {}  req/s 1: {:.0}  8: {:.0}  64: {:.0}  CPU/call server {} client {}",
            us(p50(&f.latency)),
            us(p99(&f.latency)),
            f.rate(1),
            f.rate(8),
            f.rate(64),
            cpu(server),
            cpu(client),
        );
    }
    verdict_line(
        format!("cached p50 / raw p50 = {p50_ratio:.2}× (target ≤ {TARGET_P50_RATIO}×)"),
        p50_ratio <= TARGET_P50_RATIO,
    );
    verdict_line(
        format!("cached p99 / raw p99 = {p99_ratio:.2}× (target ≤ {TARGET_P99_RATIO}×)"),
        p99_ratio <= TARGET_P99_RATIO,
    );
    verdict_line(
        format!(
            "cached req/s@64 / raw req/s@64 = {:.0}% (target ≥ {:.0}%)",
            share * 100.0,
            TARGET_RATE_SHARE * 100.0
        ),
        share >= TARGET_RATE_SHARE,
    );
    verdict_line(
        format!(
            "token endpoint requests in cached phase = {} (must be 1)",
            r.served
        ),
        r.served == 1,
    );
    match &r.cli {
        Some(c) => println!(
            "latchkey token  p50 {}  p99 {}  (empty Rust binary p50 {}; no numeric target)",
            us(c.cli_p50),
            us(c.cli_p99),
            c.floor_p50.map_or("n/a".into(), us)
        ),
        None => println!("latchkey token: SKIPPED (see part 3)"),
    }
    match r.rss {
        Some(rss) => verdict_line(
            format!(
                "idle daemon VmRSS = {:.1} MiB (target ≤ {} MiB)",
                rss as f64 / 1024.0,
                TARGET_RSS_KIB / 1024
            ),
            rss <= TARGET_RSS_KIB,
        ),
        None => println!("idle daemon VmRSS: could not read /proc/<pid>/status"),
    }
    println!(
        "(DESIGN.md's measured floor for a raw round trip is p50 ≈ 12–15 µs, ≈ 70 k/s on one\n connection, ≈ 170 k/s over 8; compare the raw line above to see how this machine differs.)"
    );
}

/// KiB as MiB with one decimal.
pub fn mib(v: Option<u64>) -> String {
    v.map_or("?".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0))
}

/// Hides the access token in a printed reply line (it is a throwaway, but
/// the habit is the point).
pub fn redact(line: &str) -> String {
    const KEY: &str = "\"access_token\":\"";
    match line.find(KEY) {
        Some(i) => {
            let start = i + KEY.len();
            let end = line[start..].find('"').map_or(line.len(), |j| start + j);
            format!("{}<{} chars>{}", &line[..start], end - start, &line[end..])
        }
        None => line.to_owned(),
    }
}

/// `load average 1.16 1.95 1.84` (1, 5, 15 min) from `/proc/loadavg`.
pub fn load_average() -> String {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let avg: Vec<&str> = text.split_whitespace().take(3).collect();
    format!("load average {}", avg.join(" "))
}
