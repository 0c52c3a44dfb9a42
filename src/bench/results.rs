//! What a benchmark run measured, in one serialisable shape: the terminal
//! table, `--json` and docs/BENCHMARKS.md are all written from a [`Report`].

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// A latency histogram in microseconds, 1 µs to 60 s, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("constant bounds are valid")
}

/// Percentiles of a latency histogram, in milliseconds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Latency {
    pub count: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    pub fn of(h: &Histogram<u64>) -> Latency {
        let ms = |us: u64| us as f64 / 1000.0;
        Latency {
            count: h.len(),
            p50_ms: ms(h.value_at_quantile(0.50)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }
}

/// One open-loop run at a fixed offered rate.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RatePoint {
    /// Messages scheduled per second.
    pub offered_per_s: f64,
    /// Deliveries (one message to one recipient device) per second, over the
    /// time from the first scheduled send to the last delivery.
    pub delivered_per_s: f64,
    /// Messages sent (scheduled and handed to the connection).
    pub sent: u64,
    /// Deliveries seen by recipients.
    pub delivered: u64,
    /// Sends that failed (refused, connection lost, timed out).
    pub errors: u64,
    /// From each message's scheduled send time to its delivery.
    pub latency: Latency,
}

impl RatePoint {
    /// Whether the system kept up with this offered load: everything delivered,
    /// no errors, the rate achieved, and p99 within `p99_limit_ms`.
    pub fn held(&self, deliveries_per_message: u64, p99_limit_ms: f64) -> bool {
        let expected = self.sent * deliveries_per_message;
        self.errors == 0
            && self.delivered >= expected
            && self.delivered_per_s >= 0.95 * self.offered_per_s * deliveries_per_message as f64
            && self.latency.p99_ms <= p99_limit_ms
    }
}

/// A single figure of a scenario, with the target quince must reach, if any.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Figure {
    pub name: String,
    pub value: f64,
    pub unit: String,
    /// The target from the project's requirements.
    pub target: Option<f64>,
    /// True if bigger values are better (throughput); false for memory, latency.
    pub higher_is_better: bool,
}

impl Figure {
    pub fn new(name: &str, value: f64, unit: &str) -> Figure {
        Figure {
            name: name.into(),
            value,
            unit: unit.into(),
            target: None,
            higher_is_better: true,
        }
    }

    /// At least `target` is needed.
    pub fn at_least(mut self, target: f64) -> Figure {
        self.target = Some(target);
        self.higher_is_better = true;
        self
    }

    /// At most `target` is allowed.
    pub fn at_most(mut self, target: f64) -> Figure {
        self.target = Some(target);
        self.higher_is_better = false;
        self
    }

    /// Whether the target is met (None if there is no target).
    pub fn met(&self) -> Option<bool> {
        self.target.map(|t| {
            if self.higher_is_better {
                self.value >= t
            } else {
                self.value <= t
            }
        })
    }
}

/// The result of one scenario against one system.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScenarioResult {
    /// Short id: `one-to-one`, `fan-out`, `idle`, `reconnect`, `catch-up`.
    pub id: String,
    /// Human title, e.g. "1:1 chat, durable".
    pub title: String,
    /// `quince` or `mosquitto`.
    pub system: String,
    /// Parameters as shown in the report, e.g. ("message size", "100 B").
    pub params: Vec<(String, String)>,
    pub figures: Vec<Figure>,
    /// Rate-step runs, lowest offered rate first (empty for non-rate scenarios).
    pub steps: Vec<RatePoint>,
    /// Anything a reader must know to interpret the figures.
    pub notes: Vec<String>,
}

/// The physical limits of this machine, measured in the same run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Limits {
    /// Sequential small write + fsync pairs per second in the data directory.
    pub fsyncs_per_s: f64,
    /// Directory the fsync test ran in.
    pub fsync_dir: String,
    /// UDP datagrams per second one sender gets through loopback to one receiver.
    pub udp_datagrams_per_s: f64,
    /// Payload size of those datagrams.
    pub udp_payload_bytes: usize,
}

/// What the benchmark ran on.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub memory_mb: u64,
    pub kernel: String,
    pub os: String,
    /// Filesystem type under the data directory.
    pub data_fs: String,
    pub quince_version: String,
}

/// A whole benchmark run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Report {
    /// UTC date and time of the run, RFC 3339.
    pub date: String,
    /// The exact command line.
    pub command: String,
    pub machine: Machine,
    pub limits: Option<Limits>,
    pub scenarios: Vec<ScenarioResult>,
}
