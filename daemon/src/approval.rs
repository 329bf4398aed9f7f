//! Apps waiting for the user's decision, and the approvers who decide.
//!
//! A call for an `ask` credential with no rule for its app waits here
//! (bounded) while an approver (`latchkey approve`, attached over its own
//! connection) is shown the prompt. Concurrent calls of one app for one
//! credential share one prompt: no prompt storms. With no approver
//! attached, a call fails at once. Decisions that are not stored rules —
//! once, this terminal session — live here too; stored rules are the
//! caller's (`apps.rs`) to write before it resolves the prompt.
//!
//! Calls refused because nobody could be asked are kept as [`Refusal`]s
//! (bounded, one per app and credential a minute) while a desktop notifier
//! (`notify.rs`) wants them, so it can say which command allows the app.

use crate::error::ApiError;
use crate::identity::{AppId, TermSession};
use crate::sync::lock;
use latchkey_client::protocol::{AppInfo, ErrorKind, PendingApproval};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

/// Prompts open at once at most: a flood of different apps cannot grow
/// memory; beyond it, calls fail as if nobody could be asked.
const MAX_PENDING: usize = 256;
/// Session grants kept at most (oldest dropped first).
const MAX_GRANTS: usize = 1024;
/// Refusals waiting for the notifier at most: it shows them one by one; a
/// flood beyond this is dropped, not queued.
const MAX_REFUSALS: usize = 16;
/// One refusal notice per app and credential this often at most: an app
/// retrying in a loop must not flood the desktop.
const REFUSAL_EVERY: Duration = Duration::from_secs(60);
/// (app, credential) pairs remembered for [`REFUSAL_EVERY`] at most.
const MAX_REFUSALS_REMEMBERED: usize = 256;

/// How a prompt ended, as its waiters see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Allowed for these scopes.
    Allowed(Vec<String>),
    Denied,
    /// Every approver left, or nobody answered in time.
    Unanswered(&'static str),
}

/// What a call that needs approval is.
pub struct Ask {
    pub app: AppId,
    pub info: AppInfo,
    pub session: Option<TermSession>,
    pub credential_id: String,
    pub credential: String,
    pub scopes: Vec<String>,
    /// A rule allowed this path with another hash before.
    pub updated: bool,
}

/// A prompt as the registry holds it.
struct Pending {
    id: u64,
    ask: Ask,
    waiting: u32,
    deadline: Instant,
    outcome: watch::Sender<Option<Answer>>,
}

/// An approval that is not a stored rule: for one terminal session (as
/// long as the daemon runs).
struct Grant {
    app: AppId,
    credential_id: String,
    session: TermSession,
    scopes: Vec<String>,
}

/// A call refused at once because nobody could be asked, as a notice for
/// the user: who, which credential, and the command that allows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The app as people read it (`AppId::label`).
    pub app: String,
    pub credential: String,
    /// What allows it (`apps.rs`'s `how_to_allow`).
    pub fix: String,
}

#[derive(Default)]
struct Inner {
    approvers: usize,
    next_id: u64,
    pending: Vec<Pending>,
    grants: Vec<Grant>,
    /// Whether a notifier takes refusals; none are kept otherwise.
    refusals_wanted: bool,
    refusals: VecDeque<Refusal>,
    /// When each (app key, credential id) was last noticed.
    noticed: HashMap<(String, String), Instant>,
}

pub struct Approvals {
    inner: Mutex<Inner>,
    /// Woken when a prompt opens, for approvers waiting in `next`.
    opened: Notify,
    /// Woken when a refusal is kept, for the notifier.
    refused: Notify,
    /// How long a call waits for a decision.
    timeout: Duration,
}

/// An attached approver; detaches when dropped (its connection ended).
pub struct Approver {
    approvals: Arc<Approvals>,
    /// Whether it gave a proof of a human, so may allow.
    pub can_allow: bool,
}

impl Drop for Approver {
    fn drop(&mut self) {
        let mut inner = lock(&self.approvals.inner);
        inner.approvers -= 1;
        if inner.approvers == 0 {
            // Nobody is left to answer: the waiting calls fail now.
            for p in inner.pending.drain(..) {
                p.outcome
                    .send_replace(Some(Answer::Unanswered("the approver detached")));
            }
        }
    }
}

impl Approvals {
    pub fn new(timeout: Duration) -> Arc<Approvals> {
        Arc::new(Approvals {
            inner: Mutex::new(Inner::default()),
            opened: Notify::new(),
            refused: Notify::new(),
            timeout,
        })
    }

    pub fn attach(self: &Arc<Self>, can_allow: bool) -> Approver {
        lock(&self.inner).approvers += 1;
        Approver {
            approvals: Arc::clone(self),
            can_allow,
        }
    }

    /// How many approvers are attached.
    pub fn approvers(&self) -> u32 {
        u32::try_from(lock(&self.inner).approvers).unwrap_or(u32::MAX)
    }

    /// Whether a session grant covers `app` using `credential_id` for
    /// `scopes` from `session`.
    pub fn granted(
        &self,
        app: &AppId,
        credential_id: &str,
        session: Option<&TermSession>,
        scopes: &[String],
    ) -> bool {
        let Some(session) = session else {
            return false;
        };
        lock(&self.inner).grants.iter().any(|g| {
            &g.app == app
                && g.credential_id == credential_id
                && &g.session == session
                && scopes.iter().all(|s| g.scopes.contains(s))
        })
    }

    /// Waits for the user's decision on `ask`, sharing the prompt of the
    /// same app for the same credential. Fails at once when no approver
    /// is attached (`no_approver` is that error).
    pub async fn ask(&self, ask: Ask, no_approver: ApiError) -> Result<Answer, ApiError> {
        let (mut outcome, deadline) = {
            let mut inner = lock(&self.inner);
            if inner.approvers == 0 {
                return Err(no_approver);
            }
            let shared = inner
                .pending
                .iter_mut()
                .find(|p| p.ask.app == ask.app && p.ask.credential_id == ask.credential_id);
            match shared {
                Some(p) => {
                    p.waiting += 1;
                    (p.outcome.subscribe(), p.deadline)
                }
                None => {
                    if inner.pending.len() >= MAX_PENDING {
                        return Err(no_approver);
                    }
                    inner.next_id += 1;
                    let (tx, rx) = watch::channel(None);
                    let id = inner.next_id;
                    let deadline = Instant::now() + self.timeout;
                    inner.pending.push(Pending {
                        id,
                        ask,
                        waiting: 1,
                        deadline,
                        outcome: tx,
                    });
                    self.opened.notify_waiters();
                    (rx, deadline)
                }
            }
        };
        let answer = tokio::select! {
            got = outcome.wait_for(Option::is_some) => got.ok().and_then(|a| a.clone()),
            () = tokio::time::sleep_until(deadline) => None,
        };
        Ok(answer.unwrap_or_else(|| {
            self.expire();
            Answer::Unanswered("nobody answered in time")
        }))
    }

    /// Drops prompts past their deadline (their waiters gave up).
    fn expire(&self) {
        let now = Instant::now();
        lock(&self.inner).pending.retain(|p| {
            let live = p.deadline > now;
            if !live {
                p.outcome
                    .send_replace(Some(Answer::Unanswered("nobody answered in time")));
            }
            live
        });
    }

    /// The oldest open prompt with an id above `after`, waiting up to
    /// `wait` for one to open.
    pub async fn next(&self, after: u64, wait: Duration) -> Option<PendingApproval> {
        let deadline = Instant::now() + wait;
        loop {
            let opened = self.opened.notified();
            tokio::pin!(opened);
            opened.as_mut().enable();
            self.expire();
            if let Some(p) = self.first_after(after) {
                return Some(p);
            }
            if tokio::time::timeout_at(deadline, opened).await.is_err() {
                return None;
            }
        }
    }

    fn first_after(&self, after: u64) -> Option<PendingApproval> {
        let now = Instant::now();
        let inner = lock(&self.inner);
        let p = inner.pending.iter().find(|p| p.id > after)?;
        Some(PendingApproval {
            id: p.id,
            app: p.ask.info.clone(),
            credential: p.ask.credential.clone(),
            scopes: p.ask.scopes.clone(),
            updated: p.ask.updated,
            waiting: p.waiting,
            expires_in: p.deadline.saturating_duration_since(now).as_secs(),
        })
    }

    /// What prompt `id` asks (to store a rule from it before resolving).
    pub fn asked(&self, id: u64) -> Result<(AppId, String, String, Vec<String>), ApiError> {
        let inner = lock(&self.inner);
        let p = inner
            .pending
            .iter()
            .find(|p| p.id == id)
            .ok_or_else(no_such_prompt)?;
        Ok((
            p.ask.app.clone(),
            p.ask.credential_id.clone(),
            p.ask.credential.clone(),
            p.ask.scopes.clone(),
        ))
    }

    /// Ends prompt `id` with `answer`; with `for_session`, later calls of
    /// that app from the same terminal session are allowed too.
    pub fn resolve(&self, id: u64, answer: Answer, for_session: bool) -> Result<(), ApiError> {
        let mut inner = lock(&self.inner);
        let at = inner
            .pending
            .iter()
            .position(|p| p.id == id)
            .ok_or_else(no_such_prompt)?;
        let p = inner.pending.remove(at);
        if let (true, Answer::Allowed(scopes), Some(session)) =
            (for_session, &answer, p.ask.session)
        {
            if inner.grants.len() >= MAX_GRANTS {
                inner.grants.remove(0);
            }
            inner.grants.push(Grant {
                app: p.ask.app.clone(),
                credential_id: p.ask.credential_id.clone(),
                session,
                scopes: scopes.clone(),
            });
        }
        p.outcome.send_replace(Some(answer));
        Ok(())
    }

    /// How prompt `id` ends, to watch while it is open; `None` once it ended.
    pub fn outcome(&self, id: u64) -> Option<watch::Receiver<Option<Answer>>> {
        let inner = lock(&self.inner);
        let p = inner.pending.iter().find(|p| p.id == id)?;
        Some(p.outcome.subscribe())
    }

    /// Starts or stops keeping refusals (a notifier attached or left).
    pub fn want_refusals(&self, wanted: bool) {
        let mut inner = lock(&self.inner);
        inner.refusals_wanted = wanted;
        if !wanted {
            inner.refusals.clear();
        }
    }

    /// Keeps a refusal of `app` (by its key) using `credential_id` for the
    /// notifier, unless nobody wants it, the same pair was noticed within
    /// [`REFUSAL_EVERY`], or [`MAX_REFUSALS`] wait already.
    pub fn refused(&self, app: &AppId, credential_id: &str, refusal: Refusal) {
        let now = Instant::now();
        let mut inner = lock(&self.inner);
        if !inner.refusals_wanted || inner.refusals.len() >= MAX_REFUSALS {
            return;
        }
        let key = (app.key(), credential_id.to_owned());
        if inner
            .noticed
            .get(&key)
            .is_some_and(|at| now.duration_since(*at) < REFUSAL_EVERY)
        {
            return;
        }
        if inner.noticed.len() >= MAX_REFUSALS_REMEMBERED {
            inner
                .noticed
                .retain(|_, at| now.duration_since(*at) < REFUSAL_EVERY);
            if inner.noticed.len() >= MAX_REFUSALS_REMEMBERED {
                return;
            }
        }
        inner.noticed.insert(key, now);
        inner.refusals.push_back(refusal);
        drop(inner);
        self.refused.notify_one();
    }

    /// The next refusal kept, waiting for one.
    pub async fn next_refusal(&self) -> Refusal {
        loop {
            let kept = self.refused.notified();
            tokio::pin!(kept);
            kept.as_mut().enable();
            if let Some(r) = lock(&self.inner).refusals.pop_front() {
                return r;
            }
            kept.await;
        }
    }

    /// Forgets session grants for a credential (removed) or for everything
    /// (the vault locked).
    pub fn forget(&self, credential_id: Option<&str>) {
        lock(&self.inner)
            .grants
            .retain(|g| credential_id.is_some_and(|c| g.credential_id != c));
    }
}

fn no_such_prompt() -> ApiError {
    ApiError::new(
        ErrorKind::NotFound,
        "no such prompt: it was answered, or its callers gave up; run `latchkey approve` again",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use latchkey_client::protocol::AppKind;

    fn ask(app: &str) -> Ask {
        Ask {
            app: AppId::Key { name: app.into() },
            info: AppInfo {
                kind: AppKind::Key,
                name: app.into(),
                sha256: None,
                pid: 1,
                via_cli: false,
                chain: Vec::new(),
                unit: None,
                session: None,
            },
            session: Some(TermSession {
                sid: 7,
                leader_start: 1,
                tty: 0,
            }),
            credential_id: "c1".into(),
            credential: "gh".into(),
            scopes: vec!["repo".into()],
            updated: false,
        }
    }

    fn none() -> ApiError {
        ApiError::new(ErrorKind::ApprovalRequired, "nobody")
    }

    #[tokio::test(start_paused = true)]
    async fn without_an_approver_a_call_fails_at_once() {
        let a = Approvals::new(Duration::from_secs(60));
        let err = a.ask(ask("x"), none()).await.unwrap_err();
        assert_eq!(err.kind, ErrorKind::ApprovalRequired);
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_calls_share_one_prompt_and_one_answer() {
        let a = Approvals::new(Duration::from_secs(60));
        let _approver = a.attach(true);
        let calls: Vec<_> = (0..50)
            .map(|_| {
                let a = Arc::clone(&a);
                tokio::spawn(async move { a.ask(ask("x"), none()).await })
            })
            .collect();
        let p = a.next(0, Duration::from_secs(5)).await.expect("a prompt");
        tokio::task::yield_now().await;
        assert!(a.first_after(p.id).is_none(), "one prompt, not fifty");
        assert_eq!(a.first_after(0).unwrap().waiting, 50);
        a.resolve(p.id, Answer::Allowed(vec!["repo".into()]), true)
            .unwrap();
        for c in calls {
            assert_eq!(
                c.await.unwrap().unwrap(),
                Answer::Allowed(vec!["repo".into()])
            );
        }
        let x = ask("x");
        assert!(a.granted(&x.app, "c1", x.session.as_ref(), &x.scopes));
        let other = TermSession {
            sid: 8,
            leader_start: 1,
            tty: 0,
        };
        assert!(!a.granted(&x.app, "c1", Some(&other), &x.scopes));
        assert!(!a.granted(&x.app, "c1", x.session.as_ref(), &["admin".into()]));
    }

    #[tokio::test(start_paused = true)]
    async fn unanswered_prompts_end_at_the_deadline_or_when_the_approver_leaves() {
        let a = Approvals::new(Duration::from_secs(60));
        let approver = a.attach(false);
        let answer = a.ask(ask("x"), none()).await.unwrap();
        assert_eq!(answer, Answer::Unanswered("nobody answered in time"));
        let waiting = {
            let a = Arc::clone(&a);
            tokio::spawn(async move { a.ask(ask("y"), none()).await })
        };
        assert!(a.next(0, Duration::from_secs(5)).await.is_some());
        drop(approver);
        assert_eq!(
            waiting.await.unwrap().unwrap(),
            Answer::Unanswered("the approver detached")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn refusals_are_kept_only_for_a_notifier_once_a_minute_per_app() {
        let a = Approvals::new(Duration::from_secs(60));
        let refusal = |app: &str| Refusal {
            app: app.into(),
            credential: "gh".into(),
            fix: "allow it".into(),
        };
        let x = ask("x").app;
        a.refused(&x, "c1", refusal("x"));
        a.want_refusals(true);
        assert!(lock(&a.inner).refusals.is_empty(), "nobody wanted that one");
        for _ in 0..5 {
            a.refused(&x, "c1", refusal("x"));
        }
        a.refused(&ask("y").app, "c1", refusal("y"));
        assert_eq!(a.next_refusal().await, refusal("x"));
        assert_eq!(a.next_refusal().await, refusal("y"));
        assert!(
            lock(&a.inner).refusals.is_empty(),
            "one notice for five calls"
        );
        tokio::time::advance(REFUSAL_EVERY).await;
        a.refused(&x, "c1", refusal("x"));
        assert_eq!(
            a.next_refusal().await,
            refusal("x"),
            "a minute later, again"
        );
        // A flood of apps is bounded.
        for n in 0..100 {
            a.refused(&ask(&format!("app{n}")).app, "c1", refusal("z"));
        }
        assert_eq!(lock(&a.inner).refusals.len(), MAX_REFUSALS);
        a.want_refusals(false);
        assert!(lock(&a.inner).refusals.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_prompt_can_be_watched_until_it_ends() {
        let a = Approvals::new(Duration::from_secs(60));
        let _approver = a.attach(true);
        let call = {
            let a = Arc::clone(&a);
            tokio::spawn(async move { a.ask(ask("x"), none()).await })
        };
        let p = a.next(0, Duration::from_secs(5)).await.expect("a prompt");
        let mut outcome = a.outcome(p.id).expect("open");
        a.resolve(p.id, Answer::Denied, false).unwrap();
        assert_eq!(
            outcome.wait_for(Option::is_some).await.unwrap().clone(),
            Some(Answer::Denied)
        );
        assert!(a.outcome(p.id).is_none(), "it ended");
        assert_eq!(call.await.unwrap().unwrap(), Answer::Denied);
    }
}
