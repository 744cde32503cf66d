//! RTP over QUIC (quinn): native clients and relay links send RTP and RTCP in QUIC datagrams, one
//! flow id per direction, with a control stream for join/publish/subscribe. QUIC encrypts, so
//! there is no SRTP; everything else (rooms, forwarding, RTCP feedback) is the same core as WebRTC.

pub mod control;
pub mod endpoint;
pub mod roq;
