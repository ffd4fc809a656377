//! The `dunningd.v1.Admin` service: validates every request field, calls the
//! engine or the daemon, converts the answer.
//!
//! Validation is plain functions (`case_filter`, `events`, `clock_move`) so
//! it is tested without a daemon; an invalid field answers INVALID_ARGUMENT
//! naming it, before anything is changed. `Reload` answers OK even when files
//! are refused: the `ReloadResult` (ok = false, every error) is the answer.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use tonic::{Request, Response, Status};

use super::convert;
use crate::engine::EngineError;
use crate::engine::clock::ClockError;
use crate::metrics::EventResult;
use crate::model::{CaseFilter, CaseState, Event};
use crate::proto;
use crate::proto::admin_server::Admin;
use crate::state::Shared;
use crate::stats::StatsFilter;
use crate::store::{CaseAction, StoreError};

/// Most events accepted in one call; larger batches should be split.
const MAX_BATCH: usize = 10_000;
/// Most cases listed in one call.
const MAX_LIST: u32 = 10_000;
/// `ListCases.limit` 0 means this many (as the proto says).
const DEFAULT_LIST: u32 = 100;

/// The Admin implementation; cheap to clone (one per listener).
#[derive(Clone)]
pub struct AdminService {
    /// The engine, workflows, plugins and reload path the daemon shares.
    shared: Arc<Shared>,
}

impl AdminService {
    pub fn new(shared: Arc<Shared>) -> AdminService {
        AdminService { shared }
    }
}

/// Engine errors as gRPC codes; exhaustive, so a new variant needs a decision.
fn engine_status(error: EngineError) -> Status {
    match error {
        EngineError::Store(StoreError::CaseNotFound(id)) => {
            Status::not_found(format!("case '{id}' not found"))
        }
        EngineError::Store(e @ StoreError::InvalidTransition { .. }) => {
            Status::failed_precondition(e.to_string())
        }
        EngineError::Store(e @ StoreError::Database(_)) => Status::unavailable(e.to_string()),
        EngineError::Store(
            e @ (StoreError::Migrate(_)
            | StoreError::SchemaTooNew { .. }
            | StoreError::InUse(_)
            | StoreError::Corrupt { .. }),
        ) => Status::internal(e.to_string()),
        e @ (EngineError::UnknownVersion(_) | EngineError::StoredVersion { .. }) => {
            Status::internal(e.to_string())
        }
    }
}

/// Most cases an ambiguous id prefix lists.
const CANDIDATES: u32 = 5;

/// An id prefix that starts several cases' ids: FAILED_PRECONDITION (it
/// names one case only while one case has it), listing a few of them.
fn ambiguous(prefix: &str, ids: &[String]) -> Status {
    let shown = ids.len().min(CANDIDATES as usize);
    let more = if ids.len() > shown { " and more" } else { "" };
    Status::failed_precondition(format!(
        "case id prefix '{prefix}' is ambiguous: it starts {}{more}",
        ids[..shown].join(", ")
    ))
}

fn required<'a>(field: &str, value: &'a str) -> Result<&'a str, Status> {
    let value = value.trim();
    if value.is_empty() {
        return Err(Status::invalid_argument(format!(
            "{field}: must not be empty"
        )));
    }
    Ok(value)
}

fn optional(value: &str) -> Option<String> {
    let value = value.trim();
    (!value.is_empty()).then(|| value.to_string())
}

/// `ListCases` checked: an unknown state or an absurd limit is refused.
fn case_filter(r: &proto::ListCasesRequest) -> Result<CaseFilter, Status> {
    let state = match optional(&r.state) {
        None => None,
        Some(s) => Some(
            s.parse::<CaseState>()
                .map_err(|e| Status::invalid_argument(format!("state: {e}")))?,
        ),
    };
    if r.limit > MAX_LIST {
        return Err(Status::invalid_argument(format!(
            "limit: at most {MAX_LIST}, got {}",
            r.limit
        )));
    }
    Ok(CaseFilter {
        workflow: optional(&r.workflow),
        state,
        customer: optional(&r.customer),
        limit: if r.limit == 0 { DEFAULT_LIST } else { r.limit },
    })
}

/// One end of a stats period: an RFC 3339 time, a date (UTC midnight) or a
/// duration back from `now`; empty is unbounded.
fn period_bound(
    field: &str,
    value: &str,
    now: DateTime<Utc>,
) -> Result<Option<DateTime<Utc>>, Status> {
    let value = value.trim();
    if value.is_empty() {
        return Ok(None);
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(value) {
        return Ok(Some(t.with_timezone(&Utc)));
    }
    if let Ok(date) = chrono::NaiveDate::parse_from_str(value, "%Y-%m-%d") {
        return Ok(Some(date.and_time(chrono::NaiveTime::MIN).and_utc()));
    }
    if let Ok(ago) = crate::duration::parse(value) {
        return Ok(Some(
            now - chrono::Duration::from_std(ago).unwrap_or(chrono::Duration::MAX),
        ));
    }
    Err(Status::invalid_argument(format!(
        "{field}: '{value}' is no RFC 3339 time, date (2026-01-31) or duration (30d)"
    )))
}

/// A channel named in an opt-out request: required, and configured (an
/// opt-out of a misspelt channel would silently protect nobody).
fn configured_channel<'a>(shared: &Shared, value: &'a str) -> Result<&'a str, Status> {
    let channel = required("channel", value)?;
    let config = shared.config();
    if !config.channels.contains_key(channel) {
        return Err(Status::invalid_argument(format!(
            "channel: '{channel}' is not a configured channel (configured: {})",
            config
                .channels
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    Ok(channel)
}

/// `SendEvents` checked: every event parses and passes
/// [`Event::from_json_numbered`]'s checks, or none is taken.
fn events(texts: &[String]) -> Result<Vec<Event>, Status> {
    if texts.is_empty() {
        return Err(Status::invalid_argument(
            "events: the batch is empty; send at least one event",
        ));
    }
    if texts.len() > MAX_BATCH {
        return Err(Status::invalid_argument(format!(
            "events: {} events in one call; send at most {MAX_BATCH}",
            texts.len()
        )));
    }
    texts
        .iter()
        .enumerate()
        .map(|(i, text)| {
            Event::from_json_numbered(i + 1, text)
                .map_err(|e| Status::invalid_argument(e.to_string()))
        })
        .collect()
}

/// The type of an event that may not parse, for counting a refused batch:
/// empty (so counted as `other`) when it has none.
fn type_of(text: &str) -> String {
    if text.len() > crate::model::MAX_EVENT_BYTES {
        return String::new();
    }
    serde_json::from_str::<serde_json::Value>(text)
        .ok()
        .and_then(|event| Some(event.get("type")?.as_str()?.to_string()))
        .unwrap_or_default()
}

/// Where `AdvanceClock` asks the clock to go.
#[derive(Debug, PartialEq)]
enum ClockMove {
    By(std::time::Duration),
    To(DateTime<Utc>),
}

fn clock_move(target: Option<proto::advance_clock_request::Target>) -> Result<ClockMove, Status> {
    use proto::advance_clock_request::Target;
    match target {
        None => Err(Status::invalid_argument(
            "target: give 'by' (a duration) or 'to' (an RFC 3339 time)",
        )),
        Some(Target::By(by)) => crate::duration::parse(&by)
            .map(ClockMove::By)
            .map_err(|e| Status::invalid_argument(format!("by: {e}"))),
        Some(Target::To(to)) => DateTime::parse_from_rfc3339(to.trim())
            .map(|t| ClockMove::To(t.with_timezone(&Utc)))
            .map_err(|e| {
                Status::invalid_argument(format!("to: invalid RFC 3339 time '{to}': {e}"))
            }),
    }
}

impl AdminService {
    async fn case_action(
        &self,
        request: Request<proto::CaseRef>,
        action: CaseAction,
    ) -> Result<Response<proto::Case>, Status> {
        let id = required("id", &request.get_ref().id)?.to_string();
        let case = self
            .shared
            .engine
            .case_action(&id, action)
            .await
            .map_err(engine_status)?;
        tracing::info!(case = %id, action = action.verb(), "case changed by an operator");
        Ok(Response::new(convert::case(&case)))
    }

    fn clock(&self) -> proto::Clock {
        let clock = self.shared.engine.clock();
        proto::Clock {
            now: convert::time(clock.now()),
            kind: clock.kind().to_string(),
        }
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn get_status(
        &self,
        _: Request<proto::GetStatusRequest>,
    ) -> Result<Response<proto::Status>, Status> {
        let engine = &self.shared.engine;
        let workflows = self.shared.workflows();
        let counts = engine.case_counts().await.map_err(engine_status)?;
        let started = self.shared.started_at();
        Ok(Response::new(proto::Status {
            version: crate::VERSION.to_string(),
            uptime_seconds: (Utc::now() - started).num_seconds().max(0) as u64,
            started_at: convert::time(started),
            workflows: workflows.iter().count() as u32,
            workflows_with_errors: workflows.errors().len() as u32,
            plugins: self
                .shared
                .plugins()
                .plugins()
                .iter()
                .map(convert::plugin)
                .collect(),
            last_reload: Some(convert::reload(&self.shared.last_reload())),
            database: self.shared.database(),
            cases_by_state: CaseState::ALL
                .iter()
                .map(|s| (s.to_string(), counts.get(s).copied().unwrap_or(0)))
                .collect(),
            clock: engine.clock().kind().to_string(),
            now: convert::time(engine.clock().now()),
        }))
    }

    async fn list_workflows(
        &self,
        _: Request<proto::ListWorkflowsRequest>,
    ) -> Result<Response<proto::ListWorkflowsResponse>, Status> {
        let set = self.shared.workflows();
        let open = self
            .shared
            .engine
            .open_cases_by_workflow()
            .await
            .map_err(engine_status)?;
        Ok(Response::new(proto::ListWorkflowsResponse {
            workflows: set
                .iter()
                .map(|w| {
                    convert::workflow_summary(
                        w,
                        open.get(&w.name).copied().unwrap_or(0),
                        set.error_for(&w.name),
                    )
                })
                .collect(),
            errors: set.errors().iter().map(convert::file_error).collect(),
        }))
    }

    async fn get_workflow(
        &self,
        request: Request<proto::GetWorkflowRequest>,
    ) -> Result<Response<proto::WorkflowDetail>, Status> {
        let name = required("name", &request.get_ref().name)?;
        let set = self.shared.workflows();
        let workflow = set
            .get(name)
            .ok_or_else(|| Status::not_found(format!("workflow '{name}' not found")))?;
        let open = self
            .shared
            .engine
            .open_cases_by_workflow()
            .await
            .map_err(engine_status)?;
        Ok(Response::new(proto::WorkflowDetail {
            summary: Some(convert::workflow_summary(
                workflow,
                open.get(name).copied().unwrap_or(0),
                set.error_for(name),
            )),
            source: workflow.source.clone(),
            steps: workflow
                .steps
                .iter()
                .map(|s| proto::StepInfo {
                    name: s.name.clone(),
                    after: crate::duration::format(s.after),
                    channels: s.send.iter().map(|x| x.channel.clone()).collect(),
                })
                .collect(),
        }))
    }

    async fn reload(
        &self,
        _: Request<proto::ReloadRequest>,
    ) -> Result<Response<proto::ReloadResult>, Status> {
        let report = self.shared.reload().await;
        Ok(Response::new(convert::reload(&report)))
    }

    async fn send_events(
        &self,
        request: Request<proto::SendEventsRequest>,
    ) -> Result<Response<proto::SendEventsResponse>, Status> {
        let texts = request.into_inner().events;
        let metrics = self.shared.metrics();
        let workflows = self.shared.workflows();
        // Every event is checked before any is stored.
        let events = match events(&texts) {
            Ok(events) => events,
            Err(status) => {
                for text in &texts {
                    metrics.event(&workflows, &type_of(text), EventResult::Refused);
                }
                return Err(status);
            }
        };
        let types: Vec<String> = events.iter().map(|e| e.event_type.clone()).collect();
        let outcomes = match self.shared.engine.ingest(events).await {
            Ok(outcomes) => outcomes,
            Err(error) => {
                for event_type in &types {
                    metrics.event(&workflows, event_type, EventResult::Refused);
                }
                return Err(engine_status(error));
            }
        };
        for (event_type, outcome) in types.iter().zip(&outcomes) {
            let result = if outcome.duplicate {
                EventResult::Duplicate
            } else {
                EventResult::Accepted
            };
            metrics.event(&workflows, event_type, result);
        }
        Ok(Response::new(proto::SendEventsResponse {
            results: outcomes.into_iter().map(convert::event_result).collect(),
        }))
    }

    async fn list_cases(
        &self,
        request: Request<proto::ListCasesRequest>,
    ) -> Result<Response<proto::ListCasesResponse>, Status> {
        let filter = case_filter(request.get_ref())?;
        let cases = self
            .shared
            .engine
            .list_cases(&filter)
            .await
            .map_err(engine_status)?;
        Ok(Response::new(proto::ListCasesResponse {
            cases: cases.iter().map(convert::case).collect(),
        }))
    }

    async fn get_case(
        &self,
        request: Request<proto::GetCaseRequest>,
    ) -> Result<Response<proto::CaseDetail>, Status> {
        let id = required("id", &request.get_ref().id)?;
        let engine = &self.shared.engine;
        let detail = match engine.get_case(id).await {
            Err(EngineError::Store(StoreError::CaseNotFound(_))) => {
                // Not a whole id: a prefix of one case's id names it (like
                // git's abbreviated hashes); one of several's does not.
                let found = engine
                    .case_ids_with_prefix(id, CANDIDATES + 1)
                    .await
                    .map_err(engine_status)?;
                match found.as_slice() {
                    [] => return Err(Status::not_found(format!("case '{id}' not found"))),
                    [one] => engine.get_case(one).await,
                    several => return Err(ambiguous(id, several)),
                }
            }
            other => other,
        }
        .map_err(engine_status)?;
        Ok(Response::new(convert::case_detail(&detail)))
    }

    async fn pause_case(
        &self,
        request: Request<proto::CaseRef>,
    ) -> Result<Response<proto::Case>, Status> {
        self.case_action(request, CaseAction::Pause).await
    }

    async fn resume_case(
        &self,
        request: Request<proto::CaseRef>,
    ) -> Result<Response<proto::Case>, Status> {
        self.case_action(request, CaseAction::Resume).await
    }

    async fn cancel_case(
        &self,
        request: Request<proto::CaseRef>,
    ) -> Result<Response<proto::Case>, Status> {
        self.case_action(request, CaseAction::Cancel).await
    }

    async fn opt_out(
        &self,
        request: Request<proto::OptOutRequest>,
    ) -> Result<Response<proto::OptOutRecord>, Status> {
        let r = request.into_inner();
        let customer = required("customer_id", &r.customer_id)?;
        let channel = configured_channel(&self.shared, &r.channel)?;
        let reason = optional(&r.reason).unwrap_or_else(|| "opted out".to_string());
        let optout = self
            .shared
            .engine
            .opt_out(customer, channel, "operator", &reason)
            .await
            .map_err(engine_status)?;
        Ok(Response::new(convert::optout(&optout)))
    }

    async fn opt_in(
        &self,
        request: Request<proto::OptInRequest>,
    ) -> Result<Response<proto::OptInResponse>, Status> {
        let r = request.into_inner();
        let customer = required("customer_id", &r.customer_id)?;
        let channel = configured_channel(&self.shared, &r.channel)?;
        let removed = self
            .shared
            .engine
            .opt_in(customer, channel, None)
            .await
            .map_err(engine_status)?;
        Ok(Response::new(proto::OptInResponse { removed }))
    }

    async fn list_opt_outs(
        &self,
        request: Request<proto::ListOptOutsRequest>,
    ) -> Result<Response<proto::ListOptOutsResponse>, Status> {
        let r = request.into_inner();
        if r.limit > MAX_LIST {
            return Err(Status::invalid_argument(format!(
                "limit: at most {MAX_LIST}, got {}",
                r.limit
            )));
        }
        let limit = if r.limit == 0 { DEFAULT_LIST } else { r.limit };
        let optouts = self
            .shared
            .engine
            .list_optouts(optional(&r.customer_id).as_deref(), limit)
            .await
            .map_err(engine_status)?;
        Ok(Response::new(proto::ListOptOutsResponse {
            optouts: optouts.iter().map(convert::optout).collect(),
        }))
    }

    async fn get_stats(
        &self,
        request: Request<proto::GetStatsRequest>,
    ) -> Result<Response<proto::Stats>, Status> {
        let r = request.into_inner();
        let now = self.shared.engine.clock().now();
        let filter = StatsFilter {
            workflow: optional(&r.workflow),
            since: period_bound("since", &r.since, now)?,
            until: period_bound("until", &r.until, now)?,
        };
        if let (Some(since), Some(until)) = (filter.since, filter.until)
            && since >= until
        {
            return Err(Status::invalid_argument(format!(
                "since ({}) must come before until ({})",
                convert::time(since),
                convert::time(until)
            )));
        }
        let stats = self
            .shared
            .engine
            .stats(&filter)
            .await
            .map_err(engine_status)?;
        Ok(Response::new(convert::stats(&stats, &filter)))
    }

    async fn list_plugins(
        &self,
        _: Request<proto::ListPluginsRequest>,
    ) -> Result<Response<proto::ListPluginsResponse>, Status> {
        Ok(Response::new(proto::ListPluginsResponse {
            plugins: self
                .shared
                .plugins()
                .plugins()
                .iter()
                .map(convert::plugin)
                .collect(),
        }))
    }

    async fn list_sources(
        &self,
        _: Request<proto::ListSourcesRequest>,
    ) -> Result<Response<proto::ListSourcesResponse>, Status> {
        let config = self.shared.config();
        let public_url = config
            .webhooks
            .as_ref()
            .map(|w| w.public_url.clone())
            .unwrap_or_default();
        Ok(Response::new(proto::ListSourcesResponse {
            sources: config
                .sources
                .iter()
                .map(|source| {
                    convert::source(source, &public_url, &self.shared.sources.of(&source.name))
                })
                .collect(),
        }))
    }

    async fn get_clock(
        &self,
        _: Request<proto::GetClockRequest>,
    ) -> Result<Response<proto::Clock>, Status> {
        Ok(Response::new(self.clock()))
    }

    async fn advance_clock(
        &self,
        request: Request<proto::AdvanceClockRequest>,
    ) -> Result<Response<proto::Clock>, Status> {
        let clock = self.shared.engine.clock();
        let result = match clock_move(request.into_inner().target)? {
            ClockMove::By(by) => clock.advance(by),
            ClockMove::To(to) => clock.set(to),
        };
        match result {
            Ok(now) => {
                tracing::info!(now = %now, "manual clock moved");
                self.shared.engine.wake();
                Ok(Response::new(self.clock()))
            }
            Err(e @ ClockError::NotManual) => Err(Status::failed_precondition(e.to_string())),
            Err(e @ ClockError::Backwards { .. }) => {
                Err(Status::invalid_argument(format!("to: {e}")))
            }
            Err(e @ ClockError::Persist { .. }) => Err(Status::internal(e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::advance_clock_request::Target;
    use tonic::Code;

    fn list(workflow: &str, state: &str, customer: &str, limit: u32) -> proto::ListCasesRequest {
        proto::ListCasesRequest {
            workflow: workflow.into(),
            state: state.into(),
            customer: customer.into(),
            limit,
        }
    }

    #[test]
    fn refused_events_are_counted_by_whatever_type_they_name() {
        for (text, want) in [
            (r#"{"id":"e1","type":"payment_failed"}"#, "payment_failed"),
            (r#"{"id":"e1","type":7}"#, ""),
            (r#"{"id":"e1"}"#, ""),
            ("not json", ""),
            ("[1]", ""),
        ] {
            assert_eq!(type_of(text), want, "{text:?}");
        }
    }

    #[test]
    fn required_fields() {
        for (value, expected) in [
            ("abc", Ok("abc")),
            ("  abc ", Ok("abc")),
            ("", Err("id: must not be empty")),
            ("   ", Err("id: must not be empty")),
        ] {
            let got = required("id", value).map_err(|s| {
                assert_eq!(s.code(), Code::InvalidArgument);
                s.message().to_string()
            });
            assert_eq!(got, expected.map_err(String::from), "{value:?}");
        }
    }

    #[test]
    fn case_filters() {
        let ok = [
            (list("", "", "", 0), None, None, None, DEFAULT_LIST),
            (
                list(" payment-failed ", "active", "cus_1", 5),
                Some("payment-failed"),
                Some(CaseState::Active),
                Some("cus_1"),
                5,
            ),
            (
                list("", " paused ", "  ", 10_000),
                None,
                Some(CaseState::Paused),
                None,
                10_000,
            ),
        ];
        for (request, workflow, state, customer, limit) in ok {
            let f = case_filter(&request).expect("valid filter");
            assert_eq!(f.workflow.as_deref(), workflow, "{request:?}");
            assert_eq!(f.state, state, "{request:?}");
            assert_eq!(f.customer.as_deref(), customer, "{request:?}");
            assert_eq!(f.limit, limit, "{request:?}");
        }
        let bad = [
            (
                list("", "zombie", "", 0),
                "state: unknown CaseState 'zombie' (expected one of: active, paused, recovered, exhausted, cancelled)",
            ),
            (
                list("", "Active", "", 0),
                "state: unknown CaseState 'Active'",
            ),
            (list("", "", "", 10_001), "limit: at most 10000, got 10001"),
        ];
        for (request, message) in bad {
            let status = case_filter(&request).expect_err("invalid filter");
            assert_eq!(status.code(), Code::InvalidArgument);
            assert!(
                status.message().starts_with(message),
                "{:?} for {request:?}",
                status.message()
            );
        }
    }

    const GOOD: &str =
        r#"{"id":"e1","type":"payment_failed","customer":{"id":"cus_1"},"subject":"inv_1"}"#;

    #[test]
    fn event_batches() {
        let good = GOOD.to_string();
        assert_eq!(
            events(&[good.clone(), good.clone()]).expect("valid").len(),
            2
        );

        let no_customer = GOOD.replace(r#""cus_1""#, r#""""#);
        let bad: [(Vec<String>, &str); 4] = [
            (vec![], "events: the batch is empty"),
            (
                vec![good.clone(), good.clone(), good.clone(), no_customer],
                "event 4 (e1): customer.id: must not be empty",
            ),
            (
                vec![good.clone(), "{".into()],
                "event 2: not JSON: EOF while parsing an object",
            ),
            (
                vec![good.clone(); MAX_BATCH + 1],
                "events: 10001 events in one call",
            ),
        ];
        for (batch, message) in bad {
            let status = events(&batch).expect_err("invalid batch");
            assert_eq!(status.code(), Code::InvalidArgument);
            assert!(
                status.message().starts_with(message),
                "{:?}, expected {message:?}",
                status.message()
            );
        }
    }

    #[test]
    fn clock_moves() {
        let at = |s: &str| s.parse::<DateTime<Utc>>().expect("time");
        let ok = [
            (
                Target::By("3d".into()),
                ClockMove::By(std::time::Duration::from_secs(3 * 86_400)),
            ),
            (
                Target::By("90s".into()),
                ClockMove::By(std::time::Duration::from_secs(90)),
            ),
            (
                Target::To("2026-01-05T09:00:00Z".into()),
                ClockMove::To(at("2026-01-05T09:00:00Z")),
            ),
            (
                Target::To("2026-01-05T10:00:00+01:00".into()),
                ClockMove::To(at("2026-01-05T09:00:00Z")),
            ),
        ];
        for (target, expected) in ok {
            assert_eq!(clock_move(Some(target)).expect("valid"), expected);
        }
        let bad = [
            (None, "target: give 'by'"),
            (Some(Target::By("".into())), "by: empty duration"),
            (
                Some(Target::By("3 days".into())),
                "by: invalid duration '3 days'",
            ),
            (
                Some(Target::To("tomorrow".into())),
                "to: invalid RFC 3339 time 'tomorrow'",
            ),
            (
                Some(Target::To("2026-01-05".into())),
                "to: invalid RFC 3339 time '2026-01-05'",
            ),
        ];
        for (target, message) in bad {
            let status = clock_move(target.clone()).expect_err("invalid move");
            assert_eq!(status.code(), Code::InvalidArgument);
            assert!(
                status.message().starts_with(message),
                "{:?}, expected {message:?}",
                status.message()
            );
        }
    }

    #[test]
    fn engine_errors_map_to_codes() {
        let cases = [
            (
                EngineError::Store(StoreError::CaseNotFound("x".into())),
                Code::NotFound,
                "case 'x' not found",
            ),
            (
                EngineError::Store(StoreError::InvalidTransition {
                    id: "x".into(),
                    state: CaseState::Recovered,
                    action: "resume",
                }),
                Code::FailedPrecondition,
                "case 'x' is recovered; cannot resume it",
            ),
            (
                EngineError::Store(StoreError::Database(sqlx::Error::PoolClosed)),
                Code::Unavailable,
                "database: ",
            ),
            (
                EngineError::Store(StoreError::Corrupt {
                    table: "cases",
                    message: "bad".into(),
                }),
                Code::Internal,
                "corrupt row in table 'cases': bad",
            ),
            (
                EngineError::UnknownVersion("v1".into()),
                Code::Internal,
                "workflow version 'v1'",
            ),
        ];
        for (error, code, message) in cases {
            let status = engine_status(error);
            assert_eq!(status.code(), code, "{status:?}");
            assert!(status.message().starts_with(message), "{status:?}");
        }
    }
}
