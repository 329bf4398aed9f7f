//! The types of OAuth 1.0a (RFC 5849) credentials: a provider's three
//! endpoints, the signature methods, importing token credentials, and
//! `oauth1.sign`, which returns a signed `Authorization` header (the
//! consumer and token secrets never leave the daemon).

use super::expose;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

/// An OAuth 1.0a provider's endpoints (RFC 5849 §2).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Oauth1Endpoints {
    /// Temporary credential request URI (§2.1), e.g. `…/oauth/request_token`.
    pub temporary_credentials: String,
    /// Resource owner authorization URI (§2.2), e.g. `…/oauth/authorize`.
    pub authorization: String,
    /// Token request URI (§2.3), e.g. `…/oauth/access_token`.
    pub token: String,
}

/// How requests are signed (RFC 5849 §3.4; HMAC-SHA256 and RSA-SHA256 as
/// providers commonly add them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SignatureMethod {
    /// HMAC-SHA1 with the consumer secret and token secret (§3.4.2).
    #[serde(rename = "HMAC-SHA1")]
    HmacSha1,
    /// HMAC-SHA256 with the consumer secret and token secret.
    #[serde(rename = "HMAC-SHA256")]
    HmacSha256,
    /// RSASSA-PKCS1-v1_5 with SHA-1 (§3.4.3). The daemon refuses it: its
    /// RSA implementation without timing side channels (`ring`) signs with
    /// SHA-256 and up only; use RSA-SHA256 or an HMAC method.
    #[serde(rename = "RSA-SHA1")]
    RsaSha1,
    /// RSASSA-PKCS1-v1_5 with SHA-256 and the client's RSA private key.
    #[serde(rename = "RSA-SHA256")]
    RsaSha256,
    /// The secrets themselves as the signature (§3.4.4): only over https,
    /// and the app sees the secrets in the header.
    #[serde(rename = "PLAINTEXT")]
    Plaintext,
}

impl SignatureMethod {
    /// The wire and CLI spelling, as RFC 5849 writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            SignatureMethod::HmacSha1 => "HMAC-SHA1",
            SignatureMethod::HmacSha256 => "HMAC-SHA256",
            SignatureMethod::RsaSha1 => "RSA-SHA1",
            SignatureMethod::RsaSha256 => "RSA-SHA256",
            SignatureMethod::Plaintext => "PLAINTEXT",
        }
    }

    /// Whether it signs with an RSA private key rather than the consumer secret.
    pub fn is_rsa(self) -> bool {
        matches!(self, SignatureMethod::RsaSha1 | SignatureMethod::RsaSha256)
    }
}

impl std::str::FromStr for SignatureMethod {
    type Err = String;

    fn from_str(s: &str) -> Result<SignatureMethod, String> {
        [
            SignatureMethod::HmacSha1,
            SignatureMethod::HmacSha256,
            SignatureMethod::RsaSha1,
            SignatureMethod::RsaSha256,
            SignatureMethod::Plaintext,
        ]
        .into_iter()
        .find(|m| m.as_str().eq_ignore_ascii_case(s))
        .ok_or_else(|| {
            format!("unknown signature method '{s}': use HMAC-SHA1, HMAC-SHA256, RSA-SHA256 or PLAINTEXT")
        })
    }
}

/// Parameters of `oauth1.import_token`: token credentials obtained
/// elsewhere (a provider's developer page), stored sealed in place of a login.
#[derive(Serialize, Deserialize)]
pub struct Oauth1ImportParams {
    /// Credential name (grant `oauth1`).
    pub credential: String,
    /// The token identifier (`oauth_token`).
    #[serde(serialize_with = "expose")]
    pub token: SecretString,
    /// The token shared secret (`oauth_token_secret`).
    #[serde(serialize_with = "expose")]
    pub token_secret: SecretString,
}

/// Parameters of `oauth1.sign`: exactly the request the app is about to send.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Oauth1SignParams {
    /// Credential name (grant `oauth1`, with token credentials).
    pub credential: String,
    /// The HTTP method, e.g. `GET` or `POST`.
    pub method: String,
    /// The full request URL, query included (its parameters are signed).
    pub url: String,
    /// The `application/x-www-form-urlencoded` body's parameters, decoded,
    /// in order (they are signed too, RFC 5849 §3.4.1.3.1). Empty for other bodies.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub form: Vec<(String, String)>,
}

/// Result of `oauth1.sign`.
#[derive(Serialize, Deserialize)]
pub struct Oauth1SignResult {
    /// The `Authorization` header's value, `OAuth oauth_consumer_key="…", …`,
    /// with a fresh nonce and timestamp: good for this one request. A
    /// secret: it authorizes that request (and with PLAINTEXT it holds the
    /// secrets themselves).
    #[serde(serialize_with = "expose")]
    pub authorization: SecretString,
}

impl std::fmt::Debug for Oauth1SignResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Oauth1SignResult")
            .field("authorization", &"[redacted]")
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_methods_use_the_rfc_spellings() {
        for m in [
            SignatureMethod::HmacSha1,
            SignatureMethod::HmacSha256,
            SignatureMethod::RsaSha1,
            SignatureMethod::RsaSha256,
            SignatureMethod::Plaintext,
        ] {
            let wire = serde_json::to_string(&m).unwrap();
            assert_eq!(wire, format!("\"{}\"", m.as_str()));
            assert_eq!(m.as_str().to_lowercase().parse::<SignatureMethod>(), Ok(m));
        }
        assert!("MD5".parse::<SignatureMethod>().is_err());
    }
}
