//! The only module that speaks HTTP to providers: one reqwest (rustls)
//! client with timeouts, no redirects, bounded response bodies, and the
//! URL policy (HTTPS except to loopback hosts).

use super::text::provider_text;
use futures::StreamExt;
use oauth2::{AsyncHttpClient, HttpRequest, HttpResponse};
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;
use url::{Host, Url};
use zeroize::Zeroizing;

/// 1 MiB: token responses and discovery documents are a few KiB; a provider
/// streaming more is broken or hostile.
pub const MAX_RESPONSE_BYTES: usize = 1024 * 1024;
/// Whole-request bound, connection included.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
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

pub(crate) fn classify(e: reqwest::Error) -> HttpError {
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

/// The error and its causes, sanitised (a cause may quote what the
/// provider sent, such as a malformed header). Callers strip the URL first
/// (reqwest's Display includes it, and URLs may carry query strings).
fn source_chain(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    provider_text(&text, &[])
}

/// The provider client. Cloning shares it (reqwest's client is a handle).
///
/// Built on first use, not when the daemon starts: building it loads the
/// TLS root store and the proxy settings, which a daemon answering from its
/// cache (and from tokens stored in the vault) may not need for hours —
/// it would only cost memory and start-up time.
#[derive(Clone, Default)]
pub struct Http {
    client: std::sync::Arc<std::sync::OnceLock<reqwest::Client>>,
}

impl Http {
    pub fn new() -> Http {
        Http::default()
    }

    fn client(&self) -> &reqwest::Client {
        self.client.get_or_init(|| {
            reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(REQUEST_TIMEOUT)
                .connect_timeout(CONNECT_TIMEOUT)
                .user_agent(concat!("latchkey/", env!("CARGO_PKG_VERSION")))
                .build()
                .expect("the TLS backend (rustls) initializes")
        })
    }

    /// Sends one request and reads at most [`MAX_RESPONSE_BYTES`] of reply.
    /// The body handed back is oauth2's to parse and drop (its type is the
    /// crate's `HttpResponse`, a plain `Vec`); the buffer it was read into
    /// is zeroized here.
    pub async fn send(&self, request: HttpRequest) -> Result<HttpResponse, HttpError> {
        let (status, headers, body, looks_like_json_object) = self.read(request).await?;
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
            .body(body.to_vec())
            .map_err(|e| HttpError::Request(provider_text(&e.to_string(), &[])))
    }

    /// The request's status, headers and body (bounded, in a buffer that is
    /// zeroized when dropped: token responses hold tokens), and whether the
    /// body is a JSON object. Statuses that are no usable OAuth answer are
    /// errors (see [`HttpError::Status`]).
    async fn read(
        &self,
        request: HttpRequest,
    ) -> Result<(http::StatusCode, http::HeaderMap, Zeroizing<Vec<u8>>, bool), HttpError> {
        let (parts, body) = request.into_parts();
        let url = parts.uri.to_string();
        let response = self
            .client()
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
        let declared = response.content_length();
        if declared.is_some_and(|len| len > MAX_RESPONSE_BYTES as u64) {
            return Err(HttpError::TooLarge);
        }
        // Sized up front when the length is declared, so the buffer is not
        // reallocated (a reallocation would leave a copy behind unzeroized).
        let initial = declared.map_or(4096, |len| len as usize);
        let mut body = Zeroizing::new(Vec::with_capacity(initial));
        let mut stream = response.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| classify(e.without_url()))?;
            if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                return Err(HttpError::TooLarge);
            }
            reserve_zeroizing(&mut body, chunk.len());
            body.extend_from_slice(&chunk);
        }
        let looks_like_json_object = is_json_object(&body);
        if status.is_server_error()
            || status.as_u16() == 429
            || (!status.is_success() && !looks_like_json_object)
        {
            return Err(HttpError::Status {
                status: status.as_u16(),
                retry_after,
            });
        }
        Ok((status, headers, body, looks_like_json_object))
    }

    /// Sends one request of the authenticating proxy (`proxy/`) to its
    /// upstream: the same client (rustls, no redirects followed — a
    /// redirect goes back to the app as it came), `timeout` bounding the
    /// whole exchange including the response body, which the caller
    /// streams on unread. The URL was checked by [`check_url`] and is the
    /// upstream's.
    pub async fn forward(
        &self,
        method: http::Method,
        url: Url,
        headers: http::HeaderMap,
        body: reqwest::Body,
        timeout: Duration,
    ) -> Result<reqwest::Response, HttpError> {
        self.client()
            .request(method, url)
            .headers(headers)
            .body(body)
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| classify(e.without_url()))
    }

    /// GETs `url` for a health check: the status and the `Date` header
    /// (unparsed, as sent), the body dropped unread.
    pub async fn probe(&self, url: &Url) -> Result<(u16, Option<String>), HttpError> {
        let response = self
            .client()
            .get(url.as_str())
            .header(http::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| classify(e.without_url()))?;
        let date = response
            .headers()
            .get(http::header::DATE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        Ok((response.status().as_u16(), date))
    }

    /// POSTs an OAuth 1.0a credential request (RFC 5849 §2.1, §2.3): an
    /// empty form body, the signed `Authorization` header. The reply's
    /// body (form-encoded credentials) in a zeroizing buffer; any status
    /// but 2xx is an error.
    pub async fn post_oauth1(
        &self,
        url: &Url,
        authorization: &secrecy::SecretString,
    ) -> Result<Zeroizing<Vec<u8>>, HttpError> {
        use secrecy::ExposeSecret as _;
        let mut value = http::HeaderValue::from_str(authorization.expose_secret())
            .map_err(|_| HttpError::Request("the Authorization header is not valid".into()))?;
        value.set_sensitive(true);
        let request = http::Request::post(url.as_str())
            .header(http::header::AUTHORIZATION, value)
            .header(
                http::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .body(Vec::new())
            .map_err(|e| HttpError::Request(e.to_string()))?;
        let (status, _, body, _) = self.read(request).await?;
        if !status.is_success() {
            return Err(HttpError::Status {
                status: status.as_u16(),
                retry_after: None,
            });
        }
        Ok(body)
    }

    /// GETs a JSON document (discovery metadata, a JWKS).
    pub async fn get_json(&self, url: &Url) -> Result<(u16, Zeroizing<Vec<u8>>), HttpError> {
        let request = http::Request::get(url.as_str())
            .header(http::header::ACCEPT, "application/json")
            .body(Vec::new())
            .map_err(|e| HttpError::Request(e.to_string()))?;
        match self.read(request).await {
            Ok((status, _, body, _)) => Ok((status.as_u16(), body)),
            Err(HttpError::Status { status, .. }) if status < 500 => {
                Ok((status, Zeroizing::new(Vec::new())))
            }
            Err(e) => Err(e),
        }
    }
}

/// Makes room for `extra` more bytes by moving into a larger buffer and
/// zeroizing the old one (`Vec`'s own growth would free it as it is).
fn reserve_zeroizing(body: &mut Zeroizing<Vec<u8>>, extra: usize) {
    if body.capacity() - body.len() >= extra {
        return;
    }
    let wanted = (body.len() + extra).max(body.capacity() * 2);
    let mut grown = Zeroizing::new(Vec::with_capacity(wanted.min(MAX_RESPONSE_BYTES)));
    grown.extend_from_slice(body);
    // The old buffer is zeroized as it drops here.
    *body = grown;
}

/// Whether `body` is one JSON object, checked without building values
/// (a parsed map would hold copies of the tokens in it, never zeroized).
fn is_json_object(body: &[u8]) -> bool {
    body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
        && serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok()
}

impl<'c> AsyncHttpClient<'c> for Http {
    type Error = HttpError;
    type Future = Pin<Box<dyn Future<Output = Result<HttpResponse, HttpError>> + Send + 'c>>;

    fn call(&'c self, request: HttpRequest) -> Self::Future {
        Box::pin(self.send(request))
    }
}

/// Sends a plain-http loopback revocation endpoint's requests over plain
/// http again.
///
/// The oauth2 crate refuses any non-https revocation URL (RFC 7009 §2),
/// while Latchkey allows plain http to loopback hosts everywhere else
/// (local servers, RFC 8252). So for a configured `http://<loopback>`
/// endpoint oauth2 is handed its `https` spelling, and this client puts
/// `http` back — for that one URL only. Every other URL, a configured
/// `https://127.0.0.1` one included, is sent unchanged (and so over TLS).
pub struct PlainLoopback {
    http: Http,
    /// The `https` spelling of the configured endpoint, when that endpoint
    /// is plain http to a loopback host.
    plain: Option<Url>,
}

impl PlainLoopback {
    /// `configured`: the endpoint as the provider record has it.
    pub fn new(http: Http, configured: &str) -> PlainLoopback {
        let plain = Url::parse(configured)
            .ok()
            .filter(|u| u.scheme() == "http" && is_loopback(u))
            .and_then(|mut u| u.set_scheme("https").ok().map(|()| u));
        PlainLoopback { http, plain }
    }

    /// The URL a request for `url` really goes to.
    fn target(&self, url: &Url) -> Option<Url> {
        let plain = self.plain.as_ref().filter(|p| *p == url)?;
        let mut url = plain.clone();
        url.set_scheme("http").ok()?;
        Some(url)
    }
}

impl<'c> AsyncHttpClient<'c> for PlainLoopback {
    type Error = HttpError;
    type Future = Pin<Box<dyn Future<Output = Result<HttpResponse, HttpError>> + Send + 'c>>;

    fn call(&'c self, mut request: HttpRequest) -> Self::Future {
        let target = Url::parse(&request.uri().to_string())
            .ok()
            .and_then(|url| self.target(&url));
        if let Some(uri) = target.and_then(|t| t.as_str().parse().ok()) {
            *request.uri_mut() = uri;
        }
        Box::pin(self.http.send(request))
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
    let shown = super::text::provider_text(raw, &[]);
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

    /// A plain-http server on loopback answering every request with 200.
    async fn plain_server() -> std::net::SocketAddr {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = stream.read(&mut buf).await;
                    let _ = stream
                        .write_all(
                            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                        )
                        .await;
                });
            }
        });
        addr
    }

    fn post(url: &str) -> HttpRequest {
        http::Request::post(url).body(Vec::new()).unwrap()
    }

    #[tokio::test]
    async fn plain_loopback_restores_http_only_for_a_configured_http_url() {
        let addr = plain_server().await;
        let http_url = format!("http://{addr}/revoke");
        let https_url = format!("https://{addr}/revoke");

        // Configured as http: oauth2 hands over the https spelling, which
        // goes to the plain server over http.
        let plain = PlainLoopback::new(Http::new(), &http_url);
        let reply = plain.call(post(&https_url)).await.expect("sent over http");
        assert_eq!(reply.status(), 200);
        // Another loopback URL is not the configured one: stays https.
        let other = format!("https://{addr}/other");
        assert!(
            plain.call(post(&other)).await.is_err(),
            "{other} went over http"
        );

        // Configured as https on a loopback host: stays https, so talking to
        // a plain server fails instead of sending the token in clear.
        let tls = PlainLoopback::new(Http::new(), &https_url);
        let err = tls.call(post(&https_url)).await.err();
        assert!(
            err.is_some(),
            "an https:// loopback URL was sent over plain http"
        );
    }

    #[test]
    fn json_objects_are_recognised_without_parsing_values() {
        assert!(is_json_object(br#" {"access_token":"x"}"#));
        assert!(!is_json_object(b"[1]"));
        assert!(!is_json_object(b"<html>"));
        assert!(!is_json_object(b"{"));
    }

    #[test]
    fn a_growing_body_moves_into_a_larger_zeroizing_buffer() {
        let mut body = Zeroizing::new(Vec::with_capacity(2));
        body.extend_from_slice(b"ab");
        reserve_zeroizing(&mut body, 10);
        assert!(body.capacity() >= 12);
        assert_eq!(&body[..], b"ab");
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
