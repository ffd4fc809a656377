//! Durations as users write them: `90s`, `15m`, `3d`, `1d12h`, `0s`.
//!
//! One parser for workflow files, the daemon configuration and the API, so a
//! duration means the same everywhere. Days are 24 hours of elapsed time (a
//! step `after: 1d` is due 24 hours later, whatever the clocks on the wall do);
//! send windows are where local time matters.

use std::fmt;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("empty duration (write e.g. '90s', '15m', '3d')")]
    Empty,
    #[error("invalid duration '{text}': {why} (write e.g. '90s', '15m', '3d', '1d12h')")]
    Invalid { text: String, why: &'static str },
    #[error("duration '{0}' is too large (at most 36500d, 100 years)")]
    Overflow(String),
}

/// The longest duration any file or call may give: far beyond any dunning
/// sequence, and small enough that adding it to any time the engine can
/// hold stays a valid time.
pub const MAX: Duration = Duration::from_secs(36_500 * 86_400);

/// Parses `<number><unit>` groups, units `s`, `m`, `h`, `d`, `w`.
pub fn parse(text: &str) -> Result<Duration, DurationError> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(DurationError::Empty);
    }
    let invalid = |why| DurationError::Invalid {
        text: trimmed.to_string(),
        why,
    };
    let mut total: u64 = 0;
    let mut digits = String::new();
    for ch in trimmed.chars() {
        if ch.is_ascii_digit() {
            digits.push(ch);
            continue;
        }
        let unit: u64 = match ch {
            's' => 1,
            'm' => 60,
            'h' => 3_600,
            'd' => 86_400,
            'w' => 604_800,
            c if c.is_whitespace() => return Err(invalid("spaces are not allowed")),
            _ => return Err(invalid("unknown unit (use s, m, h, d or w)")),
        };
        if digits.is_empty() {
            return Err(invalid("a unit must follow a number"));
        }
        let n: u64 = digits
            .parse()
            .map_err(|_| DurationError::Overflow(trimmed.to_string()))?;
        digits.clear();
        total = n
            .checked_mul(unit)
            .and_then(|secs| total.checked_add(secs))
            .ok_or_else(|| DurationError::Overflow(trimmed.to_string()))?;
    }
    if !digits.is_empty() {
        return Err(invalid("a number needs a unit"));
    }
    let duration = Duration::from_secs(total);
    if duration > MAX {
        return Err(DurationError::Overflow(trimmed.to_string()));
    }
    Ok(duration)
}

/// Formats a duration the way `parse` reads it, largest units first.
pub fn format(duration: Duration) -> String {
    let mut secs = duration.as_secs();
    if secs == 0 {
        return "0s".to_string();
    }
    let mut out = String::new();
    for (unit, size) in [("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)] {
        if secs >= size {
            out.push_str(&format!("{}{unit}", secs / size));
            secs %= size;
        }
    }
    out
}

/// A `Display` wrapper for logs and tables.
pub struct Human(pub Duration);

impl fmt::Display for Human {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format(self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_users_write() {
        let table = [
            ("0s", 0),
            ("90s", 90),
            ("15m", 900),
            ("3d", 259_200),
            ("1d12h", 129_600),
            ("2w", 1_209_600),
        ];
        for (text, secs) in table {
            assert_eq!(parse(text), Ok(Duration::from_secs(secs)), "{text}");
            assert_eq!(
                parse(&format(Duration::from_secs(secs))),
                Ok(Duration::from_secs(secs))
            );
        }
    }

    #[test]
    fn refuses_with_a_reason() {
        let table = [
            ("", "empty duration"),
            ("3", "a number needs a unit"),
            ("d", "a unit must follow a number"),
            ("3 d", "spaces are not allowed"),
            ("3y", "unknown unit"),
            ("-3d", "unknown unit"),
            ("99999999999999999999s", "too large"),
            ("99999999w", "too large (at most 36500d"),
            ("36500d1s", "too large"),
        ];
        assert_eq!(parse("36500d"), Ok(MAX));
        for (text, want) in table {
            let err = parse(text).expect_err(text).to_string();
            assert!(err.contains(want), "{text}: {err}");
        }
    }
}
