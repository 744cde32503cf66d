//! Rooms as the relay keeps them (their publishers, oldest first) and each room's active
//! speaker: the loudest publisher by RFC 6464 audio levels, with hysteresis in level and in time
//! so two people talking equally loud do not make the highlight flap between them.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{RelayEvent, SessionId};

/// Loudness (127 - dBov) a speaker must exceed: quieter than -60 dBov is background.
const SPEAKING_LOUDNESS: f32 = 67.0;
/// A new speaker must be this much louder than the current one to take over...
const SPEAKER_HYSTERESIS: f32 = 3.0;
/// ...for this long without a break.
const SPEAKER_HOLD: Duration = Duration::from_millis(1000);

pub(super) struct RoomState {
    /// The room's name, shared with events so emitting one does not allocate.
    pub name: Arc<str>,
    pub publishers: Vec<SessionId>,
    pub speaker: Option<SessionId>,
    /// Who has been loud enough to take over, and since when.
    challenger: Option<(SessionId, Instant)>,
}

impl RoomState {
    pub fn new(name: &str) -> Self {
        Self {
            name: name.into(),
            publishers: Vec::new(),
            speaker: None,
            challenger: None,
        }
    }

    /// Picks the room's loudest publisher (by `loudness`) above the speaking threshold: a new
    /// speaker takes over after leading by [`SPEAKER_HYSTERESIS`] for [`SPEAKER_HOLD`] (the
    /// first speaker of a silent room at once). A change is told in `events`.
    pub fn update_speaker(
        &mut self,
        now: Instant,
        loudness: impl Fn(&SessionId) -> f32,
        events: &mut VecDeque<RelayEvent>,
    ) {
        let Some((best, level)) = self
            .publishers
            .iter()
            .map(|id| (*id, loudness(id)))
            .max_by(|a, b| a.1.total_cmp(&b.1))
        else {
            return;
        };
        if level < SPEAKING_LOUDNESS || self.speaker == Some(best) {
            self.challenger = None;
            return;
        }
        let current = self.speaker.as_ref().map_or(0.0, &loudness);
        if level <= current + SPEAKER_HYSTERESIS {
            self.challenger = None;
            return;
        }
        let since = match self.challenger {
            Some((who, since)) if who == best => since,
            _ => {
                self.challenger = Some((best, now));
                now
            }
        };
        if self.speaker.is_none() || now.duration_since(since) >= SPEAKER_HOLD {
            self.challenger = None;
            self.speaker = Some(best);
            events.push_back(RelayEvent::ActiveSpeaker {
                room: self.name.clone(),
                publisher: Some(best),
            });
        }
    }
}

/// Every room's speaker, re-evaluated.
pub(super) fn update_speakers(
    now: Instant,
    rooms: &mut HashMap<String, RoomState>,
    loudness: impl Fn(&SessionId) -> f32,
    events: &mut VecDeque<RelayEvent>,
) {
    for room in rooms.values_mut() {
        room.update_speaker(now, &loudness, events);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_over_only_after_leading_for_a_while() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut room = RoomState::new("r");
        room.publishers = vec![1, 2];
        let mut events = VecDeque::new();
        // (time, loudness of 1, loudness of 2) -> speaker after
        let steps = [
            (0, 60.0, 50.0, None),       // both below the threshold
            (300, 80.0, 50.0, Some(1)),  // the first speaker of a silent room, at once
            (600, 80.0, 82.0, Some(1)),  // 2 louder, but within the hysteresis
            (900, 80.0, 90.0, Some(1)),  // 2 leads: challenger from now
            (1800, 80.0, 90.0, Some(1)), // 900 ms of it
            (1900, 80.0, 90.0, Some(2)), // a second: takes over
            (2200, 90.0, 80.0, Some(2)), // 1 leads from now...
            (2500, 80.0, 90.0, Some(2)), // ...but broke off: starts again
            (3500, 95.0, 80.0, Some(2)),
            (4500, 95.0, 80.0, Some(1)),
        ];
        for (at, l1, l2, want) in steps {
            let loud = |id: &SessionId| if *id == 1 { l1 } else { l2 };
            room.update_speaker(ms(at), loud, &mut events);
            assert_eq!(room.speaker, want, "at {at} ms");
        }
        let told: Vec<_> = events
            .iter()
            .map(|e| match e {
                RelayEvent::ActiveSpeaker { publisher, .. } => *publisher,
                _ => None,
            })
            .collect();
        assert_eq!(told, vec![Some(1), Some(2), Some(1)]);
    }
}
