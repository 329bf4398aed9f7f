//! `audit.list` and `audit.verify`: reading the audit log (sealed details
//! opened) and checking its MAC chain. Both need the vault unlocked (the
//! audit key and the sealed head exist only then), both only look, and
//! both hold the vault mutex in bounded steps, never for the whole log.

use crate::error::ApiError;
use crate::handler::Handler;
use crate::state::{Daemon, Peer};
use crate::vault::store::AuditFilter;
use crate::vault::{VerifyStep, VerifyWalk, VERIFY_STEP};
use latchkey_client::protocol::*;
use std::sync::Arc;

/// Rows per `audit.list` page when the caller does not say.
const DEFAULT_LIMIT: u32 = 100;

/// One page of the log, oldest first, filtered.
impl Handler for AuditList {
    type Reply = AuditListResult;

    async fn handle(
        daemon: &Arc<Daemon>,
        _: Peer,
        params: AuditListParams,
    ) -> Result<AuditListResult, ApiError> {
        let limit = params.limit.unwrap_or(DEFAULT_LIMIT);
        if !(1..=AUDIT_LIST_MAX).contains(&limit) {
            return Err(ApiError::invalid_params(format!(
                "limit must be between 1 and {AUDIT_LIST_MAX}"
            )));
        }
        if params.after_seq.is_some_and(|seq| seq < 0) {
            return Err(ApiError::invalid_params(
                "after_seq must be 0 or more: pass the `next` of a previous result",
            ));
        }
        for (field, value) in [("credential", &params.credential), ("app", &params.app)] {
            if value.as_deref().is_some_and(str::is_empty) {
                return Err(ApiError::invalid_params(format!(
                    "{field} is empty: leave it out to see every row"
                )));
            }
        }
        let session = daemon.session()?;
        session
            .with_vault(move |keys, vault| {
                let filter = AuditFilter {
                    since: params.since,
                    credential: params.credential.as_deref(),
                    app: params.app.as_deref(),
                };
                let after = params.after_seq.unwrap_or(0);
                let (rows, next, more) = vault.list_audit(keys, &filter, after, limit as usize)?;
                Ok(AuditListResult { rows, next, more })
            })
            .await
    }
}

/// The whole chain, a step at a time (each step one hold of the vault).
impl Handler for AuditVerify {
    type Reply = AuditVerifyResult;

    async fn handle(
        daemon: &Arc<Daemon>,
        _: Peer,
        _: Empty,
    ) -> Result<AuditVerifyResult, ApiError> {
        let session = daemon.session()?;
        let mut walk = VerifyWalk::default();
        loop {
            let (next, step) = session
                .with_vault(move |keys, vault| {
                    let step = vault.verify_audit_step(keys, &mut walk, VERIFY_STEP)?;
                    Ok((walk, step))
                })
                .await?;
            walk = next;
            if let VerifyStep::Done(result) = step {
                if let Some(problem) = &result.problem {
                    tracing::error!("audit log verification failed: {}", problem.message);
                }
                return Ok(result);
            }
        }
    }
}
