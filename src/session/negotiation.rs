//! Offer/answer state of a room subscriber's connection (volna offers, the client answers), and
//! the rules that keep it acceptable to browsers however the room churns:
//!
//! - **The BUNDLE tag stays live.** Line 0 carries the BUNDLE tag (RFC 8843 §7) and the
//!   transport; it is never stopped. When its track ends it is offered `a=inactive`, still in the
//!   group, so the transport never moves and never restarts because of others leaving.
//! - **Ended lines are stopped, then recycled.** Any other line whose track ended is offered with
//!   port 0 and leaves the group. Once the client has applied an exchange in which it was
//!   stopped, a new track of the same kind takes its place with a new mid (RFC 8829 §5.2.2, m-line
//!   recycling), so the SDP holds at most the live tracks of each kind plus the tag line.
//! - **One offer outstanding, and it stays as sent.** While an offer waits for its answer, lines
//!   only end (never appear or change mid); new tracks wait for the answer and come in the next
//!   offer. The answer is checked against the lines as offered.
//! - **Mids are never reused** on a connection: each new or recycled line gets the next number.

use crate::core::room::{MediaKind, TrackRef};
use crate::session::sdp::OfferedCodec;

/// One m-line of a subscriber connection.
#[derive(Debug, Clone)]
pub struct SubLine {
    pub mid: String,
    pub kind: MediaKind,
    /// The forwarded track; `None` once it ended (the m-line is then offered stopped, or inactive
    /// for the BUNDLE tag line).
    pub source: Option<TrackRef>,
    /// Public track id (`participant-mid`) for signalling and `a=msid`.
    pub track_id: String,
    pub stream_id: String,
    pub ssrc: u32,
    pub codec: OfferedCodec,
    /// The RTX stream offered with video (payload type, SSRC), for resends and probes.
    pub rtx: Option<(u8, u32)>,
    /// The last answer accepted the RTX stream too.
    pub rtx_accepted: bool,
    /// The RED payload type offered with audio (RFC 2198), and whether the answer took it.
    pub red: Option<u8>,
    pub red_accepted: bool,
    pub ext: Vec<(u8, String)>,
    /// The relay's viewer-track index once the peer accepted the line and SRTP is up.
    pub relay_index: Option<usize>,
    /// The last answer accepted this line.
    pub accepted: bool,
    /// The latest offer carried this line with a track.
    pub offered_live: bool,
    /// The client has applied an exchange in which this line was stopped: it may be recycled.
    pub free: bool,
}

/// How an m-line is offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineState {
    /// Carries a track (`sendonly`).
    Live,
    /// The BUNDLE tag line without a track: `a=inactive`, port kept, still in the group.
    Parked,
    /// Port 0, out of the BUNDLE group (RFC 8843 §7).
    Stopped,
}

/// Offer/answer state of a subscriber connection (JSEP: one offer outstanding at a time).
#[derive(Debug, Default)]
pub struct Negotiation {
    pub lines: Vec<SubLine>,
    pub version: u64,
    /// An offer was sent and its answer has not come.
    pub awaiting_answer: bool,
    /// The lines changed since the last offer.
    pub dirty: bool,
    /// DTLS datagrams that came before the first answer (the peer's ClientHello can overtake it).
    pub early_dtls: Vec<Vec<u8>>,
    /// The number the next new or recycled line's mid gets.
    next_mid: u32,
    /// The next offer restarts ICE (new credentials).
    pub restart_ice: bool,
}

/// The line that carries the BUNDLE tag.
const TAG: usize = 0;

impl Negotiation {
    pub fn state(&self, index: usize) -> LineState {
        match &self.lines[index] {
            l if l.source.is_some() => LineState::Live,
            _ if index == TAG => LineState::Parked,
            _ => LineState::Stopped,
        }
    }

    /// Lines can be added or recycled now (no offer is outstanding).
    pub fn can_add(&self) -> bool {
        !self.awaiting_answer
    }

    /// Places a new line (its `mid` is assigned here): into a recycled stopped line of the same
    /// kind the client has seen stopped, else at the end. Returns its index.
    ///
    /// # Panics
    /// When an offer is outstanding (see [`Negotiation::can_add`]).
    pub fn add(&mut self, mut line: SubLine) -> usize {
        assert!(self.can_add(), "lines change only between offers");
        line.mid = self.next_mid.to_string();
        self.next_mid += 1;
        line.offered_live = false;
        line.free = false;
        self.dirty = true;
        let recycled = (0..self.lines.len())
            .find(|&i| i != TAG && self.lines[i].free && self.lines[i].kind == line.kind);
        match recycled {
            Some(i) => {
                self.lines[i] = line;
                i
            }
            None => {
                self.lines.push(line);
                self.lines.len() - 1
            }
        }
    }

    /// A line's track ended: the line is offered stopped (or parked) next time. Returns its
    /// relay index, if it was forwarding.
    pub fn end(&mut self, index: usize) -> Option<usize> {
        let l = &mut self.lines[index];
        if l.source.take().is_some() {
            self.dirty = true;
        }
        l.accepted = false;
        l.relay_index.take()
    }

    /// An offer of the current lines goes out now.
    pub fn offered(&mut self) {
        for l in self.lines.iter_mut() {
            l.offered_live = l.source.is_some();
        }
        self.version += 1;
        self.awaiting_answer = true;
        self.dirty = false;
    }

    /// The client applied the outstanding offer (its answer came): lines it saw stopped may now
    /// be recycled.
    pub fn answered(&mut self) {
        for (i, l) in self.lines.iter_mut().enumerate() {
            l.free = i != TAG && !l.offered_live && l.source.is_none();
        }
        self.awaiting_answer = false;
    }

    /// Lines with a track.
    pub fn live(&self) -> usize {
        self.lines.iter().filter(|l| l.source.is_some()).count()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn line(kind: MediaKind, track: usize) -> SubLine {
        SubLine {
            mid: String::new(),
            kind,
            source: Some(TrackRef {
                publisher: 1,
                track,
            }),
            track_id: format!("p-{track}"),
            stream_id: "p".into(),
            ssrc: 1,
            codec: OfferedCodec {
                payload_type: 96,
                codec: None,
                name: "VP8".into(),
                clock_rate: 90000,
                channels: String::new(),
                fmtp: String::new(),
                feedback: Vec::new(),
            },
            rtx: None,
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

    fn mids(n: &Negotiation) -> Vec<(&str, LineState)> {
        (0..n.lines.len())
            .map(|i| (n.lines[i].mid.as_str(), n.state(i)))
            .collect()
    }

    fn exchange(n: &mut Negotiation) {
        n.offered();
        n.answered();
    }

    use LineState::{Live, Parked, Stopped};
    use MediaKind::{Audio, Video};

    /// Each row: a step, and the lines (mid, state) after it.
    #[test]
    fn churn_keeps_the_tag_and_recycles_lines() {
        let mut n = Negotiation::default();
        type Step = fn(&mut Negotiation);
        type Lines<'a> = Vec<(&'a str, LineState)>;
        let steps: Vec<(&str, Step, Lines)> = vec![
            (
                "two tracks",
                |n| {
                    n.add(line(Audio, 0));
                    n.add(line(Video, 1));
                    exchange(n);
                },
                vec![("0", Live), ("1", Live)],
            ),
            (
                "both end: the tag line is parked, the other stopped",
                |n| {
                    n.end(0);
                    n.end(1);
                    exchange(n);
                },
                vec![("0", Parked), ("1", Stopped)],
            ),
            (
                "a new video recycles the stopped video line with a new mid",
                |n| {
                    n.add(line(Video, 2));
                    exchange(n);
                },
                vec![("0", Parked), ("2", Live)],
            ),
            (
                "a new audio cannot take the parked tag line: appended",
                |n| {
                    n.add(line(Audio, 3));
                    exchange(n);
                },
                vec![("0", Parked), ("2", Live), ("3", Live)],
            ),
            (
                "a line is recycled once the answer to the offer that stopped it came",
                |n| {
                    n.end(1);
                    n.offered();
                    assert!(
                        !n.can_add(),
                        "nothing is added while an offer is outstanding"
                    );
                    n.answered();
                    n.add(line(Video, 4));
                    exchange(n);
                },
                vec![("0", Parked), ("4", Live), ("3", Live)],
            ),
        ];
        for (name, step, want) in steps {
            step(&mut n);
            assert_eq!(mids(&n), want, "{name}");
        }
    }

    /// A line that ends while an offer is outstanding was offered live: it is not free when that
    /// answer comes, only after the next exchange.
    #[test]
    fn a_line_ended_during_an_offer_is_freed_by_the_next_exchange() {
        let mut n = Negotiation::default();
        n.add(line(Audio, 0));
        n.add(line(Video, 1));
        n.offered();
        n.end(1);
        assert!(!n.can_add());
        n.answered();
        assert!(!n.lines[1].free, "the client has not seen it stopped");
        assert!(n.dirty);
        exchange(&mut n);
        assert!(n.lines[1].free);
    }

    /// An hour of churn: 50 cycles of a participant (audio + video) joining and leaving beside
    /// one who stays. The line count stays at the live tracks plus the tag line.
    #[test]
    fn fifty_cycles_do_not_grow_the_lines() {
        let mut n = Negotiation::default();
        n.add(line(Audio, 0));
        n.add(line(Video, 1));
        exchange(&mut n);
        for cycle in 0..50 {
            let a = n.add(line(Audio, 10 + cycle));
            let v = n.add(line(Video, 11 + cycle));
            exchange(&mut n);
            n.end(a);
            n.end(v);
            exchange(&mut n);
        }
        assert_eq!(n.live(), 2);
        assert!(n.lines.len() <= n.live() + 3, "{} lines", n.lines.len());
        let mut seen: Vec<&str> = n.lines.iter().map(|l| l.mid.as_str()).collect();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), n.lines.len(), "mids are unique");
    }
}
