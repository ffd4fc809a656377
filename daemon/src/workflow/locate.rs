//! Finds where a key sits in a YAML source, for diagnostics.
//!
//! serde gives a location only for syntax and type errors; semantic errors
//! (an unknown channel in step 'reminder') are found by searching for a path
//! of substrings in order — `["steps:", "name: reminder", "channel: fax"]` —
//! each after the previous match. It is a heuristic, exact for the usual
//! layouts (block and flow style alike), and falls back to the deepest key it
//! found.

/// 1-based (line, column) of the last key of `path` found in order; (0, 0)
/// when not even the first is found.
pub fn find(source: &str, path: &[&str]) -> (u32, u32) {
    let mut from = 0;
    let mut found = None;
    for key in path {
        match source[from..].find(key) {
            Some(offset) => {
                let at = from + offset;
                found = Some(at);
                from = at + key.len();
            }
            None => break,
        }
    }
    match found {
        None => (0, 0),
        Some(at) => offset(source.as_bytes(), at),
    }
}

/// 1-based (line, column) of byte `at` of `source` (its end if past it).
pub fn offset(source: &[u8], at: usize) -> (u32, u32) {
    let before = &source[..at.min(source.len())];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let column = before.len()
        - before
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1)
        + 1;
    (
        u32::try_from(line).unwrap_or(u32::MAX),
        u32::try_from(column).unwrap_or(u32::MAX),
    )
}
#[cfg(test)]
mod tests {
    #[test]
    fn finds_nested_keys_in_order() {
        let src = "name: a\nsteps:\n  - name: one\n    after: 1d\n  - name: two\n    after: 2d\n";
        assert_eq!(super::find(src, &["steps:", "name: two", "after:"]), (6, 5));
        assert_eq!(super::find(src, &["steps:", "name: one", "after:"]), (4, 5));
        assert_eq!(super::find(src, &["steps:", "name: three"]), (2, 1));
        assert_eq!(super::find(src, &["nothing"]), (0, 0));
    }
}
