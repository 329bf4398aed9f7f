//! `latchkey git-credential get|store|erase`: a git credential helper
//! (gitcredentials(7)) that answers with the access token of the
//! credential a route names; `setup`, `routes` and `remove` manage the
//! routes and git's helper configuration (the way `gh auth setup-git`
//! writes it: an empty `helper` line first, so inherited helpers are not
//! asked, then ours).

use crate::args::ProofArgs;
use crate::context::Ctx;
use crate::{exit, output};
use anyhow::{bail, Context, Result};
use latchkey_client::protocol::{
    Empty, GitErase, GitGet, GitRequest, GitRouteAdd, GitRouteAddParams, GitRouteList,
    GitRouteRemove, GitRouteRemoveParams,
};
use secrecy::ExposeSecret;
use std::io::Read;
use std::process::Command as Process;
use zeroize::Zeroizing;

#[derive(clap::Subcommand)]
pub enum Command {
    /// git's `get`: read the request on stdin, print username and password (the access token)
    ///
    /// Prints nothing and exits 0 when no route matches, so git asks its
    /// next helper. Errors (a locked vault, a needed login) are printed on
    /// stderr.
    Get,
    /// git's `store`: does nothing (latchkey never stores what git sends)
    Store,
    /// git's `erase` (the server refused the token): the next `get` fetches a fresh one
    Erase,
    /// Route git requests for URL to a credential and configure git to ask latchkey
    ///
    /// URL is a host (`github.com`), or a URL with a path prefix and
    /// username (`https://alice@github.com/acme`). The most specific route
    /// answers: the longest path prefix, then one that names the username.
    /// Writes `credential.PROTOCOL://HOST.helper` to the global git config
    /// (an empty one first, then `!latchkey git-credential`), and
    /// `useHttpPath true` when the route has a path. Adding a route for a
    /// credential with access `ask` needs a proof that a person asks.
    Setup(SetupArgs),
    /// List the routes
    Routes(RoutesArgs),
    /// Remove a route (and git's helper config for its host when it was the last)
    Remove(RemoveArgs),
}

#[derive(clap::Args)]
pub struct SetupArgs {
    /// Host or URL: `github.com`, `https://github.com/acme`, `https://alice@github.com`
    url: String,
    /// The credential whose access token answers
    #[arg(long)]
    credential: String,
    /// Only for this username (also the username answered)
    #[arg(long)]
    username: Option<String>,
    /// Add the route only; leave git's configuration alone
    #[arg(long)]
    no_config: bool,
    #[command(flatten)]
    proof: ProofArgs,
}

#[derive(clap::Args)]
pub struct RoutesArgs {
    /// Print JSON
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct RemoveArgs {
    /// The route's host or URL as given to `setup`, or its id
    url: String,
    /// The route's username
    #[arg(long)]
    username: Option<String>,
    /// Leave git's configuration alone
    #[arg(long)]
    no_config: bool,
}

pub fn run(ctx: &Ctx, command: Command) -> Result<()> {
    match command {
        Command::Get => get(ctx),
        Command::Store => {
            // Read what git sends (so it never meets a closed pipe), keep nothing.
            let _ = read_request()?;
            Ok(())
        }
        Command::Erase => {
            let request = read_request()?;
            let Some(request) = request else {
                return Ok(());
            };
            let mut conn = ctx.connect()?;
            conn.call::<GitErase>(&request)
                .context("failed to drop the cached token for git")?;
            Ok(())
        }
        Command::Setup(args) => setup(ctx, args),
        Command::Routes(args) => routes(ctx, args),
        Command::Remove(args) => remove(ctx, args),
    }
}

fn get(ctx: &Ctx) -> Result<()> {
    let Some(request) = read_request()? else {
        return Ok(());
    };
    let (mut conn, first) = ctx.connect_with::<GitGet>(&request)?;
    let answer = conn
        .retry_if_locked::<GitGet>(&request, first)
        .with_context(|| {
            format!(
                "failed to get a token for git ({}://{})",
                request.protocol, request.host
            )
        })?;
    let (Some(token), Some(username)) = (answer.token, answer.username) else {
        // No route: git asks its next helper.
        return Ok(());
    };
    let mut head = format!("username={username}\n");
    if let Some(at) = token.expires_at {
        head = format!("{head}password_expiry_utc={at}\n");
    }
    output::write_parts(&[
        head.as_bytes(),
        b"password=",
        token.access_token.expose_secret().as_bytes(),
        b"\n",
    ])
}

/// 64 KiB: git's requests are a few lines; `wwwauth[]` headers are the
/// longest part.
const MAX_REQUEST: u64 = 64 * 1024;

/// Reads git's request from stdin: `key=value` lines until a blank line
/// or the end. `None` when it has no protocol or host (nothing to answer).
fn read_request() -> Result<Option<GitRequest>> {
    let mut input = Zeroizing::new(Vec::new());
    std::io::stdin()
        .lock()
        .take(MAX_REQUEST)
        .read_to_end(&mut input)
        .context("failed to read git's request on stdin")?;
    Ok(parse_request(&input))
}

/// gitcredentials(7): one `key=value` per line, up to a blank line; keys
/// ending in `[]` may repeat (`capability[]`, `wwwauth[]`); unknown keys
/// are ignored, and so is `password` (what git would store or erase).
fn parse_request(input: &[u8]) -> Option<GitRequest> {
    let text = String::from_utf8_lossy(input);
    let mut request = GitRequest::default();
    for line in text.lines() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() {
            break;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        match key {
            "protocol" => request.protocol = value.to_owned(),
            "host" => request.host = value.to_owned(),
            "path" => request.path = Some(value.to_owned()),
            "username" => request.username = Some(value.to_owned()),
            _ => {}
        }
    }
    (!request.protocol.is_empty() && !request.host.is_empty()).then_some(request)
}

/// A route's place as given on the command line.
#[derive(Debug, PartialEq, Eq)]
struct Place {
    protocol: String,
    host: String,
    path: Option<String>,
    username: Option<String>,
}

/// `github.com`, `https://github.com/acme`, `https://alice@host:8443/a/b.git`.
fn parse_place(url: &str) -> Result<Place> {
    let (protocol, rest) = match url.split_once("://") {
        Some((p, rest)) => (p.to_ascii_lowercase(), rest),
        None => ("https".to_owned(), url),
    };
    let (authority, path) = match rest.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (rest, None),
    };
    let (username, host) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u.to_owned()), h),
        None => (None, authority),
    };
    if host.is_empty() {
        return Err(exit::usage(format!(
            "'{url}' names no host: give a host like github.com or a URL like https://github.com/acme"
        )));
    }
    let path = path
        .map(|p| p.trim_matches('/').to_owned())
        .filter(|p| !p.is_empty());
    Ok(Place {
        protocol,
        host: host.to_ascii_lowercase(),
        path,
        username,
    })
}

fn setup(ctx: &Ctx, args: SetupArgs) -> Result<()> {
    let place = parse_place(&args.url)?;
    let username = args.username.clone().or(place.username.clone());
    let mut conn = ctx.connect()?;
    let mut params = GitRouteAddParams {
        protocol: Some(place.protocol.clone()),
        host: place.host.clone(),
        path: place.path.clone(),
        username,
        credential: args.credential.clone(),
        proof: None,
    };
    let first = conn.call::<GitRouteAdd>(&params);
    let route = match first {
        Err(e) if is_kind(&e, latchkey_client::ErrorKind::Forbidden) => {
            params.proof = Some(args.proof.proof("to route git to a credential")?);
            conn.call::<GitRouteAdd>(&params)?
        }
        other => other?,
    };
    if !args.no_config {
        let key = format!("credential.{}://{}", route.protocol, route.host);
        let exe = std::env::current_exe().context("failed to find the latchkey executable")?;
        let helper = format!("!{} git-credential", shell_quote(&exe.to_string_lossy()));
        git_config(&["--replace-all", &format!("{key}.helper"), ""])?;
        git_config(&["--add", &format!("{key}.helper"), &helper])?;
        if route.path.is_some() {
            git_config(&[&format!("{key}.useHttpPath"), "true"])?;
        }
    }
    let mut text = format!(
        "git requests for {}://{}{}{} now get tokens of '{}'\n",
        route.protocol,
        route
            .username
            .as_ref()
            .map_or(String::new(), |u| format!("{u}@")),
        route.host,
        route
            .path
            .as_ref()
            .map_or(String::new(), |p| format!("/{p}")),
        route.credential
    );
    if args.no_config {
        text.push_str("git's configuration was left alone (--no-config)\n");
    }
    output::print(&text)
}

fn routes(ctx: &Ctx, args: RoutesArgs) -> Result<()> {
    let mut conn = ctx.connect()?;
    let routes = conn.call::<GitRouteList>(&Empty {})?;
    if args.json {
        return output::print_json(&routes);
    }
    if routes.is_empty() {
        return output::print(
            "no git routes: `latchkey git-credential setup HOST --credential NAME` adds one\n",
        );
    }
    let rows: Vec<Vec<String>> = routes
        .iter()
        .map(|r| {
            vec![
                r.id.clone(),
                format!("{}://{}", r.protocol, r.host),
                r.path.clone().unwrap_or_else(|| "*".into()),
                r.username.clone().unwrap_or_else(|| "*".into()),
                r.credential.clone(),
            ]
        })
        .collect();
    output::print(&output::table(
        &["ID", "HOST", "PATH", "USERNAME", "CREDENTIAL"],
        &rows,
    ))
}

fn remove(ctx: &Ctx, args: RemoveArgs) -> Result<()> {
    let is_id = args.url.len() == 32 && args.url.bytes().all(|b| b.is_ascii_hexdigit());
    let params = if is_id {
        GitRouteRemoveParams {
            id: Some(args.url.clone()),
            ..Default::default()
        }
    } else {
        let place = parse_place(&args.url)?;
        GitRouteRemoveParams {
            id: None,
            protocol: Some(place.protocol),
            host: Some(place.host),
            path: place.path,
            username: args.username.clone().or(place.username),
        }
    };
    let mut conn = ctx.connect()?;
    let result = conn.call::<GitRouteRemove>(&params)?;
    let Some(route) = result.removed else {
        return Ok(());
    };
    if result.left_for_host == 0 && !args.no_config {
        let key = format!("credential.{}://{}", route.protocol, route.host);
        // Exit code 5: the key was not set; nothing to undo.
        git_config_allow_unset(&["--unset-all", &format!("{key}.helper")])?;
        git_config_allow_unset(&["--unset-all", &format!("{key}.useHttpPath")])?;
    }
    output::print(&format!("removed the git route {}\n", route.id))
}

fn is_kind(err: &anyhow::Error, kind: latchkey_client::ErrorKind) -> bool {
    matches!(err.downcast_ref::<latchkey_client::Error>(), Some(latchkey_client::Error::Daemon { kind: k, .. }) if *k == kind)
}

/// Runs `git config --global ARGS…` (no secret is ever among them).
fn git_config(args: &[&str]) -> Result<()> {
    let status = git_config_status(args)?;
    if !status.success() {
        bail!("`git config --global {}` failed ({status})", args.join(" "));
    }
    Ok(())
}

fn git_config_allow_unset(args: &[&str]) -> Result<()> {
    let status = git_config_status(args)?;
    if !status.success() && status.code() != Some(5) {
        bail!("`git config --global {}` failed ({status})", args.join(" "));
    }
    Ok(())
}

fn git_config_status(args: &[&str]) -> Result<std::process::ExitStatus> {
    Process::new("git")
        .args(["config", "--global"])
        .args(args)
        .status()
        .context("failed to run `git config` (is git installed?); --no-config adds the route only")
}

/// Quotes `s` for the shell git runs a `!helper` with.
fn shell_quote(s: &str) -> String {
    if s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"/._-+".contains(&b))
    {
        return s.to_owned();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_read_as_git_writes_them() {
        let input = b"capability[]=authtype\ncapability[]=state\nprotocol=https\nhost=git.example:8443\npath=acme/w.git\nusername=bob\npassword=old\nwwwauth[]=Basic realm=\"x\"\nfuture_key=1\nnonsense\n\nhost=after-the-blank-line\n";
        let r = parse_request(input).unwrap();
        assert_eq!(r.protocol, "https");
        assert_eq!(r.host, "git.example:8443");
        assert_eq!(r.path.as_deref(), Some("acme/w.git"));
        assert_eq!(r.username.as_deref(), Some("bob"));
        assert!(parse_request(b"protocol=https\n").is_none());
        assert!(parse_request(b"").is_none());
        assert!(parse_request(b"protocol=https\r\nhost=h\r\n").is_some_and(|r| r.host == "h"));
    }

    #[test]
    fn places_are_hosts_or_urls() {
        let p = parse_place("https://alice@Git.Example:8443/acme/w.git/").unwrap();
        assert_eq!(
            p,
            Place {
                protocol: "https".into(),
                host: "git.example:8443".into(),
                path: Some("acme/w.git".into()),
                username: Some("alice".into()),
            }
        );
        let bare = parse_place("github.com").unwrap();
        assert_eq!((bare.protocol.as_str(), bare.path), ("https", None));
        assert!(parse_place("https:///x").is_err());
        assert_eq!(shell_quote("/usr/bin/latchkey"), "/usr/bin/latchkey");
        assert_eq!(shell_quote("/a b/it's"), r"'/a b/it'\''s'");
    }
}
