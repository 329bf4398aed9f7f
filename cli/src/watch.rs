//! `latchkey status --watch`: a live view of the credentials, redrawn about
//! once a second. What it shows comes from what the daemon already answers
//! (`status`, `credential.list`, `audit.list`); [`render`] turns one
//! [`Snapshot`] into lines and is a pure function, so the tests pin it.
//!
//! On a terminal it draws on the alternate screen with the cursor hidden,
//! in raw mode so `q` (or Esc, or Ctrl-C) quits at once; the terminal is
//! restored on every way out, SIGTERM and SIGHUP included. When stdout is
//! not a terminal it prints one plain snapshot per interval, no escape
//! codes; `--count N` stops after N snapshots in both modes.

use crate::context::Ctx;
use crate::output;
use anyhow::Result;
use latchkey_client::protocol::{
    unix_now, AuditEntry, AuditList, AuditListParams, CredentialInfo, CredentialList,
    CredentialState, Empty, StatusResult, VaultState, AUDIT_LIST_MAX,
};
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// 10 minutes: how far back "which apps asked recently" looks.
pub const RECENT_SECS: i64 = 600;
/// At most this many audit pages are read per redraw: a flood of rows
/// must not stall the view (the rest is read on the next redraw).
const AUDIT_PAGES_PER_TICK: usize = 4;
/// At most this many apps are named per credential; then `+N`.
const APPS_SHOWN: usize = 3;
/// How often keys and signals are looked at between redraws.
const POLL: Duration = Duration::from_millis(100);

/// Everything one redraw shows.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// The daemon's status; `None` when it could not be asked.
    pub status: Option<StatusResult>,
    /// The credentials (empty while the vault is locked).
    pub credentials: Vec<CredentialInfo>,
    /// Audit rows of the last [`RECENT_SECS`], oldest first.
    pub recent: Vec<AuditEntry>,
    /// What went wrong asking the daemon, shown instead of the table.
    pub error: Option<String>,
}

/// A state as the view names it.
pub fn state_label(state: CredentialState) -> &'static str {
    match state {
        CredentialState::Ready => "ok",
        CredentialState::NeedsLogin => "needs login",
        CredentialState::Backoff => "backing off",
        CredentialState::Corrupt => "corrupt",
        _ => "unknown",
    }
}

/// A countdown to `at`: `in 14m 32s`, `expired 3s ago`, `now`.
pub fn countdown(at: i64, now: i64) -> String {
    match at - now {
        0 => "now".into(),
        d if d > 0 => format!("in {}", output::span(d as u64)),
        d => format!("{} ago", output::span(d.unsigned_abs())),
    }
}

/// The token expiry cell: the latest-lived token the daemon holds.
fn expiry_cell(c: &CredentialInfo, now: i64) -> String {
    if c.tokens.is_empty() {
        return "-".into();
    }
    match c.tokens.iter().filter_map(|t| t.expires_at).max() {
        Some(at) if at <= now => format!("expired {}", countdown(at, now)),
        Some(at) => countdown(at, now),
        None => "no expiry given".into(),
    }
}

/// The next proactive refresh: the soonest one planned.
fn refresh_cell(c: &CredentialInfo, now: i64) -> String {
    match c.tokens.iter().filter_map(|t| t.refresh_at).min() {
        Some(at) if at <= now => "due (when used)".into(),
        Some(at) => countdown(at, now),
        None => "-".into(),
    }
}

/// The last token request at the provider for `name` (a refresh, a first
/// fetch, or a failure), from the audit rows.
fn last_refresh_cell(name: &str, recent: &[AuditEntry], c: &CredentialInfo, now: i64) -> String {
    let last = recent.iter().rev().find(|r| {
        r.credential.as_deref() == Some(name)
            && matches!(
                r.event.as_str(),
                "refreshed" | "token_failed" | "needs_login"
            )
    });
    match last {
        Some(r) if r.event == "refreshed" => format!("ok {}", countdown(r.at, now)),
        Some(r) => format!("failed {}", countdown(r.at, now)),
        None if c.last_error.is_some() => "failed".into(),
        None => "-".into(),
    }
}

/// The apps that were handed a token of `name` recently, newest first.
fn apps_cell(name: &str, recent: &[AuditEntry]) -> String {
    let mut apps: Vec<&str> = Vec::new();
    for r in recent.iter().rev() {
        if r.credential.as_deref() != Some(name) || r.event != "token_issued" {
            continue;
        }
        let app = r.app.as_deref().unwrap_or("unknown");
        // The executable's name: the label starts with its path.
        let short = app
            .split(" (")
            .next()
            .unwrap_or(app)
            .rsplit('/')
            .next()
            .unwrap_or(app);
        if !apps.contains(&short) {
            apps.push(short);
        }
    }
    match apps.len() {
        0 => "-".into(),
        n if n <= APPS_SHOWN => apps.join(", "),
        n => format!("{} +{}", apps[..APPS_SHOWN].join(", "), n - APPS_SHOWN),
    }
}

/// SGR colour of a row by its state, when colour is on.
fn row_color(state: CredentialState) -> &'static str {
    match state {
        CredentialState::Ready => "\x1b[32m",
        CredentialState::NeedsLogin | CredentialState::Backoff => "\x1b[33m",
        _ => "\x1b[31m",
    }
}

/// One snapshot as lines (no line ends). `color`: SGR colours on rows.
pub fn render(snap: &Snapshot, now: i64, color: bool) -> Vec<String> {
    let paint = |line: String, sgr: &str| {
        if color {
            format!("{sgr}{line}\x1b[0m")
        } else {
            line
        }
    };
    let mut lines = Vec::new();
    let vault = match &snap.status {
        None => "daemon unreachable".to_owned(),
        Some(s) => match s.vault {
            VaultState::Uninitialized => "vault not initialized".to_owned(),
            VaultState::Locked => "vault locked".to_owned(),
            VaultState::Unlocked => match s.locks_in_secs {
                Some(left) if s.idle_timeout_secs > 0 => {
                    format!("vault unlocked, auto-lock in {}", output::span(left))
                }
                _ => "vault unlocked".to_owned(),
            },
        },
    };
    lines.push(paint(
        format!("latchkey  {}  {vault}", output::utc(now)),
        "\x1b[1m",
    ));
    lines.push(String::new());
    if let Some(error) = &snap.error {
        lines.push(paint(error.clone(), "\x1b[31m"));
        return lines;
    }
    match snap.status.as_ref().map(|s| s.vault) {
        Some(VaultState::Locked) => {
            lines.push(
                "the vault is locked: unlock it with `latchkey unlock` to see the credentials"
                    .into(),
            );
            return lines;
        }
        Some(VaultState::Uninitialized) => {
            lines.push("no vault yet: create it with `latchkey init`".into());
            return lines;
        }
        _ => {}
    }
    if snap.credentials.is_empty() {
        lines.push(
            "no credentials: add one with `latchkey credential add NAME --provider P --client-id ID`"
                .into(),
        );
        return lines;
    }
    let rows: Vec<Vec<String>> = snap
        .credentials
        .iter()
        .map(|c| {
            vec![
                c.name.clone(),
                state_label(c.state).to_owned(),
                expiry_cell(c, now),
                refresh_cell(c, now),
                last_refresh_cell(&c.name, &snap.recent, c, now),
                apps_cell(&c.name, &snap.recent),
            ]
        })
        .collect();
    let table = output::table(
        &[
            "CREDENTIAL",
            "STATE",
            "TOKEN EXPIRES",
            "NEXT REFRESH",
            "LAST REFRESH",
            "APPS (10m)",
        ],
        &rows,
    );
    let mut table_lines = table.lines();
    if let Some(header) = table_lines.next() {
        lines.push(header.to_owned());
    }
    for (line, c) in table_lines.zip(&snap.credentials) {
        lines.push(paint(line.to_owned(), row_color(c.state)));
    }
    for c in &snap.credentials {
        if c.state == CredentialState::NeedsLogin {
            lines.push(format!("{}: run `latchkey login {}`", c.name, c.name));
        }
        if let Some(error) = &c.last_error {
            lines.push(format!("{}: {error}", c.name));
        }
    }
    lines
}

/// What the view keeps between redraws: one connection, the audit rows of
/// the window and where to read on.
struct Source<'a> {
    ctx: &'a Ctx,
    conn: Option<crate::context::Connection<'a>>,
    recent: Vec<AuditEntry>,
    next_seq: Option<i64>,
}

impl<'a> Source<'a> {
    fn snapshot(&mut self) -> Snapshot {
        match self.read() {
            Ok(snap) => snap,
            Err(e) => {
                // Next time, a new connection (the daemon may be back).
                self.conn = None;
                Snapshot {
                    error: Some(format!("{e:#}")),
                    ..Snapshot::default()
                }
            }
        }
    }

    fn read(&mut self) -> Result<Snapshot> {
        if self.conn.is_none() {
            // A daemon that went away is not restarted behind the user's
            // back (`latchkey daemon stop`); the first connection, in
            // [`run`], starts one if need be, as `latchkey status` does.
            self.conn = Some(self.ctx.connect_running()?.ok_or_else(|| {
                anyhow::anyhow!(
                    "the latchkey daemon is not running: start it with `latchkey daemon start`"
                )
            })?);
        }
        let conn = self.conn.as_mut().expect("connected just above");
        let status = conn.status()?;
        let mut snap = Snapshot::default();
        if status.vault == VaultState::Unlocked {
            snap.credentials = conn.call::<CredentialList>(&Empty {})?;
            let now = unix_now();
            for _ in 0..AUDIT_PAGES_PER_TICK {
                let params = AuditListParams {
                    since: self.next_seq.is_none().then_some(now - RECENT_SECS),
                    after_seq: self.next_seq,
                    limit: Some(AUDIT_LIST_MAX),
                    ..AuditListParams::default()
                };
                // The audit log may be refused (e.g. a tampered log): the
                // view goes on without its columns.
                let Ok(page) = conn.call::<AuditList>(&params) else {
                    break;
                };
                self.recent.extend(page.rows);
                self.next_seq = Some(page.next);
                if !page.more {
                    break;
                }
            }
            self.recent.retain(|r| r.at >= now - RECENT_SECS);
            snap.recent = self.recent.clone();
        }
        snap.status = Some(status);
        Ok(snap)
    }
}

/// Whether colour is wanted: a terminal, and `NO_COLOR` unset or empty
/// (<https://no-color.org>).
fn want_color(tty: bool) -> bool {
    tty && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Runs the view: `count` snapshots (or until quit), one per `interval`.
pub fn run(ctx: &Ctx, interval: Duration, count: Option<u64>) -> Result<()> {
    let tty = std::io::stdout().is_terminal();
    // Unreachable at the start is an error with its exit code; later, a
    // line of the view until the daemon is back.
    let mut source = Source {
        ctx,
        conn: Some(ctx.connect()?),
        recent: Vec::new(),
        next_seq: None,
    };
    if tty {
        run_terminal(&mut source, interval, count, want_color(tty))
    } else {
        run_plain(&mut source, interval, count)
    }
}

/// Plain lines, one snapshot per interval, separated by a blank line.
fn run_plain(source: &mut Source<'_>, interval: Duration, count: Option<u64>) -> Result<()> {
    let mut shown = 0u64;
    loop {
        let snap = source.snapshot();
        let mut text = String::new();
        if shown > 0 {
            text.push('\n');
        }
        for line in render(&snap, unix_now(), false) {
            text.push_str(&line);
            text.push('\n');
        }
        output::print(&text)?;
        shown += 1;
        if count.is_some_and(|n| shown >= n) {
            return Ok(());
        }
        std::thread::sleep(interval);
    }
}

/// Set by SIGTERM or SIGHUP: leave, restoring the terminal.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// The terminal as the view needs it; [`Drop`] gives it back as it was,
/// on every way out (an error, a panic's unwinding, a signal).
struct Screen;

impl Screen {
    fn enter() -> Result<Screen> {
        use crossterm::{cursor, execute, terminal};
        terminal::enable_raw_mode()?;
        let screen = Screen;
        execute!(
            std::io::stdout(),
            terminal::EnterAlternateScreen,
            cursor::Hide
        )?;
        Ok(screen)
    }

    fn draw(&self, lines: &[String]) -> Result<()> {
        use crossterm::{cursor, queue, terminal};
        let mut out = std::io::stdout().lock();
        queue!(
            out,
            cursor::MoveTo(0, 0),
            terminal::Clear(terminal::ClearType::All)
        )?;
        for line in lines {
            // Raw mode: a line end is \r\n.
            write!(out, "{line}\r\n")?;
        }
        out.flush()?;
        Ok(())
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        use crossterm::{cursor, execute, terminal};
        let _ = execute!(
            std::io::stdout(),
            cursor::Show,
            terminal::LeaveAlternateScreen
        );
        let _ = terminal::disable_raw_mode();
    }
}

/// Whether a key asks to quit: q, Esc, Ctrl-C.
fn quits(key: &crossterm::event::KeyEvent) -> bool {
    use crossterm::event::{KeyCode, KeyEventKind, KeyModifiers};
    key.kind != KeyEventKind::Release
        && match key.code {
            KeyCode::Char('q') | KeyCode::Char('Q') | KeyCode::Esc => true,
            KeyCode::Char('c') => key.modifiers.contains(KeyModifiers::CONTROL),
            _ => false,
        }
}

fn run_terminal(
    source: &mut Source<'_>,
    interval: Duration,
    count: Option<u64>,
    color: bool,
) -> Result<()> {
    use crossterm::event::{self, Event};
    for sig in [libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is
        // async-signal-safe.
        unsafe {
            libc::signal(sig, on_stop_signal as *const () as libc::sighandler_t);
        }
    }
    let screen = Screen::enter()?;
    let mut shown = 0u64;
    loop {
        let mut lines = render(&source.snapshot(), unix_now(), color);
        lines.push(String::new());
        lines.push(format!(
            "every {}; q to quit",
            output::span(interval.as_secs().max(1))
        ));
        screen.draw(&lines)?;
        shown += 1;
        if count.is_some_and(|n| shown >= n) {
            return Ok(());
        }
        let next = Instant::now() + interval;
        while Instant::now() < next {
            if STOP.load(Ordering::SeqCst) {
                return Ok(());
            }
            if event::poll(POLL.min(next.saturating_duration_since(Instant::now())))? {
                if let Event::Key(key) = event::read()? {
                    if quits(&key) {
                        return Ok(());
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use latchkey_client::protocol::{Access, AuthMethod, GrantType, StepUp, TokenSummary};

    const NOW: i64 = 1_700_000_000;

    fn status(vault: VaultState) -> StatusResult {
        StatusResult {
            vault,
            vault_path: "/v.db".into(),
            pid: 42,
            daemon_version: "0.1.0".into(),
            slots: Vec::new(),
            idle_timeout_secs: 900,
            locks_in_secs: Some(872),
            providers: Some(1),
            credentials: Some(2),
            needs_login: None,
            accounts: None,
            caller: None,
            approvers: 0,
            log_file: None,
        }
    }

    fn credential(name: &str, state: CredentialState, tokens: Vec<TokenSummary>) -> CredentialInfo {
        CredentialInfo {
            name: name.into(),
            provider: "idp".into(),
            client_id: "id".into(),
            grant: GrantType::AuthorizationCode,
            auth: AuthMethod::None,
            scopes: vec!["api".into()],
            granted_scopes: None,
            has_client_secret: false,
            dpop: false,
            client_secret: None,
            access: Access::Open,
            step_up: StepUp::Off,
            confirmed_until: None,
            state,
            tokens,
            subject: None,
            has_refresh_token: true,
            last_error: None,
            signature_method: None,
            has_token_credentials: false,
            exchange: None,
        }
    }

    fn row(at: i64, event: &str, credential: &str, app: &str) -> AuditEntry {
        AuditEntry {
            seq: at,
            at,
            event: event.into(),
            credential: Some(credential.into()),
            app: Some(app.into()),
            app_key: None,
            pid: None,
            outcome: None,
            detail: None,
            chained_late: false,
            chained: true,
        }
    }

    fn snapshot() -> Snapshot {
        Snapshot {
            status: Some(status(VaultState::Unlocked)),
            credentials: vec![
                credential(
                    "github",
                    CredentialState::Ready,
                    vec![TokenSummary {
                        scope: "api".into(),
                        expires_at: Some(NOW + 2 * 3600 + 5 * 60),
                        refresh_at: Some(NOW + 90),
                    }],
                ),
                credential("mail", CredentialState::NeedsLogin, Vec::new()),
            ],
            recent: vec![
                row(
                    NOW - 300,
                    "token_issued",
                    "github",
                    "/usr/bin/curl (sha256 1a2b, pid 7)",
                ),
                row(NOW - 200, "refreshed", "github", ""),
                row(
                    NOW - 100,
                    "token_issued",
                    "github",
                    "/usr/bin/git (sha256 3c4d, pid 8)",
                ),
                row(
                    NOW - 50,
                    "token_issued",
                    "github",
                    "/usr/bin/curl (sha256 1a2b, pid 9)",
                ),
                row(NOW - 40, "token_failed", "mail", ""),
            ],
            error: None,
        }
    }

    #[test]
    fn countdowns_read_well() {
        let cases = [
            (NOW + 45, "in 45s"),
            (NOW + 14 * 60 + 32, "in 14m 32s"),
            (NOW + 2 * 3600 + 5 * 60, "in 2h 5m"),
            (NOW, "now"),
            (NOW - 3, "3s ago"),
        ];
        for (at, want) in cases {
            assert_eq!(countdown(at, NOW), want);
        }
    }

    #[test]
    fn states_have_plain_names() {
        assert_eq!(state_label(CredentialState::Ready), "ok");
        assert_eq!(state_label(CredentialState::NeedsLogin), "needs login");
        assert_eq!(state_label(CredentialState::Backoff), "backing off");
        assert_eq!(state_label(CredentialState::Corrupt), "corrupt");
    }

    #[test]
    fn a_snapshot_renders_as_a_table() {
        let lines = render(&snapshot(), NOW, false);
        assert_eq!(
            lines.join("\n"),
            "\
latchkey  2023-11-14 22:13:20 UTC  vault unlocked, auto-lock in 14m 32s

CREDENTIAL  STATE        TOKEN EXPIRES  NEXT REFRESH  LAST REFRESH    APPS (10m)
github      ok           in 2h 5m       in 1m 30s     ok 3m 20s ago   curl, git
mail        needs login  -              -             failed 40s ago  -
mail: run `latchkey login mail`"
        );
    }

    #[test]
    fn no_color_means_no_escape_codes_and_color_paints_rows() {
        let plain = render(&snapshot(), NOW, false);
        assert!(plain.iter().all(|l| !l.contains('\x1b')), "{plain:?}");
        let colored = render(&snapshot(), NOW, true);
        assert!(colored[3].starts_with("\x1b[32m") && colored[3].ends_with("\x1b[0m"));
        assert!(colored[4].starts_with("\x1b[33m"));
        assert!(!want_color(false), "never colour when not a terminal");
    }

    #[test]
    fn expired_tokens_and_a_locked_vault_say_so() {
        let mut snap = snapshot();
        snap.credentials[0].tokens[0].expires_at = Some(NOW - 7);
        snap.credentials[0].tokens[0].refresh_at = Some(NOW - 60);
        let text = render(&snap, NOW, false).join("\n");
        assert!(text.contains("expired 7s ago"), "{text}");
        assert!(text.contains("due (when used)"), "{text}");

        snap.status = Some(status(VaultState::Locked));
        let text = render(&snap, NOW, false).join("\n");
        assert!(text.contains("vault locked"), "{text}");
        assert!(text.contains("`latchkey unlock`"), "{text}");
        assert!(!text.contains("github"), "{text}");

        let unreachable = Snapshot {
            error: Some("failed to connect to the latchkey daemon".into()),
            ..Snapshot::default()
        };
        let text = render(&unreachable, NOW, false).join("\n");
        assert!(text.contains("daemon unreachable") && text.contains("failed to connect"));
    }

    #[test]
    fn many_apps_are_cut_short() {
        let recent: Vec<AuditEntry> = ["a", "b", "c", "d", "e"]
            .iter()
            .enumerate()
            .map(|(i, app)| {
                row(
                    NOW - 10 + i as i64,
                    "token_issued",
                    "x",
                    &format!("/bin/{app}"),
                )
            })
            .collect();
        assert_eq!(apps_cell("x", &recent), "e, d, c +2");
        assert_eq!(apps_cell("y", &recent), "-");
    }
}
