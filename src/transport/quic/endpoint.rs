//! The QUIC listener: TLS identity, quinn configuration, and one task per connection that runs
//! the control stream and hands datagrams to the worker. Tasks run on the worker's own runtime,
//! so a connection's media stays on the worker thread.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info};

use super::control::{
    ControlReply, ControlRequest, QuicTrack, MAX_CONTROL_MESSAGE, MAX_CONTROL_PER_SECOND, MAX_FLOWS,
};
use super::roq::{frame, read_varint, split_datagram};
use crate::core::room::SessionId;
use crate::session::protocol::Refusal;
use crate::session::Grants;
use crate::signal::auth::{unix_now, Auth};
use crate::worker::{Command, Workers};

/// ALPN of volna's RTP-over-QUIC connections.
pub const ALPN: &[u8] = b"volna-roq/1";

#[derive(Debug, thiserror::Error)]
pub enum QuicError {
    #[error("certificate: {0}")]
    Certificate(String),
    #[error("TLS: {0}")]
    Tls(String),
}

/// The listener's certificate and key (DER), and the certificate's SHA-256 for pinning.
#[derive(Clone)]
pub struct QuicIdentity {
    pub cert_der: Vec<u8>,
    pub key_der: Vec<u8>,
    /// Lower-case hex SHA-256 of `cert_der`.
    pub cert_sha256: String,
}

pub fn sha256_hex(data: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, data)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl QuicIdentity {
    /// A self-signed certificate for development (clients pin its hash).
    pub fn self_signed() -> Result<Self, QuicError> {
        let ck = rcgen::generate_simple_self_signed(vec!["volna".into(), "localhost".into()])
            .map_err(|e| QuicError::Certificate(e.to_string()))?;
        let cert_der = ck.cert.der().to_vec();
        Ok(Self {
            cert_sha256: sha256_hex(&cert_der),
            key_der: ck.signing_key.serialize_der(),
            cert_der,
        })
    }

    /// A certificate and PKCS#8 key from PEM files.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, QuicError> {
        let der = |pem: &str, tag: &str| -> Result<Vec<u8>, QuicError> {
            let body: String = pem
                .lines()
                .skip_while(|l| !l.starts_with(&format!("-----BEGIN {tag}")))
                .skip(1)
                .take_while(|l| !l.starts_with("-----END"))
                .collect();
            base64_decode(&body)
                .ok_or_else(|| QuicError::Certificate(format!("no {tag} PEM block")))
        };
        let cert_der = der(cert_pem, "CERTIFICATE")?;
        let key_der = der(key_pem, "PRIVATE KEY")?;
        Ok(Self {
            cert_sha256: sha256_hex(&cert_der),
            cert_der,
            key_der,
        })
    }

    pub fn server_config(&self) -> Result<quinn::ServerConfig, QuicError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cert = rustls::pki_types::CertificateDer::from(self.cert_der.clone());
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(self.key_der.clone().into());
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| QuicError::Tls(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(vec![cert], key)
            .map_err(|e| QuicError::Tls(e.to_string()))?;
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
            .map_err(|e| QuicError::Tls(e.to_string()))?;
        let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        let mut transport = quinn::TransportConfig::default();
        // One control stream per connection; media goes in datagrams. More streams than that are
        // refused by QUIC flow control itself, so a stream flood costs nothing.
        transport.max_concurrent_bidi_streams(1u32.into());
        transport.max_concurrent_uni_streams(0u32.into());
        transport.datagram_receive_buffer_size(Some(1 << 20));
        transport.max_idle_timeout(Some(Duration::from_secs(30).try_into().expect("30 s fits")));
        config.transport_config(Arc::new(transport));
        Ok(config)
    }
}

/// Decodes standard base64 (PEM bodies); `None` on bad input.
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let bytes: Vec<u8> = s
        .bytes()
        .filter(|c| !c.is_ascii_whitespace() && *c != b'=')
        .collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut acc = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            acc |= val(*c)? << (18 - 6 * i);
        }
        let n = chunk.len() * 6 / 8;
        for i in 0..n {
            out.push((acc >> (16 - 8 * i)) as u8);
        }
    }
    Some(out)
}

/// Accepts connections until the endpoint closes.
pub async fn accept_loop(endpoint: quinn::Endpoint, workers: Workers, auth: Auth) {
    while let Some(incoming) = endpoint.accept().await {
        let workers = workers.clone();
        let auth = auth.clone();
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            match incoming.await {
                Ok(conn) => {
                    info!(peer = %remote, "QUIC connection");
                    run_connection(conn, workers, auth).await;
                }
                Err(e) => debug!(peer = %remote, error = %e, "QUIC handshake failed"),
            }
        });
    }
}

fn refusal(r: Refusal) -> ControlReply {
    ControlReply::Error {
        code: r.code,
        reason: r.reason,
        message: r.message,
    }
}

async fn call<T>(
    tx: &mpsc::Sender<Command>,
    make: impl FnOnce(oneshot::Sender<Result<T, Refusal>>) -> Command,
) -> Result<T, Refusal> {
    let (reply, wait) = oneshot::channel();
    tx.send(make(reply))
        .await
        .map_err(|_| Refusal::new(503, "unavailable", "worker stopped"))?;
    wait.await
        .map_err(|_| Refusal::new(503, "unavailable", "worker stopped"))?
}

/// Reads one varint-framed control message; `Ok(None)` at the end of the stream.
async fn read_message(recv: &mut quinn::RecvStream) -> Result<Option<Vec<u8>>, Refusal> {
    let mut first = [0u8; 1];
    match recv.read_exact(&mut first).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(e) => return Err(Refusal::new(400, "bad_frame", e.to_string())),
    }
    let len_bytes = 1usize << (first[0] >> 6);
    let mut buf = vec![first[0]; len_bytes];
    if len_bytes > 1 {
        recv.read_exact(&mut buf[1..])
            .await
            .map_err(|e| Refusal::new(400, "bad_frame", e.to_string()))?;
    }
    let (len, _) = read_varint(&buf).map_err(|e| Refusal::new(400, "bad_frame", e.to_string()))?;
    if len as usize > MAX_CONTROL_MESSAGE {
        return Err(Refusal::new(
            413,
            "message_too_large",
            format!("control messages are limited to {MAX_CONTROL_MESSAGE} bytes"),
        ));
    }
    let mut body = vec![0u8; len as usize];
    recv.read_exact(&mut body)
        .await
        .map_err(|e| Refusal::new(400, "bad_frame", e.to_string()))?;
    Ok(Some(body))
}

struct Joined {
    room: String,
    identity: String,
    grants: Grants,
}

async fn run_connection(conn: quinn::Connection, workers: Workers, auth: Auth) {
    let peer = conn.remote_address();
    let (mut send, mut recv) =
        match tokio::time::timeout(Duration::from_secs(10), conn.accept_bi()).await {
            Ok(Ok(s)) => s,
            _ => {
                conn.close(1u32.into(), b"no control stream");
                return;
            }
        };
    let mut joined: Option<Joined> = None;
    // Until the connection joins a room, its junk is counted by the first worker; after, every
    // command goes to the worker of its room.
    let mut tx = workers.all()[0].tx.clone();
    // Datagram flow id -> session it belongs to.
    let mut flows: Vec<(u64, SessionId)> = Vec::new();
    // Control messages in the current second.
    let mut window = (tokio::time::Instant::now(), 0u32);
    loop {
        tokio::select! {
            msg = read_message(&mut recv) => {
                let body = match msg {
                    Ok(Some(b)) => b,
                    Ok(None) => break,
                    Err(r) => {
                        // Say why, give the reply a moment to arrive, then end the connection.
                        let _ = send.write_all(&frame(&serde_json::to_vec(&refusal(r)).unwrap_or_default())).await;
                        let _ = send.finish();
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        conn.close(2u32.into(), b"bad control stream");
                        break;
                    }
                };
                let now = tokio::time::Instant::now();
                if now.duration_since(window.0) >= Duration::from_secs(1) {
                    window = (now, 0);
                }
                window.1 += 1;
                let reply = if window.1 > MAX_CONTROL_PER_SECOND {
                    refusal(Refusal::new(429, "rate_limited", format!("at most {MAX_CONTROL_PER_SECOND} control messages a second")))
                } else {
                    match serde_json::from_slice::<ControlRequest>(&body) {
                        Err(e) => refusal(Refusal::new(400, "bad_message", e.to_string())),
                        Ok(req) => handle(req, &conn, &workers, &auth, &mut joined, &mut flows).await.unwrap_or_else(refusal),
                    }
                };
                if let Some(j) = &joined {
                    tx = workers.for_room(&j.room).tx.clone();
                }
                if send.write_all(&frame(&serde_json::to_vec(&reply).unwrap_or_default())).await.is_err() {
                    break;
                }
            }
            d = conn.read_datagram() => {
                let Ok(d) = d else { break };
                match split_datagram(&d).ok().and_then(|(flow, _)| flows.iter().find(|(f, _)| *f == flow)) {
                    Some(&(_, session)) => {
                        if tx.send(Command::QuicDatagram { session, data: d }).await.is_err() {
                            break;
                        }
                    }
                    None => {
                        debug!(peer = %peer, "datagram for an unknown flow dropped");
                        let _ = tx.send(Command::QuicJunk).await;
                    }
                }
            }
        }
    }
    if !flows.is_empty() {
        let _ = tx
            .send(Command::QuicClosed {
                sessions: flows.iter().map(|(_, s)| *s).collect(),
            })
            .await;
    }
    info!(peer = %peer, "QUIC connection ended");
}

async fn handle(
    req: ControlRequest,
    conn: &quinn::Connection,
    workers: &Workers,
    auth: &Auth,
    joined: &mut Option<Joined>,
    flows: &mut Vec<(u64, SessionId)>,
) -> Result<ControlReply, Refusal> {
    match req {
        ControlRequest::Join {
            v,
            room,
            token,
            name,
        } => {
            if joined.is_some() {
                return Err(Refusal::new(
                    409,
                    "already_joined",
                    "this connection has joined a room already",
                ));
            }
            if v != 1 {
                return Err(Refusal::new(400, "unsupported_version", "use v 1"));
            }
            if !crate::signal::http::valid_name(&room) {
                return Err(Refusal::new(
                    400,
                    "bad_room",
                    "room names are 1-64 characters of A-Z a-z 0-9 - _ .",
                ));
            }
            let access = auth
                .check(token.as_deref(), Some(&room), unix_now())
                .map_err(|e| Refusal::new(e.status(), e.reason(), e.to_string()))?;
            let identity = access.identity.or(name).unwrap_or_else(|| "quic".into());
            *joined = Some(Joined {
                room: room.clone(),
                identity: identity.clone(),
                grants: access.grants,
            });
            Ok(ControlReply::Joined {
                v: 1,
                room,
                identity,
            })
        }
        ControlRequest::Publish { flow, tracks } => {
            let j = may_open(joined, flows, flow, true)?;
            info!(identity = %j.identity, room = %j.room, flow, "QUIC publish");
            let (room, conn) = (j.room.clone(), conn.clone());
            let tx = &workers.for_room(&room).tx;
            let (session, publisher) = call(tx, |reply| Command::QuicPublish {
                room,
                tracks,
                flow,
                conn,
                reply,
            })
            .await?;
            flows.push((flow, session));
            Ok(ControlReply::Published { publisher })
        }
        ControlRequest::Subscribe { flow, publisher } => {
            let j = may_open(joined, flows, flow, false)?;
            info!(identity = %j.identity, room = %j.room, flow, "QUIC subscribe");
            let (room, conn) = (j.room.clone(), conn.clone());
            let tx = &workers.for_room(&room).tx;
            let (session, publisher, tracks): (SessionId, String, Vec<QuicTrack>) =
                call(tx, |reply| Command::QuicSubscribe {
                    room,
                    publisher,
                    flow,
                    conn,
                    reply,
                })
                .await?;
            flows.push((flow, session));
            Ok(ControlReply::Subscribed {
                publisher,
                flow,
                tracks,
            })
        }
    }
}

/// Whether this connection may open flow `flow` to publish (or subscribe): it has joined, its
/// token grants it, and the flow is free.
fn may_open<'a>(
    joined: &'a Option<Joined>,
    flows: &[(u64, SessionId)],
    flow: u64,
    publish: bool,
) -> Result<&'a Joined, Refusal> {
    let j = joined
        .as_ref()
        .ok_or_else(|| Refusal::new(409, "not_joined", "send join first"))?;
    if !(if publish {
        j.grants.publish
    } else {
        j.grants.subscribe
    }) {
        let what = if publish { "publishing" } else { "subscribing" };
        return Err(Refusal::new(
            403,
            "forbidden",
            format!("this token does not allow {what}"),
        ));
    }
    if flows.iter().any(|(f, _)| *f == flow) {
        return Err(Refusal::new(
            409,
            "flow_in_use",
            format!("flow {flow} is in use"),
        ));
    }
    if flows.len() >= MAX_FLOWS {
        return Err(Refusal::new(
            429,
            "too_many_flows",
            format!("at most {MAX_FLOWS} flows per connection"),
        ));
    }
    Ok(j)
}

/// Sends a datagram, dropping it when the connection cannot take it now (datagrams are lossy
/// by design; NACK repairs what matters).
pub fn send_datagram(conn: &quinn::Connection, data: Bytes) {
    if let Err(e) = conn.send_datagram(data) {
        debug!(peer = %conn.remote_address(), error = %e, "datagram not sent");
    }
}
