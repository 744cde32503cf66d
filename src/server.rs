//! Starting a node: bind the listeners, start the worker, serve HTTP. Used by the binary and by
//! integration tests (which bind port 0 and read the addresses back).

use std::net::SocketAddr;

use tracing::{info, warn};

use crate::cluster::membership::{Sample, Sampler};
use crate::cluster::{Cluster, Limits, Settings};
use crate::config::{Config, DEV_CLUSTER_SECRET};
use crate::session::{Shard, ShardConfig};
use crate::signal::auth::Auth;
use crate::signal::dispatch::{Command, Workers};
use crate::signal::http::{router, serve};
use crate::signal::state::AppState;
use crate::signal::webhook::{Hooks, WebhookCounters};
use crate::transport::quic::endpoint::QuicIdentity;
use crate::transport::webrtc::DtlsIdentity;
use crate::worker;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot bind {what} on {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("DTLS identity: {0}")]
    Identity(String),
    /// The configured QUIC certificate or key cannot be read or used (a configuration error).
    #[error("QUIC certificate: {0}")]
    QuicCertificate(String),
    /// The configured HTTPS certificate or key cannot be read or used (a configuration error).
    #[error("HTTPS certificate: {0}")]
    HttpCertificate(String),
    #[error("worker: {0}")]
    Worker(std::io::Error),
    /// The TURN server cannot start as configured (a listener taken, a certificate unreadable).
    #[error("TURN: {0}")]
    Turn(String),
    /// `[cluster]` cannot be used as given (a configuration error).
    #[error("cluster: {0}")]
    Cluster(String),
}

pub struct Running {
    pub http_addr: SocketAddr,
    /// The first worker's media address.
    pub media_addr: SocketAddr,
    /// Every worker's media address.
    pub media_addrs: Vec<SocketAddr>,
    pub quic_addr: Option<SocketAddr>,
    /// Hex SHA-256 of the QUIC certificate.
    pub quic_cert_sha256: Option<String>,
    pub serve: tokio::task::JoinHandle<std::io::Result<()>>,
    /// The node's place in the cluster, and its drain state.
    pub cluster: Cluster,
    pub workers: Workers,
}

/// Binds and starts everything; returns once listeners are bound.
pub async fn start(config: &Config) -> Result<Running, ServerError> {
    let provider =
        rtc_crypto::default_provider().map_err(|e| ServerError::Identity(e.to_string()))?;
    let identity =
        DtlsIdentity::generate(provider).map_err(|e| ServerError::Identity(e.to_string()))?;
    let tls = if config.http.tls_cert.is_empty() {
        None
    } else {
        let read = |p: &str| {
            std::fs::read(p).map_err(|e| ServerError::HttpCertificate(format!("{p}: {e}")))
        };
        let (cert, key) = (read(&config.http.tls_cert)?, read(&config.http.tls_key)?);
        Some(
            crate::signal::tls::acceptor(&cert, &key, &[b"http/1.1"])
                .map_err(ServerError::HttpCertificate)?,
        )
    };
    let webhook_counters = std::sync::Arc::new(WebhookCounters::default());
    let hooks = Hooks::start(&config.webhooks, webhook_counters.clone());
    if hooks.is_some() {
        info!(urls = ?config.webhooks.urls, "webhooks on");
    }
    let mut setups = Vec::new();
    let mut tcp_addrs = Vec::new();
    let mut bound_media = Vec::new();
    let turn_relays = crate::transport::turn::RelayMap::default();
    for worker in 0..config.worker_count() {
        let mut addr = config.media.listen;
        if addr.port() != 0 {
            let port = addr
                .port()
                .checked_add(worker as u16)
                .ok_or(ServerError::Bind {
                    what: "media (UDP)",
                    addr,
                    source: std::io::ErrorKind::InvalidInput.into(),
                })?;
            addr.set_port(port);
        }
        let socket = std::net::UdpSocket::bind(addr).map_err(|source| ServerError::Bind {
            what: "media (UDP)",
            addr,
            source,
        })?;
        let media_addr = socket.local_addr().map_err(ServerError::Worker)?;
        bound_media.push(media_addr);
        // TCP at the UDP port's number; if that is taken (an ephemeral UDP port), any port.
        let tcp = if config.media.ice_tcp {
            let l = std::net::TcpListener::bind(media_addr)
                .or_else(|_| std::net::TcpListener::bind(SocketAddr::new(media_addr.ip(), 0)))
                .map_err(|source| ServerError::Bind {
                    what: "media (ICE-TCP)",
                    addr: media_addr,
                    source,
                })?;
            Some(l)
        } else {
            None
        };
        let tcp_addr = match &tcp {
            Some(l) => Some(l.local_addr().map_err(ServerError::Worker)?),
            None => None,
        };
        tcp_addrs.extend(tcp_addr);
        let shard_config = ShardConfig {
            worker,
            media_addr,
            tcp_addr,
            advertise: config.advertised_ips().unwrap_or_default(),
            consent_timeout: std::time::Duration::from_secs(config.media.consent_timeout_secs),
            reconnect_grace: std::time::Duration::from_secs(config.media.reconnect_secs),
            relay: config.relay(),
            limits: config.shard_limits(),
            room_events: !config.webhooks.urls.is_empty(),
        };
        let shard = Shard::new(shard_config, identity.clone());
        let cpu = config.media.pin_workers.then(|| allowed_cpu(worker));
        setups.push(worker::WorkerSetup {
            socket,
            shard,
            cpu,
            hooks: hooks.clone(),
            tcp,
            turn: turn_relays.clone(),
        });
    }
    let turn =
        crate::signal::turn::start(config, &bound_media, turn_relays).map_err(ServerError::Turn)?;
    let auth = Auth::new(config.auth.keys.clone());
    let (quic, quic_addr, quic_hash) = if config.quic.enabled {
        let id = if config.quic.cert_file.is_empty() {
            QuicIdentity::self_signed()
        } else {
            let read = |p: &str| {
                std::fs::read_to_string(p)
                    .map_err(|e| ServerError::QuicCertificate(format!("{p}: {e}")))
            };
            QuicIdentity::from_pem(
                &read(&config.quic.cert_file)?,
                &read(&config.quic.key_file)?,
            )
        }
        .map_err(|e| ServerError::QuicCertificate(e.to_string()))?;
        let server_config = id
            .server_config()
            .map_err(|e| ServerError::QuicCertificate(e.to_string()))?;
        let socket =
            std::net::UdpSocket::bind(config.quic.listen).map_err(|source| ServerError::Bind {
                what: "QUIC (UDP)",
                addr: config.quic.listen,
                source,
            })?;
        let addr = socket.local_addr().map_err(ServerError::Worker)?;
        info!(quic = %addr, cert_sha256 = %id.cert_sha256, "QUIC listener");
        let listener = worker::QuicListener {
            socket,
            config: server_config,
            auth: auth.clone(),
        };
        (Some(listener), Some(addr), Some(id.cert_sha256))
    } else {
        (None, None, None)
    };
    let (workers, _joins) = worker::spawn_all(setups, quic).map_err(ServerError::Worker)?;
    let media_addrs: Vec<SocketAddr> = workers.all().iter().map(|w| w.media_addr).collect();
    let media_addr = media_addrs[0];
    let tcp = tokio::net::TcpListener::bind(config.http.listen)
        .await
        .map_err(|source| ServerError::Bind {
            what: "HTTP",
            addr: config.http.listen,
            source,
        })?;
    let http_addr = tcp.local_addr().map_err(ServerError::Worker)?;
    if auth.dev_mode() {
        warn!("auth is off: anyone who can reach the HTTP listener may publish and watch (dev mode, no [auth] keys)");
    } else {
        info!(
            keys = config.auth.keys.len(),
            "auth on: JWT (HS256) required for /rtc, WHIP and WHEP"
        );
    }
    let relay = relay_endpoint(config)?;
    let relay_cert = relay.as_ref().map(|(_, h)| h.clone()).unwrap_or_default();
    let cluster = cluster(config, http_addr, &media_addrs, relay_cert)?;
    if let Some((endpoint, _)) = relay {
        tokio::spawn(crate::cluster::links::run(
            cluster.clone(),
            std::sync::Arc::new(crate::signal::relay_media::WorkerMedia(workers.clone())),
            endpoint,
        ));
    }
    tokio::spawn(crate::cluster::membership::run(
        cluster.clone(),
        sampler(workers.clone()),
    ));
    let state = AppState {
        cluster: cluster.clone(),
        workers: workers.clone(),
        auth,
        ws_max_message_bytes: config.limits.ws_max_message_bytes,
        ws_messages_per_second: config.limits.ws_messages_per_second,
        ws_join_timeout: std::time::Duration::from_secs(config.http.join_timeout_secs.max(1)),
        quic_cert_sha256: quic_hash.clone(),
        webhooks: webhook_counters,
        ice_servers: turn.as_ref().map(|t| t.ice.clone()),
        turn_stats: turn.as_ref().map(|t| t.stats.clone()),
    };
    let app = router(state, config.http.max_body_bytes);
    let https = !config.http.tls_cert.is_empty();
    info!(http = %http_addr, tls = https, media = ?media_addrs, ice_tcp = ?tcp_addrs, "volna listening");
    let limits = crate::signal::http::ServeLimits {
        header_timeout: std::time::Duration::from_secs(config.http.header_timeout_secs.max(1)),
        max_connections: config.http.max_connections.max(1),
        tls,
    };
    let serve = tokio::spawn(serve(tcp, app, limits));
    Ok(Running {
        http_addr,
        media_addr,
        media_addrs,
        quic_addr,
        quic_cert_sha256: quic_hash,
        serve,
        cluster,
        workers,
    })
}

/// The node's cluster settings from `[cluster]` and the addresses it listens on.
/// The relay-link endpoint of a cluster node with `cluster.relay` set, and its certificate's
/// SHA-256.
fn relay_endpoint(config: &Config) -> Result<Option<(quinn::Endpoint, String)>, ServerError> {
    let c = &config.cluster;
    if c.redis.is_empty() || c.relay.is_empty() {
        return Ok(None);
    }
    let addr = crate::config::resolve(&c.relay).map_err(ServerError::Cluster)?;
    let socket = std::net::UdpSocket::bind(addr).map_err(|source| ServerError::Bind {
        what: "relay links (QUIC)",
        addr,
        source,
    })?;
    let id = QuicIdentity::self_signed().map_err(|e| ServerError::Cluster(e.to_string()))?;
    let mut server = id
        .server_config_for(crate::transport::quic::endpoint::RELAY_ALPN)
        .map_err(|e| ServerError::Cluster(e.to_string()))?;
    server.transport_config(crate::cluster::links::transport());
    let endpoint = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(server),
        socket,
        std::sync::Arc::new(quinn::TokioRuntime),
    )
    .map_err(|source| ServerError::Bind {
        what: "relay links (QUIC)",
        addr,
        source,
    })?;
    info!(relay = %addr, cert_sha256 = %id.cert_sha256, "relay links listening");
    Ok(Some((endpoint, id.cert_sha256)))
}

fn cluster(
    config: &Config,
    http_addr: SocketAddr,
    media: &[SocketAddr],
    relay_cert: String,
) -> Result<Cluster, ServerError> {
    let c = &config.cluster;
    let clustered = !c.redis.is_empty();
    let http = if !c.advertise_http.is_empty() {
        c.advertise_http.clone()
    } else if clustered && http_addr.ip().is_unspecified() {
        return Err(ServerError::Cluster(
            "http.listen is a wildcard address: set cluster.advertise_http to where clients reach this node".into(),
        ));
    } else {
        http_addr.to_string()
    };
    let node_id = if c.node_id.is_empty() {
        host_name()
    } else {
        c.node_id.clone()
    };
    let advertised = config.advertised_ips().unwrap_or_default();
    let media = media
        .iter()
        .flat_map(|a| {
            let ips = if advertised.is_empty() {
                vec![a.ip()]
            } else {
                advertised.clone()
            };
            ips.into_iter()
                .map(move |ip| SocketAddr::new(ip, a.port()).to_string())
        })
        .collect();
    if clustered {
        if c.secret == DEV_CLUSTER_SECRET {
            warn!("cluster: the secret is configs/dev.toml's dev default; set cluster.secret for anything but development");
        }
        info!(node = %node_id, region = %c.region, http = %http, redis = %crate::cluster::membership::without_password(&c.redis), "cluster: joining");
    }
    Ok(Cluster::new(Settings {
        redis: clustered.then(|| c.redis.clone()),
        node_id,
        region: c.region.clone(),
        http,
        https: !config.http.tls_cert.is_empty(),
        media,
        relay: c.relay.clone(),
        relay_cert,
        secret: c.secret.clone(),
        limits: Limits {
            max_cpu: c.max_cpu,
            max_sessions: c.max_sessions,
        },
        heartbeat: std::time::Duration::from_millis(c.heartbeat_ms),
        ttl: std::time::Duration::from_millis(c.node_ttl_ms),
        drain_timeout: std::time::Duration::from_secs(c.drain_timeout_secs),
    }))
}

/// The machine's host name (a node's id when none is configured).
fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    let ok = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0;
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let name: String = String::from_utf8_lossy(&buf[..end])
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || "-_.".contains(*c))
        .take(64)
        .collect();
    if ok && !name.is_empty() {
        name
    } else {
        "volna".into()
    }
}

/// What the cluster heartbeat reads from the workers each beat.
fn sampler(workers: Workers) -> Sampler {
    Box::new(move || {
        let workers = workers.clone();
        Box::pin(async move {
            let s = workers.stats().await?;
            let mut rooms = Vec::new();
            for w in workers.all() {
                rooms.extend(w.call(|reply| Command::LocalRooms { reply }).await?);
            }
            Some(Sample {
                sessions: s.sessions as u64,
                participants: s.participants as u64,
                tracks: s.tracks as u64,
                rooms,
                forwarded_bytes: s.forwarded_bytes,
            })
        })
    })
}

/// The `n`-th CPU this process may run on (wrapping), for pinning worker `n`.
#[cfg(target_os = "linux")]
fn allowed_cpu(n: usize) -> usize {
    // SAFETY: sched_getaffinity fills the zeroed set for this process; CPU_ISSET reads inside it.
    let allowed: Vec<usize> = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return n;
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect()
    };
    if allowed.is_empty() {
        n
    } else {
        allowed[n % allowed.len()]
    }
}

#[cfg(not(target_os = "linux"))]
fn allowed_cpu(n: usize) -> usize {
    n
}
