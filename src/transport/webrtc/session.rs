//! One WebRTC peer connection as volna sees it: its ICE credentials and chosen path, its DTLS
//! association and, once that completes, its SRTP contexts; and, for a room subscriber, the
//! m-lines volna offered it.

use std::net::SocketAddr;
use std::time::Instant;

use super::dtls::{Dtls, SrtpKeys};
use crate::core::room::{MediaKind, SessionId, TrackRef, ViewerTrackSpec};
use crate::signal::sdp::OfferedCodec;

/// Whom a session belongs to in the room protocol.
pub type ParticipantId = u64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Sends media (WHIP, or a participant's publisher connection).
    Publisher,
    /// Watches one publisher (WHEP).
    Viewer,
    /// A room participant's receiving connection; volna makes the offers.
    Subscriber,
}

/// One m-line of a subscriber connection.
#[derive(Debug, Clone)]
pub struct SubLine {
    pub mid: String,
    pub kind: MediaKind,
    /// The forwarded track; `None` once it ended (the m-line is then offered stopped).
    pub source: Option<TrackRef>,
    /// Public track id (`participant-mid`) for signalling and `a=msid`.
    pub track_id: String,
    pub stream_id: String,
    pub ssrc: u32,
    pub codec: OfferedCodec,
    /// The RTX stream offered with video (payload type, SSRC), for resends and probes.
    pub rtx: Option<(u8, u32)>,
    /// The last answer accepted the RTX stream too.
    pub rtx_accepted: bool,
    /// The RED payload type offered with audio (RFC 2198), and whether the answer took it.
    pub red: Option<u8>,
    pub red_accepted: bool,
    pub ext: Vec<(u8, String)>,
    /// The relay's viewer-track index once the peer accepted the line and SRTP is up.
    pub relay_index: Option<usize>,
    /// The last answer accepted this line.
    pub accepted: bool,
}

/// Offer/answer state of a subscriber connection (JSEP: one offer outstanding at a time).
#[derive(Debug, Default)]
pub struct Negotiation {
    pub lines: Vec<SubLine>,
    pub version: u64,
    /// An offer was sent and its answer has not come.
    pub awaiting_answer: bool,
    /// The lines changed since the last offer.
    pub dirty: bool,
    /// DTLS datagrams that came before the first answer (the peer's ClientHello can overtake it).
    pub early_dtls: Vec<Vec<u8>>,
}

pub struct Session {
    pub id: SessionId,
    pub role: Role,
    pub room: String,
    /// Secret part of the session URL (WHIP/WHEP `Location`).
    pub resource: String,
    /// Public id of a publisher, used by viewers to pick it.
    pub public_id: String,
    pub participant: Option<ParticipantId>,
    pub local_ufrag: String,
    pub local_pwd: String,
    /// Empty until known (a subscriber learns it from the answer or the first check).
    pub remote_ufrag: String,
    /// Where media goes: the source of the last nominated (or first valid) Binding request.
    pub remote: Option<SocketAddr>,
    pub nominated: bool,
    /// `None` for a subscriber until its first answer says who is the DTLS client.
    pub dtls: Option<Dtls>,
    pub srtp: Option<SrtpKeys>,
    pub created: Instant,
    /// Last authenticated datagram from the peer (consent freshness, RFC 7675).
    pub last_rx: Instant,
    /// A WHEP viewer's tracks wait here until SRTP is up, so its first keyframe is not sent into
    /// a connection that cannot carry it yet.
    pub pending_viewer: Option<Vec<ViewerTrackSpec>>,
    pub rtcp_ssrc: u32,
    /// A publisher's tracks: kind and negotiated codec, in the relay's track order, with mids.
    pub published: Vec<(MediaKind, OfferedCodec, String)>,
    /// A subscriber's m-lines and offer state.
    pub negotiation: Negotiation,
    /// For a QUIC session: the RoQ flow id of its datagrams (no ICE, DTLS or SRTP then).
    pub quic_flow: Option<u64>,
}
