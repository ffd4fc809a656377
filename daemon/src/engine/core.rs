//! The engine's front door: events in, cases and case actions out.
//!
//! Ingest plans in memory (which workflows an event triggers, when each of
//! their steps is due, after send windows) and lets the store apply the plan
//! in one transaction that re-checks everything another writer could change.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};

use chrono::{DateTime, Utc};
use tokio::sync::Notify;

use super::clock::Clock;
use super::group_commit::GroupCommit;
use crate::model::{Case, CaseDetail, CaseFilter, CaseState, Event, OptOut};
use crate::stats::{Stats, StatsFilter};
use crate::store::{CaseAction, EventPlan, IngestOutcome, NewCase, NewDelivery, Store, StoreError};
use crate::workflow::{SendWindow, Workflow, WorkflowSet};

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("workflow version '{0}' is neither loaded nor stored")]
    UnknownVersion(String),
    #[error("stored workflow version '{version}' no longer parses: {message}")]
    StoredVersion { version: String, message: String },
}

/// The engine, shared by the admin API and the scheduler.
pub struct Engine {
    store: Arc<dyn Store>,
    clock: Clock,
    /// The workflows currently served from the folder; swapped whole on reload.
    workflows: RwLock<Arc<WorkflowSet>>,
    /// Every workflow version this process has seen, loaded or re-parsed from
    /// the store, so a case keeps running on the version it started with.
    versions: Mutex<HashMap<String, Arc<Workflow>>>,
    /// Wakes the scheduler: new deliveries, a moved clock, a resumed case.
    wake: Notify,
    /// Each channel's default send window, from the configuration.
    channel_windows: RwLock<Arc<BTreeMap<String, SendWindow>>>,
    /// Concurrent ingest calls share transactions.
    ingests: GroupCommit,
}

impl Engine {
    pub fn new(store: Arc<dyn Store>, clock: Clock) -> Engine {
        Engine {
            store,
            clock,
            workflows: RwLock::new(Arc::new(WorkflowSet::empty())),
            versions: Mutex::new(HashMap::new()),
            wake: Notify::new(),
            channel_windows: RwLock::new(Arc::new(BTreeMap::new())),
            ingests: GroupCommit::default(),
        }
    }

    /// Replaces the channels' default send windows (on reload).
    pub fn set_channel_windows(&self, windows: BTreeMap<String, SendWindow>) {
        match self.channel_windows.write() {
            Ok(mut guard) => *guard = Arc::new(windows),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(windows),
        }
    }

    /// Each channel's default send window.
    pub fn channel_windows(&self) -> Arc<BTreeMap<String, SendWindow>> {
        match self.channel_windows.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// Wakes the scheduler to look for due work now.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    pub(crate) async fn woken(&self) {
        self.wake.notified().await;
    }

    pub fn workflows(&self) -> Arc<WorkflowSet> {
        match self.workflows.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Serves a new set of workflows. Cases already running keep theirs.
    pub fn set_workflows(&self, set: Arc<WorkflowSet>) {
        {
            let mut versions = self.versions.lock().unwrap_or_else(|p| p.into_inner());
            for workflow in set.iter() {
                versions.insert(workflow.version.clone(), workflow.clone());
            }
        }
        match self.workflows.write() {
            Ok(mut guard) => *guard = set,
            Err(poisoned) => *poisoned.into_inner() = set,
        }
    }

    /// The workflow a case runs: its own version, from memory or the store.
    pub async fn workflow_version(&self, version: &str) -> Result<Arc<Workflow>, EngineError> {
        if let Some(found) = self
            .versions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(version)
        {
            return Ok(found.clone());
        }
        let source = self
            .store
            .workflow_source(version)
            .await?
            .ok_or_else(|| EngineError::UnknownVersion(version.to_string()))?;
        // Channels are not checked: a channel removed since is reported per
        // delivery, not by refusing the whole version.
        let path = std::path::PathBuf::from(format!("<stored version {version}>"));
        let workflow = Workflow::parse(&path, &source, None).map_err(|diagnostics| {
            EngineError::StoredVersion {
                version: version.to_string(),
                message: diagnostics
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; "),
            }
        })?;
        let workflow = Arc::new(workflow);
        self.versions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(version.to_string(), workflow.clone());
        Ok(workflow)
    }

    /// Accepts a batch of already-validated events: plans every case they
    /// start and commits events, cases and deliveries in one transaction
    /// (shared with concurrent calls: `group_commit`).
    pub async fn ingest(&self, events: Vec<Event>) -> Result<Vec<IngestOutcome>, EngineError> {
        let now = self.clock.now();
        let workflows = self.workflows();
        let windows = self.channel_windows();
        let mut plans = Vec::with_capacity(events.len());
        for event in events {
            let mut starts = Vec::new();
            let mut notes = Vec::new();
            for workflow in workflows.iter() {
                match workflow.triggers_on(&event) {
                    Ok(true) => starts.push(plan_case(workflow, &windows, &event, now)),
                    Ok(false) => {}
                    // Refusing the event would make billing retry it forever
                    // and keep it from every other workflow: it matches nothing
                    // here, and the sender is told why.
                    Err(error) => {
                        tracing::warn!(event = %event.id, workflow = %workflow.name, %error, "trigger condition cannot be evaluated; no case started");
                        notes.push(format!(
                            "workflow '{}': no case started, trigger condition cannot be evaluated: {error}",
                            workflow.name
                        ));
                    }
                }
            }
            plans.push(EventPlan {
                occurred_at: event.occurred_at.unwrap_or(now),
                event,
                starts,
                notes,
            });
        }
        let outcomes = self.ingests.ingest(&self.store, plans, now).await?;
        if outcomes.iter().any(|o| !o.cases_started.is_empty()) {
            self.wake();
        }
        Ok(outcomes)
    }

    pub async fn list_cases(&self, filter: &CaseFilter) -> Result<Vec<Case>, EngineError> {
        Ok(self.store.list_cases(filter).await?)
    }

    pub async fn get_case(&self, id: &str) -> Result<CaseDetail, EngineError> {
        Ok(self.store.get_case(id).await?)
    }

    /// The ids of at most `limit` cases whose id starts with `prefix`.
    pub async fn case_ids_with_prefix(
        &self,
        prefix: &str,
        limit: u32,
    ) -> Result<Vec<String>, EngineError> {
        Ok(self.store.case_ids_with_prefix(prefix, limit).await?)
    }

    pub async fn case_action(&self, id: &str, action: CaseAction) -> Result<Case, EngineError> {
        let case = self.store.case_action(id, action, self.clock.now()).await?;
        if action == CaseAction::Resume {
            self.wake();
        }
        Ok(case)
    }

    /// Records that a customer does not want to be contacted on a channel:
    /// their pending deliveries there are skipped (falling back where the
    /// step says so).
    pub async fn opt_out(
        &self,
        customer_id: &str,
        channel: &str,
        source: &str,
        reason: &str,
    ) -> Result<OptOut, EngineError> {
        let optout = OptOut {
            customer_id: customer_id.to_string(),
            channel: channel.to_string(),
            source: source.to_string(),
            reason: reason.to_string(),
            created_at: self.clock.now(),
        };
        self.store.opt_out(&optout).await?;
        tracing::info!(customer = customer_id, channel, source, "opted out");
        Ok(optout)
    }

    /// Removes an opt-out (only one recorded by `source`, if given); false
    /// if there was none.
    pub async fn opt_in(
        &self,
        customer_id: &str,
        channel: &str,
        source: Option<&str>,
    ) -> Result<bool, EngineError> {
        let removed = self.store.opt_in(customer_id, channel, source).await?;
        if removed {
            tracing::info!(customer = customer_id, channel, "opted in");
        }
        Ok(removed)
    }

    pub async fn list_optouts(
        &self,
        customer_id: Option<&str>,
        limit: u32,
    ) -> Result<Vec<OptOut>, EngineError> {
        Ok(self.store.list_optouts(customer_id, limit).await?)
    }

    /// Recovery figures over the cases the filter selects.
    pub async fn stats(&self, filter: &StatsFilter) -> Result<Stats, EngineError> {
        Ok(self.store.stats(filter).await?)
    }

    pub async fn case_counts(&self) -> Result<BTreeMap<CaseState, u64>, EngineError> {
        Ok(self.store.case_counts().await?)
    }

    pub async fn open_cases_by_workflow(&self) -> Result<BTreeMap<String, u64>, EngineError> {
        Ok(self.store.open_cases_by_workflow().await?)
    }
}

/// Every delivery of a new case: one per (step, channel), due at start +
/// `after`, planned at the first moment inside its send windows (the step's
/// or workflow's, and the channel's). Windows that never meet leave it due;
/// the scheduler then skips it and says why.
fn plan_case(
    workflow: &Arc<Workflow>,
    windows: &BTreeMap<String, SendWindow>,
    event: &Event,
    now: DateTime<Utc>,
) -> NewCase {
    let timezone = event.customer.timezone.as_deref();
    let mut deliveries = Vec::new();
    for (index, step) in workflow.steps.iter().enumerate() {
        let after = chrono::Duration::from_std(step.after).unwrap_or(chrono::Duration::MAX);
        let due_at = now
            .checked_add_signed(after)
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        for send in &step.send {
            let planned_at = workflow
                .plan(index, windows.get(&send.channel), due_at, timezone)
                .unwrap_or(due_at);
            deliveries.push(NewDelivery {
                step_index: index as u32,
                step: step.name.clone(),
                channel: send.channel.clone(),
                template: send.template.clone(),
                due_at,
                planned_at,
                critical: step.critical,
            });
        }
    }
    NewCase {
        workflow: workflow.name.clone(),
        workflow_version: workflow.version.clone(),
        workflow_source: workflow.source.clone(),
        exit_on: workflow.exit_on.clone(),
        deliveries,
    }
}
