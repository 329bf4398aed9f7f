//! Desktop notifications for apps waiting for a decision: where the session
//! bus has a notification service (`org.freedesktop.Notifications`) that
//! shows actions, each prompt gets one notification (however many calls
//! share it), closed when the prompt ends elsewhere or times out; at most
//! [`MAX_OPEN`] at once.
//!
//! A click is something any same-user program can fake on the session bus,
//! so the actions are trusted only as far as that allows:
//! - signals count only from the unique name that owns the service, and
//!   only for our notifications;
//! - Deny needs no proof (denying never does);
//! - Allow is offered only where polkit runs and knows Latchkey's action,
//!   and a click on it is a polkit check (the authentication dialog) about
//!   the daemon's own process before the prompt is resolved. Only then does
//!   the notifier count as an approver that can allow (calls wait for it);
//!   without polkit, calls with no terminal approver still fail at once,
//!   and a notice says which command allows the app.
//!
//! Bus failures are logged (no secrets are ever in a notification) and
//! never reach a token call: the notifier is its own task, and the token
//! path only ever takes the approvals' mutex.

mod text;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use latchkey_client::protocol::{Decision, PendingApproval};
use tokio::time::Instant;
use zbus::message::Type as MessageType;
use zbus::zvariant::Value;
use zbus::{MatchRule, MessageStream};

use crate::approve::decide;
use crate::polkit;
use crate::state::Daemon;

const SERVICE: &str = "org.freedesktop.Notifications";
const PATH: &str = "/org/freedesktop/Notifications";
/// 8 prompt notifications open at most: a flood of apps must not cover the
/// desktop; the prompts beyond are for `latchkey approve`.
const MAX_OPEN: usize = 8;
/// 5 s: a notification service answers at once, or is broken.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// 30 s between looks for a session bus or a service not found: cheap, and
/// quiet on a headless machine.
const RETRY: Duration = Duration::from_secs(30);
/// A refusal notice is news, not a question: it goes after 10 s.
const REFUSAL_EXPIRES_MS: i32 = 10_000;
/// How a decision from a notification is recorded in the audit log.
const VIA_ALLOW: &str = "desktop notification, proved by polkit";
const VIA_DENY: &str = "desktop notification";
/// Signals queued for the notifier at most: it handles each at once.
const MAX_QUEUED: usize = 64;

#[zbus::proxy(
    interface = "org.freedesktop.Notifications",
    default_service = "org.freedesktop.Notifications",
    default_path = "/org/freedesktop/Notifications",
    gen_blocking = false
)]
trait Notifications {
    fn get_capabilities(&self) -> zbus::Result<Vec<String>>;

    #[allow(clippy::too_many_arguments)]
    fn notify(
        &self,
        app_name: &str,
        replaces_id: u32,
        app_icon: &str,
        summary: &str,
        body: &str,
        actions: &[&str],
        hints: HashMap<&str, Value<'_>>,
        expire_timeout: i32,
    ) -> zbus::Result<u32>;

    fn close_notification(&self, id: u32) -> zbus::Result<()>;
}

/// The notifier: finds a notification service, serves prompts through it
/// until it leaves, and looks again every [`RETRY`]. Runs until aborted.
pub async fn run(daemon: Arc<Daemon>) {
    let mut said: Option<String> = None;
    loop {
        match Desktop::find().await {
            Ok(desktop) => {
                said = None;
                let why = desktop.serve(&daemon).await;
                tracing::info!("desktop notifications off: {why}");
            }
            // Each reason once: a headless machine gets one debug line.
            Err(why) if said.as_deref() != Some(&why) => {
                tracing::debug!("no desktop notifications: {why}");
                said = Some(why);
            }
            Err(_) => {}
        }
        tokio::time::sleep(RETRY).await;
    }
}

/// A bus call bounded by [`CALL_TIMEOUT`], its failure as text.
async fn bounded<T>(what: &str, call: impl Future<Output = zbus::Result<T>>) -> Result<T, String> {
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(format!("{what}: {e}")),
        Err(_) => Err(format!(
            "{what}: no answer within {} s",
            CALL_TIMEOUT.as_secs()
        )),
    }
}

/// A notification service found on the session bus.
struct Desktop {
    bus: zbus::Connection,
    proxy: NotificationsProxy<'static>,
    /// The unique name that owns [`SERVICE`]: signals count only from it.
    owner: String,
    /// The service reads markup in bodies: outside text is escaped.
    markup: bool,
    /// polkit runs and knows `dev.latchkey.approve`: Allow is offered, and
    /// the notifier is an approver that can allow.
    polkit: bool,
}

/// A prompt's notification while it is open.
struct Shown {
    prompt: PendingApproval,
    /// Allow actions are on it (and so honoured).
    allow: bool,
    /// A click is being carried out: later clicks are ignored.
    deciding: bool,
    /// An impostor's signal for it was logged (once per notification).
    warned: bool,
}

type Pinned<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// What came of a click, once carried out.
enum Clicked {
    Done,
    /// The prompt is still open and was not allowed: why, for notification `id`.
    Unconfirmed {
        id: u32,
        why: String,
    },
}

/// Keeps refusals for the notifier while it serves (see `Approvals::refused`).
struct TakingRefusals<'a>(&'a Daemon);

impl Drop for TakingRefusals<'_> {
    fn drop(&mut self) {
        self.0.approvals.want_refusals(false);
    }
}

impl Desktop {
    async fn find() -> Result<Desktop, String> {
        let bus = bounded("no session bus", zbus::Connection::session()).await?;
        let dbus = bounded("the session bus", zbus::fdo::DBusProxy::new(&bus)).await?;
        let name = zbus::names::BusName::try_from(SERVICE).expect("a valid bus name");
        let owner = bounded("no notification service on the session bus", async {
            Ok(dbus.get_name_owner(name).await?)
        })
        .await?;
        let proxy = bounded("the notification service", NotificationsProxy::new(&bus)).await?;
        let caps = bounded(
            "the notification service's capabilities",
            proxy.get_capabilities(),
        )
        .await?;
        if !caps.iter().any(|c| c == "actions") {
            return Err("the notification service shows no actions (buttons)".into());
        }
        let polkit = match polkit::available().await {
            Ok(()) => true,
            Err(e) => {
                tracing::info!("desktop notifications can only deny: {e}");
                false
            }
        };
        Ok(Desktop {
            bus,
            proxy,
            owner: owner.to_string(),
            markup: caps.iter().any(|c| c == "body-markup"),
            polkit,
        })
    }

    /// Serves prompts until the service or the bus goes; says why.
    async fn serve(self, daemon: &Arc<Daemon>) -> String {
        let signals = MatchRule::builder()
            .msg_type(MessageType::Signal)
            .interface(SERVICE)
            .and_then(|r| r.path(PATH))
            .map(|r| r.build());
        let owner_changes = MatchRule::builder()
            .msg_type(MessageType::Signal)
            .sender("org.freedesktop.DBus")
            .and_then(|r| r.interface("org.freedesktop.DBus"))
            .and_then(|r| r.member("NameOwnerChanged"))
            .and_then(|r| r.add_arg(SERVICE))
            .map(|r| r.build());
        let (Ok(signals), Ok(owner_changes)) = (signals, owner_changes) else {
            return "cannot build the match rules".into();
        };
        let streams = async {
            let signals =
                MessageStream::for_match_rule(signals, &self.bus, Some(MAX_QUEUED)).await?;
            let owners = MessageStream::for_match_rule(owner_changes, &self.bus, Some(4)).await?;
            Ok((signals, owners))
        };
        let (mut signals, mut owner_changes) =
            match bounded("subscribing to the service's signals", streams).await {
                Ok(streams) => streams,
                Err(e) => return e,
            };
        // Without polkit the notifier is no approver at all: it must not
        // make calls wait for a click that cannot allow.
        let _approver = self.polkit.then(|| daemon.approvals.attach(true));
        daemon.approvals.want_refusals(true);
        let _refusals = TakingRefusals(daemon);
        // Said once the signals are subscribed to: a click from now on counts.
        tracing::info!(
            service = %self.owner,
            allow = self.polkit,
            "desktop notifications on (allow: polkit proves a click)"
        );
        let mut open: HashMap<u32, Shown> = HashMap::new();
        let mut ends: FuturesUnordered<Pinned<u32>> = FuturesUnordered::new();
        let mut clicks: FuturesUnordered<Pinned<Clicked>> = FuturesUnordered::new();
        let mut after = 0;
        loop {
            tokio::select! {
                next = daemon.approvals.next(after, Duration::from_secs(60)) => {
                    let Some(prompt) = next else { continue };
                    after = prompt.id;
                    if open.len() >= MAX_OPEN {
                        tracing::debug!(prompt = prompt.id, "{MAX_OPEN} notifications open: this prompt is for `latchkey approve`");
                        continue;
                    }
                    let shown = text::prompt(&prompt, self.polkit, self.markup);
                    match self.show(&shown, 0, expires_ms(&prompt), true).await {
                        Ok(id) => {
                            ends.push(ended(daemon, prompt.id, id, prompt.expires_in));
                            open.insert(id, Shown { prompt, allow: self.polkit, deciding: false, warned: false });
                        }
                        Err(e) => tracing::warn!("{e}"),
                    }
                }
                refusal = daemon.approvals.next_refusal() => {
                    let notice = text::refusal(&refusal, self.markup);
                    if let Err(e) = self.show(&notice, 0, REFUSAL_EXPIRES_MS, false).await {
                        tracing::warn!("{e}");
                    }
                }
                signal = signals.next() => match signal {
                    Some(Ok(message)) => self.signal(daemon, &message, &mut open, &mut clicks),
                    Some(Err(e)) => tracing::debug!("a bad message from the session bus: {e}"),
                    None => return "the session bus closed".into(),
                },
                change = owner_changes.next() => {
                    tracing::debug!(?change, "the notification service's owner changed");
                    return "the notification service left the session bus".into();
                }
                Some(id) = ends.next() => {
                    if open.remove(&id).is_some() {
                        if let Err(e) = bounded("closing a notification", self.proxy.close_notification(id)).await {
                            tracing::debug!("{e}");
                        }
                    }
                }
                Some(clicked) = clicks.next() => {
                    let Clicked::Unconfirmed { id, why } = clicked else { continue };
                    let Some(mut shown) = open.remove(&id) else { continue };
                    let replaced = text::unconfirmed(&shown.prompt, &why, self.markup);
                    match self.show(&replaced, id, expires_ms(&shown.prompt), true).await {
                        Ok(new_id) => {
                            if new_id != id {
                                ends.push(ended(daemon, shown.prompt.id, new_id, shown.prompt.expires_in));
                            }
                            shown.allow = false;
                            shown.deciding = false;
                            open.insert(new_id, shown);
                        }
                        Err(e) => tracing::warn!("{e}"),
                    }
                }
            }
        }
    }

    /// Shows `text` (replacing notification `replaces` unless 0); a prompt
    /// stays (`resident`) until the daemon closes it.
    async fn show(
        &self,
        text: &text::Text,
        replaces: u32,
        expire_ms: i32,
        resident: bool,
    ) -> Result<u32, String> {
        let hints = HashMap::from([
            ("urgency", Value::U8(1)),
            ("resident", Value::Bool(resident)),
        ]);
        bounded(
            "cannot show a notification",
            self.proxy.notify(
                "Latchkey",
                replaces,
                "dialog-password",
                &text.summary,
                &text.body,
                &text.actions,
                hints,
                expire_ms,
            ),
        )
        .await
    }

    /// One signal of the notification interface: counted only from the
    /// service's owner and for one of our notifications.
    fn signal(
        &self,
        daemon: &Arc<Daemon>,
        message: &zbus::Message,
        open: &mut HashMap<u32, Shown>,
        clicks: &mut FuturesUnordered<Pinned<Clicked>>,
    ) {
        let header = message.header();
        let Some(member) = header.member() else {
            return;
        };
        let (id, action) = match member.as_str() {
            "ActionInvoked" => match message.body().deserialize::<(u32, String)>() {
                Ok((id, key)) => (id, Some(key)),
                Err(_) => return,
            },
            "NotificationClosed" => match message.body().deserialize::<(u32, u32)>() {
                Ok((id, _reason)) => (id, None),
                Err(_) => return,
            },
            _ => return,
        };
        // Other apps' notifications send signals too.
        let Some(shown) = open.get_mut(&id) else {
            return;
        };
        let sender = header.sender().map(|s| s.as_str());
        if sender != Some(self.owner.as_str()) {
            if !shown.warned {
                shown.warned = true;
                tracing::warn!(
                    sender = sender.unwrap_or("?"),
                    "ignored {member} for a Latchkey notification from a bus name that does not own {SERVICE}"
                );
            }
            return;
        }
        let decision = match action.as_deref() {
            // Dismissed (or expired): the prompt waits on, for `latchkey approve`.
            None => {
                open.remove(&id);
                return;
            }
            Some(text::DENY) => Decision::Deny,
            Some(text::ALLOW_ONCE) if shown.allow => Decision::Once,
            Some(text::ALLOW_ALWAYS) if shown.allow => Decision::Always,
            // The body clicked ("default"), or an action we did not offer.
            Some(_) => return,
        };
        if shown.deciding {
            return;
        }
        shown.deciding = true;
        clicks.push(Box::pin(clicked(
            Arc::clone(daemon),
            id,
            shown.prompt.id,
            decision,
        )));
    }
}

/// Carries out a click on notification `id` for prompt `prompt`: Deny at
/// once; Allow once polkit says a person confirmed it (its dialog, about
/// the daemon's own process, since no other process is behind a click).
async fn clicked(daemon: Arc<Daemon>, id: u32, prompt: u64, decision: Decision) -> Clicked {
    let via = if decision == Decision::Deny {
        VIA_DENY
    } else {
        match polkit::check(polkit::Subject::this_process(), true).await {
            Ok(polkit::Answer::Yes) => VIA_ALLOW,
            refused => {
                let why = match refused {
                    Ok(polkit::Answer::Challenge) => {
                        "the authentication dialog was dismissed, or no authentication agent runs"
                            .to_owned()
                    }
                    Ok(_) => "polkit refused".to_owned(),
                    Err(e) => e.to_string(),
                };
                daemon.audit.record(
                    "proof_failed",
                    None,
                    None,
                    Some(format!(
                        "allowing an app (desktop notification, polkit): {why}"
                    )),
                );
                return Clicked::Unconfirmed { id, why };
            }
        }
    };
    match decide(&daemon, None, prompt, decision, Some(via)).await {
        Ok(()) => Clicked::Done,
        // The prompt ended meanwhile (answered elsewhere, or timed out).
        Err(_) if daemon.approvals.outcome(prompt).is_none() => Clicked::Done,
        Err(e) => Clicked::Unconfirmed { id, why: e.message },
    }
}

/// Resolves to `id` when prompt `prompt` ends (or at its deadline).
fn ended(daemon: &Daemon, prompt: u64, id: u32, expires_in: u64) -> Pinned<u32> {
    let outcome = daemon.approvals.outcome(prompt);
    let deadline = Instant::now() + Duration::from_secs(expires_in.saturating_add(1));
    Box::pin(async move {
        if let Some(mut outcome) = outcome {
            let answered = async move {
                let _ = outcome.wait_for(Option::is_some).await;
            };
            tokio::select! {
                () = answered => {}
                () = tokio::time::sleep_until(deadline) => {}
            }
        }
        id
    })
}

/// A prompt notification's expiry: when its callers give up.
fn expires_ms(prompt: &PendingApproval) -> i32 {
    i32::try_from(prompt.expires_in.saturating_mul(1000))
        .unwrap_or(i32::MAX)
        .max(1000)
}
