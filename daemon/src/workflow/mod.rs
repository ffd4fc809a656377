//! Workflows: parse and validate YAML files, render templates, evaluate
//! trigger conditions, plan send windows, watch the folder.
//!
//! YAML types stop here: the engine sees only a validated [`Workflow`].
//! Validation is complete before a workflow is served — syntax, unknown keys,
//! durations, step order, cron expressions, time zones, conditions, channels,
//! templates — and every problem is reported as `file:line:col: message`.
//!
//! The rooms: `parse` (YAML as written → a validated [`Workflow`]),
//! `window` (send windows), `context` (what templates and conditions see,
//! and the methods that render and evaluate), `set` (the folder:
//! [`WorkflowSet`], offline validation), `preview` (a case's plan), `watch`
//! (the folder's changes).
//!
//! Files and events are not the daemon's own: a file is read and decoded
//! within limits (`source`), templates escape HTML and render within a budget
//! (`render`), and conditions compare only values of the same kind
//! (`condition`).

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use minijinja::Environment;
use serde::Serialize;

mod condition;
mod context;
mod locate;
pub(crate) mod money;
pub use money::format_minor;
mod parse;
pub mod preview;
mod render;
mod set;
mod source;
mod watch;
mod window;

pub use context::RenderContext;
pub use render::{CONDITION_FUEL, OUTPUT_LIMIT, RENDER_FUEL};
pub use set::{WorkflowSet, validate_files};
pub use source::{EXPANSION_FACTOR, FileLimits, read as read_file};
pub use window::{RawWindow, SendWindow, next_open_in_all};

pub use watch::{WatchGuard, watch};

/// One problem in one file, with where it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    pub path: PathBuf,
    /// 1-based; 0 when unknown.
    pub line: u32,
    pub column: u32,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.path.display(), self.message)
        } else {
            write!(
                f,
                "{}:{}:{}: {}",
                self.path.display(),
                self.line,
                self.column,
                self.message
            )
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WorkflowError {
    #[error("template '{template}': no such template")]
    UnknownTemplate { template: String },
    #[error("template '{template}', field '{field}': {message}")]
    Render {
        template: String,
        field: String,
        message: String,
    },
    #[error(
        "template '{template}', field '{field}': rendering exceeded its budget of {fuel} instructions"
    )]
    RenderBudget {
        template: String,
        field: String,
        fuel: u64,
    },
    #[error(
        "template '{template}', field '{field}': the output exceeded its limit of {limit} bytes"
    )]
    RenderOutput {
        template: String,
        field: String,
        limit: usize,
    },
    #[error("condition '{condition}': {message}")]
    Condition { condition: String, message: String },
    #[error("cannot watch '{path}': {message}")]
    Watch { path: PathBuf, message: String },
}

// ---- The validated workflow ----------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Trigger {
    pub event: String,
    pub when: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub name: String,
    #[serde(serialize_with = "serialize_duration")]
    pub after: Duration,
    /// Send only if this condition holds for the case.
    pub when: Option<String>,
    /// A delivery that cannot go out within this time after it was due is
    /// skipped as expired instead of sent late.
    #[serde(serialize_with = "serialize_opt_duration")]
    pub expires_after: Option<Duration>,
    /// The step's own window (else the workflow's).
    #[serde(skip)]
    pub send_window: Option<SendWindow>,
    /// Exempt from frequency caps (never from opt-outs).
    pub critical: bool,
    pub send: Vec<Send>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Send {
    pub channel: String,
    pub template: String,
    /// Another channel (and template) that takes over when this delivery
    /// fails for good or is skipped (opt-out, no address).
    pub fallback: Option<Fallback>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Fallback {
    pub channel: String,
    pub template: String,
}

impl fmt::Display for Fallback {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} [{}]", self.channel, self.template)
    }
}

fn serialize_duration<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&crate::duration::format(*d))
}

fn serialize_opt_duration<S: serde::Serializer>(
    d: &Option<Duration>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_str(&crate::duration::format(*d)),
        None => s.serialize_none(),
    }
}

/// A parsed, validated workflow with its templates compiled.
pub struct Workflow {
    pub name: String,
    pub description: String,
    /// First 16 hex characters of the SHA-256 of the file content.
    pub version: String,
    pub source: String,
    pub path: PathBuf,
    pub trigger: Trigger,
    pub exit_on: Vec<String>,
    pub steps: Vec<Step>,
    pub send_window: Option<SendWindow>,
    /// Template name → field names, in order.
    pub templates: BTreeMap<String, Vec<String>>,
    /// Every template field compiled as `"<template>.<field>"`.
    env: Environment<'static>,
    /// The same with a condition's budget, for `when`.
    conditions_env: Environment<'static>,
    /// Each condition as written → as evaluated (comparisons typed).
    conditions: BTreeMap<String, String>,
}

impl fmt::Debug for Workflow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Workflow")
            .field("name", &self.name)
            .field("version", &self.version)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// minijinja's message without its "(in template …)" tail: we say where.
/// An invalid operation (ours, such as a refused URL or comparison, or
/// minijinja's own) says what it is by its detail alone.
fn minijinja_message(e: &minijinja::Error) -> String {
    let kind = e.kind().to_string();
    match e.detail() {
        Some(detail) if e.kind() == minijinja::ErrorKind::InvalidOperation => detail.to_string(),
        Some(detail) => format!("{kind}: {detail}"),
        None => kind,
    }
}

#[cfg(test)]
mod tests;
