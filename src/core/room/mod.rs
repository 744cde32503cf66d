//! Rooms, publishers, viewers and the tracks between them: the sans-IO heart of the relay.
//!
//! The caller (a transport) feeds decrypted RTP and RTCP in with `handle_*`, calls
//! [`Relay::handle_timeout`] when [`Relay::poll_timeout`] says, and receives everything to send
//! through a [`Sink`]: rewritten RTP headers with the shared payload, and RTCP, per session.
//! Nothing here reads a clock or touches a socket.

pub mod alloc;
mod pacer;
mod resend;
mod stats;
mod svc;
pub mod twcc_rx;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::core::audio::OpusTranscoder;
use crate::core::bwe::{BandwidthEstimator, BweConfig};
use crate::core::cache::RetransmitCache;
use crate::core::forward::{Decision, DropReason, Forwarder, SvcLayers};
use crate::core::rtcp::twcc::{self, PacketResult};
use crate::core::rtcp::{self, Compound, Pli, ReceiverReport, Remb, RtcpPacket, SenderReport};
use crate::core::rtp::codec::vp8;
use crate::core::rtp::{write_header, Codec, ExtKind, ExtMap, ExtTranslation, Rewrite, RtpView};
pub use stats::ReceiveStats;

/// A transport session (one WebRTC peer connection), publisher or viewer.
pub type SessionId = u64;

/// Receives what the relay wants sent. Plain RTP/RTCP: the transport encrypts.
pub trait Sink {
    /// One forwarded packet: `header` is already rewritten; the payload is `prefix` (the start
    /// of the payload rewritten for this viewer, such as a VP8 descriptor; usually empty)
    /// followed by `payload`, the publisher's, shared.
    fn rtp(&mut self, to: SessionId, header: &[u8], prefix: &[u8], payload: &[u8]);
    fn rtcp(&mut self, to: SessionId, packet: &[u8]);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaKind {
    Audio,
    Video,
}

/// RTCP feedback the peer negotiated for an m-line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Feedback {
    pub nack: bool,
    pub pli: bool,
    pub fir: bool,
    pub remb: bool,
}

/// A track a publisher sends, as negotiated.
#[derive(Debug, Clone)]
pub struct TrackSpec {
    pub kind: MediaKind,
    pub mid: String,
    pub codec: Codec,
    pub payload_type: u8,
    pub clock_rate: u32,
    /// From the offer's `a=ssrc`, when it has one; otherwise learned from the first packet.
    pub ssrc: Option<u32>,
    pub ext: ExtMap,
    pub feedback: Feedback,
    /// Simulcast layers by RID (RFC 8851/8853), in the offer's order; empty for one layer.
    /// Which is the better layer is learned from what each carries, not from the order.
    pub rids: Vec<String>,
}

/// One track of one publisher.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TrackRef {
    pub publisher: SessionId,
    /// Index into the publisher's tracks.
    pub track: usize,
}

/// A viewer's copy of one publisher track, as negotiated with the viewer.
#[derive(Debug, Clone)]
pub struct ViewerTrackSpec {
    pub source: TrackRef,
    pub mid: String,
    pub ssrc: u32,
    pub payload_type: u8,
    pub ext: ExtMap,
    pub initial_seq: u16,
    pub initial_ts: u32,
    /// The retransmission stream (RFC 4588), when the viewer negotiated one: resends and probes
    /// go there, each with a sequence number of its own.
    pub rtx: Option<Rtx>,
    /// The RED payload type (RFC 2198), when the viewer negotiated audio/red for this audio:
    /// while its link loses packets, each packet also carries the previous frame.
    pub red: Option<u8>,
}

/// A viewer track's RTX stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rtx {
    pub payload_type: u8,
    pub ssrc: u32,
}

#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Shortest gap between two keyframe requests sent to one publisher track.
    pub keyframe_request_interval: Duration,
    /// Interval of receiver reports and bitrate caps sent to publishers.
    pub report_interval: Duration,
    /// Bitrate cap announced to video publishers (REMB).
    pub publisher_max_bitrate_bps: u64,
    /// How often each room's active speaker is re-evaluated.
    pub speaker_interval: Duration,
    /// Pause a viewer's video when its bandwidth estimate cannot carry it (audio only), for
    /// viewers that can be probed (transport-cc and RTX: without probes a paused viewer's
    /// estimate has nothing to grow on).
    pub pause_video: bool,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            keyframe_request_interval: Duration::from_millis(500),
            report_interval: Duration::from_secs(1),
            publisher_max_bitrate_bps: 2_500_000,
            speaker_interval: Duration::from_millis(300),
            pause_video: true,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RelayCounters {
    pub forwarded_packets: u64,
    /// Packets resent to viewers from the retransmit cache.
    pub retransmitted_packets: u64,
    pub forwarded_bytes: u64,
    pub dropped_packets: u64,
    pub keyframe_requests: u64,
    /// Times a viewer's video track was paused because its estimate could not carry it.
    pub paused_tracks: u64,
    /// Probe clusters sent to find room above a viewer's estimate.
    pub probes: u64,
    /// Audio packets sent as RED (RFC 2198) with the previous frame, to viewers losing packets.
    pub red_packets: u64,
    /// Audio packets sent re-encoded at a low bitrate, to viewers whose links need it.
    pub transcoded_packets: u64,
    /// Video packets sent to starting viewers from the key-frame cache.
    pub replayed_packets: u64,
    /// Resends a viewer's NACK asked for beyond its resend budget (see `resend`).
    pub resends_refused: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RoomError {
    #[error("session {0} already exists")]
    Exists(SessionId),
    #[error("no such publisher")]
    NoPublisher,
    #[error("no such room")]
    NoRoom,
    #[error("viewer track refers to a missing publisher track")]
    BadSource,
    #[error("no such viewer")]
    NoViewer,
}

struct PubTrack {
    spec: TrackSpec,
    /// One per simulcast encoding; one for a track without simulcast.
    layers: Vec<Layer>,
    /// The layers the publisher was last told to send (a bit per layer).
    active: u8,
    viewers: Vec<(SessionId, usize)>,
    /// Smoothed loudness from the audio-level extension (127 - dBov; louder is larger).
    loudness: f32,
    /// Re-encodes this (Opus) track at a low bitrate while some viewer needs it.
    transcoder: Option<Box<OpusTranscoder>>,
    /// Rates per spatial and temporal layer, for VP9 and AV1 (whose streams may carry several).
    svc: Option<Box<svc::SvcRates>>,
    /// AV1 with the dependency descriptor: its structure, and the extension id.
    dd: Option<(Box<svc::DdState>, u8)>,
    /// A presentation (screen share): its video goes before cameras'.
    slides: bool,
}

/// One RTP stream of a publisher track: the track itself, or one of its simulcast layers.
struct Layer {
    rid: Option<String>,
    ssrc: Option<u32>,
    stats: ReceiveStats,
    last_keyframe_request: Option<Instant>,
    /// A keyframe request waiting for the rate limit or for the layer's SSRC.
    keyframe_due: Option<Instant>,
    fir_seq: u8,
    cache: RetransmitCache,
    /// What the publisher sends on it: the allocator's measure of what a viewer needs for it.
    rate: RateMeter,
    /// Highest sequence number received, to find the newest cached packets (for probes).
    last_seq: Option<u16>,
    /// Picture size of its last key frame, where the codec tells (VP8): ranks layers.
    pixels: u32,
    /// Its rate when it was last sent: what it would need if the publisher sent it again.
    known_bps: u64,
    /// Since when no viewer has wanted it (while the publisher was told to send it).
    unneeded_since: Option<Instant>,
    /// The first packet of its last key frame, when it arrived, and its timestamp: a viewer
    /// starting on the layer is sent what followed it from the cache, instead of asking the
    /// publisher.
    key_start: Option<(u16, Instant, u32)>,
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
}

impl PubTrack {
    /// The layers with a rate (by `rate`: what they send now, or what they sent when last
    /// active), lowest quality first (by key-frame size where known, then by rate), at most
    /// [`alloc::MAX_LAYERS`]; returns how many.
    fn ranked(&self, rate: impl Fn(&Layer) -> u64, out: &mut [usize; alloc::MAX_LAYERS]) -> usize {
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
    fn demand(
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
        for (k, &slot) in ranked[..n_layers].iter().enumerate() {
            d.layers[k] = rate(&self.layers[slot]);
        }
        d.n_layers = n_layers;
        d.on = target.and_then(|t| ranked[..n_layers].iter().position(|&s| s == usize::from(t)));
        Some((d, ranked))
    }
}

struct Publisher {
    room: String,
    rtcp_ssrc: u32,
    tracks: Vec<PubTrack>,
    next_report: Option<Instant>,
    /// Transport-cc feedback to send, and the extension id it reads, when the publisher
    /// negotiated it (one id for the whole bundle).
    twcc: Option<(twcc_rx::TwccReceiver, u8)>,
}

struct ViewerTrack {
    spec: ViewerTrackSpec,
    fwd: Forwarder,
    /// (viewer sequence number, transport-wide number) of recent packets, by sequence number
    /// modulo its length; empty without transport-cc. A resend must be the same bytes as the
    /// original: the same SRTP index protecting a different header would reuse an AES-GCM nonce.
    sent_transport_seq: Vec<(u16, u16)>,
    /// False once the track was removed or its publisher left; the slot keeps indices stable.
    live: bool,
    /// Next sequence number on the RTX stream (a `Cell`: resends are made while the viewer's
    /// tracks are being looked through).
    rtx_seq: std::cell::Cell<u16>,
    /// Which packets were resent lately, and how often.
    resends: resend::ResendLog,
    /// Since when the allocator has found no room for this track (see `PAUSE_AFTER`).
    short_since: Option<Instant>,
    /// Shown large by the viewer (pinned): its video goes first.
    pinned: bool,
    /// Audio re-encoded at [`LOW_AUDIO_BPS`] for this viewer (its link cannot carry more), and
    /// whether it ever was (what went out then cannot be made again for a resend).
    low_audio: bool,
    ever_low: bool,
}

impl ViewerTrack {
    /// How a packet of the source track is translated for this viewer track.
    fn translation<'a>(
        &'a self,
        from: &'a ExtMap,
        transport_seq: Option<u16>,
    ) -> ExtTranslation<'a> {
        ExtTranslation {
            from,
            to: &self.spec.ext,
            mid: self.spec.mid.as_bytes(),
            transport_seq,
        }
    }

    fn next_rtx_seq(&self) -> u16 {
        let s = self.rtx_seq.get();
        self.rtx_seq.set(s.wrapping_add(1));
        s
    }
}

struct Viewer {
    room: String,
    tracks: Vec<ViewerTrack>,
    cc: ViewerCc,
    probe_out: Option<ProbeOut>,
    /// Audio goes as RED (where negotiated) until then: set while the link loses packets.
    red_until: Option<Instant>,
    /// Its video, waiting to leave at the pacing rate.
    pacer: pacer::Pacer,
}

impl Viewer {
    /// The rate its video leaves at, a margin above its estimate; `None` (not paced) while
    /// nothing tells about its link.
    fn pacing_rate(&self) -> Option<u64> {
        self.cc
            .has_signal()
            .then(|| (self.cc.bwe.estimate_bps() as f64 * PACING_FACTOR) as u64)
    }

    /// Queues a packet and sends what is due; returns when more will be.
    fn enqueue(
        &mut self,
        now: Instant,
        vid: SessionId,
        q: pacer::Queued,
        sink: &mut impl Sink,
    ) -> Option<Instant> {
        if let Some(mut oldest) = self.pacer.push(q) {
            self.send_queued(now, vid, &mut oldest, sink);
        }
        self.pace(now, vid, sink)
    }

    /// Sends everything queued, now.
    fn flush(&mut self, now: Instant, vid: SessionId, sink: &mut impl Sink) {
        while let Some(mut q) = self.pacer.force_front() {
            self.send_queued(now, vid, &mut q, sink);
        }
    }

    /// Sends the queued video that is due; returns when more will be.
    fn pace(&mut self, now: Instant, vid: SessionId, sink: &mut impl Sink) -> Option<Instant> {
        // Without a rate (the signal went away), what waits goes at once.
        let rate = self.pacing_rate().unwrap_or(u64::MAX / 2);
        while let Some(mut q) = self.pacer.pop(now, rate) {
            self.send_queued(now, vid, &mut q, sink);
        }
        self.pacer.next_due(rate)
    }

    /// One queued packet out, with the next transport-wide number written into its header
    /// (dropped if its track was removed meanwhile).
    fn send_queued(
        &mut self,
        now: Instant,
        vid: SessionId,
        q: &mut pacer::Queued,
        sink: &mut impl Sink,
    ) {
        if !self.tracks.get(q.track).is_some_and(|t| t.live) {
            return;
        }
        let transport_seq = q.transport_seq_at.map(|at| {
            let seq = self.cc.next_seq;
            self.cc.next_seq = seq.wrapping_add(1);
            q.header[at..at + 2].copy_from_slice(&seq.to_be_bytes());
            seq
        });
        let payload = &q.packet[q.payload.0..q.payload.1];
        sink.rtp(
            vid,
            &q.header[..q.header_len],
            &q.prefix[..q.prefix_len],
            payload,
        );
        if let (Some(t), Some(vt)) = (transport_seq, self.tracks.get_mut(q.track)) {
            if let Some(slot) = vt
                .sent_transport_seq
                .get_mut(usize::from(q.sequence) % SENT_TRANSPORT_SEQ)
            {
                *slot = (q.sequence, t);
            }
        }
        self.cc.sent(now, transport_seq, q.len());
    }
}

/// The parts of the relay that queueing a packet in a viewer's pacer uses (borrowed apart from
/// the viewers and publishers the caller holds).
struct Pacing<'a> {
    header: &'a mut [u8; 512],
    prefix: &'a mut [u8; 16],
    counters: &'a mut RelayCounters,
    next_pace: &'a mut Option<Instant>,
    pacing: &'a mut Vec<SessionId>,
}

impl Pacing<'_> {
    /// Queues a forwarded video packet for track `index` of viewer `vid`; returns false where it
    /// cannot wait, after sending what waits (so one stream stays in order): the caller then
    /// sends it at once.
    #[allow(clippy::too_many_arguments)]
    fn queue(
        &mut self,
        now: Instant,
        (vid, v, index): (SessionId, &mut Viewer, usize),
        from: &ExtMap,
        packet: &Bytes,
        view: &RtpView,
        rw: &Rewrite,
        sink: &mut impl Sink,
    ) -> bool {
        let hp = (&mut *self.header, &mut *self.prefix);
        let Some(q) = queue_entry(now, index, &v.tracks[index], from, packet, view, rw, hp) else {
            v.flush(now, vid, sink);
            return false;
        };
        self.counters.forwarded_packets += 1;
        self.counters.forwarded_bytes += q.len() as u64;
        if let Some(due) = v.enqueue(now, vid, q, sink) {
            *self.next_pace = Some(self.next_pace.map_or(due, |n| n.min(due)));
            if !self.pacing.contains(&vid) {
                self.pacing.push(vid);
            }
        }
        true
    }
}

/// Video is paced at this multiple of the viewer's estimate (as GCC senders do): bursts are
/// spread out, and the estimate can still be exceeded enough to be tested.
const PACING_FACTOR: f64 = 2.5;

/// Congestion control of one viewer's transport: transport-wide sequence numbers on what it is
/// sent, and the estimate its feedback (or REMB) gives.
struct ViewerCc {
    next_seq: u16,
    bwe: BandwidthEstimator,
    /// Reused for parsing feedback.
    results: Vec<PacketResult>,
    /// Resend bytes against media bytes.
    budget: resend::ResendBudget,
}

impl ViewerCc {
    fn new() -> Self {
        ViewerCc {
            next_seq: 1,
            bwe: BandwidthEstimator::new(BweConfig::default()),
            results: Vec::with_capacity(256),
            budget: resend::ResendBudget::default(),
        }
    }

    /// The next transport-wide sequence number, when the track negotiated the extension.
    fn take_seq(&mut self, ext: &ExtMap) -> Option<u16> {
        ext.id(ExtKind::TransportWideCc)?;
        let s = self.next_seq;
        self.next_seq = s.wrapping_add(1);
        Some(s)
    }

    /// Whether anything tells about this viewer's link: transport-cc feedback or REMB.
    fn has_signal(&self) -> bool {
        self.bwe.last_feedback().is_some() || self.bwe.has_remb()
    }

    /// Media sent (it counts towards the resend budget).
    fn sent(&mut self, now: Instant, seq: Option<u16>, bytes: usize) {
        self.budget.on_sent(now, bytes);
        self.resent(now, seq, bytes);
    }

    /// A resend sent (its budget was taken with `budget.try_resend`).
    fn resent(&mut self, now: Instant, seq: Option<u16>, bytes: usize) {
        if let Some(seq) = seq {
            // SRTP adds its tag on the wire; the estimate counts what the path carries.
            self.bwe.on_sent(now, seq, bytes + SRTP_OVERHEAD, None);
        }
    }
}

/// Bytes SRTP adds to each packet (the AES-GCM tag; HMAC-SHA1-80 adds 10).
const SRTP_OVERHEAD: usize = 16;
/// A probe cluster being sent, paced over its duration.
struct ProbeOut {
    cluster: crate::core::bwe::ProbeCluster,
    left: u32,
    next_at: Instant,
    gap: Duration,
}

impl ProbeOut {
    fn new(now: Instant, cluster: crate::core::bwe::ProbeCluster) -> Self {
        ProbeOut {
            cluster,
            left: cluster.packets,
            next_at: now,
            gap: cluster.duration / cluster.packets.max(1),
        }
    }
}

/// Sends the packets of a viewer's probe cluster that are due, on a viewer track's RTX stream:
/// padding-only packets (RFC 3550 §5.1, as RTX senders pad), each with a transport-wide number,
/// so the feedback times them; the receiver's RTX stream discards them. Folds the time its next
/// packet is due into `next_probe`.
#[allow(clippy::too_many_arguments)]
fn send_probe(
    now: Instant,
    vid: SessionId,
    v: &mut Viewer,
    publishers: &HashMap<SessionId, Publisher>,
    header: &mut [u8; 512],
    body: &mut [u8; 1500],
    next_probe: &mut Option<Instant>,
    sink: &mut impl Sink,
) {
    send_probe_packets(now, vid, v, publishers, header, body, sink);
    if let Some(o) = &v.probe_out {
        *next_probe = Some(next_probe.map_or(o.next_at, |n| n.min(o.next_at)));
    }
}

fn send_probe_packets(
    now: Instant,
    vid: SessionId,
    v: &mut Viewer,
    publishers: &HashMap<SessionId, Publisher>,
    header: &mut [u8; 512],
    body: &mut [u8; 1500],
    sink: &mut impl Sink,
) {
    let Viewer {
        tracks,
        cc,
        probe_out,
        ..
    } = v;
    let Some(out) = probe_out.as_mut().filter(|o| o.next_at <= now) else {
        return;
    };
    // The padding that makes up the rest of the probe packet size.
    let pad = crate::core::bwe::PROBE_PACKET_BYTES
        .saturating_sub(40)
        .clamp(1, 255);
    // A track with an RTX stream and a packet to take the header extensions from (video first).
    let pick = tracks
        .iter()
        .filter(|t| t.live && !t.sent_transport_seq.is_empty())
        .filter_map(|t| {
            let rtx = t.spec.rtx?;
            let p = publishers.get(&t.spec.source.publisher)?;
            let src = &p.tracks[t.spec.source.track];
            // Any recent packet of the source serves as the template, also while paused.
            let (pkt, view) = src
                .layers
                .iter()
                .find_map(|l| l.cache.get(now, l.last_seq?))?;
            Some((t, rtx, src, pkt, view))
        })
        .max_by_key(|(_, _, src, ..)| src.spec.kind == MediaKind::Video);
    let Some((vt, rtx, src, pkt, view)) = pick else {
        *probe_out = None;
        return;
    };
    body[..pad].fill(0);
    body[pad - 1] = pad as u8;
    while out.left > 0 && out.next_at <= now {
        out.left -= 1;
        out.next_at += out.gap;
        let rw = Rewrite {
            ssrc: rtx.ssrc,
            sequence: vt.next_rtx_seq(),
            timestamp: vt.fwd.timestamp_now(view.timestamp),
            payload_type: rtx.payload_type,
            marker: false,
        };
        let transport_seq = cc.take_seq(&vt.spec.ext);
        let ext = vt.translation(&src.spec.ext, transport_seq);
        let Ok(n) = write_header(header, pkt, view, &rw, ext) else {
            break;
        };
        header[0] |= 0x20;
        sink.rtp(vid, &header[..n], &[], &body[..pad]);
        if let Some(t) = transport_seq {
            cc.bwe
                .on_sent(now, t, n + pad + SRTP_OVERHEAD, Some(out.cluster.id));
        }
    }
    if out.left == 0 {
        *probe_out = None;
    }
}

/// Packets whose transport-wide numbers a viewer track remembers for resends (more than the
/// retransmit cache holds).
const SENT_TRANSPORT_SEQ: usize = 1024;

/// Sequence numbers one NACK passes on to the publisher, at most.
const MAX_UPSTREAM_NACKS: usize = 64;

/// Transport-cc messages read from one RTCP compound packet (each yields at most
/// [`twcc::MAX_RESULTS`] results).
const MAX_TWCC_PER_COMPOUND: usize = 2;

/// How long arrivals wait before transport-cc feedback reports them to the publisher.
const TWCC_FEEDBACK_INTERVAL: Duration = Duration::from_millis(50);

/// The largest packet volna makes itself (RED): well under a path MTU, SRTP's tag included.
const MAX_PACKET: usize = 1200;

/// Loss on a viewer's link from which its audio goes as RED (where negotiated), and how long
/// that lasts after the last such loss.
const RED_LOSS: f64 = 0.01;
const RED_HOLD: Duration = Duration::from_secs(10);

/// The bitrate audio is re-encoded at for viewers whose links cannot carry the original.
const LOW_AUDIO_BPS: u64 = 12_000;

/// How long a simulcast layer must go unneeded before its publisher is told it may stop it.
const LAYER_OFF_AFTER: Duration = Duration::from_secs(5);

/// How long a running video's lowest layer must not fit before it is paused.
const PAUSE_AFTER: Duration = Duration::from_secs(2);

/// A viewer starting on a layer is sent its last key frame and what followed from the cache when
/// the key frame is at most this old and that many packets back; otherwise the publisher is
/// asked for a new one.
const KEYFRAME_REPLAY_AGE: Duration = Duration::from_millis(1000);
const KEYFRAME_REPLAY_PACKETS: u16 = 256;

/// How often each viewer's estimate is split over its tracks.
const ALLOCATION_INTERVAL: Duration = Duration::from_millis(250);

/// Bytes received over the last second or so.
#[derive(Default)]
struct RateMeter {
    start: Option<Instant>,
    bytes: u64,
    bps: u64,
    last: Option<Instant>,
}

impl RateMeter {
    fn on_bytes(&mut self, now: Instant, n: usize) {
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
    fn bps(&self, now: Instant) -> u64 {
        match self.last {
            Some(l) if now.saturating_duration_since(l) < Duration::from_secs(2) => self.bps,
            _ => 0,
        }
    }
}

struct RoomState {
    /// The room's name, shared with events so emitting one does not allocate.
    name: Arc<str>,
    publishers: Vec<SessionId>,
    speaker: Option<SessionId>,
    /// Who has been loud enough to take over, and since when.
    challenger: Option<(SessionId, Instant)>,
}

impl RoomState {
    fn new(name: &str) -> Self {
        Self {
            name: name.into(),
            publishers: Vec::new(),
            speaker: None,
            challenger: None,
        }
    }
}

/// Something the transport or signalling should know about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayEvent {
    /// The loudest publisher of a room changed (RFC 6464 audio levels); `None` when it left.
    ActiveSpeaker {
        room: Arc<str>,
        publisher: Option<SessionId>,
    },
    /// The simulcast layers of a publisher track that viewers need changed: `active` has a bit
    /// per layer (in the track's RID order). The publisher may stop encoding the others; any of
    /// them may be asked for again.
    Layers {
        publisher: SessionId,
        track: usize,
        active: u8,
    },
}

/// Loudness (127 - dBov) a speaker must exceed: quieter than -60 dBov is background.
const SPEAKING_LOUDNESS: f32 = 67.0;
/// A new speaker must be this much louder than the current one to take over...
const SPEAKER_HYSTERESIS: f32 = 3.0;
/// ...for this long without a break, so two people talking equally loud do not make the
/// highlight flap between them.
const SPEAKER_HOLD: Duration = Duration::from_millis(1000);

/// All rooms of one worker.
pub struct Relay {
    config: RelayConfig,
    rooms: HashMap<String, RoomState>,
    publishers: HashMap<SessionId, Publisher>,
    viewers: HashMap<SessionId, Viewer>,
    header: [u8; 512],
    rtcp: [u8; 1500],
    counters: RelayCounters,
    events: std::collections::VecDeque<RelayEvent>,
    next_speaker_check: Option<Instant>,
    next_allocation: Option<Instant>,
    /// An RTX packet's payload (original sequence number, then the payload) or a probe's padding.
    rtx_body: [u8; 1500],
    /// A rewritten VP8 payload descriptor, sent ahead of the rest of the shared payload.
    prefix: [u8; 16],
    /// RED headers and the redundant frame, sent ahead of the shared primary frame.
    red: [u8; MAX_PACKET],
    /// Origin of the arrival times in transport-cc feedback to publishers.
    epoch: Option<Instant>,
    next_twcc_feedback: Option<Instant>,
    /// When the next packet of a probe cluster is due (the earliest over viewers).
    next_probe: Option<Instant>,
    /// Source layers to ask for a key frame after an allocation round (reused).
    resumed: Vec<(TrackRef, u8)>,
    /// Viewer tracks (viewer, index, source, layer) a round found waiting for a key frame to
    /// start on: sent from the cache where it can, else asked for in `resumed`.
    starting: Vec<(SessionId, usize, TrackRef, u8)>,
    /// Viewers with video waiting in their pacers, and when the first of it is due.
    pacing: Vec<SessionId>,
    next_pace: Option<Instant>,
    /// Per source track, the layers (bit per slot) some viewer would take (reused).
    wanted: Vec<(TrackRef, u8)>,
    /// Publisher tracks with simulcast layers.
    simulcast_tracks: usize,
    /// Audio tracks some viewer gets re-encoded at a low bitrate (reused).
    low_sources: Vec<TrackRef>,
}

impl Relay {
    pub fn new(config: RelayConfig) -> Self {
        Self {
            config,
            rooms: HashMap::new(),
            publishers: HashMap::new(),
            viewers: HashMap::new(),
            header: [0; 512],
            rtcp: [0; 1500],
            counters: RelayCounters::default(),
            // Room for a burst of events, so emitting one on the packet path does not allocate.
            events: std::collections::VecDeque::with_capacity(64),
            next_speaker_check: None,
            next_allocation: None,
            rtx_body: [0; 1500],
            prefix: [0; 16],
            red: [0; MAX_PACKET],
            epoch: None,
            next_twcc_feedback: None,
            next_probe: None,
            resumed: Vec::new(),
            starting: Vec::with_capacity(64),
            pacing: Vec::with_capacity(64),
            next_pace: None,
            wanted: Vec::new(),
            simulcast_tracks: 0,
            low_sources: Vec::new(),
        }
    }

    pub fn counters(&self) -> &RelayCounters {
        &self.counters
    }

    pub fn room_count(&self) -> usize {
        self.rooms.len()
    }

    /// A viewer's bandwidth estimate in bps, and whether transport-cc feedback has shaped it.
    pub fn viewer_estimate(&self, id: SessionId) -> Option<(u64, bool)> {
        let v = self.viewers.get(&id)?;
        Some((v.cc.bwe.estimate_bps(), v.cc.bwe.last_feedback().is_some()))
    }

    pub fn publisher_count(&self) -> usize {
        self.publishers.len()
    }

    pub fn viewer_count(&self) -> usize {
        self.viewers.len()
    }

    /// Publishers of a room, oldest first.
    pub fn room_publishers(&self, room: &str) -> Option<&[SessionId]> {
        self.rooms.get(room).map(|r| r.publishers.as_slice())
    }

    pub fn publisher_tracks(&self, id: SessionId) -> Option<impl Iterator<Item = &TrackSpec>> {
        self.publishers
            .get(&id)
            .map(|p| p.tracks.iter().map(|t| &t.spec))
    }

    pub fn add_publisher(
        &mut self,
        id: SessionId,
        room: &str,
        rtcp_ssrc: u32,
        tracks: Vec<TrackSpec>,
    ) -> Result<(), RoomError> {
        if self.publishers.contains_key(&id) || self.viewers.contains_key(&id) {
            return Err(RoomError::Exists(id));
        }
        let tracks = tracks
            .into_iter()
            .map(|spec| {
                let layers = if spec.rids.is_empty() {
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
                    spec,
                }
            })
            .collect::<Vec<PubTrack>>();
        self.simulcast_tracks += tracks.iter().filter(|t| t.layers.len() > 1).count();
        let twcc = tracks
            .iter()
            .find_map(|t| t.spec.ext.id(ExtKind::TransportWideCc))
            .map(|id| (twcc_rx::TwccReceiver::new(), id));
        self.publishers.insert(
            id,
            Publisher {
                room: room.to_owned(),
                rtcp_ssrc,
                tracks,
                next_report: None,
                twcc,
            },
        );
        self.rooms
            .entry(room.to_owned())
            .or_insert_with(|| RoomState::new(room))
            .publishers
            .push(id);
        Ok(())
    }

    /// Adds a viewer (a session that receives) to a room, with no tracks yet.
    pub fn add_viewer(&mut self, id: SessionId, room: &str) -> Result<(), RoomError> {
        if self.publishers.contains_key(&id) || self.viewers.contains_key(&id) {
            return Err(RoomError::Exists(id));
        }
        self.rooms
            .entry(room.to_owned())
            .or_insert_with(|| RoomState::new(room));
        self.viewers.insert(
            id,
            Viewer {
                room: room.to_owned(),
                tracks: Vec::new(),
                cc: ViewerCc::new(),
                probe_out: None,
                red_until: None,
                pacer: pacer::Pacer::new(),
            },
        );
        Ok(())
    }

    /// Starts forwarding a publisher track to a viewer; returns the viewer track's index.
    /// Video asks the publisher for a keyframe at once (rate-limited per publisher track).
    pub fn add_viewer_track(
        &mut self,
        now: Instant,
        viewer: SessionId,
        spec: ViewerTrackSpec,
        sink: &mut impl Sink,
    ) -> Result<usize, RoomError> {
        let v = self.viewers.get_mut(&viewer).ok_or(RoomError::NoViewer)?;
        let p = self
            .publishers
            .get_mut(&spec.source.publisher)
            .ok_or(RoomError::NoPublisher)?;
        let src = p
            .tracks
            .get_mut(spec.source.track)
            .ok_or(RoomError::BadSource)?;
        let index = v.tracks.len();
        src.viewers.push((viewer, index));
        let fwd = Forwarder::new(
            src.spec.codec,
            src.spec.clock_rate,
            spec.ssrc,
            spec.payload_type,
            spec.initial_seq,
            spec.initial_ts,
        );
        let source = spec.source;
        let sent_transport_seq = if spec.ext.id(ExtKind::TransportWideCc).is_some() {
            vec![(0, 0); SENT_TRANSPORT_SEQ]
        } else {
            Vec::new()
        };
        // Any start will do; away from the media numbering makes captures easier to read.
        let rtx_seq = std::cell::Cell::new(spec.initial_seq ^ 0x8000);
        v.tracks.push(ViewerTrack {
            spec,
            fwd,
            sent_transport_seq,
            live: true,
            rtx_seq,
            resends: resend::ResendLog::default(),
            short_since: None,
            pinned: false,
            low_audio: false,
            ever_low: false,
        });
        if !self.replay_keyframe(now, viewer, index, sink) {
            self.request_keyframe(now, source.publisher, source.track, 0, sink);
        }
        Ok(index)
    }

    /// Starts a viewer track that waits for a key frame from the cache: the layer's last key
    /// frame and every packet since, sent now, so the publisher need not make another. Only
    /// where the key frame came after what the viewer was last sent (its timestamps go on from
    /// there), is recent, and every packet since is at hand. Returns whether it did.
    fn replay_keyframe(
        &mut self,
        now: Instant,
        viewer: SessionId,
        index: usize,
        sink: &mut impl Sink,
    ) -> bool {
        let Some(v) = self.viewers.get_mut(&viewer) else {
            return false;
        };
        let Some(vt) = v.tracks.get_mut(index).filter(|t| t.live) else {
            return false;
        };
        let Some(slot) = vt.fwd.target().filter(|&t| vt.fwd.current() != Some(t)) else {
            return false;
        };
        let Some(src) = self
            .publishers
            .get(&vt.spec.source.publisher)
            .and_then(|p| p.tracks.get(vt.spec.source.track))
        else {
            return false;
        };
        // (AV1 frames' layers are in descriptors not kept with the packets.)
        let Some(layer) = src
            .layers
            .get(usize::from(slot))
            .filter(|_| src.dd.is_none())
        else {
            return false;
        };
        let (Some((first, key_at, _)), Some(last)) = (layer.key_start, layer.last_seq) else {
            return false;
        };
        let count = last.wrapping_sub(first).wrapping_add(1);
        if now.saturating_duration_since(key_at) > KEYFRAME_REPLAY_AGE
            || count > KEYFRAME_REPLAY_PACKETS
            || vt.fwd.last_sent_at().is_some_and(|at| at >= key_at)
        {
            return false;
        }
        let mut bytes = 0usize;
        for k in 0..count {
            match layer.cache.get(now, first.wrapping_add(k)) {
                Some((pkt, _)) => bytes += pkt.len(),
                None => return false,
            }
        }
        // No more than the pacer spreads within its longest wait: a bigger burst would overrun
        // the viewer's link, and a fresh key frame from the publisher costs less.
        let paced = v.cc.has_signal();
        if let Some(rate) = v.pacing_rate() {
            if bytes as f64 * 8.0 > rate as f64 * pacer::MAX_QUEUE_DELAY.as_secs_f64() {
                return false;
            }
        }
        for k in 0..count {
            let Some((pkt, view)) = layer.cache.get(now, first.wrapping_add(k)) else {
                continue;
            };
            let vt = &mut v.tracks[index];
            // Decided as of the key frame's arrival, so timestamps count from then.
            let Decision::Forward(rw) = vt.fwd.decide(key_at, slot, view, view.payload(pkt)) else {
                continue;
            };
            self.counters.replayed_packets += 1;
            // Up to a second of video at once: it leaves at the viewer's pace.
            let mut pacing = Pacing {
                header: &mut self.header,
                prefix: &mut self.prefix,
                counters: &mut self.counters,
                next_pace: &mut self.next_pace,
                pacing: &mut self.pacing,
            };
            if paced && pacing.queue(now, (viewer, v, index), &src.spec.ext, pkt, view, &rw, sink) {
                continue;
            }
            let vt = &mut v.tracks[index];
            let transport_seq = v.cc.take_seq(&vt.spec.ext);
            let ext = vt.translation(&src.spec.ext, transport_seq);
            let Ok(n) = write_header(&mut self.header, pkt, view, &rw, ext) else {
                continue;
            };
            let (prefix, payload) = payload_prefix(&vt.fwd, view.payload(pkt), &mut self.prefix);
            sink.rtp(viewer, &self.header[..n], prefix, payload);
            let len = n + prefix.len() + payload.len();
            if let Some(t) = transport_seq {
                vt.sent_transport_seq[rw.sequence as usize % SENT_TRANSPORT_SEQ] = (rw.sequence, t);
            }
            v.cc.sent(now, transport_seq, len);
            self.counters.forwarded_packets += 1;
            self.counters.forwarded_bytes += len as u64;
        }
        v.tracks[index].fwd.current() == Some(slot)
    }

    /// Marks a publisher track as a presentation (a screen share, RFC 4796 `a=content:slides`):
    /// its video goes before cameras' when a viewer's link is short.
    pub fn set_slides(&mut self, publisher: SessionId, track: usize, slides: bool) {
        if let Some(t) = self
            .publishers
            .get_mut(&publisher)
            .and_then(|p| p.tracks.get_mut(track))
        {
            t.slides = slides;
        }
    }

    /// Whether a publisher track is a presentation (see [`Relay::set_slides`]).
    pub fn track_is_slides(&self, publisher: SessionId, track: usize) -> bool {
        self.publishers
            .get(&publisher)
            .and_then(|p| p.tracks.get(track))
            .is_some_and(|t| t.slides)
    }

    /// Pins a viewer track (the viewer shows it large): its video goes first when the viewer's
    /// link is short. Returns whether the track exists.
    pub fn set_pinned(&mut self, viewer: SessionId, index: usize, pinned: bool) -> bool {
        let Some(t) = self
            .viewers
            .get_mut(&viewer)
            .and_then(|v| v.tracks.get_mut(index))
        else {
            return false;
        };
        t.pinned = pinned;
        true
    }

    /// Stops forwarding one viewer track (its slot stays, so other indices do not move).
    pub fn remove_viewer_track(&mut self, viewer: SessionId, index: usize) -> bool {
        let Some(t) = self
            .viewers
            .get_mut(&viewer)
            .and_then(|v| v.tracks.get_mut(index))
        else {
            return false;
        };
        let was_live = std::mem::replace(&mut t.live, false);
        if let Some(src) = self
            .publishers
            .get_mut(&t.spec.source.publisher)
            .and_then(|p| p.tracks.get_mut(t.spec.source.track))
        {
            src.viewers.retain(|&(v, i)| (v, i) != (viewer, index));
        }
        was_live
    }

    /// How many of a viewer's tracks still forward.
    pub fn live_viewer_tracks(&self, viewer: SessionId) -> usize {
        self.viewers
            .get(&viewer)
            .map_or(0, |v| v.tracks.iter().filter(|t| t.live).count())
    }

    pub fn remove_viewer(&mut self, id: SessionId) -> bool {
        let Some(v) = self.viewers.remove(&id) else {
            return false;
        };
        for t in v.tracks.iter().filter(|t| t.live) {
            if let Some(src) = self
                .publishers
                .get_mut(&t.spec.source.publisher)
                .and_then(|p| p.tracks.get_mut(t.spec.source.track))
            {
                src.viewers.retain(|(vid, _)| *vid != id);
            }
        }
        self.drop_room_if_empty(&v.room);
        true
    }

    /// Removes a publisher. Each viewer of its tracks gets an RTCP BYE for those streams; the
    /// viewers and the indices of their ended tracks are returned, so the transport can
    /// renegotiate them away or end a viewer left with nothing.
    pub fn remove_publisher(
        &mut self,
        id: SessionId,
        sink: &mut impl Sink,
    ) -> Vec<(SessionId, Vec<usize>)> {
        let Some(p) = self.publishers.remove(&id) else {
            return Vec::new();
        };
        self.simulcast_tracks -= p.tracks.iter().filter(|t| t.layers.len() > 1).count();
        if let Some(r) = self.rooms.get_mut(&p.room) {
            r.publishers.retain(|x| *x != id);
            if r.speaker == Some(id) {
                r.speaker = None;
                self.events.push_back(RelayEvent::ActiveSpeaker {
                    room: r.name.clone(),
                    publisher: None,
                });
            }
        }
        let mut ended: Vec<(SessionId, Vec<usize>)> = Vec::new();
        for &(vid, index) in p.tracks.iter().flat_map(|t| t.viewers.iter()) {
            match ended.iter_mut().find(|(v, _)| *v == vid) {
                Some((_, list)) => list.push(index),
                None => ended.push((vid, vec![index])),
            }
        }
        for (vid, indices) in &mut ended {
            indices.sort_unstable();
            let Some(v) = self.viewers.get_mut(vid) else {
                continue;
            };
            let mut ssrcs = Vec::with_capacity(indices.len());
            for &i in indices.iter() {
                if let Some(t) = v.tracks.get_mut(i) {
                    t.live = false;
                    ssrcs.push(t.fwd.ssrc());
                }
            }
            if let Ok(n) = rtcp::bye::Bye::write(&ssrcs, &mut self.rtcp) {
                sink.rtcp(*vid, &self.rtcp[..n]);
            }
        }
        self.drop_room_if_empty(&p.room);
        ended
    }

    fn drop_room_if_empty(&mut self, room: &str) {
        let has_publishers = self
            .rooms
            .get(room)
            .is_some_and(|r| !r.publishers.is_empty());
        let has_viewers = self.viewers.values().any(|v| v.room == room);
        if !has_publishers && !has_viewers {
            self.rooms.remove(room);
        }
    }

    /// The next event, if any. Poll after each `handle_*` call.
    pub fn poll_event(&mut self) -> Option<RelayEvent> {
        self.events.pop_front()
    }

    /// A room's current active speaker.
    pub fn active_speaker(&self, room: &str) -> Option<SessionId> {
        self.rooms.get(room).and_then(|r| r.speaker)
    }

    /// One decrypted RTP packet from a publisher: forwarded to every viewer of its track, and
    /// kept (shared, not copied) for answering NACKs.
    pub fn handle_rtp(
        &mut self,
        now: Instant,
        from: SessionId,
        packet: &Bytes,
        view: &RtpView,
        sink: &mut impl Sink,
    ) {
        let buf: &[u8] = packet;
        let Some(p) = self.publishers.get_mut(&from) else {
            self.counters.dropped_packets += 1;
            return;
        };
        // Every packet that arrived is reported, whatever becomes of it: the publisher's
        // estimator reads a missing report as a loss.
        if let Some((rx, id)) = p.twcc.as_mut() {
            if let Some((_, &[a, b])) = view.extensions(buf).find(|(i, _)| *i == *id) {
                let epoch = *self.epoch.get_or_insert(now);
                let us = now.saturating_duration_since(epoch).as_micros() as i64;
                rx.on_packet(u16::from_be_bytes([a, b]), us);
                self.next_twcc_feedback
                    .get_or_insert(now + TWCC_FEEDBACK_INTERVAL);
            }
        }
        let Some((ti, li)) = find_track(p, buf, view) else {
            self.counters.dropped_packets += 1;
            return;
        };
        let track = &mut p.tracks[ti];
        if view.payload_end == view.payload_start {
            // Padding only (a publisher probing its uplink): nothing to measure or forward.
            track.layers[li].ssrc = Some(view.ssrc);
            return;
        }
        let layer = &mut track.layers[li];
        layer.ssrc = Some(view.ssrc);
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
        let key = &mut track.layers[li].key_start;
        if newer
            && track.spec.kind == MediaKind::Video
            && key.is_none_or(|k| k.2 != view.timestamp)
            && track.spec.codec.starts_keyframe(payload)
        {
            *key = Some((view.sequence, now, view.timestamp));
        }
        // The layers of an AV1 frame, from its dependency descriptor (read once, for everyone).
        let frame = track.dd.as_mut().and_then(|(dd, id)| {
            let (_, data) = view.extensions(buf).find(|(i, _)| *i == *id)?;
            dd.frame(data, newer)
        });
        if let Some(svc) = track.svc.as_deref_mut() {
            match &frame {
                Some(f) => svc.on_layer(now, f.spatial, f.temporal, buf.len()),
                None if track.spec.codec == Codec::Vp9 => svc.on_vp9(now, payload, buf.len()),
                None => {}
            }
        }
        if track.layers.len() > 1 && track.spec.codec == Codec::Vp8 {
            if let Some(px) = vp8::keyframe_pixels(payload) {
                track.layers[li].pixels = px;
            }
        }
        if let Some(level_id) = track.spec.ext.id(ExtKind::AudioLevel) {
            if let Some((_, data)) = view.extensions(buf).find(|(id, _)| *id == level_id) {
                // RFC 6464: 0 is the loudest, 127 silence, in -dBov.
                let loudness = f32::from(127 - (data.first().copied().unwrap_or(127) & 0x7f));
                track.loudness += (loudness - track.loudness) * 0.2;
            }
        }
        // Once per packet, whatever the number of viewers who get it re-encoded.
        let low = match track.transcoder.as_deref_mut() {
            Some(t) => t.transcode(payload).ok(),
            None => None,
        };
        for &(vid, vti) in &track.viewers {
            let Some(v) = self.viewers.get_mut(&vid) else {
                continue;
            };
            let vt = &mut v.tracks[vti];
            let rw = match vt
                .fwd
                .decide_frame(now, li as u8, view, payload, frame.as_ref())
            {
                Decision::Forward(rw) => rw,
                // Layers the viewer does not follow and paused video are not losses.
                Decision::Drop(
                    DropReason::OtherLayer | DropReason::Paused | DropReason::Thinned,
                ) => continue,
                Decision::Drop(_) => {
                    self.counters.dropped_packets += 1;
                    continue;
                }
            };
            let mut pacing = Pacing {
                header: &mut self.header,
                prefix: &mut self.prefix,
                counters: &mut self.counters,
                next_pace: &mut self.next_pace,
                pacing: &mut self.pacing,
            };
            if track.spec.kind == MediaKind::Video
                && v.cc.has_signal()
                && pacing.queue(now, (vid, v, vti), &track.spec.ext, packet, view, &rw, sink)
            {
                continue;
            }
            let vt = &mut v.tracks[vti];
            let transport_seq = v.cc.take_seq(&vt.spec.ext);
            let ext = vt.translation(&track.spec.ext, transport_seq);
            match write_header(&mut self.header, buf, view, &rw, ext) {
                Ok(n) => {
                    let low = low.filter(|_| vt.low_audio);
                    let red = vt
                        .spec
                        .red
                        .filter(|_| low.is_none() && v.red_until.is_some_and(|t| now < t))
                        .and_then(|red_pt| {
                            let cache = &track.layers[li].cache;
                            let room = MAX_PACKET.checked_sub(n + payload.len())?;
                            let out = &mut self.red[..room];
                            let k = red_prefix(now, cache, view, &vt.fwd, rw.payload_type, out)?;
                            Some((red_pt, k))
                        });
                    let (prefix, payload) = match (low, red) {
                        (Some(low), _) => {
                            self.counters.transcoded_packets += 1;
                            (&[][..], low)
                        }
                        (None, Some((red_pt, k))) => {
                            // The RTP payload type becomes RED's; the marker bit stays.
                            self.header[1] = (self.header[1] & 0x80) | (red_pt & 0x7f);
                            self.counters.red_packets += 1;
                            (&self.red[..k], payload)
                        }
                        (None, None) => payload_prefix(&vt.fwd, payload, &mut self.prefix),
                    };
                    sink.rtp(vid, &self.header[..n], prefix, payload);
                    let len = n + prefix.len() + payload.len();
                    if let Some(t) = transport_seq {
                        let slot = rw.sequence as usize % SENT_TRANSPORT_SEQ;
                        vt.sent_transport_seq[slot] = (rw.sequence, t);
                    }
                    v.cc.sent(now, transport_seq, len);
                    self.counters.forwarded_packets += 1;
                    self.counters.forwarded_bytes += len as u64;
                }
                Err(_) => self.counters.dropped_packets += 1,
            }
        }
    }

    /// A decrypted RTCP compound packet from a publisher.
    pub fn handle_publisher_rtcp(
        &mut self,
        now: Instant,
        from: SessionId,
        buf: &[u8],
        sink: &mut impl Sink,
    ) {
        let Some(p) = self.publishers.get_mut(&from) else {
            return;
        };
        for pkt in Compound::new(buf) {
            let Ok(RtcpPacket::SenderReport(sr)) = pkt else {
                continue;
            };
            let found = p.tracks.iter_mut().find_map(|t| {
                let li = t.layers.iter().position(|l| l.ssrc == Some(sr.ssrc))?;
                Some((t, li))
            });
            let Some((track, li)) = found else {
                continue;
            };
            track.layers[li]
                .stats
                .on_sender_report(now, sr.ntp_middle());
            // Each viewer gets the report in its own SSRC and timestamp space, so its clock
            // mapping (lip sync) and stats stay right.
            for &(vid, vti) in &track.viewers {
                let Some(v) = self.viewers.get(&vid) else {
                    continue;
                };
                let fwd = &v.tracks[vti].fwd;
                let Some(ts) = fwd.viewer_timestamp(li as u8, sr.rtp_timestamp) else {
                    continue;
                };
                let (packets, octets) = fwd.counts();
                let out = SenderReport {
                    ssrc: fwd.ssrc(),
                    ntp: sr.ntp,
                    rtp_timestamp: ts,
                    packets,
                    octets,
                };
                if let Ok(n) = out.write(&mut self.rtcp) {
                    sink.rtcp(vid, &self.rtcp[..n]);
                }
            }
        }
    }

    /// A viewer's path moved (a network change): what was sent meanwhile went to the old
    /// address, so its video starts again from a key frame, asked for now rather than after the
    /// viewer's own request.
    pub fn viewer_moved(&mut self, now: Instant, id: SessionId, sink: &mut impl Sink) {
        let Some(v) = self.viewers.get(&id) else {
            return;
        };
        let wanted: Vec<(TrackRef, u8)> = v
            .tracks
            .iter()
            .filter(|t| t.live)
            .filter_map(|t| Some((t.spec.source, t.fwd.target()?)))
            .collect();
        for (src, layer) in wanted {
            self.request_keyframe(now, src.publisher, src.track, layer, sink);
        }
    }

    /// A decrypted RTCP compound packet from a viewer: keyframe requests and NACKs go upstream.
    pub fn handle_viewer_rtcp(
        &mut self,
        now: Instant,
        from: SessionId,
        buf: &[u8],
        sink: &mut impl Sink,
    ) {
        let Some(Viewer { tracks, cc, .. }) = self.viewers.get_mut(&from) else {
            return;
        };
        let live = |tracks: &[ViewerTrack], ssrc: u32| {
            tracks.iter().position(|t| t.live && t.fwd.ssrc() == ssrc)
        };
        let mut keyframes: Vec<(TrackRef, u8)> = Vec::new();
        let mut feedbacks = 0;
        for pkt in Compound::new(buf) {
            let media = match pkt {
                Ok(RtcpPacket::TransportCc(fb)) => {
                    // Receivers send one per compound; more is work asked for, not news.
                    feedbacks += 1;
                    if feedbacks <= MAX_TWCC_PER_COMPOUND
                        && twcc::parse(fb, &mut cc.results).is_ok()
                    {
                        cc.bwe.on_feedback(now, &cc.results);
                    }
                    continue;
                }
                Ok(RtcpPacket::Remb(remb)) => {
                    cc.bwe.on_remb(now, remb.bitrate_bps);
                    continue;
                }
                Ok(RtcpPacket::ReceiverReport(rr)) => {
                    if let Some(block) = rr.blocks().next() {
                        cc.bwe.on_receiver_report(now, block.fraction_lost);
                    }
                    continue;
                }
                Ok(RtcpPacket::Pli(pli)) => pli.media_ssrc,
                Ok(RtcpPacket::Fir(fir)) => match fir.entries().next() {
                    Some((ssrc, _)) => ssrc,
                    None => continue,
                },
                Ok(RtcpPacket::Nack(nack)) => {
                    let Some(vt) = live(tracks, nack.media_ssrc).map(|i| &mut tracks[i]) else {
                        continue;
                    };
                    let pid = vt.spec.source.publisher;
                    let Some(p) = self.publishers.get(&pid) else {
                        continue;
                    };
                    let src = &p.tracks[vt.spec.source.track];
                    // NACKs name the viewer's numbering of the layer it follows now.
                    let Some(layer) = vt
                        .fwd
                        .current()
                        .and_then(|l| src.layers.get(usize::from(l)))
                    else {
                        continue;
                    };
                    // Answer from the cache what it holds, each packet at most once per
                    // interval and within the viewer's budget (see `resend`); ask the publisher
                    // for the rest, each once.
                    let mut upstream: Vec<u16> = Vec::new();
                    for (first, blp) in nack.pairs() {
                        let lost = std::iter::once(first).chain(
                            (0..16u16)
                                .filter(|b| blp & (1 << b) != 0)
                                .map(|b| first.wrapping_add(b + 1)),
                        );
                        for viewer_seq in lost {
                            let Some(seq) = vt.fwd.source_sequence(viewer_seq) else {
                                continue;
                            };
                            // Paused, or from before a resume: nothing the viewer can get.
                            if !vt.fwd.covers(seq) {
                                continue;
                            }
                            let cached = layer.cache.get(now, seq).and_then(|(pkt, view)| {
                                Some((pkt, view, vt.fwd.rewrite_again(view)?))
                            });
                            let Some((pkt, view, rw)) = cached else {
                                if !upstream.contains(&seq) && upstream.len() < MAX_UPSTREAM_NACKS {
                                    upstream.push(seq);
                                }
                                continue;
                            };
                            if !vt.resends.allow(now, seq) {
                                continue;
                            }
                            if !cc.budget.try_resend(now, pkt.len() + 2) {
                                self.counters.resends_refused += 1;
                                continue;
                            }
                            if let Some(rtx) = vt.spec.rtx {
                                // RFC 4588: on the repair stream, under a sequence number of
                                // its own, the original number first in the payload.
                                let rtx_rw = Rewrite {
                                    ssrc: rtx.ssrc,
                                    sequence: vt.next_rtx_seq(),
                                    payload_type: rtx.payload_type,
                                    ..rw
                                };
                                let transport_seq = cc.take_seq(&vt.spec.ext);
                                let ext = vt.translation(&src.spec.ext, transport_seq);
                                let (prefix, payload) =
                                    payload_prefix(&vt.fwd, view.payload(pkt), &mut self.prefix);
                                let len = 2 + prefix.len() + payload.len();
                                let Some(body) = self.rtx_body.get_mut(..len) else {
                                    continue;
                                };
                                body[..2].copy_from_slice(&rw.sequence.to_be_bytes());
                                body[2..2 + prefix.len()].copy_from_slice(prefix);
                                body[2 + prefix.len()..].copy_from_slice(payload);
                                if let Ok(n) =
                                    write_header(&mut self.header, pkt, view, &rtx_rw, ext)
                                {
                                    sink.rtp(from, &self.header[..n], &[], body);
                                    cc.resent(now, transport_seq, n + body.len());
                                    self.counters.retransmitted_packets += 1;
                                }
                                continue;
                            }
                            // The same transport-wide number as the original, so the resend is
                            // the same bytes under the same SRTP index; if it is no longer
                            // known, the packet is not resent. Nor is audio that may have gone
                            // as RED or re-encoded: its bytes cannot be made again.
                            if vt.spec.red.is_some() || vt.ever_low {
                                continue;
                            }
                            let transport_seq = if vt.sent_transport_seq.is_empty() {
                                None
                            } else {
                                let slot = vt.sent_transport_seq
                                    [rw.sequence as usize % SENT_TRANSPORT_SEQ];
                                if slot.0 != rw.sequence {
                                    continue;
                                }
                                Some(slot.1)
                            };
                            let ext = vt.translation(&src.spec.ext, transport_seq);
                            if let Ok(n) = write_header(&mut self.header, pkt, view, &rw, ext) {
                                let (prefix, payload) =
                                    payload_prefix(&vt.fwd, view.payload(pkt), &mut self.prefix);
                                sink.rtp(from, &self.header[..n], prefix, payload);
                                cc.resent(now, transport_seq, n + prefix.len() + payload.len());
                                self.counters.retransmitted_packets += 1;
                            }
                        }
                    }
                    let (Some(ssrc), true) = (layer.ssrc, src.spec.feedback.nack) else {
                        continue;
                    };
                    if let Ok(n) =
                        rtcp::nack::write_list(p.rtcp_ssrc, ssrc, &upstream, &mut self.rtcp)
                    {
                        if n > 0 {
                            sink.rtcp(pid, &self.rtcp[..n]);
                        }
                    }
                    continue;
                }
                _ => continue,
            };
            // The layer the viewer follows, or the one it waits to switch to.
            if let Some(k) = live(tracks, media)
                .map(|i| &tracks[i])
                .and_then(|vt| Some((vt.spec.source, vt.fwd.target()?)))
            {
                if !keyframes.contains(&k) {
                    keyframes.push(k);
                }
            }
        }
        for (src, layer) in keyframes {
            self.request_keyframe(now, src.publisher, src.track, layer, sink);
        }
    }

    /// One allocation round: each viewer's estimate split over its tracks (see [`alloc`]): each
    /// video gets the best simulcast layer that fits (switched at the layer's next key frame,
    /// which is asked for); video the estimate cannot carry is paused (with `pause_video`) and
    /// resumed from a key frame when it can.
    fn allocate(&mut self, now: Instant, sink: &mut impl Sink) {
        const MAX: usize = 32;
        let pause_video = self.config.pause_video;
        let Relay {
            viewers,
            publishers,
            rooms,
            resumed,
            starting,
            counters,
            header,
            rtx_body,
            next_probe,
            wanted,
            low_sources,
            ..
        } = self;
        wanted.clear();
        low_sources.clear();
        for l in publishers
            .values_mut()
            .flat_map(|p| p.tracks.iter_mut())
            .flat_map(|t| t.layers.iter_mut())
        {
            let bps = l.rate.bps(now);
            if bps > 0 {
                l.known_bps = bps;
            }
        }
        for (&vid, v) in viewers.iter_mut() {
            if v.cc.bwe.loss_fraction() >= RED_LOSS {
                v.red_until = Some(now + RED_HOLD);
            }
            // A viewer that can tell nothing about its link gets the best of everything; one
            // that negotiated transport-cc starts from the initial estimate.
            let signal = v.cc.has_signal()
                || v.tracks
                    .iter()
                    .any(|t| t.live && !t.sent_transport_seq.is_empty());
            let estimate = if signal {
                v.cc.bwe.estimate_bps()
            } else {
                u64::MAX / 2
            };
            // Pausing is safe only where probes can find the way back: transport-cc negotiated,
            // an RTX stream to carry them, and the viewer heard from (feedback or REMB).
            let can_probe = v.cc.has_signal()
                && v.tracks
                    .iter()
                    .any(|t| t.live && t.spec.rtx.is_some() && !t.sent_transport_seq.is_empty());
            let speaker = rooms.get(&v.room).and_then(|r| r.speaker);
            let mut demands = [alloc::Demand::single(MediaKind::Audio, 0, 0, true); MAX];
            let mut wishes = demands;
            let mut wish_index = [[0usize; alloc::MAX_LAYERS]; MAX];
            // Per demand: the viewer track, and its source's layers lowest quality first.
            let mut index = [(0usize, [0usize; alloc::MAX_LAYERS]); MAX];
            // Per demand of an SVC track: its choices (none for other tracks).
            let mut svc_choices = [(0usize, [(SvcLayers::ALL, 0); alloc::MAX_LAYERS]); MAX];
            let mut n = 0;
            for (i, vt) in v.tracks.iter().enumerate().filter(|(_, t)| t.live) {
                let Some(p) = publishers.get(&vt.spec.source.publisher) else {
                    continue;
                };
                let src = &p.tracks[vt.spec.source.track];
                if n == MAX {
                    break;
                }
                // Who gets a short link's video first: what the viewer pinned, then
                // presentations, then the active speaker.
                let priority = if vt.pinned {
                    3
                } else if src.slides {
                    2
                } else {
                    u8::from(speaker == Some(vt.spec.source.publisher))
                };
                let target = vt.fwd.target();
                let mut choices = [(SvcLayers::ALL, 0); alloc::MAX_LAYERS];
                let n_choices = src.svc.as_ref().map_or(0, |s| s.choices(now, &mut choices));
                let svc_on = vt
                    .fwd
                    .svc_layers()
                    .map(|l| l.0)
                    .filter(|_| target.is_some());
                let measured = if n_choices > 0 {
                    // One stream: its layers are the choices; the publisher is told nothing.
                    let d = svc::demand(&choices[..n_choices], priority, svc_on);
                    Some((d, [0; alloc::MAX_LAYERS]))
                } else {
                    src.demand(|l| l.rate.bps(now), priority, target)
                };
                let Some((mut d, ranked)) = measured else {
                    continue;
                };
                if d.on.is_none() && !vt.fwd.is_paused() {
                    // Following a layer no longer sent: count it as the lowest.
                    d.on = Some(0);
                }
                // What the viewer would take if every layer the publisher has sent were there:
                // the layers worth asking the publisher for.
                let (w, w_ranked) = src
                    .demand(|l| l.known_bps, priority, target)
                    .filter(|_| n_choices == 0)
                    .unwrap_or((d, ranked));
                demands[n] = d;
                wishes[n] = w;
                index[n] = (i, ranked);
                svc_choices[n] = (n_choices, choices);
                wish_index[n] = w_ranked;
                n += 1;
            }
            let mut out = [None; MAX];
            alloc::allocate(estimate, &demands[..n], &mut out[..n]);
            // Audio never stops, but a link that cannot carry even the publishers' audio gets it
            // re-encoded at a low bitrate; back to the original with twice the room.
            let audio_bps: u64 = demands[..n]
                .iter()
                .filter(|d| d.kind == MediaKind::Audio)
                .map(|d| d.layers[0])
                .sum();
            let low = if !v.cc.has_signal() {
                Some(false)
            } else if estimate < audio_bps {
                Some(true)
            } else if estimate > 2 * audio_bps {
                Some(false)
            } else {
                None
            };
            for k in (0..n).filter(|&k| demands[k].kind == MediaKind::Audio) {
                let vt = &mut v.tracks[index[k].0];
                if let Some(low) = low {
                    vt.low_audio = low && demands[k].layers[0] > LOW_AUDIO_BPS * 3 / 2;
                    vt.ever_low |= vt.low_audio;
                }
                if vt.low_audio && !low_sources.contains(&vt.spec.source) {
                    low_sources.push(vt.spec.source);
                }
            }
            let mut wish_out = [None; MAX];
            alloc::allocate(estimate, &wishes[..n], &mut wish_out[..n]);
            for k in 0..n {
                let (i, _) = index[k];
                // Up to the layer wished for (the lowest when none fits): lower layers stay, so
                // stepping down needs no one to start encoding.
                let top = wish_out[k].unwrap_or(0);
                let mask = wish_index[k][..=top.min(wishes[k].n_layers - 1)]
                    .iter()
                    .fold(0u8, |m, &slot| m | (1 << slot));
                let source = v.tracks[i].spec.source;
                match wanted.iter_mut().find(|(s, _)| *s == source) {
                    Some((_, m)) => *m |= mask,
                    None => wanted.push((source, mask)),
                }
            }
            let mut want = 0u64;
            for k in 0..n {
                let (i, ranked) = index[k];
                let vt = &mut v.tracks[i];
                // Probes aim at what every track would take at its best, counting layers the
                // publisher was told it may stop: room for them is what brings them back.
                let w = &wishes[k];
                want += w.layers[w.n_layers - 1];
                // A pause costs a key frame to come back from: video that runs is paused only
                // once its lowest layer has not fitted for a while, not on a passing dip.
                let short_since = match out[k] {
                    None if pause_video && can_probe => Some(*vt.short_since.get_or_insert(now)),
                    _ => None,
                };
                vt.short_since = short_since;
                let choice = match out[k] {
                    Some(layer) => Some(layer),
                    // Without pausing, video that does not fit gets its lowest layer.
                    None if !(pause_video && can_probe) => Some(0),
                    None if !vt.fwd.is_paused()
                        && short_since
                            .is_some_and(|s| now.saturating_duration_since(s) < PAUSE_AFTER) =>
                    {
                        Some(0)
                    }
                    None => None,
                };
                match choice {
                    Some(layer) => {
                        let (n_choices, choices) = svc_choices[k];
                        let slot = if n_choices > 0 {
                            0
                        } else {
                            ranked[layer] as u8
                        };
                        if vt.fwd.target() != Some(slot) {
                            vt.fwd.set_target(slot);
                        }
                        // A switch (or resume) waits for a key frame of the layer: the cache's,
                        // or one asked for each round until it comes (rate-limited per layer).
                        let mut larger = false;
                        if n_choices > 0 {
                            // Within an SVC stream, a larger picture starts at a key picture;
                            // smaller ones and frame rates change without one.
                            let want = choices[layer].0;
                            vt.fwd.set_svc_target(want);
                            larger = vt
                                .fwd
                                .svc_layers()
                                .is_some_and(|(_, cur)| cur.spatial < want.spatial);
                        }
                        let key = (vt.spec.source, slot);
                        if vt.fwd.current() != Some(slot) {
                            starting.push((vid, i, key.0, key.1));
                        } else if larger && !resumed.contains(&key) {
                            resumed.push(key);
                        }
                    }
                    None => {
                        if !vt.fwd.is_paused() {
                            vt.fwd.pause();
                            counters.paused_tracks += 1;
                        }
                    }
                }
            }
            if !can_probe {
                continue;
            }
            // Room for everything, plus the margin a track needs to move up (or come back).
            if v.probe_out.is_none() {
                if let Some(cluster) = v.cc.bwe.poll_probe(now, want + want / 2) {
                    v.probe_out = Some(ProbeOut::new(now, cluster));
                    counters.probes += 1;
                }
            }
            send_probe(now, vid, v, publishers, header, rtx_body, next_probe, sink);
        }
        self.report_layers(now);
        // A transcoder per audio track some viewer needs it for; none for the rest.
        for (&pid, p) in self.publishers.iter_mut() {
            for (ti, t) in p.tracks.iter_mut().enumerate() {
                let source = TrackRef {
                    publisher: pid,
                    track: ti,
                };
                let needed = t.spec.codec == Codec::Opus && self.low_sources.contains(&source);
                if needed && t.transcoder.is_none() {
                    t.transcoder = OpusTranscoder::new(LOW_AUDIO_BPS as i32).ok().map(Box::new);
                } else if !needed {
                    t.transcoder = None;
                }
            }
        }
        let mut starting = std::mem::take(&mut self.starting);
        for (vid, i, src, layer) in starting.drain(..) {
            let key = (src, layer);
            if !self.replay_keyframe(now, vid, i, sink) && !self.resumed.contains(&key) {
                self.resumed.push(key);
            }
        }
        self.starting = starting;
        let mut list = std::mem::take(&mut self.resumed);
        for (src, layer) in list.drain(..) {
            self.request_keyframe(now, src.publisher, src.track, layer, sink);
        }
        self.resumed = list;
    }

    /// Tells publishers which simulcast layers viewers need (see [`RelayEvent::Layers`]): a
    /// layer some viewer would take is asked for at once; one none would take is let go after
    /// [`LAYER_OFF_AFTER`]. The lowest layer stays, and layers never seen are left alone.
    fn report_layers(&mut self, now: Instant) {
        for (&pid, p) in self.publishers.iter_mut() {
            for (ti, t) in p.tracks.iter_mut().enumerate() {
                if t.layers.len() < 2 {
                    continue;
                }
                let mut ranked = [0usize; alloc::MAX_LAYERS];
                if t.ranked(|l| l.known_bps, &mut ranked) == 0 {
                    continue;
                }
                let source = TrackRef {
                    publisher: pid,
                    track: ti,
                };
                let wanted = self
                    .wanted
                    .iter()
                    .find(|(s, _)| *s == source)
                    .map_or(0, |(_, m)| *m);
                let unseen = t
                    .layers
                    .iter()
                    .enumerate()
                    .filter(|(_, l)| l.known_bps == 0)
                    .fold(0u8, |m, (i, _)| m | (1 << i));
                let need = wanted | unseen | (1 << ranked[0]);
                let before = t.active;
                t.active |= need;
                for (i, l) in t.layers.iter_mut().enumerate() {
                    let bit = 1u8 << i;
                    if need & bit != 0 || t.active & bit == 0 {
                        l.unneeded_since = None;
                    } else if now.saturating_duration_since(*l.unneeded_since.get_or_insert(now))
                        >= LAYER_OFF_AFTER
                    {
                        t.active &= !bit;
                        l.unneeded_since = None;
                    }
                }
                if t.active != before {
                    self.events.push_back(RelayEvent::Layers {
                        publisher: pid,
                        track: ti,
                        active: t.active,
                    });
                }
            }
        }
    }

    /// Asks a publisher track for a keyframe, at most once per configured interval; a request
    /// inside the interval is remembered and sent when the interval ends.
    pub fn request_keyframe(
        &mut self,
        now: Instant,
        publisher: SessionId,
        track: usize,
        layer: u8,
        sink: &mut impl Sink,
    ) {
        let Some(p) = self.publishers.get_mut(&publisher) else {
            return;
        };
        let Some(t) = p.tracks.get_mut(track) else {
            return;
        };
        if t.spec.kind != MediaKind::Video {
            return;
        }
        let feedback = t.spec.feedback;
        let Some(l) = t.layers.get_mut(usize::from(layer)) else {
            return;
        };
        let due = l
            .last_keyframe_request
            .map_or(now, |last| last + self.config.keyframe_request_interval);
        if now < due || l.ssrc.is_none() {
            l.keyframe_due = Some(l.keyframe_due.map_or(due, |d| d.min(due)));
            return;
        }
        send_keyframe_request(
            p.rtcp_ssrc,
            feedback,
            l,
            now,
            &mut self.rtcp,
            sink,
            publisher,
        );
        self.counters.keyframe_requests += 1;
    }

    /// When [`Relay::handle_timeout`] next has work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut next: Option<Instant> = self.next_speaker_check.filter(|_| !self.rooms.is_empty());
        let rounds = !self.viewers.is_empty() || self.simulcast_tracks > 0;
        if let Some(a) = self.next_allocation.filter(|_| rounds) {
            next = Some(next.map_or(a, |n| n.min(a)));
        }
        for t in [self.next_twcc_feedback, self.next_probe, self.next_pace]
            .into_iter()
            .flatten()
        {
            next = Some(next.map_or(t, |n| n.min(t)));
        }
        for p in self.publishers.values() {
            let mut consider = |t: Instant| next = Some(next.map_or(t, |n| n.min(t)));
            if let Some(r) = p.next_report {
                consider(r);
            }
            for l in p.tracks.iter().flat_map(|t| &t.layers) {
                if let (Some(d), Some(_)) = (l.keyframe_due, l.ssrc) {
                    consider(d);
                }
            }
        }
        next
    }

    /// Periodic work: receiver reports and bitrate caps to publishers, deferred keyframe requests.
    pub fn handle_timeout(&mut self, now: Instant, sink: &mut impl Sink) {
        if self.next_speaker_check.is_none_or(|t| now >= t) {
            self.next_speaker_check = Some(now + self.config.speaker_interval);
            self.update_speakers(now);
        }
        // Rounds also run for simulcast publishers alone: their unwatched layers are let go.
        let rounds = !self.viewers.is_empty() || self.simulcast_tracks > 0;
        if rounds && self.next_allocation.is_none_or(|t| now >= t) {
            self.next_allocation = Some(now + ALLOCATION_INTERVAL);
            self.allocate(now, sink);
        }
        if self.next_pace.is_some_and(|t| now >= t) {
            self.next_pace = None;
            let mut pacing = std::mem::take(&mut self.pacing);
            pacing.retain(|vid| {
                let Some(v) = self.viewers.get_mut(vid) else {
                    return false;
                };
                let due = v.pace(now, *vid, sink);
                if let Some(due) = due {
                    self.next_pace = Some(self.next_pace.map_or(due, |n| n.min(due)));
                }
                due.is_some()
            });
            self.pacing = pacing;
        }
        if self.next_probe.is_some_and(|t| now >= t) {
            self.next_probe = None;
            let Relay {
                viewers,
                publishers,
                header,
                rtx_body,
                next_probe,
                ..
            } = self;
            for (&vid, v) in viewers.iter_mut().filter(|(_, v)| v.probe_out.is_some()) {
                send_probe(now, vid, v, publishers, header, rtx_body, next_probe, sink);
            }
        }
        if self.next_twcc_feedback.is_some_and(|t| now >= t) {
            self.next_twcc_feedback = None;
            for (&pid, p) in self.publishers.iter_mut() {
                let media_ssrc = p
                    .tracks
                    .iter()
                    .flat_map(|t| &t.layers)
                    .find_map(|l| l.ssrc)
                    .unwrap_or(0);
                if let Some(fb) = p
                    .twcc
                    .as_mut()
                    .and_then(|(t, _)| t.feedback(p.rtcp_ssrc, media_ssrc))
                {
                    sink.rtcp(pid, fb);
                }
            }
        }
        for (&pid, p) in self.publishers.iter_mut() {
            for t in &mut p.tracks {
                let feedback = t.spec.feedback;
                for l in &mut t.layers {
                    if l.ssrc.is_some() && l.keyframe_due.is_some_and(|d| now >= d) {
                        send_keyframe_request(
                            p.rtcp_ssrc,
                            feedback,
                            l,
                            now,
                            &mut self.rtcp,
                            sink,
                            pid,
                        );
                        self.counters.keyframe_requests += 1;
                    }
                }
            }
            let report_due = p.next_report.is_none_or(|r| now >= r);
            if !report_due {
                continue;
            }
            p.next_report = Some(now + self.config.report_interval);
            // Cached packets hold their receive blocks: old ones go.
            for l in p.tracks.iter_mut().flat_map(|t| &mut t.layers) {
                l.cache.expire(now);
            }
            let mut blocks = [rtcp::ReportBlock::default(); 8];
            let mut n_blocks = 0;
            for l in p
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
                continue;
            }
            let Ok(mut len) =
                ReceiverReport::write(p.rtcp_ssrc, &blocks[..n_blocks], &mut self.rtcp)
            else {
                continue;
            };
            if let Some(video) = p
                .tracks
                .iter()
                .find(|t| t.spec.kind == MediaKind::Video && t.spec.feedback.remb)
            {
                if let Some(ssrc) = video.layers.iter().find_map(|l| l.ssrc) {
                    let remb = Remb {
                        sender_ssrc: p.rtcp_ssrc,
                        bitrate_bps: self.config.publisher_max_bitrate_bps,
                        ssrc,
                    };
                    len += remb.write(&mut self.rtcp[len..]).unwrap_or(0);
                }
            }
            sink.rtcp(pid, &self.rtcp[..len]);
        }
    }
}

impl Relay {
    /// Picks each room's loudest publisher above the speaking threshold, with hysteresis in
    /// level and in time: a new speaker takes over after leading by [`SPEAKER_HYSTERESIS`] for
    /// [`SPEAKER_HOLD`] (the first speaker of a silent room at once).
    fn update_speakers(&mut self, now: Instant) {
        for room in self.rooms.values_mut() {
            let loudness = |id: &SessionId| {
                self.publishers.get(id).map_or(0.0, |p| {
                    p.tracks
                        .iter()
                        .filter(|t| t.spec.kind == MediaKind::Audio)
                        .map(|t| t.loudness)
                        .fold(0.0, f32::max)
                })
            };
            let Some((best, level)) = room
                .publishers
                .iter()
                .map(|id| (*id, loudness(id)))
                .max_by(|a, b| a.1.total_cmp(&b.1))
            else {
                continue;
            };
            if level < SPEAKING_LOUDNESS || room.speaker == Some(best) {
                room.challenger = None;
                continue;
            }
            let current = room.speaker.as_ref().map_or(0.0, loudness);
            if level <= current + SPEAKER_HYSTERESIS {
                room.challenger = None;
                continue;
            }
            let since = match room.challenger {
                Some((who, since)) if who == best => since,
                _ => {
                    room.challenger = Some((best, now));
                    now
                }
            };
            if room.speaker.is_none() || now.duration_since(since) >= SPEAKER_HOLD {
                room.challenger = None;
                room.speaker = Some(best);
                self.events.push_back(RelayEvent::ActiveSpeaker {
                    room: room.name.clone(),
                    publisher: Some(best),
                });
            }
        }
    }
}

fn send_keyframe_request(
    rtcp_ssrc: u32,
    feedback: Feedback,
    t: &mut Layer,
    now: Instant,
    buf: &mut [u8],
    sink: &mut impl Sink,
    to: SessionId,
) {
    let Some(ssrc) = t.ssrc else { return };
    t.keyframe_due = None;
    t.last_keyframe_request = Some(now);
    let n = if feedback.pli || !feedback.fir {
        Pli {
            sender_ssrc: rtcp_ssrc,
            media_ssrc: ssrc,
        }
        .write(buf)
    } else {
        t.fir_seq = t.fir_seq.wrapping_add(1);
        rtcp::Fir::write(rtcp_ssrc, ssrc, t.fir_seq, buf)
    };
    if let Ok(n) = n {
        sink.rtcp(to, &buf[..n]);
    }
}

/// Splits a payload for one viewer: its VP8 descriptor rewritten into `buf` when the viewer's
/// picture ids are shifted (after a layer switch), and the shared rest.
/// A forwarded video packet made ready to wait in the viewer's pacer: its header rewritten (with
/// room for the transport-wide number, written when it leaves) and payload prefix copied, the
/// payload shared. `None` where it does not fit the queue's slots (it is then sent at once).
#[allow(clippy::too_many_arguments)]
fn queue_entry(
    now: Instant,
    index: usize,
    vt: &ViewerTrack,
    from: &ExtMap,
    packet: &Bytes,
    view: &RtpView,
    rw: &Rewrite,
    (header, prefix_buf): (&mut [u8; 512], &mut [u8; 16]),
) -> Option<pacer::Queued> {
    let twcc = vt.spec.ext.id(ExtKind::TransportWideCc);
    let n = write_header(
        header,
        packet,
        view,
        rw,
        vt.translation(from, twcc.map(|_| 0)),
    )
    .ok()?;
    let header = header.get(..n).filter(|h| h.len() <= pacer::HEADER_MAX)?;
    let transport_seq_at = match twcc {
        Some(id) => {
            let written = RtpView::parse(header).ok()?;
            let (_, data) = written.extensions(header).find(|(i, _)| *i == id)?;
            Some(data.as_ptr() as usize - header.as_ptr() as usize)
        }
        None => None,
    };
    let (prefix, payload) = payload_prefix(&vt.fwd, view.payload(packet), prefix_buf);
    let start = payload.as_ptr() as usize - packet.as_ptr() as usize;
    let mut q = pacer::Queued {
        track: index,
        sequence: rw.sequence,
        header: [0; pacer::HEADER_MAX],
        header_len: n,
        transport_seq_at,
        prefix: [0; pacer::PREFIX_MAX],
        prefix_len: prefix.len(),
        packet: packet.clone(),
        payload: (start, start + payload.len()),
        queued_at: now,
    };
    q.header[..n].copy_from_slice(header);
    q.prefix.get_mut(..prefix.len())?.copy_from_slice(prefix);
    Some(q)
}

fn payload_prefix<'a, 'b>(
    fwd: &Forwarder,
    payload: &'a [u8],
    buf: &'b mut [u8; 16],
) -> (&'b [u8], &'a [u8]) {
    let shift = fwd.vp8_shift();
    if shift.is_zero() {
        return (&[], payload);
    }
    let Some(d) = vp8::Descriptor::parse(payload) else {
        return (&[], payload);
    };
    match d.write_shifted(payload, shift.picture_id, shift.tl0, buf) {
        Some(n) => (&buf[..n], &payload[n..]),
        None => (&[], payload),
    }
}

/// The start of a RED payload (RFC 2198 §3) for a packet forwarded as `pt`: one redundant
/// block, the previous packet's frame, then the primary's header; the primary frame follows.
/// Returns its length, or `None` when the previous frame is not at hand or does not fit.
fn red_prefix(
    now: Instant,
    cache: &RetransmitCache,
    view: &RtpView,
    fwd: &Forwarder,
    pt: u8,
    out: &mut [u8],
) -> Option<usize> {
    let prev_seq = view.sequence.wrapping_sub(1);
    if !fwd.covers(prev_seq) {
        return None;
    }
    let (pkt, prev) = cache.get(now, prev_seq)?;
    let data = prev.payload(pkt);
    // Timestamp offset: 14 bits; block length: 10 bits.
    let offset = view.timestamp.wrapping_sub(prev.timestamp);
    if offset == 0 || offset >= 1 << 14 || data.len() >= 1 << 10 || 5 + data.len() > out.len() {
        return None;
    }
    let pt = pt & 0x7f;
    out[0] = 0x80 | pt;
    out[1] = (offset >> 6) as u8;
    out[2] = (((offset & 0x3f) << 2) as u8) | (data.len() >> 8) as u8;
    out[3] = data.len() as u8;
    out[4] = pt;
    out[5..5 + data.len()].copy_from_slice(data);
    Some(5 + data.len())
}

/// Finds the track and layer a packet belongs to: by SSRC, else by its MID extension (and RID
/// for a simulcast track), else by payload type.
fn find_track(p: &Publisher, buf: &[u8], view: &RtpView) -> Option<(usize, usize)> {
    for (i, t) in p.tracks.iter().enumerate() {
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
    for (i, t) in p.tracks.iter().enumerate() {
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
    p.tracks
        .iter()
        .position(|t| t.spec.rids.is_empty() && free(t, 0))
        .map(|i| (i, 0))
}
