//! A volna cluster as a load-test target: Debian's `redis-server` and two or more volna nodes on
//! loopback, each its own process (docs/cluster.md). Participants go to the nodes in turn
//! (participant `i` to node `i % n`), so a meeting spans them and its media crosses the relay
//! links; a subscription on one node to a publisher on another is WHEP on the subscriber's node
//! naming the publisher's id, as any client would do. CPU-seconds and peak RSS are the nodes'
//! summed.

use std::net::{IpAddr, Ipv4Addr};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::report::LinkBytes;
use crate::target::{SdpEndpoint, Target};
use crate::volna_target::{VolnaOptions, VolnaTarget};

pub struct ClusterTarget {
    redis: Child,
    nodes: Vec<VolnaTarget>,
    current: usize,
}

/// A free port on loopback, for TCP and for UDP.
fn free_port() -> Result<u16, String> {
    let l = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).map_err(|e| e.to_string())?;
    let port = l.local_addr().map_err(|e| e.to_string())?.port();
    std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port))
        .map(|_| port)
        .map_err(|e| e.to_string())
}

fn any_free_port() -> Result<u16, String> {
    (0..20)
        .find_map(|_| free_port().ok())
        .ok_or_else(|| "no free port on loopback".to_string())
}

impl ClusterTarget {
    /// Starts Redis and `nodes` volna nodes, and waits until each sees them all.
    pub fn start(opts: &VolnaOptions, nodes: usize) -> Result<ClusterTarget, String> {
        let port = any_free_port()?;
        let redis = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                format!("starting redis-server: {e} (Debian package redis-server; scripts/test.sh installs it)")
            })?;
        let mut t = ClusterTarget {
            redis,
            nodes: Vec::new(),
            current: 0,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err() {
            if Instant::now() > deadline {
                return Err("redis-server did not start".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        for i in 0..nodes.max(1) {
            let relay = any_free_port()?;
            let mut o = opts.clone();
            o.config
                .push_str("\n[cluster]\nsecret = \"volna-load-cluster-secret\"\n");
            o.extra.extend([
                "--redis".into(),
                format!("redis://127.0.0.1:{port}"),
                "--node-id".into(),
                format!("load{}", i + 1),
                "--relay".into(),
                format!("127.0.0.1:{relay}"),
            ]);
            t.nodes.push(VolnaTarget::start(&o)?);
        }
        // Each node lists the others before the first call (a heartbeat or two).
        let agent = ureq::AgentBuilder::new()
            .timeout(Duration::from_secs(2))
            .build();
        let deadline = Instant::now() + Duration::from_secs(10);
        for n in &t.nodes {
            let url = format!("{}/cluster", n.base());
            loop {
                let seen = agent
                    .get(&url)
                    .call()
                    .ok()
                    .and_then(|r| r.into_string().ok())
                    .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                    .and_then(|v| v["nodes"].as_array().map(Vec::len));
                if seen == Some(t.nodes.len()) {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(format!(
                        "{url}: the nodes did not see each other within 10 s"
                    ));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Ok(t)
    }
}

/// `GET` of a node's JSON page.
fn get_json(agent: &ureq::Agent, url: &str) -> Option<serde_json::Value> {
    let text = agent.get(url).call().ok()?.into_string().ok()?;
    serde_json::from_str(&text).ok()
}

impl Target for ClusterTarget {
    fn name(&self) -> &'static str {
        "volna-cluster"
    }

    fn client_ip(&self) -> IpAddr {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    }

    fn pid(&self) -> u32 {
        self.nodes.first().map_or(0, |n| n.pid())
    }

    fn pids(&self) -> Vec<u32> {
        self.nodes.iter().map(|n| n.pid()).collect()
    }

    fn place(&mut self, index: usize) {
        self.current = index % self.nodes.len().max(1);
    }

    /// Summed over the nodes: their links' UDP bytes sent (`GET /cluster`) and the simulcast
    /// bytes they held back (`GET /stats`).
    fn link_bytes(&self) -> Option<LinkBytes> {
        let agent = ureq::AgentBuilder::new()
            .timeout(Duration::from_secs(2))
            .build();
        let mut out = LinkBytes::default();
        for n in &self.nodes {
            let cluster = get_json(&agent, &format!("{}/cluster", n.base()))?;
            let links = cluster["links"].as_array()?;
            out.sent += links
                .iter()
                .filter_map(|l| l["sent_bytes"].as_u64())
                .sum::<u64>();
            let stats = get_json(&agent, &format!("{}/stats", n.base()))?;
            out.held += stats["link_bytes_held"].as_u64()?;
        }
        Some(out)
    }

    fn create_room(&mut self, _room: &str, _publishers: usize) -> Result<(), String> {
        Ok(())
    }

    fn publish(
        &mut self,
        room: &str,
        display: &str,
        client: &mut dyn SdpEndpoint,
    ) -> Result<String, String> {
        self.nodes[self.current].publish(room, display, client)
    }

    fn subscribe(
        &mut self,
        room: &str,
        publisher: &str,
        client: &mut dyn SdpEndpoint,
    ) -> Result<(), String> {
        self.nodes[self.current].subscribe(room, publisher, client)
    }

    fn stop(&mut self) {
        for n in &mut self.nodes {
            n.stop();
        }
        let _ = self.redis.kill();
        let _ = self.redis.wait();
    }
}

impl Drop for ClusterTarget {
    fn drop(&mut self) {
        self.stop();
    }
}
