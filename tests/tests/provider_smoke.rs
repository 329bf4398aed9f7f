//! Smoke test of the test authorization server itself (tests/provider/ and
//! tests/src/provider.rs): real client-credentials tokens from oidc-provider
//! with both secret-based client authentications, introspection, the
//! protected resource, the counters, the fault layer and a path issuer.
//! Tokens are fetched here with plain reqwest, not with Latchkey's code, so a
//! failure points at the harness.
//!
//! Needs `npm ci --prefix tests/provider` once.

use std::time::{Duration, Instant};

use latchkey_tests::provider::{form_encode, ClientSpec, Provider};
use serde_json::{json, Value};

fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(20))
        .no_proxy()
        .build()
        .unwrap()
}

/// One client-credentials token request, authenticated as `client` says.
fn token_request(
    http: &reqwest::blocking::Client,
    endpoint: &str,
    client: &ClientSpec,
    scope: &str,
) -> reqwest::Result<reqwest::blocking::Response> {
    let secret = client.client_secret.as_deref().unwrap_or("");
    let mut form = vec![("grant_type", "client_credentials"), ("scope", scope)];
    let req = http.post(endpoint);
    let req = match client.auth_method.as_str() {
        "client_secret_basic" => {
            req.basic_auth(form_encode(&client.client_id), Some(form_encode(secret)))
        }
        "client_secret_post" => {
            form.push(("client_id", &client.client_id));
            form.push(("client_secret", secret));
            req
        }
        other => panic!("unsupported auth method {other}"),
    };
    req.form(&form).send()
}

/// A token request that must succeed; returns the token response JSON.
fn token(
    p: &Provider,
    http: &reqwest::blocking::Client,
    client: &ClientSpec,
    scope: &str,
) -> Value {
    let resp =
        token_request(http, p.token_endpoint(), client, scope).expect("token request failed");
    let status = resp.status().as_u16();
    let body: Value = resp.json().expect("token response is not JSON");
    assert_eq!(
        status, 200,
        "token request for {} answered {status}: {body}",
        client.client_id
    );
    body
}

fn clients() -> (ClientSpec, ClientSpec) {
    (
        ClientSpec::client_credentials(
            "svc-basic",
            "basic-secret",
            "client_secret_basic",
            "api:read api:write",
        ),
        ClientSpec::client_credentials(
            "svc-post",
            "post-secret!&=",
            "client_secret_post",
            "api:read",
        ),
    )
}

#[test]
fn client_credentials_tokens_introspection_resource_and_stats() {
    let (basic, post) = clients();
    let p = Provider::start(&[basic.clone(), post.clone()]);
    let http = http();
    println!("provider issuer: {}", p.issuer());
    assert!(
        p.issuer().starts_with("http://127.0.0.1:"),
        "issuer {}",
        p.issuer()
    );
    assert!(p.token_endpoint().starts_with(p.issuer()));

    for (client, scope) in [(&basic, "api:read"), (&post, "api:read")] {
        let t = token(&p, &http, client, scope);
        println!("{} ({}): {t}", client.client_id, client.auth_method);
        assert_eq!(t["token_type"], "Bearer");
        assert_eq!(t["scope"], scope);
        let expires_in = t["expires_in"].as_u64().expect("expires_in");
        assert!(
            (3500..=3600).contains(&expires_in),
            "expires_in {expires_in}"
        );
        let at = t["access_token"].as_str().expect("access_token");

        let intro = p.introspect(
            at,
            &client.client_id,
            client.client_secret.as_deref().unwrap(),
        );
        println!("  introspection: {intro}");
        assert_eq!(intro["active"], true);
        assert_eq!(intro["client_id"], client.client_id.as_str());
        assert_eq!(intro["scope"], scope);

        assert_eq!(p.resource(at), 200);
    }
    assert_eq!(p.resource("not-a-token"), 401);

    // The whole registered scope set, and a scope the client was not granted.
    let t = token(&p, &http, &basic, "api:read api:write");
    assert_eq!(t["scope"], "api:read api:write");
    let resp = token_request(&http, p.token_endpoint(), &post, "api:write").unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    assert_eq!(resp.json::<Value>().unwrap()["error"], "invalid_scope");

    // A wrong secret is refused.
    let mut wrong = basic.clone();
    wrong.client_secret = Some("nope".into());
    let resp = token_request(&http, p.token_endpoint(), &wrong, "api:read").unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    assert_eq!(resp.json::<Value>().unwrap()["error"], "invalid_client");

    // Every request counted, by grant and by the authentication it carried
    // (basic: 2 good + 1 wrong secret; post: 1 good + 1 invalid_scope).
    let stats = p.stats();
    println!("stats: {stats:?}");
    assert_eq!(stats.token_requests, 5);
    assert_eq!(stats.grant("client_credentials"), 5);
    assert_eq!(stats.auth("client_secret_basic"), 3);
    assert_eq!(stats.auth("client_secret_post"), 2);
    assert_eq!(stats.introspections, 2);

    p.reset();
    assert_eq!(p.stats().token_requests, 0);
}

#[test]
fn faults_apply_in_order_then_normal_behaviour_resumes() {
    let (basic, _) = clients();
    let p = Provider::start(std::slice::from_ref(&basic));
    let http = http();
    let ep = p.token_endpoint().to_string();

    // 503 with Retry-After, exactly once.
    p.inject(json!({"kind": "status", "status": 503, "retry_after": 3, "count": 1}));
    let resp = token_request(&http, &ep, &basic, "api:read").unwrap();
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    let body = resp.text().unwrap();
    println!("fault 503: status {status}, Retry-After {retry_after:?}, body {body}");
    assert_eq!(status, 503);
    assert_eq!(retry_after.as_deref(), Some("3"));
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["error"],
        "temporarily_unavailable"
    );
    token(&p, &http, &basic, "api:read");
    assert_eq!(p.stats().token_requests, 2);

    // drop, garbage, a custom status/body, delay: each once, in order.
    p.inject(json!({"kind": "drop"}));
    p.inject(json!({"kind": "garbage"}));
    p.inject(json!({"kind": "status", "status": 400, "body": "{\"error\":\"invalid_grant\"}"}));
    p.inject(json!({"kind": "delay", "ms": 400}));
    assert_eq!(p.stats().faults_pending, 4);

    let dropped = token_request(&http, &ep, &basic, "api:read");
    assert!(
        dropped.is_err(),
        "drop fault answered: {:?}",
        dropped.map(|r| r.status())
    );
    let resp = token_request(&http, &ep, &basic, "api:read").unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert!(
        serde_json::from_str::<Value>(&resp.text().unwrap()).is_err(),
        "garbage fault sent JSON"
    );
    let resp = token_request(&http, &ep, &basic, "api:read").unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    assert_eq!(resp.json::<Value>().unwrap()["error"], "invalid_grant");
    let started = Instant::now();
    token(&p, &http, &basic, "api:read");
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "delay fault took {:?}",
        started.elapsed()
    );
    token(&p, &http, &basic, "api:read");
    assert_eq!(p.stats().token_requests, 7);
    assert_eq!(p.stats().faults_pending, 0);

    // reset clears queued faults and counters.
    p.inject(json!({"kind": "status", "status": 500, "count": 5}));
    p.reset();
    token(&p, &http, &basic, "api:read");
    assert_eq!(p.stats().token_requests, 1);

    // delay_all makes concurrent requests overlap (not serialise).
    p.delay_all(500);
    let started = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..20 {
            s.spawn(|| token(&p, &http, &basic, "api:read"));
        }
    });
    let elapsed = started.elapsed();
    println!("20 concurrent requests with delay_all(500): {elapsed:?}");
    assert!(
        elapsed >= Duration::from_millis(500) && elapsed < Duration::from_secs(5),
        "{elapsed:?}"
    );
    assert_eq!(p.stats().token_requests, 21);
    p.delay_all(0);
}

#[test]
fn path_issuer_discovery_and_tokens() {
    let (basic, _) = clients();
    let p = Provider::start_with(json!({
        "clients": [basic.to_json()],
        "issuer_path": "/tenant-a",
    }));
    println!("path issuer: {}", p.issuer());
    assert!(p.issuer().ends_with("/tenant-a"), "issuer {}", p.issuer());
    assert_eq!(p.discovery()["issuer"], p.issuer());
    assert_eq!(p.token_endpoint(), format!("{}/token", p.issuer()));

    // Fetch the discovery document independently of the harness, too.
    let http = http();
    let doc: Value = http
        .get(format!("{}/.well-known/openid-configuration", p.issuer()))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(doc["issuer"], p.issuer());
    let root = http
        .get(format!("{}/.well-known/openid-configuration", p.origin()))
        .send()
        .unwrap();
    assert_eq!(
        root.status().as_u16(),
        404,
        "discovery must live under the issuer path only"
    );

    let t = token(&p, &http, &basic, "api:write");
    let intro = p.introspect(
        t["access_token"].as_str().unwrap(),
        "svc-basic",
        "basic-secret",
    );
    assert_eq!(intro["active"], true);
    assert_eq!(intro["iss"], p.issuer());
    assert_eq!(p.stats().token_requests, 1);
}

#[test]
fn short_lived_tokens_expire() {
    let (basic, _) = clients();
    let p = Provider::start_with(json!({ "clients": [basic.to_json()], "access_token_ttl": 1 }));
    let http = http();
    let t = token(&p, &http, &basic, "api:read");
    assert_eq!(t["expires_in"], 1);
    let at = t["access_token"].as_str().unwrap();
    assert_eq!(p.resource(at), 200);
    std::thread::sleep(Duration::from_millis(2100));
    assert_eq!(p.resource(at), 401);
    assert_eq!(
        p.introspect(at, "svc-basic", "basic-secret")["active"],
        false
    );
}

#[test]
fn usable_inside_a_tokio_runtime() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (basic, _) = clients();
        let p = Provider::start(&[basic]);
        p.inject(json!({"kind": "drop"}));
        assert_eq!(p.stats().faults_pending, 1);
        assert_eq!(p.resource("bogus"), 401);
        drop(p);
    });
}
