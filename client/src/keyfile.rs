//! The key file of a key-file slot (`latchkey slot add --key-file PATH`): a
//! small private text file holding one machine's 32-byte random secret.
//!
//! ```text
//! # Latchkey key file: it unlocks a vault. Keep it private (mode 0600), …
//! latchkey-key-file-v1:<the 32 bytes in base64url, no padding>
//! ```
//!
//! Lines starting with `#` and blank lines are comments; exactly one key
//! line must follow. The key travels to the daemon as that line (a
//! [`SecretString`]), which the daemon decodes again ([`decode`]): the
//! version prefix is checked at both ends. Errors never quote the file.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use secrecy::{ExposeSecret, SecretString};
use zeroize::Zeroizing;

/// What starts the key line: the format and its version.
pub const KEY_PREFIX: &str = "latchkey-key-file-v1:";

/// Bytes of a key file's secret.
pub const KEY_LEN: usize = 32;

/// 4 KiB: a key file is under 300 bytes; a larger one is something else.
pub const MAX_KEY_FILE_LEN: u64 = 4 * 1024;

/// Environment variable naming a key file: a daemon unlocks with it at
/// start, and the CLI unlocks an auto-locked vault with it (before
/// `$LATCHKEY_PASSPHRASE_FILE`, when both are set).
pub const KEY_FILE_ENV: &str = "LATCHKEY_KEY_FILE";

/// Why a text is not a key file. Never holds any of the text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyFileError {
    /// No line starts with [`KEY_PREFIX`].
    #[error("it holds no `{KEY_PREFIX}` line: it is not a Latchkey key file")]
    NoKey,
    /// More than one line that is not a comment.
    #[error("it holds more than one key line or other text: it is not a Latchkey key file as `latchkey slot add` writes it")]
    Extra,
    /// The key line does not decode to [`KEY_LEN`] bytes.
    #[error("its key line is damaged (not {KEY_LEN} bytes of base64url)")]
    Damaged,
    /// Longer than [`MAX_KEY_FILE_LEN`], or not UTF-8.
    #[error("it is not a small text file: it is not a Latchkey key file")]
    NotText,
}

/// The key line of a new secret (the bytes are encoded, not kept).
pub fn encode(secret: &[u8; KEY_LEN]) -> SecretString {
    let mut line = Zeroizing::new(String::with_capacity(KEY_PREFIX.len() + 43));
    line.push_str(KEY_PREFIX);
    URL_SAFE_NO_PAD.encode_string(secret, &mut line);
    SecretString::from(line.as_str())
}

/// The whole file for a key line: the comment that says what it is, then
/// the line.
pub fn render(key: &SecretString) -> Zeroizing<String> {
    Zeroizing::new(format!(
        "# Latchkey key file: it unlocks a vault (`latchkey unlock --key-file PATH`).\n\
         # Keep it private (mode 0600, never in a repository or a log); if it leaks,\n\
         # remove its slot with `latchkey slot remove ID` and run `latchkey rekey`.\n\
         {}\n",
        key.expose_secret()
    ))
}

/// The key line of a key file's bytes, checked to decode ([`decode`]).
pub fn parse(bytes: &[u8]) -> Result<SecretString, KeyFileError> {
    if bytes.len() as u64 > MAX_KEY_FILE_LEN {
        return Err(KeyFileError::NotText);
    }
    let text = std::str::from_utf8(bytes).map_err(|_| KeyFileError::NotText)?;
    let mut key = None;
    for line in text.lines().map(|l| l.trim_end_matches('\r').trim()) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if !line.starts_with(KEY_PREFIX) {
            return Err(if key.is_some() {
                KeyFileError::Extra
            } else {
                KeyFileError::NoKey
            });
        }
        if key.is_some() {
            return Err(KeyFileError::Extra);
        }
        key = Some(line);
    }
    let key = SecretString::from(key.ok_or(KeyFileError::NoKey)?);
    decode(&key)?;
    Ok(key)
}

/// The secret of a key line, in a buffer zeroized on drop.
pub fn decode(key: &SecretString) -> Result<Zeroizing<[u8; KEY_LEN]>, KeyFileError> {
    let encoded = key
        .expose_secret()
        .strip_prefix(KEY_PREFIX)
        .ok_or(KeyFileError::NoKey)?;
    // 43 characters encode 32 bytes; anything longer cannot fit the buffer.
    if encoded.len() != 43 {
        return Err(KeyFileError::Damaged);
    }
    let mut out = Zeroizing::new([0u8; KEY_LEN]);
    // A 43-character input decodes to at most 33 bytes, checked below.
    let mut buf = Zeroizing::new([0u8; KEY_LEN + 3]);
    let n = URL_SAFE_NO_PAD
        .decode_slice(encoded, &mut buf[..])
        .map_err(|_| KeyFileError::Damaged)?;
    if n != KEY_LEN {
        return Err(KeyFileError::Damaged);
    }
    out.copy_from_slice(&buf[..KEY_LEN]);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rendered_key_file_parses_back_to_its_secret() {
        let secret = [7u8; KEY_LEN];
        let key = encode(&secret);
        assert!(key.expose_secret().starts_with(KEY_PREFIX));
        let file = render(&key);
        assert!(file.starts_with("# Latchkey key file"));
        let back = parse(file.as_bytes()).unwrap();
        assert_eq!(back.expose_secret(), key.expose_secret());
        assert_eq!(*decode(&back).unwrap(), secret);
        // CRLF and a missing final newline are fine.
        let crlf = file.replace('\n', "\r\n");
        assert!(parse(crlf.trim_end().as_bytes()).is_ok());
    }

    #[test]
    fn anything_else_is_refused_without_quoting_it() {
        let good = encode(&[9u8; KEY_LEN]);
        let good = good.expose_secret();
        let cases: Vec<(Vec<u8>, KeyFileError)> = vec![
            (b"".to_vec(), KeyFileError::NoKey),
            (b"# only a comment\n".to_vec(), KeyFileError::NoKey),
            (b"canary-passphrase\n".to_vec(), KeyFileError::NoKey),
            (
                format!("{good}\n{good}\n").into_bytes(),
                KeyFileError::Extra,
            ),
            (
                format!("{good}\ncanary\n").into_bytes(),
                KeyFileError::Extra,
            ),
            (
                format!("{}!\n", &good[..good.len() - 1]).into_bytes(),
                KeyFileError::Damaged,
            ),
            (format!("{good}AA\n").into_bytes(), KeyFileError::Damaged),
            (
                format!("{KEY_PREFIX}canary\n").into_bytes(),
                KeyFileError::Damaged,
            ),
            (b"\xff\xfe canary".to_vec(), KeyFileError::NotText),
            (
                vec![b'#'; MAX_KEY_FILE_LEN as usize + 1],
                KeyFileError::NotText,
            ),
        ];
        for (text, want) in cases {
            let got = parse(&text).err();
            assert_eq!(got, Some(want), "{:?}", String::from_utf8_lossy(&text));
            assert!(!want.to_string().contains("canary"));
        }
    }
}
