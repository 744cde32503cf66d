//! volna: a selective forwarding unit for voice and video calls.
//!
//! The packet path, in order: a worker's UDP socket ([`worker`]) hands each datagram to its
//! [`transport::webrtc::Shard`], which demultiplexes STUN (ICE-lite), DTLS and SRTP by the first
//! byte, decrypts, and passes RTP to the sans-IO [`core::room::Relay`]. The relay decides per
//! viewer ([`core::forward::Forwarder`]), rewrites the header ([`core::rtp::rewrite`]) and hands
//! header + shared payload back through a [`core::room::Sink`], where the shard encrypts for that
//! viewer and queues the datagram:
//!
//! ```text
//! loop {
//!     let now = Instant::now();
//!     match next_event(shard.poll_timeout()) {
//!         Datagram(from, buf) => shard.handle_datagram(now, from, &buf),
//!         Command(cmd)        => worker::apply(&mut shard, now, cmd),   // WHIP/WHEP from HTTP
//!         Timeout             => shard.handle_timeout(now),
//!     }
//!     while let Some((to, data)) = shard.poll_transmit() { socket.send_to(&data, to) }
//! }
//! ```

pub mod config;
pub mod core;
#[doc(hidden)]
pub mod fuzz;
pub mod server;
pub mod signal;
#[doc(hidden)]
pub mod testkit;
pub mod transport;
pub mod worker;
