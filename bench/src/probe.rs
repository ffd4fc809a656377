//! Reading the daemon's store directly: whether work is finished, how big
//! the store got. Never writes to it (except PostgreSQL's `ANALYZE`).
//!
//! The queries are chosen to be cheap while the daemon works: the unfinished
//! count reads the two partial indexes the schema keeps for pending and
//! in-flight deliveries, so polling it does not scan the table.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::Context;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};

use crate::daemon::Store;

/// A PostgreSQL database of one daemon's own, created on the server named
/// by the admin URL.
pub struct PgDatabase {
    admin: String,
    name: String,
    url: String,
}

impl PgDatabase {
    pub async fn create(admin: &str) -> anyhow::Result<PgDatabase> {
        let name = format!(
            "dunningd_bench_{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        let pool = admin_pool(admin).await?;
        // The name is ours (a fixed prefix and hex digits), never input.
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&pool)
            .await
            .with_context(|| format!("cannot create database {name} on {admin}"))?;
        pool.close().await;
        Ok(PgDatabase {
            url: with_database(admin, &name)?,
            admin: admin.to_string(),
            name,
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub async fn drop_database(&self) -> anyhow::Result<()> {
        let pool = admin_pool(&self.admin).await?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        )))
        .execute(&pool)
        .await
        .with_context(|| format!("cannot drop database {}", self.name))?;
        pool.close().await;
        Ok(())
    }
}

pub async fn admin_pool(url: &str) -> anyhow::Result<PgPool> {
    let options = PgConnectOptions::from_str(url)
        .with_context(|| format!("'{url}' is not a PostgreSQL URL"))?;
    PgPoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await
        .with_context(|| format!("cannot connect to {url}"))
}

/// The admin URL with its database name replaced.
fn with_database(url: &str, name: &str) -> anyhow::Result<String> {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, format!("?{query}")),
        None => (url, String::new()),
    };
    let authority = base
        .find("://")
        .map(|i| i + 3)
        .with_context(|| format!("'{url}' is not a URL (no '://')"))?;
    let host_end = base[authority..]
        .find('/')
        .map_or(base.len(), |i| authority + i);
    Ok(format!("{}/{name}{query}", &base[..host_end]))
}

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

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn replaces_the_database_and_keeps_the_query() {
        let cases = [
            (
                "postgres://root@127.0.0.1:5432/test",
                "postgres://root@127.0.0.1:5432/b",
            ),
            ("postgres://h:5432", "postgres://h:5432/b"),
            (
                "postgres://h/db?sslmode=require",
                "postgres://h/b?sslmode=require",
            ),
        ];
        for (admin, expected) in cases {
            assert_eq!(
                with_database(admin, "b").ok().as_deref(),
                Some(expected),
                "{admin}"
            );
        }
    }
}
