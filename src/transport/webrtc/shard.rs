//! A shard: the sessions, the relay core and the address tables of one worker. Everything here is
//! driven by `handle_*` calls with `now`; outgoing datagrams are collected with `poll_transmit`.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::distributions::Alphanumeric;
use rand::Rng;
use tracing::{debug, info, warn};

use super::dtls::{Dtls, DtlsIdentity, DtlsOutput};
use super::ice::BindingRequest;
use super::session::{Role, Session};
use crate::core::room::{
    MediaKind, Relay, RelayConfig, SessionId, Sink, TrackSpec, ViewerTrackSpec,
};
use crate::core::rtp::{is_rtcp, ExtKind, RtpView};
use crate::signal::sdp::{build_answer, AnswerMedia, Direction, Local, Offer, SdpError, Source};

/// Extensions volna accepts from publishers and writes or passes on to viewers. RIDs wait for
/// simulcast: without them in the answer, a publisher sends a single layer.
const NEGOTIATED_EXTS: &[ExtKind] = &[
    ExtKind::Mid,
    ExtKind::AudioLevel,
    ExtKind::AbsSendTime,
    ExtKind::TransmissionOffset,
    ExtKind::VideoOrientation,
    ExtKind::PlayoutDelay,
];

#[derive(Debug, Clone)]
pub struct ShardConfig {
    /// The media address: bound by the worker and advertised as the only ICE candidate.
    pub media_addr: SocketAddr,
    pub consent_timeout: Duration,
    pub relay: RelayConfig,
}

#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    #[error("{0}")]
    Sdp(#[from] SdpError),
    #[error("room not found")]
    NoRoom,
    #[error("publisher not found in this room")]
    NoPublisher,
    #[error("session not found")]
    NoSession,
    #[error("internal error: {0}")]
    Internal(String),
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
    pub datagrams_in: u64,
    pub junk_datagrams: u64,
    pub forwarded_packets: u64,
    pub forwarded_bytes: u64,
    pub dropped_packets: u64,
    pub keyframe_requests: u64,
    pub sessions_closed: u64,
    pub publisher_ids: Vec<(String, String)>,
}

struct Transmit {
    to: SocketAddr,
    data: Bytes,
}

/// The relay's sink: encrypts for each session and queues the datagram.
struct Out<'a> {
    sessions: &'a mut HashMap<SessionId, Session>,
    queue: &'a mut VecDeque<Transmit>,
    scratch: &'a mut Vec<u8>,
}

impl Sink for Out<'_> {
    fn rtp(&mut self, to: SessionId, header: &[u8], payload: &[u8]) {
        let Some(s) = self.sessions.get_mut(&to) else {
            return;
        };
        let (Some(keys), Some(addr)) = (s.srtp.as_mut(), s.remote) else {
            return;
        };
        self.scratch.clear();
        self.scratch.extend_from_slice(header);
        self.scratch.extend_from_slice(payload);
        match keys.local.encrypt_rtp(self.scratch) {
            Ok(p) => self.queue.push_back(Transmit {
                to: addr,
                data: p.freeze(),
            }),
            Err(e) => debug!(session = to, error = %e, "SRTP protect failed"),
        }
    }

    fn rtcp(&mut self, to: SessionId, packet: &[u8]) {
        let Some(s) = self.sessions.get_mut(&to) else {
            return;
        };
        let (Some(keys), Some(addr)) = (s.srtp.as_mut(), s.remote) else {
            return;
        };
        match keys.local.encrypt_rtcp(packet) {
            Ok(p) => self.queue.push_back(Transmit {
                to: addr,
                data: p.freeze(),
            }),
            Err(e) => debug!(session = to, error = %e, "SRTCP protect failed"),
        }
    }
}

pub struct Shard {
    config: ShardConfig,
    identity: DtlsIdentity,
    relay: Relay,
    sessions: HashMap<SessionId, Session>,
    by_addr: HashMap<SocketAddr, SessionId>,
    by_ufrag: HashMap<String, SessionId>,
    by_resource: HashMap<String, SessionId>,
    queue: VecDeque<Transmit>,
    scratch: Vec<u8>,
    next_id: SessionId,
    next_housekeeping: Option<Instant>,
    datagrams_in: u64,
    junk: u64,
    closed: u64,
}

fn random_string(len: usize) -> String {
    rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

fn random_hex(bytes: usize) -> String {
    let mut rng = rand::thread_rng();
    (0..bytes)
        .map(|_| format!("{:02x}", rng.gen::<u8>()))
        .collect()
}

/// A codec volna can forward for this kind of media.
fn forwardable(kind: MediaKind, c: &crate::signal::sdp::OfferedCodec) -> bool {
    c.codec
        .is_some_and(|codec| codec.is_video() == (kind == MediaKind::Video))
}

impl Shard {
    pub fn new(config: ShardConfig, identity: DtlsIdentity) -> Self {
        Self {
            relay: Relay::new(config.relay.clone()),
            config,
            identity,
            sessions: HashMap::new(),
            by_addr: HashMap::new(),
            by_ufrag: HashMap::new(),
            by_resource: HashMap::new(),
            queue: VecDeque::new(),
            scratch: Vec::with_capacity(2048),
            next_id: 1,
            next_housekeeping: None,
            datagrams_in: 0,
            junk: 0,
            closed: 0,
        }
    }

    pub fn stats(&self) -> ShardStats {
        let c = self.relay.counters();
        ShardStats {
            rooms: self.relay.room_count(),
            sessions: self.sessions.len(),
            publishers: self.relay.publisher_count(),
            viewers: self.relay.viewer_count(),
            datagrams_in: self.datagrams_in,
            junk_datagrams: self.junk,
            forwarded_packets: c.forwarded_packets,
            forwarded_bytes: c.forwarded_bytes,
            dropped_packets: c.dropped_packets,
            keyframe_requests: c.keyframe_requests,
            sessions_closed: self.closed,
            publisher_ids: self
                .sessions
                .values()
                .filter(|s| s.role == Role::Publisher)
                .map(|s| (s.room.clone(), s.public_id.clone()))
                .collect(),
        }
    }

    fn new_session(
        &mut self,
        now: Instant,
        role: Role,
        room: &str,
        offer: &Offer,
    ) -> Result<Session, ShardError> {
        // Consent expiry is checked on the housekeeping timer; arm it as soon as a session exists.
        self.next_housekeeping
            .get_or_insert(now + Duration::from_secs(1));
        let id = self.next_id;
        self.next_id += 1;
        let client = offer.setup == crate::signal::sdp::Setup::Passive;
        let dtls = Dtls::new(now, &self.identity, &offer.fingerprint, client)
            .map_err(|e| ShardError::Internal(e.to_string()))?;
        Ok(Session {
            id,
            role,
            room: room.to_owned(),
            resource: random_hex(16),
            public_id: random_hex(6),
            local_ufrag: random_string(8),
            local_pwd: random_string(24),
            remote_ufrag: offer.ice_ufrag.clone(),
            remote: None,
            nominated: false,
            dtls,
            srtp: None,
            created: now,
            last_rx: now,
            pending_viewer: None,
            published: Vec::new(),
            rtcp_ssrc: rand::random(),
        })
    }

    fn local(&self, s: &Session) -> Local {
        Local {
            ice_ufrag: s.local_ufrag.clone(),
            ice_pwd: s.local_pwd.clone(),
            fingerprint: self.identity.fingerprint.clone(),
            candidate: self.config.media_addr,
            session_id: s.id,
        }
    }

    fn register(&mut self, s: Session) {
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
    ) -> Result<Created, ShardError> {
        let mut answers = Vec::with_capacity(offer.media.len());
        let mut tracks = Vec::new();
        let mut published = Vec::new();
        for m in &offer.media {
            let codec = m
                .kind
                .filter(|_| m.direction.sends() && m.active())
                .and_then(|k| m.codecs.iter().find(|c| forwardable(k, c)));
            let (Some(kind), Some(codec)) = (m.kind, codec) else {
                answers.push(AnswerMedia::Rejected);
                continue;
            };
            let a = AnswerMedia::accept(
                m,
                codec.clone(),
                Direction::RecvOnly,
                NEGOTIATED_EXTS,
                None,
                true,
            );
            let ext = a.ext_map();
            tracks.push(TrackSpec {
                kind,
                mid: m.mid.clone(),
                codec: codec.codec.expect("forwardable codecs are known"),
                payload_type: codec.payload_type,
                clock_rate: codec.clock_rate,
                ssrc: m.ssrc,
                ext,
                feedback: a.feedback(),
            });
            published.push((kind, codec.clone()));
            answers.push(a);
        }
        if tracks.is_empty() {
            return Err(SdpError::Unacceptable("offer sends no audio or video in a codec volna forwards (Opus, VP8, VP9, H264, AV1)".into()).into());
        }
        let mut s = self.new_session(now, Role::Publisher, room, offer)?;
        s.published = published;
        let answer = build_answer(offer, &self.local(&s), &answers);
        self.relay
            .add_publisher(s.id, room, s.rtcp_ssrc, tracks)
            .map_err(|e| ShardError::Internal(e.to_string()))?;
        info!(session = s.id, room, publisher = %s.public_id, "publisher created");
        let created = Created {
            answer,
            resource: s.resource.clone(),
            public_id: s.public_id.clone(),
        };
        self.register(s);
        Ok(created)
    }

    /// WHEP: a viewer's offer for one publisher of the room (the most recent one when `publisher`
    /// is `None`).
    pub fn view(
        &mut self,
        now: Instant,
        room: &str,
        publisher: Option<&str>,
        offer: &Offer,
    ) -> Result<Created, ShardError> {
        let list = self
            .relay
            .room_publishers(room)
            .filter(|l| !l.is_empty())
            .ok_or(ShardError::NoRoom)?;
        let pub_id = match publisher {
            None => *list.last().ok_or(ShardError::NoRoom)?,
            Some(p) => *list
                .iter()
                .find(|id| self.sessions.get(id).is_some_and(|s| s.public_id == p))
                .ok_or(ShardError::NoPublisher)?,
        };
        let (pub_public, sources) = {
            let p = self.sessions.get(&pub_id).ok_or(ShardError::NoPublisher)?;
            (p.public_id.clone(), p.published.clone())
        };
        let mut used = vec![false; sources.len()];
        let mut answers = Vec::with_capacity(offer.media.len());
        let mut vtracks = Vec::new();
        let mut rng = rand::thread_rng();
        for m in &offer.media {
            let Some(kind) = m.kind.filter(|_| m.direction.receives() && m.active()) else {
                answers.push(AnswerMedia::Rejected);
                continue;
            };
            let pick = sources.iter().enumerate().find_map(|(i, (k, src))| {
                if used[i] || *k != kind {
                    return None;
                }
                let theirs = m.codecs.iter().find(|c| c.compatible(src))?;
                Some((i, theirs.clone()))
            });
            let Some((source, codec)) = pick else {
                answers.push(AnswerMedia::Rejected);
                continue;
            };
            used[source] = true;
            let ssrc: u32 = rng.gen();
            let src = Source {
                ssrc,
                cname: format!("volna-{pub_public}"),
                stream_id: format!("volna-{pub_public}"),
                track_id: format!("{pub_public}-{source}"),
            };
            let pt = codec.payload_type;
            let a = AnswerMedia::accept(
                m,
                codec,
                Direction::SendOnly,
                NEGOTIATED_EXTS,
                Some(src),
                false,
            );
            let ext = a.ext_map();
            vtracks.push(ViewerTrackSpec {
                source,
                mid: m.mid.clone(),
                ssrc,
                payload_type: pt,
                ext,
                initial_seq: rng.gen(),
                initial_ts: rng.gen(),
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
        let mut s = self.new_session(now, Role::Viewer, room, offer)?;
        s.pending_viewer = Some((pub_id, vtracks));
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

    /// Ends a session by its resource id (WHIP/WHEP DELETE). `role` must match the URL used.
    pub fn delete(
        &mut self,
        now: Instant,
        role: Role,
        room: &str,
        resource: &str,
    ) -> Result<(), ShardError> {
        let id = *self
            .by_resource
            .get(resource)
            .ok_or(ShardError::NoSession)?;
        let s = self.sessions.get(&id).ok_or(ShardError::NoSession)?;
        if s.role != role || s.room != room {
            return Err(ShardError::NoSession);
        }
        self.close(now, id, "deleted by client");
        Ok(())
    }

    fn close(&mut self, now: Instant, id: SessionId, reason: &str) {
        let Some(role) = self.sessions.get(&id).map(|s| s.role) else {
            return;
        };
        let mut orphans = Vec::new();
        {
            let mut out = Out {
                sessions: &mut self.sessions,
                queue: &mut self.queue,
                scratch: &mut self.scratch,
            };
            match role {
                Role::Publisher => orphans = self.relay.remove_publisher(id, &mut out),
                Role::Viewer => {
                    self.relay.remove_viewer(id);
                }
            }
        }
        if role == Role::Publisher {
            // Viewers still in their handshake are not in the relay yet, but watch this publisher.
            orphans.extend(
                self.sessions
                    .values()
                    .filter(|s| s.pending_viewer.as_ref().is_some_and(|(p, _)| *p == id))
                    .map(|s| s.id),
            );
        }
        if let Some(mut s) = self.sessions.remove(&id) {
            s.dtls.close(now);
            if let Some(addr) = s.remote {
                while let Some(d) = s.dtls.poll_transmit() {
                    self.queue.push_back(Transmit {
                        to: addr,
                        data: d.freeze(),
                    });
                }
            }
            self.by_ufrag.remove(&s.local_ufrag);
            self.by_resource.remove(&s.resource);
            self.by_addr.retain(|_, v| *v != id);
            self.closed += 1;
            info!(session = id, room = %s.room, role = ?s.role, peer = ?s.remote, reason, "session closed");
        }
        for o in orphans {
            self.close(now, o, "publisher left");
        }
    }

    /// One datagram from the media socket.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, buf: &[u8]) {
        self.datagrams_in += 1;
        let Some(&first) = buf.first() else {
            self.junk(from, "empty datagram");
            return;
        };
        match first {
            0..=3 => self.handle_stun(now, from, buf),
            20..=63 => self.handle_dtls(now, from, buf),
            128..=191 => self.handle_srtp(now, from, buf),
            _ => self.junk(from, "unknown first byte"),
        }
    }

    fn junk(&mut self, from: SocketAddr, why: &str) {
        self.junk += 1;
        debug!(peer = %from, why, "dropped datagram");
    }

    fn handle_stun(&mut self, now: Instant, from: SocketAddr, buf: &[u8]) {
        let req = match BindingRequest::parse(buf) {
            Ok(r) => r,
            Err(e) => return self.junk(from, &e.to_string()),
        };
        let Some(&id) = self.by_ufrag.get(&req.local_ufrag) else {
            return self.junk(from, "STUN for unknown ufrag");
        };
        let Some(s) = self.sessions.get_mut(&id) else {
            return;
        };
        if req.remote_ufrag != s.remote_ufrag {
            return self.junk(from, "STUN with wrong remote ufrag");
        }
        let use_candidate = req.use_candidate;
        let resp = match req.respond(&s.local_pwd, from, self.identity.provider.crypto()) {
            Ok(r) => r,
            Err(e) => return self.junk(from, &e.to_string()),
        };
        s.last_rx = now;
        if use_candidate || !s.nominated {
            if s.remote != Some(from) {
                debug!(session = id, peer = %from, nominated = use_candidate, "ICE path");
            }
            s.remote = Some(from);
            s.nominated |= use_candidate;
        }
        self.by_addr.insert(from, id);
        self.queue.push_back(Transmit {
            to: from,
            data: Bytes::from(resp),
        });
        // A DTLS client starts its flight once the path exists.
        self.flush_dtls(id);
    }

    fn flush_dtls(&mut self, id: SessionId) {
        let Some(s) = self.sessions.get_mut(&id) else {
            return;
        };
        let Some(addr) = s.remote else { return };
        while let Some(d) = s.dtls.poll_transmit() {
            self.queue.push_back(Transmit {
                to: addr,
                data: d.freeze(),
            });
        }
    }

    fn handle_dtls(&mut self, now: Instant, from: SocketAddr, buf: &[u8]) {
        let Some(&id) = self.by_addr.get(&from) else {
            return self.junk(from, "DTLS from unknown address");
        };
        let Some(s) = self.sessions.get_mut(&id) else {
            return;
        };
        let result = s.dtls.handle_datagram(now, buf);
        s.last_rx = now;
        self.flush_dtls(id);
        match result {
            Ok(Some(DtlsOutput::Connected(keys))) => {
                let Some(s) = self.sessions.get_mut(&id) else {
                    return;
                };
                info!(session = id, room = %s.room, peer = %from, profile = ?keys.profile, elapsed_ms = now.duration_since(s.created).as_millis() as u64, "DTLS connected");
                s.srtp = Some(*keys);
                if let Some((pub_id, tracks)) = s.pending_viewer.take() {
                    let mut out = Out {
                        sessions: &mut self.sessions,
                        queue: &mut self.queue,
                        scratch: &mut self.scratch,
                    };
                    if let Err(e) = self.relay.add_viewer(now, id, pub_id, tracks, &mut out) {
                        warn!(session = id, error = %e, "viewer's publisher is gone");
                        self.close(now, id, "publisher left");
                    }
                }
            }
            Ok(Some(DtlsOutput::PeerClosed)) => self.close(now, id, "peer closed DTLS"),
            Ok(None) => {}
            Err(e) => {
                self.junk += 1;
                warn!(session = id, peer = %from, error = %e, "DTLS error");
            }
        }
    }

    fn handle_srtp(&mut self, now: Instant, from: SocketAddr, buf: &[u8]) {
        let Some(&id) = self.by_addr.get(&from) else {
            return self.junk(from, "SRTP from unknown address");
        };
        let Some(s) = self.sessions.get_mut(&id) else {
            return;
        };
        let role = s.role;
        let Some(keys) = s.srtp.as_mut() else {
            return self.junk(from, "SRTP before DTLS");
        };
        if is_rtcp(buf) {
            let plain = match keys.remote.decrypt_rtcp(buf) {
                Ok(p) => p,
                Err(_) => return self.junk(from, "SRTCP unprotect failed"),
            };
            s.last_rx = now;
            let mut out = Out {
                sessions: &mut self.sessions,
                queue: &mut self.queue,
                scratch: &mut self.scratch,
            };
            match role {
                Role::Publisher => self.relay.handle_publisher_rtcp(now, id, &plain, &mut out),
                Role::Viewer => self.relay.handle_viewer_rtcp(now, id, &plain, &mut out),
            }
            return;
        }
        if role != Role::Publisher {
            return self.junk(from, "RTP from a viewer");
        }
        let plain = match keys.remote.decrypt_rtp(buf) {
            Ok(p) => p,
            Err(_) => return self.junk(from, "SRTP unprotect failed"),
        };
        s.last_rx = now;
        let view = match RtpView::parse(&plain) {
            Ok(v) => v,
            Err(_) => return self.junk(from, "malformed RTP"),
        };
        let mut out = Out {
            sessions: &mut self.sessions,
            queue: &mut self.queue,
            scratch: &mut self.scratch,
        };
        self.relay.handle_rtp(now, id, &plain, &view, &mut out);
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut next = self.next_housekeeping;
        let mut consider = |t: Option<Instant>| {
            if let Some(t) = t {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        };
        consider(self.relay.poll_timeout());
        for s in self.sessions.values() {
            consider(s.dtls.poll_timeout());
        }
        next
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        let mut out = Out {
            sessions: &mut self.sessions,
            queue: &mut self.queue,
            scratch: &mut self.scratch,
        };
        self.relay.handle_timeout(now, &mut out);
        let ids: Vec<SessionId> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.dtls.poll_timeout().is_some_and(|t| t <= now))
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            if let Some(s) = self.sessions.get_mut(&id) {
                if let Err(e) = s.dtls.handle_timeout(now) {
                    warn!(session = id, error = %e, "DTLS handshake failed");
                    self.close(now, id, "DTLS handshake failed");
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
                .filter(|s| now.duration_since(s.last_rx) >= timeout)
                .map(|s| s.id)
                .collect();
            for id in expired {
                self.close(now, id, "consent expired (peer silent)");
            }
        }
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<(SocketAddr, Bytes)> {
        self.queue.pop_front().map(|t| (t.to, t.data))
    }
}
