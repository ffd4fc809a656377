//! dunningd as a systemd service, without a running systemd: the notify
//! protocol against a datagram socket the test reads, the unit file checked
//! with `systemd-analyze`, and a SIGTERM in the middle of sending.

use std::collections::BTreeSet;
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use dunningd::proto;
use dunningd_e2e::daemon::{Setup, TestDaemon, read_jsonl};

const WORKFLOW: &str = r#"
name: payment-failed
trigger: { event: payment_failed }
steps:
  - name: first
    after: 0s
    send:
      - { channel: email, template: t }
templates:
  t: { subject: "s", text: "t" }
"#;

/// Reads notify datagrams until one contains `want`, returning every message
/// seen on the way.
fn read_until(socket: &UnixDatagram, want: &str, seen: &mut Vec<String>) {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut buf = [0u8; 4096];
    loop {
        assert!(
            Instant::now() < deadline,
            "no {want:?} within 15s; saw {seen:?}"
        );
        match socket.recv(&mut buf) {
            Ok(n) => {
                let message = String::from_utf8_lossy(&buf[..n]).to_string();
                let done = message.lines().any(|l| l == want);
                seen.push(message);
                if done {
                    return;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("notify socket: {e}"),
        }
    }
}

#[tokio::test]
async fn the_daemon_speaks_the_notify_protocol() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).expect("bind notify socket");
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let mut setup = Setup::default().workflow("payment-failed.yaml", WORKFLOW);
    setup.env = vec![
        ("NOTIFY_SOCKET".into(), path.display().to_string()),
        ("WATCHDOG_USEC".into(), "400000".into()),
    ];
    let mut daemon = TestDaemon::start(setup).await;
    let mut seen = Vec::new();

    read_until(&socket, "READY=1", &mut seen);
    let ready = seen.last().expect("ready message");
    assert!(
        ready.contains("STATUS=0 active cases, 1 workflows; last reload ok"),
        "{ready}"
    );
    assert!(
        daemon.socket.exists(),
        "READY=1 only once the admin socket listens"
    );

    // The watchdog is pinged at half its interval while the scheduler runs.
    for _ in 0..3 {
        read_until(&socket, "WATCHDOG=1", &mut seen);
    }

    // A reload is bracketed by RELOADING=1 (with the monotonic time newer
    // systemd requires) and READY=1.
    daemon.ctl_ok(&["reload"]);
    let from = seen.len();
    read_until(&socket, "RELOADING=1", &mut seen);
    let reloading = seen.last().expect("reloading");
    assert!(
        reloading.lines().any(|l| l.starts_with("MONOTONIC_USEC=")),
        "{reloading}"
    );
    read_until(&socket, "READY=1", &mut seen);
    assert!(seen[from..].iter().all(|m| !m.contains("STOPPING")));

    assert!(daemon.terminate().await.success());
    read_until(&socket, "STOPPING=1", &mut seen);
}

/// Finds `systemd-analyze`, installing Debian's `systemd` package where it is
/// missing and that is possible; under CI a missing tool is a failure.
fn systemd_analyze() -> Option<&'static str> {
    let path = "/usr/bin/systemd-analyze";
    if !std::path::Path::new(path).exists() {
        for args in [
            &["update", "-qq"][..],
            &["install", "-y", "-qq", "systemd"][..],
        ] {
            let _ = std::process::Command::new("apt-get")
                .args(args)
                .env("DEBIAN_FRONTEND", "noninteractive")
                .status();
        }
    }
    if std::path::Path::new(path).exists() {
        return Some(path);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "systemd-analyze is missing and could not be installed"
    );
    eprintln!("unit checks not run: install Debian's systemd package to run them");
    None
}

#[test]
fn the_unit_verifies_and_is_hardened() {
    let Some(analyze) = systemd_analyze() else {
        return;
    };
    // verify checks that the binaries exist: point the unit at the built ones.
    let unit =
        std::fs::read_to_string(dunningd_e2e::workspace_root().join("systemd/dunningd.service"))
            .expect("unit");
    let unit = unit
        .replace(
            "/usr/bin/dunningd ",
            &format!("{} ", dunningd_e2e::binary("dunningd").display()),
        )
        .replace(
            "/usr/bin/dunningctl ",
            &format!("{} ", dunningd_e2e::binary("dunningctl").display()),
        );
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("dunningd.service");
    std::fs::write(&path, unit).expect("write unit");

    let verify = std::process::Command::new(analyze)
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze verify");
    assert!(
        verify.status.success(),
        "systemd-analyze verify:\n{}",
        String::from_utf8_lossy(&verify.stderr)
    );

    let security = std::process::Command::new(analyze)
        .args(["security", "--offline=true"])
        .arg(&path)
        .output()
        .expect("systemd-analyze security");
    let text = String::from_utf8_lossy(&security.stdout).to_string();
    let exposure: f64 = text
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for dunningd.service: ")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{text}"));
    assert!(
        exposure <= 3.0,
        "exposure {exposure} is above 3.0 (\"OK\"):\n{text}"
    );
}

fn slow_email(extra: &str) -> Setup {
    let mut setup = Setup::default().workflow("payment-failed.yaml", WORKFLOW).channel(
        "email",
        "{ plugin: testkit, timeout: 10s, concurrency: 8, settings: { behaviour: hang, hang_secs: 1, record: '{dir}/calls.jsonl' } }",
    );
    setup.extra_config = extra.to_string();
    setup
}

async fn send_events(daemon: &TestDaemon, n: usize) {
    let events = (0..n)
        .map(|i| {
            serde_json::json!({ "id": format!("e{i}"), "type": "payment_failed", "customer": { "id": format!("c{i}"), "email": "a@example.com" }, "subject": format!("inv_{i}") })
                .to_string()
        })
        .collect();
    daemon
        .client()
        .await
        .send_events(proto::SendEventsRequest { events })
        .await
        .expect("send");
}

async fn wait_for_calls(daemon: &TestDaemon, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while read_jsonl(&daemon.path("calls.jsonl")).len() < n {
        assert!(
            Instant::now() < deadline,
            "the plugin was not called {n} times"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn all_sent(daemon: &TestDaemon) -> usize {
    let cases = daemon
        .client()
        .await
        .list_cases(proto::ListCasesRequest {
            limit: 100,
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner()
        .cases;
    cases.iter().filter(|c| c.state == "exhausted").count()
}

#[tokio::test]
async fn sigterm_mid_send_lets_in_flight_sends_finish_and_loses_nothing() {
    let mut daemon = TestDaemon::start(slow_email("")).await;
    send_events(&daemon, 5).await;
    wait_for_calls(&daemon, 5).await;
    // Every send is inside the plugin (each takes a second) when SIGTERM comes.
    let status = daemon.terminate().await;
    assert!(status.success(), "{status}");

    daemon.spawn().await;
    daemon.settle().await;
    let calls = read_jsonl(&daemon.path("calls.jsonl"));
    assert_eq!(calls.len(), 5, "nothing was sent twice: {calls:?}");
    assert_eq!(all_sent(&daemon).await, 5, "and nothing was lost");
}

#[tokio::test]
async fn sends_that_outlast_the_grace_period_are_left_claimable() {
    let mut daemon = TestDaemon::start(slow_email("scheduler:\n  shutdown_grace: 1s\n")).await;
    // Slower than the grace period: hang for 3 seconds.
    let config = std::fs::read_to_string(&daemon.config)
        .expect("config")
        .replace("hang_secs: 1", "hang_secs: 3");
    std::fs::write(&daemon.config, config).expect("config");
    daemon.ctl_ok(&["reload"]);
    send_events(&daemon, 2).await;
    wait_for_calls(&daemon, 2).await;
    let started = Instant::now();
    assert!(daemon.terminate().await.success());
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the stop waits for the grace period, not for the plugin ({:?}):\n{}",
        started.elapsed(),
        daemon.log()
    );

    daemon.spawn().await;
    daemon.settle().await;
    let keys: Vec<String> = read_jsonl(&daemon.path("calls.jsonl"))
        .iter()
        .map(|c| c["idempotency_key"].to_string())
        .collect();
    let unique: BTreeSet<_> = keys.iter().collect();
    // At-least-once: the interrupted sends went out again, with the same keys.
    assert_eq!((keys.len(), unique.len()), (4, 2), "{keys:?}");
    assert_eq!(all_sent(&daemon).await, 2);
}
