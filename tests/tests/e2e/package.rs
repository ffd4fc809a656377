//! The Debian package, built with cargo-deb from the workspace's artifacts:
//! its files, its control data and maintainer scripts, and the packaged
//! daemon started from a scratch root with the packaged configuration.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const CARGO_DEB_VERSION: &str = "3.8.0";

/// cargo-deb from the project's own tools folder (`target/tools`), installed
/// there from crates.io on first use. Under CI a failure to install fails.
fn cargo_deb() -> Option<PathBuf> {
    let target = dunningd_e2e::artifact_dir()
        .parent()
        .expect("target dir")
        .to_path_buf();
    let tools = target.join("tools");
    let binary = tools.join("bin/cargo-deb");
    if !binary.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args([
                "install",
                "cargo-deb",
                "--locked",
                "--version",
                CARGO_DEB_VERSION,
                "--root",
            ])
            .arg(&tools)
            .status();
        if !status.is_ok_and(|s| s.success()) {
            assert!(
                std::env::var_os("CI").is_none(),
                "cannot install cargo-deb {CARGO_DEB_VERSION}"
            );
            eprintln!("package test not run: `cargo install cargo-deb` failed");
            return None;
        }
    }
    Some(binary)
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn build_package(out: &Path) -> Option<PathBuf> {
    let cargo_deb = cargo_deb()?;
    let artifacts = dunningd_e2e::build_artifacts();
    let profile = artifacts
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("debug");
    let profile = if profile == "debug" { "dev" } else { profile };
    let target = artifacts.parent().expect("target dir");
    run(Command::new(cargo_deb)
        .current_dir(dunningd_e2e::workspace_root())
        .env("CARGO_TARGET_DIR", target)
        .args([
            "-p",
            "dunningd",
            "--no-build",
            "--no-strip",
            "--profile",
            profile,
        ])
        .arg("--output")
        .arg(out));
    let deb = std::fs::read_dir(out)
        .expect("output dir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .expect("a .deb was written");
    Some(deb)
}

#[tokio::test]
async fn the_debian_package_installs_a_working_service() {
    let scratch = tempfile::tempdir().expect("tempdir");
    let Some(deb) = build_package(scratch.path()) else {
        return;
    };

    let files = run(Command::new("dpkg-deb").arg("--contents").arg(&deb));
    let expected = [
        "./usr/bin/dunningd",
        "./usr/bin/dunningctl",
        "./usr/lib/dunningd/plugins/libdunningd_plugin_log.so",
        "./usr/lib/dunningd/plugins/libdunningd_plugin_smtp.so",
        "./usr/lib/dunningd/plugins/libdunningd_plugin_stripe.so",
        "./usr/lib/dunningd/plugins/libdunningd_plugin_twilio.so",
        "./usr/lib/dunningd/plugins/libdunningd_plugin_webhook.so",
        "./usr/lib/dunningd/plugins/libdunningd_plugin_inapp.so",
        "./etc/dunningd/dunningd.yaml",
        "/systemd/system/dunningd.service",
        "./usr/share/dunningd/workflows/payment-failed.yaml",
        "./usr/share/doc/dunningd/ABI.md",
        "./usr/include/dunningd_plugin.h",
    ];
    for path in expected {
        assert!(
            files.lines().any(|l| l.contains(path)),
            "{path} missing from the package:\n{files}"
        );
    }
    assert!(
        !files.contains("testkit") && !files.contains("hello"),
        "test and example plugins stay out:\n{files}"
    );

    let control = run(Command::new("dpkg-deb").arg("--info").arg(&deb));
    assert!(control.contains("Package: dunningd"), "{control}");
    assert!(
        control
            .lines()
            .any(|l| l.starts_with(" Depends:") && l.contains("adduser")),
        "{control}"
    );

    let meta = scratch.path().join("DEBIAN");
    run(Command::new("dpkg-deb")
        .arg("--control")
        .arg(&deb)
        .arg(&meta));
    let conffiles = std::fs::read_to_string(meta.join("conffiles")).expect("conffiles");
    assert!(
        conffiles
            .lines()
            .any(|l| l == "/etc/dunningd/dunningd.yaml"),
        "{conffiles}"
    );
    let postinst = std::fs::read_to_string(meta.join("postinst")).expect("postinst");
    assert!(
        postinst.contains("adduser --system --ingroup dunningd"),
        "{postinst}"
    );
    assert!(
        !postinst.contains("#DEBHELPER#") && postinst.contains("deb-systemd-helper"),
        "the unit is enabled by the debhelper snippet:\n{postinst}"
    );
    let checked = Command::new("sh")
        .arg("-n")
        .arg(meta.join("postinst"))
        .status()
        .expect("sh -n");
    assert!(checked.success(), "postinst is valid shell");

    // Install into a scratch root, then run the packaged daemon from it.
    let root = scratch.path().join("root");
    run(Command::new("dpkg-deb")
        .arg("--extract")
        .arg(&deb)
        .arg(&root));
    let unit_path = [
        "lib/systemd/system/dunningd.service",
        "usr/lib/systemd/system/dunningd.service",
    ]
    .iter()
    .map(|p| root.join(p))
    .find(|p| p.exists())
    .expect("the unit is installed");
    let shipped_unit =
        std::fs::read_to_string(dunningd_e2e::workspace_root().join("systemd/dunningd.service"))
            .expect("unit");
    assert_eq!(
        std::fs::read_to_string(unit_path).expect("unit"),
        shipped_unit
    );

    let packaged =
        std::fs::read_to_string(root.join("etc/dunningd/dunningd.yaml")).expect("packaged config");
    let state = root.join("var/lib/dunningd");
    let socket = scratch.path().join("admin.sock");
    let config = packaged
        .replace(
            "/etc/dunningd/workflows",
            &root
                .join("usr/share/dunningd/workflows")
                .display()
                .to_string(),
        )
        .replace(
            "/usr/lib/dunningd/plugins",
            &root.join("usr/lib/dunningd/plugins").display().to_string(),
        )
        .replace("/var/lib/dunningd", &state.display().to_string())
        .replace("/run/dunningd/admin.sock", &socket.display().to_string());
    let config_path = scratch.path().join("dunningd.yaml");
    std::fs::write(&config_path, config).expect("config");
    let mut daemon = Command::new(root.join("usr/bin/dunningd"))
        .arg("--config")
        .arg(&config_path)
        .stderr(std::fs::File::create(scratch.path().join("daemon.log")).expect("log"))
        .spawn()
        .expect("start the packaged dunningd");
    let ctl = root.join("usr/bin/dunningctl");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        let out = Command::new(&ctl)
            .arg("--socket")
            .arg(&socket)
            .arg("status")
            .output()
            .expect("dunningctl");
        if out.status.success() {
            break String::from_utf8_lossy(&out.stdout).to_string();
        }
        if Instant::now() > deadline {
            let _ = daemon.kill();
            panic!(
                "the packaged daemon did not start:\n{}",
                std::fs::read_to_string(scratch.path().join("daemon.log")).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let _ = daemon.kill();
    let _ = daemon.wait();
    assert!(
        status.contains("workflows  3 loaded, 0 file errors"),
        "{status}"
    );
    assert!(status.contains("plugin     log"), "{status}");
}
