//! What a request to the provider carries that the oauth2 crate does not
//! make: a `private_key_jwt` client assertion (RFC 7523 §2.2) and a DPoP
//! proof (RFC 9449 §5), each fresh for every HTTP request — a device login's
//! every poll included — signed inside the daemon by [`crate::vault::jose`].
//!
//! [`Signed`] wraps the HTTP client the oauth2 crate is handed: it appends
//! `client_assertion_type` and `client_assertion` to the form body, sets the
//! `DPoP` header, and when the server answers `use_dpop_nonce` (RFC 9449
//! §8) sends the request once more with the nonce it gave (and a fresh
//! assertion: its `jti` is single use). Nonces are kept
//! per server origin for the next request.

use super::http::{Http, HttpError, PlainLoopback};
use crate::clock::Clock;
use crate::sync::lock;
use crate::vault::jose::SigningKey;
use oauth2::{AsyncHttpClient, HttpRequest, HttpResponse};
use secrecy::ExposeSecret;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use zeroize::Zeroizing;

/// RFC 7523 §2.2.
const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// At most this many servers' nonces are remembered.
const MAX_NONCES: usize = 64;

/// How one client authenticates on a request: the client secret the oauth2
/// crate sends itself, or the proofs [`Signed`] adds.
pub struct ClientAuth {
    pub secret: Option<secrecy::SecretString>,
    pub proofs: Proofs,
}

#[cfg(feature = "testing")]
impl ClientAuth {
    /// A client that sends its secret (or nothing) and no proofs (the fuzz
    /// targets).
    pub fn secret_only(secret: Option<secrecy::SecretString>, clock: Clock) -> ClientAuth {
        ClientAuth {
            secret,
            proofs: Proofs {
                assertion: None,
                dpop: None,
                nonces: Arc::default(),
                clock,
            },
        }
    }
}

/// What to add to each request of one client.
#[derive(Clone)]
pub struct Proofs {
    /// `private_key_jwt`: the key, the client id and the audience.
    pub assertion: Option<Assertion>,
    /// DPoP: the credential's key.
    pub dpop: Option<Arc<SigningKey>>,
    /// The daemon's nonces, and its clock (a proof's `iat`).
    pub nonces: Arc<Nonces>,
    pub clock: Clock,
}

#[derive(Clone)]
pub struct Assertion {
    pub key: Arc<SigningKey>,
    pub client_id: String,
    pub audience: String,
}

impl Proofs {
    /// Whether anything is added (else the plain client is used as it is).
    pub fn any(&self) -> bool {
        self.assertion.is_some() || self.dpop.is_some()
    }
}

/// The last `DPoP-Nonce` each server (by origin) sent. Nonces are public
/// values; they only save a round trip.
#[derive(Default)]
pub struct Nonces(Mutex<HashMap<String, String>>);

impl Nonces {
    pub fn get(&self, origin: &str) -> Option<String> {
        lock(&self.0).get(origin).cloned()
    }

    pub fn set(&self, origin: String, nonce: String) {
        let mut nonces = lock(&self.0);
        if nonces.len() >= MAX_NONCES && !nonces.contains_key(&origin) {
            nonces.clear();
        }
        nonces.insert(origin, nonce);
    }
}

/// An HTTP client for the oauth2 crate that adds [`Proofs`] to every
/// request it sends through `inner`.
pub struct Signed<'a> {
    pub inner: Via<'a>,
    pub proofs: &'a Proofs,
}

/// The client a [`Signed`] request goes out through.
pub enum Via<'a> {
    Http(&'a Http),
    /// For a revocation endpoint (see [`PlainLoopback`]).
    PlainLoopback(&'a PlainLoopback),
}

impl Via<'_> {
    fn call(&self, request: HttpRequest) -> Reply<'_> {
        match self {
            Via::Http(http) => http.call(request),
            Via::PlainLoopback(plain) => plain.call(request),
        }
    }
}

type Reply<'c> = Pin<Box<dyn Future<Output = Result<HttpResponse, HttpError>> + Send + 'c>>;

impl<'c> AsyncHttpClient<'c> for Signed<'_> {
    type Error = HttpError;
    type Future = Reply<'c>;

    fn call(&'c self, request: HttpRequest) -> Self::Future {
        if !self.proofs.any() {
            return self.inner.call(request);
        }
        Box::pin(async move {
            let nonces = &self.proofs.nonces;
            let origin = origin(request.uri());
            let nonce = nonces.get(&origin);
            let first = self.sign(&request, nonce.as_deref())?;
            let response = self.inner.call(first).await?;
            let fresh = dpop_nonce(&response);
            if let Some(fresh) = &fresh {
                nonces.set(origin, fresh.clone());
            }
            match fresh {
                Some(fresh) if self.proofs.dpop.is_some() && asks_for_nonce(&response) => {
                    let again = self.sign(&request, Some(&fresh))?;
                    self.inner.call(again).await
                }
                _ => Ok(response),
            }
        })
    }
}

impl Signed<'_> {
    /// A copy of `request` with a fresh assertion and proof.
    fn sign(&self, request: &HttpRequest, nonce: Option<&str>) -> Result<HttpRequest, HttpError> {
        let now = self.proofs.clock.now();
        let mut signed = http::Request::builder()
            .method(request.method().clone())
            .uri(request.uri().clone())
            .version(request.version());
        for (name, value) in request.headers() {
            signed = signed.header(name, value);
        }
        let mut body = Zeroizing::new(request.body().clone());
        if let Some(a) = &self.proofs.assertion {
            let jwt = a
                .key
                .client_assertion(&a.client_id, &a.audience, now)
                .map_err(HttpError::Request)?;
            // One buffer, big enough not to move as it grows (a moved
            // buffer would leave a copy of the form behind, not zeroized).
            let mut text = String::with_capacity(body.len() + 4096);
            text.push_str(&String::from_utf8_lossy(&body));
            // (From 0: what is there is form syntax, so `&` goes first.)
            let mut form = url::form_urlencoded::Serializer::for_suffix(text, 0);
            form.append_pair("client_assertion_type", ASSERTION_TYPE);
            form.append_pair("client_assertion", jwt.expose_secret());
            let appended = Zeroizing::new(form.finish());
            body = Zeroizing::new(appended.as_bytes().to_vec());
        }
        if let Some(key) = &self.proofs.dpop {
            let url = url::Url::parse(&request.uri().to_string())
                .map_err(|_| HttpError::Request("the request URL is not absolute".into()))?;
            let proof = key
                .dpop_proof(request.method().as_str(), &url, nonce, None, now)
                .map_err(HttpError::Request)?;
            signed = signed.header("DPoP", proof.expose_secret());
        }
        signed
            .body(body.to_vec())
            .map_err(|e| HttpError::Request(format!("the signed request is invalid: {e}")))
    }
}

fn origin(uri: &http::Uri) -> String {
    format!(
        "{}://{}",
        uri.scheme_str().unwrap_or(""),
        uri.authority().map(|a| a.as_str()).unwrap_or("")
    )
}

fn dpop_nonce(response: &HttpResponse) -> Option<String> {
    let value = response.headers().get("dpop-nonce")?.to_str().ok()?;
    // RFC 9449 §8.1: NQCHAR, as a token for the proof's `nonce` claim.
    (!value.is_empty()
        && value
            .chars()
            .all(|c| c == '!' || ('#'..='~').contains(&c) && c != '\\'))
    .then(|| value.to_owned())
}

/// RFC 9449 §8: the token endpoint answers `{"error": "use_dpop_nonce"}`
/// (400). (A 4xx that is not an OAuth JSON error never reaches here: the
/// HTTP client turns it into an error.)
fn asks_for_nonce(response: &HttpResponse) -> bool {
    #[derive(serde::Deserialize)]
    struct Error<'a> {
        #[serde(borrow)]
        error: Option<std::borrow::Cow<'a, str>>,
    }
    response.status().as_u16() == 400
        && serde_json::from_slice::<Error<'_>>(response.body())
            .is_ok_and(|e| e.error.as_deref() == Some("use_dpop_nonce"))
}
