//! Configuration: a TOML file (every key optional, unknown keys refused), then command-line
//! overrides. Errors name the key and line.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::core::room::RelayConfig;
use crate::session::Limits;

/// The configuration shipped as `configs/dev.toml`, also used when no file is given.
pub const EMBEDDED_DEFAULT: &str = include_str!("../configs/dev.toml");

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid config {path}: {message}")]
    Parse { path: String, message: String },
    #[error("invalid config {path}: {key}: {message}")]
    Value {
        path: String,
        key: &'static str,
        message: String,
    },
}

/// A socket address, or `host:port` with a host name, resolved now to its first address.
pub fn resolve(s: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = s.parse() {
        return Ok(a);
    }
    use std::net::ToSocketAddrs;
    let mut addrs = s
        .to_socket_addrs()
        .map_err(|e| format!("{s:?} is not an address or host:port that resolves ({e})"))?;
    addrs
        .next()
        .ok_or_else(|| format!("{s:?} resolves to no address"))
}

fn socket_addr<'de, D: serde::Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    let s = String::deserialize(d)?;
    resolve(&s).map_err(serde::de::Error::custom)
}

/// Whether `level` is a log filter volna takes: comma-separated directives, each a level (`trace`,
/// `debug`, `info`, `warn`, `error`, `off`) or `target=level`. (A bare word is a target to the
/// tracing filter, so a mistyped level would silence every log.)
fn valid_log_level(level: &str) -> bool {
    const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];
    let is_level = |l: &str| LEVELS.contains(&l.trim().to_ascii_lowercase().as_str());
    !level.trim().is_empty()
        && level.split(',').all(|d| match d.split_once('=') {
            Some((target, l)) => !target.trim().is_empty() && is_level(l),
            None => is_level(d),
        })
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub http: HttpConfig,
    pub media: MediaConfig,
    pub quic: QuicConfig,
    pub auth: AuthConfig,
    pub limits: LimitsConfig,
    pub log: LogConfig,
    pub webhooks: WebhooksConfig,
    pub cluster: ClusterConfig,
    pub turn: TurnConfig,
}

/// The embedded TURN server (docs/deploy.md, What runs where): for clients that reach nothing but
/// a TCP or TLS port. Listener addresses are `ip:port`, or "" for none (port 0: any free port).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TurnConfig {
    pub enabled: bool,
    pub udp: String,
    pub tcp: String,
    /// TURN over TLS: the listener of the strictest networks, 443 in production.
    pub tls: String,
    /// PEM chain and key for `tls`; both "": `http.tls_cert` and `tls_key`, else a self-signed
    /// certificate (which browsers refuse: for tests and development only).
    pub tls_cert: String,
    pub tls_key: String,
    /// The host name (or IP) in the `turn:`/`turns:` URLs given to clients; the TLS
    /// certificate's name. "": for a listener on a wildcard or the media address, the first
    /// `media.advertise` address (else the media address); for one on an address of its own,
    /// that address.
    pub host: String,
    /// Key of the credentials (TURN REST scheme); the same on every node of a cluster. "": a
    /// random one per process.
    pub secret: String,
    pub realm: String,
    /// How long the credentials handed to a client are valid.
    pub credential_ttl_secs: u64,
    /// Allocations one identity may hold at once (486 past it). A browser makes one per TURN
    /// URL and network interface for each peer connection: a room participant on one
    /// interface holds 6, so 48 leaves room for several devices of one token identity.
    pub max_allocations_per_identity: usize,
    /// Allocations this node holds at once (508 past it).
    pub max_allocations: usize,
}

impl Default for TurnConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            udp: String::new(),
            tcp: String::new(),
            tls: String::new(),
            tls_cert: String::new(),
            tls_key: String::new(),
            host: String::new(),
            secret: String::new(),
            realm: "volna".into(),
            credential_ttl_secs: 86_400,
            max_allocations_per_identity: 48,
            max_allocations: 10_000,
        }
    }
}

/// The secret configs/dev.toml ships for relay links; logged as a warning when used.
pub const DEV_CLUSTER_SECRET: &str = "volna-dev-cluster-secret";

/// Many nodes as one service (docs/cluster.md). Without `redis` the node runs alone; the drain
/// settings apply to it too.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// Redis URL (`redis://host:port`, with `:password@` if it needs one); empty: no cluster.
    pub redis: String,
    /// This node's name in the cluster (letters, digits, `-`, `_`, `.`); empty: the host name.
    pub node_id: String,
    /// Nodes redirect new sessions only to nodes of their own region.
    pub region: String,
    /// The `host:port` clients reach this node's HTTP at; empty: `http.listen` (then a
    /// concrete address).
    pub advertise_http: String,
    /// The `host:port` other nodes reach this node's relay links at.
    pub relay: String,
    /// Shared by every node of the cluster: relay links are authenticated with it.
    pub secret: String,
    /// Past this share of the machine's CPUs (0 to 1; 0: no limit) new sessions are sent to
    /// another node.
    pub max_cpu: f64,
    /// Past this many media sessions (0: no limit) new sessions are sent to another node.
    pub max_sessions: u64,
    /// How often the node writes its record and load to Redis.
    pub heartbeat_ms: u64,
    /// A node whose record was not refreshed for this long is dead to the others.
    pub node_ttl_ms: u64,
    /// After a drain begins, calls in progress get this long to end before the node exits.
    pub drain_timeout_secs: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            redis: String::new(),
            node_id: String::new(),
            region: "default".into(),
            advertise_http: String::new(),
            relay: String::new(),
            secret: String::new(),
            max_cpu: 0.85,
            max_sessions: 0,
            heartbeat_ms: 1000,
            node_ttl_ms: 3000,
            drain_timeout_secs: 600,
        }
    }
}

/// Room events POSTed to the messenger's backend (docs/api.md, Webhooks).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhooksConfig {
    /// `http://` URLs that receive every event; none: no events are kept.
    pub urls: Vec<String>,
    /// The HMAC-SHA256 key of the `X-Volna-Signature` header (at least 16 bytes).
    pub secret: String,
    /// Events held per URL while its receiver is slow or down; more are dropped and counted.
    pub queue: usize,
    /// Tries per event and URL (the first included) before it is given up and counted.
    pub max_attempts: u32,
    /// How long one POST may take.
    pub timeout_ms: u64,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        Self {
            urls: Vec::new(),
            secret: String::new(),
            queue: 10_000,
            max_attempts: 10,
            timeout_ms: 5_000,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct QuicConfig {
    /// Whether to listen for RTP over QUIC.
    pub enabled: bool,
    /// UDP address of the QUIC listener.
    #[serde(deserialize_with = "socket_addr")]
    pub listen: SocketAddr,
    /// PEM certificate chain and PKCS#8 key; both empty: a self-signed certificate is made at
    /// start, its SHA-256 logged and served at /quic/cert-hash for clients to pin.
    pub cert_file: String,
    pub key_file: String,
}

impl Default for QuicConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: "127.0.0.1:4433".parse().expect("literal"),
            cert_file: String::new(),
            key_file: String::new(),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// HS256 secrets for JWTs; several allow rotation (the first signs `volna token`). Empty:
    /// dev mode, no tokens needed.
    pub keys: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Rooms one media worker holds (the node holds workers × this).
    pub max_rooms: usize,
    /// Members of one room: participants, and WHIP, WHEP and QUIC sessions of their own.
    pub max_participants_per_room: usize,
    pub max_tracks_per_participant: usize,
    /// Participants one token identity may be in one room at once.
    pub max_participants_per_identity: usize,
    /// Largest room-protocol message accepted on the WebSocket.
    pub ws_max_message_bytes: usize,
    /// Room-protocol messages a client may send per second (burst of the same size).
    pub ws_messages_per_second: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_rooms: 1000,
            max_participants_per_room: 50,
            max_tracks_per_participant: 4,
            max_participants_per_identity: 4,
            ws_max_message_bytes: 64 * 1024,
            ws_messages_per_second: 50,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address of the signalling listener (WHIP, WHEP, stats).
    #[serde(deserialize_with = "socket_addr")]
    pub listen: SocketAddr,
    /// Largest request body accepted; larger ones get 413.
    pub max_body_bytes: usize,
    /// A connection that has not sent a request's headers within this is closed.
    pub header_timeout_secs: u64,
    /// HTTP connections open at once (a WebSocket counts for as long as it is open); more are
    /// closed at once.
    pub max_connections: usize,
    /// A room-protocol WebSocket that has not joined a room within this is closed.
    pub join_timeout_secs: u64,
    /// PEM certificate chain (the server's first) and its private key: HTTPS and WSS on
    /// `listen` instead of HTTP. Both empty: plain HTTP.
    pub tls_cert: String,
    pub tls_key: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MediaConfig {
    /// UDP address for ICE, DTLS and SRTP; advertised as the ICE candidate unless `advertise`
    /// is set. With several workers, worker i binds port + i (or its own ephemeral port when the
    /// port is 0).
    #[serde(deserialize_with = "socket_addr")]
    pub listen: SocketAddr,
    /// The addresses (IPs or host names, no port) peers reach the media ports at, when they are
    /// not the bound one: a public address in front of a 1:1 NAT (a cloud VM), or an IPv4 and
    /// an IPv6 address. Advertised as ICE candidates in this order, each with the worker's port.
    /// With it, `listen` may be a wildcard address: `0.0.0.0` (IPv4 only), or `[::]` (IPv6 and,
    /// on Linux, IPv4), which an advertised IPv6 address needs.
    pub advertise: Vec<String>,
    /// ICE over TCP (RFC 6544) for clients whose UDP is blocked: each worker also listens on
    /// TCP at its UDP port number and offers it as a passive candidate, below the UDP one.
    pub ice_tcp: bool,
    /// Media worker threads, each with its own UDP port, rooms and buffers; 0 means one per CPU
    /// core. A room lives on one worker, chosen by a hash of its name.
    pub workers: usize,
    /// Pin worker i to CPU i (modulo the CPUs this process may use), so a worker keeps its
    /// caches warm. Leave off when other busy processes share the machine.
    pub pin_workers: bool,
    /// Pause a viewer's video when its bandwidth estimate cannot carry it (audio only), resume
    /// from a key frame when it can; only for viewers volna can probe (transport-cc and RTX).
    pub pause_video: bool,
    /// A session whose peer sends nothing for this long is closed (RFC 7675 consent).
    pub consent_timeout_secs: u64,
    /// A room participant whose media or socket is lost stays in the room, shown to the others
    /// as reconnecting, this long for its client to come back (`join` with `resume`).
    pub reconnect_secs: u64,
    /// Bitrate cap announced to video publishers with REMB.
    pub publisher_max_bitrate_kbps: u64,
    /// Shortest gap between keyframe requests to one publisher track.
    pub keyframe_request_interval_ms: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// tracing filter, e.g. "info" or "volna=debug"; RUST_LOG wins when set.
    pub level: String,
    /// "text" or "json".
    pub format: String,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".parse().expect("literal"),
            max_body_bytes: 64 * 1024,
            header_timeout_secs: 10,
            max_connections: 10_000,
            join_timeout_secs: 10,
            tls_cert: String::new(),
            tls_key: String::new(),
        }
    }
}

impl Default for MediaConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:50000".parse().expect("literal"),
            advertise: Vec::new(),
            ice_tcp: true,
            workers: 0,
            pin_workers: false,
            pause_video: true,
            consent_timeout_secs: 30,
            reconnect_secs: 10,
            publisher_max_bitrate_kbps: 2500,
            keyframe_request_interval_ms: 500,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: "text".into(),
        }
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::load_with_env(path, std::iter::empty())
    }

    /// [`Config::load`], then `VOLNA_*` variables (see [`Config::parse_with_env`]).
    pub fn load_with_env(
        path: &Path,
        env: impl Iterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse_with_env(&text, &path.display().to_string(), env)
    }

    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        Self::parse_with_env(text, origin, std::iter::empty())
    }

    /// The file's settings, each replaced by a `VOLNA_<SECTION>_<KEY>` variable of `env` where
    /// one is set (`VOLNA_HTTP_LISTEN`, `VOLNA_AUTH_KEYS`): a number, `true` or `false`, text,
    /// or for a list, items separated by commas. Variables whose section is not one of the
    /// config's are not for the config (`VOLNA_BIN`); a known section with an unknown key is
    /// refused, as an unknown key in the file is.
    pub fn parse_with_env(
        text: &str,
        origin: &str,
        env: impl Iterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let parse_error = |message: String| ConfigError::Parse {
            path: origin.to_owned(),
            message,
        };
        let mut table: toml::Table =
            toml::from_str(text).map_err(|e| parse_error(e.to_string()))?;
        let defaults =
            toml::Table::try_from(Config::default()).map_err(|e| parse_error(e.to_string()))?;
        let mut from_env = false;
        for (name, value) in env {
            let Some(rest) = name.strip_prefix("VOLNA_").map(str::to_ascii_lowercase) else {
                continue;
            };
            let Some((section, key)) = defaults.keys().find_map(|s| {
                Some((
                    s.as_str(),
                    rest.strip_prefix(s.as_str())?.strip_prefix('_')?,
                ))
            }) else {
                continue;
            };
            let bad = |message: String| ConfigError::Value {
                path: "environment".into(),
                key: "VOLNA_*",
                message: format!("{name}: {message}"),
            };
            let kind = defaults[section]
                .get(key)
                .ok_or_else(|| bad(format!("{section} has no setting {key}")))?;
            let v = match kind {
                toml::Value::Integer(_) => value
                    .trim()
                    .parse::<i64>()
                    .map(toml::Value::Integer)
                    .map_err(|_| bad(format!("{value:?} is not a whole number")))?,
                toml::Value::Float(_) => value
                    .trim()
                    .parse::<f64>()
                    .map(toml::Value::Float)
                    .map_err(|_| bad(format!("{value:?} is not a number")))?,
                toml::Value::Boolean(_) => match value.trim() {
                    "true" => toml::Value::Boolean(true),
                    "false" => toml::Value::Boolean(false),
                    _ => return Err(bad(format!("{value:?} is not true or false"))),
                },
                toml::Value::Array(_) => toml::Value::Array(
                    value
                        .split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(|s| toml::Value::String(s.to_owned()))
                        .collect(),
                ),
                _ => toml::Value::String(value.clone()),
            };
            let entry = table
                .entry(section.to_owned())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            if let toml::Value::Table(t) = entry {
                t.insert(key.to_owned(), v);
                from_env = true;
            }
        }
        let origin = if from_env {
            format!("{origin} and VOLNA_* variables")
        } else {
            origin.to_owned()
        };
        let c: Config = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Parse {
                path: origin.clone(),
                message: e.to_string(),
            })?;
        c.validate(&origin)?;
        Ok(c)
    }

    /// Checks the settings hold together; `origin` names where they came from in the error.
    pub fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        let bad = |key: &'static str, message: &str| {
            Err(ConfigError::Value {
                path: origin.to_owned(),
                key,
                message: message.to_owned(),
            })
        };
        if let Err(e) = self.advertised_ips() {
            return bad("media.advertise", &e);
        }
        if self.media.listen.ip().is_unspecified() && self.media.advertise.is_empty() {
            return bad(
                "media.listen",
                "must be a concrete address (it is advertised to peers as the ICE candidate), \
                 or set media.advertise to the addresses peers reach it at",
            );
        }
        if self.http.max_body_bytes < 1024 {
            return bad("http.max_body_bytes", "must be at least 1024");
        }
        if self.media.consent_timeout_secs == 0 {
            return bad("media.consent_timeout_secs", "must be positive");
        }
        if self.http.tls_cert.is_empty() != self.http.tls_key.is_empty() {
            return bad(
                "http.tls_cert",
                "give both tls_cert and tls_key, or neither",
            );
        }
        if self.quic.cert_file.is_empty() != self.quic.key_file.is_empty() {
            return bad(
                "quic.cert_file",
                "give both cert_file and key_file, or neither",
            );
        }
        if self.auth.keys.iter().any(|k| k.len() < 16) {
            return bad("auth.keys", "each key must be at least 16 bytes");
        }
        if self.limits.max_participants_per_room == 0 || self.limits.max_rooms == 0 {
            return bad(
                "limits",
                "max_rooms and max_participants_per_room must be positive",
            );
        }
        if self.limits.ws_max_message_bytes < 1024 {
            return bad("limits.ws_max_message_bytes", "must be at least 1024");
        }
        if !valid_log_level(&self.log.level) {
            return bad(
                "log.level",
                "must be trace, debug, info, warn, error or off, or target=level directives separated by commas",
            );
        }
        if !matches!(self.log.format.as_str(), "text" | "json") {
            return bad("log.format", "must be \"text\" or \"json\"");
        }
        let w = &self.webhooks;
        if let Some(u) = w.urls.iter().find(|u| {
            u.parse::<hyper::Uri>().map_or(true, |u| {
                u.scheme_str() != Some("http") || u.host().is_none()
            })
        }) {
            return bad(
                "webhooks.urls",
                &format!("{u:?} is not an http:// URL (for https, send through a local TLS proxy)"),
            );
        }
        if !w.urls.is_empty() && w.secret.len() < 16 {
            return bad(
                "webhooks.secret",
                "must be at least 16 bytes when urls are set",
            );
        }
        let c = &self.cluster;
        if !c.redis.is_empty() {
            if let Err(e) = redis::Client::open(c.redis.as_str()) {
                return bad("cluster.redis", &format!("not a Redis URL: {e}"));
            }
            if c.secret.len() < 16 {
                return bad(
                    "cluster.secret",
                    "must be at least 16 bytes when redis is set",
                );
            }
        }
        // An empty node_id means the host name.
        let id_ok = c.node_id.is_empty() || crate::session::valid_name(&c.node_id);
        if !id_ok || !crate::session::valid_name(&c.region) {
            return bad(
                "cluster",
                "node_id and region are at most 64 characters of A-Z a-z 0-9 - _ . (region not empty)",
            );
        }
        if !(0.0..=1.0).contains(&c.max_cpu) {
            return bad("cluster.max_cpu", "must be between 0 and 1");
        }
        if c.heartbeat_ms < 100 || c.node_ttl_ms < 2 * c.heartbeat_ms {
            return bad(
                "cluster",
                "heartbeat_ms must be at least 100 and node_ttl_ms at least twice it",
            );
        }
        let t = &self.turn;
        if t.enabled {
            if let Err(e) = self.turn_listeners() {
                return bad("turn", &e);
            }
            if t.tls_cert.is_empty() != t.tls_key.is_empty() {
                return bad(
                    "turn.tls_cert",
                    "give both tls_cert and tls_key, or neither",
                );
            }
            if !t.secret.is_empty() && t.secret.len() < 16 {
                return bad(
                    "turn.secret",
                    "must be at least 16 bytes (or \"\" for a random one)",
                );
            }
            if t.realm.is_empty() || t.credential_ttl_secs == 0 || t.max_allocations == 0 {
                return bad(
                    "turn",
                    "realm, credential_ttl_secs and max_allocations must not be empty or 0",
                );
            }
        }
        if w.queue == 0 || w.max_attempts == 0 || w.timeout_ms == 0 {
            return bad(
                "webhooks",
                "queue, max_attempts and timeout_ms must be positive",
            );
        }
        Ok(())
    }

    /// `media.advertise` resolved: each entry an IP address, or a host name's first address.
    pub fn advertised_ips(&self) -> Result<Vec<std::net::IpAddr>, String> {
        self.media
            .advertise
            .iter()
            .map(|a| {
                let a = a.trim();
                let ip = match a.parse::<std::net::IpAddr>() {
                    Ok(ip) => ip,
                    Err(_) => resolve(&format!("{a}:0"))?.ip(),
                };
                if ip.is_unspecified() {
                    return Err(format!("{a}: a wildcard address cannot be reached"));
                }
                Ok(ip)
            })
            .collect()
    }

    /// The TURN listeners (UDP, TCP, TLS), each `None` when "".
    #[allow(clippy::type_complexity)]
    pub fn turn_listeners(
        &self,
    ) -> Result<(Option<SocketAddr>, Option<SocketAddr>, Option<SocketAddr>), String> {
        let one = |key: &str, v: &str| -> Result<Option<SocketAddr>, String> {
            if v.trim().is_empty() {
                return Ok(None);
            }
            resolve(v.trim())
                .map(Some)
                .map_err(|e| format!("{key}: {e}"))
        };
        let t = &self.turn;
        let l = (
            one("udp", &t.udp)?,
            one("tcp", &t.tcp)?,
            one("tls", &t.tls)?,
        );
        if l == (None, None, None) {
            return Err("enabled without a listener: set udp, tcp or tls".into());
        }
        Ok(l)
    }

    /// Media workers to start: the configured count, or one per CPU core.
    pub fn worker_count(&self) -> usize {
        match self.media.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }

    pub fn shard_limits(&self) -> Limits {
        Limits {
            max_rooms: self.limits.max_rooms,
            max_participants_per_room: self.limits.max_participants_per_room,
            max_tracks_per_participant: self.limits.max_tracks_per_participant,
            max_participants_per_identity: self.limits.max_participants_per_identity,
        }
    }

    pub fn relay(&self) -> RelayConfig {
        RelayConfig {
            keyframe_request_interval: Duration::from_millis(
                self.media.keyframe_request_interval_ms,
            ),
            report_interval: Duration::from_secs(1),
            publisher_max_bitrate_bps: self.media.publisher_max_bitrate_kbps * 1000,
            speaker_interval: Duration::from_millis(300),
            pause_video: self.media.pause_video,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_parses() {
        let c = Config::parse(EMBEDDED_DEFAULT, "dev.toml").unwrap();
        assert!(c.http.listen.ip().is_loopback());
        assert!(c.media.listen.ip().is_loopback());
    }

    /// Levels and directives the filter takes; host names where a socket address is.
    #[test]
    fn good_values_parse() {
        let cases = [
            "[log]\nlevel = \"debug\"\n",
            "[log]\nlevel = \"info,volna=debug,rtc_dtls=off\"\n",
            "[log]\nlevel = \"WARN\"\n",
            "[http]\nlisten = \"localhost:8080\"\n",
            "[quic]\nlisten = \"[::1]:4433\"\n",
            "[media]\nlisten = \"0.0.0.0:5000\"\nadvertise = [\"203.0.113.7\", \"2001:db8::7\"]\n",
            "[webhooks]\nurls = [\"http://127.0.0.1:9000/hooks\"]\nsecret = \"0123456789abcdef\"\n",
        ];
        for text in cases {
            assert!(Config::parse(text, "t.toml").is_ok(), "{text:?}");
        }
        let c = Config::parse("[http]\nlisten = \"localhost:8080\"\n", "t.toml").unwrap();
        assert!(c.http.listen.ip().is_loopback() && c.http.listen.port() == 8080);
    }

    /// `VOLNA_<SECTION>_<KEY>` replaces the file's value, typed as the setting is; variables of
    /// other sections are not the config's; an unknown key or a bad value is refused by name.
    #[test]
    fn environment_variables_override_the_file() {
        let env = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let file = "[http]\nlisten = \"127.0.0.1:8080\"\n[auth]\nkeys = [\"0123456789abcdef\"]\n";
        let c = Config::parse_with_env(
            file,
            "t.toml",
            env(&[
                ("VOLNA_HTTP_LISTEN", "127.0.0.2:9090"),
                ("VOLNA_AUTH_KEYS", "aaaaaaaaaaaaaaaa, bbbbbbbbbbbbbbbb"),
                ("VOLNA_MEDIA_WORKERS", "3"),
                ("VOLNA_MEDIA_PAUSE_VIDEO", "false"),
                ("VOLNA_LOG_FORMAT", "json"),
                ("VOLNA_MEDIA_ADVERTISE", "203.0.113.7"),
                ("VOLNA_BIN", "/usr/bin/volna"),
                ("VOLNA_LOG", "1"),
                ("PATH", "/bin"),
            ])
            .into_iter(),
        )
        .unwrap();
        assert_eq!(c.http.listen.to_string(), "127.0.0.2:9090");
        assert_eq!(c.auth.keys, ["aaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbb"]);
        assert_eq!((c.media.workers, c.media.pause_video), (3, false));
        assert_eq!(c.log.format, "json");
        assert_eq!(c.media.advertise, ["203.0.113.7"]);
        // (variable, what the error names)
        let cases = [
            (
                "VOLNA_HTTP_LISTN",
                "VOLNA_HTTP_LISTN: http has no setting listn",
            ),
            (
                "VOLNA_MEDIA_WORKERS",
                "VOLNA_MEDIA_WORKERS: \"many\" is not a whole number",
            ),
            ("VOLNA_MEDIA_PAUSE_VIDEO", "is not true or false"),
            ("VOLNA_AUTH_KEYS", "auth.keys"),
            ("VOLNA_HTTP_LISTEN", "http"),
        ];
        let values = ["x", "many", "yes", "short", "nowhere"];
        for ((var, want), value) in cases.into_iter().zip(values) {
            let err = Config::parse_with_env(file, "t.toml", env(&[(var, value)]).into_iter())
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{var}={value}: {err}");
        }
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            ("[http]\nlisten = 5\n", "listen"),
            ("[media]\nlisten = \"nonsense\"\n", "listen"),
            ("[media]\nbogus = 1\n", "bogus"),
            ("[http]\nmax_body_bytes = 10\n", "http.max_body_bytes"),
            ("[media]\nlisten = \"0.0.0.0:5000\"\n", "media.listen"),
            ("[log]\nformat = \"xml\"\n", "log.format"),
            ("[log]\nlevel = \"loud\"\n", "log.level"),
            ("[media]\nadvertise = [\"0.0.0.0\"]\n", "media.advertise"),
            (
                "[media]\nadvertise = [\"no-such-host.invalid\"]\n",
                "media.advertise",
            ),
            ("[media]\nlisten = \"[::]:5000\"\n", "media.listen"),
            ("[log]\nlevel = \"info,volna=noisy\"\n", "log.level"),
            ("[log]\nlevel = \"\"\n", "log.level"),
            ("[http]\nlisten = \"no-such-host.invalid:80\"\n", "listen"),
            ("[auth]\nkeys = [\"short\"]\n", "auth.keys"),
            ("[limits]\nmax_rooms = 0\n", "limits"),
            ("[http]\ntls_cert = \"a.pem\"\n", "http.tls_cert"),
            (
                "[webhooks]\nurls = [\"https://x.test/h\"]\nsecret = \"0123456789abcdef\"\n",
                "webhooks.urls",
            ),
            ("[webhooks]\nurls = [\"nonsense\"]\n", "webhooks.urls"),
            (
                "[webhooks]\nurls = [\"http://x.test/h\"]\n",
                "webhooks.secret",
            ),
            ("[webhooks]\nqueue = 0\n", "webhooks"),
            ("[http\n", "line 1"),
        ];
        for (text, want) in cases {
            let err = Config::parse(text, "t.toml").unwrap_err().to_string();
            assert!(err.contains(want), "{text:?}: {err}");
        }
    }
}
