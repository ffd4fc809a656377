//! Real HTTP peers on loopback for the channel plugins: a Twilio-compatible
//! Messages API and a webhook receiver. Each records what it received and
//! answers like the real thing, including its errors.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha1::Sha1;
use sha2::Sha256;

async fn serve(router: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    addr
}

/// The account SID and auth token the suites give the twilio plugin and
/// [`TwilioPeer`].
pub const TWILIO_SID: &str = "AC00000000000000000000000000000001";
pub const TWILIO_TOKEN: &str = "test-auth-token";

/// A Twilio-compatible `Messages.json` endpoint.
///
/// Checks HTTP basic auth and the form fields as Twilio documents them, and
/// answers Twilio's magic test numbers with Twilio's own errors:
/// `+15005550001` → 21211 (invalid number), `+15005550009` → 21614 (not a
/// mobile number), `+15005550004` → 21610 (unsubscribed); and ours:
/// `+15005550429` → 429 with `Retry-After: 7`, `+15005550500` → HTTP 500.
///
/// Like Twilio, it calls a message's `StatusCallback` (signed with the auth
/// token, the password): `sent`, then `delivered`, or for `+15005550030`
/// `undelivered` with error 30003 (unreachable).
#[derive(Clone)]
pub struct TwilioPeer {
    pub addr: SocketAddr,
    pub account_sid: String,
    /// Every accepted message: its form fields plus `_user` (the auth user).
    pub messages: Arc<Mutex<Vec<BTreeMap<String, String>>>>,
    /// Every request, accepted or not.
    pub requests: Arc<Mutex<u32>>,
    /// Every status callback made: (status, the HTTP status it was answered with).
    pub callbacks: Arc<Mutex<Vec<(String, u16)>>>,
    auth_token: String,
}

struct TwilioState {
    account_sid: String,
    user: String,
    password: String,
    messages: Arc<Mutex<Vec<BTreeMap<String, String>>>>,
    requests: Arc<Mutex<u32>>,
    callbacks: Arc<Mutex<Vec<(String, u16)>>>,
}

/// `X-Twilio-Signature` as Twilio computes it: base64 of HMAC-SHA1 keyed
/// with the auth token over the URL and every parameter sorted by name.
pub fn twilio_signature(auth_token: &str, url: &str, params: &[(&str, &str)]) -> String {
    let mut sorted = params.to_vec();
    sorted.sort();
    let mut mac = Hmac::<Sha1>::new_from_slice(auth_token.as_bytes()).expect("key");
    mac.update(url.as_bytes());
    for (name, value) in sorted {
        mac.update(name.as_bytes());
        mac.update(value.as_bytes());
    }
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// POSTs form `params` to `url` as Twilio does, signed with `auth_token`
/// (`None`: unsigned). Returns the answer's status and body.
pub async fn post_as_twilio(
    url: &str,
    auth_token: Option<&str>,
    params: &[(&str, &str)],
) -> (u16, String) {
    let mut request = reqwest::Client::new().post(url).form(params);
    if let Some(token) = auth_token {
        request = request.header("X-Twilio-Signature", twilio_signature(token, url, params));
    }
    let response = request.send().await.expect("post to the webhook");
    let status = response.status().as_u16();
    (status, response.text().await.unwrap_or_default())
}

/// POSTs a JSON webhook `body` to `url` with `headers` (a provider's
/// signature); returns the answer's status and body.
pub async fn post_webhook(url: &str, body: &str, headers: &[(&str, String)]) -> (u16, String) {
    let mut request = reqwest::Client::new()
        .post(url)
        .header("Content-Type", "application/json; charset=utf-8")
        .body(body.to_string());
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    let response = request.send().await.expect("post the webhook");
    let status = response.status().as_u16();
    (status, response.text().await.unwrap_or_default())
}

fn twilio_error(status: u16, code: u32, message: &str) -> Response {
    let body = serde_json::json!({
        "code": code,
        "message": message,
        "more_info": format!("https://www.twilio.com/docs/errors/{code}"),
        "status": status,
    });
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
    (
        status,
        [("Content-Type", "application/json")],
        body.to_string(),
    )
        .into_response()
}

async fn twilio_messages(
    State(state): State<Arc<TwilioState>>,
    Path(account): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    *state.requests.lock().expect("lock") += 1;
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", state.user, state.password))
    );
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(expected.as_str()) {
        return twilio_error(401, 20003, "Authenticate");
    }
    if account != state.account_sid {
        return twilio_error(404, 20404, "The requested resource was not found");
    }
    if headers.get("content-type").and_then(|v| v.to_str().ok())
        != Some("application/x-www-form-urlencoded")
    {
        return twilio_error(400, 21000, "expected a form-encoded body");
    }
    let mut form = BTreeMap::new();
    for (key, value) in url::form_urlencoded::parse(&body) {
        if form.insert(key.to_string(), value.to_string()).is_some() {
            return twilio_error(400, 21000, &format!("parameter {key} given twice"));
        }
    }
    let Some(to) = form.get("To").cloned() else {
        return twilio_error(400, 21604, "A 'To' phone number is required.");
    };
    if form.get("Body").is_none_or(|b| b.is_empty()) {
        return twilio_error(400, 21602, "Message body is required.");
    }
    match (
        form.contains_key("From"),
        form.contains_key("MessagingServiceSid"),
    ) {
        (true, false) | (false, true) => {}
        _ => {
            return twilio_error(
                400,
                21603,
                "A 'From' phone number or MessagingServiceSid is required.",
            );
        }
    }
    match to.as_str() {
        "+15005550001" => {
            return twilio_error(
                400,
                21211,
                &format!("The 'To' number {to} is not a valid phone number."),
            );
        }
        "+15005550009" => {
            return twilio_error(
                400,
                21614,
                &format!("'To' number {to} is not a valid mobile number"),
            );
        }
        "+15005550004" => {
            return twilio_error(400, 21610, "Attempt to send to unsubscribed recipient");
        }
        "+15005550429" => {
            let mut response = twilio_error(429, 20429, "Too Many Requests");
            response
                .headers_mut()
                .insert("Retry-After", axum::http::HeaderValue::from_static("7"));
            return response;
        }
        "+15005550500" => return twilio_error(500, 20500, "Internal Server Error"),
        _ => {}
    }
    let mut messages = state.messages.lock().expect("lock");
    let sid = format!("SM{:032x}", messages.len() + 1);
    form.insert("_user".into(), state.user.clone());
    form.insert("_sid".into(), sid.clone());
    messages.push(form.clone());
    drop(messages);
    if let Some(callback) = form.get("StatusCallback").cloned() {
        let (token, callbacks, sid) =
            (state.password.clone(), state.callbacks.clone(), sid.clone());
        let last: &[(&str, &str)] = if to == "+15005550030" {
            &[("MessageStatus", "undelivered"), ("ErrorCode", "30003")]
        } else {
            &[("MessageStatus", "delivered")]
        };
        let reports = [vec![("MessageStatus", "sent")], last.to_vec()];
        let account = state.account_sid.clone();
        tokio::spawn(async move {
            for report in reports {
                let mut params = vec![
                    ("MessageSid", sid.as_str()),
                    ("AccountSid", account.as_str()),
                ];
                params.extend(report.iter().copied());
                let status = params[2].1.to_string();
                let (answer, _) = post_as_twilio(&callback, Some(&token), &params).await;
                callbacks.lock().expect("lock").push((status, answer));
            }
        });
    }
    let body =
        serde_json::json!({ "sid": sid, "status": "queued", "to": to, "body": form["Body"] });
    (
        StatusCode::CREATED,
        [("Content-Type", "application/json")],
        body.to_string(),
    )
        .into_response()
}

impl TwilioPeer {
    /// Starts the peer; requests must authenticate as `user:password`.
    pub async fn start(account_sid: &str, user: &str, password: &str) -> TwilioPeer {
        let messages = Arc::new(Mutex::new(Vec::new()));
        let requests = Arc::new(Mutex::new(0));
        let callbacks = Arc::new(Mutex::new(Vec::new()));
        let state = Arc::new(TwilioState {
            account_sid: account_sid.into(),
            user: user.into(),
            password: password.into(),
            messages: messages.clone(),
            requests: requests.clone(),
            callbacks: callbacks.clone(),
        });
        let router = Router::new()
            .route(
                "/2010-04-01/Accounts/{account}/Messages.json",
                post(twilio_messages),
            )
            .with_state(state);
        let addr = serve(router).await;
        TwilioPeer {
            addr,
            account_sid: account_sid.into(),
            messages,
            requests,
            callbacks,
            auth_token: password.into(),
        }
    }

    /// Delivers an incoming SMS to a webhook as Twilio would (signed).
    pub async fn incoming(&self, webhook: &str, from: &str, body: &str) -> (u16, String) {
        let params = [
            ("MessageSid", "SMincoming00000000000000000000001"),
            ("AccountSid", self.account_sid.as_str()),
            ("From", from),
            ("To", "+15005550006"),
            ("Body", body),
            ("NumMedia", "0"),
        ];
        post_as_twilio(webhook, Some(&self.auth_token), &params).await
    }

    /// The status callbacks made so far: (status, answer).
    pub fn callbacks(&self) -> Vec<(String, u16)> {
        self.callbacks.lock().expect("lock").clone()
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn messages(&self) -> Vec<BTreeMap<String, String>> {
        self.messages.lock().expect("lock").clone()
    }

    pub fn requests(&self) -> u32 {
        *self.requests.lock().expect("lock")
    }
}

/// A webhook receiver that verifies `Dunningd-Signature` itself.
#[derive(Clone)]
pub struct WebhookPeer {
    pub addr: SocketAddr,
    pub received: Arc<Mutex<Vec<Received>>>,
    /// The HTTP status the next requests get (200 unless a test changes it).
    pub answer: Arc<Mutex<u16>>,
}

#[derive(Debug, Clone)]
pub struct Received {
    pub body: serde_json::Value,
    pub idempotency_key: String,
    /// Whether the signature matched HMAC-SHA256(secret, "<t>.<body>").
    pub signature_valid: bool,
}

struct WebhookState {
    secret: String,
    received: Arc<Mutex<Vec<Received>>>,
    answer: Arc<Mutex<u16>>,
}

fn verify(secret: &str, header: &str, body: &[u8]) -> bool {
    let mut t = None;
    let mut v1 = None;
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", value)) => t = Some(value),
            Some(("v1", value)) => v1 = Some(value),
            _ => {}
        }
    }
    let (Some(t), Some(v1)) = (t, v1) else {
        return false;
    };
    let Ok(expected) = hex::decode(v1) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
        return false;
    };
    mac.update(t.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.verify_slice(&expected).is_ok()
}

async fn webhook(
    State(state): State<Arc<WebhookState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let signature = headers
        .get("dunningd-signature")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let received = Received {
        body: serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
        idempotency_key: headers
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string(),
        signature_valid: verify(&state.secret, signature, &body),
    };
    let n = {
        let mut all = state.received.lock().expect("lock");
        all.push(received);
        all.len()
    };
    let status = *state.answer.lock().expect("lock");
    let mut response = (
        StatusCode::from_u16(status).unwrap_or(StatusCode::OK),
        format!("answer {status}"),
    )
        .into_response();
    response.headers_mut().insert(
        "X-Request-Id",
        format!("req-{n}").parse().expect("header value"),
    );
    if status == 429 {
        response
            .headers_mut()
            .insert("Retry-After", axum::http::HeaderValue::from_static("11"));
    }
    response
}

impl WebhookPeer {
    pub async fn start(secret: &str) -> WebhookPeer {
        let received = Arc::new(Mutex::new(Vec::new()));
        let answer = Arc::new(Mutex::new(200));
        let state = Arc::new(WebhookState {
            secret: secret.into(),
            received: received.clone(),
            answer: answer.clone(),
        });
        let addr = serve(
            Router::new()
                .route("/hook", post(webhook))
                .with_state(state),
        )
        .await;
        WebhookPeer {
            addr,
            received,
            answer,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().expect("lock").clone()
    }

    pub fn answer_with(&self, status: u16) {
        *self.answer.lock().expect("lock") = status;
    }
}

/// A real SMTP server on loopback: `tests/peers/smtp_server.py` on aiosmtpd.
pub struct SmtpPeer {
    pub port: u16,
    pub out: tempfile::TempDir,
    child: std::process::Child,
}

impl SmtpPeer {
    /// Starts the server, or returns `None` (with a note) where aiosmtpd is
    /// not installed. Under CI a missing aiosmtpd is a failure: `.ci/run`
    /// installs `tests/requirements.txt`.
    pub fn start() -> Option<SmtpPeer> {
        use std::io::BufRead;
        let available = std::process::Command::new("python3")
            .args(["-c", "import aiosmtpd"])
            .status()
            .is_ok_and(|s| s.success());
        if !available {
            assert!(
                std::env::var_os("CI").is_none(),
                "aiosmtpd is missing; .ci/run should have installed tests/requirements.txt"
            );
            eprintln!(
                "SMTP suite not run: install its server with `python3 -m pip install -r tests/requirements.txt`"
            );
            return None;
        }
        // A free port: bind, read it, release it for the server.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let out = tempfile::tempdir().expect("tempdir");
        let mut child = std::process::Command::new("python3")
            .arg(crate::workspace_root().join("tests/peers/smtp_server.py"))
            .args(["--port", &port.to_string(), "--out"])
            .arg(out.path())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("start the SMTP server");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read the server's first line");
        assert_eq!(line.trim(), "ready", "the SMTP server did not start");
        Some(SmtpPeer { port, out, child })
    }

    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    /// Every message the server accepted, in order.
    pub fn messages(&self) -> Vec<serde_json::Value> {
        let mut files: Vec<_> = std::fs::read_dir(self.out.path())
            .expect("read out dir")
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .collect();
        files.sort();
        files
            .iter()
            .map(|p| {
                serde_json::from_str(&std::fs::read_to_string(p).expect("read message"))
                    .expect("message JSON")
            })
            .collect()
    }
}

impl Drop for SmtpPeer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP proxy on loopback that a test can cut and restore, to make a server
/// (PostgreSQL) unreachable for a while without touching the server itself.
/// While cut, open connections are dropped and new ones refused.
pub struct TcpProxy {
    pub addr: SocketAddr,
    upstream: SocketAddr,
    running: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl TcpProxy {
    pub async fn start(upstream: SocketAddr) -> TcpProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let proxy = TcpProxy {
            addr: listener.local_addr().expect("local addr"),
            upstream,
            running: Mutex::new(None),
        };
        proxy.serve(listener);
        proxy
    }

    fn serve(&self, listener: tokio::net::TcpListener) {
        let upstream = self.upstream;
        let task = tokio::spawn(async move {
            // Dropping the set (when this task is aborted) aborts every
            // connection, which closes both of its sockets.
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((mut client, _)) = listener.accept().await {
                connections.spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        });
        *self.running.lock().expect("proxy lock") = Some(task);
    }

    /// Drops every connection and refuses new ones.
    pub async fn cut(&self) {
        let task = self.running.lock().expect("proxy lock").take();
        if let Some(task) = task {
            task.abort();
            let _ = task.await;
        }
    }

    /// Accepts connections again, on the same address.
    pub async fn restore(&self) {
        let listener = tokio::net::TcpListener::bind(self.addr)
            .await
            .expect("bind the proxy's address again");
        self.serve(listener);
    }
}
