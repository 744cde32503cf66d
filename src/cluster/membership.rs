//! The heartbeat: once a second (and at once when a drain begins) the node measures its load,
//! writes its record to Redis with a TTL, refreshes the directory entries of its rooms, and reads
//! back the live nodes and who else serves its rooms. A record not refreshed within the TTL
//! expires, so a node that died is gone for the others within it; set members whose record has
//! expired are removed by the first node that reads them. When Redis does not answer, the node
//! notes it (new sessions are refused, calls go on) and tries again on the next beat with a
//! new connection, so it re-registers by itself when Redis is back.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use tracing::{info, warn};

use super::node::{node_key, room_key, Load, NodeRecord, NODES_KEY};
use super::{Cluster, ClusterError};

/// What the node's workers report each beat.
#[derive(Debug, Default, Clone)]
pub struct Sample {
    pub sessions: u64,
    pub participants: u64,
    pub tracks: u64,
    /// Names of the rooms with sessions here.
    pub rooms: Vec<String>,
    /// Media bytes forwarded since start.
    pub forwarded_bytes: u64,
}

/// Asks the workers for a [`Sample`]; `None` when they have stopped.
pub type Sampler = Box<dyn Fn() -> Pin<Box<dyn Future<Output = Option<Sample>> + Send>> + Send>;

/// Turns counters into rates between beats.
struct Meter {
    last: Option<(Instant, Duration, u64)>,
    cpus: f64,
}

impl Meter {
    fn load(&mut self, s: &Sample, now: Instant) -> Load {
        let cpu_time = process_cpu_time();
        let (cpu, bytes_per_sec) = match self.last {
            Some((then, cpu_then, bytes_then)) if now > then => {
                let wall = now.duration_since(then).as_secs_f64();
                let used = cpu_time.saturating_sub(cpu_then).as_secs_f64();
                let bytes = s.forwarded_bytes.saturating_sub(bytes_then) as f64;
                ((used / wall / self.cpus).min(1.0), (bytes / wall) as u64)
            }
            _ => (0.0, 0),
        };
        self.last = Some((now, cpu_time, s.forwarded_bytes));
        Load {
            cpu: (cpu * 1000.0).round() / 1000.0,
            sessions: s.sessions,
            participants: s.participants,
            tracks: s.tracks,
            rooms: s.rooms.len() as u64,
            bytes_per_sec,
        }
    }
}

/// CPU time (user and system) this process has used.
fn process_cpu_time() -> Duration {
    // SAFETY: getrusage fills the zeroed struct it is given.
    let usage = unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_SELF, &mut u) != 0 {
            return Duration::ZERO;
        }
        u
    };
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec.max(0) as u64) + Duration::from_micros(t.tv_usec.max(0) as u64)
    };
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// A Redis URL fit for logs: any password replaced.
pub fn without_password(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***@{}", &url[..s], &url[at + 1..]),
        _ => url.to_owned(),
    }
}

/// Runs the heartbeat until the workers stop.
pub async fn run(cluster: Cluster, sample: Sampler) {
    let settings = cluster.settings().clone();
    let client = match settings.redis.as_deref().map(redis::Client::open) {
        Some(Ok(c)) => Some(c),
        Some(Err(e)) => {
            // The URL was checked with the config; this cannot be reached with a valid one.
            warn!(error = %e, "cluster: bad Redis URL, running alone");
            None
        }
        None => None,
    };
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let mut meter = Meter { last: None, cpus };
    let mut conn: Option<MultiplexedConnection> = None;
    // Rooms listed under this node at the last beat that reached Redis; rooms it no longer
    // serves are taken out of the directory at the next one that does.
    let mut listed: Vec<String> = Vec::new();
    let mut tick = tokio::time::interval(settings.heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = cluster.wake().notified() => {}
        }
        let Some(mut s) = sample().await else {
            return;
        };
        let now = Instant::now();
        for room in cluster.wanted(now) {
            if !s.rooms.contains(&room) {
                s.rooms.push(room);
            }
        }
        let own = cluster.set_load(meter.load(&s, now));
        let Some(client) = &client else {
            continue;
        };
        let limit = settings.heartbeat.max(Duration::from_millis(200));
        let left: Vec<String> = listed
            .iter()
            .filter(|r| !s.rooms.contains(r))
            .cloned()
            .collect();
        let round = heartbeat(client, &mut conn, &own, &s.rooms, &left, settings.ttl);
        match tokio::time::timeout(limit, round)
            .await
            .unwrap_or(Err(ClusterError::Timeout(limit)))
        {
            Ok((nodes, rooms)) => {
                listed = s.rooms;
                let live = nodes.len();
                if cluster.store_answered(nodes, rooms, now) {
                    info!(node = %own.id, live_nodes = live, "cluster: registered in Redis");
                }
            }
            Err(e) => {
                conn = None;
                let failures = cluster.store_failed();
                // The first failure, then the 2nd, 4th, 8th...: an outage logs a few lines.
                if failures & (failures - 1) == 0 {
                    warn!(error = %e, failures, "cluster: Redis unreachable; new sessions refused, calls go on");
                }
            }
        }
    }
}

/// One beat against Redis: the live nodes, and for each room here the live nodes serving it.
async fn heartbeat(
    client: &redis::Client,
    conn: &mut Option<MultiplexedConnection>,
    own: &NodeRecord,
    rooms: &[String],
    left: &[String],
    ttl: Duration,
) -> Result<(Vec<NodeRecord>, Vec<(String, Vec<String>)>), ClusterError> {
    let c = match conn {
        Some(c) => c,
        None => conn.insert(client.get_multiplexed_async_connection().await?),
    };
    let ttl_ms = ttl.as_millis() as u64;
    let mut p = redis::pipe();
    p.cmd("SET")
        .arg(node_key(&own.id))
        .arg(serde_json::to_string(own)?)
        .arg("PX")
        .arg(ttl_ms)
        .ignore();
    p.cmd("SADD").arg(NODES_KEY).arg(&own.id).ignore();
    for r in left {
        p.cmd("SREM").arg(room_key(r)).arg(&own.id).ignore();
    }
    for r in rooms {
        p.cmd("SADD").arg(room_key(r)).arg(&own.id).ignore();
        p.cmd("PEXPIRE").arg(room_key(r)).arg(ttl_ms).ignore();
    }
    p.cmd("SMEMBERS").arg(NODES_KEY);
    let (ids,): (Vec<String>,) = p.query_async(c).await?;
    let keys: Vec<String> = ids.iter().map(|id| node_key(id)).collect();
    let records: Vec<Option<String>> = redis::cmd("MGET").arg(&keys).query_async(c).await?;
    let mut nodes = Vec::with_capacity(ids.len());
    let mut dead = Vec::new();
    for (id, rec) in ids.iter().zip(records) {
        match rec.map(|r| serde_json::from_str::<NodeRecord>(&r)) {
            Some(Ok(n)) => nodes.push(n),
            // A record another version wrote, or none: only an expired one is removed.
            Some(Err(_)) => {}
            None => dead.push(id.clone()),
        }
    }
    nodes.sort_by(|a, b| a.id.cmp(&b.id));
    let mut members: Vec<Vec<String>> = Vec::new();
    if !rooms.is_empty() {
        let mut p = redis::pipe();
        for r in rooms {
            p.cmd("SMEMBERS").arg(room_key(r));
        }
        members = p.query_async(c).await?;
    }
    let mut cleanup = redis::pipe();
    let mut stale = !dead.is_empty();
    if stale {
        cleanup.cmd("SREM").arg(NODES_KEY).arg(&dead).ignore();
    }
    let mut placed = Vec::with_capacity(rooms.len());
    for (room, mut ids) in rooms.iter().zip(members) {
        let (live, gone): (Vec<String>, Vec<String>) = ids
            .drain(..)
            .partition(|id| nodes.iter().any(|n| &n.id == id));
        if !gone.is_empty() {
            cleanup.cmd("SREM").arg(room_key(room)).arg(&gone).ignore();
            stale = true;
        }
        let mut live = live;
        live.sort();
        placed.push((room.clone(), live));
    }
    if stale {
        let () = cleanup.query_async(c).await?;
    }
    Ok((nodes, placed))
}

/// Removes this node's record at a clean exit, so the others need not wait for it to expire.
pub async fn leave(cluster: &Cluster) {
    let Some(url) = cluster.settings().redis.as_deref() else {
        return;
    };
    let id = cluster.settings().node_id.clone();
    let go = async {
        let client = redis::Client::open(url)?;
        let mut c = client.get_multiplexed_async_connection().await?;
        let mut p = redis::pipe();
        p.cmd("DEL").arg(node_key(&id)).ignore();
        p.cmd("SREM").arg(NODES_KEY).arg(&id).ignore();
        let () = p.query_async(&mut c).await?;
        Ok::<(), ClusterError>(())
    };
    match tokio::time::timeout(Duration::from_secs(1), go).await {
        Ok(Ok(())) => info!(node = %id, "cluster: left"),
        Ok(Err(e)) => {
            warn!(error = %e, "cluster: could not remove this node's record; it expires by itself")
        }
        Err(_) => {
            warn!("cluster: Redis did not answer at exit; this node's record expires by itself")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_hidden() {
        let cases = [
            ("redis://127.0.0.1:6379", "redis://127.0.0.1:6379"),
            (
                "redis://:secret@10.0.0.1:6379/0",
                "redis://***@10.0.0.1:6379/0",
            ),
            ("rediss://user:p@ss@host:6380", "rediss://***@host:6380"),
            ("unix:///run/redis.sock", "unix:///run/redis.sock"),
        ];
        for (url, want) in cases {
            assert_eq!(without_password(url), want);
        }
    }

    #[test]
    fn meter_rates() {
        let mut m = Meter {
            last: None,
            cpus: 2.0,
        };
        let t0 = Instant::now();
        let s = |bytes, rooms: usize| Sample {
            sessions: 3,
            rooms: vec!["r".into(); rooms],
            forwarded_bytes: bytes,
            ..Sample::default()
        };
        let first = m.load(&s(1_000, 2), t0);
        assert_eq!(
            (first.bytes_per_sec, first.rooms, first.sessions),
            (0, 2, 3)
        );
        let second = m.load(&s(501_000, 1), t0 + Duration::from_millis(500));
        assert_eq!(second.bytes_per_sec, 1_000_000);
        assert!((0.0..=1.0).contains(&second.cpu));
    }
}
