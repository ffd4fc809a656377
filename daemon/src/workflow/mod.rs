//! Workflows: parse and validate YAML files, render templates, evaluate
//! trigger conditions, plan send windows, watch the folder.
//!
//! YAML types stop here: the engine sees only a validated [`Workflow`].
//! Validation is complete before a workflow is served — syntax, unknown keys,
//! durations, step order, cron expressions, time zones, conditions, channels,
//! templates — and every problem is reported as `file:line:col: message`.
//!
//! Files and events are not the daemon's own: a file is read and decoded
//! within limits (`source`), templates escape HTML and render within a budget
//! (`render`), and conditions compare only values of the same kind
//! (`condition`).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Timelike, Utc};
use chrono_tz::Tz;
use minijinja::Environment;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::model::Event;

mod condition;
mod locate;
pub(crate) mod money;
pub use money::format_minor;
pub mod preview;
mod render;
mod source;
mod watch;

pub use render::{CONDITION_FUEL, OUTPUT_LIMIT, RENDER_FUEL};
use source::Text;
pub use source::{EXPANSION_FACTOR, FileLimits, read as read_file};

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

// ---- The YAML as written -------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWorkflow {
    name: Text,
    #[serde(default)]
    description: Text,
    trigger: RawTrigger,
    #[serde(default)]
    exit_on: Vec<Text>,
    send_window: Option<RawWindow>,
    steps: Vec<RawStep>,
    #[serde(default)]
    templates: BTreeMap<Text, BTreeMap<Text, Text>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTrigger {
    event: Text,
    when: Option<Text>,
}

/// A send window as written, in a workflow, a step or the daemon's channel
/// configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWindow {
    cron: Text,
    #[serde(default = "default_window_zone")]
    timezone: Text,
    default_timezone: Option<Text>,
}

fn default_window_zone() -> Text {
    Text("customer".to_string())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStep {
    name: Text,
    after: Text,
    /// Send only if this holds (same expressions as `trigger.when`).
    when: Option<Text>,
    /// How late the step may still go out after it was due.
    expires_after: Option<Text>,
    /// This step's own window, instead of the workflow's.
    send_window: Option<RawWindow>,
    /// Exempt from frequency caps (never from opt-outs).
    #[serde(default)]
    critical: bool,
    send: Vec<RawSend>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSend {
    channel: Text,
    template: Text,
    fallback: Option<RawFallback>,
}

/// `fallback: email` (same template) or `fallback: { channel: email,
/// template: final_email }`.
#[derive(Debug)]
enum RawFallback {
    Channel(String),
    Full {
        channel: String,
        template: Option<String>,
    },
}

/// Read as it comes, not as serde's untagged enum: that buffers the whole
/// value first, aliases expanded, outside the decoding budget.
impl<'de> Deserialize<'de> for RawFallback {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = RawFallback;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a channel name or { channel, template }")
            }

            fn visit_str<E: serde::de::Error>(self, channel: &str) -> Result<RawFallback, E> {
                Text::deserialize(serde::de::value::StrDeserializer::<E>::new(channel))
                    .map(|channel| RawFallback::Channel(channel.into()))
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<RawFallback, A::Error> {
                #[derive(Deserialize)]
                #[serde(field_identifier, rename_all = "lowercase")]
                enum Key {
                    Channel,
                    Template,
                }
                let (mut channel, mut template) = (None::<Text>, None::<Text>);
                while let Some(key) = map.next_key::<Key>()? {
                    match key {
                        Key::Channel if channel.is_some() => {
                            return Err(serde::de::Error::duplicate_field("channel"));
                        }
                        Key::Template if template.is_some() => {
                            return Err(serde::de::Error::duplicate_field("template"));
                        }
                        Key::Channel => channel = Some(map.next_value()?),
                        Key::Template => template = Some(map.next_value()?),
                    }
                }
                let channel = channel.ok_or_else(|| serde::de::Error::missing_field("channel"))?;
                Ok(RawFallback::Full {
                    channel: channel.into(),
                    template: template.map(String::from),
                })
            }
        }
        deserializer.deserialize_any(Visit)
    }
}

impl RawFallback {
    /// The fallback's channel and template (the send's own by default).
    fn resolve(&self, own_template: &str) -> Fallback {
        match self {
            RawFallback::Channel(channel) => Fallback {
                channel: channel.clone(),
                template: own_template.to_string(),
            },
            RawFallback::Full { channel, template } => Fallback {
                channel: channel.clone(),
                template: template.clone().unwrap_or_else(|| own_template.to_string()),
            },
        }
    }
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

/// Where send windows are evaluated.
#[derive(Debug, Clone)]
enum WindowZone {
    /// The customer's own zone, else `fallback`.
    Customer {
        fallback: Tz,
    },
    Fixed(Tz),
}

/// Quiet hours: deliveries go out only at minutes the cron expression matches.
#[derive(Debug, Clone)]
pub struct SendWindow {
    pub cron: String,
    schedule: cron::Schedule,
    zone: WindowZone,
}

/// How far ahead a window's next opening is looked for: a window that never
/// opens within a year (windows that do not overlap) means "never".
const WINDOW_HORIZON_DAYS: i64 = 366;

impl SendWindow {
    /// Parses a window as written (`cron`, `timezone`, `default_timezone`);
    /// an error names the key at fault.
    pub fn parse(raw: &RawWindow) -> Result<SendWindow, (&'static str, String)> {
        parse_window(raw)
    }

    fn zone_for(&self, customer_timezone: Option<&str>) -> Tz {
        match &self.zone {
            WindowZone::Fixed(tz) => *tz,
            WindowZone::Customer { fallback } => customer_timezone
                .and_then(|name| Tz::from_str(name).ok())
                .unwrap_or(*fallback),
        }
    }

    /// The first instant at or after `due` inside the window (`None` if the
    /// schedule never matches again).
    fn next_open(
        &self,
        due: DateTime<Utc>,
        customer_timezone: Option<&str>,
    ) -> Option<DateTime<Utc>> {
        let tz = self.zone_for(customer_timezone);
        let local = due.with_timezone(&tz);
        let minute = local
            .with_second(0)
            .and_then(|t| t.with_nanosecond(0))
            .unwrap_or(local);
        if self.schedule.includes(minute) {
            return Some(due);
        }
        self.schedule
            .after(&local)
            .next()
            .map(|t| t.with_timezone(&Utc))
    }
}

/// The first instant at or after `due` inside every one of `windows` (each
/// read in its own zone for this customer), or `None` if there is none within
/// a year. `due` itself when there are no windows.
pub fn next_open_in_all(
    windows: &[&SendWindow],
    due: DateTime<Utc>,
    customer_timezone: Option<&str>,
) -> Option<DateTime<Utc>> {
    let horizon = due + chrono::Duration::days(WINDOW_HORIZON_DAYS);
    let mut at = due;
    // Each round moves `at` to the next opening of a window that excludes
    // it; it stops when all agree.
    loop {
        let mut moved = false;
        for window in windows {
            let open = window.next_open(at, customer_timezone)?;
            if open > at {
                at = open;
                moved = true;
            }
        }
        if !moved {
            return Some(at);
        }
        if at > horizon {
            return None;
        }
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

/// What templates and conditions see.
pub struct RenderContext<'a> {
    pub event: &'a Event,
    pub case_id: &'a str,
    pub case_started_at: DateTime<Utc>,
    pub step: &'a str,
    pub channel: &'a str,
    /// The customer's signed link out of this channel (with `webhooks:`
    /// configured; otherwise templates cannot use `unsubscribe_url`).
    pub unsubscribe_url: Option<&'a str>,
}

/// The variables templates and conditions see, serialized straight from the
/// event (no intermediate JSON copy: this runs once per delivery).
#[derive(serde::Serialize)]
struct ContextRef<'a> {
    customer: &'a crate::model::Customer,
    subject: &'a str,
    data: &'a serde_json::Value,
    event: EventRef<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    case: Option<CaseRef<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    step: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    channel: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    unsubscribe_url: Option<&'a str>,
}

#[derive(serde::Serialize)]
struct EventRef<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    event_type: &'a str,
    occurred_at: Option<DateTime<Utc>>,
}

#[derive(serde::Serialize)]
struct CaseRef<'a> {
    id: &'a str,
    started_at: DateTime<Utc>,
}

static EMPTY_DATA: std::sync::LazyLock<serde_json::Value> =
    std::sync::LazyLock::new(|| serde_json::Value::Object(serde_json::Map::new()));

fn context_value(event: &Event, extra: Option<&RenderContext<'_>>) -> minijinja::Value {
    minijinja::Value::from(minijinja::value::Serde(ContextRef {
        customer: &event.customer,
        subject: &event.subject,
        // A missing `data` is an empty object, so `data.x` is undefined
        // rather than an error about null.
        data: if event.data.is_null() {
            &EMPTY_DATA
        } else {
            &event.data
        },
        event: EventRef {
            id: &event.id,
            event_type: &event.event_type,
            occurred_at: event.occurred_at,
        },
        case: extra.map(|extra| CaseRef {
            id: extra.case_id,
            started_at: extra.case_started_at,
        }),
        step: extra.map(|extra| extra.step),
        channel: extra.map(|extra| extra.channel),
        unsubscribe_url: extra.and_then(|extra| extra.unsubscribe_url),
    }))
}

/// Checks a condition and records how it is evaluated (comparisons typed).
fn typed_condition(
    env: &Environment<'static>,
    conditions: &mut BTreeMap<String, String>,
    when: &str,
) -> Result<(), minijinja::Error> {
    let typed = condition::typed(when)?;
    env.compile_expression(&typed)?;
    conditions.insert(when.to_string(), typed);
    Ok(())
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

impl Workflow {
    /// Parses and fully validates one file. `channels`: the configured channel
    /// names, or `None` to skip that check (offline validation without a
    /// configuration, or a stored old version). Decodes within the largest
    /// limits a daemon may be configured with ([`FileLimits::MAX`]): a stored
    /// version was accepted once, and a lower limit set since must not break
    /// its cases.
    pub fn parse(
        path: &Path,
        source: &str,
        channels: Option<&BTreeSet<String>>,
    ) -> Result<Workflow, Vec<Diagnostic>> {
        Workflow::parse_within(path, source, channels, FileLimits::MAX)
    }

    /// [`Workflow::parse`] within `limits`: the size of `source`, and what
    /// its YAML decodes to with aliases expanded.
    pub fn parse_within(
        path: &Path,
        source: &str,
        channels: Option<&BTreeSet<String>>,
        limits: FileLimits,
    ) -> Result<Workflow, Vec<Diagnostic>> {
        let at = |line: u32, column: u32, message: String| Diagnostic {
            path: path.to_path_buf(),
            line,
            column,
            message,
        };
        if source.len() as u64 > limits.max_bytes {
            let (line, column) = locate::offset(source.as_bytes(), limits.max_bytes as usize);
            return Err(vec![at(line, column, source::too_large(limits))]);
        }
        let decoded: Result<RawWorkflow, _> =
            source::with_budget(limits, || serde_norway::from_str(source));
        let raw: RawWorkflow = match decoded {
            Ok(raw) => raw,
            Err(e) => {
                let (line, column) = e
                    .location()
                    .map(|l| (l.line() as u32, l.column() as u32))
                    .unwrap_or((0, 0));
                return Err(vec![at(
                    line,
                    column,
                    crate::yaml::strip_location(&e.to_string()),
                )]);
            }
        };
        let find = |keys: &[&str]| locate::find(source, keys);
        let errors = std::cell::RefCell::new(Vec::new());
        let err = |keys: &[&str], message: String| {
            let (line, column) = find(keys);
            errors.borrow_mut().push(at(line, column, message));
        };

        if !valid_name(&raw.name) {
            err(
                &["name:"],
                format!(
                    "name '{}' must be lowercase letters, digits, '-' or '_'",
                    raw.name
                ),
            );
        }
        if raw.trigger.event.trim().is_empty() {
            err(
                &["trigger:", "event:"],
                "trigger.event must not be empty".into(),
            );
        }
        let mut env = render::template_environment();
        let mut conditions = BTreeMap::new();
        if let Some(when) = &raw.trigger.when
            && let Err(e) = typed_condition(&env, &mut conditions, when)
        {
            err(
                &["trigger:", "when:"],
                format!("trigger condition '{when}': {}", minijinja_message(&e)),
            );
        }
        let send_window = match &raw.send_window {
            None => None,
            Some(w) => parse_window(w)
                .map_err(|(key, message)| err(&["send_window:", key], message))
                .ok(),
        };

        // Templates first: steps refer to them.
        let mut templates = BTreeMap::new();
        for (name, fields) in &raw.templates {
            if fields.is_empty() {
                err(
                    &["templates:", &format!("{name}:")],
                    format!("template '{name}' has no fields"),
                );
            }
            for (field, text) in fields {
                let key = format!("{name}.{field}");
                if let Err(e) = env.add_template_owned(key, text.to_string()) {
                    let (line, column) =
                        find(&["templates:", &format!("{name}:"), &format!("{field}:")]);
                    let offset = e.line().map(|l| l.saturating_sub(1) as u32).unwrap_or(0);
                    errors.borrow_mut().push(at(
                        line + offset,
                        column,
                        format!(
                            "template '{name}', field '{field}': {}",
                            minijinja_message(&e)
                        ),
                    ));
                }
            }
            templates.insert(
                name.to_string(),
                fields.keys().map(ToString::to_string).collect::<Vec<_>>(),
            );
        }

        if raw.steps.is_empty() {
            err(&["steps:"], "a workflow needs at least one step".into());
        }
        let mut steps = Vec::new();
        let mut seen = BTreeSet::new();
        let mut previous_after = Duration::ZERO;
        for step in &raw.steps {
            let here = format!("name: {}", step.name);
            if !seen.insert(step.name.to_string()) {
                // Point at the second definition, not the first.
                err(
                    &["steps:", &here, &here],
                    format!("step '{}' is defined twice", step.name),
                );
            }
            let after = match crate::duration::parse(&step.after) {
                Ok(after) => after,
                Err(e) => {
                    err(
                        &["steps:", &here, "after:"],
                        format!("step '{}': after: {e}", step.name),
                    );
                    previous_after
                }
            };
            if after < previous_after {
                err(
                    &["steps:", &here, "after:"],
                    format!(
                        "step '{}': after {} comes before the previous step's {}; list steps in time order",
                        step.name,
                        crate::duration::format(after),
                        crate::duration::format(previous_after)
                    ),
                );
            }
            previous_after = previous_after.max(after);
            if step.send.is_empty() {
                err(
                    &["steps:", &here, "send:"],
                    format!("step '{}' sends nothing", step.name),
                );
            }
            if let Some(when) = &step.when
                && let Err(e) = typed_condition(&env, &mut conditions, when)
            {
                err(
                    &["steps:", &here, "when:"],
                    format!(
                        "step '{}': condition '{when}': {}",
                        step.name,
                        minijinja_message(&e)
                    ),
                );
            }
            let expires_after = match step
                .expires_after
                .as_ref()
                .map(|e| crate::duration::parse(e))
            {
                None => None,
                Some(Ok(d)) if d.is_zero() => {
                    err(
                        &["steps:", &here, "expires_after:"],
                        format!("step '{}': expires_after must be longer than 0s", step.name),
                    );
                    None
                }
                Some(Ok(d)) => Some(d),
                Some(Err(e)) => {
                    err(
                        &["steps:", &here, "expires_after:"],
                        format!("step '{}': expires_after: {e}", step.name),
                    );
                    None
                }
            };
            let step_window = match &step.send_window {
                None => None,
                Some(w) => parse_window(w)
                    .map_err(|(key, message)| {
                        err(
                            &["steps:", &here, "send_window:", key],
                            format!("step '{}': {message}", step.name),
                        )
                    })
                    .ok(),
            };
            for send in &step.send {
                let known = |c: &str| channels.is_none_or(|set| set.contains(c));
                if !known(&send.channel) {
                    err(
                        &["steps:", &here, &format!("channel: {}", send.channel)],
                        format!("step '{}': unknown channel '{}'", step.name, send.channel),
                    );
                }
                if !templates.contains_key(send.template.as_str()) {
                    err(
                        &["steps:", &here, &format!("template: {}", send.template)],
                        format!("step '{}': unknown template '{}'", step.name, send.template),
                    );
                }
                let fallback = send.fallback.as_ref().map(|f| f.resolve(&send.template));
                let fallback_is =
                    |channel: &Text| Some(&channel.0) == fallback.as_ref().map(|f| &f.channel);
                if let Some(Fallback {
                    channel: fallback,
                    template,
                }) = &fallback
                {
                    if !templates.contains_key(template) {
                        err(
                            &["steps:", &here, "fallback:"],
                            format!(
                                "step '{}': fallback: unknown template '{template}'",
                                step.name
                            ),
                        );
                    }
                    if fallback_is(&send.channel) {
                        err(
                            &["steps:", &here, "fallback:"],
                            format!(
                                "step '{}': fallback '{fallback}' is the channel itself",
                                step.name
                            ),
                        );
                    } else if step.send.iter().any(|s| fallback_is(&s.channel)) {
                        // A delivery per (case, step, channel): it would never go.
                        err(
                            &["steps:", &here, "fallback:"],
                            format!(
                                "step '{}': fallback '{fallback}' is already a channel of this step, so it could never be sent; fall back to another channel",
                                step.name
                            ),
                        );
                    } else if !known(fallback) {
                        err(
                            &["steps:", &here, "fallback:"],
                            format!(
                                "step '{}': unknown fallback channel '{fallback}'",
                                step.name
                            ),
                        );
                    }
                }
            }
            steps.push(Step {
                name: step.name.to_string(),
                after,
                when: step.when.as_ref().map(ToString::to_string),
                expires_after,
                send_window: step_window,
                critical: step.critical,
                send: step
                    .send
                    .iter()
                    .map(|s| Send {
                        channel: s.channel.to_string(),
                        template: s.template.to_string(),
                        fallback: s.fallback.as_ref().map(|f| f.resolve(&s.template)),
                    })
                    .collect(),
            });
        }
        let errors = errors.into_inner();
        if !errors.is_empty() {
            return Err(errors);
        }
        let digest = Sha256::digest(source.as_bytes());
        Ok(Workflow {
            name: raw.name.into(),
            description: raw.description.into(),
            version: hex::encode(&digest[..8]),
            source: source.to_string(),
            path: path.to_path_buf(),
            trigger: Trigger {
                event: raw.trigger.event.into(),
                when: raw.trigger.when.map(String::from),
            },
            exit_on: raw.exit_on.into_iter().map(String::from).collect(),
            steps,
            send_window,
            templates,
            conditions_env: render::condition_environment(&env),
            env,
            conditions,
        })
    }

    /// Does this event start a case of this workflow?
    pub fn triggers_on(&self, event: &Event) -> Result<bool, WorkflowError> {
        if event.event_type != self.trigger.event {
            return Ok(false);
        }
        match &self.trigger.when {
            None => Ok(true),
            Some(when) => self.holds(when, event),
        }
    }

    /// Evaluates a condition of this workflow (comparisons typed, within a
    /// condition's budget) for an event.
    fn holds(&self, when: &str, event: &Event) -> Result<bool, WorkflowError> {
        let condition_error = |e: minijinja::Error| WorkflowError::Condition {
            condition: when.to_string(),
            message: if render::is_out_of_fuel(&e) {
                format!("evaluation exceeded its budget of {CONDITION_FUEL} instructions")
            } else {
                minijinja_message(&e)
            },
        };
        // Every condition was checked and recorded when the file was parsed.
        let typed = match self.conditions.get(when) {
            Some(typed) => typed.clone(),
            None => condition::typed(when).map_err(condition_error)?,
        };
        let expr = self
            .conditions_env
            .compile_expression(&typed)
            .map_err(condition_error)?;
        let value = expr
            .eval(context_value(event, None))
            .map_err(condition_error)?;
        Ok(value.is_true())
    }

    pub fn is_exit_event(&self, event_type: &str) -> bool {
        self.exit_on.iter().any(|t| t == event_type)
    }

    /// Renders every field of a template for one delivery, each field within
    /// [`RENDER_FUEL`] and the whole message within [`OUTPUT_LIMIT`] bytes.
    pub fn render(
        &self,
        template: &str,
        ctx: &RenderContext<'_>,
    ) -> Result<BTreeMap<String, String>, WorkflowError> {
        let fields =
            self.templates
                .get(template)
                .ok_or_else(|| WorkflowError::UnknownTemplate {
                    template: template.to_string(),
                })?;
        let value = context_value(ctx.event, Some(ctx));
        let mut out = BTreeMap::new();
        let mut left = OUTPUT_LIMIT;
        for field in fields {
            let render_error = |e: minijinja::Error| WorkflowError::Render {
                template: template.to_string(),
                field: field.clone(),
                message: minijinja_message(&e),
            };
            let compiled = self
                .env
                .get_template(&format!("{template}.{field}"))
                .map_err(render_error)?;
            let text =
                render::render_capped(&compiled, &value, &mut left).map_err(|e| match e {
                    render::Bounded::Budget => WorkflowError::RenderBudget {
                        template: template.to_string(),
                        field: field.clone(),
                        fuel: RENDER_FUEL,
                    },
                    render::Bounded::Output => WorkflowError::RenderOutput {
                        template: template.to_string(),
                        field: field.clone(),
                        limit: OUTPUT_LIMIT,
                    },
                    render::Bounded::Other(e) => render_error(e),
                })?;
            out.insert(field.clone(), text);
        }
        Ok(out)
    }

    /// The windows a delivery of step `step` on a channel must respect: the
    /// step's own window (else the workflow's) and the channel's default.
    pub fn windows<'a>(
        &'a self,
        step: usize,
        channel_window: Option<&'a SendWindow>,
    ) -> Vec<&'a SendWindow> {
        let own = self
            .steps
            .get(step)
            .and_then(|s| s.send_window.as_ref())
            .or(self.send_window.as_ref());
        own.into_iter().chain(channel_window).collect()
    }

    /// When a delivery of step `step` due at `due` goes out: the first
    /// instant inside all its windows, or `None` if they never meet within a
    /// year.
    pub fn plan(
        &self,
        step: usize,
        channel_window: Option<&SendWindow>,
        due: DateTime<Utc>,
        customer_timezone: Option<&str>,
    ) -> Option<DateTime<Utc>> {
        next_open_in_all(&self.windows(step, channel_window), due, customer_timezone)
    }

    /// The zone a step's planned time is best shown in for this customer:
    /// that of its first window, if it has any.
    pub fn window_zone(
        &self,
        step: usize,
        channel_window: Option<&SendWindow>,
        customer_timezone: Option<&str>,
    ) -> Option<Tz> {
        self.windows(step, channel_window)
            .first()
            .map(|w| w.zone_for(customer_timezone))
    }

    /// Does step `step`'s `when` condition hold for this case's trigger
    /// event? (True for a step without one.)
    pub fn step_applies(&self, step: usize, event: &Event) -> Result<bool, WorkflowError> {
        match self.steps.get(step).and_then(|s| s.when.as_ref()) {
            None => Ok(true),
            Some(when) => self.holds(when, event),
        }
    }
}

fn parse_window(raw: &RawWindow) -> Result<SendWindow, (&'static str, String)> {
    let fields = raw.cron.split_whitespace().count();
    if fields != 5 {
        return Err((
            "cron:",
            format!(
                "send_window.cron '{}' has {fields} fields; write the 5 fields of cron: minute hour day-of-month month day-of-week",
                raw.cron
            ),
        ));
    }
    // The cron crate counts seconds first; windows are whole minutes.
    let schedule = cron::Schedule::from_str(&format!("0 {}", raw.cron))
        .map_err(|e| ("cron:", format!("send_window.cron '{}': {e}", raw.cron)))?;
    let zone = |name: &str, key: &'static str| {
        Tz::from_str(name).map_err(|_| {
            (
                key,
                format!("unknown time zone '{name}' (use an IANA name such as Europe/Berlin)"),
            )
        })
    };
    let zone = match raw.timezone.as_str() {
        "customer" => WindowZone::Customer {
            fallback: match &raw.default_timezone {
                Some(name) => zone(name, "default_timezone:")?,
                None => Tz::UTC,
            },
        },
        name => {
            if raw.default_timezone.is_some() {
                return Err((
                    "default_timezone:",
                    "default_timezone applies only to 'timezone: customer'".into(),
                ));
            }
            WindowZone::Fixed(zone(name, "timezone:")?)
        }
    };
    Ok(SendWindow {
        cron: raw.cron.to_string(),
        schedule,
        zone,
    })
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

// ---- The folder ----------------------------------------------------------

/// The workflows served right now, with the errors of refused files.
#[derive(Debug, Default)]
pub struct WorkflowSet {
    workflows: BTreeMap<String, Arc<Workflow>>,
    errors: Vec<Diagnostic>,
    /// Workflow name → the error of its file, when a broken file's last good
    /// version is what is served.
    stale: BTreeMap<String, Diagnostic>,
}

impl WorkflowSet {
    pub fn empty() -> WorkflowSet {
        WorkflowSet::default()
    }

    /// Loads every `*.yaml`/`*.yml` of `dir` (not recursive, hidden files
    /// ignored), each within `limits`. A refused file keeps the workflow it
    /// held in `previous`.
    pub fn load_dir(
        dir: &Path,
        channels: &BTreeSet<String>,
        previous: &WorkflowSet,
        limits: FileLimits,
    ) -> WorkflowSet {
        let mut set = WorkflowSet::default();
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) => {
                set.errors.push(Diagnostic {
                    path: dir.to_path_buf(),
                    line: 0,
                    column: 0,
                    message: format!("cannot read the workflows folder: {e}"),
                });
                return set;
            }
        };
        let mut files: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| is_workflow_file(p))
            .collect();
        files.sort();

        // Name → candidates (path, workflow), in path order.
        let mut candidates: BTreeMap<String, Vec<Arc<Workflow>>> = BTreeMap::new();
        for path in &files {
            let parsed = source::read(path, limits)
                .map_err(|d| vec![d])
                .and_then(|source| Workflow::parse_within(path, &source, Some(channels), limits));
            match parsed {
                Ok(workflow) => candidates
                    .entry(workflow.name.clone())
                    .or_default()
                    .push(Arc::new(workflow)),
                Err(diagnostics) => {
                    if let Some(last_good) = previous.workflows.values().find(|w| &w.path == path) {
                        set.stale
                            .insert(last_good.name.clone(), diagnostics[0].clone());
                        candidates
                            .entry(last_good.name.clone())
                            .or_default()
                            .push(last_good.clone());
                    }
                    set.errors.extend(diagnostics);
                }
            }
        }
        for (name, mut list) in candidates {
            // The file that held the name before keeps it; else the first path.
            let held = previous.workflows.get(&name).map(|w| w.path.clone());
            let winner = list
                .iter()
                .position(|w| Some(&w.path) == held.as_ref())
                .unwrap_or(0);
            let chosen = list.remove(winner);
            for loser in list {
                let (line, column) = locate::find(&loser.source, &["name:"]);
                set.errors.push(Diagnostic {
                    path: loser.path.clone(),
                    line,
                    column,
                    message: format!(
                        "workflow name '{name}' is already defined in '{}'",
                        chosen.path.display()
                    ),
                });
            }
            set.workflows.insert(name, chosen);
        }
        set
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Workflow>> {
        self.workflows.get(name)
    }

    /// Sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Workflow>> {
        self.workflows.values()
    }

    pub fn errors(&self) -> &[Diagnostic] {
        &self.errors
    }

    pub fn error_for(&self, name: &str) -> Option<&Diagnostic> {
        self.stale.get(name)
    }

    /// Names added, changed or removed since `previous`, sorted.
    pub fn changes_from(&self, previous: &WorkflowSet) -> Vec<String> {
        let mut names: BTreeSet<String> = BTreeSet::new();
        for (name, workflow) in &self.workflows {
            if previous
                .workflows
                .get(name)
                .is_none_or(|old| old.version != workflow.version)
            {
                names.insert(name.clone());
            }
        }
        for name in previous.workflows.keys() {
            if !self.workflows.contains_key(name) {
                names.insert(name.clone());
            }
        }
        names.into_iter().collect()
    }
}

fn is_workflow_file(path: &Path) -> bool {
    let hidden = path
        .file_name()
        .and_then(|n| n.to_str())
        .is_none_or(|n| n.starts_with('.'));
    let yaml = path.extension().is_some_and(|e| e == "yaml" || e == "yml");
    !hidden && yaml && path.is_file()
}

/// Validates files offline, within `limits` as the daemon would: every
/// diagnostic of every file, including duplicate names across the given
/// files.
pub fn validate_files(
    paths: &[PathBuf],
    channels: Option<&BTreeSet<String>>,
    limits: FileLimits,
) -> Vec<Diagnostic> {
    let mut diagnostics = Vec::new();
    let mut names: BTreeMap<String, PathBuf> = BTreeMap::new();
    for path in paths {
        let source = match source::read(path, limits) {
            Ok(source) => source,
            Err(diagnostic) => {
                diagnostics.push(diagnostic);
                continue;
            }
        };
        match Workflow::parse_within(path, &source, channels, limits) {
            Ok(workflow) => {
                if let Some(first) = names.get(&workflow.name) {
                    let (line, column) = locate::find(&source, &["name:"]);
                    diagnostics.push(Diagnostic {
                        path: path.clone(),
                        line,
                        column,
                        message: format!(
                            "workflow name '{}' is already defined in '{}'",
                            workflow.name,
                            first.display()
                        ),
                    });
                } else {
                    names.insert(workflow.name.clone(), path.clone());
                }
            }
            Err(errors) => diagnostics.extend(errors),
        }
    }
    diagnostics
}

#[cfg(test)]
mod tests;
