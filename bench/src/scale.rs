//! Part 7: what grows with the work. The same figures for vaults of 1, 100
//! and 10,000 credentials (over 1, 10 and 100 providers, each credential
//! with a stored token): daemon start to its first `hello` reply (the
//! daemon starts locked, so no Argon2id), unlock and the part of it beyond
//! the key derivation, anonymous memory after unlock, `credential list`,
//! `status`, and cached `token.get` p50. Then 1 / 64 / 1,000 open idle
//! connections (memory per connection, p50 of one active caller meanwhile),
//! an audit table of 1,000,000 rows against a small one, and a cold start:
//! `latchkey token NAME` with no daemon running and the passphrase in
//! `LATCHKEY_PASSPHRASE_FILE`.
//!
//! The key derivation is measured alone in this process with the vault
//! slot's own parameters (the `argon2` crate, the daemon's call), so
//! "beyond the KDF" is unlock minus that median.
//!
//! Filling the vaults: every `credential.add` and every token the daemon
//! stores is its own `synchronous=FULL` transaction, one fsync each (about
//! 8 ms on this VM's disk: 20,000 of them would take minutes). So the
//! vaults are filled by the daemon on tmpfs (`/dev/shm`) when there is one,
//! then the stopped daemon's file is copied to the disk temp dir, where
//! every figure is measured. The rows are the daemon's own sealed rows
//! (sealing binds vault id, table, row id and field, never the path). The
//! fill rate on disk is measured on a few adds and printed.
//!
//! Every daemon is stopped when the part ends, however it ends (their
//! guards), and every file is in temp dirs removed at the end.

use crate::daemon::{self, DaemonGuard, Env, StrayDaemon, PASSPHRASE};
use crate::load::{new_histogram, p50, p99, us};
use anyhow::{bail, Context, Result};
use latchkey_client::protocol::{
    CredentialInfo, CredentialList, Empty, StatusResult, UnlockParams, UnlockResult, VaultUnlock,
};
use latchkey_client::secrecy::SecretString;
use latchkey_client::Client;
use latchkey_testkit::token_endpoint::TokenEndpoint;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// (credentials, providers) per vault size.
const SIZES: &[(usize, usize)] = &[(1, 1), (100, 10), (10_000, 100)];
/// Connections that fill a vault at once.
const FILL_CONNS: usize = 8;
/// `credential.add` calls timed on disk, to show what a disk fill costs.
const DISK_ADDS: usize = 20;
/// Daemon starts (each followed by an unlock) per vault: medians of these.
const RESTARTS: usize = 3;
/// Calls of `credential list` and `status` per vault: medians.
const LIST_CALLS: usize = 5;
const TOKEN_WARMUP: usize = 500;
const TOKEN_CALLS: usize = 5_000;
const AFTER_LIST_CALLS: usize = 1_000;
/// Open idle connections.
const CONNECTIONS: &[usize] = &[1, 64, 1_000];
/// Sequential calls of the one active caller while they are open.
const ACTIVE_CALLS: usize = 3_000;
/// Time for the daemon to settle before memory is read.
const SETTLE: Duration = Duration::from_millis(300);
const AUDIT_ROWS: u64 = 1_000_000;
const COLD_RUNS: usize = 3;
const KDF_RUNS: usize = 3;

/// Goals (issue 8).
const GOAL_UNLOCK_BEYOND_KDF: Duration = Duration::from_millis(500);
const GOAL_ANON_KIB: u64 = 64 * 1024;
const GOAL_TOKEN_P50_RATIO: f64 = 1.10;

/// Open files part 7 needs: a thousand client connections here (the
/// daemon inherits the limit, and holds as many).
pub const OPEN_FILES: u64 = 4 * 1_000;

/// The figures of one vault as measured on disk.
struct VaultFigures {
    /// Median of [`RESTARTS`] starts: spawn to the first `hello` reply.
    start: Duration,
    /// Median unlock call (passphrase, Argon2id included).
    unlock: Duration,
    /// Median daemon CPU during the unlock call.
    unlock_cpu: Duration,
    /// RssAnon after the last unlock, KiB.
    anon_kib: Option<u64>,
    /// Median `credential list` call, and its result's JSON size.
    list: Duration,
    list_bytes: usize,
    listed: usize,
    /// Median `status` call.
    status: Duration,
    /// Cached `token.get`, one connection, sequential (ns).
    token_p50: u64,
    token_p99: u64,
    /// The daemon's CPU per cached `token.get` (µs), user + kernel.
    token_cpu_us: Option<f64>,
    /// The same, on the connection that made the `credential list` calls.
    after_list_p50: u64,
}

/// Part 7. `bin` is `latchkeyd`, `cli` `latchkey` when built.
pub fn run(rt: &tokio::runtime::Runtime, bin: &Path, cli: Option<&Path>) -> Result<()> {
    println!("\n[7] costs as the work grows (vaults on disk; figures are medians of {RESTARTS} daemon starts, {LIST_CALLS} list/status calls)");
    let disk = tempfile::Builder::new()
        .prefix("latchkey-bench-scale-")
        .tempdir()?;
    let shm = Path::new("/dev/shm");
    let fill_dir = if shm.is_dir() {
        Some(
            tempfile::Builder::new()
                .prefix("latchkey-bench-fill-")
                .tempdir_in(shm)?,
        )
    } else {
        println!("  no /dev/shm: the vaults are filled on disk (slow: one fsync per add and per stored token)");
        None
    };
    let endpoint = rt.block_on(TokenEndpoint::start())?;

    disk_add_rate(rt, bin, disk.path(), &endpoint)?;

    let mut kdf = None;
    let mut rows = Vec::new();
    let mut small: Option<(Env, DaemonGuard)> = None;
    for (i, &(credentials, providers)) in SIZES.iter().enumerate() {
        let name = format!("v{credentials}");
        let env = env_in(&disk.path().join(&name))?;
        let fill = {
            let fill_env = match &fill_dir {
                Some(d) => env_in(&d.path().join(&name))?,
                None => env.clone(),
            };
            let daemon = DaemonGuard::start(bin, &fill_env)?;
            let fill = rt.block_on(daemon::fill_vault(
                &fill_env.socket,
                &endpoint,
                providers,
                credentials,
                FILL_CONNS,
            ))?;
            drop(daemon);
            if fill_dir.is_some() {
                copy_vault(&fill_env.vault, &env.vault)?;
                std::fs::remove_dir_all(&fill_env.runtime_dir).ok();
                std::fs::remove_dir_all(&fill_env.data_home).ok();
            }
            fill
        };
        println!(
            "  filled {credentials} credentials over {providers} providers{}: providers {:.2} s, credentials {:.2} s ({:.0}/s), tokens {:.2} s ({:.0}/s), {FILL_CONNS} connections; vault file {}",
            if fill_dir.is_some() { " on tmpfs" } else { "" },
            fill.providers.as_secs_f64(),
            fill.credentials.as_secs_f64(),
            credentials as f64 / fill.credentials.as_secs_f64(),
            fill.tokens.as_secs_f64(),
            credentials as f64 / fill.tokens.as_secs_f64(),
            file_size(&env.vault),
        );
        if kdf.is_none() {
            kdf = Some(measure_kdf(&env.vault)?);
        }
        let (figures, guard) = measure_vault(rt, bin, &env, credentials)?;
        rows.push((credentials, providers, figures));
        if i == 0 {
            small = Some((env, guard));
        } else {
            drop(guard);
        }
    }
    let kdf = kdf.context("no vault measured")?;
    print_sizes(&rows, kdf);

    let (small_env, small_daemon) = small.context("no small vault")?;
    connections(rt, &small_env, &small_daemon)?;
    drop(small_daemon);

    audit(rt, bin, &small_env, &rows[0].2, kdf)?;
    cold_start(rt, cli, disk.path(), &small_env, kdf)?;
    Ok(())
}

/// A daemon's paths in a new directory `dir`.
fn env_in(dir: &Path) -> Result<Env> {
    std::fs::create_dir_all(dir)?;
    Ok(Env::new(dir))
}

/// The time a few `credential.add` calls take on disk, one connection:
/// what filling a vault there costs per row.
fn disk_add_rate(
    rt: &tokio::runtime::Runtime,
    bin: &Path,
    dir: &Path,
    endpoint: &TokenEndpoint,
) -> Result<()> {
    let env = env_in(&dir.join("disk-rate"))?;
    let daemon = DaemonGuard::start(bin, &env)?;
    let fill = rt.block_on(daemon::fill_vault(&env.socket, endpoint, 1, DISK_ADDS, 1))?;
    drop(daemon);
    std::fs::remove_dir_all(&env.runtime_dir).ok();
    std::fs::remove_dir_all(&env.data_home).ok();
    let per_add = fill.credentials / DISK_ADDS as u32;
    let per_token = fill.tokens / DISK_ADDS as u32;
    println!(
        "  on disk, one connection: credential.add {:.1} ms each, first token.get (fetch + store) {:.1} ms each: 10,000 of each would take {:.0} s (one synchronous=FULL transaction, an fsync, per row)",
        per_add.as_secs_f64() * 1e3,
        per_token.as_secs_f64() * 1e3,
        (per_add + per_token).as_secs_f64() * 10_000.0
    );
    Ok(())
}

/// Copies a stopped daemon's vault file, and its write-ahead log when the
/// daemon left one (SQLite replays it at the next open), to `to`.
fn copy_vault(from: &Path, to: &Path) -> Result<()> {
    let dir = to.parent().context("vault path has no parent")?;
    std::fs::create_dir_all(dir)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    std::fs::copy(from, to).with_context(|| format!("failed to copy {}", from.display()))?;
    let side = |p: &Path| {
        let mut s = p.as_os_str().to_owned();
        s.push("-wal");
        PathBuf::from(s)
    };
    if side(from).exists() {
        std::fs::copy(side(from), side(to))
            .with_context(|| format!("failed to copy {}", side(from).display()))?;
    }
    Ok(())
}

fn file_size(path: &Path) -> String {
    std::fs::metadata(path).map_or("?".into(), |m| {
        format!("{:.1} MiB", m.len() as f64 / (1024.0 * 1024.0))
    })
}

/// Argon2id alone, with the vault's passphrase slot's own parameters and
/// the daemon's own call (its working memory allocated per derivation):
/// the median of [`KDF_RUNS`].
fn measure_kdf(vault: &Path) -> Result<Kdf> {
    let conn =
        rusqlite::Connection::open_with_flags(vault, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let params: String = conn.query_row(
        "SELECT params FROM key_slots WHERE kind = 'passphrase' LIMIT 1",
        [],
        |r| r.get(0),
    )?;
    drop(conn);
    let params: serde_json::Value = serde_json::from_str(&params)?;
    let salt = hex::decode(params["salt"].as_str().context("slot without salt")?)
        .context("the slot's salt is not hex")?;
    let kdf = &params["kdf"];
    let field = |name: &str| -> Result<u32> {
        Ok(kdf[name]
            .as_u64()
            .with_context(|| format!("slot without kdf.{name}"))? as u32)
    };
    let (m_kib, t, p) = (field("m_kib")?, field("t")?, field("p")?);
    let argon_params = argon2::Params::new(m_kib, t, p, Some(32))
        .map_err(|e| anyhow::anyhow!("argon2 parameters: {e}"))?;
    let mut times = Vec::new();
    let mut cpus = Vec::new();
    for _ in 0..KDF_RUNS {
        let started = Instant::now();
        let cpu_before = thread_cpu();
        // The daemon's own: zeroized as it drops.
        let mut memory =
            zeroize::Zeroizing::new(vec![argon2::Block::default(); argon_params.block_count()]);
        let argon = argon2::Argon2::new(
            argon2::Algorithm::Argon2id,
            argon2::Version::V0x13,
            argon_params.clone(),
        );
        let mut out = [0u8; 32];
        argon
            .hash_password_into_with_memory(PASSPHRASE.as_bytes(), &salt, &mut out, &mut memory[..])
            .map_err(|e| anyhow::anyhow!("argon2: {e}"))?;
        drop(memory);
        times.push(started.elapsed());
        cpus.push(thread_cpu().saturating_sub(cpu_before));
    }
    let kdf = Kdf {
        wall: median(&mut times),
        cpu: median(&mut cpus),
    };
    println!(
        "  Argon2id alone (the slot's parameters: m = {} MiB, t = {t}, p = {p}; in this process): {} wall, {} CPU (medians of {KDF_RUNS})",
        m_kib / 1024,
        ms(kdf.wall),
        ms(kdf.cpu),
    );
    Ok(kdf)
}

/// The key derivation alone, as measured here.
#[derive(Clone, Copy)]
struct Kdf {
    wall: Duration,
    cpu: Duration,
}

/// CPU time this thread has used.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the struct we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn unlock_params() -> UnlockParams {
    UnlockParams {
        passphrase: Some(SecretString::from(PASSPHRASE)),
        ..UnlockParams::default()
    }
}

/// Starts the daemon on `env` [`RESTARTS`] times (stopping the previous
/// one), each time timing the start and an unlock; then, on the last one,
/// memory, `credential list`, `status` and cached `token.get`. Returns
/// the figures and the last daemon, unlocked.
fn measure_vault(
    rt: &tokio::runtime::Runtime,
    bin: &Path,
    env: &Env,
    credentials: usize,
) -> Result<(VaultFigures, DaemonGuard)> {
    let mut starts = Vec::new();
    let mut unlocks = Vec::new();
    let mut cpus = Vec::new();
    let mut last = None;
    for _ in 0..RESTARTS {
        drop(last.take());
        let (daemon, start) = DaemonGuard::start_timed(bin, env, rt)?;
        starts.push(start);
        let cpu_before = daemon.cpu();
        let took = rt.block_on(async {
            let mut c = Client::connect_to(&env.socket).await?;
            let started = Instant::now();
            let _: UnlockResult = c
                .request::<VaultUnlock>(&unlock_params())
                .await
                .context("vault.unlock failed")?;
            anyhow::Ok(started.elapsed())
        })?;
        unlocks.push(took);
        if let (Some(b), Some(a)) = (cpu_before, daemon.cpu()) {
            cpus.push(Duration::from_secs_f64((a.total() - b.total()).max(0.0)));
        }
        last = Some(daemon);
    }
    let daemon = last.context("no daemon started")?;
    std::thread::sleep(SETTLE);
    let anon_kib = daemon.status_field("RssAnon");
    let (list, list_bytes, listed, status, (token, token_cpu), after_list) =
        rt.block_on(async {
            // Status and the token path on a connection of their own.
            let mut c = Client::connect_to(&env.socket).await?;
            let mut statuses = Vec::new();
            for _ in 0..LIST_CALLS {
                let started = Instant::now();
                let _: StatusResult = c.status().await?;
                statuses.push(started.elapsed());
            }
            let cpu_before = daemon.cpu();
            let token = token_latency(&mut c, TOKEN_CALLS).await?;
            let token_cpu = cpu_before.zip(daemon.cpu()).map(|(b, a)| {
                a.per_call_us(b, (TOKEN_WARMUP + TOKEN_CALLS) as u64)
                    .total()
            });
            drop(c);
            let mut c = Client::connect_to(&env.socket).await?;
            let mut lists = Vec::new();
            let mut bytes = 0;
            let mut listed = 0;
            for _ in 0..LIST_CALLS {
                let started = Instant::now();
                match c.request::<CredentialList>(&Empty {}).await {
                    Ok(list) => {
                        lists.push(started.elapsed());
                        listed = list.len();
                        bytes = serde_json::to_vec(&list)?.len();
                        check_list(&list, credentials)?;
                    }
                    Err(e) => {
                        println!("  credential list of {credentials} credentials failed: {e}");
                        c = Client::connect_to(&env.socket).await?;
                    }
                }
            }
            // The same token path on the connection that listed: its buffers
            // grew to the list's size.
            let after_list = token_latency(&mut c, AFTER_LIST_CALLS).await?;
            let list = if lists.is_empty() {
                Duration::ZERO
            } else {
                median(&mut lists)
            };
            anyhow::Ok((
                list,
                bytes,
                listed,
                median(&mut statuses),
                (token, token_cpu),
                after_list,
            ))
        })?;
    Ok((
        VaultFigures {
            start: median(&mut starts),
            unlock: median(&mut unlocks),
            unlock_cpu: if cpus.is_empty() {
                Duration::ZERO
            } else {
                median(&mut cpus)
            },
            anon_kib,
            list,
            list_bytes,
            listed,
            status,
            token_p50: p50(&token),
            token_p99: p99(&token),
            token_cpu_us: token_cpu,
            after_list_p50: p50(&after_list),
        },
        daemon,
    ))
}

/// The list holds every credential, each with its stored token.
fn check_list(list: &[CredentialInfo], credentials: usize) -> Result<()> {
    if list.len() != credentials {
        bail!(
            "credential list returned {} of {credentials} credentials",
            list.len()
        );
    }
    if let Some(c) = list.iter().find(|c| c.tokens.is_empty()) {
        bail!("credential {} holds no token after the fill", c.name);
    }
    Ok(())
}

/// `warmup` then `calls` sequential cached `token.get` calls of the first
/// credential on `c`.
async fn token_latency(c: &mut Client, calls: usize) -> Result<hdrhistogram::Histogram<u64>> {
    let name = daemon::credential_name(0);
    for _ in 0..TOKEN_WARMUP {
        c.token(&name).await?;
    }
    let mut hist = new_histogram();
    for _ in 0..calls {
        let started = Instant::now();
        let token = c.token(&name).await?;
        hist.record(started.elapsed().as_nanos() as u64)?;
        drop(token);
    }
    Ok(hist)
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn mib_of(kib: Option<u64>) -> String {
    kib.map_or("?".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0))
}

fn met(ok: bool) -> &'static str {
    if ok {
        "MET"
    } else {
        "NOT MET"
    }
}

fn print_sizes(rows: &[(usize, usize, VaultFigures)], kdf: Kdf) {
    println!(
        "\n  {:>11} {:>9} | {:>10} {:>10} {:>11} {:>11} {:>10} | {:>12} {:>9} {:>9} | {:>10} {:>10} {:>9} {:>11}",
        "credentials",
        "providers",
        "start",
        "unlock",
        "beyond KDF",
        "unlock CPU",
        "RssAnon",
        "list",
        "list size",
        "status",
        "token p50",
        "token p99",
        "CPU/call",
        "after list",
    );
    for (credentials, providers, f) in rows {
        println!(
            "  {:>11} {:>9} | {:>10} {:>10} {:>11} {:>11} {:>10} | {:>12} {:>9} {:>9} | {:>10} {:>10} {:>9} {:>11}",
            credentials,
            providers,
            ms(f.start),
            ms(f.unlock),
            ms(f.unlock.saturating_sub(kdf.wall)),
            ms(f.unlock_cpu),
            mib_of(f.anon_kib),
            if f.listed == *credentials {
                ms(f.list)
            } else {
                "FAILED".into()
            },
            format!("{:.2} MiB", f.list_bytes as f64 / (1024.0 * 1024.0)),
            ms(f.status),
            us(f.token_p50),
            us(f.token_p99),
            f.token_cpu_us
                .map_or("?".into(), |c| format!("{c:.1} µs")),
            us(f.after_list_p50),
        );
    }
    println!(
        "  (start: spawn to the first hello reply, locked; unlock: the vault.unlock call, Argon2id's {} included; unlock CPU: the daemon's (Argon2id alone took {} of CPU here); list size: the result's JSON, the reply limit is {} MiB; token: a connection of its own, sequential, with the daemon's CPU per call; after list: p50 on the connection that listed)",
        ms(kdf.wall),
        ms(kdf.cpu),
        latchkey_client::protocol::MAX_REPLY_LEN / (1024 * 1024)
    );
    let (Some(first), Some(big)) = (rows.first(), rows.last()) else {
        return;
    };
    let beyond = big.2.unlock.saturating_sub(kdf.wall);
    println!(
        "  {} credentials unlock in {} beyond the KDF (wall; in daemon CPU {}) (goal ≤ {}): {}",
        big.0,
        ms(beyond),
        ms(big.2.unlock_cpu.saturating_sub(kdf.cpu)),
        ms(GOAL_UNLOCK_BEYOND_KDF),
        met(beyond <= GOAL_UNLOCK_BEYOND_KDF)
    );
    println!(
        "  {} credentials use {} anonymous memory after unlock (goal ≤ {} MiB): {}",
        big.0,
        mib_of(big.2.anon_kib),
        GOAL_ANON_KIB / 1024,
        met(big.2.anon_kib.is_some_and(|k| k <= GOAL_ANON_KIB))
    );
    let ratio = big.2.token_p50 as f64 / first.2.token_p50.max(1) as f64;
    println!(
        "  token.get p50 at {} credentials ÷ at {}: {ratio:.2} (goal ≤ {GOAL_TOKEN_P50_RATIO:.2}): {}",
        big.0,
        first.0,
        met(ratio <= GOAL_TOKEN_P50_RATIO)
    );
}

/// Memory per open idle connection (connected, `hello` done, then silent)
/// and the p50 of one active caller while they are open.
fn connections(rt: &tokio::runtime::Runtime, env: &Env, daemon: &DaemonGuard) -> Result<()> {
    println!(
        "\n  open idle connections (hello done, then silent) on the 1-credential daemon; one more connection makes {ACTIVE_CALLS} sequential cached token.get calls meanwhile"
    );
    println!(
        "  {:>11} | {:>12} {:>12} {:>14} | {:>10} {:>10}",
        "connections", "RssAnon", "delta", "per connection", "active p50", "active p99"
    );
    for &n in CONNECTIONS {
        std::thread::sleep(SETTLE);
        let before = daemon.status_field("RssAnon");
        let (idle, refused) = rt.block_on(async {
            let mut idle = Vec::with_capacity(n);
            let mut refused = None;
            for _ in 0..n {
                match Client::connect_to(&env.socket).await {
                    Ok(c) => idle.push(c),
                    Err(e) => {
                        refused = Some(e.to_string());
                        break;
                    }
                }
            }
            (idle, refused)
        });
        if let Some(e) = refused {
            println!(
                "  {n:>11} | the daemon refused connection {} ({e}): its per-process share of the connection cap (half the descriptor limit, a quarter per peer) is lower; raise the hard limit (ulimit -Hn)",
                idle.len() + 1
            );
            drop(idle);
            continue;
        }
        std::thread::sleep(SETTLE);
        let after = daemon.status_field("RssAnon");
        let active = rt.block_on(async {
            let mut c = Client::connect_to(&env.socket).await?;
            token_latency(&mut c, ACTIVE_CALLS).await
        })?;
        let delta = after.zip(before).map(|(a, b)| a as i64 - b as i64);
        println!(
            "  {n:>11} | {:>12} {:>12} {:>14} | {:>10} {:>10}",
            mib_of(after),
            delta.map_or("?".into(), |d| format!("{d} KiB")),
            delta.map_or("?".into(), |d| format!("{:.1} KiB", d as f64 / n as f64)),
            us(p50(&active)),
            us(p99(&active)),
        );
        drop(idle);
    }
    Ok(())
}

/// The same figures with the small vault's audit table as it is and with
/// [`AUDIT_ROWS`] more rows (inserted here while the daemon is stopped, in
/// one transaction).
fn audit(
    rt: &tokio::runtime::Runtime,
    bin: &Path,
    env: &Env,
    small: &VaultFigures,
    kdf: Kdf,
) -> Result<()> {
    let rows_before = audit_rows(&env.vault)?;
    let started = Instant::now();
    insert_audit_rows(&env.vault, AUDIT_ROWS)?;
    let inserted = started.elapsed();
    // The 50 MB just written would still be going to disk while the
    // daemon starts, and its first fsync would wait behind them.
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
    let rows_after = audit_rows(&env.vault)?;
    println!(
        "\n  audit table: {rows_before} rows, then {rows_after} ({AUDIT_ROWS} inserted in {:.1} s, one transaction, daemon stopped); vault file {}",
        inserted.as_secs_f64(),
        file_size(&env.vault)
    );
    let (big, daemon) = measure_vault(rt, bin, env, 1)?;
    drop(daemon);
    println!(
        "  {:>12} | {:>10} {:>10} {:>11} {:>10} {:>10} {:>10}",
        "audit rows", "start", "unlock", "beyond KDF", "status", "token p50", "RssAnon"
    );
    for (rows, f) in [(rows_before, small), (rows_after, &big)] {
        println!(
            "  {rows:>12} | {:>10} {:>10} {:>11} {:>10} {:>10} {:>10}",
            ms(f.start),
            ms(f.unlock),
            ms(f.unlock.saturating_sub(kdf.wall)),
            ms(f.status),
            us(f.token_p50),
            mib_of(f.anon_kib)
        );
    }
    Ok(())
}

fn audit_rows(vault: &Path) -> Result<u64> {
    let conn = rusqlite::Connection::open(vault)?;
    let n: i64 = conn.query_row("SELECT count(*) FROM audit", [], |r| r.get(0))?;
    Ok(n as u64)
}

/// Plain rows like the daemon's own: token issuances over many
/// credentials and processes. Unchained, as rows written while locked
/// are: the daemon chains them after its unlock, in bounded batches in
/// the background (`vault/chain.rs`), while the figures are taken.
fn insert_audit_rows(vault: &Path, rows: u64) -> Result<()> {
    let mut conn = rusqlite::Connection::open(vault)?;
    let tx = conn.transaction()?;
    {
        let mut stmt = tx.prepare(
            "INSERT INTO audit (at, event, credential, peer_pid, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
        )?;
        let at = latchkey_client::unix_now() - rows as i64;
        for i in 0..rows {
            stmt.execute(rusqlite::params![
                at + i as i64,
                "token_issued",
                daemon::credential_name((i % 10_000) as usize),
                (i % 30_000) as u32 + 1_000,
                "scope read"
            ])?;
        }
    }
    tx.commit()?;
    Ok(())
}

/// `latchkey token NAME` with no daemon running and the passphrase in
/// `LATCHKEY_PASSPHRASE_FILE`: the CLI starts the daemon, which is locked,
/// unlocks it from the file and prints the token (the stored one).
fn cold_start(
    rt: &tokio::runtime::Runtime,
    cli: Option<&Path>,
    dir: &Path,
    env: &Env,
    kdf: Kdf,
) -> Result<()> {
    let kdf = kdf.wall;
    let Some(cli) = cli else {
        println!("\n  cold start SKIPPED: no `latchkey` binary next to the bench");
        return Ok(());
    };
    let pass_file = dir.join("passphrase");
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&pass_file)?;
        f.write_all(PASSPHRASE.as_bytes())?;
    }
    let name = daemon::credential_name(0);
    let mut times = Vec::new();
    for _ in 0..COLD_RUNS {
        let mut cmd = Command::new(cli);
        env.apply(&mut cmd, false);
        cmd.env("LATCHKEY_PASSPHRASE_FILE", &pass_file)
            .args(["token", &name])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let started = Instant::now();
        let out = cmd.output().context("failed to run latchkey token")?;
        let took = started.elapsed();
        // Whatever happened, stop the daemon it started.
        let pid = rt.block_on(async {
            let mut c = Client::connect_to(&env.socket).await.ok()?;
            c.status().await.ok().map(|s| s.pid)
        });
        let stray = pid.map(StrayDaemon::adopt);
        if !out.status.success() || out.stdout.trim_ascii().is_empty() {
            bail!(
                "latchkey token {name} (cold) exited with {} and printed no token: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        if stray.is_none() {
            bail!(
                "the cold `latchkey token` left no daemon answering on {}",
                env.socket.display()
            );
        }
        drop(stray);
        times.push(took);
    }
    let total = median(&mut times);
    println!(
        "\n  cold start: `latchkey token NAME`, no daemon running, LATCHKEY_PASSPHRASE_FILE set: {} to the first token (median of {COLD_RUNS}); Argon2id {} of it ({:.0}%), the rest {}",
        ms(total),
        ms(kdf),
        kdf.as_secs_f64() / total.as_secs_f64() * 100.0,
        ms(total.saturating_sub(kdf))
    );
    Ok(())
}
