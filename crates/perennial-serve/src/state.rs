//! What the learner task publishes for the handlers (status, classes) and the
//! server's counters, read without going through the learner's queue.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};

use perennial::lifelong::ClassInfo;

use crate::store::Version;

/// The last consolidation, as `GET /v1/status` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LastConsolidation {
    /// The version it produced.
    pub version: u64,
    /// Why it ran.
    pub reason: String,
    /// Its mean query loss.
    pub loss: Option<f64>,
    /// Its mean query accuracy.
    pub accuracy: Option<f64>,
    /// Seconds it trained.
    pub seconds: Option<f64>,
    /// When it was installed.
    pub at: String,
}

impl From<&Version> for LastConsolidation {
    fn from(v: &Version) -> Self {
        LastConsolidation {
            version: v.version,
            reason: v.reason.clone(),
            loss: v.loss,
            accuracy: v.accuracy,
            seconds: v.seconds,
            at: v.at.clone(),
        }
    }
}

/// The learner's state as last published.
#[derive(Debug, Default)]
pub struct Status {
    /// The current representation version.
    pub version: u64,
    /// The classes, in the order first taught.
    pub classes: Vec<ClassInfo>,
    /// Examples in all.
    pub examples: usize,
    /// The version a running consolidation will produce.
    pub running: Option<u64>,
    /// When the running consolidation started.
    pub consolidation_since: Option<String>,
    /// The last consolidation installed.
    pub last: Option<LastConsolidation>,
    /// Every version.
    pub versions: Vec<Version>,
    /// The recent unknown and confusion rates the policy watches.
    pub rates: (f64, f64),
    /// The example index, when the store keeps one.
    pub example_index: Option<ExampleIndexStatus>,
}

/// The example index as `GET /v1/status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ExampleIndexStatus {
    /// Examples indexed.
    pub entries: usize,
    /// How it was obtained when attached: "loaded", "rebuilt" (its index rebuilt) or
    /// "written" (from the examples).
    pub origin: &'static str,
}

/// Latency buckets of the request histogram, in seconds.
pub const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

#[derive(Debug, Default, Clone)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// The server's counters, in Prometheus's text format at `GET /metrics`.
#[derive(Debug, Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, String, u16), u64>>,
    latency: Mutex<BTreeMap<String, Histogram>>,
    /// Examples learnt since start.
    pub examples_learnt: AtomicU64,
    /// Consolidations installed since start.
    pub consolidations: AtomicU64,
    /// Requests refused because the queue was full.
    pub rejected: AtomicU64,
}

impl Metrics {
    /// Counts one request of `route` answered with `status` after `seconds`.
    pub fn observe(&self, method: &str, route: &str, status: u16, seconds: f64) {
        *self
            .requests
            .lock()
            .expect("metrics")
            .entry((method.to_string(), route.to_string(), status))
            .or_default() += 1;
        let mut l = self.latency.lock().expect("metrics");
        let h = l.entry(route.to_string()).or_default();
        for (i, b) in BUCKETS.iter().enumerate() {
            if seconds <= *b {
                h.counts[i] += 1;
            }
        }
        h.count += 1;
        h.sum += seconds;
    }

    /// The Prometheus text exposition.
    pub fn render(&self, status: &Status, queue: usize) -> String {
        let mut out = String::new();
        let w = &mut out;
        let _ = writeln!(w, "# HELP perennial_requests_total HTTP requests answered.");
        let _ = writeln!(w, "# TYPE perennial_requests_total counter");
        for ((m, r, s), n) in self.requests.lock().expect("metrics").iter() {
            let _ = writeln!(
                w,
                "perennial_requests_total{{method=\"{m}\",route=\"{r}\",status=\"{s}\"}} {n}"
            );
        }
        let _ = writeln!(w, "# HELP perennial_request_seconds Request latency.");
        let _ = writeln!(w, "# TYPE perennial_request_seconds histogram");
        for (r, h) in self.latency.lock().expect("metrics").iter() {
            for (b, c) in BUCKETS.iter().zip(h.counts) {
                let _ = writeln!(
                    w,
                    "perennial_request_seconds_bucket{{route=\"{r}\",le=\"{b}\"}} {c}"
                );
            }
            let _ = writeln!(
                w,
                "perennial_request_seconds_bucket{{route=\"{r}\",le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                w,
                "perennial_request_seconds_sum{{route=\"{r}\"}} {}",
                h.sum
            );
            let _ = writeln!(
                w,
                "perennial_request_seconds_count{{route=\"{r}\"}} {}",
                h.count
            );
        }
        let gauges = [
            (
                "perennial_classes",
                "Classes known.",
                status.classes.len() as f64,
            ),
            (
                "perennial_examples",
                "Examples stored.",
                status.examples as f64,
            ),
            (
                "perennial_version",
                "Current representation version.",
                status.version as f64,
            ),
            (
                "perennial_queue",
                "Requests waiting for the learner.",
                queue as f64,
            ),
            (
                "perennial_consolidation_running",
                "1 while a consolidation trains.",
                f64::from(u8::from(status.running.is_some())),
            ),
        ];
        for (name, help, v) in gauges {
            let _ = writeln!(w, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        }
        let counters = [
            (
                "perennial_consolidations_total",
                "Consolidations installed since start.",
                self.consolidations.load(Ordering::Relaxed),
            ),
            (
                "perennial_examples_learnt_total",
                "Examples learnt since start.",
                self.examples_learnt.load(Ordering::Relaxed),
            ),
            (
                "perennial_rejected_total",
                "Requests refused with 503 (queue full).",
                self.rejected.load(Ordering::Relaxed),
            ),
        ];
        for (name, help, v) in counters {
            let _ = writeln!(w, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        }
        out
    }
}

/// What the learner task and the handlers share.
#[derive(Debug, Default)]
pub struct Shared {
    /// The published status.
    pub status: RwLock<Status>,
    /// The counters.
    pub metrics: Metrics,
}
