//! How signalling reaches the worker that owns a room or an id: a [`Command`] on the worker's
//! channel, each request with the channel its reply comes back on. Rooms are spread over
//! workers by a hash of their name; session and participant ids carry their worker's index.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::auth::Access;
use crate::core::room::SessionId;
use crate::session::admin;
use crate::session::protocol::ServerMessage;
use crate::session::quic::QuicTrack;
use crate::session::sdp::Offer;
use crate::session::shard::WORKER_ID_SHIFT;
use crate::session::{
    Created, IceRestart, JoinRequest, ParticipantId, Role, SessionError, ShardStats,
};

pub type Reply<T> = oneshot::Sender<Result<T, SessionError>>;

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
        /// Set when another node of the cluster relays one of its publishers.
        origin: Option<crate::session::connection::Origin>,
        reply: Reply<(SessionId, String)>,
    },
    QuicSubscribe {
        room: String,
        publisher: Option<String>,
        flow: u64,
        conn: quinn::Connection,
        /// Another node of the cluster subscribes (relay extensions).
        relay: bool,
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
    /// Which of a connection's sessions still run (see `Shard::quic_live`); the worker forgets
    /// the connection for the others.
    QuicLive {
        sessions: Vec<SessionId>,
        reply: Reply<Vec<SessionId>>,
    },
    /// A relay link's sessions, polled: those still running, and what each tells the link;
    /// its subscriber sessions' shares of the link's budget are set first.
    RelayPoll {
        sessions: Vec<SessionId>,
        budgets: Vec<(SessionId, u64)>,
        reply: Reply<Vec<crate::session::link_layers::LinkView>>,
    },
    /// The layers another node wants of a subscriber session's publisher (see
    /// `Shard::set_link_layers`).
    RelayLayers {
        session: SessionId,
        wanted: Vec<Vec<u8>>,
    },
    /// `owner`: the token's identity (`None` in dev mode), who may end the session.
    Publish {
        room: String,
        offer: Box<Offer>,
        owner: Option<String>,
        reply: oneshot::Sender<Result<Created, SessionError>>,
    },
    View {
        room: String,
        publisher: Option<String>,
        offer: Box<Offer>,
        owner: Option<String>,
        reply: oneshot::Sender<Result<Created, SessionError>>,
    },
    Delete {
        role: Role,
        room: String,
        resource: String,
        caller: Access,
        reply: oneshot::Sender<Result<(), SessionError>>,
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
        reply: oneshot::Sender<Result<Option<IceRestart>, SessionError>>,
    },
    Stats {
        reply: oneshot::Sender<ShardStats>,
    },
    /// The room's publishers other nodes may relay, and the rooms this worker serves.
    RelaySources {
        room: String,
        reply: oneshot::Sender<Vec<crate::session::quic::RelaySource>>,
    },
    LocalRooms {
        reply: oneshot::Sender<Vec<String>>,
    },
    /// A server API request (see `session::admin`).
    Admin {
        request: admin::Request,
        reply: Reply<admin::Response>,
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
