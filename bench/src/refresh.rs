//! Parts 5 and 6: user credentials (device-code login, refresh tokens)
//! against the bench's in-process provider (`token_endpoint`).
//!
//! 5. **Single-flight refresh**: a credential logs in (`login.start` with
//!    `device: true`, then `login.wait`) and gets a 2-s access token; once it
//!    has expired, 1,000 connections each send one `token.get` at the same
//!    moment (a barrier). The provider must see exactly one `refresh_token`
//!    request, and every caller must get the token it minted. The provider
//!    answers the refresh after 100 ms, as a remote one would, so that every
//!    caller arrives while it is in flight. The refreshed token lives 60 s,
//!    so the count measures the single flight alone: a token shorter than
//!    the daemon's 5-s expiry margin is stale the moment it arrives, and a
//!    caller arriving after the refresh finished would rightly start
//!    another. That case is run too, as a second credential whose every
//!    token lives 2 s (provider answering at once), for information only.
//! 6. **Proactive refresh under steady load**: a credential whose access
//!    tokens live 30 s; 8 clients each call `token.get` every 10 ms for the
//!    run's duration (`LATCHKEY_BENCH_REFRESH_SECS`, default 300). The
//!    daemon's ticker should replace each token before any caller finds it
//!    stale, so no call waits on the network once the cache is warm (the
//!    first call is made before the clock starts and is not counted).
//!    `daemon.stats` before and after says how many calls waited; the bench
//!    also tells which ones did, for their latency and timing: certainly
//!    those that started before the token they got was minted, possibly
//!    those that started before any reply carried it.
//!
//! Each part removes its credentials (locally) when done, so their tokens
//! are not refreshed in the background of what follows.

use crate::load::{new_histogram, p50, p99, us};
use crate::procfs;
use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;
use latchkey_client::protocol::{
    AuthMethod, CredentialAdd, CredentialAddParams, CredentialInfo, CredentialRemove,
    CredentialShow, DaemonStats, Empty, Endpoints, GrantType, LoginResult, LoginStart,
    LoginStartParams, LoginStartResult, LoginWait, LoginWaitParams, NameParams, ProviderAdd,
    ProviderAddParams, ProviderInfo, RemoveParams, StatsResult, EXPIRY_MARGIN_SECS,
};
use latchkey_client::secrecy::ExposeSecret;
use latchkey_client::Client;
use latchkey_testkit::token_endpoint::{TokenEndpoint, UserClientConfig, UserStats};
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The provider the user credentials use.
const PROVIDER: &str = "bench-user";
/// Concurrent callers in part 5.
pub const BURST_CALLERS: usize = 1000;
/// Part 5's login token: expires right away.
const BURST_LOGIN_LIFETIME: u64 = 2;
/// Part 5's refreshed token: outlives the burst by far.
const BURST_REFRESH_LIFETIME: u64 = 60;
/// How long part 5's provider takes to answer a refresh, as a remote one
/// would: every caller arrives while the one refresh is in flight (at
/// loopback speed a third of them came after it had finished).
const BURST_REFRESH_DELAY: Duration = Duration::from_millis(100);
/// Part 6's access-token lifetime (login and refreshes) unless
/// `LATCHKEY_BENCH_REFRESH_LIFETIME` says otherwise (to explore shorter
/// lifetimes; the target is stated for 30 s).
pub const STEADY_LIFETIME: u64 = 30;
pub const STEADY_CLIENTS: usize = 8;
pub const STEADY_PERIOD: Duration = Duration::from_millis(10);
/// Part 6's duration unless `LATCHKEY_BENCH_REFRESH_SECS` says otherwise.
pub const DEFAULT_STEADY_SECS: u64 = 300;
const MAX_STEADY_SECS: u64 = 3600;
/// How often part 6 prints where it is.
const PROGRESS_EVERY: Duration = Duration::from_secs(60);
/// Bound on any one call (a login, a `token.get`).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Waited calls listed one by one (all are counted).
const WAITED_SHOWN: usize = 10;

/// Part 6's duration: `LATCHKEY_BENCH_REFRESH_SECS` or the default.
pub fn steady_secs() -> Result<u64> {
    secs_from_env("LATCHKEY_BENCH_REFRESH_SECS", DEFAULT_STEADY_SECS)
}

/// Part 6's token lifetime: `LATCHKEY_BENCH_REFRESH_LIFETIME` or 30 s.
pub fn steady_lifetime() -> Result<u64> {
    secs_from_env("LATCHKEY_BENCH_REFRESH_LIFETIME", STEADY_LIFETIME)
}

fn secs_from_env(var: &str, default: u64) -> Result<u64> {
    match std::env::var(var) {
        Err(_) => Ok(default),
        Ok(v) => match v.trim().parse::<u64>() {
            Ok(n) if (1..=MAX_STEADY_SECS).contains(&n) => Ok(n),
            _ => bail!("{var} must be a number of seconds from 1 to {MAX_STEADY_SECS}, not {v:?}"),
        },
    }
}

/// Part 5's figures.
pub struct Burst {
    pub callers: usize,
    /// `refresh_token` requests that reached the endpoint during the burst.
    pub refresh_requests: u64,
    pub refresh_rejected: u64,
    pub failed: usize,
    pub first_error: Option<String>,
    pub distinct_tokens: usize,
    /// Every caller got the token the refresh minted.
    pub all_got_refreshed: bool,
}

impl Burst {
    pub fn met(&self) -> bool {
        self.refresh_requests == 1 && self.failed == 0 && self.all_got_refreshed
    }
}

/// Part 6's figures.
pub struct Steady {
    pub secs: u64,
    /// Access-token lifetime.
    pub lifetime: u64,
    /// Calls in the run (the warm-up call excluded).
    pub calls: u64,
    pub failed: u64,
    /// `daemon.stats` deltas over the run.
    pub stats: StatsResult,
    /// Calls that got a token minted after they started.
    pub waited_seen: Vec<Waited>,
    pub refresh_requests: u64,
    pub latency: Histogram<u64>,
}

impl Steady {
    pub fn met(&self) -> bool {
        self.calls > 0 && self.stats.waits == 0 && self.failed == 0
    }
}

/// A call that got a token its client had not had before: the calls that
/// waited on a token request are among these.
pub struct Waited {
    pub started: Instant,
    pub started_wall: SystemTime,
    pub latency: Duration,
    ended: Instant,
    token: String,
    /// When the token it got was minted.
    pub minted: Option<Instant>,
    /// When the token the caller had before was minted (its expiry is
    /// this + the lifetime).
    pub previous_minted: Option<Instant>,
}

pub struct Outcome {
    pub burst: Burst,
    pub steady: Steady,
    /// Share of the machine other processes used during parts 5 and 6.
    pub others: [Option<f64>; 2],
}

/// Runs parts 5 and 6 against the daemon at `socket`.
pub fn run(
    rt: &tokio::runtime::Runtime,
    socket: &Path,
    log: &Path,
    endpoint: &TokenEndpoint,
    daemon_pid: u32,
) -> Result<Outcome> {
    let secs = steady_secs()?;
    let lifetime = steady_lifetime()?;
    rt.block_on(add_provider(socket, endpoint))?;

    println!(
        "\n[5] single-flight refresh: {BURST_CALLERS} concurrent token.get on an expired user token (device-code login; access token {BURST_LOGIN_LIFETIME} s at login, {BURST_REFRESH_LIFETIME} s once refreshed; the provider answers a refresh after {} ms)",
        BURST_REFRESH_DELAY.as_millis()
    );
    let machine_before = procfs::CpuSnapshot::take(daemon_pid);
    let main_burst = rt.block_on(burst(
        socket,
        endpoint,
        "burst",
        UserClientConfig {
            login_lifetime: BURST_LOGIN_LIFETIME,
            refresh_lifetime: BURST_REFRESH_LIFETIME,
            refresh_delay: BURST_REFRESH_DELAY,
        },
        true,
    ))?;
    // Information only: every token shorter than the daemon's expiry
    // margin, and a provider that answers at loopback speed.
    println!(
        "  for information, a credential whose every token lives {BURST_LOGIN_LIFETIME} s (< the daemon's {EXPIRY_MARGIN_SECS}-s expiry margin: a fresh token is already stale), provider answering at once:"
    );
    rt.block_on(burst(
        socket,
        endpoint,
        "burst-short",
        UserClientConfig {
            login_lifetime: BURST_LOGIN_LIFETIME,
            refresh_lifetime: BURST_LOGIN_LIFETIME,
            refresh_delay: Duration::ZERO,
        },
        false,
    ))?;
    let burst_others = crate::print_others(machine_before, daemon_pid);

    println!(
        "\n[6] steady load, {lifetime}-s user tokens: {STEADY_CLIENTS} clients, one token.get each every {} ms, for {secs} s (LATCHKEY_BENCH_REFRESH_SECS)",
        STEADY_PERIOD.as_millis()
    );
    let machine_before = procfs::CpuSnapshot::take(daemon_pid);
    let cpu_before = procfs::process_cpu(daemon_pid);
    let steady = rt.block_on(steady(socket, endpoint, secs, lifetime))?;
    if let (Some(b), Some(a)) = (cpu_before, procfs::process_cpu(daemon_pid)) {
        let c = a.per_call_us(b, steady.calls);
        println!(
            "  daemon CPU: {:.1} s in all, {:.1} µs per call (user {:.1} + kernel {:.1})",
            (a.total() - b.total()),
            c.total(),
            c.user,
            c.sys
        );
    }
    let steady_others = crate::print_others(machine_before, daemon_pid);
    if steady.stats.waits > 0 {
        print_log_excerpt(log);
    }
    Ok(Outcome {
        burst: main_burst,
        steady,
        others: [burst_others, steady_others],
    })
}

pub(crate) async fn add_provider(socket: &Path, endpoint: &TokenEndpoint) -> Result<()> {
    let mut c = Client::connect_to(socket).await?;
    let _: ProviderInfo = c
        .request::<ProviderAdd>(&ProviderAddParams {
            name: PROVIDER.into(),
            issuer: None,
            endpoints: Endpoints {
                token_endpoint: Some(endpoint.url.clone()),
                device_authorization_endpoint: Some(endpoint.device_url.clone()),
                ..Endpoints::default()
            },
            oauth1: None,
        })
        .await
        .context("provider.add (user provider) failed")?;
    Ok(())
}

/// Registers `name` at the endpoint (as its client id) and in the daemon
/// (grant `device_code`, auth `none`), and logs it in.
pub(crate) async fn add_and_log_in(
    c: &mut Client,
    endpoint: &TokenEndpoint,
    name: &str,
    config: UserClientConfig,
) -> Result<LoginResult> {
    endpoint.add_user_client(name, config);
    let _: CredentialInfo = c
        .request::<CredentialAdd>(&CredentialAddParams {
            name: name.into(),
            provider: PROVIDER.into(),
            client_id: name.into(),
            client_secret: None,
            grant: GrantType::DeviceCode,
            auth: AuthMethod::None,
            scopes: vec!["read".into()],
            redirect_uri: None,
            access: Some(latchkey_client::protocol::Access::Open),
            exchange: None,
            client_key: None,
            assertion_audience: None,
            dpop: None,
            proof: Some(latchkey_client::protocol::Proof::passphrase(
                latchkey_client::secrecy::SecretString::from(crate::daemon::PASSPHRASE),
            )),
            signature_method: None,
            private_key: None,
        })
        .await
        .with_context(|| format!("credential.add {name} failed"))?;
    let started: LoginStartResult = c
        .request::<LoginStart>(&LoginStartParams {
            credential: name.into(),
            device: true,
            timeout_secs: Some(CALL_TIMEOUT.as_secs()),
        })
        .await
        .with_context(|| format!("login.start {name} failed"))?;
    let result: LoginResult = tokio::time::timeout(
        CALL_TIMEOUT,
        c.request::<LoginWait>(&LoginWaitParams {
            login_id: started.login_id,
        }),
    )
    .await
    .with_context(|| format!("login.wait {name} did not finish within {CALL_TIMEOUT:?}"))?
    .with_context(|| format!("login.wait {name} failed"))?;
    if !result.refresh_token {
        bail!("the login of {name} got no refresh token");
    }
    Ok(result)
}

async fn remove(c: &mut Client, name: &str) -> Result<()> {
    let _: Empty = c
        .request::<CredentialRemove>(&RemoveParams {
            name: name.into(),
            local_only: true,
        })
        .await
        .with_context(|| format!("credential.remove {name} failed"))?;
    Ok(())
}

pub(crate) async fn stats(c: &mut Client) -> Result<StatsResult> {
    c.request::<DaemonStats>(&Empty {})
        .await
        .context("daemon.stats failed")
}

pub(crate) fn delta(after: &StatsResult, before: &StatsResult) -> StatsResult {
    StatsResult {
        hits: after.hits - before.hits,
        waits: after.waits - before.waits,
        fetches: after.fetches - before.fetches,
    }
}

/// One burst (see the module doc). `main` prints it in full; otherwise
/// one line.
async fn burst(
    socket: &Path,
    endpoint: &TokenEndpoint,
    name: &str,
    config: UserClientConfig,
    main: bool,
) -> Result<Burst> {
    let login_lifetime = config.login_lifetime;
    let mut admin = Client::connect_to(socket).await?;
    add_and_log_in(&mut admin, endpoint, name, config).await?;
    let login = endpoint.user_stats(name);
    let login_token = login.last_access.as_ref().map(|(t, _)| t.clone());

    let mut clients = Vec::with_capacity(BURST_CALLERS);
    let connecting = Instant::now();
    for i in 0..BURST_CALLERS {
        clients.push(
            Client::connect_to(socket)
                .await
                .with_context(|| format!("opening connection {} of {BURST_CALLERS}", i + 1))?,
        );
    }
    let connect_time = connecting.elapsed();

    // Wait until the login token has really expired (bounded).
    let info: CredentialInfo = admin
        .request::<CredentialShow>(&NameParams { name: name.into() })
        .await
        .context("credential.show failed")?;
    let expires_at = info.tokens.iter().filter_map(|t| t.expires_at).max();
    let expiry = expires_at.map_or_else(
        || SystemTime::now() + Duration::from_secs(login_lifetime + 1),
        |e| UNIX_EPOCH + Duration::from_secs(e.max(0) as u64),
    ) + Duration::from_millis(200);
    let waited_for_expiry = expiry
        .duration_since(SystemTime::now())
        .unwrap_or_default()
        .min(Duration::from_secs(login_lifetime + 10));
    tokio::time::sleep(waited_for_expiry).await;

    let stats_before = stats(&mut admin).await?;
    let before = endpoint.user_stats(name);
    let burst = latchkey_testkit::burst(clients, |mut client| {
        let name = name.to_owned();
        async move {
            let start = Instant::now();
            let reply = tokio::time::timeout(CALL_TIMEOUT, client.token(&name)).await;
            let latency = start.elapsed();
            let token = match reply {
                Ok(Ok(t)) => Ok(t.access_token.expose_secret().to_owned()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!("no reply within {CALL_TIMEOUT:?}")),
            };
            (latency, token, client)
        }
    })
    .await
    .context("a burst caller panicked")?;
    let mut tokens: HashMap<String, usize> = HashMap::new();
    let mut latency = new_histogram();
    let (mut ok, mut failed, mut first_error) = (0, 0, None);
    let mut clients = Vec::with_capacity(BURST_CALLERS);
    for (lat, token, client) in burst.results {
        clients.push(client);
        latency.saturating_record(lat.as_nanos() as u64);
        match token {
            Ok(t) => {
                ok += 1;
                *tokens.entry(t).or_default() += 1;
            }
            Err(e) => {
                failed += 1;
                first_error.get_or_insert(e);
            }
        }
    }
    let done = Instant::now();
    let after = endpoint.user_stats(name);
    let stats_after = stats(&mut admin).await?;
    drop(clients);
    remove(&mut admin, name).await?;

    let refresh_requests = after.refresh_requests() - before.refresh_requests();
    let refresh_rejected = after.refresh_rejected - before.refresh_rejected;
    let refreshed_token = (after.refreshes > before.refreshes)
        .then(|| after.last_access.as_ref().map(|(t, _)| t.clone()))
        .flatten();
    let all_got_refreshed = tokens.len() == 1
        && refreshed_token
            .as_ref()
            .is_some_and(|t| tokens.contains_key(t) && Some(t) != login_token.as_ref());
    let d = delta(&stats_after, &stats_before);
    let took = format!("{:.1} ms", (done - burst.released).as_secs_f64() * 1e3);
    if main {
        println!(
            "  login: {} device authorization, {} device_code grant (refresh token issued); waited {:.1} s for the login token to expire; {BURST_CALLERS} connections opened in {:.0} ms",
            login.device_authorizations,
            login.logins,
            waited_for_expiry.as_secs_f64(),
            connect_time.as_secs_f64() * 1e3,
        );
        println!(
            "  refresh_token requests at the endpoint during the burst: {refresh_requests} (refused as reused/unknown: {refresh_rejected})"
        );
        println!(
            "  callers: {ok} got a token, {failed} failed{}; distinct tokens: {}{}",
            first_error
                .as_ref()
                .map_or(String::new(), |e| format!(" (first error: {e})")),
            tokens.len(),
            if all_got_refreshed {
                format!(" — all {ok} callers got the same token, the one the refresh minted")
            } else {
                " — NOT all callers got the one refreshed token".into()
            }
        );
        println!(
            "  burst: {took} from the barrier to the last reply; per-call latency p50 {}  p99 {}  max {}",
            us(p50(&latency)),
            us(p99(&latency)),
            us(latency.max()),
        );
        println!(
            "  daemon.stats over the burst: waits +{}  hits +{}  fetches +{}",
            d.waits, d.hits, d.fetches
        );
    } else {
        println!(
            "    refresh_token requests during the burst: {refresh_requests} (refused {refresh_rejected}); callers ok {ok}, failed {failed}; distinct tokens {}; daemon waits +{} hits +{} fetches +{}; {took}",
            tokens.len(),
            d.waits,
            d.hits,
            d.fetches
        );
        if let Some(e) = &first_error {
            println!("    first error: {e}");
        }
    }
    Ok(Burst {
        callers: BURST_CALLERS,
        refresh_requests,
        refresh_rejected,
        failed,
        first_error,
        distinct_tokens: tokens.len(),
        all_got_refreshed,
    })
}

/// What one steady client saw.
struct ClientRun {
    calls: u64,
    failed: u64,
    first_error: Option<String>,
    latency: Histogram<u64>,
    /// The calls that got a token this client had not had before.
    changes: Vec<Waited>,
}

/// Part 6 (see the module doc).
async fn steady(
    socket: &Path,
    endpoint: &TokenEndpoint,
    secs: u64,
    lifetime: u64,
) -> Result<Steady> {
    const NAME: &str = "steady";
    let mut admin = Client::connect_to(socket).await?;
    add_and_log_in(
        &mut admin,
        endpoint,
        NAME,
        UserClientConfig {
            login_lifetime: lifetime,
            refresh_lifetime: lifetime,
            refresh_delay: Duration::ZERO,
        },
    )
    .await?;
    // The first call: warms nothing the login did not, but it is the one
    // excluded from "once warm".
    let first = Instant::now();
    let warm = admin
        .token(NAME)
        .await
        .context("the first token.get failed")?;
    let warm_end = Instant::now();
    // A call waited on a token request when it started before the daemon
    // held that token; the first reply to carry a token is an upper bound
    // of that moment (the token's mint time a lower one: between the two
    // the daemon commits the grant to disk, and callers still wait).
    let mut first_reply: HashMap<String, Instant> = HashMap::new();
    first_reply.insert(warm.access_token.expose_secret().to_owned(), warm_end);
    drop(warm);
    println!(
        "  login done; first token.get (not counted) took {}",
        us(first.elapsed().as_nanos() as u64)
    );
    let mut clients = Vec::with_capacity(STEADY_CLIENTS);
    for _ in 0..STEADY_CLIENTS {
        clients.push(Client::connect_to(socket).await?);
    }
    let stats_before = stats(&mut admin).await?;
    let before = endpoint.user_stats(NAME);
    let endpoint_minted = Arc::new(endpoint.clone());
    let calls_so_far = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + Duration::from_secs(secs);
    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, client)| {
            let minted = Arc::clone(&endpoint_minted);
            let counter = Arc::clone(&calls_so_far);
            // Staggered over one period, so the clients do not call in step.
            let offset = STEADY_PERIOD * i as u32 / STEADY_CLIENTS as u32;
            tokio::spawn(steady_client(
                client,
                NAME,
                start + offset,
                deadline,
                minted,
                counter,
            ))
        })
        .collect();

    // Progress, bounded by the deadline.
    let mut next = start + PROGRESS_EVERY;
    while next < deadline {
        tokio::time::sleep_until(next.into()).await;
        let s = delta(&stats(&mut admin).await?, &stats_before);
        let e = endpoint.user_stats(NAME);
        println!(
            "  … {:>4} s: {} calls, {} waited, {} refresh requests at the endpoint",
            (next - start).as_secs(),
            calls_so_far.load(Ordering::Relaxed),
            s.waits,
            e.refresh_requests() - before.refresh_requests()
        );
        next += PROGRESS_EVERY;
    }

    let mut runs = Vec::with_capacity(STEADY_CLIENTS);
    for task in tasks {
        runs.push(task.await.context("a steady client panicked")?);
    }
    let elapsed = start.elapsed();
    let stats_after = stats(&mut admin).await?;
    let after = endpoint.user_stats(NAME);
    remove(&mut admin, NAME).await?;

    let mut latency = new_histogram();
    let (mut calls, mut failed, mut first_error) = (0, 0, None);
    let mut changes = Vec::new();
    for r in runs {
        calls += r.calls;
        failed += r.failed;
        if first_error.is_none() {
            first_error = r.first_error;
        }
        latency.add(&r.latency).expect("histograms share bounds");
        changes.extend(r.changes);
    }
    for c in &changes {
        let e = first_reply.entry(c.token.clone()).or_insert(c.ended);
        *e = (*e).min(c.ended);
    }
    // Possibly waited: started before any reply carried its token (an
    // upper bound: replies are timed by client tasks, which run late on a
    // busy machine). Certainly waited: started before its token was minted.
    let mut waited_seen: Vec<Waited> = changes
        .into_iter()
        .filter(|c| c.started < first_reply[&c.token])
        .collect();
    waited_seen.sort_by_key(|w| w.started);
    for w in &mut waited_seen {
        w.token.clear();
    }
    let certain = waited_seen.iter().filter(|w| w.certain()).count();
    let d = delta(&stats_after, &stats_before);
    let refresh_requests = after.refresh_requests() - before.refresh_requests();
    let refresh_rejected = after.refresh_rejected - before.refresh_rejected;

    println!(
        "  duration {secs} s (ran {:.1} s); calls {calls} ({:.0}/s), failed {failed}{}",
        elapsed.as_secs_f64(),
        calls as f64 / elapsed.as_secs_f64(),
        first_error.map_or(String::new(), |e| format!(" (first error: {e})"))
    );
    println!(
        "  calls that waited on the network: {} of {calls} ({:.4}%)  [daemon.stats over the run: waits +{}  hits +{}  fetches +{}{}]",
        d.waits,
        100.0 * d.waits as f64 / calls.max(1) as f64,
        d.waits,
        d.hits,
        d.fetches,
        if d.waits > 0 {
            format!(
                "; identified here: {certain} certainly (started before their token was minted), at most {} (started before any reply carried it)",
                waited_seen.len()
            )
        } else {
            String::new()
        }
    );
    if d.waits + d.hits != calls {
        println!(
            "  note: the daemon counted {} token.get calls, the clients made {calls}",
            d.waits + d.hits
        );
    }
    println!(
        "  refresh requests at the endpoint: {refresh_requests} (refused {refresh_rejected}); {}",
        refresh_timing(&after, before.refresh_log.len())
    );
    let waited_max = waited_max(&waited_seen);
    println!(
        "  latency, all calls: p50 {}  p99 {}  p99.9 {}  max {};  waited calls (those certain to have waited): max {}",
        us(p50(&latency)),
        us(p99(&latency)),
        us(latency.value_at_quantile(0.999)),
        us(latency.max()),
        waited_max.map_or(
            if d.waits > 0 {
                "? (not identified)".into()
            } else {
                "n/a (none)".into()
            },
            |m| us(m.as_nanos() as u64)
        ),
    );
    // Listed only when the daemon says calls waited: with none, the
    // "possibly" ones are cache hits timed late.
    let shown = if d.waits > 0 { WAITED_SHOWN } else { 0 };
    for w in waited_seen.iter().take(shown) {
        let previous = w.previous_minted.map_or("?".into(), |p| {
            let expiry = p + Duration::from_secs(lifetime);
            format!(
                "{:+.2} s before the expiry of the token it replaced",
                signed_secs(expiry, w.started)
            )
        });
        let minted = w.minted.map_or("?".into(), |m| {
            format!("{:+.1} ms", signed_secs(m, w.started) * 1e3)
        });
        println!(
            "    {}: call at +{:.3} s ({} UTC), {} long; its token was minted at {minted} from the call's start; the call came {previous}",
            if w.certain() { "waited" } else { "waited?" },
            (w.started - start).as_secs_f64(),
            utc(w.started_wall),
            us(w.latency.as_nanos() as u64),
        );
    }
    if shown > 0 && waited_seen.len() > shown {
        println!("    … and {} more", waited_seen.len() - shown);
    }
    Ok(Steady {
        secs,
        lifetime,
        calls,
        failed,
        stats: d,
        waited_seen,
        refresh_requests,
        latency,
    })
}

/// When the refreshes after the first `skip` came, relative to the expiry
/// of the token each replaced, and how far apart.
fn refresh_timing(stats: &UserStats, skip: usize) -> String {
    let log = &stats.refresh_log[skip.min(stats.refresh_log.len())..];
    if log.is_empty() {
        return "no refresh".into();
    }
    let mut leads: Vec<f64> = log.iter().map(|r| r.lead).collect();
    leads.sort_by(f64::total_cmp);
    let mut gaps: Vec<f64> = log
        .windows(2)
        .map(|w| (w[1].at - w[0].at).as_secs_f64())
        .collect();
    gaps.sort_by(f64::total_cmp);
    let gaps = match (gaps.first(), gaps.last()) {
        (Some(lo), Some(hi)) => format!("; one every {lo:.1}–{hi:.1} s"),
        _ => String::new(),
    };
    format!(
        "each came {:.1}–{:.1} s (median {:.1} s) before the token it replaced expired (the daemon stops serving a token {EXPIRY_MARGIN_SECS} s before expiry){gaps}",
        leads[0],
        leads[leads.len() - 1],
        leads[leads.len() / 2],
    )
}

impl Waited {
    /// Started before its token existed: it cannot have been a cache hit.
    pub fn certain(&self) -> bool {
        self.minted.is_some_and(|m| m > self.started)
    }
}

/// The longest latency of the calls certain to have waited.
pub fn waited_max(waited: &[Waited]) -> Option<Duration> {
    waited
        .iter()
        .filter(|w| w.certain())
        .map(|w| w.latency)
        .max()
}

/// The per-client loop of part 6: a call every period until the deadline.
async fn steady_client(
    mut client: Client,
    name: &'static str,
    first: Instant,
    deadline: Instant,
    endpoint: Arc<TokenEndpoint>,
    counter: Arc<AtomicU64>,
) -> ClientRun {
    let mut run = ClientRun {
        calls: 0,
        failed: 0,
        first_error: None,
        latency: new_histogram(),
        changes: Vec::new(),
    };
    // The token this client got last, and when it was minted.
    let mut current: Option<(String, Option<Instant>)> = None;
    let mut next = first;
    loop {
        tokio::time::sleep_until(next.into()).await;
        let started = Instant::now();
        if started >= deadline {
            break;
        }
        let started_wall = SystemTime::now();
        let reply = tokio::time::timeout(CALL_TIMEOUT, client.token(name)).await;
        let latency = started.elapsed();
        run.calls += 1;
        counter.fetch_add(1, Ordering::Relaxed);
        run.latency.saturating_record(latency.as_nanos() as u64);
        match reply {
            Ok(Ok(reply)) => {
                let token = reply.access_token.expose_secret();
                if current.as_ref().is_none_or(|(t, _)| t != token) {
                    let mint = endpoint.minted(token).map(|(at, _)| at);
                    run.changes.push(Waited {
                        started,
                        started_wall,
                        latency,
                        ended: started + latency,
                        token: token.to_owned(),
                        minted: mint,
                        previous_minted: current.as_ref().and_then(|(_, p)| *p),
                    });
                    current = Some((token.to_owned(), mint));
                }
            }
            Ok(Err(e)) => {
                run.failed += 1;
                run.first_error.get_or_insert_with(|| e.to_string());
            }
            Err(_) => {
                run.failed += 1;
                run.first_error
                    .get_or_insert_with(|| format!("no reply within {CALL_TIMEOUT:?}"));
            }
        }
        // One call per period; a late call does not cause a catch-up burst.
        next += STEADY_PERIOD;
        let now = Instant::now();
        if next < now {
            next = now;
        }
    }
    run
}

fn signed_secs(a: Instant, b: Instant) -> f64 {
    if a >= b {
        (a - b).as_secs_f64()
    } else {
        -(b - a).as_secs_f64()
    }
}

/// `hh:mm:ss.mmm` of a wall-clock time, in UTC (the daemon log's zone).
fn utc(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let s = d.as_secs() % 86_400;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        s / 3600,
        s / 60 % 60,
        s % 60,
        d.subsec_millis()
    )
}

/// The daemon log's lines about refreshes and token requests (the last
/// ones), to explain waited calls. More detail with
/// `LATCHKEY_BENCH_DAEMON_LOG=debug`.
fn print_log_excerpt(log: &Path) {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| {
            l.contains("\"steady\"")
                || l.contains("refresh")
                || l.contains("WARN")
                || l.contains("ERROR")
        })
        .collect();
    let debug = std::env::var("LATCHKEY_BENCH_DAEMON_LOG").is_ok_and(|v| v.contains("debug"));
    println!(
        "  daemon log ({} lines about credential \"steady\", refreshes, warnings; the last {} shown{}):",
        lines.len(),
        lines.len().min(40),
        if debug {
            ""
        } else {
            "; LATCHKEY_BENCH_DAEMON_LOG=debug adds the ticker's \"refreshing ahead of expiry\" lines"
        }
    );
    for l in &lines[lines.len().saturating_sub(40)..] {
        println!("    {l}");
    }
}
