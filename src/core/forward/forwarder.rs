//! The forwarder of one track for one viewer. It answers one question per packet: drop, or forward
//! with these header values. Sequence numbers and timestamps are shifted by offsets fixed when the
//! stream starts, so a retransmission from the publisher maps to the number the viewer asked for.
//!
//! A simulcast track has several layers (one SSRC each); the viewer follows one at a time. A
//! switch (or a resume after a pause) happens at a key frame of the new layer, and the viewer's
//! numbering goes on right after the last packet it got, so its decoder sees one clean stream.
//!
//! A VP9 or AV1 stream may carry spatial and temporal layers in one SSRC (SVC). The viewer is
//! sent the layers up to its [`SvcLayers`]: higher ones are left out, the packets that remain are
//! numbered without gaps, and the marker bit ends each picture at the highest spatial layer sent.
//! VP9 names the layers in its payload descriptor; for AV1 the caller reads the dependency
//! descriptor extension and passes a [`LayerFrame`].

use std::time::Instant;

use crate::core::rtp::codec::{vp8, vp9};
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
    /// An SVC layer above the ones this viewer follows.
    Thinned,
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

/// The spatial and temporal layers of an SVC stream a viewer is sent: those up to these ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SvcLayers {
    pub spatial: u8,
    pub temporal: u8,
}

impl SvcLayers {
    /// Every layer (VP9 ids are 3 bits).
    pub const ALL: SvcLayers = SvcLayers {
        spatial: 7,
        temporal: 7,
    };
}

/// An SVC frame as a header extension describes it (AV1's dependency descriptor).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerFrame {
    /// First and last packet of the frame.
    pub start: bool,
    pub end: bool,
    pub spatial: u8,
    pub temporal: u8,
    /// A key frame (it came with a new dependency structure).
    pub key: bool,
    /// The layers (bit `spatial * 8 + temporal`) whose decode targets may be switched to at
    /// this frame.
    pub switch_points: u64,
}

impl LayerFrame {
    fn switch_point(&self, to: SvcLayers) -> bool {
        let bit = u32::from(to.spatial.min(7)) * 8 + u32::from(to.temporal.min(7));
        self.switch_points & (1 << bit) != 0
    }
}

/// Per-viewer state of an SVC stream: the layers followed, and how the source numbering maps to
/// the viewer's once packets are left out. Indexed by extended source sequence number (or the
/// viewer's, for `source_of`) modulo `SEEN`, like `Forwarder::seen`.
#[derive(Debug, Clone)]
struct Svc {
    target: SvcLayers,
    /// The layers sent now: moves down at a picture start, up at a switching point.
    current: SvcLayers,
    /// Source packets left out since the start, up to the highest seen.
    thinned_total: u16,
    /// Per source packet: how many were left out before it.
    thinned_before: [u16; SEEN],
    /// Per source packet: left out (never to be resent).
    thinned: [u64; SEEN / 64],
    /// Per source packet: sent with the marker bit (a resend must carry the same header).
    marked: [u64; SEEN / 64],
    /// Per viewer sequence number: the source one.
    source_of: [u16; SEEN],
}

impl Svc {
    fn new() -> Self {
        Svc {
            target: SvcLayers::ALL,
            current: SvcLayers::ALL,
            thinned_total: 0,
            thinned_before: [0; SEEN],
            thinned: [0; SEEN / 64],
            marked: [0; SEEN / 64],
            source_of: [0; SEEN],
        }
    }

    /// Moves the layers sent at the switching points the frame offers; returns whether its
    /// packet is sent.
    fn follow_frame(&mut self, f: &LayerFrame) -> bool {
        let (cur, target) = (&mut self.current, self.target);
        if f.start && f.spatial == 0 {
            if f.key {
                *cur = target;
            } else {
                // A new picture: stepping down is safe at once.
                cur.spatial = cur.spatial.min(target.spatial);
                cur.temporal = cur.temporal.min(target.temporal);
            }
        }
        // Up where the frame is a switching point for the layers wanted.
        if f.start && *cur != target && f.switch_point(target) {
            *cur = target;
        }
        f.spatial <= cur.spatial && f.temporal <= cur.temporal
    }

    /// The same for a VP9 packet, by its descriptor.
    fn follow(&mut self, d: &vp9::Descriptor) -> bool {
        let (cur, target) = (&mut self.current, self.target);
        if d.begin && d.sid == 0 {
            if d.inter_picture {
                // A new picture: stepping down is safe at once.
                cur.spatial = cur.spatial.min(target.spatial);
                cur.temporal = cur.temporal.min(target.temporal);
            } else {
                // A key picture: its upper layers refer only to the ones below.
                *cur = target;
            }
        }
        // Up one spatial layer where its frame refers to no earlier picture (only to the layer
        // below, which is sent); up one temporal layer at a switching-up point.
        let next = |l: u8| l.checked_add(1);
        if d.begin
            && !d.inter_picture
            && Some(d.sid) == next(cur.spatial)
            && d.sid <= target.spatial
            && d.tid <= cur.temporal
        {
            cur.spatial = d.sid;
        }
        if d.begin && d.switch_up && Some(d.tid) == next(cur.temporal) && d.tid <= target.temporal {
            cur.temporal = d.tid;
        }
        d.sid <= cur.spatial && d.tid <= cur.temporal
    }
}

fn bit(set: &[u64; SEEN / 64], i: usize) -> bool {
    set[i / 64] & (1 << (i % 64)) != 0
}

fn put(set: &mut [u64; SEEN / 64], i: usize, on: bool) {
    if on {
        set[i / 64] |= 1 << (i % 64);
    } else {
        set[i / 64] &= !(1 << (i % 64));
    }
}

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
    /// VP9 and AV1 only (boxed: a few kilobytes other codecs do without).
    svc: Option<Box<Svc>>,
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
            svc: matches!(codec, Codec::Vp9 | Codec::Av1).then(|| Box::new(Svc::new())),
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

    /// The SVC layers to send (VP9), moved to at the stream's next switching points. Sending
    /// every layer is the default.
    pub fn set_svc_target(&mut self, layers: SvcLayers) {
        if let Some(svc) = self.svc.as_mut() {
            svc.target = layers;
        }
    }

    /// The SVC layers wanted and the ones sent now; `None` for codecs without them.
    pub fn svc_layers(&self) -> Option<(SvcLayers, SvcLayers)> {
        self.svc.as_ref().map(|s| (s.target, s.current))
    }

    /// When the last packet was sent (the arrival time it was decided at).
    pub fn last_sent_at(&self) -> Option<Instant> {
        self.last_out.map(|l| l.at)
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
        self.decide_frame(now, layer, view, payload, None)
    }

    /// The same, for a packet whose SVC layers a header extension told (`frame`).
    pub fn decide_frame(
        &mut self,
        now: Instant,
        layer: u8,
        view: &RtpView,
        payload: &[u8],
        frame: Option<&LayerFrame>,
    ) -> Decision {
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
            // The window moves on: what it uncovers was not forwarded yet (nor left out).
            let from = (s.highest_ext + 1).max(ext - SEEN as i64 + 1);
            for e in from..=ext {
                let i = e.rem_euclid(SEEN as i64) as usize;
                put(&mut self.seen, i, false);
                if let Some(svc) = self.svc.as_mut() {
                    put(&mut svc.thinned, i, false);
                    put(&mut svc.marked, i, false);
                    svc.thinned_before[i] = svc.thinned_total;
                    // Where a packet that never came would be: a viewer's NACK for it is
                    // passed on to the publisher.
                    let out = (e as u16)
                        .wrapping_add(s.seq_offset)
                        .wrapping_sub(svc.thinned_total);
                    svc.source_of[usize::from(out) % SEEN] = e as u16;
                }
            }
        }
        let i = ext.rem_euclid(SEEN as i64) as usize;
        let newest = ext > s.highest_ext;
        let mut marker = view.marker;
        let mut thinned_before = 0;
        if bit(&self.seen, i) {
            return Decision::Drop(DropReason::Duplicate);
        }
        if let Some(svc) = self.svc.as_mut() {
            if bit(&svc.thinned, i) {
                return Decision::Drop(DropReason::Thinned);
            }
            // The layers come from the caller's descriptor, else from VP9's payload.
            let vp9 = (frame.is_none() && self.codec == Codec::Vp9)
                .then(|| vp9::Descriptor::parse(payload))
                .flatten()
                .filter(|d| d.layered);
            let ids = frame
                .map(|f| (f.end, f.spatial, f.temporal))
                .or(vp9.map(|d| (d.end, d.sid, d.tid)));
            if let Some((end, sid, tid)) = ids {
                let sent = match (newest, frame, vp9) {
                    (true, Some(f), _) => svc.follow_frame(f),
                    (true, _, Some(d)) => svc.follow(&d),
                    _ => sid <= svc.current.spatial && tid <= svc.current.temporal,
                };
                if !sent {
                    // Left out: later packets are numbered as if it never was. A late one
                    // cannot be, and leaves a gap the viewer may ask for in vain.
                    put(&mut svc.thinned, i, true);
                    if newest {
                        svc.thinned_total = svc.thinned_total.wrapping_add(1);
                        s.highest_ext = ext;
                    }
                    return Decision::Drop(DropReason::Thinned);
                }
                // The picture ends, for this viewer, with the highest spatial layer it gets.
                marker |= end && sid == svc.current.spatial;
            }
            thinned_before = svc.thinned_before[i];
        }
        put(&mut self.seen, i, true);
        let out = view
            .sequence
            .wrapping_add(s.seq_offset)
            .wrapping_sub(thinned_before);
        if let Some(svc) = self.svc.as_mut() {
            put(&mut svc.marked, i, marker);
            svc.source_of[usize::from(out) % SEEN] = view.sequence;
        }
        let ts = view.timestamp.wrapping_add(s.ts_offset);
        if let Some(l) = self.last_out.as_mut().filter(|_| ext < s.highest_ext) {
            // A late packet numbered past the last one sent (packets after it were left out):
            // a restart must number after it, or an SRTP index would be used twice.
            if (out.wrapping_sub(l.seq) as i16) > 0 {
                l.seq = out;
            }
        }
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
            marker,
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
        if let Some(svc) = self.svc.as_mut() {
            // A key frame: numbering starts over with nothing left out yet.
            let target = svc.target;
            **svc = Svc::new();
            svc.target = target;
            svc.current = target;
        }
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
        let mut sequence = view.sequence.wrapping_add(s.seq_offset);
        let mut marker = view.marker;
        if let Some(svc) = self.svc.as_deref() {
            // Only what was sent, as it was sent.
            let i = ext.rem_euclid(SEEN as i64) as usize;
            if ext <= s.highest_ext - SEEN as i64 || !bit(&self.seen, i) {
                return None;
            }
            sequence = sequence.wrapping_sub(svc.thinned_before[i]);
            marker = bit(&svc.marked, i);
        }
        Some(Rewrite {
            ssrc: self.ssrc,
            sequence,
            timestamp: view.timestamp.wrapping_add(s.ts_offset),
            payload_type: self.payload_type,
            marker,
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
        let s = self.started?;
        let Some(svc) = self.svc.as_deref() else {
            return Some(viewer_seq.wrapping_sub(s.seq_offset));
        };
        // Packets left out shift the numbering: look the number up, and check it maps back.
        let src = svc.source_of[usize::from(viewer_seq) % SEEN];
        let ext = s.extend(src);
        let i = ext.rem_euclid(SEEN as i64) as usize;
        let in_window =
            ext >= s.start_ext && ext <= s.highest_ext && ext > s.highest_ext - SEEN as i64;
        let out = src
            .wrapping_add(s.seq_offset)
            .wrapping_sub(svc.thinned_before[i]);
        (in_window && !bit(&svc.thinned, i) && out == viewer_seq).then_some(src)
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

    /// A VP9 payload descriptor of a one-packet layer frame: L set, non-flexible (TL0PICIDX).
    fn vp9(inter: bool, tid: u8, up: bool, sid: u8) -> [u8; 3] {
        let b0 = 0x20 | 0x08 | 0x04 | if inter { 0x40 } else { 0 };
        let l = (tid << 5) | (u8::from(up) << 4) | (sid << 1) | u8::from(sid > 0);
        [b0, l, 0]
    }

    /// An SVC stream of three spatial and three temporal layers (one packet per layer frame),
    /// thinned per viewer: higher layers are left out, the rest numbered without gaps, the
    /// picture's marker moved to the highest layer sent; layers come back only at switching
    /// points; NACKs map through the new numbering, and left-out packets are never resent.
    #[test]
    fn svc_layers_are_thinned_per_viewer() {
        let mut f = Forwarder::new(Codec::Vp9, 90_000, 9, 98, 100, 0);
        let src = std::cell::Cell::new(5000u16);
        // Sends one picture (temporal id, key or not, U bit); returns (sid, out seq, marker)
        // of the packets forwarded.
        let picture = |f: &mut Forwarder, tid: u8, key: bool, up: bool| {
            let mut sent = Vec::new();
            for sid in 0..3u8 {
                let mut v = view(src.get(), u32::from(src.get()) * 10);
                v.marker = sid == 2;
                let p = vp9(!key, tid, up, sid);
                if let Decision::Forward(rw) = f.decide(t0(), 0, &v, &p) {
                    sent.push((sid, rw.sequence, rw.marker));
                }
                src.set(src.get().wrapping_add(1));
            }
            sent
        };
        assert_eq!(f.svc_layers(), Some((SvcLayers::ALL, SvcLayers::ALL)));
        assert_eq!(
            picture(&mut f, 0, true, false),
            [(0, 100, false), (1, 101, false), (2, 102, true)]
        );
        f.set_svc_target(SvcLayers {
            spatial: 1,
            temporal: 7,
        });
        assert_eq!(
            picture(&mut f, 2, false, true),
            [(0, 103, false), (1, 104, true)]
        );
        f.set_svc_target(SvcLayers {
            spatial: 0,
            temporal: 0,
        });
        assert_eq!(
            picture(&mut f, 1, false, true),
            [],
            "temporal layer 1 left out"
        );
        assert_eq!(picture(&mut f, 2, false, true), []);
        assert_eq!(picture(&mut f, 0, false, false), [(0, 105, true)]);
        // NACKs map through the gaps left; left-out packets cannot be resent.
        assert_eq!(f.source_sequence(105), Some(5012));
        assert_eq!(f.source_sequence(104), Some(5004));
        assert_eq!(f.source_sequence(106), None, "not sent yet");
        let mut v = view(5004, 50_040);
        assert_eq!(
            f.rewrite_again(&v).map(|r| (r.sequence, r.marker)),
            Some((104, true)),
            "resent as sent: the marker moved"
        );
        v.sequence = 5005;
        assert_eq!(f.rewrite_again(&v), None, "left out");
        // Up again: temporal layers one by one at switching-up points, spatial ones where a
        // frame refers to no earlier picture.
        f.set_svc_target(SvcLayers {
            spatial: 2,
            temporal: 2,
        });
        assert_eq!(picture(&mut f, 2, false, true), [], "two temporal steps");
        assert_eq!(
            picture(&mut f, 1, false, false),
            [],
            "not a switching point"
        );
        assert_eq!(picture(&mut f, 1, false, true), [(0, 106, true)]);
        assert_eq!(picture(&mut f, 2, false, true), [(0, 107, true)]);
        assert_eq!(f.svc_layers().map(|l| l.1.spatial), Some(0));
        assert_eq!(
            picture(&mut f, 0, true, false),
            [(0, 108, false), (1, 109, false), (2, 110, true)],
            "a key picture brings every layer back"
        );
        // A packet lost before the relay leaves a gap the viewer's NACK is passed on for.
        src.set(src.get().wrapping_add(1));
        assert_eq!(
            picture(&mut f, 2, false, true).first(),
            Some(&(0, 112, false))
        );
        assert_eq!(f.source_sequence(111), Some(5030));
        let mut late = view(5030, 0);
        late.marker = false;
        let Decision::Forward(rw) = f.decide(t0(), 0, &late, &vp9(true, 2, true, 0)) else {
            panic!("the late packet is sent")
        };
        assert_eq!(rw.sequence, 111);
    }

    /// A viewer that starts with smaller layers than the stream has is thinned from its first
    /// key picture on; and a late packet sent past the last one numbers what follows a restart,
    /// so no sequence number is used twice.
    #[test]
    fn svc_starts_thinned_and_restarts_after_late_packets() {
        let mut f = Forwarder::new(Codec::Vp9, 90_000, 9, 98, 100, 0);
        f.set_svc_target(SvcLayers {
            spatial: 0,
            temporal: 7,
        });
        let send = |f: &mut Forwarder, seq: u16, key: bool, sid: u8| match f.decide(
            t0(),
            0,
            &view(seq, u32::from(seq) * 10),
            &vp9(!key, 0, false, sid),
        ) {
            Decision::Forward(rw) => Some((rw.sequence, rw.marker)),
            Decision::Drop(_) => None,
        };
        assert_eq!(
            send(&mut f, 10, true, 0),
            Some((100, true)),
            "the key picture, layer 0 only"
        );
        assert_eq!(send(&mut f, 11, true, 1), None);
        assert_eq!(send(&mut f, 12, true, 2), None);
        // 13 (layer 0 of the next picture) is late; 14 and 15 are left out.
        assert_eq!(send(&mut f, 14, false, 1), None);
        assert_eq!(send(&mut f, 15, false, 2), None);
        assert_eq!(send(&mut f, 13, false, 0), Some((101, true)));
        f.pause();
        f.set_target(0);
        assert_eq!(
            send(&mut f, 16, true, 0),
            Some((102, true)),
            "numbered after the late one"
        );
    }

    /// AV1 frames described by a header extension: a temporal layer comes back only at a frame
    /// that is a switching point for the layers wanted.
    #[test]
    fn described_frames_switch_at_their_switch_points() {
        let mut f = Forwarder::new(Codec::Av1, 90_000, 9, 45, 100, 0);
        let mut seq = 10u16;
        let mut send = |f: &mut Forwarder, temporal: u8, key: bool, switch_points: u64| {
            let frame = LayerFrame {
                start: true,
                end: true,
                spatial: 0,
                temporal,
                key,
                switch_points,
            };
            // AV1 aggregation header: N on a key frame.
            let payload = [if key { 0x18 } else { 0x10 }, 0];
            seq += 1;
            match f.decide_frame(t0(), 0, &view(seq, 0), &payload, Some(&frame)) {
                Decision::Forward(rw) => Some(rw.sequence),
                Decision::Drop(_) => None,
            }
        };
        let to = |temporal| SvcLayers {
            spatial: 0,
            temporal,
        };
        assert_eq!(send(&mut f, 0, true, 0), Some(100));
        assert_eq!(send(&mut f, 1, false, 0), Some(101));
        f.set_svc_target(to(0));
        assert_eq!(send(&mut f, 1, false, 0), None, "down at once");
        assert_eq!(send(&mut f, 0, false, 0), Some(102));
        f.set_svc_target(to(1));
        assert_eq!(send(&mut f, 1, false, 0), None, "not a switching point");
        assert_eq!(send(&mut f, 0, false, 0), Some(103));
        assert_eq!(
            send(&mut f, 1, false, 1 << 1),
            Some(104),
            "a switching point for T1"
        );
        assert_eq!(send(&mut f, 1, false, 0), Some(105));
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
