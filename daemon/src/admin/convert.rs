//! Protobuf ↔ model conversion. Times are RFC 3339 in UTC with milliseconds,
//! the same width everywhere so they also sort as text.

use chrono::{DateTime, SecondsFormat, Utc};

use crate::daemon::ReloadReport;
use crate::model::{Case, CaseDetail, Delivery};
use crate::plugin_host::PluginInfo;
use crate::proto;
use crate::store::IngestOutcome;
use crate::workflow::{Diagnostic, Workflow};

pub fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn opt_time(t: Option<DateTime<Utc>>) -> String {
    t.map(time).unwrap_or_default()
}

pub fn file_error(d: &Diagnostic) -> proto::FileError {
    proto::FileError {
        path: d.path.display().to_string(),
        line: d.line,
        column: d.column,
        message: d.message.clone(),
        display: d.to_string(),
    }
}

pub fn reload(r: &ReloadReport) -> proto::ReloadResult {
    proto::ReloadResult {
        at: time(r.at),
        ok: r.ok,
        errors: r.errors.iter().map(file_error).collect(),
        workflows_loaded: r.workflows_loaded,
        changed: r.changed.clone(),
    }
}

pub fn workflow_summary(
    w: &Workflow,
    active_cases: u64,
    error: Option<&Diagnostic>,
) -> proto::WorkflowSummary {
    proto::WorkflowSummary {
        name: w.name.clone(),
        description: w.description.clone(),
        version: w.version.clone(),
        path: w.path.display().to_string(),
        trigger: w.trigger.event.clone(),
        condition: w.trigger.when.clone().unwrap_or_default(),
        exit_on: w.exit_on.clone(),
        steps: w.steps.len() as u32,
        active_cases,
        error: error.map(file_error),
    }
}

pub fn case(c: &Case) -> proto::Case {
    proto::Case {
        id: c.id.clone(),
        workflow: c.workflow.clone(),
        workflow_version: c.workflow_version.clone(),
        customer_id: c.customer_id.clone(),
        subject: c.subject.clone(),
        state: c.state.to_string(),
        started_at: time(c.started_at),
        updated_at: time(c.updated_at),
        ended_reason: c.ended_reason.clone().unwrap_or_default(),
        trigger_event_id: c.trigger_event.id.clone(),
    }
}

pub fn delivery(d: &Delivery) -> proto::Delivery {
    proto::Delivery {
        id: d.id.clone(),
        step: d.step.clone(),
        channel: d.channel.clone(),
        template: d.template.clone(),
        status: d.status.to_string(),
        due_at: time(d.due_at),
        planned_at: time(d.planned_at),
        attempts: d.attempts,
        idempotency_key: d.idempotency_key.clone(),
        receipt: d.receipt.clone().unwrap_or_default(),
        last_error: d.last_error.clone().unwrap_or_default(),
        skip_reason: d.skip_reason.clone().unwrap_or_default(),
        sent_at: opt_time(d.sent_at),
        step_index: d.step_index,
    }
}

pub fn case_detail(d: &CaseDetail) -> proto::CaseDetail {
    proto::CaseDetail {
        case: Some(case(&d.case)),
        deliveries: d.deliveries.iter().map(delivery).collect(),
        trigger_event_json: serde_json::to_string(&d.case.trigger_event).unwrap_or_default(),
    }
}

pub fn event_result(o: IngestOutcome) -> proto::EventResult {
    proto::EventResult {
        event_id: o.event_id,
        duplicate: o.duplicate,
        cases_started: o.cases_started,
        cases_recovered: o.cases_recovered,
        notes: o.notes,
    }
}

pub fn plugin(p: &PluginInfo) -> proto::PluginInfo {
    proto::PluginInfo {
        name: p.name.clone(),
        version: p.version.clone(),
        path: p.path.display().to_string(),
        abi_version: p.abi_version,
        channels: p.channels.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_have_one_fixed_width() {
        let t: DateTime<Utc> = "2026-01-05T09:00:00Z".parse().unwrap();
        assert_eq!(time(t), "2026-01-05T09:00:00.000Z");
        assert_eq!(opt_time(None), "");
    }
}
