//! The receiving side of transport-wide congestion control, for publishers: volna notes when each
//! packet with a transport-wide sequence number arrived and reports it back in transport-cc
//! feedback, so the publisher's own estimator (Chromium's, say) can probe and ramp up its
//! uplink, and back off when it is congested.

use crate::core::rtcp::twcc::{self, PacketResult};

/// Arrivals kept between two feedback messages; more are dropped (and read as lost).
const PENDING: usize = 1024;
/// Most packets one feedback message reports; the rest wait for the next.
const MAX_PER_MESSAGE: i64 = 300;
/// A gap longer than this after the last report is not reported as lost (the sender restarted).
const MAX_GAP: i64 = 1000;

pub struct TwccReceiver {
    /// Unreported arrivals: (extended sequence number, arrival µs).
    pending: Vec<(i64, i64)>,
    highest: Option<i64>,
    /// The first sequence number the next message reports.
    next_base: Option<i64>,
    feedback_count: u8,
    results: Vec<PacketResult>,
    out: Vec<u8>,
}

impl Default for TwccReceiver {
    fn default() -> Self {
        Self::new()
    }
}

impl TwccReceiver {
    pub fn new() -> Self {
        TwccReceiver {
            pending: Vec::with_capacity(PENDING),
            highest: None,
            next_base: None,
            feedback_count: 0,
            results: Vec::with_capacity(MAX_PER_MESSAGE as usize),
            out: Vec::with_capacity(1500),
        }
    }

    /// A packet with transport-wide number `seq` arrived at `arrival_us` (any fixed origin).
    pub fn on_packet(&mut self, seq: u16, arrival_us: i64) {
        let ext = match self.highest {
            None => i64::from(seq),
            Some(h) => h + i64::from(seq.wrapping_sub(h as u16) as i16),
        };
        self.highest = Some(self.highest.map_or(ext, |h| h.max(ext)));
        if self.next_base.is_some_and(|b| ext < b) || self.pending.len() == PENDING {
            return;
        }
        self.pending.push((ext, arrival_us));
    }

    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// One feedback message for what arrived since the last, or `None` when nothing did.
    pub fn feedback(&mut self, sender_ssrc: u32, media_ssrc: u32) -> Option<&[u8]> {
        if self.pending.is_empty() {
            return None;
        }
        self.pending.sort_unstable_by_key(|p| p.0);
        self.pending.dedup_by_key(|p| p.0);
        let first = self.pending[0].0;
        let base = match self.next_base {
            Some(b) if first - b <= MAX_GAP => b,
            _ => first,
        };
        let last = self.pending[self.pending.len() - 1]
            .0
            .min(base + MAX_PER_MESSAGE - 1);
        self.results.clear();
        let mut it = self.pending.iter().peekable();
        for seq in base..=last {
            let mut arrival = None;
            while let Some(&&(s, a)) = it.peek() {
                if s > seq {
                    break;
                }
                if s == seq {
                    arrival = Some(a);
                }
                it.next();
            }
            self.results.push(PacketResult {
                seq: seq as u16,
                arrival_us: arrival,
            });
        }
        self.pending.retain(|p| p.0 > last);
        self.next_base = Some(last + 1);
        self.out.clear();
        twcc::write(
            sender_ssrc,
            media_ssrc,
            self.feedback_count,
            &self.results,
            &mut self.out,
        );
        self.feedback_count = self.feedback_count.wrapping_add(1);
        Some(&self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(fb: &[u8]) -> (twcc::TwccHeader, Vec<(u16, Option<i64>)>) {
        let mut out = Vec::new();
        let h = twcc::parse(fb, &mut out).unwrap();
        (h, out.iter().map(|r| (r.seq, r.arrival_us)).collect())
    }

    /// Arrivals come back in order, gaps as losses, across the sequence wrap; a late packet of
    /// an already reported range is left out; counts go up by one per message.
    #[test]
    fn reports_arrivals_losses_and_wraps() {
        let mut rx = TwccReceiver::new();
        assert!(rx.feedback(1, 2).is_none(), "nothing arrived");
        rx.on_packet(65534, 1_000_000);
        rx.on_packet(0, 1_002_000); // 65535 lost, then wrap
        rx.on_packet(1, 1_001_000); // reordered: arrived before 0
        let (h, r) = parsed(rx.feedback(1, 2).unwrap());
        assert_eq!((h.sender_ssrc, h.base_seq, h.feedback_count), (1, 65534, 0));
        assert_eq!(
            r,
            vec![
                (65534, Some(1_000_000)),
                (65535, None),
                (0, Some(1_002_000)),
                (1, Some(1_001_000)),
            ]
        );
        rx.on_packet(65535, 1_003_000); // too late: its range was reported
        rx.on_packet(3, 1_010_000);
        let (h, r) = parsed(rx.feedback(1, 2).unwrap());
        assert_eq!((h.base_seq, h.feedback_count), (2, 1));
        assert_eq!(r, vec![(2, None), (3, Some(1_010_000))]);
        assert!(!rx.has_pending());
    }

    #[test]
    fn long_runs_are_split_and_restarts_are_not_losses() {
        let mut rx = TwccReceiver::new();
        for i in 0..500u16 {
            rx.on_packet(i, i64::from(i) * 1000);
        }
        let (h, r) = parsed(rx.feedback(1, 2).unwrap());
        assert_eq!((h.base_seq, r.len()), (0, MAX_PER_MESSAGE as usize));
        let (h, r) = parsed(rx.feedback(1, 2).unwrap());
        assert_eq!((h.base_seq, r.len()), (300, 200));
        // The sender jumps far ahead: report from the new start, not thousands of losses.
        rx.on_packet(20_000, 2_000_000);
        let (h, r) = parsed(rx.feedback(1, 2).unwrap());
        assert_eq!((h.base_seq, r.len()), (20_000, 1));
    }
}
