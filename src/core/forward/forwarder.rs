//! The forwarder of one track for one viewer. It answers one question per packet: drop, or forward
//! with these header values. Sequence numbers and timestamps are shifted by offsets fixed when the
//! stream starts, so a retransmission from the publisher maps to the number the viewer asked for.
//!
//! A simulcast track has several layers (one SSRC each); the viewer follows one at a time. A
//! switch (or a resume after a pause) happens at a key frame of the new layer, and the viewer's
//! numbering goes on right after the last packet it got, so its decoder sees one clean stream.

use std::time::Instant;

use crate::core::rtp::codec::vp8;
use crate::core::rtp::{Codec, Rewrite, RtpView};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Video waits for a keyframe before the first packet reaches the viewer.
    WaitingForKeyframe,
    /// Older than the first packet forwarded to this viewer.
    BeforeStart,
    /// The track is paused for this viewer (its link cannot carry it).
    Paused,
    /// A simulcast layer this viewer does not follow.
    OtherLayer,
    /// A packet already forwarded (a duplicate from the publisher's side): sending it again
    /// would protect different bytes under the same SRTP index.
    Duplicate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Drop(DropReason),
    Forward(Rewrite),
}

/// How the VP8 payload descriptor of a forwarded packet is shifted, so picture ids and
/// TL0PICIDX stay continuous across layer switches (decoders tell frames apart by them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Vp8Shift {
    pub picture_id: u16,
    pub tl0: u8,
}

impl Vp8Shift {
    pub fn is_zero(&self) -> bool {
        *self == Vp8Shift::default()
    }
}

/// Source sequence numbers remembered as forwarded, to refuse duplicates.
const SEEN: usize = 1024;

#[derive(Debug, Clone, Copy)]
struct Started {
    /// The layer these offsets belong to.
    layer: u8,
    seq_offset: u16,
    ts_offset: u32,
    /// Extended (roll-over counted) sequence numbers of the first and highest packets seen.
    start_ext: i64,
    highest_ext: i64,
}

impl Started {
    /// A publisher sequence number extended (roll-overs counted) next to the highest seen.
    fn extend(&self, seq: u16) -> i64 {
        self.highest_ext + i64::from(seq.wrapping_sub(self.highest_ext as u16) as i16)
    }
}

/// What the viewer was sent last: where a switch or resume continues from.
#[derive(Debug, Clone, Copy)]
struct LastOut {
    seq: u16,
    ts: u32,
    at: Instant,
    /// The VP8 picture id and TL0PICIDX as sent, when the packet had them.
    picture_id: Option<u16>,
    tl0: Option<u8>,
}

#[derive(Debug, Clone)]
pub struct Forwarder {
    codec: Codec,
    clock_rate: u32,
    ssrc: u32,
    payload_type: u8,
    initial_seq: u16,
    initial_ts: u32,
    /// The layer forwarded now; `None` before the start and while paused.
    current: Option<u8>,
    /// The layer wanted; `None` pauses. When it differs from `current`, the switch happens at the
    /// next key frame of the target, and `current` keeps flowing until then.
    target: Option<u8>,
    started: Option<Started>,
    /// Which of the last `SEEN` source sequence numbers (extended) were forwarded, a bit each.
    seen: [u64; SEEN / 64],
    last_out: Option<LastOut>,
    vp8: Vp8Shift,
    packets: u32,
    octets: u32,
}

impl Forwarder {
    /// `initial_seq` and `initial_ts` are the viewer's first values (random, chosen by the caller).
    /// The forwarder starts on layer 0.
    pub fn new(
        codec: Codec,
        clock_rate: u32,
        ssrc: u32,
        payload_type: u8,
        initial_seq: u16,
        initial_ts: u32,
    ) -> Self {
        Self {
            codec,
            clock_rate,
            ssrc,
            payload_type,
            initial_seq,
            initial_ts,
            current: None,
            target: Some(0),
            started: None,
            seen: [0; SEEN / 64],
            last_out: None,
            vp8: Vp8Shift::default(),
            packets: 0,
            octets: 0,
        }
    }

    /// Follows `layer` from its next key frame (video) or packet (audio); resumes a paused track.
    pub fn set_target(&mut self, layer: u8) {
        self.target = Some(layer);
    }

    /// The layer wanted (`None`: paused).
    pub fn target(&self) -> Option<u8> {
        self.target
    }

    /// The layer forwarded now (`None`: not started, or paused).
    pub fn current(&self) -> Option<u8> {
        self.current
    }

    /// Stops forwarding until [`Forwarder::set_target`].
    pub fn pause(&mut self) {
        self.target = None;
        self.current = None;
    }

    pub fn is_paused(&self) -> bool {
        self.target.is_none()
    }

    pub fn ssrc(&self) -> u32 {
        self.ssrc
    }

    pub fn is_started(&self) -> bool {
        self.started.is_some()
    }

    /// The VP8 descriptor shift for packets forwarded now (zero until a switch needs one).
    pub fn vp8_shift(&self) -> Vp8Shift {
        self.vp8
    }

    /// Packets and payload octets forwarded, for this viewer's sender reports.
    pub fn counts(&self) -> (u32, u32) {
        (self.packets, self.octets)
    }

    /// One packet of `layer` of the source track.
    pub fn decide(&mut self, now: Instant, layer: u8, view: &RtpView, payload: &[u8]) -> Decision {
        let Some(target) = self.target else {
            self.note_skipped(layer, view.sequence);
            return Decision::Drop(DropReason::Paused);
        };
        if self.current != Some(layer) {
            if target != layer {
                return Decision::Drop(DropReason::OtherLayer);
            }
            let stale = self
                .started
                .filter(|s| s.layer == layer)
                .is_some_and(|s| s.extend(view.sequence) <= s.highest_ext);
            if stale || (self.codec.is_video() && !self.codec.starts_keyframe(payload)) {
                self.note_skipped(layer, view.sequence);
                return Decision::Drop(if self.last_out.is_none() {
                    DropReason::WaitingForKeyframe
                } else {
                    DropReason::OtherLayer
                });
            }
            self.switch_in(now, layer, view, payload);
        }
        let Some(s) = self.started.as_mut() else {
            return Decision::Drop(DropReason::WaitingForKeyframe);
        };
        let ext = s.extend(view.sequence);
        if ext < s.start_ext || ext <= s.highest_ext - SEEN as i64 {
            return Decision::Drop(DropReason::BeforeStart);
        }
        if ext > s.highest_ext {
            // The window moves on: what it uncovers was not forwarded yet.
            let from = (s.highest_ext + 1).max(ext - SEEN as i64 + 1);
            for e in from..=ext {
                let i = e.rem_euclid(SEEN as i64) as usize;
                self.seen[i / 64] &= !(1 << (i % 64));
            }
        }
        let bit = ext.rem_euclid(SEEN as i64) as usize;
        if self.seen[bit / 64] & (1 << (bit % 64)) != 0 {
            return Decision::Drop(DropReason::Duplicate);
        }
        self.seen[bit / 64] |= 1 << (bit % 64);
        let out = view.sequence.wrapping_add(s.seq_offset);
        let ts = view.timestamp.wrapping_add(s.ts_offset);
        if ext >= s.highest_ext {
            s.highest_ext = ext;
            // A packet without them (padding, a later partition) keeps the last ones known.
            let (picture_id, tl0) = self.vp8_out(payload);
            let prev = self.last_out;
            self.last_out = Some(LastOut {
                seq: out,
                ts,
                at: now,
                picture_id: picture_id.or(prev.and_then(|l| l.picture_id)),
                tl0: tl0.or(prev.and_then(|l| l.tl0)),
            });
        }
        self.packets = self.packets.wrapping_add(1);
        self.octets = self.octets.wrapping_add(payload.len() as u32);
        Decision::Forward(Rewrite {
            ssrc: self.ssrc,
            sequence: out,
            timestamp: ts,
            payload_type: self.payload_type,
            marker: view.marker,
        })
    }

    /// Keeps counting a layer's packets that are not sent, so a resume on that layer knows
    /// which packets are old.
    fn note_skipped(&mut self, layer: u8, seq: u16) {
        if let Some(s) = self.started.as_mut().filter(|s| s.layer == layer) {
            s.highest_ext = s.highest_ext.max(s.extend(seq));
        }
    }

    /// The picture id and TL0PICIDX a VP8 packet goes out with.
    fn vp8_out(&self, payload: &[u8]) -> (Option<u16>, Option<u8>) {
        if self.codec != Codec::Vp8 {
            return (None, None);
        }
        let Some(d) = vp8::Descriptor::parse(payload) else {
            return (None, None);
        };
        (
            d.picture_id
                .map(|p| p.wrapping_add(self.vp8.picture_id) & d.picture_id_mask()),
            d.tl0.map(|t| t.wrapping_add(self.vp8.tl0)),
        )
    }

    /// Starts forwarding `layer` from this (key frame) packet: numbered right after the last
    /// packet the viewer got; timestamps keep their offset on the same layer (its clock ran on)
    /// and advance by the time that passed on another (each layer has its own clock base).
    fn switch_in(&mut self, now: Instant, layer: u8, view: &RtpView, payload: &[u8]) {
        let (seq, ts) = match self.last_out {
            None => (self.initial_seq, self.initial_ts),
            Some(last) => {
                let ts = match self.started.filter(|s| s.layer == layer) {
                    Some(s) => view.timestamp.wrapping_add(s.ts_offset),
                    None => {
                        let elapsed = now.saturating_duration_since(last.at).as_secs_f64();
                        let ticks = (elapsed * f64::from(self.clock_rate)) as u32;
                        last.ts.wrapping_add(ticks.max(1))
                    }
                };
                (last.seq.wrapping_add(1), ts)
            }
        };
        let ext = i64::from(view.sequence);
        self.seen = [0; SEEN / 64];
        self.started = Some(Started {
            layer,
            seq_offset: seq.wrapping_sub(view.sequence),
            ts_offset: ts.wrapping_sub(view.timestamp),
            start_ext: ext,
            highest_ext: ext,
        });
        self.current = Some(layer);
        if let (Some(last), Codec::Vp8) = (self.last_out, self.codec) {
            if let Some(d) = vp8::Descriptor::parse(payload) {
                if let (Some(prev), Some(id)) = (last.picture_id, d.picture_id) {
                    self.vp8.picture_id = prev.wrapping_add(1).wrapping_sub(id);
                }
                if let (Some(prev), Some(t)) = (last.tl0, d.tl0) {
                    self.vp8.tl0 = prev.wrapping_add(1).wrapping_sub(t);
                }
            }
        }
    }

    /// The header values a packet already forwarded (or skipped) would have had, for resending
    /// it from the cache of the current layer. Leaves the forwarder's state alone. `None` before
    /// the stream started, while paused, or for packets from before the (re)start.
    pub fn rewrite_again(&self, view: &RtpView) -> Option<Rewrite> {
        let s = self.started.filter(|s| Some(s.layer) == self.current)?;
        let ext = s.extend(view.sequence);
        if ext < s.start_ext || ext > s.highest_ext {
            return None;
        }
        Some(Rewrite {
            ssrc: self.ssrc,
            sequence: view.sequence.wrapping_add(s.seq_offset),
            timestamp: view.timestamp.wrapping_add(s.ts_offset),
            payload_type: self.payload_type,
            marker: view.marker,
        })
    }

    /// Whether a packet of the current layer belongs to what this viewer is being sent now:
    /// started, not paused, and not from before the (re)start.
    pub fn covers(&self, source_seq: u16) -> bool {
        self.started
            .filter(|s| Some(s.layer) == self.current)
            .is_some_and(|s| s.extend(source_seq) >= s.start_ext)
    }

    /// Maps a sequence number in the viewer's numbering back to the current layer's (for NACKs).
    pub fn source_sequence(&self, viewer_seq: u16) -> Option<u16> {
        self.started.map(|s| viewer_seq.wrapping_sub(s.seq_offset))
    }

    /// Maps an RTP timestamp of `layer` to the viewer's (for sender reports); `None` unless the
    /// viewer follows that layer.
    pub fn viewer_timestamp(&self, layer: u8, source_ts: u32) -> Option<u32> {
        self.started
            .filter(|s| s.layer == layer)
            .map(|s| source_ts.wrapping_add(s.ts_offset))
    }

    /// The viewer timestamp of the current layer's `source_ts`, or of the last packet sent.
    pub fn timestamp_now(&self, source_ts: u32) -> u32 {
        match self.started {
            Some(s) => source_ts.wrapping_add(s.ts_offset),
            None => self.last_out.map_or(self.initial_ts, |l| l.ts),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn view(seq: u16, ts: u32) -> RtpView {
        RtpView {
            marker: false,
            payload_type: 96,
            sequence: seq,
            timestamp: ts,
            ssrc: 1,
            csrc_count: 0,
            ext_profile: 0,
            ext_start: 0,
            ext_len: 0,
            payload_start: 12,
            payload_end: 14,
        }
    }

    fn t0() -> Instant {
        use std::sync::OnceLock;
        static T: OnceLock<Instant> = OnceLock::new();
        *T.get_or_init(Instant::now)
    }

    const KEY: &[u8] = &[0x10, 0x00];
    const DELTA: &[u8] = &[0x10, 0x01];

    #[test]
    fn video_table() {
        // (input seq, payload, expected: None = drop, Some(out seq))
        let mut f = Forwarder::new(Codec::Vp8, 90_000, 9, 100, 1000, 50);
        let steps: &[(u16, &[u8], Option<u16>)] = &[
            (65530, DELTA, None),     // waits for a keyframe
            (65531, KEY, Some(1000)), // starts here
            (65532, DELTA, Some(1001)),
            (65535, DELTA, Some(1004)), // a gap stays a gap
            (0, DELTA, Some(1005)),     // wraps
            (65533, DELTA, Some(1002)), // late packet (retransmission) keeps its number
            (65530, DELTA, None),       // before the start
            (3, DELTA, Some(1008)),
            (3, DELTA, None),     // a duplicate is not sent again
            (65533, DELTA, None), // nor is a late packet twice
        ];
        for (i, (seq, payload, want)) in steps.iter().enumerate() {
            let got = match f.decide(t0(), 0, &view(*seq, 7), payload) {
                Decision::Forward(rw) => Some(rw.sequence),
                Decision::Drop(_) => None,
            };
            assert_eq!(got, *want, "step {i}");
        }
        assert_eq!(f.counts(), (6, 12));
        // Resending from the cache gives the same numbers, without moving the state.
        assert_eq!(
            f.rewrite_again(&view(65535, 7)).map(|r| r.sequence),
            Some(1004)
        );
        assert_eq!(f.rewrite_again(&view(65530, 7)), None, "before the start");
        assert_eq!(f.rewrite_again(&view(9, 7)), None, "not seen yet");
        assert_eq!(f.counts(), (6, 12));
        assert_eq!(f.source_sequence(1002), Some(65533));
        assert_eq!(f.viewer_timestamp(0, 7), Some(50));
    }

    /// Paused, nothing goes out; resumed, the next key frame continues the viewer's numbering
    /// right after the last packet it got, timestamps keep their offset, and what was skipped
    /// can be neither resent nor asked for.
    #[test]
    fn pause_and_resume_keep_the_numbering_seamless() {
        let mut f = Forwarder::new(Codec::Vp8, 90_000, 9, 100, 1000, 50);
        let out = |f: &mut Forwarder, seq: u16, p: &[u8]| match f.decide(
            t0(),
            0,
            &view(seq, u32::from(seq) * 10),
            p,
        ) {
            Decision::Forward(rw) => Some((rw.sequence, rw.timestamp)),
            Decision::Drop(_) => None,
        };
        assert_eq!(out(&mut f, 10, KEY), Some((1000, 50)));
        assert_eq!(out(&mut f, 11, DELTA), Some((1001, 60)));
        f.pause();
        assert!(f.is_paused());
        assert_eq!(out(&mut f, 12, KEY), None, "paused");
        // A long pause: far more than half the sequence space goes by.
        for seq in 13..40_000u16 {
            assert_eq!(out(&mut f, seq, DELTA), None);
        }
        f.set_target(0);
        assert_eq!(
            out(&mut f, 40_000, DELTA),
            None,
            "resuming waits for a key frame"
        );
        assert_eq!(out(&mut f, 40_001, KEY), Some((1002, 399_960)));
        assert_eq!(out(&mut f, 40_002, DELTA), Some((1003, 399_970)));
        assert!(!f.is_paused());
        assert_eq!(
            f.rewrite_again(&view(20, 200)),
            None,
            "skipped while paused"
        );
        assert_eq!(out(&mut f, 39_999, DELTA), None, "from before the resume");
        assert_eq!(f.source_sequence(1003), Some(40_002));
    }

    /// A switch between simulcast layers: the old layer flows until the new one's key frame;
    /// then numbering goes on right after the last packet sent, timestamps advance by the time
    /// that passed, and VP8 picture ids and TL0PICIDX continue; the old layer is dropped.
    #[test]
    fn layer_switch_is_seamless() {
        let mut f = Forwarder::new(Codec::Vp8, 90_000, 9, 100, 1000, 50);
        // VP8 descriptor with a 15-bit picture id and TL0PICIDX, then the payload header.
        let vp8 = |key: bool, pid: u16, tl0: u8| {
            let id = (pid | 0x8000).to_be_bytes();
            vec![0x90, 0xc0, id[0], id[1], tl0, u8::from(!key)]
        };
        let t = t0();
        let at = |ms: u64| t + Duration::from_millis(ms);
        let out = |f: &mut Forwarder, ms: u64, layer: u8, seq: u16, ts: u32, p: &[u8]| match f
            .decide(at(ms), layer, &view(seq, ts), p)
        {
            Decision::Forward(rw) => Some((rw.sequence, rw.timestamp)),
            Decision::Drop(_) => None,
        };
        assert_eq!(
            out(&mut f, 0, 1, 7000, 5, &vp8(true, 900, 1)),
            None,
            "not followed"
        );
        assert_eq!(
            out(&mut f, 0, 0, 100, 10_000, &vp8(true, 10, 200)),
            Some((1000, 50))
        );
        assert_eq!(
            out(&mut f, 33, 0, 101, 13_000, &vp8(false, 11, 200)),
            Some((1001, 3050))
        );
        f.set_target(1);
        assert_eq!(f.target(), Some(1));
        assert_eq!(
            out(&mut f, 40, 1, 7001, 8, &vp8(false, 901, 1)),
            None,
            "waits for a key frame"
        );
        assert_eq!(
            out(&mut f, 66, 0, 102, 16_000, &vp8(false, 12, 201)),
            Some((1002, 6050))
        );
        assert_eq!(f.vp8_shift(), Vp8Shift::default());
        // The key frame of layer 1 arrives 34 ms after the last packet sent.
        assert_eq!(
            out(&mut f, 100, 1, 7002, 400_000, &vp8(true, 902, 7)),
            Some((1003, 6050 + 3060))
        );
        assert_eq!(f.current(), Some(1));
        let shift = f.vp8_shift();
        assert_eq!(902u16.wrapping_add(shift.picture_id) & 0x7fff, 13);
        assert_eq!(7u8.wrapping_add(shift.tl0), 202);
        assert_eq!(
            out(&mut f, 110, 0, 103, 19_000, &vp8(false, 13, 201)),
            None,
            "old layer"
        );
        assert_eq!(
            out(&mut f, 133, 1, 7003, 403_000, &vp8(false, 903, 7)),
            Some((1004, 9110 + 3000))
        );
        assert_eq!(f.viewer_timestamp(0, 19_000), None);
        assert_eq!(f.viewer_timestamp(1, 403_000), Some(12_110));
        assert_eq!(
            f.rewrite_again(&view(7002, 400_000)).map(|r| r.sequence),
            Some(1003)
        );
        assert!(!f.covers(7001), "from before the switch");
        assert_eq!(f.source_sequence(1004), Some(7003));
    }

    #[test]
    fn audio_starts_at_once_and_shifts_timestamps() {
        let mut f = Forwarder::new(Codec::Opus, 48_000, 9, 111, 0, 0);
        assert_eq!(f.source_sequence(0), None);
        let Decision::Forward(a) = f.decide(t0(), 0, &view(10, 4_294_967_000), &[1]) else {
            panic!()
        };
        let Decision::Forward(b) = f.decide(t0(), 0, &view(11, 664), &[1]) else {
            panic!()
        };
        assert_eq!(
            (a.sequence, a.timestamp, a.payload_type, a.ssrc),
            (0, 0, 111, 9)
        );
        assert_eq!((b.sequence, b.timestamp), (1, 960));
    }

    #[test]
    fn long_runs_wrap_many_times() {
        let mut f = Forwarder::new(Codec::Opus, 48_000, 1, 111, 5, 0);
        for i in 0..200_000u32 {
            let Decision::Forward(rw) = f.decide(t0(), 0, &view(i as u16, i * 960), &[0]) else {
                panic!("{i}")
            };
            assert_eq!(rw.sequence, (i as u16).wrapping_add(5));
        }
    }
}
