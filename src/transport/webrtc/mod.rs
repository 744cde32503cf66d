//! WebRTC's transport protocols for one peer: ICE-lite checks and consent ([`ice`], [`path`]),
//! the DTLS handshake that yields SRTP keys ([`dtls`]), SRTP itself ([`srtp`]) and the checks
//! around a peer's SRTCP ([`srtcp`]). Sans-IO: bytes
//! and `now` in, bytes out; nothing here knows of rooms, signalling or sockets.

pub mod dtls;
pub mod ice;
pub mod path;
pub mod srtcp;
pub mod srtp;

pub use dtls::DtlsIdentity;
