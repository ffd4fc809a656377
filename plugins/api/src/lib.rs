//! The dunningd channel-plugin ABI, and the Rust SDK that hides it.
//!
//! **API boundary.** This crate is the one source of truth for the binary
//! interface between `dunningd` and its plugins; `ABI.md` and
//! `dunningd_plugin.h` describe the same thing for other languages. Rules:
//!
//! - One exported symbol, [`ENTRY_SYMBOL`], called once with the host's ABI
//!   version. It returns a pointer to a static [`PluginVTable`], or null when
//!   the plugin does not speak that version (the host then refuses to load it:
//!   a wrongly sent dunning letter is worse than a plugin that does not start).
//! - The vtable is append-only: new function pointers are only ever added at
//!   the end, and `struct_size` tells the host how much of it the plugin has.
//!   The host needs [`MIN_VTABLE_SIZE`] (the table as version 1 first
//!   shipped); `send_batch`, added since, is optional.
//! - Payloads are JSON ([`wire`]): fields are only ever added, so the schema
//!   grows without changing the layout.
//! - Memory is freed by whoever allocated it. [`Bytes`] are borrowed for the
//!   duration of one call; [`OwnedBytes`] returned by the plugin are freed
//!   only through the vtable's `free_bytes`.
//!
//! Writing a plugin in Rust:
//!
//! ```
//! use dunningd_plugin_api::{Channel, Plugin, export_plugin};
//! use dunningd_plugin_api::wire::{ChannelConfig, DeliveryRequest, DeliveryResponse};
//!
//! struct Hello;
//! struct HelloChannel;
//!
//! impl Plugin for Hello {
//!     const NAME: &'static str = "hello";
//!     const VERSION: &'static str = "0.1.0";
//!     type Channel = HelloChannel;
//!     fn open(_config: ChannelConfig) -> Result<HelloChannel, String> {
//!         Ok(HelloChannel)
//!     }
//! }
//!
//! impl Channel for HelloChannel {
//!     fn send(&self, request: &DeliveryRequest) -> DeliveryResponse {
//!         eprintln!("hello, {}", request.recipient.customer_id);
//!         DeliveryResponse::Sent { receipt: None }
//!     }
//! }
//!
//! export_plugin!(Hello);
//! ```
//!
//! A channel whose deliveries are cheaper together (one write for many
//! lines) sets [`Channel::BATCHES`] and overrides [`Channel::send_batch`];
//! the exported table then has `send_batch`, and the host hands it what is
//! queued on a lane in one call. Any other channel is called once per
//! delivery, on as many lanes at once as its concurrency.
//!
//! The SDK catches every panic at the boundary (a panic unwinding out of an
//! `extern "C"` function aborts the process), which works only when the
//! plugin is built with `panic = "unwind"`, Rust's default. It prints a
//! plugin's panics on one line with URL credentials hidden ([`redact`]);
//! plugins hide their own secrets in their messages with the same module.

use std::ffi::c_void;

pub mod redact;
pub mod wire;

/// The ABI version this crate speaks. Bumped only for incompatible changes.
pub const ABI_VERSION: u32 = 1;

/// The one symbol a plugin exports, NUL-terminated for `dlsym`.
pub const ENTRY_SYMBOL: &[u8] = b"dunningd_plugin_entry_v1\0";

/// `extern "C" fn(host_abi_version: u32) -> *const PluginVTable`.
pub type EntryFn = unsafe extern "C" fn(host_abi_version: u32) -> *const PluginVTable;

/// `send` and `send_batch`: a channel handle, a borrowed JSON payload, and
/// the slot for the plugin's answer.
pub type SendFn =
    unsafe extern "C" fn(channel: *mut c_void, request: Bytes, out: *mut OwnedBytes) -> Status;

/// A call's result code.
pub type Status = i32;
/// The call succeeded; the output buffer holds its result.
pub const STATUS_OK: Status = 0;
/// The call failed; the output buffer holds a UTF-8 message.
pub const STATUS_ERROR: Status = 1;
/// The plugin panicked; the output buffer holds the panic message.
pub const STATUS_PANICKED: Status = 2;

/// Bytes borrowed from the caller, valid only until the call returns.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Bytes {
    pub ptr: *const u8,
    pub len: usize,
}

impl Bytes {
    pub const fn from_static(s: &'static str) -> Bytes {
        Bytes {
            ptr: s.as_ptr(),
            len: s.len(),
        }
    }

    pub fn from_slice(s: &[u8]) -> Bytes {
        Bytes {
            ptr: s.as_ptr(),
            len: s.len(),
        }
    }

    /// # Safety
    /// `ptr` must point to `len` readable bytes that outlive `'a`
    /// (or `len` must be 0).
    pub unsafe fn as_slice<'a>(self) -> &'a [u8] {
        if self.len == 0 || self.ptr.is_null() {
            return &[];
        }
        // SAFETY: the caller guarantees ptr/len describe live, readable memory.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

/// Bytes allocated by the plugin and handed to the host, which must give
/// them back through the vtable's `free_bytes` exactly once.
#[repr(C)]
pub struct OwnedBytes {
    pub ptr: *mut u8,
    pub len: usize,
    /// Allocation capacity, for the plugin's own deallocator.
    pub cap: usize,
}

impl OwnedBytes {
    pub const EMPTY: OwnedBytes = OwnedBytes {
        ptr: std::ptr::null_mut(),
        len: 0,
        cap: 0,
    };

    pub fn from_vec(v: Vec<u8>) -> OwnedBytes {
        let mut v = std::mem::ManuallyDrop::new(v);
        OwnedBytes {
            ptr: v.as_mut_ptr(),
            len: v.len(),
            cap: v.capacity(),
        }
    }

    /// # Safety
    /// Only in the library that made these bytes with [`OwnedBytes::from_vec`],
    /// and only once.
    pub unsafe fn into_vec(self) -> Vec<u8> {
        if self.ptr.is_null() {
            return Vec::new();
        }
        // SAFETY: ptr/len/cap came from a Vec of this library's allocator.
        unsafe { Vec::from_raw_parts(self.ptr, self.len, self.cap) }
    }
}

/// The table of functions a plugin exports. `#[repr(C)]`, append-only.
#[repr(C)]
pub struct PluginVTable {
    /// Must equal the host's [`ABI_VERSION`].
    pub abi_version: u32,
    /// `size_of::<PluginVTable>()` as the plugin was built: the host refuses a
    /// table smaller than it needs.
    pub struct_size: u32,
    /// Static UTF-8 strings, valid for the life of the process.
    pub name: Bytes,
    pub version: Bytes,
    /// Opens a channel from a JSON [`wire::ChannelConfig`]. On `STATUS_OK`
    /// `*out_channel` is an opaque handle owned by the plugin until `close`;
    /// otherwise `*out_error` holds a message. May be called from any thread.
    pub open: unsafe extern "C" fn(
        config: Bytes,
        out_channel: *mut *mut c_void,
        out_error: *mut OwnedBytes,
    ) -> Status,
    /// Sends one JSON [`wire::DeliveryRequest`]. On `STATUS_OK`
    /// `*out_response` holds a JSON [`wire::DeliveryResponse`]; otherwise a
    /// message. Called concurrently from several threads on one handle.
    pub send: unsafe extern "C" fn(
        channel: *mut c_void,
        request: Bytes,
        out_response: *mut OwnedBytes,
    ) -> Status,
    /// Releases a channel; no call on it is in flight or follows.
    pub close: unsafe extern "C" fn(channel: *mut c_void),
    /// Frees bytes this plugin returned.
    pub free_bytes: unsafe extern "C" fn(bytes: OwnedBytes),
    /// Optional (null, or beyond a smaller `struct_size`: the host calls
    /// `send` once per delivery). Sends a JSON array of
    /// [`wire::DeliveryRequest`]s. On `STATUS_OK` `*out_responses` holds a
    /// JSON array of as many [`wire::DeliveryResponse`]s, in the same order;
    /// one item's failure is that item's response. Otherwise a message, and
    /// every item's outcome is `unknown` (any may have gone out). Called
    /// concurrently from several threads on one handle, like `send`.
    pub send_batch: Option<
        unsafe extern "C" fn(
            channel: *mut c_void,
            requests: Bytes,
            out_responses: *mut OwnedBytes,
        ) -> Status,
    >,
}

/// The size of [`PluginVTable`] as ABI version 1 first shipped, up to and
/// including `free_bytes`: the least a host accepts. Fields after it are
/// read only when a plugin's `struct_size` covers them.
pub const MIN_VTABLE_SIZE: usize = std::mem::offset_of!(PluginVTable, send_batch);

/// A `PluginVTable` in a `static`: its raw pointers are to static strings and
/// functions, which every thread may read.
#[repr(transparent)]
pub struct StaticVTable(pub PluginVTable);

// SAFETY: the vtable holds pointers to 'static strings and to functions; it is
// never mutated.
unsafe impl Sync for StaticVTable {}

/// A channel plugin: a name, a version and how to open a channel.
pub trait Plugin: 'static {
    const NAME: &'static str;
    const VERSION: &'static str;
    type Channel: Channel;
    /// Opens one configured channel (`channels.<name>` in the daemon config).
    /// An error refuses the configuration with this message.
    fn open(config: wire::ChannelConfig) -> Result<Self::Channel, String>;
}

/// One open channel. The host calls `send` (and `send_batch`, if the channel
/// batches) from several threads at once.
pub trait Channel: Send + Sync + 'static {
    /// Whether the exported vtable has `send_batch`, so that the host hands
    /// this channel what is queued in one call. Only for a channel for which
    /// many deliveries in one call cost less than each on its own (a file
    /// written once): a batch runs on one of the channel's lanes, in turn,
    /// so a channel that waits on a provider per message would only
    /// serialise what its other lanes could send in parallel.
    const BATCHES: bool = false;

    fn send(&self, request: &wire::DeliveryRequest) -> wire::DeliveryResponse;

    /// Sends several deliveries, answering one response per request, in the
    /// same order (an answer of another length fails the whole call, and
    /// every item becomes `unknown`). Called only when
    /// [`Channel::BATCHES`] is true; by default each request is `send`.
    fn send_batch(&self, requests: &[wire::DeliveryRequest]) -> Vec<wire::DeliveryResponse> {
        requests.iter().map(|request| self.send(request)).collect()
    }
}

/// Exports a [`Plugin`] as a dunningd plugin library. Use once per cdylib.
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        static __DUNNINGD_VTABLE: $crate::StaticVTable =
            $crate::StaticVTable($crate::__private::vtable::<$plugin>());

        /// The plugin's entry point (see `ABI.md`).
        #[unsafe(no_mangle)]
        pub extern "C" fn dunningd_plugin_entry_v1(
            host_abi_version: u32,
        ) -> *const $crate::PluginVTable {
            if host_abi_version != $crate::ABI_VERSION {
                return ::std::ptr::null();
            }
            $crate::__private::print_panics_redacted(<$plugin as $crate::Plugin>::NAME);
            &__DUNNINGD_VTABLE.0
        }
    };
}

/// The glue the macro expands to. Not part of the API.
#[doc(hidden)]
pub mod __private {
    use std::ffi::c_void;
    use std::panic::{AssertUnwindSafe, catch_unwind};

    use super::*;

    /// The vtable [`export_plugin!`](crate::export_plugin) exports for `P`:
    /// `send_batch` only when its channel batches.
    pub const fn vtable<P: Plugin>() -> PluginVTable {
        PluginVTable {
            abi_version: ABI_VERSION,
            struct_size: std::mem::size_of::<PluginVTable>() as u32,
            name: Bytes::from_static(P::NAME),
            version: Bytes::from_static(P::VERSION),
            open: open::<P>,
            send: send::<P>,
            close: close::<P>,
            free_bytes,
            send_batch: if <P::Channel as Channel>::BATCHES {
                Some(send_batch::<P>)
            } else {
                None
            },
        }
    }

    /// Replaces this library's panic hook (a plugin has its own copy of std,
    /// so its own hook) with one that prints the panic on one line with URL
    /// credentials hidden, as the host logs everything else. The panic
    /// itself still becomes the delivery's outcome (`catch_unwind` below).
    pub fn print_panics_redacted(plugin: &'static str) {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            std::panic::set_hook(Box::new(move |info| {
                let (message, location) = crate::redact::panic_parts(info);
                eprintln!(
                    "plugin '{plugin}' panicked at {location}: {}",
                    crate::redact::urls(message)
                );
            }));
        });
    }

    fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
        if let Some(s) = payload.downcast_ref::<&str>() {
            format!("plugin panicked: {s}")
        } else if let Some(s) = payload.downcast_ref::<String>() {
            format!("plugin panicked: {s}")
        } else {
            "plugin panicked".to_string()
        }
    }

    /// # Safety
    /// `out` must be valid for a write.
    unsafe fn put(out: *mut OwnedBytes, bytes: Vec<u8>) {
        if !out.is_null() {
            // SAFETY: the host passes a valid, writable OwnedBytes slot.
            unsafe { out.write(OwnedBytes::from_vec(bytes)) };
        }
    }

    /// # Safety
    /// Called by the host per the ABI: `config` readable for the call,
    /// `out_channel` and `out_error` writable.
    pub unsafe extern "C" fn open<P: Plugin>(
        config: Bytes,
        out_channel: *mut *mut c_void,
        out_error: *mut OwnedBytes,
    ) -> Status {
        // SAFETY: the host keeps `config` alive for the duration of the call.
        let input = unsafe { config.as_slice() };
        let result = catch_unwind(AssertUnwindSafe(|| {
            let config: wire::ChannelConfig = serde_json::from_slice(input)
                .map_err(|e| format!("invalid channel config JSON: {e}"))?;
            P::open(config)
        }));
        match result {
            Ok(Ok(channel)) => {
                let handle = Box::into_raw(Box::new(channel)) as *mut c_void;
                // SAFETY: out_channel is a valid slot provided by the host.
                unsafe { out_channel.write(handle) };
                STATUS_OK
            }
            Ok(Err(message)) => {
                // SAFETY: out_error is a valid slot provided by the host.
                unsafe { put(out_error, message.into_bytes()) };
                STATUS_ERROR
            }
            Err(payload) => {
                // SAFETY: as above.
                unsafe { put(out_error, panic_message(&*payload).into_bytes()) };
                STATUS_PANICKED
            }
        }
    }

    /// # Safety
    /// `channel` must come from `open::<P>` and not be closed; `request`
    /// readable for the call; `out_response` writable.
    pub unsafe extern "C" fn send<P: Plugin>(
        channel: *mut c_void,
        request: Bytes,
        out_response: *mut OwnedBytes,
    ) -> Status {
        // SAFETY: the host keeps `request` alive for the duration of the call.
        let input = unsafe { request.as_slice() };
        // SAFETY: `channel` is a live Box<P::Channel> from `open`; only shared
        // references are made, and Channel is Sync.
        let channel = unsafe { &*(channel as *const P::Channel) };
        let result = catch_unwind(AssertUnwindSafe(|| {
            let request: wire::DeliveryRequest = serde_json::from_slice(input)
                .map_err(|e| format!("invalid delivery request JSON: {e}"))?;
            let response = channel.send(&request);
            serde_json::to_vec(&response).map_err(|e| format!("cannot encode the response: {e}"))
        }));
        match result {
            Ok(Ok(json)) => {
                // SAFETY: out_response is a valid slot provided by the host.
                unsafe { put(out_response, json) };
                STATUS_OK
            }
            Ok(Err(message)) => {
                // SAFETY: as above.
                unsafe { put(out_response, message.into_bytes()) };
                STATUS_ERROR
            }
            Err(payload) => {
                // SAFETY: as above.
                unsafe { put(out_response, panic_message(&*payload).into_bytes()) };
                STATUS_PANICKED
            }
        }
    }

    /// # Safety
    /// `channel` must come from `open::<P>` and not be closed; `requests`
    /// readable for the call; `out_responses` writable.
    pub unsafe extern "C" fn send_batch<P: Plugin>(
        channel: *mut c_void,
        requests: Bytes,
        out_responses: *mut OwnedBytes,
    ) -> Status {
        // SAFETY: the host keeps `requests` alive for the duration of the call.
        let input = unsafe { requests.as_slice() };
        // SAFETY: `channel` is a live Box<P::Channel> from `open`; only shared
        // references are made, and Channel is Sync.
        let channel = unsafe { &*(channel as *const P::Channel) };
        let result = catch_unwind(AssertUnwindSafe(|| {
            let requests = decode_requests(input)?;
            let responses = channel.send_batch(&requests);
            if responses.len() != requests.len() {
                return Err(format!(
                    "send_batch answered {} responses to {} requests",
                    responses.len(),
                    requests.len()
                ));
            }
            serde_json::to_vec(&responses).map_err(|e| format!("cannot encode the responses: {e}"))
        }));
        match result {
            Ok(Ok(json)) => {
                // SAFETY: out_responses is a valid slot provided by the host.
                unsafe { put(out_responses, json) };
                STATUS_OK
            }
            Ok(Err(message)) => {
                // SAFETY: as above.
                unsafe { put(out_responses, message.into_bytes()) };
                STATUS_ERROR
            }
            Err(payload) => {
                // SAFETY: as above.
                unsafe { put(out_responses, panic_message(&*payload).into_bytes()) };
                STATUS_PANICKED
            }
        }
    }

    /// A batch's JSON array of requests, decoded item by item so that an
    /// error names the item it is in.
    fn decode_requests(input: &[u8]) -> Result<Vec<wire::DeliveryRequest>, String> {
        let item = std::cell::Cell::new(None);
        let mut json = serde_json::Deserializer::from_slice(input);
        let decoded = serde::de::DeserializeSeed::deserialize(Requests { item: &item }, &mut json)
            .and_then(|requests| json.end().map(|()| requests));
        decoded.map_err(|e| match item.get() {
            Some(index) => format!("invalid delivery request JSON in item {index}: {e}"),
            None => format!("invalid delivery request JSON: {e}"),
        })
    }

    /// Decodes an array of requests, noting in `item` the index of the one
    /// being decoded.
    struct Requests<'a> {
        item: &'a std::cell::Cell<Option<usize>>,
    }

    impl<'de> serde::de::DeserializeSeed<'de> for Requests<'_> {
        type Value = Vec<wire::DeliveryRequest>;

        fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_seq(self)
        }
    }

    impl<'de> serde::de::Visitor<'de> for Requests<'_> {
        type Value = Vec<wire::DeliveryRequest>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an array of delivery requests")
        }

        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Self::Value, A::Error> {
            let mut requests = Vec::new();
            loop {
                self.item.set(Some(requests.len()));
                match seq.next_element()? {
                    Some(request) => requests.push(request),
                    None => break,
                }
            }
            self.item.set(None);
            Ok(requests)
        }
    }

    /// # Safety
    /// `channel` must come from `open::<P>`, with no call in flight; it is
    /// invalid afterwards.
    pub unsafe extern "C" fn close<P: Plugin>(channel: *mut c_void) {
        if channel.is_null() {
            return;
        }
        // SAFETY: the handle is the Box made in `open`, released once.
        let boxed = unsafe { Box::from_raw(channel as *mut P::Channel) };
        let _ = catch_unwind(AssertUnwindSafe(move || drop(boxed)));
    }

    /// # Safety
    /// `bytes` must come from this library and be freed once.
    pub unsafe extern "C" fn free_bytes(bytes: OwnedBytes) {
        // SAFETY: made by OwnedBytes::from_vec in this library.
        drop(unsafe { bytes.into_vec() });
    }
}

#[cfg(test)]
mod tests {
    use super::wire::*;
    use super::*;

    struct Echo;
    struct EchoChannel(String);

    impl Plugin for Echo {
        const NAME: &'static str = "echo";
        const VERSION: &'static str = "1.2.3";
        type Channel = EchoChannel;
        fn open(config: ChannelConfig) -> Result<EchoChannel, String> {
            match config.settings["mode"].as_str() {
                Some("refuse") => Err("mode 'refuse' refuses".into()),
                Some("panic-open") => panic!("cannot open"),
                _ => Ok(EchoChannel(config.channel)),
            }
        }
    }

    impl Channel for EchoChannel {
        fn send(&self, request: &DeliveryRequest) -> DeliveryResponse {
            if request.step == "boom" {
                panic!("step {} exploded", request.step);
            }
            DeliveryResponse::Sent {
                receipt: Some(format!("{}:{}", self.0, request.idempotency_key)),
            }
        }
    }

    export_plugin!(Echo);

    fn request(step: &str) -> Vec<u8> {
        serde_json::to_vec(&DeliveryRequest {
            delivery_id: "d1".into(),
            idempotency_key: "k1".into(),
            channel: "email".into(),
            case_id: "c1".into(),
            workflow: "w".into(),
            step: step.into(),
            template: "t".into(),
            attempt: 1,
            recipient: Recipient::default(),
            message: Default::default(),
            data: serde_json::Value::Null,
            subject: "s".into(),
        })
        .unwrap()
    }

    /// Drives the exported vtable exactly as the host does.
    fn call(vtable: &PluginVTable, channel: *mut c_void, req: &[u8]) -> (Status, String) {
        let mut out = OwnedBytes::EMPTY;
        // SAFETY: valid handle, borrowed request, writable out slot.
        let status = unsafe { (vtable.send)(channel, Bytes::from_slice(req), &mut out) };
        let text = unsafe { std::slice::from_raw_parts(out.ptr, out.len) }.to_vec();
        // SAFETY: bytes returned by this plugin, freed once.
        unsafe { (vtable.free_bytes)(out) };
        (status, String::from_utf8(text).unwrap())
    }

    fn open(
        vtable: &PluginVTable,
        settings: serde_json::Value,
    ) -> Result<*mut c_void, (Status, String)> {
        let config = serde_json::to_vec(&ChannelConfig {
            channel: "email".into(),
            settings,
        })
        .unwrap();
        let mut handle = std::ptr::null_mut();
        let mut err = OwnedBytes::EMPTY;
        // SAFETY: borrowed config, writable slots.
        let status = unsafe { (vtable.open)(Bytes::from_slice(&config), &mut handle, &mut err) };
        if status == STATUS_OK {
            return Ok(handle);
        }
        let text = unsafe { std::slice::from_raw_parts(err.ptr, err.len) }.to_vec();
        unsafe { (vtable.free_bytes)(err) };
        Err((status, String::from_utf8(text).unwrap()))
    }

    #[test]
    fn the_exported_table_sends_refuses_and_contains_panics() {
        assert!(
            dunningd_plugin_entry_v1(ABI_VERSION + 1).is_null(),
            "a wrong version is refused"
        );
        // SAFETY: the entry returned a pointer to a static vtable.
        let vtable = unsafe { &*dunningd_plugin_entry_v1(ABI_VERSION) };
        assert_eq!(
            vtable.struct_size as usize,
            std::mem::size_of::<PluginVTable>()
        );
        assert_eq!(unsafe { vtable.name.as_slice() }, b"echo");

        let channel = open(vtable, serde_json::json!({})).expect("open");
        let (status, json) = call(vtable, channel, &request("first"));
        assert_eq!(status, STATUS_OK);
        let response: DeliveryResponse = serde_json::from_str(&json).unwrap();
        assert_eq!(
            response,
            DeliveryResponse::Sent {
                receipt: Some("email:k1".into())
            }
        );

        assert_eq!(
            call(vtable, channel, &request("boom")),
            (
                STATUS_PANICKED,
                "plugin panicked: step boom exploded".into()
            )
        );
        let (status, message) = call(vtable, channel, b"{not json");
        assert_eq!(status, STATUS_ERROR);
        assert!(
            message.starts_with("invalid delivery request JSON"),
            "{message}"
        );
        // SAFETY: opened above, nothing in flight.
        unsafe { (vtable.close)(channel) };

        assert_eq!(
            open(vtable, serde_json::json!({"mode": "refuse"})).err(),
            Some((STATUS_ERROR, "mode 'refuse' refuses".into()))
        );
        assert_eq!(
            open(vtable, serde_json::json!({"mode": "panic-open"})).err(),
            Some((STATUS_PANICKED, "plugin panicked: cannot open".into()))
        );
    }

    /// Batches: answers each request with its idempotency key, except that
    /// a step `short` drops the last answer and a step `boom` panics.
    struct Batcher;
    struct BatcherChannel;

    impl Plugin for Batcher {
        const NAME: &'static str = "batcher";
        const VERSION: &'static str = "1";
        type Channel = BatcherChannel;
        fn open(_config: ChannelConfig) -> Result<BatcherChannel, String> {
            Ok(BatcherChannel)
        }
    }

    impl Channel for BatcherChannel {
        const BATCHES: bool = true;

        fn send(&self, request: &DeliveryRequest) -> DeliveryResponse {
            DeliveryResponse::Skipped {
                reason: format!("single {}", request.idempotency_key),
            }
        }

        fn send_batch(&self, requests: &[DeliveryRequest]) -> Vec<DeliveryResponse> {
            let mut answers: Vec<DeliveryResponse> = requests
                .iter()
                .map(|request| {
                    if request.step == "boom" {
                        panic!("batch exploded");
                    }
                    DeliveryResponse::Sent {
                        receipt: Some(request.idempotency_key.clone()),
                    }
                })
                .collect();
            if requests.iter().any(|request| request.step == "short") {
                answers.pop();
            }
            answers
        }
    }

    fn batch_request(step: &str, key: &str) -> serde_json::Value {
        let mut request: serde_json::Value = serde_json::from_slice(&request(step)).unwrap();
        request["idempotency_key"] = key.into();
        request
    }

    fn call_batch(vtable: &PluginVTable, requests: &[u8]) -> (Status, String) {
        let send_batch = vtable.send_batch.expect("send_batch");
        let channel = open(vtable, serde_json::json!({})).expect("open");
        let mut out = OwnedBytes::EMPTY;
        // SAFETY: valid handle, borrowed requests, writable out slot.
        let status = unsafe { send_batch(channel, Bytes::from_slice(requests), &mut out) };
        let text = unsafe { std::slice::from_raw_parts(out.ptr, out.len) }.to_vec();
        // SAFETY: bytes returned by this plugin, freed once; nothing in flight.
        unsafe { (vtable.free_bytes)(out) };
        unsafe { (vtable.close)(channel) };
        (status, String::from_utf8(text).unwrap())
    }

    #[test]
    fn the_exported_table_batches_only_when_the_channel_opts_in() {
        // SAFETY: the entry returned a pointer to a static vtable.
        let echo = unsafe { &*dunningd_plugin_entry_v1(ABI_VERSION) };
        assert!(echo.send_batch.is_none(), "Echo does not batch");
        assert!(__private::vtable::<Echo>().send_batch.is_none());
        assert!(MIN_VTABLE_SIZE < std::mem::size_of::<PluginVTable>());

        let batcher = __private::vtable::<Batcher>();
        assert_eq!(
            batcher.struct_size as usize,
            std::mem::size_of::<PluginVTable>()
        );
        let two = serde_json::json!([batch_request("a", "k1"), batch_request("b", "k2")]);
        let (status, json) = call_batch(&batcher, two.to_string().as_bytes());
        assert_eq!(status, STATUS_OK, "{json}");
        let answers: Vec<DeliveryResponse> = serde_json::from_str(&json).unwrap();
        assert_eq!(
            answers,
            [
                DeliveryResponse::Sent {
                    receipt: Some("k1".into())
                },
                DeliveryResponse::Sent {
                    receipt: Some("k2".into())
                },
            ]
        );
        assert_eq!(call_batch(&batcher, b"[]"), (STATUS_OK, "[]".into()));

        let mut broken = serde_json::json!([batch_request("a", "k1"), batch_request("b", "k2")]);
        broken[1].as_object_mut().unwrap().remove("step");
        let (status, message) = call_batch(&batcher, broken.to_string().as_bytes());
        assert_eq!(status, STATUS_ERROR);
        assert!(
            message.starts_with("invalid delivery request JSON in item 1: missing field `step`"),
            "{message}"
        );
        let (status, message) = call_batch(&batcher, br#"{"not":"an array"}"#);
        assert_eq!(status, STATUS_ERROR);
        assert!(
            message.starts_with("invalid delivery request JSON: invalid type: map"),
            "{message}"
        );

        let short = serde_json::json!([batch_request("a", "k1"), batch_request("short", "k2")]);
        assert_eq!(
            call_batch(&batcher, short.to_string().as_bytes()),
            (
                STATUS_ERROR,
                "send_batch answered 1 responses to 2 requests".into()
            )
        );
        let boom = serde_json::json!([batch_request("a", "k1"), batch_request("boom", "k2")]);
        assert_eq!(
            call_batch(&batcher, boom.to_string().as_bytes()),
            (STATUS_PANICKED, "plugin panicked: batch exploded".into())
        );
    }

    #[test]
    fn responses_have_a_stable_json_shape() {
        let table = [
            (
                DeliveryResponse::Sent {
                    receipt: Some("r".into()),
                },
                r#"{"outcome":"sent","receipt":"r"}"#,
            ),
            (
                DeliveryResponse::Retryable {
                    error: "429".into(),
                    retry_after_secs: Some(30),
                },
                r#"{"outcome":"retryable","error":"429","retry_after_secs":30}"#,
            ),
            (
                DeliveryResponse::Permanent {
                    error: "21211".into(),
                },
                r#"{"outcome":"permanent","error":"21211"}"#,
            ),
            (
                DeliveryResponse::Unknown {
                    error: "timeout".into(),
                },
                r#"{"outcome":"unknown","error":"timeout"}"#,
            ),
            (
                DeliveryResponse::Skipped {
                    reason: "no phone".into(),
                },
                r#"{"outcome":"skipped","reason":"no phone"}"#,
            ),
        ];
        for (response, json) in table {
            assert_eq!(serde_json::to_string(&response).unwrap(), json);
            assert_eq!(
                serde_json::from_str::<DeliveryResponse>(json).unwrap(),
                response
            );
        }
    }
}
