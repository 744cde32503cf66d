//! Why the session layer refuses a request: one vocabulary for WHIP/WHEP, the room protocol and
//! QUIC control. Each refusal has an HTTP-like status, a stable machine-readable reason and a
//! text; signalling turns it into an HTTP response, a room-protocol `error` or a QUIC control
//! reply (docs/protocol.md lists the reasons).

use crate::session::sdp::SdpError;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SessionError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
}

impl SessionError {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
        }
    }

    pub fn bad_sdp(message: impl Into<String>) -> Self {
        Self::new(400, "bad_sdp", message)
    }

    pub fn no_room() -> Self {
        Self::new(404, "no_room", "room not found")
    }

    pub fn no_publisher() -> Self {
        Self::new(404, "no_publisher", "publisher not found in this room")
    }

    pub fn no_session() -> Self {
        Self::new(404, "no_session", "session not found")
    }

    /// A session's `DELETE` or `PATCH` from someone else than its creator.
    pub fn not_owner() -> Self {
        Self::new(
            403,
            "forbidden",
            "only the session's creator (or an admin) may do that",
        )
    }

    pub fn internal(message: impl std::fmt::Display) -> Self {
        Self::new(500, "internal", format!("internal error: {message}"))
    }
}

impl From<SdpError> for SessionError {
    fn from(e: SdpError) -> Self {
        Self::bad_sdp(e.to_string())
    }
}

/// Why a node refuses one more member of a room (see `Shard::admit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    /// The room has its maximum of members.
    Room(usize),
    /// The node has its maximum of rooms.
    Node(usize),
    /// A participant has its maximum of tracks.
    Tracks(usize),
}

impl Full {
    /// The refusal, for a member of `room`.
    pub fn refusal(self, room: &str) -> SessionError {
        match self {
            Full::Room(n) => SessionError::new(
                429,
                "room_full",
                format!("room {room} has its maximum of {n} participants"),
            ),
            Full::Node(n) => SessionError::new(
                429,
                "too_many_rooms",
                format!("this node has its maximum of {n} rooms"),
            ),
            Full::Tracks(n) => SessionError::new(
                429,
                "too_many_tracks",
                format!("at most {n} tracks per participant"),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_reasons() {
        let cases = [
            (SessionError::bad_sdp("x"), 400, "bad_sdp"),
            (SessionError::no_room(), 404, "no_room"),
            (SessionError::no_publisher(), 404, "no_publisher"),
            (SessionError::no_session(), 404, "no_session"),
            (SessionError::not_owner(), 403, "forbidden"),
            (SessionError::internal("y"), 500, "internal"),
            (Full::Room(3).refusal("r"), 429, "room_full"),
            (Full::Node(1).refusal("r"), 429, "too_many_rooms"),
            (Full::Tracks(4).refusal("r"), 429, "too_many_tracks"),
        ];
        for (e, code, reason) in cases {
            assert_eq!((e.code, e.reason), (code, reason), "{e}");
        }
        assert_eq!(
            Full::Room(3).refusal("r").to_string(),
            "room r has its maximum of 3 participants"
        );
    }
}
