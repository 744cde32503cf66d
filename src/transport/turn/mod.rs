//! The embedded TURN server (RFC 8656) for clients that reach nothing but a TCP or TLS port:
//! listeners on UDP, TCP and TLS, REST credentials, and relaying to this node's own media ports
//! only. `server` holds the state without I/O, `auth` the credentials and nonces, `io` the
//! sockets. Message encoding and MESSAGE-INTEGRITY come from `rtc-stun`, the STUN stack the rest of
//! volna uses; the webrtc-rs `turn` crate was not taken (UDP listeners only, no hook to refuse
//! peers or cap allocations per identity, and a nonce table that grows per request).
//!
//! Media reaches a worker from an allocation's relay socket like any UDP peer's; [`RelayMap`]
//! tells the workers which of their peers are relay sockets, and over which transport the client
//! behind each came, for the transport mix in `/stats` and `/metrics`.

pub mod auth;
pub mod io;
pub mod request;
pub mod server;
mod wire;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};

pub use server::TurnServer;

/// A dual-stack media socket sees an IPv4 relay socket at its IPv4-mapped IPv6 address.
fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

/// How a client reaches the TURN server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Udp,
    Tcp,
    Tls,
}

/// The relay sockets open now, each with its client's transport; written on allocation and
/// release, read when stats are taken (never per packet).
#[derive(Clone, Default)]
pub struct RelayMap(Arc<RwLock<HashMap<SocketAddr, Proto>>>);

impl RelayMap {
    pub fn insert(&self, relay: SocketAddr, proto: Proto) {
        if let Ok(mut m) = self.0.write() {
            m.insert(relay, proto);
        }
    }

    pub fn remove(&self, relay: SocketAddr) {
        if let Ok(mut m) = self.0.write() {
            m.remove(&relay);
        }
    }

    /// The client transport behind the relay socket at `relay`, if it is one.
    pub fn get(&self, relay: SocketAddr) -> Option<Proto> {
        self.0.read().ok()?.get(&canonical(relay)).copied()
    }

    /// How many of `peers` are relay sockets, by client transport (UDP, TCP, TLS).
    pub fn count(&self, peers: impl Iterator<Item = SocketAddr>) -> [usize; 3] {
        let mut n = [0; 3];
        let Ok(m) = self.0.read() else { return n };
        if m.is_empty() {
            return n;
        }
        for p in peers {
            if let Some(proto) = m.get(&canonical(p)) {
                n[*proto as usize] += 1;
            }
        }
        n
    }
}

/// A client of the TURN server: its transport and address (with the listener, the 5-tuple).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Client {
    pub proto: Proto,
    pub addr: SocketAddr,
}

/// What the server's I/O is to do.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// Bytes for a client: a STUN message or ChannelData (padded to 4 bytes on streams).
    Reply(Client, Vec<u8>),
    /// A datagram for the relay socket bound at `relay` to send to `to`.
    Relay {
        relay: SocketAddr,
        to: SocketAddr,
        data: Vec<u8>,
    },
    /// The relay socket bound at this address is no longer used.
    Release(SocketAddr),
}

/// The TURN server's policy.
#[derive(Debug, Clone)]
pub struct TurnPolicy {
    pub realm: String,
    pub max_per_identity: usize,
    pub max_allocations: usize,
    /// The peers an allocation may reach, as clients name them (this node's media addresses as
    /// advertised), each with the address a relay socket sends to for it.
    pub peers: HashMap<SocketAddr, SocketAddr>,
    /// The IP put in XOR-RELAYED-ADDRESS (the port is the relay socket's).
    pub relayed_ip: IpAddr,
}

/// The TURN server's figures.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct TurnStats {
    /// Allocations now, by the client's transport.
    pub allocations_udp: usize,
    pub allocations_tcp: usize,
    pub allocations_tls: usize,
    /// Allocations made since start, by the client's transport.
    pub allocated_udp: u64,
    pub allocated_tcp: u64,
    pub allocated_tls: u64,
    /// Requests refused: 401 for bad or unknown credentials (not the first, credential-less
    /// request every client sends), 401 for expired ones, 438 for stale nonces, 403 for peers
    /// outside this node, 486 for an identity over its quota, 508 at the node's limit.
    pub bad_credentials: u64,
    pub expired_credentials: u64,
    pub stale_nonces: u64,
    pub forbidden_peers: u64,
    pub over_quota: u64,
    pub at_capacity: u64,
    /// Other refused requests (400, 437, 442) and messages that are neither STUN nor
    /// ChannelData.
    pub bad_requests: u64,
    pub junk: u64,
    /// Unauthenticated UDP requests left unanswered past the rate limit.
    pub unanswered: u64,
    /// Packets relayed each way, and those dropped (no permission, unknown channel).
    pub to_peers: u64,
    pub to_clients: u64,
    pub dropped: u64,
}
