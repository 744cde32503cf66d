//! A room participant as the session layer keeps it (who it is, what it may do, its two
//! connections, what it asked for, whether it is reconnecting), and the `join` that makes one.

use std::collections::{BTreeSet, HashMap};
use std::time::Instant;

use super::connection::ParticipantId;
use crate::core::room::SessionId;

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
    /// Only take back the participant `resume` names: this node does not take new ones now
    /// (draining, full, the cluster store away), so a secret that no longer works is refused
    /// (`not_resumable`) rather than becoming a new participant here.
    pub only_resume: bool,
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
