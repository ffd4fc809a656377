//! A Stripe-compatible API on loopback: objects a test puts in, the invoice
//! and subscription actions the `stripe` plugin takes, and Stripe's errors.
//!
//! It answers as Stripe documents: `Authorization: Bearer <key>` (or HTTP
//! basic with the key as user) else 401 `authentication_error`; POST bodies
//! form-encoded; an unknown object is 404 `invalid_request_error`
//! `resource_missing`; a repeated `Idempotency-Key` on the same method, path
//! and parameters answers the first answer again (with
//! `Idempotent-Replayed: true`) without acting twice, and on others is 400
//! `idempotency_error`. Every request is recorded, refused ones included.
//!
//! Where it differs from Stripe, on purpose: a refused key is quoted whole
//! in the 401 message (Stripe shows its last four characters), so a test
//! proves the plugin hides it; objects' fields starting with `_` are test
//! switches, never answered (`"_decline_code": "insufficient_funds"` on an
//! invoice declines its payment); and [`StripePeer::fail_next`]'s errors
//! happen before any endpoint runs, so they are not kept for the
//! idempotency key (a retry with it goes through).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde_json::{Value, json};

/// One request as the peer received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StripeRequest {
    pub method: String,
    pub path: String,
    /// The raw query string (`""` without one); a DELETE's parameters.
    pub query: String,
    /// The form-encoded body's fields (empty for a body that is not a form).
    pub form: BTreeMap<String, String>,
    pub idempotency_key: Option<String>,
    pub stripe_account: Option<String>,
}

/// A Stripe-compatible API server; see the module documentation.
#[derive(Clone)]
pub struct StripePeer {
    pub addr: SocketAddr,
    state: Arc<PeerState>,
}

/// An answer kept for an idempotency key.
#[derive(Clone)]
struct Kept {
    /// Method, path and parameters of the first request with the key.
    request: (String, String, String, BTreeMap<String, String>),
    status: u16,
    body: Value,
}

#[derive(Default)]
struct Inner {
    /// Path (`/v1/invoices/in_1`) → object.
    objects: BTreeMap<String, Value>,
    /// (how many more requests fail, with which status).
    fail: (u32, u16),
    requests: Vec<StripeRequest>,
    kept: BTreeMap<String, Kept>,
}

struct PeerState {
    api_key: String,
    inner: Mutex<Inner>,
}

/// Stripe's error body for `status`: `{"error": {type, code, message}}`.
fn stripe_error(status: u16, kind: &str, code: Option<&str>, message: &str) -> (u16, Value) {
    let mut error = json!({ "type": kind, "message": message });
    if let Some(code) = code {
        error["code"] = code.into();
    }
    (status, json!({ "error": error }))
}

/// The error [`StripePeer::fail_next`] answers with, by status.
fn failure(status: u16) -> (u16, Value) {
    match status {
        401 => stripe_error(
            401,
            "authentication_error",
            None,
            "Invalid API Key provided",
        ),
        402 => {
            let (status, mut body) = stripe_error(
                402,
                "card_error",
                Some("card_declined"),
                "Your card was declined.",
            );
            body["error"]["decline_code"] = "generic_decline".into();
            (status, body)
        }
        403 => stripe_error(
            403,
            "permission_error",
            None,
            "The provided key does not have the required permissions for this endpoint",
        ),
        404 => stripe_error(
            404,
            "invalid_request_error",
            Some("resource_missing"),
            "No such object",
        ),
        409 => stripe_error(
            409,
            "idempotency_error",
            None,
            "There is currently another in-progress request using this Stripe-Account and Idempotency-Key",
        ),
        429 => stripe_error(
            429,
            "invalid_request_error",
            Some("rate_limit"),
            "Request rate limit exceeded",
        ),
        500..=599 => stripe_error(
            status,
            "api_error",
            None,
            "Something went wrong on Stripe's end",
        ),
        _ => stripe_error(status, "invalid_request_error", None, "Invalid request"),
    }
}

/// The object without its test switches (fields starting with `_`).
fn public(object: &Value) -> Value {
    match object {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(k, _)| !k.starts_with('_'))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ),
        other => other.clone(),
    }
}

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(String::from)
}

/// The key a request authenticates with: Bearer, or basic with the key as user.
fn presented_key(headers: &HeaderMap) -> Option<String> {
    let value = header(headers, "authorization")?;
    if let Some(key) = value.strip_prefix("Bearer ") {
        return Some(key.to_string());
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(value.strip_prefix("Basic ")?)
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    Some(
        text.split_once(':')
            .map_or(text.clone(), |(user, _)| user.to_string()),
    )
}

async fn handle(
    State(state): State<Arc<PeerState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let is_form = header(&headers, "content-type")
        .is_some_and(|t| t.starts_with("application/x-www-form-urlencoded"));
    let form: BTreeMap<String, String> = if is_form {
        url::form_urlencoded::parse(&body).into_owned().collect()
    } else {
        BTreeMap::new()
    };
    let request = StripeRequest {
        method: method.to_string(),
        path: uri.path().to_string(),
        query: uri.query().unwrap_or("").to_string(),
        form,
        idempotency_key: header(&headers, "idempotency-key"),
        stripe_account: header(&headers, "stripe-account"),
    };
    let key = presented_key(&headers);
    let (status, body, replayed) = state.answer(request, key, is_form || body.is_empty());
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (
        status,
        [("Content-Type", "application/json")],
        body.to_string(),
    )
        .into_response();
    if replayed {
        response
            .headers_mut()
            .insert("Idempotent-Replayed", "true".parse().expect("header value"));
    }
    if status == StatusCode::TOO_MANY_REQUESTS {
        response
            .headers_mut()
            .insert("Retry-After", "2".parse().expect("header value"));
    }
    response
}

impl PeerState {
    /// Records `request` and answers it: (status, body, replayed).
    fn answer(
        &self,
        request: StripeRequest,
        key: Option<String>,
        form_ok: bool,
    ) -> (u16, Value, bool) {
        let mut inner = self.inner.lock().expect("lock");
        inner.requests.push(request.clone());
        if inner.fail.0 > 0 {
            inner.fail.0 -= 1;
            let (status, body) = failure(inner.fail.1);
            return (status, body, false);
        }
        match key {
            Some(key) if key == self.api_key => {}
            Some(key) => {
                let (status, body) = stripe_error(
                    401,
                    "authentication_error",
                    None,
                    &format!("Invalid API Key provided: {key}"),
                );
                return (status, body, false);
            }
            None => {
                let (status, body) = stripe_error(
                    401,
                    "authentication_error",
                    None,
                    "You did not provide an API key. You need to provide your API key in the Authorization header, using Bearer auth",
                );
                return (status, body, false);
            }
        }
        if request.method == "POST" && !form_ok {
            let (status, body) = stripe_error(
                400,
                "invalid_request_error",
                None,
                "Invalid request: the body must be application/x-www-form-urlencoded",
            );
            return (status, body, false);
        }
        let acts = matches!(request.method.as_str(), "POST" | "DELETE");
        let idempotency = request.idempotency_key.clone().filter(|_| acts);
        let fingerprint = (
            request.method.clone(),
            request.path.clone(),
            request.query.clone(),
            request.form.clone(),
        );
        if let Some(key) = &idempotency
            && let Some(kept) = inner.kept.get(key)
        {
            if kept.request == fingerprint {
                return (kept.status, kept.body.clone(), true);
            }
            let (status, body) = stripe_error(
                400,
                "idempotency_error",
                None,
                &format!(
                    "Keys for idempotent requests can only be used with the same parameters they were first used with. Try using a key other than '{key}' if you meant to execute a different request."
                ),
            );
            return (status, body, false);
        }
        let (status, body) = route(&mut inner.objects, &request);
        if let Some(key) = idempotency {
            inner.kept.insert(
                key,
                Kept {
                    request: fingerprint,
                    status,
                    body: body.clone(),
                },
            );
        }
        (status, body, false)
    }
}

fn no_such(kind: &str, id: &str) -> (u16, Value) {
    stripe_error(
        404,
        "invalid_request_error",
        Some("resource_missing"),
        &format!("No such {kind}: '{id}'"),
    )
}

fn not_open(message: String) -> (u16, Value) {
    stripe_error(
        400,
        "invalid_request_error",
        Some("invoice_not_open"),
        &message,
    )
}

/// The endpoints: GET of any object put in, and the actions' state changes.
fn route(objects: &mut BTreeMap<String, Value>, request: &StripeRequest) -> (u16, Value) {
    let segments: Vec<&str> = request.path.trim_start_matches('/').split('/').collect();
    let now = chrono::Utc::now().timestamp();
    match (request.method.as_str(), segments.as_slice()) {
        ("GET", [.., id]) => match objects.get(&request.path) {
            Some(object) => (200, public(object)),
            None => no_such("object", id),
        },
        (
            "POST",
            [
                "v1",
                "invoices",
                id,
                action @ ("pay" | "mark_uncollectible" | "void"),
            ],
        ) => {
            let Some(invoice) = objects.get_mut(&format!("/v1/invoices/{id}")) else {
                return no_such("invoice", id);
            };
            let status = invoice["status"].as_str().unwrap_or("draft").to_string();
            match (*action, status.as_str()) {
                ("pay", "open" | "uncollectible") => {
                    if let Some(decline) = invoice["_decline_code"].as_str() {
                        let (status, mut body) = stripe_error(
                            402,
                            "card_error",
                            Some("card_declined"),
                            "Your card has insufficient funds.",
                        );
                        body["error"]["decline_code"] = decline.into();
                        return (status, body);
                    }
                    invoice["status"] = "paid".into();
                    invoice["paid"] = true.into();
                    invoice["amount_paid"] = invoice["amount_due"].clone();
                    invoice["amount_remaining"] = 0.into();
                }
                ("pay", "paid") => {
                    return stripe_error(
                        400,
                        "invalid_request_error",
                        None,
                        "Invoice is already paid",
                    );
                }
                ("pay", other) => {
                    return not_open(format!(
                        "This invoice can only be paid if it is open. This invoice is {other}."
                    ));
                }
                ("mark_uncollectible", "open") => invoice["status"] = "uncollectible".into(),
                ("mark_uncollectible", other) => {
                    return not_open(format!(
                        "You can only mark open invoices as uncollectible. This invoice is {other}."
                    ));
                }
                ("void", "open" | "uncollectible") => invoice["status"] = "void".into(),
                (_, other) => {
                    return not_open(format!(
                        "You can only void open or uncollectible invoices. This invoice is {other}."
                    ));
                }
            }
            (200, public(invoice))
        }
        ("POST", ["v1", "subscriptions", id]) => {
            let Some(subscription) = objects.get_mut(&request.path) else {
                return no_such("subscription", id);
            };
            if subscription["status"] == "canceled" {
                return stripe_error(
                    400,
                    "invalid_request_error",
                    None,
                    "A canceled subscription can only update its cancellation_details and metadata.",
                );
            }
            if let Some(behavior) = request.form.get("pause_collection[behavior]") {
                if !matches!(
                    behavior.as_str(),
                    "keep_as_draft" | "mark_uncollectible" | "void"
                ) {
                    return stripe_error(
                        400,
                        "invalid_request_error",
                        Some("parameter_invalid_string"),
                        "Invalid pause_collection[behavior]: must be one of keep_as_draft, mark_uncollectible, or void",
                    );
                }
                subscription["pause_collection"] =
                    json!({ "behavior": behavior, "resumes_at": null });
            } else if request
                .form
                .get("pause_collection")
                .is_some_and(|v| v.is_empty())
            {
                subscription["pause_collection"] = Value::Null;
            }
            (200, public(subscription))
        }
        ("DELETE", ["v1", "subscriptions", id]) => {
            let Some(subscription) = objects.get_mut(&request.path) else {
                return no_such("subscription", id);
            };
            // Stripe answers a canceled subscription's DELETE as if it did not exist.
            if subscription["status"] == "canceled" {
                return no_such("subscription", id);
            }
            subscription["status"] = "canceled".into();
            subscription["canceled_at"] = now.into();
            subscription["ended_at"] = now.into();
            (200, public(subscription))
        }
        ("POST", ["v1", "billing_portal", "sessions"]) => {
            let Some(customer) = request.form.get("customer").filter(|c| !c.is_empty()) else {
                return stripe_error(
                    400,
                    "invalid_request_error",
                    Some("parameter_missing"),
                    "Missing required param: customer.",
                );
            };
            if !objects.contains_key(&format!("/v1/customers/{customer}")) {
                return no_such("customer", customer);
            }
            let number = objects
                .keys()
                .filter(|k| k.starts_with("/v1/billing_portal/sessions/"))
                .count()
                + 1;
            let id = format!("bps_{number:024}");
            let session = json!({
                "id": id,
                "object": "billing_portal.session",
                "configuration": "bpc_default",
                "created": now,
                "customer": customer,
                "livemode": false,
                "locale": null,
                "on_behalf_of": null,
                "return_url": request.form.get("return_url"),
                "url": format!("https://billing.stripe.com/p/session/test_{id}"),
            });
            objects.insert(format!("/v1/billing_portal/sessions/{id}"), session.clone());
            (200, session)
        }
        (method, _) => stripe_error(
            404,
            "invalid_request_error",
            None,
            &format!("Unrecognized request URL ({method}: {}).", request.path),
        ),
    }
}

impl StripePeer {
    /// Starts the peer; requests must authenticate with `api_key`.
    pub async fn start(api_key: &str) -> StripePeer {
        let state = Arc::new(PeerState {
            api_key: api_key.to_string(),
            inner: Mutex::new(Inner::default()),
        });
        let router = Router::new().fallback(handle).with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let addr = listener.local_addr().expect("local addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        StripePeer { addr, state }
    }

    /// `http://127.0.0.1:PORT`, the plugin's `base_url`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Puts (or replaces) the object a GET of `path` answers, e.g.
    /// `/v1/invoices/in_1` with `{"id": "in_1", "status": "open", …}`.
    pub fn put_object(&self, path: &str, object: Value) {
        self.state
            .inner
            .lock()
            .expect("lock")
            .objects
            .insert(path.to_string(), object);
    }

    /// The object at `path` as it is now (with its test switches).
    pub fn object(&self, path: &str) -> Option<Value> {
        self.state
            .inner
            .lock()
            .expect("lock")
            .objects
            .get(path)
            .cloned()
    }

    /// The next `count` requests get Stripe's error for `status` (500 →
    /// `api_error`, 429 → `rate_limit` with `Retry-After: 2`, 402 →
    /// `card_error` …), before authentication or any endpoint runs.
    pub fn fail_next(&self, count: u32, status: u16) {
        self.state.inner.lock().expect("lock").fail = (count, status);
    }

    /// Every request, in order, refused ones included.
    pub fn requests(&self) -> Vec<StripeRequest> {
        self.state.inner.lock().expect("lock").requests.clone()
    }
}
