//! The `inapp` channel plugin: a per-customer inbox served to the product's
//! front end over HTTP, with live updates and an embeddable banner.
//!
//! Settings:
//! - `listen` (required): the HTTP address, e.g. `127.0.0.1:8787` (put it
//!   behind the product's reverse proxy).
//! - `database` (required): the inbox's own SQLite file. Its own file, not the
//!   daemon's database: the ABI gives plugins no access to the daemon's store
//!   (which may be a PostgreSQL shared by several daemons), and the inbox is
//!   front-end state with its own lifetime. Several daemons sharing work each
//!   keep the inbox of what they delivered, so run `inapp` on one daemon or
//!   point each at the same reachable endpoint.
//! - `secret` (required, under `secrets:`): the key the product's backend
//!   signs customer tokens with: `token = hex(HMAC-SHA256(secret, customer_id))`.
//! - `allowed_origins`: CORS origins of the product's pages (default `*`: the
//!   token, not the origin, is what authenticates).
//!
//! HTTP API (every call needs the customer's token, as `Authorization:
//! Bearer <token>` or `?token=`; a missing or wrong token is `401` with no
//! detail):
//! - `GET  /v1/customers/{id}/messages?status=unread|all`
//! - `POST /v1/customers/{id}/messages/{message}/read`
//! - `POST /v1/customers/{id}/messages/{message}/dismiss`
//! - `GET  /v1/customers/{id}/stream`: Server-Sent Events; an `inbox` event
//!   with the unread, undismissed messages at once and after every change.
//! - `GET  /banner.js`: the embeddable banner (see `banner.js`).
//!
//! A delivery stores `title`, `body` and `url` from the template, once per
//! idempotency key, and answers `sent` with the message id.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use dunningd_plugin_api::wire::{ChannelConfig, DeliveryRequest, DeliveryResponse};
use dunningd_plugin_api::{Channel, Plugin, export_plugin};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};
use tokio::sync::broadcast;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::BroadcastStream;

const BANNER_JS: &str = include_str!("../banner.js");

/// One inbox server: its runtime, database and live-update fan-out. Shared by
/// every channel opened on the same `listen` address, so a reload reuses the
/// running server instead of failing to bind the port a second time.
struct Inbox {
    runtime: tokio::runtime::Runtime,
    pool: SqlitePool,
    /// Customer ids whose inbox changed.
    changes: broadcast::Sender<String>,
    /// Replaced on reload.
    secret: RwLock<Vec<u8>>,
    origins: RwLock<Vec<String>>,
    database: String,
}

/// `listen` address → its inbox. The library is never unloaded, so this
/// lives as long as the process.
fn servers() -> &'static Mutex<HashMap<SocketAddr, Arc<Inbox>>> {
    static SERVERS: OnceLock<Mutex<HashMap<SocketAddr, Arc<Inbox>>>> = OnceLock::new();
    SERVERS.get_or_init(|| Mutex::new(HashMap::new()))
}

/// The token the product's backend gives a customer's browser.
pub fn customer_token(secret: &[u8], customer_id: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(customer_id.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// id, title, body, url, workflow, step, created_ms, read_ms.
type MessageRow = (
    i64,
    String,
    String,
    String,
    String,
    String,
    i64,
    Option<i64>,
);

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
        let pool = runtime.block_on(async {
            let options = SqliteConnectOptions::new()
                .filename(database)
                .create_if_missing(true)
                .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal);
            let pool = SqlitePoolOptions::new()
                .max_connections(4)
                .connect_with(options)
                .await
                .map_err(|e| format!("settings.database: cannot open '{database}': {e}"))?;
            sqlx::query(
                "CREATE TABLE IF NOT EXISTS messages (
                    id INTEGER PRIMARY KEY AUTOINCREMENT,
                    idempotency_key TEXT NOT NULL UNIQUE,
                    customer_id TEXT NOT NULL,
                    workflow TEXT NOT NULL,
                    step TEXT NOT NULL,
                    title TEXT NOT NULL,
                    body TEXT NOT NULL,
                    url TEXT NOT NULL,
                    created_ms INTEGER NOT NULL,
                    read_ms INTEGER,
                    dismissed_ms INTEGER
                )",
            )
            .execute(&pool)
            .await
            .map_err(|e| format!("settings.database: cannot create the inbox table: {e}"))?;
            sqlx::query(
                "CREATE INDEX IF NOT EXISTS messages_by_customer ON messages (customer_id, id)",
            )
            .execute(&pool)
            .await
            .map_err(|e| format!("settings.database: {e}"))?;
            Ok::<_, String>(pool)
        })?;
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind(listen))
            .map_err(|e| format!("settings.listen: cannot listen on {listen}: {e}"))?;
        let (changes, _) = broadcast::channel(1024);
        let inbox = Arc::new(Inbox {
            runtime,
            pool,
            changes,
            secret: RwLock::new(Vec::new()),
            origins: RwLock::new(Vec::new()),
            database: database.to_string(),
        });
        let app = Router::new()
            .route("/banner.js", get(banner))
            .route(
                "/v1/customers/{customer}/messages",
                get(list).options(preflight),
            )
            .route(
                "/v1/customers/{customer}/messages/{id}/{mark}",
                post(mark).options(preflight),
            )
            .route("/v1/customers/{customer}/stream", get(stream))
            .with_state(inbox.clone());
        inbox.runtime.spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                eprintln!("dunningd inapp: HTTP server stopped: {e}");
            }
        });
        Ok(inbox)
    }

    fn authorized(&self, customer: &str, headers: &HeaderMap, query: &TokenQuery) -> bool {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(String::from)
            .or_else(|| query.token.clone());
        let Some(given) = given.and_then(|t| hex::decode(t.trim()).ok()) else {
            return false;
        };
        let secret = self
            .secret
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&secret) else {
            return false;
        };
        mac.update(customer.as_bytes());
        mac.verify_slice(&given).is_ok()
    }

    fn cors(&self, request: &HeaderMap, response: &mut Response) {
        let origins = self
            .origins
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let origin = request
            .get(header::ORIGIN)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let allow = if origins.iter().any(|o| o == "*") {
            Some("*".to_string())
        } else if origins.iter().any(|o| o == origin) {
            Some(origin.to_string())
        } else {
            None
        };
        if let Some(allow) = allow.and_then(|a| HeaderValue::from_str(&a).ok()) {
            let h = response.headers_mut();
            h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow);
            h.insert(
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static("authorization, content-type"),
            );
            h.insert(
                header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static("GET, POST, OPTIONS"),
            );
        }
    }

    async fn messages(
        &self,
        customer: &str,
        unread_only: bool,
    ) -> Result<Vec<InboxMessage>, sqlx::Error> {
        let rows: Vec<MessageRow> = sqlx::query_as(
            "SELECT id, title, body, url, workflow, step, created_ms, read_ms FROM messages
             WHERE customer_id = ? AND dismissed_ms IS NULL AND (? = 0 OR read_ms IS NULL)
             ORDER BY id DESC LIMIT 100",
        )
        .bind(customer)
        .bind(unread_only as i64)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(
                |(id, title, body, url, workflow, step, created_at_ms, read)| InboxMessage {
                    id,
                    title,
                    body,
                    url,
                    workflow,
                    step,
                    created_at_ms,
                    read: read.is_some(),
                },
            )
            .collect())
    }
}

#[derive(Deserialize, Default)]
struct TokenQuery {
    token: Option<String>,
    status: Option<String>,
}

fn unauthorized() -> Response {
    (StatusCode::UNAUTHORIZED, "unauthorized").into_response()
}

async fn banner() -> Response {
    let mut response = (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        BANNER_JS,
    )
        .into_response();
    response.headers_mut().insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    response
}

async fn preflight(
    State(inbox): State<Arc<Inbox>>,
    headers: HeaderMap,
    method: Method,
) -> Response {
    let mut response = if method == Method::OPTIONS {
        StatusCode::NO_CONTENT.into_response()
    } else {
        StatusCode::METHOD_NOT_ALLOWED.into_response()
    };
    inbox.cors(&headers, &mut response);
    response
}

async fn list(
    State(inbox): State<Arc<Inbox>>,
    Path(customer): Path<String>,
    Query(query): Query<TokenQuery>,
    headers: HeaderMap,
) -> Response {
    if !inbox.authorized(&customer, &headers, &query) {
        return unauthorized();
    }
    let unread_only = match query.status.as_deref() {
        None | Some("unread") => true,
        Some("all") => false,
        Some(other) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("status: unknown status '{other}' (expected unread or all)"),
            )
                .into_response();
        }
    };
    let mut response = match inbox.messages(&customer, unread_only).await {
        Ok(messages) => axum::Json(messages).into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("inbox unavailable: {e}"),
        )
            .into_response(),
    };
    inbox.cors(&headers, &mut response);
    response
}

/// What a customer can do to a message.
#[derive(Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Mark {
    Read,
    Dismiss,
}

/// `POST /v1/customers/{customer}/messages/{id}/{read|dismiss}`.
async fn mark(
    State(inbox): State<Arc<Inbox>>,
    Path((customer, id, mark)): Path<(String, i64, Mark)>,
    Query(query): Query<TokenQuery>,
    headers: HeaderMap,
) -> Response {
    if !inbox.authorized(&customer, &headers, &query) {
        return unauthorized();
    }
    let sql = match mark {
        Mark::Read => {
            "UPDATE messages SET read_ms = COALESCE(read_ms, ?) WHERE id = ? AND customer_id = ?"
        }
        Mark::Dismiss => {
            "UPDATE messages SET dismissed_ms = COALESCE(dismissed_ms, ?) WHERE id = ? AND customer_id = ?"
        }
    };
    let mut response = match sqlx::query(sql)
        .bind(now_ms())
        .bind(id)
        .bind(&customer)
        .execute(&inbox.pool)
        .await
    {
        Ok(done) if done.rows_affected() == 0 => {
            (StatusCode::NOT_FOUND, "no such message").into_response()
        }
        Ok(_) => {
            let _ = inbox.changes.send(customer.clone());
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("inbox unavailable: {e}"),
        )
            .into_response(),
    };
    inbox.cors(&headers, &mut response);
    response
}

async fn stream(
    State(inbox): State<Arc<Inbox>>,
    Path(customer): Path<String>,
    Query(query): Query<TokenQuery>,
    headers: HeaderMap,
) -> Response {
    if !inbox.authorized(&customer, &headers, &query) {
        return unauthorized();
    }
    let changes = BroadcastStream::new(inbox.changes.subscribe());
    let first = tokio_stream::once(Ok::<
        _,
        tokio_stream::wrappers::errors::BroadcastStreamRecvError,
    >(customer.clone()));
    let state = inbox.clone();
    let who = customer.clone();
    let events = first
        .chain(changes)
        // A lagged receiver missed some changes: send the inbox anew.
        .filter(move |changed| changed.as_ref().map_or(true, |c| c == &who))
        .then(move |_| {
            let state = state.clone();
            let customer = customer.clone();
            async move {
                let messages = state.messages(&customer, true).await.unwrap_or_default();
                Ok::<_, std::convert::Infallible>(
                    Event::default()
                        .event("inbox")
                        .data(serde_json::to_string(&messages).unwrap_or_else(|_| "[]".into())),
                )
            }
        });
    let mut response = Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response();
    inbox.cors(&headers, &mut response);
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
        let database =
            text("database").ok_or("settings.database: missing (the inbox's SQLite file)")?;
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
        let customer = request.recipient.customer_id.clone();
        let stored = self.inbox.runtime.block_on(async {
            sqlx::query(
                "INSERT INTO messages (idempotency_key, customer_id, workflow, step, title, body, url, created_ms)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (idempotency_key) DO NOTHING",
            )
            .bind(&request.idempotency_key)
            .bind(&customer)
            .bind(&request.workflow)
            .bind(&request.step)
            .bind(&title)
            .bind(&body)
            .bind(field("url"))
            .bind(now_ms())
            .execute(&self.inbox.pool)
            .await?;
            sqlx::query_scalar::<_, i64>("SELECT id FROM messages WHERE idempotency_key = ?")
                .bind(&request.idempotency_key)
                .fetch_one(&self.inbox.pool)
                .await
        });
        match stored {
            Ok(id) => {
                let _ = self.inbox.changes.send(customer);
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
