//! ICE over TCP, passive side (RFC 6544), for clients whose UDP is blocked: each worker listens
//! on a TCP port beside its UDP one; a connection carries STUN, DTLS and SRTP packets each
//! framed by a 2-byte length (RFC 4571), which the worker hands to its shard as if they were
//! datagrams from the connection's address. Each connection has a task that reads frames and
//! writes what the worker queued for it. Limits: frames of at most [`MAX_FRAME`] bytes; the
//! first frame must be a STUN message, within [`FIRST_FRAME`]; a connection no session uses
//! [`ICE_TIMEOUT`] after it opened is closed; [`MAX_CONNECTIONS`] per worker; a client that stops
//! reading has its queue fill up and loses packets (the worker never waits on a connection).
//! Packets on this path are copied once more than on UDP (into the connection's queue).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tracing::debug;

/// Largest frame taken: a media packet is under 1,500 bytes; anything past this is junk.
pub const MAX_FRAME: usize = 4096;
/// A connection whose first frame (a STUN Binding request) has not come by then is closed.
pub const FIRST_FRAME: Duration = Duration::from_secs(5);
/// A connection that no session has taken as its path by then is closed.
pub const ICE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections one worker holds at once; more are closed at once.
pub const MAX_CONNECTIONS: usize = 4096;
/// Frames queued for one connection; more are dropped (the client is not reading).
const OUT_QUEUE: usize = 512;
/// A connection whose client has not taken a frame for this long (its receive window stays
/// shut) is closed.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// What connection tasks tell their worker.
pub enum TcpEvent {
    Opened(SocketAddr, mpsc::Sender<Bytes>),
    Frame(SocketAddr, BytesMut),
    /// Bad framing or a first frame that is not STUN: the connection was closed.
    Junk(SocketAddr, &'static str),
    /// No frame came within `FIRST_FRAME`: the connection was closed.
    Silent(SocketAddr),
    Closed(SocketAddr),
}

/// ICE-TCP figures of one worker (added up in `/stats`).
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct TcpStats {
    /// Connections open now, and those a session uses as its path.
    pub connections: usize,
    pub in_use: usize,
    pub accepted: u64,
    /// Closed at once: the worker held `MAX_CONNECTIONS` already, or a UDP session uses the
    /// connection's address.
    pub refused: u64,
    /// Closed for bad framing, an oversized frame or a first frame that is not STUN.
    pub junk: u64,
    /// Closed because no frame came within `FIRST_FRAME`, or no session took them within
    /// `ICE_TIMEOUT`.
    pub ice_timeouts: u64,
    /// Frames dropped because the client did not read them fast enough.
    pub dropped: u64,
}

impl TcpStats {
    pub fn merge(&mut self, o: &TcpStats) {
        self.connections += o.connections;
        self.in_use += o.in_use;
        self.accepted += o.accepted;
        self.refused += o.refused;
        self.junk += o.junk;
        self.ice_timeouts += o.ice_timeouts;
        self.dropped += o.dropped;
    }
}

struct Conn {
    out: mpsc::Sender<Bytes>,
    opened: Instant,
}

/// A worker's ICE-TCP connections, by the peer address the shard knows them by.
#[derive(Default)]
pub struct TcpPeers {
    conns: HashMap<SocketAddr, Conn>,
    stats: TcpStats,
}

impl TcpPeers {
    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    pub fn contains(&self, peer: SocketAddr) -> bool {
        self.conns.contains_key(&peer)
    }

    /// Refuses a connection from an address a UDP session already uses (its packets would be
    /// taken for that session's).
    pub fn refuse(&mut self, e: TcpEvent) {
        if let TcpEvent::Opened(..) = e {
            self.stats.refused += 1;
        }
    }

    /// Applies a connection task's event; a frame comes back for the shard.
    pub fn event(&mut self, now: Instant, e: TcpEvent) -> Option<(SocketAddr, BytesMut)> {
        match e {
            TcpEvent::Opened(peer, out) => {
                if self.conns.len() >= MAX_CONNECTIONS {
                    self.stats.refused += 1;
                    if self.stats.refused.is_power_of_two() {
                        debug!(
                            refused = self.stats.refused,
                            "ICE-TCP connection limit reached"
                        );
                    }
                } else {
                    self.stats.accepted += 1;
                    self.conns.insert(peer, Conn { out, opened: now });
                }
                None
            }
            TcpEvent::Frame(peer, data) => self.conns.contains_key(&peer).then_some((peer, data)),
            TcpEvent::Junk(peer, why) => {
                self.stats.junk += 1;
                if self.stats.junk.is_power_of_two() {
                    debug!(%peer, why, junk = self.stats.junk, "ICE-TCP connection closed");
                }
                self.conns.remove(&peer);
                None
            }
            TcpEvent::Silent(peer) => {
                self.stats.ice_timeouts += u64::from(self.conns.remove(&peer).is_some());
                None
            }
            TcpEvent::Closed(peer) => {
                self.conns.remove(&peer);
                None
            }
        }
    }

    /// Queues a packet for `to` if it is one of these connections; false if it is not (a UDP
    /// peer). A full queue drops the packet.
    pub fn send(&mut self, to: SocketAddr, data: &[u8]) -> bool {
        let Some(c) = self.conns.get(&to) else {
            return false;
        };
        if c.out.try_send(Bytes::copy_from_slice(data)).is_err() {
            self.stats.dropped += 1;
        }
        true
    }

    /// Closes the connections no session took within `ICE_TIMEOUT`; `in_use` says which
    /// addresses sessions use now.
    pub fn expire(&mut self, now: Instant, in_use: impl Fn(SocketAddr) -> bool) {
        let before = self.conns.len();
        self.conns
            .retain(|peer, c| in_use(*peer) || now.duration_since(c.opened) < ICE_TIMEOUT);
        self.stats.ice_timeouts += (before - self.conns.len()) as u64;
        self.stats.in_use = self.conns.keys().filter(|p| in_use(**p)).count();
    }

    pub fn stats(&self) -> TcpStats {
        TcpStats {
            connections: self.conns.len(),
            ..self.stats
        }
    }
}

/// Accepts connections until the listener fails; each gets its own task on this runtime.
pub async fn accept_loop(listener: TcpListener, events: mpsc::Sender<TcpEvent>) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let (out, rx) = mpsc::channel(OUT_QUEUE);
                if events.send(TcpEvent::Opened(peer, out)).await.is_err() {
                    return;
                }
                tokio::spawn(run_conn(stream, peer, events.clone(), rx));
            }
            Err(e) => {
                // Out of descriptors, for one: wait rather than spin.
                debug!(error = %e, "ICE-TCP accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Splits whole RFC 4571 frames off the front of `buf`; `Err` for a frame that cannot be one.
pub fn next_frame(buf: &mut BytesMut) -> Result<Option<BytesMut>, &'static str> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let len = usize::from(u16::from_be_bytes([buf[0], buf[1]]));
    if len == 0 {
        return Err("empty frame");
    }
    if len > MAX_FRAME {
        return Err("oversized frame");
    }
    if buf.len() < 2 + len {
        return Ok(None);
    }
    buf.advance(2);
    Ok(Some(buf.split_to(len)))
}

async fn run_conn(
    stream: TcpStream,
    peer: SocketAddr,
    events: mpsc::Sender<TcpEvent>,
    mut out: mpsc::Receiver<Bytes>,
) {
    let _ = stream.set_nodelay(true);
    let (mut rd, mut wr) = stream.into_split();
    let mut buf = BytesMut::with_capacity(8 * 1024);
    let mut wbuf: Vec<u8> = Vec::with_capacity(2 + MAX_FRAME);
    let first_deadline = tokio::time::Instant::now() + FIRST_FRAME;
    let mut started = false;
    let closing = 'conn: loop {
        tokio::select! {
            r = rd.read_buf(&mut buf) => {
                match r {
                    Ok(0) | Err(_) => break 'conn TcpEvent::Closed(peer),
                    Ok(_) => {}
                }
                loop {
                    match next_frame(&mut buf) {
                        Ok(Some(frame)) => {
                            // STUN's first two bits are zero: ICE must come first.
                            if !started && frame[0] > 3 {
                                break 'conn TcpEvent::Junk(peer, "first frame is not STUN");
                            }
                            started = true;
                            // A full worker queue drops the frame, as a full socket buffer would.
                            let _ = events.try_send(TcpEvent::Frame(peer, frame));
                        }
                        Ok(None) => break,
                        Err(why) => break 'conn TcpEvent::Junk(peer, why),
                    }
                }
                if buf.capacity() - buf.len() < 2 + MAX_FRAME {
                    buf.reserve(8 * 1024);
                }
            }
            m = out.recv() => {
                // The worker dropped the connection (timeout, limit): close it.
                let Some(data) = m else { break 'conn TcpEvent::Closed(peer) };
                wbuf.clear();
                wbuf.extend_from_slice(&(data.len() as u16).to_be_bytes());
                wbuf.extend_from_slice(&data);
                match tokio::time::timeout(WRITE_TIMEOUT, wr.write_all(&wbuf)).await {
                    Ok(Ok(())) => {}
                    _ => break 'conn TcpEvent::Closed(peer),
                }
            }
            _ = tokio::time::sleep_until(first_deadline), if !started => {
                break 'conn TcpEvent::Silent(peer);
            }
        }
    };
    let _ = events.send(closing).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames() {
        type Case<'a> = (&'a [u8], Result<Vec<&'a [u8]>, &'a str>, usize);
        let cases: [Case<'_>; 6] = [
            (&[], Ok(vec![]), 0),
            (&[0], Ok(vec![]), 1),
            (&[0, 3, 1, 2], Ok(vec![]), 4),
            (&[0, 2, 1, 2, 0, 1, 9, 0], Ok(vec![&[1, 2], &[9]]), 1),
            (&[0, 0, 1], Err("empty frame"), 3),
            (&[0x10, 0x01], Err("oversized frame"), 2),
        ];
        for (input, want, left) in cases {
            let mut buf = BytesMut::from(input);
            let mut got = Vec::new();
            let res = loop {
                match next_frame(&mut buf) {
                    Ok(Some(f)) => got.push(f.to_vec()),
                    Ok(None) => break Ok(got),
                    Err(e) => break Err(e),
                }
            };
            match want {
                Ok(w) => assert_eq!(
                    res.unwrap(),
                    w.iter().map(|f| f.to_vec()).collect::<Vec<_>>(),
                    "{input:?}"
                ),
                Err(e) => assert_eq!(res.unwrap_err(), e, "{input:?}"),
            }
            assert_eq!(buf.len(), left, "{input:?}");
        }
    }

    #[test]
    fn peers_route_expire_and_count() {
        let mut peers = TcpPeers::default();
        let now = Instant::now();
        let (a, b): (SocketAddr, SocketAddr) = (
            "10.0.0.1:1000".parse().unwrap(),
            "10.0.0.2:2000".parse().unwrap(),
        );
        let (tx_a, mut rx_a) = mpsc::channel(OUT_QUEUE);
        let (tx_b, _rx_b) = mpsc::channel(OUT_QUEUE);
        assert!(peers.event(now, TcpEvent::Opened(a, tx_a)).is_none());
        assert!(peers.event(now, TcpEvent::Opened(b, tx_b)).is_none());
        let udp: SocketAddr = "10.0.0.3:3000".parse().unwrap();
        assert!(!peers.send(udp, b"x"), "a UDP peer is not ours");
        assert!(peers.send(a, b"hello"));
        assert_eq!(rx_a.try_recv().unwrap().as_ref(), b"hello");
        for _ in 0..OUT_QUEUE + 3 {
            peers.send(a, b"y");
        }
        assert_eq!(peers.stats().dropped, 3);
        let frame = peers.event(now, TcpEvent::Frame(a, BytesMut::from(&b"f"[..])));
        assert_eq!(frame.map(|(p, _)| p), Some(a));
        let stranger: SocketAddr = "10.0.0.9:9".parse().unwrap();
        assert!(peers
            .event(now, TcpEvent::Frame(stranger, BytesMut::from(&b"f"[..])))
            .is_none());
        // a is in use, b is not: after the timeout only a stays.
        peers.expire(now + ICE_TIMEOUT, |p| p == a);
        let s = peers.stats();
        assert_eq!(
            (s.connections, s.in_use, s.ice_timeouts, s.accepted),
            (1, 1, 1, 2)
        );
        peers.event(now, TcpEvent::Junk(a, "oversized frame"));
        assert!(peers.is_empty());
        assert_eq!(peers.stats().junk, 1);
    }
}
