//! The one sanitiser for text a provider sends that reaches an error
//! message, a log line or the terminal (`error`, `error_description`, a
//! metadata issuer, a callback's `iss`, HTTP error details): control
//! characters go (so ANSI escapes become harmless text), the length is
//! bounded, and every secret we sent in that request is replaced with
//! `[redacted]` — providers echo request parameters back more often than
//! one would hope.

use secrecy::{ExposeSecret, SecretString};

/// 300 characters: a real `error_description` is a sentence or two; more
/// is a provider dumping a body (or trying to flood a terminal or a log).
pub const MAX_PROVIDER_TEXT_CHARS: usize = 300;

/// What a scrubbed secret is replaced with.
const REDACTED: &str = "[redacted]";

/// `raw` made safe to show: control characters (C0, DEL, C1) and the
/// Unicode controls that reorder or hide text are removed (line breaks and
/// tabs become spaces), every non-empty secret of `sent` is replaced with
/// `[redacted]`, and the result is cut to [`MAX_PROVIDER_TEXT_CHARS`] on a
/// character boundary, ending in `…` when cut.
///
/// Pass every secret the request carried (client secret, refresh token,
/// authorization code, PKCE verifier, device code, assertion); pass none
/// for text that is shown to the user on purpose (a device `user_code`).
pub(crate) fn provider_text(raw: &str, sent: &[&SecretString]) -> String {
    let mut text: String = raw
        .chars()
        .filter_map(|c| match c {
            '\n' | '\r' | '\t' => Some(' '),
            c if c.is_control() || is_invisible_format(c) => None,
            c => Some(c),
        })
        .collect();
    // After the controls are gone: a secret echoed with a control character
    // spliced into it would otherwise be rejoined by the filter and shown.
    for secret in sent {
        let secret = secret.expose_secret();
        if !secret.is_empty() {
            text = text.replace(secret, REDACTED);
        }
    }
    match text.char_indices().nth(MAX_PROVIDER_TEXT_CHARS) {
        Some((cut, _)) => {
            text.truncate(cut);
            text.push('…');
            text
        }
        None => text,
    }
}

/// Bidirectional overrides and isolates (they reorder what a terminal
/// shows, "Trojan Source"), zero-width characters and the BOM.
fn is_invisible_format(c: char) -> bool {
    matches!(c,
        '\u{200B}'..='\u{200F}'
        | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{2064}'
        | '\u{2066}'..='\u{2069}'
        | '\u{FEFF}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_removed_and_line_breaks_become_spaces() {
        assert_eq!(
            provider_text("\u{1b}[31mred\u{1b}[0m\u{7}", &[]),
            "[31mred[0m"
        );
        assert_eq!(provider_text("a\r\nb\tc", &[]), "a  b c");
        assert_eq!(provider_text("c1\u{9b}31m del\u{7f}", &[]), "c131m del");
        assert_eq!(provider_text("ab\u{202e}cd\u{200b}", &[]), "abcd");
        assert_eq!(provider_text("ünïcode ok", &[]), "ünïcode ok");
    }

    #[test]
    fn every_secret_sent_is_scrubbed_even_with_controls_spliced_in() {
        let secret = SecretString::from("s3cr3t");
        let refresh = SecretString::from("rt-123");
        let empty = SecretString::from("");
        let sent = [&secret, &refresh, &empty];
        assert_eq!(
            provider_text("bad s3cr3t for rt-123", &sent),
            "bad [redacted] for [redacted]"
        );
        assert_eq!(provider_text("s3c\u{1b}r3t", &sent), "[redacted]");
        assert_eq!(provider_text("nothing here", &sent), "nothing here");
    }

    #[test]
    fn long_text_is_cut_on_a_character_boundary() {
        let long = "é".repeat(1000);
        let cut = provider_text(&long, &[]);
        assert_eq!(cut.chars().count(), MAX_PROVIDER_TEXT_CHARS + 1);
        assert!(cut.ends_with('…'));
        let exact = "x".repeat(MAX_PROVIDER_TEXT_CHARS);
        assert_eq!(provider_text(&exact, &[]), exact);
        // A secret at the end of a long text is scrubbed before the cut.
        let secret = SecretString::from("tail-secret");
        let text = format!("{}tail-secret", "y".repeat(MAX_PROVIDER_TEXT_CHARS - 4));
        assert!(!provider_text(&text, &[&secret]).contains("tail"));
    }
}
