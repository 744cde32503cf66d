//! Load generation and native clients for volna.
//!
//! `client` is a native RTP-over-QUIC client (what `volna-client` runs): it publishes a real Opus
//! tone encoded with libopus, or subscribes and decodes what arrives, repairing loss with NACK.
//! `impair` shapes a link (loss, delay, jitter, bandwidth over time) for `volna-impair`.
//!
//! The load test (`volna-load`): `rtc` is a WebRTC endpoint (ICE, DTLS-SRTP, stamped RTP) on its
//! own UDP port, or over ICE-TCP (`rtc/tcp.rs`); `target` is what a run drives through public signalling only, with
//! `volna_target` (WHIP/WHEP against a volna process) and `janus` (the VideoRoom HTTP API of
//! Debian's Janus, inside a namespace from `netns`) and `cluster_target` (two volna nodes and
//! Redis, participants split between them); `scenario` sets up audio, meeting and
//! broadcast calls and measures them; `report` writes the Markdown, JSON and SVG results.

pub mod churn;
pub mod client;
pub mod cluster_target;
pub mod congestion;
pub mod impair;
pub mod janus;
pub mod netns;
pub mod report;
pub mod rtc;
pub mod scenario;
pub mod target;
pub mod volna_target;
