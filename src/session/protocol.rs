//! The room protocol's messages (docs/protocol.md): JSON objects over a WebSocket, one per text
//! frame, tagged by `type`. Version 1.

use serde::{Deserialize, Serialize};

pub const VERSION: u32 = 1;

/// What a client sends.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientMessage {
    Join {
        #[serde(default)]
        id: Option<serde_json::Value>,
        v: u32,
        room: String,
        #[serde(default)]
        name: Option<String>,
        #[serde(default)]
        token: Option<String>,
        #[serde(default = "yes")]
        auto_subscribe: bool,
        /// The `resume` secret of an earlier `joined`: come back as the same participant.
        #[serde(default)]
        resume: Option<String>,
    },
    Publish {
        #[serde(default)]
        id: Option<serde_json::Value>,
        sdp: String,
    },
    Answer {
        #[serde(default)]
        id: Option<serde_json::Value>,
        sdp: String,
    },
    /// ICE restart: `sdp` is a new offer for the publishing connection with new ICE credentials
    /// (answered with `publish_answer`); the receiving connection restarts too (a new `offer`).
    RestartIce {
        #[serde(default)]
        id: Option<serde_json::Value>,
        #[serde(default)]
        sdp: Option<String>,
    },
    /// The client could not apply the latest `offer`: the server starts a new receiving
    /// connection and offers it.
    OfferFailed {
        #[serde(default)]
        id: Option<serde_json::Value>,
        #[serde(default)]
        reason: Option<String>,
    },
    Subscribe {
        #[serde(default)]
        id: Option<serde_json::Value>,
        tracks: Vec<String>,
    },
    Unsubscribe {
        #[serde(default)]
        id: Option<serde_json::Value>,
        tracks: Vec<String>,
    },
    Mute {
        #[serde(default)]
        id: Option<serde_json::Value>,
        track: String,
        muted: bool,
    },
    /// The tracks this client shows large: their video goes first when its link is short.
    Pin {
        #[serde(default)]
        id: Option<serde_json::Value>,
        tracks: Vec<String>,
    },
    Leave {
        #[serde(default)]
        id: Option<serde_json::Value>,
    },
    Ping {
        #[serde(default)]
        id: Option<serde_json::Value>,
    },
}

fn yes() -> bool {
    true
}

impl ClientMessage {
    pub fn request_id(&self) -> Option<serde_json::Value> {
        match self {
            ClientMessage::Join { id, .. }
            | ClientMessage::Publish { id, .. }
            | ClientMessage::Answer { id, .. }
            | ClientMessage::OfferFailed { id, .. }
            | ClientMessage::RestartIce { id, .. }
            | ClientMessage::Subscribe { id, .. }
            | ClientMessage::Unsubscribe { id, .. }
            | ClientMessage::Mute { id, .. }
            | ClientMessage::Pin { id, .. }
            | ClientMessage::Leave { id }
            | ClientMessage::Ping { id } => id.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TrackInfo {
    pub id: String,
    pub kind: &'static str,
    pub muted: bool,
    /// "slides" for a presentation (a screen share: RFC 4796 `a=content:slides` in the offer).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<&'static str>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct GrantsInfo {
    pub publish: bool,
    pub subscribe: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ParticipantInfo {
    pub id: String,
    pub identity: String,
    pub name: String,
    pub tracks: Vec<TrackInfo>,
    /// Its media or socket was lost and it has not come back yet.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub reconnecting: bool,
}

/// One ICE server in `joined` (the shape of WebRTC's `RTCIceServer`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IceServerInfo {
    pub urls: Vec<String>,
    pub username: String,
    pub credential: String,
}

/// What the server sends.
// `Joined` is the large one; a message lives only until it is serialized.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    Joined {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<serde_json::Value>,
        v: u32,
        room: String,
        participant: ParticipantInfo,
        participants: Vec<ParticipantInfo>,
        #[serde(skip_serializing_if = "Option::is_none")]
        active_speaker: Option<String>,
        /// Give it back in `join` to return as this participant after a lost connection.
        resume: String,
        /// This join resumed an earlier participant (same id): its tracks are to be published
        /// again.
        resumed: bool,
        /// What the token allows: a participant that may not publish joins to watch only.
        grants: GrantsInfo,
        /// The room's metadata, set with the server API.
        #[serde(skip_serializing_if = "Option::is_none")]
        metadata: Option<serde_json::Value>,
        /// Other nodes' room-protocol URLs to reconnect to (with `resume`) should this node be
        /// lost; absent without a cluster.
        #[serde(skip_serializing_if = "Vec::is_empty")]
        fallbacks: Vec<String>,
        /// The node's TURN server for the peer connections, with credentials for this
        /// participant (`RTCIceServer` entries); absent without one.
        #[serde(skip_serializing_if = "Vec::is_empty")]
        ice_servers: Vec<IceServerInfo>,
    },
    /// The room's metadata changed (server API); `null` when cleared.
    RoomMetadata {
        metadata: serde_json::Value,
    },
    ParticipantJoined {
        participant: ParticipantInfo,
    },
    ParticipantLeft {
        participant: String,
    },
    /// Its media or socket was lost; it stays in the room for `reconnect_secs` (10 s) and either
    /// comes back (`participant_reconnected`) or leaves (`participant_left`).
    ParticipantReconnecting {
        participant: String,
    },
    ParticipantReconnected {
        participant: String,
    },
    TrackPublished {
        participant: String,
        track: TrackInfo,
    },
    TrackUnpublished {
        participant: String,
        track: String,
    },
    Mute {
        participant: String,
        track: String,
        muted: bool,
    },
    ActiveSpeaker {
        participant: Option<String>,
    },
    /// To a publisher: the simulcast layers (RIDs) of one of its tracks that viewers need now;
    /// it may stop encoding the others until they are listed again.
    Layers {
        track: String,
        active: Vec<String>,
    },
    /// The subscriber connection's offer; `tracks` maps each live mid to its track id.
    Offer {
        sdp: String,
        tracks: std::collections::BTreeMap<String, String>,
    },
    PublishAnswer {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<serde_json::Value>,
        sdp: String,
    },
    Ok {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<serde_json::Value>,
    },
    Pong {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<serde_json::Value>,
    },
    /// The answer to a `join` this node does not take (it is draining or full): join at `url`
    /// instead. The server closes the socket after it.
    Redirect {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<serde_json::Value>,
        url: String,
        node: String,
    },
    Error {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<serde_json::Value>,
        code: u16,
        reason: &'static str,
        message: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_client_messages() {
        let cases = [
            (r#"{"type":"join","v":1,"room":"r"}"#, true),
            (
                r#"{"type":"join","v":1,"room":"r","token":"t","name":"A","auto_subscribe":false,"id":5}"#,
                true,
            ),
            (r#"{"type":"publish","sdp":"v=0"}"#, true),
            (r#"{"type":"mute","track":"a","muted":true}"#, true),
            (r#"{"type":"pin","id":9,"tracks":["p-1"]}"#, true),
            (r#"{"type":"pin","tracks":[]}"#, true),
            (r#"{"type":"pin","tracks":"p-1"}"#, false),
            (r#"{"type":"pin"}"#, false),
            (r#"{"type":"ping"}"#, true),
            (r#"{"type":"join","room":"r"}"#, false),
            (r#"{"type":"fly"}"#, false),
            (r#"{"type":"mute","track":"a","muted":"yes"}"#, false),
            (r#"{"type":"ping","extra":1}"#, false),
            (r#"[1,2]"#, false),
            (r#"not json"#, false),
        ];
        for (text, ok) in cases {
            assert_eq!(
                serde_json::from_str::<ClientMessage>(text).is_ok(),
                ok,
                "{text}"
            );
        }
    }

    #[test]
    fn serializes_server_messages() {
        let m = ServerMessage::Error {
            id: Some(serde_json::json!(3)),
            code: 403,
            reason: "forbidden",
            message: "no".into(),
        };
        assert_eq!(
            serde_json::to_string(&m).unwrap(),
            r#"{"type":"error","id":3,"code":403,"reason":"forbidden","message":"no"}"#
        );
        let t = |content| TrackInfo {
            id: "p-1".into(),
            kind: "video",
            muted: false,
            content,
        };
        assert_eq!(
            serde_json::to_string(&t(None)).unwrap(),
            r#"{"id":"p-1","kind":"video","muted":false}"#
        );
        assert_eq!(
            serde_json::to_string(&t(Some("slides"))).unwrap(),
            r#"{"id":"p-1","kind":"video","muted":false,"content":"slides"}"#
        );
        let m = ServerMessage::ActiveSpeaker { participant: None };
        assert_eq!(
            serde_json::to_string(&m).unwrap(),
            r#"{"type":"active_speaker","participant":null}"#
        );
    }
}
