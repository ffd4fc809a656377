//! The `inapp` channel plugin: a per-customer inbox served to the product's
//! front end over HTTP, with live updates and an embeddable banner.
//!
//! Settings:
//! - `listen` (required): the HTTP address, e.g. `127.0.0.1:8787` (put it
//!   behind the product's reverse proxy).
//! - `database` (required): where the inbox lives: a SQLite file (a path, or
//!   `sqlite://PATH`) for a single daemon, or a PostgreSQL URL
//!   (`postgres://…`) when several daemons share the work. The ABI gives
//!   plugins no access to the daemon's store, so the inbox keeps its own
//!   table (`inapp_messages` on PostgreSQL, which may be the daemons' own
//!   database). On PostgreSQL every daemon's inbox server sees every
//!   message, and live updates cross daemons with `NOTIFY dunningd_inapp`:
//!   a browser may talk to any of them (behind one load-balanced address).
//!   A SQLite file (and any folder above it) that does not exist yet is
//!   created private to the daemon's user.
//! - `secret` (required, under `secrets:`): the key the product's backend
//!   signs customer tokens with, each valid until `expires` (Unix seconds):
//!   `token = "<expires>." + hex(HMAC-SHA256(secret, "inapp:<expires>:<customer_id>"))`
//!   (see [`customer_token`]).
//! - `allowed_origins`: CORS origins of the product's pages (default `*`: the
//!   token, not the origin, is what authenticates).
//!
//! HTTP API (every call needs the customer's unexpired token, as
//! `Authorization: Bearer <token>` or `?token=`; anything else is `401` with
//! no detail; no call takes a request body):
//! - `GET  /v1/customers/{id}/messages?status=unread|all`
//! - `POST /v1/customers/{id}/messages/{message}/read`
//! - `POST /v1/customers/{id}/messages/{message}/dismiss`
//! - `GET  /v1/customers/{id}/stream`: Server-Sent Events; an `inbox` event
//!   with the unread, undismissed messages at once and after every change,
//!   until the token expires; at most 16 open per customer.
//! - `GET  /banner.js`: the embeddable banner (see `banner.js`).
//!
//! A delivery stores `title`, `body` and `url` from the template, once per
//! idempotency key, and answers `sent` with the message id.
//!
//! # Invariants
//!
//! What a message says comes from billing events, and so from customers
//! (names, links), and it is shown inside the product's own pages:
//! - **Links are web links.** A message's `url` is an `http:` or `https:`
//!   URL, or a relative one ([`web_link`], which parses like a browser).
//!   Anything else (`javascript:`, `data:`, `vbscript:`, in any case, behind
//!   spaces or control characters) is dropped when a delivery is stored (the
//!   message is still delivered, without its link) *and* blanked when the
//!   API serves a message, so rows stored by an older version never reach
//!   a page either. `banner.js` checks again on its own.
//! - **Text is text.** The API serves JSON and `text/plain` only, with
//!   `X-Content-Type-Options: nosniff`; `banner.js` sets text with
//!   `textContent` and never parses a message as HTML.
//! - **Strangers learn nothing.** The token is checked (in constant time,
//!   with its expiry) before anything else of a request is looked at: every
//!   malformed request without a valid token is the same bare `401`. With
//!   one, a customer reaches only their own messages (another's message is
//!   `404`, like one that does not exist), and database errors are logged,
//!   never sent.
//! - **No request bodies.** No call takes one: a request with a body is
//!   `413` before it reaches a handler.
//! - **Bounded streams.** A stream ends when its token expires, and one
//!   customer has at most [`STREAMS_PER_CUSTOMER`] open at once (`429`).
//! - **Private answers.** Every API answer (all but `banner.js`) is
//!   `Cache-Control: no-store` and `Vary: Origin`.
//! - **Private files.** A folder the plugin makes for its SQLite file is
//!   `0700` and the file it creates is `0600` (SQLite gives its `-wal` and
//!   `-shm` files the database file's mode), whatever the daemon's umask;
//!   the plugin never touches the process umask.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::rejection::PathRejection;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use dunningd_plugin_api::wire::{ChannelConfig, DeliveryRequest, DeliveryResponse};
use dunningd_plugin_api::{Channel, Plugin, export_plugin};
use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::Sha256;
use sqlx::postgres::{PgListener, PgPool};
use tokio::sync::broadcast;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::BroadcastStream;

use crate::db::{CHANGES_CHANNEL, InboxDb, Mark, NewMessage};

mod db;

const BANNER_JS: &str = include_str!("../banner.js");

/// The link a message may carry, or `None`: `http:`, `https:` or relative,
/// decided by the WHATWG URL parser a browser uses (which lowercases the
/// scheme and ignores leading spaces, control characters, tabs and
/// newlines). Absolute links come back normalised; a link with control
/// characters inside is refused outright, since no real link has them.
fn web_link(raw: &str) -> Option<String> {
    let trimmed = raw.trim_matches(|c: char| c.is_ascii_control() || c == ' ');
    if trimmed.is_empty() || trimmed.chars().any(|c| c.is_control()) {
        return None;
    }
    match url::Url::parse(trimmed) {
        Ok(url) if matches!(url.scheme(), "http" | "https") => Some(url.into()),
        Ok(_) => None,
        // No scheme: relative to the page, which the browser resolves.
        Err(url::ParseError::RelativeUrlWithoutBase) => Some(trimmed.to_string()),
        Err(_) => None,
    }
}

/// One inbox server: its runtime, database and live-update fan-out. Shared by
/// every channel opened on the same `listen` address, so a reload reuses the
/// running server instead of failing to bind the port a second time.
struct Inbox {
    runtime: tokio::runtime::Runtime,
    db: InboxDb,
    /// Customer ids whose inbox changed.
    changes: broadcast::Sender<String>,
    /// Replaced on reload.
    secret: RwLock<Vec<u8>>,
    origins: RwLock<Vec<String>>,
    database: String,
    /// Open streams per customer: each holds a task and a query per change,
    /// so one token may not open them without end.
    streams: Arc<Mutex<HashMap<String, usize>>>,
}

/// How many streams one customer may have open at once (tabs, devices).
const STREAMS_PER_CUSTOMER: usize = 16;

/// One open stream of a customer's, counted until it is dropped.
struct StreamSlot {
    streams: Arc<Mutex<HashMap<String, usize>>>,
    customer: String,
}

impl StreamSlot {
    /// A slot for one more of `customer`'s streams, or `None` if they have
    /// [`STREAMS_PER_CUSTOMER`] open.
    fn take(streams: &Arc<Mutex<HashMap<String, usize>>>, customer: &str) -> Option<StreamSlot> {
        let mut open = streams.lock().unwrap_or_else(|p| p.into_inner());
        let count = open.entry(customer.to_string()).or_insert(0);
        if *count >= STREAMS_PER_CUSTOMER {
            return None;
        }
        *count += 1;
        Some(StreamSlot {
            streams: streams.clone(),
            customer: customer.to_string(),
        })
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut open = self.streams.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = open.get_mut(&self.customer) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.customer);
            }
        }
    }
}

/// `listen` address → its inbox. The library is never unloaded, so this
/// lives as long as the process.
fn servers() -> &'static Mutex<HashMap<SocketAddr, Arc<Inbox>>> {
    static SERVERS: OnceLock<Mutex<HashMap<SocketAddr, Arc<Inbox>>>> = OnceLock::new();
    SERVERS.get_or_init(|| Mutex::new(HashMap::new()))
}

/// The token the product's backend gives a customer's browser, valid until
/// `expires` (Unix seconds): `<expires>.<hex HMAC-SHA256(secret,
/// "inapp:<expires>:<customer id>")>`. The prefix keeps it from ever equalling
/// another signature made with the same key (the webhook's is `"<t>.<body>"`).
pub fn customer_token(secret: &[u8], customer_id: &str, expires: u64) -> String {
    format!(
        "{expires}.{}",
        hex::encode(
            token_mac(secret, customer_id, expires)
                .finalize()
                .into_bytes()
        )
    )
}

fn token_mac(secret: &[u8], customer_id: &str, expires: u64) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(format!("inapp:{expires}:{customer_id}").as_bytes());
    mac
}

/// When `token` stops being valid for `customer` (Unix seconds), or `None`
/// if it is not a valid token for them now. The signature is compared in
/// constant time (`verify_slice`); only its length, public anyway, is not.
fn token_expiry(secret: &[u8], customer: &str, token: &str, now: u64) -> Option<u64> {
    let (expires, signature) = token.trim().split_once('.')?;
    if expires.is_empty() || expires.len() > 19 || !expires.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let expires: u64 = expires.parse().ok()?;
    let signature = hex::decode(signature).ok()?;
    if secret.is_empty() || expires <= now {
        return None;
    }
    token_mac(secret, customer, expires)
        .verify_slice(&signature)
        .ok()
        .map(|()| expires)
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Starts listening for every daemon's inbox changes. Done before the inbox
/// serves anything, so no stream can open while announcements would still
/// be missed.
async fn change_listener(pool: &PgPool) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(CHANGES_CHANNEL).await?;
    Ok(listener)
}

/// Forwards every daemon's inbox changes to this server's open streams, for
/// the life of the process, reconnecting after a lost connection (and then
/// refreshing every stream, since announcements may have been missed).
async fn forward_changes(
    pool: PgPool,
    mut listener: PgListener,
    changes: broadcast::Sender<String>,
) {
    loop {
        loop {
            match listener.try_recv().await {
                Ok(Some(notification)) => {
                    let _ = changes.send(notification.payload().to_string());
                }
                // The connection was lost and re-established by sqlx.
                Ok(None) => {
                    let _ = changes.send(EVERYONE.to_string());
                }
                Err(e) => {
                    eprintln!("dunningd inapp: lost the change listener: {e}");
                    break;
                }
            }
        }
        listener = loop {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            match change_listener(&pool).await {
                Ok(listener) => break listener,
                Err(e) => eprintln!("dunningd inapp: cannot listen for inbox changes: {e}"),
            }
        };
        let _ = changes.send(EVERYONE.to_string());
    }
}

/// A change notice that refreshes every open stream.
const EVERYONE: &str = "";

#[derive(Debug, Serialize)]
struct InboxMessage {
    id: i64,
    title: String,
    body: String,
    url: String,
    workflow: String,
    step: String,
    created_at_ms: i64,
    read: bool,
}

impl Inbox {
    fn start(listen: SocketAddr, database: &str) -> Result<Arc<Inbox>, String> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("dunningd-inapp")
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the inbox runtime: {e}"))?;
        let db = runtime.block_on(InboxDb::open(database))?;
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind(listen))
            .map_err(|e| format!("settings.listen: cannot listen on {listen}: {e}"))?;
        let (changes, _) = broadcast::channel(1024);
        if let InboxDb::Postgres(pool) = &db {
            let listener = runtime
                .block_on(change_listener(pool))
                .map_err(|e| format!("settings.database: cannot listen for inbox changes: {e}"))?;
            runtime.spawn(forward_changes(pool.clone(), listener, changes.clone()));
        }
        let inbox = Arc::new(Inbox {
            runtime,
            db,
            changes,
            secret: RwLock::new(Vec::new()),
            origins: RwLock::new(Vec::new()),
            database: database.to_string(),
            streams: Arc::new(Mutex::new(HashMap::new())),
        });
        let app = Router::new()
            .route(
                "/v1/customers/{customer}/messages",
                get(list).options(preflight),
            )
            .route(
                "/v1/customers/{customer}/messages/{id}/{mark}",
                post(mark).options(preflight),
            )
            .route("/v1/customers/{customer}/stream", get(stream))
            .layer(axum::middleware::map_response(private_headers))
            .route("/banner.js", get(banner))
            .layer(axum::middleware::from_fn(refuse_bodies))
            .with_state(inbox.clone());
        inbox.runtime.spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                eprintln!("dunningd inapp: HTTP server stopped: {e}");
            }
        });
        Ok(inbox)
    }

    /// Tells open streams that `customer`'s inbox changed: directly on
    /// SQLite; on PostgreSQL the change was announced in SQL and comes back,
    /// to every daemon, through [`forward_changes`].
    fn changed(&self, customer: &str) {
        if let InboxDb::Sqlite(_) = self.db {
            let _ = self.changes.send(customer.to_string());
        }
    }

    /// When the request's token for `customer` expires, or `None` if it
    /// has no valid one. The token comes from `Authorization: Bearer` or,
    /// for `EventSource` which cannot send headers, `?token=`.
    fn authorized(&self, customer: &str, headers: &HeaderMap, params: &Params) -> Option<u64> {
        let given = match headers.get(header::AUTHORIZATION) {
            Some(value) => value.to_str().ok()?.strip_prefix("Bearer ")?,
            None => params.token.as_deref()?,
        };
        let secret = self.secret.read().unwrap_or_else(|p| p.into_inner());
        token_expiry(&secret, customer, given, now_secs())
    }

    /// Lets the configured origins' pages read an answer (any page's, with
    /// `*`: the token, not the origin, is what authenticates).
    fn cors(&self, request: &HeaderMap, response: &mut Response) {
        let origin = request
            .get(header::ORIGIN)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let allow = {
            let origins = self.origins.read().unwrap_or_else(|p| p.into_inner());
            if origins.iter().any(|o| o == "*") {
                Some("*".to_string())
            } else if !origin.is_empty() && origins.iter().any(|o| o == origin) {
                Some(origin.to_string())
            } else {
                None
            }
        };
        if let Some(allow) = allow.and_then(|a| HeaderValue::from_str(&a).ok()) {
            let h = response.headers_mut();
            h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow);
            h.insert(
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static("authorization"),
            );
            h.insert(
                header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static("GET, POST"),
            );
        }
    }

    async fn messages(
        &self,
        customer: &str,
        unread_only: bool,
    ) -> Result<Vec<InboxMessage>, sqlx::Error> {
        let rows = self.db.messages(customer, unread_only).await?;
        Ok(rows
            .into_iter()
            .map(
                |(id, title, body, url, workflow, step, created_at_ms, read)| InboxMessage {
                    id,
                    title,
                    body,
                    // Rows stored before links were checked, or by an
                    // older daemon sharing the table, are checked here.
                    url: web_link(&url).unwrap_or_default(),
                    workflow,
                    step,
                    created_at_ms,
                    read: read.is_some(),
                },
            )
            .collect())
    }
}

/// The query parameters the API knows. Read by hand from name/value pairs,
/// which cannot fail to parse, so a malformed query is not an answer a
/// stranger can tell from a missing token.
#[derive(Default)]
struct Params {
    token: Option<String>,
    status: Option<String>,
    /// A parameter given twice (then none of its values counts).
    repeated: Option<String>,
}

impl Params {
    fn from_query(query: Option<Query<Vec<(String, String)>>>) -> Params {
        let mut params = Params::default();
        for (name, value) in query.map(|Query(q)| q).unwrap_or_default() {
            let slot = match name.as_str() {
                "token" => &mut params.token,
                "status" => &mut params.status,
                _ => continue,
            };
            if slot.replace(value).is_some() {
                params.repeated = Some(name);
            }
        }
        match params.repeated.as_deref() {
            Some("token") => params.token = None,
            Some("status") => params.status = None,
            _ => {}
        }
        params
    }
}

fn unauthorized() -> Response {
    (StatusCode::UNAUTHORIZED, "unauthorized").into_response()
}

/// The answer to a failed database call: the error goes to the operator's
/// log, the browser hears only that the inbox is unavailable.
fn unavailable(error: sqlx::Error) -> Response {
    eprintln!("dunningd inapp: inbox database error: {error}");
    (StatusCode::SERVICE_UNAVAILABLE, "inbox unavailable").into_response()
}

/// Refuses a request that carries a body before any handler sees it: no
/// call takes one.
async fn refuse_bodies(request: axum::extract::Request, next: Next) -> Response {
    use axum::body::HttpBody;
    if request.body().size_hint().upper() != Some(0) {
        // The unread body leaves the connection unusable: say so, so that
        // the client does not send its next request on it.
        return (
            StatusCode::PAYLOAD_TOO_LARGE,
            [(header::CONNECTION, "close")],
            "request bodies are not accepted",
        )
            .into_response();
    }
    next.run(request).await
}

/// Headers every answer of the API (not `banner.js`) carries: never sniffed as another type, never kept
/// by a cache (the inbox is one customer's), varying by the asking origin.
async fn private_headers(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::VARY, HeaderValue::from_static("origin"));
    response
}

async fn banner() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
            (header::CACHE_CONTROL, "public, max-age=300"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        BANNER_JS,
    )
        .into_response()
}

async fn preflight(State(inbox): State<Arc<Inbox>>, headers: HeaderMap) -> Response {
    let mut response = StatusCode::NO_CONTENT.into_response();
    inbox.cors(&headers, &mut response);
    response
}

/// Who calls the API: the customer the path names (`{customer}`), once
/// their token checked out, with the query parameters and headers the
/// handler goes on to read. Extracted before any handler runs; whatever
/// fails (no customer in the path, no valid token) is the same bare `401`.
struct Caller {
    customer: String,
    /// When the token stops being valid (Unix seconds).
    expires: u64,
    params: Params,
    headers: HeaderMap,
}

impl FromRequestParts<Arc<Inbox>> for Caller {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, inbox: &Arc<Inbox>) -> Result<Caller, Response> {
        let query = Query::<Vec<(String, String)>>::from_request_parts(parts, inbox).await;
        let params = Params::from_query(query.ok());
        let Ok(Path(mut segments)) =
            Path::<HashMap<String, String>>::from_request_parts(parts, inbox).await
        else {
            return Err(unauthorized());
        };
        let customer = segments.remove("customer").ok_or_else(unauthorized)?;
        let headers = parts.headers.clone();
        let expires = inbox
            .authorized(&customer, &headers, &params)
            .ok_or_else(unauthorized)?;
        Ok(Caller {
            customer,
            expires,
            params,
            headers,
        })
    }
}

/// `GET /v1/customers/{customer}/messages?status=unread|all`.
async fn list(State(inbox): State<Arc<Inbox>>, caller: Caller) -> Response {
    let (customer, params) = (&caller.customer, &caller.params);
    let mut response = match (params.repeated.as_deref(), params.status.as_deref()) {
        (Some(name), _) => {
            (StatusCode::BAD_REQUEST, format!("{name}: given twice")).into_response()
        }
        (None, None | Some("unread")) => listing(&inbox, customer, true).await,
        (None, Some("all")) => listing(&inbox, customer, false).await,
        (None, Some(other)) => (
            StatusCode::BAD_REQUEST,
            format!("status: unknown status '{other}' (expected unread or all)"),
        )
            .into_response(),
    };
    inbox.cors(&caller.headers, &mut response);
    response
}

async fn listing(inbox: &Inbox, customer: &str, unread_only: bool) -> Response {
    match inbox.messages(customer, unread_only).await {
        Ok(messages) => axum::Json(messages).into_response(),
        Err(e) => unavailable(e),
    }
}

/// `POST /v1/customers/{customer}/messages/{id}/{read|dismiss}`.
async fn mark(
    State(inbox): State<Arc<Inbox>>,
    caller: Caller,
    path: Result<Path<(String, String, String)>, PathRejection>,
) -> Response {
    let customer = &caller.customer;
    let Ok(Path((_, id, action))) = path else {
        return unauthorized();
    };
    let mark = match action.as_str() {
        "read" => Some(Mark::Read),
        "dismiss" => Some(Mark::Dismiss),
        _ => None,
    };
    let mut response = match (id.parse::<i64>(), mark) {
        (Err(_), _) => (
            StatusCode::BAD_REQUEST,
            format!("message id: not a number: '{id}'"),
        )
            .into_response(),
        (Ok(_), None) => (
            StatusCode::NOT_FOUND,
            format!("unknown action '{action}' (expected read or dismiss)"),
        )
            .into_response(),
        (Ok(id), Some(mark)) => match inbox.db.mark(customer, id, mark).await {
            Ok(false) => (StatusCode::NOT_FOUND, "no such message").into_response(),
            Ok(true) => {
                inbox.changed(customer);
                StatusCode::NO_CONTENT.into_response()
            }
            Err(e) => unavailable(e),
        },
    };
    inbox.cors(&caller.headers, &mut response);
    response
}

/// `GET /v1/customers/{customer}/stream`: the inbox at once and after every
/// change, until the client leaves or its token expires (a browser's
/// `EventSource` then reconnects with the same token, is refused, and
/// stops: the page needs a fresh token, as with every other call).
async fn stream(State(inbox): State<Arc<Inbox>>, caller: Caller) -> Response {
    let customer = caller.customer;
    let Some(slot) = StreamSlot::take(&inbox.streams, &customer) else {
        let mut response = (
            StatusCode::TOO_MANY_REQUESTS,
            format!("too many open streams (at most {STREAMS_PER_CUSTOMER} per customer)"),
        )
            .into_response();
        inbox.cors(&caller.headers, &mut response);
        return response;
    };
    let changes = BroadcastStream::new(inbox.changes.subscribe());
    let first = tokio_stream::once(Ok::<
        _,
        tokio_stream::wrappers::errors::BroadcastStreamRecvError,
    >(customer.clone()));
    let state = inbox.clone();
    let who = customer.clone();
    let mut events = Box::pin(
        first
            .chain(changes)
            // A lagged receiver missed some changes: send the inbox anew.
            .filter(move |changed| {
                changed
                    .as_ref()
                    .map_or(true, |c| c == &who || c == EVERYONE)
            })
            .then(move |_| {
                let state = state.clone();
                let customer = customer.clone();
                async move {
                    match state.messages(&customer, true).await {
                        Ok(messages) => Some(Event::default().event("inbox").data(
                            serde_json::to_string(&messages).unwrap_or_else(|_| "[]".into()),
                        )),
                        // Better no news than an empty inbox that hides the banner.
                        Err(e) => {
                            eprintln!("dunningd inapp: inbox database error: {e}");
                            None
                        }
                    }
                }
            })
            .filter_map(|event| event),
    );
    // The stream lives no longer than the token that opened it.
    let (sender, receiver) = tokio::sync::mpsc::channel(4);
    let lifetime = std::time::Duration::from_secs(caller.expires.saturating_sub(now_secs()));
    inbox.runtime.spawn(async move {
        // Counted while this task forwards events, until the client leaves.
        let _slot = slot;
        let end = tokio::time::sleep(lifetime);
        tokio::pin!(end);
        loop {
            tokio::select! {
                () = &mut end => break,
                () = sender.closed() => break,
                event = events.next() => match event {
                    Some(event) => {
                        if sender.send(Ok::<_, std::convert::Infallible>(event)).await.is_err() {
                            break;
                        }
                    }
                    None => break,
                },
            }
        }
    });
    let mut response = Sse::new(tokio_stream::wrappers::ReceiverStream::new(receiver))
        .keep_alive(KeepAlive::default())
        .into_response();
    inbox.cors(&caller.headers, &mut response);
    response
}

pub struct InApp;

pub struct InAppChannel {
    inbox: Arc<Inbox>,
}

impl Plugin for InApp {
    const NAME: &'static str = "inapp";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    type Channel = InAppChannel;

    fn open(config: ChannelConfig) -> Result<InAppChannel, String> {
        let s = &config.settings;
        let text = |key: &str| {
            s.get(key)
                .and_then(|v| v.as_str())
                .filter(|v| !v.is_empty())
        };
        let listen: SocketAddr = text("listen")
            .ok_or("settings.listen: missing (e.g. 127.0.0.1:8787)")?
            .parse()
            .map_err(|e| format!("settings.listen: {e}"))?;
        let database = text("database")
            .ok_or("settings.database: missing (the inbox's SQLite file, or a postgres:// URL)")?;
        let secret = text("secret")
            .ok_or("settings.secret: missing (give the token-signing key under secrets:)")?;
        let origins: Vec<String> = match s.get("allowed_origins") {
            None => vec!["*".into()],
            Some(v) => serde_json::from_value(v.clone())
                .map_err(|_| "settings.allowed_origins: expected a list of origins")?,
        };
        let inbox = {
            let mut servers = servers().lock().unwrap_or_else(|p| p.into_inner());
            match servers.get(&listen) {
                Some(existing) if existing.database == database => existing.clone(),
                Some(existing) => {
                    return Err(format!(
                        "settings.database: {listen} already serves '{}'; changing the inbox file needs a restart",
                        existing.database
                    ));
                }
                None => {
                    let inbox = Inbox::start(listen, database)?;
                    servers.insert(listen, inbox.clone());
                    inbox
                }
            }
        };
        *inbox.secret.write().unwrap_or_else(|p| p.into_inner()) = secret.as_bytes().to_vec();
        *inbox.origins.write().unwrap_or_else(|p| p.into_inner()) = origins;
        Ok(InAppChannel { inbox })
    }
}

impl Channel for InAppChannel {
    fn send(&self, request: &DeliveryRequest) -> DeliveryResponse {
        let field = |name: &str| request.message.get(name).cloned().unwrap_or_default();
        let (title, body) = (field("title"), field("body"));
        if title.is_empty() && body.is_empty() {
            return DeliveryResponse::Permanent {
                error: format!(
                    "template '{}' has neither 'title' nor 'body' for the in-app inbox",
                    request.template
                ),
            };
        }
        let customer = &request.recipient.customer_id;
        let given = field("url");
        let url = web_link(&given).unwrap_or_default();
        if url.is_empty() && !given.trim().is_empty() {
            // Delivered all the same: the text still tells the customer.
            eprintln!(
                "dunningd inapp: template '{}' gave the link {given:?}, which is not http(s) or relative; the message is stored without it (delivery {})",
                request.template, request.idempotency_key
            );
        }
        let stored = self.inbox.runtime.block_on(self.inbox.db.store(
            request,
            &NewMessage {
                title: &title,
                body: &body,
                url: &url,
            },
        ));
        match stored {
            Ok(id) => {
                self.inbox.changed(customer);
                DeliveryResponse::Sent {
                    receipt: Some(format!("inapp:{id}")),
                }
            }
            Err(e) => DeliveryResponse::Retryable {
                error: format!("cannot store the in-app message: {e}"),
                retry_after_secs: None,
            },
        }
    }
}

export_plugin!(InApp);
