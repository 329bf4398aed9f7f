//! `latchkey proxy NAME --upstream URL [--listen ADDR]`: an authenticating
//! proxy run by the daemon. Apps send plain requests to the local address;
//! the daemon adds the credential's authorization and forwards them to the
//! upstream only. Runs in the foreground: the proxy stops when this ends
//! (Ctrl-C), since the daemon ends it when this connection closes.

use crate::args::{parse_scope_arg, split_scopes};
use crate::context::Ctx;
use crate::output;
use anyhow::{bail, Context, Result};
use latchkey_client::duration;
use latchkey_client::protocol::{
    ProxyLimits, ProxyStart, ProxyStartParams, ProxyWait, ProxyWaitParams,
};
use std::time::Duration;

/// How long `proxy.wait` may block: as good as forever (until Ctrl-C).
const FOREVER: Duration = Duration::from_secs(10 * 365 * 86400);

#[derive(clap::Args)]
pub struct Args {
    /// The credential's name
    name: String,
    /// The one upstream requests go to: `https://HOST[:PORT][/BASE]` (plain http only for a loopback host)
    #[arg(long, value_name = "URL")]
    upstream: String,
    /// Where apps connect: `127.0.0.1:PORT`, `[::1]:PORT` or `localhost:PORT` (port 0: any free one), or a Unix socket path in a directory only you can enter
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
    listen: String,
    /// Ask for a subset of the credential's scopes; repeat the flag or separate scopes with spaces
    #[arg(long = "scope", value_name = "S", value_parser = parse_scope_arg)]
    scopes: Vec<String>,
    /// Largest request body forwarded: bytes, or with K, M or G (KiB, MiB, GiB); default 16M
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    max_request_size: Option<u64>,
    /// Largest response body passed back (as --max-request-size); default 64M
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    max_response_size: Option<u64>,
    /// How long one forwarded request may take, its response included: 30s, 5m, 1h; default 5m
    #[arg(long, value_name = "DURATION", value_parser = duration::parse_whole_secs)]
    timeout: Option<Duration>,
    /// App connections served at once; default 64
    #[arg(long, value_name = "N")]
    max_connections: Option<u32>,
}

pub fn run(ctx: &Ctx, args: Args) -> Result<()> {
    let scopes = split_scopes(&args.scopes);
    let params = ProxyStartParams {
        credential: args.name.clone(),
        upstream: args.upstream.clone(),
        listen: args.listen.clone(),
        scopes: (!scopes.is_empty()).then_some(scopes),
        limits: ProxyLimits {
            max_request_bytes: args.max_request_size,
            max_response_bytes: args.max_response_size,
            timeout_secs: args.timeout.map(|t| t.as_secs()),
            max_connections: args.max_connections,
        },
    };
    let mut conn = ctx.connect()?;
    let started = conn
        .call::<ProxyStart>(&params)
        .with_context(|| format!("failed to start a proxy for credential '{}'", args.name))?;
    // The address alone on stdout, for scripts: `read -r ADDR`.
    output::print(&format!("{}\n", started.listen))?;
    ctx.info(format_args!(
        "proxying {} to {} with credential '{}'; Ctrl-C stops it",
        started.listen, started.upstream, args.name
    ));
    conn.set_timeout(FOREVER)?;
    let stopped = conn
        .call::<ProxyWait>(&ProxyWaitParams {
            proxy_id: started.proxy_id,
        })
        .context("the proxy stopped")?;
    bail!(
        "the latchkey daemon stopped the proxy (it is shutting down) after {} requests; run `latchkey proxy` again once it is back",
        stopped.requests
    )
}

/// `1048576`, `512K`, `16M`, `1G` (binary units; `KiB`, `MB` and the like
/// read the same).
fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(digits);
    let number: u64 = number.parse().map_err(|_| {
        format!("invalid size '{text}': a number of bytes, or with K, M or G (16M)")
    })?;
    let shift = match unit
        .to_ascii_lowercase()
        .trim_end_matches('b')
        .trim_end_matches('i')
    {
        "" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        _ => return Err(format!("invalid size '{text}': use K, M or G (16M)")),
    };
    number
        .checked_mul(1 << shift)
        .ok_or_else(|| format!("size '{text}' is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_in_binary_units() {
        assert_eq!(parse_size("1024"), Ok(1024));
        assert_eq!(parse_size("16M"), Ok(16 << 20));
        assert_eq!(parse_size("512KiB"), Ok(512 << 10));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert!(parse_size("M").is_err());
        assert!(parse_size("3T").is_err());
    }
}
