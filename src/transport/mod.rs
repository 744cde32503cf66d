//! Transports that carry media to and from the relay core, and the worker's batched UDP and
//! reused packet buffers.

pub mod buffers;
pub mod quic;
pub mod tcp;
pub mod turn;
pub mod udp;
pub mod webrtc;
