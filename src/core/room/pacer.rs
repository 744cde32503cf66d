//! Per-viewer pacing of forwarded video: packets leave at a rate a little above the viewer's
//! estimate instead of in the bursts they arrived in (a key frame is dozens of packets at once),
//! so a narrow link's queue is not overrun by the very bursts the estimate is measured with.
//! Resends of lost video wait here too, ahead of the video not yet sent (a repair is worth
//! more than what follows it) and behind earlier resends, so a NACK naming many packets cannot
//! put them on the link at once. Audio and probes are not queued here.
//!
//! A queued packet keeps its rewritten header (copied: it is small) and shares the publisher's
//! payload; its transport-wide sequence number is written when it leaves, so the numbers follow
//! the order packets go out in, and the send times the estimator reads are the real ones.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;

/// Packets a viewer's queue holds; beyond that the oldest leaves at once.
const QUEUE: usize = 128;
/// Header and payload prefix bytes a queued packet may have (longer ones are not queued).
/// (AV1 key frames' dependency descriptors carry their structure: headers reach 100 bytes and
/// more.)
pub(super) const HEADER_MAX: usize = 160;
/// (A resend on the RTX stream carries its original sequence number ahead of the descriptor.)
pub(super) const PREFIX_MAX: usize = 18;
/// What may leave back to back after an idle spell: one packet, or 5 ms at the pacing rate.
const BURST: Duration = Duration::from_millis(5);
const MIN_BURST_BYTES: f64 = 1200.0;
/// No packet waits longer than this, whatever the rate (a stale estimate must not hold video).
pub(super) const MAX_QUEUE_DELAY: Duration = Duration::from_millis(250);

/// What a queued packet is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Waiting {
    /// Video sent for the first time: it takes the next transport-wide number.
    Media,
    /// A resend: under the transport-wide number its original had, where it must be the same
    /// bytes (`Some`), else the next.
    Resend(Option<u16>),
}

/// One packet waiting to leave.
#[derive(Clone)]
pub(super) struct Queued {
    pub waiting: Waiting,
    /// The viewer track it is for.
    pub track: usize,
    pub header: [u8; HEADER_MAX],
    pub header_len: usize,
    /// Where the transport-wide sequence number goes in `header`, when negotiated.
    pub transport_seq_at: Option<usize>,
    pub prefix: [u8; PREFIX_MAX],
    pub prefix_len: usize,
    /// The publisher's packet, shared, and where its payload (after the prefix) lies.
    pub packet: Bytes,
    pub payload: (usize, usize),
    pub queued_at: Instant,
}

impl Queued {
    pub fn len(&self) -> usize {
        self.header_len + self.prefix_len + self.payload.1 - self.payload.0
    }
}

pub(super) struct Pacer {
    queue: VecDeque<Queued>,
    queued_bytes: usize,
    /// Resends at the front of the queue.
    resends: usize,
    /// Bytes sent beyond what the rate has allowed so far (drains at the rate).
    debt: f64,
    last: Option<Instant>,
}

impl Pacer {
    pub fn new() -> Self {
        Pacer {
            queue: VecDeque::with_capacity(QUEUE),
            queued_bytes: 0,
            resends: 0,
            debt: 0.0,
            last: None,
        }
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Queues a packet. When the queue is full the oldest packet is returned, to be sent now.
    pub fn push(&mut self, q: Queued) -> Option<Queued> {
        let out = if self.queue.len() == QUEUE {
            self.take_front()
        } else {
            None
        };
        self.queued_bytes += q.len();
        self.queue.push_back(q);
        out
    }

    /// Queues a resend, behind the resends already waiting and ahead of the rest. When the
    /// queue is full the oldest packet is returned, to be sent now.
    pub fn push_resend(&mut self, q: Queued) -> Option<Queued> {
        let out = if self.queue.len() == QUEUE {
            self.take_front()
        } else {
            None
        };
        self.queued_bytes += q.len();
        self.queue.insert(self.resends, q);
        self.resends += 1;
        out
    }

    /// The rate packets leave at: `rate_bps`, or what drains the queue in `MAX_QUEUE_DELAY`.
    fn rate(&self, rate_bps: u64) -> f64 {
        let drain = self.queued_bytes as f64 * 8.0 / MAX_QUEUE_DELAY.as_secs_f64();
        (rate_bps as f64).max(drain).max(1.0)
    }

    fn settle(&mut self, now: Instant, rate: f64) {
        if let Some(last) = self.last {
            let t = now.saturating_duration_since(last).as_secs_f64();
            self.debt = (self.debt - rate * t / 8.0).max(0.0);
        }
        self.last = Some(now);
    }

    fn burst(rate: f64) -> f64 {
        (rate * BURST.as_secs_f64() / 8.0).max(MIN_BURST_BYTES)
    }

    /// The next packet allowed to leave at `now`, at `rate_bps`.
    pub fn pop(&mut self, now: Instant, rate_bps: u64) -> Option<Queued> {
        let late = now.saturating_duration_since(self.queue.front()?.queued_at) >= MAX_QUEUE_DELAY;
        let rate = self.rate(rate_bps);
        self.settle(now, rate);
        if self.debt >= Self::burst(rate) && !late {
            return None;
        }
        let q = self.take_front()?;
        self.debt += q.len() as f64;
        Some(q)
    }

    /// The oldest packet, whatever the rate (to send everything at once), charged to the rate:
    /// what follows waits for it.
    pub fn force_front(&mut self) -> Option<Queued> {
        let q = self.take_front()?;
        self.debt += q.len() as f64;
        Some(q)
    }

    fn take_front(&mut self) -> Option<Queued> {
        let q = self.queue.pop_front()?;
        self.queued_bytes -= q.len();
        self.resends = self.resends.saturating_sub(1);
        Some(q)
    }

    /// When the next packet may leave (`None`: nothing queued).
    pub fn next_due(&self, rate_bps: u64) -> Option<Instant> {
        let deadline = self.queue.front()?.queued_at + MAX_QUEUE_DELAY;
        let Some(last) = self.last else {
            return Some(deadline);
        };
        let rate = self.rate(rate_bps);
        let over = (self.debt - Self::burst(rate)).max(0.0);
        // A microsecond on, so the debt has surely drained below the burst by then.
        let due = last + Duration::from_secs_f64(over * 8.0 / rate) + Duration::from_micros(1);
        Some(due.min(deadline))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(track: usize, len: usize, queued_at: Instant) -> Queued {
        Queued {
            waiting: Waiting::Media,
            track,
            header: [0; HEADER_MAX],
            header_len: 12,
            transport_seq_at: None,
            prefix: [0; PREFIX_MAX],
            prefix_len: 0,
            packet: Bytes::from(vec![0u8; len]),
            payload: (0, len - 12),
            queued_at,
        }
    }

    /// A burst of 20 packets of 1000 bytes at 1.6 Mbps leaves 5 ms apart, in order, after the
    /// first two, which the burst allowance lets go at once.
    #[test]
    fn a_burst_leaves_at_the_rate() {
        let t0 = Instant::now();
        let mut p = Pacer::new();
        for i in 0..20 {
            assert!(p.push(packet(i, 1000, t0)).is_none());
        }
        let mut sent = Vec::new();
        let mut now = t0;
        while !p.is_empty() {
            while let Some(q) = p.pop(now, 1_600_000) {
                sent.push((q.track, now.duration_since(t0).as_micros()));
            }
            if let Some(due) = p.next_due(1_600_000) {
                now = due;
            }
        }
        assert_eq!(
            sent.iter().map(|s| s.0).collect::<Vec<_>>(),
            (0..20).collect::<Vec<_>>()
        );
        assert_eq!(sent[0].1, 0);
        assert_eq!(sent[1].1, 0);
        assert_eq!(sent[2].1, 4001, "the allowance is 1200 bytes");
        for w in sent[2..].windows(2) {
            let gap = w[1].1 - w[0].1;
            assert!((4990..=5010).contains(&gap), "5 ms apart: {sent:?}");
        }
    }

    /// A low rate does not hold a queue longer than `MAX_QUEUE_DELAY`; a full queue lets its
    /// oldest packet out at once.
    #[test]
    fn the_queue_drains_in_bounded_time_and_overflows_oldest_first() {
        let t0 = Instant::now();
        let mut p = Pacer::new();
        for i in 0..50 {
            p.push(packet(i, 1000, t0));
        }
        let mut now = t0;
        let mut n = 0;
        while !p.is_empty() {
            while p.pop(now, 10_000).is_some() {
                n += 1;
            }
            now = p.next_due(10_000).unwrap_or(now);
        }
        assert_eq!(n, 50);
        let waited = now.duration_since(t0);
        assert!(waited <= MAX_QUEUE_DELAY, "drained in {waited:?}");

        let mut p = Pacer::new();
        for i in 0..QUEUE {
            assert!(p.push(packet(i, 100, t0)).is_none());
        }
        let out = p.push(packet(QUEUE, 100, t0)).map(|q| q.track);
        assert_eq!(out, Some(0), "the oldest leaves when the queue is full");
    }

    /// Resends leave before the video queued ahead of them, in the order they came, and at the
    /// rate like the rest.
    #[test]
    fn resends_go_first_and_are_paced() {
        let t0 = Instant::now();
        let mut p = Pacer::new();
        for i in 0..4 {
            p.push(packet(i, 1000, t0));
        }
        for i in 10..14 {
            let mut q = packet(i, 1000, t0);
            q.waiting = Waiting::Resend(None);
            assert!(p.push_resend(q).is_none());
        }
        let mut sent = Vec::new();
        let mut now = t0;
        while !p.is_empty() {
            while let Some(q) = p.pop(now, 1_600_000) {
                sent.push((q.track, now));
            }
            now = p.next_due(1_600_000).unwrap_or(now);
        }
        let order: Vec<usize> = sent.iter().map(|s| s.0).collect();
        assert_eq!(order, [10, 11, 12, 13, 0, 1, 2, 3]);
        assert!(sent[3].1 > t0, "not all at once: {sent:?}");
        assert_eq!(p.resends, 0);
    }
}
