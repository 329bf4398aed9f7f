//! The audit log's tamper evidence (DESIGN.md, "Audit log"): every row's
//! MAC chained over the previous row's under `K_audit`
//! ([`crypto::AuditKey`]), and a sealed head (the first row the chain
//! keeps and the MAC before it, the last row and its MAC) rewritten in the
//! same transaction as the rows it covers. Rows written while the vault is
//! locked are stored unchained and chained (marked so) at the next unlock,
//! before any newer row. Retention deletes the oldest rows in bounded
//! batches and moves the head's anchor, so the log still verifies. Details
//! that identify an account are sealed into the row, never in clear.
//!
//! A verify walks the chain from the anchor and reports the first break:
//! a row edited (its MAC fails but the next row still chains on it), rows
//! out of order (the link to the next row is broken too), rows missing (a
//! gap in the sequence), the tail truncated (the chain ends before the
//! head), or the head itself missing or damaged. A truncation is named as
//! such even after new rows were chained: the writer checks the tail the
//! head names before it chains on, and keeps what it found in the head.
//!
//! What this cannot see: the whole vault file rolled back to an older copy
//! (head and rows together), and rows written while locked that were
//! changed before the unlock that chained them (they are marked
//! `chained_late`).

use super::crypto::{self, AuditMacInput, Mac, MAC_LEN};
use super::store::{AuditFilter, AuditHeadRow, AuditReads, AuditRow, AuditTx};
use super::{Keys, Result, Vault, VaultError};
use latchkey_client::protocol::{AuditBreak, AuditEntry, AuditProblem, AuditVerifyResult};
use serde::{Deserialize, Serialize};

/// The `audit` table, in sealed details' associated data.
const AUDIT_TABLE: &str = "audit";
const SEALED_FIELD: &str = "sealed_detail";
const HEAD_TABLE: &str = "audit_head";
const HEAD_FIELD: &str = "sealed";

/// Rows chained late per transaction: a batch takes a few milliseconds,
/// so nothing waits long on the vault mutex; the writer comes back for the
/// rest at once.
const CHAIN_BATCH: usize = 1024;
/// Rows deleted by retention per transaction, for the same reason.
const PRUNE_BATCH: usize = 1024;
/// Rows one verify step reads and checks under one hold of the vault mutex.
pub const VERIFY_STEP: usize = 4096;
/// How far past its cursor one `audit.list` call looks: bounds the rows
/// a call with a narrow filter scans (and the time it holds the vault).
const LIST_WINDOW: i64 = 50_000;
/// How often a verify starts over when a rekey re-chained the log under
/// it before it gives up.
const VERIFY_RESTARTS: u32 = 3;

/// What [`Vault::write_audit`] writes for a row whose account detail
/// could not be sealed (the vault locked before the writer got to it).
const DETAIL_NOT_KEPT: &str =
    "(its account detail was not kept: the vault locked before it was written)";
/// The event the writer adds when the tail its head names is gone.
pub const TRUNCATED_EVENT: &str = "audit_truncated";

/// An event on its way into the log, as the audit writer queues it. Its
/// `Debug` leaves the sealed detail out.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct AuditEvent {
    pub at: i64,
    pub event: String,
    pub credential: Option<String>,
    pub peer_pid: Option<u32>,
    /// The verified app identity (`identity::AppId::label`).
    pub app: Option<String>,
    /// Its stable name (`identity::AppId::key`).
    pub app_key: Option<String>,
    /// `ok`, `failed` or `denied`.
    pub outcome: &'static str,
    /// Names, scopes, kinds and counts: never a secret.
    pub detail: Option<String>,
    /// A detail that identifies an account (the OIDC subject): sealed
    /// into the row, never written in clear.
    pub sealed: Option<String>,
}

impl std::fmt::Debug for AuditEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditEvent")
            .field("at", &self.at)
            .field("event", &self.event)
            .field("credential", &self.credential)
            .field("peer_pid", &self.peer_pid)
            .field("app", &self.app)
            .field("app_key", &self.app_key)
            .field("outcome", &self.outcome)
            .field("detail", &self.detail)
            .field("sealed", &self.sealed.as_ref().map(|_| "[sealed]"))
            .finish()
    }
}

/// How long the audit log keeps rows, by age and by count: whichever
/// bound is reached first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Rows older than this many seconds go.
    pub max_age_secs: u64,
    /// The oldest rows beyond this count go.
    pub max_rows: u64,
}

impl Retention {
    /// 400 days (a year and a bit: last year's incident is still there),
    /// and a million rows (a few hundred MB at most, and verify reads it
    /// in seconds).
    pub const DEFAULT: Retention = Retention {
        max_age_secs: 400 * 24 * 3600,
        max_rows: 1_000_000,
    };
}

/// The chain's head, sealed in `audit_head`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Head {
    /// Random at the chain's start and at every rekey: a verify that sees
    /// it change under it starts over.
    chain: String,
    /// The first row the chain keeps; older ones went by retention.
    anchor_seq: i64,
    /// The MAC the row at `anchor_seq` is chained on (hex).
    anchor_prev: String,
    /// The last row chained (`anchor_seq - 1` while the chain is empty).
    last_seq: i64,
    /// Its MAC (hex); `anchor_prev` while the chain is empty.
    last_mac: String,
    /// The rows after `after` up to `through` that the writer found
    /// removed from the log's end before it chained on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cut: Option<Cut>,
    /// A break found when the vault was rekeyed: the log re-chained under
    /// the new key still fails verification with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    inherited: Option<Break>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Cut {
    after: i64,
    through: i64,
}

/// The first break a walk found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Break {
    kind: AuditBreak,
    /// The first row concerned.
    seq: Option<i64>,
    /// The last row concerned, for a range (missing, truncated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    to: Option<i64>,
    /// Found when the vault was rekeyed.
    #[serde(default)]
    at_rekey: bool,
}

impl Break {
    fn at(kind: AuditBreak, seq: i64) -> Break {
        Break {
            kind,
            seq: Some(seq),
            to: None,
            at_rekey: false,
        }
    }

    fn range(kind: AuditBreak, from: i64, to: i64) -> Break {
        Break {
            kind,
            seq: Some(from),
            to: Some(to),
            at_rekey: false,
        }
    }

    fn head(kind: AuditBreak) -> Break {
        Break {
            kind,
            seq: None,
            to: None,
            at_rekey: false,
        }
    }

    fn rows(from: i64, to: Option<i64>) -> String {
        match to {
            Some(to) if to != from => format!("rows {from} to {to}"),
            _ => format!("row {from}"),
        }
    }

    /// What was found, and the fix.
    fn message(&self) -> String {
        let seq = self.seq.unwrap_or_default();
        let what = match self.kind {
            AuditBreak::Edited => {
                format!("row {seq} of the audit log was edited: it no longer matches its MAC")
            }
            AuditBreak::Missing => format!(
                "{} of the audit log {} missing: deleted from the vault file",
                Break::rows(seq, self.to),
                if self.to.is_some_and(|to| to != seq) {
                    "are"
                } else {
                    "is"
                }
            ),
            AuditBreak::OutOfOrder => {
                format!("the audit log is out of order at row {seq}: rows were moved or swapped")
            }
            AuditBreak::Truncated => format!(
                "the audit log was truncated: {} at its end {} removed",
                Break::rows(seq, self.to),
                if self.to.is_some_and(|to| to != seq) {
                    "were"
                } else {
                    "was"
                }
            ),
            AuditBreak::HeadMissing => {
                "the audit log's sealed head is missing: it was deleted from the vault file".into()
            }
            _ => "the audit log's sealed head failed its integrity check: it was modified".into(),
        };
        let when = if self.at_rekey {
            " (found when the vault was rekeyed, and still true)"
        } else {
            ""
        };
        format!(
            "{what}{when}; the vault file was modified outside latchkey: keep a copy of it as evidence, \
             compare its log with a backup you trust, and consider `latchkey panic` if you did not do this"
        )
    }

    fn problem(&self) -> AuditProblem {
        AuditProblem {
            kind: self.kind,
            seq: self.seq,
            message: self.message(),
        }
    }
}

fn mac_hex(mac: &Mac) -> String {
    hex::encode(mac)
}

/// A MAC from the head or a row: `None` when it is not one (damaged).
fn mac_from(bytes: &[u8]) -> Option<Mac> {
    <Mac>::try_from(bytes).ok()
}

fn mac_from_hex(text: &str) -> Option<Mac> {
    hex::decode(text).ok().as_deref().and_then(mac_from)
}

impl Head {
    /// A new chain over every row there is (they are chained late), or
    /// starting with the next row written.
    fn genesis(r: &impl AuditReads) -> Result<Head> {
        let anchor = match r.audit_bounds()? {
            Some((min, _)) => min,
            None => r.audit_next_seq()?,
        };
        let zero = mac_hex(&[0; MAC_LEN]);
        Ok(Head {
            chain: crypto::random_id(),
            anchor_seq: anchor,
            anchor_prev: zero.clone(),
            last_seq: anchor - 1,
            last_mac: zero,
            cut: None,
            inherited: None,
        })
    }

    fn anchor_prev(&self) -> Option<Mac> {
        mac_from_hex(&self.anchor_prev)
    }

    fn last_mac(&self) -> Option<Mac> {
        mac_from_hex(&self.last_mac)
    }
}

/// What the head of the chain is.
enum HeadState {
    Found(Head),
    Missing,
    /// Unreadable with this key, more than one, or holding no MACs.
    Corrupt,
}

fn read_head(r: &impl AuditReads, keys: &Keys) -> Result<HeadState> {
    let rows = r.audit_heads()?;
    let [row] = rows.as_slice() else {
        return Ok(if rows.is_empty() {
            HeadState::Missing
        } else {
            HeadState::Corrupt
        });
    };
    let head: Option<Head> = keys
        .open_json(HEAD_TABLE, &row.id, HEAD_FIELD, &row.sealed)
        .ok();
    Ok(match head {
        Some(h) if h.anchor_prev().is_some() && h.last_mac().is_some() => HeadState::Found(h),
        _ => HeadState::Corrupt,
    })
}

fn write_head(tx: &mut AuditTx<'_>, keys: &Keys, head: &Head) -> Result<()> {
    let id = crypto::random_id();
    let sealed = keys.seal_json(HEAD_TABLE, &id, HEAD_FIELD, head);
    tx.put_head(&AuditHeadRow { id, sealed })?;
    Ok(())
}

/// A row as its MAC covers it.
fn mac_input(row: &AuditRow) -> AuditMacInput<'_> {
    AuditMacInput {
        seq: row.seq,
        at: row.at,
        event: &row.event,
        credential: row.credential.as_deref(),
        pid: row.peer_pid,
        app: row.app.as_deref(),
        app_key: row.app_key.as_deref(),
        outcome: row.outcome.as_deref(),
        detail: row.detail.as_deref(),
        sealed_id: row.sealed_id.as_deref(),
        sealed_detail: row.sealed_detail.as_deref(),
        chained_late: row.chained_late,
    }
}

/// The row for an event: its account detail sealed under `keys`, or —
/// locked — left out, saying so.
fn row_of(event: &AuditEvent, keys: Option<&Keys>) -> AuditRow {
    let mut row = AuditRow {
        seq: 0,
        at: event.at,
        event: event.event.clone(),
        credential: event.credential.clone(),
        peer_pid: event.peer_pid,
        app: event.app.clone(),
        app_key: event.app_key.clone(),
        outcome: Some(event.outcome.to_owned()),
        detail: event.detail.clone(),
        ..AuditRow::default()
    };
    match (&event.sealed, keys) {
        (None, _) => {}
        (Some(sealed), Some(keys)) => {
            let id = crypto::random_id();
            row.sealed_detail = Some(keys.seal(AUDIT_TABLE, &id, SEALED_FIELD, sealed.as_bytes()));
            row.sealed_id = Some(id);
        }
        (Some(_), None) => {
            row.detail = Some(match row.detail.take() {
                Some(d) => format!("{d} {DETAIL_NOT_KEPT}"),
                None => DETAIL_NOT_KEPT.into(),
            });
        }
    }
    row
}

/// What one batch of the audit writer left.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AuditWrite {
    /// Rows still wait to be chained, or to be pruned: come back soon.
    pub more: bool,
    /// The chain's head is missing or damaged, so nothing was chained
    /// (chaining on would hide it); `audit.verify` says what happened.
    pub head_broken: bool,
}

impl Vault {
    /// One batch of the audit writer, in one transaction. Unlocked
    /// (`keys`): rows written while locked are chained first (at most
    /// [`CHAIN_BATCH`], marked `chained_late`), then `events` go in,
    /// chained at once when no older row still waits, then retention
    /// deletes at most [`PRUNE_BATCH`] of the oldest rows, and the head is
    /// sealed again. Locked: `events` go in unchained, their account
    /// details left out (nothing can seal them).
    pub fn write_audit(
        &mut self,
        keys: Option<&Keys>,
        events: &[AuditEvent],
        retention: Retention,
        now: i64,
    ) -> Result<AuditWrite> {
        let mut tx = self.store.audit_tx()?;
        let Some(keys) = keys else {
            for event in events {
                tx.insert(&row_of(event, None))?;
            }
            tx.commit()?;
            return Ok(AuditWrite::default());
        };
        let mut head = match read_head(&tx, keys)? {
            HeadState::Found(head) => head,
            HeadState::Missing if !tx.audit_any_mac()? => Head::genesis(&tx)?,
            HeadState::Missing | HeadState::Corrupt => {
                for event in events {
                    tx.insert(&row_of(event, Some(keys)))?;
                }
                tx.commit()?;
                return Ok(AuditWrite {
                    more: false,
                    head_broken: true,
                });
            }
        };
        let mut last_mac = head.last_mac().expect("read_head checked the MACs");
        let mut notes = Vec::new();
        // The tail the head names must be there before the chain goes on;
        // a missing one is a truncation (kept in the head: once new rows
        // are chained it would look like rows deleted in the middle).
        if head.last_seq >= head.anchor_seq && tx.audit_row(head.last_seq)?.is_none() {
            let after = tx
                .audit_last_at_most(head.last_seq)?
                .unwrap_or(head.anchor_seq - 1)
                .max(head.anchor_seq - 1);
            tracing::error!(
                "the audit log ends at row {after} but its sealed head names row {}: its last rows were removed from the vault file; run `latchkey audit verify`",
                head.last_seq
            );
            head.cut.get_or_insert(Cut {
                after,
                through: head.last_seq,
            });
            notes.push(AuditEvent {
                at: now,
                event: TRUNCATED_EVENT.into(),
                outcome: "failed",
                detail: Some(format!(
                    "the audit log ended at row {after} but its sealed head names row {}: its last rows were removed; run `latchkey audit verify`",
                    head.last_seq
                )),
                ..AuditEvent::default()
            });
        }
        let before = head.clone();
        // Rows written while locked, oldest first.
        for mut row in tx.audit_rows(head.last_seq + 1, i64::MAX, CHAIN_BATCH)? {
            row.chained_late = true;
            let mac = keys.audit.mac(&last_mac, &mac_input(&row));
            tx.set_mac(row.seq, &mac, true)?;
            head.last_seq = row.seq;
            last_mac = mac;
        }
        let waiting = |tx: &AuditTx<'_>, last: i64| -> Result<bool> {
            Ok(tx.audit_bounds()?.is_some_and(|(_, max)| max > last))
        };
        let backlog = waiting(&tx, head.last_seq)?;
        for event in notes.iter().chain(events) {
            let mut row = row_of(event, Some(keys));
            row.seq = tx.insert(&row)?;
            if !backlog {
                let mac = keys.audit.mac(&last_mac, &mac_input(&row));
                tx.set_mac(row.seq, &mac, false)?;
                head.last_seq = row.seq;
                last_mac = mac;
            }
        }
        head.last_mac = mac_hex(&last_mac);
        let more_to_prune = prune(&mut tx, &mut head, retention, now)?;
        if head == before && events.is_empty() && notes.is_empty() {
            // Nothing to do (the writer's idle wake): no write, no fsync.
            return Ok(AuditWrite::default());
        }
        write_head(&mut tx, keys, &head)?;
        tx.commit()?;
        Ok(AuditWrite {
            more: backlog || more_to_prune,
            head_broken: false,
        })
    }

    /// One step of `audit.verify`: checks at most `budget` rows from where
    /// `walk` stands, under one hold of the vault. Between steps the
    /// writer may add rows (the walk goes on to the head it then finds),
    /// prune some (the walk jumps to the new anchor) or a rekey re-chain
    /// the log (the walk starts over).
    pub fn verify_audit_step(
        &self,
        keys: &Keys,
        walk: &mut VerifyWalk,
        budget: usize,
    ) -> Result<VerifyStep> {
        let store = &self.store;
        let head = match read_head(store, keys)? {
            HeadState::Found(head) => head,
            HeadState::Missing if !store.audit_any_mac()? => {
                // Nothing was ever chained (the writer starts the chain at
                // its first batch after an unlock).
                let unchained = store
                    .audit_bounds()?
                    .map_or(0, |(min, max)| (max - min + 1) as u64);
                return Ok(VerifyStep::Done(AuditVerifyResult {
                    ok: true,
                    checked: 0,
                    chained_late: 0,
                    unchained,
                    first_seq: None,
                    last_seq: None,
                    problem: None,
                }));
            }
            HeadState::Missing => return Ok(walk.failed(Break::head(AuditBreak::HeadMissing))),
            HeadState::Corrupt => return Ok(walk.failed(Break::head(AuditBreak::HeadCorrupt))),
        };
        if let Some(inherited) = &head.inherited {
            return Ok(walk.failed(inherited.clone()));
        }
        if walk.chain.as_ref() != Some(&head.chain) {
            if walk.chain.is_some() {
                walk.restarts += 1;
                if walk.restarts > VERIFY_RESTARTS {
                    return Err(VaultError::Corrupt {
                        what: "the audit log (it was re-chained by rekeys during the whole verify: run it again)".into(),
                    });
                }
            }
            *walk = VerifyWalk {
                restarts: walk.restarts,
                ..VerifyWalk::start(&head)
            };
        }
        if walk.next < head.anchor_seq {
            // Retention deleted rows the walk had not reached yet.
            walk.jump(&head);
        }
        let rows = store.audit_rows(walk.next, head.last_seq, budget)?;
        for row in &rows {
            if let Some(found) = walk.feed(keys, &head, row) {
                return Ok(walk.failed(found));
            }
        }
        if rows.len() == budget {
            return Ok(VerifyStep::More);
        }
        if let Some(found) = walk.finish(&head) {
            return Ok(walk.failed(found));
        }
        let unchained = store
            .audit_bounds()?
            .map_or(0, |(_, max)| (max - head.last_seq).max(0) as u64);
        Ok(VerifyStep::Done(AuditVerifyResult {
            ok: true,
            checked: walk.checked,
            chained_late: walk.late,
            unchained,
            first_seq: (head.last_seq >= head.anchor_seq).then_some(head.anchor_seq),
            last_seq: (head.last_seq >= head.anchor_seq).then_some(head.last_seq),
            problem: None,
        }))
    }

    /// One page of `audit.list`: rows after `after` that pass `filter`, at
    /// most `limit`, looking at most [`LIST_WINDOW`] rows past `after`;
    /// sealed details opened. Returns the rows, the cursor to continue
    /// from, and whether the log goes on after it.
    pub fn list_audit(
        &self,
        keys: &Keys,
        filter: &AuditFilter<'_>,
        after: i64,
        limit: usize,
    ) -> Result<(Vec<AuditEntry>, i64, bool)> {
        let Some((min, max)) = self.store.audit_bounds()? else {
            return Ok((Vec::new(), after.max(0), false));
        };
        let from = after.max(min - 1);
        let through = from.saturating_add(LIST_WINDOW).min(max);
        let rows = self.store.audit_page(from, through, filter, limit)?;
        let next = match rows.last() {
            Some(last) if rows.len() == limit => last.seq,
            _ => through.max(from),
        };
        let entries = rows.into_iter().map(|row| entry(keys, row)).collect();
        Ok((entries, next, next < max))
    }
}

/// A stored row as `audit.list` shows it.
fn entry(keys: &Keys, row: AuditRow) -> AuditEntry {
    let opened = match (&row.sealed_id, &row.sealed_detail) {
        (Some(id), Some(blob)) => Some(
            keys.open(AUDIT_TABLE, id, SEALED_FIELD, blob)
                .ok()
                .and_then(|plain| String::from_utf8(plain.to_vec()).ok())
                .unwrap_or_else(|| "(sealed detail failed its integrity check)".into()),
        ),
        _ => None,
    };
    let detail = match (row.detail, opened) {
        (Some(clear), Some(opened)) => Some(format!("{clear} {opened}")),
        (clear, opened) => clear.or(opened),
    };
    AuditEntry {
        seq: row.seq,
        at: row.at,
        event: row.event,
        credential: row.credential,
        app: row.app,
        app_key: row.app_key,
        pid: row.peer_pid,
        outcome: row.outcome,
        detail,
        chained_late: row.chained_late,
        chained: row.mac.is_some(),
    }
}

/// A row whose MAC failed, kept until the next row says how.
#[derive(Debug, Clone)]
struct Suspect {
    seq: i64,
    /// The MAC the row should carry given its content.
    computed: Mac,
}

/// Where a verify stands between steps.
#[derive(Debug, Clone, Default)]
pub struct VerifyWalk {
    chain: Option<String>,
    /// The seq the next row must have.
    next: i64,
    /// The MAC the next row must be chained on (the stored one of the
    /// row before).
    prev: Mac,
    checked: u64,
    late: u64,
    suspect: Option<Suspect>,
    restarts: u32,
}

/// What a verify step says.
pub enum VerifyStep {
    /// More rows to check: call again.
    More,
    Done(AuditVerifyResult),
}

impl VerifyWalk {
    fn start(head: &Head) -> VerifyWalk {
        VerifyWalk {
            chain: Some(head.chain.clone()),
            next: head.anchor_seq,
            prev: head.anchor_prev().expect("read_head checked the MACs"),
            ..VerifyWalk::default()
        }
    }

    /// Goes on from the head's anchor (the rows before it were pruned).
    fn jump(&mut self, head: &Head) {
        self.next = head.anchor_seq;
        self.prev = head.anchor_prev().expect("read_head checked the MACs");
        self.suspect = None;
    }

    fn failed(&self, found: Break) -> VerifyStep {
        VerifyStep::Done(AuditVerifyResult {
            ok: false,
            checked: self.checked,
            chained_late: self.late,
            unchained: 0,
            first_seq: None,
            last_seq: None,
            problem: Some(found.problem()),
        })
    }

    /// Checks the next row of the chain (rows come in seq order, none
    /// after the head's last); the first break, if this row shows one.
    fn feed(&mut self, keys: &Keys, head: &Head, row: &AuditRow) -> Option<Break> {
        if row.seq > self.next {
            if let Some(suspect) = self.suspect.take() {
                return Some(Break::at(AuditBreak::Edited, suspect.seq));
            }
            let (from, to) = (self.next, row.seq - 1);
            // The writer found the log cut off here when it chained on
            // (rows written while locked may have gone with the chained ones).
            let truncated = head
                .cut
                .is_some_and(|cut| cut.after == from - 1 && cut.through <= to);
            let kind = if truncated {
                AuditBreak::Truncated
            } else {
                AuditBreak::Missing
            };
            return Some(Break::range(kind, from, to));
        }
        let input = mac_input(row);
        let stored = row.mac.as_deref().unwrap_or_default();
        let holds = keys.audit.verify(&self.prev, &input, stored);
        if let Some(suspect) = self.suspect.take() {
            // The row before failed. This one still chains on its stored
            // MAC: only its content changed. On the MAC it should have:
            // only its MAC changed. On neither: the link is broken, the
            // rows are not in the order they were chained in.
            let kind = if holds || keys.audit.verify(&suspect.computed, &input, stored) {
                AuditBreak::Edited
            } else {
                AuditBreak::OutOfOrder
            };
            return Some(Break::at(kind, suspect.seq));
        }
        if !holds {
            self.suspect = Some(Suspect {
                seq: row.seq,
                computed: keys.audit.mac(&self.prev, &input),
            });
        }
        self.prev = mac_from(stored).unwrap_or([0; MAC_LEN]);
        self.next = row.seq + 1;
        self.checked += 1;
        self.late += u64::from(row.chained_late);
        None
    }

    /// After the last row: the chain must reach the head, and end on its MAC.
    fn finish(&mut self, head: &Head) -> Option<Break> {
        if let Some(suspect) = self.suspect.take() {
            return Some(Break::at(AuditBreak::Edited, suspect.seq));
        }
        if self.next <= head.last_seq {
            return Some(Break::range(
                AuditBreak::Truncated,
                self.next,
                head.last_seq,
            ));
        }
        if head.last_seq >= head.anchor_seq && Some(self.prev) != head.last_mac() {
            return Some(Break::at(AuditBreak::Edited, head.last_seq));
        }
        None
    }
}

/// Retention: deletes at most [`PRUNE_BATCH`] of the oldest chained rows
/// that are older than the age bound or beyond the count bound, and moves
/// the anchor past them. The last chained row always stays (it is the
/// tail the head names). Looks at one row when there is nothing to do.
/// Returns whether more may be due.
fn prune(tx: &mut AuditTx<'_>, head: &mut Head, retention: Retention, now: i64) -> Result<bool> {
    let last_prunable = head.last_seq - 1;
    if last_prunable < head.anchor_seq {
        return Ok(false);
    }
    let Some((_, max)) = tx.audit_bounds()? else {
        return Ok(false);
    };
    let kept = (max - head.anchor_seq + 1).max(0) as u64;
    let excess = kept.saturating_sub(retention.max_rows);
    let cutoff = now.saturating_sub(i64::try_from(retention.max_age_secs).unwrap_or(i64::MAX));
    let first = tx.audit_rows(head.anchor_seq, last_prunable, 1)?;
    match first.first() {
        Some(row) if excess > 0 || row.at < cutoff => {}
        _ => return Ok(false),
    }
    let candidates = tx.audit_rows(head.anchor_seq, last_prunable, PRUNE_BATCH)?;
    let mut cut = None;
    for (i, row) in candidates.iter().enumerate() {
        if (i as u64) >= excess && row.at >= cutoff {
            break;
        }
        // An unchained or damaged row is left for verify to report.
        let Some(mac) = row.mac.as_deref().and_then(mac_from) else {
            break;
        };
        cut = Some((i, row.seq, mac));
    }
    let Some((i, seq, mac)) = cut else {
        return Ok(false);
    };
    tx.delete_range(head.anchor_seq, seq)?;
    head.anchor_seq = seq + 1;
    head.anchor_prev = mac_hex(&mac);
    Ok(i + 1 == PRUNE_BATCH)
}

/// Rekey: the chain re-made under the new key in the rekey's transaction
/// (every MAC recomputed, every sealed detail re-sealed). The old chain is
/// checked on the way with the old key: a break it had is kept in the new
/// head, so re-chaining never launders an edited log.
pub(super) fn rechain(tx: &mut AuditTx<'_>, old: &Keys, new: &Keys) -> Result<()> {
    let Some((min, max)) = tx.audit_bounds()? else {
        if let HeadState::Found(head) = read_head(tx, old)? {
            let head = Head {
                chain: crypto::random_id(),
                ..head
            };
            return write_head(tx, new, &head);
        }
        return Ok(());
    };
    let head = match read_head(tx, old)? {
        HeadState::Found(head) => Some(head),
        HeadState::Missing if !tx.audit_any_mac()? => None,
        state => {
            // No chain to carry over: start one over every row (the
            // writer chains them late), remembering why.
            let kind = match state {
                HeadState::Missing => AuditBreak::HeadMissing,
                _ => AuditBreak::HeadCorrupt,
            };
            let mut fresh = Head::genesis(tx)?;
            fresh.inherited = Some(Break {
                at_rekey: true,
                ..Break::head(kind)
            });
            reseal_details(tx, old, new, min, max)?;
            return write_head(tx, new, &fresh);
        }
    };
    let Some(head) = head else {
        // Never chained: only sealed details to carry over.
        return reseal_details(tx, old, new, min, max);
    };
    let mut walk = VerifyWalk::start(&head);
    let mut found = None;
    let mut new_prev = head.anchor_prev().expect("read_head checked the MACs");
    let mut from = min.min(head.anchor_seq);
    loop {
        let rows = tx.audit_rows(from, max, CHAIN_BATCH)?;
        let Some(last) = rows.last() else { break };
        from = last.seq + 1;
        for mut row in rows {
            let chained = (head.anchor_seq..=head.last_seq).contains(&row.seq);
            if chained && found.is_none() {
                found = walk.feed(old, &head, &row);
            }
            reseal(tx, old, new, &mut row)?;
            if chained {
                let mac = new.audit.mac(&new_prev, &mac_input(&row));
                tx.set_mac(row.seq, &mac, row.chained_late)?;
                new_prev = mac;
            }
        }
    }
    if found.is_none() {
        found = walk.finish(&head);
    }
    let rechained = Head {
        chain: crypto::random_id(),
        last_mac: if head.last_seq >= head.anchor_seq {
            mac_hex(&new_prev)
        } else {
            head.anchor_prev.clone()
        },
        inherited: head.inherited.clone().or(found.map(|b| Break {
            at_rekey: true,
            ..b
        })),
        ..head
    };
    write_head(tx, new, &rechained)
}

/// A row's sealed detail re-sealed under the new key (left as it is when
/// it does not open: verify reports the row).
fn reseal(tx: &mut AuditTx<'_>, old: &Keys, new: &Keys, row: &mut AuditRow) -> Result<()> {
    let (Some(id), Some(blob)) = (&row.sealed_id, &row.sealed_detail) else {
        return Ok(());
    };
    if let Ok(plain) = old.open(AUDIT_TABLE, id, SEALED_FIELD, blob) {
        let blob = new.seal(AUDIT_TABLE, id, SEALED_FIELD, &plain);
        tx.set_sealed_detail(row.seq, &blob)?;
        row.sealed_detail = Some(blob);
    }
    Ok(())
}

fn reseal_details(tx: &mut AuditTx<'_>, old: &Keys, new: &Keys, min: i64, max: i64) -> Result<()> {
    let mut from = min;
    loop {
        let rows = tx.audit_rows(from, max, CHAIN_BATCH)?;
        let Some(last) = rows.last() else {
            return Ok(());
        };
        from = last.seq + 1;
        for mut row in rows {
            reseal(tx, old, new, &mut row)?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vault::crypto::Dek;
    use crate::vault::store::Store;
    use rusqlite::params;

    const NOW: i64 = 1_700_000_000;

    fn keys() -> Keys {
        Keys::new("vault-1".into(), Dek::generate().unwrap())
    }

    fn vault(dir: &tempfile::TempDir) -> Vault {
        Vault {
            store: Store::open(
                &crate::vault::store::Location::File(dir.path().join("vault.db")),
                true,
            )
            .unwrap(),
        }
    }

    fn event(i: usize) -> AuditEvent {
        AuditEvent {
            at: NOW + i as i64,
            event: if i.is_multiple_of(3) {
                "unlock"
            } else {
                "token_issued"
            }
            .into(),
            credential: (!i.is_multiple_of(3)).then(|| format!("cred-{}", i % 2)),
            peer_pid: Some(100 + i as u32),
            app: Some(format!("/usr/bin/app{} (sha256 0011)", i % 2)),
            app_key: Some(format!("exe:/usr/bin/app{}", i % 2)),
            outcome: "ok",
            detail: Some(format!("detail {i}")),
            sealed: None,
        }
    }

    /// Writes `n` events in batches of 4, unlocked.
    fn log(n: usize) -> (tempfile::TempDir, Vault, Keys) {
        let dir = tempfile::tempdir().unwrap();
        let mut vault = vault(&dir);
        let keys = keys();
        let events: Vec<AuditEvent> = (0..n).map(event).collect();
        for batch in events.chunks(4) {
            write(&mut vault, Some(&keys), batch);
        }
        (dir, vault, keys)
    }

    fn write(vault: &mut Vault, keys: Option<&Keys>, events: &[AuditEvent]) -> AuditWrite {
        vault
            .write_audit(keys, events, Retention::DEFAULT, NOW + 1000)
            .unwrap()
    }

    /// Runs verify to the end in steps of `budget` rows.
    fn verify_in(vault: &Vault, keys: &Keys, budget: usize) -> AuditVerifyResult {
        let mut walk = VerifyWalk::default();
        for _ in 0..10_000 {
            match vault.verify_audit_step(keys, &mut walk, budget).unwrap() {
                VerifyStep::More => {}
                VerifyStep::Done(result) => return result,
            }
        }
        panic!("verify did not finish");
    }

    fn verify(vault: &Vault, keys: &Keys) -> AuditVerifyResult {
        verify_in(vault, keys, VERIFY_STEP)
    }

    #[track_caller]
    fn assert_break(result: &AuditVerifyResult, kind: AuditBreak, seq: Option<i64>) {
        assert!(!result.ok, "{result:?}");
        let problem = result.problem.as_ref().expect("a problem");
        assert_eq!((problem.kind, problem.seq), (kind, seq), "{problem:?}");
        assert!(
            problem.message.contains("modified outside latchkey"),
            "{}",
            problem.message
        );
    }

    fn sql(vault: &Vault, sql: &str) {
        vault.store.conn_for_tests().execute_batch(sql).unwrap();
    }

    fn rows(vault: &Vault) -> Vec<AuditRow> {
        vault.store.audit_rows(i64::MIN, i64::MAX, 100_000).unwrap()
    }

    /// Swaps every column but seq of two rows.
    fn swap(vault: &Vault, a: i64, b: i64) {
        let conn = vault.store.conn_for_tests();
        conn.execute_batch(&format!(
            "CREATE TEMP TABLE swapped AS SELECT * FROM audit WHERE seq IN ({a}, {b});
             UPDATE audit SET (at, event, credential, peer_pid, detail, app, app_key, outcome, sealed_id, sealed_detail, chained_late, mac) =
               (SELECT at, event, credential, peer_pid, detail, app, app_key, outcome, sealed_id, sealed_detail, chained_late, mac
                FROM swapped WHERE swapped.seq = (CASE audit.seq WHEN {a} THEN {b} ELSE {a} END))
             WHERE seq IN ({a}, {b});
             DROP TABLE swapped;"
        ))
        .unwrap();
    }

    #[test]
    fn a_log_verifies_in_one_step_or_many() {
        let (_dir, vault, keys) = log(30);
        let stored = rows(&vault);
        assert_eq!(stored.len(), 30);
        assert!(stored.iter().all(|r| r.mac.is_some() && !r.chained_late));
        assert_eq!(stored[0].outcome.as_deref(), Some("ok"));
        for budget in [1, 7, VERIFY_STEP] {
            let result = verify_in(&vault, &keys, budget);
            assert!(result.ok, "{result:?}");
            assert_eq!(result.checked, 30);
            assert_eq!((result.first_seq, result.last_seq), (Some(1), Some(30)));
            assert_eq!((result.unchained, result.chained_late), (0, 0));
        }
        // Another key (another vault, or the old key after a rekey) opens no head.
        assert_break(
            &verify(&vault, &self::keys()),
            AuditBreak::HeadCorrupt,
            None,
        );
    }

    #[test]
    fn each_kind_of_tampering_is_found_and_named_where_it_is() {
        type Tamper = fn(&Vault);
        let cases: [(&str, Tamper, AuditBreak, Option<i64>); 9] = [
            (
                "a detail edited",
                |v| {
                    sql(
                        v,
                        "UPDATE audit SET detail = 'nothing to see' WHERE seq = 5",
                    )
                },
                AuditBreak::Edited,
                Some(5),
            ),
            (
                "an event renamed",
                |v| sql(v, "UPDATE audit SET event = 'lock' WHERE seq = 1"),
                AuditBreak::Edited,
                Some(1),
            ),
            (
                "the outcome changed",
                |v| sql(v, "UPDATE audit SET outcome = 'denied' WHERE seq = 12"),
                AuditBreak::Edited,
                Some(12),
            ),
            (
                "a MAC replaced",
                |v| sql(v, "UPDATE audit SET mac = zeroblob(32) WHERE seq = 8"),
                AuditBreak::Edited,
                Some(8),
            ),
            (
                "the last row edited",
                |v| sql(v, "UPDATE audit SET at = 0 WHERE seq = 20"),
                AuditBreak::Edited,
                Some(20),
            ),
            (
                "a row deleted",
                |v| sql(v, "DELETE FROM audit WHERE seq = 7"),
                AuditBreak::Missing,
                Some(7),
            ),
            (
                "the first row deleted",
                |v| sql(v, "DELETE FROM audit WHERE seq = 1"),
                AuditBreak::Missing,
                Some(1),
            ),
            (
                "two rows swapped",
                |v| swap(v, 4, 9),
                AuditBreak::OutOfOrder,
                Some(4),
            ),
            (
                "the tail truncated",
                |v| sql(v, "DELETE FROM audit WHERE seq > 17"),
                AuditBreak::Truncated,
                Some(18),
            ),
        ];
        for (what, tamper, kind, seq) in cases {
            let (_dir, vault, keys) = log(20);
            assert!(verify(&vault, &keys).ok, "{what}: before");
            tamper(&vault);
            let result = verify(&vault, &keys);
            assert_break(&result, kind, seq);
            let message = &result.problem.unwrap().message;
            if let Some(seq) = seq {
                let named = message.match_indices(&format!(" {seq}")).any(|(i, m)| {
                    !message[i + m.len()..].starts_with(|c: char| c.is_ascii_digit())
                });
                assert!(named, "{what}: the message names row {seq}: {message}");
            }
        }
        // Adjacent rows swapped.
        let (_dir, vault, keys) = log(20);
        swap(&vault, 10, 11);
        assert_break(&verify(&vault, &keys), AuditBreak::OutOfOrder, Some(10));
        // The head deleted, or damaged.
        let (_dir, vault, keys) = log(5);
        sql(&vault, "DELETE FROM audit_head");
        assert_break(&verify(&vault, &keys), AuditBreak::HeadMissing, None);
        let (_dir, vault, keys) = log(5);
        sql(&vault, "UPDATE audit_head SET sealed = zeroblob(80)");
        assert_break(&verify(&vault, &keys), AuditBreak::HeadCorrupt, None);
    }

    #[test]
    fn a_truncated_tail_stays_named_after_new_rows_are_chained_and_nothing_is_chained_on_a_lost_head(
    ) {
        let (_dir, mut vault, keys) = log(20);
        sql(&vault, "DELETE FROM audit WHERE seq > 16");
        write(&mut vault, Some(&keys), &[event(100)]);
        let stored = rows(&vault);
        let note = stored
            .iter()
            .find(|r| r.event == TRUNCATED_EVENT)
            .expect("the writer says so");
        assert_eq!(note.outcome.as_deref(), Some("failed"));
        assert!(note
            .detail
            .as_deref()
            .unwrap()
            .contains("ended at row 16 but its sealed head names row 20"));
        assert_eq!(note.seq, 21, "seqs are never reused");
        let result = verify(&vault, &keys);
        assert_break(&result, AuditBreak::Truncated, Some(17));
        assert!(result
            .problem
            .unwrap()
            .message
            .contains("rows 17 to 20 at its end were removed"),);

        // Cut off together with rows written while locked after the tail.
        let (_dir, mut vault, keys) = log(10);
        write(&mut vault, None, &[event(11), event(12)]);
        sql(&vault, "DELETE FROM audit WHERE seq > 8");
        write(&mut vault, Some(&keys), &[event(13)]);
        let result = verify(&vault, &keys);
        assert_break(&result, AuditBreak::Truncated, Some(9));
        assert!(result
            .problem
            .unwrap()
            .message
            .contains("rows 9 to 12 at its end"));

        // Deleted in the middle (rows after it were written before): missing.
        let (_dir, vault, keys) = log(20);
        sql(&vault, "DELETE FROM audit WHERE seq BETWEEN 10 AND 12");
        let result = verify(&vault, &keys);
        assert_break(&result, AuditBreak::Missing, Some(10));
        assert!(result
            .problem
            .unwrap()
            .message
            .contains("rows 10 to 12 of the audit log are missing"));

        // A head deleted: rows keep coming, unchained, and verify says why.
        let (_dir, mut vault, keys) = log(4);
        sql(&vault, "DELETE FROM audit_head");
        let written = write(&mut vault, Some(&keys), &[event(5)]);
        assert!(written.head_broken);
        assert_eq!(rows(&vault).last().unwrap().mac, None);
        assert!(
            vault.store.audit_heads().unwrap().is_empty(),
            "no new chain over the old one"
        );
        assert_break(&verify(&vault, &keys), AuditBreak::HeadMissing, None);
    }

    #[test]
    fn rows_written_while_locked_are_chained_at_unlock_before_new_rows() {
        let (_dir, mut vault, keys) = log(3);
        let mut locked: Vec<AuditEvent> = (10..15).map(event).collect();
        locked[0].sealed = Some("sub=alice".into());
        write(&mut vault, None, &locked);
        let stored = rows(&vault);
        assert!(stored[3..].iter().all(|r| r.mac.is_none()));
        assert_eq!(
            stored[3].sealed_detail, None,
            "nothing can seal it while locked"
        );
        assert!(stored[3]
            .detail
            .as_deref()
            .unwrap()
            .ends_with(DETAIL_NOT_KEPT));
        let before = verify(&vault, &keys);
        assert!(before.ok, "{before:?}");
        assert_eq!((before.checked, before.unchained), (3, 5));

        // The unlock: the next batch chains them first, then its own rows.
        let written = write(&mut vault, Some(&keys), &[event(20)]);
        assert!(!written.more);
        let stored = rows(&vault);
        let late: Vec<i64> = stored
            .iter()
            .filter(|r| r.chained_late)
            .map(|r| r.seq)
            .collect();
        assert_eq!(late, [4, 5, 6, 7, 8]);
        assert!(stored.iter().all(|r| r.mac.is_some()));
        assert_eq!(stored.last().unwrap().detail.as_deref(), Some("detail 20"));
        let after = verify(&vault, &keys);
        assert!(after.ok, "{after:?}");
        assert_eq!(
            (after.checked, after.chained_late, after.unchained),
            (9, 5, 0)
        );
        // A chained-late row is covered like any other.
        sql(&vault, "UPDATE audit SET chained_late = 0 WHERE seq = 6");
        assert_break(&verify(&vault, &keys), AuditBreak::Edited, Some(6));
    }

    #[test]
    fn a_large_backlog_is_chained_in_bounded_batches_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut vault = vault(&dir);
        let keys = keys();
        let locked: Vec<AuditEvent> = (0..CHAIN_BATCH * 2 + 10).map(event).collect();
        write(&mut vault, None, &locked);
        // The first batch after the unlock: one bounded step, work left;
        // its new row waits behind the older ones.
        let first = write(&mut vault, Some(&keys), &[event(9999)]);
        assert!(first.more);
        let chained = rows(&vault).iter().filter(|r| r.mac.is_some()).count();
        assert_eq!(chained, CHAIN_BATCH);
        let mut turns = 1;
        loop {
            turns += 1;
            assert!(turns < 10, "bounded");
            if !write(&mut vault, Some(&keys), &[]).more {
                break;
            }
        }
        assert_eq!(turns, 3, "1024 + 1024 + 11 rows");
        let stored = rows(&vault);
        assert!(stored.iter().all(|r| r.mac.is_some() && r.chained_late));
        assert_eq!(
            stored.last().unwrap().detail.as_deref(),
            Some("detail 9999")
        );
        let result = verify(&vault, &keys);
        assert!(result.ok, "{result:?}");
        assert_eq!(result.checked as usize, CHAIN_BATCH * 2 + 11);
        // With nothing to do, a batch writes nothing.
        let head = vault.store.audit_heads().unwrap().pop().unwrap().id;
        assert!(!write(&mut vault, Some(&keys), &[]).more);
        assert_eq!(vault.store.audit_heads().unwrap().pop().unwrap().id, head);
    }

    #[test]
    fn retention_by_count_and_age_moves_the_anchor_and_verify_still_passes() {
        let (_dir, mut vault, keys) = log(40);
        let by_count = Retention {
            max_age_secs: u64::MAX,
            max_rows: 25,
        };
        assert!(
            !vault
                .write_audit(Some(&keys), &[], by_count, NOW)
                .unwrap()
                .more
        );
        let stored = rows(&vault);
        assert_eq!(stored.len(), 25);
        assert_eq!(stored[0].seq, 16);
        let result = verify(&vault, &keys);
        assert!(result.ok, "{result:?}");
        assert_eq!((result.first_seq, result.checked), (Some(16), 25));
        // Rows older than a day at `NOW + 30 + 1 day`: all but the last ten.
        let by_age = Retention {
            max_age_secs: 24 * 3600,
            max_rows: 1_000_000,
        };
        vault
            .write_audit(Some(&keys), &[], by_age, NOW + 30 + 24 * 3600)
            .unwrap();
        let stored = rows(&vault);
        assert_eq!(stored.first().unwrap().seq, 31);
        assert!(verify(&vault, &keys).ok);
        // Retention never removes the row the head names, even if it is old.
        vault
            .write_audit(Some(&keys), &[], by_age, NOW + 100 * 24 * 3600)
            .unwrap();
        assert_eq!(rows(&vault).len(), 1);
        let result = verify(&vault, &keys);
        assert!(result.ok, "{result:?}");
        assert_eq!((result.first_seq, result.last_seq), (Some(40), Some(40)));
        // And a row deleted just after the anchor is still found.
        write(&mut vault, Some(&keys), &[event(41), event(42)]);
        sql(&vault, "DELETE FROM audit WHERE seq = 41");
        assert_break(&verify(&vault, &keys), AuditBreak::Missing, Some(41));
    }

    #[test]
    fn a_verify_goes_on_across_pruning_and_new_rows_between_its_steps() {
        let (_dir, mut vault, keys) = log(50);
        let mut walk = VerifyWalk::default();
        assert!(matches!(
            vault.verify_audit_step(&keys, &mut walk, 10).unwrap(),
            VerifyStep::More
        ));
        let tight = Retention {
            max_age_secs: u64::MAX,
            max_rows: 20,
        };
        vault
            .write_audit(Some(&keys), &[event(60)], tight, NOW)
            .unwrap();
        let result = loop {
            match vault.verify_audit_step(&keys, &mut walk, 10).unwrap() {
                VerifyStep::More => {}
                VerifyStep::Done(result) => break result,
            }
        };
        assert!(result.ok, "{result:?}");
        assert_eq!((result.first_seq, result.last_seq), (Some(32), Some(51)));
    }

    #[test]
    fn rekey_rechains_under_the_new_key_and_keeps_a_break_it_found() {
        let (_dir, mut vault, old) = log(10);
        let mut login = event(11);
        login.sealed = Some("sub=alice".into());
        write(&mut vault, Some(&old), &[login]);
        let new = keys();
        vault
            .store
            .rekey(&[], &[], |tx| rechain(tx, &old, &new))
            .unwrap();
        let result = verify(&vault, &new);
        assert!(result.ok, "{result:?}");
        assert_eq!(result.checked, 11);
        assert_break(&verify(&vault, &old), AuditBreak::HeadCorrupt, None);
        let (rows, _, _) = vault
            .list_audit(&new, &AuditFilter::default(), 0, 100)
            .unwrap();
        assert_eq!(
            rows.last().unwrap().detail.as_deref(),
            Some("detail 11 sub=alice")
        );
        write(&mut vault, Some(&new), &[event(12)]);
        assert!(verify(&vault, &new).ok);

        // An edit made before a rekey is not laundered by it.
        sql(&vault, "UPDATE audit SET detail = 'x' WHERE seq = 3");
        let newer = keys();
        vault
            .store
            .rekey(&[], &[], |tx| rechain(tx, &new, &newer))
            .unwrap();
        let result = verify(&vault, &newer);
        assert_break(&result, AuditBreak::Edited, Some(3));
        assert!(result
            .problem
            .unwrap()
            .message
            .contains("when the vault was rekeyed"));
    }

    #[test]
    fn sealed_details_are_opened_for_the_list_only_in_their_own_row() {
        let (_dir, mut vault, keys) = log(2);
        let mut login = event(3);
        login.sealed = Some("sub=subject-canary".into());
        login.detail = None;
        let mut other = event(4);
        other.sealed = Some("sub=bob".into());
        write(&mut vault, Some(&keys), &[login, other]);
        let raw: Vec<u8> = {
            let stored = rows(&vault);
            format!("{stored:?}").into_bytes()
        };
        assert!(
            !raw.windows(14).any(|w| w == b"subject-canary"),
            "not in clear"
        );
        let (listed, _, _) = vault
            .list_audit(&keys, &AuditFilter::default(), 0, 100)
            .unwrap();
        assert_eq!(listed[2].detail.as_deref(), Some("sub=subject-canary"));
        assert_eq!(listed[3].detail.as_deref(), Some("detail 4 sub=bob"));
        // A blob moved to another row does not open there, and the chain says so.
        sql(&vault, "UPDATE audit SET sealed_detail = (SELECT sealed_detail FROM audit WHERE seq = 4) WHERE seq = 3");
        let (listed, _, _) = vault
            .list_audit(&keys, &AuditFilter::default(), 0, 100)
            .unwrap();
        assert_eq!(
            listed[2].detail.as_deref(),
            Some("(sealed detail failed its integrity check)")
        );
        assert_break(&verify(&vault, &keys), AuditBreak::Edited, Some(3));
    }

    #[test]
    fn the_list_filters_and_pages_with_its_cursor() {
        let (_dir, vault, keys) = log(30);
        let list = |filter: AuditFilter<'_>, after: i64, limit: usize| {
            vault.list_audit(&keys, &filter, after, limit).unwrap()
        };
        let (all, next, more) = list(AuditFilter::default(), 0, 100);
        assert_eq!((all.len(), next, more), (30, 30, false));
        assert!(all.iter().all(|r| r.chained && !r.chained_late));
        assert_eq!(all[4].app_key.as_deref(), Some("exe:/usr/bin/app0"));
        let seqs = |rows: &[AuditEntry]| rows.iter().map(|r| r.seq).collect::<Vec<_>>();
        // Pages of 7 through the cursor.
        let (mut seen, mut after) = (Vec::new(), 0);
        for _ in 0..10 {
            let (page, next, more) = list(AuditFilter::default(), after, 7);
            seen.extend(seqs(&page));
            after = next;
            if !more {
                break;
            }
        }
        assert_eq!(seen, (1..=30).collect::<Vec<_>>());
        let credential = AuditFilter {
            credential: Some("cred-1"),
            ..AuditFilter::default()
        };
        let (rows, _, _) = list(credential, 0, 100);
        assert!(!rows.is_empty());
        assert!(rows
            .iter()
            .all(|r| r.credential.as_deref() == Some("cred-1")));
        let by_key = list(
            AuditFilter {
                app: Some("exe:/usr/bin/app1"),
                ..AuditFilter::default()
            },
            0,
            100,
        )
        .0;
        let by_part = list(
            AuditFilter {
                app: Some("app1"),
                ..AuditFilter::default()
            },
            0,
            100,
        )
        .0;
        assert_eq!(by_key.len(), 15);
        assert_eq!(seqs(&by_key), seqs(&by_part));
        let since = list(
            AuditFilter {
                since: Some(NOW + 25),
                ..AuditFilter::default()
            },
            0,
            100,
        )
        .0;
        assert_eq!(seqs(&since), (26..=30).collect::<Vec<_>>());
        // Past the end: nothing, and the cursor stays.
        assert_eq!(list(AuditFilter::default(), 30, 10).1, 30);
    }

    #[test]
    fn a_page_looks_at_a_bounded_window_of_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let mut vault = vault(&dir);
        let keys = keys();
        // Window + 5 rows, only the last of which matches.
        let mut events: Vec<AuditEvent> = (0..LIST_WINDOW as usize + 5).map(event).collect();
        events.last_mut().unwrap().credential = Some("rare".into());
        vault
            .write_audit(None, &events, Retention::DEFAULT, NOW)
            .unwrap();
        let filter = AuditFilter {
            credential: Some("rare"),
            ..AuditFilter::default()
        };
        let (rows, next, more) = vault.list_audit(&keys, &filter, 0, 10).unwrap();
        assert_eq!((rows.len(), next, more), (0, LIST_WINDOW, true));
        let (rows, _, more) = vault.list_audit(&keys, &filter, next, 10).unwrap();
        assert_eq!((rows.len(), more), (1, false));
        assert!(!rows[0].chained, "written while locked, not chained yet");
    }

    #[test]
    fn rows_of_an_old_vault_are_chained_late_by_the_first_unlock() {
        let dir = tempfile::tempdir().unwrap();
        let vault = vault(&dir);
        vault
            .store
            .conn_for_tests()
            .execute(
                "INSERT INTO audit (at, event, detail) VALUES (?1, 'unlock', 'passphrase')",
                params![NOW],
            )
            .unwrap();
        let mut vault = vault;
        let keys = keys();
        write(&mut vault, Some(&keys), &[event(1)]);
        let stored = rows(&vault);
        assert!(stored[0].chained_late && stored[0].outcome.is_none());
        assert!(!stored[1].chained_late);
        let result = verify(&vault, &keys);
        assert!(result.ok, "{result:?}");
        assert_eq!((result.checked, result.chained_late), (2, 1));
    }
}
