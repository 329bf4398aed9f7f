//! polkit, the system's authorization service, as a proof of a human:
//! `org.freedesktop.PolicyKit1.Authority.CheckAuthorization` on the system
//! bus for the action [`ACTION_ID`] (its definition ships as
//! `dist/polkit/dev.latchkey.policy`: `auth_self` for an active session,
//! no otherwise), about one process, with the authentication dialog
//! allowed and a bounded wait. The daemon asks polkit itself; what a
//! client says polkit said is never taken.
//!
//! polkit always authorizes root, so the daemon of an ordinary user is what
//! this is for.

use std::collections::HashMap;
use std::time::Duration;

use latchkey_client::protocol::ErrorKind;
use zbus::zvariant::Value;

use crate::error::ApiError;

/// The polkit action that allowing an app (an approval, a rule, an `open`
/// credential) is checked against.
pub const ACTION_ID: &str = "dev.latchkey.approve";

/// Where the action's definition is installed from, for error messages.
pub const INSTALL_HINT: &str =
    "sudo install -m 644 dist/polkit/dev.latchkey.policy /usr/share/polkit-1/actions/";

/// 120 s: a person reads the dialog and types a password; longer, and
/// nobody is there (the check is then cancelled, and nothing is allowed).
const CHECK_TIMEOUT: Duration = Duration::from_secs(120);
/// 5 s: connecting to the system bus, and a check that shows no dialog.
const QUICK_TIMEOUT: Duration = Duration::from_secs(5);

/// `AllowUserInteraction`: polkit may show its authentication dialog.
const ALLOW_USER_INTERACTION: u32 = 1;

/// One authentication dialog at a time: any same-user program may ask for
/// a polkit proof, and must not be able to pile dialogs onto the screen.
static DIALOG: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);

#[zbus::proxy(
    interface = "org.freedesktop.PolicyKit1.Authority",
    default_service = "org.freedesktop.PolicyKit1",
    default_path = "/org/freedesktop/PolicyKit1/Authority",
    gen_blocking = false
)]
trait Authority {
    /// `(sa{sv}) s a{ss} u s` → `(bba{ss})`.
    fn check_authorization(
        &self,
        subject: &(&str, HashMap<&str, Value<'_>>),
        action_id: &str,
        details: HashMap<&str, &str>,
        flags: u32,
        cancellation_id: &str,
    ) -> zbus::Result<(bool, bool, HashMap<String, String>)>;

    fn cancel_check_authorization(&self, cancellation_id: &str) -> zbus::Result<()>;
}

/// The process polkit is asked about: a `unix-process` subject. Its start
/// time makes polkit refuse the pid of a process that ended and whose pid
/// was given to another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subject {
    pub pid: u32,
    /// Clock ticks after boot, field 22 of `/proc/PID/stat`.
    pub start_time: u64,
    pub uid: u32,
}

impl Subject {
    /// Process `pid`, running as `uid`, if it still runs.
    pub fn process(pid: u32, uid: u32) -> Option<Subject> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        Some(Subject {
            pid,
            start_time: start_time(&stat)?,
            uid,
        })
    }

    /// The daemon's own process (a desktop notification's click has no
    /// other process behind it).
    pub fn this_process() -> Option<Subject> {
        // SAFETY: geteuid has no preconditions and cannot fail.
        Subject::process(std::process::id(), unsafe { libc::geteuid() })
    }

    /// As `CheckAuthorization` takes it: `("unix-process", {pid, start-time, uid})`.
    fn wire(&self) -> (&'static str, HashMap<&'static str, Value<'static>>) {
        let details = HashMap::from([
            ("pid", Value::U32(self.pid)),
            ("start-time", Value::U64(self.start_time)),
            ("uid", Value::I32(i32::try_from(self.uid).unwrap_or(-1))),
        ]);
        ("unix-process", details)
    }
}

/// Field 22 (`starttime`) of a `/proc/PID/stat` line, counted after the
/// command name's last `)` (the name may hold spaces and parentheses).
fn start_time(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // The first field after the name is field 3.
    rest.split_ascii_whitespace().nth(22 - 3)?.parse().ok()
}

/// What polkit answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Authorized: by a password typed into the dialog, or by a rule.
    Yes,
    /// It would take a person's authentication that nobody gave: no
    /// authentication agent runs for the process's session, or the dialog
    /// was dismissed.
    Challenge,
    /// Not authorized (a rule, or the action's defaults for this session).
    No,
}

/// `(is_authorized, is_challenge, details)` as an [`Answer`].
fn answer((authorized, challenge, _details): (bool, bool, HashMap<String, String>)) -> Answer {
    match (authorized, challenge) {
        (true, _) => Answer::Yes,
        (false, true) => Answer::Challenge,
        (false, false) => Answer::No,
    }
}

/// Why polkit could not be asked.
#[derive(Debug, thiserror::Error)]
pub enum Unavailable {
    #[error("no polkit on the system bus ({0})")]
    NoPolkit(String),
    #[error("polkit does not know the action {ACTION_ID}: install it with `{INSTALL_HINT}`")]
    NotInstalled,
    #[error("polkit did not answer within {} s", .0.as_secs())]
    Timeout(Duration),
    #[error("the process to ask about has exited")]
    NoProcess,
    #[error("another polkit authentication for Latchkey waits for an answer: answer or dismiss it first")]
    Busy,
}

/// Asks polkit whether `subject` may act [`ACTION_ID`]; with
/// `interactive`, polkit may show its authentication dialog, and the
/// answer waits for the person (bounded: at [`CHECK_TIMEOUT`] the check is
/// cancelled).
pub async fn check(subject: Option<Subject>, interactive: bool) -> Result<Answer, Unavailable> {
    let subject = subject.ok_or(Unavailable::NoProcess)?;
    let connect = tokio::time::timeout(QUICK_TIMEOUT, async {
        let bus = zbus::Connection::system().await?;
        AuthorityProxy::new(&bus).await
    });
    let authority = match connect.await {
        Ok(Ok(authority)) => authority,
        Ok(Err(e)) => return Err(Unavailable::NoPolkit(e.to_string())),
        Err(_) => return Err(Unavailable::Timeout(QUICK_TIMEOUT)),
    };
    let (flags, wait, _dialog) = if interactive {
        let dialog = DIALOG.try_acquire().map_err(|_| Unavailable::Busy)?;
        (ALLOW_USER_INTERACTION, CHECK_TIMEOUT, Some(dialog))
    } else {
        (0, QUICK_TIMEOUT, None)
    };
    let cancellation_id = format!("latchkey-{:016x}", rand::random::<u64>());
    let wire = subject.wire();
    let asked =
        authority.check_authorization(&wire, ACTION_ID, HashMap::new(), flags, &cancellation_id);
    match tokio::time::timeout(wait, asked).await {
        Ok(Ok(reply)) => Ok(answer(reply)),
        Ok(Err(e)) => Err(refusal(&e)),
        Err(_) => {
            // Close the dialog nobody answered; if polkit is gone too,
            // there is nothing left to cancel.
            let cancel = authority.cancel_check_authorization(&cancellation_id);
            let _ = tokio::time::timeout(QUICK_TIMEOUT, cancel).await;
            Err(Unavailable::Timeout(wait))
        }
    }
}

/// Whether polkit runs and knows [`ACTION_ID`]: a check about the daemon's
/// own process that shows no dialog.
pub async fn available() -> Result<(), Unavailable> {
    check(Subject::this_process(), false).await.map(drop)
}

/// An error reply as an [`Unavailable`]: polkit's own for an action it
/// does not know, anything else (no such service, a bus refusal) as no
/// polkit.
fn refusal(e: &zbus::Error) -> Unavailable {
    match e {
        zbus::Error::MethodError(name, detail, _)
            if name.as_str() == "org.freedesktop.PolicyKit1.Error.Failed"
                && detail
                    .as_deref()
                    .is_some_and(|d| d.contains("not registered")) =>
        {
            Unavailable::NotInstalled
        }
        other => Unavailable::NoPolkit(other.to_string()),
    }
}

/// A proof of a human for `what` ("allowing an app") by polkit, about
/// process `pid` (a client of the daemon: same uid, checked at accept):
/// polkit's authentication dialog in that process's session, or its rules.
pub async fn prove(pid: u32, what: &str) -> Result<(), ApiError> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let subject = Subject::process(pid, unsafe { libc::geteuid() });
    let refused = |why: String| Err(ApiError::new(ErrorKind::Forbidden, why));
    match check(subject, true).await {
        Ok(Answer::Yes) => Ok(()),
        Ok(Answer::Challenge) => refused(format!(
            "polkit did not confirm that a person asks ({what}): its authentication dialog was dismissed, or no authentication agent runs in this session; answer the dialog in a desktop session, or give the vault passphrase instead"
        )),
        Ok(Answer::No) => refused(format!(
            "polkit refuses {what} to this process (action {ACTION_ID}; see its rules in /etc/polkit-1/rules.d): give the vault passphrase instead"
        )),
        Err(e) => refused(format!(
            "{what} cannot be proved by polkit: {e}; or give the vault passphrase instead"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zbus::zvariant::{serialized::Context, to_bytes, Type, LE};

    #[test]
    fn the_subject_is_a_unix_process_with_its_start_time_and_uid() {
        let s = Subject {
            pid: 4242,
            start_time: 987_654,
            uid: 1000,
        };
        let (kind, details) = s.wire();
        assert_eq!(kind, "unix-process");
        assert_eq!(details["pid"], Value::U32(4242));
        assert_eq!(details["start-time"], Value::U64(987_654));
        assert_eq!(details["uid"], Value::I32(1000));
        // The D-Bus type polkit's method takes.
        assert_eq!(
            <(&str, HashMap<&str, Value<'_>>)>::SIGNATURE.to_string(),
            "(sa{sv})"
        );
        let ctxt = Context::new_dbus(LE, 0);
        assert!(to_bytes(ctxt, &s.wire()).is_ok());
    }

    #[test]
    fn the_start_time_is_field_22_after_the_command_name() {
        let stat =
            "77 (a (weird) name) S 1 77 77 0 -1 4194560 1 0 0 0 3 4 0 0 20 0 1 0 123456 1 2 3";
        assert_eq!(start_time(stat), Some(123456));
        assert_eq!(start_time("garbage"), None);
        let me = Subject::this_process().expect("this process runs");
        assert_eq!(me.pid, std::process::id());
        assert!(me.start_time > 0);
    }

    #[test]
    fn polkits_error_for_an_unknown_action_says_to_install_it() {
        let reply = zbus::Message::method_call("/", "CheckAuthorization")
            .unwrap()
            .build(&())
            .unwrap();
        let error = |name: &str, detail: &str| {
            zbus::Error::MethodError(
                zbus::names::OwnedErrorName::try_from(name.to_owned()).unwrap(),
                Some(detail.into()),
                reply.clone(),
            )
        };
        let unknown = refusal(&error(
            "org.freedesktop.PolicyKit1.Error.Failed",
            "Action dev.latchkey.approve is not registered",
        ));
        assert!(matches!(unknown, Unavailable::NotInstalled), "{unknown}");
        assert!(unknown.to_string().contains(INSTALL_HINT));
        let gone = refusal(&error(
            "org.freedesktop.DBus.Error.ServiceUnknown",
            "The name org.freedesktop.PolicyKit1 was not provided by any .service files",
        ));
        assert!(matches!(gone, Unavailable::NoPolkit(_)), "{gone}");
    }

    #[test]
    fn answers_are_read_from_the_result_tuple() {
        let none = HashMap::new;
        assert_eq!(answer((true, false, none())), Answer::Yes);
        assert_eq!(answer((true, true, none())), Answer::Yes);
        assert_eq!(answer((false, true, none())), Answer::Challenge);
        assert_eq!(answer((false, false, none())), Answer::No);
    }
}
