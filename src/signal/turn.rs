//! The TURN server as the node runs it: started from `[turn]` with the workers' media
//! addresses as its only peers, and the ICE servers every client is told about, with
//! credentials minted for its identity. They go out in WHIP/WHEP `Link: rel="ice-server"`
//! headers (RFC 9725 §4.6) and in the room protocol's `joined` (docs/protocol.md).

use std::collections::HashMap;
use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use rand::RngCore;
use tracing::{info, warn};

use crate::config::Config;
use crate::session::protocol::IceServerInfo;
use crate::transport::turn::auth::Secret;
use crate::transport::turn::io::TurnSetup;
use crate::transport::turn::{RelayMap, TurnPolicy, TurnServer, TurnStats};

/// The node's TURN URLs and the secret that mints their credentials.
#[derive(Clone)]
pub struct IceServers {
    secret: Secret,
    ttl: u64,
    urls: Vec<String>,
}

impl IceServers {
    /// The ICE servers for `identity` now (`unix` seconds), valid for the configured TTL.
    pub fn for_identity(&self, identity: &str, unix: u64) -> Vec<IceServerInfo> {
        let c = self.secret.mint(identity, unix + self.ttl);
        vec![IceServerInfo {
            urls: self.urls.clone(),
            username: c.username,
            credential: c.credential,
        }]
    }

    /// The same as `Link` header values (RFC 9725 §4.6), one per URL.
    pub fn link_headers(&self, identity: &str, unix: u64) -> Vec<String> {
        let mut out = Vec::new();
        for s in self.for_identity(identity, unix) {
            for url in &s.urls {
                out.push(format!(
                    "<{url}>; rel=\"ice-server\"; username=\"{}\"; credential=\"{}\"; credential-type=\"password\"",
                    quoted(&s.username),
                    s.credential
                ));
            }
        }
        out
    }
}

/// A quoted-string's content: `"` and `\` escaped (an identity may hold them).
fn quoted(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

/// The running TURN server's handles.
pub struct Turn {
    pub ice: IceServers,
    pub stats: Arc<Mutex<TurnStats>>,
    pub listening: Vec<(&'static str, SocketAddr)>,
}

/// Starts the TURN server of `[turn]` on a thread of its own, relaying to `media`, the
/// workers' UDP addresses; `relays` is shared with the workers.
pub fn start(
    config: &Config,
    media: &[SocketAddr],
    relays: RelayMap,
) -> Result<Option<Turn>, String> {
    let t = &config.turn;
    if !t.enabled {
        return Ok(None);
    }
    let (udp, tcp, tls) = config.turn_listeners()?;
    let media_ip = config.media.listen.ip();
    let advertised = config.advertised_ips().unwrap_or_default();
    // Relay sockets send from the media socket's address, so a worker sees them as local
    // peers; when that is a wildcard, from loopback: IPv4's if an IPv4 address is advertised
    // (one family is relayed), else IPv6's.
    let relay_ip = if !media_ip.is_unspecified() {
        media_ip
    } else if advertised.iter().any(IpAddr::is_ipv4) || advertised.is_empty() {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        IpAddr::V6(Ipv6Addr::LOCALHOST)
    };
    let mut visible: Vec<IpAddr> = advertised;
    if !media_ip.is_unspecified() {
        visible.push(media_ip);
    }
    visible.retain(|ip| ip.is_ipv4() == relay_ip.is_ipv4());
    let mut peers = HashMap::new();
    for ip in &visible {
        for m in media {
            peers.insert(
                SocketAddr::new(*ip, m.port()),
                SocketAddr::new(relay_ip, m.port()),
            );
        }
    }
    let relayed_ip = visible.first().copied().unwrap_or(relay_ip);
    let media_targets: Arc<HashSet<SocketAddr>> = Arc::new(peers.values().copied().collect());
    let secret = if t.secret.is_empty() {
        let mut k = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut k);
        k.to_vec()
    } else {
        t.secret.as_bytes().to_vec()
    };
    let mut nonce_key = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut nonce_key);
    let crypto = rtc_crypto::default_provider().map_err(|e| e.to_string())?;
    let policy = TurnPolicy {
        realm: t.realm.clone(),
        max_per_identity: t.max_allocations_per_identity,
        max_allocations: t.max_allocations,
        peers,
        relayed_ip,
    };
    let server = TurnServer::new(policy, Secret::new(&secret), &nonce_key, crypto);
    let bind_err = |what: &str, a: SocketAddr, e: std::io::Error| format!("{what} {a}: {e}");
    let udp_socket = udp
        .map(|a| std::net::UdpSocket::bind(a).map_err(|e| bind_err("udp", a, e)))
        .transpose()?;
    let tcp_listener = tcp
        .map(|a| std::net::TcpListener::bind(a).map_err(|e| bind_err("tcp", a, e)))
        .transpose()?;
    let tls_listener = match tls {
        Some(a) => {
            let l = std::net::TcpListener::bind(a).map_err(|e| bind_err("tls", a, e))?;
            Some((l, acceptor(config)?))
        }
        None => None,
    };
    let mut listening = Vec::new();
    let local = |r: std::io::Result<SocketAddr>| r.map_err(|e| e.to_string());
    if let Some(s) = &udp_socket {
        listening.push(("udp", local(s.local_addr())?));
    }
    if let Some(s) = &tcp_listener {
        listening.push(("tcp", local(s.local_addr())?));
    }
    if let Some((s, _)) = &tls_listener {
        listening.push(("tls", local(s.local_addr())?));
    }
    let host = |a: SocketAddr| -> String {
        if !t.host.is_empty() {
            return t.host.clone();
        }
        // A listener on the wildcard or the media address is reached where the media is (the
        // advertised address); one on an address of its own, there.
        let ip = if a.ip().is_unspecified() || a.ip() == media_ip {
            relayed_ip
        } else {
            a.ip()
        };
        match ip {
            IpAddr::V6(v6) => format!("[{v6}]"),
            IpAddr::V4(v4) => v4.to_string(),
        }
    };
    let urls = listening
        .iter()
        .map(|(what, a)| match *what {
            "udp" => format!("turn:{}:{}?transport=udp", host(*a), a.port()),
            "tcp" => format!("turn:{}:{}?transport=tcp", host(*a), a.port()),
            _ => format!("turns:{}:{}?transport=tcp", host(*a), a.port()),
        })
        .collect();
    let stats = Arc::new(Mutex::new(TurnStats::default()));
    let setup = TurnSetup {
        udp: udp_socket,
        tcp: tcp_listener,
        tls: tls_listener,
        server,
        relay_ip,
        relays,
        media: media_targets,
        stats: stats.clone(),
    };
    // A thread and runtime of its own: TURN traffic and its connections' handshakes never
    // hold up signalling, nor the media workers.
    let (started, ready) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("volna-turn".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = started.send(Err(e.to_string()));
                    return;
                }
            };
            rt.block_on(async move {
                match crate::transport::turn::io::spawn(setup) {
                    Ok(task) => {
                        let _ = started.send(Ok(()));
                        let _ = task.await;
                    }
                    Err(e) => {
                        let _ = started.send(Err(e.to_string()));
                    }
                }
            });
        })
        .map_err(|e| e.to_string())?;
    ready
        .recv()
        .map_err(|_| "the TURN thread ended".to_owned())??;
    if visible.is_empty() {
        warn!("TURN: no media address of the relay sockets' family to relay to");
    }
    info!(listen = ?listening, relayed_ip = %relayed_ip, peers = visible.len() * media.len(), "TURN server");
    Ok(Some(Turn {
        ice: IceServers {
            secret: Secret::new(&secret),
            ttl: t.credential_ttl_secs,
            urls,
        },
        stats,
        listening,
    }))
}

/// The TLS acceptor of `turn.tls`: its own certificate, else HTTP's, else a self-signed one.
fn acceptor(config: &Config) -> Result<tokio_rustls::TlsAcceptor, String> {
    let t = &config.turn;
    let (cert, key) = if !t.tls_cert.is_empty() {
        (t.tls_cert.as_str(), t.tls_key.as_str())
    } else {
        (config.http.tls_cert.as_str(), config.http.tls_key.as_str())
    };
    let alpn: &[&[u8]] = &[b"stun.turn"];
    if !cert.is_empty() {
        let read = |p: &str| std::fs::read(p).map_err(|e| format!("turn TLS {p}: {e}"));
        return super::tls::acceptor(&read(cert)?, &read(key)?, alpn);
    }
    let mut names = vec!["localhost".to_owned()];
    if !t.host.is_empty() {
        names.insert(0, t.host.clone());
    }
    let ck = rcgen::generate_simple_self_signed(names).map_err(|e| e.to_string())?;
    warn!("TURN over TLS with a self-signed certificate: browsers refuse it (set turn.tls_cert)");
    super::tls::acceptor(
        ck.cert.pem().as_bytes(),
        ck.signing_key.serialize_pem().as_bytes(),
        alpn,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_headers_follow_rfc_9725() {
        let ice = IceServers {
            secret: Secret::new(b"0123456789abcdef"),
            ttl: 100,
            urls: vec![
                "turn:10.0.0.1:3478?transport=udp".into(),
                "turns:turn.example.net:443?transport=tcp".into(),
            ],
        };
        let links = ice.link_headers("a\"b", 1000);
        let pwd = Secret::new(b"0123456789abcdef").password("1100:a\"b");
        assert_eq!(
            links,
            vec![
                format!("<turn:10.0.0.1:3478?transport=udp>; rel=\"ice-server\"; username=\"1100:a\\\"b\"; credential=\"{pwd}\"; credential-type=\"password\""),
                format!("<turns:turn.example.net:443?transport=tcp>; rel=\"ice-server\"; username=\"1100:a\\\"b\"; credential=\"{pwd}\"; credential-type=\"password\""),
            ]
        );
    }
}
