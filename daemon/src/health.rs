//! `provider.check`, for `latchkey doctor`: each provider's discovery
//! document (or, without an issuer, its token endpoint) asked once, with
//! no lock held, and the provider's clock read from its `Date` header.

use crate::error::ApiError;
use crate::handler::Handler;
use crate::oauth::discovery::metadata_urls;
use crate::oauth::text::provider_text;
use crate::state::{Daemon, Peer};
use latchkey_client::protocol::{Empty, ProviderCheck, ProviderCheckResult, ProviderHealth};
use std::sync::Arc;

impl Handler for ProviderCheck {
    type Reply = ProviderCheckResult;

    async fn handle(
        daemon: &Arc<Daemon>,
        _: Peer,
        _: Empty,
    ) -> Result<ProviderCheckResult, ApiError> {
        // The URLs, read under the catalog lock and copied out: no lock is
        // held across the requests.
        let targets: Vec<(String, Option<url::Url>)> = {
            let session = daemon.session()?;
            let catalog = session.catalog();
            let mut targets: Vec<_> = catalog
                .providers()
                .values()
                .map(|p| (p.config.name.clone(), target(&p.config)))
                .collect();
            targets.sort_by(|a, b| a.0.cmp(&b.0));
            targets
        };
        let checks = targets
            .into_iter()
            .map(|(name, url)| check(daemon, name, url));
        Ok(ProviderCheckResult {
            providers: futures::future::join_all(checks).await,
        })
    }
}

/// What to ask: the first metadata location of the issuer, else the
/// token endpoint.
fn target(config: &crate::vault::ProviderConfig) -> Option<url::Url> {
    if let Some(issuer) = config.issuer.as_deref() {
        if let Ok(issuer) = url::Url::parse(issuer) {
            return metadata_urls(&issuer).into_iter().next();
        }
    }
    config
        .endpoints
        .token_endpoint
        .as_deref()
        .and_then(|t| url::Url::parse(t).ok())
}

async fn check(daemon: &Daemon, name: String, url: Option<url::Url>) -> ProviderHealth {
    let Some(url) = url else {
        return ProviderHealth {
            name: name.clone(),
            error: Some(format!(
                "provider '{name}' has no URL that parses; remove it and add it again with `latchkey provider add`"
            )),
            ..ProviderHealth::default()
        };
    };
    let mut health = ProviderHealth {
        name,
        url: url.to_string(),
        ..ProviderHealth::default()
    };
    match daemon.http.probe(&url).await {
        Ok((status, date)) => {
            health.reachable = true;
            health.http_status = Some(status);
            let now = daemon.clock.now();
            health.clock_skew_secs = date
                .as_deref()
                .and_then(|d| httpdate::parse_http_date(d).ok())
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|t| t.as_secs() as i64 - now);
        }
        Err(e) => {
            health.error = Some(provider_text(
                &format!(
                    "cannot reach {url}: {e}; check the network, or the issuer with `latchkey provider show {}`",
                    health.name
                ),
                &[],
            ));
        }
    }
    health
}
