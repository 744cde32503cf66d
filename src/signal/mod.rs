//! Signalling: WHIP and WHEP over HTTP, with the SDP they carry.

pub mod http;
pub mod sdp;
