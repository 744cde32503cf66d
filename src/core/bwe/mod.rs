//! Send-side bandwidth estimation for one receiver, in the manner of Google Congestion Control
//! (draft-ietf-rmcat-gcc-02): every packet sent carries a transport-wide sequence number; the
//! receiver's feedback (`rtcp::twcc`) says when each arrived. A delay-based controller (trendline
//! of the queueing-delay growth, adaptive threshold, AIMD on the acknowledged rate) and a
//! loss-based controller each propose a rate; the estimate is the lower. Probe clusters, sent
//! faster than the estimate, find out quickly whether there is room above it. REMB from
//! receivers without transport-cc feedback is taken as an upper bound instead.
//!
//! Plain Rust on `now`, like the rest of the core.

mod delay;
mod loss;
mod probe;

use std::time::{Duration, Instant};

pub use delay::Usage;
pub use probe::{ProbeCluster, PROBE_PACKET_BYTES};

use crate::core::rtcp::twcc::PacketResult;

/// Packets remembered for feedback (about 4 s of 1000 packets/s).
const HISTORY: usize = 4096;

#[derive(Debug, Clone, Copy)]
struct Sent {
    seq: u16,
    at_us: i64,
    size: u32,
    probe: Option<u32>,
    valid: bool,
}

/// A packet the receiver has reported on: when it left and when (if) it arrived.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Acked {
    pub send_us: i64,
    pub arrival_us: Option<i64>,
    pub size: u32,
    pub probe: Option<u32>,
}

#[derive(Debug, Clone)]
pub struct BweConfig {
    pub initial_bps: u64,
    pub min_bps: u64,
    pub max_bps: u64,
}

impl Default for BweConfig {
    fn default() -> Self {
        BweConfig {
            initial_bps: 300_000,
            min_bps: 30_000,
            max_bps: 20_000_000,
        }
    }
}

pub struct BandwidthEstimator {
    config: BweConfig,
    epoch: Option<Instant>,
    history: Vec<Sent>,
    acked: Vec<Acked>,
    delay: delay::DelayController,
    loss: loss::LossController,
    probe: probe::ProbeController,
    remb_bps: Option<u64>,
    estimate_bps: u64,
    last_feedback: Option<Instant>,
    /// The receiver's reference time is 24 bits of 64 ms and wraps every ~12 days: arrivals are
    /// unwrapped against the previous message's.
    last_arrival_us: Option<i64>,
    arrival_offset_us: i64,
    /// What was sent over the last window (µs start, bytes), and the rate of the one before.
    sent_window: (i64, u64),
    sent_bps: u64,
}

/// The span of transport-cc reference times, in µs (2^24 × 64 ms).
const REFERENCE_SPAN_US: i64 = (1 << 24) * 64_000;

impl BandwidthEstimator {
    pub fn new(config: BweConfig) -> Self {
        let initial = config.initial_bps;
        BandwidthEstimator {
            delay: delay::DelayController::new(initial),
            loss: loss::LossController::new(initial),
            probe: probe::ProbeController::new(),
            history: vec![
                Sent {
                    seq: 0,
                    at_us: 0,
                    size: 0,
                    probe: None,
                    valid: false,
                };
                HISTORY
            ],
            acked: Vec::with_capacity(256),
            epoch: None,
            remb_bps: None,
            estimate_bps: initial,
            last_feedback: None,
            last_arrival_us: None,
            arrival_offset_us: 0,
            sent_window: (0, 0),
            sent_bps: 0,
            config,
        }
    }

    fn us(&mut self, now: Instant) -> i64 {
        let epoch = *self.epoch.get_or_insert(now);
        now.saturating_duration_since(epoch).as_micros() as i64
    }

    /// Records a packet as it leaves, with its transport-wide sequence number and size in bytes
    /// (and the probe cluster it belongs to, if any).
    pub fn on_sent(&mut self, now: Instant, seq: u16, size: usize, probe: Option<u32>) {
        let at_us = self.us(now);
        if probe.is_none() {
            let (start, bytes) = &mut self.sent_window;
            *bytes += size as u64;
            let span = at_us - *start;
            if span >= 500_000 {
                self.sent_bps = (*bytes * 8 * 1_000_000) / span as u64;
                self.sent_window = (at_us, 0);
            }
        }
        self.history[seq as usize % HISTORY] = Sent {
            seq,
            at_us,
            size: size as u32,
            probe,
            valid: true,
        };
    }

    /// Takes one feedback message's results.
    pub fn on_feedback(&mut self, now: Instant, results: &[PacketResult]) {
        let now_us = self.us(now);
        self.acked.clear();
        if let (Some(first), Some(last)) = (
            results.iter().find_map(|r| r.arrival_us),
            self.last_arrival_us,
        ) {
            let jump = first + self.arrival_offset_us - last;
            if jump < -REFERENCE_SPAN_US / 2 {
                self.arrival_offset_us += REFERENCE_SPAN_US;
            } else if jump > REFERENCE_SPAN_US / 2 {
                self.arrival_offset_us -= REFERENCE_SPAN_US;
            }
        }
        let offset = self.arrival_offset_us;
        if let Some(a) = results.iter().rev().find_map(|r| r.arrival_us) {
            self.last_arrival_us = Some(a + offset);
        }
        for r in results {
            let s = &mut self.history[r.seq as usize % HISTORY];
            if !s.valid || s.seq != r.seq {
                continue;
            }
            // Reported once: a later report of the same packet (feedback overlap) is ignored.
            s.valid = false;
            self.acked.push(Acked {
                send_us: s.at_us,
                arrival_us: r.arrival_us.map(|a| a + offset),
                size: s.size,
                probe: s.probe,
            });
        }
        if self.acked.is_empty() {
            return;
        }
        self.last_feedback = Some(now);
        let acked_bps = self.delay.on_acked(now_us, &self.acked);
        self.loss.on_acked(now_us, &self.acked);
        if let Some(probe_bps) = self.probe.on_acked(&self.acked) {
            // The path carried the probe: start from what it delivered.
            self.delay.raise_to(probe_bps);
            self.loss.raise_to(probe_bps);
        }
        let _ = acked_bps;
        self.update(now);
    }

    /// A receiver's REMB (for receivers without transport-cc feedback, the only signal).
    pub fn on_remb(&mut self, now: Instant, bps: u64) {
        self.remb_bps = Some(bps);
        if self.last_feedback.is_none() {
            // REMB is the receiver's own estimate; receiver-report loss may only cut below it.
            self.loss.raise_to(bps);
        }
        self.update(now);
    }

    /// Loss the receiver reports in RTCP receiver reports (fraction lost, 0..=255), used when
    /// there is no transport-cc feedback.
    pub fn on_receiver_report(&mut self, now: Instant, fraction_lost: u8) {
        if self.last_feedback.is_none() {
            let now_us = self.us(now);
            self.loss
                .on_fraction(now_us, f64::from(fraction_lost) / 256.0);
            self.update(now);
        }
    }

    fn update(&mut self, now: Instant) {
        let mut e = self.delay.rate().min(self.loss.rate());
        if self.last_feedback.is_none() {
            // Without feedback on our own packets, REMB is the estimate.
            if let Some(r) = self.remb_bps {
                e = r.min(self.loss.rate());
            }
        } else if let Some(r) = self.remb_bps {
            e = e.min(r);
        }
        self.estimate_bps = e.clamp(self.config.min_bps, self.config.max_bps);
        if self.last_feedback.is_some() {
            self.loss.cap(self.delay.rate().saturating_mul(11) / 10);
        }
        self.probe
            .on_estimate(now, self.estimate_bps, self.delay.usage());
    }

    /// The share of packets lost in the last measured window (transport-cc feedback, or
    /// receiver reports without it).
    pub fn loss_fraction(&self) -> f64 {
        self.loss.fraction()
    }

    pub fn estimate_bps(&self) -> u64 {
        self.estimate_bps
    }

    pub fn usage(&self) -> Usage {
        self.delay.usage()
    }

    /// Asks for room above the estimate, up to `want_bps` (what the allocator would send if it
    /// could). Returns a probe cluster to send now, if one is due.
    pub fn poll_probe(&mut self, now: Instant, want_bps: u64) -> Option<ProbeCluster> {
        self.last_feedback?;
        let cap = want_bps.min(self.config.max_bps);
        let now_us = self.us(now);
        let cluster = self
            .probe
            .poll(now, now_us, self.estimate_bps, cap, self.sent_bps)?;
        // The probe's queue drains within about its own length after it ends.
        let span = 2 * cluster.duration.as_micros() as i64 + 100_000;
        self.delay.quiet(now_us, span);
        Some(cluster)
    }

    pub fn has_remb(&self) -> bool {
        self.remb_bps.is_some()
    }

    /// When the receiver's feedback last arrived.
    pub fn last_feedback(&self) -> Option<Instant> {
        self.last_feedback
    }

    pub fn feedback_stale(&self, now: Instant) -> bool {
        self.last_feedback
            .is_some_and(|t| now.saturating_duration_since(t) > Duration::from_secs(2))
    }
}

#[cfg(test)]
mod tests;
