//! What load-test clients measure and share: a log-linear latency histogram, per-second samples
//! of the measured window, each received stream's loss from the counters its packets carry, and
//! the window and stop flag every client reads.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

/// Log-linear latency histogram in ns: 64 steps per power of two (about 1.6% resolution).
#[derive(Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
}

const HIST_BUCKETS: usize = 64 + 58 * 64;

impl Default for Histogram {
    fn default() -> Self {
        Self {
            counts: vec![0; HIST_BUCKETS],
            total: 0,
        }
    }
}

impl Histogram {
    fn bucket(v: u64) -> usize {
        if v < 64 {
            return v as usize;
        }
        let e = 63 - v.leading_zeros() as usize;
        let sub = ((v >> (e - 6)) - 64) as usize;
        64 + (e - 6) * 64 + sub
    }

    /// Middle of a bucket's range.
    fn value(i: usize) -> f64 {
        if i < 64 {
            return i as f64;
        }
        let e = (i - 64) / 64 + 6;
        let sub = ((i - 64) % 64) as u64;
        let lo = (64 + sub) << (e - 6);
        lo as f64 + ((1u64 << (e - 6)) as f64) / 2.0
    }

    pub fn record(&mut self, v: u64) {
        self.counts[Self::bucket(v).min(HIST_BUCKETS - 1)] += 1;
        self.total += 1;
    }

    pub fn merge(&mut self, o: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&o.counts) {
            *a += b;
        }
        self.total += o.total;
    }

    pub fn count(&self) -> u64 {
        self.total
    }

    /// The q-quantile (0..1) in ns, or NaN when empty.
    pub fn quantile(&self, q: f64) -> f64 {
        if self.total == 0 {
            return f64::NAN;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Self::value(i);
            }
        }
        f64::NAN
    }
}

/// One second of the measured window.
#[derive(Clone, Default)]
pub struct SecondSample {
    pub packets: u64,
    pub latency: Histogram,
}

/// Loss of the received streams, from the embedded counters.
#[derive(Clone, Copy, Default, Debug)]
pub struct LossTotals {
    pub expected: u64,
    pub received: u64,
    pub streams: u64,
    pub duplicates: u64,
}

#[derive(Default)]
pub struct RecorderInner {
    pub seconds: Vec<SecondSample>,
    pub total: Histogram,
    pub loss: LossTotals,
}

/// What every client shares: the measured window (by send time) and what was received in it.
pub struct Shared {
    window_start: AtomicU64,
    window_end: AtomicU64,
    pub(crate) stop: AtomicBool,
    pub inner: Mutex<RecorderInner>,
}

impl Default for Shared {
    fn default() -> Self {
        Self {
            window_start: AtomicU64::new(u64::MAX),
            window_end: AtomicU64::new(u64::MAX),
            stop: AtomicBool::new(false),
            inner: Mutex::new(RecorderInner::default()),
        }
    }
}

impl Shared {
    /// Packets sent from `start_ns` until `end_ns` (since [`epoch`]) are measured.
    pub fn set_window(&self, start_ns: u64, end_ns: u64) {
        self.window_end.store(end_ns, Ordering::Relaxed);
        self.window_start.store(start_ns, Ordering::Relaxed);
    }
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }
    pub(crate) fn window(&self) -> (u64, u64) {
        (
            self.window_start.load(Ordering::Relaxed),
            self.window_end.load(Ordering::Relaxed),
        )
    }
}

#[derive(Clone, Copy)]
pub(crate) struct StreamLoss {
    pub(crate) min: u64,
    pub(crate) max: u64,
    pub(crate) received: u64,
    /// Bit i: counter `max - i` was received (duplicates are not delivered packets).
    pub(crate) seen: u128,
    pub(crate) duplicates: u64,
}

impl StreamLoss {
    /// Whether `counter` is new (it may be older than the window, which is taken as new).
    pub(crate) fn note(&mut self, counter: u64) -> bool {
        if counter > self.max {
            let shift = counter - self.max;
            self.seen = if shift >= 128 { 0 } else { self.seen << shift };
            self.seen |= 1;
            self.max = counter;
        } else {
            let d = self.max - counter;
            if d < 128 {
                if self.seen & (1 << d) != 0 {
                    self.duplicates += 1;
                    return false;
                }
                self.seen |= 1 << d;
            }
            self.min = self.min.min(counter);
        }
        self.received += 1;
        true
    }
}

#[derive(Default)]
pub(crate) struct LocalStats {
    /// (send ns, latency ns) of packets sent inside the window, not yet flushed.
    pub(crate) pending: Vec<(u64, u64)>,
    pub(crate) streams: HashMap<u32, StreamLoss>,
    pub(crate) last_flush: Option<Instant>,
}

impl LocalStats {
    pub(crate) fn flush(&mut self, shared: &Shared, last: bool) {
        let Ok(mut inner) = shared.inner.lock() else {
            return;
        };
        let (start, _) = shared.window();
        for &(sent, lat) in &self.pending {
            let sec = ((sent.saturating_sub(start)) / 1_000_000_000) as usize;
            if inner.seconds.len() <= sec {
                inner.seconds.resize_with(sec + 1, SecondSample::default);
            }
            inner.seconds[sec].packets += 1;
            inner.seconds[sec].latency.record(lat);
            inner.total.record(lat);
        }
        self.pending.clear();
        if last {
            for s in self.streams.values() {
                inner.loss.expected += s.max - s.min + 1;
                inner.loss.received += s.received;
                inner.loss.streams += 1;
                inner.loss.duplicates += s.duplicates;
            }
            self.streams.clear();
        }
    }
}
