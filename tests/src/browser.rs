//! A real headless browser for the tests of pages: Debian's chromium, driven
//! over WebDriver (chromedriver) with fantoccini.
//!
//! [`Browser::start`] finds (or installs) chromium and chromedriver, starts
//! the driver on a free port with a throwaway profile and opens a session.
//! Where neither is to be had it returns `None` after saying how to get them,
//! so a test returns early; under `CI` that is a failure instead.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Finds chromium and chromedriver, installing Debian's packages where they
/// are missing and that is possible. `None` (with a note) where impossible;
/// under CI that is a failure.
pub fn find() -> Option<(String, String)> {
    let find = |names: &[&str]| {
        names
            .iter()
            .map(|n| format!("/usr/bin/{n}"))
            .find(|p| std::path::Path::new(p).exists())
    };
    let found = || {
        Some((
            find(&["chromium", "chromium-browser"])?,
            find(&["chromedriver"])?,
        ))
    };
    if let Some(found) = found() {
        return Some(found);
    }
    for args in [
        &["update", "-qq"][..],
        &["install", "-y", "-qq", "chromium", "chromium-driver"][..],
    ] {
        let _ = Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status();
    }
    match found() {
        Some(found) => Some(found),
        None => {
            assert!(
                std::env::var_os("CI").is_none(),
                "chromium and chromedriver are missing and could not be installed"
            );
            eprintln!(
                "browser test not run: install Debian's chromium and chromium-driver packages to run it"
            );
            None
        }
    }
}

/// The chromedriver process, killed when the browser is dropped (also when
/// a test panics).
struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A headless chromium session. Fields drop in order: the session, then the
/// driver, then the profile folder.
pub struct Browser {
    client: fantoccini::Client,
    _driver: Driver,
    /// A profile of the session's own, so runs share no state.
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver and opens a headless chromium session, or `None`
    /// where chromium cannot be had (see [`find`]).
    pub async fn start() -> Option<Browser> {
        let (chromium, chromedriver) = find()?;
        let port = crate::free_port();
        let driver = Driver(
            Command::new(chromedriver)
                .arg(format!("--port={port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start chromedriver"),
        );
        let profile = tempfile::tempdir().expect("profile dir");
        let capabilities = serde_json::json!({
            "goog:chromeOptions": {
                "binary": chromium,
                "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                         "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
                         format!("--user-data-dir={}", profile.path().display())]
            }
        });
        let serde_json::Value::Object(capabilities) = capabilities else {
            unreachable!("a JSON object literal")
        };
        // The driver takes a moment to listen.
        for _ in 0..50 {
            match fantoccini::ClientBuilder::rustls()
                .expect("TLS")
                .capabilities(capabilities.clone())
                .connect(&format!("http://127.0.0.1:{port}"))
                .await
            {
                Ok(client) => {
                    return Some(Browser {
                        client,
                        _driver: driver,
                        _profile: profile,
                    });
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        panic!("cannot connect to chromedriver on port {port}");
    }

    /// The WebDriver session (a handle: clones drive the same browser).
    pub fn client(&self) -> fantoccini::Client {
        self.client.clone()
    }
}
