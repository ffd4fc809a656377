//! The threads a channel's plugin is called on: one *lane* per slot of the
//! channel's concurrency, each an OS thread of its own that takes the next
//! queued call as soon as it is free.
//!
//! A lane that finds work queued goes on to the next call without sleeping,
//! so a burst costs no thread hand-off per call (the blocking pool woke a
//! thread for each one and put it back to sleep after). Each call still has
//! its own deadline, counted from the moment a lane starts it:
//!
//! - the caller waits for its answer until the call has run for the
//!   channel's timeout, then moves on (`Unknown`: the message may have gone
//!   out). The lane stays with the plugin until it returns, and that answer
//!   is dropped;
//! - a call that no lane has started is withdrawn by its caller once a whole
//!   timeout passes without any call of the channel returning (every lane is
//!   stuck in the plugin): it was never started, so it is safe to retry.
//!
//! Whether a queued call is started or withdrawn is decided once, by one
//! compare-and-swap, so a withdrawn call never runs and a started one is
//! never reported as not sent.

use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::ffi::{CallError, RawChannel};

const QUEUED: u8 = 0;
const STARTED: u8 = 1;
const WITHDRAWN: u8 = 2;

/// Decides, when a lane is about to start a call, whether it still may
/// (the claim's lease leaves room for a call as long as the timeout).
pub type MayStart = Box<dyn FnOnce(Duration) -> bool + Send>;

/// What became of one call.
#[derive(Debug)]
pub enum Called {
    /// The plugin returned this.
    Returned(Result<Vec<u8>, CallError>),
    /// The call ran for the whole timeout; its answer will be dropped.
    TimedOut,
    /// No lane started it within a timeout while none of the channel's calls
    /// returned: every lane is stuck. Not started, so safe to retry.
    Stuck,
    /// `may_start` said no: not started.
    Refused,
    /// The lane ended without answering (it cannot: calls are contained);
    /// whether the plugin ran is unknown.
    Vanished,
}

/// Shared by a call's caller and the lane that takes it.
#[derive(Default)]
struct State {
    /// QUEUED, then STARTED (by a lane) or WITHDRAWN (by the caller).
    phase: AtomicU8,
    /// When the lane started the call.
    started: OnceLock<Instant>,
}

struct Job {
    request: Vec<u8>,
    may_start: MayStart,
    state: Arc<State>,
    reply: oneshot::Sender<Option<Result<Vec<u8>, CallError>>>,
}

/// The lanes of one open channel. Dropping it lets the lanes finish what is
/// queued and exit.
pub struct Lanes {
    queue: crossbeam_channel::Sender<Job>,
    timeout: Duration,
    /// Calls that have returned so far (however late): shows whether a
    /// channel whose lanes are all busy is slow or stuck.
    returned: Arc<AtomicU64>,
}

impl Lanes {
    /// Starts `count` lanes calling `raw`, named after the channel.
    pub fn start(
        channel: &str,
        raw: Arc<RawChannel>,
        count: usize,
        timeout: Duration,
    ) -> std::io::Result<Lanes> {
        let (queue, jobs) = crossbeam_channel::unbounded::<Job>();
        let returned = Arc::new(AtomicU64::new(0));
        for lane in 0..count.max(1) {
            let jobs = jobs.clone();
            let raw = raw.clone();
            let returned = returned.clone();
            std::thread::Builder::new()
                .name(format!("plugin-{channel}-{lane}"))
                .spawn(move || {
                    for job in jobs {
                        run(&raw, &returned, timeout, job);
                    }
                })?;
        }
        Ok(Lanes {
            queue,
            timeout,
            returned,
        })
    }

    /// Queues one call and waits for what became of it.
    pub async fn call(&self, request: Vec<u8>, may_start: MayStart) -> Called {
        let state = Arc::new(State::default());
        let (reply, mut answer) = oneshot::channel();
        let job = Job {
            request,
            may_start,
            state: state.clone(),
            reply,
        };
        if self.queue.send(job).is_err() {
            // Every lane has exited (cannot happen while `self` lives).
            return Called::Vanished;
        }
        // Until a lane starts the call: withdraw it only if a whole timeout
        // passes with no call of the channel returning.
        let mut returned = self.returned.load(Ordering::Relaxed);
        let mut deadline = Instant::now() + self.timeout;
        loop {
            match tokio::time::timeout_at(deadline.into(), &mut answer).await {
                Ok(Ok(Some(result))) => return Called::Returned(result),
                Ok(Ok(None)) => return Called::Refused,
                Ok(Err(_)) => return Called::Vanished,
                Err(_) => {}
            }
            if state.phase.load(Ordering::Acquire) == STARTED {
                break;
            }
            let now = self.returned.load(Ordering::Relaxed);
            if now != returned {
                returned = now;
                deadline = Instant::now() + self.timeout;
                continue;
            }
            if state
                .phase
                .compare_exchange(QUEUED, WITHDRAWN, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                return Called::Stuck;
            }
            // A lane started it just now.
            break;
        }
        // Started: the call gets the channel's timeout from its start.
        let started = state.started.get().copied().unwrap_or_else(Instant::now);
        match tokio::time::timeout_at((started + self.timeout).into(), answer).await {
            Ok(Ok(Some(result))) => Called::Returned(result),
            Ok(Ok(None)) => Called::Refused,
            Ok(Err(_)) => Called::Vanished,
            Err(_) => Called::TimedOut,
        }
    }
}

/// One call on a lane's thread.
fn run(raw: &RawChannel, returned: &AtomicU64, timeout: Duration, job: Job) {
    if job
        .state
        .phase
        .compare_exchange(QUEUED, STARTED, Ordering::AcqRel, Ordering::Acquire)
        .is_err()
    {
        // Withdrawn by its caller.
        return;
    }
    let _ = job.state.started.set(Instant::now());
    if !(job.may_start)(timeout) {
        let _ = job.reply.send(None);
        return;
    }
    let result = raw.send(&job.request);
    returned.fetch_add(1, Ordering::Relaxed);
    // The caller may have moved on (timed out); the answer is then dropped.
    let _ = job.reply.send(Some(result));
}
