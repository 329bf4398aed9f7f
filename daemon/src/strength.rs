//! How strong a new passphrase must be (`vault.init`, `vault.change_passphrase`):
//! at least [`MIN_CHARS`] characters, a zxcvbn estimate of at least "safely
//! unguessable" (score 3: more than 10^8 guesses, against an offline attack
//! on a slow hash — Argon2id here), which also refuses the common passwords
//! and words of the estimator's dictionaries, and, when the caller names
//! one, not on a breached-password list.
//!
//! The verdict names what is wrong and how to choose better, never the
//! passphrase. Applies to every way a passphrase arrives (prompt, file,
//! stdin, env): the daemon checks what it is sent.

use crate::error::ApiError;
use latchkey_client::protocol::ErrorKind;
use secrecy::{ExposeSecret, SecretString};
use sha1::{Digest, Sha1};
use std::io::{BufRead, BufReader};
use std::path::Path;
use zxcvbn::Score;

/// The fewest characters (Unicode scalar values) a new passphrase has.
pub const MIN_CHARS: usize = 10;

/// zxcvbn's "safely unguessable".
const MIN_SCORE: Score = Score::Three;

/// zxcvbn's matching grows fast with length; a passphrase whose first 100
/// characters are strong is strong, so only those are estimated.
const ESTIMATED_CHARS: usize = 100;

/// Words about this vault an attacker would try first.
const CONTEXT_WORDS: &[&str] = &["latchkey", "vault", "passphrase", "password"];

/// How to choose a better one: the end of every refusal.
const ADVICE: &str = "choose four or more random words (a diceware list, or your password \
    manager's passphrase generator); length beats symbols";

/// Refuses a passphrase that is too short, too guessable, or on the list
/// at `breached_list`. Blocking (zxcvbn takes milliseconds, a list scan
/// reads the whole file): call it on a blocking thread.
pub fn check(passphrase: &SecretString, breached_list: Option<&Path>) -> Result<(), ApiError> {
    let text = passphrase.expose_secret();
    let chars = text.chars().count();
    if chars < MIN_CHARS {
        return Err(weak(format!(
            "the passphrase is too short ({chars} characters; at least {MIN_CHARS} are needed)"
        )));
    }
    estimate(text)?;
    if let Some(list) = breached_list {
        if on_list(text, list)? {
            return Err(weak(format!(
                "the passphrase is on the breached-password list {}: attackers try those first",
                list.display()
            )));
        }
    }
    Ok(())
}

/// The zxcvbn estimate, with its own warning and suggestions in the refusal.
fn estimate(text: &str) -> Result<(), ApiError> {
    let head: String = text.chars().take(ESTIMATED_CHARS).collect();
    let user = std::env::var("USER").unwrap_or_default();
    let mut inputs: Vec<&str> = CONTEXT_WORDS.to_vec();
    if !user.is_empty() {
        inputs.push(&user);
    }
    let entropy = zxcvbn::zxcvbn(&head, &inputs);
    if entropy.score() >= MIN_SCORE {
        return Ok(());
    }
    let mut why = format!(
        "the passphrase is too easy to guess (strength {} of 4; at least {} is needed)",
        u8::from(entropy.score()),
        u8::from(MIN_SCORE)
    );
    if let Some(feedback) = entropy.feedback() {
        if let Some(warning) = feedback.warning() {
            why.push_str(&format!(": {}", sentence(&warning.to_string())));
        }
        let tips: Vec<String> = feedback
            .suggestions()
            .iter()
            .map(|s| sentence(&s.to_string()))
            .collect();
        if !tips.is_empty() {
            why.push_str(&format!(" ({})", tips.join("; ")));
        }
    }
    Err(weak(why))
}

/// zxcvbn's texts are sentences ("Avoid repeated words."); ours are clauses.
fn sentence(text: &str) -> String {
    let trimmed = text.trim().trim_end_matches('.');
    let mut chars = trimmed.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// Whether `text` is on the list: a line equal to it, or a line that is
/// its SHA-1 in hex (any case, optionally `:count` after it, as in the
/// Pwned Passwords downloads). A list that cannot be read is an error: the
/// caller asked for the check.
fn on_list(text: &str, list: &Path) -> Result<bool, ApiError> {
    let unreadable = |e: std::io::Error| {
        ApiError::new(
            ErrorKind::InvalidParams,
            format!(
                "cannot read the breached-password list {}: {e}; check the path given to --breached-list or LATCHKEY_BREACHED_PASSWORDS",
                list.display()
            ),
        )
    };
    let file = std::fs::File::open(list).map_err(unreadable)?;
    let sha1 = hex::encode(Sha1::digest(text.as_bytes()));
    let mut reader = BufReader::new(file);
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).map_err(unreadable)? == 0 {
            return Ok(false);
        }
        let entry = line.trim_end_matches(['\n', '\r']);
        if entry == text {
            return Ok(true);
        }
        let hash = entry.split(':').next().unwrap_or(entry);
        if hash.len() == 40 && hash.eq_ignore_ascii_case(&sha1) {
            return Ok(true);
        }
    }
}

fn weak(why: String) -> ApiError {
    ApiError::new(ErrorKind::WeakPassphrase, format!("{why}; {ADVICE}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(passphrase: &str) -> Result<(), ApiError> {
        check(&SecretString::from(passphrase), None)
    }

    #[test]
    fn short_passphrases_are_refused_with_the_count() {
        let err = verdict("Zq8#pL!x").unwrap_err();
        assert_eq!(err.kind, ErrorKind::WeakPassphrase);
        assert!(err.message.contains("8 characters"), "{}", err.message);
        assert!(err.message.contains("at least 10"), "{}", err.message);
        assert!(err.message.contains("random words"), "{}", err.message);
        // Characters, not bytes: ten accented letters are ten.
        assert!(verdict("ééééééééé")
            .unwrap_err()
            .message
            .contains("9 characters"));
    }

    #[test]
    fn common_and_guessable_passphrases_are_refused_without_echo() {
        for weak in [
            "password1234",
            "qwertyuiopasdf",
            "aaaaaaaaaaaaaaaa",
            "iloveyou12345",
            "latchkey2026!",
            "1234567890",
        ] {
            let err = verdict(weak).expect_err(weak);
            assert_eq!(err.kind, ErrorKind::WeakPassphrase, "{weak}");
            assert!(
                err.message.contains("too easy to guess"),
                "{weak}: {}",
                err.message
            );
            assert!(!err.message.contains(weak), "the refusal echoes {weak}");
        }
    }

    #[test]
    fn strong_passphrases_pass() {
        for strong in [
            "correct horse battery staple",
            "velvet-quarry-ninety-lantern",
            "Tz9!mQ2#vL7@xR",
            "a different passphrase for the test",
        ] {
            verdict(strong).unwrap_or_else(|e| panic!("{strong}: {}", e.message));
        }
        // Long ones are estimated on their first 100 characters, quickly.
        verdict(&"velvet quarry ninety lantern ".repeat(200)).unwrap();
    }

    #[test]
    fn a_breached_list_matches_plain_lines_and_pwned_hashes() {
        let dir = std::env::temp_dir().join(format!("latchkey-breached-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let list = dir.join("list.txt");
        // SHA-1("velvet-quarry-ninety-lantern"), as Pwned Passwords writes it.
        let hash = hex::encode_upper(Sha1::digest(b"velvet-quarry-ninety-lantern"));
        std::fs::write(
            &list,
            format!("0000000000000000000000000000000000000000:3\r\ncorrect horse battery staple\r\n{hash}:12\n"),
        )
        .unwrap();
        for listed in [
            "correct horse battery staple",
            "velvet-quarry-ninety-lantern",
        ] {
            let err = check(&SecretString::from(listed), Some(&list)).unwrap_err();
            assert_eq!(err.kind, ErrorKind::WeakPassphrase);
            assert!(
                err.message.contains("breached-password list"),
                "{}",
                err.message
            );
            assert!(!err.message.contains(listed));
        }
        check(&SecretString::from("Tz9!mQ2#vL7@xR"), Some(&list)).unwrap();
        let missing = dir.join("absent.txt");
        let err = check(&SecretString::from("Tz9!mQ2#vL7@xR"), Some(&missing)).unwrap_err();
        assert_eq!(err.kind, ErrorKind::InvalidParams);
        assert!(err
            .message
            .contains("cannot read the breached-password list"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
