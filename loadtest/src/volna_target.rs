//! volna as a load-test target: the relay binary as a child process with a generated config
//! (loopback only, no QUIC, quiet log), reached through WHIP and WHEP like any client would.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::target::{SdpEndpoint, Target};

/// How to start the relay.
#[derive(Debug, Clone)]
pub struct VolnaOptions {
    pub relay_bin: PathBuf,
    /// `[media] workers`; `None` leaves the relay's default (and the key out of the config).
    pub workers: Option<usize>,
    /// More command-line arguments (a cluster node's `--redis`, `--node-id`, `--relay`).
    pub extra: Vec<String>,
    /// More of the configuration file (a cluster node's `[cluster]` secret).
    pub config: String,
}

pub struct VolnaTarget {
    child: Child,
    base: String,
    dir: PathBuf,
    agent: ureq::Agent,
    /// WHIP/WHEP resource URLs, deleted at stop.
    resources: Vec<String>,
    stopped: bool,
}

/// A free TCP port on loopback (taken back just before the relay binds it).
fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(|e| e.to_string())?;
    l.local_addr().map(|a| a.port()).map_err(|e| e.to_string())
}

impl VolnaTarget {
    pub fn start(opts: &VolnaOptions) -> Result<VolnaTarget, String> {
        if !opts.relay_bin.is_file() {
            return Err(format!(
                "relay binary {} not found (build it with `cargo build --release --bin volna` or pass --relay-bin)",
                opts.relay_bin.display()
            ));
        }
        let port = free_port()?;
        let dir = std::env::temp_dir().join(format!(
            "volna-load-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let workers = opts
            .workers
            .map(|n| format!("workers = {n}\n"))
            .unwrap_or_default();
        let config = format!(
            "[http]\nlisten = \"127.0.0.1:{port}\"\n\n[media]\nlisten = \"127.0.0.1:0\"\n{workers}\n\
             [quic]\nenabled = false\n\n[limits]\nmax_rooms = 1000\nmax_participants_per_room = 100000\n\n\
             [log]\nlevel = \"warn\"\n{}",
            opts.config
        );
        let config_path = dir.join("volna.toml");
        std::fs::write(&config_path, config).map_err(|e| e.to_string())?;
        let log = std::fs::File::create(dir.join("volna.log")).map_err(|e| e.to_string())?;
        let log2 = log.try_clone().map_err(|e| e.to_string())?;
        let child = Command::new(&opts.relay_bin)
            .arg("--config")
            .arg(&config_path)
            .args(&opts.extra)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| format!("starting {}: {e}", opts.relay_bin.display()))?;
        let agent = ureq::AgentBuilder::new()
            .timeout(Duration::from_secs(10))
            .build();
        let mut t = VolnaTarget {
            child,
            base: format!("http://127.0.0.1:{port}"),
            dir,
            agent,
            resources: Vec::new(),
            stopped: false,
        };
        t.wait_healthy(Duration::from_secs(10))?;
        Ok(t)
    }

    /// The relay's HTTP base URL (`http://127.0.0.1:PORT`).
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The relay's HTTP port.
    pub fn port(&self) -> u16 {
        self.base
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or(0)
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("volna.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(10)..].join("\n")
    }

    fn wait_healthy(&mut self, limit: Duration) -> Result<(), String> {
        let deadline = Instant::now() + limit;
        let url = format!("{}/health", self.base);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("volna exited with {status}:\n{}", self.log_tail()));
            }
            if self
                .agent
                .get(&url)
                .timeout(Duration::from_millis(500))
                .call()
                .is_ok()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "volna did not answer {url} within {limit:?}:\n{}",
                    self.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// POSTs an offer; returns (answer, Location, x-volna-publisher).
    fn post_offer(&self, path: &str, offer: &str) -> Result<(String, String, String), String> {
        let url = format!("{}{path}", self.base);
        let res = match self
            .agent
            .post(&url)
            .set("Content-Type", "application/sdp")
            .send_string(offer)
        {
            Ok(r) => r,
            Err(ureq::Error::Status(code, r)) => {
                let body = r.into_string().unwrap_or_default();
                return Err(format!("POST {path}: {code} {}", body.trim()));
            }
            Err(e) => return Err(format!("POST {path}: {e}")),
        };
        if res.status() != 201 {
            return Err(format!("POST {path}: expected 201, got {}", res.status()));
        }
        let location = res.header("Location").unwrap_or("").to_owned();
        let publisher = res.header("x-volna-publisher").unwrap_or("").to_owned();
        let answer = res.into_string().map_err(|e| e.to_string())?;
        Ok((answer, location, publisher))
    }

    fn remember(&mut self, location: String) {
        if !location.is_empty() {
            let url = if location.starts_with("http") {
                location
            } else {
                format!("{}{location}", self.base)
            };
            self.resources.push(url);
        }
    }
}

impl Target for VolnaTarget {
    fn name(&self) -> &'static str {
        "volna"
    }

    fn client_ip(&self) -> IpAddr {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn create_room(&mut self, _room: &str, _publishers: usize) -> Result<(), String> {
        // Rooms are made by their first publisher.
        Ok(())
    }

    fn publish(
        &mut self,
        room: &str,
        _display: &str,
        client: &mut dyn SdpEndpoint,
    ) -> Result<String, String> {
        let offer = client.offer();
        let (answer, location, publisher) = self.post_offer(&format!("/whip/{room}"), &offer)?;
        client.accept_answer(&answer)?;
        self.remember(location);
        if publisher.is_empty() {
            return Err("WHIP answer has no x-volna-publisher header".into());
        }
        Ok(publisher)
    }

    fn subscribe(
        &mut self,
        room: &str,
        publisher: &str,
        client: &mut dyn SdpEndpoint,
    ) -> Result<(), String> {
        let offer = client.offer();
        let (answer, location, _) =
            self.post_offer(&format!("/whep/{room}/{publisher}"), &offer)?;
        client.accept_answer(&answer)?;
        self.remember(location);
        Ok(())
    }

    fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        if matches!(self.child.try_wait(), Ok(None)) {
            let quick = ureq::AgentBuilder::new()
                .timeout(Duration::from_millis(500))
                .build();
            for url in std::mem::take(&mut self.resources) {
                let _ = quick.delete(&url).call();
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for VolnaTarget {
    fn drop(&mut self) {
        self.stop();
    }
}
