//! The unsafe edge: loading plugin libraries and calling through their vtable.
//!
//! Everything here upholds the ownership rules of `plugins/api` (ABI.md):
//! borrowed buffers live for the call, plugin-owned buffers go back through the
//! plugin's own `free_bytes`, channel handles are closed exactly once.
//! Libraries are never unloaded: `dlclose` of Rust code with thread-locals is
//! unsound in practice, so a loaded library is leaked on purpose.

use std::ffi::c_void;
use std::path::{Path, PathBuf};

use dunningd_plugin_api::{
    ABI_VERSION, Bytes, ENTRY_SYMBOL, EntryFn, MIN_VTABLE_SIZE, OwnedBytes, PluginVTable,
    STATUS_ERROR, STATUS_OK, STATUS_PANICKED, SendFn, Status,
};

use dunningd_plugin_api::wire::DeliveryResponse;

use super::PluginError;

/// A loaded plugin library: what it says about itself, and the functions of
/// its vtable, copied out of it (only the members its `struct_size` covers
/// are ever read: a plugin built before a member was appended has a
/// smaller table).
pub struct Library {
    pub path: PathBuf,
    pub name: String,
    pub version: String,
    pub abi_version: u32,
    open: unsafe extern "C" fn(Bytes, *mut *mut c_void, *mut OwnedBytes) -> Status,
    send: SendFn,
    close: unsafe extern "C" fn(*mut c_void),
    free_bytes: unsafe extern "C" fn(OwnedBytes),
    /// Present when the plugin exports it: the host then hands a lane's
    /// queued calls over in one call.
    send_batch: Option<SendFn>,
}

/// How a call through the ABI ended, before its payload is interpreted.
#[derive(Debug, Clone)]
pub enum CallError {
    /// The plugin returned an error status with this message.
    Error(String),
    /// The plugin panicked (the SDK caught it) with this message.
    Panicked(String),
    /// A status code the ABI does not define.
    BadStatus(Status),
    /// The `send_batch` call this delivery was part of failed as a whole
    /// (an error status, a panic, an undefined status; said here): any item
    /// of it may have gone out.
    BatchFailed(String),
    /// The `send_batch` call this delivery was part of answered something
    /// other than an array of one valid response per request (why, and the
    /// start of the answer).
    BadBatchAnswer { reason: String, excerpt: String },
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

impl Library {
    /// Loads the library at `path` and checks its ABI.
    pub fn load(path: &Path) -> Result<Library, PluginError> {
        let fail = |message: String| PluginError::Load {
            path: path.to_path_buf(),
            message,
        };
        // SAFETY: loading runs the library's initialisers. Plugins are trusted
        // code the operator installed in plugin_dir, like any shared library.
        let library = unsafe { libloading::Library::new(path) }.map_err(|e| fail(e.to_string()))?;
        // SAFETY: the symbol's type is fixed by the ABI (EntryFn).
        let entry: EntryFn = unsafe {
            *library.get::<EntryFn>(ENTRY_SYMBOL).map_err(|_| {
                fail("not a dunningd plugin: it does not export 'dunningd_plugin_entry_v1'".into())
            })?
        };
        // SAFETY: calling the entry point with our ABI version, as the ABI says.
        let table = unsafe { entry(ABI_VERSION) };
        if table.is_null() {
            return Err(fail(format!(
                "the plugin refuses ABI version {ABI_VERSION}; rebuild it against this dunningd's plugin API"
            )));
        }
        // Leak the library: its code and the static vtable must live for the
        // rest of the process.
        std::mem::forget(library);
        // SAFETY: a non-null entry result points to the plugin's static
        // vtable, readable as far as its struct_size says.
        unsafe { Library::from_vtable(path, table) }
    }

    /// Checks a vtable (from a library, or built in tests) and copies out
    /// its functions.
    ///
    /// # Safety
    /// `table` points to a vtable whose first two members are readable, and
    /// which stays readable for the life of the process as far as its
    /// `struct_size` says (at least up to `free_bytes`, or it is refused).
    pub unsafe fn from_vtable(
        path: &Path,
        table: *const PluginVTable,
    ) -> Result<Library, PluginError> {
        let fail = |message: String| PluginError::Load {
            path: path.to_path_buf(),
            message,
        };
        // Members are read through the raw pointer, one by one: a table from
        // an older plugin is smaller than `PluginVTable`, so no reference to
        // the whole struct is ever made.
        // SAFETY: the first two members are readable in every ABI version.
        let (abi_version, struct_size) = unsafe {
            (
                (&raw const (*table).abi_version).read(),
                (&raw const (*table).struct_size).read(),
            )
        };
        if abi_version != ABI_VERSION {
            return Err(fail(format!(
                "plugin ABI version {abi_version}, this daemon speaks {ABI_VERSION}"
            )));
        }
        let size = struct_size as usize;
        if size < MIN_VTABLE_SIZE {
            return Err(fail(format!(
                "plugin vtable is {struct_size} bytes, ABI version {ABI_VERSION} needs at least {MIN_VTABLE_SIZE}"
            )));
        }
        // SAFETY: struct_size covers every member up to `free_bytes`; name
        // and version are static strings per the ABI.
        let (name, version, open, send, close, free_bytes) = unsafe {
            (
                text((&raw const (*table).name).read().as_slice()),
                text((&raw const (*table).version).read().as_slice()),
                (&raw const (*table).open).read(),
                (&raw const (*table).send).read(),
                (&raw const (*table).close).read(),
                (&raw const (*table).free_bytes).read(),
            )
        };
        let batch_end =
            std::mem::offset_of!(PluginVTable, send_batch) + std::mem::size_of::<Option<SendFn>>();
        let send_batch = if size >= batch_end {
            // SAFETY: struct_size covers `send_batch`; null reads as None.
            unsafe { (&raw const (*table).send_batch).read() }
        } else {
            None
        };
        Ok(Library {
            path: path.to_path_buf(),
            name,
            version,
            abi_version,
            open,
            send,
            close,
            free_bytes,
            send_batch,
        })
    }

    /// Takes a plugin-owned buffer: copies it and gives it back to the plugin.
    fn take(&self, bytes: OwnedBytes) -> Vec<u8> {
        if bytes.ptr.is_null() {
            return Vec::new();
        }
        // SAFETY: the plugin filled this buffer with `len` readable bytes.
        let copy = unsafe { std::slice::from_raw_parts(bytes.ptr, bytes.len) }.to_vec();
        // SAFETY: returned to the allocator that made it, once.
        unsafe { (self.free_bytes)(bytes) };
        copy
    }

    fn outcome(&self, status: Status, out: OwnedBytes) -> Result<Vec<u8>, CallError> {
        let bytes = self.take(out);
        match status {
            STATUS_OK => Ok(bytes),
            STATUS_ERROR => Err(CallError::Error(text(&bytes))),
            STATUS_PANICKED => Err(CallError::Panicked(text(&bytes))),
            other => Err(CallError::BadStatus(other)),
        }
    }

    /// Opens a channel from its JSON configuration.
    pub fn open(&'static self, config: &[u8]) -> Result<RawChannel, CallError> {
        let mut handle: *mut c_void = std::ptr::null_mut();
        let mut error = OwnedBytes::EMPTY;
        // SAFETY: `config` outlives the call; both out slots are valid.
        let status = unsafe { (self.open)(Bytes::from_slice(config), &mut handle, &mut error) };
        self.outcome(status, error)?;
        if handle.is_null() {
            return Err(CallError::Error("open returned no channel handle".into()));
        }
        Ok(RawChannel {
            library: self,
            handle,
        })
    }
}

/// An open channel handle. Closed when dropped, which happens only after the
/// last in-flight call (each call holds an `Arc` to it).
pub struct RawChannel {
    library: &'static Library,
    handle: *mut c_void,
}

// SAFETY: the ABI requires channels to accept concurrent `send` calls from
// any thread (the SDK enforces `Channel: Send + Sync`).
unsafe impl Send for RawChannel {}
// SAFETY: as above.
unsafe impl Sync for RawChannel {}

impl RawChannel {
    /// One blocking `send` call: a JSON request in, the plugin's JSON out.
    pub fn send(&self, request: &[u8]) -> Result<Vec<u8>, CallError> {
        let mut out = OwnedBytes::EMPTY;
        // SAFETY: a live handle from `open`; `request` outlives the call.
        let status =
            unsafe { (self.library.send)(self.handle, Bytes::from_slice(request), &mut out) };
        self.library.outcome(status, out)
    }

    /// Whether the plugin takes several deliveries in one call.
    pub fn batches(&self) -> bool {
        self.library.send_batch.is_some()
    }

    /// One blocking `send_batch` call for `requests` (each a JSON request),
    /// answered with one result per request, in order: its own item of the
    /// plugin's answer array (as `send` would have answered it), or, when
    /// the call failed as a whole or its answer is not an array of as many
    /// valid responses, the same error for every one. A plugin without
    /// `send_batch` is called once per request.
    pub fn send_batch(&self, requests: &[Vec<u8>]) -> Vec<Result<Vec<u8>, CallError>> {
        let Some(send_batch) = self.library.send_batch else {
            return requests.iter().map(|request| self.send(request)).collect();
        };
        let mut array = Vec::with_capacity(requests.iter().map(|r| r.len() + 1).sum::<usize>() + 1);
        array.push(b'[');
        for (index, request) in requests.iter().enumerate() {
            if index > 0 {
                array.push(b',');
            }
            array.extend_from_slice(request);
        }
        array.push(b']');
        let mut out = OwnedBytes::EMPTY;
        // SAFETY: a live handle from `open`; `array` outlives the call.
        let status = unsafe { send_batch(self.handle, Bytes::from_slice(&array), &mut out) };
        let error = match self.library.outcome(status, out) {
            Ok(answer) => match split(&answer, requests.len()) {
                Ok(items) => return items.into_iter().map(Ok).collect(),
                Err(reason) => CallError::BadBatchAnswer {
                    reason,
                    excerpt: super::excerpt(&answer),
                },
            },
            Err(error) => failed_batch(error),
        };
        vec![Err(error); requests.len()]
    }
}

/// The error every item of a batch gets when the call failed as a whole.
fn failed_batch(error: CallError) -> CallError {
    match error {
        CallError::Error(message) => CallError::BatchFailed(format!("error: {message}")),
        CallError::Panicked(message) => CallError::BatchFailed(message),
        CallError::BadStatus(status) => {
            CallError::BatchFailed(format!("undefined status {status}"))
        }
        // Already a batch's error (`outcome` never makes one).
        batch @ (CallError::BatchFailed(_) | CallError::BadBatchAnswer { .. }) => batch,
    }
}

/// A batch's answer, an array of `count` responses, as each item's own JSON.
/// Each item is decoded here, so that a malformed one fails the whole batch
/// (the answer cannot be trusted to be in order), and encoded again for the
/// per-delivery decoding every answer goes through.
fn split(answer: &[u8], count: usize) -> Result<Vec<Vec<u8>>, String> {
    let responses: Vec<DeliveryResponse> =
        serde_json::from_slice(answer).map_err(|e| e.to_string())?;
    if responses.len() != count {
        return Err(format!(
            "{} responses to a batch of {count}",
            responses.len()
        ));
    }
    responses
        .iter()
        .map(|response| serde_json::to_vec(response).map_err(|e| e.to_string()))
        .collect()
}

impl Drop for RawChannel {
    fn drop(&mut self) {
        // SAFETY: opened by this library, no call in flight (we hold the last
        // reference), closed exactly once.
        unsafe { (self.library.close)(self.handle) };
    }
}
