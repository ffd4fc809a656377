//! Offline preview: what a workflow would send to one customer, and when.
//!
//! Runs the same trigger check, schedule, step conditions, send-window
//! planning, expiry and template rendering as the engine, without a daemon
//! or a database.

use std::collections::BTreeMap;

/// What `unsubscribe_url` renders as in a preview (the daemon signs a real
/// one per customer and channel).
pub const PREVIEW_UNSUBSCRIBE_URL: &str = "https://dunningd.invalid/unsubscribe?preview";

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{RenderContext, SendWindow, Workflow, WorkflowError};
use crate::model::Event;

#[derive(Debug, Serialize)]
pub struct Preview {
    pub workflow: String,
    pub version: String,
    pub event_id: String,
    /// False when the event would start no case; `reason` says why.
    pub triggered: bool,
    pub reason: Option<String>,
    pub start: DateTime<Utc>,
    pub steps: Vec<PreviewStep>,
}

#[derive(Debug, Serialize)]
pub struct PreviewStep {
    pub name: String,
    pub after: String,
    pub due_at: DateTime<Utc>,
    /// The step's `when`, if it has one.
    pub condition: Option<String>,
    pub expires_after: Option<String>,
    pub critical: bool,
    pub sends: Vec<PreviewSend>,
}

#[derive(Debug, Serialize)]
pub struct PreviewSend {
    pub channel: String,
    pub template: String,
    /// `channel [template]` that takes over if this fails or is skipped.
    pub fallback: Option<String>,
    /// After the send windows (the step's or workflow's, and the channel's);
    /// equal to `due_at` without any. `None` when it would be skipped.
    pub planned_at: Option<DateTime<Utc>>,
    /// `planned_at` in the first window's zone, when there is a window.
    pub planned_local: Option<String>,
    /// Why it would not be sent (step condition, windows, expiry).
    pub skipped: Option<String>,
    pub message: Option<BTreeMap<String, String>>,
    /// Why the template would not render for this event.
    pub error: Option<String>,
}

/// What `workflow` would do for `event` if its case started at `start`.
/// `channel_windows` are the channels' default windows from the daemon's
/// configuration (empty without one). Opt-outs and frequency caps depend on
/// the daemon's state and are applied when a delivery is sent.
pub fn preview(
    workflow: &Workflow,
    event: &Event,
    start: DateTime<Utc>,
    channel_windows: &BTreeMap<String, SendWindow>,
) -> Result<Preview, WorkflowError> {
    let mut preview = Preview {
        workflow: workflow.name.clone(),
        version: workflow.version.clone(),
        event_id: event.id.clone(),
        triggered: false,
        reason: None,
        start,
        steps: Vec::new(),
    };
    if event.event_type != workflow.trigger.event {
        preview.reason = Some(format!(
            "event type '{}' is not the trigger '{}'",
            event.event_type, workflow.trigger.event
        ));
        return Ok(preview);
    }
    if !workflow.triggers_on(event)? {
        preview.reason = Some(format!(
            "trigger condition '{}' is false for this event",
            workflow.trigger.when.as_deref().unwrap_or("")
        ));
        return Ok(preview);
    }
    preview.triggered = true;
    let timezone = event.customer.timezone.as_deref();
    for (index, step) in workflow.steps.iter().enumerate() {
        let due_at =
            start + chrono::Duration::from_std(step.after).unwrap_or(chrono::Duration::MAX);
        let condition = match workflow.step_applies(index, event) {
            Ok(true) => None,
            Ok(false) => Some(format!(
                "condition '{}' is false",
                step.when.as_deref().unwrap_or("")
            )),
            Err(e) => Some(format!("cannot evaluate the step's condition: {e}")),
        };
        let deadline = step
            .expires_after
            .map(|e| due_at + chrono::Duration::from_std(e).unwrap_or(chrono::Duration::MAX));
        let sends = step
            .send
            .iter()
            .map(|send| {
                let window = channel_windows.get(&send.channel);
                let planned = workflow.plan(index, window, due_at, timezone);
                let skipped = condition.clone().or_else(|| match planned {
                    None => Some("its send windows do not open together within a year".into()),
                    Some(at) if deadline.is_some_and(|d| at > d) => Some(format!(
                        "expired: the send window opens only at {}",
                        at.format("%Y-%m-%d %H:%M UTC")
                    )),
                    Some(_) => None,
                });
                let planned_at = planned.filter(|_| skipped.is_none());
                let planned_local = planned_at.and_then(|at| {
                    workflow.window_zone(index, window, timezone).map(|tz| {
                        format!("{} {tz}", at.with_timezone(&tz).format("%a %Y-%m-%d %H:%M"))
                    })
                });
                let ctx = RenderContext {
                    event,
                    case_id: "preview",
                    case_started_at: start,
                    step: &step.name,
                    channel: &send.channel,
                    unsubscribe_url: Some(PREVIEW_UNSUBSCRIBE_URL),
                };
                let (message, error) = match workflow.render(&send.template, &ctx) {
                    Ok(message) => (Some(message), None),
                    Err(e) => (None, Some(e.to_string())),
                };
                PreviewSend {
                    channel: send.channel.clone(),
                    template: send.template.clone(),
                    fallback: send.fallback.as_ref().map(ToString::to_string),
                    planned_at,
                    planned_local,
                    skipped,
                    message,
                    error,
                }
            })
            .collect();
        preview.steps.push(PreviewStep {
            name: step.name.clone(),
            after: crate::duration::format(step.after),
            due_at,
            condition: step.when.clone(),
            expires_after: step.expires_after.map(crate::duration::format),
            critical: step.critical,
            sends,
        });
    }
    Ok(preview)
}
