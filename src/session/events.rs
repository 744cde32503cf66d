//! Room events for the messenger's backend (webhooks, `signal::webhook`): a room starting and
//! finishing on this worker, members joining and leaving (room participants, WHIP and QUIC
//! publishers), tracks published and unpublished. The shard notes them as they happen, in order,
//! only when `ShardConfig::room_events` is on; the worker takes them with
//! [`Shard::poll_room_event`]. Ids and times are added where they are sent.

use serde::Serialize;

use super::conference::kind_str;
use super::connection::Session;
use super::sdp::OfferedCodec;
use super::shard::Shard;
use crate::core::room::MediaKind;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Member {
    pub id: String,
    pub identity: String,
    pub name: String,
    /// `room` (the room protocol), `whip` or `quic`.
    pub kind: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Track {
    pub id: String,
    pub kind: &'static str,
    pub codec: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum RoomEvent {
    RoomStarted {
        room: String,
    },
    RoomFinished {
        room: String,
    },
    ParticipantJoined {
        room: String,
        participant: Member,
    },
    ParticipantLeft {
        room: String,
        participant: Member,
    },
    TrackPublished {
        room: String,
        participant: String,
        track: Track,
    },
    TrackUnpublished {
        room: String,
        participant: String,
        track: String,
    },
}

/// A WHIP or QUIC publisher as a member of its room.
pub(super) fn standalone(s: &Session) -> Member {
    if let Some(o) = &s.origin {
        return Member {
            id: s.public_id.clone(),
            identity: o.identity.clone(),
            name: o.name.clone(),
            kind: "relay",
        };
    }
    let (kind, name) = if s.quic_flow.is_some() {
        ("quic", "QUIC publisher")
    } else {
        ("whip", "WHIP publisher")
    };
    Member {
        id: s.public_id.clone(),
        identity: kind.into(),
        name: name.into(),
        kind,
    }
}

impl Shard {
    /// The next room event, if any. Poll after each call that may produce one.
    pub fn poll_room_event(&mut self) -> Option<RoomEvent> {
        self.room_events.pop_front()
    }

    pub(super) fn room_event(&mut self, e: RoomEvent) {
        if self.config.room_events {
            self.room_events.push_back(e);
        }
    }

    /// Someone is about to be in `room`: `room_started` when nobody was.
    pub(super) fn room_in_use(&mut self, room: &str) {
        if self.config.room_events && !self.live_rooms.contains(room) {
            self.live_rooms.insert(room.to_owned());
            self.room_event(RoomEvent::RoomStarted {
                room: room.to_owned(),
            });
        }
    }

    /// After someone left `room`: once nobody is in it, its metadata is forgotten and
    /// `room_finished` noted.
    pub(super) fn room_may_have_ended(&mut self, room: &str) {
        let tracked = self.metadata.contains_key(room) || self.live_rooms.contains(room);
        if !tracked || self.room_exists(room) {
            return;
        }
        self.metadata.remove(room);
        if self.live_rooms.remove(room) {
            self.room_event(RoomEvent::RoomFinished {
                room: room.to_owned(),
            });
        }
    }

    /// `track_published` (or unpublished) for each of `tracks`, published by `owner` in `room`.
    pub(super) fn tracks_event(
        &mut self,
        room: &str,
        owner: &str,
        tracks: &[(MediaKind, OfferedCodec, String)],
        published: bool,
    ) {
        if !self.config.room_events {
            return;
        }
        for (kind, codec, mid) in tracks {
            let id = format!("{owner}-{mid}");
            let (room, participant) = (room.to_owned(), owner.to_owned());
            self.room_events.push_back(if published {
                RoomEvent::TrackPublished {
                    room,
                    participant,
                    track: Track {
                        id,
                        kind: kind_str(*kind),
                        codec: codec.name.clone(),
                    },
                }
            } else {
                RoomEvent::TrackUnpublished {
                    room,
                    participant,
                    track: id,
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_serialize_with_their_name() {
        let e = RoomEvent::TrackPublished {
            room: "r".into(),
            participant: "p".into(),
            track: Track {
                id: "p-0".into(),
                kind: kind_str(MediaKind::Audio),
                codec: "opus".into(),
            },
        };
        assert_eq!(
            serde_json::to_value(&e).unwrap(),
            serde_json::json!({"event": "track_published", "room": "r", "participant": "p",
                "track": {"id": "p-0", "kind": "audio", "codec": "opus"}})
        );
    }
}
