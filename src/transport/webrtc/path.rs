//! Where a session's media goes, and when that may change.
//!
//! A session's path moves to a new address in two ways, both authenticated by ICE: a nominating
//! Binding request from the peer (RFC 8445), or a consent check volna sends itself (RFC 7675)
//! when SRTP arrives from an unknown port of a session's IP (a NAT rebinding) and that the peer
//! answers with a valid response. The check is sent to the unknown address only; until its answer
//! arrives, nothing but the check goes there, and datagrams from there are dropped. Checks are
//! limited per session ([`PROBE_INTERVAL`]) and per datagram ([`MAX_PROBES_PER_DATAGRAM`]), and
//! moves per session ([`MAX_MOVES`] in [`MOVE_WINDOW`]), so a peer with valid credentials cannot
//! aim a session's media at an address that did not ask for it by moving it again and again.
//! This module owns those rules and the table of checks in flight; the shard sends and moves.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use crate::core::room::SessionId;

/// The most path moves a session may make in [`MOVE_WINDOW`].
pub const MAX_MOVES: usize = 4;
pub const MOVE_WINDOW: Duration = Duration::from_secs(10);
/// A session sends at most one consent check to new addresses per interval.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(500);
/// How long a consent check waits for its answer.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// One datagram from an unknown address makes checks for at most this many sessions of its IP
/// (two connections of one browser share it; more sessions behind one NAT wait their turn).
pub const MAX_PROBES_PER_DATAGRAM: usize = 4;
/// Checks in flight on one worker, at most.
pub const MAX_OUTSTANDING: usize = 4096;

/// One session's record of moves and checks.
#[derive(Debug, Default, Clone)]
pub struct PathLimits {
    moves: [Option<Instant>; MAX_MOVES],
    next_probe: Option<Instant>,
}

impl PathLimits {
    /// Whether the path may move now (fewer than [`MAX_MOVES`] in the last [`MOVE_WINDOW`]).
    pub fn may_move(&self, now: Instant) -> bool {
        self.moves
            .iter()
            .any(|m| m.is_none_or(|t| now.saturating_duration_since(t) >= MOVE_WINDOW))
    }

    /// Records a move (call only when [`Self::may_move`] said yes).
    pub fn moved(&mut self, now: Instant) {
        let oldest = self
            .moves
            .iter_mut()
            .min_by_key(|m| m.map(|t| (1, t)).unwrap_or((0, now)))
            .expect("MAX_MOVES > 0");
        *oldest = Some(now);
    }

    /// Whether a consent check may go out now; if so, the next may not before the interval.
    pub fn take_probe(&mut self, now: Instant) -> bool {
        if self.next_probe.is_some_and(|t| now < t) || !self.may_move(now) {
            return false;
        }
        self.next_probe = Some(now + PROBE_INTERVAL);
        true
    }
}

/// A consent check in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    pub session: SessionId,
    pub to: SocketAddr,
    pub sent: Instant,
}

/// Why an answer to a check does not move anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("STUN response to no check of ours")]
    UnknownTransaction,
    #[error("STUN response from another address than the check went to")]
    WrongSource,
    #[error("STUN response after the check timed out")]
    Late,
}

/// The worker's consent checks in flight, and its sessions by their peer's IP.
#[derive(Debug, Default)]
pub struct Paths {
    probes: HashMap<[u8; 12], Probe>,
    by_ip: HashMap<IpAddr, Vec<SessionId>>,
}

impl Paths {
    /// Sessions whose peer is at `ip` (at most [`MAX_PROBES_PER_DATAGRAM`]).
    pub fn sessions_at(&self, ip: IpAddr) -> impl Iterator<Item = SessionId> + '_ {
        self.by_ip
            .get(&ip)
            .into_iter()
            .flatten()
            .copied()
            .take(MAX_PROBES_PER_DATAGRAM)
    }

    /// A session's path is now `to` (from `from`, if it had one).
    pub fn set(&mut self, id: SessionId, from: Option<SocketAddr>, to: SocketAddr) {
        if let Some(old) = from {
            self.forget_ip(id, old.ip());
        }
        let ids = self.by_ip.entry(to.ip()).or_default();
        if !ids.contains(&id) {
            ids.push(id);
        }
    }

    /// A session ended: its entry and its checks go.
    pub fn remove(&mut self, id: SessionId, at: Option<SocketAddr>) {
        if let Some(a) = at {
            self.forget_ip(id, a.ip());
        }
        self.probes.retain(|_, p| p.session != id);
    }

    fn forget_ip(&mut self, id: SessionId, ip: IpAddr) {
        if let Some(ids) = self.by_ip.get_mut(&ip) {
            ids.retain(|&s| s != id);
            if ids.is_empty() {
                self.by_ip.remove(&ip);
            }
        }
    }

    /// Room for one more check?
    pub fn has_room(&self) -> bool {
        self.probes.len() < MAX_OUTSTANDING
    }

    pub fn sent(&mut self, transaction: [u8; 12], probe: Probe) {
        self.probes.insert(transaction, probe);
    }

    /// The check a response answers, if it came from where the check went, in time. The check
    /// stays in flight until [`Self::settle`]: a forged answer does not use up the real one.
    pub fn answered(
        &self,
        now: Instant,
        transaction: &[u8; 12],
        from: SocketAddr,
    ) -> Result<Probe, PathError> {
        let p = *self
            .probes
            .get(transaction)
            .ok_or(PathError::UnknownTransaction)?;
        if p.to != from {
            return Err(PathError::WrongSource);
        }
        if now.saturating_duration_since(p.sent) > PROBE_TIMEOUT {
            return Err(PathError::Late);
        }
        Ok(p)
    }

    /// An answer was verified: the check is done.
    pub fn settle(&mut self, transaction: &[u8; 12]) {
        self.probes.remove(transaction);
    }

    /// Drops checks that were never answered.
    pub fn expire(&mut self, now: Instant) {
        self.probes
            .retain(|_, p| now.saturating_duration_since(p.sent) <= PROBE_TIMEOUT);
    }

    pub fn in_flight(&self) -> usize {
        self.probes.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> Instant {
        // One base for all calls in a test binary is enough: only differences matter.
        static BASE: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        *BASE.get_or_init(Instant::now) + Duration::from_millis(ms)
    }

    #[test]
    fn moves_are_limited_per_window() {
        // (time of a requested move in ms, whether it is allowed)
        let table = [
            (0, true),
            (100, true),
            (200, true),
            (300, true),
            (400, false),
            (9_999, false),
            (10_000, true), // the first move left the window
            (10_050, false),
            (10_100, true),
            (30_000, true),
        ];
        let mut l = PathLimits::default();
        for (ms, allowed) in table {
            let now = at(ms);
            assert_eq!(l.may_move(now), allowed, "at {ms} ms");
            if allowed {
                l.moved(now);
            }
        }
    }

    #[test]
    fn probes_are_spaced_and_stop_when_moves_are_spent() {
        let mut l = PathLimits::default();
        let table = [
            (0, true),
            (100, false),
            (499, false),
            (500, true),
            (900, false),
            (1_000, true),
        ];
        for (ms, allowed) in table {
            assert_eq!(l.take_probe(at(ms)), allowed, "at {ms} ms");
        }
        for i in 0..MAX_MOVES as u64 {
            l.moved(at(1_000 + i));
        }
        assert!(
            !l.take_probe(at(2_000)),
            "no check when no move could follow"
        );
    }

    #[test]
    fn answers_must_match_the_check() {
        let a: SocketAddr = "10.0.0.1:5000".parse().unwrap();
        let b: SocketAddr = "10.0.0.1:5001".parse().unwrap();
        let probe = Probe {
            session: 7,
            to: a,
            sent: at(0),
        };
        let cases = [
            ("answered in time", [1; 12], a, 100, Ok(probe)),
            (
                "unknown transaction",
                [2; 12],
                a,
                100,
                Err(PathError::UnknownTransaction),
            ),
            (
                "from elsewhere",
                [1; 12],
                b,
                100,
                Err(PathError::WrongSource),
            ),
            ("too late", [1; 12], a, 2_500, Err(PathError::Late)),
        ];
        for (what, tid, from, ms, want) in cases {
            let mut p = Paths::default();
            p.sent([1; 12], probe);
            assert_eq!(p.answered(at(ms), &tid, from), want, "{what}");
        }
        // A wrong answer leaves the check in flight; a settled one counts once.
        let mut p = Paths::default();
        p.sent([1; 12], probe);
        assert_eq!(p.answered(at(1), &[1; 12], b), Err(PathError::WrongSource));
        assert!(p.answered(at(1), &[1; 12], a).is_ok());
        p.settle(&[1; 12]);
        assert_eq!(
            p.answered(at(2), &[1; 12], a),
            Err(PathError::UnknownTransaction)
        );
    }

    #[test]
    fn sessions_follow_their_ip() {
        let a: SocketAddr = "10.0.0.1:5000".parse().unwrap();
        let b: SocketAddr = "10.0.0.2:5000".parse().unwrap();
        let mut p = Paths::default();
        p.set(1, None, a);
        p.set(2, None, a);
        p.set(2, None, a);
        assert_eq!(p.sessions_at(a.ip()).collect::<Vec<_>>(), [1, 2]);
        p.set(1, Some(a), b);
        assert_eq!(p.sessions_at(a.ip()).collect::<Vec<_>>(), [2]);
        assert_eq!(p.sessions_at(b.ip()).collect::<Vec<_>>(), [1]);
        p.sent(
            [9; 12],
            Probe {
                session: 2,
                to: a,
                sent: at(0),
            },
        );
        p.remove(2, Some(a));
        assert_eq!(p.sessions_at(a.ip()).count(), 0);
        assert_eq!(p.in_flight(), 0, "a closed session's checks go with it");
        for i in 10..20 {
            p.set(i, None, b);
        }
        assert_eq!(p.sessions_at(b.ip()).count(), MAX_PROBES_PER_DATAGRAM);
    }
}
