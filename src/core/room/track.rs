//! A viewer track's state as it is sent (its forwarder, the transport-wide numbers of what it
//! was sent, its RTX numbering, resends, pin and low-audio flags) and the viewer transport's
//! congestion control (transport-wide numbering, estimate, resend budget).

use std::time::Instant;

use super::{resend, ViewerTrackSpec};
use crate::core::bwe::{BandwidthEstimator, BweConfig};
use crate::core::forward::Forwarder;
use crate::core::rtcp::twcc::PacketResult;
use crate::core::rtp::{ExtKind, ExtMap, ExtTranslation};

/// Packets whose transport-wide numbers a viewer track remembers for resends (more than the
/// retransmit cache holds).
pub(super) const SENT_TRANSPORT_SEQ: usize = 1024;

pub(super) struct ViewerTrack {
    pub spec: ViewerTrackSpec,
    pub fwd: Forwarder,
    /// (viewer sequence number, transport-wide number) of recent packets, by sequence number
    /// modulo its length; empty without transport-cc. A resend must be the same bytes as the
    /// original: the same SRTP index protecting a different header would reuse an AES-GCM nonce.
    pub sent_transport_seq: Vec<(u16, u16)>,
    /// False once the track was removed or its publisher left; the slot keeps indices stable.
    pub live: bool,
    /// Next sequence number on the RTX stream.
    rtx_seq: u16,
    /// Which packets were resent lately, and how often.
    pub resends: resend::ResendLog,
    /// Since when the allocator has found no room for this track (see `policy::PAUSE_AFTER`).
    pub short_since: Option<Instant>,
    /// Shown large by the viewer (pinned): its video goes first.
    pub pinned: bool,
    /// A relay link's copy of one layer (see [`ViewerTrackSpec::layer`]): whether the other node
    /// wants it now.
    pub wanted: bool,
    /// Audio re-encoded at a low bitrate for this viewer (its link cannot carry more), and
    /// whether it ever was (what went out then cannot be made again for a resend).
    pub low_audio: bool,
    pub ever_low: bool,
    /// The last sender report sent on this track: its NTP middle 32 bits, and when (a receiver
    /// report that echoes it tells the round-trip time).
    pub sr_sent: Option<(u32, Instant)>,
}

impl ViewerTrack {
    pub fn new(spec: ViewerTrackSpec, fwd: Forwarder) -> Self {
        let sent_transport_seq = if spec.ext.id(ExtKind::TransportWideCc).is_some() {
            vec![(0, 0); SENT_TRANSPORT_SEQ]
        } else {
            Vec::new()
        };
        ViewerTrack {
            // Any start will do; away from the media numbering makes captures easier to read.
            rtx_seq: spec.initial_seq ^ 0x8000,
            spec,
            fwd,
            sent_transport_seq,
            live: true,
            resends: resend::ResendLog::default(),
            short_since: None,
            pinned: false,
            wanted: true,
            low_audio: false,
            ever_low: false,
            sr_sent: None,
        }
    }

    /// How a packet of the source track is translated for this viewer track.
    pub fn translation<'a>(
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

    pub fn next_rtx_seq(&mut self) -> u16 {
        let s = self.rtx_seq;
        self.rtx_seq = s.wrapping_add(1);
        s
    }
}

/// Congestion control of one viewer's transport: transport-wide sequence numbers on what it is
/// sent, and the estimate its feedback (or REMB) gives.
pub(super) struct ViewerCc {
    pub next_seq: u16,
    pub bwe: BandwidthEstimator,
    /// Reused for parsing feedback.
    pub results: Vec<PacketResult>,
    /// Resend bytes against media bytes.
    pub budget: resend::ResendBudget,
    /// When the viewer's session started, until its first media packet is sent (time to first
    /// media, see `Relay::time_first_media`).
    pub join_from: Option<Instant>,
}

impl ViewerCc {
    pub fn new() -> Self {
        ViewerCc {
            next_seq: 1,
            bwe: BandwidthEstimator::new(BweConfig::default()),
            results: Vec::with_capacity(256),
            budget: resend::ResendBudget::default(),
            join_from: None,
        }
    }

    /// Whether anything tells about this viewer's link: transport-cc feedback or REMB.
    pub fn has_signal(&self) -> bool {
        self.bwe.last_feedback().is_some() || self.bwe.has_remb()
    }
}
