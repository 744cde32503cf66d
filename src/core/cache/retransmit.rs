//! The retransmit cache of one publisher track: the last packets, as the shared `Bytes` the relay
//! received (no copy), indexed by sequence number. A viewer's NACK is answered from here, so a
//! loss on one viewer's link costs that viewer a resend, not every viewer a duplicate and the
//! publisher a retransmission.

use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::core::rtp::RtpView;

/// Packets older than this are not resent: the viewer's jitter buffer has moved on.
pub const MAX_AGE: Duration = Duration::from_millis(1000);

struct Slot {
    sequence: u16,
    at: Instant,
    packet: Bytes,
    view: RtpView,
}

pub struct RetransmitCache {
    slots: Vec<Option<Slot>>,
}

impl RetransmitCache {
    /// A cache of `capacity` packets (rounded up to a power of two). Its slots are allocated
    /// here, once; storing a packet later only moves a reference count.
    pub fn new(capacity: usize) -> Self {
        let n = capacity.next_power_of_two().max(1);
        let mut slots = Vec::with_capacity(n);
        slots.resize_with(n, || None);
        Self { slots }
    }

    fn index(&self, seq: u16) -> usize {
        usize::from(seq) & (self.slots.len() - 1)
    }

    /// Keeps a packet. A packet whose sequence number is already here (and young) is a
    /// duplicate and is not kept: the first copy stays, so one sequence number, and so one SRTP
    /// index at each viewer, only ever carries one set of bytes (two plaintexts under one AES-GCM
    /// nonce would let an observer forge packets).
    pub fn insert(&mut self, now: Instant, packet: &Bytes, view: &RtpView) {
        let i = self.index(view.sequence);
        if self.slots[i]
            .as_ref()
            .is_some_and(|s| s.sequence == view.sequence && now.duration_since(s.at) <= MAX_AGE)
        {
            return;
        }
        self.slots[i] = Some(Slot {
            sequence: view.sequence,
            at: now,
            packet: packet.clone(),
            view: *view,
        });
    }

    /// Lets packets older than [`MAX_AGE`] go (each holds its whole receive block until then).
    pub fn expire(&mut self, now: Instant) {
        for slot in &mut self.slots {
            if slot
                .as_ref()
                .is_some_and(|s| now.duration_since(s.at) > MAX_AGE)
            {
                *slot = None;
            }
        }
    }

    /// Packets held now.
    pub fn len(&self) -> usize {
        self.slots.iter().filter(|s| s.is_some()).count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The packet with this sequence number, if it is still here and young enough.
    pub fn get(&self, now: Instant, seq: u16) -> Option<(&Bytes, &RtpView)> {
        let s = self.slots[self.index(seq)].as_ref()?;
        (s.sequence == seq && now.duration_since(s.at) <= MAX_AGE).then_some((&s.packet, &s.view))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkt(seq: u16) -> (Bytes, RtpView) {
        pkt_with(seq, 7)
    }

    fn pkt_with(seq: u16, payload: u8) -> (Bytes, RtpView) {
        let mut p = vec![0x80, 96, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, payload];
        p[2..4].copy_from_slice(&seq.to_be_bytes());
        let b = Bytes::from(p);
        let v = RtpView::parse(&b).unwrap();
        (b, v)
    }

    #[test]
    fn table() {
        let t0 = Instant::now();
        let mut c = RetransmitCache::new(4);
        for seq in [65534u16, 65535, 0, 1, 2] {
            let (b, v) = pkt(seq);
            c.insert(t0, &b, &v);
        }
        // (sequence asked, at ms, found)
        let cases: &[(u16, u64, bool)] = &[
            (2, 0, true),
            (65535, 0, true),
            (65534, 0, false), // overwritten by 2 (same slot of four)
            (3, 0, false),     // never sent
            (1, 1000, true),
            (1, 1001, false), // too old
        ];
        for (seq, ms, found) in cases {
            let got = c.get(t0 + Duration::from_millis(*ms), *seq);
            assert_eq!(got.is_some(), *found, "seq {seq} at {ms} ms");
            if let Some((b, v)) = got {
                assert_eq!(v.sequence, *seq);
                assert_eq!(v.payload(b), &[7]);
            }
        }
    }

    /// A sequence number repeated with other bytes does not replace what is kept (it may have
    /// been forwarded already: a resend must be those bytes); once the first copy is old, a new
    /// packet with that number (after wrap-around) is kept.
    #[test]
    fn a_duplicate_does_not_replace_the_first_copy() {
        let t0 = Instant::now();
        let mut c = RetransmitCache::new(4);
        let (a, va) = pkt_with(5, 1);
        let (b, vb) = pkt_with(5, 2);
        c.insert(t0, &a, &va);
        c.insert(t0 + Duration::from_millis(10), &b, &vb);
        let (got, v) = c.get(t0 + Duration::from_millis(20), 5).unwrap();
        assert_eq!(v.payload(got), &[1]);
        c.insert(t0 + Duration::from_millis(1001), &b, &vb);
        let (got, v) = c.get(t0 + Duration::from_millis(1002), 5).unwrap();
        assert_eq!(v.payload(got), &[2]);
    }
}
