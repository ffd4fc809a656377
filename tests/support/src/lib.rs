//! Test support shared by the store's unit tests and the end-to-end suite:
//! a PostgreSQL database per test. Never a dependency of the shipped binaries
//! (the daemon takes this crate only as a dev-dependency).

use std::str::FromStr;

use sqlx::Connection;
use sqlx::postgres::PgConnectOptions;

/// The environment variable naming a PostgreSQL server, and a role that may
/// create databases, for the PostgreSQL suites.
pub const POSTGRES_ENV: &str = "DUNNINGD_TEST_POSTGRES";

/// A PostgreSQL database of one test's own: created empty, dropped (with any
/// connections still open to it) when the value is dropped.
pub struct PgDatabase {
    admin: PgConnectOptions,
    name: String,
    url: String,
}

impl PgDatabase {
    /// A fresh database on the server `DUNNINGD_TEST_POSTGRES` names, or
    /// `None` (after saying how to enable the suite) where it is not set.
    /// Under `CI` the variable must be set: the suite may not pass by being
    /// skipped.
    pub async fn create() -> Option<PgDatabase> {
        let Ok(url) = std::env::var(POSTGRES_ENV) else {
            assert!(
                std::env::var_os("CI").is_none(),
                "{POSTGRES_ENV} must be set in CI (.ci/run sets it)"
            );
            eprintln!(
                "PostgreSQL tests not run: set {POSTGRES_ENV}=postgres://USER@HOST:5432/DB \
                 (a role that may create databases) to run them"
            );
            return None;
        };
        let admin = PgConnectOptions::from_str(&url)
            .unwrap_or_else(|e| panic!("{POSTGRES_ENV}='{url}' is not a PostgreSQL URL: {e}"));
        let name = format!("dunningd_test_{}", uuid::Uuid::new_v4().simple());
        let mut conn = sqlx::PgConnection::connect_with(&admin)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to {POSTGRES_ENV}='{url}': {e}"));
        let create = format!("CREATE DATABASE \"{name}\"");
        sqlx::query(sqlx::AssertSqlSafe(create))
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("cannot create a test database on '{url}': {e}"));
        let mut own = url::Url::parse(&url)
            .unwrap_or_else(|e| panic!("{POSTGRES_ENV}='{url}' is not a URL: {e}"));
        own.set_path(&name);
        Some(PgDatabase {
            admin,
            name,
            url: own.to_string(),
        })
    }

    /// How to connect to this database.
    pub fn options(&self) -> PgConnectOptions {
        self.admin.clone().database(&self.name)
    }

    /// Records a migration from the future (version 9999), as a newer
    /// dunningd would have.
    pub async fn record_newer_migration(&self) {
        let mut conn = sqlx::PgConnection::connect_with(&self.options())
            .await
            .expect("connect to the test database");
        sqlx::query(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
             VALUES (9999, 'from a newer dunningd', TRUE, '\\x00'::bytea, 0)",
        )
        .execute(&mut conn)
        .await
        .expect("record a newer migration");
    }

    /// This database's URL, for a daemon's configuration.
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let (admin, name) = (self.admin.clone(), self.name.clone());
        // Drop cannot await; a small runtime on its own thread can.
        let _ = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async move {
                if let Ok(mut conn) = sqlx::PgConnection::connect_with(&admin).await {
                    let drop = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
                    let _ = sqlx::query(sqlx::AssertSqlSafe(drop))
                        .execute(&mut conn)
                        .await;
                }
            });
        })
        .join();
    }
}
