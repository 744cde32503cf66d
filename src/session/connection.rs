//! One WebRTC peer connection as volna sees it: its ICE credentials and chosen path, its DTLS
//! association and, once that completes, its SRTP contexts; and, for a room subscriber, the
//! m-lines volna offered it.

use std::net::SocketAddr;
use std::time::Instant;

use super::negotiation::Negotiation;
use crate::core::room::{MediaKind, SessionId, ViewerTrackSpec};
use crate::session::sdp::OfferedCodec;
use crate::transport::webrtc::dtls::{Dtls, SrtpKeys};
use crate::transport::webrtc::path::PathLimits;

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

pub struct Session {
    pub id: SessionId,
    pub role: Role,
    pub room: String,
    /// Secret part of the session URL (WHIP/WHEP `Location`).
    pub resource: String,
    /// Public id of a publisher, used by viewers to pick it.
    pub public_id: String,
    /// The identity whose token created it (WHIP/WHEP with auth on): who may end or restart it.
    pub owner: Option<String>,
    pub participant: Option<ParticipantId>,
    pub local_ufrag: String,
    pub local_pwd: String,
    /// Empty until known (a subscriber learns it from the answer or the first check).
    pub remote_ufrag: String,
    /// The peer's ICE password, for consent checks volna sends (empty until known).
    pub remote_pwd: String,
    /// Where media goes: the source of the last nominated (or first valid) Binding request.
    pub remote: Option<SocketAddr>,
    pub nominated: bool,
    /// How often the path moved and was checked lately (see `path`).
    pub path: PathLimits,
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
    /// The answer volna gave a publisher's offer (an ICE restart answers it again, with new
    /// credentials).
    pub answer: String,
    /// A publisher's tracks: kind and negotiated codec, in the relay's track order, with mids.
    pub published: Vec<(MediaKind, OfferedCodec, String)>,
    /// A subscriber's m-lines and offer state.
    pub negotiation: Negotiation,
    /// For a QUIC session: the RoQ flow id of its datagrams (no ICE, DTLS or SRTP then).
    pub quic_flow: Option<u64>,
    /// For a publisher relayed from another node of the cluster: who it is there.
    pub origin: Option<Box<Origin>>,
    /// Simulcast layers across a relay link, as each end keeps them.
    pub link_layers: LinkLayers,
}

/// A relay link's simulcast layers as one session sees them: a subscriber serving another node
/// keeps, per track of its publisher, the viewer track that copies each layer; a relayed
/// publisher keeps, per track, the layers (a bit each) its viewers here want.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkLayers {
    pub copies: Vec<Vec<usize>>,
    pub wanted: Vec<u8>,
}

/// A publisher on another node, as its relayed copy here shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Origin {
    /// The node it publishes to, and its publisher id there (the relayed copy takes the same id,
    /// so a WHEP request may name it on any node).
    pub node: String,
    pub id: String,
    /// Its participant's identity and name there (`whip`/`quic` and a label for the others).
    pub identity: String,
    pub name: String,
}
