//! What every scenario reports: latency percentiles over raw samples, rates,
//! and the one-line JSON object each scenario prints on stdout (one line per
//! size it ran, the default size last). Human-readable progress goes to
//! stderr so that stdout stays machine-readable.

use std::io::Write;
use std::time::Instant;

use anyhow::{Context, Result};
use serde::Serialize;

/// Percentiles of a set of latency samples, in microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LatencySummary {
    pub p50_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
    pub mean_us: f64,
}

impl LatencySummary {
    /// Summarizes samples given in nanoseconds; all zero when there are none.
    pub fn from_nanos(samples_ns: &[u64]) -> LatencySummary {
        if samples_ns.is_empty() {
            return LatencySummary::default();
        }
        let mut sorted = samples_ns.to_vec();
        sorted.sort_unstable();
        let total: u128 = sorted.iter().map(|s| u128::from(*s)).sum();
        let us = |ns: f64| round_to(ns / 1_000.0, 3);
        LatencySummary {
            p50_us: us(percentile(&sorted, 50.0) as f64),
            p99_us: us(percentile(&sorted, 99.0) as f64),
            max_us: us(sorted[sorted.len() - 1] as f64),
            mean_us: us(total as f64 / sorted.len() as f64),
        }
    }
}

/// Nearest-rank percentile (`pct` in 0..=100) of ascending `sorted`: the
/// smallest sample such that at least `pct`% of the samples are at most it.
pub fn percentile(sorted: &[u64], pct: f64) -> u64 {
    assert!(!sorted.is_empty(), "percentile of no samples");
    let rank = ((pct / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// `count / seconds`, 0 when nothing was timed.
pub fn per_second(count: usize, seconds: f64) -> f64 {
    if seconds > 0.0 { count as f64 / seconds } else { 0.0 }
}

/// Rounds to `decimals` places, to keep the JSON readable.
pub fn round_to(value: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (value * scale).round() / scale
}

/// Median cost of one `Instant::now()` pair in nanoseconds, to judge how
/// much of a sub-microsecond latency sample is the clock itself.
pub fn clock_overhead_ns() -> u64 {
    let mut samples: Vec<u64> = (0..10_001)
        .map(|_| {
            let a = Instant::now();
            let b = Instant::now();
            (b - a).as_nanos() as u64
        })
        .collect();
    samples.sort_unstable();
    percentile(&samples, 50.0)
}

/// Prints `value` as one line of JSON on stdout and flushes it.
pub fn print_json_line(value: &impl Serialize) -> Result<()> {
    let line = serde_json::to_string(value).context("serializing the report")?;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{line}").context("writing the report to stdout")?;
    stdout.flush().context("flushing stdout")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let sorted: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&sorted, 50.0), 50);
        assert_eq!(percentile(&sorted, 99.0), 99);
        assert_eq!(percentile(&sorted, 100.0), 100);
        assert_eq!(percentile(&sorted, 0.0), 1);
        assert_eq!(percentile(&[7], 99.0), 7);
        assert_eq!(percentile(&[1, 2, 3], 50.0), 2);
    }

    #[test]
    fn summary_is_in_microseconds() {
        let summary = LatencySummary::from_nanos(&[3_000, 1_000, 2_000, 4_000]);
        assert_eq!(summary, LatencySummary { p50_us: 2.0, p99_us: 4.0, max_us: 4.0, mean_us: 2.5 });
        assert_eq!(LatencySummary::from_nanos(&[]), LatencySummary::default());
    }
}
