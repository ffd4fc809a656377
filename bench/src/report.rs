//! The figures of a run: a table for people, JSON for scripts.
//!
//! Rates of the daemon (ingestion, drain) are also given as a share of the
//! database's own batched insert rate measured in the same run, because on
//! a 2-core machine that ceiling moves between sittings and the share does
//! not move as much.

use std::fmt::Write;

use serde::Serialize;

use crate::machine::Machine;

/// The name of the ceiling figure each backend's rates are divided by.
pub const CEILING_REFERENCE: &str = "batched insert (reference)";

#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    pub backend: &'static str,
    pub measure: &'static str,
    pub name: String,
    pub value: f64,
    pub unit: &'static str,
    /// `value` ÷ the backend's reference ceiling, for ingestion and drain rates.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub of_ceiling: Option<f64>,
    /// What exactly was measured (sizes, callers, repetitions).
    pub detail: String,
}

impl Figure {
    pub fn new(
        backend: &'static str,
        measure: &'static str,
        name: impl Into<String>,
        value: f64,
        unit: &'static str,
        detail: impl Into<String>,
    ) -> Figure {
        Figure {
            backend,
            measure,
            name: name.into(),
            value,
            unit,
            of_ceiling: None,
            detail: detail.into(),
        }
    }

    fn compares_with_ceiling(&self) -> bool {
        matches!(self.measure, "ingest" | "drain" | "footprint") && self.unit.ends_with("/s")
    }
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub machine: Machine,
    pub scale: String,
    pub figures: Vec<Figure>,
}

impl Report {
    pub fn new(machine: Machine, scale: String) -> Report {
        Report {
            machine,
            scale,
            figures: Vec::new(),
        }
    }

    pub fn extend(&mut self, figures: Vec<Figure>) {
        self.figures.extend(figures);
        self.relate_to_ceilings();
    }

    fn relate_to_ceilings(&mut self) {
        let ceilings: Vec<(&'static str, f64)> = self
            .figures
            .iter()
            .filter(|f| f.measure == "ceiling" && f.name == CEILING_REFERENCE)
            .map(|f| (f.backend, f.value))
            .collect();
        for figure in self
            .figures
            .iter_mut()
            .filter(|f| f.compares_with_ceiling())
        {
            figure.of_ceiling = ceilings
                .iter()
                .find(|(backend, _)| *backend == figure.backend)
                .map(|(_, ceiling)| figure.value / ceiling);
        }
    }

    pub fn json(&self) -> anyhow::Result<String> {
        Ok(serde_json::to_string_pretty(self)?)
    }

    pub fn table(&self) -> String {
        let mut out = String::new();
        let m = &self.machine;
        let _ = writeln!(
            out,
            "machine: {} cores ({}), {} RAM, kernel {}, {}; PostgreSQL {}; scale {}",
            m.cores, m.cpu, m.memory, m.kernel, m.os, m.postgres, self.scale
        );
        let rows: Vec<[String; 6]> = self
            .figures
            .iter()
            .map(|f| {
                [
                    f.backend.to_string(),
                    f.measure.to_string(),
                    f.name.clone(),
                    format!("{} {}", format_value(f.value, f.unit), f.unit),
                    f.of_ceiling
                        .map(|share| format!("{:.1} %", share * 100.0))
                        .unwrap_or_default(),
                    f.detail.clone(),
                ]
            })
            .collect();
        let header = [
            "backend",
            "measure",
            "figure",
            "value",
            "of ceiling",
            "detail",
        ]
        .map(String::from);
        let mut widths = header.clone().map(|h| h.chars().count());
        for row in &rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        for row in std::iter::once(&header).chain(&rows) {
            let line: Vec<String> = row
                .iter()
                .zip(widths)
                .enumerate()
                .map(|(i, (cell, width))| {
                    if i == 3 || i == 4 {
                        format!("{cell:>width$}")
                    } else {
                        format!("{cell:<width$}")
                    }
                })
                .collect();
            let _ = writeln!(out, "{}", line.join("  ").trim_end());
        }
        out
    }
}

/// Rates with thousands separators, times and sizes with one decimal.
fn format_value(value: f64, unit: &str) -> String {
    if unit.ends_with("/s") || unit == "rows" || unit == "cases" {
        let digits = format!("{:.0}", value.max(0.0));
        let mut grouped = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 {
                grouped.push(',');
            }
            grouped.push(c);
        }
        grouped
    } else {
        format!("{value:.1}")
    }
}

#[cfg(test)]
mod tests {
    use super::format_value;

    #[test]
    fn formats_rates_and_times() {
        assert_eq!(format_value(1234567.4, "events/s"), "1,234,567");
        assert_eq!(format_value(999.0, "rows/s"), "999");
        assert_eq!(format_value(12.345, "ms"), "12.3");
    }
}
