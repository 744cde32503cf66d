//! A shard: the sessions, participants, relay core and address tables of one worker, and the
//! table's own operations (creating and closing sessions, admitting members, starting a viewer,
//! timers, output). Everything is driven by `handle_*` calls with `now`; output is collected with
//! `poll_transmit`, `poll_message` and `poll_quic_transmit`. The shard is one table: the other
//! files of this module add its operations by concern (`media`: the datagram path, `whip`,
//! `conference` and `subscriber`: the room protocol, `quic`).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::distributions::Alphanumeric;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tracing::{debug, info, warn};

use super::connection::{ParticipantId, Role, Session};
use super::error::{Full, SessionError};
use super::events::RoomEvent;
use super::negotiation::Negotiation;
use super::participant::Participant;
use super::protocol::ServerMessage;
use crate::core::room::histogram::Histogram;
use crate::core::room::{Relay, RelayConfig, RoomError, SessionId, Sink, ViewerTrackSpec};
use crate::core::rtp::ExtKind;
use crate::session::sdp::{Local, Offer, Setup};
use crate::transport::buffers::SendBatch;
use crate::transport::quic::roq::datagram;
use crate::transport::webrtc::dtls::{Dtls, DtlsIdentity};
use crate::transport::webrtc::path::{PathLimits, Paths};

/// What publishers may negotiate: the extensions volna passes on or reads, the transport-wide
/// sequence number (volna answers it with transport-cc feedback, so a publisher's own estimator
/// can ramp up) and, last, the AV1 dependency descriptor (the layers of SVC frames) and the RID
/// that names a simulcast layer.
pub(super) const NEGOTIATED_EXTS: &[ExtKind] = &[
    ExtKind::Mid,
    ExtKind::AudioLevel,
    ExtKind::AbsSendTime,
    ExtKind::TransmissionOffset,
    ExtKind::VideoOrientation,
    ExtKind::PlayoutDelay,
    ExtKind::TransportWideCc,
    ExtKind::DependencyDescriptor,
    ExtKind::RtpStreamId,
];

/// What viewers may negotiate: the same but the last two (what a viewer gets is one stream).
/// volna writes the transport-wide number itself, so the viewer's feedback drives its estimate.
pub(super) const VIEWER_EXTS: &[ExtKind] = NEGOTIATED_EXTS.split_at(NEGOTIATED_EXTS.len() - 2).0;

/// Viewers of a single-stream AV1 track also get its dependency descriptors: receivers need them
/// to tell the frames of an SVC stream's layers apart.
pub(super) const AV1_VIEWER_EXTS: &[ExtKind] =
    NEGOTIATED_EXTS.split_at(NEGOTIATED_EXTS.len() - 1).0;

/// Limits that keep one client from using up a node.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_rooms: usize,
    pub max_participants_per_room: usize,
    pub max_tracks_per_participant: usize,
    /// Participants one token identity may be in one room (its devices, tabs); one token
    /// cannot fill a room. Identities named without a token (dev mode) are not counted.
    pub max_participants_per_identity: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_rooms: 1000,
            max_participants_per_room: 50,
            max_tracks_per_participant: 4,
            max_participants_per_identity: 4,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ShardConfig {
    /// This shard's worker index; it is kept in the top bits of every session and participant
    /// id, so signalling can route a request by id alone.
    pub worker: usize,
    /// The media address bound by the worker; advertised as the ICE candidate unless
    /// `advertise` names others.
    pub media_addr: SocketAddr,
    /// The worker's ICE-TCP listener (passive candidates at the advertised addresses with its
    /// port), if on.
    pub tcp_addr: Option<SocketAddr>,
    /// Addresses peers reach the media port at (a public or NAT-mapped address, IPv4 and IPv6),
    /// advertised with the bound port in this order; empty: the bound address.
    pub advertise: Vec<std::net::IpAddr>,
    pub consent_timeout: Duration,
    /// How long a room participant that lost its media or socket may take to come back.
    pub reconnect_grace: Duration,
    pub relay: RelayConfig,
    pub limits: Limits,
    /// Whether room events are kept for [`Shard::poll_room_event`] (webhooks configured).
    pub room_events: bool,
}

/// A session's new ICE credentials after a restart, and the candidate to reach it on.
#[derive(Debug, Clone)]
pub struct IceRestart {
    pub ufrag: String,
    pub pwd: String,
    pub candidates: Vec<SocketAddr>,
    /// The passive ICE-TCP port at the same addresses, if on.
    pub tcp_port: Option<u16>,
}

/// A new session's answer and the names it goes by.
#[derive(Debug, Clone)]
pub struct Created {
    pub answer: String,
    pub resource: String,
    pub public_id: String,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ShardStats {
    pub rooms: usize,
    pub sessions: usize,
    pub publishers: usize,
    /// Tracks of every publisher.
    pub tracks: usize,
    pub viewers: usize,
    pub participants: usize,
    pub datagrams_in: u64,
    pub junk_datagrams: u64,
    pub forwarded_packets: u64,
    pub forwarded_bytes: u64,
    pub retransmitted_packets: u64,
    /// Resends refused because a viewer's NACKs asked for more than its resend budget.
    pub resends_refused: u64,
    /// Viewer video tracks paused because the viewer's estimate could not carry them.
    pub paused_tracks: u64,
    /// Probe clusters sent to viewers (padding on their RTX streams).
    pub probes: u64,
    /// Audio packets sent to lossy viewers as RED, with the previous frame as redundancy.
    pub red_packets: u64,
    /// Audio packets re-encoded at a low bitrate for viewers whose links need it.
    pub transcoded_packets: u64,
    /// Video packets sent to starting viewers from the key-frame cache (no new key frame asked).
    pub replayed_packets: u64,
    /// Bytes of simulcast layers relay links did not carry (no viewer behind wanted them, or
    /// the link had no room).
    pub link_bytes_held: u64,
    pub dropped_packets: u64,
    pub keyframe_requests: u64,
    pub sessions_closed: u64,
    /// ICE restarts (WHIP/WHEP `PATCH`, the room protocol's `restart_ice`).
    pub ice_restarts: u64,
    /// Sessions that moved to a new address on a nominating ICE check or an answered consent
    /// check (a network change, a NAT rebinding).
    pub path_switches: u64,
    /// Moves refused because the session moved too often lately.
    pub path_switches_refused: u64,
    /// Consent checks volna sent to a session's new address (SRTP from an unknown port of its IP).
    pub consent_checks: u64,
    pub publisher_ids: Vec<(String, String)>,
    /// Receiving sessions' bandwidth estimates: (room, resource, kbps, from transport-cc
    /// feedback rather than REMB or the initial value).
    pub viewer_estimates: Vec<ViewerEstimate>,
    /// Sessions over QUIC (the others are WebRTC over UDP).
    pub quic_sessions: usize,
    /// NACK, PLI and FIR messages from viewers.
    pub nacks_received: u64,
    pub plis_received: u64,
    pub firs_received: u64,
    /// Distributions (units and bounds in `core::room::histogram`); in /metrics, not /stats.
    #[serde(skip)]
    pub join_us: Histogram,
    #[serde(skip)]
    pub rtt_us: Histogram,
    #[serde(skip)]
    pub jitter_us: Histogram,
    #[serde(skip)]
    pub loss_per_mille: Histogram,
    /// Each worker's time spent working (not waiting), filled in by the worker.
    pub workers: Vec<WorkerLoad>,
    /// ICE-TCP connections, filled in by the worker.
    pub tcp: crate::transport::tcp::TcpStats,
    /// WebRTC sessions whose path is a TURN relay socket of this node, by the client's way to
    /// the TURN server: UDP, TCP, TLS (counted among the UDP sessions otherwise).
    pub turn_sessions: [usize; 3],
    /// Sessions connected since start, by transport: UDP, ICE-TCP, TURN over UDP, TCP and
    /// TLS, QUIC (the order of `metrics::transport_mix`).
    pub sessions_connected: [u64; 6],
}

#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct WorkerLoad {
    pub worker: usize,
    pub busy_us: u64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ViewerEstimate {
    pub room: String,
    pub resource: String,
    pub kbps: u64,
    pub transport_cc: bool,
}

impl ShardStats {
    /// Adds another worker's figures (rooms never span workers, so counts add up).
    pub fn merge(&mut self, o: ShardStats) {
        self.rooms += o.rooms;
        self.sessions += o.sessions;
        self.publishers += o.publishers;
        self.tracks += o.tracks;
        self.viewers += o.viewers;
        self.participants += o.participants;
        self.datagrams_in += o.datagrams_in;
        self.junk_datagrams += o.junk_datagrams;
        self.forwarded_packets += o.forwarded_packets;
        self.forwarded_bytes += o.forwarded_bytes;
        self.retransmitted_packets += o.retransmitted_packets;
        self.resends_refused += o.resends_refused;
        self.paused_tracks += o.paused_tracks;
        self.probes += o.probes;
        self.red_packets += o.red_packets;
        self.transcoded_packets += o.transcoded_packets;
        self.replayed_packets += o.replayed_packets;
        self.link_bytes_held += o.link_bytes_held;
        self.dropped_packets += o.dropped_packets;
        self.keyframe_requests += o.keyframe_requests;
        self.sessions_closed += o.sessions_closed;
        self.ice_restarts += o.ice_restarts;
        self.path_switches += o.path_switches;
        self.path_switches_refused += o.path_switches_refused;
        self.consent_checks += o.consent_checks;
        self.publisher_ids.extend(o.publisher_ids);
        self.viewer_estimates.extend(o.viewer_estimates);
        self.quic_sessions += o.quic_sessions;
        self.nacks_received += o.nacks_received;
        self.plis_received += o.plis_received;
        self.firs_received += o.firs_received;
        self.join_us.merge(&o.join_us);
        self.rtt_us.merge(&o.rtt_us);
        self.jitter_us.merge(&o.jitter_us);
        self.loss_per_mille.merge(&o.loss_per_mille);
        self.workers.extend(o.workers);
        self.tcp.merge(&o.tcp);
        for (a, b) in self.turn_sessions.iter_mut().zip(o.turn_sessions) {
            *a += b;
        }
        for (a, b) in self.sessions_connected.iter_mut().zip(o.sessions_connected) {
            *a += b;
        }
    }
}

/// Why a session ends; decides what else ends with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseCause {
    Deleted,
    PeerClosed,
    ConsentExpired,
    HandshakeFailed,
    PublisherLeft,
    /// Its participant left or published anew.
    Participant,
    /// Ended with the server API (a removal, a room closed).
    Removed,
}

impl CloseCause {
    fn as_str(self) -> &'static str {
        match self {
            CloseCause::Deleted => "deleted by client",
            CloseCause::PeerClosed => "peer closed DTLS",
            CloseCause::ConsentExpired => "consent expired (peer silent)",
            CloseCause::HandshakeFailed => "DTLS handshake failed",
            CloseCause::PublisherLeft => "publisher left",
            CloseCause::Participant => "participant left",
            CloseCause::Removed => "removed by the server API",
        }
    }

    /// Media loss of a participant's connection ends the participant.
    pub(super) fn ends_participant(self) -> bool {
        matches!(
            self,
            CloseCause::PeerClosed | CloseCause::ConsentExpired | CloseCause::HandshakeFailed
        )
    }
}

/// The relay's sink: encrypts for each session and queues the datagram.
pub(super) struct Out<'a> {
    pub(super) sessions: &'a mut HashMap<SessionId, Session>,
    pub(super) send: &'a mut SendBatch,
    /// Datagrams for QUIC sessions (plain RTP/RTCP behind the flow id; QUIC encrypts).
    pub(super) quic: &'a mut VecDeque<(SessionId, Bytes)>,
}

impl Sink for Out<'_> {
    fn rtp(&mut self, to: SessionId, header: &[u8], prefix: &[u8], payload: &[u8]) {
        let Some(s) = self.sessions.get_mut(&to) else {
            return;
        };
        if let Some(flow) = s.quic_flow {
            self.quic
                .push_back((to, Bytes::from(datagram(flow, &[header, prefix, payload]))));
            return;
        }
        let (Some(keys), Some(addr)) = (s.srtp.as_mut(), s.remote) else {
            return;
        };
        // The one copy of the payload for this receiver, protected where it lies.
        let (buf, start) = self.send.begin();
        buf.extend_from_slice(header);
        buf.extend_from_slice(prefix);
        buf.extend_from_slice(payload);
        match keys.rtp_out.protect(buf, start, header.len()) {
            Ok(()) => self.send.commit(addr, start),
            Err(e) => {
                self.send.abort(start);
                debug!(session = to, error = %e, "SRTP protect failed");
            }
        }
    }

    fn rtcp(&mut self, to: SessionId, packet: &[u8]) {
        let Some(s) = self.sessions.get_mut(&to) else {
            return;
        };
        if let Some(flow) = s.quic_flow {
            self.quic
                .push_back((to, Bytes::from(datagram(flow, &[packet]))));
            return;
        }
        let (Some(keys), Some(addr)) = (s.srtp.as_mut(), s.remote) else {
            return;
        };
        match keys.local.encrypt_rtcp(packet) {
            Ok(p) => self.send.push(addr, &p),
            Err(e) => debug!(session = to, error = %e, "SRTCP protect failed"),
        }
    }
}

/// Bits of an id below the worker index.
pub const WORKER_ID_SHIFT: u32 = 48;

fn first_id(worker: usize) -> u64 {
    ((worker as u64) << WORKER_ID_SHIFT) | 1
}

pub struct Shard {
    pub(super) config: ShardConfig,
    pub(super) identity: DtlsIdentity,
    pub(super) relay: Relay,
    pub(super) sessions: HashMap<SessionId, Session>,
    pub(super) by_addr: HashMap<SocketAddr, SessionId>,
    /// Paths of sessions whose DTLS just connected, for the worker to count by transport.
    pub(super) connected_paths: Vec<SocketAddr>,
    pub(super) by_ufrag: HashMap<String, SessionId>,
    pub(super) by_resource: HashMap<String, SessionId>,
    pub(super) send: SendBatch,
    pub(super) next_id: SessionId,
    pub(super) next_housekeeping: Option<Instant>,
    pub(super) datagrams_in: u64,
    pub(super) junk: u64,
    pub(super) closed: u64,
    pub(super) ice_restarts: u64,
    pub(super) path_switches: u64,
    pub(super) path_switches_refused: u64,
    pub(super) consent_checks: u64,
    pub(super) dtls_errors: u64,
    /// Consent checks in flight and sessions by their peer's IP.
    pub(super) paths: Paths,
    /// ICE-CONTROLLED tie-breaker of volna's own checks.
    pub(super) tie_breaker: u64,
    pub(super) participants: HashMap<ParticipantId, Participant>,
    pub(super) next_participant: ParticipantId,
    pub(super) quic_queue: VecDeque<(SessionId, Bytes)>,
    /// Messages for participants' sockets (see [`Shard::poll_message`]).
    pub(super) outbox: VecDeque<(ParticipantId, ServerMessage)>,
    /// Rooms' metadata (server API), while someone is in the room.
    pub(super) metadata: HashMap<String, serde_json::Value>,
    /// Room events not yet taken (see `events`), and the rooms they count as started.
    pub(super) room_events: VecDeque<super::events::RoomEvent>,
    pub(super) live_rooms: std::collections::HashSet<String>,
    /// Where ICE credentials, resource names, SSRCs and initial sequence numbers come from: a
    /// cryptographically secure generator, seeded from the system (or by a test, to replay it).
    pub(super) rng: StdRng,
}

/// `len` random letters and digits (ICE credentials).
pub(super) fn random_string(rng: &mut impl Rng, len: usize) -> String {
    rng.sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

/// `bytes` random bytes in hex (resource names, public ids, resume secrets).
pub(super) fn random_hex(rng: &mut impl Rng, bytes: usize) -> String {
    (0..bytes)
        .map(|_| format!("{:02x}", rng.gen::<u8>()))
        .collect()
}

/// The remote side of a session as an offer or answer describes it.
pub(super) struct Remote<'a> {
    pub ufrag: &'a str,
    pub pwd: &'a str,
    pub fingerprint: &'a str,
    /// Whether volna is the DTLS client.
    pub dtls_client: bool,
}

impl<'a> Remote<'a> {
    /// From an offer volna answers: volna is the client only if the offerer insists on being server.
    pub fn of_offer(o: &'a Offer) -> Self {
        Self {
            ufrag: &o.ice_ufrag,
            pwd: &o.ice_pwd,
            fingerprint: &o.fingerprint,
            dtls_client: o.setup == Setup::Passive,
        }
    }

    /// From an answer to volna's offer (`a=setup:actpass`): the answerer chose its role, and
    /// `passive` makes volna the client.
    pub fn of_answer(a: &'a Offer) -> Self {
        Self {
            ufrag: &a.ice_ufrag,
            pwd: &a.ice_pwd,
            fingerprint: &a.fingerprint,
            dtls_client: a.setup == Setup::Passive,
        }
    }
}

impl Shard {
    pub fn new(config: ShardConfig, identity: DtlsIdentity) -> Self {
        Self::with_rng(config, identity, StdRng::from_entropy())
    }

    /// A shard whose every random choice comes from `seed`: the same inputs give the same
    /// sessions, names and numbers (for tests; a node uses [`Shard::new`]).
    pub fn with_seed(config: ShardConfig, identity: DtlsIdentity, seed: u64) -> Self {
        Self::with_rng(config, identity, StdRng::seed_from_u64(seed))
    }

    fn with_rng(config: ShardConfig, identity: DtlsIdentity, mut rng: StdRng) -> Self {
        let first = first_id(config.worker);
        Self {
            relay: Relay::new(config.relay.clone()),
            config,
            identity,
            sessions: HashMap::new(),
            by_addr: HashMap::new(),
            connected_paths: Vec::new(),
            by_ufrag: HashMap::new(),
            by_resource: HashMap::new(),
            send: SendBatch::new(),
            next_id: first,
            next_housekeeping: None,
            datagrams_in: 0,
            junk: 0,
            closed: 0,
            ice_restarts: 0,
            path_switches: 0,
            path_switches_refused: 0,
            consent_checks: 0,
            dtls_errors: 0,
            paths: Paths::default(),
            tie_breaker: rng.gen(),
            participants: HashMap::new(),
            next_participant: first,
            quic_queue: VecDeque::new(),
            outbox: VecDeque::new(),
            metadata: HashMap::new(),
            room_events: VecDeque::new(),
            live_rooms: Default::default(),
            rng,
        }
    }

    /// Sessions closed since the shard began.
    /// This shard's worker index.
    pub fn worker(&self) -> usize {
        self.config.worker
    }

    pub fn sessions_closed(&self) -> u64 {
        self.closed
    }

    pub fn stats(&self) -> ShardStats {
        let c = self.relay.counters();
        ShardStats {
            rooms: self.relay.room_count(),
            sessions: self.sessions.len(),
            publishers: self.relay.publisher_count(),
            tracks: self.relay.track_count(),
            viewers: self.relay.viewer_count(),
            participants: self.participants.len(),
            datagrams_in: self.datagrams_in,
            junk_datagrams: self.junk,
            forwarded_packets: c.forwarded_packets,
            forwarded_bytes: c.forwarded_bytes,
            retransmitted_packets: c.retransmitted_packets,
            resends_refused: c.resends_refused,
            paused_tracks: c.paused_tracks,
            probes: c.probes,
            red_packets: c.red_packets,
            transcoded_packets: c.transcoded_packets,
            replayed_packets: c.replayed_packets,
            link_bytes_held: c.link_bytes_held,
            dropped_packets: c.dropped_packets,
            keyframe_requests: c.keyframe_requests,
            sessions_closed: self.closed,
            ice_restarts: self.ice_restarts,
            path_switches: self.path_switches,
            path_switches_refused: self.path_switches_refused,
            consent_checks: self.consent_checks,
            publisher_ids: self
                .sessions
                .values()
                .filter(|s| s.role == Role::Publisher)
                .map(|s| (s.room.clone(), s.public_id.clone()))
                .collect(),
            viewer_estimates: self
                .sessions
                .values()
                .filter_map(|s| {
                    let (bps, fed) = self.relay.viewer_estimate(s.id)?;
                    Some(ViewerEstimate {
                        room: s.room.clone(),
                        resource: s.resource.clone(),
                        kbps: bps / 1000,
                        transport_cc: fed,
                    })
                })
                .collect(),
            quic_sessions: self
                .sessions
                .values()
                .filter(|s| s.quic_flow.is_some())
                .count(),
            nacks_received: c.nacks_received,
            plis_received: c.plis_received,
            firs_received: c.firs_received,
            join_us: c.join_us,
            rtt_us: c.rtt_us,
            jitter_us: c.jitter_us,
            loss_per_mille: c.loss_per_mille,
            workers: Vec::new(),
            tcp: Default::default(),
            turn_sessions: [0; 3],
            sessions_connected: [0; 6],
        }
    }

    /// A new session. `remote` is `None` for a subscriber, whose peer is known from its answer.
    pub(super) fn new_session(
        &mut self,
        now: Instant,
        role: Role,
        room: &str,
        remote: Option<Remote<'_>>,
    ) -> Result<Session, SessionError> {
        // Consent expiry is checked on the housekeeping timer; arm it as soon as a session exists.
        self.arm_housekeeping(now);
        let id = self.next_id;
        self.next_id += 1;
        let dtls = match &remote {
            Some(r) => Some(
                Dtls::new(now, &self.identity, r.fingerprint, r.dtls_client)
                    .map_err(SessionError::internal)?,
            ),
            None => None,
        };
        Ok(Session {
            id,
            role,
            room: room.to_owned(),
            resource: random_hex(&mut self.rng, 16),
            public_id: random_hex(&mut self.rng, 6),
            owner: None,
            participant: None,
            local_ufrag: random_string(&mut self.rng, 8),
            local_pwd: random_string(&mut self.rng, 24),
            remote_ufrag: remote
                .as_ref()
                .map(|r| r.ufrag.to_owned())
                .unwrap_or_default(),
            remote_pwd: remote.map(|r| r.pwd.to_owned()).unwrap_or_default(),
            remote: None,
            nominated: false,
            path: PathLimits::default(),
            dtls,
            srtp: None,
            created: now,
            last_rx: now,
            pending_viewer: None,
            rtcp_ssrc: self.rng.gen(),
            answer: String::new(),
            published: Vec::new(),
            negotiation: Negotiation::default(),
            quic_flow: None,
            origin: None,
            link_layers: Default::default(),
        })
    }

    /// The relay and the sink that encrypts and queues what it sends, borrowed together.
    pub(super) fn relay_and_out(&mut self) -> (&mut Relay, Out<'_>) {
        let out = Out {
            sessions: &mut self.sessions,
            send: &mut self.send,
            quic: &mut self.quic_queue,
        };
        (&mut self.relay, out)
    }

    pub(super) fn local(&self, s: &Session) -> Local {
        Local {
            ice_ufrag: s.local_ufrag.clone(),
            ice_pwd: s.local_pwd.clone(),
            fingerprint: self.identity.fingerprint.clone(),
            candidates: self.candidates(),
            tcp_port: self.config.tcp_addr.map(|a| a.port()),
            session_id: s.id,
        }
    }

    /// Where peers reach this worker's media port.
    pub(super) fn candidates(&self) -> Vec<SocketAddr> {
        let bound = self.config.media_addr;
        if self.config.advertise.is_empty() {
            return vec![bound];
        }
        self.config
            .advertise
            .iter()
            .map(|ip| SocketAddr::new(*ip, bound.port()))
            .collect()
    }

    /// Whether one more member may enter `room`: a participant, or a WHIP, WHEP or QUIC session
    /// of its own. Every way in asks this, so every limit holds whichever way clients come.
    pub(super) fn admit(&self, room: &str) -> Result<(), SessionError> {
        let limits = &self.config.limits;
        let members = self
            .participants
            .values()
            .filter(|p| p.room == room)
            .count()
            + self
                .sessions
                .values()
                .filter(|s| s.participant.is_none() && s.room == room)
                .count();
        if members >= limits.max_participants_per_room {
            return Err(Full::Room(limits.max_participants_per_room).refusal(room));
        }
        if members == 0 && self.relay.room_publishers(room).is_none() {
            let rooms: std::collections::BTreeSet<&str> = self
                .participants
                .values()
                .map(|p| p.room.as_str())
                .chain(self.sessions.values().map(|s| s.room.as_str()))
                .collect();
            if rooms.len() >= limits.max_rooms {
                return Err(Full::Node(limits.max_rooms).refusal(room));
            }
        }
        Ok(())
    }

    /// The one way a session starts receiving (WHEP viewer, room subscriber, QUIC subscriber):
    /// the relay takes it as a viewer of its room (once) and each spec as a viewer track, which
    /// starts from the cached key frame or asks its publisher for one. Returns each track's
    /// index in the relay, in `specs`' order; `None` where its publisher has gone.
    pub(super) fn start_viewing(
        &mut self,
        now: Instant,
        sid: SessionId,
        specs: Vec<ViewerTrackSpec>,
    ) -> Vec<Option<usize>> {
        let Some((room, created)) = self.sessions.get(&sid).map(|s| (s.room.clone(), s.created))
        else {
            return vec![None; specs.len()];
        };
        // A subscriber is added on its first accepted lines, and stays for later ones.
        match self.relay.add_viewer(sid, &room) {
            Ok(()) => {
                // Time to first media counts from the session's signalling request.
                self.relay.time_first_media(sid, created);
            }
            Err(RoomError::Exists(_)) => {}
            Err(e) => {
                warn!(session = sid, error = %e, "viewer not added");
                return vec![None; specs.len()];
            }
        }
        let (relay, mut out) = self.relay_and_out();
        specs
            .into_iter()
            .map(
                |spec| match relay.add_viewer_track(now, sid, spec, &mut out) {
                    Ok(index) => Some(index),
                    Err(e) => {
                        debug!(session = sid, error = %e, "viewer track not added");
                        None
                    }
                },
            )
            .collect()
    }

    /// A viewer track's numbering: random starting points, so a stream's numbers tell nothing
    /// of the publisher's (RFC 3550 §5.1).
    pub(super) fn viewer_numbering(&mut self) -> (u16, u32) {
        (self.rng.gen(), self.rng.gen())
    }

    pub(super) fn register(&mut self, s: Session) {
        self.room_in_use(&s.room);
        self.by_ufrag.insert(s.local_ufrag.clone(), s.id);
        self.by_resource.insert(s.resource.clone(), s.id);
        self.sessions.insert(s.id, s);
    }

    /// Makes sure the once-a-second housekeeping (consent, reconnect deadlines) is scheduled.
    pub(super) fn arm_housekeeping(&mut self, now: Instant) {
        self.next_housekeeping
            .get_or_insert(now + Duration::from_secs(1));
    }

    pub(super) fn close(&mut self, now: Instant, id: SessionId, cause: CloseCause) {
        let Some((role, participant)) = self.sessions.get(&id).map(|s| (s.role, s.participant))
        else {
            return;
        };
        let mut ended = Vec::new();
        {
            let (relay, mut out) = self.relay_and_out();
            match role {
                Role::Publisher => ended = relay.remove_publisher(id, &mut out),
                Role::Viewer | Role::Subscriber => {
                    self.relay.remove_viewer(id);
                }
            }
        }
        let mut orphans = Vec::new();
        if role == Role::Publisher {
            // Viewers still in their handshake are not in the relay yet, but watch this publisher.
            orphans.extend(
                self.sessions
                    .values()
                    .filter(|s| {
                        s.pending_viewer
                            .as_ref()
                            .is_some_and(|t| t.iter().any(|t| t.source.publisher == id))
                    })
                    .map(|s| s.id),
            );
        }
        let mut gone_publisher = None;
        let mut room = None;
        if let Some(mut s) = self.sessions.remove(&id) {
            room = Some(s.room.clone());
            if role == Role::Publisher {
                // A participant's tracks are told here unless it is leaving (`leave` did).
                let owner = match participant {
                    Some(pid) => self.participants.get(&pid).map(|p| p.public_id.clone()),
                    None => Some(s.public_id.clone()),
                };
                if let Some(owner) = owner {
                    self.tracks_event(&s.room, &owner, &s.published, false);
                }
                if participant.is_none() {
                    let member = super::events::standalone(&s);
                    self.room_event(RoomEvent::ParticipantLeft {
                        room: s.room.clone(),
                        participant: member,
                    });
                }
            }
            if role == Role::Publisher && participant.is_none() {
                gone_publisher = Some((s.room.clone(), s.public_id.clone()));
            }
            if let Some(d) = s.dtls.as_mut() {
                d.close(now);
                if let Some(addr) = s.remote {
                    while let Some(data) = d.poll_transmit() {
                        self.send.push(addr, &data);
                    }
                }
            }
            self.by_ufrag.remove(&s.local_ufrag);
            self.by_resource.remove(&s.resource);
            self.by_addr.retain(|_, v| *v != id);
            self.paths.remove(id, s.remote);
            self.closed += 1;
            info!(session = id, room = %s.room, role = ?s.role, peer = ?s.remote, reason = cause.as_str(), "session closed");
        }
        for (viewer, indices) in ended {
            match self.sessions.get(&viewer).map(|s| s.role) {
                Some(Role::Viewer) if self.relay.live_viewer_tracks(viewer) == 0 => {
                    orphans.push(viewer)
                }
                Some(Role::Subscriber) => self.tracks_ended(now, viewer, &indices),
                _ => {}
            }
        }
        for o in orphans {
            self.close(now, o, CloseCause::PublisherLeft);
        }
        if let Some(pid) = participant {
            self.session_closed_for_participant(now, pid, id, role, cause);
        }
        if let Some((room, public)) = gone_publisher {
            self.publisher_gone(&room, public);
        }
        if let Some(room) = room {
            self.room_may_have_ended(&room);
        }
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut next = self.next_housekeeping;
        let mut consider = |t: Option<Instant>| {
            if let Some(t) = t {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        };
        consider(self.relay.poll_timeout());
        // Only handshakes in progress retransmit on a timer; once connected, a lost final flight
        // is answered when the peer retransmits its own. (Asking every connected session each
        // loop cost a tenth of the worker's time in a 12-party meeting.)
        for s in self.sessions.values() {
            consider(handshake_timeout(s));
        }
        next
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        let (relay, mut out) = self.relay_and_out();
        relay.handle_timeout(now, &mut out);
        self.drain_relay_events();
        let ids: Vec<SessionId> = self
            .sessions
            .iter()
            .filter(|(_, s)| handshake_timeout(s).is_some_and(|t| t <= now))
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            if let Some(d) = self.sessions.get_mut(&id).and_then(|s| s.dtls.as_mut()) {
                if let Err(e) = d.handle_timeout(now) {
                    warn!(session = id, error = %e, "DTLS handshake failed");
                    self.close(now, id, CloseCause::HandshakeFailed);
                    continue;
                }
            }
            self.flush_dtls(id);
        }
        if self.next_housekeeping.is_none_or(|t| now >= t) {
            self.next_housekeeping = Some(now + Duration::from_secs(1));
            let timeout = self.config.consent_timeout;
            let expired: Vec<SessionId> = self
                .sessions
                .values()
                // QUIC sessions live as long as their connection (QUIC has its own idle timeout).
                .filter(|s| s.quic_flow.is_none() && now.duration_since(s.last_rx) >= timeout)
                .map(|s| s.id)
                .collect();
            for id in expired {
                self.close(now, id, CloseCause::ConsentExpired);
            }
            self.expire_reconnecting(now);
            self.paths.expire(now);
        }
    }

    /// The next datagram to send.
    ///
    /// A copy, for tests and simple callers; the worker sends [`Shard::transmits`] in batches.
    pub fn poll_transmit(&mut self) -> Option<(SocketAddr, Bytes)> {
        let (to, data) = self.send.get(0)?;
        let out = (to, Bytes::copy_from_slice(data));
        self.send.consume(1);
        Some(out)
    }

    /// The path of a session whose DTLS connected since the last call.
    pub fn poll_connected_path(&mut self) -> Option<SocketAddr> {
        self.connected_paths.pop()
    }

    /// The addresses sessions send their media to now.
    pub fn paths(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.sessions.values().filter_map(|s| s.remote)
    }

    /// Whether a session sends to and takes media from `addr` (its ICE-chosen path).
    pub fn uses_address(&self, addr: SocketAddr) -> bool {
        self.by_addr.contains_key(&addr)
    }

    pub fn transmits(&mut self) -> &mut SendBatch {
        &mut self.send
    }
}

/// When a session's DTLS handshake, if still in progress, next needs a retransmission.
fn handshake_timeout(s: &Session) -> Option<Instant> {
    s.dtls
        .as_ref()
        .filter(|d| !d.is_connected())
        .and_then(Dtls::poll_timeout)
}
