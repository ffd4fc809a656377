//! Set-wise ingestion of a batch of independent events, shared by the
//! backends: the rows each statement reads (as one JSON document per
//! statement) and the outcomes assembled from what the statements returned.
//! The statements themselves live in each backend.
//!
//! A batch is independent when no two of its events share an id or a
//! (customer, subject): then no event's exit, stale-trigger or open-case
//! check can depend on another's, and applying the batch set-wise (all
//! events, then all exits, then all checks, then all starts) gives the same
//! result as applying it event by event.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde_json::{Value, json};

use super::rows::corrupt;
use super::{EventPlan, IngestOutcome, StoreError, idempotency_key, to_ms};

/// Whether the batch may be applied set-wise (see the module comment).
pub(crate) fn independent(plans: &[EventPlan]) -> bool {
    let mut ids = HashSet::new();
    let mut keys = HashSet::new();
    plans.len() > 1
        && plans.iter().all(|p| {
            ids.insert(p.event.id.as_str())
                && keys.insert((p.event.customer.id.as_str(), p.event.subject.as_str()))
        })
}

/// The events to insert: `id`, `type`, `customer`, `subject`,
/// `occurred_ms`, `body` (the event as stored JSON).
pub(crate) fn event_rows(plans: &[EventPlan]) -> Result<String, StoreError> {
    let mut rows = Vec::with_capacity(plans.len());
    for plan in plans {
        let e = &plan.event;
        rows.push(json!({
            "id": e.id, "type": e.event_type, "customer": e.customer.id, "subject": e.subject,
            "occurred_ms": to_ms(plan.occurred_at),
            "body": serde_json::to_string(e).map_err(|err| corrupt("events", err))?,
        }));
    }
    encode(rows, "events")
}

/// The plans whose event the insert recorded (its `RETURNING id`): the
/// others repeat an event id already stored and change nothing.
pub(crate) fn newly_recorded<'a>(
    plans: &'a [EventPlan],
    inserted: &HashSet<String>,
) -> Vec<&'a EventPlan> {
    plans
        .iter()
        .filter(|p| inserted.contains(&p.event.id))
        .collect()
}

/// The new events as exits: `id`, `type`, `customer`, `subject`.
pub(crate) fn exit_rows(new: &[&EventPlan]) -> Result<String, StoreError> {
    let rows = new
        .iter()
        .map(|p| {
            let e = &p.event;
            json!({ "id": e.id, "type": e.event_type, "customer": e.customer.id, "subject": e.subject })
        })
        .collect();
    encode(rows, "cases")
}

/// Every start to check, `i` (the new event) and `j` (its start): with
/// `workflow`, `customer`, `subject`, `occurred_ms` and `exit_on` (an array).
pub(crate) fn candidate_rows(new: &[&EventPlan]) -> Result<Option<String>, StoreError> {
    let mut rows = Vec::new();
    for (i, plan) in new.iter().enumerate() {
        for (j, start) in plan.starts.iter().enumerate() {
            rows.push(json!({
                "i": i, "j": j, "workflow": start.workflow, "customer": plan.event.customer.id,
                "subject": plan.event.subject, "occurred_ms": to_ms(plan.occurred_at),
                "exit_on": start.exit_on,
            }));
        }
    }
    if rows.is_empty() {
        return Ok(None);
    }
    encode(rows, "cases").map(Some)
}

/// The cases the batch's exit events recovered, from the exit UPDATE's
/// `RETURNING id, customer_id, subject`.
pub(crate) struct Recovered {
    pub ids: Vec<String>,
    /// Case ids by (customer, subject): keys are unique in the batch, so
    /// the key names the event that recovered them.
    pub by_key: HashMap<(String, String), Vec<String>>,
}

impl Recovered {
    pub fn new(rows: Vec<(String, String, String)>) -> Recovered {
        let mut by_key: HashMap<(String, String), Vec<String>> = HashMap::new();
        let ids = rows
            .into_iter()
            .map(|(id, customer, subject)| {
                by_key
                    .entry((customer, subject))
                    .or_default()
                    .push(id.clone());
                id
            })
            .collect();
        Recovered { ids, by_key }
    }
}

/// Starts refused by the checks, by (new event, start), with the note the
/// event's outcome carries.
#[derive(Default)]
pub(crate) struct Refusals(HashMap<(usize, usize), String>);

impl Refusals {
    pub fn later_exit(&mut self, new: &[&EventPlan], i: usize, j: usize, exit_id: &str) {
        if let Some(start) = new.get(i).and_then(|p| p.starts.get(j)) {
            self.0.insert(
                (i, j),
                format!(
                    "workflow '{}': no case started, exit event '{exit_id}' occurred later",
                    start.workflow
                ),
            );
        }
    }

    pub fn already_open(&mut self, new: &[&EventPlan], i: usize, j: usize, case_id: &str) {
        if let Some(start) = new.get(i).and_then(|p| p.starts.get(j)) {
            self.0.insert(
                (i, j),
                format!(
                    "workflow '{}': no case started, case '{case_id}' is already open for this customer and subject",
                    start.workflow
                ),
            );
        }
    }

    fn refused(&self, i: usize, j: usize) -> bool {
        self.0.contains_key(&(i, j))
    }
}

/// The rows of the cases to start: workflow versions (`version`, `name`,
/// `source`), cases (`id`, `workflow`, `version`, `customer`, `subject`,
/// `exit_on` as an array, `event_id`, `i`, `j`) and their deliveries (`id`,
/// `case_id`, `step_index`, `step`, `channel`, `template`, `due_ms`,
/// `planned_ms`, `key`, `customer`, `critical`).
pub(crate) struct Starts<'p> {
    /// The newly recorded events the starts were planned from (`i` indexes
    /// them).
    pub new: &'p [&'p EventPlan],
    /// When the cases start.
    pub now_ms: i64,
    pub versions: String,
    pub cases: String,
    pub deliveries: String,
    /// Case ids by (new event, start).
    pub ids: BTreeMap<(usize, usize), String>,
}

impl<'p> Starts<'p> {
    pub fn plan(
        new: &'p [&'p EventPlan],
        refusals: &Refusals,
        now_ms: i64,
    ) -> Result<Option<Starts<'p>>, StoreError> {
        let mut versions = BTreeMap::new();
        let mut cases = Vec::new();
        let mut deliveries = Vec::new();
        let mut ids = BTreeMap::new();
        for (i, plan) in new.iter().enumerate() {
            let event = &plan.event;
            for (j, start) in plan.starts.iter().enumerate() {
                if refusals.refused(i, j) {
                    continue;
                }
                versions
                    .entry(start.workflow_version.as_str())
                    .or_insert((start.workflow.as_str(), start.workflow_source.as_str()));
                let case_id = uuid::Uuid::now_v7().to_string();
                cases.push(json!({
                    "id": case_id, "workflow": start.workflow, "version": start.workflow_version,
                    "customer": event.customer.id, "subject": event.subject,
                    "exit_on": start.exit_on, "event_id": event.id, "i": i, "j": j,
                }));
                for d in &start.deliveries {
                    deliveries.push(json!({
                        "id": uuid::Uuid::now_v7().to_string(), "case_id": case_id,
                        "step_index": d.step_index, "step": d.step, "channel": d.channel,
                        "template": d.template, "due_ms": to_ms(d.due_at),
                        "planned_ms": to_ms(d.planned_at),
                        "key": idempotency_key(&case_id, d.step_index, &d.channel),
                        "customer": event.customer.id, "critical": i64::from(d.critical),
                    }));
                }
                ids.insert((i, j), case_id);
            }
        }
        if cases.is_empty() {
            return Ok(None);
        }
        let versions = versions
            .iter()
            .map(|(version, (name, source))| {
                json!({ "version": version, "name": name, "source": source })
            })
            .collect();
        Ok(Some(Starts {
            new,
            now_ms,
            versions: encode(versions, "workflow_versions")?,
            cases: encode(cases, "cases")?,
            deliveries: encode(deliveries, "deliveries")?,
            ids,
        }))
    }
}

/// The outcomes, in the batch's order, from what the statements did:
/// which event ids were inserted, the cases recovered by (customer,
/// subject), the refused starts, and the cases started.
pub(crate) fn outcomes(
    plans: Vec<EventPlan>,
    inserted: &HashSet<String>,
    mut recovered: HashMap<(String, String), Vec<String>>,
    mut refusals: Refusals,
    mut started: BTreeMap<(usize, usize), String>,
) -> Vec<IngestOutcome> {
    let mut i = 0;
    plans
        .into_iter()
        .map(|plan| {
            let mut outcome = IngestOutcome {
                event_id: plan.event.id.clone(),
                notes: plan.notes,
                ..Default::default()
            };
            if !inserted.contains(&plan.event.id) {
                outcome.duplicate = true;
                outcome.notes.clear();
                return outcome;
            }
            let key = (plan.event.customer.id, plan.event.subject);
            outcome.cases_recovered = recovered.remove(&key).unwrap_or_default();
            for j in 0..plan.starts.len() {
                if let Some(note) = refusals.0.remove(&(i, j)) {
                    outcome.notes.push(note);
                }
                if let Some(case_id) = started.remove(&(i, j)) {
                    outcome.cases_started.push(case_id);
                }
            }
            i += 1;
            outcome
        })
        .collect()
}

fn encode(rows: Vec<Value>, table: &'static str) -> Result<String, StoreError> {
    serde_json::to_string(&rows).map_err(|e| corrupt(table, e))
}
