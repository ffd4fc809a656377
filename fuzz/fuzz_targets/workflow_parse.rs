//! Any bytes as a workflow file: parsing and validation answer with
//! diagnostics, never a panic, and within the file's bounds.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(source) = std::str::from_utf8(data) {
        let _ = dunningd::workflow::Workflow::parse(
            std::path::Path::new("fuzz.yaml"),
            source,
            None,
        );
    }
});
