//! Rate limits on the daemon's own endpoints: a token bucket per app
//! identity on every call (`dispatch`), a stricter one per app on the calls
//! that reach the provider (a token request a cache miss starts,
//! `login.start`, revocations), and one per credential on login starts.
//! A refusal is `rate_limited` with `retry_after`, and an audit row at most
//! once a minute per bucket, so a flood cannot flood the audit log too.
//!
//! Buckets are kept by app as `AppId::key` names them (an executable's
//! path, an app key's name; every unidentified caller shares one), looked
//! up by borrowed name: a call of a known app allocates nothing, and takes
//! one short mutex. Memory is bounded: at most [`MAX_TRACKED`] names per
//! table, and a full bucket — one that has refilled completely — is
//! forgotten, which changes nothing (a new bucket is full too).
//!
//! Each bucket is one number: the moment it is full again. Taking a token
//! moves that moment one interval (`period / count`) later; a call is
//! refused when that would put it more than `burst` intervals ahead of
//! now. (This is the token bucket kept as a time, as GCRA does: no refill
//! step, exact at any rate, on the daemon's [`Clock`].)

use crate::audit::Audit;
use crate::clock::Clock;
use crate::error::ApiError;
use crate::identity::{AppId, Peer};
use crate::sync::lock;
use latchkey_client::protocol::ErrorKind;
use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

/// 1024 names per table: a desktop session runs a few dozen programs that
/// use latchkey. Past this, new names share one overflow bucket until full
/// buckets can be forgotten (the table holds ~100 B per name).
pub const MAX_TRACKED: usize = 1024;
/// Full buckets are forgotten at most this often when a new name arrives
/// (a scan of the table)...
const SWEEP_EVERY: Duration = Duration::from_secs(60);
/// ...and at most this often while the table is at [`MAX_TRACKED`].
const SWEEP_WHEN_FULL: Duration = Duration::from_secs(1);
/// A bucket's refusals are recorded in the audit log at most this often;
/// the row says how many were not recorded since the one before.
const RECORD_EVERY: Duration = Duration::from_secs(60);

const NANOS_PER_SEC: u64 = 1_000_000_000;

/// A rate: `count` per `period`, in bursts of up to `burst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    count: u32,
    period: Duration,
    burst: u32,
}

impl Rate {
    /// `count` per `period`, bursts of `burst`. Panics (at compile time in
    /// a `const`) on a zero count, period or burst.
    pub const fn new(count: u32, period: Duration, burst: u32) -> Rate {
        assert!(
            count > 0 && burst > 0 && !period.is_zero(),
            "a rate is positive"
        );
        Rate {
            count,
            period,
            burst,
        }
    }

    /// The flag grammar: `off`, or `COUNT/PERIOD[,burst=N]`, where PERIOD
    /// is a duration (`30s`, `1m`) or a bare unit (`s`, `m`, `h`, `d`) and
    /// the burst defaults to COUNT: `1000/s,burst=5000`, `5/m`, `20/10s`.
    pub fn parse_setting(text: &str) -> Result<Option<Rate>, String> {
        const FORMS: &str = "use `off`, or COUNT/PERIOD with an optional burst: 1000/s, 5/m, 20/10s, 1000/s,burst=5000";
        let text = text.trim();
        if text.eq_ignore_ascii_case("off") {
            return Ok(None);
        }
        let invalid = |why: &str| format!("invalid rate limit '{text}': {why}; {FORMS}");
        let (rate, burst) = match text.split_once(',') {
            Some((rate, burst)) => {
                let n = burst
                    .trim()
                    .strip_prefix("burst=")
                    .ok_or_else(|| invalid("after the comma comes burst=N"))?;
                (rate, Some(n))
            }
            None => (text, None),
        };
        let (count, period) = rate
            .split_once('/')
            .ok_or_else(|| invalid("a rate is COUNT/PERIOD"))?;
        let positive = |n: &str, what: &str| match n.trim().parse::<u32>() {
            Ok(0) | Err(_) => Err(invalid(&format!(
                "the {what} must be a whole number from 1 to {}",
                u32::MAX
            ))),
            Ok(n) => Ok(n),
        };
        let count = positive(count, "count")?;
        let burst = match burst {
            Some(b) => positive(b, "burst")?,
            None => count,
        };
        let period = period.trim();
        // A bare unit is one of it: `s` is `1s`.
        let spelled = if period.starts_with(|c: char| c.is_ascii_digit()) {
            period.to_owned()
        } else {
            format!("1{period}")
        };
        let period =
            latchkey_client::duration::parse(&spelled).map_err(|e| invalid(&e.to_string()))?;
        if period.is_zero() {
            return Err(invalid("the period must be longer than zero"));
        }
        Ok(Some(Rate::new(count, period, burst)))
    }

    /// Time between two tokens, in nanoseconds (at least 1).
    fn interval(&self) -> u64 {
        let period = u64::try_from(self.period.as_nanos()).unwrap_or(u64::MAX);
        (period / u64::from(self.count)).max(1)
    }

    /// How far ahead of now a bucket may be: `burst` intervals.
    fn capacity(&self) -> u64 {
        self.interval().saturating_mul(u64::from(self.burst))
    }

    /// "1000 calls per second (bursts of 5000)", for messages.
    fn describe(&self, what: &str) -> String {
        let per = match self.period.as_secs() {
            1 if self.period.subsec_nanos() == 0 => "per second".to_owned(),
            60 if self.period.subsec_nanos() == 0 => "per minute".to_owned(),
            3600 if self.period.subsec_nanos() == 0 => "per hour".to_owned(),
            86400 if self.period.subsec_nanos() == 0 => "per day".to_owned(),
            _ => format!("per {}", Spelled(self.period)),
        };
        let bursts = if self.burst == self.count {
            String::new()
        } else {
            format!(" (bursts of {})", self.burst)
        };
        format!("{} {what} {per}{bursts}", self.count)
    }
}

/// A period as the flag grammar writes it: `1s`, `10m`, `250ms`.
struct Spelled(Duration);

impl fmt::Display for Spelled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.0;
        if d.subsec_nanos() != 0 {
            return write!(f, "{}ms", d.as_millis());
        }
        let s = d.as_secs();
        match s {
            _ if s.is_multiple_of(86400) => write!(f, "{}d", s / 86400),
            _ if s.is_multiple_of(3600) => write!(f, "{}h", s / 3600),
            _ if s.is_multiple_of(60) => write!(f, "{}m", s / 60),
            _ => write!(f, "{s}s"),
        }
    }
}

/// The flag spelling: `1000/1s,burst=5000`; parses back to the same rate.
impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.count, Spelled(self.period))?;
        if self.burst != self.count {
            write!(f, ",burst={}", self.burst)?;
        }
        Ok(())
    }
}

/// The three limits a daemon applies; `None` turns one off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimits {
    /// Every call of one app (but `hello`, `vault.lock`, `vault.panic`).
    pub calls: Option<Rate>,
    /// Calls of one app that reach the provider.
    pub provider: Option<Rate>,
    /// Login starts of one credential, whoever asks.
    pub logins: Option<Rate>,
}

impl RateLimits {
    /// Limits no normal app meets. A cached `token.get` costs the daemon
    /// ~10 µs, so 1000 calls a second is 1 % of a core; an app that asks
    /// for its token before every request it makes stays under it, and a
    /// burst of 5000 covers a program starting many workers at once. The
    /// provider's limit is stricter (10 a second, bursts of 30): a token
    /// request is a network round trip the provider may bill or throttle,
    /// and an app that misses the cache that often is looping (proactive
    /// refreshes are the daemon's own and not counted). 5 login starts a
    /// minute per credential: a person logs in once, maybe retries.
    pub const DEFAULT: RateLimits = RateLimits {
        calls: Some(Rate::new(1000, Duration::from_secs(1), 5000)),
        provider: Some(Rate::new(10, Duration::from_secs(1), 30)),
        logins: Some(Rate::new(5, Duration::from_secs(60), 5)),
    };

    /// No limits at all.
    pub const OFF: RateLimits = RateLimits {
        calls: None,
        provider: None,
        logins: None,
    };
}

/// Which map of a [`Table`] a name lives in.
#[derive(Clone, Copy)]
enum Space {
    Exe = 0,
    Key = 1,
    Credential = 2,
}

/// What a bucket is kept by, borrowed.
#[derive(Clone, Copy)]
enum Name<'a> {
    In(Space, &'a str),
    /// Every unidentified caller: one shared bucket.
    Unknown,
}

/// The name an app's buckets are kept by: `AppId::key`, by parts.
fn name_of(app: &AppId) -> Name<'_> {
    match app {
        AppId::Exe { path, .. } => Name::In(Space::Exe, path),
        AppId::Key { name } => Name::In(Space::Key, name),
        AppId::Unknown { .. } => Name::Unknown,
    }
}

/// One bucket (see the module docs).
#[derive(Default, Clone, Copy)]
struct Bucket {
    /// When the bucket is full again, in nanoseconds on the daemon's clock.
    full_at: u64,
    /// Until when a refusal is not recorded again.
    quiet_until: u64,
    /// Refusals not recorded since the last recorded one.
    unrecorded: u32,
}

impl Bucket {
    /// The bucket's `full_at` after one more token, or how long (ns) until
    /// one is there.
    fn check(&self, rate: &Rate, now: u64) -> Result<u64, u64> {
        let next = self.full_at.max(now).saturating_add(rate.interval());
        let ahead = next - now;
        if ahead > rate.capacity() {
            Err(ahead - rate.capacity())
        } else {
            Ok(next)
        }
    }

    /// Counts a refusal; `Some(n)` when it is to be recorded (`n`: those
    /// not recorded since the last row).
    fn refused(&mut self, now: u64) -> Option<u32> {
        if now >= self.quiet_until {
            self.quiet_until = now.saturating_add(nanos(RECORD_EVERY));
            Some(std::mem::take(&mut self.unrecorded))
        } else {
            self.unrecorded = self.unrecorded.saturating_add(1);
            None
        }
    }

    /// Whether forgetting it changes nothing but a pending count: full,
    /// and past its quiet time.
    fn forgettable(&self, now: u64) -> bool {
        self.full_at <= now && self.quiet_until <= now
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Buckets by name, bounded (see the module docs).
#[derive(Default)]
struct Table {
    /// One map per [`Space`], so a lookup borrows the name.
    named: [HashMap<String, Bucket>; 3],
    unknown: Bucket,
    /// New names share this one while the table is full of busy buckets.
    overflow: Bucket,
    /// Names held in all maps.
    len: usize,
    /// When full buckets were last forgotten.
    swept_at: u64,
}

impl Table {
    /// Runs `f` on `name`'s bucket, made (full) if missing.
    fn with<R>(&mut self, name: Name<'_>, now: u64, f: impl FnOnce(&mut Bucket) -> R) -> R {
        let (space, name) = match name {
            Name::Unknown => return f(&mut self.unknown),
            Name::In(space, name) => (space as usize, name),
        };
        // The hot path: a known name, one lookup, nothing allocated.
        if let Some(bucket) = self.named[space].get_mut(name) {
            return f(bucket);
        }
        if !self.make_room(now) {
            return f(&mut self.overflow);
        }
        self.len += 1;
        f(self.named[space].entry(name.to_owned()).or_default())
    }

    /// Whether a new name fits, after forgetting full buckets if a sweep
    /// is due.
    fn make_room(&mut self, now: u64) -> bool {
        let full = self.len >= MAX_TRACKED;
        let every = nanos(if full { SWEEP_WHEN_FULL } else { SWEEP_EVERY });
        if now.saturating_sub(self.swept_at) >= every {
            self.swept_at = now;
            for map in &mut self.named {
                map.retain(|_, b| !b.forgettable(now));
            }
            self.len = self.named.iter().map(HashMap::len).sum();
        }
        self.len < MAX_TRACKED
    }
}

/// One limit and its table.
struct Limit {
    rate: Rate,
    table: Table,
}

/// A refusal on its way to the caller: the wait, and the row to record.
struct Refusal {
    wait: u64,
    record: Option<u32>,
}

impl Limit {
    fn new(rate: Rate) -> Limit {
        Limit {
            rate,
            table: Table::default(),
        }
    }

    /// Takes a token from `name`'s bucket, or says why not.
    fn take(&mut self, name: Name<'_>, now: u64) -> Result<(), Refusal> {
        let rate = self.rate;
        self.table
            .with(name, now, |bucket| match bucket.check(&rate, now) {
                Ok(full_at) => {
                    bucket.full_at = full_at;
                    Ok(())
                }
                Err(wait) => Err(Refusal {
                    wait,
                    record: bucket.refused(now),
                }),
            })
    }
}

/// The provider's and the logins' limits: rare calls, one mutex, so a
/// login start takes from both or from neither.
struct Slow {
    provider: Option<Limit>,
    logins: Option<Limit>,
}

/// The daemon's rate limits (see the module docs).
pub struct Limits {
    /// Every call; its own mutex, on the hot path.
    calls: Option<Mutex<Limit>>,
    slow: Mutex<Slow>,
    clock: Clock,
    audit: Audit,
}

/// Seconds to wait for `wait` nanoseconds: rounded up, at least 1.
fn retry_secs(wait: u64) -> u64 {
    wait.div_ceil(NANOS_PER_SEC).max(1)
}

impl Limits {
    pub fn new(config: RateLimits, clock: Clock, audit: Audit) -> Limits {
        Limits {
            calls: config.calls.map(|r| Mutex::new(Limit::new(r))),
            slow: Mutex::new(Slow {
                provider: config.provider.map(Limit::new),
                logins: config.logins.map(Limit::new),
            }),
            clock,
            audit,
        }
    }

    /// One call of `method` by `peer`'s app.
    pub fn call(&self, peer: &Peer, method: &str) -> Result<(), ApiError> {
        let Some(calls) = &self.calls else {
            return Ok(());
        };
        let now = self.clock.now_nanos();
        let (taken, rate) = {
            let mut limit = lock(calls);
            (limit.take(name_of(peer.caller.app()), now), limit.rate)
        };
        taken.map_err(|refusal| {
            let limit = rate.describe("calls");
            self.refuse(peer, None, method, &limit, "--rate-limit", refusal)
        })
    }

    /// A call of `peer`'s app that reaches the provider for `credential`
    /// (`method` says which).
    pub fn provider(&self, peer: &Peer, credential: &str, method: &str) -> Result<(), ApiError> {
        let now = self.clock.now_nanos();
        let mut slow = lock(&self.slow);
        let Some(provider) = &mut slow.provider else {
            return Ok(());
        };
        let rate = provider.rate;
        let taken = provider.take(name_of(peer.caller.app()), now);
        drop(slow);
        taken.map_err(|refusal| {
            let limit = rate.describe("requests that reach the provider");
            let flag = "--provider-rate-limit";
            self.refuse(peer, Some(credential), method, &limit, flag, refusal)
        })
    }

    /// A login start of the credential `id` (named `credential`) by
    /// `peer`'s app: one token from the credential's login bucket and one
    /// from the app's provider bucket, or from neither.
    pub fn login(&self, peer: &Peer, id: &str, credential: &str) -> Result<(), ApiError> {
        const METHOD: &str = "login.start";
        let now = self.clock.now_nanos();
        let app = name_of(peer.caller.app());
        let by_credential = Name::In(Space::Credential, id);
        let mut slow = lock(&self.slow);
        let Slow { provider, logins } = &mut *slow;
        // Both checked before either is taken.
        if let Some(logins) = logins {
            let rate = logins.rate;
            let checked = logins
                .table
                .with(by_credential, now, |b| match b.check(&rate, now) {
                    Ok(_) => Ok(()),
                    Err(wait) => Err(Refusal {
                        wait,
                        record: b.refused(now),
                    }),
                });
            if let Err(refusal) = checked {
                drop(slow);
                let limit = rate.describe("login starts");
                return Err(self.refuse_login(peer, credential, &limit, refusal));
            }
        }
        if let Some(provider) = provider {
            let rate = provider.rate;
            if let Err(refusal) = provider.take(app, now) {
                drop(slow);
                let limit = rate.describe("requests that reach the provider");
                let flag = "--provider-rate-limit";
                return Err(self.refuse(peer, Some(credential), METHOD, &limit, flag, refusal));
            }
        }
        if let Some(logins) = logins {
            logins
                .take(by_credential, now)
                .unwrap_or_else(|_| unreachable!("checked above under the same lock"));
        }
        Ok(())
    }

    /// The error for an app's refusal, and its audit row when one is due.
    fn refuse(
        &self,
        peer: &Peer,
        credential: Option<&str>,
        method: &str,
        limit: &str,
        flag: &str,
        refusal: Refusal,
    ) -> ApiError {
        let secs = retry_secs(refusal.wait);
        let app = peer.label();
        if let Some(unrecorded) = refusal.record {
            self.audit.record(
                "rate_limited",
                credential,
                Some(peer),
                Some(format!(
                    "{method}: more than {limit}; {unrecorded} more refused since the last row"
                )),
            );
        }
        ApiError::new(
            ErrorKind::RateLimited,
            format!("app {app} made more than {limit}: retry after {secs} s; the limit is set with `latchkeyd {flag}`"),
        )
        .with_retry_after(Some(secs))
    }

    /// The error for a credential's login refusal, and its audit row.
    fn refuse_login(
        &self,
        peer: &Peer,
        credential: &str,
        limit: &str,
        refusal: Refusal,
    ) -> ApiError {
        let secs = retry_secs(refusal.wait);
        if let Some(unrecorded) = refusal.record {
            self.audit.record(
                "rate_limited",
                Some(credential),
                Some(peer),
                Some(format!(
                    "login.start: more than {limit} for this credential; {unrecorded} more refused since the last row"
                )),
            );
        }
        ApiError::new(
            ErrorKind::RateLimited,
            format!("credential '{credential}' had more than {limit}: retry after {secs} s, and finish or cancel the logins already started; the limit is set with `latchkeyd --login-rate-limit`"),
        )
        .with_retry_after(Some(secs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = NANOS_PER_SEC;

    /// `n` takes at `now`; how many succeeded.
    fn take_n(limit: &mut Limit, name: Name<'_>, now: u64, n: u32) -> u32 {
        (0..n).filter(|_| limit.take(name, now).is_ok()).count() as u32
    }

    #[test]
    fn a_bucket_gives_its_burst_then_one_token_per_interval() {
        let mut limit = Limit::new(Rate::new(10, Duration::from_secs(1), 30));
        let app = Name::In(Space::Exe, "/usr/bin/app");
        let t0 = 1_000 * SEC;
        assert_eq!(take_n(&mut limit, app, t0, 100), 30, "the burst");
        let Err(refusal) = limit.take(app, t0) else {
            panic!("empty after the burst");
        };
        assert_eq!(refusal.wait, SEC / 10, "one interval to the next token");
        // Refill: 10 a second, never more than the burst.
        assert_eq!(take_n(&mut limit, app, t0 + SEC / 10, 5), 1);
        assert_eq!(take_n(&mut limit, app, t0 + SEC + SEC / 10, 100), 10);
        assert_eq!(take_n(&mut limit, app, t0 + 1_000 * SEC, 100), 30);
        // Another app has its own bucket.
        let other = Name::In(Space::Exe, "/usr/bin/other");
        assert_eq!(take_n(&mut limit, other, t0 + 1_000 * SEC, 100), 30);
        // So does an app key of the same name as a path.
        let key = Name::In(Space::Key, "/usr/bin/app");
        assert_eq!(take_n(&mut limit, key, t0 + 1_000 * SEC, 100), 30);
    }

    #[test]
    fn slow_rates_and_huge_rates_keep_exact_arithmetic() {
        // 5 a minute: 12 s per token.
        let mut limit = Limit::new(Rate::new(5, Duration::from_secs(60), 5));
        let c = Name::In(Space::Credential, "id");
        let t0 = 50 * SEC;
        assert_eq!(take_n(&mut limit, c, t0, 9), 5);
        let Err(r) = limit.take(c, t0 + 3 * SEC) else {
            panic!("refused")
        };
        assert_eq!(retry_secs(r.wait), 9);
        assert_eq!(take_n(&mut limit, c, t0 + 12 * SEC, 9), 1);
        // A billion a second: 1 ns per token, no overflow at the top.
        let mut fast = Limit::new(Rate::new(u32::MAX, Duration::from_secs(1), u32::MAX));
        assert_eq!(take_n(&mut fast, c, u64::MAX - SEC, 1000), 1000);
        let mut daily = Limit::new(Rate::new(1, Duration::from_secs(86_400), u32::MAX));
        assert_eq!(
            take_n(&mut daily, c, t0, 10),
            10,
            "no overflow of the capacity"
        );
    }

    #[test]
    fn a_clock_that_steps_back_refills_nothing() {
        let mut limit = Limit::new(Rate::new(1, Duration::from_secs(1), 2));
        let app = Name::Unknown;
        let t0 = 100 * SEC;
        assert_eq!(take_n(&mut limit, app, t0, 5), 2);
        assert_eq!(take_n(&mut limit, app, t0 - 50 * SEC, 5), 0);
        assert_eq!(take_n(&mut limit, app, t0 + SEC, 5), 1);
    }

    #[test]
    fn refusals_are_recorded_once_a_minute_with_the_count_between() {
        let mut limit = Limit::new(Rate::new(1, Duration::from_secs(1), 1));
        let app = Name::In(Space::Exe, "/bin/flood");
        let t0 = 10 * SEC;
        assert!(limit.take(app, t0).is_ok());
        let records: Vec<Option<u32>> = (0..5)
            .map(|_| {
                limit
                    .take(app, t0)
                    .err()
                    .map(|r| r.record)
                    .expect("refused")
            })
            .collect();
        assert_eq!(records, [Some(0), None, None, None, None]);
        // Still within the minute: not recorded.
        let later = t0 + 30 * SEC;
        assert!(limit.take(app, later).is_ok());
        assert_eq!(limit.take(app, later).err().map(|r| r.record), Some(None));
        // A minute on: recorded, with the five not recorded meanwhile.
        let minute = t0 + 60 * SEC;
        assert!(limit.take(app, minute).is_ok());
        assert_eq!(
            limit.take(app, minute).err().map(|r| r.record),
            Some(Some(5))
        );
    }

    #[test]
    fn the_table_is_bounded_and_forgets_only_full_buckets() {
        let mut limit = Limit::new(Rate::new(1, Duration::from_secs(1), 1));
        let t0 = 1_000 * SEC;
        let names: Vec<String> = (0..MAX_TRACKED + 10).map(|i| format!("/bin/{i}")).collect();
        for name in &names[..MAX_TRACKED] {
            assert!(limit.take(Name::In(Space::Exe, name), t0).is_ok());
        }
        assert_eq!(limit.table.len, MAX_TRACKED);
        // Full of busy buckets: newcomers share the overflow bucket.
        let a = Name::In(Space::Exe, &names[MAX_TRACKED]);
        let b = Name::In(Space::Exe, &names[MAX_TRACKED + 1]);
        assert!(limit.take(a, t0).is_ok());
        assert!(limit.take(b, t0).is_err(), "one bucket for both");
        assert_eq!(limit.table.len, MAX_TRACKED);
        // A busy one is still remembered (no fresh burst by being forgotten).
        assert!(limit.take(Name::In(Space::Exe, &names[0]), t0).is_err());
        // Two seconds on, every bucket is full again: forgotten, room made;
        // but for the one refused just now, kept for its quiet minute (so
        // its next refusal is not recorded again at once).
        let later = t0 + 2 * SEC;
        assert!(limit.take(b, later).is_ok());
        assert_eq!(limit.table.len, 2, "b, and the refused names[0]");
        // A bucket still refilling survives a sweep.
        let slow = Name::In(Space::Exe, "/bin/slow");
        let mut slow_limit = Limit::new(Rate::new(1, Duration::from_secs(3600), 1));
        assert!(slow_limit.take(slow, t0).is_ok());
        assert!(slow_limit
            .take(Name::In(Space::Exe, "/bin/x"), t0 + 120 * SEC)
            .is_ok());
        assert_eq!(slow_limit.table.len, 2, "the slow one is not full yet");
        assert!(slow_limit.take(slow, t0 + 120 * SEC).is_err());
    }

    #[test]
    fn the_flag_grammar_reads_and_writes_rates() {
        let parse = |t: &str| Rate::parse_setting(t);
        assert_eq!(parse("off"), Ok(None));
        assert_eq!(parse("OFF"), Ok(None));
        assert_eq!(
            parse("1000/s,burst=5000"),
            Ok(RateLimits::DEFAULT.calls),
            "the default spelled as --help shows it"
        );
        assert_eq!(parse("10/s,burst=30"), Ok(RateLimits::DEFAULT.provider));
        assert_eq!(parse("5/m"), Ok(RateLimits::DEFAULT.logins));
        assert_eq!(
            parse("20/10s"),
            Ok(Some(Rate::new(20, Duration::from_secs(10), 20)))
        );
        assert_eq!(
            parse("3/250ms"),
            Ok(Some(Rate::new(3, Duration::from_millis(250), 3)))
        );
        for bad in [
            "",
            "1000",
            "0/s",
            "10/0s",
            "10/x",
            "-1/s",
            "10/s,5",
            "10/s,burst=0",
            "1/s,burst=x",
        ] {
            let e = parse(bad).expect_err(bad);
            assert!(e.contains("COUNT/PERIOD"), "{bad}: {e}");
        }
        for rate in [
            RateLimits::DEFAULT.calls,
            RateLimits::DEFAULT.logins,
            Some(Rate::new(3, Duration::from_millis(250), 7)),
            Some(Rate::new(1, Duration::from_secs(7200), 1)),
        ] {
            let rate = rate.expect("a rate");
            assert_eq!(parse(&rate.to_string()), Ok(Some(rate)), "{rate}");
        }
        let calls = RateLimits::DEFAULT.calls.expect("on by default");
        assert_eq!(
            calls.describe("calls"),
            "1000 calls per second (bursts of 5000)"
        );
        let logins = RateLimits::DEFAULT.logins.expect("on by default");
        assert_eq!(logins.describe("login starts"), "5 login starts per minute");
    }

    /// The daemon's clock in tests follows tokio's: a paused clock that
    /// advances refills exactly.
    #[tokio::test(start_paused = true)]
    async fn buckets_refill_on_the_daemons_clock() {
        struct Nowhere;
        impl crate::audit::Sink for Nowhere {
            fn write(&self, _: &[crate::vault::AuditEvent]) -> bool {
                false
            }
        }
        let clock = Clock::following_tokio();
        let limits = Limits::new(
            RateLimits {
                calls: Some(Rate::new(4, Duration::from_secs(1), 2)),
                ..RateLimits::OFF
            },
            clock,
            Audit::start(Nowhere, clock),
        );
        let peer = Peer::unidentified(1);
        assert!(limits.call(&peer, "status").is_ok());
        assert!(limits.call(&peer, "status").is_ok());
        let refused = limits.call(&peer, "status").expect_err("the burst is 2");
        assert_eq!(refused.kind, ErrorKind::RateLimited);
        assert_eq!(refused.retry_after, Some(1));
        assert!(
            refused.message.starts_with("app unidentified program (not looked up) made more than 4 calls per second (bursts of 2): retry after 1 s"),
            "{}",
            refused.message
        );
        assert!(refused.message.ends_with("`latchkeyd --rate-limit`"));
        tokio::time::advance(Duration::from_millis(249)).await;
        assert!(limits.call(&peer, "status").is_err(), "not quite a token");
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(limits.call(&peer, "status").is_ok(), "a token every 250 ms");
        assert!(limits.call(&peer, "status").is_err());
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(limits.call(&peer, "status").is_ok());
        assert!(limits.call(&peer, "status").is_ok());
        assert!(
            limits.call(&peer, "status").is_err(),
            "never more than the burst"
        );
    }
}
