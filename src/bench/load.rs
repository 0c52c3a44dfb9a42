//! Open-loop load: messages are due at fixed times whatever the server does,
//! and latency counts from the time a message was *due*, not from when it was
//! finally sent. A server that stalls for a second therefore shows a second of
//! latency on every message scheduled in that second (no coordinated omission).

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use super::results::histogram;

/// The process-wide origin of timestamps carried inside benchmark messages.
/// Sender and receiver live in the same process, so an offset from this
/// instant is enough to measure one-way latency without synchronised clocks.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// A due time as nanoseconds since [`epoch`].
pub fn stamp(due: Instant) -> u64 {
    due.saturating_duration_since(epoch()).as_nanos() as u64
}

/// Time elapsed since a stamp was due.
pub fn since(stamp: u64) -> Duration {
    (epoch() + Duration::from_nanos(stamp)).elapsed()
}

/// A message text of `size` bytes that carries `stamp`: 16 hex digits, then padding.
pub fn payload(stamp: u64, size: usize) -> String {
    let mut text = format!("{stamp:016x}");
    while text.len() < size {
        text.push('.');
    }
    text
}

/// The stamp of a [`payload`], if the text is one.
pub fn parse_stamp(text: &[u8]) -> Option<u64> {
    let digits = std::str::from_utf8(text.get(..16)?).ok()?;
    u64::from_str_radix(digits, 16).ok()
}

/// Message `i` of a run is due at `start + i / rate`.
pub struct Schedule {
    start: Instant,
    rate: f64,
    total: u64,
    next: u64,
}

impl Schedule {
    /// `rate` messages per second for `duration`, starting now.
    pub fn new(rate: f64, duration: Duration) -> Schedule {
        Schedule {
            start: Instant::now(),
            rate,
            total: (rate * duration.as_secs_f64()).round().max(1.0) as u64,
            next: 0,
        }
    }

    pub fn total(&self) -> u64 {
        self.total
    }

    /// How many messages have been handed out so far.
    pub fn next_index(&self) -> u64 {
        self.next
    }

    /// When message `i` is due.
    pub fn due(&self, i: u64) -> Instant {
        self.start + Duration::from_secs_f64(i as f64 / self.rate)
    }

    /// Waits until the next message is due, then returns every message due by
    /// now (timers tick in milliseconds; high rates are sent in small bursts).
    /// `None` once all are handed out.
    pub async fn next_batch(&mut self) -> Option<std::ops::Range<u64>> {
        if self.next >= self.total {
            return None;
        }
        tokio::time::sleep_until(self.due(self.next).into()).await;
        let elapsed = self.start.elapsed().as_secs_f64();
        let upto = ((elapsed * self.rate).floor() as u64 + 1).clamp(self.next + 1, self.total);
        let batch = self.next..upto;
        self.next = upto;
        Some(batch)
    }
}

/// A latency histogram shared by the tasks of a run.
#[derive(Clone)]
pub struct Recorder(Arc<Mutex<Histogram<u64>>>);

impl Default for Recorder {
    fn default() -> Self {
        Recorder(Arc::new(Mutex::new(histogram())))
    }
}

impl Recorder {
    pub fn record(&self, latency: Duration) {
        let us = (latency.as_micros() as u64).clamp(1, 60_000_000);
        let mut h = self.0.lock().unwrap_or_else(|e| e.into_inner());
        h.saturating_record(us);
    }

    pub fn snapshot(&self) -> Histogram<u64> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Offered rates for a step run: `from`, then ×`factor` up to `to` inclusive.
pub fn step_rates(from: f64, to: f64, factor: f64) -> Vec<f64> {
    let mut rates = vec![];
    let mut r = from;
    while r <= to * 1.0001 {
        rates.push(r.round());
        r *= factor;
    }
    rates
}

/// A progress bar on stderr (hidden when stderr is not a terminal).
pub fn progress(len: u64, what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg:32} [{bar:30}] {pos}/{len} {elapsed}")
            .expect("constant template")
            .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    bar
}
