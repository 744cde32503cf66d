//! A shard: the sessions, the relay core and the address tables of one worker. Everything here is
//! driven by `handle_*` calls with `now`; outgoing datagrams are collected with `poll_transmit`.
//! Room participants (the WebSocket protocol) are in `conference.rs`.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rand::distributions::Alphanumeric;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tracing::{debug, info, warn};

use super::conference::Participant;
use super::connection::{ParticipantId, Role, Session};
use super::error::{Full, SessionError};
use super::negotiation::Negotiation;
use super::protocol::ServerMessage;
use crate::core::room::{
    MediaKind, Relay, RelayConfig, Rtx, SessionId, Sink, TrackRef, TrackSpec, ViewerTrackSpec,
};
use crate::core::rtp::{header_len, is_rtcp, Codec, ExtKind, RtpView};
use crate::session::sdp::{
    build_answer, AnswerMedia, Direction, Local, Offer, OfferedCodec, SdpError, Setup, Source,
};
use crate::transport::buffers::SendBatch;
use crate::transport::quic::roq::datagram;
use crate::transport::webrtc::dtls::{Dtls, DtlsIdentity, DtlsOutput};
use crate::transport::webrtc::ice::{self, BindingRequest, BindingResponse};
use crate::transport::webrtc::path::{PathLimits, Paths, Probe};

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
    /// The media address: bound by the worker and advertised as the only ICE candidate.
    pub media_addr: SocketAddr,
    pub consent_timeout: Duration,
    /// How long a room participant that lost its media or socket may take to come back.
    pub reconnect_grace: Duration,
    pub relay: RelayConfig,
    pub limits: Limits,
}

/// A session's new ICE credentials after a restart, and the candidate to reach it on.
#[derive(Debug, Clone)]
pub struct IceRestart {
    pub ufrag: String,
    pub pwd: String,
    pub candidate: SocketAddr,
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
        self.dropped_packets += o.dropped_packets;
        self.keyframe_requests += o.keyframe_requests;
        self.sessions_closed += o.sessions_closed;
        self.ice_restarts += o.ice_restarts;
        self.path_switches += o.path_switches;
        self.path_switches_refused += o.path_switches_refused;
        self.consent_checks += o.consent_checks;
        self.publisher_ids.extend(o.publisher_ids);
        self.viewer_estimates.extend(o.viewer_estimates);
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
    by_addr: HashMap<SocketAddr, SessionId>,
    by_ufrag: HashMap<String, SessionId>,
    by_resource: HashMap<String, SessionId>,
    pub(super) send: SendBatch,
    next_id: SessionId,
    next_housekeeping: Option<Instant>,
    datagrams_in: u64,
    junk: u64,
    closed: u64,
    ice_restarts: u64,
    path_switches: u64,
    path_switches_refused: u64,
    consent_checks: u64,
    dtls_errors: u64,
    /// Consent checks in flight and sessions by their peer's IP.
    paths: Paths,
    /// ICE-CONTROLLED tie-breaker of volna's own checks.
    tie_breaker: u64,
    pub(super) participants: HashMap<ParticipantId, Participant>,
    pub(super) next_participant: ParticipantId,
    pub(super) quic_queue: VecDeque<(SessionId, Bytes)>,
    /// Messages for participants' sockets (see [`Shard::poll_message`]).
    pub(super) outbox: VecDeque<(ParticipantId, ServerMessage)>,
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

/// A codec volna can forward for this kind of media.
fn forwardable(kind: MediaKind, c: &OfferedCodec) -> bool {
    c.codec
        .is_some_and(|codec| codec.is_video() == (kind == MediaKind::Video))
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
            rng,
        }
    }

    pub fn stats(&self) -> ShardStats {
        let c = self.relay.counters();
        ShardStats {
            rooms: self.relay.room_count(),
            sessions: self.sessions.len(),
            publishers: self.relay.publisher_count(),
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
            candidate: self.config.media_addr,
            session_id: s.id,
        }
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

    pub(super) fn register(&mut self, s: Session) {
        self.by_ufrag.insert(s.local_ufrag.clone(), s.id);
        self.by_resource.insert(s.resource.clone(), s.id);
        self.sessions.insert(s.id, s);
    }

    /// WHIP: a publisher's offer. Each m-line that sends audio or video is received with the
    /// offerer's most preferred codec volna can forward.
    pub fn publish(
        &mut self,
        now: Instant,
        room: &str,
        offer: &Offer,
    ) -> Result<Created, SessionError> {
        self.admit(room)?;
        let max = self.config.limits.max_tracks_per_participant;
        let (id, created) = self.publish_session(now, room, offer, max)?;
        self.publisher_appeared(now, id);
        Ok(created)
    }

    /// Creates a publisher session with at most `max_tracks` tracks.
    pub(super) fn publish_session(
        &mut self,
        now: Instant,
        room: &str,
        offer: &Offer,
        max_tracks: usize,
    ) -> Result<(SessionId, Created), SessionError> {
        if self.relay.room_publishers(room).is_none()
            && self.relay.room_count() >= self.config.limits.max_rooms
        {
            return Err(Full::Node(self.config.limits.max_rooms).refusal(room));
        }
        let mut answers = Vec::with_capacity(offer.media.len());
        let mut tracks = Vec::new();
        let mut published = Vec::new();
        let mut slides = Vec::new();
        for m in &offer.media {
            let codec = m
                .kind
                .filter(|_| m.direction.sends() && m.active())
                .and_then(|k| m.codecs.iter().find(|c| forwardable(k, c)));
            let (Some(kind), Some(codec)) = (m.kind, codec) else {
                answers.push(AnswerMedia::Rejected);
                continue;
            };
            if tracks.len() >= max_tracks {
                return Err(Full::Tracks(max_tracks).refusal(room));
            }
            let a = AnswerMedia::accept(
                m,
                codec.clone(),
                Direction::RecvOnly,
                NEGOTIATED_EXTS,
                None,
                true,
            );
            tracks.push(TrackSpec {
                kind,
                mid: m.mid.clone(),
                codec: codec.codec.expect("forwardable codecs are known"),
                payload_type: codec.payload_type,
                clock_rate: codec.clock_rate,
                ssrc: m.ssrc,
                ext: a.ext_map(),
                feedback: a.feedback(),
                rids: a.rids().to_vec(),
            });
            published.push((kind, codec.clone(), m.mid.clone()));
            slides.push(m.slides && kind == MediaKind::Video);
            answers.push(a);
        }
        if tracks.is_empty() {
            return Err(SdpError::Unacceptable(
                "offer sends no audio or video in a codec volna forwards (Opus, VP8, VP9, H264, AV1)"
                    .into(),
            )
            .into());
        }
        let mut s = self.new_session(now, Role::Publisher, room, Some(Remote::of_offer(offer)))?;
        s.published = published;
        let answer = build_answer(offer, &self.local(&s), &answers);
        s.answer = answer.clone();
        self.relay
            .add_publisher(s.id, room, s.rtcp_ssrc, tracks)
            .map_err(SessionError::internal)?;
        for (i, _) in slides.iter().enumerate().filter(|(_, &on)| on) {
            self.relay.set_slides(s.id, i, true);
        }
        info!(session = s.id, room, publisher = %s.public_id, "publisher created");
        let id = s.id;
        let created = Created {
            answer,
            resource: s.resource.clone(),
            public_id: s.public_id.clone(),
        };
        self.register(s);
        Ok((id, created))
    }

    /// A publisher of the room by its public id, or the room's most recent one.
    pub(super) fn find_publisher(
        &self,
        room: &str,
        publisher: Option<&str>,
    ) -> Result<SessionId, SessionError> {
        let list = self
            .relay
            .room_publishers(room)
            .filter(|l| !l.is_empty())
            .ok_or(SessionError::no_room())?;
        match publisher {
            None => list.last().copied().ok_or(SessionError::no_room()),
            Some(p) => list
                .iter()
                .copied()
                .find(|id| self.sessions.get(id).is_some_and(|s| s.public_id == p))
                .ok_or(SessionError::no_publisher()),
        }
    }

    /// WHEP: a viewer's offer for one publisher of the room (the most recent one when `publisher`
    /// is `None`).
    pub fn view(
        &mut self,
        now: Instant,
        room: &str,
        publisher: Option<&str>,
        offer: &Offer,
    ) -> Result<Created, SessionError> {
        let pub_id = self.find_publisher(room, publisher)?;
        self.admit(room)?;
        let (pub_public, sources) = {
            let p = self
                .sessions
                .get(&pub_id)
                .ok_or(SessionError::no_publisher())?;
            (p.public_id.clone(), p.published.clone())
        };
        // Per source track: AV1 without simulcast (its descriptors describe what viewers get).
        let av1_single: Vec<bool> = self
            .relay
            .publisher_tracks(pub_id)
            .map(|ts| {
                ts.map(|t| t.codec == Codec::Av1 && t.rids.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        let mut used = vec![false; sources.len()];
        let mut answers = Vec::with_capacity(offer.media.len());
        let mut vtracks = Vec::new();
        let rng = &mut self.rng;
        for m in &offer.media {
            let Some(kind) = m.kind.filter(|_| m.direction.receives() && m.active()) else {
                answers.push(AnswerMedia::Rejected);
                continue;
            };
            let pick = sources.iter().enumerate().find_map(|(i, (k, src, _))| {
                if used[i] || *k != kind {
                    return None;
                }
                let theirs = m.codecs.iter().find(|c| c.compatible(src))?;
                Some((i, theirs.clone()))
            });
            let Some((track, codec)) = pick else {
                // Nothing to send on it. Rejecting it (port 0) would break a bundle whose tag it
                // is, so it is accepted as inactive when one of its codecs is known.
                answers.push(match m.codecs.iter().find(|c| forwardable(kind, c)) {
                    Some(c) => AnswerMedia::accept(
                        m,
                        c.clone(),
                        Direction::Inactive,
                        &[ExtKind::Mid],
                        None,
                        false,
                    ),
                    None => AnswerMedia::Rejected,
                });
                continue;
            };
            used[track] = true;
            let ssrc: u32 = rng.gen();
            let pt = codec.payload_type;
            // Resends and probes go on an RTX stream when the viewer offered one for this codec.
            let rtx = OfferedCodec::rtx_for(&m.codecs, pt).map(|rtx_pt| Rtx {
                payload_type: rtx_pt,
                ssrc: rng.gen(),
            });
            // Audio may go as RED (redundant frames) when the viewer's link loses packets.
            let red = (kind == MediaKind::Audio)
                .then(|| OfferedCodec::red_for(&m.codecs, pt))
                .flatten();
            let src = Source {
                ssrc,
                cname: format!("volna-{pub_public}"),
                stream_id: format!("volna-{pub_public}"),
                track_id: format!("{pub_public}-{track}"),
                rtx: rtx.map(|r| (r.payload_type, r.ssrc)),
                red,
            };
            let exts = if av1_single.get(track) == Some(&true) {
                AV1_VIEWER_EXTS
            } else {
                VIEWER_EXTS
            };
            let a = AnswerMedia::accept(m, codec, Direction::SendOnly, exts, Some(src), false);
            vtracks.push(ViewerTrackSpec {
                source: TrackRef {
                    publisher: pub_id,
                    track,
                },
                mid: m.mid.clone(),
                ssrc,
                payload_type: pt,
                ext: a.ext_map(),
                initial_seq: rng.gen(),
                initial_ts: rng.gen(),
                rtx,
                red,
            });
            answers.push(a);
        }
        if vtracks.is_empty() {
            return Err(SdpError::Unacceptable(
                "offer receives nothing this publisher sends (check the media kinds and codecs)"
                    .into(),
            )
            .into());
        }
        let mut s = self.new_session(now, Role::Viewer, room, Some(Remote::of_offer(offer)))?;
        s.pending_viewer = Some(vtracks);
        let answer = build_answer(offer, &self.local(&s), &answers);
        info!(session = s.id, room, publisher = %pub_public, "viewer created");
        let created = Created {
            answer,
            resource: s.resource.clone(),
            public_id: pub_public,
        };
        self.register(s);
        Ok(created)
    }

    /// Makes sure the once-a-second housekeeping (consent, reconnect deadlines) is scheduled.
    pub(super) fn arm_housekeeping(&mut self, now: Instant) {
        self.next_housekeeping
            .get_or_insert(now + Duration::from_secs(1));
    }

    /// New local ICE credentials for a session (an ICE restart, RFC 8839 §4.4.1.1.1): checks
    /// must then use them and `remote_ufrag` (empty: learnt from the first check), and the
    /// next nominating check picks the path. DTLS and SRTP go on; media keeps flowing on the
    /// old path until then.
    pub(super) fn restart_ice(
        &mut self,
        id: SessionId,
        remote_ufrag: &str,
        remote_pwd: &str,
    ) -> Option<(String, String)> {
        let s = self.sessions.get_mut(&id)?;
        self.by_ufrag.remove(&s.local_ufrag);
        s.local_ufrag = random_string(&mut self.rng, 8);
        s.local_pwd = random_string(&mut self.rng, 24);
        s.remote_ufrag = remote_ufrag.to_owned();
        s.remote_pwd = remote_pwd.to_owned();
        s.nominated = false;
        self.by_ufrag.insert(s.local_ufrag.clone(), id);
        self.ice_restarts += 1;
        info!(session = id, room = %s.room, "ICE restart");
        Some((s.local_ufrag.clone(), s.local_pwd.clone()))
    }

    /// A WHIP/WHEP `PATCH` with the client's ICE credentials (RFC 9725 §4.3): new ones restart
    /// ICE and return volna's new ones; the same ones (trickled candidates) change nothing.
    pub fn patch_ice(
        &mut self,
        role: Role,
        room: &str,
        resource: &str,
        remote_ufrag: &str,
        remote_pwd: &str,
        may: &dyn Fn(Option<&str>) -> bool,
    ) -> Result<Option<IceRestart>, SessionError> {
        let id = self.by_resource(role, room, resource)?;
        if !may(self.sessions[&id].owner.as_deref()) {
            return Err(SessionError::not_owner());
        }
        if self.sessions[&id].remote_ufrag == remote_ufrag {
            return Ok(None);
        }
        Ok(self
            .restart_ice(id, remote_ufrag, remote_pwd)
            .map(|(ufrag, pwd)| IceRestart {
                ufrag,
                pwd,
                candidate: self.config.media_addr,
            }))
    }

    /// Records who created a WHIP/WHEP session (the token's identity).
    pub fn set_owner(&mut self, resource: &str, owner: Option<String>) {
        if let Some(s) = self
            .by_resource
            .get(resource)
            .and_then(|id| self.sessions.get_mut(id))
        {
            s.owner = owner;
        }
    }

    /// Ends a session by its resource id (WHIP/WHEP DELETE). `role` must match the URL used, and
    /// `may` allow the caller to act for the session's owner.
    pub fn delete(
        &mut self,
        now: Instant,
        role: Role,
        room: &str,
        resource: &str,
        may: &dyn Fn(Option<&str>) -> bool,
    ) -> Result<(), SessionError> {
        let id = self.by_resource(role, room, resource)?;
        if !may(self.sessions[&id].owner.as_deref()) {
            return Err(SessionError::not_owner());
        }
        self.close(now, id, CloseCause::Deleted);
        Ok(())
    }

    /// A WHIP or WHEP session by its URL: the resource id, under the room and role it was made
    /// with (a room participant's sessions have no URL).
    fn by_resource(
        &self,
        role: Role,
        room: &str,
        resource: &str,
    ) -> Result<SessionId, SessionError> {
        let id = *self
            .by_resource
            .get(resource)
            .ok_or(SessionError::no_session())?;
        let s = self.sessions.get(&id).ok_or(SessionError::no_session())?;
        if s.role != role || s.room != room || s.participant.is_some() {
            return Err(SessionError::no_session());
        }
        Ok(id)
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
        if let Some(mut s) = self.sessions.remove(&id) {
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
    }

    /// One datagram from the media socket.
    ///
    /// The buffer is the datagram's receive slot: SRTP is decrypted in it and the packet, frozen,
    /// is what receivers and the retransmit cache share.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, buf: BytesMut) {
        self.datagrams_in += 1;
        let Some(&first) = buf.first() else {
            self.junk(from, "empty datagram");
            return;
        };
        match first {
            0..=3 => self.handle_stun(now, from, &buf),
            20..=63 => self.handle_dtls(now, from, &buf),
            128..=191 => self.handle_srtp(now, from, buf),
            _ => self.junk(from, "unknown first byte"),
        }
    }

    /// Counts a dropped datagram (QUIC flows report theirs here).
    pub fn count_junk(&mut self) {
        self.junk += 1;
    }

    fn junk(&mut self, from: SocketAddr, why: &str) {
        self.junk += 1;
        debug!(peer = %from, why, "dropped datagram");
    }

    fn handle_stun(&mut self, now: Instant, from: SocketAddr, buf: &[u8]) {
        let req = match BindingRequest::parse(buf) {
            Ok(r) => r,
            Err(ice::IceError::NotBindingRequest) => {
                return self.handle_consent_answer(now, from, buf)
            }
            Err(e) => return self.junk(from, &e.to_string()),
        };
        let Some(&id) = self.by_ufrag.get(&req.local_ufrag) else {
            return self.junk(from, "STUN for unknown ufrag");
        };
        let Some(s) = self.sessions.get_mut(&id) else {
            return;
        };
        // A subscriber's checks can arrive before its answer: learn the ufrag from the first
        // authenticated one, and hold the answer to it (see `apply_answer`).
        let learn = s.remote_ufrag.is_empty();
        if !learn && req.remote_ufrag != s.remote_ufrag {
            return self.junk(from, "STUN with wrong remote ufrag");
        }
        let use_candidate = req.use_candidate;
        let remote_ufrag = learn.then(|| req.remote_ufrag.clone());
        let resp = match req.respond(&s.local_pwd, from, self.identity.provider.crypto()) {
            Ok(r) => r,
            Err(e) => return self.junk(from, &e.to_string()),
        };
        if let Some(u) = remote_ufrag {
            s.remote_ufrag = u;
        }
        s.last_rx = now;
        let take_path = use_candidate || !s.nominated;
        s.nominated |= use_candidate;
        self.by_addr.insert(from, id);
        self.send.push(from, &resp);
        if take_path {
            self.take_path(
                now,
                id,
                from,
                if use_candidate { "nominated" } else { "check" },
            );
        }
        // A DTLS client starts its flight once the path exists.
        self.flush_dtls(id);
    }

    /// Media goes to `to` from now on, unless the session moved too often lately. A move of a
    /// connected receiving session asks its video from a key frame.
    fn take_path(&mut self, now: Instant, id: SessionId, to: SocketAddr, why: &'static str) {
        let Some(s) = self.sessions.get_mut(&id) else {
            return;
        };
        let from = s.remote;
        let connected = s.srtp.is_some();
        match from {
            Some(old) if old == to => return,
            // Before media flows, checks from several candidates may take turns.
            Some(old) if !connected => debug!(session = id, from = %old, to = %to, why, "ICE path"),
            Some(old) => {
                if !s.path.may_move(now) {
                    self.path_switches_refused += 1;
                    // Logged at 1, 2, 4, 8… refusals: a peer that keeps trying cannot flood the log.
                    if self.path_switches_refused.is_power_of_two() {
                        warn!(session = id, from = %old, to = %to, why, refused = self.path_switches_refused, "ICE path move refused: too many moves lately");
                    }
                    return;
                }
                s.path.moved(now);
                self.path_switches += 1;
                info!(session = id, from = %old, to = %to, why, "ICE path moved");
            }
            None => debug!(session = id, peer = %to, why, "ICE path"),
        }
        s.remote = Some(to);
        self.by_addr.insert(to, id);
        self.paths.set(id, from, to);
        if from.is_some() && connected {
            let (relay, mut out) = self.relay_and_out();
            relay.viewer_moved(now, id, &mut out);
        }
    }

    /// SRTP from an address no session has: if sessions have their peer at that IP (a NAT that
    /// gave the peer a new port), each gets one consent check there; the datagram is dropped.
    fn check_new_address(&mut self, now: Instant, from: SocketAddr) {
        let crypto = self.identity.provider.crypto();
        let ids: Vec<SessionId> = self.paths.sessions_at(from.ip()).collect();
        for id in ids {
            if !self.paths.has_room() {
                return;
            }
            let Some(s) = self.sessions.get_mut(&id) else {
                continue;
            };
            if s.srtp.is_none() || s.remote_pwd.is_empty() || s.remote_ufrag.is_empty() {
                continue;
            }
            if !s.path.take_probe(now) {
                continue;
            }
            let transaction: [u8; 12] = self.rng.gen();
            let req = match ice::consent_request(
                transaction,
                &s.remote_ufrag,
                &s.local_ufrag,
                &s.remote_pwd,
                self.tie_breaker,
                crypto,
            ) {
                Ok(r) => r,
                Err(e) => {
                    warn!(session = id, error = %e, "consent check not built");
                    continue;
                }
            };
            debug!(session = id, to = %from, "consent check to a new address");
            self.paths.sent(
                transaction,
                Probe {
                    session: id,
                    to: from,
                    sent: now,
                },
            );
            self.consent_checks += 1;
            self.send.push(from, &req);
        }
    }

    /// A Binding success response: the answer to a consent check moves the session there.
    fn handle_consent_answer(&mut self, now: Instant, from: SocketAddr, buf: &[u8]) {
        let resp = match BindingResponse::parse(buf) {
            Ok(r) => r,
            Err(e) => return self.junk(from, &e.to_string()),
        };
        let probe = match self.paths.answered(now, &resp.transaction, from) {
            Ok(p) => p,
            Err(e) => return self.junk(from, &e.to_string()),
        };
        let Some(s) = self.sessions.get_mut(&probe.session) else {
            return;
        };
        let transaction = resp.transaction;
        if let Err(e) = resp.verify(&s.remote_pwd, self.identity.provider.crypto()) {
            return self.junk(from, &e.to_string());
        }
        s.last_rx = now;
        self.paths.settle(&transaction);
        self.take_path(now, probe.session, from, "consent");
    }

    pub(super) fn flush_dtls(&mut self, id: SessionId) {
        let Some(s) = self.sessions.get_mut(&id) else {
            return;
        };
        let (Some(addr), Some(d)) = (s.remote, s.dtls.as_mut()) else {
            return;
        };
        while let Some(data) = d.poll_transmit() {
            self.send.push(addr, &data);
        }
    }

    fn handle_dtls(&mut self, now: Instant, from: SocketAddr, buf: &[u8]) {
        let Some(&id) = self.by_addr.get(&from) else {
            return self.junk(from, "DTLS from unknown address");
        };
        self.feed_dtls(now, id, from, buf);
    }

    /// One DTLS datagram for session `id`.
    pub(super) fn feed_dtls(&mut self, now: Instant, id: SessionId, from: SocketAddr, buf: &[u8]) {
        let Some(s) = self.sessions.get_mut(&id) else {
            return;
        };
        s.last_rx = now;
        let Some(dtls) = s.dtls.as_mut() else {
            // Before a subscriber's answer: keep a few datagrams for when it comes.
            if s.negotiation.early_dtls.len() < 8 {
                s.negotiation.early_dtls.push(buf.to_vec());
            }
            return;
        };
        let result = dtls.handle_datagram(now, buf);
        self.flush_dtls(id);
        match result {
            Ok(Some(DtlsOutput::Connected(keys))) => {
                let Some(s) = self.sessions.get_mut(&id) else {
                    return;
                };
                info!(session = id, room = %s.room, peer = %from, profile = ?keys.profile, elapsed_ms = now.duration_since(s.created).as_millis() as u64, "DTLS connected");
                s.srtp = Some(*keys);
                self.on_connected(now, id);
            }
            Ok(Some(DtlsOutput::PeerClosed)) => self.close(now, id, CloseCause::PeerClosed),
            Ok(None) => {}
            Err(e) => {
                self.junk += 1;
                self.dtls_errors += 1;
                // Logged at 1, 2, 4, 8… errors: a peer sending bad records cannot flood the log.
                if self.dtls_errors.is_power_of_two() {
                    warn!(session = id, peer = %from, error = %e, errors = self.dtls_errors, "DTLS error");
                } else {
                    debug!(session = id, peer = %from, error = %e, "DTLS error");
                }
            }
        }
    }

    /// SRTP is up: a viewer starts receiving; a subscriber gets the tracks its answer accepted.
    fn on_connected(&mut self, now: Instant, id: SessionId) {
        let Some(s) = self.sessions.get_mut(&id) else {
            return;
        };
        match s.role {
            Role::Viewer => {
                let tracks = s.pending_viewer.take().unwrap_or_default();
                let room = s.room.clone();
                if let Err(e) = self.relay.add_viewer(id, &room) {
                    warn!(session = id, error = %e, "viewer not added");
                    return;
                }
                let (relay, mut out) = self.relay_and_out();
                for t in tracks {
                    if let Err(e) = relay.add_viewer_track(now, id, t, &mut out) {
                        warn!(session = id, error = %e, "viewer track not added");
                    }
                }
                if self.relay.live_viewer_tracks(id) == 0 {
                    self.close(now, id, CloseCause::PublisherLeft);
                }
            }
            Role::Subscriber => self.attach_accepted_lines(now, id),
            Role::Publisher => {}
        }
    }

    fn handle_srtp(&mut self, now: Instant, from: SocketAddr, mut buf: BytesMut) {
        let Some(&id) = self.by_addr.get(&from) else {
            self.check_new_address(now, from);
            return self.junk(from, "SRTP from unknown address");
        };
        let Some(s) = self.sessions.get_mut(&id) else {
            return;
        };
        let role = s.role;
        let Some(keys) = s.srtp.as_mut() else {
            return self.junk(from, "SRTP before DTLS");
        };
        if is_rtcp(&buf) {
            let plain = match keys.remote.decrypt_rtcp(&buf) {
                Ok(p) => p,
                Err(_) => return self.junk(from, "SRTCP unprotect failed"),
            };
            s.last_rx = now;
            self.relay_rtcp(now, id, role, &plain);
            return;
        }
        if role != Role::Publisher {
            return self.junk(from, "RTP from a receiving session");
        }
        // The header is authenticated but not encrypted: its length comes from the packet itself.
        let Ok(header_len) = header_len(&buf) else {
            return self.junk(from, "malformed RTP");
        };
        let len = match keys.rtp_in.unprotect(&mut buf, header_len) {
            Ok(n) => n,
            Err(_) => return self.junk(from, "SRTP unprotect failed"),
        };
        s.last_rx = now;
        buf.truncate(len);
        // Frozen, the decrypted slot is shared by the forward path and the retransmit cache.
        let plain = buf.freeze();
        let view = match RtpView::parse(&plain) {
            Ok(v) => v,
            Err(_) => return self.junk(from, "malformed RTP"),
        };
        self.relay_rtp(now, id, &plain, &view);
    }

    /// Plain RTCP from a session (whatever its transport), to the relay.
    pub(super) fn relay_rtcp(&mut self, now: Instant, id: SessionId, role: Role, packet: &[u8]) {
        let (relay, mut out) = self.relay_and_out();
        match role {
            Role::Publisher => relay.handle_publisher_rtcp(now, id, packet, &mut out),
            Role::Viewer | Role::Subscriber => relay.handle_viewer_rtcp(now, id, packet, &mut out),
        }
    }

    /// A plain RTP packet from a publisher session (whatever its transport), to the relay.
    pub(super) fn relay_rtp(
        &mut self,
        now: Instant,
        id: SessionId,
        packet: &Bytes,
        view: &RtpView,
    ) {
        let (relay, mut out) = self.relay_and_out();
        relay.handle_rtp(now, id, packet, view, &mut out);
        self.drain_relay_events();
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

    /// The datagrams waiting to be sent, each already protected.
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
