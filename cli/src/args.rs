//! Arguments shared by several subcommands: the passphrase source flags and
//! the parser for scopes (repeatable, space-separated). Durations are parsed
//! by `latchkey_client::duration`, the grammar `latchkeyd` shares.

use crate::secret::Source;
use secrecy::SecretString;
use std::path::PathBuf;

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

/// A breached-password list a new passphrase must not be on.
#[derive(clap::Args)]
pub struct BreachedListArgs {
    /// Refuse a new passphrase found in this list: one password per line, or the
    /// Pwned Passwords download (`SHA1:count` lines)
    #[arg(long, value_name = "PATH", env = "LATCHKEY_BREACHED_PASSWORDS")]
    pub breached_list: Option<PathBuf>,
}

impl BreachedListArgs {
    /// The list as an absolute path: the daemon reads it, from its own
    /// working directory.
    pub fn path(&self) -> anyhow::Result<Option<PathBuf>> {
        match self.breached_list.as_deref() {
            None => Ok(None),
            Some(p) if p.as_os_str().is_empty() => Ok(None),
            Some(p) => std::path::absolute(p).map(Some).map_err(|e| {
                anyhow::anyhow!("cannot resolve --breached-list {}: {e}", p.display())
            }),
        }
    }
}

/// A proof that a person asks, for what only a person should do (allow
/// an app, open a credential to every app): the vault passphrase from the
/// terminal, or from a file named here for scripted set-ups, or polkit's
/// authentication dialog (`--polkit`, where polkit runs and Latchkey's
/// action is installed: the daemon asks polkit about this process). Never
/// from `$LATCHKEY_PASSPHRASE_FILE`, which unattended unlocks use: a
/// program that can read that file could otherwise approve itself.
#[derive(clap::Args, Default)]
pub struct ProofArgs {
    /// Prove a person asks with the vault passphrase in this file (scripted set-ups; else it is asked on the terminal)
    #[arg(long = "passphrase-file", value_name = "PATH", conflicts_with_all = ["totp", "totp_file"])]
    pub passphrase_file: Option<PathBuf>,
    /// Prove a person asks with the system's authentication dialog (polkit action dev.latchkey.approve) instead of the passphrase
    #[arg(long, conflicts_with_all = ["passphrase_file", "totp", "totp_file"])]
    pub polkit: bool,
    #[command(flatten)]
    pub totp: TotpArgs,
}

/// An authenticator code, for proofs and step-up.
#[derive(clap::Args, Default)]
pub struct TotpArgs {
    /// Prove it with a code of your authenticator app (or a recovery code), asked on the terminal
    #[arg(long, conflicts_with = "totp_file")]
    pub totp: bool,
    /// Prove it with the authenticator code (or a recovery code) in this file
    #[arg(long = "totp-file", value_name = "PATH")]
    pub totp_file: Option<PathBuf>,
}

impl TotpArgs {
    /// The code, when one of the flags asks for it.
    pub fn code(&self, doing: &str) -> anyhow::Result<Option<SecretString>> {
        if let Some(path) = &self.totp_file {
            return Source::File(path.clone())
                .read("authenticator code")
                .map(Some);
        }
        if !self.totp {
            return Ok(None);
        }
        if !crate::secret::can_prompt() {
            return Err(crate::exit::usage(format!(
                "--totp asks for the code on the terminal, and there is none: use --totp-file PATH ({doing})"
            )));
        }
        crate::secret::prompt(
            &format!("Authenticator code or recovery code ({doing}): "),
            "authenticator code",
        )
        .map(Some)
    }
}

impl ProofArgs {
    /// Reads the proof for `doing` ("to allow an app").
    pub fn proof(&self, doing: &str) -> anyhow::Result<latchkey_client::protocol::Proof> {
        use latchkey_client::protocol::Proof;
        if self.polkit {
            return Ok(Proof::polkit());
        }
        if let Some(code) = self.totp.code(doing)? {
            return Ok(Proof::totp(code));
        }
        let passphrase = match &self.passphrase_file {
            Some(path) => Source::File(path.clone()).read("passphrase")?,
            None if crate::secret::can_prompt() => {
                crate::secret::prompt(&format!("Vault passphrase ({doing}): "), "passphrase")?
            }
            None => {
                return Err(crate::exit::usage(format!(
                    "{doing} needs proof that a person asks (the vault passphrase, or an authenticator code), and there is no terminal to ask on: use --passphrase-file PATH or --totp-file PATH (or --polkit where polkit runs)"
                )))
            }
        };
        Ok(Proof::passphrase(passphrase))
    }
}

/// How to name the passphrase flags in an error.
pub const PASSPHRASE_FLAGS: &str =
    "--passphrase-file PATH, --passphrase-stdin or --passphrase-env VAR, or set LATCHKEY_PASSPHRASE_FILE";

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
