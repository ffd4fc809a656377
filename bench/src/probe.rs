//! Reading the daemon's store directly: whether work is finished, how big
//! the store got. Never writes to it (except PostgreSQL's `ANALYZE`).
//!
//! The queries are chosen to be cheap while the daemon works: the unfinished
//! count reads the two partial indexes the schema keeps for pending and
//! in-flight deliveries, so polling it does not scan the table.

use std::path::{Path, PathBuf};

use anyhow::Context;
use sqlx::postgres::PgPool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};

use crate::store::{Store, admin_pool};

pub enum Probe {
    Sqlite { pool: SqlitePool, path: PathBuf },
    Postgres(PgPool),
}

impl Probe {
    pub async fn open(store: &Store) -> anyhow::Result<Probe> {
        match store {
            Store::Sqlite(path) => {
                // Read-only, like the daemon's own readers; WAL lets it read
                // while the daemon writes.
                let options = SqliteConnectOptions::new()
                    .filename(path)
                    .journal_mode(SqliteJournalMode::Wal)
                    .read_only(true);
                let pool = SqlitePoolOptions::new()
                    .max_connections(1)
                    .connect_with(options)
                    .await
                    .with_context(|| format!("cannot open '{}'", path.display()))?;
                Ok(Probe::Sqlite {
                    pool,
                    path: path.clone(),
                })
            }
            Store::Postgres(database) => Ok(Probe::Postgres(admin_pool(database.url()).await?)),
        }
    }

    /// Deliveries not yet final: scheduled, retrying or in flight.
    pub async fn unfinished(&self) -> anyhow::Result<i64> {
        const SQL: &str =
            "SELECT (SELECT count(*) FROM deliveries WHERE status IN ('scheduled', 'retrying'))
                                + (SELECT count(*) FROM deliveries WHERE status = 'sending')";
        let count = match self {
            Probe::Sqlite { pool, .. } => sqlx::query_scalar(SQL).fetch_one(pool).await,
            Probe::Postgres(pool) => sqlx::query_scalar(SQL).fetch_one(pool).await,
        };
        count.context("cannot count unfinished deliveries")
    }

    /// Deliveries sent, and of those how many took more than one attempt.
    pub async fn sent(&self) -> anyhow::Result<(i64, i64)> {
        const SQL: &str = "SELECT count(*), count(*) FILTER (WHERE attempts > 1) FROM deliveries WHERE status = 'sent'";
        let counts = match self {
            Probe::Sqlite { pool, .. } => sqlx::query_as(SQL).fetch_one(pool).await,
            Probe::Postgres(pool) => sqlx::query_as(SQL).fetch_one(pool).await,
        };
        counts.context("cannot count sent deliveries")
    }

    /// Gives PostgreSQL's planner statistics for tables that were empty a
    /// moment ago, as a running installation's autovacuum would have (the
    /// peers' benchmark does the same before its release moment). SQLite's
    /// planner keeps no statistics unless asked; the daemon never asks.
    pub async fn analyze(&self) -> anyhow::Result<()> {
        if let Probe::Postgres(pool) = self {
            sqlx::query("ANALYZE deliveries, cases, events")
                .execute(pool)
                .await
                .context("ANALYZE")?;
        }
        Ok(())
    }

    /// The store's size on disk: the database file plus its WAL for SQLite,
    /// `pg_database_size` for PostgreSQL.
    pub async fn size_bytes(&self) -> anyhow::Result<u64> {
        match self {
            Probe::Sqlite { path, .. } => Ok(["", "-wal", "-shm"]
                .iter()
                .map(|suffix| file_size(&with_suffix(path, suffix)))
                .sum()),
            Probe::Postgres(pool) => {
                let size: i64 = sqlx::query_scalar("SELECT pg_database_size(current_database())")
                    .fetch_one(pool)
                    .await
                    .context("pg_database_size")?;
                Ok(size.max(0) as u64)
            }
        }
    }

    pub async fn close(self) {
        match self {
            Probe::Sqlite { pool, .. } => pool.close().await,
            Probe::Postgres(pool) => pool.close().await,
        }
    }
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

fn file_size(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}
