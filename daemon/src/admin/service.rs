//! The `dunningd.v1.Admin` service: validates every request field, calls the
//! engine or the daemon, converts the answer.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use tonic::{Request, Response, Status};

use super::convert;
use crate::daemon::Shared;
use crate::engine::EngineError;
use crate::engine::clock::ClockError;
use crate::model::{CaseFilter, CaseState, Event};
use crate::proto;
use crate::proto::admin_server::Admin;
use crate::store::{CaseAction, StoreError};

/// Most events accepted in one call; larger batches should be split.
const MAX_BATCH: usize = 10_000;
const MAX_LIST: u32 = 10_000;

#[derive(Clone)]
pub struct AdminService {
    shared: Arc<Shared>,
}

impl AdminService {
    pub fn new(shared: Arc<Shared>) -> AdminService {
        AdminService { shared }
    }
}

fn engine_status(error: EngineError) -> Status {
    match error {
        EngineError::Store(StoreError::CaseNotFound(id)) => {
            Status::not_found(format!("case '{id}' not found"))
        }
        EngineError::Store(e @ StoreError::InvalidTransition { .. }) => {
            Status::failed_precondition(e.to_string())
        }
        EngineError::Store(e @ StoreError::Database(_)) => Status::unavailable(e.to_string()),
        EngineError::Store(e @ (StoreError::Migrate(_) | StoreError::Corrupt { .. })) => {
            Status::internal(e.to_string())
        }
        e @ (EngineError::UnknownVersion(_) | EngineError::StoredVersion { .. }) => {
            Status::internal(e.to_string())
        }
    }
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
        if texts.is_empty() {
            return Err(Status::invalid_argument("events: the batch is empty"));
        }
        if texts.len() > MAX_BATCH {
            return Err(Status::invalid_argument(format!(
                "events: {} events in one call; send at most {MAX_BATCH}",
                texts.len()
            )));
        }
        // Every event is checked before any is stored.
        let events = texts
            .iter()
            .enumerate()
            .map(|(i, text)| {
                Event::from_json(text)
                    .map_err(|e| Status::invalid_argument(format!("events[{i}]: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let outcomes = self
            .shared
            .engine
            .ingest(events)
            .await
            .map_err(engine_status)?;
        Ok(Response::new(proto::SendEventsResponse {
            results: outcomes.into_iter().map(convert::event_result).collect(),
        }))
    }

    async fn list_cases(
        &self,
        request: Request<proto::ListCasesRequest>,
    ) -> Result<Response<proto::ListCasesResponse>, Status> {
        let r = request.get_ref();
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
        let filter = CaseFilter {
            workflow: optional(&r.workflow),
            state,
            customer: optional(&r.customer),
            limit: r.limit,
        };
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
        let detail = self
            .shared
            .engine
            .get_case(id)
            .await
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
        use proto::advance_clock_request::Target;
        let clock = self.shared.engine.clock();
        let result = match request.into_inner().target {
            None => {
                return Err(Status::invalid_argument(
                    "target: give 'by' (a duration) or 'to' (an RFC 3339 time)",
                ));
            }
            Some(Target::By(by)) => {
                let by = crate::duration::parse(&by)
                    .map_err(|e| Status::invalid_argument(format!("by: {e}")))?;
                clock.advance(by)
            }
            Some(Target::To(to)) => {
                let to: DateTime<Utc> = to.parse().map_err(|e| {
                    Status::invalid_argument(format!("to: invalid RFC 3339 time '{to}': {e}"))
                })?;
                clock.set(to)
            }
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
