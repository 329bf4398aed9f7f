//! What is stored about git routes: one sealed document per route
//! (protocol, host, path prefix, username → credential id), so a route
//! cannot be edited in the file to send a token to another host.

use super::crypto;
use super::store::SealedRow;
use super::{Keys, Result, Vault};
use serde::{Deserialize, Serialize};

/// A stored route. The credential is named by id (a renamed or removed
/// credential takes its routes with it: `ON DELETE CASCADE`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub id: String,
    pub protocol: String,
    pub host: String,
    pub path: Option<String>,
    pub username: Option<String>,
    pub credential_id: String,
    pub created_at: i64,
}

impl Route {
    /// A new route (a fresh id) made at `now`.
    pub fn new(
        protocol: String,
        host: String,
        path: Option<String>,
        username: Option<String>,
        credential_id: &str,
        now: i64,
    ) -> Route {
        Route {
            id: crypto::random_id(),
            protocol,
            host,
            path,
            username,
            credential_id: credential_id.to_owned(),
            created_at: now,
        }
    }
}

impl Vault {
    /// Reads the git routes. A document that fails its integrity check is
    /// left out and reported: a route that cannot be read answers nothing.
    pub fn load_git_routes(&self, keys: &Keys) -> Result<(Vec<Route>, Vec<String>)> {
        let mut routes = Vec::new();
        let mut problems = Vec::new();
        for row in self.store.git_routes()? {
            match keys.open_json::<Route>("git_routes", &row.id, "sealed", &row.sealed) {
                Ok(route) if route.id == row.id => routes.push(route),
                _ => problems.push(format!("git route {} failed its integrity check", row.id)),
            }
        }
        Ok((routes, problems))
    }

    /// Stores `route`, replacing the route `replaces` in the same transaction.
    pub fn put_git_route(
        &mut self,
        keys: &Keys,
        route: &Route,
        replaces: Option<&str>,
    ) -> Result<()> {
        let row = SealedRow {
            sealed: keys.seal_json("git_routes", &route.id, "sealed", route),
            id: route.id.clone(),
        };
        Ok(self
            .store
            .put_git_route(&row, &route.credential_id, replaces, route.created_at)?)
    }

    pub fn delete_git_route(&mut self, id: &str) -> Result<bool> {
        Ok(self.store.delete_git_route(id)?)
    }
}
