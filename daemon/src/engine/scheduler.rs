//! The scheduler run loop. Only this task claims deliveries; others call
//! `Engine::wake()` when they create due work or move the clock.
//!
//! One loop claims due deliveries in batches and spawns one dispatch task per
//! delivery (render, call the plugin, decide the outcome). Outcomes go to a
//! single completion writer that commits them in batches, so a burst of sends
//! costs a few transactions, not one each. The loop sleeps until the next due
//! time, a wake-up, or a short cap (leases of other processes expire in
//! wall-clock time, which no wake-up announces).
//!
//! Conditions and templates never run on the async workers: each is bounded
//! by its budget (`workflow::RENDER_FUEL`, `workflow::CONDITION_FUEL`) and
//! waited for at most the channel's timeout, so a workflow file cannot
//! stall the loop, other channels or a shutdown. A step's condition runs on
//! the blocking pool; the message is rendered on the channel's lane right
//! before the plugin's call (`PluginHost::send_within`), which saves a
//! thread hand-off per delivery, and render and call share one timeout.
//!
//! A claim's lease is renewed while the claim is in flight (waiting for a
//! channel slot, being sent, or sent and waiting for its outcome's commit),
//! so a batch that takes longer than one lease is not taken over and sent
//! again by another daemon. Should renewal fail (this daemon lost the
//! database), a delivery whose lease would run out before its channel's
//! timeout is not sent at all but handed back.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use dunningd_plugin_api::wire::{DeliveryRequest, DeliveryResponse, Recipient};
use rand::Rng;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::task::JoinSet;

use super::core::Engine;
use super::policy::{self, Condition, Decision, Facts};
use crate::config::{self, ChannelSpec, SchedulerConfig};
use crate::links::Links;
use crate::plugin_host::{PluginHost, Sent};
use crate::store::{ClaimOptions, Claimed, Claims, Completion, FollowUp, FrequencyCap};
use crate::workflow::RenderContext;

/// Longest the loop sleeps without looking at the store (and without moving
/// its heartbeat).
pub const POLL_CAP: Duration = Duration::from_secs(1);
/// Most claims between their claim and their outcome's commit, across all
/// channels: claiming stops while this many wait for a channel, a plugin
/// or the completion writer.
const MAX_IN_FLIGHT: usize = 1024;
/// Most deliveries of one channel between the start of their dispatch and
/// their outcome's commit, per slot of the channel's `concurrency` (so 128
/// for the default 8). A crash can leave at most these sent and unrecorded
/// (to be sent again after the restart), and an outcome waits for its
/// commit at most as long as the completion writer takes to commit this
/// many: it commits every waiting outcome at once. Per channel, so that a
/// slow channel's queue never holds up another's sends.
pub const IN_FLIGHT_PER_SLOT: usize = 16;
/// The longest retry delay, however many attempts came before.
const MAX_BACKOFF: Duration = Duration::from_secs(6 * 3600);

/// Retry policy per channel, from the configuration; swapped on reload.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub backoff: Duration,
    /// The channel's timeout, which also bounds the wait for a render.
    pub timeout: Duration,
}

impl From<&ChannelSpec> for RetryPolicy {
    fn from(spec: &ChannelSpec) -> Self {
        RetryPolicy {
            max_attempts: spec.max_attempts,
            backoff: spec.retry_backoff,
            timeout: spec.timeout,
        }
    }
}

pub struct Scheduler {
    engine: Arc<Engine>,
    plugins: Arc<PluginHost>,
    config: SchedulerConfig,
    /// This process's lease owner id: unique per run, so a restarted daemon
    /// never mistakes an old lease for its own.
    owner: String,
    policies: RwLock<Arc<BTreeMap<String, RetryPolicy>>>,
    /// Frequency caps per channel, from the configuration; swapped on reload.
    caps: RwLock<Arc<BTreeMap<String, FrequencyCap>>>,
    /// Set once the loop goes round, for the watchdog and status.
    heartbeat: watch::Sender<DateTime<Utc>>,
    /// Whether the last look at the store worked: false while the database
    /// is unreachable, for the health service.
    store_ok: watch::Sender<bool>,
    /// Signs each message's `unsubscribe_url` (with `webhooks:` configured).
    links: Option<Links>,
    /// The claims this process holds and still owes an outcome for (asked
    /// by the plugin host's threads when a call is about to start).
    held: Arc<Held>,
    /// The longest channel timeout: leases are renewed often enough that a
    /// call of that length still fits in what is left of them.
    longest_timeout: RwLock<Duration>,
    /// Counts delivery outcomes (the daemon's metrics).
    metrics: Option<Arc<crate::metrics::Metrics>>,
    /// Per channel, the permits of [`IN_FLIGHT_PER_SLOT`]; swapped on
    /// reload (a permit of a replaced gate is still released into it).
    gates: RwLock<Arc<BTreeMap<String, Gate>>>,
}

/// A channel's permits of [`IN_FLIGHT_PER_SLOT`], and how many it has.
struct Gate {
    permits: Arc<Semaphore>,
    size: usize,
}

/// A dispatched delivery's outcome on its way to the completion writer,
/// with the moment it was decided (for the plugin's answer, right after it)
/// and the claim's permits (in flight overall, and on its channel),
/// released once the outcome is committed.
struct Outcome {
    id: String,
    completion: Completion,
    decided: Instant,
    _permits: (OwnedSemaphorePermit, Option<OwnedSemaphorePermit>),
}

/// The claims a process holds and has not recorded an outcome for yet, each
/// with the instant its lease is known to last until. That instant is
/// measured from before the statement that set the lease, so it is never
/// later than the expiry the database holds.
#[derive(Default)]
struct Held(Mutex<HashMap<String, Instant>>);

impl Held {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records new claims, or extends held ones, until `until`.
    fn hold<'a>(&self, ids: impl IntoIterator<Item = &'a String>, until: Instant) {
        let mut map = self.map();
        for id in ids {
            map.insert(id.clone(), until);
        }
    }

    /// Extends the renewed claims; a held claim that was not renewed has
    /// lost its lease (or its outcome was committed meanwhile): it must not
    /// be sent.
    fn renewed(&self, asked: &[String], renewed: &[String], until: Instant) -> usize {
        let renewed: std::collections::HashSet<&String> = renewed.iter().collect();
        let mut map = self.map();
        let mut lost = 0;
        for id in asked {
            if let Some(held_until) = map.get_mut(id) {
                if renewed.contains(id) {
                    *held_until = until;
                } else {
                    *held_until = Instant::now();
                    lost += 1;
                }
            }
        }
        lost
    }

    fn until(&self, id: &str) -> Instant {
        self.map().get(id).copied().unwrap_or_else(Instant::now)
    }

    fn ids(&self) -> Vec<String> {
        self.map().keys().cloned().collect()
    }

    fn release<'a>(&self, ids: impl IntoIterator<Item = &'a String>) {
        let mut map = self.map();
        for id in ids {
            map.remove(id);
        }
    }
}

impl Scheduler {
    pub fn new(
        engine: Arc<Engine>,
        plugins: Arc<PluginHost>,
        config: SchedulerConfig,
    ) -> Scheduler {
        Scheduler {
            engine,
            plugins,
            config,
            owner: format!("dunningd-{}", uuid::Uuid::new_v4()),
            policies: RwLock::new(Arc::new(BTreeMap::new())),
            caps: RwLock::new(Arc::new(BTreeMap::new())),
            heartbeat: watch::Sender::new(Utc::now()),
            store_ok: watch::Sender::new(true),
            links: None,
            held: Arc::default(),
            longest_timeout: RwLock::new(Duration::ZERO),
            metrics: None,
            gates: RwLock::new(Arc::new(BTreeMap::new())),
        }
    }

    /// Gives every message an `unsubscribe_url` (a template variable and a
    /// message field, which the smtp plugin turns into `List-Unsubscribe`).
    pub fn with_unsubscribe_links(mut self, links: Links) -> Scheduler {
        self.links = Some(links);
        self
    }

    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// Wall-clock time of the loop's last round: a stuck loop stops moving it.
    pub fn heartbeat(&self) -> watch::Receiver<DateTime<Utc>> {
        self.heartbeat.subscribe()
    }

    /// True while the store answers; turns false when claiming fails (the
    /// database is down or unreachable) and true again once it works.
    pub fn store_ok(&self) -> watch::Receiver<bool> {
        self.store_ok.subscribe()
    }

    pub fn set_channels(&self, channels: &BTreeMap<String, ChannelSpec>) {
        let policies = channels
            .iter()
            .map(|(name, spec)| (name.clone(), spec.into()))
            .collect();
        match self.policies.write() {
            Ok(mut guard) => *guard = Arc::new(policies),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(policies),
        }
        let caps: BTreeMap<String, FrequencyCap> = channels
            .iter()
            .filter_map(|(name, spec)| Some((name.clone(), spec.frequency_cap?)))
            .collect();
        match self.caps.write() {
            Ok(mut guard) => *guard = Arc::new(caps),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(caps),
        }
        let old_gates = match self.gates.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        let gates: BTreeMap<String, Gate> = channels
            .iter()
            .map(|(name, spec)| {
                let size = spec.concurrency.max(1) * IN_FLIGHT_PER_SLOT;
                let permits = match old_gates.get(name) {
                    // Unchanged: the permits taken stay counted.
                    Some(gate) if gate.size == size => gate.permits.clone(),
                    _ => Arc::new(Semaphore::new(size)),
                };
                (name.clone(), Gate { permits, size })
            })
            .collect();
        match self.gates.write() {
            Ok(mut guard) => *guard = Arc::new(gates),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(gates),
        }
        let longest = channels.values().map(|spec| spec.timeout).max();
        match self.longest_timeout.write() {
            Ok(mut guard) => *guard = longest.unwrap_or_default(),
            Err(poisoned) => *poisoned.into_inner() = longest.unwrap_or_default(),
        }
    }

    /// How often in-flight leases are renewed: three times a lease, and
    /// three times in the margin between the lease and the longest channel
    /// timeout, so that a healthy renewal always leaves room for a call.
    fn renewal_interval(&self) -> Duration {
        let longest = match self.longest_timeout.read() {
            Ok(guard) => *guard,
            Err(poisoned) => *poisoned.into_inner(),
        };
        let lease = self.config.lease;
        (lease / 3)
            .min(lease.saturating_sub(longest) / 3)
            .max(Duration::from_millis(50))
    }

    /// The channel's gate ([`IN_FLIGHT_PER_SLOT`]); none for a channel no
    /// longer configured (its dispatch fails without a call).
    fn gate(&self, channel: &str) -> Option<Arc<Semaphore>> {
        let gates = match self.gates.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        gates.get(channel).map(|gate| gate.permits.clone())
    }

    fn caps(&self) -> BTreeMap<String, FrequencyCap> {
        let caps = match self.caps.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        (*caps).clone()
    }

    fn policy(&self, channel: &str) -> RetryPolicy {
        let policies = match self.policies.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        policies.get(channel).cloned().unwrap_or(RetryPolicy {
            max_attempts: config::DEFAULT_MAX_ATTEMPTS,
            backoff: config::DEFAULT_RETRY_BACKOFF,
            timeout: config::DEFAULT_CHANNEL_TIMEOUT,
        })
    }

    /// Runs workflow code (a step's condition) on the blocking pool and
    /// waits for it at most the channel's timeout. The work itself is
    /// bounded by its budget; a wait given up leaves the thread to finish it.
    async fn off_worker<T: Send + 'static>(
        &self,
        channel: &str,
        what: &str,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, String> {
        let timeout = self.policy(channel).timeout;
        match tokio::time::timeout(timeout, tokio::task::spawn_blocking(work)).await {
            Ok(Ok(done)) => Ok(done),
            Ok(Err(error)) => Err(format!("{what} failed: {error}")),
            Err(_) => Err(format!(
                "{what} took longer than the channel's timeout of {}",
                crate::duration::format(timeout)
            )),
        }
    }

    /// Runs until `shutdown` turns true, then stops claiming, waits up to the
    /// grace period for in-flight sends, records their outcomes and returns.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        // A dispatch's permits travel with its outcome and are released by
        // the completion writer after the commit, so claiming cannot run
        // ahead of committing and the queue never holds more than
        // MAX_IN_FLIGHT outcomes.
        let (done_tx, done_rx) = mpsc::channel(MAX_IN_FLIGHT);
        let writer = tokio::spawn(self.clone().write_completions(done_rx));
        let renewer = tokio::spawn(self.clone().renew_leases());
        let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
        let mut tasks = JoinSet::new();
        let mut options = ClaimOptions {
            owner: self.owner.clone(),
            lease: self.config.lease,
            limit: self.config.batch_size,
            max_claims: self.config.max_claims,
            caps: BTreeMap::new(),
        };
        let mut failures = 0u32;

        while !*shutdown.borrow() {
            self.heartbeat.send_replace(Utc::now());
            while tasks.try_join_next().is_some() {}
            let now = self.engine.clock().now();
            options.caps = self.caps();
            let asked = Instant::now();
            let claimed = match self.engine.store().claim_due(now, &options).await {
                Ok(Claims { claimed, given_up }) => {
                    if let Some(metrics) = &self.metrics {
                        for channel in &given_up {
                            metrics.given_up(channel);
                        }
                    }
                    self.held.hold(
                        claimed.iter().map(|c| &c.delivery_id),
                        asked + options.lease,
                    );
                    if failures > 0 {
                        tracing::info!(failures, "the database answers again; claiming resumes");
                    }
                    failures = 0;
                    self.store_ok
                        .send_if_modified(|ok| !std::mem::replace(ok, true));
                    claimed
                }
                Err(error) => {
                    failures += 1;
                    self.store_ok
                        .send_if_modified(|ok| std::mem::replace(ok, false));
                    let wait = Duration::from_millis(100 * 2u64.pow(failures.min(6)));
                    tracing::error!(%error, retry_in = ?wait, "cannot claim due deliveries");
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = shutdown.changed() => {}
                    }
                    continue;
                }
            };
            let full_batch = claimed.len() as u32 >= options.limit;
            for delivery in claimed {
                let permit = tokio::select! {
                    permit = in_flight.clone().acquire_owned() => match permit {
                        Ok(permit) => permit,
                        Err(_) => break,
                    },
                    _ = shutdown.changed() => break,
                };
                let this = self.clone();
                let done = done_tx.clone();
                tasks.spawn(async move {
                    let id = delivery.delivery_id.clone();
                    let slot = match this.gate(&delivery.channel) {
                        Some(gate) => gate.acquire_owned().await.ok(),
                        None => None,
                    };
                    let completion = this.dispatch_counted(delivery).await;
                    let outcome = Outcome {
                        id,
                        completion,
                        decided: Instant::now(),
                        _permits: (permit, slot),
                    };
                    let _ = done.send(outcome).await;
                });
            }
            if full_batch {
                continue;
            }
            let next = match self.engine.store().next_due().await {
                Ok(next) => next,
                Err(error) => {
                    tracing::warn!(%error, "cannot read the next due time");
                    None
                }
            };
            let deadline = next.unwrap_or(DateTime::<Utc>::MAX_UTC);
            tokio::select! {
                _ = self.engine.clock().sleep_until(deadline, POLL_CAP) => {}
                _ = self.engine.woken() => {}
                _ = shutdown.changed() => {}
            }
        }

        tracing::info!(
            in_flight = tasks.len(),
            "scheduler stopping; waiting for in-flight sends"
        );
        let grace = self.config.shutdown_grace;
        if tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} })
            .await
            .is_err()
        {
            tracing::warn!(
                still_running = tasks.len(),
                grace = ?grace,
                "in-flight sends did not finish in time; they stay claimable and will be sent again with the same idempotency key"
            );
            // Stop waiting for them: their plugin threads run on (they cannot
            // be cancelled), but their outcomes will not be recorded.
            tasks.abort_all();
            while tasks.join_next().await.is_some() {}
        }
        drop(done_tx);
        // The writer retries while the database is away; stopping does not
        // wait for it forever.
        let writer_abort = writer.abort_handle();
        match tokio::time::timeout(grace, writer).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::error!(%error, "completion writer failed"),
            Err(_) => {
                writer_abort.abort();
                tracing::error!(
                    "stopping without recording some delivery outcomes (the database does not answer); those deliveries will be sent again with the same idempotency key"
                );
            }
        }
        renewer.abort();
    }

    /// Keeps the leases of in-flight claims alive until the scheduler stops.
    async fn renew_leases(self: Arc<Self>) {
        let lease = self.config.lease;
        loop {
            tokio::time::sleep(self.renewal_interval()).await;
            let ids = self.held.ids();
            if ids.is_empty() {
                continue;
            }
            let asked = Instant::now();
            match self
                .engine
                .store()
                .renew_leases(&self.owner, &ids, lease)
                .await
            {
                Ok(renewed) => {
                    let lost = self.held.renewed(&ids, &renewed, asked + lease);
                    if lost > 0 {
                        tracing::debug!(
                            deliveries = lost,
                            "claims not renewed: recorded meanwhile, or their lease was lost"
                        );
                    }
                }
                Err(error) => tracing::error!(
                    %error, deliveries = ids.len(),
                    "cannot renew the leases of in-flight deliveries; those whose lease runs out will not be sent"
                ),
            }
        }
    }

    /// Commits outcomes in batches until every sender is gone: each commit
    /// takes every outcome waiting, so one waits at most for the commit in
    /// progress and its own. A failed commit is retried: dropping an outcome
    /// would resend a sent message once its lease expires.
    async fn write_completions(self: Arc<Self>, mut rx: mpsc::Receiver<Outcome>) {
        let mut batch: Vec<Outcome> = Vec::with_capacity(MAX_IN_FLIGHT);
        while rx.recv_many(&mut batch, MAX_IN_FLIGHT).await > 0 {
            let mut attempt = 0u32;
            loop {
                let now = self.engine.clock().now();
                let outcomes = batch
                    .iter()
                    .map(|outcome| (outcome.id.clone(), outcome.completion.clone()))
                    .collect();
                match self
                    .engine
                    .store()
                    .complete(&self.owner, outcomes, now)
                    .await
                {
                    Ok(lost) => {
                        self.held.release(batch.iter().map(|outcome| &outcome.id));
                        if let Some(metrics) = &self.metrics {
                            for outcome in &batch {
                                metrics.outcome_committed(outcome.decided.elapsed());
                            }
                        }
                        self.store_ok
                            .send_if_modified(|ok| !std::mem::replace(ok, true));
                        for id in lost {
                            tracing::warn!(delivery = %id, "lease lost before the outcome was recorded; another claim owns it");
                        }
                        break;
                    }
                    Err(error) => {
                        self.store_ok
                            .send_if_modified(|ok| std::mem::replace(ok, false));
                        attempt += 1;
                        let wait = Duration::from_millis(100 * 2u64.pow(attempt.min(6)));
                        tracing::error!(%error, deliveries = batch.len(), retry_in = ?wait, "cannot record delivery outcomes");
                        tokio::time::sleep(wait).await;
                    }
                }
            }
            // Releases the batch's in-flight permits.
            batch.clear();
            // Retries and exhausted cases change what is due next.
            self.engine.wake();
        }
    }

    /// Gathers one claimed delivery's facts (step condition, opt-out, send
    /// windows, expiry) for the sending policy ([`policy::judge`]), renders
    /// and sends it if the policy says so, and decides what became of it.
    async fn dispatch(&self, claimed: Claimed) -> Completion {
        let now = self.engine.clock().now();
        let workflow = match self
            .engine
            .workflow_version(&claimed.workflow_version)
            .await
        {
            Ok(workflow) => workflow,
            Err(error) => {
                return Completion::Failed {
                    error: error.to_string(),
                    fallback: None,
                };
            }
        };
        let event = &claimed.trigger_event;
        let timezone = event.customer.timezone.as_deref();
        let index = claimed.step_index as usize;
        let step = workflow.steps.get(index);
        let windows = self.engine.channel_windows();
        // Where this delivery goes if it fails for good or is skipped: the
        // step's fallback for its channel (a fallback delivery has none).
        let fallback = step
            .filter(|_| claimed.fallback_for.is_none())
            .and_then(|s| s.send.iter().find(|send| send.channel == claimed.channel))
            .and_then(|send| send.fallback.as_ref())
            .map(|f| FollowUp {
                channel: f.channel.clone(),
                template: f.template.clone(),
                due_at: now,
                planned_at: workflow
                    .plan(index, windows.get(&f.channel), now, timezone)
                    .unwrap_or(now),
            });

        // Only a step with a condition needs the blocking pool: most have none.
        let checked = match step.and_then(|s| s.when.clone()) {
            None => None,
            Some(when) => {
                // Conditions run on the blocking pool, with their own copy.
                let (workflow, event) = (workflow.clone(), claimed.trigger_event.clone());
                let applies = self
                    .off_worker(&claimed.channel, "the step's condition", move || {
                        workflow
                            .step_applies(index, &event)
                            .map_err(|e| e.to_string())
                    })
                    .await
                    .and_then(|applies| applies);
                Some((when, applies))
            }
        };
        let condition = match &checked {
            None => Condition::Absent,
            Some((_, Ok(true))) => Condition::Holds,
            Some((when, Ok(false))) => Condition::False { when },
            Some((_, Err(error))) => Condition::Unevaluable { error },
        };
        let facts = Facts {
            condition,
            opted_out: claimed.opted_out.as_deref(),
            channel: &claimed.channel,
            opens: workflow.plan(index, windows.get(&claimed.channel), now, timezone),
            expires_after: step.and_then(|s| s.expires_after),
            due_at: claimed.due_at,
            now,
        };
        match policy::judge(&facts) {
            Decision::Send => {}
            Decision::Skip { reason, hand_over } => {
                return Completion::Skipped {
                    reason,
                    fallback: fallback.filter(|_| hand_over),
                };
            }
            Decision::Expire { reason } => {
                return Completion::Skipped {
                    reason,
                    fallback: None,
                };
            }
            Decision::Defer { until } => return Completion::Defer { at: until },
        }

        let unsubscribe_url = self
            .links
            .as_ref()
            .map(|links| links.unsubscribe_url(&event.customer.id, &claimed.channel));
        // The message is rendered on the channel's lane, just before the
        // plugin's call, within the same timeout (see `plugin_host::lanes`):
        // off the async workers, without a hand-off of its own.
        let claimed = Arc::new(claimed);
        let prepare = {
            let claimed = claimed.clone();
            move || {
                let event = &claimed.trigger_event;
                let context = RenderContext {
                    event,
                    case_id: &claimed.case_id,
                    case_started_at: claimed.case_started_at,
                    step: &claimed.step,
                    channel: &claimed.channel,
                    unsubscribe_url: unsubscribe_url.as_deref(),
                };
                let mut message = workflow
                    .render(&claimed.template, &context)
                    .map_err(|e| e.to_string())?;
                if let Some(url) = unsubscribe_url {
                    message.entry("unsubscribe_url".into()).or_insert(url);
                }
                let customer = &event.customer;
                Ok(DeliveryRequest {
                    delivery_id: claimed.delivery_id.clone(),
                    idempotency_key: claimed.idempotency_key.clone(),
                    channel: claimed.channel.clone(),
                    case_id: claimed.case_id.clone(),
                    workflow: claimed.workflow.clone(),
                    step: claimed.step.clone(),
                    template: claimed.template.clone(),
                    attempt: claimed.attempt,
                    recipient: Recipient {
                        customer_id: customer.id.clone(),
                        name: customer.name.clone(),
                        email: customer.email.clone(),
                        phone: customer.phone.clone(),
                        locale: customer.locale.clone(),
                        timezone: customer.timezone.clone(),
                    },
                    message,
                    data: event.data.clone(),
                    subject: event.subject.clone(),
                })
            }
        };
        let id = &claimed.delivery_id;
        let (held, claim) = (self.held.clone(), id.clone());
        let may_start = move |timeout| Instant::now() + timeout <= held.until(&claim);
        let response = match self
            .plugins
            .send_within(&claimed.channel, prepare, may_start)
            .await
        {
            Sent::Answered(response) => response,
            Sent::Refused => {
                tracing::warn!(
                    delivery = %id, channel = %claimed.channel,
                    "not sending: the claim's lease would run out before the channel's timeout (its renewal failed); handing it back"
                );
                return Completion::Defer { at: now };
            }
            Sent::NotPrepared(error) => return self.not_rendered(&claimed, error, fallback),
            Sent::PrepareTimedOut(timeout) => {
                let error = format!(
                    "template '{}': rendering took longer than the channel's timeout of {}",
                    claimed.template,
                    crate::duration::format(timeout)
                );
                return self.not_rendered(&claimed, error, fallback);
            }
        };
        let completion = self.decide(&claimed, response, fallback);
        log_outcome(&claimed, &completion);
        completion
    }

    /// A message that could not be rendered fails for good; the fallback
    /// renders its own template, so it may still reach the customer.
    fn not_rendered(
        &self,
        claimed: &Claimed,
        error: String,
        fallback: Option<FollowUp>,
    ) -> Completion {
        tracing::error!(delivery = %claimed.delivery_id, workflow = %claimed.workflow, %error, "cannot render template");
        Completion::Failed { error, fallback }
    }

    /// Turns a plugin's answer into the delivery's next state. Retryable and
    /// unknown outcomes are retried with the same idempotency key until the
    /// channel's attempt limit; then the delivery is failed. A delivery that
    /// fails for good, or that the plugin skips (no address), hands over to
    /// `fallback`.
    fn decide(
        &self,
        claimed: &Claimed,
        response: DeliveryResponse,
        fallback: Option<FollowUp>,
    ) -> Completion {
        let policy = self.policy(&claimed.channel);
        let retry = |error: String, hint: Option<u64>, fallback: Option<FollowUp>| {
            if claimed.attempt >= policy.max_attempts {
                return Completion::Failed {
                    error: format!("gave up after {} attempts: {error}", claimed.attempt),
                    fallback,
                };
            }
            // The plugin's hint is input: capped like our own backoff, so a
            // hint of centuries cannot overflow the retry time.
            let hint = Duration::from_secs(hint.unwrap_or(0)).min(MAX_BACKOFF);
            let delay = backoff(policy.backoff, claimed.attempt).max(hint);
            let at = self.engine.clock().now()
                + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::hours(6));
            Completion::Retry { error, at }
        };
        match response {
            DeliveryResponse::Sent { receipt } => Completion::Sent { receipt },
            DeliveryResponse::Retryable {
                error,
                retry_after_secs,
            } => retry(error, retry_after_secs, fallback),
            DeliveryResponse::Unknown { error } => {
                retry(format!("outcome unknown: {error}"), None, fallback)
            }
            DeliveryResponse::Permanent { error } => Completion::Failed { error, fallback },
            DeliveryResponse::Skipped { reason } => Completion::Skipped { reason, fallback },
        }
    }
}

impl Scheduler {
    /// Counts every dispatched delivery's outcome per channel in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<crate::metrics::Metrics>) -> Scheduler {
        self.metrics = Some(metrics);
        self
    }

    /// [`Scheduler::dispatch`], its outcome counted.
    async fn dispatch_counted(&self, claimed: Claimed) -> Completion {
        let channel = claimed.channel.clone();
        let completion = self.dispatch(claimed).await;
        if let Some(metrics) = &self.metrics {
            metrics.delivery(&channel, &completion);
        }
        completion
    }
}

/// Logs what became of a sent delivery.
fn log_outcome(claimed: &Claimed, completion: &Completion) {
    match completion {
        // At `debug`: a busy daemon sends thousands a second, which would
        // drown the rest of the log (and pass journald's rate limit). The
        // case timeline and `dunningd_deliveries_total` record every send.
        Completion::Sent { receipt } => tracing::debug!(
            delivery = %claimed.delivery_id, case = %claimed.case_id, step = %claimed.step,
            channel = %claimed.channel, receipt = receipt.as_deref().unwrap_or(""), "delivery sent"
        ),
        Completion::Retry { error, at } => tracing::warn!(
            delivery = %claimed.delivery_id, channel = %claimed.channel, attempt = claimed.attempt,
            %error, retry_at = %at, "delivery failed, will retry"
        ),
        Completion::Failed { error, fallback } => tracing::error!(
            delivery = %claimed.delivery_id, channel = %claimed.channel, attempt = claimed.attempt,
            %error, fallback = fallback.as_ref().map(|f| f.channel.as_str()).unwrap_or(""),
            "delivery failed"
        ),
        Completion::Skipped { reason, fallback } => tracing::info!(
            delivery = %claimed.delivery_id, channel = %claimed.channel, %reason,
            fallback = fallback.as_ref().map(|f| f.channel.as_str()).unwrap_or(""),
            "delivery skipped"
        ),
        Completion::Defer { at } => {
            tracing::debug!(delivery = %claimed.delivery_id, %at, "delivery deferred")
        }
    }
}

/// `base · 2^(attempt-1)`, capped, with ±20 % jitter so that a provider
/// outage does not end in a synchronized stampede.
fn backoff(base: Duration, attempt: u32) -> Duration {
    let exp = base.saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1).min(20)));
    let capped = exp.min(MAX_BACKOFF);
    let jitter = rand::rng().random_range(0.8..1.2);
    capped.mul_f64(jitter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_claims_are_extended_only_when_renewed() {
        let held = Held::default();
        let (a, b, gone) = ("a".to_string(), "b".to_string(), "gone".to_string());
        let start = Instant::now();
        held.hold([&a, &b], start + Duration::from_secs(10));
        let later = start + Duration::from_secs(60);
        // `gone` was recorded meanwhile: it is neither held nor counted lost.
        let lost = held.renewed(
            &[a.clone(), b.clone(), gone.clone()],
            std::slice::from_ref(&a),
            later,
        );
        assert_eq!(lost, 1);
        assert_eq!(held.until(&a), later);
        assert!(
            held.until(&b) <= Instant::now(),
            "a lost lease allows no call"
        );
        held.release([&a, &b]);
        assert!(held.ids().is_empty());
        assert!(held.until(&a) <= Instant::now());
    }

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        let base = Duration::from_secs(60);
        for (attempt, nominal) in [(1, 60.0), (2, 120.0), (3, 240.0), (4, 480.0)] {
            let got = backoff(base, attempt).as_secs_f64();
            assert!(
                got >= nominal * 0.8 && got <= nominal * 1.2,
                "attempt {attempt}: {got}"
            );
        }
        assert!(backoff(base, 40) <= MAX_BACKOFF.mul_f64(1.2));
    }
}
