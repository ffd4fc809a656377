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

use super::PluginError;

/// A loaded plugin library: what it says about itself, and the functions of
/// its vtable, copied out of it (only the members its `struct_size` covers
/// are ever read: a plugin built before a member was appended has a
/// smaller table; nothing calls `send_batch` yet).
pub struct Library {
    pub path: PathBuf,
    pub name: String,
    pub version: String,
    pub abi_version: u32,
    open: unsafe extern "C" fn(Bytes, *mut *mut c_void, *mut OwnedBytes) -> Status,
    send: SendFn,
    close: unsafe extern "C" fn(*mut c_void),
    free_bytes: unsafe extern "C" fn(OwnedBytes),
}

/// How a call through the ABI ended, before its payload is interpreted.
#[derive(Debug)]
pub enum CallError {
    /// The plugin returned an error status with this message.
    Error(String),
    /// The plugin panicked (the SDK caught it) with this message.
    Panicked(String),
    /// A status code the ABI does not define.
    BadStatus(Status),
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
        Ok(Library {
            path: path.to_path_buf(),
            name,
            version,
            abi_version,
            open,
            send,
            close,
            free_bytes,
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
}

impl Drop for RawChannel {
    fn drop(&mut self) {
        // SAFETY: opened by this library, no call in flight (we hold the last
        // reference), closed exactly once.
        unsafe { (self.library.close)(self.handle) };
    }
}
