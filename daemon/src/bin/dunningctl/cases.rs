//! `dunningctl cases`: list, show a timeline, pause, resume, cancel.

use dunningd::proto;

use crate::client::{Client, case_lookup, rpc};
use crate::output::{self, Col, dash, short_time, table};
use crate::{CasesCommand, Cli};

pub async fn run(cli: &Cli, client: &mut Client, command: &CasesCommand) -> anyhow::Result<bool> {
    let case = match command {
        CasesCommand::List {
            workflow,
            state,
            customer,
            limit,
        } => {
            let list = client
                .list_cases(proto::ListCasesRequest {
                    workflow: workflow.clone().unwrap_or_default(),
                    state: state.clone().unwrap_or_default(),
                    customer: customer.clone().unwrap_or_default(),
                    limit: *limit,
                })
                .await
                .map_err(rpc)?
                .into_inner();
            output::print(cli.json, &list, |list| {
                let rows: Vec<Vec<String>> = list
                    .cases
                    .iter()
                    .map(|c| {
                        vec![
                            c.id.clone(),
                            c.workflow.clone(),
                            c.customer_id.clone(),
                            c.subject.clone(),
                            c.state.clone(),
                            short_time(&c.started_at),
                        ]
                    })
                    .collect();
                table(
                    &[
                        Col::Id("CASE"),
                        Col::Text("WORKFLOW"),
                        Col::Id("CUSTOMER"),
                        Col::Text("SUBJECT"),
                        Col::Text("STATE"),
                        Col::Text("STARTED"),
                    ],
                    &rows,
                );
            })?;
            return Ok(true);
        }
        CasesCommand::Show { id } => {
            let detail = client
                .get_case(proto::GetCaseRequest { id: id.clone() })
                .await
                .map_err(case_lookup)?
                .into_inner();
            output::print(cli.json, &detail, |detail| {
                if let Some(c) = &detail.case {
                    out!("case {} — {}", output::full(&c.id), output::text(&c.state));
                    out!(
                        "workflow   {} (version {})",
                        output::text(&c.workflow),
                        output::full(&c.workflow_version)
                    );
                    out!(
                        "customer   {}, subject {}",
                        output::full(&c.customer_id),
                        output::text(&c.subject)
                    );
                    out!(
                        "started    {} by event {}",
                        short_time(&c.started_at),
                        output::full(&c.trigger_event_id)
                    );
                    if !c.ended_reason.is_empty() {
                        out!(
                            "ended      {}: {}",
                            short_time(&c.updated_at),
                            output::full(&c.ended_reason)
                        );
                    }
                    out!();
                    let rows: Vec<Vec<String>> = detail
                        .deliveries
                        .iter()
                        .map(|d| {
                            let note = [
                                d.last_error.as_str(),
                                d.skip_reason.as_str(),
                                d.note.as_str(),
                            ]
                            .iter()
                            .filter(|s| !s.is_empty())
                            .copied()
                            .collect::<Vec<_>>()
                            .join("; ");
                            let channel = if d.fallback_for.is_empty() {
                                d.channel.clone()
                            } else {
                                format!("{} (for {})", d.channel, d.fallback_for)
                            };
                            vec![
                                d.step.clone(),
                                channel,
                                if d.provider_status.is_empty() {
                                    d.status.clone()
                                } else {
                                    format!("{}, {}", d.status, d.provider_status)
                                },
                                short_time(&d.due_at),
                                short_time(&d.planned_at),
                                d.attempts.to_string(),
                                dash(&d.receipt),
                                dash(&note),
                            ]
                        })
                        .collect();
                    table(
                        &[
                            Col::Text("STEP"),
                            Col::Text("CHANNEL"),
                            Col::Text("STATUS"),
                            Col::Text("DUE"),
                            Col::Text("PLANNED"),
                            Col::Text("ATTEMPTS"),
                            Col::Id("RECEIPT"),
                            Col::Long("ERROR / REASON"),
                        ],
                        &rows,
                    );
                }
            })?;
            return Ok(true);
        }
        CasesCommand::Pause { id } => client.pause_case(proto::CaseRef { id: id.clone() }).await,
        CasesCommand::Resume { id } => client.resume_case(proto::CaseRef { id: id.clone() }).await,
        CasesCommand::Cancel { id } => client.cancel_case(proto::CaseRef { id: id.clone() }).await,
    }
    .map_err(rpc)?
    .into_inner();
    output::print(cli.json, &case, |case| {
        out!(
            "case {} is {}",
            output::full(&case.id),
            output::text(&case.state)
        );
    })?;
    Ok(true)
}
