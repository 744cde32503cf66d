//! What the relay's callers name and get back: sessions, track specs as negotiated, the
//! configuration, counters, errors, events, and the [`Sink`] packets leave through.

use std::sync::Arc;
use std::time::Duration;

use super::histogram::Histogram;
use crate::core::rtp::{Codec, ExtMap};

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
    /// A copy of one simulcast layer (slot in the source's layers) for a relay link, as a
    /// stream of its own: it never switches layers, and is on while the other node wants it and
    /// the link's budget has room for it (see [`Relay::set_link_layers`]). `None`: the viewer
    /// gets the best layer its link carries, as usual.
    ///
    /// [`Relay::set_link_layers`]: super::Relay::set_link_layers
    pub layer: Option<u8>,
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
    /// Bytes of simulcast layers a relay link did not carry: packets of a layer copy (see
    /// [`ViewerTrackSpec::layer`]) paused because no viewer behind the link wanted the layer,
    /// or its budget had no room. What sending every layer would have added.
    pub link_bytes_held: u64,
    /// Resends a viewer's NACK asked for beyond its resend budget (see `resend`).
    pub resends_refused: u64,
    /// NACK, PLI and FIR messages from viewers.
    pub nacks_received: u64,
    pub plis_received: u64,
    pub firs_received: u64,
    /// Distributions (see `histogram` for each one's unit and bounds).
    pub join_us: Histogram,
    pub rtt_us: Histogram,
    pub jitter_us: Histogram,
    pub loss_per_mille: Histogram,
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
