//! Secrets never show: credentials inside URLs (a channel's relay or
//! endpoint, the database) and secret values (a channel's `secrets:`) are
//! redacted in the log, the case timeline, `dunningctl status` and start-up
//! errors. And what the daemon creates on disk is private to its user,
//! whatever umask it was started with.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

use dunningd_e2e::daemon::{PgDatabase, Setup, TestDaemon};
use dunningd_e2e::free_port;

/// Every secret the configurations below hold; none may be printed.
const SECRETS: &[&str] = &[
    "hook-pass-4711",
    "tok-abcdef-4711",
    "smtp-pass-4711",
    "hook-signing-secret-4711",
    "twilio-token-4711",
    "pg-pass-4711",
];

const NOTICE: &str = r#"
name: payment-failed
trigger: { event: payment_failed }
steps:
  - name: notice
    after: 0s
    send:
      - { channel: email, template: email }
      - { channel: sms, template: sms }
      - { channel: webhook, template: hook }
templates:
  email: { subject: "Payment failed", text: "Please update your card." }
  sms: { body: "Please update your card." }
  hook: { action: notify }
"#;

fn assert_no_secret(what: &str, text: &str) {
    for secret in SECRETS {
        assert!(
            !text.contains(secret),
            "{what} shows the secret '{secret}':\n{text}"
        );
    }
}

/// Unreachable endpoints whose URLs carry credentials: every error they
/// cause names the endpoint with its credentials hidden.
#[tokio::test]
async fn credentials_in_channel_urls_and_secrets_never_show() {
    let dir = tempfile::tempdir().expect("tempdir");
    let secret_file = |name: &str, value: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, format!("{value}\n")).expect("secret file");
        path.display().to_string()
    };
    let hook_secret = secret_file("hook-secret", "hook-signing-secret-4711");
    let twilio_token = secret_file("twilio-token", "twilio-token-4711");
    let (hook_port, smtp_port, twilio_port) = (free_port(), free_port(), free_port());
    let setup = Setup::default()
        .workflow("payment-failed.yaml", NOTICE)
        .channel(
            "webhook",
            &format!(
                "{{ plugin: webhook, max_attempts: 1, settings: {{ url: 'http://hookuser:hook-pass-4711@127.0.0.1:{hook_port}/hook?token=tok-abcdef-4711&v=1' }}, secrets: {{ secret: {{ file: '{hook_secret}' }} }} }}"
            ),
        )
        .channel(
            "email",
            &format!(
                "{{ plugin: smtp, max_attempts: 1, settings: {{ url: 'smtp://mailer:smtp-pass-4711@127.0.0.1:{smtp_port}', from: 'billing@example.com' }} }}"
            ),
        )
        .channel(
            "sms",
            &format!(
                "{{ plugin: twilio, max_attempts: 1, settings: {{ account_sid: AC01, from: '+15005550006', base_url: 'http://AC01:twilio-token-4711@127.0.0.1:{twilio_port}' }}, secrets: {{ auth_token: {{ file: '{twilio_token}' }} }} }}"
            ),
        );
    let daemon = TestDaemon::start(setup).await;
    let event = serde_json::json!({
        "id": "e1", "type": "payment_failed", "subject": "inv_1",
        "customer": { "id": "cus_1", "email": "ada@example.com", "phone": "+447700900123" },
    });
    let results = daemon.send_events(vec![event.to_string()]).await;
    let case = results[0].cases_started[0].clone();
    daemon.settle().await;

    let timeline = daemon.ctl_ok(&["cases", "show", &case, "--json"]);
    assert_no_secret("the timeline", &timeline);
    for shown in [
        // The webhook's endpoint, credentials and token hidden.
        format!("http://hookuser:***@127.0.0.1:{hook_port}/hook?token=***&v=1"),
        // The relay that refused the connection.
        format!("smtp://mailer:***@127.0.0.1:{smtp_port}"),
    ] {
        assert!(timeline.contains(&shown), "{shown} not in:\n{timeline}");
    }

    // A reload that the smtp plugin refuses (the relay URL does not parse)
    // shows in the status, its URL redacted.
    let config = std::fs::read_to_string(&daemon.config).expect("config");
    std::fs::write(
        &daemon.config,
        config.replace(
            &format!("@127.0.0.1:{smtp_port}'"),
            "@relay.example.com:not-a-port'",
        ),
    )
    .expect("write config");
    let reload = daemon.ctl(&["reload"]);
    assert!(
        !reload.status.success(),
        "the broken relay URL was accepted"
    );
    assert_no_secret(
        "dunningctl reload",
        &String::from_utf8_lossy(&reload.stderr),
    );
    let status = daemon.ctl_ok(&["status", "--json"]);
    assert_no_secret("dunningctl status", &status);
    assert!(
        status.contains("smtp://mailer:***@relay.example.com:not-a-port"),
        "{status}"
    );

    assert_no_secret("the log", &daemon.log());
    assert!(
        daemon.log().contains("hookuser:***@127.0.0.1"),
        "the failed webhook is logged:\n{}",
        daemon.log()
    );
}

/// A PostgreSQL URL with a password (ignored by the test server's trust
/// authentication), in the user info and as a parameter: the status and the
/// log show the database with both hidden.
#[tokio::test]
async fn a_database_password_shows_nowhere() {
    let Some(database) = PgDatabase::create().await else {
        return;
    };
    let mut url = url::Url::parse(database.url()).expect("database URL");
    url.set_password(Some("pg-pass-4711"))
        .expect("a URL with a host");
    url.query_pairs_mut()
        .append_pair("password", "pg-pass-4711");
    let setup = Setup {
        extra_config: format!("database: {url}\n"),
        ..Setup::default()
    };
    let daemon = TestDaemon::start(setup).await;
    let mut shown = url.clone();
    shown.set_password(Some("***")).expect("a URL with a host");
    shown.set_query(Some("password=***"));
    let shown = shown.to_string();

    let status = daemon.ctl_ok(&["status", "--json"]);
    assert_no_secret("dunningctl status", &status);
    assert!(status.contains(&shown), "{shown} not in:\n{status}");
    let log = daemon.log();
    assert_no_secret("the log", &log);
    assert!(log.contains(&shown), "{shown} not in:\n{log}");
}

/// Runs `dunningd` on `config` (in `dir`) until it exits; returns its exit
/// code and standard error.
fn start_failure(dir: &Path, config: &str) -> (Option<i32>, String) {
    std::fs::create_dir_all(dir.join("workflows")).expect("mkdir");
    let path = dir.join("dunningd.yaml");
    std::fs::write(
        &path,
        format!(
            "workflows_dir: workflows\nplugin_dir: {}\nstate_dir: state\nadmin: {{ socket: admin.sock }}\nclock: manual\n{config}",
            dunningd_e2e::plugin_dir().display()
        ),
    )
    .expect("write config");
    let output = Command::new(dunningd_e2e::binary("dunningd"))
        .arg("--config")
        .arg(&path)
        .stdin(Stdio::null())
        .output()
        .expect("run dunningd");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).to_string(),
    )
}

/// Configurations that stop the start, each with a secret in it: the error
/// names the offending thing with the secret hidden.
#[test]
fn start_up_errors_hide_secrets() {
    let closed = free_port();
    let table = [
        // (configuration, exit code, what the error says)
        (
            format!(
                "database: postgres://dunning:pg-pass-4711@127.0.0.1:{closed}/x?sslmode=disable&password=pg-pass-4711\n"
            ),
            1,
            format!(
                "cannot open database 'postgres://dunning:***@127.0.0.1:{closed}/x?sslmode=disable&password=***'"
            ),
        ),
        (
            "database: postgres://dunning:pg-pass-4711@db.invalid:not-a-port/x\n".to_string(),
            1,
            "postgres://dunning:***@db.invalid:not-a-port/x".to_string(),
        ),
        (
            "database: postgres://dunning@db.invalid/x?sslpassword=pg-pass-4711\n".to_string(),
            64,
            "database: unsupported parameter 'sslpassword'".to_string(),
        ),
        (
            "database: mysql://dunning:pg-pass-4711@db/x\n".to_string(),
            64,
            "database: unsupported URL 'mysql://dunning:***@db/x'".to_string(),
        ),
        (
            "channels:\n  email: { plugin: smtp, settings: { url: 'smtp://mailer:smtp-pass-4711@relay:port', from: 'b@example.com' } }\n".to_string(),
            64,
            "smtp://mailer:***@relay:port".to_string(),
        ),
        (
            "channels:\n  hook: { plugin: webhook, settings: { url: 'ftp://u:hook-pass-4711@h/x' }, secrets: { secret: { env: PATH } } }\n".to_string(),
            64,
            "settings.url: scheme 'ftp' is not http or https".to_string(),
        ),
        // A secret written inline, where only its source may be.
        (
            "channels:\n  email: { plugin: smtp, secrets: { password: smtp-pass-4711 } }\n"
                .to_string(),
            64,
            "channels.email.secrets.password: expected one of".to_string(),
        ),
        (
            "webhooks: { listen: '127.0.0.1:1', public_url: 'https://u:hook-pass-4711@h?x', secret: { env: PATH } }\n".to_string(),
            64,
            "webhooks.public_url: 'https://u:***@h?x'".to_string(),
        ),
    ];
    for (config, code, says) in table {
        let dir = tempfile::tempdir().expect("tempdir");
        let (exit, stderr) = start_failure(dir.path(), &config);
        assert_eq!(exit, Some(code), "{config}: {stderr}");
        assert_no_secret(&config, &stderr);
        assert!(
            stderr.contains(&says),
            "{config}: want {says:?} in:\n{stderr}"
        );
    }
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// Started with `umask 000`, the daemon still creates its state private:
/// folders 0700, files 0600; the admin socket's folder 0750 (operators in
/// the daemon's group reach the 0660 socket through it).
#[tokio::test]
async fn what_the_daemon_creates_is_private_whatever_the_umask() {
    let setup = Setup {
        umask: Some(0o000),
        admin_socket: "run/admin.sock".into(),
        ..Setup::default().workflow("payment-failed.yaml", NOTICE)
    };
    let daemon = TestDaemon::start(setup).await;
    // The manual clock's file is written when the clock moves; a send
    // writes the log plugin's file.
    let event = serde_json::json!({
        "id": "e1", "type": "payment_failed", "subject": "inv_1",
        "customer": { "id": "cus_1", "email": "ada@example.com" },
    });
    daemon.send_events(vec![event.to_string()]).await;
    daemon.advance("1h").await;
    assert!(
        daemon.path("state/dunningd.db-wal").exists(),
        "no WAL file yet"
    );
    let table = [
        ("state", 0o700),
        ("state/dunningd.db", 0o600),
        ("state/dunningd.db-wal", 0o600),
        ("state/dunningd.db-shm", 0o600),
        ("state/dunningd.db.lock", 0o600),
        ("state/manual-clock", 0o600),
        ("run", 0o750),
        ("run/admin.sock", 0o660),
        ("deliveries.jsonl", 0o600),
    ];
    let got: Vec<(&str, u32)> = table
        .iter()
        .map(|(path, _)| (*path, mode(&daemon.path(path))))
        .collect();
    let want: Vec<(&str, u32)> = table.to_vec();
    let octal = |list: &[(&str, u32)]| {
        list.iter()
            .map(|(p, m)| format!("{p} {m:04o}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    assert_eq!(octal(&got), octal(&want));
}
