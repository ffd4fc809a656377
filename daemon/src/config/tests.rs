use super::*;

#[test]
fn an_empty_file_is_a_working_configuration() {
    let config = Config::parse(Path::new("/etc/dunningd/dunningd.yaml"), "").unwrap();
    assert_eq!(config.workflows_dir, Path::new("/etc/dunningd/workflows"));
    assert_eq!(
        config.database.expose(),
        "sqlite:///var/lib/dunningd/dunningd.db"
    );
    assert_eq!(config.admin.socket, Path::new(DEFAULT_SOCKET));
    assert_eq!(config.clock, ClockKind::System);
    assert_eq!(config.metrics, None, "no metrics endpoint unless asked for");
}

/// Reading an unchanged file again (a reload) gives the same clock, so a
/// reload does not report a clock change that would need a restart.
#[test]
fn a_manual_clock_reads_the_same_twice() {
    let path = Path::new("/etc/dunningd/dunningd.yaml");
    for text in [
        "clock: manual\n",
        "clock: manual\nclock_start: 2026-01-05T09:00:00Z\n",
    ] {
        let first = Config::parse(path, text).unwrap().clock;
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert_eq!(Config::parse(path, text).unwrap().clock, first, "{text}");
    }
}

#[test]
fn secrets_come_from_files_and_never_show_in_debug() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("smtp-password"), "hunter2\n").unwrap();
    let text = "channels:\n  email:\n    plugin: log\n    settings: { host: smtp.example.com }\n    secrets:\n      password: { file: smtp-password }\n";
    let config = Config::parse(&dir.path().join("dunningd.yaml"), text).unwrap();
    let email = &config.channels["email"];
    assert_eq!(email.settings["password"], "hunter2");
    assert!(!format!("{email:?}").contains("hunter2"));
}

#[test]
fn errors_say_where() {
    let table = [
        ("colour: red\n", "dunningd.yaml:1:1: unknown field `colour`"),
        ("clock: sundial\n", "clock: unknown clock 'sundial'"),
        (
            "scheduler: { lease: 3 }\n",
            "scheduler.lease: invalid duration '3'",
        ),
        ("admin: { tcp: '127.0.0.1:1' }\n", "needs admin.token_file"),
        (
            "admin: { tcp: '127.0.0.1:1', tls: { cert_file: c, key_file: k } }\n",
            "needs admin.token_file",
        ),
        (
            "admin: { tls: { cert_file: c, key_file: k } }\n",
            "admin.tls: TLS is for the TCP listener; set admin.tcp too",
        ),
        (
            "admin: { tcp: '127.0.0.1:1', token_file: t, tls: { cert_file: c } }\n",
            "missing field `key_file`",
        ),
        (
            "admin: { allow_plaintext: true }\n",
            "admin.allow_plaintext: there is no TCP listener (admin.tcp)",
        ),
        (
            "admin: { tcp: '0.0.0.0:1', token_file: t, allow_plaintext: true, tls: { cert_file: c, key_file: k } }\n",
            "admin.allow_plaintext: contradicts admin.tls",
        ),
        (
            "channels: { email: { plugin: log, timeout: 5m } }\n",
            "channels.email.timeout: 5m must be shorter than scheduler.lease (2m)",
        ),
        (
            "channels: { sms: { plugin: twilio, secrets: { token: { env: DUNNINGD_TEST_UNSET_VAR } } } }\n",
            "channels.sms.secrets.token: environment variable 'DUNNINGD_TEST_UNSET_VAR' is not set",
        ),
        (
            "channels: { sms: { plugin: twilio, secrets: { token: { env: A, file: b } } } }\n",
            "channels.sms.secrets.token: give exactly one of 'file', 'env' or 'credential'",
        ),
        (
            "webhooks: { listen: 'localhost', public_url: 'https://x.example', secret: { env: HOME } }\n",
            "webhooks.listen: 'localhost': invalid socket address syntax",
        ),
        (
            "webhooks: { listen: '127.0.0.1:8788', public_url: 'x.example', secret: { env: HOME } }\n",
            "webhooks.public_url: 'x.example' is not an http(s) URL",
        ),
        (
            "webhooks: { listen: '127.0.0.1:8788', public_url: 'https://x.example' }\n",
            "missing field `secret`",
        ),
        (
            "metrics: { listen: '9464' }\n",
            "dunningd.yaml: metrics.listen: '9464': invalid socket address syntax (expected an address like 127.0.0.1:9464)",
        ),
        ("metrics: {}\n", "metrics: missing field `listen`"),
        (
            "database: postgres://u@db/x?sslpassword=hunter22\n",
            "database: unsupported parameter 'sslpassword' (known: sslmode,",
        ),
        (
            "channels: { email: { plugin: smtp, secrets: { password: hunter22 } } }\n",
            "channels.email.secrets.password: expected one of { file: PATH }, { env: NAME } or { credential: NAME } (a secret is never written inline)",
        ),
        (
            "webhooks: { listen: '127.0.0.1:8788', public_url: 'https://u:hunter22@x.example?q', secret: { env: HOME } }\n",
            "webhooks.public_url: 'https://u:***@x.example?q' is not",
        ),
        (
            "metrics: { listen: '127.0.0.1:9464', path: /m }\n",
            "unknown field `path`",
        ),
    ];
    for (text, want) in table {
        let err = Config::parse(Path::new("dunningd.yaml"), text)
            .unwrap_err()
            .to_string();
        assert!(err.contains(want), "{text:?}: got {err:?}, want {want:?}");
        assert!(
            !err.contains("hunter22"),
            "{text:?}: shows the secret: {err}"
        );
    }
}

#[test]
fn sources_are_checked_where_they_are_written() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "whsec_0123456789\n").unwrap();
    std::fs::write(dir.path().join("empty"), "").unwrap();
    let webhooks = format!(
        "webhooks: {{ listen: '127.0.0.1:8788', public_url: 'https://b.example/d', secret: {{ file: '{}' }} }}\n",
        dir.path().join("secret").display()
    );
    let parse = |yaml: &str| {
        Config::parse(
            &dir.path().join("dunningd.yaml"),
            &format!("{webhooks}sources:\n{yaml}"),
        )
    };
    let table = [
        (
            "  s: { provider: stripe, signing_secret: { file: secret } }\n",
            None,
        ),
        (
            "  Stripe: { provider: stripe, signing_secret: { file: secret } }\n",
            Some("sources: 'Stripe' is not a source name"),
        ),
        (
            "  s: { provider: square, signing_secret: { file: secret } }\n",
            Some(
                "sources.s.provider: unknown provider 'square' (expected one of: stripe, paddle, chargebee, recurly, lago)",
            ),
        ),
        (
            "  s: { provider: stripe }\n",
            Some("sources.s.signing_secret: missing"),
        ),
        (
            "  s: { provider: stripe, signing_secret: whsec_inline_secret }\n",
            Some("sources.s.signing_secret: expected one of { file: PATH }"),
        ),
        (
            "  s: { provider: stripe, signing_secret: [] }\n",
            Some("sources.s.signing_secret: give at least one"),
        ),
        (
            "  s: { provider: stripe, signing_secret: [{ file: secret }, { file: empty }] }\n",
            Some("sources.s.signing_secret[1]: is empty"),
        ),
        (
            "  s: { provider: stripe, signing_secret: { file: secret }, path: /twilio/x }\n",
            Some("sources.s.path: '/twilio/x' is taken"),
        ),
        (
            "  s: { provider: stripe, signing_secret: { file: secret }, path: 'x y' }\n",
            Some("sources.s.path: 'x y' is not a path"),
        ),
        (
            "  a: { provider: stripe, signing_secret: { file: secret }, path: /in }\n  b: { provider: paddle, signing_secret: { file: secret }, path: /in }\n",
            Some("sources.b.path: '/in' is already the path of source 'a'"),
        ),
        (
            "  s: { provider: stripe, signing_secret: { file: secret }, username: u }\n",
            Some("sources.s.username: only a chargebee source has one"),
        ),
        (
            "  s: { provider: chargebee, signing_secret: { file: secret } }\n",
            Some("sources.s.username: missing"),
        ),
        (
            "  s: { provider: chargebee, username: u, signing_secret: { file: secret }, api_key: { file: secret } }\n",
            Some("sources.s.api_base: required with api_key for chargebee"),
        ),
        (
            "  s: { provider: stripe, signing_secret: { file: secret }, api_base: 'ftp://x' }\n",
            Some("sources.s.api_base: 'ftp://x' is not an http(s) URL"),
        ),
        (
            "  s: { provider: stripe, signing_secret: { file: secret }, api_base: 'https://u:sk_live_x@api.example' }\n",
            None,
        ),
        (
            "  s: { provider: stripe, signing_secret: { file: secret }, subject: account }\n",
            Some("sources.s.subject: 'account' is not one of invoice, subscription, customer"),
        ),
        (
            "  s: { provider: stripe, signing_secret: { file: secret }, tolerance: soon }\n",
            Some("sources.s.tolerance: invalid duration 'soon'"),
        ),
        (
            "  s: { provider: paddle, signing_secret: { file: secret }, portal_return_url: 'https://x' }\n",
            Some("sources.s.portal_return_url: only a stripe source"),
        ),
        (
            "  s: { provider: stripe, signing_secret: { file: secret }, colour: red }\n",
            Some("unknown field `colour`"),
        ),
        (
            "  s: { provider: recurly, signing_secret: { file: secret } }\n",
            Some("sources.s.api_key: required for recurly"),
        ),
    ];
    for (yaml, expected) in table {
        match (parse(yaml), expected) {
            (Ok(_), None) => {}
            (Err(e), Some(expected)) => {
                let e = e.to_string();
                assert!(e.contains(expected), "{yaml}: {e}");
                assert!(!e.contains("whsec_"), "a secret in: {e}");
            }
            (Ok(_), Some(expected)) => panic!("{yaml}: accepted, expected {expected}"),
            (Err(e), None) => panic!("{yaml}: {e}"),
        }
    }
    let rotating = parse(
        "  billing: { provider: stripe, signing_secret: [{ file: secret }, { env: DUNNINGD_TEST_UNSET_VAR }] }\n",
    );
    assert!(
        rotating
            .unwrap_err()
            .to_string()
            .contains("sources.billing.signing_secret[1]: environment variable"),
    );
    let config = parse("  billing: { provider: stripe, signing_secret: [{ file: secret }, { file: secret }], api_key: { file: secret } }\n").unwrap();
    let source = &config.sources[0];
    assert_eq!(source.path, "/sources/billing");
    assert_eq!(source.secrets, vec![b"whsec_0123456789".to_vec(); 2]);
    assert_eq!(source.api_base.as_deref(), Some("https://api.stripe.com"));
    assert_eq!(source.tolerance, crate::sources::DEFAULT_TOLERANCE);
    assert!(!format!("{config:?}").contains("whsec_"));
    // Sources are served by the webhooks listener.
    let alone = Config::parse(
        &dir.path().join("dunningd.yaml"),
        "sources: { s: { provider: stripe, signing_secret: { file: secret } } }\n",
    )
    .unwrap_err()
    .to_string();
    assert!(
        alone.contains(
            "sources.s: sources are served on the webhooks listener; configure 'webhooks:'"
        ),
        "{alone}"
    );
}

#[test]
fn webhooks_give_twilio_channels_their_status_callback() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("secret"), "0123456789abcdef0123\n").unwrap();
    std::fs::write(dir.path().join("short"), "0123").unwrap();
    let text = |secret: &str| {
        format!(
            "webhooks: {{ listen: '127.0.0.1:8788', public_url: 'https://billing.example.com/dunningd/', secret: {{ file: {secret} }} }}
channels:
  sms: {{ plugin: twilio }}
  sms_own: {{ plugin: twilio, settings: {{ status_callback: 'https://elsewhere.example/cb' }} }}
  email: {{ plugin: smtp }}
"
        )
    };
    let path = dir.path().join("dunningd.yaml");
    let config = Config::parse(&path, &text("secret")).unwrap();
    let webhooks = config.webhooks.as_ref().unwrap();
    assert_eq!(webhooks.public_url, "https://billing.example.com/dunningd");
    assert_eq!(webhooks.secret, b"0123456789abcdef0123");
    assert!(!format!("{webhooks:?}").contains("0123456789"));
    let callback = |channel: &str| {
        config.channels[channel]
            .settings
            .get("status_callback")
            .cloned()
    };
    assert_eq!(
        callback("sms"),
        Some("https://billing.example.com/dunningd/twilio/sms/status".into())
    );
    assert_eq!(
        callback("sms_own"),
        Some("https://elsewhere.example/cb".into())
    );
    assert_eq!(callback("email"), None);
    let err = Config::parse(&path, &text("short"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("webhooks.secret: at least 16 characters"),
        "{err}"
    );
}

/// Mutual TLS authenticates clients by their certificate, so it needs no
/// token; paths are resolved like every other.
#[test]
fn admin_tls_paths_and_mutual_tls_without_a_token() {
    let config = Config::parse(
        Path::new("/etc/dunningd/dunningd.yaml"),
        "admin:\n  tcp: 0.0.0.0:7070\n  tls: { cert_file: tls/admin.crt, key_file: tls/admin.key, client_ca_file: /etc/pki/clients.crt }\n",
    )
    .unwrap();
    assert_eq!(
        config.admin.tls,
        Some(AdminTls {
            cert_file: "/etc/dunningd/tls/admin.crt".into(),
            key_file: "/etc/dunningd/tls/admin.key".into(),
            client_ca_file: Some("/etc/pki/clients.crt".into()),
        })
    );
    assert_eq!(config.admin.token_file, None);
    assert!(!config.admin.allow_plaintext);
}

#[test]
fn relative_paths_start_at_the_config_file() {
    let config = Config::parse(
        Path::new("examples/dunningd.yaml"),
        "state_dir: ../.dunningd\nworkflows_dir: ./wf\n",
    )
    .unwrap();
    assert_eq!(config.state_dir, Path::new(".dunningd"));
    assert_eq!(config.workflows_dir, Path::new("examples/wf"));
    assert_eq!(normalize(Path::new("/a/../../b")), Path::new("/b"));
    assert_eq!(normalize(Path::new("../x/./y")), Path::new("../x/y"));
}

#[test]
fn the_shipped_examples_are_valid() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    Config::load(&examples.join("dunningd.yaml")).expect("quick-start config");
    Config::load(&examples.join("dunningd.local.yaml")).expect("local-peers config");

    // The production example reads its secrets from systemd credentials.
    let credentials = tempfile::tempdir().unwrap();
    for name in [
        "smtp-password",
        "twilio-auth-token",
        "webhook-secret",
        "inapp-secret",
        "stripe-api-key",
    ] {
        std::fs::write(credentials.path().join(name), "x").unwrap();
    }
    let text = std::fs::read_to_string(examples.join("dunningd.production.yaml")).unwrap();
    let config = Config::parse_with_credentials(
        &examples.join("dunningd.production.yaml"),
        &text,
        Some(credentials.path()),
    )
    .expect("production config");
    assert_eq!(config.channels["email"].plugin, "smtp");
    assert_eq!(config.channels["sms"].settings["auth_token"], "x");
    assert_eq!(
        config.metrics,
        Some(MetricsConfig {
            listen: "127.0.0.1:9464".parse().unwrap()
        })
    );
}

#[test]
fn the_workflow_file_limit_is_a_size_up_to_the_cap() {
    // (value, Ok(bytes) or Err(part of the message))
    let table: &[(&str, Result<u64, &str>)] = &[
        ("", Ok(1024 * 1024)),
        ("limits: { workflow_file_size: 8MiB }", Ok(8 * 1024 * 1024)),
        ("limits: { workflow_file_size: 512KiB }", Ok(512 * 1024)),
        ("limits: { workflow_file_size: 2MB }", Ok(2_000_000)),
        ("limits: { workflow_file_size: 2000000 }", Ok(2_000_000)),
        (
            "limits: { workflow_file_size: 16MiB }",
            Ok(MAX_WORKFLOW_FILE_SIZE),
        ),
        (
            "limits: { workflow_file_size: 17MiB }",
            Err("limits.workflow_file_size: 17825792 bytes is not between 1 and 16777216"),
        ),
        (
            "limits: { workflow_file_size: 0 }",
            Err("is not between 1 and"),
        ),
        (
            "limits: { workflow_file_size: 8 GiB }",
            Err("limits.workflow_file_size: '8 GiB' is not a size"),
        ),
        (
            "limits: { workflow_file_size: lots }",
            Err("'lots' is not a size"),
        ),
        ("limits: { workflow_file_size: -1 }", Err("is not a size")),
        (
            "limits: { workflow_size: 1 }",
            Err("unknown field `workflow_size`"),
        ),
    ];
    for (yaml, expected) in table {
        let got = Config::parse(Path::new("/etc/dunningd/dunningd.yaml"), yaml)
            .map(|c| c.limits.max_bytes)
            .map_err(|e| e.to_string());
        match (expected, &got) {
            (Ok(want), Ok(got)) => assert_eq!(got, want, "{yaml}"),
            (Err(want), Err(got)) => assert!(got.contains(want), "{yaml}: {got}"),
            _ => panic!("{yaml}: expected {expected:?}, got {got:?}"),
        }
    }
    // A file at the cap, with what `workflows show` adds, fits an answer.
    assert!(2 * MAX_WORKFLOW_FILE_SIZE + 1024 * 1024 < ADMIN_MESSAGE_LIMIT as u64);
}

#[test]
fn database_urls_hide_passwords() {
    let table = [
        (
            "postgres://dunning:s3cret@db:5432/dunning",
            "postgres://dunning:***@db:5432/dunning",
        ),
        (
            "postgres://dunning@db/dunning?sslmode=require&password=s3cret",
            "postgres://dunning@db/dunning?sslmode=require&password=***",
        ),
        (
            "sqlite:///var/lib/dunningd/dunningd.db",
            "sqlite:///var/lib/dunningd/dunningd.db",
        ),
    ];
    for (url, shown) in table {
        let url = DatabaseUrl(url.into());
        assert_eq!(url.to_string(), shown);
        assert!(!format!("{url:?}").contains("s3cret"));
    }
}
