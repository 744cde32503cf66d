//! The delay-based half of the estimator: packet groups, the trendline of queueing-delay growth,
//! an overuse detector with an adaptive threshold, and AIMD rate control on the acknowledged rate
//! (draft-ietf-rmcat-gcc-02 §5, with the trendline filter of current implementations).

use super::Acked;

/// Packets sent within this span form one group (a video frame's burst, roughly).
const GROUP_US: i64 = 5_000;
/// Points in the trendline regression.
const WINDOW: usize = 20;
const SMOOTHING: f64 = 0.9;
const THRESHOLD_GAIN: f64 = 4.0;
const MAX_DELTAS: f64 = 60.0;
const K_UP: f64 = 0.0087;
const K_DOWN: f64 = 0.039;
/// Overuse must last this long (ms) before it is acted on.
const OVERUSE_MS: f64 = 10.0;
const BETA: f64 = 0.85;
/// Decreases come at most this often: each one needs fresh feedback to be judged.
const DECREASE_GAP_US: i64 = 200_000;
/// Acknowledged rate is measured over this window of arrival times.
const ACKED_WINDOW_US: i64 = 500_000;
/// A shorter window of the same, for decreases: what arrives while the queue builds is the
/// link's rate now (a longer window can still hold the lower rate from before a switch up). It
/// closes with at least `RECENT_PACKETS` packets, so a frame more or less does not swing it.
const RECENT_WINDOW_US: i64 = 150_000;
const RECENT_PACKETS: u32 = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    Normal,
    Overusing,
    Underusing,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Hold,
    Increase,
    Decrease,
}

#[derive(Debug, Clone, Copy)]
struct Group {
    first_send_us: i64,
    last_send_us: i64,
    last_arrival_us: i64,
}

pub struct DelayController {
    group: Option<Group>,
    prev: Option<Group>,
    first_arrival_us: Option<i64>,
    accumulated: f64,
    smoothed: f64,
    window: [(f64, f64); WINDOW],
    window_len: usize,
    window_next: usize,
    num_deltas: u32,
    trend: f64,
    prev_trend: f64,
    threshold: f64,
    last_threshold_ms: Option<f64>,
    over_ms: f64,
    over_count: u32,
    usage: Usage,
    rate_bps: f64,
    state: State,
    last_change_us: Option<i64>,
    last_decrease_us: Option<i64>,
    /// Average and variance of the acknowledged rate at decreases (the link's capacity, roughly),
    /// normalised by the average.
    avg_max_bps: Option<f64>,
    var_max: f64,
    acked_bytes: u64,
    acked_start_us: Option<i64>,
    acked_bps: Option<f64>,
    recent_bytes: u64,
    recent_packets: u32,
    recent_start_us: Option<i64>,
    recent_bps: Option<f64>,
    /// Packets sent in this span shared the path with a probe (and its queue).
    quiet_from_us: i64,
    quiet_until_us: i64,
}

impl DelayController {
    pub fn new(initial_bps: u64) -> Self {
        DelayController {
            group: None,
            prev: None,
            first_arrival_us: None,
            accumulated: 0.0,
            smoothed: 0.0,
            window: [(0.0, 0.0); WINDOW],
            window_len: 0,
            window_next: 0,
            num_deltas: 0,
            trend: 0.0,
            prev_trend: 0.0,
            threshold: 12.5,
            last_threshold_ms: None,
            over_ms: -1.0,
            over_count: 0,
            usage: Usage::Normal,
            rate_bps: initial_bps as f64,
            state: State::Increase,
            last_change_us: None,
            last_decrease_us: None,
            avg_max_bps: None,
            var_max: 0.4,
            acked_bytes: 0,
            acked_start_us: None,
            acked_bps: None,
            recent_bytes: 0,
            recent_packets: 0,
            recent_start_us: None,
            recent_bps: None,
            quiet_from_us: i64::MAX,
            quiet_until_us: i64::MIN,
        }
    }

    /// Leaves out of the trendline packets sent while a probe (and the queue it builds) is on
    /// the path: from `from_us` for `span_us`.
    pub fn quiet(&mut self, from_us: i64, span_us: i64) {
        self.quiet_from_us = from_us;
        self.quiet_until_us = from_us + span_us;
    }

    pub fn rate(&self) -> u64 {
        self.rate_bps as u64
    }

    pub fn usage(&self) -> Usage {
        self.usage
    }

    /// Sets the rate to at least `bps` (a probe showed the path carries it).
    pub fn raise_to(&mut self, bps: u64) {
        if bps as f64 > self.rate_bps {
            self.rate_bps = bps as f64;
            self.avg_max_bps = None;
        }
    }

    /// Takes the reported packets (in sequence order); returns the acknowledged rate if known.
    pub fn on_acked(&mut self, now_us: i64, acked: &[Acked]) -> Option<u64> {
        for a in acked {
            let Some(arrival) = a.arrival_us else {
                continue;
            };
            self.count_acked(arrival, a.size);
            // A probe outruns the estimate on purpose; the queue it builds is its own
            // measurement (see `probe`), not a sign of congestion.
            if a.probe.is_some() || (self.quiet_from_us..=self.quiet_until_us).contains(&a.send_us)
            {
                continue;
            }
            match &mut self.group {
                None => {
                    self.group = Some(Group {
                        first_send_us: a.send_us,
                        last_send_us: a.send_us,
                        last_arrival_us: arrival,
                    })
                }
                Some(g) if a.send_us - g.first_send_us <= GROUP_US => {
                    g.last_send_us = g.last_send_us.max(a.send_us);
                    g.last_arrival_us = g.last_arrival_us.max(arrival);
                }
                Some(g) => {
                    let done = *g;
                    if let Some(p) = self.prev {
                        let send_delta = (done.last_send_us - p.last_send_us) as f64 / 1000.0;
                        let arrival_delta =
                            (done.last_arrival_us - p.last_arrival_us) as f64 / 1000.0;
                        // Reordered groups say nothing about queueing.
                        if send_delta > 0.0 {
                            self.trendline(send_delta, arrival_delta, done.last_arrival_us);
                        }
                    }
                    self.prev = Some(done);
                    self.group = Some(Group {
                        first_send_us: a.send_us,
                        last_send_us: a.send_us,
                        last_arrival_us: arrival,
                    });
                }
            }
        }
        self.control(now_us);
        self.acked_bps.map(|b| b as u64)
    }

    fn count_acked(&mut self, arrival_us: i64, size: u32) {
        let start = *self.acked_start_us.get_or_insert(arrival_us);
        self.acked_bytes += u64::from(size);
        let span = arrival_us - start;
        if span >= ACKED_WINDOW_US {
            self.acked_bps = Some(self.acked_bytes as f64 * 8.0 * 1e6 / span as f64);
            self.acked_bytes = 0;
            self.acked_start_us = Some(arrival_us);
        }
        let start = *self.recent_start_us.get_or_insert(arrival_us);
        self.recent_bytes += u64::from(size);
        self.recent_packets += 1;
        let span = arrival_us - start;
        if span >= RECENT_WINDOW_US && self.recent_packets >= RECENT_PACKETS {
            self.recent_bps = Some(self.recent_bytes as f64 * 8.0 * 1e6 / span as f64);
            self.recent_bytes = 0;
            self.recent_packets = 0;
            self.recent_start_us = Some(arrival_us);
        }
    }

    fn trendline(&mut self, send_delta_ms: f64, arrival_delta_ms: f64, arrival_us: i64) {
        let delta = arrival_delta_ms - send_delta_ms;
        self.num_deltas = (self.num_deltas + 1).min(1000);
        self.accumulated += delta;
        self.smoothed = SMOOTHING * self.smoothed + (1.0 - SMOOTHING) * self.accumulated;
        let first = *self.first_arrival_us.get_or_insert(arrival_us);
        let x = (arrival_us - first) as f64 / 1000.0;
        self.window[self.window_next] = (x, self.smoothed);
        self.window_next = (self.window_next + 1) % WINDOW;
        self.window_len = (self.window_len + 1).min(WINDOW);
        if self.window_len == WINDOW {
            if let Some(slope) = slope(&self.window) {
                self.trend = slope;
            }
        }
        self.detect(send_delta_ms, x);
    }

    fn detect(&mut self, send_delta_ms: f64, now_ms: f64) {
        if self.num_deltas < 2 {
            return;
        }
        let modified = f64::from(self.num_deltas).min(MAX_DELTAS) * self.trend * THRESHOLD_GAIN;
        if modified > self.threshold {
            if self.over_ms < 0.0 {
                self.over_ms = send_delta_ms / 2.0;
            } else {
                self.over_ms += send_delta_ms;
            }
            self.over_count += 1;
            if self.over_ms > OVERUSE_MS && self.over_count > 1 && self.trend >= self.prev_trend {
                self.over_ms = 0.0;
                self.over_count = 0;
                self.usage = Usage::Overusing;
            }
        } else if modified < -self.threshold {
            self.over_ms = -1.0;
            self.over_count = 0;
            self.usage = Usage::Underusing;
        } else {
            self.over_ms = -1.0;
            self.over_count = 0;
            self.usage = Usage::Normal;
        }
        self.prev_trend = self.trend;
        self.adapt_threshold(modified, now_ms);
    }

    fn adapt_threshold(&mut self, modified: f64, now_ms: f64) {
        let last = *self.last_threshold_ms.get_or_insert(now_ms);
        // A spike far above the threshold (a route change, a burst) should not drag it up.
        if modified.abs() > self.threshold + 15.0 {
            self.last_threshold_ms = Some(now_ms);
            return;
        }
        let k = if modified.abs() < self.threshold {
            K_DOWN
        } else {
            K_UP
        };
        let dt = (now_ms - last).clamp(0.0, 100.0);
        self.threshold += k * (modified.abs() - self.threshold) * dt;
        self.threshold = self.threshold.clamp(6.0, 600.0);
        self.last_threshold_ms = Some(now_ms);
    }

    fn control(&mut self, now_us: i64) {
        self.state = match (self.usage, self.state) {
            (Usage::Overusing, _) => State::Decrease,
            (Usage::Underusing, _) => State::Hold,
            (Usage::Normal, State::Hold) | (Usage::Normal, State::Decrease) => State::Increase,
            (Usage::Normal, s) => s,
        };
        let last = self.last_change_us.unwrap_or(now_us);
        let dt = ((now_us - last) as f64 / 1e6).clamp(0.0, 1.0);
        match self.state {
            State::Hold => {}
            State::Increase => {
                let before = self.rate_bps;
                let near_max = self.avg_max_bps.is_some_and(|avg| {
                    let std = (self.var_max * avg).sqrt();
                    (self.rate_bps - avg).abs() <= 3.0 * std.max(avg * 0.05)
                });
                if near_max {
                    // Close to the last known capacity: about one packet per response time.
                    self.rate_bps += 1200.0 * 8.0 * dt / 0.3;
                } else {
                    self.rate_bps *= 1.08f64.powf(dt);
                    self.rate_bps += 1000.0 * dt;
                }
                if let Some(acked) = self.acked_bps {
                    // Grow only while not far above what the receiver has seen arrive (a rate
                    // set by a probe stays).
                    self.rate_bps = self.rate_bps.min((1.5 * acked + 10_000.0).max(before));
                }
            }
            State::Decrease => {
                let due = self
                    .last_decrease_us
                    .is_none_or(|t| now_us - t >= DECREASE_GAP_US);
                if due {
                    let base = match (self.acked_bps, self.recent_bps) {
                        (Some(a), Some(r)) => a.max(r),
                        (Some(a), None) => a,
                        (None, _) => self.rate_bps,
                    };
                    let target = BETA * base;
                    if target < self.rate_bps {
                        self.rate_bps = target;
                    }
                    self.note_max(base);
                    self.last_decrease_us = Some(now_us);
                }
                self.state = State::Hold;
            }
        }
        self.last_change_us = Some(now_us);
    }

    fn note_max(&mut self, acked: f64) {
        match self.avg_max_bps {
            None => self.avg_max_bps = Some(acked),
            Some(avg) => {
                let std = (self.var_max * avg).sqrt();
                if (acked - avg).abs() > 3.0 * std.max(avg * 0.05) {
                    // The capacity moved: start over.
                    self.avg_max_bps = Some(acked);
                    self.var_max = 0.4;
                } else {
                    let a = 0.05;
                    let avg = (1.0 - a) * avg + a * acked;
                    let norm = avg.max(1.0);
                    let err = avg - acked;
                    self.var_max =
                        ((1.0 - a) * self.var_max + a * err * err / norm).clamp(0.4, 2.5);
                    self.avg_max_bps = Some(avg);
                }
            }
        }
    }
}

/// Least-squares slope of the points.
fn slope(points: &[(f64, f64)]) -> Option<f64> {
    let n = points.len() as f64;
    let (sx, sy) = points
        .iter()
        .fold((0.0, 0.0), |(a, b), (x, y)| (a + x, b + y));
    let (mx, my) = (sx / n, sy / n);
    let (num, den) = points.iter().fold((0.0, 0.0), |(num, den), (x, y)| {
        (num + (x - mx) * (y - my), den + (x - mx) * (x - mx))
    });
    (den != 0.0).then(|| num / den)
}
