//! Link impairment for tests and load runs: loss, delay, jitter and a bandwidth cap that change
//! over time on a script (for example RFC 8867 §5.1). `Link` is sans-IO (packets and `now` in,
//! packets out at their release time); `volna-impair` runs two of them as a UDP proxy, because
//! this kernel has no netem.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};

/// A link's condition from some moment on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Condition {
    /// Fraction of packets dropped at random (0.0..=1.0).
    pub loss: f64,
    /// One-way delay added to every packet.
    pub delay: Duration,
    /// Extra delay, uniform in 0..=jitter. Order is kept (no packet overtakes another).
    pub jitter: Duration,
    /// Bottleneck rate; `None` is unlimited.
    pub rate_bps: Option<u64>,
}

impl Default for Condition {
    fn default() -> Self {
        Self {
            loss: 0.0,
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            rate_bps: None,
        }
    }
}

/// Conditions over time: each step applies from its offset until the next.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    steps: Vec<(Duration, Condition)>,
}

impl Schedule {
    pub fn constant(c: Condition) -> Self {
        Self {
            steps: vec![(Duration::ZERO, c)],
        }
    }

    /// Steps at increasing offsets; the first applies from 0 whatever its offset.
    pub fn steps(mut steps: Vec<(Duration, Condition)>) -> Self {
        steps.sort_by_key(|(at, _)| *at);
        if steps.is_empty() {
            steps.push((Duration::ZERO, Condition::default()));
        }
        Self { steps }
    }

    /// RFC 8867 §5.1 (variable available capacity, one flow): 1 Mbps, 2.5 Mbps at 40 s,
    /// 0.6 Mbps at 60 s, 1 Mbps at 80 s; 50 ms one-way delay throughout.
    pub fn rfc8867_5_1() -> Self {
        let c = |kbps: u64| Condition {
            rate_bps: Some(kbps * 1000),
            delay: Duration::from_millis(50),
            ..Condition::default()
        };
        Self::steps(vec![
            (Duration::ZERO, c(1000)),
            (Duration::from_secs(40), c(2500)),
            (Duration::from_secs(60), c(600)),
            (Duration::from_secs(80), c(1000)),
        ])
    }

    pub fn at(&self, elapsed: Duration) -> Condition {
        self.steps
            .iter()
            .rev()
            .find(|(at, _)| *at <= elapsed)
            .map_or(self.steps[0].1, |(_, c)| *c)
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkStats {
    pub packets_in: u64,
    pub packets_out: u64,
    pub dropped_loss: u64,
    pub dropped_queue: u64,
    pub bytes_out: u64,
}

/// One direction of an impaired link.
pub struct Link {
    schedule: Schedule,
    start: Instant,
    rng: rand::rngs::StdRng,
    /// Packets waiting, with their release time (non-decreasing).
    queue: VecDeque<(Instant, Vec<u8>)>,
    /// When the bottleneck finishes sending what it has.
    busy_until: Instant,
    last_release: Instant,
    /// A packet that would wait longer than this at the bottleneck is dropped (tail drop).
    max_queue_delay: Duration,
    stats: LinkStats,
}

impl Link {
    pub fn new(schedule: Schedule, start: Instant, seed: u64) -> Self {
        Self {
            schedule,
            start,
            rng: rand::rngs::StdRng::seed_from_u64(seed),
            queue: VecDeque::new(),
            busy_until: start,
            last_release: start,
            max_queue_delay: Duration::from_millis(300),
            stats: LinkStats::default(),
        }
    }

    pub fn stats(&self) -> LinkStats {
        self.stats
    }

    /// The condition in force at `now`.
    pub fn condition(&self, now: Instant) -> Condition {
        self.schedule.at(now.saturating_duration_since(self.start))
    }

    pub fn handle_packet(&mut self, now: Instant, packet: Vec<u8>) {
        self.stats.packets_in += 1;
        let c = self.condition(now);
        if c.loss > 0.0 && self.rng.gen_bool(c.loss.min(1.0)) {
            self.stats.dropped_loss += 1;
            return;
        }
        let mut departs = now;
        if let Some(rate) = c.rate_bps.filter(|r| *r > 0) {
            let start = self.busy_until.max(now);
            if start.duration_since(now) > self.max_queue_delay {
                self.stats.dropped_queue += 1;
                return;
            }
            let serialize = Duration::from_secs_f64(packet.len() as f64 * 8.0 / rate as f64);
            departs = start + serialize;
            self.busy_until = departs;
        }
        let jitter = if c.jitter.is_zero() {
            Duration::ZERO
        } else {
            c.jitter.mul_f64(self.rng.gen::<f64>())
        };
        let release = (departs + c.delay + jitter).max(self.last_release);
        self.last_release = release;
        self.queue.push_back((release, packet));
    }

    /// The next packet due by `now`.
    pub fn poll_release(&mut self, now: Instant) -> Option<Vec<u8>> {
        if self.queue.front().is_some_and(|(at, _)| *at <= now) {
            let (_, p) = self.queue.pop_front()?;
            self.stats.packets_out += 1;
            self.stats.bytes_out += p.len() as u64;
            return Some(p);
        }
        None
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.queue.front().map(|(at, _)| *at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(link: &mut Link, until: Instant) -> Vec<Instant> {
        let mut out = Vec::new();
        while let Some(t) = link.poll_timeout().filter(|t| *t <= until) {
            link.poll_release(t).unwrap();
            out.push(t);
        }
        out
    }

    #[test]
    fn delay_and_order() {
        let t0 = Instant::now();
        let c = Condition {
            delay: Duration::from_millis(50),
            jitter: Duration::from_millis(30),
            ..Condition::default()
        };
        let mut link = Link::new(Schedule::constant(c), t0, 1);
        for i in 0..100u64 {
            link.handle_packet(t0 + Duration::from_millis(i * 5), vec![0; 100]);
        }
        let out = drain(&mut link, t0 + Duration::from_secs(10));
        assert_eq!(out.len(), 100);
        assert!(out.windows(2).all(|w| w[0] <= w[1]), "order kept");
        assert!(
            out[0] >= t0 + Duration::from_millis(50) && out[0] <= t0 + Duration::from_millis(80)
        );
    }

    #[test]
    fn loss_rate() {
        let t0 = Instant::now();
        let mut link = Link::new(
            Schedule::constant(Condition {
                loss: 0.05,
                ..Condition::default()
            }),
            t0,
            7,
        );
        for _ in 0..20_000 {
            link.handle_packet(t0, vec![0; 10]);
        }
        let lost = link.stats().dropped_loss as f64 / 20_000.0;
        assert!((0.04..0.06).contains(&lost), "{lost}");
    }

    #[test]
    fn rate_cap_paces_and_tail_drops() {
        let t0 = Instant::now();
        // 1 Mbps: a 1250-byte packet takes 10 ms.
        let c = Condition {
            rate_bps: Some(1_000_000),
            ..Condition::default()
        };
        let mut link = Link::new(Schedule::constant(c), t0, 1);
        for _ in 0..20 {
            link.handle_packet(t0, vec![0; 1250]);
        }
        let out = drain(&mut link, t0 + Duration::from_secs(1));
        assert_eq!(out.len(), 20);
        assert_eq!(out[19].duration_since(t0), Duration::from_millis(200));
        // A burst far over the cap: what would wait more than 300 ms is dropped.
        for _ in 0..100 {
            link.handle_packet(t0 + Duration::from_secs(2), vec![0; 1250]);
        }
        assert_eq!(link.stats().dropped_queue, 100 - 31, "{:?}", link.stats());
    }

    #[test]
    fn schedule_steps() {
        let s = Schedule::rfc8867_5_1();
        let kbps = |sec: u64| s.at(Duration::from_secs(sec)).rate_bps.unwrap() / 1000;
        assert_eq!(
            [
                kbps(0),
                kbps(39),
                kbps(40),
                kbps(59),
                kbps(60),
                kbps(80),
                kbps(500)
            ],
            [1000, 1000, 2500, 2500, 600, 1000, 1000]
        );
        assert_eq!(
            s.at(Duration::from_secs(70)).delay,
            Duration::from_millis(50)
        );
    }
}
