//! Publisher ingest: what volna keeps of each publisher and learns from its packets. A packet
//! is matched to its track and simulcast layer, measured (rate, receive statistics), cached for
//! resends and replays, and read once for everyone (key-frame starts, AV1 dependency
//! descriptors, SVC layer rates, picture sizes, audio level, a low-bitrate re-encoding). The
//! publisher's side of feedback lives here too: key-frame requests (rate-limited per layer),
//! receiver reports with a bitrate cap, and transport-cc feedback.

use std::time::{Duration, Instant};

use bytes::Bytes;

use super::{alloc, svc, twcc_rx, Feedback, MediaKind, ReceiveStats, SessionId, Sink, TrackSpec};
use crate::core::audio::OpusTranscoder;
use crate::core::cache::RetransmitCache;
use crate::core::forward::LayerFrame;
use crate::core::rtcp::{self, Pli, ReceiverReport, Remb};
use crate::core::rtp::codec::vp8;
use crate::core::rtp::{Codec, ExtKind, RtpView};

/// How long arrivals wait before transport-cc feedback reports them to the publisher.
pub(super) const TWCC_FEEDBACK_INTERVAL: Duration = Duration::from_millis(50);

pub(super) struct Publisher {
    pub room: String,
    pub rtcp_ssrc: u32,
    pub tracks: Vec<PubTrack>,
    pub next_report: Option<Instant>,
    /// Transport-cc feedback to send, and the extension id it reads, when the publisher
    /// negotiated it (one id for the whole bundle).
    pub twcc: Option<(twcc_rx::TwccReceiver, u8)>,
}

pub(super) struct PubTrack {
    pub spec: TrackSpec,
    /// One per simulcast encoding; one for a track without simulcast.
    pub layers: Vec<Layer>,
    /// The layers the publisher was last told to send (a bit per layer).
    pub active: u8,
    pub viewers: Vec<(SessionId, usize)>,
    /// Smoothed loudness from the audio-level extension (127 - dBov; louder is larger).
    pub loudness: f32,
    /// Re-encodes this (Opus) track at a low bitrate while some viewer needs it.
    pub transcoder: Option<Box<OpusTranscoder>>,
    /// Rates per spatial and temporal layer, for VP9 and AV1 (whose streams may carry several).
    pub svc: Option<Box<svc::SvcRates>>,
    /// AV1 with the dependency descriptor: its structure, and the extension id.
    pub dd: Option<(Box<svc::DdState>, u8)>,
    /// A presentation (screen share): its video goes before cameras'.
    pub slides: bool,
    /// Muted by the server API: its packets are taken in (rates, caches) but not forwarded.
    pub blocked: bool,
    /// Relayed from another node over a relay link (see [`super::Relay::bind_layers`]).
    pub relayed: bool,
}

/// One RTP stream of a publisher track: the track itself, or one of its simulcast layers.
pub(super) struct Layer {
    pub rid: Option<String>,
    pub ssrc: Option<u32>,
    pub stats: ReceiveStats,
    pub last_keyframe_request: Option<Instant>,
    /// A keyframe request waiting for the rate limit or for the layer's SSRC.
    pub keyframe_due: Option<Instant>,
    pub fir_seq: u8,
    pub cache: RetransmitCache,
    /// What the publisher sends on it: the allocator's measure of what a viewer needs for it.
    pub rate: RateMeter,
    /// Highest sequence number received, to find the newest cached packets (for probes).
    pub last_seq: Option<u16>,
    /// Picture size of its last key frame, where the codec tells (VP8): ranks layers.
    pub pixels: u32,
    /// Its rate when it was last sent: what it would need if the publisher sent it again.
    pub known_bps: u64,
    /// Since when no viewer has wanted it (while the publisher was told to send it).
    pub unneeded_since: Option<Instant>,
    /// The first packet of its last key frame, when it arrived, and its timestamp: a viewer
    /// starting on the layer is sent what followed it from the cache, instead of asking the
    /// publisher.
    pub key_start: Option<(u16, Instant, u32)>,
}

impl Layer {
    fn new(spec: &TrackSpec, rid: Option<String>, ssrc: Option<u32>) -> Self {
        Layer {
            rid,
            ssrc,
            stats: ReceiveStats::new(spec.clock_rate),
            // About a second of packets: 512 at video rates, 64 for 20 ms audio frames.
            cache: RetransmitCache::new(match spec.kind {
                MediaKind::Video => 512,
                MediaKind::Audio => 64,
            }),
            last_keyframe_request: None,
            keyframe_due: None,
            fir_seq: 0,
            rate: RateMeter::default(),
            last_seq: None,
            pixels: 0,
            known_bps: 0,
            unneeded_since: None,
            key_start: None,
        }
    }

    /// Asks the publisher for a key frame of this layer now (PLI, or FIR where only that was
    /// negotiated).
    pub fn send_keyframe_request(
        &mut self,
        (to, rtcp_ssrc): (SessionId, u32),
        feedback: Feedback,
        now: Instant,
        buf: &mut [u8],
        sink: &mut impl Sink,
    ) {
        let Some(ssrc) = self.ssrc else { return };
        self.keyframe_due = None;
        self.last_keyframe_request = Some(now);
        let n = if feedback.pli || !feedback.fir {
            Pli {
                sender_ssrc: rtcp_ssrc,
                media_ssrc: ssrc,
            }
            .write(buf)
        } else {
            self.fir_seq = self.fir_seq.wrapping_add(1);
            rtcp::Fir::write(rtcp_ssrc, ssrc, self.fir_seq, buf)
        };
        if let Ok(n) = n {
            sink.rtcp(to, &buf[..n]);
        }
    }
}

impl PubTrack {
    pub fn new(spec: TrackSpec) -> Self {
        let layers: Vec<Layer> = if spec.rids.is_empty() {
            vec![Layer::new(&spec, None, spec.ssrc)]
        } else {
            spec.rids
                .iter()
                .take(alloc::MAX_LAYERS)
                .map(|rid| Layer::new(&spec, Some(rid.clone()), None))
                .collect()
        };
        PubTrack {
            active: ((1u16 << layers.len()) - 1) as u8,
            layers,
            viewers: Vec::new(),
            loudness: 0.0,
            transcoder: None,
            // SVC choices are made within one stream: not across simulcast layers.
            svc: (matches!(spec.codec, Codec::Vp9 | Codec::Av1) && spec.rids.is_empty())
                .then(Box::default),
            dd: spec
                .ext
                .id(ExtKind::DependencyDescriptor)
                .filter(|_| spec.codec == Codec::Av1 && spec.rids.is_empty())
                .map(|id| (Box::default(), id)),
            slides: false,
            blocked: false,
            relayed: false,
            spec,
        }
    }

    /// The layers with a rate (by `rate`: what they send now, or what they sent when last
    /// active), lowest quality first (by key-frame size where known, then by rate), at most
    /// [`alloc::MAX_LAYERS`]; returns how many.
    pub fn ranked(
        &self,
        rate: impl Fn(&Layer) -> u64,
        out: &mut [usize; alloc::MAX_LAYERS],
    ) -> usize {
        let mut n = 0;
        for (i, l) in self.layers.iter().enumerate() {
            if n < out.len() && (self.layers.len() == 1 || rate(l) > 0) {
                out[n] = i;
                n += 1;
            }
        }
        // Picture sizes rank only when every layer's is known (a lost first packet of a key
        // frame leaves one at 0); otherwise the rates do.
        let sized = out[..n].iter().all(|&i| self.layers[i].pixels > 0);
        out[..n].sort_by_key(|&i| {
            let px = if sized { self.layers[i].pixels } else { 0 };
            (px, rate(&self.layers[i]))
        });
        n
    }

    /// This track as the allocator sees it, its layers rated by `rate`, with `target` (a
    /// layer slot) as the one on; also returns the slots in the demand's order.
    pub fn demand(
        &self,
        rate: impl Fn(&Layer) -> u64,
        priority: u8,
        target: Option<u8>,
    ) -> Option<(alloc::Demand, [usize; alloc::MAX_LAYERS])> {
        let mut ranked = [0usize; alloc::MAX_LAYERS];
        let n_layers = self.ranked(&rate, &mut ranked);
        if n_layers == 0 {
            return None;
        }
        let mut d = alloc::Demand::single(self.spec.kind, 0, priority, false);
        // A layer costs at least what the one below it does: one starting again (Chromium
        // brings a simulcast layer back once its uplink has room) measures a fraction of its
        // rate at first, and taken at that it would be chosen for links far too short for it.
        let mut floor = 0;
        for (k, &slot) in ranked[..n_layers].iter().enumerate() {
            floor = floor.max(rate(&self.layers[slot]));
            d.layers[k] = floor;
        }
        d.n_layers = n_layers;
        d.on = target.and_then(|t| ranked[..n_layers].iter().position(|&s| s == usize::from(t)));
        Some((d, ranked))
    }

    /// Takes one packet of layer `li` in: measured, cached, and read for what every viewer
    /// needs. Returns `None` for padding (nothing to forward); otherwise the AV1 frame's
    /// layers (where it has a descriptor) and whether it is the layer's newest packet.
    pub fn ingest(
        &mut self,
        now: Instant,
        li: usize,
        packet: &Bytes,
        view: &RtpView,
    ) -> Option<Ingested> {
        let buf: &[u8] = packet;
        self.layers[li].ssrc = Some(view.ssrc);
        if view.payload_end == view.payload_start {
            // Padding only (a publisher probing its uplink): nothing to measure or forward.
            return None;
        }
        let layer = &mut self.layers[li];
        layer.rate.on_bytes(now, buf.len());
        let newer = layer
            .last_seq
            .is_none_or(|l| view.sequence.wrapping_sub(l).wrapping_sub(1) < 0x8000);
        if newer {
            layer.last_seq = Some(view.sequence);
        }
        layer.stats.on_packet(now, view.sequence, view.timestamp);
        layer.cache.insert(now, packet, view);
        let payload = view.payload(buf);
        // Once per key frame: H.264 marks each parameter set and slice of one.
        let key = &mut layer.key_start;
        if newer
            && self.spec.kind == MediaKind::Video
            && key.is_none_or(|k| k.2 != view.timestamp)
            && self.spec.codec.starts_keyframe(payload)
        {
            *key = Some((view.sequence, now, view.timestamp));
        }
        // The layers of an AV1 frame, from its dependency descriptor (read once, for everyone).
        let frame = self.dd.as_mut().and_then(|(dd, id)| {
            let (_, data) = view.extensions(buf).find(|(i, _)| *i == *id)?;
            dd.frame(data, newer)
        });
        if let Some(svc) = self.svc.as_deref_mut() {
            match &frame {
                Some(f) => svc.on_layer(now, f.spatial, f.temporal, buf.len()),
                None if self.spec.codec == Codec::Vp9 => svc.on_vp9(now, payload, buf.len()),
                None => {}
            }
        }
        if self.layers.len() > 1 && self.spec.codec == Codec::Vp8 {
            if let Some(px) = vp8::keyframe_pixels(payload) {
                self.layers[li].pixels = px;
            }
        }
        if let Some(level_id) = self.spec.ext.id(ExtKind::AudioLevel) {
            if let Some((_, data)) = view.extensions(buf).find(|(id, _)| *id == level_id) {
                // RFC 6464: 0 is the loudest, 127 silence, in -dBov.
                let loudness = f32::from(127 - (data.first().copied().unwrap_or(127) & 0x7f));
                self.loudness += (loudness - self.loudness) * 0.2;
            }
        }
        Some(Ingested { frame })
    }
}

/// What [`PubTrack::ingest`] read from a packet for the viewers.
pub(super) struct Ingested {
    pub frame: Option<LayerFrame>,
}

impl Publisher {
    pub fn new(room: &str, rtcp_ssrc: u32, tracks: Vec<TrackSpec>) -> Self {
        let tracks: Vec<PubTrack> = tracks.into_iter().map(PubTrack::new).collect();
        let twcc = tracks
            .iter()
            .find_map(|t| t.spec.ext.id(ExtKind::TransportWideCc))
            .map(|id| (twcc_rx::TwccReceiver::new(), id));
        Publisher {
            room: room.to_owned(),
            rtcp_ssrc,
            tracks,
            next_report: None,
            twcc,
        }
    }

    /// Simulcast tracks among its tracks.
    pub fn simulcast_tracks(&self) -> usize {
        self.tracks.iter().filter(|t| t.layers.len() > 1).count()
    }

    /// Notes a packet's arrival for transport-cc feedback (every packet that arrived is
    /// reported, whatever becomes of it: the publisher's estimator reads a missing report as a
    /// loss). Returns whether one was noted.
    pub fn note_arrival(&mut self, us: impl FnOnce() -> i64, buf: &[u8], view: &RtpView) -> bool {
        let Some((rx, id)) = self.twcc.as_mut() else {
            return false;
        };
        let Some((_, &[a, b])) = view.extensions(buf).find(|(i, _)| *i == *id) else {
            return false;
        };
        rx.on_packet(u16::from_be_bytes([a, b]), us());
        true
    }

    /// The loudest of its audio tracks.
    pub fn loudness(&self) -> f32 {
        self.tracks
            .iter()
            .filter(|t| t.spec.kind == MediaKind::Audio)
            .map(|t| t.loudness)
            .fold(0.0, f32::max)
    }

    /// Folds its own deadlines (reports, deferred key-frame requests) into `next`.
    pub fn next_timeout(&self, next: &mut Option<Instant>) {
        let mut consider = |t: Instant| *next = Some(next.map_or(t, |n| n.min(t)));
        if let Some(r) = self.next_report {
            consider(r);
        }
        for l in self.tracks.iter().flat_map(|t| &t.layers) {
            if let (Some(d), Some(_)) = (l.keyframe_due, l.ssrc) {
                consider(d);
            }
        }
    }

    /// Asks track `track` for a keyframe of `layer`, at most once per `interval`; a request
    /// inside the interval is remembered and sent when the interval ends. Returns whether one
    /// was sent.
    #[allow(clippy::too_many_arguments)]
    pub fn request_keyframe(
        &mut self,
        (id, now): (SessionId, Instant),
        track: usize,
        layer: u8,
        interval: Duration,
        buf: &mut [u8],
        sink: &mut impl Sink,
    ) -> bool {
        let rtcp_ssrc = self.rtcp_ssrc;
        let Some(t) = self.tracks.get_mut(track) else {
            return false;
        };
        if t.spec.kind != MediaKind::Video {
            return false;
        }
        let feedback = t.spec.feedback;
        let Some(l) = t.layers.get_mut(usize::from(layer)) else {
            return false;
        };
        let due = l.last_keyframe_request.map_or(now, |last| last + interval);
        if now < due || l.ssrc.is_none() {
            l.keyframe_due = Some(l.keyframe_due.map_or(due, |d| d.min(due)));
            return false;
        }
        l.send_keyframe_request((id, rtcp_ssrc), feedback, now, buf, sink);
        true
    }

    /// Its periodic feedback: deferred key-frame requests that are due, then (once per
    /// `report_interval`) receiver reports with a REMB cap of `max_bitrate_bps`. Returns the
    /// key-frame requests sent.
    pub fn handle_timeout(
        &mut self,
        (id, now): (SessionId, Instant),
        (report_interval, max_bitrate_bps): (Duration, u64),
        buf: &mut [u8],
        sink: &mut impl Sink,
    ) -> u64 {
        let rtcp_ssrc = self.rtcp_ssrc;
        let mut requests = 0;
        for t in &mut self.tracks {
            let feedback = t.spec.feedback;
            for l in &mut t.layers {
                if l.ssrc.is_some() && l.keyframe_due.is_some_and(|d| now >= d) {
                    l.send_keyframe_request((id, rtcp_ssrc), feedback, now, buf, sink);
                    requests += 1;
                }
            }
        }
        if self.next_report.is_some_and(|r| now < r) {
            return requests;
        }
        self.next_report = Some(now + report_interval);
        // Cached packets hold their receive blocks: old ones go.
        for l in self.tracks.iter_mut().flat_map(|t| &mut t.layers) {
            l.cache.expire(now);
        }
        let mut blocks = [rtcp::ReportBlock::default(); 8];
        let mut n_blocks = 0;
        for l in self
            .tracks
            .iter_mut()
            .flat_map(|t| &mut t.layers)
            .filter(|l| l.ssrc.is_some())
            .take(blocks.len())
        {
            blocks[n_blocks] = l.stats.report_block(now, l.ssrc.unwrap_or_default());
            n_blocks += 1;
        }
        if n_blocks == 0 {
            return requests;
        }
        let Ok(mut len) = ReceiverReport::write(rtcp_ssrc, &blocks[..n_blocks], buf) else {
            return requests;
        };
        if let Some(video) = self
            .tracks
            .iter()
            .find(|t| t.spec.kind == MediaKind::Video && t.spec.feedback.remb)
        {
            if let Some(ssrc) = video.layers.iter().find_map(|l| l.ssrc) {
                let remb = Remb {
                    sender_ssrc: rtcp_ssrc,
                    bitrate_bps: max_bitrate_bps,
                    ssrc,
                };
                len += remb.write(&mut buf[len..]).unwrap_or(0);
            }
        }
        sink.rtcp(id, &buf[..len]);
        requests
    }

    /// Transport-cc feedback on what arrived since the last, if any.
    pub fn twcc_feedback(&mut self) -> Option<&[u8]> {
        let media_ssrc = self
            .tracks
            .iter()
            .flat_map(|t| &t.layers)
            .find_map(|l| l.ssrc)
            .unwrap_or(0);
        let rtcp_ssrc = self.rtcp_ssrc;
        self.twcc
            .as_mut()
            .and_then(|(t, _)| t.feedback(rtcp_ssrc, media_ssrc))
    }

    /// Finds the track and layer a packet belongs to: by SSRC, else by its MID extension (and
    /// RID for a simulcast track), else by payload type.
    pub fn find_track(&self, buf: &[u8], view: &RtpView) -> Option<(usize, usize)> {
        for (i, t) in self.tracks.iter().enumerate() {
            if let Some(l) = t.layers.iter().position(|l| l.ssrc == Some(view.ssrc)) {
                return Some((i, l));
            }
        }
        let ext = |id: Option<u8>| {
            let id = id?;
            view.extensions(buf).find(|(i, _)| *i == id).map(|(_, d)| d)
        };
        // A new SSRC may only take a layer that has none yet, in the track's payload type.
        let free = |t: &PubTrack, l: usize| {
            t.layers[l].ssrc.is_none() && t.spec.payload_type == view.payload_type
        };
        for (i, t) in self.tracks.iter().enumerate() {
            if ext(t.spec.ext.id(ExtKind::Mid)).is_some_and(|m| m == t.spec.mid.as_bytes()) {
                if t.spec.rids.is_empty() {
                    return free(t, 0).then_some((i, 0));
                }
                let rid = ext(t.spec.ext.id(ExtKind::RtpStreamId))?;
                let l = t
                    .layers
                    .iter()
                    .position(|l| l.rid.as_deref().map(str::as_bytes) == Some(rid))?;
                return free(t, l).then_some((i, l));
            }
        }
        // Without MID, only a track without simulcast can be told by its payload type.
        self.tracks
            .iter()
            .position(|t| t.spec.rids.is_empty() && free(t, 0))
            .map(|i| (i, 0))
    }
}

/// Bytes received over the last second or so.
#[derive(Default)]
pub(super) struct RateMeter {
    start: Option<Instant>,
    bytes: u64,
    bps: u64,
    last: Option<Instant>,
}

impl RateMeter {
    pub fn on_bytes(&mut self, now: Instant, n: usize) {
        let start = *self.start.get_or_insert(now);
        self.bytes += n as u64;
        self.last = Some(now);
        let span = now.saturating_duration_since(start);
        if span >= Duration::from_secs(1) {
            self.bps = (self.bytes as f64 * 8.0 / span.as_secs_f64()) as u64;
            self.bytes = 0;
            self.start = Some(now);
        }
    }

    /// The last full second's rate; 0 once the track has been silent for two seconds.
    pub fn bps(&self, now: Instant) -> u64 {
        match self.last {
            Some(l) if now.saturating_duration_since(l) < Duration::from_secs(2) => self.bps,
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::simulcast_track;

    /// Layers rank by picture size where every size is known, else by rate; no layer costs
    /// less than the one below it.
    #[test]
    fn demand_ranks_layers_and_never_makes_a_higher_one_cheaper() {
        // (pixels per slot, rate per slot) -> (slots lowest first, rates in that order)
        type Case = ([u32; 3], [u64; 3], [usize; 3], [u64; 3]);
        let cases: [Case; 4] = [
            // Sizes known: by size.
            ([4, 2, 1], [900, 400, 150], [2, 1, 0], [150, 400, 900]),
            // The top layer starting again: ranked by its size, costed as the one below.
            ([1, 2, 4], [150, 400, 60], [0, 1, 2], [150, 400, 400]),
            // A size unknown: by rate.
            ([1, 0, 4], [150, 400, 900], [0, 1, 2], [150, 400, 900]),
            ([0, 0, 0], [900, 150, 400], [1, 2, 0], [150, 400, 900]),
        ];
        for (i, (pixels, rates, slots, want)) in cases.into_iter().enumerate() {
            let mut t = PubTrack::new(simulcast_track(&["a", "b", "c"]));
            for (l, px) in t.layers.iter_mut().zip(pixels) {
                l.pixels = px;
            }
            let rate = |l: &Layer| {
                let slot = t.layers.iter().position(|x| std::ptr::eq(x, l)).unwrap();
                rates[slot]
            };
            let (d, ranked) = t.demand(rate, 0, Some(2)).unwrap();
            assert_eq!(d.n_layers, 3, "case {i}");
            assert_eq!(ranked[..3], slots, "case {i}");
            assert_eq!(d.layers[..3], want, "case {i}");
            assert_eq!(d.on, slots.iter().position(|&s| s == 2), "case {i}");
        }
    }
}
