//! The control stream of a QUIC connection (docs/protocol.md, "RTP over QUIC"): JSON messages,
//! each framed by a varint length. The client opens one bidirectional stream and sends `join`,
//! then `publish` and/or `subscribe`; every request gets exactly one reply.

use serde::{Deserialize, Serialize};

use crate::session::quic::QuicTrack;

/// Largest control message accepted.
pub const MAX_CONTROL_MESSAGE: usize = 64 * 1024;
/// Datagram flows one connection may open (publishing and subscribing together).
pub const MAX_FLOWS: usize = 64;
/// The largest flow id: what a QUIC variable-length integer holds (RFC 9000 §16).
pub const MAX_FLOW_ID: u64 = (1 << 62) - 1;
/// Control messages one connection may send per second; more are refused (`429 rate_limited`)
/// without being acted on.
pub const MAX_CONTROL_PER_SECOND: u32 = 20;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ControlRequest {
    Join {
        v: u32,
        room: String,
        #[serde(default)]
        token: Option<String>,
        #[serde(default)]
        name: Option<String>,
    },
    /// Media the client sends on datagram flow `flow`.
    Publish { flow: u64, tracks: Vec<QuicTrack> },
    /// Media the client wants on datagram flow `flow`: one publisher of the room, the most
    /// recent when `publisher` is absent.
    Subscribe {
        flow: u64,
        #[serde(default)]
        publisher: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ControlReply {
    Joined {
        v: u32,
        room: String,
        identity: String,
    },
    Published {
        publisher: String,
    },
    Subscribed {
        publisher: String,
        flow: u64,
        tracks: Vec<QuicTrack>,
    },
    Error {
        code: u16,
        reason: &'static str,
        message: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_requests() {
        let cases = [
            (r#"{"type":"join","v":1,"room":"r"}"#, true),
            (
                r#"{"type":"publish","flow":0,"tracks":[{"kind":"audio","codec":"opus","payload_type":111,"clock_rate":48000,"channels":2,"ssrc":7}]}"#,
                true,
            ),
            (
                r#"{"type":"publish","flow":0,"tracks":[{"kind":"video","codec":"VP8","payload_type":96,"clock_rate":90000,"ssrc":8,"content":"slides"}]}"#,
                true,
            ),
            (r#"{"type":"subscribe","flow":1}"#, true),
            (r#"{"type":"subscribe","flow":-1}"#, false),
            (r#"{"type":"publish","flow":0}"#, false),
            (r#"{"type":"join","v":1}"#, false),
            (r#"{"type":"dance"}"#, false),
        ];
        for (text, ok) in cases {
            assert_eq!(
                serde_json::from_str::<ControlRequest>(text).is_ok(),
                ok,
                "{text}"
            );
        }
    }
}
