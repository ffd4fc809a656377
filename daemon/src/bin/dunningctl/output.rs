//! What `dunningctl` prints for people: tables and values made safe to show.
//!
//! Invariant: every value that comes from events, cases, deliveries or the
//! daemon's answers and is printed for people (not `--json`) goes through
//! [`shown`], directly, through [`text`] and [`full`], or through [`table`],
//! which applies it to every cell. Customers choose their names, billing
//! systems their subjects, providers their error texts: none of that may
//! move the cursor, recolour the terminal, end a line of the table or turn
//! text around. [`shown`] (`dunningd::text::shown`, which the daemon's
//! logs use too) escapes control characters and the characters that
//! reorder or break text, and cuts a value longer than its limit with `…`.
//! A backslash is shown as it is: the escaped form is for reading, and
//! `--json` has every value exact and whole.
//!
//! Every command prints its answer through [`print`], which chooses between
//! `--json` and the text for people; lines go out through `out!`, which a
//! closed stdout (`dunningctl … | head`) does not make panic.

use serde::Serialize;

pub use dunningd::text::shown;

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

/// A value in a line or cell: escaped, cut at [`WIDTH`].
pub fn text(value: &str) -> String {
    shown(value, Some(WIDTH))
}

/// An id, an error or a rendered line: escaped, never cut.
pub fn full(value: &str) -> String {
    shown(value, None)
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
