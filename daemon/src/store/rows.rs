//! Row → model conversions shared by the backends. Both store integers as
//! 64-bit and times as milliseconds, so one generic decoder serves both.

use std::collections::BTreeMap;
use std::str::FromStr;

use sqlx::{ColumnIndex, Decode, Row, Type};

use super::{Claimed, Completion, StoreError, from_ms, to_ms};
use crate::model::{Case, CaseState, Delivery, DeliveryStatus, Event, OptOut};
use crate::stats::{StatsDelivery, StatsRow};

/// One completion as both stores' batch UPDATE reads it (SQLite as a JSON
/// array, PostgreSQL as one array per column): the new status, the receipt,
/// the error or skip reason, a new planned time, what it adds to the
/// delivery's attempts, and whether the claim was taken in memory (SQLite).
#[derive(Debug, serde::Serialize)]
pub(crate) struct OutcomeRow<'a> {
    pub id: &'a str,
    pub status: &'static str,
    pub receipt: Option<&'a str>,
    pub text: Option<&'a str>,
    pub planned_ms: Option<i64>,
    /// Added to the stored attempts. A claim written to its row counted its
    /// attempt already, so this is 0, or -1 for a deferral (not an
    /// attempt); a claim held in memory counts it only now: 1, or 0.
    pub attempts: i32,
    /// 1 for a claim held in memory: its row is still pending (or was
    /// skipped by a cancel or a recovery while in flight), not `sending`.
    pub in_memory: i32,
}

impl<'a> OutcomeRow<'a> {
    /// The outcome of a claim written to its row (`sending`, leased).
    pub fn new(id: &'a str, completion: &'a Completion) -> OutcomeRow<'a> {
        let (status, receipt, text, planned_ms, attempts) = match completion {
            Completion::Sent { receipt } => ("sent", receipt.as_deref(), None, None, 0),
            Completion::Retry { error, at } => {
                ("retrying", None, Some(error.as_str()), Some(to_ms(*at)), 0)
            }
            Completion::Failed { error, .. } => ("failed", None, Some(error.as_str()), None, 0),
            Completion::Skipped { reason, .. } => ("skipped", None, Some(reason.as_str()), None, 0),
            Completion::Defer { at } => ("scheduled", None, None, Some(to_ms(*at)), -1),
        };
        OutcomeRow {
            id,
            status,
            receipt,
            text,
            planned_ms,
            attempts,
            in_memory: 0,
        }
    }

    /// The outcome of a claim held in memory: its attempt is counted now.
    pub fn held_in_memory(self) -> OutcomeRow<'a> {
        OutcomeRow {
            attempts: self.attempts + 1,
            in_memory: 1,
            ..self
        }
    }
}

/// What `sql::COMPLETE` sets on a delivery `d` from its outcome row `u` (an
/// [`OutcomeRow`]): the status and what goes with it, the same in both
/// dialects (a macro so that each backend's statement can `concat!` it).
/// The sent time, the lease and `updated_ms` are the statement's own: they
/// bind the time in the backend's dialect.
macro_rules! outcome_columns {
    () => {
        "status = u.status,
         receipt = CASE WHEN u.status = 'sent' THEN u.receipt ELSE d.receipt END,
         last_error = CASE WHEN u.status = 'sent' THEN NULL
                           WHEN u.status IN ('retrying', 'failed') THEN u.text
                           ELSE d.last_error END,
         skip_reason = CASE WHEN u.status = 'skipped' THEN u.text ELSE d.skip_reason END,
         planned_ms = COALESCE(u.planned_ms, d.planned_ms),
         attempts = d.attempts + u.attempts, note = NULL"
    };
}
pub(crate) use outcome_columns;

/// The cases of the recorded completions (`(delivery, case)` pairs, as the
/// completion UPDATE returns them), each once: those that may have run out
/// of pending deliveries.
pub(crate) fn cases_of(recorded: &[(String, String)]) -> Vec<&str> {
    let mut cases: Vec<&str> = recorded.iter().map(|(_, case)| case.as_str()).collect();
    cases.sort_unstable();
    cases.dedup();
    cases
}

/// A row type whose columns decode as the types the store uses.
pub(crate) trait StoreRow: Row
where
    for<'a> &'a str: ColumnIndex<Self>,
{
    fn text(&self, column: &str) -> Result<String, StoreError>;
    fn opt_text(&self, column: &str) -> Result<Option<String>, StoreError>;
    fn int(&self, column: &str) -> Result<i64, StoreError>;
    fn opt_int(&self, column: &str) -> Result<Option<i64>, StoreError>;
}

impl<R> StoreRow for R
where
    R: Row,
    for<'a> &'a str: ColumnIndex<R>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
{
    fn text(&self, column: &str) -> Result<String, StoreError> {
        Ok(self.try_get(column)?)
    }
    fn opt_text(&self, column: &str) -> Result<Option<String>, StoreError> {
        Ok(self.try_get(column)?)
    }
    fn int(&self, column: &str) -> Result<i64, StoreError> {
        Ok(self.try_get(column)?)
    }
    fn opt_int(&self, column: &str) -> Result<Option<i64>, StoreError> {
        Ok(self.try_get(column)?)
    }
}

pub(crate) fn corrupt(table: &'static str, message: impl ToString) -> StoreError {
    StoreError::Corrupt {
        table,
        message: message.to_string(),
    }
}

pub(crate) fn case_from_row<R: StoreRow>(row: &R) -> Result<Case, StoreError>
where
    for<'a> &'a str: ColumnIndex<R>,
{
    let state = row.text("state")?;
    let event = row.text("trigger_event")?;
    Ok(Case {
        id: row.text("id")?,
        workflow: row.text("workflow")?,
        workflow_version: row.text("workflow_version")?,
        customer_id: row.text("customer_id")?,
        subject: row.text("subject")?,
        state: CaseState::from_str(&state).map_err(|e| corrupt("cases", e))?,
        trigger_event: serde_json::from_str::<Event>(&event).map_err(|e| corrupt("cases", e))?,
        started_at: from_ms(row.int("started_ms")?),
        updated_at: from_ms(row.int("updated_ms")?),
        paused_at: row.opt_int("paused_ms")?.map(from_ms),
        ended_reason: row.opt_text("ended_reason")?,
    })
}

pub(crate) fn delivery_from_row<R: StoreRow>(row: &R) -> Result<Delivery, StoreError>
where
    for<'a> &'a str: ColumnIndex<R>,
{
    let status = row.text("status")?;
    Ok(Delivery {
        id: row.text("id")?,
        case_id: row.text("case_id")?,
        step_index: row.int("step_index")? as u32,
        step: row.text("step")?,
        channel: row.text("channel")?,
        template: row.text("template")?,
        status: DeliveryStatus::from_str(&status).map_err(|e| corrupt("deliveries", e))?,
        due_at: from_ms(row.int("due_ms")?),
        planned_at: from_ms(row.int("planned_ms")?),
        attempts: row.int("attempts")? as u32,
        idempotency_key: row.text("idempotency_key")?,
        receipt: row.opt_text("receipt")?,
        last_error: row.opt_text("last_error")?,
        skip_reason: row.opt_text("skip_reason")?,
        sent_at: row.opt_int("sent_ms")?.map(from_ms),
        updated_at: from_ms(row.int("updated_ms")?),
        fallback_for: row.opt_text("fallback_for")?,
        note: row.opt_text("note")?,
        provider_status: row.opt_text("report_status")?.map(|status| {
            match row.opt_text("report_error").ok().flatten() {
                Some(code) => format!("{status} (error {code})"),
                None => status,
            }
        }),
    })
}

/// One row of the stats query (see [`crate::stats`]).
pub(crate) fn stats_row_from_row<R: StoreRow>(row: &R) -> Result<StatsRow, StoreError>
where
    for<'a> &'a str: ColumnIndex<R>,
{
    let state = row.text("state")?;
    let delivery = match row.opt_text("status")? {
        None => None,
        Some(status) => Some(StatsDelivery {
            step_index: row.int("step_index")? as u32,
            step: row.text("step")?,
            channel: row.text("channel")?,
            status: DeliveryStatus::from_str(&status).map_err(|e| corrupt("deliveries", e))?,
            sent_ms: row.opt_int("sent_ms")?,
        }),
    };
    Ok(StatsRow {
        case_id: row.text("case_id")?,
        workflow: row.text("workflow")?,
        state: CaseState::from_str(&state).map_err(|e| corrupt("cases", e))?,
        started_ms: row.int("started_ms")?,
        updated_ms: row.int("updated_ms")?,
        amount: row.opt_text("amount")?,
        currency: row.opt_text("currency")?,
        delivery,
    })
}

/// The columns `claimed_from_row` reads, over `deliveries d JOIN cases c`
/// (a macro so that queries can `concat!` it into a static string):
/// `attempts` is the number of the claim being made, one more than the
/// attempts recorded before it.
macro_rules! claimed_columns {
    () => {
        "d.id, d.status, d.case_id, d.step_index, d.step, d.channel, d.template, d.idempotency_key,
         d.attempts + 1 AS attempts, d.due_ms, d.planned_ms, d.customer_id, d.critical,
         c.workflow, c.workflow_version, c.started_ms, c.trigger_event, d.fallback_for,
         (SELECT o.source FROM optouts o
          WHERE o.customer_id = c.customer_id AND o.channel = d.channel) AS optout"
    };
}
pub(crate) use claimed_columns;

/// Claimed rows, decoded: those to send, and those that cannot be read.
pub(crate) struct DecodedClaims {
    pub claimed: Vec<Claimed>,
    /// Failed completions with the reason, for the caller to record.
    pub broken: Vec<(String, Completion)>,
    /// The channel of each broken row, as far as it can be read.
    pub broken_channels: Vec<String>,
}

/// Decodes claimed rows once the claim is committed (decoding parses each
/// trigger event, too slow to do while holding the write lock). A row that
/// does not decode is not sent: it comes back as a failed completion with
/// the reason, so one corrupt row cannot stop every other delivery from
/// being claimed.
pub(crate) fn decode_claims<R: StoreRow>(rows: Vec<&R>) -> Result<DecodedClaims, StoreError>
where
    for<'a> &'a str: ColumnIndex<R>,
{
    let mut claimed = Vec::with_capacity(rows.len());
    let mut broken = Vec::new();
    let mut broken_channels = Vec::new();
    for row in rows {
        match claimed_from_row(row) {
            Ok(claim) => claimed.push(claim),
            Err(error) => {
                broken.push((
                    row.text("id")?,
                    Completion::Failed {
                        error: format!("cannot read the stored delivery: {error}"),
                        fallback: None,
                    },
                ));
                broken_channels.push(row.text("channel").unwrap_or_else(|_| "unknown".into()));
            }
        }
    }
    claimed.sort_by_key(|c| c.planned_at);
    Ok(DecodedClaims {
        claimed,
        broken,
        broken_channels,
    })
}

pub(crate) fn claimed_from_row<R: StoreRow>(row: &R) -> Result<Claimed, StoreError>
where
    for<'a> &'a str: ColumnIndex<R>,
{
    let event = row.text("trigger_event")?;
    Ok(Claimed {
        delivery_id: row.text("id")?,
        case_id: row.text("case_id")?,
        workflow: row.text("workflow")?,
        workflow_version: row.text("workflow_version")?,
        step_index: row.int("step_index")? as u32,
        step: row.text("step")?,
        channel: row.text("channel")?,
        template: row.text("template")?,
        idempotency_key: row.text("idempotency_key")?,
        attempt: row.int("attempts")? as u32,
        due_at: from_ms(row.int("due_ms")?),
        planned_at: from_ms(row.int("planned_ms")?),
        case_started_at: from_ms(row.int("started_ms")?),
        trigger_event: serde_json::from_str(&event).map_err(|e| corrupt("cases", e))?,
        fallback_for: row.opt_text("fallback_for")?,
        opted_out: row.opt_text("optout")?,
    })
}

/// `SELECT state, COUNT(*) AS n … GROUP BY state` rows as a map.
pub(crate) fn state_counts<R: StoreRow>(rows: &[R]) -> Result<BTreeMap<CaseState, u64>, StoreError>
where
    for<'a> &'a str: ColumnIndex<R>,
{
    let mut counts = BTreeMap::new();
    for row in rows {
        let state = CaseState::from_str(&row.text("state")?).map_err(|e| corrupt("cases", e))?;
        counts.insert(state, row.int("n")? as u64);
    }
    Ok(counts)
}

/// `SELECT workflow, COUNT(*) AS n … GROUP BY workflow` rows as a map.
pub(crate) fn workflow_counts<R: StoreRow>(rows: &[R]) -> Result<BTreeMap<String, u64>, StoreError>
where
    for<'a> &'a str: ColumnIndex<R>,
{
    rows.iter()
        .map(|row| Ok((row.text("workflow")?, row.int("n")? as u64)))
        .collect()
}

pub(crate) fn optout_from_row<R: StoreRow>(row: &R) -> Result<OptOut, StoreError>
where
    for<'a> &'a str: ColumnIndex<R>,
{
    Ok(OptOut {
        customer_id: row.text("customer_id")?,
        channel: row.text("channel")?,
        source: row.text("source")?,
        reason: row.text("reason")?,
        created_at: from_ms(row.int("created_ms")?),
    })
}

/// `SELECT workflow, state, COUNT(*) AS n … GROUP BY workflow, state` rows
/// as a map.
pub(crate) fn workflow_state_counts<R: StoreRow>(
    rows: &[R],
) -> Result<BTreeMap<(String, CaseState), u64>, StoreError>
where
    for<'a> &'a str: ColumnIndex<R>,
{
    rows.iter()
        .map(|row| {
            let state =
                CaseState::from_str(&row.text("state")?).map_err(|e| corrupt("cases", e))?;
            Ok(((row.text("workflow")?, state), row.int("n")? as u64))
        })
        .collect()
}
