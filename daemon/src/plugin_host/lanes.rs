//! The threads a channel's plugin is called on: one *lane* per slot of the
//! channel's concurrency, each an OS thread of its own that takes the next
//! queued call as soon as it is free.
//!
//! A lane that finds work queued goes on to the next call without sleeping,
//! so a burst costs no thread hand-off per call (the blocking pool woke a
//! thread for each one and put it back to sleep after). A call first
//! *prepares* its request on the lane (the scheduler renders the message
//! there: rendering is bounded work that must stay off the async workers,
//! and doing it on the lane saves a hand-off to the blocking pool and back
//! per delivery), then calls the plugin. Each call has its own deadline,
//! counted from the moment a lane starts it, for both:
//!
//! - the caller waits for its answer until the call has run for the
//!   channel's timeout, then moves on: `PrepareTimedOut` if the request was
//!   still being prepared (the plugin was not called), `TimedOut` if the
//!   plugin had it (the message may have gone out). The lane finishes what
//!   it was doing, and that answer is dropped;
//! - a call that no lane has started is withdrawn by its caller once a whole
//!   timeout passes without any call of the channel returning (every lane is
//!   stuck in the plugin): it was never started, so it is safe to retry.
//!
//! Whether a queued call is started or withdrawn, and whether a prepared
//! request goes to the plugin or its caller has given up, is decided once
//! each, by one compare-and-swap, so a withdrawn call never reaches the
//! plugin and one that reached it is never reported as not sent.
//!
//! A plugin that exports `send_batch` gets a lane's calls together: a lane
//! that takes a call also takes, without waiting, its share of the calls
//! queued behind it (at most [`MAX_BATCH`] in all), starts and prepares
//! each in turn as above, and hands those still wanted to the plugin in
//! one call; each caller gets its own item of the answer, within its own
//! deadline. Any other plugin gets one `send` per call, and so does a
//! batching plugin for a call with nothing queued behind it.

use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::ffi::{CallError, RawChannel};

const QUEUED: u8 = 0;
/// Started by a lane, which is preparing the request.
const STARTED: u8 = 1;
const WITHDRAWN: u8 = 2;
/// The request is prepared and the plugin has it.
const CALLING: u8 = 3;

/// The most calls a lane hands a batching plugin at once.
///
/// What a batch saves is per call (a thread hand-off, a JSON answer, a
/// write): at 32 it is down to a thirty-second, and a larger batch would
/// only make its first callers wait longer for the last one's preparing
/// and for one long call. It is rarely the limit: the scheduler keeps at
/// most 16 calls per lane of a channel in flight, and a lane takes only
/// its share of what is queued (see [`batch_share`]).
pub const MAX_BATCH: usize = 32;

/// How many of the `queued` calls a lane that just took one takes along,
/// when the channel has `lanes` lanes: an even share, so that the others,
/// if idle, find work too (with one lane, everything up to the bound).
fn batch_share(queued: usize, lanes: usize) -> usize {
    (queued / lanes.max(1)).min(MAX_BATCH - 1)
}

/// Decides, when a lane is about to start a call, whether it still may
/// (the claim's lease leaves room for a call as long as the timeout).
pub type MayStart = Box<dyn FnOnce(Duration) -> bool + Send>;

/// Builds the request's bytes on the lane, or says why there is none.
pub type Prepare = Box<dyn FnOnce() -> Result<Vec<u8>, String> + Send>;

/// What became of one call.
#[derive(Debug)]
pub enum Called {
    /// The plugin returned this.
    Returned(Result<Vec<u8>, CallError>),
    /// The plugin ran for the rest of the timeout; its answer will be
    /// dropped.
    TimedOut,
    /// Preparing the request failed: the plugin was not called.
    NotPrepared(String),
    /// Preparing the request took the whole timeout: the plugin was not
    /// called.
    PrepareTimedOut,
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
    /// QUEUED, then STARTED (by a lane) and CALLING, or WITHDRAWN (by the
    /// caller).
    phase: AtomicU8,
    /// When the lane started the call.
    started: OnceLock<Instant>,
    /// When the lane handed the prepared request to the plugin.
    calling: OnceLock<Instant>,
}

struct Job {
    prepare: Prepare,
    may_start: MayStart,
    state: Arc<State>,
    /// What became of the call, as the lane knows it: `Refused`,
    /// `NotPrepared` or `Returned`.
    reply: oneshot::Sender<Called>,
}

/// The lanes of one open channel. Dropping it lets the lanes finish what is
/// queued and exit.
pub struct Lanes {
    queue: crossbeam_channel::Sender<Job>,
    timeout: Duration,
    /// Calls that have finished so far (however late): shows whether a
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
        let lanes = count.max(1);
        for lane in 0..lanes {
            let jobs = jobs.clone();
            let raw = raw.clone();
            let returned = returned.clone();
            std::thread::Builder::new()
                .name(format!("plugin-{channel}-{lane}"))
                .spawn(move || {
                    let batches = raw.batches();
                    for job in jobs.iter() {
                        if batches {
                            let more = batch_share(jobs.len(), lanes);
                            let batch = std::iter::once(job).chain(jobs.try_iter().take(more));
                            run_batch(&raw, &returned, timeout, batch.collect());
                        } else {
                            run(&raw, &returned, timeout, job);
                        }
                    }
                })?;
        }
        Ok(Lanes {
            queue,
            timeout,
            returned,
        })
    }

    /// Queues one call and waits for what became of it; also says how long
    /// the plugin ran (from the hand-off of the prepared request to the
    /// answer or the deadline; zero if the plugin was not called), without
    /// the time it waited for a lane or was prepared.
    pub async fn call(&self, prepare: Prepare, may_start: MayStart) -> (Called, Duration) {
        let state = Arc::new(State::default());
        let called = self.queue_and_wait(prepare, may_start, &state).await;
        let ran = state
            .calling
            .get()
            .map(|calling| calling.elapsed())
            .unwrap_or_default();
        (called, ran)
    }

    async fn queue_and_wait(
        &self,
        prepare: Prepare,
        may_start: MayStart,
        state: &Arc<State>,
    ) -> Called {
        // A caller that goes away (its task aborted at shutdown) withdraws a
        // call whose request the plugin does not have yet: nobody would
        // record its outcome.
        let _withdraw_if_dropped = Withdraw(state);
        let (reply, mut answer) = oneshot::channel();
        let job = Job {
            prepare,
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
        let timeout = self.timeout;
        loop {
            // A call that started gets the timeout from its start, which may
            // end before the queue's deadline: look again by then.
            let until = match state.started.get() {
                Some(started) => deadline.min(*started + timeout),
                None => deadline.min(Instant::now() + timeout),
            };
            match tokio::time::timeout_at(until.into(), &mut answer).await {
                Ok(Ok(called)) => return called,
                Ok(Err(_)) => return Called::Vanished,
                Err(_) => {}
            }
            if state.phase.load(Ordering::Acquire) != QUEUED {
                break;
            }
            if Instant::now() < deadline {
                continue;
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
        match tokio::time::timeout_at((started + timeout).into(), answer).await {
            Ok(Ok(called)) => called,
            Ok(Err(_)) => Called::Vanished,
            // Still preparing: given up here, so the lane will not call
            // the plugin with it.
            Err(_) => match state.phase.compare_exchange(
                STARTED,
                WITHDRAWN,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => Called::PrepareTimedOut,
                Err(_) => Called::TimedOut,
            },
        }
    }
}

/// Withdraws a call whose request has not reached the plugin yet (queued,
/// or being prepared) when dropped; one the plugin has (or an already
/// withdrawn one) is left as it is.
struct Withdraw<'a>(&'a State);

impl Drop for Withdraw<'_> {
    fn drop(&mut self) {
        for phase in [QUEUED, STARTED] {
            if self
                .0
                .phase
                .compare_exchange(phase, WITHDRAWN, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                return;
            }
        }
    }
}

/// A started call with its request prepared: what is left of its job.
struct Prepared {
    state: Arc<State>,
    reply: oneshot::Sender<Called>,
    request: Vec<u8>,
}

/// One call on a lane's thread.
fn run(raw: &RawChannel, returned: &AtomicU64, timeout: Duration, job: Job) {
    let Some(prepared) = start(returned, timeout, job) else {
        return;
    };
    if !hand_over(returned, &prepared) {
        return;
    }
    let result = raw.send(&prepared.request);
    returned.fetch_add(1, Ordering::Relaxed);
    let _ = prepared.reply.send(Called::Returned(result));
}

/// Calls taken together on a lane's thread: each started and prepared in
/// turn, then those still wanted in one `send_batch` (one `send` if only one
/// is), each answered with its own item.
fn run_batch(raw: &RawChannel, returned: &AtomicU64, timeout: Duration, jobs: Vec<Job>) {
    let prepared: Vec<Prepared> = jobs
        .into_iter()
        .filter_map(|job| start(returned, timeout, job))
        .collect();
    // Decided for all of them just before the call, so that a caller that
    // gave up while the others were prepared is left out.
    let (calling, requests): (Vec<_>, Vec<_>) = prepared
        .into_iter()
        .filter(|prepared| hand_over(returned, prepared))
        .map(|prepared| (prepared.reply, prepared.request))
        .unzip();
    let results = match requests.as_slice() {
        [] => return,
        [request] => vec![raw.send(request)],
        _ => raw.send_batch(&requests),
    };
    // One result per request (a caller left without one would see
    // `Vanished`).
    for (reply, result) in calling.into_iter().zip(results) {
        returned.fetch_add(1, Ordering::Relaxed);
        let _ = reply.send(Called::Returned(result));
    }
}

/// Starts a call and prepares its request: `None` if its caller withdrew
/// it, or `may_start` refused it or preparing failed (those two answered).
fn start(returned: &AtomicU64, timeout: Duration, job: Job) -> Option<Prepared> {
    let Job {
        prepare,
        may_start,
        state,
        reply,
    } = job;
    if state
        .phase
        .compare_exchange(QUEUED, STARTED, Ordering::AcqRel, Ordering::Acquire)
        .is_err()
    {
        // Withdrawn by its caller.
        return None;
    }
    let _ = state.started.set(Instant::now());
    if !may_start(timeout) {
        let _ = reply.send(Called::Refused);
        return None;
    }
    // The caller may have moved on (timed out); an answer is then dropped.
    match prepare() {
        Ok(request) => Some(Prepared {
            state,
            reply,
            request,
        }),
        Err(error) => {
            returned.fetch_add(1, Ordering::Relaxed);
            let _ = reply.send(Called::NotPrepared(error));
            None
        }
    }
}

/// Whether a prepared request goes to the plugin now: `false` if its caller
/// gave up while it was prepared (it is then not sent), else it is
/// `CALLING` from now on.
fn hand_over(returned: &AtomicU64, prepared: &Prepared) -> bool {
    if prepared
        .state
        .phase
        .compare_exchange(STARTED, CALLING, Ordering::AcqRel, Ordering::Acquire)
        .is_err()
    {
        // Its caller gave up while it was prepared: not sent.
        returned.fetch_add(1, Ordering::Relaxed);
        return false;
    }
    let _ = prepared.state.calling.set(Instant::now());
    true
}

#[cfg(test)]
mod tests {
    //! A plugin built in-process and called through the same C ABI as a
    //! loaded library: its `send` sleeps for the milliseconds named by the
    //! delivery id and records how many calls run at once.

    use std::collections::BTreeMap;
    use std::path::Path;
    use std::sync::Mutex;
    use std::sync::atomic::AtomicUsize;

    use dunningd_plugin_api::wire::{ChannelConfig, DeliveryRequest, DeliveryResponse};
    use dunningd_plugin_api::{
        __private, Bytes, Channel, MIN_VTABLE_SIZE, OwnedBytes, Plugin, PluginVTable, STATUS_OK,
        StaticVTable, Status,
    };

    use super::*;
    use crate::plugin_host::Library;

    static CALLS: AtomicUsize = AtomicUsize::new(0);
    static RUNNING: AtomicUsize = AtomicUsize::new(0);
    static MOST_AT_ONCE: AtomicUsize = AtomicUsize::new(0);

    struct Sleepy;
    struct SleepyChannel;

    impl Plugin for Sleepy {
        const NAME: &'static str = "sleepy";
        const VERSION: &'static str = "1";
        type Channel = SleepyChannel;
        fn open(_config: ChannelConfig) -> Result<SleepyChannel, String> {
            Ok(SleepyChannel)
        }
    }

    impl Channel for SleepyChannel {
        fn send(&self, request: &DeliveryRequest) -> DeliveryResponse {
            CALLS.fetch_add(1, Ordering::SeqCst);
            let now = RUNNING.fetch_add(1, Ordering::SeqCst) + 1;
            MOST_AT_ONCE.fetch_max(now, Ordering::SeqCst);
            let ms = request.delivery_id.parse().unwrap_or(0);
            std::thread::sleep(Duration::from_millis(ms));
            RUNNING.fetch_sub(1, Ordering::SeqCst);
            DeliveryResponse::Sent { receipt: None }
        }
    }

    static VTABLE: StaticVTable = StaticVTable(__private::vtable::<Sleepy>());

    fn lanes(count: usize, timeout: Duration) -> Lanes {
        lanes_of(&VTABLE.0, count, timeout)
    }

    fn lanes_of(vtable: &'static PluginVTable, count: usize, timeout: Duration) -> Lanes {
        // SAFETY: a static vtable, whole.
        let library = unsafe { Library::from_vtable(Path::new("test"), vtable) };
        let library: &'static Library = Box::leak(Box::new(library.expect("vtable")));
        let config = br#"{"channel":"test","settings":{}}"#;
        let raw = library.open(config).expect("open");
        Lanes::start("test", Arc::new(raw), count, timeout).expect("lanes")
    }

    /// A request prepared at once.
    fn request(sleep_ms: u64) -> Prepare {
        let bytes = request_bytes(sleep_ms);
        Box::new(move || Ok(bytes))
    }

    fn request_bytes(sleep_ms: u64) -> Vec<u8> {
        serde_json::to_vec(&DeliveryRequest {
            delivery_id: sleep_ms.to_string(),
            idempotency_key: "k".into(),
            channel: "test".into(),
            case_id: "c".into(),
            workflow: "w".into(),
            step: "s".into(),
            template: "t".into(),
            attempt: 1,
            recipient: Default::default(),
            message: BTreeMap::new(),
            data: serde_json::Value::Null,
            subject: String::new(),
        })
        .expect("json")
    }

    /// The statics are shared, so the scenarios run in one test, in turn.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn calls_are_bounded_timed_from_their_start_and_withdrawn_only_unstarted() {
        // A burst larger than the lanes: every call answered, never more than
        // two at once, and the time a call waits for a lane (up to 500 ms
        // here: twelve calls of 100 ms on two lanes) is not counted as
        // running.
        let two = Arc::new(lanes(2, Duration::from_secs(5)));
        let mut calls = tokio::task::JoinSet::new();
        for _ in 0..12 {
            let two = two.clone();
            calls.spawn(async move {
                let queued = Instant::now();
                let (called, ran) = two.call(request(100), Box::new(|_| true)).await;
                (called, ran, queued.elapsed())
            });
        }
        let mut longest_wait = Duration::ZERO;
        while let Some(joined) = calls.join_next().await {
            let (called, ran, total) = joined.expect("task");
            assert!(matches!(called, Called::Returned(Ok(_))), "{called:?}");
            assert!(
                ran >= Duration::from_millis(100) && ran <= total,
                "ran {ran:?} of {total:?}"
            );
            longest_wait = longest_wait.max(total - ran);
        }
        assert!(
            longest_wait >= Duration::from_millis(350),
            "{longest_wait:?}"
        );
        assert_eq!(CALLS.swap(0, Ordering::SeqCst), 12);
        assert_eq!(MOST_AT_ONCE.load(Ordering::SeqCst), 2);

        // A lease that no longer fits: the plugin is not called.
        let (called, ran) = two.call(request(0), Box::new(|_| false)).await;
        assert!(matches!(called, Called::Refused), "{called:?}");
        assert!(ran < Duration::from_secs(1), "ran {ran:?}");
        assert_eq!(CALLS.load(Ordering::SeqCst), 0);

        // Preparing counts against the timeout: after 400 ms of a 600 ms
        // timeout the plugin gets 200 ms (the lease check is asked about
        // the whole timeout); its own time is what `ran` says.
        let short = lanes(1, Duration::from_millis(600));
        let slow_prepare = |ms: u64, sleep_ms: u64| -> Prepare {
            Box::new(move || {
                std::thread::sleep(Duration::from_millis(ms));
                Ok(request_bytes(sleep_ms))
            })
        };
        let (called, ran) = short
            .call(
                slow_prepare(400, 400),
                Box::new(|whole| whole == Duration::from_millis(600)),
            )
            .await;
        assert!(matches!(called, Called::TimedOut), "{called:?}");
        assert!(
            ran >= Duration::from_millis(150) && ran < Duration::from_millis(400),
            "ran {ran:?}"
        );
        // Let the plugin finish before the count is reset.
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(CALLS.swap(0, Ordering::SeqCst), 1);
        // A preparation that outlasts the timeout, or fails: the plugin is
        // never called with it.
        let (called, ran) = short.call(slow_prepare(900, 0), Box::new(|_| true)).await;
        assert!(matches!(called, Called::PrepareTimedOut), "{called:?}");
        assert_eq!(ran, Duration::ZERO);
        let (called, _) = short
            .call(Box::new(|| Err("no template".into())), Box::new(|_| true))
            .await;
        assert!(
            matches!(&called, Called::NotPrepared(e) if e == "no template"),
            "{called:?}"
        );
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(CALLS.load(Ordering::SeqCst), 0);

        // One lane, stuck in the plugin: the running call times out a timeout
        // after it started; the one queued behind it is withdrawn unstarted
        // once a timeout passes with no call returning, and never runs.
        let one = Arc::new(lanes(1, Duration::from_millis(300)));
        let hung = {
            let one = one.clone();
            tokio::spawn(async move { one.call(request(2_000), Box::new(|_| true)).await })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        // A caller that goes away while its call is queued (its task aborted).
        let abandoned = {
            let one = one.clone();
            tokio::spawn(async move { one.call(request(0), Box::new(|_| true)).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        abandoned.abort();
        let queued = one.call(request(0), Box::new(|_| true)).await;
        let (hung, ran) = hung.await.expect("task");
        assert!(matches!(hung, Called::TimedOut), "{hung:?}");
        assert!(
            ran >= Duration::from_millis(300) && ran < Duration::from_millis(1_500),
            "ran {ran:?}"
        );
        assert!(matches!(queued.0, Called::Stuck), "{:?}", queued.0);
        assert_eq!(queued.1, Duration::ZERO);
        // Once the plugin returns, the withdrawn calls are skipped, not sent.
        tokio::time::sleep(Duration::from_millis(2_200)).await;
        assert_eq!(CALLS.load(Ordering::SeqCst), 1);
    }

    /// Batches: records each call's delivery ids, answers `sent` with the
    /// delivery id as receipt, and sleeps 100 ms in a single send of step
    /// `block` (to hold its lane while calls queue behind it). Its
    /// `send_batch` goes through [`odd_batch`] first.
    struct Batchy;
    struct BatchyChannel;

    static SINGLES: Mutex<Vec<String>> = Mutex::new(Vec::new());
    static BATCHES: Mutex<Vec<Vec<String>>> = Mutex::new(Vec::new());

    impl Plugin for Batchy {
        const NAME: &'static str = "batchy";
        const VERSION: &'static str = "1";
        type Channel = BatchyChannel;
        fn open(_config: ChannelConfig) -> Result<BatchyChannel, String> {
            Ok(BatchyChannel)
        }
    }

    impl Channel for BatchyChannel {
        const BATCHES: bool = true;

        fn send(&self, request: &DeliveryRequest) -> DeliveryResponse {
            SINGLES.lock().unwrap().push(request.delivery_id.clone());
            if request.step == "block" {
                std::thread::sleep(Duration::from_millis(100));
            }
            DeliveryResponse::Sent {
                receipt: Some(request.delivery_id.clone()),
            }
        }

        fn send_batch(&self, requests: &[DeliveryRequest]) -> Vec<DeliveryResponse> {
            if requests.iter().any(|r| r.step == "boom") {
                panic!("batch exploded");
            }
            requests
                .iter()
                .map(|r| DeliveryResponse::Sent {
                    receipt: Some(r.delivery_id.clone()),
                })
                .collect()
        }
    }

    /// Records the batch, then answers as the SDK would, except for a batch
    /// whose first request's step is `short` (one answer too few),
    /// `garbage` (not JSON) or `teleport` (an item that is no response).
    unsafe extern "C" fn odd_batch(
        channel: *mut std::ffi::c_void,
        requests: Bytes,
        out: *mut OwnedBytes,
    ) -> Status {
        // SAFETY: the host keeps `requests` alive for the call.
        let input = unsafe { requests.as_slice() };
        let decoded: Vec<DeliveryRequest> = serde_json::from_slice(input).unwrap_or_default();
        BATCHES
            .lock()
            .unwrap()
            .push(decoded.iter().map(|r| r.delivery_id.clone()).collect());
        let sent = r#"{"outcome":"sent"}"#;
        let answer = match decoded.first().map(|r| r.step.as_str()) {
            Some("short") => format!("[{}]", vec![sent; decoded.len() - 1].join(",")),
            Some("garbage") => "this is not json".to_string(),
            Some("teleport") => format!(r#"[{sent},{{"outcome":"teleported"}}]"#),
            // SAFETY: the host's arguments, passed on.
            _ => return unsafe { __private::send_batch::<Batchy>(channel, requests, out) },
        };
        // SAFETY: the host passes a writable slot; `free_bytes` of this
        // same binary frees it.
        unsafe { out.write(OwnedBytes::from_vec(answer.into_bytes())) };
        STATUS_OK
    }

    static BATCHY: StaticVTable = StaticVTable(PluginVTable {
        send_batch: Some(odd_batch),
        ..__private::vtable::<Batchy>()
    });
    /// The same plugin as built before `send_batch` was appended: the host
    /// must not read past `struct_size`.
    static BATCHY_BEFORE_BATCHES: StaticVTable = StaticVTable(PluginVTable {
        struct_size: MIN_VTABLE_SIZE as u32,
        send_batch: Some(odd_batch),
        ..__private::vtable::<Batchy>()
    });
    /// The same plugin without `send_batch`.
    static BATCHY_WITHOUT_BATCHES: StaticVTable = StaticVTable(PluginVTable {
        send_batch: None,
        ..__private::vtable::<Batchy>()
    });

    fn labelled(id: &str, step: &str) -> Prepare {
        let mut request: DeliveryRequest =
            serde_json::from_slice(&request_bytes(0)).expect("request");
        request.delivery_id = id.to_string();
        request.step = step.to_string();
        let bytes = serde_json::to_vec(&request).expect("json");
        Box::new(move || Ok(bytes))
    }

    /// A call queued behind the one that holds the lane.
    enum Queued {
        Call(Prepare, MayStart),
        /// Its caller goes away (its task aborted) while it is queued.
        Abandoned(Prepare),
    }

    fn call(id: &str, step: &str) -> Queued {
        Queued::Call(labelled(id, step), Box::new(|_| true))
    }

    /// Holds the only lane of `lanes` with a single call, queues `queued`
    /// behind it in order, and gives what became of each (`None` for the
    /// abandoned ones).
    async fn behind_a_busy_lane(lanes: &Arc<Lanes>, queued: Vec<Queued>) -> Vec<Option<Called>> {
        let blocker = {
            let lanes = lanes.clone();
            tokio::spawn(async move {
                lanes
                    .call(labelled("blocker", "block"), Box::new(|_| true))
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(30)).await;
        let mut calls = Vec::new();
        for queued in queued {
            let lanes = lanes.clone();
            match queued {
                Queued::Call(prepare, may_start) => calls.push(Some(tokio::spawn(async move {
                    lanes.call(prepare, may_start).await.0
                }))),
                Queued::Abandoned(prepare) => {
                    let task =
                        tokio::spawn(
                            async move { lanes.call(prepare, Box::new(|_| true)).await.0 },
                        );
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    task.abort();
                    calls.push(None);
                }
            }
            // Queued in this order.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let (blocked, _) = blocker.await.expect("blocker");
        assert!(matches!(blocked, Called::Returned(Ok(_))), "{blocked:?}");
        let mut called = Vec::new();
        for call in calls {
            called.push(match call {
                Some(task) => Some(task.await.expect("task")),
                None => None,
            });
        }
        called
    }

    /// The receipt of a call's answer.
    fn receipt(called: &Option<Called>) -> Option<String> {
        let Some(Called::Returned(Ok(bytes))) = called else {
            panic!("not answered: {called:?}");
        };
        match serde_json::from_slice(bytes).expect("response") {
            DeliveryResponse::Sent { receipt } => receipt,
            other => panic!("not sent: {other:?}"),
        }
    }

    fn taken<T>(calls: &Mutex<Vec<T>>) -> Vec<T> {
        std::mem::take(&mut *calls.lock().unwrap())
    }

    #[test]
    fn a_lane_takes_its_share_of_the_queue() {
        let table = [
            // (queued, lanes) → taken along
            ((0, 1), 0),
            ((5, 1), 5),
            ((1, 2), 0),
            ((7, 2), 3),
            ((64, 4), 16),
            ((100, 1), MAX_BATCH - 1),
            ((3, 0), 3),
        ];
        for ((queued, lanes), want) in table {
            assert_eq!(
                batch_share(queued, lanes),
                want,
                "{queued} queued, {lanes} lanes"
            );
        }
    }

    /// The statics are shared, so the scenarios run in one test, in turn.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn queued_calls_reach_a_batching_plugin_together_each_answered_its_own() {
        let one = Arc::new(lanes_of(&BATCHY.0, 1, Duration::from_millis(500)));

        // Five calls queued behind a busy lane: one batch, in order, each
        // caller answered with its own item.
        let ids = ["a", "b", "c", "d", "e"];
        let called =
            behind_a_busy_lane(&one, ids.iter().map(|id| call(id, "send")).collect()).await;
        let receipts: Vec<_> = called.iter().map(receipt).collect();
        assert_eq!(receipts, ids.map(|id| Some(id.to_string())));
        assert_eq!(taken(&SINGLES), ["blocker"], "alone, a call is one send");
        assert_eq!(taken(&BATCHES), [ids.map(String::from).to_vec()]);

        // Calls refused, not prepared, withdrawn, or given up while being
        // prepared are not in the batch. The one prepared for 700 ms of a
        // 500 ms timeout is given up by its caller.
        let slow: Prepare = Box::new(|| {
            std::thread::sleep(Duration::from_millis(700));
            labelled("slow", "send")()
        });
        let called = behind_a_busy_lane(
            &one,
            vec![
                Queued::Call(labelled("refused", "send"), Box::new(|_| false)),
                Queued::Call(Box::new(|| Err("no template".into())), Box::new(|_| true)),
                Queued::Abandoned(labelled("abandoned", "send")),
                Queued::Call(slow, Box::new(|_| true)),
                call("x", "send"),
                call("y", "send"),
            ],
        )
        .await;
        assert!(
            matches!(called[0], Some(Called::Refused)),
            "{:?}",
            called[0]
        );
        assert!(
            matches!(&called[1], Some(Called::NotPrepared(e)) if e == "no template"),
            "{:?}",
            called[1]
        );
        assert!(called[2].is_none());
        assert!(
            matches!(called[3], Some(Called::PrepareTimedOut)),
            "{:?}",
            called[3]
        );
        assert_eq!(receipt(&called[4]).as_deref(), Some("x"));
        assert_eq!(receipt(&called[5]).as_deref(), Some("y"));
        assert_eq!(taken(&SINGLES), ["blocker"]);
        assert_eq!(taken(&BATCHES), [["x", "y"]]);

        // An answer of the wrong length, not JSON, or with an item that is
        // no response: every item gets the same error (any may have gone
        // out); a panic in the batch is contained, and every item fails.
        for (step, want) in [
            ("short", "1 responses to a batch of 2"),
            ("garbage", "expected ident at line 1 column 2"),
            ("teleport", "unknown variant `teleported`"),
        ] {
            let called = behind_a_busy_lane(&one, vec![call("p", step), call("q", "send")]).await;
            for called in &called {
                assert!(
                    matches!(called, Some(Called::Returned(Err(CallError::BadBatchAnswer { reason, .. }))) if reason.contains(want)),
                    "{step}: {called:?}"
                );
            }
            assert_eq!(taken(&BATCHES), [["p", "q"]], "{step}");
        }
        let called = behind_a_busy_lane(&one, vec![call("p", "send"), call("q", "boom")]).await;
        for called in &called {
            assert!(
                matches!(called, Some(Called::Returned(Err(CallError::BatchFailed(m)))) if m == "plugin panicked: batch exploded"),
                "{called:?}"
            );
        }
        assert_eq!(taken(&BATCHES), [["p", "q"]]);
        taken(&SINGLES);

        // A plugin built before `send_batch` was appended, or without it:
        // one send per call, as before.
        for vtable in [&BATCHY_BEFORE_BATCHES.0, &BATCHY_WITHOUT_BATCHES.0] {
            let old = Arc::new(lanes_of(vtable, 1, Duration::from_millis(500)));
            let called = behind_a_busy_lane(&old, vec![call("a", "send"), call("b", "send")]).await;
            let receipts: Vec<_> = called.iter().map(receipt).collect();
            assert_eq!(receipts, [Some("a".to_string()), Some("b".to_string())]);
            assert_eq!(taken(&SINGLES), ["blocker", "a", "b"]);
            assert!(taken(&BATCHES).is_empty());
        }
    }
}
