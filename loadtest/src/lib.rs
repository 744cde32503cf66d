//! Load generation and native clients for volna.
//!
//! `client` is a native RTP-over-QUIC client (what `volna-client` runs): it publishes a real Opus
//! tone encoded with libopus, or subscribes and decodes what arrives, repairing loss with NACK.

pub mod client;
