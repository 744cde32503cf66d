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
