//! The subject token of a token exchange credential (RFC 8693 §2.1): read
//! afresh at every exchange from the file or the environment variable the
//! credential names (a CI system issues a new one per job), never stored,
//! never logged. Checked before the provider is asked: present, not empty,
//! printable, and — for a JWT — its `exp` not past, read without verifying
//! the signature (the provider verifies; this only names an expired token
//! instead of sending it). A token that is no JWT is sent as it is.

use crate::error::ApiError;
use latchkey_client::protocol::{ErrorKind, SubjectTokenSource};
use secrecy::{ExposeSecret, SecretString};
use std::io::Read;
use zeroize::Zeroizing;

/// 64 KiB: a CI system's OIDC token is one or two KiB, a SAML assertion a
/// few; a file larger than this is not a token (or is the wrong file).
pub const MAX_SUBJECT_TOKEN_BYTES: usize = 64 * 1024;

/// [`read`] on a blocking thread (a file on a slow or network disk must
/// not stall the runtime).
pub(crate) async fn load(
    credential: &str,
    source: &SubjectTokenSource,
    now: i64,
) -> Result<SecretString, ApiError> {
    let (credential, source) = (credential.to_owned(), source.clone());
    tokio::task::spawn_blocking(move || read(&credential, &source, now))
        .await
        .map_err(|e| ApiError::internal(format!("the subject token reader failed: {e}")))?
}

/// The subject token from `source`, checked (see the module docs). Blocking:
/// call it off the async runtime ([`load`]).
pub(crate) fn read(
    credential: &str,
    source: &SubjectTokenSource,
    now: i64,
) -> Result<SecretString, ApiError> {
    let raw = match source {
        SubjectTokenSource::File(path) => read_file(credential, path)?,
        SubjectTokenSource::Env(var) => read_env(credential, var)?,
    };
    let token = std::str::from_utf8(&raw)
        .ok()
        .map(|t| t.trim_matches(|c: char| c.is_ascii_whitespace()))
        .ok_or_else(|| unusable(credential, source, "is not UTF-8 text"))?;
    if token.is_empty() {
        return Err(unavailable(
            credential,
            source,
            format!(
                "is empty; {}",
                match source {
                    SubjectTokenSource::File(_) =>
                        "the CI system writes the token there for each job: check that this job asks for one",
                    SubjectTokenSource::Env(_) =>
                        "the CI system sets it for each job: check that this job asks for one",
                }
            ),
        ));
    }
    // RFC 6749 Appendix A (and what a JWT, a SAML assertion in base64 or an
    // opaque token consist of): printable ASCII, no spaces.
    if !token.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        return Err(unusable(
            credential,
            source,
            "holds characters that are not a token's (spaces, line breaks inside it, or non-ASCII)",
        ));
    }
    let token = SecretString::from(token);
    check_expiry(credential, source, &token, now)?;
    Ok(token)
}

/// The file's bytes, at most [`MAX_SUBJECT_TOKEN_BYTES`], in a buffer that
/// is zeroized when dropped. Symbolic links are followed (Kubernetes'
/// projected tokens are links that move on each rotation); the file is
/// opened non-blocking and must be a regular file, so a FIFO or a device
/// named by mistake cannot hang the daemon.
fn read_file(credential: &str, path: &str) -> Result<Zeroizing<Vec<u8>>, ApiError> {
    use std::os::unix::fs::OpenOptionsExt;
    let source = SubjectTokenSource::File(path.to_owned());
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| {
            let what = match e.kind() {
                std::io::ErrorKind::NotFound => {
                    "does not exist; the CI system writes it for each job: check the path, and that this job asks for a token".to_owned()
                }
                _ => format!("cannot be read ({e})"),
            };
            unavailable(credential, &source, what)
        })?;
    let meta = file
        .metadata()
        .map_err(|e| unavailable(credential, &source, format!("cannot be read ({e})")))?;
    if !meta.is_file() {
        return Err(unusable(credential, &source, "is not a regular file"));
    }
    let mut raw = Zeroizing::new(Vec::with_capacity(MAX_SUBJECT_TOKEN_BYTES + 1));
    // Read into the pre-sized buffer only: a reallocation would leave a
    // copy of the token behind, unzeroized.
    file.take(MAX_SUBJECT_TOKEN_BYTES as u64 + 1)
        .read_to_end(&mut raw)
        .map_err(|e| unavailable(credential, &source, format!("cannot be read ({e})")))?;
    if raw.len() > MAX_SUBJECT_TOKEN_BYTES {
        return Err(unusable(
            credential,
            &source,
            format!("is larger than {MAX_SUBJECT_TOKEN_BYTES} bytes: it is not a token"),
        ));
    }
    Ok(raw)
}

/// The variable of the daemon's own environment: the one the `latchkey`
/// command that started the daemon had (a daemon started some other way,
/// or before the variable was set, does not see it).
fn read_env(credential: &str, var: &str) -> Result<Zeroizing<Vec<u8>>, ApiError> {
    use std::os::unix::ffi::OsStringExt;
    match std::env::var_os(var) {
        Some(value) => Ok(Zeroizing::new(value.into_vec())),
        None => Err(unavailable(
            credential,
            &SubjectTokenSource::Env(var.to_owned()),
            format!(
                "is not set in the daemon's environment (pid {}): the daemon reads its own environment, which it inherits from the `latchkey` command that started it; set {var} before the job's first latchkey command (or restart the daemon with `latchkey daemon stop`), or use --subject-token-file",
                std::process::id()
            ),
        )),
    }
}

/// Refuses a JWT whose `exp` is past. Anything that does not decode as a
/// JWT is left to the provider.
fn check_expiry(
    credential: &str,
    source: &SubjectTokenSource,
    token: &SecretString,
    now: i64,
) -> Result<(), ApiError> {
    let Some(exp) = unverified_expiry(token.expose_secret()) else {
        return Ok(());
    };
    if exp > now {
        return Ok(());
    }
    Err(unavailable(
        credential,
        source,
        format!(
            "holds a JWT that expired {} s ago (exp {exp}); the CI system issues a fresh one per job: run this in a job that asks for one, or make the job write the new token there",
            now - exp
        ),
    ))
}

/// A JWT's `exp` claim, read without checking the signature, or `None` when
/// the token is no JWT or has no numeric `exp`.
fn unverified_expiry(token: &str) -> Option<i64> {
    #[derive(serde::Deserialize)]
    struct Expiry {
        #[serde(default)]
        exp: Option<serde_json::Number>,
    }
    // A JWS compact serialization has exactly three parts (a JWE five: its
    // claims are encrypted, so only the provider can read them).
    if token.split('.').count() != 3 {
        return None;
    }
    let mut validation = jsonwebtoken::Validation::default();
    validation.insecure_disable_signature_validation();
    validation.validate_exp = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    let key = jsonwebtoken::DecodingKey::from_secret(&[]);
    let claims = jsonwebtoken::decode::<Expiry>(token, &key, &validation)
        .ok()?
        .claims;
    let exp = claims.exp?;
    exp.as_i64().or_else(|| {
        exp.as_f64()
            .map(|f| f.clamp(i64::MIN as f64, i64::MAX as f64) as i64)
    })
}

/// The subject token cannot be had: the error names where it is read from.
fn unavailable(credential: &str, source: &SubjectTokenSource, what: impl AsRef<str>) -> ApiError {
    ApiError::new(
        ErrorKind::SubjectTokenUnavailable,
        format!(
            "credential '{credential}': the subject token {} {}",
            source.describe(),
            what.as_ref()
        ),
    )
}

/// The source holds something that is not a token.
fn unusable(credential: &str, source: &SubjectTokenSource, what: impl AsRef<str>) -> ApiError {
    unavailable(
        credential,
        source,
        format!("{}; it must hold only the token", what.as_ref()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    fn jwt(claims: &str) -> String {
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        format!(
            "{}.{}.c2lnbmF0dXJl",
            b64(r#"{"alg":"ES256","typ":"JWT"}"#),
            b64(claims)
        )
    }

    #[test]
    fn a_jwts_expiry_is_read_without_verifying() {
        assert_eq!(
            unverified_expiry(&jwt(r#"{"exp":1700000000}"#)),
            Some(1_700_000_000)
        );
        assert_eq!(
            unverified_expiry(&jwt(r#"{"exp":1.5e9}"#)),
            Some(1_500_000_000)
        );
        assert_eq!(unverified_expiry(&jwt(r#"{"sub":"x"}"#)), None);
        assert_eq!(unverified_expiry(&jwt(r#"{"exp":"soon"}"#)), None);
        assert_eq!(unverified_expiry("opaque-token"), None);
        assert_eq!(unverified_expiry("a.b.c"), None);
    }

    #[test]
    fn files_are_read_trimmed_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        let source = SubjectTokenSource::File(path.to_str().unwrap().to_owned());
        let err = read("ci", &source, 0).unwrap_err();
        assert_eq!(err.kind, ErrorKind::SubjectTokenUnavailable);
        assert!(err.message.contains("does not exist"), "{err}");
        assert!(err.message.contains(path.to_str().unwrap()), "{err}");

        std::fs::write(&path, "\n").unwrap();
        assert!(read("ci", &source, 0)
            .unwrap_err()
            .message
            .contains("is empty"));

        std::fs::write(&path, "tok en-canary").unwrap();
        let err = read("ci", &source, 0).unwrap_err();
        assert!(!err.message.contains("canary"), "{err}");

        std::fs::write(&path, "opaque-token\n").unwrap();
        assert_eq!(
            read("ci", &source, 0).unwrap().expose_secret(),
            "opaque-token"
        );

        let expired = jwt(r#"{"exp":100}"#);
        std::fs::write(&path, &expired).unwrap();
        let err = read("ci", &source, 160).unwrap_err();
        assert!(err.message.contains("expired 60 s ago"), "{err}");
        assert!(!err.message.contains(&expired), "{err}");
        assert!(read("ci", &source, 99).is_ok());

        std::fs::write(&path, vec![b'a'; MAX_SUBJECT_TOKEN_BYTES + 1]).unwrap();
        assert!(read("ci", &source, 0)
            .unwrap_err()
            .message
            .contains("larger than"));

        let not_a_file = SubjectTokenSource::File(dir.path().to_str().unwrap().to_owned());
        assert!(read("ci", &not_a_file, 0)
            .unwrap_err()
            .message
            .contains("not a regular file"));
    }

    #[test]
    fn an_unset_variable_is_named() {
        let source = SubjectTokenSource::Env("LATCHKEY_TEST_SURELY_UNSET_VARIABLE".into());
        let err = read("ci", &source, 0).unwrap_err();
        assert_eq!(err.kind, ErrorKind::SubjectTokenUnavailable);
        assert!(
            err.message
                .contains("environment variable LATCHKEY_TEST_SURELY_UNSET_VARIABLE is not set"),
            "{err}"
        );
    }
}
