//! Part 9: a fleet of daemons on one shared PostgreSQL vault
//! (`LATCHKEY_VAULT=postgres://…`), each with its own runtime dir, socket
//! and data dir, as on separate machines.
//!
//! - **Cached `token.get`** on a user credential (device-code login, 600-s
//!   token) through the client library: a daemon on a SQLite vault (same
//!   build, same credential kind), then one daemon on PostgreSQL, then each
//!   of three daemons on it. p50/p99 on one connection and req/s at 8; the
//!   ratio to SQLite (target: within 10 %: p50 ≤ 1.10× and req/s ≥ 0.91×;
//!   p99 shown). A cached call never touches the database. The SQLite
//!   daemon is measured beside the PostgreSQL ones, their runs (one
//!   connection, then 8) interleaved in rounds: on the 2-vCPU VM the
//!   one-connection latency can switch mode (≈ 7 µs ↔ ≈ 60 µs p50) in the
//!   middle of a run, for every daemon alike, SQLite's too, and other load
//!   comes and goes; measured one after the other, the daemons after the
//!   switch looked 9× slower.
//! - **Refresh requests per expiry**: a credential whose access tokens live
//!   2 s and whose refresh tokens rotate (reuse is refused as
//!   `invalid_grant`). At each expiry, 300 callers at once (a barrier),
//!   spread round-robin over the daemons; the provider must see exactly one
//!   `refresh_token` request per expiry and no refused one. First 5
//!   expiries on one daemon, then 10 + 10 on three (the provider answering
//!   at once, then after 100 ms as a remote one would).
//! - **The wait for a sibling's refresh**: during those bursts, the latency
//!   of the callers on the daemon that refreshed and of those on the
//!   daemons that took its token (they wait on the database's per-credential
//!   lock, then re-read). Which daemon refreshed is told by the daemons' log
//!   (`latchkey_daemon::fleet=debug`: a daemon that took a sibling's token
//!   says so) and `daemon.stats` (a daemon whose callers waited on a flight).
//!
//! The server: `source .ci/postgres-env.sh` (a private PostgreSQL with TLS
//! on loopback) exports `LATCHKEY_TEST_POSTGRES` (`postgres://USER@127.0.0.1:PORT/postgres`,
//! no password), `LATCHKEY_TEST_POSTGRES_PASSWORD_FILE` and
//! `LATCHKEY_TEST_POSTGRES_CA`. A server of one's own works the same way:
//! export those three (the CA optional: without it the daemons connect
//! without TLS, which they allow to loopback only); the role must be able
//! to create databases, and the server must listen on 127.0.0.1. Without
//! `LATCHKEY_TEST_POSTGRES` the part prints SKIPPED. It creates a database
//! `lk_bench_<random>` and drops it at the end, on error too (and on
//! Ctrl-C).

use crate::daemon::{DaemonGuard, Env, PASSPHRASE};
use crate::load::{self, new_histogram, p50, p99, us, Conn, Figures};
use crate::{procfs, refresh};
use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;
use latchkey_client::protocol::{UnlockParams, UnlockResult, VaultUnlock};
use latchkey_client::secrecy::{ExposeSecret, SecretString};
use latchkey_client::Client;
use latchkey_testkit::token_endpoint::{TokenEndpoint, UserClientConfig};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The credential of the cached figures: its token outlives the part.
const CACHED: &str = "fleet-cached";
const CACHED_LIFETIME: u64 = 600;
/// The credential refreshed at every expiry.
const REFRESHED: &str = "fleet";
const LIFETIME: u64 = 2;
const FLEET_SIZE: usize = 3;
/// Callers per expiry, spread round-robin over the daemons.
pub const CALLERS: usize = 300;
/// The provider's answer delay that makes the wait visible.
const DELAY: Duration = Duration::from_millis(100);
/// (daemons, provider delay, expiries) of each refresh phase: 20 on the fleet.
const PHASES: [(usize, Duration, usize); 3] = [
    (1, DELAY, 5),
    (FLEET_SIZE, Duration::ZERO, 10),
    (FLEET_SIZE, DELAY, 10),
];
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// PostgreSQL / SQLite, for p50 (at most) and req/s at 8 (at least 1/this).
pub const TARGET_RATIO: f64 = 1.10;
/// Cached figures: one-connection round trips per daemon (in [`ROUNDS`]
/// interleaved rounds), untimed ones before each round, and the 8-client
/// throughput point's duration (in as many interleaved rounds).
const LATENCY_ITERS: usize = 10_000;
const ROUNDS: usize = 5;
const WARMUP: usize = 200;
const POINT: Duration = Duration::from_secs(2);
/// The fleet module's debug line when a daemon takes a sibling's token.
const TAKEN_LINE: &str = "its token is taken";
const FLEET_LOG: &str = "warn,latchkey_daemon::fleet=debug";

/// The server the part uses, from the environment.
#[derive(Clone)]
struct Server {
    user: String,
    port: u16,
    password: String,
    password_file: PathBuf,
    ca: Option<PathBuf>,
}

/// `None` when `LATCHKEY_TEST_POSTGRES` is unset (the part is skipped).
fn server() -> Result<Option<Server>> {
    let Some(url) = std::env::var("LATCHKEY_TEST_POSTGRES")
        .ok()
        .filter(|v| !v.trim().is_empty())
    else {
        return Ok(None);
    };
    let rest = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))
        .with_context(|| format!("LATCHKEY_TEST_POSTGRES is not a postgres:// URL: {url:?}"))?;
    let (user, host) = rest
        .split_once('@')
        .with_context(|| format!("LATCHKEY_TEST_POSTGRES names no user: {url:?}"))?;
    if user.contains(':') {
        bail!("LATCHKEY_TEST_POSTGRES must carry no password (put it in LATCHKEY_TEST_POSTGRES_PASSWORD_FILE)");
    }
    let port = host
        .split('/')
        .next()
        .and_then(|h| h.rsplit_once(':'))
        .and_then(|(_, p)| p.parse().ok())
        .with_context(|| format!("LATCHKEY_TEST_POSTGRES names no port: {url:?}"))?;
    let password_file: PathBuf = std::env::var_os("LATCHKEY_TEST_POSTGRES_PASSWORD_FILE")
        .filter(|v| !v.is_empty())
        .context("LATCHKEY_TEST_POSTGRES_PASSWORD_FILE must be set beside LATCHKEY_TEST_POSTGRES")?
        .into();
    let password = std::fs::read_to_string(&password_file)
        .with_context(|| format!("reading {}", password_file.display()))?
        .trim()
        .to_owned();
    let ca = std::env::var_os("LATCHKEY_TEST_POSTGRES_CA")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from);
    Ok(Some(Server {
        user: user.to_owned(),
        port,
        password,
        password_file,
        ca,
    }))
}

impl Server {
    /// An administrator's connection (loopback, no TLS, as the tests do).
    fn connect(&self, db: &str) -> Result<postgres::Client> {
        postgres::Config::new()
            .host("127.0.0.1")
            .port(self.port)
            .user(&self.user)
            .password(&self.password)
            .dbname(db)
            .connect(postgres::NoTls)
            .with_context(|| format!("connecting to PostgreSQL on 127.0.0.1:{}", self.port))
    }
}

/// Databases created and not yet dropped (for the Ctrl-C handler).
static LIVE: Mutex<Vec<(Server, String)>> = Mutex::new(Vec::new());

fn drop_database(server: &Server, name: &str) -> Result<()> {
    server
        .connect("postgres")?
        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))?;
    Ok(())
}

/// Drops every database the part created and still holds. Call off any
/// tokio runtime (the sync client runs its own).
pub fn drop_databases() {
    let live = std::mem::take(&mut *LIVE.lock().unwrap_or_else(|p| p.into_inner()));
    for (server, name) in live {
        let _ = drop_database(&server, &name);
    }
}

/// A fresh database, dropped on drop.
struct Database {
    server: Server,
    name: String,
    admin: postgres::Client,
}

impl Database {
    fn create(server: &Server) -> Result<Database> {
        let name = format!("lk_bench_{:016x}", random_u64()?);
        let mut admin = server.connect("postgres")?;
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .with_context(|| format!("CREATE DATABASE {name}"))?;
        LIVE.lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((server.clone(), name.clone()));
        Ok(Database {
            server: server.clone(),
            name,
            admin,
        })
    }

    /// The daemons' URL: TLS verified against the CA when there is one.
    fn url(&self) -> String {
        let Server { user, port, .. } = &self.server;
        match &self.server.ca {
            Some(ca) => format!(
                "postgres://{user}@localhost:{port}/{}?sslmode=verify-full&sslrootcert={}",
                self.name,
                ca.display()
            ),
            None => format!("postgres://{user}@127.0.0.1:{port}/{}", self.name),
        }
    }

    /// The server processes serving this database (the daemons' connections).
    fn backends(&mut self) -> Vec<u32> {
        self.admin
            .query(
                "SELECT pid FROM pg_stat_activity WHERE datname = $1",
                &[&self.name],
            )
            .map(|rows| {
                rows.iter()
                    .filter_map(|r| u32::try_from(r.get::<_, i32>(0)).ok())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        let _ = self.admin.batch_execute(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ));
        LIVE.lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(_, n)| n != &self.name);
    }
}

fn random_u64() -> Result<u64> {
    let mut b = [0u8; 8];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .context("reading /dev/urandom")?;
    Ok(u64::from_le_bytes(b))
}

/// One daemon with its own temp dir (runtime dir, socket, data dir, log).
struct Member {
    daemon: DaemonGuard,
    env: Env,
    _dir: tempfile::TempDir,
}

impl Member {
    /// Call from the main thread (see [`DaemonGuard::start`]).
    fn start(bin: &Path, shared: Option<(&str, &Path)>) -> Result<Member> {
        let dir = tempfile::Builder::new()
            .prefix("latchkey-bench-fleet-")
            .tempdir()?;
        let mut env = Env::new(dir.path());
        if let Some((url, password_file)) = shared {
            env.vault_url = Some(url.to_owned());
            env.daemon_env.push((
                "LATCHKEY_VAULT_PASSWORD_FILE".into(),
                password_file.display().to_string(),
            ));
            if std::env::var_os("LATCHKEY_BENCH_DAEMON_LOG").is_none() {
                env.daemon_env
                    .push(("LATCHKEY_LOG".into(), FLEET_LOG.into()));
            }
        }
        let daemon = DaemonGuard::start(bin, &env)?;
        Ok(Member {
            daemon,
            env,
            _dir: dir,
        })
    }

    fn taken(&self) -> usize {
        self.daemon.log_text().matches(TAKEN_LINE).count()
    }
}

/// A client-library connection calling `token.get` on one credential.
struct NamedConn {
    client: Client,
    name: &'static str,
}

impl Conn for NamedConn {
    async fn round_trip(&mut self) -> Result<()> {
        drop(self.client.token(self.name).await?);
        Ok(())
    }
}

/// One daemon's cached figures.
pub struct Cached {
    pub label: String,
    pub figures: Figures,
    pub others: Option<f64>,
}

impl Cached {
    fn p50(&self) -> u64 {
        p50(&self.figures.latency)
    }
    fn p99(&self) -> u64 {
        p99(&self.figures.latency)
    }
    fn rate(&self) -> f64 {
        self.figures.rate(8)
    }
    /// (p50, p99, req/s) as ratios to `base`.
    pub fn ratios(&self, base: &Cached) -> (f64, f64, f64) {
        (
            self.p50() as f64 / base.p50() as f64,
            self.p99() as f64 / base.p99() as f64,
            self.rate() / base.rate(),
        )
    }
    pub fn met(&self, base: &Cached) -> bool {
        let (p50, _, rate) = self.ratios(base);
        p50 <= TARGET_RATIO && rate >= 1.0 / TARGET_RATIO
    }
}

/// One refresh phase's figures.
pub struct Expiries {
    pub daemons: usize,
    pub delay: Duration,
    pub expiries: usize,
    /// `refresh_token` requests at the endpoint, per expiry.
    pub per_expiry: Vec<u64>,
    /// Refused as reused or unknown (`invalid_grant`).
    pub rejected: u64,
    pub failed: usize,
    pub first_error: Option<String>,
    /// Expiries where the callers did not all get one new token.
    pub not_one_new_token: usize,
    /// Expiries whose refreshing daemon could not be told.
    pub unattributed: usize,
    /// How often each daemon was the refresher.
    pub refreshed_by: Vec<usize>,
    /// Latency of the callers on the refreshing daemon.
    pub refresher: Histogram<u64>,
    /// Latency of the callers on the daemons that took its token.
    pub siblings: Histogram<u64>,
    pub others: Option<f64>,
}

impl Expiries {
    pub fn requests(&self) -> u64 {
        self.per_expiry.iter().sum()
    }
    pub fn met(&self) -> bool {
        self.per_expiry.iter().all(|&n| n == 1)
            && self.rejected == 0
            && self.failed == 0
            && self.not_one_new_token == 0
    }
}

pub struct Outcome {
    /// The SQLite daemon's figures: beside the one PostgreSQL daemon's,
    /// then beside the fleet's.
    pub sqlite: Vec<Cached>,
    /// One daemon on PostgreSQL, then each of the fleet's, each with the
    /// index of the SQLite figures it is compared with (measured beside it).
    pub postgres: Vec<(Cached, usize)>,
    pub phases: Vec<Expiries>,
}

/// Runs part 9; `None` when no PostgreSQL server is configured (SKIPPED).
pub fn run(rt: &tokio::runtime::Runtime, bin: &Path) -> Result<Option<Outcome>> {
    let Some(server) = server()? else {
        println!("\n[9] SKIPPED fleet: no PostgreSQL server (LATCHKEY_TEST_POSTGRES unset); `source .ci/postgres-env.sh` starts one");
        return Ok(None);
    };
    println!(
        "\n[9] fleet: daemons sharing one PostgreSQL vault (each its own runtime dir, socket and data dir); {CALLERS} callers per expiry"
    );
    let started = Instant::now();
    let endpoint = rt.block_on(TokenEndpoint::start())?;
    let cached_config = UserClientConfig {
        login_lifetime: CACHED_LIFETIME,
        refresh_lifetime: CACHED_LIFETIME,
        refresh_delay: Duration::ZERO,
    };

    // The SQLite baseline: same build, same credential kind; measured
    // beside the one PostgreSQL daemon, then beside the fleet's.
    let sqlite_member = Member::start(bin, None)?;
    {
        let m = &sqlite_member;
        let socket = m.env.socket.clone();
        rt.block_on(async {
            let mut c = Client::connect_to(&socket).await?;
            crate::daemon::init_vault(&mut c, PASSPHRASE).await?;
            refresh::add_provider(&socket, &endpoint).await?;
            refresh::add_and_log_in(&mut c, &endpoint, CACHED, cached_config).await?;
            c.token(CACHED).await.context("the SQLite warm-up call")?;
            anyhow::Ok(())
        })?;
    }

    let mut db = Database::create(&server)?;
    let url = db.url();
    println!(
        "  database {} on 127.0.0.1:{} ({}), dropped at the end",
        db.name,
        server.port,
        if server.ca.is_some() {
            "TLS, sslmode=verify-full against LATCHKEY_TEST_POSTGRES_CA"
        } else {
            "no TLS: loopback, no LATCHKEY_TEST_POSTGRES_CA"
        }
    );
    let shared = Some((url.as_str(), server.password_file.as_path()));
    let mut members = vec![Member::start(bin, shared)?];
    let first = members[0].env.socket.clone();
    let refreshed_config = UserClientConfig {
        login_lifetime: LIFETIME,
        refresh_lifetime: LIFETIME,
        refresh_delay: Duration::ZERO,
    };
    let mut previous = rt
        .block_on(async {
            let mut c = Client::connect_to(&first).await?;
            crate::daemon::init_vault(&mut c, PASSPHRASE).await?;
            refresh::add_provider(&first, &endpoint).await?;
            refresh::add_and_log_in(&mut c, &endpoint, CACHED, cached_config).await?;
            refresh::add_and_log_in(&mut c, &endpoint, REFRESHED, refreshed_config).await?;
            c.token(CACHED)
                .await
                .context("the PostgreSQL warm-up call")?;
            anyhow::Ok(())
        })
        .map(|()| {
            endpoint
                .user_stats(REFRESHED)
                .last_access
                .map(|(t, _)| t)
                .unwrap_or_default()
        })?;
    println!(
        "  cached token.get on a user credential: a SQLite daemon (pid {}) and the one PostgreSQL daemon (pid {}), interleaved",
        sqlite_member.daemon.pid(),
        members[0].daemon.pid()
    );
    let mut pids = vec![sqlite_member.daemon.pid(), members[0].daemon.pid()];
    pids.extend(db.backends());
    let mut sqlite = Vec::new();
    let mut postgres = Vec::new();
    let mut group = compare(
        rt,
        &[
            (&sqlite_member, "SQLite".into()),
            (&members[0], "PostgreSQL, 1 daemon".into()),
        ],
        &pids,
    )?
    .into_iter();
    sqlite.extend(group.next());
    postgres.extend(group.map(|c| (c, 0)));
    let mut phases = Vec::new();

    for &(daemons, delay, count) in &PHASES {
        while members.len() < daemons {
            let m = Member::start(bin, shared)?;
            let socket = m.env.socket.clone();
            rt.block_on(async {
                let mut c = Client::connect_to(&socket).await?;
                let _: UnlockResult = c
                    .request::<VaultUnlock>(&UnlockParams {
                        passphrase: Some(SecretString::from(PASSPHRASE)),
                        ..UnlockParams::default()
                    })
                    .await
                    .context("vault.unlock of a fleet daemon")?;
                c.token(CACHED)
                    .await
                    .context("a fleet daemon's warm-up call")?;
                anyhow::Ok(())
            })?;
            members.push(m);
            if members.len() == daemons {
                println!(
                    "  cached token.get: the SQLite daemon (pid {}) and the {daemons} fleet daemons (pids {}; the first logged in, the others only unlocked), interleaved",
                    sqlite_member.daemon.pid(),
                    members
                        .iter()
                        .map(|m| m.daemon.pid().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                let mut pids: Vec<u32> = std::iter::once(&sqlite_member)
                    .chain(&members)
                    .map(|m| m.daemon.pid())
                    .collect();
                pids.extend(db.backends());
                let mut labelled = vec![(&sqlite_member, "SQLite (again)".to_owned())];
                for (i, m) in members.iter().enumerate() {
                    labelled.push((
                        m,
                        format!("PostgreSQL, fleet daemon {} of {daemons}", i + 1),
                    ));
                }
                let mut group = compare(rt, &labelled, &pids)?.into_iter();
                sqlite.extend(group.next());
                let base = sqlite.len() - 1;
                postgres.extend(group.map(|c| (c, base)));
            }
        }
        endpoint.set_refresh_delay(REFRESHED, delay);
        println!(
            "  refresh: {count} expiries of a {LIFETIME}-s token, {daemons} daemon(s), provider answering {}; {CALLERS} callers at once at each",
            if delay.is_zero() {
                "at once".into()
            } else {
                format!("after {} ms", delay.as_millis())
            }
        );
        let mut pids: Vec<u32> = members.iter().map(|m| m.daemon.pid()).collect();
        pids.extend(db.backends());
        let before = procfs::CpuSnapshot::take_pids(&pids);
        let mut phase = rt.block_on(expiries(
            &members[..daemons],
            &endpoint,
            delay,
            count,
            &mut previous,
        ))?;
        phase.others = print_others(before, &pids);
        phases.push(phase);
    }
    drop(members);
    drop(db);
    drop(sqlite_member);
    println!("  part 9 took {:.0} s", started.elapsed().as_secs_f64());
    let outcome = Outcome {
        sqlite,
        postgres,
        phases,
    };
    print_ratios(&outcome);
    Ok(Some(outcome))
}

fn print_others(before: Option<procfs::CpuSnapshot>, pids: &[u32]) -> Option<f64> {
    crate::others_line(
        before,
        procfs::CpuSnapshot::take_pids(pids),
        "    ",
        "; the bench, its daemons and their PostgreSQL backends not counted",
    )
}

/// Cached `token.get` on [`CACHED`] against each daemon of `group`, the
/// latency runs interleaved in [`ROUNDS`] rounds (on this VM the
/// one-connection latency can change mode in the middle of a run, for
/// every daemon alike: interleaved, each daemon's figure spans the same
/// time), then the throughput at 8 connections, interleaved likewise.
fn compare(
    rt: &tokio::runtime::Runtime,
    group: &[(&Member, String)],
    pids: &[u32],
) -> Result<Vec<Cached>> {
    let before = procfs::CpuSnapshot::take_pids(pids);
    let connect = |socket: PathBuf| async move {
        anyhow::Ok(NamedConn {
            client: Client::connect_to(&socket).await?,
            name: CACHED,
        })
    };
    let mut latency: Vec<Histogram<u64>> = group.iter().map(|_| new_histogram()).collect();
    for _ in 0..ROUNDS {
        for ((m, _), hist) in group.iter().zip(&mut latency) {
            let conn = rt.block_on(connect(m.env.socket.clone()))?;
            // In a spawned task, as `Plan::run` does (no thread hop per call).
            let h = rt
                .block_on(rt.spawn(load::latency(conn, WARMUP, LATENCY_ITERS / ROUNDS)))
                .context("a latency task panicked")??;
            hist.add(&h).expect("histograms share bounds");
        }
    }
    // The throughput points interleaved too, pooled per daemon.
    let mut points: Vec<load::Throughput> = group
        .iter()
        .map(|_| load::Throughput {
            per_sec: 0.0,
            total: 0,
            elapsed: Duration::ZERO,
            latency: new_histogram(),
        })
        .collect();
    for _ in 0..ROUNDS {
        for ((m, _), pooled) in group.iter().zip(&mut points) {
            let mut conns = Vec::with_capacity(8);
            for _ in 0..8 {
                conns.push(rt.block_on(connect(m.env.socket.clone()))?);
            }
            let t = rt.block_on(load::throughput(conns, WARMUP / 10, POINT / ROUNDS as u32))?;
            pooled.total += t.total;
            pooled.elapsed += t.elapsed;
            pooled
                .latency
                .add(&t.latency)
                .expect("histograms share bounds");
        }
    }
    let mut out = Vec::with_capacity(group.len());
    for (((_, label), latency), mut t) in group.iter().zip(latency).zip(points) {
        t.per_sec = t.total as f64 / t.elapsed.as_secs_f64();
        println!(
            "    {label:<34} 1 client: p50 {}  p99 {}  p99.9 {}  max {} ({} calls);  8 clients: {:.0} req/s (p50 {}  p99 {}); {ROUNDS} interleaved rounds each",
            us(p50(&latency)),
            us(p99(&latency)),
            us(latency.value_at_quantile(0.999)),
            us(latency.max()),
            latency.len(),
            t.per_sec,
            us(p50(&t.latency)),
            us(p99(&t.latency)),
        );
        let calls = latency.len() + t.total;
        out.push(Cached {
            label: label.clone(),
            figures: Figures {
                latency,
                throughput: vec![(8, t)],
                calls,
            },
            others: None,
        });
    }
    let others = print_others(before, pids);
    for c in &mut out {
        c.others = others;
    }
    Ok(out)
}

fn print_ratios(o: &Outcome) {
    println!(
        "  cached token.get, PostgreSQL / SQLite (target: within {:.0} %: p50 ≤ {TARGET_RATIO:.2}×, req/s at 8 ≥ {:.2}×; p99 for information), each against the SQLite daemon measured beside it:",
        (TARGET_RATIO - 1.0) * 100.0,
        1.0 / TARGET_RATIO
    );
    for (i, base) in o.sqlite.iter().enumerate() {
        println!(
            "    {:<34} p50 {:>9}  p99 {:>9}  {:>7.0} req/s at 8",
            base.label,
            us(base.p50()),
            us(base.p99()),
            base.rate()
        );
        for (c, _) in o.postgres.iter().filter(|(_, b)| *b == i) {
            let (p50, p99, rate) = c.ratios(base);
            println!(
                "    {:<34} p50 {:>9} ({p50:.2}×)  p99 {:>9} ({p99:.2}×)  {:>7.0} req/s at 8 ({rate:.2}×)  {}",
                c.label,
                us(c.p50()),
                us(c.p99()),
                c.rate(),
                if c.met(base) { "MET" } else { "NOT MET" }
            );
        }
    }
}

/// Latency figures of a histogram, or "none".
pub fn spread(h: &Histogram<u64>) -> String {
    if h.is_empty() {
        return "none".into();
    }
    let ms = |n: u64| format!("{:.1} ms", n as f64 / 1e6);
    format!(
        "p50 {}  p99 {}  max {} ({} calls)",
        ms(p50(h)),
        ms(p99(h)),
        ms(h.max()),
        h.len()
    )
}

/// `count` expiries of [`REFRESHED`] (see the module doc), the callers
/// spread over `members`; `previous` is the token the last burst got.
async fn expiries(
    members: &[Member],
    endpoint: &TokenEndpoint,
    delay: Duration,
    count: usize,
    previous: &mut String,
) -> Result<Expiries> {
    let n = members.len();
    let mut admins = Vec::with_capacity(n);
    for m in members {
        admins.push(Client::connect_to(&m.env.socket).await?);
    }
    let mut callers = Vec::with_capacity(CALLERS);
    for i in 0..CALLERS {
        callers.push((
            i % n,
            Client::connect_to(&members[i % n].env.socket)
                .await
                .with_context(|| format!("opening caller {} of {CALLERS}", i + 1))?,
        ));
    }
    let mut out = Expiries {
        daemons: n,
        delay,
        expiries: count,
        per_expiry: Vec::with_capacity(count),
        rejected: 0,
        failed: 0,
        first_error: None,
        not_one_new_token: 0,
        unattributed: 0,
        refreshed_by: vec![0; n],
        refresher: new_histogram(),
        siblings: new_histogram(),
        others: None,
    };
    for expiry in 1..=count {
        // Until the last token is stale everywhere (bounded): its whole
        // lifetime from when it was minted, and a little more.
        let now = Instant::now();
        let stale = endpoint
            .minted(previous)
            .map_or(now + Duration::from_secs(LIFETIME), |(at, _)| {
                at + Duration::from_secs(LIFETIME)
            })
            + Duration::from_millis(200);
        tokio::time::sleep_until(stale.min(now + Duration::from_secs(LIFETIME + 5)).into()).await;

        let before = endpoint.user_stats(REFRESHED);
        let mut stats_before = Vec::with_capacity(n);
        for a in &mut admins {
            stats_before.push(refresh::stats(a).await?);
        }
        let taken_before: Vec<usize> = members.iter().map(Member::taken).collect();
        let burst = latchkey_testkit::burst(callers, |(d, mut client)| async move {
            let start = Instant::now();
            let reply = tokio::time::timeout(CALL_TIMEOUT, client.token(REFRESHED)).await;
            let latency = start.elapsed();
            let token = match reply {
                Ok(Ok(t)) => Ok(t.access_token.expose_secret().to_owned()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!("no reply within {CALL_TIMEOUT:?}")),
            };
            (d, latency, token, client)
        })
        .await
        .context("a fleet caller panicked")?;
        let after = endpoint.user_stats(REFRESHED);
        let mut fetched = Vec::with_capacity(n);
        for (a, b) in admins.iter_mut().zip(&stats_before) {
            fetched.push(refresh::delta(&refresh::stats(a).await?, b).fetches);
        }
        let took: Vec<bool> = members
            .iter()
            .zip(&taken_before)
            .map(|(m, &b)| m.taken() > b)
            .collect();
        let requests = after.refresh_requests() - before.refresh_requests();
        out.rejected += after.refresh_rejected - before.refresh_rejected;
        out.per_expiry.push(requests);
        // The refresher: its callers waited on a flight, and it took no
        // sibling's token.
        let candidates: Vec<usize> = (0..n).filter(|&d| fetched[d] > 0 && !took[d]).collect();
        let refresher = match candidates.as_slice() {
            [d] if requests > 0 => Some(*d),
            _ => None,
        };
        match refresher {
            Some(d) => out.refreshed_by[d] += 1,
            None => out.unattributed += 1,
        }
        let mut tokens = HashSet::new();
        callers = Vec::with_capacity(CALLERS);
        for (d, latency, token, client) in burst.results {
            callers.push((d, client));
            match token {
                Ok(t) => {
                    tokens.insert(t);
                }
                Err(e) => {
                    out.failed += 1;
                    out.first_error.get_or_insert(e);
                }
            }
            let nanos = latency.as_nanos() as u64;
            match refresher {
                Some(r) if r == d => out.refresher.saturating_record(nanos),
                Some(_) => out.siblings.saturating_record(nanos),
                None => {}
            }
        }
        let token = tokens.iter().next().cloned();
        if tokens.len() != 1 || token.as_ref() == Some(previous) {
            out.not_one_new_token += 1;
        }
        if requests != 1 || tokens.len() != 1 {
            println!(
                "    expiry {expiry}: {requests} refresh requests, {} distinct tokens; per daemon: token requests {fetched:?}, took a sibling's {took:?}",
                tokens.len()
            );
        }
        if let Some(t) = token {
            *previous = t;
        }
    }
    let requests = out.requests();
    println!(
        "    refresh requests at the endpoint: {requests} for {count} expiries ({:.2} per expiry; target exactly 1.00), refused as reused (invalid_grant): {}; callers failed: {}{}; expiries where not every caller got one new token: {}",
        requests as f64 / count as f64,
        out.rejected,
        out.failed,
        out.first_error
            .as_ref()
            .map_or(String::new(), |e| format!(" (first error: {e})")),
        out.not_one_new_token
    );
    println!(
        "    the refresher: {}{}",
        out.refreshed_by
            .iter()
            .enumerate()
            .map(|(d, k)| format!("daemon {} {k}×", d + 1))
            .collect::<Vec<_>>()
            .join(", "),
        if out.unattributed > 0 {
            format!(", not told {}×", out.unattributed)
        } else {
            String::new()
        }
    );
    println!(
        "    callers on the refreshing daemon:           {}",
        spread(&out.refresher)
    );
    if n > 1 {
        println!(
            "    callers on the daemons that took its token: {}",
            spread(&out.siblings)
        );
        if !out.refresher.is_empty() && !out.siblings.is_empty() {
            println!(
                "    a sibling's caller waits {:+.1} ms (p50) / {:+.1} ms (p99) longer than the refresher's own",
                (p50(&out.siblings) as f64 - p50(&out.refresher) as f64) / 1e6,
                (p99(&out.siblings) as f64 - p99(&out.refresher) as f64) / 1e6,
            );
        }
    }
    Ok(out)
}
