//! Providers and credentials: the verbs that add, list, show and remove
//! them (`provider.*`, `credential.add/list/show`; `credential.remove`
//! revokes first, in `revoke`), with their checks on URLs and secrets.

use crate::cache::EntryInfo;
use crate::error::ApiError;
use crate::handler::Handler;
use crate::oauth::{discovery, http::check_url};
use crate::policy::{check_name, normalize_scopes};
use crate::state::{Daemon, Peer, Session};
use crate::vault::jose::{self, KeyMaterial};
use crate::vault::keys::KeyPurpose;
use crate::vault::{Catalog, Credential, CredentialConfig, Provider, ProviderConfig};
use latchkey_client::protocol::*;
use secrecy::ExposeSecret;
use std::sync::Arc;

/// Discovery (when an issuer is given), explicit endpoints over
/// discovered ones, then the provider sealed into the vault.
impl Handler for ProviderAdd {
    type Reply = ProviderInfo;

    async fn handle(
        daemon: &Arc<Daemon>,
        peer: Peer,
        params: ProviderAddParams,
    ) -> Result<ProviderInfo, ApiError> {
        check_name("provider", &params.name)?;
        daemon.session()?;
        let oauth1 = params
            .oauth1
            .as_ref()
            .map(|o| oauth1_endpoints(&params, o))
            .transpose()?;
        let (issuer, mut endpoints, iss_parameter_supported) = match &params.issuer {
            Some(issuer) => {
                let found = discovery::discover(&daemon.http, issuer).await?;
                (
                    Some(found.issuer),
                    found.endpoints,
                    found.iss_parameter_supported,
                )
            }
            None => (None, Endpoints::default(), false),
        };
        let explicit = params.endpoints;
        let overrides = [
            (
                &mut endpoints.authorization_endpoint,
                explicit.authorization_endpoint,
                "authorization endpoint",
            ),
            (
                &mut endpoints.token_endpoint,
                explicit.token_endpoint,
                "token endpoint",
            ),
            (
                &mut endpoints.device_authorization_endpoint,
                explicit.device_authorization_endpoint,
                "device authorization endpoint",
            ),
            (
                &mut endpoints.revocation_endpoint,
                explicit.revocation_endpoint,
                "revocation endpoint",
            ),
            (
                &mut endpoints.introspection_endpoint,
                explicit.introspection_endpoint,
                "introspection endpoint",
            ),
            (&mut endpoints.jwks_uri, explicit.jwks_uri, "JWKS URI"),
        ];
        for (slot, value, what) in overrides {
            if let Some(value) = value {
                *slot = Some(
                    check_url(what, &value)
                        .map_err(ApiError::invalid_params)?
                        .to_string(),
                );
            }
        }
        if endpoints.token_endpoint.is_none() && oauth1.is_none() {
            return Err(ApiError::invalid_params(format!(
                    "provider '{}' needs a token endpoint: pass --issuer URL for discovery, or --token-endpoint URL",
                    params.name
                )));
        }
        // Re-take the session: discovery awaited the network, and the vault
        // may have been locked (and reopened) meanwhile.
        let session = daemon.session()?;
        if session.catalog().providers().contains_key(&params.name) {
            return Err(ApiError::new(
                ErrorKind::AlreadyExists,
                format!(
                    "a provider named '{}' exists: remove it first with `latchkey provider remove {}`",
                    params.name, params.name
                ),
            ));
        }
        let config = ProviderConfig {
            name: params.name.clone(),
            issuer,
            endpoints,
            iss_parameter_supported,
            oauth1,
        };
        let provider = session
            .with_vault(move |keys, vault| vault.add_provider(keys, config))
            .await?;
        let info = provider_info(&provider, &[]);
        session.catalog_mut().add_provider(Arc::new(provider));
        daemon
            .audit
            .record("provider_added", None, Some(&peer), Some(params.name));
        Ok(info)
    }
}

impl Handler for ProviderList {
    type Reply = Vec<ProviderInfo>;

    async fn handle(
        daemon: &Arc<Daemon>,
        _: Peer,
        _: Empty,
    ) -> Result<Vec<ProviderInfo>, ApiError> {
        let session = daemon.session()?;
        let catalog = session.catalog();
        let mut list: Vec<ProviderInfo> = catalog
            .providers()
            .values()
            .map(|p| provider_info(p, &credentials_of(&catalog, &p.id)))
            .collect();
        list.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(list)
    }
}

impl Handler for ProviderShow {
    type Reply = ProviderInfo;

    async fn handle(
        daemon: &Arc<Daemon>,
        _: Peer,
        params: NameParams,
    ) -> Result<ProviderInfo, ApiError> {
        let name = params.name.as_str();
        let session = daemon.session()?;
        let catalog = session.catalog();
        let provider = catalog
            .providers()
            .get(name)
            .ok_or_else(|| ApiError::no_provider(name))?;
        Ok(provider_info(
            provider,
            &credentials_of(&catalog, &provider.id),
        ))
    }
}

/// Only a provider that no credential uses.
impl Handler for ProviderRemove {
    type Reply = Empty;

    async fn handle(
        daemon: &Arc<Daemon>,
        peer: Peer,
        params: NameParams,
    ) -> Result<Empty, ApiError> {
        let name = params.name.as_str();
        let session = daemon.session()?;
        let id = {
            let catalog = session.catalog();
            let provider = catalog
                .providers()
                .get(name)
                .ok_or_else(|| ApiError::no_provider(name))?;
            let users = credentials_of(&catalog, &provider.id);
            if !users.is_empty() {
                return Err(ApiError::new(
                    ErrorKind::InvalidRequest,
                    format!(
                        "provider '{name}' is used by credential(s) {}: remove them first with `latchkey credential remove NAME`",
                        users.join(", ")
                    ),
                ));
            }
            provider.id.clone()
        };
        // A credential added meanwhile is stopped by the file's foreign key.
        session
            .with_vault(move |_, vault| vault.remove_provider(&id))
            .await?;
        session.catalog_mut().remove_provider(name);
        daemon
            .audit
            .record("provider_removed", None, Some(&peer), Some(name.into()));
        Ok(Empty {})
    }
}

/// Checks the client's settings, then seals the credential (and its
/// secret) into the vault.
impl Handler for CredentialAdd {
    type Reply = CredentialInfo;

    async fn handle(
        daemon: &Arc<Daemon>,
        peer: Peer,
        params: CredentialAddParams,
    ) -> Result<CredentialInfo, ApiError> {
        check_name("credential", &params.name)?;
        if params.client_id.is_empty() {
            return Err(ApiError::invalid_params("the client id is empty"));
        }
        let oauth1 = params.grant == GrantType::Oauth1;
        let needs_secret = !oauth1
            && matches!(
                params.auth,
                AuthMethod::ClientSecretBasic | AuthMethod::ClientSecretPost
            );
        let keyed = params.auth == AuthMethod::PrivateKeyJwt;
        if oauth1 && (keyed || params.dpop.is_some()) {
            return Err(ApiError::invalid_params(
                "an OAuth 1.0a credential signs with its consumer secret or --key-file (RSA-SHA256): drop --auth private_key_jwt and --dpop",
            ));
        }
        let (signature_method, secret) = if oauth1 {
            let (method, secret) = oauth1_secret(&params)?;
            (Some(method), Some(secret))
        } else {
            if params.signature_method.is_some() || params.private_key.is_some() {
                return Err(ApiError::invalid_params(
                    "--signature-method and --key-file are for OAuth 1.0a credentials: add it with --grant oauth1",
                ));
            }
            (None, params.client_secret)
        };
        match (&secret, needs_secret) {
            (None, true) => {
                return Err(ApiError::invalid_params(format!(
                    "auth method {} needs a client secret: pass it with --client-secret-stdin, --client-secret-file or --client-secret-env",
                    params.auth.as_str()
                )))
            }
            (Some(s), true) if s.expose_secret().is_empty() => {
                return Err(ApiError::invalid_params("the client secret is empty"))
            }
            // The consumer secret or RSA key, checked by `oauth1_secret`.
            (Some(_), false) if oauth1 => {}
            (Some(_), false) if keyed => {
                return Err(ApiError::invalid_params(
                    "auth method private_key_jwt signs with a key in the vault and sends no client secret: drop the secret",
                ))
            }
            (Some(_), false) => {
                return Err(ApiError::invalid_params(
                    "auth method none is for public clients, which have no secret; drop the secret or choose --auth client_secret_basic",
                ))
            }
            _ => {}
        }
        match (&params.client_key, keyed) {
            (None, true) => {
                return Err(ApiError::invalid_params(
                    "auth method private_key_jwt needs a key: --generate-key (made in the vault; the public key is printed to register with the provider) or --key-file PATH",
                ))
            }
            (Some(_), false) => {
                return Err(ApiError::invalid_params(format!(
                    "a client key is for --auth private_key_jwt, not {}",
                    params.auth.as_str()
                )))
            }
            _ => {}
        }
        if params.assertion_audience.is_some() && !keyed {
            return Err(ApiError::invalid_params(
                "--assertion-audience is for --auth private_key_jwt",
            ));
        }
        if params.grant == GrantType::ClientCredentials && !(needs_secret || keyed) {
            return Err(ApiError::invalid_params(
                "the client_credentials grant needs a confidential client: use --auth client_secret_basic or client_secret_post with a secret, or private_key_jwt with a key",
            ));
        }
        let mut new_keys = Vec::new();
        if let Some(key) = params.client_key {
            new_keys.push((KeyPurpose::Client, new_key(key, "client key")?));
        }
        let dpop = params.dpop.is_some();
        if let Some(key) = params.dpop {
            new_keys.push((KeyPurpose::Dpop, new_key(key, "DPoP key")?));
        }
        check_exchange(params.grant, params.exchange.as_ref())?;
        if let Some(uri) = &params.redirect_uri {
            let url = check_url("redirect URI", uri).map_err(ApiError::invalid_params)?;
            if url.scheme() != "http" || !crate::oauth::http::is_loopback(&url) {
                return Err(ApiError::invalid_params(format!(
                        "redirect URI '{uri}' must be a loopback http URI such as http://127.0.0.1/callback (RFC 8252)"
                    )));
            }
        }
        let scopes = normalize_scopes(&params.scopes)?;
        let access = params.access.unwrap_or_default();
        if access == Access::Open {
            daemon
                .prove(
                    params.proof.as_ref(),
                    &peer,
                    "adding a credential every app may use (--access open)",
                )
                .await?;
        }
        let session = daemon.session()?;
        let provider_id = {
            let catalog = session.catalog();
            if catalog.credentials.contains_key(&params.name) {
                return Err(ApiError::new(
                    ErrorKind::AlreadyExists,
                    format!(
                        "a credential named '{0}' exists: remove it first with `latchkey credential remove {0}`",
                        params.name
                    ),
                ));
            }
            let provider = catalog
                .providers()
                .get(&params.provider)
                .ok_or_else(|| ApiError::no_provider(&params.provider))?;
            check_oauth1_provider(&params.provider, provider, signature_method)?;
            provider.id.clone()
        };
        let config = CredentialConfig {
            name: params.name.clone(),
            provider_id,
            client_id: params.client_id,
            grant: params.grant,
            auth: if oauth1 {
                AuthMethod::None
            } else {
                params.auth
            },
            scopes,
            redirect_uri: params.redirect_uri,
            access,
            step_up: StepUp::Off,
            signature_method,
            exchange: params.exchange,
            assertion_audience: params.assertion_audience.unwrap_or_default(),
            dpop,
        };
        // A credential of the same name added meanwhile is stopped by the
        // file's unique name.
        let credential = session
            .with_vault(move |keys, vault| {
                vault.add_credential(keys, config, secret.as_ref(), new_keys)
            })
            .await?;
        let mut catalog = session.catalog_mut();
        let entries = session.tokens.describe(&credential.id, daemon.clock.now());
        let info = credential_info(daemon, &catalog, &credential, &session, entries);
        catalog
            .credentials
            .insert(params.name.clone(), Arc::new(credential));
        daemon.audit.record(
            "credential_added",
            Some(&params.name),
            Some(&peer),
            Some(format!("access={}", access.as_str())),
        );
        Ok(info)
    }
}

impl Handler for CredentialList {
    type Reply = Vec<CredentialInfo>;

    async fn handle(
        daemon: &Arc<Daemon>,
        _: Peer,
        _: Empty,
    ) -> Result<Vec<CredentialInfo>, ApiError> {
        let session = daemon.session()?;
        let catalog = session.catalog();
        // The whole cache in one pass, not one scan per credential.
        let mut held = session.tokens.describe_all(daemon.clock.now());
        let mut list: Vec<CredentialInfo> = catalog
            .credentials
            .values()
            .map(|c| {
                let entries = held.remove(&c.id).unwrap_or_default();
                credential_info(daemon, &catalog, c, &session, entries)
            })
            .collect();
        list.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(list)
    }
}

impl Handler for CredentialShow {
    type Reply = CredentialInfo;

    async fn handle(
        daemon: &Arc<Daemon>,
        _: Peer,
        params: NameParams,
    ) -> Result<CredentialInfo, ApiError> {
        let name = params.name.as_str();
        let session = daemon.session()?;
        let catalog = session.catalog();
        let credential = catalog
            .credentials
            .get(name)
            .ok_or_else(|| ApiError::no_credential(name))?;
        let entries = session.tokens.describe(&credential.id, daemon.clock.now());
        Ok(credential_info(
            daemon, &catalog, credential, &session, entries,
        ))
    }
}

/// Changes who may use a credential. Opening it to every app needs a
/// proof of a human; narrowing it to `ask` does not.
impl Handler for CredentialSet {
    type Reply = CredentialInfo;

    async fn handle(
        daemon: &Arc<Daemon>,
        peer: Peer,
        params: CredentialSetParams,
    ) -> Result<CredentialInfo, ApiError> {
        if params.access.is_none() && params.step_up.is_none() {
            return Err(ApiError::invalid_params(
                "nothing to change: give --access open|ask or --step-up totp|passphrase|off",
            ));
        }
        if let Some(step_up) = params.step_up {
            crate::stepup::validate(step_up)?;
        }
        let name = params.name.as_str();
        let session = daemon.session()?;
        let current = session
            .catalog()
            .credentials
            .get(name)
            .cloned()
            .ok_or_else(|| ApiError::no_credential(name))?;
        if current.corrupt {
            return Err(ApiError::new(
                ErrorKind::VaultCorrupt,
                format!(
                    "credential '{name}' failed its integrity check: remove it and add it again"
                ),
            ));
        }
        let access = params.access.unwrap_or(current.config.access);
        if access == Access::Open && current.config.access != Access::Open {
            daemon
                .prove(
                    params.proof.as_ref(),
                    &peer,
                    "opening a credential to every app (--access open)",
                )
                .await?;
        }
        let step_up = params.step_up.unwrap_or(current.config.step_up);
        if crate::stepup::loosens(current.config.step_up, step_up) {
            daemon
                .prove(
                    params.proof.as_ref(),
                    &peer,
                    "loosening a credential's step-up",
                )
                .await?;
        }
        let mut config = current.config.clone();
        config.access = access;
        config.step_up = step_up;
        let id = current.id.clone();
        let sealed = config.clone();
        session
            .with_vault(move |keys, vault| vault.set_credential_config(keys, &id, &sealed))
            .await?;
        let updated = Credential {
            id: current.id.clone(),
            config,
            has_client_secret: current.has_client_secret,
            secret_ages: current.secret_ages,
            corrupt: false,
        };
        let mut catalog = session.catalog_mut();
        let entries = session.tokens.describe(&updated.id, daemon.clock.now());
        let info = credential_info(daemon, &catalog, &updated, &session, entries);
        catalog
            .credentials
            .insert(name.to_owned(), Arc::new(updated));
        daemon.audit.record(
            "credential_changed",
            Some(name),
            Some(&peer),
            Some(format!(
                "access={} step_up={} window={}s",
                access.as_str(),
                step_up.as_str(),
                step_up.window_secs()
            )),
        );
        Ok(info)
    }
}

/// Deletes a credential and everything it holds, here only (see
/// `revoke::credential_remove` for the protocol verb).
pub(crate) async fn credential_delete(
    daemon: &Daemon,
    peer: &Peer,
    name: &str,
) -> Result<Empty, ApiError> {
    let session = daemon.session()?;
    let id = session
        .catalog()
        .credentials
        .get(name)
        .ok_or_else(|| ApiError::no_credential(name))?
        .id
        .clone();
    let removed = id.clone();
    session
        .with_vault(move |_, vault| vault.remove_credential(&removed))
        .await?;
    {
        let mut catalog = session.catalog_mut();
        catalog.credentials.remove(name);
        // Its rules went with it in the file (a cascade).
        catalog.rules.retain(|r| r.credential_id != id);
    }
    session.tokens.forget(&id);
    daemon.approvals.forget(Some(&id));
    daemon
        .audit
        .record("credential_removed", Some(name), Some(peer), None);
    Ok(Empty {})
}

/// An OAuth 1.0a provider's endpoints, each checked (https, or http to loopback).
fn oauth1_endpoints(
    params: &ProviderAddParams,
    given: &Oauth1Endpoints,
) -> Result<Oauth1Endpoints, ApiError> {
    if params.issuer.is_some() || params.endpoints != Endpoints::default() {
        return Err(ApiError::invalid_params(
            "an OAuth 1.0a provider has only its three endpoints: drop --issuer and the OAuth 2 endpoint options",
        ));
    }
    let check = |what: &str, raw: &str| {
        check_url(what, raw)
            .map(|u| u.to_string())
            .map_err(ApiError::invalid_params)
    };
    Ok(Oauth1Endpoints {
        temporary_credentials: check(
            "temporary credential request URL",
            &given.temporary_credentials,
        )?,
        authorization: check("resource owner authorization URL", &given.authorization)?,
        token: check("token request URL", &given.token)?,
    })
}

/// An OAuth 1.0a credential's signature method and signing secret: the
/// consumer secret, or the RSA private key (checked to be one).
fn oauth1_secret(
    params: &CredentialAddParams,
) -> Result<(SignatureMethod, secrecy::SecretString), ApiError> {
    let Some(method) = params.signature_method else {
        return Err(ApiError::invalid_params(
            "an OAuth 1.0a credential needs --signature-method HMAC-SHA1, HMAC-SHA256 or RSA-SHA256",
        ));
    };
    if method == SignatureMethod::RsaSha1 {
        let any = url::Url::parse("https://x.invalid/").expect("a constant URL parses");
        return Err(ApiError::invalid_params(
            crate::oauth::oauth1_sign::refusal(method, &any).unwrap_or_default(),
        ));
    }
    if !params.scopes.is_empty() {
        return Err(ApiError::invalid_params(
            "OAuth 1.0a has no scopes: drop --scope",
        ));
    }
    let secret = match (method.is_rsa(), &params.client_secret, &params.private_key) {
        (true, None, Some(key)) => {
            crate::oauth::oauth1_sign::rsa_key(key)?;
            key
        }
        (true, _, _) => return Err(ApiError::invalid_params(
            "RSA-SHA256 signs with the client's RSA private key: pass it with --key-file (PKCS#8), and no consumer secret",
        )),
        (false, Some(secret), None) if !secret.expose_secret().is_empty() => secret,
        (false, _, _) => return Err(ApiError::invalid_params(format!(
            "{} signs with the consumer secret: pass it with --client-secret-stdin, --client-secret-file or --client-secret-env (and no --key-file)",
            method.as_str()
        ))),
    };
    Ok((method, secrecy::SecretString::from(secret.expose_secret())))
}

/// OAuth 1.0a credentials go with OAuth 1.0a providers only; PLAINTEXT
/// only with one whose endpoints are all https.
fn check_oauth1_provider(
    name: &str,
    provider: &Provider,
    method: Option<SignatureMethod>,
) -> Result<(), ApiError> {
    match (&provider.config.oauth1, method) {
        (None, None) => Ok(()),
        (Some(_), None) => Err(ApiError::invalid_params(format!(
            "provider '{name}' is an OAuth 1.0a provider: add the credential with --grant oauth1"
        ))),
        (None, Some(_)) => Err(ApiError::invalid_params(format!(
            "provider '{name}' is an OAuth 2 provider: --grant oauth1 needs a provider added with --oauth1-request-token-url, --oauth1-authorize-url and --oauth1-access-token-url"
        ))),
        (Some(endpoints), Some(method)) => {
            for raw in [
                &endpoints.temporary_credentials,
                &endpoints.authorization,
                &endpoints.token,
            ] {
                let url = url::Url::parse(raw).map_err(ApiError::internal)?;
                if let Some(why) = crate::oauth::oauth1_sign::refusal(method, &url) {
                    return Err(ApiError::invalid_params(why));
                }
            }
            Ok(())
        }
    }
}

fn credentials_of(catalog: &Catalog, provider_id: &str) -> Vec<String> {
    let mut names: Vec<String> = catalog
        .credentials
        .values()
        .filter(|c| c.config.provider_id == provider_id)
        .map(|c| c.config.name.clone())
        .collect();
    names.sort();
    names
}

fn provider_info(provider: &Provider, credentials: &[String]) -> ProviderInfo {
    ProviderInfo {
        name: provider.config.name.clone(),
        issuer: provider.config.issuer.clone(),
        endpoints: provider.config.endpoints.clone(),
        oauth1: provider.config.oauth1.clone(),
        credentials: credentials.to_vec(),
    }
}

/// What `credential show`/`list` say of `credential`, given what the token
/// cache holds for it (`entries`: [`TokenCache::describe`], or its share of
/// [`TokenCache::describe_all`]).
///
/// [`TokenCache::describe`]: crate::cache::TokenCache::describe
/// [`TokenCache::describe_all`]: crate::cache::TokenCache::describe_all
pub(crate) fn credential_info(
    daemon: &Daemon,
    catalog: &Catalog,
    credential: &Credential,
    session: &Session,
    entries: Vec<EntryInfo>,
) -> CredentialInfo {
    let now = daemon.clock.now();
    let backoff = entries.iter().find_map(|e| e.backoff.clone());
    let grant = session.grant(&credential.id);
    let holds_token = entries.iter().any(|e| e.has_token);
    let state = session.state_of(credential, backoff.is_some(), holds_token);
    CredentialInfo {
        name: credential.config.name.clone(),
        provider: catalog
            .provider_by_id(&credential.config.provider_id)
            .map(|p| p.config.name.clone())
            .unwrap_or_else(|| "?".into()),
        client_id: credential.config.client_id.clone(),
        grant: credential.config.grant,
        auth: credential.config.auth,
        scopes: credential.config.scopes.clone(),
        granted_scopes: grant.as_ref().filter(|g| g.oauth1.is_none()).map(|g| {
            let mut granted: Vec<String> = g.scope.split_whitespace().map(str::to_owned).collect();
            granted.sort();
            granted.dedup();
            granted
        }),
        has_client_secret: credential.has_client_secret,
        client_secret: credential.secret_ages.info(),
        access: credential.config.access,
        step_up: credential.config.step_up,
        confirmed_until: crate::stepup::confirmed_until(session, credential, now),
        state,
        tokens: entries
            .into_iter()
            .filter(|e| !e.scope.is_empty() || e.expires_at.is_some())
            .map(|e| TokenSummary {
                scope: e.scope,
                expires_at: e.expires_at,
                refresh_at: e.refresh_at,
            })
            .collect(),
        subject: grant.as_ref().and_then(|g| g.subject.clone()),
        has_refresh_token: grant.as_ref().is_some_and(|g| g.refresh_token.is_some()),
        signature_method: credential.config.signature_method,
        has_token_credentials: grant.as_ref().is_some_and(|g| g.oauth1.is_some()),
        exchange: credential.config.exchange.clone(),
        last_error: backoff.map(|(until, message)| {
            format!("{message} (next attempt in {} s)", (until - now).max(0))
        }),
        dpop: credential.config.dpop,
    }
}

/// A token exchange credential's settings: present exactly with that grant,
/// a subject token source the daemon can use, and well-formed values to
/// send (RFC 8693 §2.1; `resource` per RFC 8707 §2).
fn check_exchange(
    grant: GrantType,
    exchange: Option<&TokenExchangeConfig>,
) -> Result<(), ApiError> {
    let exchange = match (grant, exchange) {
        (GrantType::TokenExchange, Some(exchange)) => exchange,
        (GrantType::TokenExchange, None) => {
            return Err(ApiError::invalid_params(
                "the token_exchange grant needs the subject token's source: pass --subject-token-file PATH or --subject-token-env VAR",
            ))
        }
        (_, Some(_)) => {
            return Err(ApiError::invalid_params(format!(
                "only the token_exchange grant reads a subject token, not {}: drop the --subject-token-* flags or choose --grant token_exchange",
                grant.as_str()
            )))
        }
        (_, None) => return Ok(()),
    };
    /// 4 KiB: longer than any sane path, variable name or URN.
    const MAX_SETTING: usize = 4096;
    let printable =
        |v: &str| !v.is_empty() && v.len() <= MAX_SETTING && v.chars().all(|c| !c.is_control());
    match &exchange.subject_token {
        SubjectTokenSource::File(path) => {
            if !printable(path) || !std::path::Path::new(path).is_absolute() {
                return Err(ApiError::invalid_params(
                    "the subject token file must be an absolute path (the daemon does not share your working directory)",
                ));
            }
        }
        SubjectTokenSource::Env(var) => {
            if !printable(var) || var.contains('=') || var.contains(char::is_whitespace) {
                return Err(ApiError::invalid_params(
                    "the subject token variable must be an environment variable's name (no '=', spaces or control characters)",
                ));
            }
        }
    }
    let token_type = &exchange.subject_token_type;
    if !printable(token_type)
        || !token_type.contains(':')
        || token_type.contains(char::is_whitespace)
    {
        return Err(ApiError::invalid_params(
            "the subject token type must be a URI such as urn:ietf:params:oauth:token-type:jwt (RFC 8693 §3)",
        ));
    }
    if let Some(bad) = exchange.audience.iter().find(|a| !printable(a)) {
        return Err(ApiError::invalid_params(format!(
            "audience {:?} is empty, too long or holds control characters",
            bad.chars()
                .take(80)
                .filter(|c| !c.is_control())
                .collect::<String>()
        )));
    }
    for resource in &exchange.resource {
        let shown: String = resource
            .chars()
            .take(200)
            .filter(|c| !c.is_control())
            .collect();
        match url::Url::parse(resource) {
            Ok(url) if url.fragment().is_none() && printable(resource) => {}
            _ => {
                return Err(ApiError::invalid_params(format!(
                    "resource '{shown}' must be an absolute URI without a #fragment (RFC 8707), such as https://api.example.com/"
                )))
            }
        }
    }
    Ok(())
}

/// A key for a new credential (or a rotation): generated here, or the
/// caller's PEM checked. The error names the fix and never the key.
pub(crate) fn new_key(key: NewKey, what: &str) -> Result<KeyMaterial, ApiError> {
    match key {
        NewKey::Generate(alg) => jose::generate(alg),
        NewKey::Import(pem) => jose::load(&pem, None),
    }
    .map_err(|e| ApiError::invalid_params(format!("the {what}: {e}")))
}
