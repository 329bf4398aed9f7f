//! The one duration grammar of Latchkey's command lines, shared by
//! `latchkey` and `latchkeyd` flags: a whole number, alone (seconds) or with
//! one unit, `ms`, `s`, `m`, `h` or `d` (`600`, `250ms`, `30s`, `10m`, `1h`,
//! `1d`). No sign, no spaces, no fractions, no compound forms like `1h30m`.

use std::time::Duration;

/// The forms [`parse`] accepts, for error messages.
const FORMS: &str = "use whole seconds or a whole number with a unit (ms, s, m, h or d), like 600, 250ms, 30s, 10m, 1h or 1d";

/// Why a duration was refused. The messages quote the text (a duration is
/// never secret) and name the accepted forms.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// Not a number with an optional unit.
    #[error("invalid duration '{0}': {FORMS}")]
    Invalid(String),
    /// A valid form whose value does not fit in a [`Duration`] of `u64` seconds.
    #[error("duration '{0}' is too long: {FORMS}")]
    TooLong(String),
    /// Milliseconds that are not whole seconds, where only seconds are used.
    #[error("duration '{0}' is not a whole number of seconds: use s, m, h or d, or a multiple of 1000ms")]
    NotWholeSeconds(String),
}

/// Parses a duration in the grammar above. Usable as a clap value parser
/// (`value_parser = latchkey_client::duration::parse`).
pub fn parse(text: &str) -> Result<Duration, DurationError> {
    let invalid = || DurationError::Invalid(text.to_owned());
    let too_long = || DurationError::TooLong(text.to_owned());
    let (digits, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    if digits.is_empty() {
        return Err(invalid());
    }
    // Only digits are left, so the one way to fail is a number past u64.
    let count: u64 = digits.parse().map_err(|_| too_long())?;
    let secs_per_unit = match unit {
        "ms" => return Ok(Duration::from_millis(count)),
        "" | "s" => 1,
        "m" => 60,
        "h" => 60 * 60,
        "d" => 24 * 60 * 60,
        _ => return Err(invalid()),
    };
    let secs = count.checked_mul(secs_per_unit).ok_or_else(too_long)?;
    Ok(Duration::from_secs(secs))
}

/// Like [`parse`], but refuses a value with a fraction of a second
/// (`1500ms`): for settings that travel or are applied in whole seconds,
/// the unit of the protocol, where rounding would silently change them
/// (`500ms` would become `0`, which often means "never").
pub fn parse_whole_secs(text: &str) -> Result<Duration, DurationError> {
    let duration = parse(text)?;
    if duration.subsec_nanos() != 0 {
        return Err(DurationError::NotWholeSeconds(text.to_owned()));
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepted_forms() {
        let cases = [
            ("600", Duration::from_secs(600)),
            ("0", Duration::ZERO),
            ("007m", Duration::from_secs(420)),
            ("250ms", Duration::from_millis(250)),
            ("0ms", Duration::ZERO),
            ("30s", Duration::from_secs(30)),
            ("10m", Duration::from_secs(600)),
            ("1h", Duration::from_secs(3600)),
            ("24h", Duration::from_secs(86_400)),
            ("1d", Duration::from_secs(86_400)),
            ("18446744073709551615", Duration::from_secs(u64::MAX)),
            ("18446744073709551615ms", Duration::from_millis(u64::MAX)),
        ];
        for (text, want) in cases {
            assert_eq!(parse(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn refused_forms() {
        let invalid = [
            "", "s", "ms", "m", "-5", "+5", "1.5m", "10 m", " 10m", "10m ", "1h30m", "10M", "10S",
            "10sec", "1w", "ten", "10us", "0x10",
        ];
        for text in invalid {
            assert_eq!(
                parse(text),
                Err(DurationError::Invalid(text.into())),
                "{text:?}"
            );
        }
        let too_long = [
            "18446744073709551616",
            "99999999999999999999s",
            "18446744073709551615m",
            "307445734561825861h",
            "213503982334602d",
        ];
        for text in too_long {
            assert_eq!(
                parse(text),
                Err(DurationError::TooLong(text.into())),
                "{text:?}"
            );
        }
    }

    #[test]
    fn whole_seconds_refuse_fractions() {
        assert_eq!(parse_whole_secs("2000ms"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_whole_secs("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(
            parse_whole_secs("1500ms"),
            Err(DurationError::NotWholeSeconds("1500ms".into()))
        );
        assert!(matches!(
            parse_whole_secs("1d1"),
            Err(DurationError::Invalid(_))
        ));
    }

    #[test]
    fn messages_are_lowercase_and_name_the_forms() {
        let message = parse("1w").unwrap_err().to_string();
        assert_eq!(
            message,
            "invalid duration '1w': use whole seconds or a whole number with a unit (ms, s, m, h or d), like 600, 250ms, 30s, 10m, 1h or 1d"
        );
        assert!(parse("99999999999999999999")
            .unwrap_err()
            .to_string()
            .starts_with("duration '99999999999999999999' is too long: use whole seconds"));
    }
}
