//! Protobuf ↔ model conversion. Times are RFC 3339 in UTC with milliseconds,
//! the same width everywhere so they also sort as text.

use chrono::{DateTime, SecondsFormat, Utc};

use crate::model::{Case, CaseDetail, CaseState, Delivery, OptOut};
use crate::plugin_host::PluginInfo;
use crate::proto;
use crate::state::ReloadReport;
use crate::stats::{Stats, StatsFilter};
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
        fallback_for: d.fallback_for.clone().unwrap_or_default(),
        note: d.note.clone().unwrap_or_default(),
        provider_status: d.provider_status.clone().unwrap_or_default(),
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

pub fn source(
    source: &crate::sources::SourceConfig,
    public_url: &str,
    activity: &crate::sources::activity::SourceActivity,
) -> proto::SourceInfo {
    let time =
        |t: Option<chrono::DateTime<chrono::Utc>>| t.map(|t| t.to_rfc3339()).unwrap_or_default();
    proto::SourceInfo {
        name: source.name.clone(),
        provider: source.provider.as_str().into(),
        url: format!("{public_url}{}", source.path),
        subject: source.subject.as_str().into(),
        enriches: source.api_key.is_some(),
        accepted: activity.accepted,
        duplicate: activity.duplicate,
        ignored: activity.ignored,
        refused: activity.refused,
        unavailable: activity.unavailable,
        last_at: time(activity.last_at),
        last: activity.last.clone().unwrap_or_default(),
        last_error_at: time(activity.last_error.as_ref().map(|(at, _)| *at)),
        last_error: activity
            .last_error
            .as_ref()
            .map(|(_, e)| e.clone())
            .unwrap_or_default(),
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

pub fn stats(s: &Stats, filter: &StatsFilter) -> proto::Stats {
    let money = |m: &std::collections::BTreeMap<String, i128>| {
        m.iter()
            .map(|(currency, amount)| proto::Money {
                currency: currency.clone(),
                amount: clamp_i64(*amount),
                exact: amount.to_string(),
            })
            .collect()
    };
    proto::Stats {
        since: opt_time(filter.since),
        until: opt_time(filter.until),
        workflows: s
            .workflows
            .iter()
            .map(|w| {
                let n = |state| w.by_state.get(&state).copied().unwrap_or(0);
                proto::WorkflowStats {
                    workflow: w.workflow.clone(),
                    started: w.started,
                    active: n(CaseState::Active),
                    paused: n(CaseState::Paused),
                    recovered: n(CaseState::Recovered),
                    exhausted: n(CaseState::Exhausted),
                    cancelled: n(CaseState::Cancelled),
                    recovery_rate: w.recovery_rate,
                    at_risk: money(&w.at_risk),
                    recovered_amount: money(&w.recovered_amount),
                    median_time_to_recovery_secs: w.median_time_to_recovery_secs,
                    steps: w
                        .steps
                        .iter()
                        .map(|step| proto::StepStats {
                            index: step.index,
                            name: step.name.clone(),
                            contacted: step.contacted,
                            channels: step
                                .channels
                                .iter()
                                .map(|(channel, c)| proto::ChannelStats {
                                    channel: channel.clone(),
                                    sent: c.sent,
                                    failed: c.failed,
                                    skipped: c.skipped,
                                    pending: c.pending,
                                    last_touch: c.last_touch,
                                })
                                .collect(),
                        })
                        .collect(),
                }
            })
            .collect(),
    }
}

/// A sum as int64 for `Money.amount`: itself, or the nearest limit.
fn clamp_i64(sum: i128) -> i64 {
    i64::try_from(sum).unwrap_or(if sum < 0 { i64::MIN } else { i64::MAX })
}

pub fn optout(o: &OptOut) -> proto::OptOutRecord {
    proto::OptOutRecord {
        customer_id: o.customer_id.clone(),
        channel: o.channel.clone(),
        source: o.source.clone(),
        reason: o.reason.clone(),
        created_at: time(o.created_at),
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::model::{CaseState, Customer, DeliveryStatus, Event};

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().expect("time")
    }

    #[test]
    fn times_have_one_fixed_width() {
        for (input, expected) in [
            ("2026-01-05T09:00:00Z", "2026-01-05T09:00:00.000Z"),
            ("2026-01-05T09:00:00.5Z", "2026-01-05T09:00:00.500Z"),
            (
                "2026-01-05T10:00:00.123456+01:00",
                "2026-01-05T09:00:00.123Z",
            ),
        ] {
            assert_eq!(time(at(input)), expected, "{input}");
        }
        assert_eq!(opt_time(None), "");
        assert_eq!(
            opt_time(Some(at("2026-01-05T09:00:00Z"))),
            "2026-01-05T09:00:00.000Z"
        );
    }

    fn diagnostic(line: u32) -> Diagnostic {
        Diagnostic {
            path: PathBuf::from("workflows/late.yaml"),
            line,
            column: if line == 0 { 0 } else { 5 },
            message: "step 'reminder': unknown channel 'fax'".into(),
        }
    }

    #[test]
    fn file_errors_carry_a_printable_line() {
        for (line, display) in [
            (
                12,
                "workflows/late.yaml:12:5: step 'reminder': unknown channel 'fax'",
            ),
            (
                0,
                "workflows/late.yaml: step 'reminder': unknown channel 'fax'",
            ),
        ] {
            let e = file_error(&diagnostic(line));
            assert_eq!(e.path, "workflows/late.yaml");
            assert_eq!(e.line, line);
            assert_eq!(e.message, "step 'reminder': unknown channel 'fax'");
            assert_eq!(e.display, display);
        }
    }

    #[test]
    fn reload_reports() {
        let r = reload(&ReloadReport {
            at: at("2026-01-05T09:00:00Z"),
            ok: false,
            errors: vec![diagnostic(12)],
            workflows_loaded: 3,
            changed: vec!["payment-failed".into()],
        });
        assert_eq!(r.at, "2026-01-05T09:00:00.000Z");
        assert!(!r.ok);
        assert_eq!(r.errors.len(), 1);
        assert_eq!(r.workflows_loaded, 3);
        assert_eq!(r.changed, ["payment-failed"]);
    }

    fn sample_case(ended: Option<&str>) -> Case {
        Case {
            id: "c1".into(),
            workflow: "payment-failed".into(),
            workflow_version: "abc123".into(),
            customer_id: "cus_1".into(),
            subject: "inv_1".into(),
            state: CaseState::Recovered,
            trigger_event: Event {
                id: "e1".into(),
                event_type: "payment_failed".into(),
                customer: Customer {
                    id: "cus_1".into(),
                    ..Customer::default()
                },
                subject: "inv_1".into(),
                data: serde_json::json!({ "amount": 4900 }),
                occurred_at: None,
            },
            started_at: at("2026-01-05T09:00:00Z"),
            updated_at: at("2026-01-08T09:00:00Z"),
            paused_at: None,
            ended_reason: ended.map(String::from),
        }
    }

    #[test]
    fn cases() {
        for (ended, expected) in [(Some("event e7"), "event e7"), (None, "")] {
            let c = case(&sample_case(ended));
            assert_eq!(
                c,
                proto::Case {
                    id: "c1".into(),
                    workflow: "payment-failed".into(),
                    workflow_version: "abc123".into(),
                    customer_id: "cus_1".into(),
                    subject: "inv_1".into(),
                    state: "recovered".into(),
                    started_at: "2026-01-05T09:00:00.000Z".into(),
                    updated_at: "2026-01-08T09:00:00.000Z".into(),
                    ended_reason: expected.into(),
                    trigger_event_id: "e1".into(),
                }
            );
        }
    }

    fn sample_delivery(status: DeliveryStatus, sent: bool) -> Delivery {
        Delivery {
            id: "d1".into(),
            case_id: "c1".into(),
            step_index: 1,
            step: "reminder".into(),
            channel: "sms".into(),
            template: "reminder_sms".into(),
            status,
            due_at: at("2026-01-08T09:00:00Z"),
            planned_at: at("2026-01-08T10:00:00Z"),
            attempts: if sent { 1 } else { 0 },
            idempotency_key: "c1:1:sms".into(),
            receipt: sent.then(|| "SM123".into()),
            last_error: None,
            skip_reason: (status == DeliveryStatus::Skipped).then(|| "opted out".into()),
            sent_at: sent.then(|| at("2026-01-08T10:00:01Z")),
            updated_at: at("2026-01-08T10:00:01Z"),
            fallback_for: None,
            note: None,
            provider_status: sent.then(|| "delivered".into()),
        }
    }

    #[test]
    fn deliveries() {
        let table = [
            (
                sample_delivery(DeliveryStatus::Sent, true),
                ("sent", "SM123", "", "2026-01-08T10:00:01.000Z"),
            ),
            (
                sample_delivery(DeliveryStatus::Skipped, false),
                ("skipped", "", "opted out", ""),
            ),
            (
                sample_delivery(DeliveryStatus::Scheduled, false),
                ("scheduled", "", "", ""),
            ),
        ];
        for (model, (status, receipt, skip, sent_at)) in table {
            let d = delivery(&model);
            assert_eq!(d.status, status);
            assert_eq!(d.receipt, receipt);
            assert_eq!(d.skip_reason, skip);
            assert_eq!(d.sent_at, sent_at);
            assert_eq!(d.due_at, "2026-01-08T09:00:00.000Z");
            assert_eq!(d.planned_at, "2026-01-08T10:00:00.000Z");
            assert_eq!(d.step_index, 1);
            assert_eq!(d.idempotency_key, "c1:1:sms");
        }
    }

    #[test]
    fn case_details_carry_the_trigger_event() {
        let detail = case_detail(&CaseDetail {
            case: sample_case(None),
            deliveries: vec![sample_delivery(DeliveryStatus::Sent, true)],
        });
        assert_eq!(detail.case.as_ref().map(|c| c.id.as_str()), Some("c1"));
        assert_eq!(detail.deliveries.len(), 1);
        let event = Event::from_json(&detail.trigger_event_json).expect("round trip");
        assert_eq!(event, sample_case(None).trigger_event);
    }

    #[test]
    fn workflow_summaries() {
        let source = "name: late\ndescription: Late payers\ntrigger:\n  event: payment_failed\n  when: \"data.amount >= 500\"\nexit_on: [payment_succeeded]\nsteps:\n  - name: first\n    after: 0s\n    send: [{ channel: email, template: t }]\n  - name: second\n    after: 3d\n    send: [{ channel: email, template: t }]\ntemplates:\n  t: { subject: hi, text: hello }\n";
        let path = PathBuf::from("workflows/late.yaml");
        let w = Workflow::parse(&path, source, None).expect("valid workflow");
        for (error, expected_error) in [(None, None), (Some(diagnostic(3)), Some(3))] {
            let s = workflow_summary(&w, 7, error.as_ref());
            assert_eq!(s.name, "late");
            assert_eq!(s.description, "Late payers");
            assert_eq!(s.path, "workflows/late.yaml");
            assert_eq!(s.trigger, "payment_failed");
            assert_eq!(s.condition, "data.amount >= 500");
            assert_eq!(s.exit_on, ["payment_succeeded"]);
            assert_eq!(s.steps, 2);
            assert_eq!(s.active_cases, 7);
            assert_eq!(s.version, w.version);
            assert_eq!(s.error.map(|e| e.line), expected_error);
        }
    }

    #[test]
    fn sums_beyond_int64_are_exact_and_clamped() {
        let big = i128::from(i64::MAX) + 1;
        let mut w = crate::stats::WorkflowStats::default();
        w.at_risk.insert("USD".into(), big);
        w.at_risk.insert("EUR".into(), -big);
        w.recovered_amount.insert("USD".into(), 4900);
        let s = stats(&Stats { workflows: vec![w] }, &StatsFilter::default());
        let money = |m: &[proto::Money]| {
            m.iter()
                .map(|m| (m.currency.clone(), m.amount, m.exact.clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            money(&s.workflows[0].at_risk),
            [
                ("EUR".into(), i64::MIN, "-9223372036854775808".into()),
                ("USD".into(), i64::MAX, "9223372036854775808".into()),
            ]
        );
        assert_eq!(
            money(&s.workflows[0].recovered_amount),
            [("USD".into(), 4900, "4900".into())]
        );
    }

    #[test]
    fn event_results_and_plugins() {
        let r = event_result(IngestOutcome {
            event_id: "e1".into(),
            duplicate: false,
            cases_started: vec!["c1".into()],
            cases_recovered: vec![],
            notes: vec!["an active case exists".into()],
        });
        assert_eq!(r.event_id, "e1");
        assert_eq!(r.cases_started, ["c1"]);
        assert_eq!(r.notes, ["an active case exists"]);
        let p = plugin(&PluginInfo {
            name: "smtp".into(),
            version: "0.1.0".into(),
            path: PathBuf::from("/usr/lib/dunningd/plugins/libsmtp.so"),
            abi_version: 1,
            channels: vec!["email".into()],
        });
        assert_eq!(p.path, "/usr/lib/dunningd/plugins/libsmtp.so");
        assert_eq!((p.abi_version, p.channels.len()), (1, 1));
    }
}
