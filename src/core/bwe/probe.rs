//! Probing: a short cluster of packets sent faster than the estimate. If the receiver gets them
//! as fast as they were sent, the path has room at least that large, and the estimate jumps
//! there instead of creeping up by 8% a second. A probe that showed most of its rate and raised
//! the estimate is followed at once by one at twice the new estimate; one that did neither ends
//! the chase.

use std::time::{Duration, Instant};

use super::{Acked, Usage};

/// How long a cluster lasts at its rate.
const CLUSTER: Duration = Duration::from_millis(30);
/// The least padding a cluster carries: more than a token-bucket shaper's burst allowance (a few
/// kB on a mobile or shaped link), so the probe measures the rate and not the bucket; at very low
/// rates no more than `MAX_LOW_RATE_CLUSTER` of it, so a probe does not hold the link for long.
const MIN_BYTES: f64 = 8000.0;
const MAX_LOW_RATE_CLUSTER: Duration = Duration::from_millis(250);
const MIN_PACKETS: u32 = 5;
/// Between probes while the allocator wants more than the estimate; doubled after each probe
/// that found the path full, up to `MAX_INTERVAL`: a link that opens is found within about that
/// long (a viewer held low sends too little for the estimate to grow on its own).
const INTERVAL: Duration = Duration::from_secs(2);
const MAX_INTERVAL: Duration = Duration::from_secs(5);
/// A cluster whose feedback has not come by then is given up.
const TIMEOUT: Duration = Duration::from_secs(1);
/// Size of one probe packet on the wire (header and RTP padding; padding is at most 255 bytes).
pub const PROBE_PACKET_BYTES: usize = 300;
const MAX_PACKETS: u32 = 64;
/// A probe most of whose packets were lost found the path full, whatever the rest showed.
const MIN_RECEIVED: f64 = 0.8;
/// The chase goes on after a probe that came back at this share of its rate at least (arrival
/// times from a busy receiver spread a 30 ms cluster by some milliseconds) and raised the
/// estimate by `MIN_GAIN` at least (one capped at what the viewer wants, on a path a little
/// narrower than that, would otherwise go on for ever).
const CHASE_SHARE: f64 = 0.7;
const MIN_GAIN: f64 = 1.1;

/// A probe to send now: `packets` packets of about [`PROBE_PACKET_BYTES`] spread evenly over
/// `duration` (paced: a burst would measure the bottleneck's buffer, not its rate), every
/// packet marked with `id`. Media keeps flowing meanwhile: the padding makes up the difference
/// between what is sent anyway and `bps`, and the result counts every packet sent in the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeCluster {
    pub id: u32,
    pub bps: u64,
    pub packets: u32,
    pub duration: Duration,
}

struct Pending {
    cluster: ProbeCluster,
    sent_at: Instant,
    /// The estimate when it was sent.
    from_bps: u64,
    /// The send window: packets sent in it, media or padding, make up the probe.
    start_us: i64,
    end_us: i64,
    /// Packets the feedback told about, received or lost.
    reported: u32,
    received: u32,
    total: u64,
    first_send: i64,
    last_send: i64,
    last_send_size: u64,
    first_arrival: i64,
    first_arrival_size: u64,
    last_arrival: i64,
}

pub struct ProbeController {
    next_id: u32,
    pending: Option<Pending>,
    next_at: Option<Instant>,
    /// The last probe succeeded: the next may follow as soon as its feedback is in.
    chase: bool,
    interval: Duration,
}

impl ProbeController {
    pub fn new() -> Self {
        ProbeController {
            next_id: 1,
            pending: None,
            next_at: None,
            chase: true,
            interval: INTERVAL,
        }
    }

    /// `sent_bps` is what goes out anyway (media), `now_us` the estimator's clock.
    pub fn poll(
        &mut self,
        now: Instant,
        now_us: i64,
        estimate: u64,
        want: u64,
        sent_bps: u64,
    ) -> Option<ProbeCluster> {
        if let Some(p) = &self.pending {
            if now.saturating_duration_since(p.sent_at) < TIMEOUT {
                return None;
            }
            self.pending = None;
            self.chase = false;
            self.next_at = Some(now + self.interval);
        }
        if want <= estimate + estimate / 10 {
            return None;
        }
        if !self.chase && self.next_at.is_some_and(|t| now < t) {
            return None;
        }
        let bps = (2 * estimate).min(want);
        let pad_bps = bps.saturating_sub(sent_bps).max(bps / 4);
        let at_rate = |d: Duration| pad_bps as f64 * d.as_secs_f64() / 8.0;
        let bytes = at_rate(CLUSTER).max(MIN_BYTES.min(at_rate(MAX_LOW_RATE_CLUSTER)));
        let packets = ((bytes / PROBE_PACKET_BYTES as f64) as u32).clamp(MIN_PACKETS, MAX_PACKETS);
        // At a low rate the cluster lasts as long as its bytes need.
        let duration = Duration::from_secs_f64(
            (packets as f64 * PROBE_PACKET_BYTES as f64 * 8.0 / pad_bps.max(1) as f64)
                .clamp(CLUSTER.as_secs_f64(), 0.5),
        );
        let cluster = ProbeCluster {
            id: self.next_id,
            bps,
            packets,
            duration,
        };
        self.next_id = self.next_id.wrapping_add(1).max(1);
        self.pending = Some(Pending {
            cluster,
            sent_at: now,
            from_bps: estimate,
            start_us: now_us,
            end_us: now_us + duration.as_micros() as i64,
            reported: 0,
            received: 0,
            total: 0,
            first_send: i64::MAX,
            last_send: i64::MIN,
            last_send_size: 0,
            first_arrival: i64::MAX,
            first_arrival_size: 0,
            last_arrival: i64::MIN,
        });
        self.chase = false;
        self.next_at = Some(now + self.interval);
        Some(cluster)
    }

    /// Feedback for packets; returns the rate a finished probe showed the path carries.
    pub fn on_acked(&mut self, acked: &[Acked]) -> Option<u64> {
        let p = self.pending.as_mut()?;
        for a in acked {
            let probe = a.probe == Some(p.cluster.id);
            if probe {
                p.reported += 1;
            } else if a.send_us < p.start_us || a.send_us > p.end_us {
                continue;
            }
            let Some(arrival) = a.arrival_us else {
                continue;
            };
            p.received += u32::from(probe);
            let size = u64::from(a.size);
            p.total += size;
            p.first_send = p.first_send.min(a.send_us);
            if a.send_us >= p.last_send {
                p.last_send = a.send_us;
                p.last_send_size = size;
            }
            if arrival < p.first_arrival {
                p.first_arrival = arrival;
                p.first_arrival_size = size;
            }
            p.last_arrival = p.last_arrival.max(arrival);
        }
        // Judged once the feedback told about every packet of the cluster.
        if p.reported < p.cluster.packets {
            return None;
        }
        let p = self.pending.take()?;
        if (p.received as f64) < MIN_RECEIVED * p.cluster.packets as f64 || p.received < 2 {
            // Lost on the way: the path is full at this rate.
            self.chase = false;
            self.interval = (self.interval * 2).min(MAX_INTERVAL);
            return None;
        }
        // Each span opens with one packet: the last sent and the first received do not count.
        let send_span = (p.last_send - p.first_send).max(1) as f64;
        let recv_span = (p.last_arrival - p.first_arrival).max(1) as f64;
        let send_bps = (p.total - p.last_send_size) as f64 * 8.0 * 1e6 / send_span;
        let recv_bps = (p.total - p.first_arrival_size) as f64 * 8.0 * 1e6 / recv_span;
        let carried = if recv_bps < 0.9 * send_bps {
            // Arrivals spread out: the path is narrower than the probe; a little under what got
            // through is what it carries.
            0.95 * recv_bps
        } else {
            send_bps.min(recv_bps)
        };
        // Chase upwards only while probes come back about as fast as they left and find more;
        // once one finds the path full, look again less and less often.
        self.chase = carried >= CHASE_SHARE * p.cluster.bps as f64
            && carried >= MIN_GAIN * p.from_bps as f64;
        self.interval = if self.chase {
            INTERVAL
        } else {
            (self.interval * 2).min(MAX_INTERVAL)
        };
        // A probe shows room up to the rate it tried, no further.
        Some((carried as u64).min(p.cluster.bps))
    }

    pub fn on_estimate(&mut self, now: Instant, _estimate: u64, usage: Usage) {
        if usage == Usage::Overusing {
            // The capacity may have moved: probe again soon once the queue is gone.
            self.chase = false;
            self.interval = INTERVAL;
            self.next_at = Some(now + INTERVAL);
        }
    }
}
