//! The estimator against a simulated bottleneck on virtual time: a sender that sends what the
//! estimate allows (and the probes it asks for), a FIFO link with a capacity schedule, a tail-drop
//! queue and propagation delay, and a receiver that reports every 50 ms.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::*;

const PACKET: usize = 1200;

struct Sim {
    bwe: BandwidthEstimator,
    t0: Instant,
    now_us: i64,
    seq: u16,
    /// Capacity in bps as a function of time in seconds.
    capacity: Box<dyn Fn(f64) -> u64>,
    one_way_us: i64,
    max_queue_us: i64,
    /// Random loss on the link, per mille, from a fixed generator.
    loss_permille: u32,
    rng: u64,
    link_free_us: i64,
    in_flight: VecDeque<(i64, u16, usize)>,
    /// Receiver: what arrived since the last report, by sequence number.
    arrived: Vec<PacketResult>,
    next_report_seq: Option<u16>,
    feedback: VecDeque<(i64, Vec<PacketResult>)>,
    budget: f64,
    probe: VecDeque<(i64, u32)>,
    want_bps: u64,
    /// Media sent as layers (bps, lowest first) instead of all the estimate allows: the highest
    /// layer whose rate with the room's up margin fits, staying on one while it fits at all.
    layers: &'static [u64],
    on_layer: usize,
    /// A receiver too busy to stamp arrivals at once: each is stamped up to this late (in order).
    jitter_us: i64,
    last_stamp_us: i64,
    /// Probe clusters asked for.
    probes: u32,
    /// (second, estimate, delivered bps, capacity) per second.
    trace: Vec<(f64, u64, u64, u64)>,
    delivered_bytes: u64,
}

impl Sim {
    fn new(capacity: impl Fn(f64) -> u64 + 'static, one_way_ms: i64) -> Self {
        Sim {
            bwe: BandwidthEstimator::new(BweConfig::default()),
            t0: Instant::now(),
            now_us: 0,
            seq: 0,
            capacity: Box::new(capacity),
            one_way_us: one_way_ms * 1000,
            max_queue_us: 300_000,
            loss_permille: 0,
            rng: 0x9e37_79b9_7f4a_7c15,
            link_free_us: 0,
            in_flight: VecDeque::new(),
            arrived: Vec::new(),
            next_report_seq: None,
            feedback: VecDeque::new(),
            budget: 0.0,
            probe: VecDeque::new(),
            want_bps: 5_000_000,
            layers: &[],
            on_layer: 0,
            jitter_us: 0,
            last_stamp_us: 0,
            probes: 0,
            trace: Vec::new(),
            delivered_bytes: 0,
        }
    }

    fn now(&self) -> Instant {
        self.t0 + Duration::from_micros(self.now_us as u64)
    }

    fn random(&mut self) -> u32 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng % 1000) as u32
    }

    fn send(&mut self, size: usize, probe: Option<u32>) {
        self.seq = self.seq.wrapping_add(1);
        let now = self.now();
        self.bwe.on_sent(now, self.seq, size, probe);
        let queued = self.link_free_us - self.now_us;
        if queued > self.max_queue_us || self.random() < self.loss_permille {
            return;
        }
        let c = (self.capacity)(self.now_us as f64 / 1e6).max(1);
        let tx_us = (size as u64 * 8 * 1_000_000 / c) as i64;
        self.link_free_us = self.link_free_us.max(self.now_us) + tx_us;
        self.in_flight
            .push_back((self.link_free_us + self.one_way_us, self.seq, size));
    }

    fn step(&mut self) {
        let now = self.now();
        while self
            .feedback
            .front()
            .is_some_and(|(t, _)| *t <= self.now_us)
        {
            let (_, results) = self.feedback.pop_front().unwrap();
            self.bwe.on_feedback(now, &results);
        }
        // Media: what the estimate allows, paced per millisecond.
        let estimate = self.bwe.estimate_bps();
        let rate = if self.layers.is_empty() {
            estimate.min(self.want_bps)
        } else {
            let fits = |k: usize, on: usize| {
                let bps = self.layers[k] as f64;
                (if k <= on { bps } else { bps * 1.35 }) <= estimate as f64
            };
            let on = self.on_layer;
            self.on_layer = (0..self.layers.len())
                .rev()
                .find(|&k| fits(k, on))
                .unwrap_or(0);
            self.layers[self.on_layer]
        };
        self.budget = (self.budget + rate as f64 / 8.0 / 1000.0).min(3.0 * PACKET as f64);
        while self.budget >= PACKET as f64 {
            self.budget -= PACKET as f64;
            self.send(PACKET, None);
        }
        if let Some(c) = self.bwe.poll_probe(now, self.want_bps) {
            self.probes += 1;
            let n = i64::from(c.packets);
            let gap = c.duration.as_micros() as i64 / n;
            for k in 0..n {
                self.probe.push_back((self.now_us + k * gap, c.id));
            }
        }
        while self.probe.front().is_some_and(|(t, _)| *t <= self.now_us) {
            let (_, id) = self.probe.pop_front().unwrap();
            self.send(super::PROBE_PACKET_BYTES, Some(id));
        }
        // Receiver.
        while self
            .in_flight
            .front()
            .is_some_and(|(t, _, _)| *t <= self.now_us)
        {
            let (t, seq, size) = self.in_flight.pop_front().unwrap();
            self.delivered_bytes += size as u64;
            let late = i64::from(self.random()) * self.jitter_us / 1000;
            let t = (t + late).max(self.last_stamp_us);
            self.last_stamp_us = t;
            self.arrived.push(PacketResult {
                seq,
                arrival_us: Some(t),
            });
        }
        if self.now_us % 50_000 == 0 && !self.arrived.is_empty() {
            let last = self.arrived.last().unwrap().seq;
            let first = self.next_report_seq.unwrap_or(self.arrived[0].seq);
            let mut results = Vec::new();
            let mut s = first;
            loop {
                let arrival = self
                    .arrived
                    .iter()
                    .find(|r| r.seq == s)
                    .and_then(|r| r.arrival_us);
                results.push(PacketResult {
                    seq: s,
                    arrival_us: arrival,
                });
                if s == last {
                    break;
                }
                s = s.wrapping_add(1);
            }
            self.next_report_seq = Some(last.wrapping_add(1));
            self.arrived.clear();
            self.feedback
                .push_back((self.now_us + self.one_way_us, results));
        }
        if self.now_us % 1_000_000 == 0 {
            let sec = self.now_us as f64 / 1e6;
            self.trace.push((
                sec,
                self.bwe.estimate_bps(),
                self.delivered_bytes * 8,
                (self.capacity)(sec),
            ));
            self.delivered_bytes = 0;
        }
        self.now_us += 1000;
    }

    fn run_until(&mut self, seconds: f64) {
        while (self.now_us as f64) < seconds * 1e6 {
            self.step();
        }
    }

    fn estimate_at(&self, second: f64) -> u64 {
        self.trace
            .iter()
            .find(|(s, ..)| (*s - second).abs() < 0.5)
            .map(|t| t.1)
            .expect("traced second")
    }
}

#[test]
fn uses_most_of_a_steady_capacity() {
    let mut sim = Sim::new(|_| 2_500_000, 25);
    sim.run_until(40.0);
    let tail: Vec<_> = sim.trace.iter().filter(|t| t.0 >= 15.0).collect();
    let delivered = tail.iter().map(|t| t.2).sum::<u64>() / tail.len() as u64;
    let estimate = tail.iter().map(|t| t.1).sum::<u64>() / tail.len() as u64;
    assert!(
        delivered >= 2_000_000,
        "delivered {delivered} bps of 2.5 Mbps: {:?}",
        sim.trace
    );
    assert!(
        (2_000_000..=3_200_000).contains(&estimate),
        "estimate {estimate}: {:?}",
        sim.trace
    );
}

#[test]
fn follows_a_drop_within_a_second_and_a_rise_within_five() {
    let mut sim = Sim::new(
        |t| match t {
            t if t < 20.0 => 2_500_000,
            t if t < 40.0 => 600_000,
            _ => 2_500_000,
        },
        25,
    );
    sim.run_until(50.0);
    for t in &sim.trace {
        println!(
            "{:>4} s  capacity {:>8}  estimate {:>8}  delivered {:>8}",
            t.0, t.3, t.1, t.2
        );
    }
    assert!(sim.estimate_at(19.0) >= 1_800_000, "{:?}", sim.trace);
    let after_drop = sim.estimate_at(21.0);
    assert!(
        after_drop <= 660_000,
        "1 s after the drop to 0.6 Mbps the estimate is {after_drop}: {:?}",
        sim.trace
    );
    let settled: u64 = (25..40).map(|s| sim.estimate_at(s as f64)).sum::<u64>() / 15;
    assert!(
        (400_000..=720_000).contains(&settled),
        "estimate over 0.6 Mbps: {settled}: {:?}",
        sim.trace
    );
    let after_rise = sim.estimate_at(45.0);
    assert!(
        after_rise >= 2_000_000,
        "5 s after the rise to 2.5 Mbps the estimate is {after_rise}: {:?}",
        sim.trace
    );
}

/// A viewer held to a low layer by a narrow link, once the link opens (at any moment: probes
/// that found it full came more and more rarely): its media stays at what the low layer sends
/// (the estimate cannot grow far above what arrives), so only probes find the room, measured by
/// a receiver that stamps arrivals a few milliseconds late. Within 7 s the estimate carries the
/// top layer with the margin a move up needs; and on a link narrower than what the viewer wants,
/// probing stops chasing.
#[test]
fn probes_find_an_opened_link_for_a_sender_held_low() {
    // (capacity once open, estimate wanted 7 s after, at most probes in the 20 s after)
    let cases = [(20_000_000, 1_450_000, 10), (900_000, 600_000, 10)];
    for (open_bps, wanted, most) in cases {
        for open_ms in (20_000..26_000).step_by(500) {
            let open = open_ms as f64 / 1000.0;
            let capacity = move |t: f64| if t < open { 300_000 } else { open_bps };
            let mut sim = Sim::new(capacity, 20);
            sim.layers = &[120_000, 450_000, 1_050_000];
            // What the room's probes aim at for a viewer that wants the top layer.
            sim.want_bps = 2_100_000;
            sim.jitter_us = 6_000;
            sim.run_until(open);
            let before = sim.probes;
            sim.run_until(open + 20.0);
            let case = format!("open at {open} s to {open_bps}");
            let e = sim.estimate_at((open + 7.0).ceil());
            assert!(
                e >= wanted,
                "{case}: 7 s later the estimate is {e}: {:?}",
                sim.trace
            );
            let last = sim.estimate_at((open + 19.0).floor());
            assert!(
                last <= open_bps * 11 / 10,
                "{case}: {last} over the capacity"
            );
            let probes = sim.probes - before;
            assert!(probes <= most, "{case}: {probes} probes in 20 s");
        }
    }
}

#[test]
fn random_loss_below_ten_percent_does_not_collapse_it() {
    let mut sim = Sim::new(|_| 2_000_000, 25);
    sim.loss_permille = 50;
    sim.run_until(30.0);
    let e = sim.estimate_at(29.0);
    assert!(
        e >= 1_000_000,
        "5% random loss: estimate {e}: {:?}",
        sim.trace
    );
}

#[test]
fn heavy_loss_cuts_it() {
    let mut sim = Sim::new(|_| 20_000_000, 25);
    sim.want_bps = 3_000_000;
    sim.run_until(15.0);
    let before = sim.estimate_at(14.0);
    sim.loss_permille = 300;
    sim.run_until(20.0);
    let after = sim.estimate_at(19.0);
    assert!(
        after < before / 2,
        "30% loss: {before} -> {after}: {:?}",
        sim.trace
    );
}

#[test]
fn remb_alone_sets_the_estimate() {
    let mut bwe = BandwidthEstimator::new(BweConfig::default());
    let t0 = Instant::now();
    bwe.on_remb(t0, 800_000);
    assert_eq!(bwe.estimate_bps(), 800_000);
    bwe.on_remb(t0 + Duration::from_secs(1), 200_000);
    assert_eq!(bwe.estimate_bps(), 200_000);
    bwe.on_remb(t0 + Duration::from_secs(2), 2_000_000);
    assert_eq!(bwe.estimate_bps(), 2_000_000);
    // Heavy loss in receiver reports cuts below what REMB says.
    bwe.on_receiver_report(t0 + Duration::from_secs(3), 77); // 30%
    assert!(bwe.estimate_bps() < 2_000_000, "{}", bwe.estimate_bps());
}

/// Arrival times from a receiver whose reference time wraps between two messages (24 bits of
/// 64 ms) are unwrapped: the estimate goes on as if nothing happened.
#[test]
fn reference_time_wrap_is_unwrapped() {
    let mut bwe = BandwidthEstimator::new(BweConfig::default());
    let t0 = Instant::now();
    let span = REFERENCE_SPAN_US;
    // Receiver clock just below the wrap, then past it (a raw value near -span/2 again).
    let base = span / 2 - 500_000;
    let mut seq = 0u16;
    let mut send = |bwe: &mut BandwidthEstimator, ms: u64| -> u16 {
        seq = seq.wrapping_add(1);
        bwe.on_sent(t0 + Duration::from_millis(ms), seq, 1200, None);
        seq
    };
    for round in 0..20u64 {
        let mut results = Vec::new();
        // A message's arrivals are its reference time plus deltas: the wrap is per message.
        let wrapped = base + (round as i64) * 100_000 + 20_000 >= span / 2;
        for k in 0..10u64 {
            let ms = round * 100 + k * 10;
            let s = send(&mut bwe, ms);
            let arrival = base + (ms as i64) * 1000 + 20_000 - if wrapped { span } else { 0 };
            results.push(PacketResult {
                seq: s,
                arrival_us: Some(arrival),
            });
        }
        bwe.on_feedback(t0 + Duration::from_millis(round * 100 + 100), &results);
        assert_eq!(bwe.usage(), Usage::Normal, "round {round}");
    }
    assert!(bwe.estimate_bps() >= 300_000, "{}", bwe.estimate_bps());
}
