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
    ABI_VERSION, Bytes, ENTRY_SYMBOL, EntryFn, OwnedBytes, PluginVTable, STATUS_ERROR, STATUS_OK,
    STATUS_PANICKED, Status,
};

use super::PluginError;

/// A loaded plugin library: its vtable and what it says about itself.
pub struct Library {
    pub path: PathBuf,
    pub name: String,
    pub version: String,
    pub abi_version: u32,
    vtable: &'static PluginVTable,
}

// SAFETY: the vtable is the plugin's immutable static table of function
// pointers and static strings; the ABI requires its functions to be callable
// from any thread.
unsafe impl Send for Library {}
// SAFETY: as above.
unsafe impl Sync for Library {}

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
        // SAFETY: a non-null entry result points to the plugin's static vtable;
        // the first two fields are readable in every ABI version.
        let vtable: &'static PluginVTable = unsafe { &*table };
        Library::from_vtable(path, vtable)
    }

    /// Checks a vtable (from a library, or hand-built in tests).
    pub fn from_vtable(path: &Path, vtable: &'static PluginVTable) -> Result<Library, PluginError> {
        let fail = |message: String| PluginError::Load {
            path: path.to_path_buf(),
            message,
        };
        if vtable.abi_version != ABI_VERSION {
            return Err(fail(format!(
                "plugin ABI version {}, this daemon speaks {ABI_VERSION}",
                vtable.abi_version
            )));
        }
        let needed = std::mem::size_of::<PluginVTable>();
        if (vtable.struct_size as usize) < needed {
            return Err(fail(format!(
                "plugin vtable is {} bytes, ABI version {ABI_VERSION} needs {needed}",
                vtable.struct_size
            )));
        }
        // SAFETY: name and version are static strings per the ABI.
        let (name, version) = unsafe {
            (
                text(vtable.name.as_slice()),
                text(vtable.version.as_slice()),
            )
        };
        Ok(Library {
            path: path.to_path_buf(),
            name,
            version,
            abi_version: vtable.abi_version,
            vtable,
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
        unsafe { (self.vtable.free_bytes)(bytes) };
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
        let status =
            unsafe { (self.vtable.open)(Bytes::from_slice(config), &mut handle, &mut error) };
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
        let status = unsafe {
            (self.library.vtable.send)(self.handle, Bytes::from_slice(request), &mut out)
        };
        self.library.outcome(status, out)
    }
}

impl Drop for RawChannel {
    fn drop(&mut self) {
        // SAFETY: opened by this library, no call in flight (we hold the last
        // reference), closed exactly once.
        unsafe { (self.library.vtable.close)(self.handle) };
    }
}
