//! The loopback redirect of a browser login (RFC 8252 §7.3): a one-shot
//! HTTP listener on 127.0.0.1 that accepts exactly one callback carrying
//! the right `state` (and, when the provider sends one, the right `iss`,
//! RFC 9207), answers with a small page under strict security headers, and
//! then stops listening, so a replayed callback finds nobody.

use crate::error::ApiError;
use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use latchkey_client::protocol::ErrorKind;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use url::Url;

/// What a good callback carried.
pub struct Code(pub String);

/// A bound loopback listener and the exact redirect URI that names it.
pub struct Loopback {
    listener: TcpListener,
    pub redirect_uri: Url,
}

/// Binds the redirect listener. `configured` is the credential's redirect
/// URI: its port is used exactly when given (providers that register
/// ports), else any free port (RFC 8252 §7.3); its path is kept.
pub async fn bind(configured: Option<&str>) -> Result<Loopback, ApiError> {
    let configured = configured.map(Url::parse).transpose().map_err(|e| {
        ApiError::invalid_params(format!("the credential's redirect URI is invalid: {e}"))
    })?;
    let port = configured.as_ref().and_then(|u| u.port()).unwrap_or(0);
    let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
        .await
        .map_err(|e| {
            ApiError::new(
                ErrorKind::InvalidRequest,
                format!("cannot listen on 127.0.0.1:{port} for the login callback: {e}; free the port or change the credential's redirect URI"),
            )
        })?;
    let port = listener.local_addr().map_err(ApiError::internal)?.port();
    let mut redirect_uri = configured
        .unwrap_or_else(|| Url::parse("http://127.0.0.1/callback").expect("a constant URL parses"));
    redirect_uri
        .set_port(Some(port))
        .map_err(|()| ApiError::invalid_params("the redirect URI cannot take a port"))?;
    Ok(Loopback {
        listener,
        redirect_uri,
    })
}

/// Content of every page the listener sends: nothing to load, nothing to
/// frame, nothing to leak in a Referer.
fn page(status: StatusCode, title: &str, body: &str) -> Response<Full<Bytes>> {
    let html = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{title}</title></head><body><h1>{title}</h1><p>{body}</p></body></html>"
    );
    Response::builder()
        .status(status)
        .header("content-type", "text/html; charset=utf-8")
        .header(
            "content-security-policy",
            "default-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        )
        .header("referrer-policy", "no-referrer")
        .header("x-frame-options", "DENY")
        .header("x-content-type-options", "nosniff")
        .header("cache-control", "no-store")
        .header("connection", "close")
        .body(Full::new(Bytes::from(html)))
        .expect("a response from constant parts builds")
}

type Outcome = Result<Code, ApiError>;

impl Loopback {
    /// Serves until one callback with the expected `state` arrives (or the
    /// caller drops this future at its deadline). A callback with a wrong
    /// or missing `state` is refused and the login goes on waiting: it is
    /// not from this login, and must not be able to cancel it.
    pub async fn wait(self, expected_state: String, issuer: Option<String>) -> Outcome {
        let path = self.redirect_uri.path().to_owned();
        let (tx, rx) = oneshot::channel::<Outcome>();
        let slot = Arc::new(Mutex::new(Some(tx)));
        let expected = Arc::new((expected_state, issuer, path));
        let accept = async {
            loop {
                let Ok((stream, _)) = self.listener.accept().await else {
                    continue;
                };
                let slot = Arc::clone(&slot);
                let expected = Arc::clone(&expected);
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let reply =
                            handle(&req, &expected.0, expected.1.as_deref(), &expected.2, &slot);
                        async move { Ok::<_, std::convert::Infallible>(reply) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .keep_alive(false)
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        };
        tokio::select! {
            outcome = rx => outcome.unwrap_or_else(|_| Err(ApiError::internal("the login callback listener stopped"))),
            () = accept => unreachable!("the accept loop never ends"),
        }
        // Dropping `self.listener` here closes the port: a replay is refused.
    }
}

pub(crate) fn handle(
    req: &Request<hyper::body::Incoming>,
    expected_state: &str,
    issuer: Option<&str>,
    path: &str,
    slot: &Mutex<Option<oneshot::Sender<Outcome>>>,
) -> Response<Full<Bytes>> {
    if req.uri().path() != path {
        return page(
            StatusCode::NOT_FOUND,
            "Not found",
            "This is the Latchkey login callback.",
        );
    }
    let params: std::collections::HashMap<String, String> = req
        .uri()
        .query()
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default();
    let state_ok = params
        .get("state")
        .is_some_and(|s| constant_time_eq(s.as_bytes(), expected_state.as_bytes()));
    if !state_ok {
        tracing::warn!("refused a login callback with a wrong or missing state");
        return page(
            StatusCode::BAD_REQUEST,
            "Login refused",
            "This callback does not belong to the login Latchkey is waiting for (state mismatch). Start the login again from the terminal.",
        );
    }
    let Some(sender) = crate::sync::lock(slot).take() else {
        return page(
            StatusCode::BAD_REQUEST,
            "Login already finished",
            "This login callback was already used. Start a new login from the terminal.",
        );
    };
    // RFC 9207: a response from another issuer is a mix-up attack.
    if let (Some(expected), Some(got)) = (issuer, params.get("iss")) {
        if got.trim_end_matches('/') != expected.trim_end_matches('/') {
            let _ = sender.send(Err(ApiError::new(
                ErrorKind::ProviderError,
                format!("the login callback names issuer '{}', not '{expected}' (RFC 9207 mix-up protection); the login was refused", crate::error::quoted(got)),
            )));
            return page(
                StatusCode::BAD_REQUEST,
                "Login refused",
                "The response came from an unexpected issuer.",
            );
        }
    }
    if let Some(error) = params.get("error") {
        let shown: String = error
            .chars()
            .filter(|c| c.is_ascii_graphic())
            .take(64)
            .collect();
        let kind = if shown == "access_denied" {
            ErrorKind::Forbidden
        } else {
            ErrorKind::ProviderError
        };
        let _ = sender.send(Err(ApiError::new(
            kind,
            format!("the provider ended the login with '{shown}'; run the login again to retry"),
        )));
        return page(
            StatusCode::OK,
            "Login not completed",
            "The provider did not grant access. You can close this tab.",
        );
    }
    let Some(code) = params.get("code").filter(|c| !c.is_empty()) else {
        let _ = sender.send(Err(ApiError::new(
            ErrorKind::ProviderError,
            "the login callback carried no code",
        )));
        return page(
            StatusCode::BAD_REQUEST,
            "Login failed",
            "The provider sent no authorization code.",
        );
    };
    let _ = sender.send(Ok(Code(code.clone())));
    page(
        StatusCode::OK,
        "Login complete",
        "Latchkey has your login. You can close this tab.",
    )
}

/// Comparison whose time does not depend on where the inputs differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_comparison() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }

    #[tokio::test]
    async fn one_good_callback_is_accepted_and_a_replay_is_not() {
        let loopback = bind(None).await.unwrap();
        let base = loopback.redirect_uri.clone();
        assert_eq!(base.host_str(), Some("127.0.0.1"));
        assert_ne!(base.port(), Some(0));
        let waiter = tokio::spawn(loopback.wait("s1".into(), Some("https://as.example".into())));
        let client = reqwest::Client::new();
        let get = |query: &str| {
            let mut url = base.clone();
            url.set_query(Some(query));
            client.get(url).send()
        };
        let wrong = get("code=c&state=nope").await.unwrap();
        assert_eq!(wrong.status(), 400);
        for header in [
            "content-security-policy",
            "referrer-policy",
            "x-frame-options",
            "x-content-type-options",
        ] {
            assert!(wrong.headers().contains_key(header), "{header}");
        }
        let good = get("code=the-code&state=s1&iss=https%3A%2F%2Fas.example")
            .await
            .unwrap();
        assert_eq!(good.status(), 200);
        let Code(code) = waiter.await.unwrap().unwrap();
        assert_eq!(code, "the-code");
        assert!(
            get("code=the-code&state=s1").await.is_err(),
            "the port is closed after the login"
        );
    }

    #[tokio::test]
    async fn a_callback_from_another_issuer_is_refused() {
        let loopback = bind(None).await.unwrap();
        let mut url = loopback.redirect_uri.clone();
        let waiter = tokio::spawn(loopback.wait("s".into(), Some("https://as.example".into())));
        url.set_query(Some("code=c&state=s&iss=https%3A%2F%2Fevil.example"));
        let reply = reqwest::get(url).await.unwrap();
        assert_eq!(reply.status(), 400);
        let err = waiter.await.unwrap().err().unwrap();
        assert!(err.message.contains("mix-up"), "{}", err.message);
    }
}
