//! Many nodes as one service: each node registers in Redis with a short TTL and heartbeats its
//! load every second (`membership`), reads the live nodes and where its rooms live, and decides
//! where a new session goes (`node::place`): here, or a redirect to the least loaded node of its
//! region when it is draining or over its limits. [`Cluster`] is the handle signalling asks;
//! it also carries the drain state, which a single node without `[cluster]` has too (a drained
//! single node refuses new sessions instead of redirecting them). Redis is never on the packet
//! path: calls in progress go on while it is away.

pub mod link;
pub mod links;
pub mod media;
pub mod membership;
pub mod node;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::sync::{watch, Notify};

pub use node::{Limits, Load, NodeRecord, Placement};

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("node record: {0}")]
    Record(#[from] serde_json::Error),
}

/// What a node needs to know to take part (from `[cluster]` and the listeners).
#[derive(Debug, Clone)]
pub struct Settings {
    /// Redis URL; `None`: a single node (no cluster).
    pub redis: Option<String>,
    pub node_id: String,
    pub region: String,
    pub http: String,
    pub https: bool,
    pub media: Vec<String>,
    pub relay: String,
    /// Hex SHA-256 of the relay endpoint's certificate (empty without relay links).
    pub relay_cert: String,
    /// Shared by the cluster's nodes; relay links prove it.
    pub secret: String,
    pub limits: Limits,
    /// Heartbeat period; a record lives `ttl` unless refreshed.
    pub heartbeat: Duration,
    pub ttl: Duration,
    pub drain_timeout: Duration,
}

#[derive(Debug, Default)]
struct State {
    own: NodeRecord,
    /// Live nodes, this one included, as last read.
    nodes: Vec<NodeRecord>,
    /// This node's rooms and the live nodes serving each, as last read.
    rooms: Vec<(String, Vec<String>)>,
    store_ok: bool,
    last_ok: Option<Instant>,
    /// Heartbeats that failed since the store last answered.
    failures: u64,
    /// Rooms a new session here waits for (WHEP of a publisher on another node), until when.
    wanted: HashMap<String, Instant>,
    links: Vec<links::LinkStats>,
    /// Relay-link connections refused (no or a wrong cluster secret, no handshake in time).
    links_refused: u64,
}

struct Inner {
    settings: Settings,
    state: Mutex<State>,
    draining: watch::Sender<bool>,
    /// Wakes the membership task for a heartbeat now (a drain began).
    wake: Notify,
}

/// The node's place in the cluster; cheap to clone.
#[derive(Clone)]
pub struct Cluster(Arc<Inner>);

impl Cluster {
    pub fn new(settings: Settings) -> Self {
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let own = NodeRecord {
            id: settings.node_id.clone(),
            region: settings.region.clone(),
            http: settings.http.clone(),
            https: settings.https,
            media: settings.media.clone(),
            relay: settings.relay.clone(),
            relay_cert: settings.relay_cert.clone(),
            draining: false,
            accepting: true,
            load: Load::default(),
            started,
        };
        Cluster(Arc::new(Inner {
            settings,
            state: Mutex::new(State {
                own,
                ..State::default()
            }),
            draining: watch::channel(false).0,
            wake: Notify::new(),
        }))
    }

    pub fn settings(&self) -> &Settings {
        &self.0.settings
    }

    pub fn clustered(&self) -> bool {
        self.0.settings.redis.is_some()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // The lock is held for copies only; a poisoned one still holds consistent data.
        self.0.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Where a new session (WHIP, WHEP, a room join) goes.
    pub fn place(&self) -> Placement {
        let s = self.state();
        node::place(&node::Situation {
            own: &s.own,
            nodes: &s.nodes,
            store_ok: s.store_ok,
            clustered: self.clustered(),
        })
    }

    /// Room-protocol URLs of the other live nodes of this region that take sessions, for a
    /// client to reconnect to if this node is lost.
    pub fn fallbacks(&self) -> Vec<String> {
        let s = self.state();
        s.nodes
            .iter()
            .filter(|n| n.id != s.own.id && n.region == s.own.region && n.accepting)
            .map(NodeRecord::rtc_url)
            .collect()
    }

    /// Starts draining: no new sessions from now on, the others told at once. False when it
    /// was draining already.
    pub fn drain(&self) -> bool {
        {
            let mut s = self.state();
            s.own.draining = true;
            s.own.accepting = false;
        }
        let first = !self.0.draining.send_replace(true);
        self.0.wake.notify_one();
        first
    }

    pub fn draining(&self) -> bool {
        *self.0.draining.borrow()
    }

    /// Resolves once a drain has begun.
    pub async fn drain_begun(&self) {
        let mut rx = self.0.draining.subscribe();
        let _ = rx.wait_for(|d| *d).await;
    }

    /// Notes this node's load as of now: whether it takes sessions follows from it.
    pub(crate) fn set_load(&self, load: Load) -> NodeRecord {
        let draining = self.draining();
        let mut s = self.state();
        s.own.accepting = !draining && !self.0.settings.limits.exceeded_by(&load);
        s.own.draining = draining;
        s.own.load = load;
        s.own.clone()
    }

    /// The cluster store answered: these are the live nodes and where this node's rooms live.
    pub(crate) fn store_answered(
        &self,
        nodes: Vec<NodeRecord>,
        rooms: Vec<(String, Vec<String>)>,
        now: Instant,
    ) -> bool {
        let mut s = self.state();
        let was_ok = s.store_ok;
        s.nodes = nodes;
        s.rooms = rooms;
        s.store_ok = true;
        s.last_ok = Some(now);
        s.failures = 0;
        !was_ok
    }

    /// The cluster store did not answer; returns how many heartbeats failed in a row.
    pub(crate) fn store_failed(&self) -> u64 {
        let mut s = self.state();
        s.store_ok = false;
        s.failures += 1;
        s.failures
    }

    /// The live nodes and, for each room served here, the live nodes serving it, as last read.
    pub fn directory(&self) -> (Vec<NodeRecord>, Vec<(String, Vec<String>)>) {
        let s = self.state();
        (s.nodes.clone(), s.rooms.clone())
    }

    /// A new session here waits for `room`'s publishers on other nodes: the room counts as
    /// served here for `for_how_long`, so the nodes serving it relay their publishers.
    pub fn want(&self, room: &str, for_how_long: std::time::Duration) {
        let until = Instant::now() + for_how_long;
        self.state().wanted.insert(room.to_owned(), until);
        self.0.wake.notify_one();
    }

    /// The rooms still wanted at `now`.
    pub(crate) fn wanted(&self, now: Instant) -> Vec<String> {
        let mut s = self.state();
        s.wanted.retain(|_, until| *until > now);
        s.wanted.keys().cloned().collect()
    }

    pub(crate) fn link_refused(&self) -> u64 {
        let mut s = self.state();
        s.links_refused += 1;
        s.links_refused
    }

    pub(crate) fn set_links(&self, links: Vec<links::LinkStats>) {
        self.state().links = links;
    }

    pub(crate) fn wake(&self) -> &Notify {
        &self.0.wake
    }

    /// What `/metrics` shows of the cluster: live nodes, whether the store answers, draining,
    /// links refused, and each relay link.
    pub fn gauges(&self) -> (usize, bool, bool, u64, Vec<links::LinkStats>) {
        let s = self.state();
        (
            s.nodes.len(),
            s.store_ok,
            self.draining(),
            s.links_refused,
            s.links.clone(),
        )
    }

    /// Everything `GET /cluster` shows.
    pub fn snapshot(&self, now: Instant) -> serde_json::Value {
        let s = self.state();
        let redis = self.0.settings.redis.as_deref().map(|url| {
            json!({
                "url": membership::without_password(url),
                "connected": s.store_ok,
                "last_ok_ms_ago": s.last_ok.map(|t| now.duration_since(t).as_millis() as u64),
            })
        });
        let rooms: Vec<_> = s
            .rooms
            .iter()
            .map(|(room, nodes)| json!({ "room": room, "nodes": nodes }))
            .collect();
        json!({
            "clustered": self.clustered(),
            "node": s.own,
            "redis": redis,
            "nodes": s.nodes,
            "rooms": rooms,
            "links": s.links,
            "links_refused": s.links_refused,
        })
    }
}
