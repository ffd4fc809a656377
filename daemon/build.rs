//! Generates the gRPC code from `proto/` with a vendored `protoc`, so building
//! needs nothing installed beyond cargo.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; nothing else reads the environment concurrently.
    unsafe { std::env::set_var("PROTOC", protoc) };
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        // `dunningctl --json` prints the API's own messages.
        .type_attribute(".dunningd.v1", "#[derive(serde::Serialize)]")
        // Sums of money as a string of digits, exact beyond int64 and beyond
        // the 2^53 a JavaScript number holds: `"amount": "4900"`.
        .field_attribute(".dunningd.v1.Money.amount", "#[serde(skip)]")
        .field_attribute(".dunningd.v1.Money.exact", r#"#[serde(rename = "amount")]"#)
        .file_descriptor_set_path(out.join("dunningd_descriptor.bin"))
        .compile_protos(&["proto/dunningd/v1/admin.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
