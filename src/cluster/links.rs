//! A node's relay links: the QUIC endpoint other nodes dial (`cluster.relay`, ALPN
//! `volna-relay/1`, a self-signed certificate whose SHA-256 the node publishes in its record for
//! the others to pin), the handshake that checks the cluster secret both ways, and the manager
//! that keeps one link per pair of nodes serving a room together. Twice a second it reads the
//! room directory the heartbeat last fetched: for each live node that serves one of this node's
//! rooms there must be a link (the node with the smaller id dials), and each link is told which
//! rooms its two nodes share; a link to a node that is gone is closed.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::link::{
    exported, mac, mac_ok, recv, send, Carried, Link, LinkCmd, Message, CLOSE_UNAUTHORIZED,
};
use super::media::Media;
use super::{Cluster, NodeRecord};
use crate::transport::quic::endpoint::{read_frame, RELAY_ALPN};
use crate::transport::quic::pin::client_config;

/// How long a peer has to open its control stream and say hello (or answer one).
const HANDSHAKE: Duration = Duration::from_secs(5);
/// Handshakes in progress at once; connections past this are refused at once (strangers
/// cannot hold more than this many tasks).
const MAX_HANDSHAKES: usize = 64;
/// Largest hello or welcome.
const MAX_HELLO: usize = 1024;

/// A link that hears nothing for this long is dead (its node was killed or cut off): its
/// relayed publishers leave at once, before the node's record expires.
pub const LINK_IDLE: Duration = Duration::from_secs(2);

/// QUIC settings of relay links, both ends: keep-alives well within [`LINK_IDLE`], one control
/// stream, room for bursts of media datagrams.
pub fn transport() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.max_idle_timeout(Some(LINK_IDLE.try_into().expect("2 s fits")));
    t.keep_alive_interval(Some(LINK_IDLE / 5));
    t.max_concurrent_bidi_streams(1u32.into());
    t.max_concurrent_uni_streams(0u32.into());
    t.datagram_receive_buffer_size(Some(4 << 20));
    t.datagram_send_buffer_size(4 << 20);
    Arc::new(t)
}

/// A link as `GET /cluster` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct LinkStats {
    pub peer: String,
    pub rooms: Vec<String>,
    pub rtt_ms: u64,
    pub sent_bytes: u64,
    pub received_bytes: u64,
    pub datagrams_sent: u64,
    pub datagrams_received: u64,
    pub lost_packets: u64,
    /// Streams this node sends over the link now: audio and video tracks, a simulcast
    /// track's layers each counted.
    pub streams_sent: u64,
    /// Simulcast layers this node asks of the peer now.
    pub layers_wanted: u64,
    /// What the link's congestion controller lets it send (see `link::budget_bps`).
    pub budget_bps: u64,
}

struct Held {
    cmds: mpsc::Sender<LinkCmd>,
    /// When the link came up: a peer not (yet) among the live nodes gets the nodes' TTL to
    /// appear before its link is closed.
    since: std::time::Instant,
    conn: quinn::Connection,
    rooms: Vec<String>,
    carried: Arc<Carried>,
}

enum Event {
    Up(Link),
    DialEnded(String),
}

/// Runs the endpoint and the links until the endpoint closes.
pub async fn run(cluster: Cluster, media: Arc<dyn Media>, endpoint: quinn::Endpoint) {
    let me = cluster.settings().node_id.clone();
    let secret = cluster.settings().secret.clone();
    let (events_tx, mut events) = mpsc::channel::<Event>(64);
    {
        let (endpoint, me, secret, events_tx, cluster) = (
            endpoint.clone(),
            me.clone(),
            secret.clone(),
            events_tx.clone(),
            cluster.clone(),
        );
        let pending = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
        tokio::spawn(async move {
            while let Some(incoming) = endpoint.accept().await {
                let Ok(permit) = pending.clone().try_acquire_owned() else {
                    incoming.refuse();
                    let n = cluster.link_refused();
                    if n.is_power_of_two() {
                        warn!(
                            refused = n,
                            "relay link refused: too many handshakes at once"
                        );
                    }
                    continue;
                };
                let (me, secret, events_tx, cluster) = (
                    me.clone(),
                    secret.clone(),
                    events_tx.clone(),
                    cluster.clone(),
                );
                tokio::spawn(async move {
                    let _permit = permit;
                    let remote = incoming.remote_address();
                    match tokio::time::timeout(HANDSHAKE * 3, accept(incoming, &me, &secret)).await
                    {
                        Ok(Ok(link)) => {
                            let _ = events_tx.send(Event::Up(link)).await;
                        }
                        r => {
                            let n = cluster.link_refused();
                            if n.is_power_of_two() {
                                let why = match r {
                                    Ok(Err(e)) => e,
                                    _ => "handshake timed out".into(),
                                };
                                warn!(peer = %remote, refused = n, why, "relay link refused");
                            }
                        }
                    }
                });
            }
        });
    }
    let mut links: HashMap<String, Held> = HashMap::new();
    let mut dialing: Vec<String> = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            e = events.recv() => match e {
                Some(Event::Up(link)) => {
                    let peer = link.peer.clone();
                    dialing.retain(|p| p != &peer);
                    if let Some(old) = links.remove(&peer) {
                        let _ = old.cmds.try_send(LinkCmd::Close);
                        old.conn.close(super::link::CLOSE_GONE.into(), b"replaced");
                    }
                    info!(peer = %peer, addr = %link.conn.remote_address(), "relay link up");
                    let (cmds, rx) = mpsc::channel(16);
                    let conn = link.conn.clone();
                    let carried = Arc::new(Carried::default());
                    tokio::spawn(link.run(media.clone(), rx, carried.clone()));
                    links.insert(peer, Held { cmds, since: std::time::Instant::now(), conn, rooms: Vec::new(), carried });
                    tick.reset_immediately();
                }
                Some(Event::DialEnded(peer)) => dialing.retain(|p| p != &peer),
                None => return,
            },
            _ = tick.tick() => {
                let (nodes, rooms) = cluster.directory();
                let ttl = cluster.settings().ttl;
                links.retain(|peer, h| {
                    let keep = !h.cmds.is_closed()
                        && (nodes.iter().any(|n| &n.id == peer) || h.since.elapsed() < ttl);
                    if !keep {
                        let _ = h.cmds.try_send(LinkCmd::Close);
                        h.conn.close(super::link::CLOSE_GONE.into(), b"node gone");
                    }
                    keep
                });
                for n in nodes.iter().filter(|n| n.id != me && !n.relay.is_empty()) {
                    let shared: Vec<String> = rooms
                        .iter()
                        .filter(|(_, at)| at.contains(&n.id))
                        .map(|(r, _)| r.clone())
                        .collect();
                    match links.get_mut(&n.id) {
                        Some(h) => {
                            h.rooms = shared.clone();
                            let _ = h.cmds.try_send(LinkCmd::Shared(shared));
                        }
                        None if !shared.is_empty() && me < n.id && !dialing.contains(&n.id) => {
                            dialing.push(n.id.clone());
                            let (endpoint, me, secret, node, events_tx) =
                                (endpoint.clone(), me.clone(), secret.clone(), n.clone(), events_tx.clone());
                            tokio::spawn(async move {
                                match tokio::time::timeout(HANDSHAKE * 2, dial(&endpoint, &me, &secret, &node)).await {
                                    Ok(Ok(link)) => {
                                        let _ = events_tx.send(Event::Up(link)).await;
                                    }
                                    Ok(Err(e)) => debug!(peer = %node.id, error = %e, "relay link: dial failed"),
                                    Err(_) => debug!(peer = %node.id, "relay link: dial timed out"),
                                }
                                let _ = events_tx.send(Event::DialEnded(node.id.clone())).await;
                            });
                        }
                        None => {}
                    }
                }
                cluster.set_links(links.iter().map(|(peer, h)| stats(peer, h)).collect());
            }
        }
    }
}

fn stats(peer: &str, h: &Held) -> LinkStats {
    let s = h.conn.stats();
    LinkStats {
        peer: peer.to_owned(),
        rooms: h.rooms.clone(),
        rtt_ms: h.conn.rtt().as_millis() as u64,
        sent_bytes: s.udp_tx.bytes,
        received_bytes: s.udp_rx.bytes,
        datagrams_sent: s.frame_tx.datagram,
        datagrams_received: s.frame_rx.datagram,
        lost_packets: s.path.lost_packets,
        streams_sent: h.carried.streams_sent.load(Ordering::Relaxed),
        layers_wanted: h.carried.layers_wanted.load(Ordering::Relaxed),
        budget_bps: h.carried.budget_bps.load(Ordering::Relaxed),
    }
}

async fn dial(
    endpoint: &quinn::Endpoint,
    me: &str,
    secret: &str,
    peer: &NodeRecord,
) -> Result<Link, String> {
    let addr: SocketAddr = tokio::net::lookup_host(&peer.relay)
        .await
        .map_err(|e| e.to_string())?
        .next()
        .ok_or("relay address resolves to nothing")?;
    let mut config =
        client_config(Some(&peer.relay_cert), RELAY_ALPN).map_err(|e| e.to_string())?;
    config.transport_config(transport());
    let conn = endpoint
        .connect_with(config, addr, "volna")
        .map_err(|e| e.to_string())?
        .await
        .map_err(|e| e.to_string())?;
    let (mut tx, mut rx) = conn.open_bi().await.map_err(|e| e.to_string())?;
    let ex = exported(&conn);
    let hello = Message::Hello {
        v: 1,
        node: me.to_owned(),
        mac: mac(secret, "dialer", me, &peer.id, &ex),
    };
    if !send(&mut tx, &hello).await {
        return Err("control stream closed".into());
    }
    match tokio::time::timeout(HANDSHAKE, recv(&mut rx)).await {
        Ok(Ok(Some(Message::Welcome { node, mac: m })))
            if node == peer.id && mac_ok(&m, &mac(secret, "acceptor", &node, me, &ex)) =>
        {
            Ok(Link {
                peer: node,
                conn,
                send: tx,
                recv: rx,
                parity: 0,
            })
        }
        _ => {
            conn.close(CLOSE_UNAUTHORIZED.into(), b"unauthorized");
            Err("the peer did not prove the cluster secret".into())
        }
    }
}

async fn accept(incoming: quinn::Incoming, me: &str, secret: &str) -> Result<Link, String> {
    let conn = incoming.await.map_err(|e| e.to_string())?;
    let refuse = |conn: &quinn::Connection, why: &str| {
        conn.close(CLOSE_UNAUTHORIZED.into(), b"unauthorized");
        Err(why.to_owned())
    };
    let Ok(Ok((mut tx, mut rx))) = tokio::time::timeout(HANDSHAKE, conn.accept_bi()).await else {
        return refuse(&conn, "no control stream");
    };
    let hello = tokio::time::timeout(HANDSHAKE, read_frame(&mut rx, MAX_HELLO))
        .await
        .map(|r| match r {
            Ok(Some(body)) => serde_json::from_slice::<Message>(&body)
                .map(Some)
                .map_err(|e| e.to_string()),
            Ok(None) => Ok(None),
            Err(e) => Err(e.to_string()),
        });
    let ex = exported(&conn);
    let peer = match hello {
        Ok(Ok(Some(Message::Hello { v: 1, node, mac: m })))
            if node != me
                && crate::session::valid_name(&node)
                && mac_ok(&m, &mac(secret, "dialer", &node, me, &ex)) =>
        {
            node
        }
        Ok(Ok(Some(Message::Hello { .. }))) => return refuse(&conn, "bad cluster secret"),
        _ => return refuse(&conn, "no hello"),
    };
    let welcome = Message::Welcome {
        node: me.to_owned(),
        mac: mac(secret, "acceptor", me, &peer, &ex),
    };
    if !send(&mut tx, &welcome).await {
        return Err("control stream closed".into());
    }
    Ok(Link {
        peer,
        conn,
        send: tx,
        recv: rx,
        parity: 1,
    })
}
