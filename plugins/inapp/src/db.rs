//! The inbox's storage: a SQLite file of the plugin's own, or a table in a
//! PostgreSQL database that several daemons share.

use std::time::{SystemTime, UNIX_EPOCH};

use dunningd_plugin_api::wire::DeliveryRequest;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// id, title, body, url, workflow, step, created_ms, read_ms.
pub(crate) type MessageRow = (
    i64,
    String,
    String,
    String,
    String,
    String,
    i64,
    Option<i64>,
);

/// The channel on which PostgreSQL inboxes announce changes (payload: the
/// customer id).
pub(crate) const CHANGES_CHANNEL: &str = "dunningd_inapp";

/// What a delivery puts in the inbox.
pub(crate) struct NewMessage<'a> {
    pub title: &'a str,
    pub body: &'a str,
    pub url: &'a str,
}

/// The inbox's storage: the same four operations on either database.
pub(crate) enum InboxDb {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

impl InboxDb {
    /// Connects and creates the table if needed.
    pub(crate) async fn open(database: &str) -> Result<InboxDb, String> {
        let failed =
            |e: sqlx::Error| format!("settings.database: cannot open '{}': {e}", redact(database));
        if database.starts_with("postgres://") || database.starts_with("postgresql://") {
            let pool = PgPoolOptions::new()
                .max_connections(4)
                .acquire_timeout(std::time::Duration::from_secs(5))
                .connect(database)
                .await
                .map_err(failed)?;
            // Daemons starting together must not race on the DDL.
            let mut tx = pool.begin().await.map_err(failed)?;
            for statement in [
                "SELECT pg_advisory_xact_lock(7242069151)",
                "CREATE TABLE IF NOT EXISTS inapp_messages (
                    id BIGSERIAL PRIMARY KEY,
                    idempotency_key TEXT NOT NULL UNIQUE,
                    customer_id TEXT NOT NULL,
                    workflow TEXT NOT NULL,
                    step TEXT NOT NULL,
                    title TEXT NOT NULL,
                    body TEXT NOT NULL,
                    url TEXT NOT NULL,
                    created_ms BIGINT NOT NULL,
                    read_ms BIGINT,
                    dismissed_ms BIGINT
                )",
                "CREATE INDEX IF NOT EXISTS inapp_messages_by_customer ON inapp_messages (customer_id, id)",
            ] {
                sqlx::query(statement)
                    .execute(&mut *tx)
                    .await
                    .map_err(failed)?;
            }
            tx.commit().await.map_err(failed)?;
            return Ok(InboxDb::Postgres(pool));
        }
        let path = database.strip_prefix("sqlite://").unwrap_or(database);
        create_private(std::path::Path::new(path))
            .map_err(|e| format!("settings.database: cannot create '{path}': {e}"))?;
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal);
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .map_err(failed)?;
        for statement in [
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
            "CREATE INDEX IF NOT EXISTS messages_by_customer ON messages (customer_id, id)",
        ] {
            sqlx::query(statement)
                .execute(&pool)
                .await
                .map_err(failed)?;
        }
        Ok(InboxDb::Sqlite(pool))
    }

    /// Stores a delivery's message once per idempotency key; returns its id.
    pub(crate) async fn store(
        &self,
        request: &DeliveryRequest,
        m: &NewMessage<'_>,
    ) -> Result<i64, sqlx::Error> {
        let customer = &request.recipient.customer_id;
        match self {
            InboxDb::Sqlite(pool) => {
                sqlx::query(
                    "INSERT INTO messages (idempotency_key, customer_id, workflow, step, title, body, url, created_ms)
                     VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (idempotency_key) DO NOTHING",
                )
                .bind(&request.idempotency_key)
                .bind(customer)
                .bind(&request.workflow)
                .bind(&request.step)
                .bind(m.title)
                .bind(m.body)
                .bind(m.url)
                .bind(now_ms())
                .execute(pool)
                .await?;
                sqlx::query_scalar("SELECT id FROM messages WHERE idempotency_key = ?")
                    .bind(&request.idempotency_key)
                    .fetch_one(pool)
                    .await
            }
            InboxDb::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                sqlx::query(
                    "INSERT INTO inapp_messages (idempotency_key, customer_id, workflow, step, title, body, url, created_ms)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (idempotency_key) DO NOTHING",
                )
                .bind(&request.idempotency_key)
                .bind(customer)
                .bind(&request.workflow)
                .bind(&request.step)
                .bind(m.title)
                .bind(m.body)
                .bind(m.url)
                .bind(now_ms())
                .execute(&mut *tx)
                .await?;
                let id =
                    sqlx::query_scalar("SELECT id FROM inapp_messages WHERE idempotency_key = $1")
                        .bind(&request.idempotency_key)
                        .fetch_one(&mut *tx)
                        .await?;
                announce(&mut tx, customer).await?;
                tx.commit().await?;
                Ok(id)
            }
        }
    }

    /// The newest 100 undismissed messages (unread only, if asked).
    pub(crate) async fn messages(
        &self,
        customer: &str,
        unread_only: bool,
    ) -> Result<Vec<MessageRow>, sqlx::Error> {
        match self {
            InboxDb::Sqlite(pool) => {
                sqlx::query_as(
                    "SELECT id, title, body, url, workflow, step, created_ms, read_ms FROM messages
                     WHERE customer_id = ? AND dismissed_ms IS NULL AND (? = 0 OR read_ms IS NULL)
                     ORDER BY id DESC LIMIT 100",
                )
                .bind(customer)
                .bind(unread_only as i64)
                .fetch_all(pool)
                .await
            }
            InboxDb::Postgres(pool) => {
                sqlx::query_as(
                    "SELECT id, title, body, url, workflow, step, created_ms, read_ms FROM inapp_messages
                     WHERE customer_id = $1 AND dismissed_ms IS NULL AND (NOT $2 OR read_ms IS NULL)
                     ORDER BY id DESC LIMIT 100",
                )
                .bind(customer)
                .bind(unread_only)
                .fetch_all(pool)
                .await
            }
        }
    }

    /// Marks one of the customer's messages read or dismissed (the first
    /// time counts); false if the customer has no such message.
    pub(crate) async fn mark(
        &self,
        customer: &str,
        id: i64,
        mark: Mark,
    ) -> Result<bool, sqlx::Error> {
        let column = match mark {
            Mark::Read => "read_ms",
            Mark::Dismiss => "dismissed_ms",
        };
        match self {
            InboxDb::Sqlite(pool) => {
                let sql = format!(
                    "UPDATE messages SET {column} = COALESCE({column}, ?) WHERE id = ? AND customer_id = ?"
                );
                let done = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(now_ms())
                    .bind(id)
                    .bind(customer)
                    .execute(pool)
                    .await?;
                Ok(done.rows_affected() > 0)
            }
            InboxDb::Postgres(pool) => {
                let sql = format!(
                    "UPDATE inapp_messages SET {column} = COALESCE({column}, $1) WHERE id = $2 AND customer_id = $3"
                );
                let mut tx = pool.begin().await?;
                let done = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(now_ms())
                    .bind(id)
                    .bind(customer)
                    .execute(&mut *tx)
                    .await?;
                if done.rows_affected() > 0 {
                    announce(&mut tx, customer).await?;
                }
                tx.commit().await?;
                Ok(done.rows_affected() > 0)
            }
        }
    }
}

/// Creates the SQLite file (and any folders missing above it) for the
/// daemon's user alone: folders `0700`, the file `0600`, set explicitly so
/// the umask has no say. SQLite then creates its `-wal` and `-shm` files
/// with the database file's mode. What already exists is left as it is:
/// the operator made it.
fn create_private(path: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
    if path.as_os_str().is_empty() || path.as_os_str() == ":memory:" {
        return Ok(());
    }
    let mut missing = Vec::new();
    let mut folder = path.parent();
    while let Some(dir) = folder.filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
        missing.push(dir);
        folder = dir.parent();
    }
    for dir in missing.into_iter().rev() {
        match std::fs::DirBuilder::new().mode(0o700).create(dir) {
            Ok(()) => std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?,
            // Another daemon on the same folder made it first.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(file) => file.set_permissions(std::fs::Permissions::from_mode(0o600)),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// A database URL fit for an error message: without its password.
fn redact(database: &str) -> String {
    match (database.find("://"), database.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &database[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => {
                    format!("{}{user}:***{}", &database[..scheme + 3], &database[at..])
                }
                None => database.to_string(),
            }
        }
        _ => database.to_string(),
    }
}

/// Announces, when the transaction commits, that `customer`'s inbox changed.
async fn announce(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    customer: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(CHANGES_CHANNEL)
        .bind(customer)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// What a customer can do to a message.
#[derive(Clone, Copy)]
pub(crate) enum Mark {
    Read,
    Dismiss,
}
