//! Room participants (the WebSocket room protocol, docs/protocol.md): each has a publisher
//! connection it offers, and a subscriber connection volna offers, renegotiated as tracks come
//! and go. Events (joins, leaves, tracks, mutes, active speaker) for each participant wait in
//! the shard's outbox ([`Shard::poll_message`]) for the worker to pass to its socket.

use std::collections::{BTreeSet, HashMap};
use std::time::Instant;

use tracing::info;

use super::connection::{ParticipantId, Role};
use super::error::SessionError;
use super::events::{Member, RoomEvent};
use super::participant::{JoinRequest, Participant};
use super::shard::{CloseCause, Shard};
use crate::core::room::{MediaKind, RelayEvent, SessionId, TrackRef};
use crate::session::protocol::{GrantsInfo, ParticipantInfo, ServerMessage, TrackInfo, VERSION};
use crate::session::sdp::{Offer, OfferedCodec};

/// A published track as the room sees it.
pub(super) struct RoomTrack {
    /// `None` for a publisher without a room connection (WHIP, QUIC).
    pub owner: Option<ParticipantId>,
    pub info: TrackInfo,
    pub source: TrackRef,
    pub kind: MediaKind,
    pub codec: OfferedCodec,
    pub stream_id: String,
}

/// A room participant as a member in room events.
fn member(p: &Participant) -> Member {
    Member {
        id: p.public_id.clone(),
        identity: p.identity.clone(),
        name: p.name.clone(),
        kind: "room",
    }
}

pub(super) fn kind_str(k: MediaKind) -> &'static str {
    match k {
        MediaKind::Audio => "audio",
        MediaKind::Video => "video",
    }
}

impl Shard {
    /// The participant a request comes from, or the refusal for a socket that has not joined.
    pub(super) fn joined(&self, pid: ParticipantId) -> Result<&Participant, SessionError> {
        self.participants
            .get(&pid)
            .ok_or_else(|| SessionError::new(409, "not_joined", "join a room first"))
    }

    pub(super) fn send(&mut self, pid: ParticipantId, msg: ServerMessage) {
        if self.participants.contains_key(&pid) {
            self.outbox.push_back((pid, msg));
        }
    }

    pub(super) fn broadcast(&mut self, room: &str, except: ParticipantId, msg: &ServerMessage) {
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

    pub(super) fn room_tracks(&self, room: &str) -> Vec<RoomTrack> {
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
                        muted: p.muted.get(&id).copied().unwrap_or(false)
                            || self.relay.track_is_blocked(s.id, i),
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
                        muted: self.relay.track_is_blocked(s.id, i),
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
    pub(super) fn room_publishers_without_participant<'a>(
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

    pub(super) fn publisher_info(&self, s: &super::connection::Session) -> ParticipantInfo {
        let m = super::events::standalone(s);
        ParticipantInfo {
            id: m.id,
            identity: m.identity,
            name: m.name,
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
        let (member, public, published) = (
            super::events::standalone(s),
            s.public_id.clone(),
            s.published.clone(),
        );
        self.room_event(RoomEvent::ParticipantJoined {
            room: room.clone(),
            participant: member,
        });
        self.tracks_event(&room, &public, &published, true);
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

    pub(super) fn info(&self, pid: ParticipantId) -> Option<ParticipantInfo> {
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
        if req.only_resume {
            return Err(SessionError::new(
                409,
                "not_resumable",
                "no participant to take back with this resume secret",
            ));
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
        self.room_in_use(room);
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
        let member = member(&p);
        self.participants.insert(id, p);
        self.room_event(RoomEvent::ParticipantJoined {
            room: room.to_owned(),
            participant: member,
        });
        let me = self.info(id).expect("just inserted");
        self.broadcast(
            room,
            id,
            &ServerMessage::ParticipantJoined { participant: me },
        );
        Ok((id, self.joined_message(id, false)))
    }

    /// The `joined` reply for a participant: itself, the others in join order, the speaker.
    pub(super) fn joined_message(&self, id: ParticipantId, resumed: bool) -> ServerMessage {
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
            .and_then(|sid| self.speaker_id(sid));
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
            metadata: self.metadata.get(room).cloned(),
            fallbacks: Vec::new(),
            ice_servers: Vec::new(),
        }
    }

    /// A new socket takes over a participant (`join` with its `resume` secret): its old media
    /// connections end (the client makes new ones and publishes again), and the others see it
    /// come back rather than leave and join.
    pub(super) fn resume(&mut self, now: Instant, id: ParticipantId, req: &JoinRequest) {
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
    pub(super) fn end_media(&mut self, now: Instant, id: ParticipantId, subscriber: bool) {
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
    pub(super) fn start_reconnecting(&mut self, now: Instant, pid: ParticipantId) {
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
        let published = self.sessions.get(&sid).map(|s| s.published.clone());
        self.tracks_event(&room, &public, &published.unwrap_or_default(), true);
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
        let Some(source) = self
            .room_tracks(&room)
            .iter()
            .find(|t| t.owner == Some(pid) && t.info.id == track)
            .map(|t| t.source)
        else {
            return Err(SessionError::new(
                404,
                "no_such_track",
                format!("you publish no track {track}"),
            ));
        };
        if let Some(p) = self.participants.get_mut(&pid) {
            p.muted.insert(track.to_owned(), muted);
        }
        // A track the server muted stays muted for the others whatever its owner says.
        let blocked = self.relay.track_is_blocked(source.publisher, source.track);
        self.broadcast(
            &room,
            pid,
            &ServerMessage::Mute {
                participant: public,
                track: track.to_owned(),
                muted: muted || blocked,
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
        let published = p
            .publisher
            .and_then(|sid| self.sessions.get(&sid))
            .map(|s| s.published.clone());
        self.tracks_event(&p.room, &p.public_id, &published.unwrap_or_default(), false);
        self.room_event(RoomEvent::ParticipantLeft {
            room: p.room.clone(),
            participant: member(&p),
        });
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
        self.room_may_have_ended(&p.room);
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

    /// The id the room shows for publisher session `sid`: its participant's, or for a WHIP,
    /// QUIC or relayed publisher (a participant of its own in the room) its publisher id.
    fn speaker_id(&self, sid: crate::core::room::SessionId) -> Option<String> {
        match self
            .participants
            .values()
            .find(|p| p.publisher == Some(sid))
        {
            Some(p) => Some(p.public_id.clone()),
            None => self.sessions.get(&sid).map(|s| s.public_id.clone()),
        }
    }

    /// Relay events to participants: active speaker changes, simulcast layers needed.
    pub(super) fn drain_relay_events(&mut self) {
        while let Some(ev) = self.relay.poll_event() {
            match ev {
                RelayEvent::ActiveSpeaker { room, publisher } => {
                    let who = publisher.and_then(|sid| self.speaker_id(sid));
                    if publisher.is_some() && who.is_none() {
                        continue; // already gone
                    }
                    self.broadcast(&room, 0, &ServerMessage::ActiveSpeaker { participant: who });
                }
                RelayEvent::Layers {
                    publisher,
                    track,
                    active,
                } => {
                    if self
                        .sessions
                        .get(&publisher)
                        .is_some_and(|s| s.origin.is_some())
                    {
                        // A relayed publisher's relay link tells the origin.
                        self.note_link_layers(publisher, track, active);
                        continue;
                    }
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
