//! What a viewer's NACKs may make the relay resend. A NACK is a few bytes that can name thousands
//! of packets (the same one many times, or whole ranges), and its sender may have moved its path
//! to someone else's address, so the answer is bounded twice:
//! - per packet ([`ResendLog`]): a packet is resent at most [`MAX_RESENDS`] times, and not again
//!   within [`RESEND_INTERVAL`] (about a round trip on a mobile link), however often it is named;
//! - per viewer ([`ResendBudget`]): in each [`WINDOW`], resends take at most [`SHARE_PERCENT`] %
//!   of the bytes of media sent to it (this window or the last, whichever is more), plus
//!   [`BURST`] bytes so that a viewer with little media still gets a lost packet back.
//!
//! So a viewer gets back at most half again what it was sent, and a NACK yields at most one resend
//! per distinct cached packet it names.

use std::time::{Duration, Instant};

/// A packet is resent at most this many times.
pub const MAX_RESENDS: u8 = 3;
/// Nor twice within this.
pub const RESEND_INTERVAL: Duration = Duration::from_millis(100);
/// Packets remembered per viewer track (by sequence number modulo this): about a second of video
/// at a high rate, as long as the retransmit cache keeps packets.
pub const LOG_LEN: usize = 256;

pub const WINDOW: Duration = Duration::from_secs(1);
pub const SHARE_PERCENT: u64 = 50;
pub const BURST: u64 = 4_000;

/// Recent resends of one viewer track, by the source sequence number. Its slots are allocated at
/// the track's first resend (most tracks never have one).
#[derive(Default)]
pub struct ResendLog {
    slots: Vec<(u16, Option<Instant>, u8)>,
}

impl ResendLog {
    /// Whether packet `seq` may be resent now; if so, the resend is recorded.
    pub fn allow(&mut self, now: Instant, seq: u16) -> bool {
        if self.slots.is_empty() {
            self.slots = vec![(0, None, 0); LOG_LEN];
        }
        let slot = &mut self.slots[usize::from(seq) % LOG_LEN];
        match *slot {
            (s, Some(at), n) if s == seq => {
                if n >= MAX_RESENDS || now.saturating_duration_since(at) < RESEND_INTERVAL {
                    return false;
                }
                *slot = (seq, Some(now), n + 1);
            }
            _ => *slot = (seq, Some(now), 1),
        }
        true
    }
}

/// A viewer's resend bytes against the media it was sent.
#[derive(Debug, Default)]
pub struct ResendBudget {
    window_start: Option<Instant>,
    /// Media bytes sent this window and the last (resends not counted).
    sent: u64,
    last_sent: u64,
    resent: u64,
}

impl ResendBudget {
    fn roll(&mut self, now: Instant) {
        match self.window_start {
            Some(start) if now.saturating_duration_since(start) < WINDOW => {}
            Some(start) => {
                // One idle window or more: what came before no longer counts.
                let idle = now.saturating_duration_since(start) >= 2 * WINDOW;
                self.last_sent = if idle { 0 } else { self.sent };
                self.sent = 0;
                self.resent = 0;
                self.window_start = Some(now);
            }
            None => self.window_start = Some(now),
        }
    }

    /// Media sent to the viewer (not a resend).
    pub fn on_sent(&mut self, now: Instant, bytes: usize) {
        self.roll(now);
        self.sent += bytes as u64;
    }

    /// Whether a resend of `bytes` fits; if so, it is counted.
    pub fn try_resend(&mut self, now: Instant, bytes: usize) -> bool {
        self.roll(now);
        let allowed = self.sent.max(self.last_sent) * SHARE_PERCENT / 100 + BURST;
        if self.resent + bytes as u64 > allowed {
            return false;
        }
        self.resent += bytes as u64;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    #[test]
    fn a_packet_is_resent_a_few_times_and_not_within_the_interval() {
        let t0 = Instant::now();
        let mut log = ResendLog::default();
        // (ms, sequence number, allowed)
        let table = [
            (0, 7, true),
            (0, 7, false), // named twice in one NACK
            (50, 7, false),
            (100, 7, true),
            (150, 8, true), // another packet is independent
            (200, 7, true),
            (300, 7, false), // three times in all
            (10_000, 7, false),
            (10_000, 7 + LOG_LEN as u16, true), // its slot taken by a newer packet
            (10_000, 7, true),                  // which forgets the old one
        ];
        for (ms, seq, allowed) in table {
            assert_eq!(log.allow(at(t0, ms), seq), allowed, "seq {seq} at {ms} ms");
        }
    }

    #[test]
    fn resends_stay_within_a_share_of_the_media_sent() {
        let t0 = Instant::now();
        // (ms, media bytes sent, resend asked for, allowed)
        let table: [(u64, usize, usize, bool); 9] = [
            (0, 0, 1_200, true), // the burst allowance
            (0, 0, 1_200, true),
            (0, 0, 1_200, true),
            (0, 0, 1_200, false),      // 4,800 > 4,000
            (10, 10_000, 1_200, true), // 50% of 10,000 + 4,000 = 9,000 allowed
            (20, 0, 4_300, false),     // 4,800 + 4,300 > 9,000
            (900, 0, 1_000, true),
            // A new window: the last one's media still counts (10,000 → 9,000 allowed).
            (1_000, 0, 8_000, true),
            // Two idle windows: only the burst again.
            (4_000, 0, 4_001, false),
        ];
        let mut b = ResendBudget::default();
        for (ms, sent, ask, allowed) in table {
            let now = at(t0, ms);
            b.on_sent(now, sent);
            assert_eq!(b.try_resend(now, ask), allowed, "{ask} B at {ms} ms");
        }
    }
}
