//! The access-token cache of an unlocked vault: answers from memory, joins
//! callers of a cold or stale credential onto one token request
//! (single-flight), backs off after failures, and says which tokens are due
//! for a proactive refresh. It never speaks HTTP itself: the caller hands it
//! the future that fetches.
//!
//! Times are Unix seconds from the daemon's [`Clock`] (the wall clock in
//! production, so a machine that slept through an expiry sees the token as
//! expired when it wakes).

use crate::clock::Clock;
use crate::error::ApiError;
use crate::sync::lock;
use crate::vault::{Token, TokenKey as Key};
use futures::future::{BoxFuture, FutureExt, Shared};
use latchkey_client::framing::SecretBuf;
use latchkey_client::protocol::{ErrorKind, EXPIRY_MARGIN_SECS};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// The margin for a token of this lifetime: 5 s, but never more than a
/// quarter of the lifetime, or a provider's 4-second tokens would be stale
/// on arrival and every call would make a request.
fn expiry_margin(lifetime: i64) -> i64 {
    EXPIRY_MARGIN_SECS.min(lifetime.max(0) / 4)
}
/// First backoff delay after a failed token request.
const BACKOFF_BASE_SECS: i64 = 1;
/// Backoff never grows beyond this (nor a provider's Retry-After).
const BACKOFF_CAP_SECS: i64 = 300;

/// 10 s: the scheduling floor. A token that lives less is never refreshed
/// ahead: by the next caller the refreshed token would be stale too, and
/// on the 1 s ticker a credential used once would cost a request every
/// second or two for the whole recent-use window. Callers of such a
/// credential fetch on demand (one request per expiry, shared). This only
/// changes when latchkey asks; a token is never served past its expiry.
pub(crate) const MIN_PROACTIVE_LIFETIME_SECS: i64 = 10;

/// The proactive refresh moment of a token: a quarter of the lifetime
/// before expiry (at least the expiry margin), minus up to a tenth of the
/// lifetime of jitter so many credentials do not refresh in lockstep;
/// never for tokens shorter-lived than [`MIN_PROACTIVE_LIFETIME_SECS`].
fn schedule_refresh(token: &Token) -> i64 {
    let lifetime = (token.effective_expiry - token.obtained_at).max(0);
    if lifetime < MIN_PROACTIVE_LIFETIME_SECS {
        return i64::MAX;
    }
    token.effective_expiry - refresh_lead(lifetime) - rand::random_range(0..=max_jitter(lifetime))
}

/// How long before expiry a token of `lifetime` is refreshed (before jitter).
fn refresh_lead(lifetime: i64) -> i64 {
    let margin = expiry_margin(lifetime);
    // At least two ticks before the token turns stale, so the 1 s ticker
    // refreshes it before a caller has to; never more than half the
    // lifetime ahead, so a short-lived token is not due when issued.
    (lifetime / 4)
        .max(margin * 2)
        .max(margin + 2)
        .min(lifetime / 2)
}

/// The most a refresh is moved earlier, so a fleet's tokens spread out.
fn max_jitter(lifetime: i64) -> i64 {
    if lifetime >= 10 {
        lifetime / 10
    } else {
        0
    }
}

/// Whether a token read back from a shared vault is one a sibling daemon
/// got lately: it lasts, and no daemon would refresh it yet (not even at
/// the earliest its jitter allows). A token within its refresh window is
/// the one a refresh here means to replace.
pub(crate) fn fresh(token: &Token, now: i64) -> bool {
    let lifetime = (token.effective_expiry - token.obtained_at).max(0);
    let earliest = if lifetime < MIN_PROACTIVE_LIFETIME_SECS {
        i64::MAX
    } else {
        token.effective_expiry - refresh_lead(lifetime) - max_jitter(lifetime)
    };
    lasts(token, 0, now) && now < earliest
}

/// Whether `token` stays valid `min_ttl` seconds from `now` (and at least
/// the expiry margin).
fn lasts(token: &Token, min_ttl: u64, now: i64) -> bool {
    let margin = expiry_margin(token.effective_expiry - token.obtained_at);
    // At least one second: times are whole seconds, and a token in its
    // last second may already be dead when the caller uses it.
    let need = i64::try_from(min_ttl)
        .unwrap_or(i64::MAX)
        .max(margin)
        .max(1);
    token.effective_expiry.saturating_sub(now) >= need
}

/// A token as the cache holds and serves it: with its `token.get` result
/// serialized once, when it arrives, so that a call answered from memory
/// copies bytes into the reply instead of running the serializer (and
/// escaping the token) every time. Both parts are wiped when the last
/// holder drops them (a lock clears the cache).
#[derive(Clone)]
pub struct Cached {
    pub token: Arc<Token>,
    /// `token.reply` as JSON, exactly what `serde_json` writes for it.
    pub json: Arc<SecretBuf>,
}

impl Cached {
    fn new(token: Token) -> Cached {
        // 256 bytes: a usual reply's result fits (growth is wiped anyway).
        let mut json = SecretBuf::with_capacity(256);
        serde_json::to_writer(&mut json, &token.reply)
            .expect("a TokenReply (strings and a number) always serializes");
        Cached {
            token: Arc::new(token),
            json: Arc::new(json),
        }
    }
}

type Flight = Shared<BoxFuture<'static, Result<Cached, ApiError>>>;

/// The entries by credential id, then by scope set (the scopes a token is
/// for, as `policy::allowed_scopes` returns them; the vault keeps them
/// joined by spaces). Two levels, so a call finds its entry with borrowed
/// names and the hot path allocates nothing.
type Entries = HashMap<String, HashMap<Vec<String>, Entry>>;

/// A vault key's scope part as the cache's scope set.
fn scope_set(joined: &str) -> Vec<String> {
    joined.split_whitespace().map(str::to_owned).collect()
}

/// The entry for (`credential_id`, `scopes`), made if missing.
fn entry_mut<'a>(
    entries: &'a mut Entries,
    credential_id: &str,
    scopes: &[String],
) -> &'a mut Entry {
    if !entries.contains_key(credential_id) {
        entries.insert(credential_id.to_owned(), HashMap::new());
    }
    let sets = entries
        .get_mut(credential_id)
        .expect("inserted above if missing");
    if !sets.contains_key(scopes) {
        sets.insert(scopes.to_vec(), Entry::default());
    }
    sets.get_mut(scopes).expect("inserted above if missing")
}

struct Backoff {
    failures: u32,
    until: i64,
    error: ApiError,
}

/// One (credential, scope set): its token, the request in flight, the
/// backoff after a failure.
#[derive(Default)]
struct Entry {
    token: Option<Cached>,
    /// When a proactive refresh should replace `token`.
    refresh_at: i64,
    /// The one token request in flight, with its id.
    flight: Option<(u64, Flight)>,
    backoff: Option<Backoff>,
    /// Last time a caller asked; only recently used tokens are refreshed ahead.
    last_used: i64,
    /// Apps (`Caller::issue_key`) that already received the current token:
    /// the audit log records the first issuance of each token to each app,
    /// not every call.
    issued_to: Vec<u64>,
}

/// What [`TokenCache::get`] returns on success.
pub struct Hit {
    pub token: Cached,
    /// True the first time this token goes to this peer process.
    pub first_issue: bool,
}

pub struct TokenCache {
    entries: Mutex<Entries>,
    /// Backoff deadlines are set when a request completes, on this clock.
    clock: Clock,
    next_flight: AtomicU64,
    /// Calls answered from memory.
    pub hits: AtomicU64,
    /// Calls that waited on the network.
    pub waits: AtomicU64,
    /// Token requests started (each is one request at the provider).
    pub fetches: AtomicU64,
}

/// A snapshot of one entry, for `credential show` and `status`.
pub struct EntryInfo {
    pub scope: String,
    pub expires_at: Option<i64>,
    pub backoff: Option<(i64, String)>,
    /// Whether an access token is held (it may have expired).
    pub has_token: bool,
    /// When the token is due for a proactive refresh (taken if the token is
    /// still in use then); `None` without a token or for short-lived ones.
    pub refresh_at: Option<i64>,
}

impl TokenCache {
    pub fn new(clock: Clock) -> TokenCache {
        TokenCache {
            entries: Mutex::default(),
            clock,
            next_flight: AtomicU64::new(0),
            hits: AtomicU64::new(0),
            waits: AtomicU64::new(0),
            fetches: AtomicU64::new(0),
        }
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, Entries> {
        lock(&self.entries)
    }

    /// Puts a token in place (read back from the vault, or a new login's).
    pub fn insert(&self, key: Key, token: Token) {
        let mut entries = self.entries();
        let entry = entries
            .entry(key.0)
            .or_default()
            .entry(scope_set(&key.1))
            .or_default();
        entry.refresh_at = schedule_refresh(&token);
        entry.token = Some(Cached::new(token));
    }

    /// An access token of `credential_id` for `scopes` lasting `min_ttl`
    /// seconds: from memory when the cached one lasts; otherwise from the
    /// token request in flight, or from a new one made with `fetch` — one
    /// request however many callers. A caller that joins a request accepts
    /// its token even when the provider's tokens live shorter than
    /// `min_ttl` (no request loops).
    ///
    /// `admit` is asked, with no lock held, before this caller would start
    /// a request (the caller's rate limit for requests that reach the
    /// provider); its error is this caller's alone, and the entry is left
    /// as it was. Joining a request in flight asks nothing.
    #[allow(clippy::too_many_arguments)]
    pub async fn get<F, A>(
        self: &Arc<Self>,
        credential_id: &str,
        scopes: &[String],
        min_ttl: u64,
        peer: u64,
        now: i64,
        fetch: F,
        admit: A,
    ) -> Result<Hit, ApiError>
    where
        F: FnOnce() -> BoxFuture<'static, Result<Token, ApiError>>,
        A: FnOnce() -> Result<(), ApiError>,
    {
        let mut admit = Some(admit);
        // At most twice round: once more after `admit` let this caller
        // start a request (the lock was let go meanwhile: someone else may
        // have started one, or brought the token).
        let flight = loop {
            let mut entries = self.entries();
            // The hot path (a hit): one lookup per level, nothing allocated.
            if let Some(entry) = entries
                .get_mut(credential_id)
                .and_then(|sets| sets.get_mut(scopes))
            {
                entry.last_used = now;
                if let Some(token) = entry
                    .token
                    .as_ref()
                    .filter(|t| lasts(&t.token, min_ttl, now))
                {
                    let first_issue = note_issue(&mut entry.issued_to, peer);
                    self.hits.fetch_add(1, Ordering::Relaxed);
                    return Ok(Hit {
                        token: token.clone(),
                        first_issue,
                    });
                }
            }
            let entry = entry_mut(&mut entries, credential_id, scopes);
            entry.last_used = now;
            match (&entry.flight, &entry.backoff) {
                (Some((_, flight)), _) => break flight.clone(),
                (None, Some(backoff)) if backoff.until > now => {
                    let mut error = backoff.error.clone();
                    error.retry_after = Some((backoff.until - now) as u64);
                    return Err(error);
                }
                _ => {}
            }
            let Some(admit) = admit.take() else {
                break self.start(credential_id, scopes, entry, fetch());
            };
            drop(entries);
            admit()?;
        };
        self.waits.fetch_add(1, Ordering::Relaxed);
        let token = flight.await?;
        let first_issue = {
            let mut entries = self.entries();
            entries
                .get_mut(credential_id)
                .and_then(|sets| sets.get_mut(scopes))
                .is_some_and(|entry| note_issue(&mut entry.issued_to, peer))
        };
        Ok(Hit { token, first_issue })
    }

    /// Starts a proactive refresh of (`credential_id`, `scopes`) unless one
    /// is running or the entry is gone or backing off. Returns whether it started.
    pub fn refresh<F>(
        self: &Arc<Self>,
        credential_id: &str,
        scopes: &[String],
        now: i64,
        fetch: F,
    ) -> bool
    where
        F: FnOnce() -> BoxFuture<'static, Result<Token, ApiError>>,
    {
        let mut entries = self.entries();
        let Some(entry) = entries
            .get_mut(credential_id)
            .and_then(|sets| sets.get_mut(scopes))
        else {
            return false;
        };
        if entry.flight.is_some() || entry.backoff.as_ref().is_some_and(|b| b.until > now) {
            return false;
        }
        // Nobody waits: the request runs in its own task and records its
        // result in the cache.
        let _flight = self.start(credential_id, scopes, entry, fetch());
        true
    }

    /// Entries whose token is due for a proactive refresh: used within the
    /// last `recent_secs`, not already refreshing or backing off; as
    /// (credential id, scope set).
    pub fn due(&self, now: i64, recent_secs: i64) -> Vec<(String, Vec<String>)> {
        self.entries()
            .iter()
            .flat_map(|(id, sets)| sets.iter().map(move |(scopes, s)| (id, scopes, s)))
            .filter(|(_, _, s)| {
                s.last_used >= now - recent_secs
                    && s.flight.is_none()
                    && s.backoff.as_ref().is_none_or(|b| b.until <= now)
                    && s.token.is_some()
                    && now >= s.refresh_at
            })
            .map(|(id, scopes, _)| (id.clone(), scopes.clone()))
            .collect()
    }

    fn start(
        self: &Arc<Self>,
        credential_id: &str,
        scopes: &[String],
        entry: &mut Entry,
        fetch: BoxFuture<'static, Result<Token, ApiError>>,
    ) -> Flight {
        let id = self.next_flight.fetch_add(1, Ordering::Relaxed);
        self.fetches.fetch_add(1, Ordering::Relaxed);
        let cache = Arc::clone(self);
        let key = (credential_id.to_owned(), scopes.to_vec());
        let task_key = key.clone();
        // The request runs in its own task: a caller that disconnects does
        // not cancel a request the provider may already have answered.
        let task = tokio::spawn(async move {
            let result = fetch.await.map(Cached::new);
            cache.complete(&task_key.0, &task_key.1, id, &result);
            result
        });
        let cache = Arc::clone(self);
        let flight = async move {
            task.await.unwrap_or_else(|e| {
                let error = ApiError::internal(format!("the token request task failed: {e}"));
                cache.complete(&key.0, &key.1, id, &Err(error.clone()));
                Err(error)
            })
        }
        .boxed()
        .shared();
        entry.flight = Some((id, flight.clone()));
        flight
    }

    fn complete(
        &self,
        credential_id: &str,
        scopes: &[String],
        id: u64,
        result: &Result<Cached, ApiError>,
    ) {
        let mut entries = self.entries();
        // The entry may be gone (vault locked, credential removed) or taken
        // over by a newer request: then this result is not ours to record.
        let Some(entry) = entries
            .get_mut(credential_id)
            .and_then(|sets| sets.get_mut(scopes))
            .filter(|s| s.flight.as_ref().is_some_and(|(f, _)| *f == id))
        else {
            return;
        };
        entry.flight = None;
        match result {
            Ok(token) => {
                entry.refresh_at = schedule_refresh(&token.token);
                entry.token = Some(token.clone());
                entry.backoff = None;
                entry.issued_to.clear();
            }
            // Nothing reached the provider (a token exchange's subject
            // token is missing or expired): the next caller looks again at
            // once, so a CI job that fixes it need not wait out a backoff.
            Err(error) if error.kind == ErrorKind::SubjectTokenUnavailable => {}
            Err(error) => {
                let failures = entry.backoff.as_ref().map_or(0, |b| b.failures) + 1;
                let delay = backoff_delay(failures, error.retry_after);
                entry.backoff = Some(Backoff {
                    failures,
                    until: self.clock.now() + delay,
                    error: error.clone(),
                });
            }
        }
    }

    /// The cached tokens of one credential.
    pub fn peek(&self, credential_id: &str) -> Vec<Arc<Token>> {
        self.entries()
            .get(credential_id)
            .into_iter()
            .flat_map(HashMap::values)
            .filter_map(|s| s.token.as_ref().map(|t| Arc::clone(&t.token)))
            .collect()
    }

    /// Removes every entry of one credential and returns its tokens (to
    /// revoke them at the provider).
    pub fn take(&self, credential_id: &str) -> Vec<Arc<Token>> {
        let sets = self.entries().remove(credential_id);
        sets.into_iter()
            .flat_map(HashMap::into_values)
            .filter_map(|s| s.token.map(|t| t.token))
            .collect()
    }

    /// Forgets every entry of one credential (removed, or its secret changed).
    pub fn forget(&self, credential_id: &str) {
        self.entries().remove(credential_id);
    }

    /// Ends the backoff of one credential's entries, so that the next
    /// request goes out at once (its client secret was replaced).
    pub fn clear_backoff(&self, credential_id: &str) {
        if let Some(sets) = self.entries().get_mut(credential_id) {
            for entry in sets.values_mut() {
                entry.backoff = None;
            }
        }
    }

    /// Drops every token (vault locked); their memory is zeroized as the
    /// last reference goes.
    pub fn clear(&self) {
        self.entries().clear();
    }

    /// What is held for one credential, for `credential show` and `status`.
    pub fn describe(&self, credential_id: &str, now: i64) -> Vec<EntryInfo> {
        self.entries()
            .get(credential_id)
            .into_iter()
            .flat_map(HashMap::values)
            .map(|s| s.info(now))
            .collect()
    }

    /// What is held for every credential, by credential id, in one pass
    /// under one lock: `credential list` and `status` over many
    /// credentials would otherwise scan the whole cache once per credential.
    pub fn describe_all(&self, now: i64) -> HashMap<String, Vec<EntryInfo>> {
        let mut all: HashMap<String, Vec<EntryInfo>> = HashMap::new();
        for (id, by_scope) in self.entries().iter() {
            all.insert(id.clone(), by_scope.values().map(|s| s.info(now)).collect());
        }
        all
    }
}

impl Entry {
    fn info(&self, now: i64) -> EntryInfo {
        EntryInfo {
            scope: self
                .token
                .as_ref()
                .map(|t| t.token.reply.scope.clone())
                .unwrap_or_default(),
            expires_at: self.token.as_ref().and_then(|t| t.token.reply.expires_at),
            backoff: self
                .backoff
                .as_ref()
                .filter(|b| b.until > now)
                .map(|b| (b.until, b.error.message.clone())),
            has_token: self.token.is_some(),
            refresh_at: self
                .token
                .as_ref()
                .filter(|_| self.refresh_at != i64::MAX)
                .map(|_| self.refresh_at),
        }
    }
}

/// At most this many peers are remembered per token; then the list starts
/// over (the audit log records a few issuances twice rather than growing).
const MAX_REMEMBERED_PEERS: usize = 64;

/// Records that `peer` received the current token; true the first time.
fn note_issue(issued_to: &mut Vec<u64>, peer: u64) -> bool {
    if issued_to.contains(&peer) {
        return false;
    }
    if issued_to.len() >= MAX_REMEMBERED_PEERS {
        issued_to.clear();
    }
    issued_to.push(peer);
    true
}

/// Exponential backoff with jitter: `base · 2^(n-1)` capped, then a random
/// point in its upper half; a provider's Retry-After is a floor.
fn backoff_delay(failures: u32, retry_after: Option<u64>) -> i64 {
    let exp = BACKOFF_BASE_SECS.saturating_mul(1i64 << failures.saturating_sub(1).min(20));
    let capped = exp.min(BACKOFF_CAP_SECS);
    let jittered = capped / 2 + rand::random_range(0..=capped - capped / 2);
    let floor = retry_after.map_or(0, |r| {
        i64::try_from(r).unwrap_or(i64::MAX).min(BACKOFF_CAP_SECS)
    });
    jittered.max(floor).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use latchkey_client::protocol::ErrorKind;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    fn token(now: i64, lifetime: i64) -> Token {
        Token {
            reply: latchkey_client::TokenReply {
                access_token: secrecy::SecretString::from("t"),
                token_type: "Bearer".into(),
                expires_at: Some(now + lifetime),
                scope: String::new(),
            },
            effective_expiry: now + lifetime,
            obtained_at: now,
        }
    }

    /// The rate limit of a caller that may start a request.
    fn admitted() -> Result<(), ApiError> {
        Ok(())
    }

    fn cache() -> Arc<TokenCache> {
        Arc::new(TokenCache::new(Clock::Wall))
    }

    fn key() -> Key {
        ("cred".into(), "".into())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_callers_share_one_request() {
        let cache = cache();
        let requests = Arc::new(AtomicUsize::new(0));
        let now = latchkey_client::unix_now();
        let mut tasks = Vec::new();
        for peer in 0..200 {
            let cache = Arc::clone(&cache);
            let requests = Arc::clone(&requests);
            tasks.push(tokio::spawn(async move {
                cache
                    .get(
                        "cred",
                        &[],
                        0,
                        peer,
                        now,
                        || {
                            async move {
                                requests.fetch_add(1, Ordering::SeqCst);
                                tokio::time::sleep(Duration::from_millis(50)).await;
                                Ok(token(now, 3600))
                            }
                            .boxed()
                        },
                        admitted,
                    )
                    .await
                    .map(|h| h.first_issue)
            }));
        }
        for t in tasks {
            assert!(
                t.await.unwrap().unwrap(),
                "each peer's first token is a first issue"
            );
        }
        assert_eq!(requests.load(Ordering::SeqCst), 1);
        let first = cache
            .get(
                "cred",
                &[],
                60,
                1000,
                now,
                || unreachable!("cached"),
                || unreachable!("cached"),
            )
            .await
            .unwrap();
        assert!(first.first_issue);
        let again = cache
            .get(
                "cred",
                &[],
                60,
                1000,
                now,
                || unreachable!("cached"),
                || unreachable!("cached"),
            )
            .await
            .unwrap();
        assert!(!again.first_issue);
        assert_eq!(
            cache.hits.load(Ordering::Relaxed),
            2,
            "both answered from memory"
        );
    }

    #[tokio::test]
    async fn a_stale_token_is_refetched_once_and_short_lived_tokens_do_not_loop() {
        let cache = cache();
        let now = latchkey_client::unix_now();
        cache.insert(key(), token(now, 30));
        // 30 s left, caller wants 600: one request, whose 30 s token is accepted.
        let hit = cache
            .get(
                "cred",
                &[],
                600,
                1,
                now,
                || async move { Ok(token(now, 30)) }.boxed(),
                admitted,
            )
            .await
            .unwrap();
        assert_eq!(cache.waits.load(Ordering::Relaxed), 1, "the caller waited");
        assert_eq!(hit.token.token.obtained_at, now);
        assert_eq!(cache.fetches.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn failures_back_off_instead_of_hammering_the_provider() {
        let cache = cache();
        let now = latchkey_client::unix_now();
        let fail = || async { Err(ApiError::new(ErrorKind::ProviderUnavailable, "down")) }.boxed();
        let err = cache
            .get("cred", &[], 0, 1, now, fail, admitted)
            .await
            .err()
            .unwrap();
        assert_eq!(err.kind, ErrorKind::ProviderUnavailable);
        for _ in 0..50 {
            let err = cache
                .get(
                    "cred",
                    &[],
                    0,
                    1,
                    now,
                    || unreachable!("backing off: no new request"),
                    || unreachable!("backing off: nothing to admit"),
                )
                .await
                .err()
                .unwrap();
            assert!(err.retry_after.is_some());
        }
        assert_eq!(cache.fetches.load(Ordering::Relaxed), 1);
        assert!(
            cache.due(now, 60).is_empty(),
            "no proactive refresh while backing off"
        );
    }

    /// A caller whose rate limit refuses the request it would start gets
    /// that error alone: nothing starts, nothing backs off; a caller that
    /// joins a request in flight is not asked.
    #[tokio::test]
    async fn a_refused_admission_starts_nothing_and_joiners_are_not_asked() {
        let cache = cache();
        let now = latchkey_client::unix_now();
        let refused = || Err(ApiError::new(ErrorKind::RateLimited, "slow down"));
        let err = cache
            .get("cred", &[], 0, 1, now, || unreachable!("refused"), refused)
            .await
            .err()
            .unwrap();
        assert_eq!(err.kind, ErrorKind::RateLimited);
        assert_eq!(cache.fetches.load(Ordering::Relaxed), 0);
        assert!(cache
            .describe_all(now)
            .values()
            .flatten()
            .all(|e| e.backoff.is_none()));

        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let starter = {
            let cache = Arc::clone(&cache);
            tokio::spawn(async move {
                cache
                    .get(
                        "cred",
                        &[],
                        0,
                        1,
                        now,
                        || {
                            async move {
                                let _ = released.await;
                                Ok(token(now, 3600))
                            }
                            .boxed()
                        },
                        admitted,
                    )
                    .await
                    .map(|_| ())
            })
        };
        // Bounded: the starter registers its flight within a few polls.
        for _ in 0..100 {
            if cache.fetches.load(Ordering::Relaxed) == 1 {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(cache.fetches.load(Ordering::Relaxed), 1);
        let joiner = {
            let cache = Arc::clone(&cache);
            tokio::spawn(async move {
                cache
                    .get(
                        "cred",
                        &[],
                        0,
                        2,
                        now,
                        || unreachable!("joins"),
                        || unreachable!("a joiner starts nothing, so is not asked"),
                    )
                    .await
                    .map(|_| ())
            })
        };
        tokio::task::yield_now().await;
        release.send(()).unwrap();
        starter.await.unwrap().unwrap();
        joiner.await.unwrap().unwrap();
        assert_eq!(cache.fetches.load(Ordering::Relaxed), 1);
        assert_eq!(
            cache.waits.load(Ordering::Relaxed),
            2,
            "the joiner joined the flight"
        );
    }

    #[test]
    fn backoff_grows_is_capped_and_honours_retry_after() {
        for failures in 1..30 {
            let d = backoff_delay(failures, None);
            let exp = (1i64 << (failures - 1).min(20)).min(BACKOFF_CAP_SECS);
            assert!(
                d >= (exp / 2).max(1) && d <= exp,
                "failures {failures}: {d}"
            );
        }
        assert!(backoff_delay(1, Some(120)) >= 120);
        assert_eq!(backoff_delay(1, Some(1_000_000)), BACKOFF_CAP_SECS);
    }

    #[test]
    fn refresh_is_scheduled_ahead_of_expiry() {
        for lifetime in [0, 1, 2, 6, 9] {
            assert_eq!(
                schedule_refresh(&token(1000, lifetime)),
                i64::MAX,
                "{lifetime}: too short-lived to refresh ahead"
            );
        }
        for lifetime in [10, 30, 300, 3600] {
            let at = schedule_refresh(&token(1000, lifetime));
            assert!(at < 1000 + lifetime - lifetime / 4 + 1, "{lifetime}: {at}");
            assert!(
                at >= 1000 + lifetime / 2 - lifetime / 10,
                "{lifetime}: due too early at {at}"
            );
            assert!(
                at >= 1000 + lifetime - lifetime / 4 - lifetime / 10 - 10,
                "{lifetime}: {at}"
            );
        }
        // Two ticks of slack between the refresh and the token turning stale.
        for lifetime in [10, 12, 30, 3600] {
            let at = schedule_refresh(&token(1000, lifetime));
            let stale = 1000 + lifetime - expiry_margin(lifetime);
            assert!(
                at <= stale - 2,
                "{lifetime}: refresh at {at}, stale at {stale}"
            );
        }
        assert_eq!(expiry_margin(3600), EXPIRY_MARGIN_SECS);
        assert_eq!(expiry_margin(8), 2);
        let cache = cache();
        let now = 10_000;
        cache.insert(key(), token(now - 100, 110));
        assert!(
            cache.due(now, 60).is_empty(),
            "never used: not refreshed ahead"
        );
        cache
            .entries()
            .get_mut("cred")
            .unwrap()
            .get_mut(&[][..])
            .unwrap()
            .last_used = now;
        assert_eq!(cache.due(now, 60), vec![("cred".to_owned(), vec![])]);
    }
}
