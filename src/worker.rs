//! The media worker: one thread owning the UDP socket and a [`Shard`]. Commands from signalling
//! arrive on a channel; packets never leave the thread.

use std::net::SocketAddr;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tracing::{error, warn};

use crate::core::room::SessionId;
use crate::signal::auth::Auth;
use crate::signal::protocol::{Refusal, ServerMessage};
use crate::signal::sdp::Offer;
use crate::transport::quic::control::QuicTrack;
use crate::transport::webrtc::session::{ParticipantId, Role};
use crate::transport::webrtc::{Created, Grants, Shard, ShardError, ShardStats};

type Reply<T> = oneshot::Sender<Result<T, Refusal>>;

pub enum Command {
    Join {
        room: String,
        identity: String,
        name: String,
        grants: Grants,
        auto_subscribe: bool,
        tx: mpsc::Sender<ServerMessage>,
        reply: Reply<(ParticipantId, ServerMessage)>,
    },
    /// The `joined` message reached the client: offers may follow.
    JoinedDelivered {
        pid: ParticipantId,
    },
    RoomPublish {
        pid: ParticipantId,
        offer: Box<Offer>,
        reply: Reply<String>,
    },
    Answer {
        pid: ParticipantId,
        sdp: String,
        reply: Reply<()>,
    },
    Subscribe {
        pid: ParticipantId,
        tracks: Vec<String>,
        on: bool,
        reply: Reply<()>,
    },
    Mute {
        pid: ParticipantId,
        track: String,
        muted: bool,
        reply: Reply<()>,
    },
    Leave {
        pid: ParticipantId,
    },
    QuicPublish {
        room: String,
        tracks: Vec<QuicTrack>,
        flow: u64,
        conn: quinn::Connection,
        reply: Reply<(SessionId, String)>,
    },
    QuicSubscribe {
        room: String,
        publisher: Option<String>,
        flow: u64,
        conn: quinn::Connection,
        reply: Reply<(SessionId, String, Vec<QuicTrack>)>,
    },
    QuicDatagram {
        session: SessionId,
        data: bytes::Bytes,
    },
    /// A datagram whose flow id matched nothing.
    QuicJunk,
    QuicClosed {
        sessions: Vec<SessionId>,
    },
    Publish {
        room: String,
        offer: Box<Offer>,
        reply: oneshot::Sender<Result<Created, ShardError>>,
    },
    View {
        room: String,
        publisher: Option<String>,
        offer: Box<Offer>,
        reply: oneshot::Sender<Result<Created, ShardError>>,
    },
    Delete {
        role: Role,
        room: String,
        resource: String,
        reply: oneshot::Sender<Result<(), ShardError>>,
    },
    Stats {
        reply: oneshot::Sender<ShardStats>,
    },
}

/// Handle to a running worker.
#[derive(Clone)]
pub struct WorkerHandle {
    pub tx: mpsc::Sender<Command>,
    pub media_addr: SocketAddr,
}

impl WorkerHandle {
    pub async fn call<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Option<T> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(make(reply)).await.ok()?;
        rx.await.ok()
    }
}

/// The worker's QUIC side: connections by session, for sending.
#[derive(Default)]
pub struct QuicConns {
    conns: std::collections::HashMap<SessionId, quinn::Connection>,
}

impl QuicConns {
    fn flush(&mut self, shard: &mut Shard) {
        while let Some((sid, data)) = shard.poll_quic_transmit() {
            // A session whose connection ended has nowhere to send.
            if let Some(c) = self.conns.get(&sid) {
                crate::transport::quic::endpoint::send_datagram(c, data);
            }
        }
    }
}

pub fn apply(shard: &mut Shard, now: Instant, cmd: Command) {
    apply_with(shard, &mut QuicConns::default(), now, cmd)
}

fn apply_with(shard: &mut Shard, quic: &mut QuicConns, now: Instant, cmd: Command) {
    // A dropped receiver means the HTTP request went away; nothing to do then.
    match cmd {
        Command::Publish { room, offer, reply } => {
            let _ = reply.send(shard.publish(now, &room, &offer));
        }
        Command::View {
            room,
            publisher,
            offer,
            reply,
        } => {
            let _ = reply.send(shard.view(now, &room, publisher.as_deref(), &offer));
        }
        Command::Delete {
            role,
            room,
            resource,
            reply,
        } => {
            let _ = reply.send(shard.delete(now, role, &room, &resource));
        }
        Command::Stats { reply } => {
            let _ = reply.send(shard.stats());
        }
        Command::Join {
            room,
            identity,
            name,
            grants,
            auto_subscribe,
            tx,
            reply,
        } => {
            let _ =
                reply.send(shard.join(now, &room, &identity, &name, grants, auto_subscribe, tx));
        }
        Command::JoinedDelivered { pid } => shard.joined_delivered(now, pid),
        Command::RoomPublish { pid, offer, reply } => {
            let _ = reply.send(shard.participant_publish(now, pid, &offer));
        }
        Command::Answer { pid, sdp, reply } => {
            let _ = reply.send(shard.participant_answer(now, pid, &sdp));
        }
        Command::Subscribe {
            pid,
            tracks,
            on,
            reply,
        } => {
            let _ = reply.send(shard.participant_subscribe(now, pid, &tracks, on));
        }
        Command::Mute {
            pid,
            track,
            muted,
            reply,
        } => {
            let _ = reply.send(shard.participant_mute(pid, &track, muted));
        }
        Command::Leave { pid } => shard.leave(now, pid),
        Command::QuicPublish {
            room,
            tracks,
            flow,
            conn,
            reply,
        } => {
            let r = shard.quic_publish(now, &room, flow, &tracks);
            if let Ok((sid, _)) = &r {
                quic.conns.insert(*sid, conn);
            }
            let _ = reply.send(r);
        }
        Command::QuicSubscribe {
            room,
            publisher,
            flow,
            conn,
            reply,
        } => {
            let r = shard.quic_subscribe(now, &room, publisher.as_deref(), flow);
            if let Ok((sid, _, _)) = &r {
                quic.conns.insert(*sid, conn);
            }
            let _ = reply.send(r);
        }
        Command::QuicDatagram { session, data } => shard.quic_datagram(now, session, &data),
        Command::QuicJunk => shard.count_junk(),
        Command::QuicClosed { sessions } => {
            shard.quic_closed(now, &sessions);
            for s in sessions {
                quic.conns.remove(&s);
            }
        }
    }
}

/// Starts the worker thread on an already bound socket.
/// The QUIC listener a worker runs: its bound socket, configuration, and the token checker.
pub struct QuicListener {
    pub socket: std::net::UdpSocket,
    pub config: quinn::ServerConfig,
    pub auth: Auth,
}

pub fn spawn(
    socket: std::net::UdpSocket,
    shard: Shard,
    quic: Option<QuicListener>,
) -> std::io::Result<(WorkerHandle, JoinHandle<()>)> {
    let media_addr = socket.local_addr()?;
    socket.set_nonblocking(true)?;
    let (tx, rx) = mpsc::channel(1024);
    let quic_tx = tx.clone();
    let join = std::thread::Builder::new()
        .name("volna-worker-0".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    error!(error = %e, "worker runtime failed to start");
                    return;
                }
            };
            rt.block_on(async move {
                if let Some(q) = quic {
                    let runtime = std::sync::Arc::new(quinn::TokioRuntime);
                    match quinn::Endpoint::new(
                        quinn::EndpointConfig::default(),
                        Some(q.config),
                        q.socket,
                        runtime,
                    ) {
                        Ok(ep) => {
                            tokio::spawn(crate::transport::quic::endpoint::accept_loop(
                                ep, quic_tx, q.auth,
                            ));
                        }
                        Err(e) => error!(error = %e, "QUIC endpoint failed to start"),
                    }
                }
                run(socket, shard, rx).await
            });
        })?;
    Ok((WorkerHandle { tx, media_addr }, join))
}

async fn run(socket: std::net::UdpSocket, mut shard: Shard, mut rx: mpsc::Receiver<Command>) {
    let socket = match tokio::net::UdpSocket::from_std(socket) {
        Ok(s) => s,
        Err(e) => {
            error!(error = %e, "worker socket");
            return;
        }
    };
    let mut buf = vec![0u8; 2048];
    let mut quic = QuicConns::default();
    loop {
        quic.flush(&mut shard);
        while let Some((to, data)) = shard.poll_transmit() {
            if let Err(e) = socket.send_to(&data, to).await {
                warn!(peer = %to, error = %e, "send failed");
            }
        }
        let now = Instant::now();
        let deadline = shard.poll_timeout().unwrap_or(now + Duration::from_secs(1));
        if deadline <= now {
            shard.handle_timeout(now);
            continue;
        }
        tokio::select! {
            r = socket.recv_from(&mut buf) => match r {
                Ok((n, from)) => shard.handle_datagram(Instant::now(), from, &buf[..n]),
                // ICMP errors for earlier sends surface here on some systems; keep going.
                Err(e) => warn!(error = %e, "recv failed"),
            },
            c = rx.recv() => match c {
                Some(cmd) => apply_with(&mut shard, &mut quic, Instant::now(), cmd),
                None => break,
            },
            _ = tokio::time::sleep_until(deadline.into()) => shard.handle_timeout(Instant::now()),
        }
    }
}
