//! A Prometheus histogram of request durations by operation, lock-free
//! (atomic counters), for the pod API's `felix_cni_request_duration_seconds`:
//! the CNI plugin's latency target (p99 < 20 ms) is read off these buckets.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the buckets, in seconds: fine around the few
/// milliseconds an ADD takes, coarse up to the plugin's timeouts.
pub const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

#[derive(Default)]
struct Series {
    /// Observations per bucket (not cumulative; the text output sums them).
    buckets: [AtomicU64; BUCKETS.len()],
    /// Observations above the last bound.
    over: AtomicU64,
    sum_ns: AtomicU64,
}

/// Durations by operation, for a fixed set of operation names.
pub struct LatencyHistogram {
    ops: &'static [&'static str],
    series: Vec<Series>,
}

impl LatencyHistogram {
    pub fn new(ops: &'static [&'static str]) -> LatencyHistogram {
        LatencyHistogram {
            ops,
            series: ops.iter().map(|_| Series::default()).collect(),
        }
    }

    /// Counts one `op` that took `took`; an unknown `op` is not counted.
    pub fn observe(&self, op: &str, took: Duration) {
        let Some(series) = self
            .ops
            .iter()
            .position(|o| *o == op)
            .and_then(|i| self.series.get(i))
        else {
            return;
        };
        let secs = took.as_secs_f64();
        match BUCKETS.iter().position(|bound| secs <= *bound) {
            Some(i) => series.buckets[i].fetch_add(1, Ordering::Relaxed),
            None => series.over.fetch_add(1, Ordering::Relaxed),
        };
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        series.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// The histogram in Prometheus' text format (cumulative `le` buckets,
    /// `_sum`, `_count`), one series per operation.
    pub fn render(&self, name: &str, help: &str, label: &str) -> String {
        let mut o = String::new();
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (op, series) in self.ops.iter().zip(&self.series) {
            let mut cumulative = 0;
            for (bound, count) in BUCKETS.iter().zip(&series.buckets) {
                cumulative += count.load(Ordering::Relaxed);
                let _ = writeln!(
                    o,
                    "{name}_bucket{{{label}=\"{op}\",le=\"{bound}\"}} {cumulative}"
                );
            }
            cumulative += series.over.load(Ordering::Relaxed);
            let _ = writeln!(
                o,
                "{name}_bucket{{{label}=\"{op}\",le=\"+Inf\"}} {cumulative}"
            );
            let sum = series.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
            let _ = writeln!(o, "{name}_sum{{{label}=\"{op}\"}} {sum}");
            let _ = writeln!(o, "{name}_count{{{label}=\"{op}\"}} {cumulative}");
        }
        o
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_count_and_sum_match() {
        let h = LatencyHistogram::new(&["add", "del"]);
        h.observe("add", Duration::from_micros(300));
        h.observe("add", Duration::from_millis(3));
        h.observe("add", Duration::from_millis(30));
        h.observe("add", Duration::from_secs(9));
        h.observe("nope", Duration::from_millis(1));
        let text = h.render("x_seconds", "help.", "op");
        assert!(text.starts_with("# HELP x_seconds help.\n# TYPE x_seconds histogram\n"));
        assert!(text.contains("x_seconds_bucket{op=\"add\",le=\"0.0005\"} 1\n"));
        assert!(text.contains("x_seconds_bucket{op=\"add\",le=\"0.002\"} 1\n"));
        assert!(text.contains("x_seconds_bucket{op=\"add\",le=\"0.005\"} 2\n"));
        assert!(text.contains("x_seconds_bucket{op=\"add\",le=\"0.05\"} 3\n"));
        assert!(text.contains("x_seconds_bucket{op=\"add\",le=\"5\"} 3\n"));
        assert!(text.contains("x_seconds_bucket{op=\"add\",le=\"+Inf\"} 4\n"));
        assert!(text.contains("x_seconds_count{op=\"add\"} 4\n"));
        assert!(text.contains("x_seconds_sum{op=\"add\"} 9.0333\n"));
        assert!(text.contains("x_seconds_count{op=\"del\"} 0\n"));
        assert!(!text.contains("nope"));
    }

    #[test]
    fn a_bound_is_inclusive() {
        let h = LatencyHistogram::new(&["a"]);
        h.observe("a", Duration::from_millis(1));
        let text = h.render("x", "h", "op");
        assert!(text.contains("x_bucket{op=\"a\",le=\"0.0005\"} 0\n"));
        assert!(text.contains("x_bucket{op=\"a\",le=\"0.001\"} 1\n"));
    }
}
