//! Many credentials over several providers: `credential.list` and `status`
//! read the token cache in one pass (not once per credential) and find
//! providers by id through the catalog's index; what they say must be what
//! `credential.show` says of each credential, before and after the vault
//! is read back at unlock, and after providers come and go.

mod common;

use common::*;
use latchkey_client::protocol::*;
use latchkey_client::secrecy::SecretString;
use latchkey_client::Client;
use serde_json::Value;
use std::collections::BTreeMap;

/// 24 client-credentials credentials over 3 providers (tokens for every
/// other one) and 3 device credentials with no login.
const CC: usize = 24;
const DEVICE: usize = 3;

async fn add_provider(d: &TestDaemon, c: &mut Client, name: &str) {
    c.request::<ProviderAdd>(&ProviderAddParams {
        name: name.into(),
        issuer: None,
        endpoints: Endpoints {
            token_endpoint: Some(d.endpoint.url.clone()),
            device_authorization_endpoint: Some(d.endpoint.device_url.clone()),
            ..Endpoints::default()
        },
        oauth1: None,
    })
    .await
    .expect("provider.add");
}

async fn add_credential(c: &mut Client, name: &str, provider: &str, device: bool) {
    c.request::<CredentialAdd>(&CredentialAddParams {
        name: name.into(),
        provider: provider.into(),
        client_id: format!("{name}-client"),
        client_secret: (!device).then(|| SecretString::from("s3cret")),
        grant: if device {
            GrantType::DeviceCode
        } else {
            GrantType::ClientCredentials
        },
        auth: if device {
            AuthMethod::None
        } else {
            AuthMethod::ClientSecretBasic
        },
        scopes: vec!["read".into()],
        redirect_uri: None,
        access: Some(latchkey_client::protocol::Access::Open),
        exchange: None,
        client_key: None,
        assertion_audience: None,
        dpop: None,
        proof: Some(latchkey_client::protocol::Proof::passphrase(
            secrecy::SecretString::from(PASSPHRASE),
        )),
        signature_method: None,
        private_key: None,
    })
    .await
    .expect("credential.add");
}

/// `credential.list`, each entry as JSON by name.
async fn listed(c: &mut Client) -> BTreeMap<String, Value> {
    let list = c
        .request::<CredentialList>(&Empty {})
        .await
        .expect("credential.list");
    list.iter()
        .map(|i| (i.name.clone(), serde_json::to_value(i).unwrap()))
        .collect()
}

/// The list holds every credential, each entry equal to its `show`.
async fn check_list_matches_show(c: &mut Client, names: &[String]) -> BTreeMap<String, Value> {
    let list = listed(c).await;
    assert_eq!(
        list.keys().cloned().collect::<Vec<_>>(),
        names.to_vec(),
        "every credential, sorted"
    );
    for name in names {
        let shown = serde_json::to_value(show(c, name).await).unwrap();
        assert_eq!(list[name], shown, "list and show agree on {name}");
    }
    list
}

#[tokio::test(start_paused = true)]
async fn list_and_status_over_many_credentials_say_what_show_says() {
    let d = TestDaemon::start(Opts::default()).await;
    let mut c = d.client().await;
    d.init(&mut c).await;
    for p in ["idp2", "idp3"] {
        add_provider(&d, &mut c, p).await;
    }
    let providers = ["idp", "idp2", "idp3"];
    let mut names = Vec::new();
    for i in 0..CC {
        let name = format!("cc-{i:02}");
        add_credential(&mut c, &name, providers[i % 3], false).await;
        if i % 2 == 0 {
            c.token(&name).await.expect("a token");
        }
        names.push(name);
    }
    let mut waiting = Vec::new();
    for i in 0..DEVICE {
        let name = format!("dev-{i}");
        add_credential(&mut c, &name, providers[i % 3], true).await;
        waiting.push(name.clone());
        names.push(name);
    }
    names.sort();

    let list = check_list_matches_show(&mut c, &names).await;
    for (i, p) in (0..CC).map(|i| (i, providers[i % 3])) {
        let entry = &list[&format!("cc-{i:02}")];
        assert_eq!(entry["provider"], p, "provider found by id");
        assert_eq!(entry["state"], "ready");
        let tokens = entry["tokens"].as_array().unwrap().len();
        assert_eq!(tokens, usize::from(i % 2 == 0), "cc-{i:02}'s tokens");
    }
    for name in &waiting {
        assert_eq!(list[name]["state"], "needs_login", "{name}");
    }
    let status = c.status().await.expect("status");
    assert_eq!(status.providers, Some(3));
    assert_eq!(status.credentials, Some((CC + DEVICE) as u32));
    assert_eq!(status.needs_login, Some(waiting.clone()));

    // Read back from the vault at unlock: the same answers.
    c.request::<VaultLock>(&Empty {}).await.expect("lock");
    unlock(&mut c, PASSPHRASE).await.expect("unlocks");
    let reloaded = check_list_matches_show(&mut c, &names).await;
    // The proactive refresh moment is scheduled afresh (with new jitter)
    // when the tokens are read back: all else is the same.
    let unscheduled = |list: &BTreeMap<String, Value>| {
        let mut list = list.clone();
        for entry in list.values_mut() {
            for token in entry["tokens"].as_array_mut().into_iter().flatten() {
                token.as_object_mut().map(|t| t.remove("refresh_at"));
            }
        }
        list
    };
    assert_eq!(
        unscheduled(&reloaded),
        unscheduled(&list),
        "the same after unlock"
    );
    let status = c.status().await.expect("status");
    assert_eq!(status.needs_login, Some(waiting));

    // Providers come and go: a removed one is gone from the id index, a
    // new one of the same name is found by its new id.
    add_provider(&d, &mut c, "spare").await;
    c.request::<ProviderRemove>(&NameParams {
        name: "spare".into(),
    })
    .await
    .expect("an unused provider is removed");
    add_provider(&d, &mut c, "spare").await;
    add_credential(&mut c, "late", "spare", false).await;
    c.token("late")
        .await
        .expect("a token through the new provider");
    assert_eq!(show(&mut c, "late").await.provider, "spare");
    let listed_providers = c
        .request::<ProviderList>(&Empty {})
        .await
        .expect("provider.list");
    let spare = listed_providers.iter().find(|p| p.name == "spare").unwrap();
    assert_eq!(spare.credentials, vec!["late".to_string()]);
    d.stop().await;
}
