//! Reading one unlabelled histogram out of the daemon's metrics, and its
//! quantiles over an interval (the difference of two scrapes).

use anyhow::{Context, ensure};

/// A histogram's cumulative bucket counts, by upper bound (`+Inf` last).
#[derive(Debug, Clone, PartialEq)]
pub struct Buckets(Vec<(f64, f64)>);

impl Buckets {
    /// The buckets of `name` (the metric's name without `_bucket`) in an
    /// OpenMetrics text exposition.
    pub fn parse(exposition: &str, name: &str) -> anyhow::Result<Buckets> {
        let prefix = format!("{name}_bucket{{le=\"");
        let mut buckets = Vec::new();
        for line in exposition.lines() {
            let Some(rest) = line.strip_prefix(&prefix) else {
                continue;
            };
            let (bound, count) = rest
                .split_once("\"} ")
                .with_context(|| format!("cannot read the bucket line '{line}'"))?;
            let bound: f64 = if bound == "+Inf" {
                f64::INFINITY
            } else {
                bound
                    .parse()
                    .with_context(|| format!("bad bucket bound in '{line}'"))?
            };
            let count: f64 = count
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .parse()
                .with_context(|| format!("bad bucket count in '{line}'"))?;
            buckets.push((bound, count));
        }
        ensure!(!buckets.is_empty(), "the metrics have no histogram {name}");
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        Ok(Buckets(buckets))
    }

    /// What was observed after `earlier` was scraped.
    pub fn since(&self, earlier: &Buckets) -> Buckets {
        Buckets(
            self.0
                .iter()
                .map(|&(bound, count)| {
                    let before = earlier
                        .0
                        .iter()
                        .find(|(b, _)| *b == bound)
                        .map_or(0.0, |(_, c)| *c);
                    (bound, count - before)
                })
                .collect(),
        )
    }

    pub fn count(&self) -> f64 {
        self.0.last().map_or(0.0, |(_, count)| *count)
    }

    /// The `q` quantile, interpolated linearly inside its bucket as
    /// Prometheus' `histogram_quantile` does; the largest finite bound if it
    /// falls in `+Inf`; `None` without observations.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total <= 0.0 {
            return None;
        }
        let rank = q * total;
        let mut lower = (0.0, 0.0);
        for &(bound, count) in &self.0 {
            if count >= rank {
                if bound.is_infinite() {
                    return Some(lower.0);
                }
                let share = if count > lower.1 {
                    (rank - lower.1) / (count - lower.1)
                } else {
                    0.0
                };
                return Some(lower.0 + (bound - lower.0) * share);
            }
            lower = (bound, count);
        }
        Some(lower.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEFORE: &str = "# TYPE x_seconds histogram
x_seconds_sum 1.0
x_seconds_count 10
x_seconds_bucket{le=\"0.01\"} 10
x_seconds_bucket{le=\"0.02\"} 10
x_seconds_bucket{le=\"+Inf\"} 10
y_seconds_bucket{le=\"0.01\"} 99
";
    const AFTER: &str = "x_seconds_bucket{le=\"0.01\"} 60
x_seconds_bucket{le=\"0.02\"} 110
x_seconds_bucket{le=\"+Inf\"} 110
";

    #[test]
    fn quantiles_of_an_interval_interpolate_inside_the_bucket() {
        let before = Buckets::parse(BEFORE, "x_seconds").expect("before");
        let after = Buckets::parse(AFTER, "x_seconds").expect("after");
        let interval = after.since(&before);
        assert_eq!(interval.count(), 100.0);
        // 50 in (0, 0.01], 50 in (0.01, 0.02].
        let p50 = interval.quantile(0.5).expect("p50");
        assert!((p50 - 0.01).abs() < 1e-9, "{p50}");
        let p99 = interval.quantile(0.99).expect("p99");
        assert!((p99 - 0.0198).abs() < 1e-9, "{p99}");
        assert_eq!(before.since(&before).quantile(0.99), None);
    }

    #[test]
    fn a_missing_histogram_is_an_error() {
        let error = Buckets::parse(BEFORE, "z_seconds").expect_err("no z");
        assert!(error.to_string().contains("z_seconds"), "{error}");
    }
}
