//! Sessions: one worker's table of WebRTC and QUIC sessions and room participants, and what
//! creates, renegotiates and ends them. WHIP/WHEP (`whip`), the room protocol (`conference`
//! with `subscriber` offers) and QUIC (`quic`) all make viewers and publishers the same way,
//! through the [`Shard`]. Sans-IO like the core: datagrams, requests and `now` in; datagrams,
//! replies and participants' messages out (polled), randomness from a seeded generator. Below it
//! the core (forwarding) and the transports (ICE, DTLS, SRTP, RoQ framing); above it, signalling
//! maps its one error type to HTTP, room-protocol and QUIC replies.

/// Room, publisher and node names: 1 to 64 letters, digits, `-`, `_` or `.`.
pub fn valid_name(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

pub mod admin;
pub mod conference;
pub mod connection;
pub mod error;
pub mod events;
pub mod link_layers;
mod media;
pub mod negotiation;
pub mod participant;
pub mod protocol;
pub mod quic;
pub mod sdp;
pub mod sdpfrag;
pub mod shard;
mod subscriber;
mod whip;

pub use connection::{ParticipantId, Role};
pub use error::SessionError;
pub use participant::{Grants, JoinRequest};
pub use shard::{Created, IceRestart, Limits, Shard, ShardConfig, ShardStats};
