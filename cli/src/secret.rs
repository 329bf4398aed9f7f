//! Reading secrets (passphrases, client secrets) from the places the user
//! names: a file, stdin, an environment variable, or a no-echo prompt on the
//! terminal. Never from argv. Every buffer a secret passes through is
//! zeroized; the result is a [`SecretString`] that goes straight to the socket.
//! A secret file must be ours and readable by nobody else (as ssh insists
//! for a private key), and a variable that holds a secret is kept out of a
//! daemon the CLI starts ([`env_sources`]).

use crate::exit;
use anyhow::{Context, Result};
use latchkey_client::trust;
use secrecy::{ExposeSecret, SecretString};
use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// 16 KiB: far above any real passphrase or client secret, and well under the
/// daemon's 64 KiB request limit.
const MAX_SECRET_LEN: u64 = 16 * 1024;

/// Environment variable naming a file that holds the vault passphrase; used
/// by `init`, `unlock`, and to unlock an auto-locked vault headlessly.
pub const PASSPHRASE_FILE_ENV: &str = "LATCHKEY_PASSPHRASE_FILE";

/// Environment variable naming a key file (`latchkey slot add --key-file`);
/// used by `unlock`, and to unlock an auto-locked vault headlessly, before
/// [`PASSPHRASE_FILE_ENV`] when both are set.
pub use latchkey_client::keyfile::KEY_FILE_ENV;

/// `$LATCHKEY_KEY_FILE`, when set and not empty.
pub fn key_file_env() -> Option<PathBuf> {
    std::env::var_os(KEY_FILE_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// Reads a vault key file (`latchkey-key-file-v1:…`) after the private
/// file checks ([`trust::check_secret_file`]), bounded, into a zeroized
/// buffer: its key line. Errors name the file, never its contents.
pub fn read_vault_key_file(path: &Path) -> Result<SecretString> {
    use latchkey_client::keyfile;
    let read = || -> Result<SecretString> {
        let file = std::fs::File::open(path)?;
        trust::check_secret_file(&file, path)
            .map_err(|refused| exit::usage(refused.to_string()))?;
        let mut buf = Zeroizing::new(Vec::with_capacity(keyfile::MAX_KEY_FILE_LEN as usize + 64));
        file.take(keyfile::MAX_KEY_FILE_LEN + 1)
            .read_to_end(&mut buf)?;
        keyfile::parse(&buf).map_err(|e| exit::usage(e.to_string()))
    };
    read().with_context(|| format!("failed to read the key file {}", path.display()))
}

/// The ids of the flags that name an environment variable holding a secret,
/// in any subcommand: `--client-secret-env VAR`, `--passphrase-env VAR`.
const SECRET_ENV_FLAGS: &[&str] = &["client_secret_env", "passphrase_env"];

/// The variables the parsed command line reads a secret from (the values of
/// [`SECRET_ENV_FLAGS`] at any subcommand depth). Known before any command
/// runs, so a daemon started on the way never inherits them.
pub fn env_sources(matches: &clap::ArgMatches) -> Vec<String> {
    let mut vars = Vec::new();
    let mut level = Some(matches);
    while let Some(m) = level {
        for id in SECRET_ENV_FLAGS {
            // An id this subcommand does not define is an error: skip it.
            if let Ok(Some(var)) = m.try_get_one::<String>(id) {
                vars.push(var.clone());
            }
        }
        level = m.subcommand().map(|(_, sub)| sub);
    }
    vars
}

/// Where a secret comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A file; one trailing newline is dropped.
    File(PathBuf),
    /// Standard input; one trailing newline is dropped.
    Stdin,
    /// A named environment variable, taken as is.
    Env(String),
}

impl Source {
    /// The first source given, if any (clap makes them mutually exclusive).
    pub fn from_flags(file: Option<&Path>, stdin: bool, env: Option<&str>) -> Option<Source> {
        if let Some(path) = file {
            Some(Source::File(path.to_owned()))
        } else if stdin {
            Some(Source::Stdin)
        } else {
            env.map(|var| Source::Env(var.to_owned()))
        }
    }

    /// `$LATCHKEY_PASSPHRASE_FILE`, when set and not empty.
    pub fn passphrase_file_env() -> Option<Source> {
        std::env::var_os(PASSPHRASE_FILE_ENV)
            .filter(|v| !v.is_empty())
            .map(|v| Source::File(PathBuf::from(v)))
    }

    /// Reads the secret; `what` names it in errors ("passphrase").
    pub fn read(&self, what: &str) -> Result<SecretString> {
        let secret = match self {
            Source::File(path) => read_file(path)
                .with_context(|| format!("failed to read the {what} from {}", path.display()))?,
            Source::Stdin => {
                read_stdin(what).with_context(|| format!("failed to read the {what} from stdin"))?
            }
            Source::Env(var) => {
                read_env(var).with_context(|| format!("failed to read the {what} from ${var}"))?
            }
        };
        if secret.expose_secret().is_empty() {
            return Err(exit::usage(format!(
                "the {what} from {self} is empty: an empty {what} is not allowed"
            )));
        }
        Ok(secret)
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::File(path) => write!(f, "{}", path.display()),
            Source::Stdin => f.write_str("stdin"),
            Source::Env(var) => write!(f, "${var}"),
        }
    }
}

/// True when there is a user at a terminal to prompt. Standard input decides,
/// not `/dev/tty`: a script or test that runs us with stdin redirected must
/// get an error naming the flags, never a prompt that waits forever on a
/// terminal it does not watch.
pub fn can_prompt() -> bool {
    std::io::stdin().is_terminal()
}

/// Asks once, without echo, on the terminal. Refuses an empty answer.
pub fn prompt(label: &str, what: &str) -> Result<SecretString> {
    let answer = Zeroizing::new(
        rpassword::prompt_password(label)
            .with_context(|| format!("failed to read the {what} from the terminal"))?,
    );
    if answer.is_empty() {
        return Err(exit::usage(format!(
            "the {what} is empty: an empty {what} is not allowed"
        )));
    }
    Ok(SecretString::from(answer.as_str()))
}

/// Asks twice, without echo, and checks both answers match (for a new passphrase).
pub fn prompt_new(label: &str, what: &str) -> Result<SecretString> {
    let first = prompt(label, what)?;
    let second = prompt(&format!("Repeat the {what}: "), what)?;
    if first.expose_secret() != second.expose_secret() {
        return Err(exit::usage(format!(
            "the two {what}s do not match: run the command again"
        )));
    }
    Ok(first)
}

/// How many times a prompted new passphrase may be refused as weak
/// before the command gives up.
const WEAK_TRIES: usize = 3;

/// Prompts for a new secret (twice) and hands it to `send`; while the
/// daemon refuses it as weak (`weak_passphrase`), says why on stderr and
/// asks again, at most [`WEAK_TRIES`] times. Any other outcome is returned.
pub fn retry_weak<T>(
    label: &str,
    what: &str,
    mut send: impl FnMut(SecretString) -> Result<T>,
) -> Result<T> {
    for attempt in 1..=WEAK_TRIES {
        let secret = prompt_new(label, what)?;
        match send(secret) {
            Err(err) if attempt < WEAK_TRIES => match err.downcast_ref() {
                Some(latchkey_client::Error::Daemon {
                    kind: latchkey_client::ErrorKind::WeakPassphrase,
                    message,
                    ..
                }) => eprintln!("latchkey: {message}. Try another."),
                _ => return Err(err),
            },
            other => return other,
        }
    }
    unreachable!("the last attempt returns")
}

/// Drops exactly one trailing `\n` or `\r\n`: what an editor or `echo` adds
/// to a file. Any other whitespace is part of the secret.
fn strip_newline(bytes: &[u8]) -> &[u8] {
    bytes
        .strip_suffix(b"\r\n")
        .or_else(|| bytes.strip_suffix(b"\n"))
        .unwrap_or(bytes)
}

/// Reads at most [`MAX_SECRET_LEN`] bytes into a buffer allocated once (so
/// no reallocation leaves a copy behind) and zeroized on drop.
fn read_bounded(mut reader: impl Read) -> Result<Zeroizing<Vec<u8>>> {
    // The extra room means `read_to_end` never fills the buffer, so it never
    // grows it or probes into a stack buffer.
    let mut buf = Zeroizing::new(Vec::with_capacity(MAX_SECRET_LEN as usize + 64));
    (&mut reader)
        .take(MAX_SECRET_LEN + 1)
        .read_to_end(&mut buf)?;
    if buf.len() as u64 > MAX_SECRET_LEN {
        anyhow::bail!("it is longer than {MAX_SECRET_LEN} bytes");
    }
    Ok(buf)
}

/// Turns bytes into a secret string, copying into an allocation of the exact size.
fn secret_from_utf8(bytes: &[u8]) -> Result<SecretString> {
    let text = std::str::from_utf8(bytes).map_err(|_| anyhow::anyhow!("it is not valid UTF-8"))?;
    Ok(SecretString::from(text))
}

/// Reads a secret file, after checking the opened file is ours and private
/// ([`trust::check_secret_file`]); a refusal is a usage error naming the fix.
fn read_file(path: &Path) -> Result<SecretString> {
    let file = std::fs::File::open(path)?;
    trust::check_secret_file(&file, path).map_err(|refused| exit::usage(refused.to_string()))?;
    let buf = read_bounded(file)?;
    secret_from_utf8(strip_newline(&buf))
}

/// Reads a private key file (`--key-file`), after the same checks as a
/// secret file: PEM text as it is, DER as its base64.
pub fn read_key_file(path: &Path) -> Result<SecretString> {
    use base64::Engine as _;
    let read = || -> Result<SecretString> {
        let file = std::fs::File::open(path)?;
        trust::check_secret_file(&file, path)
            .map_err(|refused| exit::usage(refused.to_string()))?;
        let buf = read_bounded(file)?;
        match std::str::from_utf8(&buf) {
            Ok(text) if text.trim_start().starts_with("-----BEGIN") => Ok(SecretString::from(text)),
            _ => Ok(SecretString::from(
                base64::engine::general_purpose::STANDARD.encode(&buf[..]),
            )),
        }
    };
    read().with_context(|| format!("failed to read the private key from {}", path.display()))
}

/// Two secrets from standard input, one a line (`first` and `second`
/// name them), or two no-echo prompts at a terminal.
pub fn read_stdin_pair(first: &str, second: &str) -> Result<(SecretString, SecretString)> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        let a = prompt(&format!("{}: ", capitalise(first)), first)?;
        let b = prompt(&format!("{}: ", capitalise(second)), second)?;
        return Ok((a, b));
    }
    let buf = read_bounded(stdin.lock()).context("failed to read stdin")?;
    let text =
        std::str::from_utf8(&buf).map_err(|_| anyhow::anyhow!("stdin is not valid UTF-8"))?;
    let mut lines = text.lines().map(|l| l.trim_end_matches('\r'));
    match (lines.next(), lines.next()) {
        (Some(a), Some(b)) if !a.is_empty() && !b.is_empty() => {
            Ok((SecretString::from(a), SecretString::from(b)))
        }
        _ => Err(exit::usage(format!(
            "give the {first} and the {second} on stdin, one a line"
        ))),
    }
}

fn read_stdin(what: &str) -> Result<SecretString> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        // Someone is typing: do not echo it.
        return prompt(&format!("{}: ", capitalise(what)), what);
    }
    let buf = read_bounded(stdin.lock())?;
    secret_from_utf8(strip_newline(&buf))
}

fn read_env(var: &str) -> Result<SecretString> {
    let value = std::env::var_os(var)
        .ok_or_else(|| exit::usage(format!("environment variable {var} is not set")))?;
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStringExt;
        let bytes = Zeroizing::new(value.into_vec());
        secret_from_utf8(&bytes)
    }
    #[cfg(not(unix))]
    {
        let text = Zeroizing::new(
            value
                .into_string()
                .map_err(|_| anyhow::anyhow!("it is not valid UTF-8"))?,
        );
        Ok(SecretString::from(text.as_str()))
    }
}

pub fn capitalise(word: &str) -> String {
    let mut chars = word.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exactly_one_trailing_newline_is_stripped() {
        let cases: [(&[u8], &[u8]); 10] = [
            (b"pw", b"pw"),
            (b"pw\n", b"pw"),
            (b"pw\r\n", b"pw"),
            (b"pw\n\n", b"pw\n"),
            (b"pw\r\n\r\n", b"pw\r\n"),
            (b"pw\r", b"pw\r"),
            (b"pw \n", b"pw "),
            (b"\n", b""),
            (b"", b""),
            (b"p\nw", b"p\nw"),
        ];
        for (input, want) in cases {
            assert_eq!(
                strip_newline(input),
                want,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn files_are_read_stripped_and_checked() {
        let dir = std::env::temp_dir().join(format!("latchkey-cli-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let write = |name: &str, content: &[u8]| {
            use std::os::unix::fs::PermissionsExt;
            let path = dir.join(name);
            std::fs::write(&path, content).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            Source::File(path)
        };
        let secret = write("ok", b"correct horse\n").read("passphrase").unwrap();
        assert_eq!(secret.expose_secret(), "correct horse");

        let err = write("empty", b"\n").read("passphrase").unwrap_err();
        assert_eq!(exit::for_error(&err), exit::USAGE);
        assert!(format!("{err:#}").contains("empty"), "{err:#}");

        let err = write("latin1", b"caf\xe9-canary\n")
            .read("passphrase")
            .unwrap_err();
        assert!(format!("{err:#}").contains("not valid UTF-8"), "{err:#}");
        assert!(!format!("{err:#}").contains("canary"), "{err:#}");

        let long = vec![b'x'; MAX_SECRET_LEN as usize + 1];
        let err = write("long", &long).read("passphrase").unwrap_err();
        assert!(format!("{err:#}").contains("longer than"), "{err:#}");
        let exact = vec![b'x'; MAX_SECRET_LEN as usize];
        assert!(write("exact", &exact).read("passphrase").is_ok());

        let loose = write("loose", b"pw-canary\n");
        let Source::File(loose_path) = &loose else {
            unreachable!("write makes a file source")
        };
        std::fs::set_permissions(
            loose_path,
            std::os::unix::fs::PermissionsExt::from_mode(0o644),
        )
        .unwrap();
        let err = loose.read("passphrase").unwrap_err();
        assert_eq!(exit::for_error(&err), exit::USAGE);
        let message = format!("{err:#}");
        assert!(
            message.contains(&format!("run `chmod 600 {}`", loose_path.display())),
            "{message}"
        );
        assert!(!message.contains("canary"), "{message}");

        let err = Source::File(dir.join("missing"))
            .read("passphrase")
            .unwrap_err();
        assert!(
            format!("{err:#}").starts_with("failed to read the passphrase from"),
            "{err:#}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn env_values_are_taken_as_is_and_unset_ones_are_usage_errors() {
        // Test-only variables with names no other test uses.
        std::env::set_var("LATCHKEY_CLI_TEST_SECRET", "s3cret\n");
        let secret = Source::Env("LATCHKEY_CLI_TEST_SECRET".into())
            .read("client secret")
            .unwrap();
        assert_eq!(secret.expose_secret(), "s3cret\n");
        let err = Source::Env("LATCHKEY_CLI_TEST_UNSET".into())
            .read("client secret")
            .unwrap_err();
        assert_eq!(exit::for_error(&err), exit::USAGE);
    }

    #[test]
    fn sources_pick_the_flag_given() {
        let p = Path::new("/p");
        assert_eq!(
            Source::from_flags(Some(p), false, None),
            Some(Source::File(p.into()))
        );
        assert_eq!(Source::from_flags(None, true, None), Some(Source::Stdin));
        assert_eq!(
            Source::from_flags(None, false, Some("V")),
            Some(Source::Env("V".into()))
        );
        assert_eq!(Source::from_flags(None, false, None), None);
        assert_eq!(capitalise("passphrase"), "Passphrase");
    }
}
