//! One WebRTC peer connection as volna sees it: its ICE credentials and chosen path, its DTLS
//! association and, once that completes, its SRTP contexts.

use std::net::SocketAddr;
use std::time::Instant;

use super::dtls::{Dtls, SrtpKeys};
use crate::core::room::{MediaKind, SessionId, ViewerTrackSpec};
use crate::signal::sdp::OfferedCodec;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Publisher,
    Viewer,
}

pub struct Session {
    pub id: SessionId,
    pub role: Role,
    pub room: String,
    /// Secret part of the session URL (WHIP/WHEP `Location`).
    pub resource: String,
    /// Public id of a publisher, used by viewers to pick it.
    pub public_id: String,
    pub local_ufrag: String,
    pub local_pwd: String,
    pub remote_ufrag: String,
    /// Where media goes: the source of the last nominated (or first valid) Binding request.
    pub remote: Option<SocketAddr>,
    pub nominated: bool,
    pub dtls: Dtls,
    pub srtp: Option<SrtpKeys>,
    pub created: Instant,
    /// Last authenticated datagram from the peer (consent freshness, RFC 7675).
    pub last_rx: Instant,
    /// A viewer's tracks wait here until SRTP is up, so its first keyframe is not sent into
    /// a connection that cannot carry it yet.
    pub pending_viewer: Option<(SessionId, Vec<ViewerTrackSpec>)>,
    pub rtcp_ssrc: u32,
    /// A publisher's tracks: kind and negotiated codec, in the relay's track order.
    pub published: Vec<(MediaKind, OfferedCodec)>,
}
