//! What the server API (`signal::api`) sees of one worker's rooms and does to them: the rooms
//! with how many are in each; one room in detail (participants and WHIP/QUIC publishers with
//! their tracks, viewers with their estimates, the room's metadata); and a moderator's acts:
//! remove someone, mute a track (the relay stops forwarding it), close a room, set the room's
//! metadata. Participants are told of each act as of any other change in their room.

use std::collections::BTreeSet;
use std::time::Instant;

use serde::Serialize;
use serde_json::Value;
use tracing::info;

use super::conference::kind_str;
use super::connection::Role;
use super::protocol::ServerMessage;
use super::shard::{CloseCause, Shard};
use super::SessionError;

/// Largest room metadata, as JSON text.
pub const MAX_METADATA_BYTES: usize = 4096;

#[derive(Debug)]
pub enum Request {
    Rooms,
    Room {
        room: String,
    },
    Remove {
        room: String,
        id: String,
    },
    Mute {
        room: String,
        track: String,
        muted: bool,
    },
    Close {
        room: String,
    },
    Metadata {
        room: String,
        metadata: Value,
    },
}

#[derive(Debug)]
pub enum Response {
    Rooms(Vec<RoomSummary>),
    Room(RoomDetail),
    Done,
}

#[derive(Debug, Serialize)]
pub struct RoomSummary {
    pub name: String,
    /// Room-protocol participants, and WHIP or QUIC publishers (each shown as one).
    pub participants: usize,
    /// Viewers outside the room protocol (WHEP, QUIC subscribers).
    pub viewers: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Value>,
}

#[derive(Debug, Serialize)]
pub struct RoomDetail {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Value>,
    pub participants: Vec<Member>,
    pub viewers: Vec<ViewerInfo>,
}

#[derive(Debug, Serialize)]
pub struct Member {
    pub id: String,
    pub identity: String,
    pub name: String,
    /// `room` (the room protocol), `whip` or `quic`.
    pub kind: &'static str,
    pub reconnecting: bool,
    pub tracks: Vec<ApiTrack>,
    /// Its receiving connection's bandwidth estimate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub estimate_kbps: Option<u64>,
}

#[derive(Debug, Serialize)]
pub struct ApiTrack {
    pub id: String,
    pub kind: &'static str,
    pub codec: String,
    /// Muted by its publisher or by the server.
    pub muted: bool,
    /// Muted with this API: not forwarded to anyone.
    pub muted_by_server: bool,
    /// Simulcast layers (RIDs); empty for a single stream.
    pub layers: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<&'static str>,
}

#[derive(Debug, Serialize)]
pub struct ViewerInfo {
    pub id: String,
    /// `whep` or `quic`.
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub estimate_kbps: Option<u64>,
}

fn no_room(room: &str) -> SessionError {
    SessionError::new(404, "no_room", format!("no room {room} on this node"))
}

impl Shard {
    pub fn admin(&mut self, now: Instant, req: Request) -> Result<Response, SessionError> {
        match req {
            Request::Rooms => Ok(Response::Rooms(self.rooms())),
            Request::Room { room } => self.room(&room).map(Response::Room),
            Request::Remove { room, id } => self.remove(now, &room, &id).map(|_| Response::Done),
            Request::Mute { room, track, muted } => {
                self.server_mute(now, &room, &track, muted)?;
                Ok(Response::Done)
            }
            Request::Close { room } => self.close_room(now, &room).map(|_| Response::Done),
            Request::Metadata { room, metadata } => {
                self.set_metadata(&room, metadata)?;
                Ok(Response::Done)
            }
        }
    }

    /// Whether anyone is in `room` on this worker (a participant, or a session of any kind).
    pub(super) fn room_exists(&self, room: &str) -> bool {
        self.participants.values().any(|p| p.room == room)
            || self.sessions.values().any(|s| s.room == room)
    }

    fn rooms(&self) -> Vec<RoomSummary> {
        let names: BTreeSet<&str> = self
            .participants
            .values()
            .map(|p| p.room.as_str())
            .chain(self.sessions.values().map(|s| s.room.as_str()))
            .collect();
        names
            .into_iter()
            .map(|name| {
                let standalone = |role: Role| {
                    self.sessions
                        .values()
                        .filter(|s| s.room == name && s.participant.is_none() && s.role == role)
                        .count()
                };
                RoomSummary {
                    name: name.to_owned(),
                    participants: self
                        .participants
                        .values()
                        .filter(|p| p.room == name)
                        .count()
                        + standalone(Role::Publisher),
                    viewers: standalone(Role::Viewer),
                    metadata: self.metadata.get(name).cloned(),
                }
            })
            .collect()
    }

    fn room(&self, room: &str) -> Result<RoomDetail, SessionError> {
        if !self.room_exists(room) {
            return Err(no_room(room));
        }
        let tracks = self.room_tracks(room);
        let api_tracks = |owner: &str| -> Vec<ApiTrack> {
            tracks
                .iter()
                .filter(|t| t.stream_id == owner)
                .map(|t| {
                    let spec = self
                        .relay
                        .publisher_tracks(t.source.publisher)
                        .and_then(|mut specs| specs.nth(t.source.track).cloned());
                    ApiTrack {
                        id: t.info.id.clone(),
                        kind: kind_str(t.kind),
                        codec: t.codec.name.clone(),
                        muted: t.info.muted,
                        muted_by_server: self
                            .relay
                            .track_is_blocked(t.source.publisher, t.source.track),
                        layers: spec.map(|s| s.rids).unwrap_or_default(),
                        content: t.info.content,
                    }
                })
                .collect()
        };
        let estimate = |sid| self.relay.viewer_estimate(sid).map(|(bps, _)| bps / 1000);
        let mut members: Vec<Member> = self
            .participants
            .values()
            .filter(|p| p.room == room)
            .map(|p| Member {
                id: p.public_id.clone(),
                identity: p.identity.clone(),
                name: p.name.clone(),
                kind: "room",
                reconnecting: p.reconnecting.is_some(),
                tracks: api_tracks(&p.public_id),
                estimate_kbps: p.subscriber.and_then(estimate),
            })
            .collect();
        for s in self.room_publishers_without_participant(room) {
            let info = self.publisher_info(s);
            members.push(Member {
                id: info.id,
                identity: info.identity,
                name: info.name,
                kind: if s.quic_flow.is_some() {
                    "quic"
                } else {
                    "whip"
                },
                reconnecting: false,
                tracks: api_tracks(&s.public_id),
                estimate_kbps: None,
            });
        }
        members.sort_by(|a, b| a.id.cmp(&b.id));
        let mut viewers: Vec<ViewerInfo> = self
            .sessions
            .values()
            .filter(|s| s.room == room && s.participant.is_none() && s.role == Role::Viewer)
            .map(|s| ViewerInfo {
                id: s.public_id.clone(),
                kind: if s.quic_flow.is_some() {
                    "quic"
                } else {
                    "whep"
                },
                estimate_kbps: estimate(s.id),
            })
            .collect();
        viewers.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(RoomDetail {
            name: room.to_owned(),
            metadata: self.metadata.get(room).cloned(),
            participants: members,
            viewers,
        })
    }

    /// Removes a participant (told with `410 removed`, then gone as if it had left) or ends a
    /// WHIP, WHEP or QUIC session, by its public id.
    fn remove(&mut self, now: Instant, room: &str, id: &str) -> Result<(), SessionError> {
        if let Some(pid) = self
            .participants
            .values()
            .find(|p| p.room == room && p.public_id == id)
            .map(|p| p.id)
        {
            info!(
                participant = id,
                room, "participant removed by the server API"
            );
            self.send(pid, gone("removed", "removed from the room by the server"));
            self.leave(now, pid);
            return Ok(());
        }
        let sid = self
            .sessions
            .values()
            .find(|s| s.room == room && s.participant.is_none() && s.public_id == id)
            .map(|s| s.id)
            .ok_or_else(|| {
                SessionError::new(404, "no_participant", format!("no {id} in room {room}"))
            })?;
        self.close(now, sid, CloseCause::Removed);
        self.room_may_have_ended(room);
        Ok(())
    }

    /// Mutes (or unmutes) a track for everyone: the relay stops forwarding it, and the room,
    /// its publisher included, gets a `mute` message.
    fn server_mute(
        &mut self,
        now: Instant,
        room: &str,
        track: &str,
        muted: bool,
    ) -> Result<(), SessionError> {
        let t = self
            .room_tracks(room)
            .into_iter()
            .find(|t| t.info.id == track)
            .ok_or_else(|| {
                SessionError::new(404, "no_such_track", format!("no track {track} in {room}"))
            })?;
        {
            let (relay, mut out) = self.relay_and_out();
            relay.set_blocked(now, t.source.publisher, t.source.track, muted, &mut out);
        }
        info!(track, room, muted, "track muted by the server API");
        let own = t
            .owner
            .and_then(|pid| self.participants.get(&pid))
            .is_some_and(|p| p.muted.get(track).copied().unwrap_or(false));
        self.broadcast(
            room,
            0,
            &ServerMessage::Mute {
                participant: t.stream_id,
                track: track.to_owned(),
                muted: muted || own,
            },
        );
        Ok(())
    }

    /// Ends everything in a room: participants are told `410 room_closed`, sessions end.
    fn close_room(&mut self, now: Instant, room: &str) -> Result<(), SessionError> {
        if !self.room_exists(room) {
            return Err(no_room(room));
        }
        info!(room, "room closed by the server API");
        let pids: Vec<_> = self
            .participants
            .values()
            .filter(|p| p.room == room)
            .map(|p| p.id)
            .collect();
        for pid in pids {
            self.send(
                pid,
                gone("room_closed", "the room was closed by the server"),
            );
            self.leave(now, pid);
        }
        let sids: Vec<_> = self
            .sessions
            .values()
            .filter(|s| s.room == room)
            .map(|s| s.id)
            .collect();
        for sid in sids {
            self.close(now, sid, CloseCause::Removed);
        }
        self.metadata.remove(room);
        Ok(())
    }

    /// Sets a room's metadata (any JSON value; `null` clears it); participants get
    /// `room_metadata`, and later ones find it in `joined`.
    fn set_metadata(&mut self, room: &str, metadata: Value) -> Result<(), SessionError> {
        if !self.room_exists(room) {
            return Err(no_room(room));
        }
        if metadata.is_null() {
            self.metadata.remove(room);
        } else {
            self.metadata.insert(room.to_owned(), metadata.clone());
        }
        self.broadcast(room, 0, &ServerMessage::RoomMetadata { metadata });
        Ok(())
    }
}

/// The last message a participant gets when the server ends it (its socket closes after it).
fn gone(reason: &'static str, message: &str) -> ServerMessage {
    ServerMessage::Error {
        id: None,
        code: 410,
        reason,
        message: message.to_owned(),
    }
}
