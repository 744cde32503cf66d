//! WebRTC's transport protocols for one peer: ICE-lite checks and consent ([`ice`], [`path`]),
//! the DTLS handshake that yields SRTP keys ([`dtls`]) and SRTP itself ([`srtp`]). Sans-IO: bytes
//! and `now` in, bytes out; nothing here knows of rooms, signalling or sockets.

pub mod dtls;
pub mod ice;
pub mod path;
pub mod srtp;

pub use dtls::DtlsIdentity;
