//! What the figures were measured on, read off the machine itself.

use serde::Serialize;

use crate::Ctx;
use crate::daemon::Backend;

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cores: usize,
    pub cpu: String,
    pub memory: String,
    pub kernel: String,
    pub os: String,
    pub postgres: String,
}

pub async fn describe(ctx: &Ctx, backends: &[Backend]) -> Machine {
    let postgres = if backends.contains(&Backend::Postgres) {
        postgres_version(&ctx.postgres)
            .await
            .unwrap_or_else(|error| format!("unknown ({error:#})"))
    } else {
        "not used".to_string()
    };
    Machine {
        cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu: proc_field("/proc/cpuinfo", "model name").unwrap_or_else(|| "unknown".into()),
        memory: proc_field("/proc/meminfo", "MemTotal")
            .and_then(|kib| kib.trim_end_matches(" kB").trim().parse::<u64>().ok())
            .map_or_else(
                || "unknown".into(),
                |kib| format!("{:.1} GiB", kib as f64 / 1024.0 / 1024.0),
            ),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unknown".into()),
        os: proc_field("/etc/os-release", "PRETTY_NAME")
            .map(|s| s.trim_matches('"').to_string())
            .unwrap_or_else(|| "unknown".into()),
        postgres,
    }
}

/// The value of the first `key: value` (or `key=value`) line of a file.
fn proc_field(path: &str, key: &str) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(key)?;
        let value = rest.trim_start().strip_prefix([':', '='])?;
        Some(value.trim().to_string())
    })
}

async fn postgres_version(url: &str) -> anyhow::Result<String> {
    let pool = crate::store::admin_pool(url).await?;
    let version: String = sqlx::query_scalar("SHOW server_version")
        .fetch_one(&pool)
        .await?;
    let settings: Vec<(String, String)> = sqlx::query_as(
        "SELECT name, setting FROM pg_settings
         WHERE name IN ('fsync', 'synchronous_commit', 'shared_buffers', 'max_wal_size') ORDER BY name",
    )
    .fetch_all(&pool)
    .await?;
    pool.close().await;
    let settings: Vec<String> = settings.iter().map(|(k, v)| format!("{k}={v}")).collect();
    Ok(format!("{version} ({})", settings.join(", ")))
}
