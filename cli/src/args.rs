//! Arguments shared by several subcommands: the passphrase source flags,
//! and parsers for durations (`600`, `30s`, `10m`, `1h`) and scopes
//! (repeatable, space-separated).

use crate::secret::Source;
use std::path::PathBuf;
use std::time::Duration;

/// Where a passphrase comes from; at most one of these.
#[derive(clap::Args)]
#[group(id = "passphrase_source", multiple = false)]
pub struct PassphraseArgs {
    /// Read the passphrase from a file (one trailing newline is dropped)
    #[arg(long, value_name = "PATH")]
    pub passphrase_file: Option<PathBuf>,
    /// Read the passphrase from standard input (one trailing newline is dropped)
    #[arg(long)]
    pub passphrase_stdin: bool,
    /// Read the passphrase from the environment variable VAR
    #[arg(long, value_name = "VAR")]
    pub passphrase_env: Option<String>,
}

impl PassphraseArgs {
    /// The source the flags name, if any.
    pub fn source(&self) -> Option<Source> {
        Source::from_flags(
            self.passphrase_file.as_deref(),
            self.passphrase_stdin,
            self.passphrase_env.as_deref(),
        )
    }
}

/// How to name the passphrase flags in an error.
pub const PASSPHRASE_FLAGS: &str =
    "--passphrase-file PATH, --passphrase-stdin or --passphrase-env VAR, or set LATCHKEY_PASSPHRASE_FILE";

/// Parses a duration: plain seconds, or a whole number with one unit
/// (`s`, `m`, `h`). Used by clap as a value parser, so the error is shown as
/// a usage error.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || {
        format!("invalid duration '{text}': use whole seconds or a number with a unit, like 600, 30s, 10m or 1h")
    };
    let (digits, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    if digits.is_empty() {
        return Err(bad());
    }
    let multiplier = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        _ => return Err(bad()),
    };
    let count: u64 = digits.parse().map_err(|_| bad())?;
    let secs = count
        .checked_mul(multiplier)
        .ok_or_else(|| format!("duration '{text}' is too long"))?;
    Ok(Duration::from_secs(secs))
}

/// Checks one `--scope` value: it must hold at least one scope. An empty
/// value is refused rather than read as "all scopes", which is what leaving
/// `--scope` out means.
pub fn parse_scope_arg(text: &str) -> Result<String, String> {
    if text.split_whitespace().next().is_none() {
        return Err("a scope value must not be empty: leave --scope out to use all of the credential's scopes".into());
    }
    Ok(text.to_owned())
}

/// Splits repeated `--scope` values, each of which may hold several
/// space-separated scopes, into one list in first-seen order without duplicates.
pub fn split_scopes(values: &[String]) -> Vec<String> {
    let mut scopes: Vec<String> = Vec::new();
    for scope in values.iter().flat_map(|v| v.split_whitespace()) {
        if !scopes.iter().any(|s| s == scope) {
            scopes.push(scope.to_owned());
        }
    }
    scopes
}

/// `Some(scopes)` when the user asked for a subset, `None` for all of them.
pub fn scope_subset(values: &[String]) -> Option<Vec<String>> {
    let scopes = split_scopes(values);
    (!scopes.is_empty()).then_some(scopes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let ok = [
            ("600", 600),
            ("0", 0),
            ("30s", 30),
            ("10m", 600),
            ("1h", 3600),
            ("24h", 86_400),
            ("007m", 420),
        ];
        for (text, secs) in ok {
            assert_eq!(
                parse_duration(text),
                Ok(Duration::from_secs(secs)),
                "{text}"
            );
        }
        let bad = [
            "",
            "s",
            "m",
            "-5",
            "+5",
            "1.5m",
            "10 m",
            " 10m",
            "10m ",
            "10ms",
            "1d",
            "1h30m",
            "10M",
            "ten",
            "99999999999999999999",
        ];
        for text in bad {
            assert!(parse_duration(text).is_err(), "{text:?} should be refused");
        }
        assert!(parse_duration("18446744073709551615h")
            .unwrap_err()
            .contains("too long"));
    }

    #[test]
    fn scopes() {
        let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let cases: [(&[&str], &[&str]); 6] = [
            (&[], &[]),
            (&["repo"], &["repo"]),
            (&["repo read:org"], &["repo", "read:org"]),
            (
                &["repo", "read:org  user\temail"],
                &["repo", "read:org", "user", "email"],
            ),
            (&["a b", "b c", "a"], &["a", "b", "c"]),
            (&["  openid  "], &["openid"]),
        ];
        for (input, want) in cases {
            assert_eq!(split_scopes(&s(input)), s(want), "{input:?}");
        }
        assert_eq!(scope_subset(&[]), None);
        assert_eq!(scope_subset(&s(&["a"])), Some(s(&["a"])));
    }

    #[test]
    fn empty_scope_values_are_refused() {
        assert!(parse_scope_arg("").is_err());
        assert!(parse_scope_arg("   ").is_err());
        assert_eq!(parse_scope_arg("a b").as_deref(), Ok("a b"));
    }
}
