//! The only module that speaks HTTP to providers: one reqwest (rustls)
//! client with timeouts, no redirects, bounded response bodies, and the
//! URL policy (HTTPS except to loopback hosts).

use futures::StreamExt;
use oauth2::{AsyncHttpClient, HttpRequest, HttpResponse};
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;
use url::{Host, Url};

/// 1 MiB: token responses and discovery documents are a few KiB; a provider
/// streaming more is broken or hostile.
pub const MAX_RESPONSE_BYTES: usize = 1024 * 1024;
/// Whole-request bound, connection included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("timed out after {}s", REQUEST_TIMEOUT.as_secs())]
    Timeout,
    #[error("could not connect: {0}")]
    Connect(String),
    #[error("the connection failed: {0}")]
    Io(String),
    #[error("the response exceeded {} bytes", MAX_RESPONSE_BYTES)]
    TooLarge,
    /// A status that is not a usable OAuth answer: 5xx, 429, or a 4xx whose
    /// body is not an OAuth JSON error (empty, HTML, ...).
    #[error("HTTP {status}")]
    Status {
        status: u16,
        retry_after: Option<u64>,
    },
    #[error("the request could not be built: {0}")]
    Request(String),
}

impl HttpError {
    /// Worth retrying later (with backoff): the provider or the network is
    /// failing, not our request.
    pub fn is_transient(&self) -> bool {
        match self {
            HttpError::Timeout | HttpError::Connect(_) | HttpError::Io(_) | HttpError::TooLarge => {
                true
            }
            HttpError::Status { status, .. } => *status >= 500 || *status == 429 || *status == 408,
            HttpError::Request(_) => false,
        }
    }
}

fn classify(e: reqwest::Error) -> HttpError {
    if e.is_timeout() {
        HttpError::Timeout
    } else if e.is_connect() {
        HttpError::Connect(source_chain(&e))
    } else if e.is_builder() {
        HttpError::Request(source_chain(&e))
    } else {
        HttpError::Io(source_chain(&e))
    }
}

/// The error and its causes. Callers strip the URL first (reqwest's
/// Display includes it, and URLs may carry query strings).
fn source_chain(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[derive(Clone)]
pub struct Http {
    client: reqwest::Client,
}

impl Http {
    pub fn new() -> Http {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("latchkey/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("the TLS backend (rustls) initializes");
        Http { client }
    }

    /// Sends one request and reads at most [`MAX_RESPONSE_BYTES`] of reply.
    pub async fn send(&self, request: HttpRequest) -> Result<HttpResponse, HttpError> {
        let (parts, body) = request.into_parts();
        let url = parts.uri.to_string();
        let response = self
            .client
            .request(parts.method, url)
            .headers(parts.headers)
            .body(body)
            .send()
            .await
            .map_err(|e| classify(e.without_url()))?;
        let status = response.status();
        let headers = response.headers().clone();
        let retry_after = headers
            .get(http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        if response
            .content_length()
            .is_some_and(|len| len > MAX_RESPONSE_BYTES as u64)
        {
            return Err(HttpError::TooLarge);
        }
        let mut body = Vec::new();
        let mut stream = response.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| classify(e.without_url()))?;
            if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                return Err(HttpError::TooLarge);
            }
            body.extend_from_slice(&chunk);
        }
        let looks_like_json_object =
            serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&body).is_ok();
        if status.is_server_error()
            || status.as_u16() == 429
            || (!status.is_success() && !looks_like_json_object)
        {
            return Err(HttpError::Status {
                status: status.as_u16(),
                retry_after,
            });
        }
        let mut reply = http::Response::builder().status(status);
        for (name, value) in headers.iter() {
            // Quirk: some providers send a JSON body labelled text/plain or
            // text/javascript; oauth2 refuses those, so relabel real JSON.
            if name == http::header::CONTENT_TYPE && looks_like_json_object {
                continue;
            }
            reply = reply.header(name, value);
        }
        if looks_like_json_object {
            reply = reply.header(http::header::CONTENT_TYPE, "application/json");
        }
        reply
            .body(body)
            .map_err(|e| HttpError::Request(e.to_string()))
    }

    /// GETs a JSON document (discovery metadata).
    pub async fn get_json(&self, url: &Url) -> Result<(u16, Vec<u8>), HttpError> {
        let request = http::Request::get(url.as_str())
            .header(http::header::ACCEPT, "application/json")
            .body(Vec::new())
            .map_err(|e| HttpError::Request(e.to_string()))?;
        match self.send(request).await {
            Ok(response) => Ok((response.status().as_u16(), response.into_body())),
            Err(HttpError::Status { status, .. }) if status < 500 => Ok((status, Vec::new())),
            Err(e) => Err(e),
        }
    }
}

impl Default for Http {
    fn default() -> Self {
        Http::new()
    }
}

impl<'c> AsyncHttpClient<'c> for Http {
    type Error = HttpError;
    type Future = Pin<Box<dyn Future<Output = Result<HttpResponse, HttpError>> + Send + 'c>>;

    fn call(&'c self, request: HttpRequest) -> Self::Future {
        Box::pin(self.send(request))
    }
}

/// Sends requests for `https://<loopback host>` over plain http.
///
/// Only for RFC 7009 revocation at a provider whose configured revocation
/// endpoint is `http://` on a loopback host: the oauth2 crate refuses any
/// non-https revocation URL (RFC 7009 §2), while Latchkey allows plain http
/// to loopback hosts everywhere else (local servers, RFC 8252). The caller
/// hands oauth2 the URL with `https` and this client restores `http`; any
/// non-loopback URL is sent unchanged (and so over TLS).
pub struct PlainLoopback(pub Http);

impl<'c> AsyncHttpClient<'c> for PlainLoopback {
    type Error = HttpError;
    type Future = Pin<Box<dyn Future<Output = Result<HttpResponse, HttpError>> + Send + 'c>>;

    fn call(&'c self, mut request: HttpRequest) -> Self::Future {
        if let Ok(mut url) = Url::parse(&request.uri().to_string()) {
            if url.scheme() == "https" && is_loopback(&url) && url.set_scheme("http").is_ok() {
                if let Ok(uri) = url.as_str().parse() {
                    *request.uri_mut() = uri;
                }
            }
        }
        Box::pin(self.0.send(request))
    }
}

/// `Retry-After` as delay-seconds (RFC 9110 §10.2.3); an HTTP-date is
/// turned into seconds from now; anything else is ignored.
fn parse_retry_after(value: &str) -> Option<u64> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(secs);
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(
        when.duration_since(std::time::SystemTime::now())
            .map(|d| d.as_secs())
            .unwrap_or(0),
    )
}

/// Refuses URLs that would send secrets in clear: `https` is required,
/// except `http` to a loopback host (127.0.0.0/8, ::1, `localhost`), which
/// RFC 8252 and local test servers rely on. No credentials or fragments.
pub fn check_url(what: &str, raw: &str) -> Result<Url, String> {
    // The URL may come from a provider's metadata: quote it tamed.
    let shown = crate::error::quoted(raw);
    let url = Url::parse(raw).map_err(|e| format!("{what} '{shown}' is not a valid URL: {e}"))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!("{what} must not contain a user name or password"));
    }
    if url.fragment().is_some() {
        return Err(format!("{what} '{shown}' must not contain a #fragment"));
    }
    match url.scheme() {
        "https" => Ok(url),
        "http" if is_loopback(&url) => Ok(url),
        "http" => Err(format!(
            "{what} '{shown}' uses plain http: secrets would cross the network in clear; use https (plain http is allowed only for loopback hosts)"
        )),
        other => Err(format!("{what} '{shown}' has scheme '{other}'; use https")),
    }
}

pub fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(Host::Ipv4(ip)) => ip.is_loopback(),
        Some(Host::Ipv6(ip)) => ip.is_loopback(),
        Some(Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_policy() {
        let ok = [
            "https://example.com/token",
            "http://127.0.0.1:8080/token",
            "http://127.5.6.7/x",
            "http://[::1]:9/x",
            "http://localhost:3000/",
        ];
        for u in ok {
            assert!(check_url("token endpoint", u).is_ok(), "{u}");
        }
        let bad = [
            ("http://example.com/token", "plain http"),
            ("http://10.0.0.1/token", "plain http"),
            ("http://localhost.evil.com/", "plain http"),
            ("ftp://example.com/", "scheme 'ftp'"),
            ("https://user:pw@example.com/", "user name or password"),
            ("https://example.com/#frag", "fragment"),
            ("not a url", "not a valid URL"),
        ];
        for (u, why) in bad {
            let err = check_url("token endpoint", u).unwrap_err();
            assert!(err.contains(why), "{u}: {err}");
            assert!(!err.contains("pw@"), "{err}");
        }
    }

    #[test]
    fn retry_after_forms() {
        assert_eq!(parse_retry_after("120"), Some(120));
        assert_eq!(parse_retry_after(" 7 "), Some(7));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), Some(0));
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn transient_statuses() {
        let t = |status| {
            HttpError::Status {
                status,
                retry_after: None,
            }
            .is_transient()
        };
        assert!(t(500) && t(503) && t(429) && t(408));
        assert!(!t(400) && !t(401) && !t(404));
    }
}
