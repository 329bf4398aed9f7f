//! A headless "browser" for the test provider's login pages.
//!
//! Owns: following an authorization URL (or a device verification URL)
//! through oidc-provider's development interactions the way a person with a
//! browser would — redirects one by one, cookies kept, each HTML form's
//! action and hidden inputs read from the page and posted back — until the
//! provider redirects to the daemon's loopback callback, which it then opens
//! so the daemon receives it.
//!
//! The pages it understands are oidc-provider's own (`devInteractions` and
//! the device-flow pages): the login form (any login and password; the login
//! becomes the account id, i.e. the ID token's `sub`), the consent form, the
//! "Cancel" link (ends the interaction with `access_denied`), the user-code
//! input and confirmation forms (with their "Abort" button), and the
//! self-submitting `form_post` pages. Anything else ends the walk with the
//! page, so a test sees what the provider said.
//!
//! Blocking (reqwest's blocking client); every method may also be called
//! from inside a tokio runtime (the HTTP work then runs on a helper thread).
//! Every request is bounded (30 s), loopback only, proxies ignored.

use std::time::Duration;

use reqwest::blocking::Client;
use reqwest::header::{HeaderMap, LOCATION};
use reqwest::Url;

use crate::blocking::off_runtime;

/// Per-request bound.
const HTTP_TIMEOUT: Duration = Duration::from_secs(30);
/// More redirects and forms than any login here needs: a loop is a failure.
const MAX_STEPS: usize = 40;
/// The password typed into the login form (devInteractions accept any).
const PASSWORD: &str = "any password";

/// What opening the daemon's loopback callback produced.
#[derive(Debug, Clone)]
pub struct CallbackOutcome {
    /// The callback URL exactly as the provider redirected to it.
    pub url: Url,
    /// The callback page's status.
    pub status: u16,
    /// The callback page's headers.
    pub headers: HeaderMap,
    /// The callback page's body.
    pub body: String,
}

impl CallbackOutcome {
    /// One header as text ("" when absent).
    pub fn header(&self, name: &str) -> String {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    }

    /// One query parameter of the callback URL.
    pub fn param(&self, name: &str) -> Option<String> {
        query_param(&self.url, name)
    }
}

/// The last page of a walk that did not end at a callback.
#[derive(Debug, Clone)]
pub struct Page {
    pub url: Url,
    pub status: u16,
    pub body: String,
}

impl Page {
    /// The device flow's "Sign-in Success" page.
    pub fn is_device_success(&self) -> bool {
        self.status == 200 && self.body.contains("Sign-in Success")
    }

    /// The device flow's "The Sign-in request was interrupted" page (after Abort).
    pub fn is_device_aborted(&self) -> bool {
        self.body.contains("interrupted")
    }
}

/// How a walk ended.
#[derive(Debug, Clone)]
pub enum WalkEnd {
    /// The provider redirected to this URL outside its own origin (the
    /// daemon's loopback callback); it was not opened.
    Callback(Url),
    /// A page the browser has nothing more to do on.
    Page(Page),
}

/// Whether the person approves or refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Log in, consent, confirm.
    Approve,
    /// Cancel at the first interaction page (or Abort the device code).
    Deny,
}

/// A person with a browser. Each `Browser` has its own cookie jar (its own
/// provider session).
pub struct Browser {
    http: Client,
    login: String,
    /// Every request made, for failure messages.
    trail: std::sync::Mutex<Vec<String>>,
}

impl Default for Browser {
    fn default() -> Self {
        Browser::new()
    }
}

impl Browser {
    /// A browser that logs in as `alice`.
    pub fn new() -> Browser {
        Browser::as_user("alice")
    }

    /// A browser that logs in as `login` (which becomes the subject).
    pub fn as_user(login: &str) -> Browser {
        let http = off_runtime(|| {
            Client::builder()
                .cookie_store(true)
                .redirect(reqwest::redirect::Policy::none())
                .timeout(HTTP_TIMEOUT)
                .connect_timeout(Duration::from_secs(5))
                .no_proxy()
                .build()
                .map_err(|e| e.to_string())
        })
        .unwrap_or_else(|e| panic!("browser: cannot build an HTTP client: {e}"));
        Browser {
            http,
            login: login.to_string(),
            trail: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// The login this browser types in (the subject of its logins).
    pub fn login(&self) -> &str {
        &self.login
    }

    /// Follows an authorization URL through login and consent, opens the
    /// daemon's loopback callback, and returns what it answered. Panics if
    /// the walk ends anywhere else or the callback cannot be opened.
    #[track_caller]
    pub fn authorize(&self, url: &str) -> CallbackOutcome {
        let callback = self.callback_url(url, Decision::Approve);
        self.open_callback(&callback)
            .unwrap_or_else(|e| panic!("browser: the callback {callback} could not be opened: {e}"))
    }

    /// Like [`Browser::authorize`] but the person clicks "Cancel": the
    /// provider redirects with `error=access_denied`.
    #[track_caller]
    pub fn deny(&self, url: &str) -> CallbackOutcome {
        let callback = self.callback_url(url, Decision::Deny);
        self.open_callback(&callback)
            .unwrap_or_else(|e| panic!("browser: the callback {callback} could not be opened: {e}"))
    }

    /// Walks an authorization URL to the redirect that leaves the provider
    /// and returns it without opening it. Panics if the walk ends on a page.
    #[track_caller]
    pub fn callback_url(&self, url: &str, decision: Decision) -> Url {
        match self.walk(url, decision, None) {
            WalkEnd::Callback(u) => u,
            WalkEnd::Page(p) => panic!(
                "browser: the authorization ended on a page, not at a callback: HTTP {} at {}\n{}\n--- trail ---\n{}",
                p.status,
                p.url,
                excerpt(&p.body),
                self.trail()
            ),
        }
    }

    /// Opens a callback URL (GET, no redirects followed). `Err` when nothing
    /// listens there (connection refused) or the request fails.
    pub fn open_callback(&self, url: &Url) -> Result<CallbackOutcome, String> {
        self.note(format!("GET {url} (callback)"));
        off_runtime(|| {
            let resp = self
                .http
                .get(url.clone())
                .send()
                .map_err(|e| format!("{e} ({})", source_chain(&e)))?;
            let status = resp.status().as_u16();
            let headers = resp.headers().clone();
            let body = resp.text().map_err(|e| e.to_string())?;
            Ok(CallbackOutcome {
                url: url.clone(),
                status,
                headers,
                body,
            })
        })
    }

    /// Drives the device flow's pages: `verification_uri_complete` (or the
    /// plain `verification_uri` with `user_code` typed in), then confirm,
    /// login and consent — or Abort on the confirmation page when
    /// `approve` is false. Returns the last page ("Sign-in Success", or the
    /// page saying the request was interrupted).
    #[track_caller]
    pub fn approve_device(&self, uri: &str, user_code: Option<&str>, approve: bool) -> Page {
        let decision = if approve {
            Decision::Approve
        } else {
            Decision::Deny
        };
        match self.walk(uri, decision, user_code) {
            WalkEnd::Page(p) => p,
            WalkEnd::Callback(u) => panic!(
                "browser: the device flow redirected out of the provider to {u}\n--- trail ---\n{}",
                self.trail()
            ),
        }
    }

    /// The requests made so far, one per line.
    pub fn trail(&self) -> String {
        self.trail.lock().unwrap().join("\n")
    }

    fn note(&self, line: String) {
        self.trail.lock().unwrap().push(line);
    }

    /// The walk itself: see the module docs.
    pub fn walk(&self, start: &str, decision: Decision, user_code: Option<&str>) -> WalkEnd {
        let start = Url::parse(start).unwrap_or_else(|e| panic!("browser: bad URL {start:?}: {e}"));
        let origin = start.origin();
        let mut request = Request::Get(start);
        // Device flow: once the code was confirmed or aborted, an input
        // form is the provider's last word, not a new step.
        let mut code_submitted = false;
        for _ in 0..MAX_STEPS {
            let url = request.url().clone();
            let (status, location, body) = self.send(&request);
            if (300..400).contains(&status) {
                let location = location
                    .unwrap_or_else(|| panic!("browser: HTTP {status} without Location at {url}"));
                let next = url
                    .join(&location)
                    .unwrap_or_else(|e| panic!("browser: bad Location {location:?}: {e}"));
                if next.origin() != origin {
                    return WalkEnd::Callback(next);
                }
                request = Request::Get(next);
                continue;
            }
            let page = Page {
                url: url.clone(),
                status,
                body,
            };
            let forms = forms(&page.body);
            let find = |pred: &dyn Fn(&Form) -> bool| forms.iter().find(|f| pred(f)).cloned();
            // oidc-provider's login and consent forms (devInteractions).
            if let Some(form) = find(&|f| f.value("prompt").is_some()) {
                if decision == Decision::Deny {
                    let cancel = links(&page.body)
                        .into_iter()
                        .find(|h| h.contains("/abort"))
                        .unwrap_or_else(|| panic!("browser: no Cancel link on {url}"));
                    request = Request::Get(url.join(&cancel).unwrap());
                    continue;
                }
                let mut fields = form.hidden();
                if form.value("prompt") == Some("login") {
                    fields.push(("login".into(), self.login.clone()));
                    fields.push(("password".into(), PASSWORD.into()));
                }
                request = Request::Post(url.join(&form.action).unwrap(), fields);
                continue;
            }
            // Device flow: confirm (or abort) the code.
            if let Some(form) = find(&|f| f.id == "op.deviceConfirmForm") {
                let mut fields = form.hidden();
                if decision == Decision::Deny {
                    fields.push(("abort".into(), "yes".into()));
                }
                code_submitted = true;
                request = Request::Post(url.join(&form.action).unwrap(), fields);
                continue;
            }
            // Device flow: type the user code in (once).
            if let Some(form) = find(&|f| f.id == "op.deviceInputForm") {
                let error_shown = page.body.contains("class=\"red\"");
                match user_code {
                    Some(code) if !code_submitted && !error_shown => {
                        let mut fields: Vec<(String, String)> = form
                            .hidden()
                            .into_iter()
                            .filter(|(k, _)| k != "user_code")
                            .collect();
                        fields.push(("user_code".into(), code.into()));
                        code_submitted = true;
                        request = Request::Post(url.join(&form.action).unwrap(), fields);
                        continue;
                    }
                    _ => return WalkEnd::Page(page),
                }
            }
            // A self-submitting page (response_mode form_post, the device
            // flow's "user_code in the URL" page): submit it as its script would.
            if page.body.contains("document.forms[0].submit()") {
                if let Some(form) = forms.first() {
                    request = Request::Post(url.join(&form.action).unwrap(), form.hidden());
                    continue;
                }
            }
            return WalkEnd::Page(page);
        }
        panic!(
            "browser: more than {MAX_STEPS} steps without reaching an end\n--- trail ---\n{}",
            self.trail()
        );
    }

    fn send(&self, request: &Request) -> (u16, Option<String>, String) {
        let line = match request {
            Request::Get(u) => format!("GET {u}"),
            Request::Post(u, fields) => format!(
                "POST {u} [{}]",
                fields
                    .iter()
                    .map(|(k, _)| k.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        self.note(line.clone());
        off_runtime(|| {
            let builder = match request {
                Request::Get(u) => self.http.get(u.clone()),
                Request::Post(u, fields) => self.http.post(u.clone()).form(fields),
            };
            let resp = builder
                .send()
                .map_err(|e| format!("{e} ({})", source_chain(&e)))?;
            let status = resp.status().as_u16();
            let location = resp
                .headers()
                .get(LOCATION)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let body = resp.text().map_err(|e| e.to_string())?;
            Ok((status, location, body))
        })
        .unwrap_or_else(|e| {
            panic!(
                "browser: {line} failed: {e}\n--- trail ---\n{}",
                self.trail()
            )
        })
    }
}

enum Request {
    Get(Url),
    Post(Url, Vec<(String, String)>),
}

impl Request {
    fn url(&self) -> &Url {
        match self {
            Request::Get(u) | Request::Post(u, _) => u,
        }
    }
}

/// One query parameter of a URL (decoded).
pub fn query_param(url: &Url, name: &str) -> Option<String> {
    url.query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

// ------------------------------------------------------------ HTML forms ---

/// An HTML form as far as posting it goes.
#[derive(Debug, Clone, Default)]
pub struct Form {
    pub id: String,
    pub action: String,
    /// (name, value, type) of each `<input>`.
    pub inputs: Vec<(String, String, String)>,
}

impl Form {
    /// The value of the input called `name`.
    pub fn value(&self, name: &str) -> Option<&str> {
        self.inputs
            .iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, v, _)| v.as_str())
    }

    /// The hidden inputs, as form fields.
    pub fn hidden(&self) -> Vec<(String, String)> {
        self.inputs
            .iter()
            .filter(|(_, _, t)| t.eq_ignore_ascii_case("hidden"))
            .map(|(n, v, _)| (n.clone(), v.clone()))
            .collect()
    }
}

/// Every `<form>` of a page with its `<input>`s.
pub fn forms(html: &str) -> Vec<Form> {
    let lower = html.to_ascii_lowercase();
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(start) = lower[at..].find("<form").map(|i| i + at) {
        let Some((attrs, after)) = tag_attrs(html, start + "<form".len()) else {
            break;
        };
        let end = lower[after..]
            .find("</form")
            .map(|i| i + after)
            .unwrap_or(html.len());
        let mut form = Form {
            id: attr(&attrs, "id").unwrap_or_default(),
            action: attr(&attrs, "action").unwrap_or_default(),
            inputs: Vec::new(),
        };
        let mut i = after;
        while let Some(s) = lower[i..end].find("<input").map(|k| k + i) {
            let Some((input, next)) = tag_attrs(html, s + "<input".len()) else {
                break;
            };
            if let Some(name) = attr(&input, "name") {
                form.inputs.push((
                    name,
                    attr(&input, "value").unwrap_or_default(),
                    attr(&input, "type").unwrap_or_else(|| "text".into()),
                ));
            }
            i = next;
        }
        out.push(form);
        at = end.max(after);
    }
    out
}

/// Every `<a href>` of a page.
pub fn links(html: &str) -> Vec<String> {
    let lower = html.to_ascii_lowercase();
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(start) = lower[at..].find("<a ").map(|i| i + at) {
        let Some((attrs, after)) = tag_attrs(html, start + 2) else {
            break;
        };
        if let Some(href) = attr(&attrs, "href") {
            out.push(href);
        }
        at = after;
    }
    out
}

fn attr(attrs: &[(String, String)], name: &str) -> Option<String> {
    attrs
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.clone())
}

/// Parses a tag's attributes from just after its name; returns them and
/// the index after the closing `>`.
fn tag_attrs(html: &str, mut i: usize) -> Option<(Vec<(String, String)>, usize)> {
    let b = html.as_bytes();
    let mut attrs = Vec::new();
    loop {
        while i < b.len() && (b[i].is_ascii_whitespace() || b[i] == b'/') {
            i += 1;
        }
        if i >= b.len() {
            return None;
        }
        if b[i] == b'>' {
            return Some((attrs, i + 1));
        }
        let name_start = i;
        while i < b.len() && !b[i].is_ascii_whitespace() && !matches!(b[i], b'=' | b'>' | b'/') {
            i += 1;
        }
        let name = html[name_start..i].to_string();
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        let mut value = String::new();
        if i < b.len() && b[i] == b'=' {
            i += 1;
            while i < b.len() && b[i].is_ascii_whitespace() {
                i += 1;
            }
            if i < b.len() && (b[i] == b'"' || b[i] == b'\'') {
                let quote = b[i];
                let s = i + 1;
                let e = html[s..].find(quote as char).map(|k| k + s)?;
                value = decode_entities(&html[s..e]);
                i = e + 1;
            } else {
                let s = i;
                while i < b.len() && !b[i].is_ascii_whitespace() && b[i] != b'>' {
                    i += 1;
                }
                value = decode_entities(&html[s..i]);
            }
        }
        if !name.is_empty() {
            attrs.push((name, value));
        }
    }
}

/// The HTML character references oidc-provider's escaping produces.
fn decode_entities(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        rest = &rest[amp..];
        let Some(semi) = rest.find(';').filter(|&k| k <= 10) else {
            out.push('&');
            rest = &rest[1..];
            continue;
        };
        let entity = &rest[1..semi];
        let decoded = match entity {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            _ => entity
                .strip_prefix("#x")
                .or_else(|| entity.strip_prefix("#X"))
                .and_then(|h| u32::from_str_radix(h, 16).ok())
                .or_else(|| entity.strip_prefix('#').and_then(|d| d.parse().ok()))
                .and_then(char::from_u32),
        };
        match decoded {
            Some(c) => {
                out.push(c);
                rest = &rest[semi + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

fn excerpt(body: &str) -> String {
    body.chars().take(2000).collect()
}

fn source_chain(e: &dyn std::error::Error) -> String {
    let mut text = String::new();
    let mut source = e.source();
    while let Some(s) = source {
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_inputs_and_links_are_read() {
        let html = r#"<form autocomplete="off" action="/interaction/ab&amp;c/login" method="post">
  <input type="hidden" name="prompt" value="login"/>
  <input required type="text" name="login" placeholder="Enter any login" autofocus="on">
</form>
<form id='op.deviceConfirmForm' method=post action="/device">
<input type="hidden" name="xsrf" value="x&#x2F;y"/>
</form>
<div class="login-help"><a href="/interaction/uid/abort">[ Cancel ]</a></div>"#;
        let f = forms(html);
        assert_eq!(f.len(), 2);
        assert_eq!(f[0].action, "/interaction/ab&c/login");
        assert_eq!(f[0].value("prompt"), Some("login"));
        assert_eq!(f[0].hidden(), vec![("prompt".into(), "login".into())]);
        assert_eq!(f[0].value("login"), Some(""));
        assert_eq!(f[1].id, "op.deviceConfirmForm");
        assert_eq!(f[1].value("xsrf"), Some("x/y"));
        assert_eq!(links(html), vec!["/interaction/uid/abort".to_string()]);
    }

    #[test]
    fn entities() {
        assert_eq!(
            decode_entities("a&amp;b&lt;&#39;&#x27;&bogus; &"),
            "a&b<''&bogus; &"
        );
    }
}
