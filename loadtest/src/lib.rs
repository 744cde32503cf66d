//! Load generation and native clients for volna.
//!
//! `client` is a native RTP-over-QUIC client (what `volna-client` runs): it publishes a real Opus
//! tone encoded with libopus, or subscribes and decodes what arrives, repairing loss with NACK.
//! `impair` shapes a link (loss, delay, jitter, bandwidth over time) for `volna-impair`.

pub mod client;
pub mod impair;
