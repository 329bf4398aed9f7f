//! Step-up confirmation of privileged credentials: a credential with
//! `step_up` hands out tokens only within its window after the user
//! confirmed (`credential.confirm`: an authenticator code, or for
//! `passphrase` step-up the passphrase), checked on the token path
//! ([`check`]). Confirmations live in the session: a lock ends them all.

use crate::error::ApiError;
use crate::handler::Handler;
use crate::state::{Daemon, Need, Peer, Session};
use crate::sync::lock;
use crate::vault::Credential;
use latchkey_client::protocol::*;
use std::sync::Arc;

/// The longest window a confirmation may hold: a day. Longer is no
/// step-up at all.
pub const MAX_WINDOW_SECS: u64 = 86_400;

/// Whether `credential` (with step-up) was confirmed recently enough.
pub fn check(session: &Session, credential: &Credential, now: i64) -> Result<(), ApiError> {
    let until = lock(&session.confirmed).get(&credential.id).copied();
    if until.is_some_and(|u| u > now) {
        return Ok(());
    }
    let name = &credential.config.name;
    let how = match credential.config.step_up {
        StepUp::Totp { .. } => " with a code of your authenticator",
        _ => "",
    };
    Err(ApiError::new(
        ErrorKind::StepUpRequired,
        format!(
            "credential '{name}' needs a fresh confirmation{how} (step-up, {}): run `latchkey confirm {name}`, then retry",
            window_text(credential.config.step_up.window_secs())
        ),
    ))
}

/// The longest a caller may wait for a confirmation (`confirm_wait_secs`).
pub const MAX_WAIT_SECS: u64 = 240;

/// [`check`], waiting up to `wait_secs` (at most [`MAX_WAIT_SECS`]) for a
/// confirmation when there is none: the caller's `token.get` answers once
/// the user runs `latchkey confirm NAME`, or `step_up_required` at the end.
pub async fn check_or_wait(
    daemon: &Daemon,
    session: &Session,
    credential: &Credential,
    wait_secs: Option<u64>,
) -> Result<(), ApiError> {
    let wait = std::time::Duration::from_secs(wait_secs.unwrap_or(0).min(MAX_WAIT_SECS));
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        // Registered before the check, so a confirmation between the two
        // is not missed.
        let confirmed = session.confirmations.notified();
        tokio::pin!(confirmed);
        confirmed.as_mut().enable();
        let refused = match check(session, credential, daemon.clock.now()) {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        if !daemon.is_current(session)
            || tokio::time::timeout_at(deadline, confirmed).await.is_err()
        {
            return Err(refused);
        }
    }
}

/// `10m`, `2h`, `90s`: a window as `--window` spells it.
fn window_text(secs: u64) -> String {
    match secs {
        s if s % 3600 == 0 => format!("{}h window", s / 3600),
        s if s % 60 == 0 => format!("{}m window", s / 60),
        s => format!("{s}s window"),
    }
}

/// Until when a confirmation of `credential` made now holds, if any.
pub fn confirmed_until(session: &Session, credential: &Credential, now: i64) -> Option<i64> {
    if credential.config.step_up.is_off() {
        return None;
    }
    lock(&session.confirmed)
        .get(&credential.id)
        .copied()
        .filter(|u| *u > now)
}

/// Whether changing step-up from `old` to `new` loosens it (off, a longer
/// window, or the passphrase where a code was needed): that needs a proof.
pub fn loosens(old: StepUp, new: StepUp) -> bool {
    let rank = |s: StepUp| match s {
        StepUp::Off => 0,
        StepUp::Passphrase { .. } => 1,
        StepUp::Totp { .. } => 2,
    };
    rank(new) < rank(old) || (rank(new) == rank(old) && new.window_secs() > old.window_secs())
}

/// Checks a new step-up setting's window.
pub fn validate(step_up: StepUp) -> Result<(), ApiError> {
    let w = step_up.window_secs();
    if !step_up.is_off() && (w == 0 || w > MAX_WINDOW_SECS) {
        return Err(ApiError::invalid_params(format!(
            "the step-up window must be between 1 s and {MAX_WINDOW_SECS} s (24h)"
        )));
    }
    Ok(())
}

impl Handler for CredentialConfirm {
    type Reply = ConfirmResult;

    async fn handle(
        daemon: &Arc<Daemon>,
        peer: Peer,
        params: ConfirmParams,
    ) -> Result<ConfirmResult, ApiError> {
        let session = daemon.session()?;
        let name = params.name.as_str();
        let credential = session
            .catalog()
            .credentials
            .get(name)
            .cloned()
            .ok_or_else(|| ApiError::no_credential(name))?;
        let step_up = credential.config.step_up;
        let need = match step_up {
            StepUp::Off => {
                return Err(ApiError::new(
                    ErrorKind::InvalidRequest,
                    format!("credential '{name}' has no step-up, so there is nothing to confirm (`latchkey credential set {name} --step-up totp` adds one)"),
                ))
            }
            StepUp::Totp { .. } => Need::Code,
            StepUp::Passphrase { .. } => Need::Person,
        };
        daemon
            .check_proof(
                params.proof.as_ref(),
                &peer,
                &format!("confirming credential '{name}'"),
                need,
            )
            .await?;
        let until = daemon.clock.now() + step_up.window_secs() as i64;
        lock(&session.confirmed).insert(credential.id.clone(), until);
        session.confirmations.notify_waiters();
        daemon.audit.record(
            "step_up_confirmed",
            Some(name),
            Some(&peer),
            Some(format!("{} until {until}", step_up.as_str())),
        );
        Ok(ConfirmResult { step_up, until })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loosening_is_off_weaker_or_longer() {
        let totp = |w| StepUp::Totp { window_secs: w };
        let pass = |w| StepUp::Passphrase { window_secs: w };
        assert!(loosens(totp(600), StepUp::Off));
        assert!(loosens(totp(600), pass(600)));
        assert!(loosens(totp(600), totp(601)));
        assert!(!loosens(totp(600), totp(60)));
        assert!(!loosens(pass(600), totp(6000)));
        assert!(!loosens(StepUp::Off, pass(60)));
        assert!(!loosens(StepUp::Off, StepUp::Off));
        assert!(validate(totp(0)).is_err());
        assert!(validate(totp(MAX_WINDOW_SECS + 1)).is_err());
        assert!(validate(StepUp::Off).is_ok());
    }
}
