//! One relay link: a QUIC connection between two nodes (ALPN `volna-relay/1`), its control
//! stream and its datagrams. The dialing node proves it holds the cluster secret (an HMAC over
//! both node ids and keying material exported from this very connection, so it cannot be
//! replayed) and the accepting node answers in kind; anything else closes the connection.
//! Then, for each room both serve, each side says which of its own publishers are there
//! (`sources`, every half second); the other subscribes to each on a datagram flow of its
//! choosing (`subscribe`/`subscribed`), makes a relayed publisher of it in its own room, and
//! drops it when it is no longer listed (`unsubscribe`). Media arrives as RoQ datagrams on the
//! subscription's flow; the relayed publisher's feedback (NACK, PLI) goes back on the same flow
//! to the origin's subscriber session, which resends and asks for key frames as for any viewer.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::media::{Media, Route};
use crate::session::connection::Origin;
use crate::session::quic::{QuicTrack, RelaySource};
use crate::transport::quic::endpoint::read_frame;
use crate::transport::quic::roq::{frame, split_datagram};

/// Largest control message (a `sources` list of a big room fits easily).
pub const MAX_MESSAGE: usize = 256 * 1024;
/// Subscriptions one link may hold in each direction.
pub const MAX_FLOWS: usize = 8192;
/// QUIC close codes of a link.
pub const CLOSE_UNAUTHORIZED: u32 = 0x10;
pub const CLOSE_PROTOCOL: u32 = 0x11;
pub const CLOSE_GONE: u32 = 0x12;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Message {
    Hello {
        v: u32,
        node: String,
        mac: String,
    },
    Welcome {
        node: String,
        mac: String,
    },
    Sources {
        room: String,
        sources: Vec<RelaySource>,
    },
    Subscribe {
        room: String,
        publisher: String,
        flow: u64,
    },
    Subscribed {
        flow: u64,
        tracks: Vec<QuicTrack>,
    },
    Refused {
        flow: u64,
        code: u16,
        reason: String,
    },
    Unsubscribe {
        flow: u64,
    },
}

/// What the link manager tells a link.
pub enum LinkCmd {
    /// The rooms both nodes serve now.
    Shared(Vec<String>),
    Close,
}

/// The MAC of a hello (`role` "dialer") or welcome ("acceptor"): HMAC-SHA256 with the cluster
/// secret over the role, both ids and the connection's exported keying material.
pub fn mac(secret: &str, role: &str, from: &str, to: &str, exported: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let mut ctx = ring::hmac::Context::with_key(&key);
    for part in [
        role.as_bytes(),
        b"|",
        from.as_bytes(),
        b"|",
        to.as_bytes(),
        b"|",
        exported,
    ] {
        ctx.update(part);
    }
    crate::transport::quic::endpoint::hex(ctx.sign().as_ref())
}

/// Keying material both ends of this connection derive alike and no other connection shares.
pub fn exported(conn: &quinn::Connection) -> Vec<u8> {
    let mut out = vec![0u8; 32];
    // Fails only for a connection without TLS, which quinn does not make.
    let _ = conn.export_keying_material(&mut out, b"EXPORTER-volna-relay", b"");
    out
}

/// Compares two MACs in constant time.
pub fn mac_ok(got: &str, want: &str) -> bool {
    got.len() == want.len()
        && got
            .bytes()
            .zip(want.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

pub async fn send(s: &mut quinn::SendStream, m: &Message) -> bool {
    match serde_json::to_vec(m) {
        Ok(body) => s.write_all(&frame(&body)).await.is_ok(),
        Err(_) => false,
    }
}

pub async fn recv(r: &mut quinn::RecvStream) -> Result<Option<Message>, String> {
    match read_frame(r, MAX_MESSAGE).await {
        Ok(Some(body)) => serde_json::from_slice(&body)
            .map(Some)
            .map_err(|e| format!("bad message: {e}")),
        Ok(None) => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

struct Inbound {
    room: String,
    publisher: String,
    route: Option<Route>,
    origin: Origin,
    /// The mids muted at the origin, as last listed, and as applied here.
    muted: Vec<String>,
    applied: Vec<String>,
}

/// Mirrors the origin's mute state on the relayed copy: what changed since it was last applied.
async fn apply_mute(media: &dyn Media, i: &mut Inbound) {
    if i.route.is_none() || i.muted == i.applied {
        return;
    }
    for mid in i.muted.iter().filter(|m| !i.applied.contains(m)) {
        media
            .mute(&i.room, format!("{}-{mid}", i.publisher), true)
            .await;
    }
    for mid in i.applied.iter().filter(|m| !i.muted.contains(m)) {
        media
            .mute(&i.room, format!("{}-{mid}", i.publisher), false)
            .await;
    }
    i.applied = i.muted.clone();
}

/// A link after the handshake, until the connection ends or the manager closes it.
pub struct Link {
    pub peer: String,
    pub conn: quinn::Connection,
    pub send: quinn::SendStream,
    pub recv: quinn::RecvStream,
    /// Flows this side opens are even on the dialer's side, odd on the acceptor's.
    pub parity: u64,
}

impl Link {
    pub async fn run(
        mut self,
        media: std::sync::Arc<dyn Media>,
        mut cmds: mpsc::Receiver<LinkCmd>,
    ) {
        let peer = self.peer.clone();
        let mut shared: HashSet<String> = HashSet::new();
        // Flow -> this side's subscription to the peer's publisher.
        let mut inbound: HashMap<u64, Inbound> = HashMap::new();
        // Flow -> the subscriber session serving the peer here.
        let mut outbound: HashMap<u64, Route> = HashMap::new();
        let mut next_flow = self.parity;
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        let why = loop {
            tokio::select! {
                m = recv(&mut self.recv) => {
                    let m = match m {
                        Ok(Some(m)) => m,
                        Ok(None) => break "control stream ended",
                        Err(e) => {
                            warn!(peer = %peer, error = %e, "relay link: bad control stream, closing it");
                            self.conn.close(CLOSE_PROTOCOL.into(), b"bad control stream");
                            break "bad control stream";
                        }
                    };
                    match m {
                        Message::Sources { room, sources } => {
                            let listed: Vec<&RelaySource> = if shared.contains(&room) { sources.iter().collect() } else { Vec::new() };
                            // Gone from the list: drop the relayed copy.
                            let gone: Vec<u64> = inbound.iter()
                                .filter(|(_, i)| i.room == room && !listed.iter().any(|s| s.publisher == i.publisher))
                                .map(|(f, _)| *f).collect();
                            for f in gone {
                                if let Some(i) = inbound.remove(&f) {
                                    media.close(i.route.into_iter().collect());
                                }
                                if !send(&mut self.send, &Message::Unsubscribe { flow: f }).await { break; }
                            }
                            for s in listed {
                                if let Some(i) = inbound.values_mut().find(|i| i.room == room && i.publisher == s.publisher) {
                                    i.muted = s.muted.clone();
                                    apply_mute(media.as_ref(), i).await;
                                    continue;
                                }
                                if inbound.len() >= MAX_FLOWS {
                                    continue;
                                }
                                let flow = next_flow;
                                next_flow += 2;
                                inbound.insert(flow, Inbound {
                                    room: room.clone(),
                                    publisher: s.publisher.clone(),
                                    route: None,
                                    origin: Origin { node: peer.clone(), id: s.publisher.clone(), identity: s.identity.clone(), name: s.name.clone() },
                                    muted: s.muted.clone(),
                                    applied: Vec::new(),
                                });
                                let sub = Message::Subscribe { room: room.clone(), publisher: s.publisher.clone(), flow };
                                if !send(&mut self.send, &sub).await { break; }
                            }
                        }
                        Message::Subscribe { room, publisher, flow } => {
                            let reply = if flow % 2 == self.parity || outbound.contains_key(&flow) || outbound.len() >= MAX_FLOWS || !shared.contains(&room) {
                                Message::Refused { flow, code: 409, reason: "flow_refused".into() }
                            } else {
                                match media.subscribe(&room, &publisher, flow, self.conn.clone()).await {
                                    Ok((route, tracks)) => {
                                        outbound.insert(flow, route);
                                        Message::Subscribed { flow, tracks }
                                    }
                                    Err(e) => Message::Refused { flow, code: e.code, reason: e.reason.into() },
                                }
                            };
                            if !send(&mut self.send, &reply).await { break "control stream ended"; }
                        }
                        Message::Subscribed { flow, tracks } => {
                            let Some(i) = inbound.get_mut(&flow).filter(|i| i.route.is_none()) else { continue };
                            match media.publish(&i.room, tracks, flow, self.conn.clone(), i.origin.clone()).await {
                                Ok(route) => {
                                    info!(peer = %peer, room = %i.room, publisher = %i.publisher, flow, "relay link: publisher relayed here");
                                    i.route = Some(route);
                                    apply_mute(media.as_ref(), i).await;
                                }
                                Err(e) => {
                                    debug!(peer = %peer, error = %e.message, "relay link: relayed publisher refused here");
                                    inbound.remove(&flow);
                                    if !send(&mut self.send, &Message::Unsubscribe { flow }).await { break "control stream ended"; }
                                }
                            }
                        }
                        Message::Refused { flow, reason, .. } => {
                            debug!(peer = %peer, flow, reason, "relay link: subscription refused");
                            inbound.remove(&flow);
                        }
                        Message::Unsubscribe { flow } => {
                            if let Some(r) = outbound.remove(&flow) {
                                media.close(vec![r]);
                            }
                        }
                        Message::Hello { .. } | Message::Welcome { .. } => {
                            self.conn.close(CLOSE_PROTOCOL.into(), b"unexpected handshake");
                            break "unexpected handshake";
                        }
                    }
                }
                d = self.conn.read_datagram() => {
                    let Ok(d) = d else { break "connection closed" };
                    let Ok((flow, _)) = split_datagram(&d) else { continue };
                    let route = match inbound.get(&flow) {
                        Some(i) => i.route.as_ref(),
                        None => outbound.get(&flow),
                    };
                    if let Some(r) = route {
                        media.datagram(r, Bytes::clone(&d));
                    }
                }
                c = cmds.recv() => match c {
                    Some(LinkCmd::Shared(rooms)) => {
                        let now: HashSet<String> = rooms.into_iter().collect();
                        // Rooms no longer shared: the peer's publishers there are dropped here,
                        // and the peer is told this side has none there any more.
                        for room in shared.difference(&now) {
                            let gone: Vec<u64> = inbound.iter().filter(|(_, i)| &i.room == room).map(|(f, _)| *f).collect();
                            for f in gone {
                                if let Some(i) = inbound.remove(&f) {
                                    media.close(i.route.into_iter().collect());
                                }
                                let _ = send(&mut self.send, &Message::Unsubscribe { flow: f }).await;
                            }
                            let _ = send(&mut self.send, &Message::Sources { room: room.clone(), sources: Vec::new() }).await;
                        }
                        shared = now;
                        tick.reset_immediately();
                    }
                    Some(LinkCmd::Close) | None => {
                        self.conn.close(CLOSE_GONE.into(), b"node left");
                        break "closed";
                    }
                },
                _ = tick.tick() => {
                    for room in &shared {
                        let sources = media.sources(room).await;
                        if !send(&mut self.send, &Message::Sources { room: room.clone(), sources }).await {
                            break;
                        }
                    }
                }
            }
        };
        let routes: Vec<Route> = inbound
            .into_values()
            .filter_map(|i| i.route)
            .chain(outbound.into_values())
            .collect();
        media.close(routes);
        info!(peer = %peer, why, "relay link ended");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_parse_and_refuse_junk() {
        let cases = [
            (r#"{"type":"hello","v":1,"node":"a","mac":"00"}"#, true),
            (
                r#"{"type":"sources","room":"r","sources":[{"publisher":"p","identity":"i","name":"n"}]}"#,
                true,
            ),
            (
                r#"{"type":"subscribe","room":"r","publisher":"p","flow":4}"#,
                true,
            ),
            (r#"{"type":"unsubscribe","flow":4}"#, true),
            (r#"{"type":"subscribe","room":"r","flow":4}"#, false),
            (r#"{"type":"unsubscribe","flow":-1}"#, false),
            (r#"{"type":"dance"}"#, false),
            (r#"[1,2]"#, false),
        ];
        for (text, ok) in cases {
            assert_eq!(serde_json::from_str::<Message>(text).is_ok(), ok, "{text}");
        }
    }

    #[test]
    fn macs_bind_role_ids_and_connection() {
        let m = mac("secret-0123456789", "dialer", "a", "b", &[1, 2, 3]);
        assert_eq!(m.len(), 64);
        assert!(mac_ok(
            &m,
            &mac("secret-0123456789", "dialer", "a", "b", &[1, 2, 3])
        ));
        let others = [
            mac("secret-0123456789", "acceptor", "a", "b", &[1, 2, 3]),
            mac("secret-0123456789", "dialer", "b", "a", &[1, 2, 3]),
            mac("secret-0123456789", "dialer", "a", "b", &[1, 2, 4]),
            mac("another-secret-000", "dialer", "a", "b", &[1, 2, 3]),
        ];
        for o in others {
            assert!(!mac_ok(&m, &o));
        }
        assert!(!mac_ok(&m, &m[..63]));
    }
}
