//! Webhook signatures for the billing-provider tests, made by the providers'
//! own code wherever a provider ships one, so that a misreading of a scheme
//! cannot hide in both dunningd and its tests.
//!
//! Stripe and Paddle: `tests/peers/node/sign.js` runs Stripe's Node SDK
//! (which makes and checks the `Stripe-Signature` header) and Paddle's Node
//! SDK (which checks the `Paddle-Signature` header; every Paddle signature
//! handed out here has been accepted by it). Where node or the SDKs are
//! missing, a test calls [`node_signers_available`] first and returns early
//! with a note; under `CI` that is a failure instead, as for the Python peers.
//!
//! Recurly, Lago and Chargebee ship no signer we can run here, so their
//! headers are computed in plain Rust from each provider's documentation,
//! pinned by published vectors in `tests/tests/e2e/signers.rs`.
//!
//! Bodies must be UTF-8 (webhook bodies are JSON): the SDKs read the body as
//! text, and a lossy conversion would sign something else than the bytes sent.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// What a developer runs to install the Node peers.
const INSTALL: &str = "npm ci --prefix tests/peers/node";

/// The SDK packages `sign.js` loads.
const PACKAGES: &[&str] = &["stripe", "@paddle/paddle-node-sdk"];

fn node_peer_dir() -> PathBuf {
    crate::workspace_root().join("tests/peers/node")
}

/// What is missing for the Node signers, or `None` when they can run.
/// Checked once per test process.
fn node_peer_missing() -> Option<&'static str> {
    static MISSING: OnceLock<Option<String>> = OnceLock::new();
    MISSING
        .get_or_init(|| {
            let node = Command::new("node")
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !node {
                return Some("node is not installed".to_string());
            }
            PACKAGES
                .iter()
                .find(|p| {
                    !node_peer_dir()
                        .join("node_modules")
                        .join(p)
                        .join("package.json")
                        .exists()
                })
                .map(|p| format!("tests/peers/node/node_modules/{p} is missing"))
        })
        .as_deref()
}

/// Whether the SDK signers can run. Where they cannot, says how to enable
/// them and returns `false`, and the calling test returns early; under `CI`
/// a missing peer is a failure: `.ci/run` installs them.
pub fn node_signers_available() -> bool {
    let Some(missing) = node_peer_missing() else {
        return true;
    };
    assert!(
        std::env::var_os("CI").is_none(),
        "{missing}; .ci/run should have run `{INSTALL}`"
    );
    eprintln!(
        "webhook signature test not run ({missing}): install the providers' SDKs with `{INSTALL}`"
    );
    false
}

/// Runs `node sign.js COMMAND ARGS` with `body` on stdin. The arguments
/// carry secrets, so no message here repeats them.
fn sign_js(command: &str, args: &[&str], body: &[u8]) -> Output {
    if let Some(missing) = node_peer_missing() {
        panic!(
            "{missing}: run `{INSTALL}` (a test calls signers::node_signers_available() first to skip instead)"
        );
    }
    assert!(
        std::str::from_utf8(body).is_ok(),
        "the webhook SDKs read the body as UTF-8 text; sign only UTF-8 bodies"
    );
    let mut child = Command::new("node")
        .arg(node_peer_dir().join("sign.js"))
        .arg(command)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start node tests/peers/node/sign.js {command}: {e}"));
    // sign.js reads all of stdin before it writes anything, so writing the
    // whole body first cannot dead-lock on a full stdout pipe.
    let mut stdin = child.stdin.take().expect("piped stdin");
    stdin
        .write_all(body)
        .unwrap_or_else(|e| panic!("write the body to sign.js {command}: {e}"));
    drop(stdin);
    child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("wait for sign.js {command}: {e}"))
}

/// The printed value of a signing command; panics with the SDK's words when
/// it refused.
fn signed(command: &str, args: &[&str], body: &[u8]) -> String {
    let output = sign_js(command, args, body);
    assert!(
        output.status.success(),
        "sign.js {command} failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    );
    String::from_utf8(output.stdout)
        .expect("sign.js prints ASCII")
        .trim_end()
        .to_string()
}

/// The verdict of a verifying command: exit 0 accepts, 1 refuses (the SDK's
/// reason goes to the test's output); anything else is a broken call.
fn verdict(command: &str, args: &[&str], body: &[u8]) -> bool {
    let output = sign_js(command, args, body);
    match output.status.code() {
        Some(0) => true,
        Some(1) => {
            eprintln!(
                "sign.js {command}: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            );
            false
        }
        _ => panic!(
            "sign.js {command} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ),
    }
}

/// `Stripe-Signature` value made by Stripe's SDK
/// (`stripe.webhooks.generateTestHeaderString`), one `v1=` entry per secret
/// in order, as Stripe sends during a secret rotation: `t=T,v1=A,v1=B`.
/// (A `timestamp` of 0 or less makes the SDK use the current time; the
/// header then names that time.)
pub fn stripe_signature(secrets: &[&str], timestamp: i64, body: &[u8]) -> String {
    assert!(!secrets.is_empty(), "stripe_signature needs a secret");
    let timestamp = timestamp.to_string();
    let mut args = vec!["--timestamp", &timestamp];
    for secret in secrets {
        args.extend(["--secret", secret]);
    }
    signed("stripe", &args, body)
}

/// Whether Stripe's SDK (`stripe.webhooks.constructEvent`, default tolerance
/// of 300 s) accepts `header` for `body` now. The SDK also parses the body
/// as JSON, so a non-JSON body is refused.
pub fn stripe_accepts(secret: &str, header: &str, body: &[u8]) -> bool {
    verdict(
        "stripe-verify",
        &["--secret", secret, "--header", header],
        body,
    )
}

/// [`stripe_accepts`] as of `now` (Unix seconds; the SDK's `receivedAt`),
/// for headers whose age is the point of a test.
pub fn stripe_accepts_at(secret: &str, header: &str, body: &[u8], now: i64) -> bool {
    let now = now.to_string();
    verdict(
        "stripe-verify",
        &["--secret", secret, "--header", header, "--now", &now],
        body,
    )
}

/// `Paddle-Signature` value `ts=T;h1=HEX`, HEX the HMAC-SHA256 hex of
/// `T:body` (Paddle documents the scheme; its SDK has no signer). Returned
/// only after Paddle's SDK (`webhooks.isSignatureValid`) accepted it, asked
/// as of `timestamp`: its one clock rule (refuse when `ts + 5 s` is past)
/// is the receiver's, so an old `timestamp` still gives a checked signature.
pub fn paddle_signature(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let timestamp = timestamp.to_string();
    signed(
        "paddle",
        &["--secret", secret, "--timestamp", &timestamp],
        body,
    )
}

/// Whether Paddle's SDK (`webhooks.isSignatureValid`) accepts `header` for
/// `body` now. Its window is 5 seconds, past only: a signature older than
/// that is refused, one from the future is not.
pub fn paddle_accepts(secret: &str, header: &str, body: &[u8]) -> bool {
    verdict(
        "paddle-verify",
        &["--secret", secret, "--header", header],
        body,
    )
}

/// [`paddle_accepts`] as of `now` (Unix seconds).
pub fn paddle_accepts_at(secret: &str, header: &str, body: &[u8], now: i64) -> bool {
    let now = now.to_string();
    verdict(
        "paddle-verify",
        &["--secret", secret, "--header", header, "--now", &now],
        body,
    )
}

fn hmac_sha256(key: &str, parts: &[&[u8]]) -> Vec<u8> {
    // HMAC takes a key of any length; new_from_slice cannot fail for it.
    let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).expect("hmac key");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().to_vec()
}

/// `recurly-signature` value `TIMESTAMP_MS,HEX`: HMAC-SHA256 hex, keyed with
/// the endpoint's secret, of `{timestamp_ms}.{body}`.
///
/// Based on Recurly's "Signature verification" page
/// (docs.recurly.com/recurly-subscriptions/docs/signature-verification: a
/// millisecond Unix timestamp, then one or more hex signatures, comma
/// separated) and its clients' verifiers, e.g. recurly-client-ruby
/// `lib/recurly/webhooks.rb` (`OpenSSL::HMAC.hexdigest("sha256", secret,
/// "#{timestamp}.#{body}")`, tolerance 5 minutes either way).
pub fn recurly_signature(secret: &str, timestamp_ms: i64, body: &[u8]) -> String {
    let timestamp = timestamp_ms.to_string();
    let mac = hmac_sha256(secret, &[timestamp.as_bytes(), b".", body]);
    format!("{timestamp},{}", hex::encode(mac))
}

/// `X-Lago-Signature` value for an endpoint whose `X-Lago-Signature-Algorithm`
/// is `hmac`: standard, padded base64 of the HMAC-SHA256 of the raw body,
/// keyed with the organization's HMAC key.
///
/// Based on Lago's "Format & Signature" page
/// (docs.getlago.com/api-reference/webhooks/format---signature, "HMAC
/// Signature": `base64.b64encode(hmac.new(key, body, 'sha256').digest())`)
/// and lago-api's `Webhook#hmac_signature` (`Base64.strict_encode64` of
/// `OpenSSL::HMAC.digest('sha-256', key, payload.to_json)`).
pub fn lago_signature(hmac_key: &str, body: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(hmac_sha256(hmac_key, &[body]))
}

/// `Authorization` value Chargebee sends when a webhook is protected with a
/// user name and password: `Basic base64(user:password)`.
///
/// Chargebee signs nothing; its webhook settings offer HTTP Basic
/// authentication, which is RFC 7617 (standard base64 of `user:password`).
pub fn chargebee_authorization(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}
