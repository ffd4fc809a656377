//! YAML error messages as dunningd prints them, for every file it reads
//! (the configuration, workflows).

/// serde_norway appends " at line X column Y" to messages; we print the
/// location in front instead (`file:line:col: message`).
pub(crate) fn strip_location(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_string(),
        None => message.to_string(),
    }
}
