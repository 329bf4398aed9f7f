//! Printing: the machine line, the cached/raw ratios, and the closing
//! summary with every figure and MET / NOT MET against each target.

use crate::fleet;
use crate::flood;
use crate::load::{p50, p99, us, Figures, Plan};
use crate::process::{CliFigures, TARGET_CLI_RATIO};
use crate::procfs::Cpu;
use crate::refresh;

/// Targets of issue 8 at 8 and 64 connections, against the floor (the
/// faster echo server at each point).
pub const TARGET_P50_RATIO: f64 = 1.5;
pub const TARGET_P99_RATIO: f64 = 3.0;
pub const TARGET_RATE_SHARE: f64 = 0.8;
/// The client counts the targets apply at.
pub const TARGET_CLIENTS: [usize; 2] = [8, 64];
/// Idle daemon memory: all of it, and the anonymous part (heap, stacks:
/// what is the daemon's alone; the rest is code and libraries mapped from
/// files, which the page cache shares).
pub const TARGET_RSS_KIB: u64 = 8 * 1024;
pub const TARGET_ANON_KIB: u64 = 5 * 512;

/// Everything the summary reports.
pub struct Results {
    /// The tokio echo server (part 1).
    pub raw: Figures,
    /// The thread-per-connection echo server (part 1b).
    pub threads: Figures,
    pub cached: Figures,
    /// CPU µs per round trip as (server, client), for the tokio echo, the
    /// thread echo, then cached.
    pub cpu_us: [(Option<Cpu>, Option<Cpu>); 3],
    /// Share of the machine other processes used during each of the three.
    pub others: [Option<f64>; 3],
    /// Token-endpoint requests during the cached phase.
    pub served: u64,
    pub cli: Option<CliFigures>,
    /// Idle VmRSS and RssAnon in KiB.
    pub rss: Option<u64>,
    pub rss_anon: Option<u64>,
}

/// The two echo servers' names, in the order [`Results`] holds them.
const ECHO_NAMES: [&str; 2] = ["tokio echo", "thread echo"];

/// The floor at one point: the echo server that was faster there.
struct Floor {
    name: &'static str,
    per_sec: f64,
    p50: u64,
    p99: u64,
}

/// The floor at `clients` concurrent connections: the echo with the higher
/// throughput there, with its own latency figures.
fn floor_at(echoes: &[&Figures], clients: usize) -> Option<Floor> {
    echoes
        .iter()
        .zip(ECHO_NAMES)
        .filter_map(|(f, name)| {
            let (_, t) = f.throughput.iter().find(|(n, _)| *n == clients)?;
            Some(Floor {
                name,
                per_sec: t.per_sec,
                p50: p50(&t.latency),
                p99: p99(&t.latency),
            })
        })
        .max_by(|a, b| a.per_sec.total_cmp(&b.per_sec))
}

/// The floor of the one-connection latency run: the echo with the lower p50.
fn latency_floor(echoes: &[&Figures]) -> Floor {
    echoes
        .iter()
        .zip(ECHO_NAMES)
        .map(|(f, name)| Floor {
            name,
            per_sec: f64::NAN,
            p50: p50(&f.latency),
            p99: p99(&f.latency),
        })
        .min_by_key(|f| f.p50)
        .expect("there are echo servers")
}

/// Cached figures at one point next to a floor: (req/s share, p50 ratio,
/// p99 ratio).
fn versus(cached: &Figures, clients: usize, floor: &Floor) -> Option<(f64, f64, f64)> {
    let (_, t) = cached.throughput.iter().find(|(n, _)| *n == clients)?;
    Some((
        t.per_sec / floor.per_sec,
        p50(&t.latency) as f64 / floor.p50 as f64,
        p99(&t.latency) as f64 / floor.p99 as f64,
    ))
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

/// Cached against the floor (the faster echo server) at every point.
pub fn ratios(echoes: &[&Figures], cached: &Figures) {
    let lat = latency_floor(echoes);
    println!(
        "  cached/floor, 1 client sequential: p50 {:.2}×  p99 {:.2}×  (floor: {})",
        p50(&cached.latency) as f64 / lat.p50 as f64,
        p99(&cached.latency) as f64 / lat.p99 as f64,
        lat.name,
    );
    for clients in [1, 8, 64] {
        let Some(floor) = floor_at(echoes, clients) else {
            continue;
        };
        if let Some((share, p50r, p99r)) = versus(cached, clients, &floor) {
            println!(
                "  cached/floor at {clients:>2}: req/s {:.0}%  p50 {p50r:.2}×  p99 {p99r:.2}×  (floor: {}, {:.0} req/s)",
                share * 100.0,
                floor.name,
                floor.per_sec,
            );
        }
    }
}

/// One summary line: the claim, then the verdict in a column.
fn verdict_line(claim: String, ok: bool) {
    println!("{claim:<62} {}", if ok { "MET" } else { "NOT MET" });
}

/// The closing summary of whichever parts ran.
pub fn summary(
    base: Option<&Results>,
    refresh: Option<&refresh::Outcome>,
    flood: Option<&flood::Outcome>,
    fleet: Option<&fleet::Outcome>,
) {
    println!("\n==================== summary ====================");
    if let Some(r) = base {
        base_summary(r);
    }
    if let Some(o) = refresh {
        refresh_summary(o);
    }
    if let Some(o) = flood {
        flood_summary(o);
    }
    if let Some(o) = fleet {
        fleet_summary(o);
    }
    let busy = |v: Option<f64>| v.map_or("?".into(), |v| format!("{:.0}%", v * 100.0));
    let mut during = Vec::new();
    if let Some(r) = base {
        during.push(format!("{} during the tokio echo", busy(r.others[0])));
        during.push(format!("{} during the thread echo", busy(r.others[1])));
        during.push(format!("{} during cached", busy(r.others[2])));
    }
    if let Some(o) = refresh {
        during.push(format!("{} during the burst", busy(o.others[0])));
        during.push(format!("{} during the steady run", busy(o.others[1])));
    }
    if let Some(o) = flood {
        during.push(format!("{} during B alone", busy(o.others[0])));
        during.push(format!("{} during the flood", busy(o.others[1])));
    }
    if let Some(o) = fleet {
        for c in o.sqlite.iter().chain(o.postgres.iter().map(|(c, _)| c)) {
            during.push(format!(
                "{} during fleet cached {}",
                busy(c.others),
                c.label
            ));
        }
        for p in &o.phases {
            during.push(format!(
                "{} during fleet refresh ({} daemon(s), {} ms)",
                busy(p.others),
                p.daemons,
                p.delay.as_millis()
            ));
        }
    }
    if during.is_empty() {
        println!("{} at the end", load_average());
    } else {
        println!(
            "other processes' share of the machine: {}; {} at the end",
            during.join(", "),
            load_average()
        );
    }
    println!("=================================================");
}

fn fleet_summary(o: &fleet::Outcome) {
    let met = |m: bool| if m { "MET" } else { "NOT MET" };
    for (c, base) in &o.postgres {
        let base = &o.sqlite[*base];
        let (p50, p99, rate) = c.ratios(base);
        println!(
            "[9] {}: cached token.get vs SQLite p50 {p50:.2}×  p99 {p99:.2}×  req/s at 8 {rate:.2}× (target within {:.0} %) {}",
            c.label,
            (fleet::TARGET_RATIO - 1.0) * 100.0,
            met(c.met(base))
        );
    }
    for p in &o.phases {
        println!(
            "[9] {} daemon(s), provider {} ms: {} refresh requests / {} expiries = {:.2} (target 1.00), invalid_grant {}, failed {} {}",
            p.daemons,
            p.delay.as_millis(),
            p.requests(),
            p.expiries,
            p.requests() as f64 / p.expiries as f64,
            p.rejected,
            p.failed,
            met(p.met())
        );
        println!("      refresher's callers: {}", fleet::spread(&p.refresher));
        if p.daemons > 1 {
            println!("      siblings' callers:   {}", fleet::spread(&p.siblings));
        }
    }
}

fn flood_summary(o: &flood::Outcome) {
    verdict_line(
        format!(
            "app B's p99 with app A flooding / alone = {:.2}× (target ≤ {}×)",
            o.ratio(),
            flood::TARGET_P99_RATIO
        ),
        o.met(),
    );
    let (i, f) = (&o.idle.latency, &o.flooded.latency);
    println!(
        "  (B: {:.0} cached token.get/s, {} s per condition in {} rounds: p99 {} alone, {} flooded; p50 {} → {}; {} of B's calls refused; A: {:.0} calls/s asked for {:.0}, {} answered, {} refused{})",
        flood::MEASURE_RATE,
        o.secs,
        flood::ROUNDS,
        us(p99(i)),
        us(p99(f)),
        us(p50(i)),
        us(p50(f)),
        o.idle.refused + o.flooded.refused,
        o.flood.rate(),
        o.target_rate,
        o.flood.answered,
        o.flood.refused,
        o.daemon_cpu_us
            .map_or(String::new(), |c| format!("; daemon CPU {c:.1} µs per call")),
    );
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
    let echoes = [&r.raw, &r.threads];
    let cpu = |v: Option<Cpu>| v.map_or("?".into(), |v| format!("{:.1} µs", v.total()));
    for (label, f, (server, client)) in [
        ("tokio echo      ", &r.raw, r.cpu_us[0]),
        ("thread echo     ", &r.threads, r.cpu_us[1]),
        ("cached token.get", &r.cached, r.cpu_us[2]),
    ] {
        let at = |n: usize| {
            f.throughput
                .iter()
                .find(|(c, _)| *c == n)
                .map_or(String::from("?"), |(_, t)| {
                    format!(
                        "{:.0} (p50 {} p99 {})",
                        t.per_sec,
                        us(p50(&t.latency)),
                        us(p99(&t.latency))
                    )
                })
        };
        println!(
            "{label}  1 conn p50 {} p99 {}  req/s 1: {:.0}  8: {}  64: {}  CPU/call server {} client {}",
            us(p50(&f.latency)),
            us(p99(&f.latency)),
            f.rate(1),
            at(8),
            at(64),
            cpu(server),
            cpu(client),
        );
    }
    for clients in TARGET_CLIENTS {
        let Some(floor) = floor_at(&echoes, clients) else {
            continue;
        };
        let Some((share, p50r, p99r)) = versus(&r.cached, clients, &floor) else {
            continue;
        };
        let of = floor.name;
        verdict_line(
            format!(
                "req/s@{clients} cached / {of} = {:.0}% (target ≥ {:.0}%)",
                share * 100.0,
                TARGET_RATE_SHARE * 100.0
            ),
            share >= TARGET_RATE_SHARE,
        );
        verdict_line(
            format!("p50@{clients} cached / {of} = {p50r:.2}× (target ≤ {TARGET_P50_RATIO}×)"),
            p50r <= TARGET_P50_RATIO,
        );
        verdict_line(
            format!("p99@{clients} cached / {of} = {p99r:.2}× (target ≤ {TARGET_P99_RATIO}×)"),
            p99r <= TARGET_P99_RATIO,
        );
    }
    verdict_line(
        format!(
            "token endpoint requests in cached phase = {} (must be 1)",
            r.served
        ),
        r.served == 1,
    );
    match &r.cli {
        Some(c) => match c.floor_p50 {
            Some(floor) => verdict_line(
                format!(
                    "latchkey token p50 {} (p99 {}) / empty Rust binary {} = {:.2}× (target ≤ {TARGET_CLI_RATIO}×)",
                    us(c.cli_p50),
                    us(c.cli_p99),
                    us(floor),
                    c.cli_p50 as f64 / floor as f64
                ),
                c.cli_p50 as f64 <= floor as f64 * TARGET_CLI_RATIO,
            ),
            None => println!(
                "latchkey token p50 {} (no empty Rust binary to compare with)",
                us(c.cli_p50)
            ),
        },
        None => println!("latchkey token: SKIPPED (see part 3)"),
    }
    match (r.rss, r.rss_anon) {
        (Some(rss), Some(anon)) => {
            verdict_line(
                format!(
                    "idle daemon VmRSS = {:.1} MiB (target ≤ {} MiB)",
                    rss as f64 / 1024.0,
                    TARGET_RSS_KIB / 1024
                ),
                rss <= TARGET_RSS_KIB,
            );
            verdict_line(
                format!(
                    "idle daemon RssAnon = {:.1} MiB (target ≤ {:.1} MiB)",
                    anon as f64 / 1024.0,
                    TARGET_ANON_KIB as f64 / 1024.0
                ),
                anon <= TARGET_ANON_KIB,
            );
        }
        _ => println!("idle daemon memory: could not read /proc/<pid>/status"),
    }
    println!(
        "(DESIGN.md's measured floor for a raw round trip is p50 ≈ 12–15 µs, ≈ 70 k/s on one\n connection, ≈ 170 k/s over 8; compare the echo lines above to see how this machine differs.)"
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
