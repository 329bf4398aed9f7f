//! The git credential helper's verbs: routes (`git.route_add`,
//! `git.route_list`, `git.route_remove`) from what git asks about —
//! protocol, host, path prefix, username — to a credential, and git's
//! `get` and `erase` (`git.get`, `git.erase`). `git.get` is `token.get`
//! for the most specific route's credential (policy, approvals, step-up
//! and audit are the token path's own); `git.erase` drops the cached
//! access token so the next `get` fetches a fresh one.

use crate::error::ApiError;
use crate::handler::Handler;
use crate::state::{Daemon, Peer, Session};
use crate::vault::git::Route;
use latchkey_client::protocol::*;
use secrecy::{ExposeSecret, SecretString};
use std::borrow::Borrow;
use std::sync::Arc;

/// 60 s: a token handed to git stays valid at least this long (a clone
/// makes several requests with it), unless the provider's live shorter.
const GIT_MIN_TTL_SECS: u64 = 60;
/// The username answered when neither the route nor git names one:
/// GitLab wants `oauth2` with an OAuth token, GitHub takes any.
pub const DEFAULT_USERNAME: &str = "oauth2";
/// The longest host, path or username a route holds (DNS names are at
/// most 253 bytes; repository paths are short).
const MAX_FIELD_LEN: usize = 256;

impl Handler for GitRouteAdd {
    type Reply = GitRoute;

    async fn handle(
        daemon: &Arc<Daemon>,
        peer: Peer,
        params: GitRouteAddParams,
    ) -> Result<GitRoute, ApiError> {
        let session = daemon.session()?;
        let protocol = protocol(params.protocol.as_deref())?;
        let host = host(&params.host)?;
        if protocol == "http" && !is_loopback(&host) {
            return Err(ApiError::invalid_params(format!(
                "plain http sends the token readable on the way: use https for '{host}' (http only for 127.0.0.1, ::1 or localhost)"
            )));
        }
        let path = params
            .path
            .as_deref()
            .map(route_path)
            .transpose()?
            .flatten();
        let username = params.username.as_deref().map(username).transpose()?;
        let (credential, _) = session.lookup(&params.credential)?;
        // A route decides where an allowed git sends an `ask` credential's
        // token: a same-user program must not add one for a host of its own.
        if credential.config.access == Access::Ask {
            daemon
                .prove(params.proof.as_ref(), &peer, "routing git to a credential")
                .await?;
        }
        let route = Route::new(
            protocol,
            host,
            path,
            username,
            &credential.id,
            daemon.clock.now(),
        );
        let (routes, _) = load(&session).await?;
        let replaces = routes
            .iter()
            .find(|r| same_key(r, &route))
            .map(|r| r.id.clone());
        let stored = route.clone();
        session
            .with_vault(move |keys, vault| vault.put_git_route(keys, &stored, replaces.as_deref()))
            .await?;
        daemon.audit.record(
            "git_route_added",
            Some(&params.credential),
            Some(&peer),
            Some(describe(&route)),
        );
        Ok(to_protocol(&route, params.credential))
    }
}

impl Handler for GitRouteList {
    type Reply = Vec<GitRoute>;

    async fn handle(daemon: &Arc<Daemon>, _: Peer, _: Empty) -> Result<Vec<GitRoute>, ApiError> {
        let session = daemon.session()?;
        let (routes, names) = load(&session).await?;
        Ok(routes
            .iter()
            .filter_map(|r| Some(to_protocol(r, names(&r.credential_id)?)))
            .collect())
    }
}

impl Handler for GitRouteRemove {
    type Reply = GitRouteRemoveResult;

    async fn handle(
        daemon: &Arc<Daemon>,
        peer: Peer,
        params: GitRouteRemoveParams,
    ) -> Result<GitRouteRemoveResult, ApiError> {
        let session = daemon.session()?;
        let (routes, names) = load(&session).await?;
        let found = match (&params.id, &params.host) {
            (Some(id), None) => routes.iter().find(|r| &r.id == id),
            (None, Some(h)) => {
                let key = Route::new(
                    protocol(params.protocol.as_deref())?,
                    host(h)?,
                    params.path.as_deref().map(route_path).transpose()?.flatten(),
                    params.username.as_deref().map(username).transpose()?,
                    "",
                    0,
                );
                routes.iter().find(|r| same_key(r, &key))
            }
            _ => {
                return Err(ApiError::invalid_params(
                    "name the route by its id or by its host (with its path and username): see `latchkey git-credential routes`",
                ))
            }
        };
        let Some(found) = found.cloned() else {
            return Err(ApiError::new(
                ErrorKind::NotFound,
                "no such git route: `latchkey git-credential routes` lists them",
            ));
        };
        let id = found.id.clone();
        session
            .with_vault(move |_, vault| vault.delete_git_route(&id))
            .await?;
        let left = routes
            .iter()
            .filter(|r| r.id != found.id && r.protocol == found.protocol && r.host == found.host)
            .count();
        let name = names(&found.credential_id).unwrap_or_default();
        daemon.audit.record(
            "git_route_removed",
            Some(&name),
            Some(&peer),
            Some(describe(&found)),
        );
        Ok(GitRouteRemoveResult {
            removed: Some(to_protocol(&found, name)),
            left_for_host: u32::try_from(left).unwrap_or(u32::MAX),
        })
    }
}

/// git's `get`: the most specific route's credential, then the token path
/// of `token.get` (the caller's policy, approvals and step-up apply).
impl Handler for GitGet {
    type Reply = GitGetResult;

    async fn handle(
        daemon: &Arc<Daemon>,
        peer: Peer,
        params: GitRequest,
    ) -> Result<GitGetResult, ApiError> {
        let session = daemon.session()?;
        let Some((route, name)) = find(&session, &params).await? else {
            return Ok(GitGetResult::default());
        };
        let token_params = TokenParams {
            credential: name.clone(),
            scopes: None,
            min_ttl: Some(GIT_MIN_TTL_SECS),
            confirm_wait_secs: None,
        };
        let served = <TokenGet as Handler>::handle(daemon, peer, token_params).await?;
        let reply: &TokenReply = served.borrow();
        let token = TokenReply {
            access_token: SecretString::from(reply.access_token.expose_secret()),
            token_type: reply.token_type.clone(),
            expires_at: reply.expires_at,
            scope: reply.scope.clone(),
        };
        let username = route
            .username
            .clone()
            .or_else(|| params.username.clone().filter(|u| !u.is_empty()))
            .unwrap_or_else(|| DEFAULT_USERNAME.to_owned());
        Ok(GitGetResult {
            route: Some(to_protocol(&route, name)),
            username: Some(username),
            token: Some(token),
        })
    }
}

/// git's `erase` (the server refused what `get` gave): the route's cached
/// access token is dropped, so the next `get` refreshes. The refresh
/// token stays.
impl Handler for GitErase {
    type Reply = GitEraseResult;

    async fn handle(
        daemon: &Arc<Daemon>,
        peer: Peer,
        params: GitRequest,
    ) -> Result<GitEraseResult, ApiError> {
        let session = daemon.session()?;
        let Some((route, name)) = find(&session, &params).await? else {
            return Ok(GitEraseResult::default());
        };
        session.tokens.forget(&route.credential_id);
        daemon.audit.record(
            "git_token_dropped",
            Some(&name),
            Some(&peer),
            Some(describe(&route)),
        );
        Ok(GitEraseResult {
            credential: Some(name),
        })
    }
}

/// The stored routes, and a lookup from credential id to name (routes of
/// a credential that is gone or corrupt have none).
async fn load(
    session: &Session,
) -> Result<(Vec<Route>, impl Fn(&str) -> Option<String>), ApiError> {
    let (routes, problems) = session
        .with_vault(|keys, vault| vault.load_git_routes(keys))
        .await?;
    for p in problems {
        tracing::warn!("{p}; it answers nothing");
    }
    let names: std::collections::HashMap<String, String> = session
        .catalog()
        .credentials
        .values()
        .filter(|c| !c.corrupt)
        .map(|c| (c.id.clone(), c.config.name.clone()))
        .collect();
    Ok((routes, move |id: &str| names.get(id).cloned()))
}

/// The route that answers `request`, and its credential's name.
async fn find(
    session: &Session,
    request: &GitRequest,
) -> Result<Option<(Route, String)>, ApiError> {
    let (routes, names) = load(session).await?;
    let Some(route) = best(&routes, request) else {
        return Ok(None);
    };
    Ok(names(&route.credential_id).map(|n| (route.clone(), n)))
}

/// The most specific route matching `request`: the longest path prefix
/// (in whole segments), then one naming the username over one that does
/// not. Two routes never tie: the same key replaces.
fn best<'a>(routes: &'a [Route], request: &GitRequest) -> Option<&'a Route> {
    let protocol = request.protocol.to_ascii_lowercase();
    let host = request.host.to_ascii_lowercase();
    let path = request.path.as_deref().map(normal_path).unwrap_or_default();
    let user = request.username.as_deref().filter(|u| !u.is_empty());
    routes
        .iter()
        .filter(|r| r.protocol == protocol && r.host == host)
        .filter(|r| r.username.is_none() || r.username.as_deref() == user)
        .filter(|r| match &r.path {
            None => true,
            Some(prefix) => {
                path == *prefix
                    || (path.starts_with(prefix.as_str())
                        && path.as_bytes().get(prefix.len()) == Some(&b'/'))
            }
        })
        .max_by_key(|r| {
            let segments = r.path.as_deref().map_or(0, |p| p.split('/').count());
            (segments, r.username.is_some())
        })
}

fn same_key(a: &Route, b: &Route) -> bool {
    (&a.protocol, &a.host, &a.path, &a.username) == (&b.protocol, &b.host, &b.path, &b.username)
}

/// `protocol://host/path` of a route, for the audit log (the username is
/// an account: left out).
fn describe(r: &Route) -> String {
    match &r.path {
        Some(p) => format!("{}://{}/{p}", r.protocol, r.host),
        None => format!("{}://{}", r.protocol, r.host),
    }
}

fn to_protocol(r: &Route, credential: String) -> GitRoute {
    GitRoute {
        id: r.id.clone(),
        protocol: r.protocol.clone(),
        host: r.host.clone(),
        path: r.path.clone(),
        username: r.username.clone(),
        credential,
        created_at: r.created_at,
    }
}

fn protocol(p: Option<&str>) -> Result<String, ApiError> {
    match p.map(str::to_ascii_lowercase).as_deref() {
        None | Some("https") => Ok("https".into()),
        Some("http") => Ok("http".into()),
        Some(_) => Err(ApiError::invalid_params(
            "a git route's protocol is https (or http for a loopback host)",
        )),
    }
}

fn plain(what: &str, value: &str, extra_bad: &[char]) -> Result<(), ApiError> {
    if value.is_empty()
        || value.len() > MAX_FIELD_LEN
        || value
            .chars()
            .any(|c| c.is_control() || c.is_whitespace() || extra_bad.contains(&c))
    {
        let bad: String = extra_bad.iter().map(|c| format!(" '{c}'")).collect();
        return Err(ApiError::invalid_params(format!(
            "a git route's {what} must be 1 to {MAX_FIELD_LEN} characters, no spaces, controls or{bad}"
        )));
    }
    Ok(())
}

fn host(h: &str) -> Result<String, ApiError> {
    plain("host", h, &['/', '@', '?', '#'])?;
    Ok(h.to_ascii_lowercase())
}

fn username(u: &str) -> Result<String, ApiError> {
    plain("username", u, &['/', '@', ':'])?;
    Ok(u.to_owned())
}

/// A route's path prefix: whole segments, no `.` or `..`; `None` when it
/// is empty (every path).
fn route_path(p: &str) -> Result<Option<String>, ApiError> {
    let p = normal_path(p);
    if p.is_empty() {
        return Ok(None);
    }
    plain("path", &p, &['?', '#', '\\'])?;
    if p.split('/').any(|s| s.is_empty() || s == "." || s == "..") {
        return Err(ApiError::invalid_params(
            "a git route's path is whole segments like 'acme' or 'acme/widgets' (no empty, '.' or '..' segments)",
        ));
    }
    Ok(Some(p))
}

/// A path as routes compare it: no leading or trailing `/`, no trailing
/// `.git` (`acme/widgets.git` is the repository `acme/widgets`).
fn normal_path(p: &str) -> String {
    let p = p.trim_matches('/');
    let p = p.strip_suffix(".git").unwrap_or(p);
    p.trim_end_matches('/').to_owned()
}

fn is_loopback(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    name == "localhost"
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(path: Option<&str>, user: Option<&str>, cred: &str) -> Route {
        Route::new(
            "https".into(),
            "git.example".into(),
            path.map(String::from),
            user.map(String::from),
            cred,
            0,
        )
    }

    fn ask(path: Option<&str>, user: Option<&str>) -> GitRequest {
        GitRequest {
            protocol: "https".into(),
            host: "Git.Example".into(),
            path: path.map(String::from),
            username: user.map(String::from),
        }
    }

    #[test]
    fn the_most_specific_route_answers() {
        let routes = [
            route(None, None, "host"),
            route(Some("acme"), None, "acme"),
            route(Some("acme/widgets"), None, "widgets"),
            route(None, Some("bob"), "bob"),
            route(Some("acme"), Some("bob"), "acme-bob"),
        ];
        let cred = |p, u| best(&routes, &ask(p, u)).map(|r| r.credential_id.as_str());
        assert_eq!(cred(None, None), Some("host"));
        assert_eq!(cred(Some("other/x.git"), None), Some("host"));
        assert_eq!(cred(Some("acme/gadgets.git"), None), Some("acme"));
        assert_eq!(cred(Some("acme/widgets.git"), None), Some("widgets"));
        assert_eq!(cred(Some("/acme/widgets/"), None), Some("widgets"));
        // A prefix is whole segments.
        assert_eq!(cred(Some("acmeco/x.git"), None), Some("host"));
        assert_eq!(cred(Some("other/x.git"), Some("bob")), Some("bob"));
        assert_eq!(cred(Some("acme/x.git"), Some("bob")), Some("acme-bob"));
        assert_eq!(cred(Some("acme/widgets.git"), Some("bob")), Some("widgets"));
        assert_eq!(cred(Some("acme/x.git"), Some("carol")), Some("acme"));
        let mut other = ask(None, None);
        other.protocol = "http".into();
        assert_eq!(best(&routes, &other), None);
        other = ask(None, None);
        other.host = "git.example:8443".into();
        assert_eq!(best(&routes, &other), None);
    }

    #[test]
    fn route_fields_are_checked() {
        assert_eq!(
            route_path("/acme/widgets.git/").unwrap().as_deref(),
            Some("acme/widgets")
        );
        assert_eq!(route_path("/").unwrap(), None);
        assert!(route_path("a//b").is_err());
        assert!(route_path("a/../b").is_err());
        assert!(host("evil.example/x").is_err());
        assert!(host("a b").is_err());
        assert_eq!(host("GitHub.com").unwrap(), "github.com");
        assert!(username("a:b").is_err());
        assert!(protocol(Some("ssh")).is_err());
        assert!(is_loopback("127.0.0.1:8080"));
        assert!(is_loopback("[::1]:8080"));
        assert!(is_loopback("localhost"));
        assert!(!is_loopback("example.com:80"));
    }
}
