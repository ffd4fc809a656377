//! What `dunningctl` prints for people: tables and values made safe to show.
//!
//! Invariant: every value that comes from events, cases, deliveries or the
//! daemon's answers and is printed for people (not `--json`) goes through
//! [`shown`], directly, through [`text`] and [`full`], or through [`table`],
//! which applies it to every cell. Customers choose their names, billing
//! systems their subjects, providers their error texts: none of that may
//! move the cursor, recolour the terminal, end a line of the table or turn
//! text around. So [`shown`]:
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
//! A backslash is shown as it is: the escaped form is for reading, and
//! `--json` has every value exact and whole.
//!
//! Every command prints its answer through [`print`], which chooses between
//! `--json` and the text for people; lines go out through `out!`, which a
//! closed stdout (`dunningctl … | head`) does not make panic.

use std::fmt::Write as _;

use serde::Serialize;

/// `println!` that ignores a closed stdout (`dunningctl … | head`) instead of
/// panicking.
macro_rules! out {
    ($($arg:tt)*) => {{
        #[cfg(not(test))]
        {
            use std::io::Write as _;
            let _ = writeln!(std::io::stdout(), $($arg)*);
        }
        // The test harness captures only the print macros.
        #[cfg(test)]
        println!($($arg)*);
    }};
}

/// The most characters of a value shown in a table cell or a line.
pub const WIDTH: usize = 60;
/// The most characters of an error or a reason (a timeline's last column,
/// an opt-out's reason): these explain, so they get more room, and sit last.
pub const LONG_WIDTH: usize = 200;

/// A table column: its header, and how far its values are shown.
#[derive(Debug, Clone, Copy)]
pub enum Col {
    /// Cut at [`WIDTH`] characters.
    Text(&'static str),
    /// Cut at [`LONG_WIDTH`] characters: errors and reasons.
    Long(&'static str),
    /// Never cut: an id cut short cannot be pasted into the next command.
    Id(&'static str),
}

impl Col {
    fn header(self) -> &'static str {
        match self {
            Col::Text(h) | Col::Long(h) | Col::Id(h) => h,
        }
    }

    fn limit(self) -> Option<usize> {
        match self {
            Col::Text(_) => Some(WIDTH),
            Col::Long(_) => Some(LONG_WIDTH),
            Col::Id(_) => None,
        }
    }
}

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

/// A value in a line or cell: escaped, cut at [`WIDTH`].
pub fn text(value: &str) -> String {
    shown(value, Some(WIDTH))
}

/// An id, an error or a rendered line: escaped, never cut.
pub fn full(value: &str) -> String {
    shown(value, None)
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

/// Prints aligned columns; see [`render_table`].
pub fn table(columns: &[Col], rows: &[Vec<String>]) {
    out!("{}", render_table(columns, rows).trim_end_matches('\n'));
}

/// Aligned columns, two spaces apart, no trailing spaces; every cell
/// [`shown`] at its column's limit (cells beyond the columns as text).
/// Widths count characters, as `format!` pads by them.
pub fn render_table(columns: &[Col], rows: &[Vec<String>]) -> String {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|row| {
            row.iter()
                .enumerate()
                .map(|(i, cell)| {
                    let limit = columns.get(i).map_or(Some(WIDTH), |c| c.limit());
                    shown(cell, limit)
                })
                .collect()
        })
        .collect();
    let headers: Vec<&str> = columns.iter().map(|c| c.header()).collect();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (i, cell) in row.iter().enumerate() {
            match widths.get_mut(i) {
                Some(w) => *w = (*w).max(cell.chars().count()),
                None => widths.push(cell.chars().count()),
            }
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[&str]| {
        let mut text = String::new();
        for (cell, width) in cells.iter().zip(&widths) {
            text.push_str(&format!("{cell:<width$}  "));
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&headers);
    for row in &rows {
        line(&row.iter().map(String::as_str).collect::<Vec<_>>());
    }
    out
}

/// `2026-01-05T09:00:00.000Z` → `2026-01-05 09:00:00`: seconds are plenty
/// for a person; `--json` keeps the milliseconds.
pub fn short_time(t: &str) -> String {
    if t.is_empty() {
        return "-".into();
    }
    let t = t.trim_end_matches('Z');
    let t = t.split_once('.').map_or(t, |(whole, _)| whole);
    full(&t.replacen('T', " ", 1))
}

/// `-` for an empty value, so a column never looks shifted.
pub fn dash(s: &str) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s.to_string()
    }
}

/// Prints a command's answer: with `--json`, `value` as pretty JSON (exact,
/// every field, as the gRPC API names them); without, what `for_people`
/// prints of it. Every command decides between the two here and nowhere else.
pub fn print<T: Serialize>(
    json: bool,
    value: &T,
    for_people: impl FnOnce(&T),
) -> anyhow::Result<()> {
    if json {
        out!("{}", serde_json::to_string_pretty(value)?);
    } else {
        for_people(value);
    }
    Ok(())
}

/// A recovery rate as a percentage with one decimal, `-` when undecided.
pub fn format_rate(rate: Option<f64>) -> String {
    rate.map_or("-".to_string(), |r| format!("{:.1}%", r * 100.0))
}

/// A time to recovery as a duration (`1d`, `4h30m`), `-` when none.
pub fn format_secs(secs: Option<i64>) -> String {
    secs.map_or("-".to_string(), |s| {
        dunningd::duration::format(std::time::Duration::from_secs(s.max(0) as u64))
    })
}
