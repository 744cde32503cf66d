//! Transports that carry media to and from the relay core.

pub mod quic;
pub mod webrtc;
