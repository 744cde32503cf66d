//! The media workers: one thread per core, each owning its UDP socket, a [`Shard`] (its rooms)
//! and its buffers. Commands from signalling arrive on a channel; packets never leave the thread.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tracing::{debug, error, warn};

use crate::core::room::SessionId;
use crate::session::connection::ParticipantId;
use crate::session::protocol::ServerMessage;
use crate::session::shard::WorkerLoad;
use crate::session::Shard;
use crate::signal::auth::Auth;
use crate::signal::dispatch::{Command, WorkerHandle, Workers};
use crate::signal::webhook::Hooks;
use crate::transport::buffers::RecvPool;
use crate::transport::tcp::{TcpEvent, TcpPeers};
use crate::transport::udp::BatchSocket;

/// Where a worker's shard output goes besides its media socket: QUIC connections by session,
/// and room participants' sockets.
#[derive(Default)]
pub struct Outlets {
    quic: HashMap<SessionId, quinn::Connection>,
    sockets: HashMap<ParticipantId, mpsc::Sender<ServerMessage>>,
    /// Where room events go (webhooks), when configured.
    hooks: Option<Hooks>,
    /// ICE-TCP connections, by peer address.
    tcp: TcpPeers,
    /// The TURN server's relay sockets, to tell which sessions come through it.
    turn: crate::transport::turn::RelayMap,
    /// Sessions connected, by transport (`ShardStats::sessions_connected`).
    connected: [u64; 6],
    /// Time spent waiting for work since `started` (the rest is the worker's load).
    idle: Duration,
    started: Option<Instant>,
}

/// Events dropped because a client stopped reading (all participants of the process).
static DROPPED_EVENTS: AtomicU64 = AtomicU64::new(0);

impl Outlets {
    /// Sends what the shard has for QUIC connections and participants' sockets.
    pub fn flush(&mut self, shard: &mut Shard) {
        while let Some(path) = shard.poll_connected_path() {
            let i = if self.tcp.contains(path) {
                1
            } else {
                self.turn.get(path).map_or(0, |p| 2 + p as usize)
            };
            self.connected[i] += 1;
        }
        while let Some((sid, data)) = shard.poll_quic_transmit() {
            // A session whose connection ended has nowhere to send.
            if let Some(c) = self.quic.get(&sid) {
                crate::transport::quic::endpoint::send_datagram(c, data);
            }
        }
        while let Some((pid, msg)) = shard.poll_message() {
            self.deliver(pid, msg);
        }
        while let Some(e) = shard.poll_room_event() {
            if let Some(h) = &self.hooks {
                h.offer(&e);
            }
        }
    }

    /// Queues a message for a participant's socket. A full queue means the client stopped
    /// reading (its socket is cut off within a few seconds, see `signal::ws`; until then
    /// messages are dropped, logged at 1, 2, 4, 8… drops); a closed one that its socket went
    /// away.
    fn deliver(&mut self, pid: ParticipantId, msg: ServerMessage) {
        let Some(tx) = self.sockets.get(&pid) else {
            return;
        };
        match tx.try_send(msg) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                let n = DROPPED_EVENTS.fetch_add(1, Ordering::Relaxed) + 1;
                if n.is_power_of_two() {
                    warn!(
                        participant = pid,
                        dropped = n,
                        "event queue full: client is not reading"
                    );
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                debug!(participant = pid, "event for a closed socket dropped");
                self.sockets.remove(&pid);
            }
        }
    }

    /// The wait that began at `from` ended now.
    fn woke(&mut self, from: Instant) {
        self.idle += from.elapsed();
    }

    /// Time spent working since the worker started.
    fn busy(&self) -> Duration {
        self.started
            .map_or(Duration::ZERO, |s| s.elapsed().saturating_sub(self.idle))
    }

    /// Forgets the sockets of participants that have left, and closes ICE-TCP connections no
    /// session took.
    fn prune(&mut self, shard: &Shard, now: Instant) {
        self.sockets
            .retain(|pid, tx| !tx.is_closed() && shard.has_participant(*pid));
        self.tcp.expire(now, |a| shard.uses_address(a));
    }
}

/// Applies one command to a shard, with the outlets its replies and messages need.
pub fn apply(shard: &mut Shard, out: &mut Outlets, now: Instant, cmd: Command) {
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
            let mut stats = shard.stats();
            stats.workers.push(WorkerLoad {
                worker: shard.worker(),
                busy_us: out.busy().as_micros() as u64,
            });
            stats.tcp = out.tcp.stats();
            stats.turn_sessions = out.turn.count(shard.paths());
            stats.sessions_connected = out.connected;
            let _ = reply.send(stats);
        }
        Command::RelaySources { room, reply } => {
            let _ = reply.send(shard.relay_sources(&room));
        }
        Command::LocalRooms { reply } => {
            let _ = reply.send(shard.local_rooms());
        }
        Command::Admin { request, reply } => {
            let _ = reply.send(shard.admin(now, request));
        }
        Command::Join { req, tx, reply } => {
            let joined = shard.join(now, req);
            if let Ok((pid, _)) = &joined {
                out.sockets.insert(*pid, tx);
            }
            let _ = reply.send(joined);
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
            out.sockets.remove(&pid);
            let _ = reply.send(Ok(()));
        }
        Command::QuicPublish {
            room,
            tracks,
            flow,
            conn,
            origin,
            reply,
        } => {
            let r = shard.quic_publish(now, &room, flow, &tracks, origin);
            if let Ok((sid, _)) = &r {
                out.quic.insert(*sid, conn);
                out.connected[5] += 1;
            }
            let _ = reply.send(r);
        }
        Command::QuicSubscribe {
            room,
            publisher,
            flow,
            conn,
            relay,
            reply,
        } => {
            let r = shard.quic_subscribe(now, &room, publisher.as_deref(), flow, relay);
            if let Ok((sid, _, _)) = &r {
                out.quic.insert(*sid, conn);
                out.connected[5] += 1;
            }
            let _ = reply.send(r);
        }
        Command::QuicDatagram { session, data } => shard.quic_datagram(now, session, &data),
        Command::QuicJunk => shard.count_junk(),
        Command::QuicClosed { sessions } => {
            shard.quic_closed(now, &sessions);
            for s in sessions {
                out.quic.remove(&s);
            }
        }
        Command::RelayPoll {
            sessions,
            budgets,
            reply,
        } => {
            shard.set_link_budgets(&budgets);
            let views = shard.link_views(&sessions);
            let live: std::collections::HashSet<SessionId> =
                views.iter().map(|v| v.session).collect();
            for s in sessions.iter().filter(|s| !live.contains(s)) {
                out.quic.remove(s);
            }
            let _ = reply.send(Ok(views));
        }
        Command::RelayLayers { session, wanted } => shard.set_link_layers(session, &wanted),
        Command::QuicLive { sessions, reply } => {
            let live = shard.quic_live(&sessions);
            for s in sessions.iter().filter(|s| !live.contains(s)) {
                out.quic.remove(s);
            }
            let _ = reply.send(Ok(live));
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
    pub hooks: Option<Hooks>,
    /// The ICE-TCP listener, when on.
    pub tcp: Option<std::net::TcpListener>,
    pub turn: crate::transport::turn::RelayMap,
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
                    run(i, setup, rx).await
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
            tokio::spawn(crate::signal::quic::accept_loop(ep, workers, q.auth));
        }
        Err(e) => error!(error = %e, "QUIC endpoint failed to start"),
    }
}

/// Received batches handled before the worker looks at its timers again: enough to amortise the
/// loop, few enough to keep timer lateness small. What they produce is sent after each batch.
const RECV_ROUNDS: usize = 8;

/// Gives the memory of ended sessions back to the system. glibc's allocator keeps what was freed
/// in its arenas, so without this a node's resident size stays at its busiest moment's and a
/// leak cannot be told from a past peak. At most once a second, and only after a session closed.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free heap pages to the system; it touches no live memory.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Sends what the shard queued: to ICE-TCP connections what is theirs, the rest over UDP.
async fn send(socket: &BatchSocket, shard: &mut Shard, tcp: &mut TcpPeers) {
    if !tcp.is_empty() {
        shard.transmits().divert(|to, data| tcp.send(to, data));
    }
    socket.send(shard.transmits()).await;
}

async fn run(index: usize, setup: WorkerSetup, mut rx: mpsc::Receiver<Command>) {
    let WorkerSetup {
        socket,
        mut shard,
        hooks,
        tcp,
        turn,
        ..
    } = setup;
    // Connection tasks' frames; the sender is kept so the channel stays open without TCP.
    let (tcp_tx, mut tcp_rx) = mpsc::channel::<TcpEvent>(4096);
    if let Some(listener) = tcp {
        match listener
            .set_nonblocking(true)
            .and_then(|()| tokio::net::TcpListener::from_std(listener))
        {
            Ok(l) => {
                tokio::spawn(crate::transport::tcp::accept_loop(l, tcp_tx.clone()));
            }
            Err(e) => error!(worker = index, error = %e, "ICE-TCP listener"),
        }
    }
    let socket = match BatchSocket::new(socket) {
        Ok(s) => s,
        Err(e) => {
            error!(worker = index, error = %e, "worker socket");
            return;
        }
    };
    let mut pool = RecvPool::new();
    let mut out = Outlets {
        hooks,
        turn,
        started: Some(Instant::now()),
        ..Outlets::default()
    };
    let mut next_prune = Instant::now();
    let mut closed = 0;
    loop {
        out.flush(&mut shard);
        send(&socket, &mut shard, &mut out.tcp).await;
        let now = Instant::now();
        if now >= next_prune {
            out.prune(&shard, now);
            next_prune = now + Duration::from_secs(1);
            if shard.sessions_closed() != closed {
                closed = shard.sessions_closed();
                release_freed_memory();
            }
        }
        let deadline = shard.poll_timeout().unwrap_or(now + Duration::from_secs(1));
        if deadline <= now {
            shard.handle_timeout(now);
            continue;
        }
        let wait = Instant::now();
        tokio::select! {
            r = socket.readable() => {
                out.woke(wait);
                if let Err(e) = r {
                    error!(worker = index, error = %e, "media socket failed");
                    break;
                }
                for _ in 0..RECV_ROUNDS {
                    let now = Instant::now();
                    match socket.try_recv(&mut pool, |from, pkt| shard.handle_datagram(now, from, pkt)) {
                        // Out at once: a batch of 32 in a large room is already hundreds of
                        // datagrams, and the first of them should not wait for the next batch.
                        Ok(_) => send(&socket, &mut shard, &mut out.tcp).await,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        // ICMP errors for earlier sends surface here on some systems; keep going.
                        Err(e) => {
                            warn!(worker = index, error = %e, "recv failed");
                            break;
                        }
                    }
                }
            },
            Some(e) = tcp_rx.recv() => {
                out.woke(wait);
                let now = Instant::now();
                match e {
                    TcpEvent::Opened(peer, _) if shard.uses_address(peer) => out.tcp.refuse(e),
                    e => {
                        if let Some((from, frame)) = out.tcp.event(now, e) {
                            shard.handle_datagram(now, from, frame);
                        }
                    }
                }
            },
            c = rx.recv() => {
                out.woke(wait);
                match c {
                    Some(cmd) => apply(&mut shard, &mut out, Instant::now(), cmd),
                    None => break,
                }
            },
            _ = tokio::time::sleep_until(deadline.into()) => {
                out.woke(wait);
                shard.handle_timeout(Instant::now());
            }
        }
    }
}
