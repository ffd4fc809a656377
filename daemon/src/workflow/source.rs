//! What a workflow file may cost to read and decode.
//!
//! A file is read with a bounded read: at most its limit plus one byte, so a
//! huge file is refused without being read whole. YAML aliases are expanded
//! by the decoder (serde_norway bounds nesting to 128 levels and the number
//! of alias jumps to 100 per event of the file, but not what they expand to:
//! a 1 MB file of aliases to a 256 KiB string decodes to gigabytes). So every
//! string a workflow is decoded into is charged, with a fixed cost per value,
//! against a budget of [`EXPANSION_FACTOR`] times the file limit, and the
//! decoding stops at the first string past it. Only strings are charged:
//! every value of a workflow holds some, except empty lists and maps (which
//! an alias cannot multiply: each alias is one value where one is expected).

use std::cell::Cell;
use std::fmt;
use std::io::Read;
use std::path::Path;

use serde::{Deserialize, Deserializer};

use super::Diagnostic;

/// The limits a workflow file is read and decoded within.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileLimits {
    /// Largest file, in bytes (`limits.workflow_file_size`).
    pub max_bytes: u64,
}

/// What decoding may produce, aliases expanded, as a multiple of the file
/// limit.
pub const EXPANSION_FACTOR: u64 = 4;
/// What each decoded string costs on top of its bytes (a value's own size).
const VALUE_COST: u64 = 32;

impl FileLimits {
    /// 1 MiB: far more than any hand-written workflow.
    pub const DEFAULT: FileLimits = FileLimits {
        max_bytes: 1024 * 1024,
    };
    /// The largest limit allowed (16 MiB): a quarter of an admin API
    /// message (`crate::config::ADMIN_MESSAGE_LIMIT`, which checks it), so
    /// that `dunningctl workflows show` of a file at the limit (its source,
    /// plus the steps and description it repeats) always fits in one answer.
    pub const MAX: FileLimits = FileLimits {
        max_bytes: 16 * 1024 * 1024,
    };

    /// Bytes the decoded values may take.
    pub fn expansion(&self) -> u64 {
        self.max_bytes.saturating_mul(EXPANSION_FACTOR)
    }
}

impl Default for FileLimits {
    fn default() -> Self {
        FileLimits::DEFAULT
    }
}

/// Reads a workflow file of at most `limits.max_bytes` bytes.
pub fn read(path: &Path, limits: FileLimits) -> Result<String, Diagnostic> {
    let diagnostic = |line: u32, column: u32, message: String| Diagnostic {
        path: path.to_path_buf(),
        line,
        column,
        message,
    };
    let file =
        std::fs::File::open(path).map_err(|e| diagnostic(0, 0, format!("cannot read: {e}")))?;
    let mut bytes = Vec::new();
    file.take(limits.max_bytes.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| diagnostic(0, 0, format!("cannot read: {e}")))?;
    if bytes.len() as u64 > limits.max_bytes {
        // Where the limit falls: the first byte past it.
        let (line, column) = super::locate::offset(&bytes, limits.max_bytes as usize);
        return Err(diagnostic(line, column, too_large(limits)));
    }
    String::from_utf8(bytes).map_err(|e| {
        diagnostic(
            0,
            0,
            format!(
                "cannot read: not UTF-8 text (invalid byte at offset {})",
                e.utf8_error().valid_up_to()
            ),
        )
    })
}

/// The message for a file over the size limit.
pub fn too_large(limits: FileLimits) -> String {
    format!(
        "the file is larger than the limit of {} bytes (limits.workflow_file_size)",
        limits.max_bytes
    )
}

thread_local! {
    /// What is left of the decoding budget of the file being decoded on this
    /// thread; `None` outside a decode (e.g. a window in `dunningd.yaml`).
    static BUDGET: Cell<Option<(u64, u64)>> = const { Cell::new(None) };
}

/// Runs `decode` with a budget of `limits.expansion()` bytes for the strings
/// it decodes into [`Text`].
pub fn with_budget<T>(limits: FileLimits, decode: impl FnOnce() -> T) -> T {
    struct Reset(Option<(u64, u64)>);
    impl Drop for Reset {
        fn drop(&mut self) {
            BUDGET.with(|b| b.set(self.0));
        }
    }
    let total = limits.expansion();
    let _reset = Reset(BUDGET.with(|b| b.replace(Some((total, total)))));
    decode()
}

/// Charges `bytes` against the current budget.
fn charge(bytes: u64) -> Result<(), String> {
    BUDGET.with(|b| match b.get() {
        None => Ok(()),
        Some((left, total)) => match left.checked_sub(bytes.saturating_add(VALUE_COST)) {
            Some(left) => {
                b.set(Some((left, total)));
                Ok(())
            }
            None => Err(format!(
                "the file expands to more than {total} bytes ({EXPANSION_FACTOR} times limits.workflow_file_size); are YAML aliases repeating a large value?"
            )),
        },
    })
}

/// A string of a workflow file, charged against the decoding budget.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Text(pub String);

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Text, D::Error> {
        let text = String::deserialize(deserializer)?;
        charge(text.len() as u64).map_err(serde::de::Error::custom)?;
        Ok(Text(text))
    }
}

impl fmt::Display for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::ops::Deref for Text {
    type Target = String;

    fn deref(&self) -> &String {
        &self.0
    }
}

impl From<&str> for Text {
    fn from(text: &str) -> Text {
        Text(text.to_string())
    }
}

impl From<Text> for String {
    fn from(text: Text) -> String {
        text.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_over_the_limit_is_refused_where_the_limit_falls() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("w.yaml");
        std::fs::write(&path, "ab\ncdef\ngh").expect("write");
        /// Ok(content) or Err((line, column)) of the refusal.
        type Expected = Result<&'static str, (u32, u32)>;
        let table: &[(u64, Expected)] = &[
            (100, Ok("ab\ncdef\ngh")),
            (10, Ok("ab\ncdef\ngh")),
            (9, Err((3, 2))),
            (5, Err((2, 3))),
            (3, Err((2, 1))),
            (0, Err((1, 1))),
        ];
        for (limit, expected) in table {
            let got = read(&path, FileLimits { max_bytes: *limit });
            match (expected, got) {
                (Ok(want), Ok(got)) => assert_eq!(&got, want, "limit {limit}"),
                (Err((line, column)), Err(d)) => {
                    assert_eq!((d.line, d.column), (*line, *column), "limit {limit}");
                    assert_eq!(
                        d.message,
                        format!(
                            "the file is larger than the limit of {limit} bytes (limits.workflow_file_size)"
                        )
                    );
                }
                (expected, got) => panic!("limit {limit}: expected {expected:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn decoding_stops_once_strings_pass_the_budget() {
        let limits = FileLimits { max_bytes: 1000 };
        let anchored = format!("- &a {}\n", "x".repeat(500));
        let decode = |yaml: &str| {
            with_budget(limits, || serde_norway::from_str::<Vec<Text>>(yaml)).map(|v| v.len())
        };
        // 4000 bytes of budget: seven copies of 532 fit, eight do not.
        assert_eq!(
            decode(&format!("{anchored}{}", "- *a\n".repeat(6))).ok(),
            Some(7)
        );
        let error = decode(&format!("{anchored}{}", "- *a\n".repeat(7))).expect_err("refused");
        assert!(
            error
                .to_string()
                .contains("expands to more than 4000 bytes"),
            "{error}"
        );
        assert!(error.location().is_some(), "{error}");
        // Outside a budget nothing is charged.
        let many = format!("{anchored}{}", "- *a\n".repeat(20));
        assert_eq!(
            serde_norway::from_str::<Vec<Text>>(&many)
                .map(|v| v.len())
                .ok(),
            Some(21)
        );
    }
}
