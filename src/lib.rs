//! volna: a selective forwarding unit for voice and video calls.
//!
//! Layers point down only: [`worker`] → [`signal`] → [`session`] → [`core`] + [`transport`].
//! A worker's UDP socket hands each datagram to its [`session::Shard`], which demultiplexes STUN
//! (ICE-lite), DTLS and SRTP by the first byte, decrypts, and passes RTP to the sans-IO
//! [`core::room::Relay`]. The relay decides per viewer ([`core::forward::Forwarder`]) and sends
//! through one path (header rewritten, payload shared) to a [`core::room::Sink`], where the
//! shard encrypts for that viewer and queues the datagram. One worker's loop:
//!
//! ```text
//! loop {
//!     let now = Instant::now();
//!     match next_event(shard.poll_timeout()) {
//!         Datagram(from, buf) => shard.handle_datagram(now, from, buf),
//!         Command(cmd)        => worker::apply(&mut shard, &mut outlets, now, cmd), // signalling
//!         Timeout             => shard.handle_timeout(now),
//!     }
//!     while let Some((to, data)) = shard.poll_transmit() { socket.send_to(&data, to) }
//!     while let Some((who, msg)) = shard.poll_message() { outlets.deliver(who, msg) }
//! }
//! ```

pub mod cluster;
pub mod config;
pub mod core;
#[doc(hidden)]
pub mod fuzz;
pub mod server;
pub mod session;
pub mod signal;
#[doc(hidden)]
pub mod testkit;
pub mod transport;
pub mod worker;
