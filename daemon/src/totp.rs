//! The authenticator's verbs: enrolling (`totp.enroll`, then
//! `totp.confirm` with a valid code on the same connection), removing and
//! status. Checking a code presented as a proof of a human is the core's
//! (`Daemon::check_code` in `state.rs`).
//!
//! Enrolling needs a proof itself: an authenticator of malware's own
//! would let it approve itself with codes.

use crate::error::ApiError;
use crate::handler::Handler;
use crate::identity::Peer;
use crate::state::{Daemon, Enrolling};
use crate::sync::lock;
use crate::vault::totp::{Authenticator, Checked, DIGITS, PERIOD};
use latchkey_client::protocol::*;
use secrecy::ExposeSecret;
use std::sync::{Arc, Weak};

/// Seconds an enrollment waits for its code: time to scan a QR code.
const ENROLL_SECS: i64 = 600;

impl Handler for TotpEnroll {
    type Reply = TotpEnrollResult;

    async fn handle(
        daemon: &Arc<Daemon>,
        peer: Peer,
        params: TotpEnrollParams,
    ) -> Result<TotpEnrollResult, ApiError> {
        let session = daemon.session()?;
        daemon
            .prove(params.proof.as_ref(), &peer, "enrolling an authenticator")
            .await?;
        let account = match params.account {
            Some(a) if !a.trim().is_empty() && a.len() <= 64 && !a.contains(':') => a,
            Some(_) => {
                return Err(ApiError::new(
                    ErrorKind::InvalidParams,
                    "the account name must be 1 to 64 characters without ':'",
                ))
            }
            None => default_account(),
        };
        let now = daemon.clock.now();
        let auth = Authenticator::generate(now);
        let result = TotpEnrollResult {
            uri: auth.uri(&account),
            secret: auth.secret(),
            digits: DIGITS,
            period: PERIOD,
            expires_in_secs: ENROLL_SECS as u64,
        };
        *lock(&session.enrolling) = Some(Enrolling {
            caller: Arc::downgrade(&peer.caller),
            auth,
            deadline: now + ENROLL_SECS,
        });
        Ok(result)
    }
}

impl Handler for TotpConfirm {
    type Reply = TotpConfirmResult;

    async fn handle(
        daemon: &Arc<Daemon>,
        peer: Peer,
        params: TotpConfirmParams,
    ) -> Result<TotpConfirmResult, ApiError> {
        let session = daemon.session()?;
        let now = daemon.clock.now();
        let mut auth = {
            let mut enrolling = lock(&session.enrolling);
            let ours = enrolling.as_ref().is_some_and(|e| {
                e.deadline > now && Weak::ptr_eq(&e.caller, &Arc::downgrade(&peer.caller))
            });
            if !ours {
                return Err(ApiError::new(
                    ErrorKind::InvalidRequest,
                    "no enrollment to confirm on this connection (or it expired): run `latchkey totp enroll` again",
                ));
            }
            let e = enrolling.take().expect("checked above");
            e.auth
        };
        if auth.check(params.code.expose_secret(), now) != Checked::Code {
            // Put it back: a mistyped code is not a reason to start over.
            *lock(&session.enrolling) = Some(Enrolling {
                caller: Arc::downgrade(&peer.caller),
                auth,
                deadline: now + ENROLL_SECS,
            });
            return Err(ApiError::new(
                ErrorKind::WrongPassphrase,
                "that code does not match the new secret: type the code the authenticator app shows now (check that the phone's clock is right)",
            ));
        }
        auth.enrolled_at = now;
        let codes = auth.new_recovery_codes();
        session
            .with_vault(move |keys, vault| vault.put_authenticator(keys, &auth))
            .await?;
        daemon
            .audit
            .record("totp_enrolled", None, Some(&peer), None);
        Ok(TotpConfirmResult {
            recovery_codes: codes,
        })
    }
}

impl Handler for TotpRemove {
    type Reply = Empty;

    async fn handle(
        daemon: &Arc<Daemon>,
        peer: Peer,
        params: TotpRemoveParams,
    ) -> Result<Empty, ApiError> {
        let session = daemon.session()?;
        daemon
            .prove(params.proof.as_ref(), &peer, "removing the authenticator")
            .await?;
        let removed = session
            .with_vault(|_, vault| vault.remove_authenticator())
            .await?;
        if !removed {
            return Err(ApiError::new(
                ErrorKind::NotFound,
                "no authenticator is enrolled: `latchkey totp enroll` adds one",
            ));
        }
        daemon.audit.record("totp_removed", None, Some(&peer), None);
        Ok(Empty {})
    }
}

impl Handler for TotpStatus {
    type Reply = TotpStatusResult;

    async fn handle(
        daemon: &Arc<Daemon>,
        _peer: Peer,
        _params: Empty,
    ) -> Result<TotpStatusResult, ApiError> {
        if !daemon.is_unlocked() {
            let enrolled = daemon
                .with_vault_file(|v| Ok(v.has_authenticator()?))
                .await?;
            return Ok(TotpStatusResult {
                enrolled,
                ..TotpStatusResult::default()
            });
        }
        let session = daemon.session()?;
        let auth = session
            .with_vault(|keys, vault| vault.load_authenticator(keys))
            .await?;
        Ok(match auth {
            None => TotpStatusResult::default(),
            Some(a) => TotpStatusResult {
                enrolled: true,
                enrolled_at: Some(a.enrolled_at),
                recovery_codes_left: Some(a.recovery_left()),
            },
        })
    }
}

/// The account name an authenticator app shows by default.
fn default_account() -> String {
    let user = std::env::var("USER")
        .ok()
        .filter(|u| !u.is_empty() && u.len() <= 32 && !u.contains(':'))
        .unwrap_or_else(|| format!("uid{}", uid()));
    format!("{user} (vault)")
}

fn uid() -> u32 {
    // SAFETY: getuid cannot fail and touches no memory of ours.
    unsafe { libc::getuid() }
}
