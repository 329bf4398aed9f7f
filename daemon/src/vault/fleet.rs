//! A fleet of daemons sharing one PostgreSQL vault: one refresher per
//! credential at a time.
//!
//! A daemon about to refresh a credential takes the fleet's lock on it
//! ([`Fleet::lock`]): a transaction on a pooled connection holding the
//! credential's advisory lock, which the database releases at commit,
//! rollback, or when the holder's connection dies (a killed daemon). Under
//! it the daemon re-reads the grant and the token (a sibling may have just
//! refreshed: then there is nothing to ask the provider), refreshes with
//! the newest refresh token, and commits the rotated refresh token and the
//! access token in that same transaction, with a notification that tells
//! the siblings to re-read instead of calling the provider.

use super::store::postgres::{Pool, CHANNEL};
use super::store::{PgTarget, Store, StoreError};
use super::{Grant, Keys, Result, Token, TokenKey, Vault};
use latchkey_client::protocol::CredentialState;
use std::sync::Arc;
use std::time::Duration;

/// The longest a daemon waits for a sibling's refresh of the same
/// credential: longer than a provider request may take (its timeouts),
/// short enough that a stuck database connection is an error, not a hang.
pub const LOCK_WAIT: Duration = Duration::from_secs(90);

/// What a notification on [`CHANNEL`] says: `grant:<credential id>` (a
/// refresh or login committed), `catalog` (providers, credentials or rules
/// changed), `panic` (revoke everything, drop caches), `rekey`.
/// Each is sent as `<what>@<origin>`, the sending daemon's random id, so
/// that a daemon skips its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Grant(String),
    Catalog,
    Panic,
    /// A new data key (`rekey`): the others' keys open nothing any more.
    Rekey,
}

impl Change {
    /// The change, and the id of the daemon that made it.
    pub fn parse(payload: &str) -> Option<(Change, &str)> {
        let (what, origin) = payload.rsplit_once('@')?;
        let change = match what.split_once(':') {
            Some(("grant", id)) if !id.is_empty() => Change::Grant(id.to_owned()),
            None if what == "catalog" => Change::Catalog,
            None if what == "panic" => Change::Panic,
            None if what == "rekey" => Change::Rekey,
            _ => return None,
        };
        Some((change, origin))
    }

    fn payload(&self, origin: &str) -> String {
        match self {
            Change::Grant(id) => format!("grant:{id}@{origin}"),
            Change::Catalog => format!("catalog@{origin}"),
            Change::Panic => format!("panic@{origin}"),
            Change::Rekey => format!("rekey@{origin}"),
        }
    }
}

/// The shared vault's connections for fleet locks, and its notifications.
pub struct Fleet {
    pool: Pool,
    /// This daemon's random id in the notifications it sends.
    origin: String,
}

impl Fleet {
    pub fn new(target: Arc<PgTarget>) -> Fleet {
        Fleet {
            pool: Pool::new(target),
            origin: super::crypto::random_id(),
        }
    }

    /// Blocks until this daemon holds the fleet's lock on `credential_id`
    /// (at most [`LOCK_WAIT`]). Call on a blocking thread.
    pub fn lock(self: &Arc<Fleet>, credential_id: &str) -> Result<FleetLock> {
        let store = Store::over(self.pool.take());
        if let Err(e) = store.begin_fleet_lock(credential_id, LOCK_WAIT) {
            if let Some(pg) = store.into_pg() {
                self.pool.give(pg);
            }
            return Err(match e {
                // lock_not_available: the lock timeout ran out.
                StoreError::Postgres { database, message } if message.contains("55P03") => {
                    StoreError::Postgres {
                        database,
                        message: format!(
                            "another daemon of the fleet has been refreshing this credential for {} s and has not finished",
                            LOCK_WAIT.as_secs()
                        ),
                    }
                }
                e => e,
            }
            .into());
        }
        Ok(FleetLock {
            vault: Some(Vault { store }),
            fleet: Arc::clone(self),
            credential_id: credential_id.to_owned(),
        })
    }

    /// Tells the siblings, outside any transaction, that `change` happened.
    pub fn tell(&self, change: &Change) -> Result<()> {
        let store = Store::over(self.pool.take());
        let told = store.notify(&change.payload(&self.origin));
        if let Some(pg) = store.into_pg() {
            self.pool.give(pg);
        }
        Ok(told?)
    }

    /// Listens for the siblings' changes on a thread of its own; each one
    /// goes to `deliver` (which returns false once nobody listens). After
    /// the connection was lost, `Change::Catalog` and a `Grant` of every
    /// credential cannot be known: `resync` is called instead.
    pub fn listen(
        &self,
        deliver: impl FnMut(Change) -> bool + Send + 'static,
        resync: impl FnMut() -> bool + Send + 'static,
    ) {
        let mut deliver = deliver;
        let origin = self.origin.clone();
        super::store::postgres::listen(
            Arc::clone(self.pool.target()),
            CHANNEL,
            Duration::from_secs(1),
            move |payload| match Change::parse(&payload) {
                Some((_, from)) if from == origin => true,
                Some((change, _)) => deliver(change),
                None => true,
            },
            resync,
        );
    }
}

/// This daemon is the fleet's one refresher of a credential while this
/// lives; dropped uncommitted, it rolls back (and the lock goes).
pub struct FleetLock {
    vault: Option<Vault>,
    fleet: Arc<Fleet>,
    credential_id: String,
}

impl FleetLock {
    fn vault(&mut self) -> &mut Vault {
        self.vault
            .as_mut()
            .expect("a fleet lock holds its vault until it ends")
    }

    /// The credential's grant as the fleet last committed it.
    pub fn grant(&mut self, keys: &Keys) -> Result<Option<Grant>> {
        let id = self.credential_id.clone();
        self.vault().load_grant_of(keys, &id)
    }

    /// The credential's stored token for `scope_key`, as the fleet last
    /// committed it (`None` also when it fails its checks).
    pub fn token(&mut self, keys: &Keys, scope_key: &str) -> Result<Option<Token>> {
        let id = self.credential_id.clone();
        let (tokens, _) = self.vault().load_tokens_of(keys, &id)?;
        Ok(tokens
            .into_iter()
            .find(|((_, scopes), _)| scopes == scope_key)
            .map(|(_, t)| t))
    }

    /// Commits the refresh (grant and token, as [`Vault::commit_grant`])
    /// with the notification, and lets the lock go.
    pub fn commit(
        mut self,
        keys: &Keys,
        grant: Option<&Grant>,
        token: Option<(&TokenKey, &Token)>,
        state: CredentialState,
    ) -> Result<()> {
        let id = self.credential_id.clone();
        let payload = Change::Grant(id.clone()).payload(&self.fleet.origin);
        let vault = self.vault();
        vault.commit_grant(keys, &id, grant, token, state)?;
        vault.store.notify(&payload)?;
        let vault = self.vault.take().expect("not ended yet");
        let committed = vault.store.end_fleet_lock(true);
        if let Some(pg) = vault.store.into_pg() {
            self.fleet.pool.give(pg);
        }
        Ok(committed?)
    }
}

impl Drop for FleetLock {
    fn drop(&mut self) {
        if let Some(vault) = self.vault.take() {
            let _ = vault.store.end_fleet_lock(false);
            if let Some(pg) = vault.store.into_pg() {
                self.fleet.pool.give(pg);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_round_trip_with_their_origin() {
        for change in [
            Change::Grant("ab12".into()),
            Change::Catalog,
            Change::Panic,
            Change::Rekey,
        ] {
            let payload = change.payload("me");
            assert_eq!(Change::parse(&payload), Some((change, "me")));
        }
        assert_eq!(Change::parse("grant:@me"), None);
        assert_eq!(Change::parse("nonsense@me"), None);
        assert_eq!(Change::parse("catalog"), None);
    }
}
