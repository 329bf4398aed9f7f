//! `latchkey login NAME` in a real browser: headless Chromium (Debian's
//! `chromium`, driven by playwright-core from `tests/browser`) signs in at
//! oidc-provider's own login and consent pages, is redirected to the
//! daemon's loopback listener, and renders our callback page. Checked in
//! the browser: what the page says (success, a refused consent, a forged link
//! with a `state` of its own), that its CSP is strict and nothing on it breaks that policy;
//! checked at the terminal: how the CLI's `login` ends (a token after
//! success, the right exit code otherwise). Each callback page is saved as
//! a screenshot under `target/test-artifacts/`.
//!
//! Needs `cargo build --workspace --bins`, `npm ci --prefix tests/provider`,
//! `npm ci --prefix tests/browser` and `/usr/bin/chromium` (`.ci/test`
//! installs them); without them it is skipped outside CI and fails in CI.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use latchkey_client::protocol::{CredentialState, GrantType};
use latchkey_tests::desktop::can_run;
use latchkey_tests::fixture::*;
use latchkey_tests::TestEnv;
use serde_json::{json, Value};

/// Debian's Chromium (or `$LATCHKEY_CHROMIUM`).
fn chromium() -> PathBuf {
    std::env::var_os("LATCHKEY_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"))
}

fn driver_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("browser")
}

/// Whether this machine has a browser to drive; says why not.
fn ready(test: &str) -> bool {
    let playwright = driver_dir()
        .join("node_modules")
        .join("playwright-core")
        .join("package.json");
    can_run(
        test,
        chromium().is_file(),
        &format!(
            "no Chromium at {} (apt-get install chromium)",
            chromium().display()
        ),
    ) && can_run(
        test,
        playwright.is_file(),
        "playwright-core is not installed (npm ci --prefix tests/browser)",
    )
}

/// 90 s: the driver gives up by itself after 60 s; this is its backstop.
const DRIVER_TIMEOUT: Duration = Duration::from_secs(90);
/// How long `latchkey login` may take to print the URL, and to end after
/// the callback (the code exchange, or a 5 s login timeout).
const CLI_TIMEOUT: Duration = Duration::from_secs(60);

/// `target/test-artifacts/`, created.
fn artifacts() -> PathBuf {
    let bin = latchkey_testkit::bin_dir().expect("the test knows its own path");
    let dir = bin
        .parent()
        .expect("the binaries are in target/<profile>")
        .join("test-artifacts");
    std::fs::create_dir_all(&dir).expect("cannot create target/test-artifacts");
    dir
}

/// Waits for `child` at most `limit`; kills it after.
fn wait_bounded(child: &mut Child, limit: Duration, what: &str) -> ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not end within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs the driver on `url` and returns what it saw on the callback page.
fn drive(url: &str, decision: &str, screenshot: &Path) -> Value {
    let _ = std::fs::remove_file(screenshot);
    let mut child = Command::new("node")
        .arg(driver_dir().join("drive.mjs"))
        .args(["--url", url, "--login", "alice", "--decision", decision])
        .arg("--screenshot")
        .arg(screenshot)
        .current_dir(driver_dir())
        .env("LATCHKEY_CHROMIUM", chromium())
        .env_remove("NODE_OPTIONS")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot run node tests/browser/drive.mjs");
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        out.read_to_string(&mut s).unwrap();
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        err.read_to_string(&mut s).unwrap();
        s
    });
    let status = wait_bounded(&mut child, DRIVER_TIMEOUT, "the browser driver");
    let (out, err) = (out.join().unwrap(), err.join().unwrap());
    assert!(
        status.success(),
        "the browser driver failed ({status}):\n{err}\n{out}"
    );
    let seen: Value = serde_json::from_str(out.trim())
        .unwrap_or_else(|e| panic!("the driver's output is not JSON ({e}): {out}\n{err}"));
    assert!(
        screenshot.is_file(),
        "no screenshot at {}",
        screenshot.display()
    );
    eprintln!("screenshot of the callback page: {}", screenshot.display());
    seen
}

/// `latchkey login NAME --no-browser`, started; returns it and the URL it
/// printed alone on its first stdout line, and a channel for the rest.
fn start_login(
    env: &TestEnv,
    name: &str,
    timeout: &str,
) -> (Child, String, mpsc::Receiver<String>) {
    let mut child = env
        .cli(&["login", name, "--no-browser", "--timeout", timeout])
        .spawn();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let url = rx
        .recv_timeout(CLI_TIMEOUT)
        .expect("`latchkey login` printed the login URL");
    assert!(url.starts_with("http://127.0.0.1:"), "the URL: {url}");
    (child, url, rx)
}

/// Ends the CLI (bounded); its exit code, the rest of its stdout, its stderr.
fn finish_login(mut child: Child, rx: mpsc::Receiver<String>) -> (i32, String, String) {
    let status = wait_bounded(&mut child, CLI_TIMEOUT, "`latchkey login`");
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let rest: Vec<String> = rx.try_iter().collect();
    (
        status.code().expect("exited, not killed"),
        rest.join("\n"),
        stderr,
    )
}

/// The callback page's security, as the browser got it: a strict CSP that
/// nothing on the page violates, no script at all.
fn check_page_is_locked_down(seen: &Value) {
    let headers = &seen["headers"];
    let csp = headers["content-security-policy"]
        .as_str()
        .unwrap_or_else(|| panic!("a CSP header: {headers}"));
    for directive in [
        "default-src 'none'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(directive), "CSP has {directive}: {csp}");
    }
    for loose in [
        "unsafe-inline",
        "unsafe-eval",
        "script-src",
        "http:",
        "https:",
        "*",
    ] {
        assert!(
            !csp.contains(loose),
            "CSP allows nothing like {loose}: {csp}"
        );
    }
    assert_eq!(
        headers["x-frame-options"]
            .as_str()
            .map(str::to_ascii_uppercase)
            .as_deref(),
        Some("DENY")
    );
    assert_eq!(headers["referrer-policy"], json!("no-referrer"));
    assert_eq!(headers["x-content-type-options"], json!("nosniff"));
    assert!(headers["cache-control"]
        .as_str()
        .unwrap_or("")
        .contains("no-store"));
    assert_eq!(seen["scripts"], json!(0), "no script on the page");
    assert_eq!(seen["inlineHandlers"], json!(0), "no inline event handler");
    assert_eq!(
        seen["violations"],
        json!([]),
        "nothing on the page breaks its CSP"
    );
    let console = seen["console"].as_array().unwrap();
    assert!(
        console.iter().all(|m| {
            let text = m["text"].as_str().unwrap_or("");
            !text.contains("Content Security Policy") && !text.contains("Refused to")
        }),
        "no CSP complaint in the console: {console:?}"
    );
    assert!(
        // Chromium logs a page's own 4xx status as an error: that is not one.
        console.iter().all(|m| m["type"] != json!("error")
            || m["text"].as_str().is_some_and(|t| t
                .starts_with("Failed to load resource: the server responded with a status of 4"))),
        "no console errors on the callback page: {console:?}"
    );
    // Our stylesheet is allowed by its hash and applied.
    assert_eq!(seen["stylesheets"], json!(1), "the page's one stylesheet");
    assert_ne!(
        seen["background"],
        json!("rgba(0, 0, 0, 0)"),
        "the stylesheet was applied (not blocked by the CSP)"
    );
}

fn text(seen: &Value) -> String {
    seen["text"].as_str().unwrap_or("").to_string()
}

#[test]
fn a_login_in_chromium_completes_and_the_page_says_so() {
    if !ready("a_login_in_chromium_completes_and_the_page_says_so") {
        return;
    }
    let p = provider(3600, json!({}));
    let (env, _d) = env_with(&p);
    add_public(&env, "app", GrantType::AuthorizationCode);

    let (cli, url, rx) = start_login(&env, "app", "120");
    let shot = artifacts().join("login-success.png");
    let seen = drive(&url, "approve", &shot);

    assert_eq!(seen["status"], json!(200), "{seen}");
    let callback = seen["callback_url"].as_str().unwrap();
    assert!(
        callback.contains("code="),
        "the provider sent a code: {callback}"
    );
    check_page_is_locked_down(&seen);
    assert_eq!(seen["title"], json!("Login complete"));
    let body = text(&seen);
    assert!(body.contains("Login complete"), "{body}");
    assert!(body.contains("'app'"), "names the credential: {body}");
    assert!(body.contains("close this tab"), "what to do next: {body}");
    assert!(body.contains("terminal"), "where the outcome shows: {body}");

    let (code, out, err) = finish_login(cli, rx);
    assert_eq!(code, 0, "login succeeded: {out}\n{err}");
    assert!(out.contains("logged in"), "the CLI says so: {out}\n{err}");
    assert_eq!(env.credential_show("app").state, CredentialState::Ready);
    assert!(!env.token("app").is_empty(), "a token can be had now");
    assert_eq!(p.stats().grant("authorization_code"), 1);
}

#[test]
fn a_refused_consent_in_chromium_says_what_happened_and_the_cli_exits_forbidden() {
    if !ready("a_refused_consent_in_chromium_says_what_happened_and_the_cli_exits_forbidden") {
        return;
    }
    let p = provider(3600, json!({}));
    let (env, _d) = env_with(&p);
    add_public(&env, "app", GrantType::AuthorizationCode);

    let (cli, url, rx) = start_login(&env, "app", "120");
    let shot = artifacts().join("login-error.png");
    let seen = drive(&url, "deny", &shot);

    assert_eq!(seen["status"], json!(200), "{seen}");
    let callback = seen["callback_url"].as_str().unwrap();
    assert!(
        callback.contains("error=access_denied"),
        "the provider said access_denied: {callback}"
    );
    check_page_is_locked_down(&seen);
    assert_eq!(seen["title"], json!("Login not completed"));
    let body = text(&seen);
    assert!(body.contains("access_denied"), "names the error: {body}");
    assert!(body.contains("latchkey login app"), "the fix: {body}");

    let (code, out, err) = finish_login(cli, rx);
    assert_eq!(
        code, 9,
        "a denied login is `forbidden` (exit 9): {out}\n{err}"
    );
    assert!(err.contains("access_denied"), "the CLI names it: {err}");
    assert_eq!(
        env.credential_show("app").state,
        CredentialState::NeedsLogin
    );
    assert_eq!(p.stats().grant("authorization_code"), 0);
}

#[test]
fn a_forged_callback_link_in_chromium_is_refused_and_the_login_goes_on() {
    if !ready("a_forged_callback_link_in_chromium_is_refused_and_the_login_goes_on") {
        return;
    }
    let p = provider(3600, json!({}));
    let (env, _d) = env_with(&p);
    add_public(&env, "app", GrantType::AuthorizationCode);

    // 5 s: the refused callback does not end the login; its timeout does.
    let (cli, url, rx) = start_login(&env, "app", "5");
    // Someone sends the person a link to the callback with a state of
    // their own (and a code from their account).
    let authorize = reqwest::Url::parse(&url).expect("the login URL parses");
    let redirect =
        latchkey_tests::browser::query_param(&authorize, "redirect_uri").expect("a redirect_uri");
    let forged = format!("{redirect}?code=attackers-code&state=forged-state-0123456789");
    let shot = artifacts().join("login-forged.png");
    let seen = drive(&forged, "open", &shot);

    assert_eq!(seen["status"], json!(400), "{seen}");
    check_page_is_locked_down(&seen);
    assert_eq!(seen["title"], json!("Login refused"));
    let body = text(&seen);
    assert!(body.contains("state"), "says why: {body}");
    assert!(
        body.contains("nothing was signed in"),
        "says what it means: {body}"
    );
    assert!(body.contains("terminal"), "what to do next: {body}");

    let (code, out, err) = finish_login(cli, rx);
    assert_eq!(
        code, 6,
        "the login went on and timed out (exit 6): {out}\n{err}"
    );
    assert_eq!(
        env.credential_show("app").state,
        CredentialState::NeedsLogin
    );
    assert_eq!(
        p.stats().token_requests,
        0,
        "no code was exchanged on a forged callback"
    );
}
