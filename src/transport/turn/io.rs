//! The TURN server's sockets: a UDP listener, TCP and TLS listeners whose connections carry STUN
//! messages and ChannelData back to back (RFC 8656 §11.5), and one UDP relay socket per
//! allocation. One task owns the [`TurnServer`] and every socket's sending side; connection and
//! relay-socket tasks only read and hand their messages over. Limits: [`MAX_CONNECTIONS`] TCP and
//! TLS connections at once, a first message (or TLS handshake) within [`FIRST_MESSAGE`], no
//! allocation for [`IDLE`] closes a connection, messages of at most [`MAX_MESSAGE`] bytes, and
//! queues that drop rather than wait. TURN is the last
//! resort of a few clients: its path copies each packet once more than a worker's.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tokio_rustls::TlsAcceptor;
use tracing::debug;

use super::{Action, Client, Proto, RelayMap, TurnServer, TurnStats};

/// Largest message taken from a client: a media packet in ChannelData or a Send indication.
pub const MAX_MESSAGE: usize = 4096;
/// A connection whose first message (after the TLS handshake) has not come by then is closed,
/// and so is a TLS handshake not done by then.
pub const FIRST_MESSAGE: Duration = Duration::from_secs(5);
/// TCP and TLS connections held at once; more are closed when they arrive.
pub const MAX_CONNECTIONS: usize = 4096;
/// A connection that holds no allocation this long after it opened is closed (its allocation
/// ended, or it never made one).
pub const IDLE: Duration = Duration::from_secs(30);
const OUT_QUEUE: usize = 512;
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// The listeners and the server they feed.
pub struct TurnSetup {
    pub udp: Option<std::net::UdpSocket>,
    pub tcp: Option<std::net::TcpListener>,
    pub tls: Option<(std::net::TcpListener, TlsAcceptor)>,
    pub server: TurnServer,
    /// The address relay sockets bind (and so the source the workers see).
    pub relay_ip: IpAddr,
    pub relays: RelayMap,
    /// The media sockets' own addresses: the only sources a relay socket takes datagrams from.
    pub media: Arc<HashSet<SocketAddr>>,
    /// Where the server's figures are published, once a second.
    pub stats: Arc<Mutex<TurnStats>>,
}

enum In {
    Opened(Client, mpsc::Sender<Bytes>),
    Message(Client, BytesMut),
    Closed(Client),
    Peer(SocketAddr, SocketAddr, BytesMut),
}

/// Cuts one STUN message or ChannelData off the front of a stream; `Err` when the stream is
/// neither. ChannelData's padding to 4 bytes is consumed with it.
pub fn next_message(buf: &mut BytesMut) -> Result<Option<BytesMut>, &'static str> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = usize::from(u16::from_be_bytes([buf[2], buf[3]]));
    let (whole, padded) = match buf[0] >> 6 {
        0 => (20 + len, 20 + len),
        1 => (4 + len, 4 + len.div_ceil(4) * 4),
        _ => return Err("neither STUN nor ChannelData"),
    };
    if padded > MAX_MESSAGE {
        return Err("oversized message");
    }
    if buf.len() < padded {
        return Ok(None);
    }
    let msg = buf.split_to(whole);
    buf.advance(padded - whole);
    Ok(Some(msg))
}

/// Starts the listeners and the server's task on the current runtime.
pub fn spawn(setup: TurnSetup) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let (tx, rx) = mpsc::channel::<In>(8192);
    let open = Arc::new(AtomicUsize::new(0));
    if let Some(l) = setup.tcp {
        l.set_nonblocking(true)?;
        let l = TcpListener::from_std(l)?;
        tokio::spawn(accept_loop(l, None, tx.clone(), open.clone()));
    }
    if let Some((l, acceptor)) = setup.tls {
        l.set_nonblocking(true)?;
        let l = TcpListener::from_std(l)?;
        tokio::spawn(accept_loop(l, Some(acceptor), tx.clone(), open));
    }
    let udp = match setup.udp {
        Some(s) => {
            s.set_nonblocking(true)?;
            Some(UdpSocket::from_std(s)?)
        }
        None => None,
    };
    let core = Core {
        server: setup.server,
        relay_ip: setup.relay_ip,
        media: setup.media,
        relay_map: setup.relays,
        relays: HashMap::new(),
        conns: HashMap::new(),
        tx,
        published: setup.stats,
    };
    Ok(tokio::spawn(core.run(udp, rx)))
}

struct Core {
    server: TurnServer,
    relay_ip: IpAddr,
    media: Arc<HashSet<SocketAddr>>,
    relay_map: RelayMap,
    relays: HashMap<SocketAddr, (Arc<UdpSocket>, AbortHandle)>,
    conns: HashMap<Client, (mpsc::Sender<Bytes>, Instant)>,
    tx: mpsc::Sender<In>,
    published: Arc<Mutex<TurnStats>>,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Core {
    async fn run(mut self, udp: Option<UdpSocket>, mut rx: mpsc::Receiver<In>) {
        let mut buf = vec![0u8; MAX_MESSAGE];
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut actions = Vec::new();
        loop {
            tokio::select! {
                r = async { udp.as_ref().unwrap().recv_from(&mut buf).await }, if udp.is_some() => {
                    if let Ok((n, from)) = r {
                        let client = Client { proto: Proto::Udp, addr: from };
                        self.message(client, &buf[..n], &mut actions);
                    }
                }
                Some(e) = rx.recv() => match e {
                    In::Opened(c, out) => { self.conns.insert(c, (out, Instant::now())); }
                    In::Message(c, m) => {
                        if self.conns.contains_key(&c) {
                            self.message(c, &m, &mut actions);
                        }
                    }
                    In::Closed(c) => {
                        self.conns.remove(&c);
                        self.server.closed(c, &mut actions);
                    }
                    In::Peer(relay, from, data) => {
                        self.server.from_peer(Instant::now(), relay, from, &data, &mut actions);
                    }
                },
                _ = tick.tick() => {
                    let now = Instant::now();
                    self.server.expire(now, &mut actions);
                    // Dropping a connection's queue closes it.
                    let server = &self.server;
                    self.conns.retain(|c, (_, opened)| {
                        server.has_allocation(*c) || now.duration_since(*opened) < IDLE
                    });
                    if let Ok(mut s) = self.published.lock() {
                        *s = self.server.stats();
                    }
                }
            }
            for a in actions.drain(..) {
                self.apply(udp.as_ref(), a);
            }
        }
    }

    fn message(&mut self, client: Client, data: &[u8], actions: &mut Vec<Action>) {
        let (relay_ip, tx, relays, map, media) = (
            self.relay_ip,
            &self.tx,
            &mut self.relays,
            &self.relay_map,
            &self.media,
        );
        let mut bind = || -> std::io::Result<SocketAddr> {
            let s = std::net::UdpSocket::bind((relay_ip, 0))?;
            s.set_nonblocking(true)?;
            let s = Arc::new(UdpSocket::from_std(s)?);
            let addr = s.local_addr()?;
            let task = tokio::spawn(read_relay(s.clone(), addr, tx.clone(), media.clone()));
            relays.insert(addr, (s, task.abort_handle()));
            map.insert(addr, client.proto);
            Ok(addr)
        };
        self.server
            .handle(Instant::now(), unix_now(), client, data, &mut bind, actions);
    }

    fn apply(&mut self, udp: Option<&UdpSocket>, a: Action) {
        match a {
            Action::Reply(c, bytes) => match c.proto {
                Proto::Udp => {
                    if let Some(u) = udp {
                        let _ = u.try_send_to(&bytes, c.addr);
                    }
                }
                _ => {
                    if let Some((out, _)) = self.conns.get(&c) {
                        let _ = out.try_send(Bytes::from(bytes));
                    }
                }
            },
            Action::Relay { relay, to, data } => {
                if let Some((s, _)) = self.relays.get(&relay) {
                    let _ = s.try_send_to(&data, to);
                }
            }
            Action::Release(relay) => {
                if let Some((_, task)) = self.relays.remove(&relay) {
                    task.abort();
                }
                self.relay_map.remove(relay);
            }
        }
    }
}

async fn read_relay(
    s: Arc<UdpSocket>,
    addr: SocketAddr,
    tx: mpsc::Sender<In>,
    media: Arc<HashSet<SocketAddr>>,
) {
    let mut buf = BytesMut::with_capacity(4096);
    loop {
        buf.reserve(2048);
        match s.recv_buf_from(&mut buf).await {
            Ok((_, from)) => {
                let data = buf.split();
                // Anyone may send to a relay socket; only the media sockets' datagrams are
                // relayed (the server would drop the rest), so the rest never take queue room.
                if !media.contains(&from) {
                    continue;
                }
                // A full queue drops the packet, as a full socket buffer would.
                let _ = tx.try_send(In::Peer(addr, from, data));
            }
            Err(e) => {
                debug!(relay = %addr, error = %e, "TURN relay socket failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Frees a connection's slot when its task ends.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn accept_loop(
    l: TcpListener,
    tls: Option<TlsAcceptor>,
    tx: mpsc::Sender<In>,
    open: Arc<AtomicUsize>,
) {
    let proto = if tls.is_some() {
        Proto::Tls
    } else {
        Proto::Tcp
    };
    loop {
        let (stream, addr) = match l.accept().await {
            Ok(a) => a,
            Err(e) => {
                debug!(error = %e, "TURN accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if open.fetch_add(1, Ordering::Relaxed) >= MAX_CONNECTIONS {
            open.fetch_sub(1, Ordering::Relaxed);
            debug!(peer = %addr, "TURN connection limit reached");
            continue;
        }
        let slot = Slot(open.clone());
        let client = Client { proto, addr };
        let _ = stream.set_nodelay(true);
        let tx = tx.clone();
        match tls.clone() {
            None => {
                tokio::spawn(async move {
                    let _slot = slot;
                    run_conn(stream, client, tx).await
                });
            }
            Some(acceptor) => {
                tokio::spawn(async move {
                    let _slot = slot;
                    match tokio::time::timeout(FIRST_MESSAGE, acceptor.accept(stream)).await {
                        Ok(Ok(s)) => run_conn(s, client, tx).await,
                        _ => debug!(peer = %addr, "TURN TLS handshake failed"),
                    }
                });
            }
        }
    }
}

async fn run_conn<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    client: Client,
    tx: mpsc::Sender<In>,
) {
    let (out_tx, mut out) = mpsc::channel::<Bytes>(OUT_QUEUE);
    if tx.send(In::Opened(client, out_tx)).await.is_err() {
        return;
    }
    let (mut rd, mut wr) = tokio::io::split(stream);
    let mut buf = BytesMut::with_capacity(8 * 1024);
    let first = tokio::time::Instant::now() + FIRST_MESSAGE;
    let mut started = false;
    'conn: loop {
        tokio::select! {
            r = rd.read_buf(&mut buf) => {
                if !matches!(r, Ok(n) if n > 0) {
                    break 'conn;
                }
                loop {
                    match next_message(&mut buf) {
                        Ok(Some(m)) => {
                            started = true;
                            // Requests wait for room (a stream does not retransmit them);
                            // media (ChannelData) is dropped when the server is behind.
                            if m[0] >> 6 == 1 {
                                let _ = tx.try_send(In::Message(client, m));
                            } else if tx.send(In::Message(client, m)).await.is_err() {
                                break 'conn;
                            }
                        }
                        Ok(None) => break,
                        Err(why) => {
                            debug!(peer = %client.addr, why, "TURN connection closed");
                            break 'conn;
                        }
                    }
                }
                if buf.capacity() - buf.len() < MAX_MESSAGE {
                    buf.reserve(8 * 1024);
                }
            }
            m = out.recv() => {
                let Some(data) = m else { break 'conn };
                match tokio::time::timeout(WRITE_TIMEOUT, wr.write_all(&data)).await {
                    Ok(Ok(())) => {}
                    _ => break 'conn,
                }
            }
            _ = tokio::time::sleep_until(first), if !started => break 'conn,
        }
    }
    let _ = tx.send(In::Closed(client)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_messages() {
        // (stream, messages cut, bytes left or the error)
        let stun = {
            let mut m = vec![0x00, 0x01, 0x00, 0x04];
            m.extend_from_slice(&[0x21, 0x12, 0xa4, 0x42]);
            m.extend_from_slice(&[7; 12]);
            m.extend_from_slice(&[0, 0, 0, 0]);
            m
        };
        type Case = (Vec<u8>, Result<(Vec<Vec<u8>>, usize), &'static str>);
        let cases: [Case; 6] = [
            (vec![0x40, 0x00], Ok((vec![], 2))),
            (
                vec![0x40, 0x00, 0x00, 0x03, 1, 2, 3, 0, 0x40],
                Ok((vec![vec![0x40, 0x00, 0x00, 0x03, 1, 2, 3]], 1)),
            ),
            (vec![0x40, 0x00, 0x00, 0x03, 1, 2, 3], Ok((vec![], 7))),
            (stun.clone(), Ok((vec![stun.clone()], 0))),
            (vec![0x80, 0, 0, 0], Err("neither STUN nor ChannelData")),
            (vec![0x40, 0, 0xff, 0xff], Err("oversized message")),
        ];
        for (input, want) in cases {
            let mut buf = BytesMut::from(&input[..]);
            let mut got = Vec::new();
            let res = loop {
                match next_message(&mut buf) {
                    Ok(Some(m)) => got.push(m.to_vec()),
                    Ok(None) => break Ok((got, buf.len())),
                    Err(e) => break Err(e),
                }
            };
            assert_eq!(res, want, "{input:?}");
        }
    }
}
