//! What a node publishes about itself in Redis (its record: addresses, region, load, whether it
//! takes new sessions), the names of the Redis keys, and the placement rule: given the live
//! nodes a node last read, whether a new session stays here, goes to another node (a redirect),
//! or cannot be taken now. Plain data and functions: the membership task does the Redis I/O.

use serde::{Deserialize, Serialize};

/// How a node's load is described to the others, as of its last heartbeat.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Load {
    /// Share of the machine's CPUs this process used over the last heartbeat interval (0 to 1).
    pub cpu: f64,
    pub sessions: u64,
    pub participants: u64,
    pub tracks: u64,
    pub rooms: u64,
    /// Media bytes forwarded per second over the last interval.
    pub bytes_per_sec: u64,
}

/// A node as the others see it (`volna:node:{id}` in Redis, JSON).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub id: String,
    pub region: String,
    /// HTTP (signalling) address, `host:port`, and whether it speaks HTTPS.
    pub http: String,
    pub https: bool,
    /// Each worker's media (ICE/UDP) address.
    pub media: Vec<String>,
    /// Relay-link (QUIC) address, where other nodes connect, and the hex SHA-256 of its
    /// certificate, which they pin.
    pub relay: String,
    #[serde(default)]
    pub relay_cert: String,
    pub draining: bool,
    /// Whether it takes new sessions: not draining and under its configured load.
    pub accepting: bool,
    pub load: Load,
    /// Unix time (s) the process started, so a restarted node is told from its old self.
    pub started: u64,
}

impl NodeRecord {
    /// The base URL clients reach this node's HTTP at (`http://host:port`).
    pub fn http_url(&self) -> String {
        let scheme = if self.https { "https" } else { "http" };
        format!("{scheme}://{}", self.http)
    }

    /// The room protocol's WebSocket URL on this node.
    pub fn rtc_url(&self) -> String {
        let scheme = if self.https { "wss" } else { "ws" };
        format!("{scheme}://{}/rtc", self.http)
    }
}

/// Redis key of a node's record (expires unless refreshed by heartbeats).
pub fn node_key(id: &str) -> String {
    format!("volna:node:{id}")
}

/// Redis set of every node id that registered; entries whose record expired are removed by
/// whichever node reads them first.
pub const NODES_KEY: &str = "volna:nodes";

/// Redis set of the node ids serving a room (expires unless a node refreshes it).
pub fn room_key(room: &str) -> String {
    format!("volna:room:{room}")
}

/// Limits past which a node sends new sessions elsewhere.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// CPU share (0 to 1); 0 means no limit.
    pub max_cpu: f64,
    /// Media sessions; 0 means no limit.
    pub max_sessions: u64,
}

impl Limits {
    pub fn exceeded_by(&self, load: &Load) -> bool {
        (self.max_cpu > 0.0 && load.cpu >= self.max_cpu)
            || (self.max_sessions > 0 && load.sessions >= self.max_sessions)
    }
}

/// Where a new session goes.
#[derive(Debug, Clone, PartialEq)]
pub enum Placement {
    Here,
    /// To this node (same region, accepting, least loaded).
    Elsewhere(NodeRecord),
    /// Not now: (status, reason code, message).
    Refused(u16, &'static str, String),
}

/// What the placement rule needs to know about this node and the cluster.
#[derive(Debug, Clone)]
pub struct Situation<'a> {
    /// This node's record as it would publish it now.
    pub own: &'a NodeRecord,
    /// The live nodes it read last (may include itself).
    pub nodes: &'a [NodeRecord],
    /// Whether the cluster store answered lately; always true without a cluster.
    pub store_ok: bool,
    pub clustered: bool,
}

/// The placement rule. A node that takes sessions keeps them; one that is draining or over its
/// limits sends them to the least loaded accepting node of its region (fewest sessions, then
/// least CPU); with none, a draining node refuses and an overloaded one keeps them (a busy node
/// is better than no call). Without the cluster store a node cannot tell others about a new
/// session's room, so new sessions are refused until it is back.
pub fn place(s: &Situation<'_>) -> Placement {
    if s.clustered && !s.store_ok {
        return Placement::Refused(
            503,
            "cluster_unavailable",
            "the cluster's state store (Redis) cannot be reached; try again shortly".into(),
        );
    }
    if s.own.accepting {
        return Placement::Here;
    }
    let best = s
        .nodes
        .iter()
        .filter(|n| n.id != s.own.id && n.region == s.own.region && n.accepting)
        .min_by(|a, b| {
            a.load
                .sessions
                .cmp(&b.load.sessions)
                .then(a.load.cpu.total_cmp(&b.load.cpu))
                .then(a.id.cmp(&b.id))
        });
    match best {
        Some(n) => Placement::Elsewhere(n.clone()),
        None if s.own.draining => Placement::Refused(
            503,
            "draining",
            "this node is shutting down and no other node takes new sessions".into(),
        ),
        None => Placement::Here,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, region: &str, accepting: bool, sessions: u64, cpu: f64) -> NodeRecord {
        NodeRecord {
            id: id.into(),
            region: region.into(),
            http: format!("{id}:8080"),
            accepting,
            draining: !accepting,
            load: Load {
                sessions,
                cpu,
                ..Load::default()
            },
            ..NodeRecord::default()
        }
    }

    #[test]
    fn placement_rule() {
        let here_ok = node("a", "eu", true, 5, 0.1);
        let here_draining = node("a", "eu", false, 5, 0.1);
        let mut here_busy = node("a", "eu", false, 900, 0.95);
        here_busy.draining = false;
        let others = [
            node("b", "eu", true, 10, 0.5),
            node("c", "eu", true, 3, 0.9),
            node("d", "us", true, 0, 0.0),
            node("e", "eu", false, 0, 0.0),
        ];
        let same_load = [node("c", "eu", true, 3, 0.2), node("b", "eu", true, 3, 0.2)];
        let only_away = [node("d", "us", true, 0, 0.0)];
        type Case<'a> = (
            &'a str,
            &'a NodeRecord,
            &'a [NodeRecord],
            bool,
            bool,
            &'a str,
        );
        let cases: [Case<'_>; 9] = [
            (
                "accepting node keeps it",
                &here_ok,
                &others,
                true,
                true,
                "here",
            ),
            (
                "fewest sessions wins",
                &here_draining,
                &others,
                true,
                true,
                "c",
            ),
            (
                "ties go to the lower CPU, then the id",
                &here_busy,
                &same_load,
                true,
                true,
                "b",
            ),
            (
                "other regions are not used",
                &here_draining,
                &only_away,
                true,
                true,
                "503 draining",
            ),
            (
                "busy with nowhere to go keeps it",
                &here_busy,
                &only_away,
                true,
                true,
                "here",
            ),
            (
                "store down refuses",
                &here_ok,
                &others,
                false,
                true,
                "503 cluster_unavailable",
            ),
            (
                "no cluster ignores the store",
                &here_ok,
                &[],
                false,
                false,
                "here",
            ),
            (
                "draining alone refuses",
                &here_draining,
                &[],
                true,
                false,
                "503 draining",
            ),
            (
                "itself in the list is skipped",
                &here_draining,
                std::slice::from_ref(&here_draining),
                true,
                true,
                "503 draining",
            ),
        ];
        for (name, own, nodes, store_ok, clustered, want) in cases {
            let got = match place(&Situation {
                own,
                nodes,
                store_ok,
                clustered,
            }) {
                Placement::Here => "here".to_owned(),
                Placement::Elsewhere(n) => n.id,
                Placement::Refused(s, r, _) => format!("{s} {r}"),
            };
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn limits() {
        let load = |cpu, sessions| Load {
            cpu,
            sessions,
            ..Load::default()
        };
        let cases = [
            (0.0, 0, load(1.0, 100_000), false),
            (0.8, 0, load(0.79, 100_000), false),
            (0.8, 0, load(0.8, 0), true),
            (0.0, 10, load(0.0, 9), false),
            (0.0, 10, load(0.0, 10), true),
        ];
        for (max_cpu, max_sessions, l, want) in cases {
            let limits = Limits {
                max_cpu,
                max_sessions,
            };
            assert_eq!(limits.exceeded_by(&l), want, "{limits:?} {l:?}");
        }
    }

    #[test]
    fn urls() {
        let mut n = node("a", "eu", true, 0, 0.0);
        n.http = "10.0.0.1:8080".into();
        assert_eq!(n.http_url(), "http://10.0.0.1:8080");
        assert_eq!(n.rtc_url(), "ws://10.0.0.1:8080/rtc");
        n.https = true;
        assert_eq!(n.http_url(), "https://10.0.0.1:8080");
        assert_eq!(n.rtc_url(), "wss://10.0.0.1:8080/rtc");
    }
}
