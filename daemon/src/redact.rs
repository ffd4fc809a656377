//! Secrets in output. The rules ([`urls`], [`Redactor`]) live in the plugin
//! API crate, so that plugins hide their own secrets the same way; this
//! module re-exports them and adds the daemon's last line of defence: the
//! log writer ([`RedactedStderr`]) hides URL credentials in every line,
//! whatever library wrote it.
//!
//! Where secrets are hidden: configuration errors and `Debug` output
//! (`config`), the database URL wherever it is printed (`DatabaseUrl`'s
//! `Display`), everything a plugin says — open errors, outcomes, panics —
//! with the channel's secret values and URL credentials hidden
//! (`plugin_host`), the start-up error and panics (`bin/dunningd.rs`), the
//! log writer. Secret values themselves (a channel's `secrets:`, the
//! webhooks secret, tokens) are never put into a message.

use std::io::Write;

pub use dunningd_plugin_api::redact::{
    MASK, Redactor, describe, is_secret_name, panic_parts, urls,
};

/// Standard error for `tracing`'s formatter, each event's text passed
/// through [`urls`] before it is written: a library that logs a URL (sqlx,
/// hyper, tonic) cannot put its credentials in the journal.
#[derive(Debug, Clone, Copy, Default)]
pub struct RedactedStderr;

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for RedactedStderr {
    type Writer = RedactedWriter;

    fn make_writer(&'a self) -> RedactedWriter {
        RedactedWriter
    }
}

/// One event's writer. The formatter writes a whole event with one
/// `write_all`, and `write` takes every byte at once, so a URL is never
/// split between two calls.
pub struct RedactedWriter;

impl Write for RedactedWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut stderr = std::io::stderr().lock();
        match std::str::from_utf8(buf) {
            Ok(text) => stderr.write_all(urls(text).as_bytes())?,
            Err(_) => stderr.write_all(urls(&String::from_utf8_lossy(buf)).as_bytes())?,
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}
