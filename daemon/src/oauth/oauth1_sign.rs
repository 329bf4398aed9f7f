//! OAuth 1.0a request signing (RFC 5849 §3): the `oauth1-request` crate
//! builds the signature base string (§3.4.1) and the `Authorization`
//! header (§3.5.1); the signature methods it lacks are fed its base string
//! through its `SignatureMethod`/`Sign` traits: HMAC-SHA256 (`hmac` +
//! `sha2`) and RSA-SHA256 (ring's RSASSA-PKCS1-v1_5, constant-time).
//! HMAC-SHA1 and PLAINTEXT are the crate's own. RSA-SHA1 is refused:
//! ring does not sign with SHA-1, and the one Rust RSA crate that does
//! (`rsa`) has a timing side channel (RUSTSEC-2023-0071).

use crate::error::ApiError;
use base64::Engine as _;
use hmac::{Hmac, KeyInit as _, Mac as _};
use latchkey_client::protocol::{ErrorKind, SignatureMethod};
use oauth1_request::serializer::Serializer;
use oauth1_request::signature_method::{Sign, SignatureMethod as CrateMethod};
use oauth1_request::{Builder, Credentials};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use ring::signature::{RsaKeyPair, RSA_PKCS1_SHA256};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::PrivatePkcs8KeyDer;
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;
use std::fmt::{self, Display, Write as _};
use url::Url;
use zeroize::Zeroizing;

/// Everything but RFC 3986's unreserved characters is encoded (§3.6).
const ENCODE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// 64: a request with more query and form parameters than this is not
/// one an app signs by hand; it bounds the work of one call.
pub const MAX_PARAMETERS: usize = 64;

/// The client's signing secret, opened for one signature.
pub enum ClientKey {
    /// The consumer secret (HMAC-SHA1, HMAC-SHA256, PLAINTEXT).
    Secret(SecretString),
    /// The client's RSA private key (RSA-SHA256).
    Rsa(Box<RsaKeyPair>),
}

/// A credential's keys for one signature: the consumer key, its signing
/// secret, and the token credentials when there are some.
pub struct Keys<'a> {
    pub method: SignatureMethod,
    pub consumer_key: &'a str,
    pub client: &'a ClientKey,
    /// Token and token secret (temporary or token credentials).
    pub token: Option<(&'a SecretString, &'a SecretString)>,
}

/// The request to sign, and the protocol parameters a flow step adds.
pub struct Request<'a> {
    pub method: &'a str,
    pub url: &'a str,
    /// The form body's parameters, decoded.
    pub form: &'a [(String, String)],
    /// `oauth_callback` (temporary credential request, §2.1).
    pub callback: Option<&'a str>,
    /// `oauth_verifier` (token request, §2.3).
    pub verifier: Option<&'a str>,
}

/// Why a signature method cannot be used, or `None`: RSA-SHA1 never,
/// PLAINTEXT only over https (§3.4.4: it sends the secrets as they are).
pub fn refusal(method: SignatureMethod, url: &Url) -> Option<String> {
    match method {
        SignatureMethod::RsaSha1 => Some("RSA-SHA1 is not supported: the only RSA implementation without timing side channels Latchkey uses (ring) does not sign with SHA-1, and the `rsa` crate that does is vulnerable (RUSTSEC-2023-0071); register an RSA-SHA256 key with the provider, or use HMAC-SHA1 or HMAC-SHA256 (--signature-method)".to_owned()),
        SignatureMethod::Plaintext if url.scheme() != "https" => Some(format!(
            "PLAINTEXT sends the consumer and token secrets as they are, so it is allowed only over https, and {} is {}; use HMAC-SHA1, HMAC-SHA256 or RSA-SHA256",
            super::text::provider_text(url.as_str(), &[]),
            url.scheme()
        )),
        _ => None,
    }
}

/// The RSA private key from PKCS#8 PEM (`BEGIN PRIVATE KEY`) or the
/// base64 of its DER. Errors never quote the key.
pub fn rsa_key(key: &SecretString) -> Result<RsaKeyPair, ApiError> {
    let text = key.expose_secret().trim();
    let der: Zeroizing<Vec<u8>> = if text.starts_with("-----BEGIN RSA PRIVATE KEY") {
        return Err(ApiError::invalid_params(
            "the private key is PKCS#1 (BEGIN RSA PRIVATE KEY); convert it to PKCS#8 with `openssl pkcs8 -topk8 -nocrypt -in KEY -out KEY.p8` and pass that file",
        ));
    } else if text.starts_with("-----BEGIN") {
        let pem = PrivatePkcs8KeyDer::from_pem_slice(text.as_bytes()).map_err(|_| {
            ApiError::invalid_params(
                "the private key file holds no unencrypted PKCS#8 key (BEGIN PRIVATE KEY); convert it with `openssl pkcs8 -topk8 -nocrypt -in KEY -out KEY.p8`",
            )
        })?;
        Zeroizing::new(pem.secret_pkcs8_der().to_vec())
    } else {
        Zeroizing::new(
            base64::engine::general_purpose::STANDARD
                .decode(text)
                .map_err(|_| {
                    ApiError::invalid_params(
                        "the private key is neither PEM nor base64 DER; pass a PKCS#8 key file (--key-file)",
                    )
                })?,
        )
    };
    RsaKeyPair::from_pkcs8(&der).map_err(|e| {
        ApiError::invalid_params(format!(
            "the private key is not a usable RSA key in PKCS#8 form ({e}): RSA-SHA256 needs an RSA key of 2048 to 8192 bits"
        ))
    })
}

/// The `Authorization` header's value for exactly this request, with a
/// fresh nonce and timestamp.
pub fn authorize(keys: &Keys<'_>, request: &Request<'_>) -> Result<SecretString, ApiError> {
    let url = Url::parse(request.url).map_err(|e| {
        ApiError::invalid_params(format!(
            "the URL to sign is not a valid absolute URL ({e}); give the full URL, e.g. https://api.example.com/1/items?x=1"
        ))
    })?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(ApiError::invalid_params(
            "the URL to sign must be an http or https URL with a host",
        ));
    }
    if let Some(why) = refusal(keys.method, &url) {
        return Err(ApiError::invalid_params(why));
    }
    let method = request.method.to_ascii_uppercase();
    if method.is_empty() || method.len() > 32 || !method.bytes().all(|b| b.is_ascii_alphabetic()) {
        return Err(ApiError::invalid_params(
            "the HTTP method must be a word such as GET or POST",
        ));
    }
    let params = Normalized::new(&url, request.form)?;
    let base = base_uri(&url);
    let token = keys
        .token
        .map(|(t, s)| Credentials::new(t.expose_secret(), s.expose_secret()));
    let header = match (keys.method, keys.client) {
        (SignatureMethod::HmacSha1, ClientKey::Secret(secret)) => header(
            oauth1_request::HMAC_SHA1,
            keys.consumer_key,
            secret.expose_secret(),
            token,
            request,
            &method,
            &base,
            &params,
        ),
        (SignatureMethod::HmacSha256, ClientKey::Secret(secret)) => header(
            HmacSha256,
            keys.consumer_key,
            secret.expose_secret(),
            token,
            request,
            &method,
            &base,
            &params,
        ),
        (SignatureMethod::Plaintext, ClientKey::Secret(secret)) => header(
            oauth1_request::PLAINTEXT,
            keys.consumer_key,
            secret.expose_secret(),
            token,
            request,
            &method,
            &base,
            &params,
        ),
        (SignatureMethod::RsaSha256, ClientKey::Rsa(key)) => header(
            RsaSha256(key),
            keys.consumer_key,
            "",
            token,
            request,
            &method,
            &base,
            &params,
        ),
        _ => {
            return Err(ApiError::new(
                ErrorKind::VaultCorrupt,
                "the credential's stored key does not fit its signature method: remove the credential and add it again",
            ))
        }
    };
    Ok(SecretString::from(header))
}

#[allow(clippy::too_many_arguments)]
fn header<SM: CrateMethod>(
    method: SM,
    consumer_key: &str,
    consumer_secret: &str,
    token: Option<Credentials<&str>>,
    request: &Request<'_>,
    http_method: &str,
    base: &str,
    params: &Normalized,
) -> String {
    let mut builder = Builder::<_, _>::new(Credentials::new(consumer_key, consumer_secret), method);
    builder
        .token(token)
        .callback(request.callback)
        .verifier(request.verifier);
    builder.into_authorization(http_method, base, params)
}

/// The base string URI (§3.4.1.2): scheme and host lowercased (the URL
/// parser does), the port only when not the scheme's default, the path;
/// no query, no fragment.
fn base_uri(url: &Url) -> String {
    let host = url.host_str().unwrap_or_default();
    match url.port() {
        Some(port) => format!("{}://{host}:{port}{}", url.scheme(), url.path()),
        None => format!("{}://{host}{}", url.scheme(), url.path()),
    }
}

/// The request's parameters (§3.4.1.3.1: the query, then the form body),
/// percent-encoded and sorted by encoded name, then encoded value
/// (§3.4.1.3.2), as the crate's `Serializer` wants them.
struct Normalized(Vec<Pair>);

struct Pair {
    /// The encoded name: what sorts.
    name: String,
    /// The encoded name encoded again: the crate writes names into the
    /// base string as given (its `Serializer::serialize_parameter*`
    /// contract), where §3.4.1.1 needs them encoded once more.
    name_in_base: String,
    /// The encoded value (the crate encodes it once more).
    value: String,
}

fn encode(s: &str) -> String {
    utf8_percent_encode(s, ENCODE).to_string()
}

impl Normalized {
    fn new(url: &Url, form: &[(String, String)]) -> Result<Normalized, ApiError> {
        let query = url
            .query_pairs()
            .map(|(k, v)| (k.into_owned(), v.into_owned()));
        let all: Vec<(String, String)> = query.chain(form.iter().cloned()).collect();
        if all.len() > MAX_PARAMETERS {
            return Err(ApiError::invalid_params(format!(
                "the request has {} query and form parameters; at most {MAX_PARAMETERS} can be signed",
                all.len()
            )));
        }
        let mut pairs = Vec::with_capacity(all.len());
        for (name, value) in all {
            if name.starts_with("oauth_") {
                return Err(ApiError::invalid_params(format!(
                    "the request carries the protocol parameter '{}' itself; leave every oauth_* parameter to the daemon",
                    super::text::provider_text(&name, &[])
                )));
            }
            let name = encode(&name);
            pairs.push(Pair {
                name_in_base: encode(&name),
                name,
                value: encode(&value),
            });
        }
        pairs.sort_by(|a, b| (&a.name, &a.value).cmp(&(&b.name, &b.value)));
        Ok(Normalized(pairs))
    }
}

/// The protocol parameters in the order the crate's serializer takes them
/// (byte order of their names, as in the base string).
const OAUTH_PARAMETERS: [&str; 8] = [
    "oauth_callback",
    "oauth_consumer_key",
    "oauth_nonce",
    "oauth_signature_method",
    "oauth_timestamp",
    "oauth_token",
    "oauth_verifier",
    "oauth_version",
];

fn serialize_oauth<S: Serializer>(s: &mut S, i: usize) {
    match i {
        0 => s.serialize_oauth_callback(),
        1 => s.serialize_oauth_consumer_key(),
        2 => s.serialize_oauth_nonce(),
        3 => s.serialize_oauth_signature_method(),
        4 => s.serialize_oauth_timestamp(),
        5 => s.serialize_oauth_token(),
        6 => s.serialize_oauth_verifier(),
        _ => s.serialize_oauth_version(),
    }
}

impl oauth1_request::Request for Normalized {
    fn serialize<S: Serializer>(&self, mut s: S) -> S::Output {
        let mut next = 0;
        for pair in &self.0 {
            // Encoding keeps the order of these names (they hold no '%').
            while next < OAUTH_PARAMETERS.len() && OAUTH_PARAMETERS[next] < pair.name.as_str() {
                serialize_oauth(&mut s, next);
                next += 1;
            }
            s.serialize_parameter_encoded(&pair.name_in_base, &pair.value);
        }
        while next < OAUTH_PARAMETERS.len() {
            serialize_oauth(&mut s, next);
            next += 1;
        }
        s.end()
    }
}

/// The signature base string as the crate feeds it to a [`Sign`]: the
/// method, `&`, the encoded base URI, `&`, then the parameters, each
/// already in their base-string encoding, `%3D` and `%26` between.
#[derive(Default)]
struct BaseString(String);

impl BaseString {
    fn request_method(&mut self, method: &str) {
        self.0.push_str(method);
        self.0.push('&');
    }

    fn uri<T: Display>(&mut self, uri: T) {
        let _ = write!(self.0, "{uri}&");
    }

    fn parameter<V: Display>(&mut self, key: &str, value: V) {
        let _ = write!(self.0, "{key}%3D{value}");
    }

    fn delimiter(&mut self) {
        self.0.push_str("%26");
    }
}

/// A signature as the header carries it: base64, percent-encoded.
pub struct Encoded(String);

impl Display for Encoded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn encoded(signature: &[u8]) -> Encoded {
    Encoded(encode(
        &base64::engine::general_purpose::STANDARD.encode(signature),
    ))
}

/// HMAC-SHA256: as HMAC-SHA1 (§3.4.2) with SHA-256.
#[derive(Clone, Copy)]
struct HmacSha256;

struct HmacSha256Sign {
    /// The key of §3.4.2: the encoded consumer secret, `&`, the encoded token secret.
    key: Zeroizing<String>,
    base: BaseString,
}

impl CrateMethod for HmacSha256 {
    type Sign = HmacSha256Sign;

    fn sign_with(self, client_secret: &str, token_secret: Option<&str>) -> HmacSha256Sign {
        let mut key = Zeroizing::new(String::new());
        key.push_str(&Zeroizing::new(encode(client_secret)));
        key.push('&');
        key.push_str(&Zeroizing::new(encode(token_secret.unwrap_or_default())));
        HmacSha256Sign {
            key,
            base: BaseString::default(),
        }
    }
}

impl Sign for HmacSha256Sign {
    type Signature = Encoded;

    fn get_signature_method_name(&self) -> &'static str {
        "HMAC-SHA256"
    }
    fn request_method(&mut self, method: &str) {
        self.base.request_method(method);
    }
    fn uri<T: Display>(&mut self, uri: T) {
        self.base.uri(uri);
    }
    fn parameter<V: Display>(&mut self, key: &str, value: V) {
        self.base.parameter(key, value);
    }
    fn delimiter(&mut self) {
        self.base.delimiter();
    }
    fn end(self) -> Encoded {
        let mut mac = Hmac::<Sha256>::new_from_slice(self.key.as_bytes())
            .expect("HMAC takes a key of any length");
        mac.update(self.base.0.as_bytes());
        encoded(&mac.finalize().into_bytes())
    }
}

/// RSA-SHA256: RSASSA-PKCS1-v1_5 (RFC 3447 §8.2) with SHA-256 over the
/// base string (as §3.4.3 with SHA-1), by ring.
struct RsaSha256<'k>(&'k RsaKeyPair);

struct RsaSha256Sign<'k> {
    key: &'k RsaKeyPair,
    base: BaseString,
}

impl<'k> CrateMethod for RsaSha256<'k> {
    type Sign = RsaSha256Sign<'k>;

    fn sign_with(self, _: &str, _: Option<&str>) -> RsaSha256Sign<'k> {
        RsaSha256Sign {
            key: self.0,
            base: BaseString::default(),
        }
    }
}

impl Sign for RsaSha256Sign<'_> {
    type Signature = Encoded;

    fn get_signature_method_name(&self) -> &'static str {
        "RSA-SHA256"
    }
    fn request_method(&mut self, method: &str) {
        self.base.request_method(method);
    }
    fn uri<T: Display>(&mut self, uri: T) {
        self.base.uri(uri);
    }
    fn parameter<V: Display>(&mut self, key: &str, value: V) {
        self.base.parameter(key, value);
    }
    fn delimiter(&mut self) {
        self.base.delimiter();
    }
    fn end(self) -> Encoded {
        let mut signature = vec![0; self.key.public().modulus_len()];
        self.key
            .sign(
                &RSA_PKCS1_SHA256,
                &ring::rand::SystemRandom::new(),
                self.base.0.as_bytes(),
                &mut signature,
            )
            // The buffer is the modulus' length; ring fails only when the
            // system's random source does (its blinding needs it).
            .expect("ring signs into a buffer of the modulus' length");
        encoded(&signature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(url: &str, form: &[(&str, &str)]) -> Vec<(String, String)> {
        let form: Vec<(String, String)> = form
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Normalized::new(&Url::parse(url).unwrap(), &form)
            .unwrap()
            .0
            .into_iter()
            .map(|p| (p.name, p.value))
            .collect()
    }

    /// RFC 5849 §3.4.1.3.2's example: sorted by encoded name, then value.
    #[test]
    fn parameters_are_normalized_as_the_rfc_example() {
        let got = params(
            "http://example.com/request?b5=%3D%253D&a3=a&c%40=&a2=r%20b",
            &[("c2", ""), ("a3", "2 q")],
        );
        let want = [
            ("a2", "r%20b"),
            ("a3", "2%20q"),
            ("a3", "a"),
            ("b5", "%3D%253D"),
            ("c%40", ""),
            ("c2", ""),
        ];
        let want: Vec<(String, String)> = want
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn the_base_uri_drops_default_ports_and_lowercases() {
        let url = Url::parse("HTTP://EXAMPLE.com:80/r%20v/X?id=123").unwrap();
        assert_eq!(base_uri(&url), "http://example.com/r%20v/X");
        let url = Url::parse("https://www.example.net:8080/?q=1").unwrap();
        assert_eq!(base_uri(&url), "https://www.example.net:8080/");
    }

    /// RFC 5849 §1.2's example request, HMAC-SHA1 with its nonce and
    /// timestamp pinned, through the same Request impl; the signature is
    /// the one oauthlib computes for it (the RFC's own has errata).
    #[test]
    fn the_rfc_example_signature() {
        let url =
            Url::parse("http://photos.example.net/photos?file=vacation.jpg&size=original").unwrap();
        let params = Normalized::new(&url, &[]).unwrap();
        let mut builder = Builder::<_, _>::new(
            Credentials::new("dpf43f3p2l4k3l03", "kd94hf93k423kf44"),
            oauth1_request::HMAC_SHA1,
        );
        builder
            .token(Credentials::new("nnch734d00sl2jdk", "pfkkdhi9sl3r4s00"))
            .nonce("chapoH")
            .timestamp(std::num::NonZeroU64::new(137131202))
            .version(true);
        let header = builder.authorize("GET", base_uri(&url), &params);
        assert!(
            header.contains(r#"oauth_signature="1IAE9RzK%2BDqSqVTdQ%2F0zWANXVzs%3D""#),
            "{header}"
        );
    }

    #[test]
    fn protocol_parameters_in_the_request_are_refused() {
        let url = Url::parse("https://api.example/x?oauth_token=t").unwrap();
        assert!(Normalized::new(&url, &[]).is_err());
    }

    #[test]
    fn rsa_sha1_and_plaintext_over_http_are_refused() {
        let http = Url::parse("http://127.0.0.1/x").unwrap();
        let https = Url::parse("https://api.example/x").unwrap();
        assert!(refusal(SignatureMethod::RsaSha1, &https)
            .unwrap()
            .contains("RSA-SHA256"));
        assert!(refusal(SignatureMethod::Plaintext, &http).is_some());
        assert!(refusal(SignatureMethod::Plaintext, &https).is_none());
        assert!(refusal(SignatureMethod::HmacSha1, &http).is_none());
    }
}
