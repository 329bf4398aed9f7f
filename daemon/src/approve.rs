//! The approvers' verbs: `approval.attach` (with a proof of a human, an
//! approver may allow; without, only deny), `approval.next` (the next app
//! waiting, long-polled) and `approval.decide` (once, this terminal
//! session, N hours or always — the last two stored as rules — or deny).

use crate::approval::{Answer, Approver};
use crate::apps::store_rule;
use crate::error::ApiError;
use crate::handler::Handler;
use crate::identity::{AppId, Peer};
use crate::state::Daemon;
use crate::vault::rules::{Rule, RuleApp};
use latchkey_client::protocol::*;
use std::sync::Arc;
use std::time::Duration;

/// The longest `approval.next` waits per call.
const MAX_NEXT_WAIT: Duration = Duration::from_secs(60);
/// The longest an hours decision lasts: 30 days.
const MAX_HOURS: u64 = 720;

impl Handler for ApprovalAttach {
    type Reply = AttachResult;

    async fn handle(
        daemon: &Arc<Daemon>,
        peer: Peer,
        params: AttachParams,
    ) -> Result<AttachResult, ApiError> {
        if let Some(attached) = peer.caller.attached::<Approver>() {
            return Ok(AttachResult {
                can_allow: attached.can_allow,
            });
        }
        let can_allow = match &params.proof {
            Some(proof) => {
                daemon.prove(Some(proof), &peer, "approving apps").await?;
                true
            }
            None => false,
        };
        let approver = daemon.approvals.attach(can_allow);
        peer.caller.attach(Box::new(approver));
        daemon.audit.record(
            "approver_attached",
            None,
            Some(&peer),
            Some(
                if can_allow {
                    "can allow"
                } else {
                    "can deny only"
                }
                .into(),
            ),
        );
        Ok(AttachResult { can_allow })
    }
}

fn approver(peer: &Peer) -> Result<&Approver, ApiError> {
    peer.caller.attached::<Approver>().ok_or_else(|| {
        ApiError::new(
            ErrorKind::Forbidden,
            "this connection is not an approver: send approval.attach first (as `latchkey approve` does)",
        )
    })
}

impl Handler for ApprovalNext {
    type Reply = ApprovalNextResult;

    async fn handle(
        daemon: &Arc<Daemon>,
        peer: Peer,
        params: ApprovalNextParams,
    ) -> Result<ApprovalNextResult, ApiError> {
        approver(&peer)?;
        let wait = Duration::from_secs(params.wait_secs.unwrap_or(30)).min(MAX_NEXT_WAIT);
        let pending = daemon.approvals.next(params.after, wait).await;
        Ok(ApprovalNextResult { pending })
    }
}

impl Handler for ApprovalDecide {
    type Reply = Empty;

    async fn handle(
        daemon: &Arc<Daemon>,
        peer: Peer,
        params: DecideParams,
    ) -> Result<Empty, ApiError> {
        let can_allow = approver(&peer)?.can_allow;
        if params.decision != Decision::Deny && !can_allow {
            return Err(ApiError::new(
                ErrorKind::Forbidden,
                "allowing needs proof that a person decides: attach with the vault passphrase (`latchkey approve` asks for it) or with polkit (`latchkey approve --polkit`)",
            ));
        }
        decide(daemon, Some(&peer), params.id, params.decision, None).await?;
        Ok(Empty {})
    }
}

/// Carries out `decision` on prompt `id`; whoever decides was checked
/// already (allowing needs a proof, denying none). An hours or always
/// decision is stored as a rule first, then the prompt is resolved and the
/// decision recorded. `peer` decided; `None` with `via` naming how (a
/// desktop notification).
pub(crate) async fn decide(
    daemon: &Arc<Daemon>,
    peer: Option<&Peer>,
    id: u64,
    decision: Decision,
    via: Option<&str>,
) -> Result<(), ApiError> {
    let (app, credential_id, credential, scopes) = daemon.approvals.asked(id)?;
    let stored_as = |app: &AppId| match app {
        AppId::Exe { path, sha256 } => Some(RuleApp::Exe {
            path: path.clone(),
            sha256: hex::encode(sha256),
        }),
        AppId::Key { name } => Some(RuleApp::Key { name: name.clone() }),
        AppId::Unknown { .. } => None,
    };
    let now = daemon.clock.now();
    let expires_at = match decision {
        Decision::Always => Some(None),
        Decision::Hours { hours } if (1..=MAX_HOURS).contains(&hours) => {
            Some(Some(now + hours as i64 * 3600))
        }
        Decision::Hours { .. } => {
            return Err(ApiError::invalid_params(format!(
                "hours must be 1 to {MAX_HOURS}"
            )))
        }
        _ => None,
    };
    if let Some(expires_at) = expires_at {
        let Some(rule_app) = stored_as(&app) else {
            return Err(ApiError::invalid_params(
                "an unidentified program cannot get a stored rule: allow it once, or give it an app key",
            ));
        };
        let session = daemon.session()?;
        let rule = Rule::new(
            rule_app,
            &credential_id,
            RuleEffect::Allow,
            Some(scopes.clone()),
            expires_at,
            now,
        );
        store_rule(daemon, &session, peer, rule).await?;
    }
    let (answer, for_session) = match decision {
        Decision::Deny => (Answer::Denied, false),
        Decision::Session => (Answer::Allowed(scopes), true),
        _ => (Answer::Allowed(scopes), false),
    };
    daemon.approvals.resolve(id, answer, for_session)?;
    let via = via.map(|v| format!(" ({v})")).unwrap_or_default();
    daemon.audit.record(
        "approval_decided",
        Some(&credential),
        peer,
        Some(format!("{} for {}{via}", decision.describe(), app.label())),
    );
    Ok(())
}
