//! Room participants (the WebSocket room protocol, docs/protocol.md): each has a publisher
//! connection it offers, and a subscriber connection volna offers, renegotiated as tracks come
//! and go. Events (joins, leaves, tracks, mutes, active speaker) for each participant wait in
//! the shard's outbox ([`Shard::poll_message`]) for the worker to pass to its socket.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Instant;

use rand::Rng;
use tracing::{info, warn};

use super::connection::{ParticipantId, Role};
use super::error::SessionError;
use super::negotiation::{LineState, SubLine};
use super::shard::{CloseCause, Remote, Shard};
use crate::core::room::{MediaKind, RelayEvent, Rtx, SessionId, TrackRef, ViewerTrackSpec};
use crate::core::rtp::{ExtKind, ExtMap};
use crate::session::protocol::{GrantsInfo, ParticipantInfo, ServerMessage, TrackInfo, VERSION};
use crate::session::sdp::{build_offer, Offer, OfferLine, OfferedCodec, Setup, Source};

/// What a token (or dev mode) allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grants {
    pub publish: bool,
    pub subscribe: bool,
}

/// A `join` as the worker gets it (the socket checked the token and the names).
#[derive(Debug, Clone)]
pub struct JoinRequest {
    pub room: String,
    pub identity: String,
    /// The identity is a token's (not a name a dev-mode client chose).
    pub verified: bool,
    pub name: String,
    pub grants: Grants,
    pub auto_subscribe: bool,
    /// The socket this participant talks over (a later socket takes it over with `resume`).
    pub conn: u64,
    pub resume: Option<String>,
}

pub struct Participant {
    pub id: ParticipantId,
    pub public_id: String,
    pub identity: String,
    /// Its identity is a token's.
    pub verified: bool,
    pub name: String,
    pub room: String,
    pub grants: Grants,
    pub auto_subscribe: bool,
    pub publisher: Option<SessionId>,
    pub subscriber: Option<SessionId>,
    /// Tracks asked for with `subscribe` (used when `auto_subscribe` is off).
    pub wanted: BTreeSet<String>,
    pub muted: HashMap<String, bool>,
    /// Tracks shown large (`pin`): their video goes first when the link is short.
    pub pinned: BTreeSet<String>,
    /// The secret a new socket gives in `join` to come back as this participant.
    pub resume: String,
    /// The socket that speaks for it now.
    pub conn: u64,
    /// Lost its media or socket: it leaves at this time unless it comes back first.
    pub reconnecting: Option<Instant>,
}

/// A published track as the room sees it.
struct RoomTrack {
    /// `None` for a publisher without a room connection (WHIP, QUIC).
    owner: Option<ParticipantId>,
    info: TrackInfo,
    source: TrackRef,
    kind: MediaKind,
    codec: OfferedCodec,
    stream_id: String,
}

fn kind_str(k: MediaKind) -> &'static str {
    match k {
        MediaKind::Audio => "audio",
        MediaKind::Video => "video",
    }
}

/// Header extensions offered to subscribers (with the AV1 dependency descriptor when `dd`); ids
/// are shared by all m-lines of the bundle.
fn subscriber_exts(kind: MediaKind, dd: bool) -> Vec<(u8, String)> {
    let list: &[(u8, ExtKind)] = match kind {
        MediaKind::Audio => &[
            (1, ExtKind::Mid),
            (2, ExtKind::AudioLevel),
            (3, ExtKind::AbsSendTime),
            (6, ExtKind::TransportWideCc),
        ],
        MediaKind::Video => &[
            (1, ExtKind::Mid),
            (3, ExtKind::AbsSendTime),
            (4, ExtKind::VideoOrientation),
            (5, ExtKind::PlayoutDelay),
            (6, ExtKind::TransportWideCc),
        ],
    };
    let dd = dd.then_some((7, ExtKind::DependencyDescriptor));
    list.iter()
        .chain(dd.as_ref())
        .map(|(id, k)| (*id, k.uri().to_owned()))
        .collect()
}

impl Shard {
    /// The participant a request comes from, or the refusal for a socket that has not joined.
    fn joined(&self, pid: ParticipantId) -> Result<&Participant, SessionError> {
        self.participants
            .get(&pid)
            .ok_or_else(|| SessionError::new(409, "not_joined", "join a room first"))
    }

    fn send(&mut self, pid: ParticipantId, msg: ServerMessage) {
        if self.participants.contains_key(&pid) {
            self.outbox.push_back((pid, msg));
        }
    }

    fn broadcast(&mut self, room: &str, except: ParticipantId, msg: &ServerMessage) {
        for p in self
            .participants
            .values()
            .filter(|p| p.room == room && p.id != except)
        {
            self.outbox.push_back((p.id, msg.clone()));
        }
    }

    /// The next message for a participant's socket, if any. Poll after each call that may
    /// produce one (requests, datagrams, timeouts).
    pub fn poll_message(&mut self) -> Option<(ParticipantId, ServerMessage)> {
        self.outbox.pop_front()
    }

    /// Whether a participant is still in its room (also while it reconnects).
    pub fn has_participant(&self, pid: ParticipantId) -> bool {
        self.participants.contains_key(&pid)
    }

    fn room_tracks(&self, room: &str) -> Vec<RoomTrack> {
        let mut out = Vec::new();
        for p in self.participants.values().filter(|p| p.room == room) {
            let Some(s) = p.publisher.and_then(|sid| self.sessions.get(&sid)) else {
                continue;
            };
            for (i, (kind, codec, mid)) in s.published.iter().enumerate() {
                let id = format!("{}-{mid}", p.public_id);
                out.push(RoomTrack {
                    owner: Some(p.id),
                    info: TrackInfo {
                        muted: p.muted.get(&id).copied().unwrap_or(false),
                        id,
                        kind: kind_str(*kind),
                        content: self.relay.track_is_slides(s.id, i).then_some("slides"),
                    },
                    source: TrackRef {
                        publisher: s.id,
                        track: i,
                    },
                    kind: *kind,
                    codec: codec.clone(),
                    stream_id: p.public_id.clone(),
                });
            }
        }
        for s in self.room_publishers_without_participant(room) {
            for (i, (kind, codec, mid)) in s.published.iter().enumerate() {
                out.push(RoomTrack {
                    owner: None,
                    info: TrackInfo {
                        id: format!("{}-{mid}", s.public_id),
                        kind: kind_str(*kind),
                        muted: false,
                        content: self.relay.track_is_slides(s.id, i).then_some("slides"),
                    },
                    source: TrackRef {
                        publisher: s.id,
                        track: i,
                    },
                    kind: *kind,
                    codec: codec.clone(),
                    stream_id: s.public_id.clone(),
                });
            }
        }
        out
    }

    /// The room's WHIP and QUIC publishers: room participants see each as a participant of its
    /// own (id: its publisher id), with its tracks, in the order they started.
    fn room_publishers_without_participant<'a>(
        &'a self,
        room: &str,
    ) -> impl Iterator<Item = &'a super::connection::Session> + 'a {
        self.relay
            .room_publishers(room)
            .unwrap_or_default()
            .iter()
            .filter_map(|sid| self.sessions.get(sid))
            .filter(|s| s.participant.is_none() && s.role == Role::Publisher)
    }

    fn publisher_info(&self, s: &super::connection::Session) -> ParticipantInfo {
        let (identity, name) = if s.quic_flow.is_some() {
            ("quic", "QUIC publisher")
        } else {
            ("whip", "WHIP publisher")
        };
        ParticipantInfo {
            id: s.public_id.clone(),
            identity: identity.into(),
            name: name.into(),
            tracks: self
                .room_tracks(&s.room)
                .into_iter()
                .filter(|t| t.source.publisher == s.id)
                .map(|t| t.info)
                .collect(),
            reconnecting: false,
        }
    }

    /// A WHIP or QUIC publisher started: room participants see it join and receive its tracks.
    pub(super) fn publisher_appeared(&mut self, now: Instant, sid: SessionId) {
        let Some(s) = self.sessions.get(&sid) else {
            return;
        };
        let room = s.room.clone();
        let msg = ServerMessage::ParticipantJoined {
            participant: self.publisher_info(s),
        };
        self.broadcast(&room, 0, &msg);
        self.sync_room(now, &room, 0);
    }

    /// A WHIP or QUIC publisher ended (its tracks ended with it).
    pub(super) fn publisher_gone(&mut self, room: &str, public_id: String) {
        self.broadcast(
            room,
            0,
            &ServerMessage::ParticipantLeft {
                participant: public_id,
            },
        );
    }

    fn info(&self, pid: ParticipantId) -> Option<ParticipantInfo> {
        let p = self.participants.get(&pid)?;
        let tracks = self
            .room_tracks(&p.room)
            .into_iter()
            .filter(|t| t.owner == Some(pid))
            .map(|t| t.info)
            .collect();
        Some(ParticipantInfo {
            id: p.public_id.clone(),
            identity: p.identity.clone(),
            name: p.name.clone(),
            tracks,
            reconnecting: p.reconnecting.is_some(),
        })
    }

    /// A participant joins a room (or comes back, with a valid `resume`). Returns its id and
    /// the `joined` message for it.
    pub fn join(
        &mut self,
        now: Instant,
        req: JoinRequest,
    ) -> Result<(ParticipantId, ServerMessage), SessionError> {
        let room = req.room.as_str();
        let back = req.resume.as_deref().and_then(|secret| {
            self.participants
                .values()
                .find(|p| p.room == room && p.resume == secret && p.identity == req.identity)
                .map(|p| p.id)
        });
        if let Some(id) = back {
            self.resume(now, id, &req);
            return Ok((id, self.joined_message(id, true)));
        }
        let (identity, name) = (req.identity.as_str(), req.name.as_str());
        let (grants, auto_subscribe) = (req.grants, req.auto_subscribe);
        self.admit(room)?;
        let max = self.config.limits.max_participants_per_identity;
        if req.verified
            && self
                .participants
                .values()
                .filter(|p| p.verified && p.room == room && p.identity == identity)
                .count()
                >= max
        {
            return Err(SessionError::new(
                429,
                "identity_limit",
                format!("{identity} is in room {room} {max} times already"),
            ));
        }
        let id = self.next_participant;
        self.next_participant += 1;
        let p = Participant {
            id,
            public_id: super::shard::random_hex(&mut self.rng, 6),
            identity: identity.to_owned(),
            verified: req.verified,
            name: name.to_owned(),
            room: room.to_owned(),
            grants,
            auto_subscribe,
            publisher: None,
            subscriber: None,
            wanted: BTreeSet::new(),
            pinned: BTreeSet::new(),
            muted: HashMap::new(),
            resume: super::shard::random_hex(&mut self.rng, 16),
            conn: req.conn,
            reconnecting: None,
        };
        info!(participant = %p.public_id, identity, room, "participant joined");
        self.participants.insert(id, p);
        let me = self.info(id).expect("just inserted");
        self.broadcast(
            room,
            id,
            &ServerMessage::ParticipantJoined { participant: me },
        );
        Ok((id, self.joined_message(id, false)))
    }

    /// The `joined` reply for a participant: itself, the others in join order, the speaker.
    fn joined_message(&self, id: ParticipantId, resumed: bool) -> ServerMessage {
        let p = &self.participants[&id];
        let room = p.room.as_str();
        let mut others: Vec<ParticipantId> = self
            .participants
            .values()
            .filter(|p| p.room == room && p.id != id)
            .map(|p| p.id)
            .collect();
        others.sort_unstable();
        let participants = others
            .iter()
            .filter_map(|o| self.info(*o))
            .chain(
                self.room_publishers_without_participant(room)
                    .map(|s| self.publisher_info(s)),
            )
            .collect();
        let speaker = self
            .relay
            .active_speaker(room)
            .and_then(|sid| {
                self.participants
                    .values()
                    .find(|p| p.publisher == Some(sid))
            })
            .map(|p| p.public_id.clone());
        ServerMessage::Joined {
            id: None,
            v: VERSION,
            room: room.to_owned(),
            participant: self.info(id).expect("present"),
            participants,
            active_speaker: speaker,
            resume: p.resume.clone(),
            resumed,
            grants: GrantsInfo {
                publish: p.grants.publish,
                subscribe: p.grants.subscribe,
            },
        }
    }

    /// A new socket takes over a participant (`join` with its `resume` secret): its old media
    /// connections end (the client makes new ones and publishes again), and the others see it
    /// come back rather than leave and join.
    fn resume(&mut self, now: Instant, id: ParticipantId, req: &JoinRequest) {
        let room = req.room.clone();
        self.end_media(now, id, true);
        let Some(p) = self.participants.get_mut(&id) else {
            return;
        };
        p.conn = req.conn;
        p.name = req.name.clone();
        p.grants = req.grants;
        let was = p.reconnecting.take().is_some();
        let public = p.public_id.clone();
        info!(participant = %public, room, "participant resumed");
        if was {
            self.broadcast(
                &room,
                id,
                &ServerMessage::ParticipantReconnected {
                    participant: public,
                },
            );
        }
    }

    /// Closes a participant's publishing connection (and its receiving one with `subscriber`),
    /// telling the room its tracks ended.
    fn end_media(&mut self, now: Instant, id: ParticipantId, subscriber: bool) {
        let Some(p) = self.participants.get(&id) else {
            return;
        };
        let room = p.room.clone();
        let public = p.public_id.clone();
        let gone: Vec<String> = self
            .room_tracks(&room)
            .into_iter()
            .filter(|t| t.owner == Some(id))
            .map(|t| t.info.id)
            .collect();
        let subscriber = p.subscriber.filter(|_| subscriber);
        for sid in [p.publisher, subscriber].into_iter().flatten() {
            self.close(now, sid, CloseCause::Participant);
        }
        if let Some(p) = self.participants.get_mut(&id) {
            p.publisher = None;
            if subscriber.is_some() {
                p.subscriber = None;
            }
        }
        for track in gone {
            self.broadcast(
                &room,
                id,
                &ServerMessage::TrackUnpublished {
                    participant: public.clone(),
                    track,
                },
            );
        }
        self.sync_room(now, &room, id);
    }

    /// The participant's socket closed without `leave` (`conn` names the socket, so a socket
    /// that was already replaced changes nothing): it may come back.
    pub fn participant_disconnected(&mut self, now: Instant, pid: ParticipantId, conn: u64) {
        if self.participants.get(&pid).is_some_and(|p| p.conn == conn) {
            self.start_reconnecting(now, pid);
        }
    }

    /// Lost media or socket: the participant is shown as reconnecting until it comes back or
    /// the grace period ends.
    fn start_reconnecting(&mut self, now: Instant, pid: ParticipantId) {
        let grace = self.config.reconnect_grace;
        let Some(p) = self.participants.get_mut(&pid) else {
            return;
        };
        if p.reconnecting.is_some() {
            return;
        }
        p.reconnecting = Some(now + grace);
        info!(participant = %p.public_id, room = %p.room, "participant reconnecting");
        // Its deadline is checked by the housekeeping tick, which may not be running yet.
        self.arm_housekeeping(now);
        let p = &self.participants[&pid];
        let (room, public) = (p.room.clone(), p.public_id.clone());
        self.broadcast(
            &room,
            pid,
            &ServerMessage::ParticipantReconnecting {
                participant: public,
            },
        );
    }

    /// Participants that did not come back in time leave.
    pub(super) fn expire_reconnecting(&mut self, now: Instant) {
        let gone: Vec<ParticipantId> = self
            .participants
            .values()
            .filter(|p| p.reconnecting.is_some_and(|t| t <= now))
            .map(|p| p.id)
            .collect();
        for pid in gone {
            self.leave(now, pid);
        }
    }

    /// After `joined` has reached the client: offer it what it should receive.
    pub fn joined_delivered(&mut self, now: Instant, pid: ParticipantId) {
        self.sync_subscriber(now, pid);
    }

    pub fn participant_publish(
        &mut self,
        now: Instant,
        pid: ParticipantId,
        offer: &Offer,
    ) -> Result<String, SessionError> {
        let p = self.joined(pid)?;
        if !p.grants.publish {
            return Err(SessionError::new(
                403,
                "forbidden",
                "this token does not allow publishing",
            ));
        }
        let room = p.room.clone();
        if p.publisher.is_some() {
            // Publishing again replaces the publishing connection: its tracks end first.
            self.end_media(now, pid, false);
        }
        let max = self.config.limits.max_tracks_per_participant;
        let (sid, created) = self.publish_session(now, &room, offer, max)?;
        if let Some(s) = self.sessions.get_mut(&sid) {
            s.participant = Some(pid);
        }
        if let Some(p) = self.participants.get_mut(&pid) {
            p.publisher = Some(sid);
        }
        let public = self.participants[&pid].public_id.clone();
        for t in self
            .room_tracks(&room)
            .into_iter()
            .filter(|t| t.owner == Some(pid))
        {
            self.broadcast(
                &room,
                pid,
                &ServerMessage::TrackPublished {
                    participant: public.clone(),
                    track: t.info,
                },
            );
        }
        self.sync_room(now, &room, pid);
        Ok(created.answer)
    }

    pub fn participant_subscribe(
        &mut self,
        now: Instant,
        pid: ParticipantId,
        tracks: &[String],
        on: bool,
    ) -> Result<(), SessionError> {
        let p = self.joined(pid)?;
        if !p.grants.subscribe {
            return Err(SessionError::new(
                403,
                "forbidden",
                "this token does not allow subscribing",
            ));
        }
        let known: BTreeSet<String> = self
            .room_tracks(&p.room)
            .into_iter()
            .map(|t| t.info.id)
            .collect();
        if let Some(bad) = tracks.iter().find(|t| on && !known.contains(*t)) {
            return Err(SessionError::new(
                404,
                "no_such_track",
                format!("no track {bad} in this room"),
            ));
        }
        let p = self.participants.get_mut(&pid).expect("checked above");
        for t in tracks {
            if on {
                p.wanted.insert(t.clone());
            } else {
                p.wanted.remove(t);
            }
        }
        // Explicit choices replace the automatic "everything".
        p.auto_subscribe = false;
        self.sync_subscriber(now, pid);
        Ok(())
    }

    /// `pin`: the tracks this participant shows large (replacing the last set). Their video gets
    /// the first share of its link, before the active speaker and presentations.
    pub fn participant_pin(
        &mut self,
        pid: ParticipantId,
        tracks: &[String],
    ) -> Result<(), SessionError> {
        let p = self.joined(pid)?;
        let known: BTreeSet<String> = self
            .room_tracks(&p.room)
            .into_iter()
            .map(|t| t.info.id)
            .collect();
        if let Some(bad) = tracks.iter().find(|t| !known.contains(*t)) {
            return Err(SessionError::new(
                404,
                "no_such_track",
                format!("no track {bad} in this room"),
            ));
        }
        let p = self.participants.get_mut(&pid).expect("checked above");
        p.pinned = tracks.iter().cloned().collect();
        let Some(sid) = p.subscriber else {
            return Ok(());
        };
        let pinned = p.pinned.clone();
        let lines: Vec<(usize, bool)> = self
            .sessions
            .get(&sid)
            .map(|s| {
                s.negotiation
                    .lines
                    .iter()
                    .filter_map(|l| Some((l.relay_index?, pinned.contains(&l.track_id))))
                    .collect()
            })
            .unwrap_or_default();
        for (index, on) in lines {
            self.relay.set_pinned(sid, index, on);
        }
        Ok(())
    }

    pub fn participant_mute(
        &mut self,
        pid: ParticipantId,
        track: &str,
        muted: bool,
    ) -> Result<(), SessionError> {
        let p = self.joined(pid)?;
        let room = p.room.clone();
        let public = p.public_id.clone();
        if !self
            .room_tracks(&room)
            .iter()
            .any(|t| t.owner == Some(pid) && t.info.id == track)
        {
            return Err(SessionError::new(
                404,
                "no_such_track",
                format!("you publish no track {track}"),
            ));
        }
        if let Some(p) = self.participants.get_mut(&pid) {
            p.muted.insert(track.to_owned(), muted);
        }
        self.broadcast(
            &room,
            pid,
            &ServerMessage::Mute {
                participant: public,
                track: track.to_owned(),
                muted,
            },
        );
        Ok(())
    }

    /// The participant leaves (by message, closed socket, or lost media). Idempotent.
    pub fn leave(&mut self, now: Instant, pid: ParticipantId) {
        let Some(p) = self.participants.remove(&pid) else {
            return;
        };
        info!(participant = %p.public_id, room = %p.room, "participant left");
        for sid in [p.publisher, p.subscriber].into_iter().flatten() {
            self.close(now, sid, CloseCause::Participant);
        }
        self.broadcast(
            &p.room,
            pid,
            &ServerMessage::ParticipantLeft {
                participant: p.public_id.clone(),
            },
        );
        self.sync_room(now, &p.room, pid);
    }

    /// A participant's session ended on its own (consent, DTLS close): the others are told.
    pub(super) fn session_closed_for_participant(
        &mut self,
        now: Instant,
        pid: ParticipantId,
        sid: SessionId,
        role: Role,
        cause: CloseCause,
    ) {
        let Some(p) = self.participants.get_mut(&pid) else {
            return;
        };
        match role {
            Role::Publisher if p.publisher == Some(sid) => p.publisher = None,
            Role::Subscriber if p.subscriber == Some(sid) => p.subscriber = None,
            _ => {}
        }
        if cause.ends_participant() {
            // The client is told (it closes the socket and comes back with `resume`); the
            // others see it reconnecting.
            let lost = ServerMessage::Error {
                id: None,
                code: 408,
                reason: "media_lost",
                message: format!("media connection ended: {cause:?}"),
            };
            self.send(pid, lost);
            self.start_reconnecting(now, pid);
        }
    }

    /// Re-syncs every other participant's subscriptions in a room.
    fn sync_room(&mut self, now: Instant, room: &str, except: ParticipantId) {
        let others: Vec<ParticipantId> = self
            .participants
            .values()
            .filter(|p| p.room == room && p.id != except)
            .map(|p| p.id)
            .collect();
        for o in others {
            self.sync_subscriber(now, o);
        }
    }

    /// Brings a participant's subscriber connection in line with what it should receive.
    fn sync_subscriber(&mut self, now: Instant, pid: ParticipantId) {
        let Some(p) = self.participants.get(&pid) else {
            return;
        };
        if !p.grants.subscribe {
            return;
        }
        let room = p.room.clone();
        let desired: Vec<RoomTrack> = self
            .room_tracks(&room)
            .into_iter()
            .filter(|t| t.owner != Some(pid) && (p.auto_subscribe || p.wanted.contains(&t.info.id)))
            .collect();
        // Single-stream AV1 goes with its dependency descriptors (SVC frames need them).
        let with_dd: Vec<bool> = desired
            .iter()
            .map(|d| {
                d.codec.name.eq_ignore_ascii_case("AV1")
                    && self
                        .relay
                        .publisher_tracks(d.source.publisher)
                        .and_then(|mut ts| ts.nth(d.source.track))
                        .is_some_and(|t| t.rids.is_empty())
            })
            .collect();
        let sid = match p.subscriber {
            Some(sid) => sid,
            None if desired.is_empty() => return,
            None => {
                let Ok(mut s) = self.new_session(now, Role::Subscriber, &room, None) else {
                    return;
                };
                s.participant = Some(pid);
                let sid = s.id;
                self.register(s);
                if let Some(p) = self.participants.get_mut(&pid) {
                    p.subscriber = Some(sid);
                }
                sid
            }
        };
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        let neg = &mut s.negotiation;
        let mut removed = Vec::new();
        for i in 0..neg.lines.len() {
            let Some(src) = neg.lines[i].source else {
                continue;
            };
            if !desired.iter().any(|d| d.source == src) {
                removed.extend(neg.end(i));
            }
        }
        // New tracks wait while an offer is outstanding: they come in the next one.
        let rng = &mut self.rng;
        for (d, &dd) in desired.iter().zip(&with_dd) {
            if neg.lines.iter().any(|l| l.source == Some(d.source)) {
                continue;
            }
            if !neg.can_add() {
                neg.dirty = true;
                break;
            }
            let mut codec = d.codec.clone();
            codec.feedback = match d.kind {
                MediaKind::Video => vec![
                    "nack".into(),
                    "nack pli".into(),
                    "ccm fir".into(),
                    "transport-cc".into(),
                ],
                MediaKind::Audio => vec!["transport-cc".into()],
            };
            codec.payload_type = assign_payload_type(&neg.lines, &codec);
            let rtx = (d.kind == MediaKind::Video).then(|| {
                (
                    assign_rtx_payload_type(&neg.lines, codec.payload_type),
                    rng.gen(),
                )
            });
            let red = (d.kind == MediaKind::Audio)
                .then(|| assign_red_payload_type(&neg.lines, codec.payload_type));
            neg.add(SubLine {
                mid: String::new(),
                kind: d.kind,
                source: Some(d.source),
                track_id: d.info.id.clone(),
                stream_id: d.stream_id.clone(),
                ssrc: rng.gen(),
                codec,
                rtx,
                rtx_accepted: false,
                red,
                red_accepted: false,
                ext: subscriber_exts(d.kind, dd),
                relay_index: None,
                accepted: false,
                offered_live: false,
                free: false,
            });
        }
        for i in removed {
            self.relay.remove_viewer_track(sid, i);
        }
        self.offer_if_needed(sid);
    }

    /// Sends a new offer when lines changed and no offer is outstanding.
    fn offer_if_needed(&mut self, sid: SessionId) {
        let Some(s) = self.sessions.get(&sid) else {
            return;
        };
        if !s.negotiation.dirty || s.negotiation.awaiting_answer {
            return;
        }
        let Some(pid) = s.participant else { return };
        if s.negotiation.restart_ice {
            // The remote ufrag comes with the answer (or the first check with the new one).
            self.restart_ice(sid, "", "");
        }
        if let Some(s) = self.sessions.get_mut(&sid) {
            s.negotiation.restart_ice = false;
        }
        let Some(s) = self.sessions.get(&sid) else {
            return;
        };
        let neg = &s.negotiation;
        let lines: Vec<OfferLine> = neg
            .lines
            .iter()
            .enumerate()
            .map(|(i, l)| OfferLine {
                mid: l.mid.clone(),
                kind: l.kind,
                codec: l.codec.clone(),
                ext: l.ext.clone(),
                bundled: neg.state(i) != LineState::Stopped,
                source: l.source.map(|_| Source {
                    ssrc: l.ssrc,
                    cname: format!("volna-{}", l.stream_id),
                    stream_id: l.stream_id.clone(),
                    track_id: l.track_id.clone(),
                    rtx: l.rtx,
                    red: l.red,
                }),
            })
            .collect();
        let tracks: BTreeMap<String, String> = s
            .negotiation
            .lines
            .iter()
            .filter(|l| l.source.is_some())
            .map(|l| (l.mid.clone(), l.track_id.clone()))
            .collect();
        let sdp = build_offer(&self.local(s), neg.version + 1, &lines);
        if let Some(s) = self.sessions.get_mut(&sid) {
            s.negotiation.offered();
        }
        self.send(pid, ServerMessage::Offer { sdp, tracks });
    }

    /// The participant's answer to the subscriber offer.
    pub fn participant_answer(
        &mut self,
        now: Instant,
        pid: ParticipantId,
        sdp: &str,
    ) -> Result<(), SessionError> {
        let p = self.joined(pid)?;
        let sid = p
            .subscriber
            .ok_or_else(|| SessionError::new(409, "no_offer", "no offer is outstanding"))?;
        let answer =
            Offer::parse(sdp).map_err(|e| SessionError::new(400, "bad_sdp", e.to_string()))?;
        let s = self
            .sessions
            .get(&sid)
            .ok_or_else(|| SessionError::new(409, "no_offer", "no offer is outstanding"))?;
        if !s.negotiation.awaiting_answer {
            return Err(SessionError::new(
                409,
                "no_offer",
                "no offer is outstanding",
            ));
        }
        if answer.media.len() != s.negotiation.lines.len()
            || answer
                .media
                .iter()
                .zip(&s.negotiation.lines)
                .any(|(a, l)| a.mid != l.mid)
        {
            return Err(SessionError::new(
                400,
                "bad_sdp",
                "the answer's m-lines do not match the offer",
            ));
        }
        if answer.setup == Setup::Actpass {
            return Err(SessionError::new(
                400,
                "bad_sdp",
                "an answer must say a=setup:active or passive",
            ));
        }
        if !s.remote_ufrag.is_empty() && s.remote_ufrag != answer.ice_ufrag {
            return Err(SessionError::new(
                400,
                "bad_sdp",
                "ICE restarts are not supported",
            ));
        }
        let first = s.dtls.is_none();
        let dtls = if first {
            Some(
                crate::transport::webrtc::dtls::Dtls::new(
                    now,
                    &self.identity,
                    &answer.fingerprint,
                    Remote::of_answer(&answer).dtls_client,
                )
                .map_err(SessionError::internal)?,
            )
        } else {
            None
        };
        let s = self.sessions.get_mut(&sid).expect("looked up above");
        s.remote_ufrag = answer.ice_ufrag.clone();
        s.remote_pwd = answer.ice_pwd.clone();
        if let Some(d) = dtls {
            s.dtls = Some(d);
        }
        for (line, m) in s.negotiation.lines.iter_mut().zip(&answer.media) {
            line.accepted = line.source.is_some()
                && m.active()
                && m.codecs
                    .iter()
                    .any(|c| c.payload_type == line.codec.payload_type);
            line.rtx_accepted = line.accepted
                && line.rtx.is_some_and(|(pt, _)| {
                    OfferedCodec::rtx_for(&m.codecs, line.codec.payload_type) == Some(pt)
                });
            line.red_accepted = line.accepted
                && line.red.is_some_and(|pt| {
                    OfferedCodec::red_for(&m.codecs, line.codec.payload_type) == Some(pt)
                });
        }
        s.negotiation.answered();
        let early = std::mem::take(&mut s.negotiation.early_dtls);
        let remote = s.remote;
        if first {
            self.flush_dtls(sid);
            if let Some(from) = remote {
                for d in early {
                    self.feed_dtls(now, sid, from, &d);
                }
            }
        }
        self.attach_accepted_lines(now, sid);
        // Tracks that came while the offer was out go in the next one.
        self.sync_subscriber(now, pid);
        Ok(())
    }

    /// `restart_ice`: the publishing connection's new offer (new ICE credentials) is answered
    /// with volna's new credentials, and the receiving connection gets an offer that restarts
    /// its ICE too. DTLS and SRTP carry on across the restart.
    pub fn participant_restart_ice(
        &mut self,
        pid: ParticipantId,
        offer: Option<&Offer>,
    ) -> Result<Option<String>, SessionError> {
        let p = self.joined(pid)?;
        let (publisher, subscriber) = (p.publisher, p.subscriber);
        let answer = match offer {
            None => None,
            Some(offer) => {
                let sid = publisher.ok_or_else(|| {
                    SessionError::new(
                        409,
                        "not_publishing",
                        "there is no publishing connection to restart",
                    )
                })?;
                let s = &self.sessions[&sid];
                if offer.ice_ufrag == s.remote_ufrag {
                    return Err(SessionError::new(
                        400,
                        "bad_sdp",
                        "an ICE restart needs new a=ice-ufrag and a=ice-pwd",
                    ));
                }
                let mids = |o: &Offer| o.media.iter().map(|m| m.mid.clone()).collect::<Vec<_>>();
                let before = Offer::parse(&s.answer)
                    .map(|a| mids(&a))
                    .unwrap_or_default();
                if mids(offer) != before {
                    return Err(SessionError::new(
                        400,
                        "bad_sdp",
                        "an ICE restart offer must keep the m-lines; publish again to change them",
                    ));
                }
                let (ufrag, pwd) = self
                    .restart_ice(sid, &offer.ice_ufrag, &offer.ice_pwd)
                    .ok_or_else(|| {
                        SessionError::new(409, "not_publishing", "no publishing connection")
                    })?;
                let s = self.sessions.get_mut(&sid).expect("restarted above");
                s.answer = crate::session::sdp::with_ice_credentials(&s.answer, &ufrag, &pwd);
                Some(s.answer.clone())
            }
        };
        if let Some(sid) = subscriber {
            if let Some(s) = self.sessions.get_mut(&sid) {
                s.negotiation.restart_ice = true;
                s.negotiation.dirty = true;
            }
            self.offer_if_needed(sid);
        }
        Ok(answer)
    }

    /// The client could not apply the outstanding offer. Its receiving connection is replaced:
    /// the old session closes and a new one is offered from scratch (new ICE credentials and
    /// DTLS), which a client can always apply to a new `RTCPeerConnection`.
    pub fn participant_offer_failed(
        &mut self,
        now: Instant,
        pid: ParticipantId,
        reason: &str,
    ) -> Result<(), SessionError> {
        let p = self.joined(pid)?;
        let sid = p
            .subscriber
            .filter(|sid| {
                self.sessions
                    .get(sid)
                    .is_some_and(|s| s.negotiation.awaiting_answer)
            })
            .ok_or_else(|| SessionError::new(409, "no_offer", "no offer is outstanding"))?;
        warn!(participant = %p.public_id, session = sid, reason, "client could not apply an offer: new receiving connection");
        self.close(now, sid, CloseCause::Participant);
        if let Some(p) = self.participants.get_mut(&pid) {
            p.subscriber = None;
        }
        self.sync_subscriber(now, pid);
        Ok(())
    }

    /// Once SRTP is up, accepted lines start forwarding.
    pub(super) fn attach_accepted_lines(&mut self, now: Instant, sid: SessionId) {
        let Some(s) = self.sessions.get(&sid) else {
            return;
        };
        if s.srtp.is_none() {
            return;
        }
        let room = s.room.clone();
        let _ = self.relay.add_viewer(sid, &room);
        let todo: Vec<(usize, ViewerTrackSpec)> = s
            .negotiation
            .lines
            .iter()
            .enumerate()
            .filter(|(_, l)| l.accepted && l.relay_index.is_none())
            .filter_map(|(i, l)| {
                let mut ext = ExtMap::default();
                for (id, uri) in &l.ext {
                    if let Some(k) = ExtKind::from_uri(uri) {
                        ext.insert(*id, k);
                    }
                }
                Some((
                    i,
                    ViewerTrackSpec {
                        source: l.source?,
                        mid: l.mid.clone(),
                        ssrc: l.ssrc,
                        payload_type: l.codec.payload_type,
                        ext,
                        initial_seq: self.rng.gen(),
                        initial_ts: self.rng.gen(),
                        rtx: l.rtx.filter(|_| l.rtx_accepted).map(|(pt, ssrc)| Rtx {
                            payload_type: pt,
                            ssrc,
                        }),
                        red: l.red.filter(|_| l.red_accepted),
                    },
                ))
            })
            .collect();
        let mut failed = false;
        for (line, spec) in todo {
            let (relay, mut out) = self.relay_and_out();
            let r = relay.add_viewer_track(now, sid, spec, &mut out);
            let Some(s) = self.sessions.get_mut(&sid) else {
                continue;
            };
            let neg = &mut s.negotiation;
            match r {
                Ok(idx) => {
                    let l = &mut neg.lines[line];
                    l.relay_index = Some(idx);
                    let track_id = l.track_id.clone();
                    let pinned = self
                        .sessions
                        .get(&sid)
                        .and_then(|s| s.participant)
                        .and_then(|pid| self.participants.get(&pid))
                        .is_some_and(|p| p.pinned.contains(&track_id));
                    if pinned {
                        self.relay.set_pinned(sid, idx, true);
                    }
                }
                Err(_) => {
                    // Its publisher left meanwhile.
                    neg.end(line);
                    failed = true;
                }
            }
        }
        if failed {
            self.offer_if_needed(sid);
        }
    }

    /// The relay ended some of a subscriber's tracks (their publisher left).
    pub(super) fn tracks_ended(&mut self, _now: Instant, sid: SessionId, indices: &[usize]) {
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        let neg = &mut s.negotiation;
        for i in 0..neg.lines.len() {
            if neg.lines[i]
                .relay_index
                .is_some_and(|r| indices.contains(&r))
            {
                neg.end(i);
            }
        }
        self.offer_if_needed(sid);
    }

    /// Relay events to participants: active speaker changes, simulcast layers needed.
    pub(super) fn drain_relay_events(&mut self) {
        while let Some(ev) = self.relay.poll_event() {
            match ev {
                RelayEvent::ActiveSpeaker { room, publisher } => {
                    let who = publisher
                        .and_then(|sid| {
                            self.participants
                                .values()
                                .find(|p| p.publisher == Some(sid))
                        })
                        .map(|p| p.public_id.clone());
                    if publisher.is_some() && who.is_none() {
                        continue; // a WHIP publisher, not a participant
                    }
                    self.broadcast(&room, 0, &ServerMessage::ActiveSpeaker { participant: who });
                }
                RelayEvent::Layers {
                    publisher,
                    track,
                    active,
                } => {
                    // Only participants hear of it: WHIP has no channel back to its publisher.
                    let Some(p) = self
                        .participants
                        .values()
                        .find(|p| p.publisher == Some(publisher))
                    else {
                        continue;
                    };
                    let Some((_, _, mid)) = self
                        .sessions
                        .get(&publisher)
                        .and_then(|s| s.published.get(track))
                    else {
                        continue;
                    };
                    let Some(spec) = self
                        .relay
                        .publisher_tracks(publisher)
                        .and_then(|mut t| t.nth(track))
                    else {
                        continue;
                    };
                    let active = spec
                        .rids
                        .iter()
                        .take(crate::core::room::alloc::MAX_LAYERS)
                        .enumerate()
                        .filter(|(i, _)| active & (1 << i) != 0)
                        .map(|(_, rid)| rid.clone())
                        .collect();
                    let msg = ServerMessage::Layers {
                        track: format!("{}-{mid}", p.public_id),
                        active,
                    };
                    self.outbox.push_back((p.id, msg));
                }
            }
        }
    }
}

/// Whether a payload type is in use by a line of the bundle (its codec, RTX or RED).
fn pt_taken(lines: &[SubLine], pt: u8) -> bool {
    lines.iter().any(|l| {
        l.codec.payload_type == pt || l.rtx.is_some_and(|(r, _)| r == pt) || l.red == Some(pt)
    })
}

/// A payload type for a format that wraps `apt` (RTX or RED): the one lines with that codec
/// already use, else a free one.
fn assign_wrapper_payload_type(
    lines: &[SubLine],
    apt: u8,
    of: impl Fn(&SubLine) -> Option<u8>,
) -> u8 {
    if let Some(pt) = lines
        .iter()
        .filter(|l| l.codec.payload_type == apt)
        .find_map(of)
    {
        return pt;
    }
    (96..=127)
        .chain(35..=63)
        .find(|&pt| !pt_taken(lines, pt) && pt != apt)
        .unwrap_or(127)
}

/// The RTX payload type for a codec's payload type: the one already used with it in this bundle,
/// else one no line uses.
fn assign_rtx_payload_type(lines: &[SubLine], apt: u8) -> u8 {
    assign_wrapper_payload_type(lines, apt, |l| l.rtx.map(|(pt, _)| pt))
}

/// The RED payload type for an audio codec's payload type, chosen as for RTX.
fn assign_red_payload_type(lines: &[SubLine], apt: u8) -> u8 {
    assign_wrapper_payload_type(lines, apt, |l| l.red)
}

/// A payload type for `codec` that no other m-line of the bundle uses for something else.
fn assign_payload_type(lines: &[SubLine], codec: &OfferedCodec) -> u8 {
    let same = |l: &SubLine| {
        l.codec.name.eq_ignore_ascii_case(&codec.name)
            && l.codec.clock_rate == codec.clock_rate
            && l.codec.fmtp == codec.fmtp
    };
    if let Some(l) = lines.iter().find(|l| same(l)) {
        return l.codec.payload_type;
    }
    if !pt_taken(lines, codec.payload_type) {
        return codec.payload_type;
    }
    (96..=127)
        .chain(35..=63)
        .find(|&pt| !pt_taken(lines, pt))
        .unwrap_or(codec.payload_type)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(pt: u8, name: &str, rtx: Option<u8>) -> SubLine {
        SubLine {
            mid: "0".into(),
            kind: MediaKind::Video,
            source: None,
            track_id: String::new(),
            stream_id: String::new(),
            ssrc: 1,
            codec: OfferedCodec {
                payload_type: pt,
                codec: None,
                name: name.into(),
                clock_rate: 90000,
                channels: String::new(),
                fmtp: String::new(),
                feedback: Vec::new(),
            },
            rtx: rtx.map(|r| (r, 2)),
            rtx_accepted: false,
            red: None,
            red_accepted: false,
            ext: Vec::new(),
            relay_index: None,
            accepted: false,
            offered_live: false,
            free: false,
        }
    }

    /// In one bundle a payload type means one thing: RTX types are shared by lines of the same
    /// codec and kept apart from every codec's and every other RTX type.
    #[test]
    fn rtx_payload_types_table() {
        let cases: Vec<(&str, Vec<SubLine>, u8, u8)> = vec![
            ("first line", vec![], 96, 97),
            (
                "same codec shares",
                vec![line(96, "VP8", Some(100))],
                96,
                100,
            ),
            (
                "another codec gets its own",
                vec![line(96, "VP8", Some(97)), line(98, "H264", None)],
                98,
                99,
            ),
            (
                "skips codecs and RTX types in use",
                vec![line(96, "VP8", Some(97)), line(98, "VP9", Some(99))],
                100,
                101,
            ),
        ];
        for (name, lines, apt, want) in cases {
            assert_eq!(assign_rtx_payload_type(&lines, apt), want, "{name}");
        }
        // A codec added later does not take a type an RTX stream already has.
        let lines = vec![line(96, "VP8", Some(97))];
        let mut h264 = line(97, "H264", None).codec;
        h264.payload_type = 97;
        assert_ne!(assign_payload_type(&lines, &h264), 97);
    }
}
