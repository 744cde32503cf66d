//! The media workers: one thread per core, each owning its UDP socket, a [`Shard`] (its rooms)
//! and its buffers. Commands from signalling arrive on a channel; packets never leave the thread.

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tracing::{error, warn};

use crate::core::room::SessionId;
use crate::session::conference::JoinRequest;
use crate::session::connection::{ParticipantId, Role};
use crate::session::protocol::{Refusal, ServerMessage};
use crate::session::sdp::Offer;
use crate::session::shard::WORKER_ID_SHIFT;
use crate::session::{Created, IceRestart, Shard, ShardError, ShardStats};
use crate::signal::auth::{Access, Auth};
use crate::transport::buffers::RecvPool;
use crate::transport::quic::control::QuicTrack;
use crate::transport::udp::BatchSocket;

type Reply<T> = oneshot::Sender<Result<T, Refusal>>;

pub enum Command {
    Join {
        req: JoinRequest,
        tx: mpsc::Sender<ServerMessage>,
        reply: Reply<(ParticipantId, ServerMessage)>,
    },
    /// The participant's socket `conn` closed without `leave`.
    Disconnected {
        pid: ParticipantId,
        conn: u64,
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
    RestartIce {
        pid: ParticipantId,
        offer: Option<Box<Offer>>,
        reply: Reply<Option<String>>,
    },
    OfferFailed {
        pid: ParticipantId,
        reason: String,
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
    Pin {
        pid: ParticipantId,
        tracks: Vec<String>,
        reply: Reply<()>,
    },
    Leave {
        pid: ParticipantId,
        reply: Reply<()>,
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
    /// `owner`: the token's identity (`None` in dev mode), who may end the session.
    Publish {
        room: String,
        offer: Box<Offer>,
        owner: Option<String>,
        reply: oneshot::Sender<Result<Created, ShardError>>,
    },
    View {
        room: String,
        publisher: Option<String>,
        offer: Box<Offer>,
        owner: Option<String>,
        reply: oneshot::Sender<Result<Created, ShardError>>,
    },
    Delete {
        role: Role,
        room: String,
        resource: String,
        caller: Access,
        reply: oneshot::Sender<Result<(), ShardError>>,
    },
    /// WHIP/WHEP `PATCH`: the client's ICE ufrag; new credentials restart ICE. The reply has
    /// volna's new credentials and candidate (`None`: nothing to restart).
    PatchIce {
        role: Role,
        room: String,
        resource: String,
        ufrag: String,
        pwd: String,
        caller: Access,
        reply: oneshot::Sender<Result<Option<IceRestart>, ShardError>>,
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

/// All media workers of the node, and where rooms and ids live among them.
#[derive(Clone)]
pub struct Workers {
    handles: Arc<[WorkerHandle]>,
}

impl Workers {
    pub fn new(handles: Vec<WorkerHandle>) -> Self {
        assert!(!handles.is_empty(), "a node has at least one worker");
        Workers {
            handles: handles.into(),
        }
    }

    /// The worker that holds `room`: a stable hash of the name (FNV-1a), so every request for
    /// a room reaches the same worker without a shared table.
    pub fn for_room(&self, room: &str) -> &WorkerHandle {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in room.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        &self.handles[(h % self.handles.len() as u64) as usize]
    }

    /// The worker that made a session or participant id.
    pub fn for_id(&self, id: u64) -> &WorkerHandle {
        let i = (id >> WORKER_ID_SHIFT) as usize;
        &self.handles[i.min(self.handles.len() - 1)]
    }

    pub fn all(&self) -> &[WorkerHandle] {
        &self.handles
    }

    /// Every worker's figures, added up; `None` when a worker has stopped.
    pub async fn stats(&self) -> Option<ShardStats> {
        let mut total = ShardStats::default();
        for w in self.handles.iter() {
            total.merge(w.call(|reply| Command::Stats { reply }).await?);
        }
        Some(total)
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
        Command::Publish {
            room,
            offer,
            owner,
            reply,
        } => {
            let created = shard.publish(now, &room, &offer);
            if let Ok(c) = &created {
                shard.set_owner(&c.resource, owner);
            }
            let _ = reply.send(created);
        }
        Command::View {
            room,
            publisher,
            offer,
            owner,
            reply,
        } => {
            let created = shard.view(now, &room, publisher.as_deref(), &offer);
            if let Ok(c) = &created {
                shard.set_owner(&c.resource, owner);
            }
            let _ = reply.send(created);
        }
        Command::Delete {
            role,
            room,
            resource,
            caller,
            reply,
        } => {
            let may = |owner: Option<&str>| caller.may_act_for(owner);
            let _ = reply.send(shard.delete(now, role, &room, &resource, &may));
        }
        Command::PatchIce {
            role,
            room,
            resource,
            ufrag,
            pwd,
            caller,
            reply,
        } => {
            let may = |owner: Option<&str>| caller.may_act_for(owner);
            let _ = reply.send(shard.patch_ice(role, &room, &resource, &ufrag, &pwd, &may));
        }
        Command::Stats { reply } => {
            let _ = reply.send(shard.stats());
        }
        Command::Join { req, tx, reply } => {
            let _ = reply.send(shard.join(now, req, tx));
        }
        Command::Disconnected { pid, conn } => shard.participant_disconnected(now, pid, conn),
        Command::JoinedDelivered { pid } => shard.joined_delivered(now, pid),
        Command::RoomPublish { pid, offer, reply } => {
            let _ = reply.send(shard.participant_publish(now, pid, &offer));
        }
        Command::Answer { pid, sdp, reply } => {
            let _ = reply.send(shard.participant_answer(now, pid, &sdp));
        }
        Command::RestartIce { pid, offer, reply } => {
            let _ = reply.send(shard.participant_restart_ice(pid, offer.as_deref()));
        }
        Command::OfferFailed { pid, reason, reply } => {
            let _ = reply.send(shard.participant_offer_failed(now, pid, &reason));
        }
        Command::Subscribe {
            pid,
            tracks,
            on,
            reply,
        } => {
            let _ = reply.send(shard.participant_subscribe(now, pid, &tracks, on));
        }
        Command::Pin { pid, tracks, reply } => {
            let _ = reply.send(shard.participant_pin(pid, &tracks));
        }
        Command::Mute {
            pid,
            track,
            muted,
            reply,
        } => {
            let _ = reply.send(shard.participant_mute(pid, &track, muted));
        }
        Command::Leave { pid, reply } => {
            shard.leave(now, pid);
            let _ = reply.send(Ok(()));
        }
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

/// The QUIC listener a worker runs: its bound socket, configuration, and the token checker.
pub struct QuicListener {
    pub socket: std::net::UdpSocket,
    pub config: quinn::ServerConfig,
    pub auth: Auth,
}

/// One worker to start: its bound media socket and its shard.
pub struct WorkerSetup {
    pub socket: std::net::UdpSocket,
    pub shard: Shard,
    /// The CPU to pin the worker's thread to.
    pub cpu: Option<usize>,
}

/// Starts one thread per worker; the first also runs the QUIC listener, whose connections send
/// their commands to the worker of their room.
pub fn spawn_all(
    setups: Vec<WorkerSetup>,
    mut quic: Option<QuicListener>,
) -> std::io::Result<(Workers, Vec<JoinHandle<()>>)> {
    let mut handles = Vec::with_capacity(setups.len());
    let mut receivers = Vec::with_capacity(setups.len());
    for s in &setups {
        let (tx, rx) = mpsc::channel(1024);
        handles.push(WorkerHandle {
            tx,
            media_addr: s.socket.local_addr()?,
        });
        receivers.push(rx);
    }
    let workers = Workers::new(handles);
    let mut joins = Vec::with_capacity(setups.len());
    for (i, (setup, rx)) in setups.into_iter().zip(receivers).enumerate() {
        let quic = quic.take();
        let all = workers.clone();
        let join = std::thread::Builder::new()
            .name(format!("volna-worker-{i}"))
            .spawn(move || {
                if let Some(cpu) = setup.cpu {
                    pin_to(i, cpu);
                }
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        error!(worker = i, error = %e, "worker runtime failed to start");
                        return;
                    }
                };
                rt.block_on(async move {
                    if let Some(q) = quic {
                        start_quic(q, all);
                    }
                    run(i, setup.socket, setup.shard, rx).await
                });
            })?;
        joins.push(join);
    }
    Ok((workers, joins))
}

#[cfg(target_os = "linux")]
fn pin_to(worker: usize, cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is the empty set; CPU_SET stays inside it (cpu is reduced
    // modulo CPU_SETSIZE) and sched_setaffinity(0) applies to the calling thread.
    let ok = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu % libc::CPU_SETSIZE as usize, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    };
    if ok {
        tracing::info!(worker, cpu, "worker pinned");
    } else {
        warn!(worker, cpu, error = %std::io::Error::last_os_error(), "cannot pin worker");
    }
}

#[cfg(not(target_os = "linux"))]
fn pin_to(worker: usize, _cpu: usize) {
    warn!(worker, "pinning workers is only supported on Linux");
}

fn start_quic(q: QuicListener, workers: Workers) {
    let runtime = std::sync::Arc::new(quinn::TokioRuntime);
    match quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(q.config),
        q.socket,
        runtime,
    ) {
        Ok(ep) => {
            tokio::spawn(crate::transport::quic::endpoint::accept_loop(
                ep, workers, q.auth,
            ));
        }
        Err(e) => error!(error = %e, "QUIC endpoint failed to start"),
    }
}

/// Received batches handled before the worker looks at its timers again: enough to amortise the
/// loop, few enough to keep timer lateness small. What they produce is sent after each batch.
const RECV_ROUNDS: usize = 8;

async fn run(
    index: usize,
    socket: std::net::UdpSocket,
    mut shard: Shard,
    mut rx: mpsc::Receiver<Command>,
) {
    let socket = match BatchSocket::new(socket) {
        Ok(s) => s,
        Err(e) => {
            error!(worker = index, error = %e, "worker socket");
            return;
        }
    };
    let mut pool = RecvPool::new();
    let mut quic = QuicConns::default();
    loop {
        quic.flush(&mut shard);
        socket.send(shard.transmits()).await;
        let now = Instant::now();
        let deadline = shard.poll_timeout().unwrap_or(now + Duration::from_secs(1));
        if deadline <= now {
            shard.handle_timeout(now);
            continue;
        }
        tokio::select! {
            r = socket.readable() => {
                if let Err(e) = r {
                    error!(worker = index, error = %e, "media socket failed");
                    break;
                }
                for _ in 0..RECV_ROUNDS {
                    let now = Instant::now();
                    match socket.try_recv(&mut pool, |from, pkt| shard.handle_datagram(now, from, pkt)) {
                        // Out at once: a batch of 32 in a large room is already hundreds of
                        // datagrams, and the first of them should not wait for the next batch.
                        Ok(_) => socket.send(shard.transmits()).await,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        // ICMP errors for earlier sends surface here on some systems; keep going.
                        Err(e) => {
                            warn!(worker = index, error = %e, "recv failed");
                            break;
                        }
                    }
                }
            },
            c = rx.recv() => match c {
                Some(cmd) => apply_with(&mut shard, &mut quic, Instant::now(), cmd),
                None => break,
            },
            _ = tokio::time::sleep_until(deadline.into()) => shard.handle_timeout(Instant::now()),
        }
    }
}
