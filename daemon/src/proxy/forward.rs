//! One proxied request: refused unless it targets the upstream (no open
//! proxy: an absolute-form URL or a `Host` naming another host, and
//! CONNECT, are refused), its hop-by-hop headers (RFC 9110 §7.6.1) and any
//! `Authorization` / `Proxy-Authorization` of the app's dropped, the
//! credential's authorization added (`auth.rs`), sent to the upstream with
//! its body streamed (bounded), and the upstream's answer streamed back
//! (bounded, hop-by-hop headers dropped).
//!
//! The retry rule: when the upstream answers 401, the scheme is told
//! (bearer: the cached token is dropped; DPoP: the nonce the 401 demands
//! is remembered, or else the token dropped) and the request is sent once
//! more with a fresh authorization — only if its body was buffered: an
//! empty body, or one whose `Content-Length` is at most [`RETRY_BUFFER`].
//! A bigger or chunked body is streamed as it arrives, cannot be sent
//! twice, and its 401 goes back to the app as it came.

use super::auth::{Authorizer, Outgoing};
use crate::error::ApiError;
use crate::oauth::http::HttpError;
use crate::state::{Daemon, Peer};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use http::header::{self, HeaderMap};
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, BodyStream, Full, StreamBody};
use hyper::body::{Body, Frame, Incoming};
use latchkey_client::protocol::ErrorKind;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use url::Url;

/// 1 MiB: request bodies up to this (by `Content-Length`) are read whole
/// before they are sent, so that a 401 can be retried with them.
pub const RETRY_BUFFER: u64 = 1024 * 1024;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type ProxyBody = BoxBody<Bytes, BoxError>;

/// The proxy's bounds, defaults filled in.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    pub max_request_bytes: u64,
    pub max_response_bytes: u64,
    pub timeout: Duration,
    pub max_connections: usize,
}

/// The one upstream.
pub struct Upstream {
    /// Scheme, host, port, and base path without a trailing `/`.
    pub url: Url,
}

impl Upstream {
    /// The upstream URL a request for `path_and_query` (starting with
    /// `/`) goes to: the base path, then the request's. Checked to still
    /// name the upstream's scheme, host and port.
    fn join(&self, path_and_query: &str) -> Option<Url> {
        let base = self.url.as_str().trim_end_matches('/');
        let url = Url::parse(&format!("{base}{path_and_query}")).ok()?;
        (url.scheme() == self.url.scheme()
            && url.host() == self.url.host()
            && url.port_or_known_default() == self.url.port_or_known_default())
        .then_some(url)
    }

    /// `host[:port]` as a `Host` header names the upstream.
    fn authority(&self) -> String {
        let host = self.url.host_str().unwrap_or_default();
        match self.url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_owned(),
        }
    }
}

/// What every request of one proxy shares.
pub struct Shared {
    pub daemon: Arc<Daemon>,
    pub upstream: Upstream,
    /// `Host` values (lowercase) that name the proxy itself: what an app
    /// that was told our address sends.
    pub own_hosts: Vec<String>,
    pub auth: Authorizer,
    pub bounds: Bounds,
    /// Requests forwarded (for `proxy.wait`'s result).
    pub requests: AtomicU64,
}

/// Serves one request of `peer`'s.
pub async fn handle(
    shared: Arc<Shared>,
    peer: Peer,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, std::convert::Infallible> {
    Ok(match forward(&shared, &peer, req).await {
        Ok(response) => response,
        Err(refusal) => refusal.into_response(),
    })
}

/// A response the proxy makes itself: a status, a plain-text reason.
struct Refusal {
    status: StatusCode,
    message: String,
    kind: Option<ErrorKind>,
    retry_after: Option<u64>,
}

impl Refusal {
    fn new(status: StatusCode, message: impl Into<String>) -> Refusal {
        Refusal {
            status,
            message: message.into(),
            kind: None,
            retry_after: None,
        }
    }

    /// The daemon refused to authorize: its kind and message (which names
    /// the fix) as the app sees them.
    fn daemon(e: ApiError) -> Refusal {
        let status = match e.kind {
            ErrorKind::Locked | ErrorKind::NotInitialized | ErrorKind::ShuttingDown => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ErrorKind::Forbidden
            | ErrorKind::ApprovalRequired
            | ErrorKind::ApprovalDenied
            | ErrorKind::StepUpRequired
            | ErrorKind::NotFound => StatusCode::FORBIDDEN,
            ErrorKind::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            _ => StatusCode::BAD_GATEWAY,
        };
        Refusal {
            status,
            message: format!("latchkey proxy: {}", e.message),
            kind: Some(e.kind),
            retry_after: e.retry_after,
        }
    }

    fn into_response(self) -> Response<ProxyBody> {
        let mut builder = Response::builder()
            .status(self.status)
            .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
            .header(header::CACHE_CONTROL, "no-store");
        if let Some(kind) = self.kind {
            builder = builder.header("x-latchkey-error", kind.to_string());
        }
        if let Some(secs) = self.retry_after {
            builder = builder.header(header::RETRY_AFTER, secs);
        }
        let body = Full::new(Bytes::from(format!("{}\n", self.message)))
            .map_err(|never| match never {})
            .boxed();
        builder
            .body(body)
            .expect("a status, fixed headers and a body make a response")
    }
}

async fn forward(
    shared: &Shared,
    peer: &Peer,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Refusal> {
    let upstream = shared.upstream.url.as_str();
    if req.method() == Method::CONNECT {
        return Err(Refusal::new(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("latchkey proxy: CONNECT is refused: this proxy forwards plain requests to {upstream} only"),
        ));
    }
    check_target(shared, &req)?;
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .filter(|p| p.starts_with('/'))
        .ok_or_else(|| {
            Refusal::new(
                StatusCode::BAD_REQUEST,
                "latchkey proxy: the request target must be a path (`/…`)",
            )
        })?;
    let url = shared.upstream.join(path).ok_or_else(|| {
        Refusal::new(
            StatusCode::BAD_REQUEST,
            format!("latchkey proxy: that path does not make a URL of {upstream}"),
        )
    })?;
    // The app's own rate limit: a forwarded request is a call.
    shared
        .daemon
        .limits
        .call(peer, "proxy")
        .map_err(Refusal::daemon)?;
    let (parts, body) = req.into_parts();
    let declared = content_length(&parts.headers)?;
    let bounds = shared.bounds;
    if declared.is_some_and(|n| n > bounds.max_request_bytes) {
        return Err(too_large_request(bounds));
    }
    let mut headers = forwardable(&parts.headers);
    headers.remove(header::AUTHORIZATION);
    // Small bodies are read first (so a 401 can be retried), others streamed.
    let (buffered, mut streamed) = if body.is_end_stream() {
        (Some(Bytes::new()), None)
    } else if declared.is_some_and(|n| n <= RETRY_BUFFER) {
        let limited = http_body_util::Limited::new(body, RETRY_BUFFER as usize);
        let collected = limited.collect().await.map_err(|_| {
            Refusal::new(
                StatusCode::BAD_REQUEST,
                "latchkey proxy: the request body ended early or ran past its Content-Length",
            )
        })?;
        // reqwest sets the length of a body it has whole.
        headers.remove(header::CONTENT_LENGTH);
        (Some(collected.to_bytes()), None)
    } else {
        (None, Some(body))
    };
    let too_large = Arc::new(AtomicBool::new(false));
    shared.requests.fetch_add(1, Ordering::Relaxed);
    let mut retried = false;
    loop {
        let outgoing = Outgoing {
            method: &parts.method,
            url: &url,
            body: buffered.as_deref(),
            form: is_form(&parts.headers),
        };
        let added = shared
            .auth
            .authorize(&shared.daemon, peer, &outgoing)
            .await
            .map_err(Refusal::daemon)?;
        let mut sent = headers.clone();
        for (name, value) in added {
            sent.insert(name, value);
        }
        let body = match (&buffered, streamed.take()) {
            (Some(bytes), _) => reqwest::Body::from(bytes.clone()),
            (None, Some(incoming)) => {
                bounded_request(incoming, bounds.max_request_bytes, &too_large)
            }
            (None, None) => unreachable!("a streamed body is sent once: no retry without a buffer"),
        };
        let answer = shared
            .daemon
            .http
            .forward(
                parts.method.clone(),
                url.clone(),
                sent,
                body,
                bounds.timeout,
            )
            .await;
        let response = match answer {
            Ok(response) => response,
            Err(_) if too_large.load(Ordering::SeqCst) => return Err(too_large_request(bounds)),
            Err(e) => return Err(upstream_failed(&e, bounds)),
        };
        if response.status() == StatusCode::UNAUTHORIZED
            && !retried
            && buffered.is_some()
            && shared
                .auth
                .rejected(&shared.daemon, peer, response.headers())
        {
            retried = true;
            continue;
        }
        shared.auth.answered(response.headers());
        return relay(response, bounds);
    }
}

/// A `Host` (or absolute-form authority) naming anything but the upstream
/// or the proxy itself is refused: no open proxy.
fn check_target(shared: &Shared, req: &Request<Incoming>) -> Result<(), Refusal> {
    let upstream = &shared.upstream;
    let refuse = || {
        Refusal::new(
            StatusCode::MISDIRECTED_REQUEST,
            format!(
                "latchkey proxy: this proxy forwards only to {} and is no open proxy: send plain requests for that host",
                upstream.url.as_str()
            ),
        )
    };
    let ours = |authority: &str| {
        let authority = authority.to_ascii_lowercase();
        authority == upstream.authority() || shared.own_hosts.contains(&authority)
    };
    if let Some(authority) = req.uri().authority() {
        let scheme_ok = match req.uri().scheme_str() {
            Some(s) => {
                s.eq_ignore_ascii_case(upstream.url.scheme()) || s.eq_ignore_ascii_case("http")
            }
            None => true,
        };
        if !scheme_ok || !ours(authority.as_str()) {
            return Err(refuse());
        }
    }
    for host in req.headers().get_all(header::HOST) {
        let Ok(host) = host.to_str() else {
            return Err(refuse());
        };
        if !ours(host.trim()) {
            return Err(refuse());
        }
    }
    Ok(())
}

/// Whether the body is a form (`application/x-www-form-urlencoded`, any
/// parameters after it), whose parameters an OAuth 1.0a signature covers.
fn is_form(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| {
            t.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        })
}

/// The declared body length, if any; a malformed one is refused.
fn content_length(headers: &HeaderMap) -> Result<Option<u64>, Refusal> {
    let mut found = None;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        let n = value
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .ok_or_else(|| {
                Refusal::new(
                    StatusCode::BAD_REQUEST,
                    "latchkey proxy: a malformed Content-Length",
                )
            })?;
        if found.is_some_and(|f| f != n) {
            return Err(Refusal::new(
                StatusCode::BAD_REQUEST,
                "latchkey proxy: conflicting Content-Length headers",
            ));
        }
        found = Some(n);
    }
    Ok(found)
}

/// The end-to-end headers of `headers`: without the hop-by-hop ones
/// (RFC 9110 §7.6.1: `Connection` and every header it names,
/// `Keep-Alive`, `Proxy-*`, `TE`, `Trailer`, `Transfer-Encoding`,
/// `Upgrade`), without `Host` (the client names the upstream's) and
/// without `Expect` (a `100-continue` is answered by the proxy's own
/// server when it reads the body).
pub fn forwardable(headers: &HeaderMap) -> HeaderMap {
    let named: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect();
    let mut out = HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        let n = name.as_str();
        let hop = matches!(
            n,
            "connection"
                | "keep-alive"
                | "te"
                | "trailer"
                | "transfer-encoding"
                | "upgrade"
                | "host"
                | "expect"
        ) || n.starts_with("proxy-")
            || named.iter().any(|t| t == n);
        if !hop {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

/// The app's body as the upstream request's, streamed, failing (and
/// flagging `too_large`) past `max` bytes.
fn bounded_request(body: Incoming, max: u64, too_large: &Arc<AtomicBool>) -> reqwest::Body {
    let flag = Arc::clone(too_large);
    let mut seen: u64 = 0;
    let stream = BodyStream::new(body)
        .try_filter_map(|frame| async move { Ok(frame.into_data().ok()) })
        .map(move |chunk: Result<Bytes, hyper::Error>| {
            let chunk = chunk.map_err(BoxError::from)?;
            seen += chunk.len() as u64;
            if seen > max {
                flag.store(true, Ordering::SeqCst);
                return Err(BoxError::from(
                    "the request body is larger than the proxy's limit",
                ));
            }
            Ok(chunk)
        });
    reqwest::Body::wrap_stream(stream)
}

/// The upstream's response for the app: status, end-to-end headers, and
/// the body streamed, cut (the connection then fails) past the limit.
fn relay(response: reqwest::Response, bounds: Bounds) -> Result<Response<ProxyBody>, Refusal> {
    if response
        .content_length()
        .is_some_and(|n| n > bounds.max_response_bytes)
    {
        return Err(Refusal::new(
            StatusCode::BAD_GATEWAY,
            format!(
                "latchkey proxy: the upstream's response is larger than the proxy's limit of {} bytes; raise it with `latchkey proxy --max-response-size`",
                bounds.max_response_bytes
            ),
        ));
    }
    let mut builder = Response::builder().status(response.status());
    if let Some(headers) = builder.headers_mut() {
        *headers = forwardable(response.headers());
    }
    let max = bounds.max_response_bytes;
    let mut seen: u64 = 0;
    let stream = response.bytes_stream().map(move |chunk| {
        let chunk = chunk.map_err(BoxError::from)?;
        seen += chunk.len() as u64;
        if seen > max {
            return Err(BoxError::from(
                "the upstream's response is larger than the proxy's limit",
            ));
        }
        Ok(Frame::data(chunk))
    });
    builder
        .body(BodyExt::boxed(StreamBody::new(stream)))
        .map_err(|_| {
            Refusal::new(
                StatusCode::BAD_GATEWAY,
                "latchkey proxy: the upstream's response could not be passed on",
            )
        })
}

fn too_large_request(bounds: Bounds) -> Refusal {
    Refusal::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!(
            "latchkey proxy: the request body is larger than the proxy's limit of {} bytes; raise it with `latchkey proxy --max-request-size`",
            bounds.max_request_bytes
        ),
    )
}

fn upstream_failed(e: &HttpError, bounds: Bounds) -> Refusal {
    match e {
        HttpError::Timeout => Refusal::new(
            StatusCode::GATEWAY_TIMEOUT,
            format!(
                "latchkey proxy: the upstream did not answer within {} s; raise it with `latchkey proxy --timeout`",
                bounds.timeout.as_secs()
            ),
        ),
        other => Refusal::new(
            StatusCode::BAD_GATEWAY,
            format!("latchkey proxy: the upstream request failed: {other}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::{HeaderName, HeaderValue};

    #[test]
    fn hop_by_hop_headers_are_dropped() {
        let mut h = HeaderMap::new();
        for (n, v) in [
            ("connection", "close, x-secret-hop"),
            ("keep-alive", "timeout=5"),
            ("proxy-authorization", "Basic eA=="),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers"),
            ("trailer", "x-t"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("host", "127.0.0.1:1"),
            ("x-secret-hop", "1"),
            ("accept", "application/json"),
            ("x-end-to-end", "kept"),
        ] {
            h.append(HeaderName::from_static(n), HeaderValue::from_static(v));
        }
        let kept = forwardable(&h);
        let names: Vec<&str> = kept.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["accept", "x-end-to-end"]);
    }

    #[test]
    fn joined_urls_stay_on_the_upstream() {
        let up = Upstream {
            url: Url::parse("https://api.example.com/v1").unwrap(),
        };
        assert_eq!(
            up.join("/users?x=1").unwrap().as_str(),
            "https://api.example.com/v1/users?x=1"
        );
        assert_eq!(
            up.join("//evil.example/x").unwrap().host_str(),
            Some("api.example.com")
        );
        assert_eq!(up.authority(), "api.example.com");
        let bare = Upstream {
            url: Url::parse("https://api.example.com").unwrap(),
        };
        assert!(bare.join("@evil.example/x").is_none());
        let local = Upstream {
            url: Url::parse("http://127.0.0.1:8080/").unwrap(),
        };
        assert_eq!(local.join("/").unwrap().as_str(), "http://127.0.0.1:8080/");
        assert_eq!(local.authority(), "127.0.0.1:8080");
    }
}
