//! Offline preview: what a workflow would send to one customer, and when.
//!
//! Runs the same trigger check, schedule, send-window planning and template
//! rendering as the engine, without a daemon or a database.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{RenderContext, Workflow, WorkflowError};
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
    /// After the send window; equal to `due_at` without one.
    pub planned_at: DateTime<Utc>,
    /// `planned_at` in the send window's zone, when there is a window.
    pub planned_local: Option<String>,
    pub sends: Vec<PreviewSend>,
}

#[derive(Debug, Serialize)]
pub struct PreviewSend {
    pub channel: String,
    pub template: String,
    pub fallback: Option<String>,
    pub message: Option<BTreeMap<String, String>>,
    /// Why the template would not render for this event.
    pub error: Option<String>,
}

pub fn preview(
    workflow: &Workflow,
    event: &Event,
    start: DateTime<Utc>,
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
    for step in &workflow.steps {
        let due_at =
            start + chrono::Duration::from_std(step.after).unwrap_or(chrono::Duration::MAX);
        let planned_at = workflow.plan(due_at, timezone);
        let planned_local = workflow.window_zone(timezone).map(|tz| {
            format!(
                "{} {tz}",
                planned_at.with_timezone(&tz).format("%a %Y-%m-%d %H:%M")
            )
        });
        let sends = step
            .send
            .iter()
            .map(|send| {
                let ctx = RenderContext {
                    event,
                    case_id: "preview",
                    case_started_at: start,
                    step: &step.name,
                    channel: &send.channel,
                };
                let (message, error) = match workflow.render(&send.template, &ctx) {
                    Ok(message) => (Some(message), None),
                    Err(e) => (None, Some(e.to_string())),
                };
                PreviewSend {
                    channel: send.channel.clone(),
                    template: send.template.clone(),
                    fallback: send.fallback.clone(),
                    message,
                    error,
                }
            })
            .collect();
        preview.steps.push(PreviewStep {
            name: step.name.clone(),
            after: crate::duration::format(step.after),
            due_at,
            planned_at,
            planned_local,
            sends,
        });
    }
    Ok(preview)
}
