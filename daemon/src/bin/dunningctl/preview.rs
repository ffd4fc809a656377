//! `dunningctl preview`: offline, what a workflow would send for an event,
//! when, and rendered.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use anyhow::{Context, anyhow, bail};
use dunningd::config::Config;
use dunningd::model::Event;
use dunningd::workflow::preview::Preview;
use dunningd::workflow::{self, Workflow};

use crate::Cli;
use crate::output;

pub fn run(
    cli: &Cli,
    workflow_path: &Path,
    event_path: &Path,
    at: Option<&str>,
    config: Option<&Path>,
) -> anyhow::Result<bool> {
    // The daemon's own limits: a file it would refuse is refused here too.
    let config = config
        .map(|path| Config::load(path).map_err(|e| anyhow!("{e}")))
        .transpose()?;
    let limits = config
        .as_ref()
        .map_or(workflow::FileLimits::DEFAULT, |c| c.limits);
    let source = workflow::read_file(workflow_path, limits).map_err(|d| anyhow!("{d}"))?;
    let workflow =
        Workflow::parse_within(workflow_path, &source, None, limits).map_err(|errors| {
            anyhow!(
                "{}",
                errors
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("\n")
            )
        })?;
    let text = read_bounded(event_path, dunningd::model::MAX_EVENT_BYTES as u64)?;
    let event = Event::from_json(&text).map_err(|e| anyhow!("{}: {e}", event_path.display()))?;
    let start = match at {
        None => chrono::Utc::now(),
        Some(at) => at
            .parse()
            .map_err(|e| anyhow!("--at: invalid RFC 3339 time '{at}': {e}"))?,
    };
    let channel_windows = match config {
        None => BTreeMap::new(),
        Some(config) => config
            .channels
            .into_iter()
            .filter_map(|(name, spec)| Some((name, spec.send_window?)))
            .collect(),
    };
    let plan = workflow::preview::preview(&workflow, &event, start, &channel_windows)?;
    output::print(cli.json, &plan, print_plan)?;
    Ok(true)
}

/// The plan for people: each step, when it is due, and what each channel would send.
fn print_plan(plan: &Preview) {
    out!(
        "workflow {} (version {}), event {}",
        output::text(&plan.workflow),
        output::full(&plan.version),
        output::full(&plan.event_id)
    );
    if !plan.triggered {
        out!(
            "no case would start: {}",
            output::full(plan.reason.as_deref().unwrap_or(""))
        );
        return;
    }
    out!("case starts {}", plan.start.format("%Y-%m-%d %H:%M UTC"));
    for step in &plan.steps {
        out!();
        let mut notes = Vec::new();
        if let Some(condition) = &step.condition {
            notes.push(format!("when {}", output::full(condition)));
        }
        if let Some(expires) = &step.expires_after {
            notes.push(format!("expires after {expires}"));
        }
        if step.critical {
            notes.push("critical".to_string());
        }
        let notes = if notes.is_empty() {
            String::new()
        } else {
            format!(" [{}]", notes.join(", "))
        };
        out!(
            "step {} (after {}): due {}{notes}",
            output::text(&step.name),
            output::text(&step.after),
            step.due_at.format("%Y-%m-%d %H:%M UTC"),
        );
        for send in &step.sends {
            let fallback = send
                .fallback
                .as_deref()
                .map(|f| format!(", fallback {}", output::text(f)))
                .unwrap_or_default();
            let when = match (&send.skipped, send.planned_at) {
                (Some(reason), _) => format!("skipped: {}", output::full(reason)),
                (None, Some(at)) => {
                    let local = send
                        .planned_local
                        .as_deref()
                        .map(|l| format!(" ({})", output::full(l)))
                        .unwrap_or_default();
                    format!("sent {}{local}", at.format("%Y-%m-%d %H:%M UTC"))
                }
                (None, None) => "not sent".to_string(),
            };
            out!(
                "  {} [{}{fallback}]: {when}",
                output::text(&send.channel),
                output::text(&send.template)
            );
            if let Some(message) = &send.message
                && send.skipped.is_none()
            {
                for (field, rendered) in message {
                    // Line by line: the message's own line breaks are kept,
                    // anything else that is not text is escaped.
                    let field = output::text(field);
                    let mut lines = rendered.lines().map(|l| output::full(l.trim_end()));
                    out!("    {field}: {}", lines.next().unwrap_or_default());
                    for line in lines {
                        // Blank lines stay blank: no trailing spaces.
                        let width = field.chars().count();
                        let line = format!("    {:width$}  {line}", "");
                        out!("{}", line.trim_end());
                    }
                }
            }
            if let Some(error) = &send.error {
                out!("    error: {}", output::full(error));
            }
        }
    }
}

/// A file's text, refused past `limit` bytes without reading further (the
/// event checks would refuse it anyway, after reading all of it).
fn read_bounded(path: &Path, limit: u64) -> anyhow::Result<String> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot read '{}'", path.display()))?;
    let mut text = String::new();
    file.take(limit + 1)
        .read_to_string(&mut text)
        .with_context(|| format!("cannot read '{}'", path.display()))?;
    if text.len() as u64 > limit {
        bail!("{}: larger than {limit} bytes", path.display());
    }
    Ok(text)
}
