//! RTP over QUIC (quinn): native clients send RTP and RTCP in QUIC datagrams, one flow id per
//! direction ([`roq`] framing); [`endpoint`] holds the listener's TLS identity and configuration.
//! QUIC encrypts, so there is no SRTP. The control stream (join, publish, subscribe) is
//! signalling: `signal::quic`.

pub mod endpoint;
pub mod pin;
pub mod roq;
