//! The sans-IO core: plain Rust that takes `now` and packets and gives packets back. No sockets,
//! no async runtime, no clock reads, so tests run it on virtual time.

pub mod audio;
pub mod bwe;
pub mod cache;
pub mod forward;
pub mod room;
pub mod rtcp;
pub mod rtp;
