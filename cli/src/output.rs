//! Writing to stdout (a closed pipe ends the program quietly, with exit 0)
//! and formatting times and spans for people.

use crate::exit::BrokenPipe;
use anyhow::Result;
use serde::Serialize;
use std::io::{self, Write};

fn stdout_error(err: io::Error) -> anyhow::Error {
    if err.kind() == io::ErrorKind::BrokenPipe {
        anyhow::Error::new(BrokenPipe)
    } else {
        anyhow::Error::new(err).context("failed to write to stdout")
    }
}

/// Writes byte strings to stdout and flushes. `print!` would panic on a
/// closed pipe; this returns [`BrokenPipe`] instead.
pub fn write_parts(parts: &[&[u8]]) -> Result<()> {
    let mut out = io::stdout().lock();
    for part in parts {
        out.write_all(part).map_err(stdout_error)?;
    }
    out.flush().map_err(stdout_error)
}

/// Writes text to stdout.
pub fn print(text: &str) -> Result<()> {
    write_parts(&[text.as_bytes()])
}

/// Writes a value as pretty JSON plus a newline.
pub fn print_json<T: Serialize + ?Sized>(value: &T) -> Result<()> {
    let mut text = serde_json::to_string_pretty(value)?;
    text.push('\n');
    print(&text)
}

/// Aligned `label: value` lines for human output.
#[derive(Default)]
pub struct Fields {
    rows: Vec<(String, String)>,
}

impl Fields {
    /// Adds a row.
    pub fn add(&mut self, label: &str, value: impl Into<String>) -> &mut Self {
        self.rows.push((label.to_owned(), value.into()));
        self
    }

    /// Renders the rows with the values in one column.
    pub fn render(&self) -> String {
        let width = self.rows.iter().map(|(l, _)| l.len()).max().unwrap_or(0) + 1;
        let mut out = String::new();
        for (label, value) in &self.rows {
            out.push_str(&format!("{:<width$} {value}\n", format!("{label}:")));
        }
        out
    }
}

/// Columns separated by two spaces, each as wide as its widest cell.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut text = String::new();
        for (i, cell) in cells.enumerate() {
            if i > 0 {
                text.push_str("  ");
            }
            text.push_str(&format!("{cell:<0$}", widths[i]));
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&mut header.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}

/// A caller as people read it: `/usr/bin/curl (sha256 1a2b3c4d…, pid 42,
/// via latchkey)`, `app key 'ci' (pid 42)`.
pub fn app_label(app: &latchkey_client::protocol::AppInfo) -> String {
    use latchkey_client::protocol::AppKind;
    let mut extra = Vec::new();
    if let Some(hash) = &app.sha256 {
        extra.push(format!("sha256 {}…", &hash[..hash.len().min(16)]));
    }
    extra.push(format!("pid {}", app.pid));
    if app.via_cli {
        extra.push("via latchkey".into());
    }
    if let Some(unit) = &app.unit {
        extra.push(format!("unit {unit}"));
    }
    let name = match app.kind {
        AppKind::Exe => app.name.clone(),
        AppKind::Key => format!("app key '{}'", app.name),
        AppKind::Unknown => format!("unidentified program ({})", app.name),
    };
    format!("{name} ({})", extra.join(", "))
}

/// A span for people: `45s`, `14m 32s`, `2h 5m`, `3d 4h`.
pub fn span(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) if s == 0 => format!("{m}m"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) if m == 0 => format!("{h}h"),
        (0, _, _) => format!("{h}h {m}m"),
        _ if h == 0 => format!("{d}d"),
        _ => format!("{d}d {h}h"),
    }
}

/// A Unix time as `YYYY-MM-DD HH:MM:SS UTC`.
pub fn utc(unix: i64) -> String {
    let (days, secs) = (unix.div_euclid(86_400), unix.rem_euclid(86_400));
    let (y, mo, d) = civil_from_days(days);
    format!(
        "{y:04}-{mo:02}-{d:02} {:02}:{:02}:{:02} UTC",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// When a token expires, relative to `now`: `expires in 14m 32s (… UTC)`.
pub fn expiry(expires_at: Option<i64>, now: i64) -> String {
    match expires_at {
        None => "expiry unknown (the provider did not say)".into(),
        Some(at) if at > now => format!("expires in {} ({})", span((at - now) as u64), utc(at)),
        Some(at) => format!("expired {} ago ({})", span((now - at) as u64), utc(at)),
    }
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's
/// `civil_from_days`, public domain).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m as u32, d as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans() {
        let cases = [
            (0, "0s"),
            (45, "45s"),
            (60, "1m"),
            (872, "14m 32s"),
            (3600, "1h"),
            (7500, "2h 5m"),
            (86_400, "1d"),
            (273_600, "3d 4h"),
        ];
        for (secs, want) in cases {
            assert_eq!(span(secs), want, "{secs}");
        }
    }

    #[test]
    fn utc_dates() {
        let cases = [
            (0, "1970-01-01 00:00:00 UTC"),
            (951_782_400, "2000-02-29 00:00:00 UTC"),
            (1_700_000_000, "2023-11-14 22:13:20 UTC"),
            (4_107_542_399, "2100-02-28 23:59:59 UTC"),
            (-1, "1969-12-31 23:59:59 UTC"),
        ];
        for (unix, want) in cases {
            assert_eq!(utc(unix), want, "{unix}");
        }
    }

    #[test]
    fn expiries() {
        assert_eq!(
            expiry(Some(1_000_060), 1_000_000),
            format!("expires in 1m ({})", utc(1_000_060))
        );
        assert_eq!(
            expiry(Some(1_000_000), 1_000_090),
            format!("expired 1m 30s ago ({})", utc(1_000_000))
        );
        assert!(expiry(None, 0).starts_with("expiry unknown"));
    }

    #[test]
    fn tables_and_fields_align() {
        let t = table(
            &["NAME", "STATE"],
            &[
                vec!["github".into(), "ready".into()],
                vec!["x".into(), "".into()],
            ],
        );
        assert_eq!(t, "NAME    STATE\ngithub  ready\nx\n");
        let mut f = Fields::default();
        f.add("vault", "unlocked").add("credentials", "3");
        assert_eq!(f.render(), "vault:       unlocked\ncredentials: 3\n");
    }
}
