//! Janus (Debian's `janus` package, VideoRoom plugin) as the relay that volna is compared with.
//!
//! Design: the whole load test runs inside a private network namespace
//! ([`crate::netns::reexec_in_netns`]) and Janus is a plain child process in that same namespace.
//! Its HTTP API on 127.0.0.1 and its media address ([`crate::netns::VETH_IP`], the only interface
//! it may gather on) are therefore both reachable directly, and nothing reaches the host's network.
//! Install Janus before entering the namespace ([`ensure_installed`]): there is no network inside.
//!
//! Signalling uses one Janus session per target and one plugin handle per publisher or subscriber.
//! A single background thread long-polls the session, routes events to the waiting request by
//! transaction id (trickled candidates by handle id) and sends the session's keepalives.

use std::collections::HashMap;
use std::fs;
use std::io::Read;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::netns;
use crate::target::{SdpEndpoint, Target};

/// How long a plugin request may take before its event arrives.
const EVENT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a subscriber keeps retrying while the publisher's feed is not up yet.
const FEED_WAIT: Duration = Duration::from_secs(5);
/// Janus drops sessions after 60 s without activity.
const KEEPALIVE_EVERY: Duration = Duration::from_secs(25);
/// Janus answers a long poll after 30 s at most (with a keepalive).
const POLL_READ_TIMEOUT: Duration = Duration::from_secs(45);
/// VideoRoom error: the feed does not exist (yet).
const NO_SUCH_FEED: i64 = 428;
/// VideoRoom error: the room exists already.
const ROOM_EXISTS: i64 = 427;

/// How to run Janus.
#[derive(Clone, Debug)]
pub struct JanusOptions {
    /// The only address Janus gathers ICE candidates on (the veth address).
    pub ip: IpAddr,
    /// The interface carrying `ip`.
    pub interface: String,
    /// Port of the HTTP API on 127.0.0.1.
    pub http_port: u16,
    /// Inclusive range of UDP ports for media.
    pub rtp_ports: (u16, u16),
    /// The `janus` binary; looked up on PATH when `None`.
    pub janus_bin: Option<PathBuf>,
    /// Stock configuration the private one is derived from.
    pub base_config: PathBuf,
    /// Janus log level, 0–7 (4 is Janus's default).
    pub debug_level: u8,
    /// Room bitrate cap in bit/s, high enough not to limit the test's media.
    pub room_bitrate: u64,
    /// Where Janus logs; kept after [`Target::stop`]. `None`: a file in the private
    /// configuration folder, removed with it.
    pub log_file: Option<PathBuf>,
}

impl Default for JanusOptions {
    fn default() -> Self {
        JanusOptions {
            ip: netns::VETH_IP,
            interface: netns::VETH_IF.into(),
            http_port: 8088,
            rtp_ports: (20000, 29999),
            janus_bin: None,
            base_config: PathBuf::from("/etc/janus"),
            debug_level: 4,
            room_bitrate: 20_000_000,
            log_file: None,
        }
    }
}

/// Finds the `janus` binary (`bin`, or on PATH); installs the Debian package with apt when it is
/// missing and this process is root.
pub fn ensure_installed(bin: Option<&Path>) -> Result<PathBuf, String> {
    if let Some(bin) = bin {
        return if bin.is_file() {
            Ok(bin.to_path_buf())
        } else {
            Err(format!("janus binary {} not found", bin.display()))
        };
    }
    if let Some(found) = find_on_path("janus") {
        return Ok(found);
    }
    if !netns::is_root() {
        return Err(
            "janus is not installed; install the Debian package `janus` \
                    (apt-get install janus) or pass its path"
                .into(),
        );
    }
    let hint = if netns::in_netns() {
        " (this runs inside a network namespace without network: install janus before entering it)"
    } else {
        ""
    };
    let install = || {
        Command::new("apt-get")
            .args(["install", "-y", "janus"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .output()
    };
    let mut out = install().map_err(|e| format!("apt-get: {e}{hint}"))?;
    if !out.status.success() {
        // A fresh machine may have no package lists yet.
        let _ = Command::new("apt-get")
            .arg("update")
            .stdin(Stdio::null())
            .output();
        out = install().map_err(|e| format!("apt-get: {e}{hint}"))?;
    }
    if !out.status.success() {
        return Err(format!(
            "apt-get install janus failed{hint}: {}",
            tail(&String::from_utf8_lossy(&out.stderr), 5)
        ));
    }
    find_on_path("janus").ok_or_else(|| "apt installed janus but it is not on PATH".into())
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// A running Janus and one signalling session with it.
pub struct JanusTarget {
    child: Option<Child>,
    dir: PathBuf,
    log: PathBuf,
    ip: IpAddr,
    bitrate: u64,
    api: Arc<Api>,
    poller: Option<JoinHandle<()>>,
    /// Handle used for room management.
    admin: u64,
    rooms: HashMap<String, u64>,
}

impl JanusTarget {
    /// Writes a private configuration, starts Janus and opens a session.
    pub fn start(opts: &JanusOptions) -> Result<JanusTarget, String> {
        // Without the interface Janus starts but offers no usable candidate; say why up front.
        if !Path::new("/sys/class/net").join(&opts.interface).exists() {
            return Err(format!(
                "network interface {} not found: run inside the load test's namespace \
                 (volna_load::netns::reexec_in_netns)",
                opts.interface
            ));
        }
        let bin = ensure_installed(opts.janus_bin.as_deref())?;
        let dir = private_dir()?;
        let started = Self::start_in(opts, &bin, &dir);
        if started.is_err() {
            let _ = fs::remove_dir_all(&dir);
        }
        started
    }

    fn start_in(opts: &JanusOptions, bin: &Path, dir: &Path) -> Result<JanusTarget, String> {
        let log = opts
            .log_file
            .clone()
            .unwrap_or_else(|| dir.join("janus.log"));
        write_config(opts, dir, &log)?;
        let mut child = Command::new(bin)
            .arg("-C")
            .arg(dir.join("janus.jcfg"))
            .arg("-F")
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("starting {}: {e}", bin.display()))?;
        let base = format!("http://127.0.0.1:{}/janus", opts.http_port);
        if let Err(e) = wait_ready(&base, &mut child, &log) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
        let api = match Api::connect(base) {
            Ok(api) => Arc::new(api),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(e);
            }
        };
        // From here on, Drop stops Janus whatever fails next.
        let mut target = JanusTarget {
            child: Some(child),
            dir: dir.to_path_buf(),
            log,
            ip: opts.ip,
            bitrate: opts.room_bitrate,
            api,
            poller: None,
            admin: 0,
            rooms: HashMap::new(),
        };
        let api = target.api.clone();
        target.poller = Some(
            std::thread::Builder::new()
                .name("janus-events".into())
                .spawn(move || api.poll_events())
                .map_err(|e| format!("event thread: {e}"))?,
        );
        target.admin = target.api.attach()?;
        Ok(target)
    }

    /// Janus's log file.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The numeric VideoRoom id used for `room`.
    pub fn room_id(room: &str) -> u64 {
        room_id(room)
    }

    /// Lists the VideoRoom rooms Janus knows (their numeric ids).
    pub fn list_rooms(&self) -> Result<Vec<u64>, String> {
        let data = self.api.request(self.admin, json!({"request": "list"}))?;
        let list = data
            .get("list")
            .and_then(Value::as_array)
            .ok_or_else(|| format!("janus: list without rooms: {data}"))?;
        Ok(list
            .iter()
            .filter_map(|r| r.get("room").and_then(Value::as_u64))
            .collect())
    }

    fn room(&self, room: &str) -> u64 {
        self.rooms
            .get(room)
            .copied()
            .unwrap_or_else(|| room_id(room))
    }
}

impl Target for JanusTarget {
    fn name(&self) -> &'static str {
        "janus"
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    fn client_ip(&self) -> IpAddr {
        self.ip
    }

    fn create_room(&mut self, room: &str, publishers: usize) -> Result<(), String> {
        let id = room_id(room);
        let create = json!({
            "request": "create",
            "room": id,
            "description": room,
            "publishers": publishers,
            "bitrate": self.bitrate,
            "audiocodec": "opus",
            "videocodec": "vp8",
            "record": false,
            "permanent": false,
        });
        match self.api.request(self.admin, create.clone()) {
            Ok(_) => {}
            // Left over from an earlier use of the same name: start from an empty room.
            Err(e) if e.contains(&format!("({ROOM_EXISTS})")) => {
                self.api
                    .request(self.admin, json!({"request": "destroy", "room": id}))?;
                self.api.request(self.admin, create)?;
            }
            Err(e) => return Err(format!("create room {room}: {e}")),
        }
        self.rooms.insert(room.into(), id);
        Ok(())
    }

    fn publish(
        &mut self,
        room: &str,
        display: &str,
        client: &mut dyn SdpEndpoint,
    ) -> Result<String, String> {
        let room_id = self.room(room);
        let handle = self.api.attach()?;
        let trickles = TrickleWatch::new(&self.api, handle);
        let joined = self.api.message(
            handle,
            json!({"request": "join", "ptype": "publisher", "room": room_id, "display": display}),
            None,
        )?;
        let data = plugin_data(&joined)?;
        let feed = match data.get("id") {
            Some(Value::Number(n)) => n.to_string(),
            Some(Value::String(s)) => s.clone(),
            _ => return Err(format!("janus: publisher join without an id: {joined}")),
        };
        let offer = client.offer();
        let configured = self.api.message(
            handle,
            json!({"request": "configure", "audio": true, "video": true}),
            // The clients put their one candidate in the SDP and never trickle; without saying
            // so Janus waits for trickled candidates before it gives up on a failed check.
            Some(json!({"type": "offer", "sdp": offer, "trickle": false})),
        )?;
        plugin_data(&configured)?;
        let answer = jsep_sdp(&configured, "answer")?;
        let answer = with_candidates(answer, &trickles.rx, self.ip)?;
        drop(trickles);
        client.accept_answer(&answer)?;
        Ok(feed)
    }

    fn subscribe(
        &mut self,
        room: &str,
        publisher: &str,
        client: &mut dyn SdpEndpoint,
    ) -> Result<(), String> {
        let room_id = self.room(room);
        let feed = match publisher.parse::<u64>() {
            Ok(n) => json!(n),
            Err(_) => json!(publisher),
        };
        let handle = self.api.attach()?;
        let trickles = TrickleWatch::new(&self.api, handle);
        let join = json!({
            "request": "join",
            "ptype": "subscriber",
            "room": room_id,
            "streams": [{"feed": feed}],
        });
        let deadline = Instant::now() + FEED_WAIT;
        // Janus knows a feed only once the publisher's PeerConnection is up.
        let attached = loop {
            let event = self.api.message(handle, join.clone(), None)?;
            match plugin_error(&event) {
                Some((NO_SUCH_FEED, _)) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                Some((code, reason)) => {
                    return Err(format!(
                        "janus: subscribing to feed {publisher}: {reason} ({code})"
                    ))
                }
                None => break event,
            }
        };
        let offer = jsep_sdp(&attached, "offer")?;
        let offer = with_candidates(offer, &trickles.rx, self.ip)?;
        drop(trickles);
        let answer = client.answer_offer(&offer)?;
        let started = self.api.message(
            handle,
            json!({"request": "start"}),
            Some(json!({"type": "answer", "sdp": answer, "trickle": false})),
        )?;
        plugin_data(&started)?;
        Ok(())
    }

    fn stop(&mut self) {
        self.api.stopping.store(true, Ordering::Relaxed);
        if let Some(mut child) = self.child.take() {
            terminate(&mut child);
        }
        if let Some(poller) = self.poller.take() {
            let _ = poller.join();
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

impl Drop for JanusTarget {
    fn drop(&mut self) {
        self.stop();
    }
}

/// SIGTERM, then SIGKILL if Janus has not exited within two seconds.
fn terminate(child: &mut Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        // SAFETY: signals our own child, which has not been reaped yet.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// A room id Janus accepts for `room`: the number itself for numeric names, otherwise a hash
/// that stays below 2^53 so that it survives JSON numbers read as doubles.
fn room_id(room: &str) -> u64 {
    if let Ok(n) = room.parse::<u64>() {
        if n > 0 && n < 1 << 53 {
            return n;
        }
    }
    // FNV-1a: stable across runs and platforms.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in room.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h & ((1 << 53) - 1)).max(1)
}

fn private_dir() -> Result<PathBuf, String> {
    static COUNT: AtomicU64 = AtomicU64::new(0);
    let n = COUNT.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("volna-janus-{}-{n}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    Ok(dir)
}

/// Writes janus.jcfg, the HTTP transport's and the VideoRoom's configuration into `dir`. Module
/// folders come from the stock janus.jcfg; every module but VideoRoom and HTTP is disabled.
fn write_config(opts: &JanusOptions, dir: &Path, log: &Path) -> Result<(), String> {
    let stock_path = opts.base_config.join("janus.jcfg");
    let stock = fs::read_to_string(&stock_path)
        .map_err(|e| format!("reading {}: {e}", stock_path.display()))?;
    let folder = |key: &str| {
        config_value(&stock, key).ok_or_else(|| format!("{} has no {key}", stock_path.display()))
    };
    let plugins = folder("plugins_folder")?;
    let transports = folder("transports_folder")?;
    let events = folder("events_folder")?;
    let loggers = folder("loggers_folder")?;
    let disable_plugins = others(&plugins, "libjanus_videoroom.so");
    let disable_transports = others(&transports, "libjanus_http.so");
    let disable_events = others(&events, "");
    let disable_loggers = others(&loggers, "");
    let d = dir.display();
    let janus = format!(
        r#"general: {{
	configs_folder = "{d}"
	plugins_folder = "{plugins}"
	transports_folder = "{transports}"
	events_folder = "{events}"
	loggers_folder = "{loggers}"
	log_to_stdout = false
	log_to_file = "{log}"
	debug_level = {level}
	debug_timestamps = true
	debug_colors = false
	server_name = "volna-load"
	interface = "{ip}"
	session_timeout = 60
}}
certificates: {{
}}
media: {{
	ipv6 = false
	rtp_port_range = "{rtp_lo}-{rtp_hi}"
}}
nat: {{
	nice_debug = false
	full_trickle = false
	ignore_mdns = true
	ice_enforce_list = "{iface}"
}}
plugins: {{
	disable = "{disable_plugins}"
}}
transports: {{
	disable = "{disable_transports}"
}}
loggers: {{
	disable = "{disable_loggers}"
}}
events: {{
	broadcast = false
	disable = "{disable_events}"
}}
"#,
        level = opts.debug_level.min(7),
        rtp_lo = opts.rtp_ports.0,
        rtp_hi = opts.rtp_ports.1,
        iface = opts.interface,
        ip = opts.ip,
        log = log.display(),
    );
    let http = format!(
        r#"general: {{
	json = "compact"
	base_path = "/janus"
	http = true
	port = {port}
	ip = "127.0.0.1"
	acl = "127."
	https = false
}}
admin: {{
	admin_http = false
	admin_https = false
}}
cors: {{
}}
"#,
        port = opts.http_port,
    );
    // No predefined rooms: the load test creates its own.
    let videoroom = "general: {\n}\n";
    for (name, text) in [
        ("janus.jcfg", janus.as_str()),
        ("janus.transport.http.jcfg", http.as_str()),
        ("janus.plugin.videoroom.jcfg", videoroom),
    ] {
        let path = dir.join(name);
        fs::write(&path, text).map_err(|e| format!("writing {}: {e}", path.display()))?;
    }
    Ok(())
}

/// The quoted value of `key = "..."` in a libconfig file, ignoring commented lines.
fn config_value(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let line = line.trim();
        let rest = line.strip_prefix(key)?.trim_start().strip_prefix('=')?;
        let rest = rest.trim_start().strip_prefix('"')?;
        Some(rest[..rest.find('"')?].to_string())
    })
}

/// The `.so` modules in `folder` other than `keep`, comma-separated (Janus's `disable` syntax).
fn others(folder: &str, keep: &str) -> String {
    let Ok(entries) = fs::read_dir(folder) else {
        return String::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".so") && n != keep)
        .collect();
    names.sort();
    names.join(",")
}

fn wait_ready(base: &str, child: &mut Child, log: &Path) -> Result<(), String> {
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(1))
        .build();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let log = fs::read_to_string(log).unwrap_or_default();
            return Err(format!("janus exited ({status}): {}", tail(&log, 10)));
        }
        if let Ok(resp) = agent.get(&format!("{base}/info")).call() {
            if resp.status() == 200 {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            let log = fs::read_to_string(log).unwrap_or_default();
            return Err(format!(
                "janus did not answer on {base}/info: {}",
                tail(&log, 10)
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Where events go: the request waiting for a transaction, or the handle collecting trickles.
#[derive(Default)]
struct Routes {
    transactions: HashMap<String, Sender<Value>>,
    trickles: HashMap<u64, Sender<Value>>,
}

/// The HTTP API of one Janus session.
struct Api {
    agent: ureq::Agent,
    poll_agent: ureq::Agent,
    base: String,
    session: u64,
    next_transaction: AtomicU64,
    routes: Mutex<Routes>,
    stopping: AtomicBool,
}

impl Api {
    fn connect(base: String) -> Result<Api, String> {
        let mut api = Api {
            agent: ureq::AgentBuilder::new()
                .timeout(Duration::from_secs(10))
                .build(),
            poll_agent: ureq::AgentBuilder::new()
                .timeout_connect(Duration::from_secs(2))
                .timeout_read(POLL_READ_TIMEOUT)
                .build(),
            base,
            session: 0,
            next_transaction: AtomicU64::new(1),
            routes: Mutex::default(),
            stopping: AtomicBool::new(false),
        };
        let created = api.post(&api.base.clone(), json!({"janus": "create"}))?;
        api.session = data_id(&created)?;
        Ok(api)
    }

    fn session_url(&self) -> String {
        format!("{}/{}", self.base, self.session)
    }

    fn transaction(&self) -> String {
        format!("t{}", self.next_transaction.fetch_add(1, Ordering::Relaxed))
    }

    /// POSTs a Janus API message (adding a transaction if it has none) and returns the reply;
    /// Janus's own errors become `Err`.
    fn post(&self, url: &str, mut body: Value) -> Result<Value, String> {
        if body.get("transaction").is_none() {
            body["transaction"] = json!(self.transaction());
        }
        let what = body["janus"].as_str().unwrap_or("?").to_string();
        let reply = match self.agent.post(url).send_string(&body.to_string()) {
            Ok(resp) => resp,
            Err(ureq::Error::Status(code, resp)) => {
                let text = resp.into_string().unwrap_or_default();
                return Err(format!("janus {what}: HTTP {code}: {}", text.trim()));
            }
            Err(e) => return Err(format!("janus {what}: {e}")),
        };
        let text = reply
            .into_string()
            .map_err(|e| format!("janus {what}: reading reply: {e}"))?;
        let value: Value = serde_json::from_str(&text)
            .map_err(|e| format!("janus {what}: bad JSON reply ({e}): {text}"))?;
        if value["janus"] == "error" {
            let code = value["error"]["code"].as_i64().unwrap_or(0);
            let reason = value["error"]["reason"].as_str().unwrap_or("?");
            return Err(format!("janus {what}: {reason} ({code})"));
        }
        Ok(value)
    }

    fn attach(&self) -> Result<u64, String> {
        let attached = self.post(
            &self.session_url(),
            json!({"janus": "attach", "plugin": "janus.plugin.videoroom"}),
        )?;
        data_id(&attached)
    }

    /// A synchronous plugin request (create, list, destroy…): returns the plugin's data.
    fn request(&self, handle: u64, body: Value) -> Result<Value, String> {
        let url = format!("{}/{handle}", self.session_url());
        let reply = self.post(&url, json!({"janus": "message", "body": body}))?;
        plugin_data(&reply).cloned()
    }

    /// An asynchronous plugin request (join, configure, start): returns the event that answers it.
    /// Plugin errors are left in the event for the caller to judge.
    fn message(&self, handle: u64, body: Value, jsep: Option<Value>) -> Result<Value, String> {
        let transaction = self.transaction();
        let what = body["request"].as_str().unwrap_or("?").to_string();
        let mut msg = json!({"janus": "message", "body": body, "transaction": transaction});
        if let Some(jsep) = jsep {
            msg["jsep"] = jsep;
        }
        // Registered before the POST: the event may arrive before the POST's reply does.
        let (tx, rx) = mpsc::channel();
        self.routes().transactions.insert(transaction.clone(), tx);
        let url = format!("{}/{handle}", self.session_url());
        let result = self.post(&url, msg).and_then(|reply| {
            if reply.get("plugindata").is_some() {
                // Answered synchronously.
                return Ok(reply);
            }
            match rx.recv_timeout(EVENT_TIMEOUT) {
                Ok(event) => Ok(event),
                Err(RecvTimeoutError::Timeout) => Err(format!(
                    "janus {what}: no event within {}s",
                    EVENT_TIMEOUT.as_secs()
                )),
                Err(RecvTimeoutError::Disconnected) => {
                    Err(format!("janus {what}: event stream closed"))
                }
            }
        });
        self.routes().transactions.remove(&transaction);
        result
    }

    fn routes(&self) -> std::sync::MutexGuard<'_, Routes> {
        // A panic elsewhere while holding the lock leaves the maps usable.
        self.routes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The event thread: long-polls the session until the target stops.
    fn poll_events(&self) {
        let url = format!("{}?maxev=32", self.session_url());
        let mut last_keepalive = Instant::now();
        let mut failures = 0u32;
        while !self.stopping.load(Ordering::Relaxed) {
            if last_keepalive.elapsed() >= KEEPALIVE_EVERY {
                if let Err(e) = self.post(&self.session_url(), json!({"janus": "keepalive"})) {
                    if !self.stopping.load(Ordering::Relaxed) {
                        eprintln!("janus: keepalive: {e}");
                    }
                }
                last_keepalive = Instant::now();
            }
            match self.poll_once(&url) {
                Ok(()) => failures = 0,
                Err(e) => {
                    if self.stopping.load(Ordering::Relaxed) {
                        break;
                    }
                    failures += 1;
                    if failures == 1 || failures.is_multiple_of(50) {
                        eprintln!("janus: event poll: {e}");
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
        // Waiters see a closed stream instead of a timeout.
        let mut routes = self.routes();
        routes.transactions.clear();
        routes.trickles.clear();
    }

    fn poll_once(&self, url: &str) -> Result<(), String> {
        let resp = self.poll_agent.get(url).call().map_err(|e| e.to_string())?;
        let mut text = String::new();
        resp.into_reader()
            .take(16 << 20)
            .read_to_string(&mut text)
            .map_err(|e| e.to_string())?;
        let value: Value =
            serde_json::from_str(&text).map_err(|e| format!("bad JSON ({e}): {text}"))?;
        match value {
            Value::Array(events) => events.into_iter().for_each(|ev| self.route(ev)),
            event => self.route(event),
        }
        Ok(())
    }

    fn route(&self, event: Value) {
        let routes = self.routes();
        if let Some(tx) = event["transaction"]
            .as_str()
            .and_then(|t| routes.transactions.get(t))
        {
            let _ = tx.send(event);
            return;
        }
        if event["janus"] == "trickle" {
            if let Some(tx) = event["sender"]
                .as_u64()
                .and_then(|h| routes.trickles.get(&h))
            {
                let _ = tx.send(event);
            }
        }
        // Everything else (webrtcup, media, slowlink, room notifications) is not needed here.
    }
}

/// Candidates Janus trickles for one handle, collected until the SDP they belong to is handed on.
struct TrickleWatch<'a> {
    api: &'a Api,
    handle: u64,
    rx: Receiver<Value>,
}

impl<'a> TrickleWatch<'a> {
    fn new(api: &'a Api, handle: u64) -> Self {
        let (tx, rx) = mpsc::channel();
        api.routes().trickles.insert(handle, tx);
        TrickleWatch { api, handle, rx }
    }
}

impl Drop for TrickleWatch<'_> {
    fn drop(&mut self) {
        self.api.routes().trickles.remove(&self.handle);
    }
}

fn data_id(reply: &Value) -> Result<u64, String> {
    reply["data"]["id"]
        .as_u64()
        .ok_or_else(|| format!("janus: reply without an id: {reply}"))
}

/// The VideoRoom's answer inside a reply or event; its error fields become `Err`.
fn plugin_data(reply: &Value) -> Result<&Value, String> {
    if let Some((code, reason)) = plugin_error(reply) {
        return Err(format!("janus videoroom: {reason} ({code})"));
    }
    reply
        .get("plugindata")
        .and_then(|p| p.get("data"))
        .ok_or_else(|| format!("janus: reply without plugin data: {reply}"))
}

fn plugin_error(reply: &Value) -> Option<(i64, String)> {
    let data = &reply["plugindata"]["data"];
    let code = data["error_code"].as_i64()?;
    let reason = data["error"].as_str().unwrap_or("?").to_string();
    Some((code, reason))
}

fn jsep_sdp(event: &Value, kind: &str) -> Result<String, String> {
    let jsep = &event["jsep"];
    if jsep["type"] != kind {
        return Err(format!("janus: expected a JSEP {kind}, got: {event}"));
    }
    jsep["sdp"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| format!("janus: JSEP {kind} without SDP: {event}"))
}

/// Makes sure Janus's SDP carries a candidate on `ip`. Janus normally puts its candidates in the
/// SDP (half trickle); if it left them out, the trickled ones are waited for and added to their
/// m-sections, since the clients do not take trickled candidates.
fn with_candidates(sdp: String, trickles: &Receiver<Value>, ip: IpAddr) -> Result<String, String> {
    let on_ip = |sdp: &str| candidates(sdp).any(|c| candidate_ip(c) == Some(ip));
    if on_ip(&sdp) {
        return Ok(sdp);
    }
    let mut lines: Vec<(usize, String)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(event) = trickles.recv_timeout(left) else {
            break;
        };
        let mut completed = false;
        for c in trickle_candidates(&event) {
            match c {
                Some(line) => lines.push(line),
                None => completed = true,
            }
        }
        if completed {
            break;
        }
    }
    let sdp = insert_candidates(&sdp, &lines);
    if on_ip(&sdp) {
        Ok(sdp)
    } else {
        Err(format!(
            "janus offered no ICE candidate on {ip} (is the veth interface in ice_enforce_list up?): {}",
            candidates(&sdp).collect::<Vec<_>>().join(" | ")
        ))
    }
}

/// The candidates of a trickle event: `Some((m-line index, "a=candidate:..."))`, or `None` for
/// the end-of-candidates marker.
fn trickle_candidates(event: &Value) -> impl Iterator<Item = Option<(usize, String)>> + '_ {
    let one = |c: &Value| {
        if c["completed"] == true {
            return None;
        }
        let line = c["candidate"].as_str()?;
        let index = c["sdpMLineIndex"].as_u64().unwrap_or(0) as usize;
        let line = line.strip_prefix("a=").unwrap_or(line);
        Some((index, format!("a={line}")))
    };
    let list: Vec<&Value> = match &event["candidate"] {
        Value::Array(cs) => cs.iter().collect(),
        Value::Null => Vec::new(),
        c => vec![c],
    };
    list.into_iter().map(one)
}

fn candidates(sdp: &str) -> impl Iterator<Item = &str> {
    sdp.lines()
        .map(str::trim_end)
        .filter(|l| l.starts_with("a=candidate:"))
}

/// The connection address of an `a=candidate:` line.
fn candidate_ip(line: &str) -> Option<IpAddr> {
    line.split_whitespace().nth(4)?.parse().ok()
}

/// Adds candidate lines at the end of their m-sections.
fn insert_candidates(sdp: &str, lines: &[(usize, String)]) -> String {
    if lines.is_empty() {
        return sdp.to_string();
    }
    let mut out = String::with_capacity(sdp.len() + lines.len() * 100);
    let mut section: Option<usize> = None;
    let flush = |out: &mut String, section: Option<usize>| {
        if let Some(s) = section {
            for (_, l) in lines.iter().filter(|(i, _)| *i == s) {
                out.push_str(l);
                out.push_str("\r\n");
            }
        }
    };
    for line in sdp.lines() {
        if line.starts_with("m=") {
            flush(&mut out, section);
            section = Some(section.map_or(0, |s| s + 1));
        }
        out.push_str(line.trim_end());
        out.push_str("\r\n");
    }
    flush(&mut out, section);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_ids_are_stable_and_json_safe() {
        assert_eq!(room_id("1234"), 1234);
        let id = room_id("meeting-1");
        assert_eq!(id, room_id("meeting-1"));
        assert!(id > 0 && id < 1 << 53);
        assert_ne!(id, room_id("meeting-2"));
    }

    #[test]
    fn reads_quoted_config_values() {
        let text = "general: {\n\t#plugins_folder = \"/no\"\n\tplugins_folder = \"/usr/lib/janus/plugins\"\t# x\n}";
        assert_eq!(
            config_value(text, "plugins_folder").as_deref(),
            Some("/usr/lib/janus/plugins")
        );
        assert_eq!(config_value(text, "events_folder"), None);
    }

    #[test]
    fn adds_trickled_candidates_to_their_section() {
        let sdp = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:1\r\n";
        let (tx, rx) = mpsc::channel();
        tx.send(json!({"janus": "trickle", "candidate": {"sdpMLineIndex": 0,
            "candidate": "candidate:1 1 udp 2015363327 10.200.0.1 20001 typ host"}}))
            .unwrap();
        tx.send(json!({"janus": "trickle", "candidate": {"completed": true}}))
            .unwrap();
        let ip: IpAddr = "10.200.0.1".parse().unwrap();
        let out = with_candidates(sdp.into(), &rx, ip).unwrap();
        let audio_end = out.find("m=video").unwrap();
        let at = out.find("a=candidate:1 1 udp").unwrap();
        assert!(at < audio_end, "{out}");
    }

    #[test]
    fn rejects_sdp_without_a_candidate_on_the_address() {
        let sdp = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=candidate:1 1 udp 1 192.0.2.1 5 typ host\r\n";
        let (tx, rx) = mpsc::channel::<Value>();
        drop(tx);
        let ip: IpAddr = "10.200.0.1".parse().unwrap();
        assert!(with_candidates(sdp.into(), &rx, ip).is_err());
    }
}
