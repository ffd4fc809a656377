//! Parsing and validation: a workflow file's YAML as written (`Raw*`, which
//! stop here) becomes a validated [`Workflow`], or every problem in the file
//! as `file:line:col: message`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;
use std::time::Duration;

use minijinja::Environment;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::source::{self, FileLimits, Text};
use super::window::{RawWindow, SendWindow};
use super::{
    Diagnostic, Fallback, Send, Step, Trigger, Workflow, condition, locate, minijinja_message,
    render,
};

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
            Some(w) => SendWindow::parse(w)
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
            let expires_after = expires_after(step, &here, &err);
            let step_window = match &step.send_window {
                None => None,
                Some(w) => SendWindow::parse(w)
                    .map_err(|(key, message)| {
                        err(
                            &["steps:", &here, "send_window:", key],
                            format!("step '{}': {message}", step.name),
                        )
                    })
                    .ok(),
            };
            for send in &step.send {
                check_send(step, send, &here, channels, &templates, &err);
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
}

/// Checks one `send:` entry of `step` (found at `here`): its channel and
/// template are known, and its fallback, if any, is another known channel
/// with a known template.
fn check_send(
    step: &RawStep,
    send: &RawSend,
    here: &str,
    channels: Option<&BTreeSet<String>>,
    templates: &BTreeMap<String, Vec<String>>,
    err: &dyn Fn(&[&str], String),
) {
    let known = |c: &str| channels.is_none_or(|set| set.contains(c));
    if !known(&send.channel) {
        err(
            &["steps:", here, &format!("channel: {}", send.channel)],
            format!("step '{}': unknown channel '{}'", step.name, send.channel),
        );
    }
    if !templates.contains_key(send.template.as_str()) {
        err(
            &["steps:", here, &format!("template: {}", send.template)],
            format!("step '{}': unknown template '{}'", step.name, send.template),
        );
    }
    let fallback = send.fallback.as_ref().map(|f| f.resolve(&send.template));
    let fallback_is = |channel: &Text| Some(&channel.0) == fallback.as_ref().map(|f| &f.channel);
    if let Some(Fallback {
        channel: fallback,
        template,
    }) = &fallback
    {
        if !templates.contains_key(template) {
            err(
                &["steps:", here, "fallback:"],
                format!(
                    "step '{}': fallback: unknown template '{template}'",
                    step.name
                ),
            );
        }
        if fallback_is(&send.channel) {
            err(
                &["steps:", here, "fallback:"],
                format!(
                    "step '{}': fallback '{fallback}' is the channel itself",
                    step.name
                ),
            );
        } else if step.send.iter().any(|s| fallback_is(&s.channel)) {
            // A delivery per (case, step, channel): it would never go.
            err(
                &["steps:", here, "fallback:"],
                format!(
                    "step '{}': fallback '{fallback}' is already a channel of this step, so it could never be sent; fall back to another channel",
                    step.name
                ),
            );
        } else if !known(fallback) {
            err(
                &["steps:", here, "fallback:"],
                format!(
                    "step '{}': unknown fallback channel '{fallback}'",
                    step.name
                ),
            );
        }
    }
}

/// A step's `expires_after`, if it has one that is valid (longer than 0s).
fn expires_after(step: &RawStep, here: &str, err: &dyn Fn(&[&str], String)) -> Option<Duration> {
    match step
        .expires_after
        .as_ref()
        .map(|e| crate::duration::parse(e))
    {
        None => None,
        Some(Ok(d)) if d.is_zero() => {
            err(
                &["steps:", here, "expires_after:"],
                format!("step '{}': expires_after must be longer than 0s", step.name),
            );
            None
        }
        Some(Ok(d)) => Some(d),
        Some(Err(e)) => {
            err(
                &["steps:", here, "expires_after:"],
                format!("step '{}': expires_after: {e}", step.name),
            );
            None
        }
    }
}
