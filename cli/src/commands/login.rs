//! `latchkey login NAME`: a person logs in so the daemon holds a refresh
//! token for the credential. The daemon runs the OAuth flow (authorization
//! code + PKCE on a loopback redirect, or the device grant) and keeps every
//! token; this command only shows the person where to go and waits.
//!
//! Stdout carries only what a script needs: the URL (and the device code),
//! each alone on its line, then the outcome. Hints, the QR code and the
//! spinner go to stderr, the last two only when it is a terminal.
//!
//! A browser opener gets the daemon's one-time local start URL, never the
//! authorization URL: argv is readable by every local user (`/proc`), and
//! the authorization URL holds `state`, the nonce and the PKCE challenge.

use crate::context::Ctx;
use crate::output;
use crate::terminal::{self, Spinner};
use anyhow::{Context, Result};
use latchkey_client::duration;
use latchkey_client::protocol::{
    LoginResult, LoginStart, LoginStartParams, LoginStartResult, LoginWait, LoginWaitParams,
};
use std::process::{Command as Process, Stdio};
use std::time::{Duration, Instant};

/// The shortest and longest login the daemon allows.
const MIN_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_TIMEOUT: Duration = Duration::from_secs(3600);

/// 2 minutes: after the person approves, the daemon still exchanges the code
/// and may fetch the provider's keys to check the ID token (30 s per
/// request at most); `login.wait` answers only then.
const WAIT_MARGIN: Duration = Duration::from_secs(120);

/// 1.5 s: how long a browser opener is watched for an early failure
/// (`xdg-open` with no browser to hand exits non-zero at once).
const OPENER_GRACE: Duration = Duration::from_millis(1500);

#[derive(clap::Args)]
pub struct Args {
    /// The credential's name (grant authorization_code or device_code)
    name: String,
    /// Do not open a browser: print the login URL alone on stdout and wait
    #[arg(long)]
    no_browser: bool,
    /// Log in on another device (RFC 8628): print the URL to open there and the code to enter, each on its own line
    #[arg(long)]
    device: bool,
    /// Give up when the login is not finished after this long: seconds, or 90s, 10m, 1h (5s to 1h)
    #[arg(long, value_name = "SECS", default_value = "300", value_parser = parse_timeout)]
    timeout: Duration,
}

fn parse_timeout(text: &str) -> Result<Duration, String> {
    let timeout = duration::parse_whole_secs(text).map_err(|e| e.to_string())?;
    if !(MIN_TIMEOUT..=MAX_TIMEOUT).contains(&timeout) {
        return Err(format!(
            "a login timeout of {} is out of range: use 5s to 1h",
            output::span(timeout.as_secs())
        ));
    }
    Ok(timeout)
}

/// What the person must do, from `login.start`'s reply.
#[derive(Debug, PartialEq, Eq)]
enum Prompt {
    /// Open this URL in a browser on this machine.
    Browser {
        url: String,
        /// The daemon's one-time local URL that redirects to `url`: what a
        /// browser opener is given. `None` from an older daemon.
        start: Option<String>,
    },
    /// Open this URL on any device and enter (or check) this code.
    Device {
        url: String,
        code: String,
        /// The URL already holds the code.
        complete: bool,
    },
}

impl Prompt {
    fn from_start(start: &LoginStartResult) -> Result<Prompt> {
        let device_url = start
            .verification_uri_complete
            .as_ref()
            .map(|url| (url, true))
            .or_else(|| start.verification_uri.as_ref().map(|url| (url, false)));
        match (device_url, &start.user_code, &start.authorization_url) {
            (Some((url, complete)), Some(code), _) => Ok(Prompt::Device {
                url: url.clone(),
                code: code.clone(),
                complete,
            }),
            (_, _, Some(url)) => Ok(Prompt::Browser {
                url: url.clone(),
                start: start.start_url.clone(),
            }),
            _ => Err(anyhow::anyhow!(
                "unexpected reply from the latchkey daemon: login.start gave neither an authorization URL nor a device code"
            )),
        }
    }

    /// Exactly what goes to stdout: the URL, then the device code, each on
    /// its own line, so `head -n1` gets the URL.
    fn stdout_text(&self) -> String {
        match self {
            Prompt::Browser { url, .. } => format!("{url}\n"),
            Prompt::Device { url, code, .. } => format!("{url}\n{code}\n"),
        }
    }

    /// What the spinner says while the daemon waits.
    fn waiting_for(&self) -> &'static str {
        match self {
            Prompt::Browser { .. } => "waiting for the login in your browser",
            Prompt::Device { .. } => "waiting for the code to be entered",
        }
    }
}

pub fn run(ctx: &Ctx, args: Args) -> Result<()> {
    let name = args.name;
    let mut conn = ctx.connect()?;
    let params = LoginStartParams {
        credential: name.clone(),
        device: args.device,
        timeout_secs: Some(args.timeout.as_secs()),
    };
    let start = conn
        .call::<LoginStart>(&params)
        .with_context(|| format!("failed to start the login of credential '{name}'"))?;
    let prompt = Prompt::from_start(&start)?;
    let expires_in = Duration::from_secs(start.expires_in);
    // The daemon gives up at the sooner of our timeout and the provider's
    // expiry; the reply may come a little after (see WAIT_MARGIN).
    let limit = args.timeout.min(expires_in);
    let deadline = Instant::now() + limit;
    conn.set_timeout(args.timeout.max(expires_in) + WAIT_MARGIN)?;

    match &prompt {
        Prompt::Browser { .. } if args.no_browser => {
            output::print(&prompt.stdout_text())?;
            ctx.info("open the URL above in a browser to log in");
        }
        Prompt::Browser { url, start } => match start.as_deref().map(open_browser) {
            Some(Ok(opener)) => ctx.info(format_args!(
                "opened the login page with {opener}; if no browser came up, open this URL: {url}"
            )),
            Some(Err(why)) => {
                output::print(&prompt.stdout_text())?;
                ctx.warn(format_args!(
                    "could not open a browser ({why}): open the URL above to log in"
                ));
            }
            None => {
                output::print(&prompt.stdout_text())?;
                ctx.warn("the latchkey daemon gave no local start page (it is older than this latchkey; `latchkey daemon stop` lets a matching one start): open the URL above to log in");
            }
        },
        Prompt::Device {
            url,
            code,
            complete,
        } => {
            output::print(&prompt.stdout_text())?;
            if terminal::stderr_is_terminal() {
                if let Some(qr) = terminal::qr(url) {
                    // Best effort: a closed stderr only loses the picture.
                    let _ = std::io::Write::write_all(&mut std::io::stderr(), qr.as_bytes());
                }
            }
            ctx.info(if *complete {
                format!("open the URL above on any device and check that it shows the code {code}")
            } else {
                format!("open the URL above on any device and enter the code {code}")
            });
        }
    }

    let waited = {
        let _spinner = if !ctx.quiet && terminal::stderr_is_terminal() {
            Some(Spinner::start(prompt.waiting_for().to_owned(), deadline))
        } else {
            ctx.info(format_args!(
                "{}… (times out in {})",
                prompt.waiting_for(),
                output::span(limit.as_secs())
            ));
            None
        };
        conn.call::<LoginWait>(&LoginWaitParams {
            login_id: start.login_id,
        })
        // The spinner is erased here, before anything else is printed.
    };
    let result = waited.map_err(|err| name_the_credential(err, &name))?;
    ctx.done(success_line(&result))?;
    if !result.refresh_token && !result.token_credentials {
        ctx.warn(format_args!(
            "the provider issued no refresh token: when the access token expires, run `latchkey login {}` again (some providers issue one only for the offline_access scope)",
            result.credential
        ));
    }
    Ok(())
}

/// Most of the daemon's login errors already name the credential; the
/// others get it added, so no message says it twice.
fn name_the_credential(err: anyhow::Error, name: &str) -> anyhow::Error {
    if err.to_string().contains(&format!("'{name}'")) {
        err
    } else {
        err.context(format!("the login of credential '{name}' failed"))
    }
}

/// `logged in: gh as alice (scope: openid repo)`.
fn success_line(result: &LoginResult) -> String {
    let mut line = format!("logged in: {}", result.credential);
    if let Some(subject) = &result.subject {
        line.push_str(&format!(" as {subject}"));
    }
    if result.scope.is_empty() {
        line.push_str(" (scope: the provider's default)");
    } else {
        line.push_str(&format!(" (scope: {})", result.scope));
    }
    line
}

/// Opens `url` (the daemon's start URL) in a browser; the name of the
/// program that did, or why none could.
fn open_browser(url: &str) -> Result<String, String> {
    let browser = std::env::var("BROWSER").ok();
    let has_display = ["DISPLAY", "WAYLAND_DISPLAY"]
        .iter()
        .any(|var| std::env::var_os(var).is_some_and(|v| !v.is_empty()));
    let commands = browser_commands(browser.as_deref(), has_display, url);
    if commands.is_empty() {
        return Err("no $BROWSER set and no graphical display".into());
    }
    let mut why = String::new();
    for argv in commands {
        match launch(&argv) {
            Ok(()) => return Ok(argv[0].clone()),
            Err(err) => why = err,
        }
    }
    Err(why)
}

/// The commands to try, each with the URL in place. `$BROWSER` is a
/// `:`-separated list of commands, each with `%s` where the URL goes (else
/// at the end), as Python's `webbrowser` and `xdg-open` read it. Without it:
/// `open` on macOS, `xdg-open` elsewhere when there is a display to open a
/// window on (over SSH it would start a text browser we cannot show).
fn browser_commands(browser: Option<&str>, has_display: bool, url: &str) -> Vec<Vec<String>> {
    if let Some(browser) = browser.filter(|b| !b.trim().is_empty()) {
        return browser
            .split(':')
            .filter_map(|command| {
                let mut argv: Vec<String> = command.split_whitespace().map(str::to_owned).collect();
                if argv.is_empty() {
                    return None;
                }
                if argv.iter().any(|a| a.contains("%s")) {
                    for arg in &mut argv {
                        // A quoted `'%s'` is a shell habit: the URL is one argument anyway.
                        *arg = arg
                            .replace("'%s'", url)
                            .replace("\"%s\"", url)
                            .replace("%s", url);
                    }
                } else {
                    argv.push(url.to_owned());
                }
                Some(argv)
            })
            .collect();
    }
    if cfg!(target_os = "macos") {
        vec![vec!["open".into(), url.into()]]
    } else if cfg!(unix) && has_display {
        vec![vec!["xdg-open".into(), url.into()]]
    } else {
        Vec::new()
    }
}

/// Starts a browser opener detached from us: no stdio (it must not write
/// into our output or read our input), its own process group (Ctrl-C here
/// does not close the browser). Watches it briefly for an early failure.
fn launch(argv: &[String]) -> Result<(), String> {
    let mut cmd = Process::new(&argv[0]);
    cmd.args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
    }
    let mut child = cmd
        .spawn()
        .map_err(|err| format!("cannot run {}: {err}", argv[0]))?;
    let until = Instant::now() + OPENER_GRACE;
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return Ok(()),
            Ok(Some(status)) => return Err(format!("{} failed ({status})", argv[0])),
            Ok(None) if Instant::now() < until => std::thread::sleep(Duration::from_millis(50)),
            // Still running: a browser started in the foreground. Reap it
            // whenever it ends so it does not linger as a zombie meanwhile.
            Ok(None) => {
                std::thread::spawn(move || child.wait());
                return Ok(());
            }
            Err(err) => return Err(format!("cannot watch {}: {err}", argv[0])),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start() -> LoginStartResult {
        LoginStartResult {
            login_id: "l1".into(),
            authorization_url: None,
            start_url: None,
            verification_uri: None,
            verification_uri_complete: None,
            user_code: None,
            expires_in: 300,
        }
    }

    #[test]
    fn a_browser_login_prints_the_url_alone() {
        let url = "http://127.0.0.1:8080/authorize?client_id=c&state=s&code_challenge=x";
        let local = "http://127.0.0.1:8080/start/0123456789abcdef0123456789abcdef";
        let prompt = Prompt::from_start(&LoginStartResult {
            authorization_url: Some(url.into()),
            start_url: Some(local.into()),
            ..start()
        })
        .unwrap();
        assert_eq!(
            prompt,
            Prompt::Browser {
                url: url.into(),
                start: Some(local.into())
            }
        );
        assert_eq!(prompt.stdout_text(), format!("{url}\n"));
    }

    /// The opener's argv holds the start URL, never `state` or the PKCE
    /// challenge (argv is readable by every local user).
    #[test]
    fn the_browser_argv_holds_no_state() {
        let prompt = Prompt::from_start(&LoginStartResult {
            authorization_url: Some(
                "https://as.example/authorize?state=s3cr&code_challenge=x".into(),
            ),
            start_url: Some("http://127.0.0.1:8080/start/0123456789abcdef".into()),
            ..start()
        })
        .unwrap();
        let Prompt::Browser {
            start: Some(start), ..
        } = &prompt
        else {
            panic!("a browser prompt with a start URL: {prompt:?}");
        };
        for browser in [Some("firefox"), Some("chromium --new-window %s"), None] {
            for argv in browser_commands(browser, true, start) {
                let joined = argv.join(" ");
                assert!(!joined.contains("state="), "{joined}");
                assert!(!joined.contains("code_challenge"), "{joined}");
                assert!(joined.contains("/start/"), "{joined}");
            }
        }
    }

    #[test]
    fn a_device_login_prints_the_url_then_the_code() {
        let plain = LoginStartResult {
            verification_uri: Some("https://ex.com/device".into()),
            user_code: Some("WDJB-MJHT".into()),
            expires_in: 900,
            ..start()
        };
        let prompt = Prompt::from_start(&plain).unwrap();
        assert_eq!(prompt.stdout_text(), "https://ex.com/device\nWDJB-MJHT\n");

        let complete = LoginStartResult {
            verification_uri_complete: Some("https://ex.com/device?user_code=WDJB-MJHT".into()),
            ..plain
        };
        let prompt = Prompt::from_start(&complete).unwrap();
        assert_eq!(
            prompt.stdout_text(),
            "https://ex.com/device?user_code=WDJB-MJHT\nWDJB-MJHT\n"
        );
        assert!(matches!(prompt, Prompt::Device { complete: true, .. }));
    }

    #[test]
    fn a_reply_with_nothing_to_do_is_an_error() {
        assert!(Prompt::from_start(&start()).is_err());
        let no_code = LoginStartResult {
            verification_uri: Some("https://ex.com/device".into()),
            ..start()
        };
        assert!(Prompt::from_start(&no_code).is_err());
    }

    #[test]
    fn success_names_the_account_and_scope() {
        let mut r = LoginResult {
            credential: "gh".into(),
            subject: Some("alice".into()),
            scope: "openid repo".into(),
            refresh_token: true,
            token_credentials: false,
        };
        assert_eq!(
            success_line(&r),
            "logged in: gh as alice (scope: openid repo)"
        );
        r.subject = None;
        r.scope = String::new();
        assert_eq!(
            success_line(&r),
            "logged in: gh (scope: the provider's default)"
        );
    }

    #[test]
    fn login_errors_name_the_credential_once() {
        let daemon = |kind, message: &str| {
            anyhow::Error::new(latchkey_client::Error::Daemon {
                kind,
                message: message.into(),
                retry_after: None,
            })
        };
        let err = name_the_credential(
            daemon(
                latchkey_client::ErrorKind::Forbidden,
                "the provider ended the login with 'access_denied'",
            ),
            "gh",
        );
        assert_eq!(
            format!("{err:#}"),
            "the login of credential 'gh' failed: the provider ended the login with 'access_denied'"
        );
        assert_eq!(crate::exit::for_error(&err), crate::exit::FORBIDDEN);
        let msg = "the login of credential 'gh' timed out after 5 s";
        let err = name_the_credential(
            daemon(latchkey_client::ErrorKind::ReauthRequired, msg),
            "gh",
        );
        assert_eq!(format!("{err:#}"), msg);
        assert_eq!(crate::exit::for_error(&err), crate::exit::REAUTH_REQUIRED);
    }

    #[test]
    fn timeouts_are_bounded() {
        assert_eq!(parse_timeout("300"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_timeout("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_timeout("1h"), Ok(Duration::from_secs(3600)));
        for bad in ["0", "4", "61m", "2h", "soon"] {
            assert!(parse_timeout(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn browser_commands_follow_browser_and_the_display() {
        let url = "http://127.0.0.1/a?b=c";
        let argv = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            browser_commands(Some("firefox"), false, url),
            vec![argv(&["firefox", url])]
        );
        assert_eq!(
            browser_commands(Some("chromium --new-window %s:lynx"), true, url),
            vec![
                argv(&["chromium", "--new-window", url]),
                argv(&["lynx", url])
            ]
        );
        assert_eq!(
            browser_commands(Some("x-www-browser '%s'"), true, url),
            vec![argv(&["x-www-browser", url])]
        );
        if cfg!(all(unix, not(target_os = "macos"))) {
            assert_eq!(
                browser_commands(None, true, url),
                vec![argv(&["xdg-open", url])]
            );
            assert!(browser_commands(Some(" "), false, url).is_empty());
        }
    }

    #[test]
    #[cfg(unix)]
    fn openers_that_fail_at_once_are_reported() {
        assert!(launch(&["true".into()]).is_ok());
        let err = launch(&["false".into()]).unwrap_err();
        assert!(err.starts_with("false failed"), "{err}");
        let err = launch(&["/nonexistent/latchkey-browser".into()]).unwrap_err();
        assert!(err.starts_with("cannot run"), "{err}");
    }
}
