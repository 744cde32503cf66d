//! The allocation round's decisions, as pure functions of what it measured: which video goes
//! first, when running video is paused, when audio is re-encoded or sent as RED, and how far
//! probes aim. [`alloc`](super::alloc) splits an estimate over demands; this module says what the
//! demands and the outcome mean for one viewer.

use std::time::{Duration, Instant};

/// Loss on a viewer's link from which its audio goes as RED (where negotiated), and how long
/// that lasts after the last such loss.
pub(super) const RED_LOSS: f64 = 0.01;
pub(super) const RED_HOLD: Duration = Duration::from_secs(10);

/// The bitrate audio is re-encoded at for viewers whose links cannot carry the original.
pub(super) const LOW_AUDIO_BPS: u64 = 12_000;

/// How long a running video's lowest layer must not fit before it is paused.
pub(super) const PAUSE_AFTER: Duration = Duration::from_secs(2);

/// How often each viewer's estimate is split over its tracks.
pub(super) const ALLOCATION_INTERVAL: Duration = Duration::from_millis(250);

/// Until when a viewer's audio goes as RED, given the loss its link reports now.
pub(super) fn red_until(loss: f64, now: Instant, until: Option<Instant>) -> Option<Instant> {
    if loss >= RED_LOSS {
        Some(now + RED_HOLD)
    } else {
        until
    }
}

/// The rate split over a viewer's tracks: its estimate, or everything when nothing tells about
/// its link (no transport-cc negotiated, no REMB).
pub(super) fn budget(signal: bool, estimate_bps: u64) -> u64 {
    if signal {
        estimate_bps
    } else {
        u64::MAX / 2
    }
}

/// Who gets a short link's video first: what the viewer pinned, then presentations, then the
/// active speaker, then everyone else.
pub(super) fn priority(pinned: bool, slides: bool, speaking: bool) -> u8 {
    if pinned {
        3
    } else if slides {
        2
    } else {
        u8::from(speaking)
    }
}

/// Whether a viewer's audio goes re-encoded at [`LOW_AUDIO_BPS`]: yes when its estimate cannot
/// carry the publishers' audio, no with twice the room (or nothing known about the link), and
/// `None` (unchanged) in between.
pub(super) fn low_audio(signal: bool, estimate_bps: u64, audio_bps: u64) -> Option<bool> {
    if !signal {
        Some(false)
    } else if estimate_bps < audio_bps {
        Some(true)
    } else if estimate_bps > 2 * audio_bps {
        Some(false)
    } else {
        None
    }
}

/// Whether one audio track is re-encoded for a viewer whose audio goes low: only where that
/// saves something.
pub(super) fn track_low_audio(low: bool, track_bps: u64) -> bool {
    low && track_bps > LOW_AUDIO_BPS * 3 / 2
}

/// What a video track gets after a round: the layer (by rank) it is sent, or `None` to pause it;
/// and since when its lowest layer has not fitted. `fit` is the allocator's choice; `may_pause`
/// whether this viewer's video may be paused at all (without it, video that does not fit gets
/// its lowest layer). A pause costs a key frame to come back from, so running video is paused
/// only once nothing has fitted for [`PAUSE_AFTER`], not on a passing dip.
pub(super) fn video_choice(
    fit: Option<usize>,
    may_pause: bool,
    paused: bool,
    short_since: Option<Instant>,
    now: Instant,
) -> (Option<usize>, Option<Instant>) {
    let short_since = match fit {
        None if may_pause => Some(short_since.unwrap_or(now)),
        _ => None,
    };
    let choice = match fit {
        Some(layer) => Some(layer),
        None if !may_pause => Some(0),
        None if !paused
            && short_since.is_some_and(|s| now.saturating_duration_since(s) < PAUSE_AFTER) =>
        {
            Some(0)
        }
        None => None,
    };
    (choice, short_since)
}

/// What probes aim at, given what every track would take at its best: twice that. A move up
/// needs the layer's rate and its margin (`alloc::UP_MARGIN`), and a probe that crossed a busy
/// receiver comes back at 80-90% of its rate (a VP9 viewer with the full picture at 1.05 Mbps
/// needs 1.45 Mbps; probes aimed at 1.6 Mbps came back at 1.17 and 1.29).
pub(super) fn probe_target(want_bps: u64) -> u64 {
    want_bps.saturating_mul(2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priorities() {
        // (pinned, slides, speaking) -> priority
        let cases = [
            ((false, false, false), 0),
            ((false, false, true), 1),
            ((false, true, false), 2),
            ((false, true, true), 2),
            ((true, false, false), 3),
            ((true, true, true), 3),
        ];
        for ((pinned, slides, speaking), want) in cases {
            assert_eq!(
                priority(pinned, slides, speaking),
                want,
                "{pinned} {slides} {speaking}"
            );
        }
    }

    #[test]
    fn low_audio_thresholds() {
        // (signal, estimate, audio) -> low
        let cases = [
            ((false, 1_000, 64_000), Some(false)),
            ((true, 40_000, 64_000), Some(true)),
            ((true, 64_000, 64_000), None),
            ((true, 128_000, 64_000), None),
            ((true, 128_001, 64_000), Some(false)),
        ];
        for ((signal, est, audio), want) in cases {
            assert_eq!(
                low_audio(signal, est, audio),
                want,
                "{signal} {est} {audio}"
            );
        }
        // Only tracks above 1.5 × the low rate are worth re-encoding.
        for (low, bps, want) in [
            (true, 18_000, false),
            (true, 18_001, true),
            (false, 64_000, false),
        ] {
            assert_eq!(track_low_audio(low, bps), want, "{low} {bps}");
        }
    }

    #[test]
    fn red_holds_after_the_last_loss() {
        let t0 = Instant::now();
        let before = Some(t0 + Duration::from_secs(3));
        // (loss, until before) -> until after
        let cases = [
            (0.0, None, None),
            (0.009, before, before),
            (0.01, None, Some(t0 + RED_HOLD)),
            (0.2, before, Some(t0 + RED_HOLD)),
        ];
        for (loss, until, want) in cases {
            assert_eq!(red_until(loss, t0, until), want, "loss {loss}");
        }
    }

    #[test]
    fn video_pauses_only_after_a_while_short() {
        let t0 = Instant::now();
        let s = |ms| Some(t0 + Duration::from_millis(ms));
        let at = |ms| t0 + Duration::from_millis(ms);
        // (fit, may_pause, paused, short_since, now) -> (choice, short_since)
        let cases = [
            // A layer fits: sent, not short.
            ((Some(2), true, false, s(0), at(100)), (Some(2), None)),
            // Nothing fits but pausing is not allowed: the lowest layer, not counted as short.
            ((None, false, false, s(0), at(5000)), (Some(0), None)),
            // Nothing fits: short from now on, still the lowest layer...
            ((None, true, false, None, at(100)), (Some(0), s(100))),
            // ...until PAUSE_AFTER has passed.
            ((None, true, false, s(100), at(2099)), (Some(0), s(100))),
            ((None, true, false, s(100), at(2100)), (None, s(100))),
            // Paused video stays paused while nothing fits.
            ((None, true, true, None, at(100)), (None, s(100))),
            // And comes back as soon as something does.
            ((Some(0), true, true, s(100), at(9000)), (Some(0), None)),
        ];
        for (i, ((fit, may, paused, since, now), want)) in cases.into_iter().enumerate() {
            assert_eq!(video_choice(fit, may, paused, since, now), want, "case {i}");
        }
    }

    #[test]
    fn budget_and_probe_target() {
        assert_eq!(budget(true, 300_000), 300_000);
        assert_eq!(budget(false, 300_000), u64::MAX / 2);
        assert_eq!(probe_target(0), 0);
        assert_eq!(probe_target(1_000_000), 2_000_000);
    }
}
