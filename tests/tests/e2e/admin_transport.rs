//! How clients reach the admin API: a stock Python gRPC client on the Unix
//! socket with default options, TLS and mutual TLS on TCP (certificates made
//! at test time), plain TCP off loopback refused unless allowed, and
//! dunningctl offering connection options only where it connects.

use std::path::Path;
use std::process::{Command, Stdio};

use dunningd_e2e::daemon::{Setup, TestDaemon};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};

const TOKEN: &str = "0123456789abcdef0123456789abcdef";

/// Regression test for grpcio's `:authority` on a Unix socket (the
/// percent-encoded socket path), which h2 reset with PROTOCOL_ERROR
/// (hyperium/h2#487): health, reflection and an Admin call, no options.
#[tokio::test]
async fn python_grpcio_works_on_the_socket_with_default_options() {
    let available = Command::new("python3")
        .args(["-c", "import grpc, grpc_health.v1, grpc_reflection"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !available {
        assert!(
            std::env::var_os("CI").is_none(),
            "grpcio is missing; .ci/run should have installed tests/requirements.txt"
        );
        eprintln!(
            "Python gRPC client test not run: install it with `python3 -m pip install -r tests/requirements.txt`"
        );
        return;
    }
    let daemon = TestDaemon::start(Setup::default()).await;
    let out = Command::new("python3")
        .arg(dunningd_e2e::workspace_root().join("tests/peers/grpc_client.py"))
        .arg(format!("unix:{}", daemon.socket.display()))
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "the Python client failed:\n{}\ndaemon log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        daemon.log()
    );
    let answer: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("the client prints JSON");
    assert_eq!(answer["health"], "SERVING", "{answer}");
    let services = answer["services"].as_array().expect("services");
    for service in ["dunningd.v1.Admin", "grpc.health.v1.Health"] {
        assert!(services.iter().any(|s| s == service), "{answer}");
    }
    assert_eq!(
        answer["status"]["version"],
        env!("CARGO_PKG_VERSION"),
        "{answer}"
    );
}

/// A CA, and the certificates it signs, as PEM files in `dir`.
struct Pki {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Pki {
    fn new(dir: &Path, name: &str) -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("{name} test CA"));
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key"))
            .expect("self-signed CA");
        std::fs::write(dir.join(format!("{name}.crt")), issuer.pem()).expect("write CA");
        Pki { issuer }
    }

    /// Writes `{file}.crt` and `{file}.key` for these names.
    fn issue(&self, dir: &Path, file: &str, names: &[&str]) {
        let params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .expect("params");
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        std::fs::write(dir.join(format!("{file}.crt")), cert.pem()).expect("write cert");
        std::fs::write(dir.join(format!("{file}.key")), key.serialize_pem()).expect("write key");
    }
}

/// Restarts the daemon with these lines under `admin:` (besides the socket).
async fn restart_with_admin(daemon: &mut TestDaemon, admin: &str) {
    daemon.terminate().await;
    let config = std::fs::read_to_string(&daemon.config).expect("read config");
    let config = config.replace(
        "admin:\n  socket: admin.sock\n",
        &format!("admin:\n  socket: admin.sock\n{admin}"),
    );
    std::fs::write(&daemon.config, config).expect("write config");
    daemon.spawn().await;
}

fn text(out: &std::process::Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// Runs dunningctl with `args`; `Ok(stdout)` or `Err(stderr)`.
fn ctl(daemon: &TestDaemon, args: &[&str]) -> Result<String, String> {
    let out = daemon.ctl(args);
    let (stdout, stderr) = text(&out);
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(stderr)
    }
}

#[tokio::test]
async fn tls_with_the_right_ca_works_and_refuses_a_wrong_one() {
    let mut daemon = TestDaemon::start(Setup::default()).await;
    let dir = daemon.dir.path().to_path_buf();
    let pki = Pki::new(&dir, "ca");
    Pki::new(&dir, "other-ca");
    pki.issue(&dir, "server", &["localhost", "127.0.0.1"]);
    std::fs::write(dir.join("token"), TOKEN).expect("token");
    let port = dunningd_e2e::free_port();
    restart_with_admin(
        &mut daemon,
        &format!(
            "  tcp: 127.0.0.1:{port}\n  token_file: token\n  tls: {{ cert_file: server.crt, key_file: server.key }}\n"
        ),
    )
    .await;
    let https = format!("https://localhost:{port}");
    let http = format!("http://127.0.0.1:{port}");

    // (arguments after `status`, Ok(stdout contains) or Err(stderr contains))
    let table: &[(&[&str], Result<&str, &str>)] = &[
        (
            &[
                "--addr",
                &https,
                "--ca-file",
                "ca.crt",
                "--token-file",
                "token",
            ],
            Ok("dunningd "),
        ),
        (
            &[
                "--addr",
                &https,
                "--ca-file",
                "other-ca.crt",
                "--token-file",
                "token",
            ],
            Err("invalid peer certificate: UnknownIssuer"),
        ),
        // TLS alone authenticates the server, not the client: the token is
        // still required.
        (
            &["--addr", &https, "--ca-file", "ca.crt"],
            Err("missing or wrong bearer token"),
        ),
        (
            &["--addr", &http, "--token-file", "token"],
            Err("use an https:// --addr"),
        ),
        (
            &["--addr", &http, "--ca-file", "ca.crt"],
            Err("--ca-file, --cert-file and --key-file are for TLS: use an https:// --addr"),
        ),
    ];
    for (args, expected) in table {
        let args: Vec<&str> = std::iter::once("status")
            .chain(args.iter().copied())
            .collect();
        match (ctl(&daemon, &args), expected) {
            (Ok(out), Ok(want)) => assert!(out.contains(want), "{args:?}: {out}"),
            (Err(err), Err(want)) => assert!(err.contains(want), "{args:?}: {err}"),
            (got, _) => panic!("{args:?}: got {got:?}, want {expected:?}"),
        }
    }
}

#[tokio::test]
async fn mutual_tls_refuses_clients_without_a_certificate() {
    let mut daemon = TestDaemon::start(Setup::default()).await;
    let dir = daemon.dir.path().to_path_buf();
    let pki = Pki::new(&dir, "ca");
    let strangers = Pki::new(&dir, "other-ca");
    pki.issue(&dir, "server", &["localhost"]);
    pki.issue(&dir, "client", &["operator"]);
    strangers.issue(&dir, "stranger", &["operator"]);
    let port = dunningd_e2e::free_port();
    // No token file: mutual TLS authenticates clients by their certificate.
    restart_with_admin(
        &mut daemon,
        &format!(
            "  tcp: 127.0.0.1:{port}\n  tls: {{ cert_file: server.crt, key_file: server.key, client_ca_file: ca.crt }}\n"
        ),
    )
    .await;
    let https = format!("https://localhost:{port}");
    let base = ["status", "--addr", &https, "--ca-file", "ca.crt"];
    let with = |extra: &[&'static str]| -> Vec<String> {
        base.iter().chain(extra).map(|s| s.to_string()).collect()
    };
    let table: Vec<(Vec<String>, Result<&str, &str>)> = vec![
        (
            with(&["--cert-file", "client.crt", "--key-file", "client.key"]),
            Ok("dunningd "),
        ),
        (
            with(&[]),
            // The refusal reaches the call either as the server's alert or
            // as a closed connection, depending on timing; the hint is stable.
            Err("(if the daemon requires mutual TLS, give --cert-file and --key-file)"),
        ),
        (
            with(&["--cert-file", "stranger.crt", "--key-file", "stranger.key"]),
            Err("is --cert-file signed by its admin.tls.client_ca_file?"),
        ),
        (
            with(&["--cert-file", "client.crt"]),
            Err("--cert-file needs --key-file"),
        ),
    ];
    for (args, expected) in &table {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        match (ctl(&daemon, &args), expected) {
            (Ok(out), Ok(want)) => assert!(out.contains(want), "{args:?}: {out}"),
            (Err(err), Err(want)) => assert!(err.contains(want), "{args:?}: {err}"),
            (got, _) => panic!("{args:?}: got {got:?}, want {expected:?}"),
        }
    }
}

#[tokio::test]
async fn plain_tcp_off_loopback_is_refused_unless_allowed() {
    let mut daemon = TestDaemon::start(Setup::default()).await;
    std::fs::write(daemon.path("token"), TOKEN).expect("token");
    daemon.terminate().await;
    let port = dunningd_e2e::free_port();
    let original = std::fs::read_to_string(&daemon.config).expect("read config");
    let admin = |extra: &str| {
        original.replace(
            "admin:\n  socket: admin.sock\n",
            &format!(
                "admin:\n  socket: admin.sock\n  tcp: 0.0.0.0:{port}\n  token_file: token\n{extra}"
            ),
        )
    };

    // Refused: the daemon exits at start, naming the address and the way out.
    std::fs::write(&daemon.config, admin("")).expect("write config");
    let (status, stderr) =
        dunningd_e2e::daemon::start_refused(&daemon.config, daemon.dir.path()).await;
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "admin.tcp '0.0.0.0:{port}': refusing plain TCP on a non-loopback address"
        )) && stderr.contains("set admin.allow_plaintext: true"),
        "{stderr}"
    );

    // Allowed in so many words: it starts, says so in the log, and serves.
    std::fs::write(&daemon.config, admin("  allow_plaintext: true\n")).expect("write config");
    daemon.spawn().await;
    assert!(
        daemon
            .log()
            .contains("admin API on plain TCP on a non-loopback address"),
        "{}",
        daemon.log()
    );
    let addr = format!("http://127.0.0.1:{port}");
    let out = ctl(
        &daemon,
        &["status", "--addr", &addr, "--token-file", "token"],
    );
    assert!(
        out.as_ref().is_ok_and(|o| o.contains("dunningd ")),
        "{out:?}"
    );
}

/// Offline commands do not offer options they ignore; commands that talk to
/// the daemon offer all of them.
#[test]
fn connection_options_only_in_the_help_of_commands_that_connect() {
    const OPTIONS: &[&str] = &[
        "--socket",
        "--addr",
        "--token-file",
        "--ca-file",
        "--cert-file",
        "--key-file",
        "--tls-server-name",
    ];
    let table: &[(&[&str], bool)] = &[
        (&["workflows", "validate"], false),
        (&["preview"], false),
        (&["status"], true),
        (&["workflows", "list"], true),
        (&["cases", "show"], true),
        (&["clock", "advance"], true),
        (&["events", "send"], true),
    ];
    for (command, connects) in table {
        let out = Command::new(dunningd_e2e::binary("dunningctl"))
            .args(*command)
            .arg("--help")
            .output()
            .expect("run dunningctl");
        assert!(out.status.success(), "{command:?}");
        let help = String::from_utf8_lossy(&out.stdout);
        for option in OPTIONS {
            assert_eq!(
                help.contains(option),
                *connects,
                "{command:?} {option}:\n{help}"
            );
        }
    }
}
