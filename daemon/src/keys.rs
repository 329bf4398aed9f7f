//! The verbs of the keys a credential holds (`vault/jose.rs` signs):
//! `credential.jwks` (the public client keys, to register with the
//! provider), `credential.rotate_key` (the next client key, the old ones
//! kept until `retire_old`) and `dpop.proof` (a proof for one request to a
//! resource server, with the bound token from the `token.get` path).

use crate::error::ApiError;
use crate::handler::Handler;
use crate::manage::new_key;
use crate::state::{Daemon, Peer, Session};
use crate::vault::jose::SigningKey;
use crate::vault::keys::{KeyPurpose, StoredKey};
use crate::vault::Credential;
use latchkey_client::protocol::*;
use secrecy::{ExposeSecret, SecretString};
use std::borrow::Borrow;
use std::sync::Arc;

/// The longest `htu` a proof is made for.
const MAX_URL_LEN: usize = 4096;

impl Handler for CredentialJwks {
    type Reply = Jwks;

    async fn handle(daemon: &Arc<Daemon>, _: Peer, params: NameParams) -> Result<Jwks, ApiError> {
        let session = daemon.session()?;
        let (credential, _) = session.lookup(&params.name)?;
        keyed(&credential)?;
        jwks(&session, &credential).await
    }
}

impl Handler for CredentialRotateKey {
    type Reply = Jwks;

    async fn handle(
        daemon: &Arc<Daemon>,
        peer: Peer,
        params: RotateKeyParams,
    ) -> Result<Jwks, ApiError> {
        let session = daemon.session()?;
        let name = params.name.as_str();
        let (credential, _) = session.lookup(name)?;
        keyed(&credential)?;
        // No token request is out with a key that is being retired.
        let gate = session.gate(&credential.id);
        let _no_request_meanwhile = gate.lock().await;
        let held = client_keys(&session, &credential).await?;
        let (add, retire, detail) = if params.retire_old {
            if params.alg.is_some() {
                return Err(ApiError::invalid_params(
                    "--retire-old removes keys and makes none: drop --alg",
                ));
            }
            let retire: Vec<String> = held.iter().skip(1).map(|k| k.key.kid.clone()).collect();
            let detail = format!("retired {} older key(s)", retire.len());
            (None, retire, detail)
        } else {
            let alg = params
                .alg
                .or(held.first().map(|k| k.key.material.alg))
                .unwrap_or_default();
            let material = new_key(NewKey::Generate(alg), "next client key")?;
            (
                Some(material),
                Vec::new(),
                format!("added a {} key", alg.as_str()),
            )
        };
        let id = credential.id.clone();
        let target = Arc::clone(&credential);
        session
            .with_vault(move |keys, vault| {
                let retire: Vec<&str> = retire.iter().map(String::as_str).collect();
                vault.change_client_keys(keys, &target, add, &retire)
            })
            .await?;
        // A backoff after the old key's refusal must not delay the new one.
        session.tokens.clear_backoff(&id);
        daemon
            .audit
            .record("client_key_rotated", Some(name), Some(&peer), Some(detail));
        jwks(&session, &credential).await
    }
}

impl Handler for DpopProof {
    type Reply = DpopProofResult;

    async fn handle(
        daemon: &Arc<Daemon>,
        peer: Peer,
        params: DpopProofParams,
    ) -> Result<DpopProofResult, ApiError> {
        let method = params.method.to_ascii_uppercase();
        if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(ApiError::invalid_params(
                "the method must be an HTTP method such as GET or POST",
            ));
        }
        if params.url.len() > MAX_URL_LEN {
            return Err(ApiError::invalid_params(format!(
                "the URL is over {MAX_URL_LEN} bytes"
            )));
        }
        let url = url::Url::parse(&params.url)
            .ok()
            .filter(|u| matches!(u.scheme(), "https" | "http") && u.has_host())
            .ok_or_else(|| {
                ApiError::invalid_params(
                    "the URL must be an absolute http(s) URL of the resource server, such as https://api.example.com/v1/items",
                )
            })?;
        if let Some(nonce) = &params.nonce {
            if !valid_nonce(nonce) {
                return Err(ApiError::invalid_params(
                    "the nonce must be the DPoP-Nonce value the resource server sent (RFC 9449 §8.1)",
                ));
            }
        }
        let session = daemon.session()?;
        let (credential, _) = session.lookup(&params.credential)?;
        let name = &credential.config.name;
        if !credential.config.dpop {
            return Err(ApiError::new(ErrorKind::InvalidRequest, format!(
                "credential '{name}' has no DPoP key: its tokens are bearer tokens (`latchkey token {name}`); for DPoP add a credential with --dpop"
            )));
        }
        // The token path unchanged: policy, step-up, cache, refresh.
        let token_params = TokenParams {
            credential: params.credential.clone(),
            scopes: (!params.scopes.is_empty()).then(|| params.scopes.clone()),
            min_ttl: params.min_ttl,
            confirm_wait_secs: None,
        };
        let served = <TokenGet as Handler>::handle(daemon, peer, token_params).await?;
        let reply: &TokenReply = served.borrow();
        let token = TokenReply {
            access_token: SecretString::from(reply.access_token.expose_secret()),
            token_type: reply.token_type.clone(),
            expires_at: reply.expires_at,
            scope: reply.scope.clone(),
        };
        let key = dpop_key(&session, &credential).await?;
        let proof = key
            .dpop_proof(
                &method,
                &url,
                params.nonce.as_deref(),
                Some(&token.access_token),
                daemon.clock.now(),
            )
            .map_err(ApiError::internal)?;
        Ok(DpopProofResult { proof, token })
    }
}

/// Whether `nonce` can be a server's `DPoP-Nonce` (RFC 9449 §8.1: 1 to
/// 1024 NQCHARs, `%x21 / %x23-5B / %x5D-7E`).
pub(crate) fn valid_nonce(nonce: &str) -> bool {
    let nqchar = |c: char| c == '!' || ('#'..='~').contains(&c) && c != '\\';
    !nonce.is_empty() && nonce.len() <= 1024 && nonce.chars().all(nqchar)
}

/// Only a `private_key_jwt` credential has client keys.
fn keyed(credential: &Credential) -> Result<(), ApiError> {
    if credential.config.auth == AuthMethod::PrivateKeyJwt {
        return Ok(());
    }
    Err(ApiError::new(ErrorKind::InvalidRequest, format!(
        "credential '{}' authenticates with {}, not a key: client keys are for --auth private_key_jwt",
        credential.config.name,
        credential.config.auth.as_str()
    )))
}

/// Its client keys, newest first.
async fn client_keys(
    session: &Session,
    credential: &Credential,
) -> Result<Vec<StoredKey>, ApiError> {
    let mut keys: Vec<StoredKey> = session
        .credential_keys(credential)
        .await?
        .into_iter()
        .filter(|k| k.purpose == KeyPurpose::Client)
        .collect();
    keys.reverse();
    Ok(keys)
}

async fn jwks(session: &Session, credential: &Credential) -> Result<Jwks, ApiError> {
    let keys = client_keys(session, credential).await?;
    Ok(Jwks {
        keys: keys
            .iter()
            .map(|k| serde_json::to_value(k.key.public_jwk()).expect("a JWK serializes"))
            .collect(),
    })
}

async fn dpop_key(session: &Session, credential: &Credential) -> Result<SigningKey, ApiError> {
    session
        .credential_keys(credential)
        .await?
        .into_iter()
        .rev()
        .find(|k| k.purpose == KeyPurpose::Dpop)
        .map(|k| k.key)
        .ok_or_else(|| {
            ApiError::invalid_params(format!(
                "credential '{}' holds no DPoP key: add it again with --dpop",
                credential.config.name
            ))
        })
}
