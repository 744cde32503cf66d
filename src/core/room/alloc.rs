//! Splitting one viewer's bandwidth estimate over its tracks: audio first and always; then video
//! tracks by priority (the active speaker first) while they fit; the rest paused. A paused track
//! comes back only with room to spare, so a link near the edge does not flap.

use super::MediaKind;

/// Headroom a paused video track needs beyond its own rate before it is resumed.
const RESUME_MARGIN: f64 = 1.2;

/// One track as the allocator sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Demand {
    pub kind: MediaKind,
    /// What it needs, in bps (the publisher's measured rate).
    pub bps: u64,
    /// Higher goes first.
    pub priority: u8,
    /// Whether it is on now.
    pub on: bool,
}

/// Decides which tracks are on; `on[i]` is written for `demands[i]`. Returns the bps left over.
pub fn allocate(estimate_bps: u64, demands: &[Demand], on: &mut [bool]) -> u64 {
    let mut left = estimate_bps as f64;
    for (i, d) in demands.iter().enumerate() {
        if d.kind == MediaKind::Audio {
            // Audio is never sacrificed for video, whatever the estimate says.
            on[i] = true;
            left -= d.bps as f64;
        }
    }
    // Video by priority, then by position (stable).
    let mut order: [usize; 64] = [0; 64];
    let mut n = 0;
    for (i, d) in demands.iter().enumerate().take(64) {
        if d.kind == MediaKind::Video {
            order[n] = i;
            n += 1;
        }
    }
    order[..n].sort_by_key(|&i| std::cmp::Reverse(demands[i].priority));
    for &i in &order[..n] {
        let d = demands[i];
        let need = if d.on {
            d.bps as f64
        } else {
            d.bps as f64 * RESUME_MARGIN
        };
        on[i] = need <= left;
        if on[i] {
            left -= d.bps as f64;
        }
    }
    left.max(0.0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(bps: u64) -> Demand {
        Demand {
            kind: MediaKind::Audio,
            bps,
            priority: 0,
            on: true,
        }
    }

    fn v(bps: u64, priority: u8, on: bool) -> Demand {
        Demand {
            kind: MediaKind::Video,
            bps,
            priority,
            on,
        }
    }

    #[test]
    fn table() {
        let cases: Vec<(&str, u64, Vec<Demand>, Vec<bool>)> = vec![
            (
                "plenty",
                3_000_000,
                vec![a(40_000), v(1_000_000, 0, true), v(1_000_000, 0, true)],
                vec![true, true, true],
            ),
            (
                "one video fits: the speaker's",
                1_200_000,
                vec![a(40_000), v(1_000_000, 0, true), v(1_000_000, 1, true)],
                vec![true, false, true],
            ),
            (
                "audio only",
                150_000,
                vec![a(40_000), v(300_000, 0, true), a(40_000)],
                vec![true, false, true],
            ),
            (
                "audio even when it does not fit",
                10_000,
                vec![a(40_000), a(40_000)],
                vec![true, true],
            ),
            (
                "a paused track needs a margin to resume",
                350_000,
                vec![a(40_000), v(300_000, 0, false)],
                vec![true, false],
            ),
            (
                "a running one keeps going at the same estimate",
                350_000,
                vec![a(40_000), v(300_000, 0, true)],
                vec![true, true],
            ),
            (
                "resumes with the margin",
                410_000,
                vec![a(40_000), v(300_000, 0, false)],
                vec![true, true],
            ),
        ];
        for (name, estimate, demands, want) in cases {
            let mut on = vec![false; demands.len()];
            allocate(estimate, &demands, &mut on);
            assert_eq!(on, want, "{name}");
        }
    }

    /// Whatever the estimate and the mix, every audio track stays on.
    #[test]
    fn audio_is_never_dropped() {
        let mut seed = 7u64;
        for _ in 0..10_000 {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let estimate = (seed >> 40) % 3_000_000;
            let demands: Vec<Demand> = (0..(seed % 9) as usize)
                .map(|i| {
                    let bps = (seed >> (i * 3)) % 2_000_000;
                    if (seed >> i) & 1 == 0 {
                        a(bps)
                    } else {
                        v(bps, (i % 3) as u8, (seed >> (i + 9)) & 1 == 0)
                    }
                })
                .collect();
            let mut on = vec![false; demands.len()];
            allocate(estimate, &demands, &mut on);
            for (d, o) in demands.iter().zip(&on) {
                if d.kind == MediaKind::Audio {
                    assert!(*o, "audio dropped at {estimate} bps: {demands:?}");
                }
            }
        }
    }
}
