//! The inbox's storage: a SQLite file of the plugin's own, or a table in a
//! PostgreSQL database that several daemons share.
//!
//! Each operation's Rust is written once ([`inbox_ops!`], stamped into the
//! [`sqlite`] and [`postgres`] modules for their pool types). Each backend
//! keeps its own statements (its `sql` module), how it opens the database,
//! and `announce`: how the other daemons' streams hear of a change (a
//! `NOTIFY` on PostgreSQL; nothing on SQLite, whose one daemon tells its
//! streams itself).

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use dunningd_plugin_api::wire::DeliveryRequest;
use sqlx::postgres::PgPool;
use sqlx::sqlite::SqlitePool;

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

/// What a customer can do to a message.
#[derive(Clone, Copy)]
pub(crate) enum Mark {
    Read,
    Dismiss,
}

/// The inbox's storage: the same operations on either database.
pub(crate) enum InboxDb {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Runs one of the operations [`inbox_ops!`] writes on the inbox's backend,
/// with its pool.
macro_rules! on_backend {
    ($db:expr, $op:ident($($arg:expr),*)) => {
        match $db {
            InboxDb::Sqlite(pool) => sqlite::$op(pool, $($arg),*).await,
            InboxDb::Postgres(pool) => postgres::$op(pool, $($arg),*).await,
        }
    };
}

impl InboxDb {
    /// Connects and creates the table if needed: PostgreSQL for a
    /// `postgres://` URL, else a SQLite file (a path, or `sqlite://PATH`).
    pub(crate) async fn open(database: &str) -> Result<InboxDb, String> {
        let failed =
            |e: sqlx::Error| format!("settings.database: cannot open '{}': {e}", redact(database));
        if database.starts_with("postgres://") || database.starts_with("postgresql://") {
            return postgres::open(database)
                .await
                .map(InboxDb::Postgres)
                .map_err(failed);
        }
        let path = database.strip_prefix("sqlite://").unwrap_or(database);
        create_private(Path::new(path))
            .map_err(|e| format!("settings.database: cannot create '{path}': {e}"))?;
        sqlite::open(path)
            .await
            .map(InboxDb::Sqlite)
            .map_err(failed)
    }

    /// Stores a delivery's message once per idempotency key; returns its id.
    pub(crate) async fn store(
        &self,
        request: &DeliveryRequest,
        m: &NewMessage<'_>,
    ) -> Result<i64, sqlx::Error> {
        on_backend!(self, store(request, m))
    }

    /// The newest 100 undismissed messages (unread only, if asked).
    pub(crate) async fn messages(
        &self,
        customer: &str,
        unread_only: bool,
    ) -> Result<Vec<MessageRow>, sqlx::Error> {
        on_backend!(self, messages(customer, unread_only))
    }

    /// Marks one of the customer's messages read or dismissed (the first
    /// time counts); false if the customer has no such message.
    pub(crate) async fn mark(
        &self,
        customer: &str,
        id: i64,
        mark: Mark,
    ) -> Result<bool, sqlx::Error> {
        on_backend!(self, mark(customer, id, mark))
    }
}

/// The inbox's operations for one backend (`$db`: its sqlx `Database`),
/// written once. Expanded inside the backend's module, where these names
/// must resolve: `sql::INSERT`, `sql::ID_BY_KEY`, `sql::MESSAGES`,
/// `sql::MARK_READ` and `sql::MARK_DISMISSED`, the statements, with the same
/// parameters in both backends; and `announce(&mut tx, customer)`, which
/// tells the other daemons' streams, when the transaction commits, that the
/// customer's inbox changed.
macro_rules! inbox_ops {
    ($db:ty) => {
        pub(super) async fn store(
            pool: &sqlx::Pool<$db>,
            request: &dunningd_plugin_api::wire::DeliveryRequest,
            m: &super::NewMessage<'_>,
        ) -> Result<i64, sqlx::Error> {
            let customer = &request.recipient.customer_id;
            let mut tx = pool.begin().await?;
            sqlx::query(sql::INSERT)
                .bind(&request.idempotency_key)
                .bind(customer)
                .bind(&request.workflow)
                .bind(&request.step)
                .bind(m.title)
                .bind(m.body)
                .bind(m.url)
                .bind(super::now_ms())
                .execute(&mut *tx)
                .await?;
            let id = sqlx::query_scalar(sql::ID_BY_KEY)
                .bind(&request.idempotency_key)
                .fetch_one(&mut *tx)
                .await?;
            announce(&mut tx, customer).await?;
            tx.commit().await?;
            Ok(id)
        }

        pub(super) async fn messages(
            pool: &sqlx::Pool<$db>,
            customer: &str,
            unread_only: bool,
        ) -> Result<Vec<super::MessageRow>, sqlx::Error> {
            sqlx::query_as(sql::MESSAGES)
                .bind(customer)
                .bind(unread_only)
                .fetch_all(pool)
                .await
        }

        pub(super) async fn mark(
            pool: &sqlx::Pool<$db>,
            customer: &str,
            id: i64,
            mark: super::Mark,
        ) -> Result<bool, sqlx::Error> {
            let statement = match mark {
                super::Mark::Read => sql::MARK_READ,
                super::Mark::Dismiss => sql::MARK_DISMISSED,
            };
            let mut tx = pool.begin().await?;
            let marked = sqlx::query(statement)
                .bind(super::now_ms())
                .bind(id)
                .bind(customer)
                .execute(&mut *tx)
                .await?
                .rows_affected()
                > 0;
            if marked {
                announce(&mut tx, customer).await?;
            }
            tx.commit().await?;
            Ok(marked)
        }
    };
}

/// The inbox's table as a backend creates it, named `$table`: `$id` is the
/// id column's definition and `$ms` the type of a time in milliseconds in
/// the backend's dialect (a macro so that the statement is one static
/// string).
macro_rules! create_table {
    ($table:literal, $id:literal, $ms:literal) => {
        concat!(
            "CREATE TABLE IF NOT EXISTS ",
            $table,
            " (id ",
            $id,
            ", idempotency_key TEXT NOT NULL UNIQUE, customer_id TEXT NOT NULL,
               workflow TEXT NOT NULL, step TEXT NOT NULL,
               title TEXT NOT NULL, body TEXT NOT NULL, url TEXT NOT NULL,
               created_ms ",
            $ms,
            " NOT NULL, read_ms ",
            $ms,
            ", dismissed_ms ",
            $ms,
            ")"
        )
    };
}

/// The inbox in a SQLite file of the plugin's own (table `messages`): one
/// daemon's, so changes go to its streams directly (`Inbox::changed`).
mod sqlite {
    use sqlx::Sqlite;
    use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};

    /// Opens (creating if needed) the file at `path` and its table.
    pub(super) async fn open(path: &str) -> Result<SqlitePool, sqlx::Error> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal);
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await?;
        for statement in sql::CREATE {
            sqlx::query(statement).execute(&pool).await?;
        }
        Ok(pool)
    }

    /// Nobody else to tell: the file has one daemon, which tells its own
    /// streams.
    async fn announce(
        _tx: &mut sqlx::Transaction<'_, Sqlite>,
        _customer: &str,
    ) -> Result<(), sqlx::Error> {
        Ok(())
    }

    inbox_ops!(Sqlite);

    mod sql {
        pub const CREATE: [&str; 2] = [
            create_table!("messages", "INTEGER PRIMARY KEY AUTOINCREMENT", "INTEGER"),
            "CREATE INDEX IF NOT EXISTS messages_by_customer ON messages (customer_id, id)",
        ];
        pub const INSERT: &str = "INSERT INTO messages
             (idempotency_key, customer_id, workflow, step, title, body, url, created_ms)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (idempotency_key) DO NOTHING";
        pub const ID_BY_KEY: &str = "SELECT id FROM messages WHERE idempotency_key = ?";
        pub const MESSAGES: &str =
            "SELECT id, title, body, url, workflow, step, created_ms, read_ms FROM messages
             WHERE customer_id = ?1 AND dismissed_ms IS NULL AND (NOT ?2 OR read_ms IS NULL)
             ORDER BY id DESC LIMIT 100";
        pub const MARK_READ: &str = "UPDATE messages SET read_ms = COALESCE(read_ms, ?1)
             WHERE id = ?2 AND customer_id = ?3";
        pub const MARK_DISMISSED: &str =
            "UPDATE messages SET dismissed_ms = COALESCE(dismissed_ms, ?1)
             WHERE id = ?2 AND customer_id = ?3";
    }
}

/// The inbox in a PostgreSQL table (`inapp_messages`, which may live in the
/// daemons' own database) that every daemon's inbox server serves; changes
/// are announced with `NOTIFY` on [`CHANGES_CHANNEL`].
mod postgres {
    use sqlx::Postgres;
    use sqlx::postgres::{PgPool, PgPoolOptions};

    use super::CHANGES_CHANNEL;

    /// Connects and creates the table if needed.
    pub(super) async fn open(url: &str) -> Result<PgPool, sqlx::Error> {
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(std::time::Duration::from_secs(5))
            .connect(url)
            .await?;
        // Daemons starting together must not race on the DDL.
        let mut tx = pool.begin().await?;
        sqlx::query(sql::DDL_LOCK).execute(&mut *tx).await?;
        for statement in sql::CREATE {
            sqlx::query(statement).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(pool)
    }

    /// Announces, when the transaction commits, that `customer`'s inbox changed.
    async fn announce(
        tx: &mut sqlx::Transaction<'_, Postgres>,
        customer: &str,
    ) -> Result<(), sqlx::Error> {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANGES_CHANNEL)
            .bind(customer)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    inbox_ops!(Postgres);

    mod sql {
        /// Taken before `CREATE`: daemons starting together take turns.
        pub const DDL_LOCK: &str = "SELECT pg_advisory_xact_lock(7242069151)";
        pub const CREATE: [&str; 2] = [
            create_table!("inapp_messages", "BIGSERIAL PRIMARY KEY", "BIGINT"),
            "CREATE INDEX IF NOT EXISTS inapp_messages_by_customer ON inapp_messages (customer_id, id)",
        ];
        pub const INSERT: &str = "INSERT INTO inapp_messages
             (idempotency_key, customer_id, workflow, step, title, body, url, created_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (idempotency_key) DO NOTHING";
        pub const ID_BY_KEY: &str = "SELECT id FROM inapp_messages WHERE idempotency_key = $1";
        pub const MESSAGES: &str =
            "SELECT id, title, body, url, workflow, step, created_ms, read_ms FROM inapp_messages
             WHERE customer_id = $1 AND dismissed_ms IS NULL AND (NOT $2 OR read_ms IS NULL)
             ORDER BY id DESC LIMIT 100";
        pub const MARK_READ: &str = "UPDATE inapp_messages SET read_ms = COALESCE(read_ms, $1)
             WHERE id = $2 AND customer_id = $3";
        pub const MARK_DISMISSED: &str =
            "UPDATE inapp_messages SET dismissed_ms = COALESCE(dismissed_ms, $1)
             WHERE id = $2 AND customer_id = $3";
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
