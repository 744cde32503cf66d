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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::media::{Media, Route};
use crate::session::connection::Origin;
use crate::session::link_layers::LinkView;
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
    /// The layers the subscriber's node wants of a subscription: per track of `subscribed`,
    /// the indices of its `layers` (a track without layers is not listed, or is ignored).
    Layers {
        flow: u64,
        layers: Vec<Vec<u8>>,
    },
}

/// How often a link polls its sessions; its publishers are listed every [`LIST_EVERY`] ticks
/// (half a second).
const TICK: Duration = Duration::from_millis(125);
const LIST_EVERY: u64 = 4;

/// Most tracks a `layers` message names (more, or more than a track's layers, is a protocol
/// error).
const MAX_LAYER_TRACKS: usize = 1024;

/// What a link carries now, for its stats: streams (an audio track, a video track or one
/// simulcast layer) sent and asked for, and the budget its congestion controller gives.
#[derive(Debug, Default)]
pub struct Carried {
    pub streams_sent: AtomicU64,
    pub layers_wanted: AtomicU64,
    pub budget_bps: AtomicU64,
}

/// What the link may send, from its QUIC congestion controller: twice its window per round
/// trip, so that a link sending all it may is limited by the window (which then grows) rather
/// than by itself, and one whose window shrank under loss sheds top layers.
pub fn budget_bps(cwnd_bytes: u64, rtt: Duration) -> u64 {
    let rtt = rtt.max(Duration::from_millis(1)).as_secs_f64();
    (cwnd_bytes as f64 * 8.0 * 2.0 / rtt) as u64
}

/// Shares of a link's `budget` for its subscriptions, max-min fair: one that needs less than
/// an equal share of what is left gets what it needs, the others split the rest; what nobody
/// needs is shared out equally on top (so a link with room limits no one).
pub fn shares(budget: u64, needs: &[u64]) -> Vec<u64> {
    let n = needs.len();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| needs[i]);
    let mut out = vec![0; n];
    let mut left = budget;
    for (k, &i) in order.iter().enumerate() {
        let give = needs[i].min(left / (n - k) as u64);
        out[i] = give;
        left -= give;
    }
    let extra = left / n.max(1) as u64;
    for o in &mut out {
        *o += extra;
    }
    out
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
    /// The layers last asked of the origin (empty: every layer, as a subscription starts).
    layers: Vec<Vec<u8>>,
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

/// Control messages queued for the peer; a peer that lets more pile up is not reading its
/// control stream, and its link is closed.
const OUT_QUEUE: usize = 4096;

/// What the reader task passes on, in order.
enum Read {
    Message(Message),
    Ended,
    Bad(String),
}

/// A link's subscriptions both ways, and the queue to the peer.
struct State {
    peer: String,
    conn: quinn::Connection,
    media: std::sync::Arc<dyn Media>,
    out: mpsc::Sender<Message>,
    shared: HashSet<String>,
    /// Flow -> this side's subscription to the peer's publisher.
    inbound: HashMap<u64, Inbound>,
    /// Flow -> the subscriber session serving the peer here.
    outbound: HashMap<u64, Route>,
    parity: u64,
    next_flow: u64,
    /// Set when the link must end (the peer stopped reading its control stream).
    failed: Option<&'static str>,
    carried: Arc<Carried>,
    /// What each subscription here would send with room for all it is asked for (last poll).
    wants: HashMap<Route, u64>,
}

impl State {
    fn send(&mut self, m: Message) {
        if self.failed.is_none() && self.out.try_send(m).is_err() {
            self.failed = Some("the peer does not read its control stream");
        }
    }

    /// Drops this side's copy of the peer's publisher on `flow` and tells the peer.
    fn unsubscribe(&mut self, flow: u64) {
        if let Some(i) = self.inbound.remove(&flow) {
            self.media.close(i.route.into_iter().collect());
        }
        self.send(Message::Unsubscribe { flow });
    }

    async fn on_message(&mut self, m: Message) {
        match m {
            Message::Sources { room, sources } => {
                let listed: Vec<RelaySource> = if self.shared.contains(&room) {
                    sources
                } else {
                    Vec::new()
                };
                // Gone from the list: drop the relayed copy.
                let gone: Vec<u64> = self
                    .inbound
                    .iter()
                    .filter(|(_, i)| {
                        i.room == room && !listed.iter().any(|s| s.publisher == i.publisher)
                    })
                    .map(|(f, _)| *f)
                    .collect();
                for f in gone {
                    self.unsubscribe(f);
                }
                for s in listed {
                    let media = self.media.clone();
                    if let Some(i) = self
                        .inbound
                        .values_mut()
                        .find(|i| i.room == room && i.publisher == s.publisher)
                    {
                        i.muted = s.muted;
                        apply_mute(media.as_ref(), i).await;
                        continue;
                    }
                    if self.inbound.len() >= MAX_FLOWS {
                        continue;
                    }
                    let flow = self.next_flow;
                    self.next_flow += 2;
                    let origin = Origin {
                        node: self.peer.clone(),
                        id: s.publisher.clone(),
                        identity: s.identity,
                        name: s.name,
                    };
                    let sub = Message::Subscribe {
                        room: room.clone(),
                        publisher: s.publisher.clone(),
                        flow,
                    };
                    self.inbound.insert(
                        flow,
                        Inbound {
                            room: room.clone(),
                            publisher: s.publisher,
                            route: None,
                            origin,
                            muted: s.muted,
                            applied: Vec::new(),
                            layers: Vec::new(),
                        },
                    );
                    self.send(sub);
                }
            }
            Message::Subscribe {
                room,
                publisher,
                flow,
            } => {
                let reply = if flow % 2 == self.parity
                    || self.outbound.contains_key(&flow)
                    || self.outbound.len() >= MAX_FLOWS
                    || !self.shared.contains(&room)
                {
                    Message::Refused {
                        flow,
                        code: 409,
                        reason: "flow_refused".into(),
                    }
                } else {
                    let conn = self.conn.clone();
                    match self.media.subscribe(&room, &publisher, flow, conn).await {
                        Ok((route, tracks)) => {
                            self.outbound.insert(flow, route);
                            Message::Subscribed { flow, tracks }
                        }
                        Err(e) => Message::Refused {
                            flow,
                            code: e.code,
                            reason: e.reason.into(),
                        },
                    }
                };
                self.send(reply);
            }
            Message::Subscribed { flow, tracks } => {
                let Some(i) = self.inbound.get(&flow).filter(|i| i.route.is_none()) else {
                    return;
                };
                let (room, origin) = (i.room.clone(), i.origin.clone());
                let conn = self.conn.clone();
                match self.media.publish(&room, tracks, flow, conn, origin).await {
                    Ok(route) => {
                        let media = self.media.clone();
                        if let Some(i) = self.inbound.get_mut(&flow) {
                            info!(peer = %self.peer, room = %i.room, publisher = %i.publisher, flow, "relay link: publisher relayed here");
                            i.route = Some(route);
                            apply_mute(media.as_ref(), i).await;
                        }
                    }
                    Err(e) => {
                        debug!(peer = %self.peer, error = %e.message, "relay link: relayed publisher refused here");
                        self.unsubscribe(flow);
                    }
                }
            }
            Message::Refused { flow, reason, .. } => {
                debug!(peer = %self.peer, flow, reason, "relay link: subscription refused");
                if let Some(i) = self.inbound.remove(&flow) {
                    self.media.close(i.route.into_iter().collect());
                }
            }
            Message::Unsubscribe { flow } => {
                if let Some(r) = self.outbound.remove(&flow) {
                    self.media.close(vec![r]);
                }
            }
            Message::Layers { flow, layers } => {
                let too_many = layers
                    .iter()
                    .any(|l| l.len() > crate::core::room::alloc::MAX_LAYERS);
                if layers.len() > MAX_LAYER_TRACKS || too_many {
                    self.failed = Some("a layers message too long");
                } else if let Some(r) = self.outbound.get(&flow) {
                    self.media.layers(r, layers).await;
                }
            }
            Message::Hello { .. } | Message::Welcome { .. } => {
                self.failed = Some("a second handshake");
            }
        }
    }

    fn on_datagram(&self, d: Bytes) {
        let Ok((flow, _)) = split_datagram(&d) else {
            return;
        };
        let route = match self.inbound.get(&flow) {
            Some(i) => i.route.as_ref(),
            None => self.outbound.get(&flow),
        };
        if let Some(r) = route {
            self.media.datagram(r, d);
        }
    }

    fn on_shared(&mut self, rooms: Vec<String>) {
        let now: HashSet<String> = rooms.into_iter().collect();
        // Rooms no longer shared: the peer's publishers there are dropped here, and the peer
        // is told this side has none there any more.
        let dropped: Vec<String> = self.shared.difference(&now).cloned().collect();
        for room in dropped {
            let gone: Vec<u64> = self
                .inbound
                .iter()
                .filter(|(_, i)| i.room == room)
                .map(|(f, _)| *f)
                .collect();
            for f in gone {
                self.unsubscribe(f);
            }
            self.send(Message::Sources {
                room,
                sources: Vec::new(),
            });
        }
        self.shared = now;
    }

    /// Every [`TICK`]: the sessions polled (layers wanted told to the origin, the link's
    /// budget shared out); every [`LIST_EVERY`]th, this side's publishers listed.
    async fn on_tick(&mut self, list: bool) {
        let rooms: Vec<String> = if list {
            self.shared.iter().cloned().collect()
        } else {
            Vec::new()
        };
        for room in rooms {
            let sources = self.media.sources(&room).await;
            self.send(Message::Sources { room, sources });
        }
        // Sessions that ended here on their own (a relayed copy removed with the server API, a
        // subscription whose publisher left): forget them; a copy still listed by the peer is
        // subscribed again on its next `sources`.
        let routes: Vec<Route> = self
            .inbound
            .values()
            .filter_map(|i| i.route)
            .chain(self.outbound.values().copied())
            .collect();
        let stats = self.conn.stats();
        let budget = budget_bps(stats.path.cwnd, self.conn.rtt());
        self.carried.budget_bps.store(budget, Ordering::Relaxed);
        if routes.is_empty() {
            self.carried.streams_sent.store(0, Ordering::Relaxed);
            self.carried.layers_wanted.store(0, Ordering::Relaxed);
            return;
        }
        // The subscriptions served here share what the link may carry (their needs with half
        // again for stepping up; one not polled yet needs it all).
        let served: Vec<Route> = self.outbound.values().copied().collect();
        let needs: Vec<u64> = served
            .iter()
            .map(|r| {
                self.wants
                    .get(r)
                    .map_or(budget, |w| w.saturating_mul(3) / 2)
            })
            .collect();
        let budgets = served.into_iter().zip(shares(budget, &needs)).collect();
        let live: HashMap<Route, LinkView> =
            self.media.poll(routes, budgets).await.into_iter().collect();
        let view = |r: &Route| live.get(r);
        self.wants = self
            .outbound
            .values()
            .filter_map(|r| Some((*r, view(r)?.want_bps)))
            .collect();
        let dead_in: Vec<u64> = self
            .inbound
            .iter()
            .filter(|(_, i)| i.route.is_some_and(|r| view(&r).is_none()))
            .map(|(f, _)| *f)
            .collect();
        for f in dead_in {
            self.unsubscribe(f);
        }
        self.outbound.retain(|_, r| view(r).is_some());
        let sent: usize = self
            .outbound
            .values()
            .filter_map(&view)
            .map(|v| v.streams)
            .sum();
        // What the relayed publishers' viewers here want, told to the origin when it changes.
        let mut asks = Vec::new();
        let mut wanted = 0;
        for (&flow, i) in self.inbound.iter_mut() {
            let Some(v) = i.route.as_ref().and_then(&view) else {
                continue;
            };
            wanted += v.wanted.iter().map(Vec::len).sum::<usize>();
            if !v.wanted.is_empty() && v.wanted != i.layers {
                i.layers = v.wanted.clone();
                asks.push(Message::Layers {
                    flow,
                    layers: v.wanted.clone(),
                });
            }
        }
        for m in asks {
            self.send(m);
        }
        self.carried
            .streams_sent
            .store(sent as u64, Ordering::Relaxed);
        self.carried
            .layers_wanted
            .store(wanted as u64, Ordering::Relaxed);
    }
}

impl Link {
    pub async fn run(
        self,
        media: std::sync::Arc<dyn Media>,
        mut cmds: mpsc::Receiver<LinkCmd>,
        carried: Arc<Carried>,
    ) {
        let Link {
            peer,
            conn,
            send: mut tx,
            recv: mut rx,
            parity,
        } = self;
        // Reads run in a task of their own: a read that a select! dropped half-way would lose
        // the bytes it had taken from the stream.
        let (read_tx, mut reads) = mpsc::channel::<Read>(64);
        let reader = tokio::spawn(async move {
            loop {
                let r = match recv(&mut rx).await {
                    Ok(Some(m)) => Read::Message(m),
                    Ok(None) => Read::Ended,
                    Err(e) => Read::Bad(e),
                };
                let last = !matches!(r, Read::Message(_));
                if read_tx.send(r).await.is_err() || last {
                    return;
                }
            }
        });
        // Writes too: the loop never waits on the peer.
        let (out, mut queued) = mpsc::channel::<Message>(OUT_QUEUE);
        let writer = tokio::spawn(async move {
            while let Some(m) = queued.recv().await {
                if !send(&mut tx, &m).await {
                    return;
                }
            }
        });
        let mut st = State {
            peer: peer.clone(),
            conn: conn.clone(),
            media,
            out,
            shared: HashSet::new(),
            inbound: HashMap::new(),
            outbound: HashMap::new(),
            parity,
            next_flow: parity,
            failed: None,
            carried,
            wants: HashMap::new(),
        };
        let mut tick = tokio::time::interval(TICK);
        let mut ticks = 0u64;
        let why = loop {
            tokio::select! {
                r = reads.recv() => match r {
                    Some(Read::Message(m)) => st.on_message(m).await,
                    Some(Read::Bad(e)) => {
                        warn!(peer = %peer, error = %e, "relay link: bad control stream, closing it");
                        conn.close(CLOSE_PROTOCOL.into(), b"bad control stream");
                        break "bad control stream";
                    }
                    Some(Read::Ended) | None => break "control stream ended",
                },
                d = conn.read_datagram() => match d {
                    Ok(d) => st.on_datagram(d),
                    Err(_) => break "connection closed",
                },
                c = cmds.recv() => match c {
                    Some(LinkCmd::Shared(rooms)) => {
                        st.on_shared(rooms);
                        // Listed at once.
                        ticks = 0;
                        tick.reset_immediately();
                    }
                    Some(LinkCmd::Close) | None => {
                        conn.close(CLOSE_GONE.into(), b"node left");
                        break "closed";
                    }
                },
                _ = tick.tick() => {
                    st.on_tick(ticks.is_multiple_of(LIST_EVERY)).await;
                    ticks += 1;
                }
            }
            if let Some(why) = st.failed {
                warn!(peer = %peer, why, "relay link: closing it");
                conn.close(CLOSE_PROTOCOL.into(), why.as_bytes());
                break why;
            }
        };
        reader.abort();
        writer.abort();
        let routes: Vec<Route> = st
            .inbound
            .into_values()
            .filter_map(|i| i.route)
            .chain(st.outbound.into_values())
            .collect();
        st.media.close(routes);
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
            (r#"{"type":"layers","flow":4,"layers":[[],[0,2]]}"#, true),
            (r#"{"type":"layers","flow":4,"layers":[[256]]}"#, false),
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
    fn the_budget_is_twice_the_window_per_round_trip() {
        let cases = [
            (12_000, 10, 19_200_000),
            (12_000, 100, 1_920_000),
            // A round trip under a millisecond counts as one.
            (12_000, 0, 192_000_000),
            (0, 10, 0),
        ];
        for (cwnd, rtt_ms, want) in cases {
            assert_eq!(
                budget_bps(cwnd, Duration::from_millis(rtt_ms)),
                want,
                "{cwnd} {rtt_ms}"
            );
        }
    }

    #[test]
    fn shares_are_max_min_fair_and_leave_nothing_unused() {
        let cases: [(u64, &[u64], &[u64]); 5] = [
            // Room for all: each its need, the rest split on top.
            (1000, &[100, 200], &[450, 550]),
            // Short: the small need met, the others split what is left.
            (900, &[100, 1000, 1000], &[100, 400, 400]),
            (300, &[1000, 1000, 1000], &[100, 100, 100]),
            // Nobody needs anything: an equal share each.
            (90, &[0, 0, 0], &[30, 30, 30]),
            (500, &[], &[]),
        ];
        for (budget, needs, want) in cases {
            assert_eq!(shares(budget, needs), want, "{budget} {needs:?}");
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
