//! The store a measured daemon runs on: a SQLite file in its scratch
//! folder, or a PostgreSQL database of its own, created on the server the
//! admin URL names and dropped afterwards.

use std::path::PathBuf;
use std::str::FromStr;

use anyhow::Context;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

/// The store a daemon runs on.
pub enum Store {
    Sqlite(PathBuf),
    Postgres(PgDatabase),
}

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
