//! Signalling: WHIP and WHEP over HTTP, with the SDP they carry.

pub mod auth;
pub mod http;
pub mod protocol;
pub mod sdp;
pub mod sdpfrag;
pub mod ws;
