//! Test support for the end-to-end suite: build the real binaries and plugins,
//! start the real `dunningd`, talk to it over its real admin socket.
//!
//! `cargo test` builds only what test targets depend on, and plugins are
//! cdylibs that nothing links. So the first test in each process runs one
//! `cargo build` of the binaries and plugins into the same target folder
//! (cargo's own lock makes concurrent test processes wait for each other);
//! later calls return at once.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

pub mod browser;
pub mod daemon;
pub mod fixtures;
pub mod peers;
pub mod signers;
pub mod stripe_peer;

/// The packages whose artifacts the end-to-end tests run.
const ARTIFACT_PACKAGES: &[&str] = &[
    "dunningd",
    "dunningd-plugin-inapp",
    "dunningd-plugin-log",
    "dunningd-plugin-testkit",
    "dunningd-plugin-hello",
    "dunningd-plugin-smtp",
    "dunningd-plugin-stripe",
    "dunningd-plugin-twilio",
    "dunningd-plugin-webhook",
];

/// A loopback port free at the moment of asking (for servers a test
/// configures rather than binds itself).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// The workspace root (the folder holding the top-level `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives inside the workspace")
        .to_path_buf()
}

/// `target/debug` (or `target/release`) of the build that runs this test.
pub fn artifact_dir() -> PathBuf {
    // The test executable lives in <target>/<profile>/deps/.
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("test binary inside <target>/<profile>/deps")
        .to_path_buf()
}

/// Builds the daemon, dunningctl and the plugins once per test process and
/// returns the folder that holds them. Panics with cargo's output on failure:
/// nothing can be tested without them.
pub fn build_artifacts() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let dir = artifact_dir();
        let profile = dir.file_name().and_then(|n| n.to_str()).unwrap_or("debug");
        let target_dir = dir.parent().expect("target dir").to_path_buf();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
        let mut cmd = Command::new(cargo);
        cmd.current_dir(workspace_root())
            .arg("build")
            .arg("--target-dir")
            .arg(&target_dir);
        if profile == "release" {
            cmd.arg("--release");
        }
        for package in ARTIFACT_PACKAGES {
            cmd.args(["-p", package]);
        }
        let output = cmd.output().expect("run cargo build");
        assert!(
            output.status.success(),
            "cargo build of the test artifacts failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        dir
    })
}

/// The folder holding the built plugin libraries.
pub fn plugin_dir() -> &'static Path {
    build_artifacts()
}

/// Path of a built binary (`dunningd`, `dunningctl`).
pub fn binary(name: &str) -> PathBuf {
    build_artifacts().join(format!("{name}{}", std::env::consts::EXE_SUFFIX))
}

/// Path of a built plugin library, e.g. `plugin_library("testkit")`.
pub fn plugin_library(name: &str) -> PathBuf {
    plugin_dir().join(format!(
        "{}dunningd_plugin_{name}{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    ))
}

/// Runs each named `async fn(Backend)` as two tests, `sqlite::NAME` and
/// `postgres::NAME`: the same behaviour, proven on both stores. The
/// PostgreSQL half returns early (saying how to enable it) where
/// `DUNNINGD_TEST_POSTGRES` is not set, and fails under `CI` then.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),+ $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name($crate::daemon::Backend::Sqlite).await;
                }
            )+
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    let Some(backend) = $crate::daemon::Backend::postgres().await else {
                        return;
                    };
                    super::$name(backend).await;
                }
            )+
        }
    };
}
