//! Watching the `log` plugin's output: how many deliveries were handed to
//! the plugin, and when (its `logged_at_unix_ms`, taken in the plugin just
//! before it writes the line).

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use anyhow::Context;

/// Counts the lines appended to the sink's file, reading only what is new,
/// so polling it during a drain costs next to nothing.
pub struct SinkTail {
    path: PathBuf,
    file: Option<File>,
    offset: u64,
    lines: u64,
    buffer: Vec<u8>,
}

impl SinkTail {
    /// Starts counting from the file's current end.
    pub fn new(path: &Path) -> SinkTail {
        let offset = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        SinkTail {
            path: path.to_path_buf(),
            file: None,
            offset,
            lines: 0,
            buffer: vec![0; 1 << 20],
        }
    }

    /// Where counting started (or the offset of the first uncounted byte).
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Lines appended since this tail was made.
    pub fn poll(&mut self) -> anyhow::Result<u64> {
        if self.file.is_none() {
            match File::open(&self.path) {
                Ok(mut file) => {
                    file.seek(SeekFrom::Start(self.offset))?;
                    self.file = Some(file);
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
                Err(e) => {
                    return Err(e)
                        .with_context(|| format!("cannot open '{}'", self.path.display()));
                }
            }
        }
        let Some(file) = self.file.as_mut() else {
            return Ok(self.lines);
        };
        loop {
            let read = file
                .read(&mut self.buffer)
                .with_context(|| format!("cannot read '{}'", self.path.display()))?;
            if read == 0 {
                return Ok(self.lines);
            }
            self.offset += read as u64;
            self.lines += self.buffer[..read].iter().filter(|&&b| b == b'\n').count() as u64;
        }
    }
}

/// The plugin's hand-off times (Unix ms) of the lines from `offset` on.
pub fn handoff_times(path: &Path, offset: u64) -> anyhow::Result<Vec<i64>> {
    let mut times = Vec::new();
    each_line(path, offset, "logged_at_unix_ms", |value| {
        times.push(value.as_i64()?);
        Some(())
    })?;
    Ok(times)
}

/// How many times each delivery (by `delivery_id`) was handed to the plugin
/// in the lines from `offset` on.
pub fn handoffs_per_delivery(path: &Path, offset: u64) -> anyhow::Result<HashMap<String, u32>> {
    let mut counts = HashMap::new();
    each_line(path, offset, "delivery_id", |value| {
        *counts.entry(value.as_str()?.to_string()).or_insert(0) += 1;
        Some(())
    })?;
    Ok(counts)
}

/// Hands `field` of each JSON line from `offset` on to `take`, which
/// answers `None` if the value is not what it expects.
fn each_line(
    path: &Path,
    offset: u64,
    field: &str,
    mut take: impl FnMut(&serde_json::Value) -> Option<()>,
) -> anyhow::Result<()> {
    let mut file = File::open(path).with_context(|| format!("cannot open '{}'", path.display()))?;
    file.seek(SeekFrom::Start(offset))?;
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line = line.with_context(|| format!("cannot read '{}'", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let value: serde_json::Value = serde_json::from_str(&line)
            .with_context(|| format!("line {} of '{}' is not JSON", i + 1, path.display()))?;
        value
            .get(field)
            .and_then(&mut take)
            .with_context(|| format!("line {} of '{}' has no {field}", i + 1, path.display()))?;
    }
    Ok(())
}

/// Wall-clock now in Unix milliseconds, the plugin's time base.
pub fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
