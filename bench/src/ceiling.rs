//! The database's own insert rate on this machine, through the same driver
//! (sqlx) the daemon uses: the ceiling each daemon figure is compared with.
//!
//! Rows are shaped like the daemon's: a text key, a number and an event's
//! JSON (about 400 bytes). One event costs the daemon at least three such
//! rows (event, case, delivery) plus its index entries, and a delivery an
//! insert and two updates, so a daemon rate at a third of the ceiling is
//! already close to what the database allows.

use std::time::{Duration, Instant};

use anyhow::Context;
use sqlx::postgres::PgPool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Connection, SqliteConnection};

use crate::Ctx;
use crate::events::{payment_failed, rate};
use crate::report::{CEILING_REFERENCE, Figure};
use crate::store::{PgDatabase, admin_pool};

/// Rows per transaction (SQLite) or per statement (PostgreSQL) when batching.
const BATCH_ROWS: u64 = 10_000;

pub async fn sqlite(ctx: &Ctx) -> anyhow::Result<Vec<Figure>> {
    let dir = tempfile::Builder::new()
        .prefix("dunningd-bench-ceiling")
        .tempdir()
        .context("cannot create a scratch folder")?;
    let sizes = &ctx.sizes;
    let mut figures = Vec::new();
    for (synchronous, label) in [
        (SqliteSynchronous::Normal, "NORMAL"),
        (SqliteSynchronous::Full, "FULL (the daemon's setting)"),
    ] {
        let path = dir.path().join(format!("ceiling-{}.db", figures.len()));
        let options = SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(synchronous);
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await
            .with_context(|| format!("cannot open '{}'", path.display()))?;
        let mut conn = pool.acquire().await?;
        sqlx::query(
            "CREATE TABLE ceiling (id TEXT PRIMARY KEY, n INTEGER NOT NULL, payload TEXT NOT NULL)",
        )
        .execute(&mut *conn)
        .await?;
        let single = sqlite_single(&mut conn, sizes.ceiling_single_rows).await?;
        let batched = sqlite_batched(&mut conn, sizes.ceiling_rows).await?;
        drop(conn);
        pool.close().await;
        figures.push(Figure::new(
            "sqlite",
            "ceiling",
            format!("single-row autocommit, synchronous={label}"),
            rate(sizes.ceiling_single_rows, single),
            "rows/s",
            format!("{} rows, WAL", sizes.ceiling_single_rows),
        ));
        let name = if synchronous == SqliteSynchronous::Normal {
            CEILING_REFERENCE.to_string()
        } else {
            format!("batched insert, synchronous={label}")
        };
        figures.push(Figure::new(
            "sqlite",
            "ceiling",
            name,
            rate(sizes.ceiling_rows, batched),
            "rows/s",
            format!(
                "{} rows, {BATCH_ROWS} single-row INSERTs per transaction, WAL, synchronous={}",
                sizes.ceiling_rows,
                label.split(' ').next().unwrap_or(label)
            ),
        ));
    }
    Ok(figures)
}

async fn sqlite_single(conn: &mut SqliteConnection, rows: u64) -> anyhow::Result<Duration> {
    let started = Instant::now();
    for n in 0..rows {
        insert_sqlite_row(conn, "s", n).await?;
    }
    Ok(started.elapsed())
}

async fn sqlite_batched(conn: &mut SqliteConnection, rows: u64) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut n = 0;
    while n < rows {
        let mut tx = conn.begin().await?;
        for n in n..(n + BATCH_ROWS).min(rows) {
            insert_sqlite_row(&mut tx, "b", n).await?;
        }
        tx.commit().await?;
        n += BATCH_ROWS;
    }
    Ok(started.elapsed())
}

async fn insert_sqlite_row(
    conn: &mut SqliteConnection,
    prefix: &str,
    n: u64,
) -> anyhow::Result<()> {
    sqlx::query("INSERT INTO ceiling (id, n, payload) VALUES (?, ?, ?)")
        .bind(format!("{prefix}{n}"))
        .bind(n as i64)
        .bind(payment_failed(prefix, n))
        .execute(conn)
        .await
        .context("SQLite ceiling insert")?;
    Ok(())
}

pub async fn postgres(ctx: &Ctx) -> anyhow::Result<Vec<Figure>> {
    let database = PgDatabase::create(&ctx.postgres).await?;
    let result = postgres_in(ctx, &database).await;
    database.drop_database().await?;
    result
}

async fn postgres_in(ctx: &Ctx, database: &PgDatabase) -> anyhow::Result<Vec<Figure>> {
    let sizes = &ctx.sizes;
    let pool = admin_pool(database.url()).await?;
    sqlx::query(
        "CREATE TABLE ceiling (id TEXT PRIMARY KEY, n BIGINT NOT NULL, payload TEXT NOT NULL)",
    )
    .execute(&pool)
    .await?;
    let batched = pg_batched(&pool, sizes.ceiling_rows).await?;
    let series = pg_series(&pool, sizes.ceiling_rows).await?;
    let single = pg_single(&pool, sizes.ceiling_single_rows).await?;
    pool.close().await;
    Ok(vec![
        Figure::new(
            "postgres",
            "ceiling",
            CEILING_REFERENCE,
            rate(sizes.ceiling_rows, batched),
            "rows/s",
            format!(
                "{} client-built rows, {BATCH_ROWS} per INSERT … SELECT FROM unnest(…), each statement committed",
                sizes.ceiling_rows
            ),
        ),
        Figure::new(
            "postgres",
            "ceiling",
            "server-side INSERT … SELECT generate_series",
            rate(sizes.ceiling_rows, series),
            "rows/s",
            format!("{} rows in one statement", sizes.ceiling_rows),
        ),
        Figure::new(
            "postgres",
            "ceiling",
            "single-row autocommit",
            rate(sizes.ceiling_single_rows, single),
            "rows/s",
            format!("{} rows, one commit each", sizes.ceiling_single_rows),
        ),
    ])
}

async fn pg_batched(pool: &PgPool, rows: u64) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut n = 0;
    while n < rows {
        let range = n..(n + BATCH_ROWS).min(rows);
        let ids: Vec<String> = range.clone().map(|n| format!("b{n}")).collect();
        let numbers: Vec<i64> = range.clone().map(|n| n as i64).collect();
        let payloads: Vec<String> = range.map(|n| payment_failed("b", n)).collect();
        sqlx::query(
            "INSERT INTO ceiling (id, n, payload) SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[])",
        )
        .bind(ids)
        .bind(numbers)
        .bind(payloads)
        .execute(pool)
        .await
        .context("PostgreSQL batched ceiling insert")?;
        n += BATCH_ROWS;
    }
    Ok(started.elapsed())
}

async fn pg_series(pool: &PgPool, rows: u64) -> anyhow::Result<Duration> {
    let started = Instant::now();
    sqlx::query(
        "INSERT INTO ceiling (id, n, payload) SELECT 'g' || i, i, $1 FROM generate_series(1, $2::bigint) i",
    )
    .bind(payment_failed("g", 0))
    .bind(rows as i64)
    .execute(pool)
    .await
    .context("PostgreSQL generate_series ceiling insert")?;
    Ok(started.elapsed())
}

async fn pg_single(pool: &PgPool, rows: u64) -> anyhow::Result<Duration> {
    let started = Instant::now();
    for n in 0..rows {
        sqlx::query("INSERT INTO ceiling (id, n, payload) VALUES ($1, $2, $3)")
            .bind(format!("s{n}"))
            .bind(n as i64)
            .bind(payment_failed("s", n))
            .execute(pool)
            .await
            .context("PostgreSQL single-row ceiling insert")?;
    }
    Ok(started.elapsed())
}
