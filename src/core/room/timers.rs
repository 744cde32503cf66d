//! The relay's own deadlines in one table: when each kind of periodic or pending work is next
//! due. [`Relay::poll_timeout`](super::Relay::poll_timeout) is the earliest entry (with the
//! publishers' report and key-frame deadlines, which live with each publisher), and
//! [`Relay::handle_timeout`](super::Relay::handle_timeout) takes what is due.

use std::time::{Duration, Instant};

/// One kind of work the relay schedules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Timer {
    /// Each room's active speaker is re-evaluated (periodic while there are rooms).
    Speakers,
    /// Viewers' estimates are split over their tracks (periodic while there is anything to
    /// allocate).
    Allocation,
    /// The earliest packet due to leave a viewer's pacer.
    Pace,
    /// The earliest packet of a probe cluster.
    Probe,
    /// Transport-cc feedback to publishers.
    TwccFeedback,
}

const TIMERS: usize = 5;

impl Timer {
    const ALL: [Timer; TIMERS] = [
        Timer::Speakers,
        Timer::Allocation,
        Timer::Pace,
        Timer::Probe,
        Timer::TwccFeedback,
    ];

    fn slot(self) -> usize {
        self as usize
    }
}

#[derive(Debug, Default)]
pub(super) struct Timers {
    at: [Option<Instant>; TIMERS],
}

impl Timers {
    pub fn get(&self, t: Timer) -> Option<Instant> {
        self.at[t.slot()]
    }

    /// Due at `at` or earlier: keeps whichever of the two comes first.
    pub fn at_most(&mut self, t: Timer, at: Instant) {
        let slot = &mut self.at[t.slot()];
        *slot = Some(slot.map_or(at, |s| s.min(at)));
    }

    /// Due at `at` unless it already is due some time.
    pub fn unless_set(&mut self, t: Timer, at: Instant) {
        self.at[t.slot()].get_or_insert(at);
    }

    /// Whether `t` is due; if so it is cleared (the work reschedules what it needs).
    pub fn take_due(&mut self, t: Timer, now: Instant) -> bool {
        let slot = &mut self.at[t.slot()];
        if slot.is_some_and(|at| now >= at) {
            *slot = None;
            return true;
        }
        false
    }

    /// For periodic work: whether it is due (or never ran); if so the next round is set `every`
    /// from now.
    pub fn periodic(&mut self, t: Timer, now: Instant, every: Duration) -> bool {
        let slot = &mut self.at[t.slot()];
        if slot.is_none_or(|at| now >= at) {
            *slot = Some(now + every);
            return true;
        }
        false
    }

    /// The earliest deadline among the timers `active` accepts.
    pub fn earliest(&self, active: impl Fn(Timer) -> bool) -> Option<Instant> {
        Timer::ALL
            .into_iter()
            .filter(|&t| active(t))
            .filter_map(|t| self.get(t))
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_operation_as_specified() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut t = Timers::default();
        // (operation, timer, argument in ms, expected return, expected value after)
        enum Op {
            AtMost,
            UnlessSet,
            TakeDue,
            Periodic,
        }
        let steps: &[(Op, Timer, u64, bool, Option<u64>)] = &[
            (Op::AtMost, Timer::Pace, 30, true, Some(30)),
            (Op::AtMost, Timer::Pace, 40, true, Some(30)),
            (Op::AtMost, Timer::Pace, 10, true, Some(10)),
            (Op::TakeDue, Timer::Pace, 9, false, Some(10)),
            (Op::TakeDue, Timer::Pace, 10, true, None),
            (Op::TakeDue, Timer::Pace, 50, false, None),
            (Op::UnlessSet, Timer::TwccFeedback, 50, true, Some(50)),
            (Op::UnlessSet, Timer::TwccFeedback, 20, true, Some(50)),
            // Periodic, every 100 ms: the first call runs at once.
            (Op::Periodic, Timer::Speakers, 0, true, Some(100)),
            (Op::Periodic, Timer::Speakers, 99, false, Some(100)),
            (Op::Periodic, Timer::Speakers, 130, true, Some(230)),
        ];
        for (i, (op, timer, arg, ret, after)) in steps.iter().enumerate() {
            let got = match op {
                Op::AtMost => {
                    t.at_most(*timer, ms(*arg));
                    true
                }
                Op::UnlessSet => {
                    t.unless_set(*timer, ms(*arg));
                    true
                }
                Op::TakeDue => t.take_due(*timer, ms(*arg)),
                Op::Periodic => t.periodic(*timer, ms(*arg), Duration::from_millis(100)),
            };
            assert_eq!(got, *ret, "step {i}");
            assert_eq!(t.get(*timer), after.map(ms), "step {i}");
        }
    }

    #[test]
    fn earliest_over_the_active_timers() {
        let t0 = Instant::now();
        let mut t = Timers::default();
        assert_eq!(t.earliest(|_| true), None);
        t.at_most(Timer::Speakers, t0 + Duration::from_millis(5));
        t.at_most(Timer::Probe, t0 + Duration::from_millis(7));
        assert_eq!(t.earliest(|_| true), Some(t0 + Duration::from_millis(5)));
        assert_eq!(
            t.earliest(|k| k != Timer::Speakers),
            Some(t0 + Duration::from_millis(7))
        );
        assert_eq!(t.earliest(|k| k == Timer::Allocation), None);
    }
}
