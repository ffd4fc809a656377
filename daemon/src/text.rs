//! Text from outside (customers' names, billing systems' subjects and ids,
//! providers' error texts) made safe to show in a terminal or a log line:
//! none of it may move the cursor, recolour the terminal, end a line or turn
//! text around. [`shown`]:
//!
//! - escapes control characters: `\n`, `\r`, `\t`; other C0 characters and
//!   DEL as `\xNN` (ESC is `\x1b`); C1 characters as `\u{NN}`;
//! - escapes the characters that reorder or break text without being
//!   control characters: the Unicode bidirectional marks, embeddings,
//!   overrides and isolates (U+061C, U+200E, U+200F, U+202A–U+202E,
//!   U+2066–U+2069) and the line and paragraph separators (U+2028, U+2029),
//!   as `\u{202e}`;
//! - cuts a value longer than its limit, ending it with `…` (the limit counts
//!   the ellipsis and the escaped form's characters).
//!
//! `dunningctl` shows every value for people through it; the daemon's logs
//! show payload text from billing sources through it.

use std::fmt::Write as _;

/// `value` safe to print: escaped, and cut at `limit` characters (none: whole).
pub fn shown(value: &str, limit: Option<usize>) -> String {
    let mut out = String::with_capacity(value.len());
    let mut count = 0;
    // Where the text stood when the room for an ellipsis ran out: the cut.
    let mut cut: Option<usize> = None;
    for c in value.chars() {
        let before = out.len();
        escape(c, &mut out);
        count += out[before..].chars().count();
        if let Some(limit) = limit {
            if cut.is_none() && count > limit.saturating_sub(1) {
                cut = Some(before);
            }
            if count > limit {
                out.truncate(cut.unwrap_or(before));
                out.push('…');
                return out;
            }
        }
    }
    out
}

/// Appends `c`, escaped if it is a control character or one that reorders
/// or breaks text.
fn escape(c: char, out: &mut String) {
    match c {
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        '\0'..='\x1f' | '\x7f' => {
            let _ = write!(out, "\\x{:02x}", c as u32);
        }
        c if c.is_control() || reorders_or_breaks(c) => {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        }
        c => out.push(c),
    }
}

/// The bidirectional formatting characters (which can make `evil.exe` read
/// as `exe.live`) and the line and paragraph separators.
fn reorders_or_breaks(c: char) -> bool {
    matches!(
        c,
        '\u{061c}'
            | '\u{200e}'
            | '\u{200f}'
            | '\u{202a}'..='\u{202e}'
            | '\u{2066}'..='\u{2069}'
            | '\u{2028}'
            | '\u{2029}'
    )
}
