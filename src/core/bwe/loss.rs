//! The loss-based half of the estimator: below 2% loss the rate may grow, above 10% it is cut in
//! proportion to the loss, in between it holds (draft-ietf-rmcat-gcc-02 §6).

use super::Acked;

/// Loss is judged over at least this span of send time.
const WINDOW_US: i64 = 500_000;
const MIN_PACKETS: u32 = 20;

pub struct LossController {
    rate_bps: f64,
    lost: u32,
    total: u32,
    window_start_us: Option<i64>,
    last_update_us: Option<i64>,
    /// The last loss fraction measured.
    fraction: f64,
}

impl LossController {
    pub fn new(initial_bps: u64) -> Self {
        LossController {
            rate_bps: initial_bps as f64,
            lost: 0,
            total: 0,
            window_start_us: None,
            last_update_us: None,
            fraction: 0.0,
        }
    }

    pub fn fraction(&self) -> f64 {
        self.fraction
    }

    pub fn rate(&self) -> u64 {
        self.rate_bps as u64
    }

    pub fn raise_to(&mut self, bps: u64) {
        self.rate_bps = self.rate_bps.max(bps as f64);
    }

    pub fn on_acked(&mut self, now_us: i64, acked: &[Acked]) {
        // A probe outruns the estimate on purpose: its losses are its own measurement.
        for a in acked.iter().filter(|a| a.probe.is_none()) {
            self.total += 1;
            if a.arrival_us.is_none() {
                self.lost += 1;
            }
        }
        let start = *self.window_start_us.get_or_insert(now_us);
        if now_us - start >= WINDOW_US && self.total >= MIN_PACKETS {
            let fraction = f64::from(self.lost) / f64::from(self.total);
            self.lost = 0;
            self.total = 0;
            self.window_start_us = Some(now_us);
            self.on_fraction(now_us, fraction);
        }
    }

    /// Applies one measured loss fraction.
    pub fn on_fraction(&mut self, now_us: i64, fraction: f64) {
        self.fraction = fraction;
        let last = self.last_update_us.unwrap_or(now_us);
        let dt = ((now_us - last) as f64 / 1e6).clamp(0.0, 1.0);
        if fraction < 0.02 {
            self.rate_bps *= 1.08f64.powf(dt);
            self.rate_bps += 1000.0 * dt;
        } else if fraction > 0.10 {
            self.rate_bps *= 1.0 - 0.5 * fraction;
        }
        self.last_update_us = Some(now_us);
    }

    /// Keeps the loss-based rate from running far ahead of the delay-based one while loss is
    /// low, so that a later loss cut starts from a meaningful rate.
    pub fn cap(&mut self, bps: u64) {
        self.rate_bps = self.rate_bps.min(bps as f64);
    }
}
