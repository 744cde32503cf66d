//! Splitting one viewer's bandwidth estimate over its tracks: audio first and always; then every
//! video at its lowest layer, by priority (pinned, then presentations, then the active speaker)
//! while they fit; then higher layers, by priority again; video that does not fit even at its
//! lowest layer is paused. Going up (a higher layer, or back from a pause) needs room to spare,
//! so a link near the edge does not flap.

use super::MediaKind;

/// Headroom a video track needs beyond a layer's rate before it moves up to that layer: its key
/// frame (asked for to switch) comes as a burst, and a publisher's rate drifts up. With less, a
/// layer about as large as the link (Chromium at 720p on 1 Mbps) is taken, overruns the link, and
/// is dropped again, over and over.
const UP_MARGIN: f64 = 1.35;

/// Most layers a track has (simulcast encodings).
pub const MAX_LAYERS: usize = 4;

/// One track as the allocator sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Demand {
    pub kind: MediaKind,
    /// What each layer needs in bps (the publisher's measured rate), lowest quality first; a
    /// track without layers has one.
    pub layers: [u64; MAX_LAYERS],
    pub n_layers: usize,
    /// Higher goes first.
    pub priority: u8,
    /// The layer on now (an index into `layers`); `None` while paused.
    pub on: Option<usize>,
}

impl Demand {
    /// A track with one layer.
    pub fn single(kind: MediaKind, bps: u64, priority: u8, on: bool) -> Self {
        let mut layers = [0; MAX_LAYERS];
        layers[0] = bps;
        Demand {
            kind,
            layers,
            n_layers: 1,
            priority,
            on: on.then_some(0),
        }
    }

    fn rates(&self) -> &[u64] {
        &self.layers[..self.n_layers.clamp(1, MAX_LAYERS)]
    }

    /// What moving to (or staying at) `layer` asks of the estimate.
    fn need(&self, layer: usize) -> f64 {
        let bps = self.rates()[layer] as f64;
        match self.on {
            Some(on) if layer <= on => bps,
            _ => bps * UP_MARGIN,
        }
    }
}

/// Decides each track's layer: `out[i]` is written for `demands[i]` (`None`: paused). Returns
/// the bps left over.
pub fn allocate(estimate_bps: u64, demands: &[Demand], out: &mut [Option<usize>]) -> u64 {
    let mut left = estimate_bps as f64;
    for (i, d) in demands.iter().enumerate() {
        if d.kind == MediaKind::Audio {
            // Audio is never sacrificed for video, whatever the estimate says.
            out[i] = Some(0);
            left -= d.rates()[0] as f64;
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
    // Every video at its lowest layer first.
    for &i in &order[..n] {
        let d = &demands[i];
        out[i] = (d.need(0) <= left).then_some(0);
        if out[i].is_some() {
            left -= d.rates()[0] as f64;
        }
    }
    // Then the highest layer that fits, track by track.
    for &i in &order[..n] {
        let d = &demands[i];
        if out[i].is_none() {
            continue;
        }
        let base = d.rates()[0] as f64;
        if let Some(best) = (1..d.rates().len())
            .rev()
            .find(|&k| d.need(k) - base <= left)
        {
            out[i] = Some(best);
            left -= d.rates()[best] as f64 - base;
        }
    }
    left.max(0.0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(bps: u64) -> Demand {
        Demand::single(MediaKind::Audio, bps, 0, true)
    }

    fn v(bps: u64, priority: u8, on: bool) -> Demand {
        Demand::single(MediaKind::Video, bps, priority, on)
    }

    /// Simulcast video with these layer rates, on `on`.
    fn sim(rates: &[u64], priority: u8, on: Option<usize>) -> Demand {
        let mut layers = [0; MAX_LAYERS];
        layers[..rates.len()].copy_from_slice(rates);
        Demand {
            kind: MediaKind::Video,
            layers,
            n_layers: rates.len(),
            priority,
            on,
        }
    }

    #[test]
    fn table() {
        let on = Some(0);
        let off = None;
        type Case = (&'static str, u64, Vec<Demand>, Vec<Option<usize>>);
        let cases: Vec<Case> = vec![
            (
                "plenty",
                3_000_000,
                vec![a(40_000), v(1_000_000, 0, true), v(1_000_000, 0, true)],
                vec![on, on, on],
            ),
            (
                "one video fits: the speaker's",
                1_200_000,
                vec![a(40_000), v(1_000_000, 0, true), v(1_000_000, 1, true)],
                vec![on, off, on],
            ),
            (
                "audio only",
                150_000,
                vec![a(40_000), v(300_000, 0, true), a(40_000)],
                vec![on, off, on],
            ),
            (
                "audio even when it does not fit",
                10_000,
                vec![a(40_000), a(40_000)],
                vec![on, on],
            ),
            (
                "a paused track needs a margin to resume",
                350_000,
                vec![a(40_000), v(300_000, 0, false)],
                vec![on, off],
            ),
            (
                "a running one keeps going at the same estimate",
                350_000,
                vec![a(40_000), v(300_000, 0, true)],
                vec![on, on],
            ),
            (
                "resumes with the margin",
                450_000,
                vec![a(40_000), v(300_000, 0, false)],
                vec![on, on],
            ),
            (
                "simulcast: the top layer fits",
                2_000_000,
                vec![a(40_000), sim(&[150_000, 500_000, 1_500_000], 0, Some(2))],
                vec![on, Some(2)],
            ),
            (
                "simulcast: a 300 kbps link gets the low layer",
                300_000,
                vec![a(40_000), sim(&[150_000, 500_000, 1_500_000], 0, Some(2))],
                vec![on, Some(0)],
            ),
            (
                "simulcast: going up needs the margin",
                560_000,
                vec![a(40_000), sim(&[150_000, 500_000, 1_500_000], 0, Some(0))],
                vec![on, Some(0)],
            ),
            (
                "simulcast: staying up does not",
                560_000,
                vec![a(40_000), sim(&[150_000, 500_000, 1_500_000], 0, Some(1))],
                vec![on, Some(1)],
            ),
            (
                "simulcast: everyone's low layer before anyone's high one",
                700_000,
                vec![
                    a(40_000),
                    sim(&[150_000, 500_000, 1_500_000], 1, Some(2)),
                    sim(&[150_000, 500_000, 1_500_000], 0, Some(2)),
                ],
                vec![on, Some(1), Some(0)],
            ),
            (
                "simulcast: paused below its lowest layer",
                150_000,
                vec![a(40_000), sim(&[150_000, 500_000], 0, Some(0))],
                vec![on, off],
            ),
        ];
        for (name, estimate, demands, want) in cases {
            let mut out = vec![None; demands.len()];
            allocate(estimate, &demands, &mut out);
            assert_eq!(out, want, "{name}");
        }
    }

    /// Whatever the estimate and the mix, every audio track stays on, and the video chosen
    /// fits the estimate once audio is served (or only audio is on).
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
                    match (seed >> i) & 3 {
                        0 => a(bps),
                        1 => v(bps, (i % 3) as u8, (seed >> (i + 9)) & 1 == 0),
                        _ => sim(&[bps / 4, bps / 2, bps], (i % 3) as u8, Some(i % 3)),
                    }
                })
                .collect();
            let mut out = vec![None; demands.len()];
            allocate(estimate, &demands, &mut out);
            let mut video = 0;
            for (d, o) in demands.iter().zip(&out) {
                match d.kind {
                    MediaKind::Audio => {
                        assert_eq!(*o, Some(0), "audio dropped at {estimate} bps: {demands:?}")
                    }
                    MediaKind::Video => video += o.map_or(0, |l| d.layers[l]),
                }
            }
            let audio: u64 = demands
                .iter()
                .filter(|d| d.kind == MediaKind::Audio)
                .map(|d| d.layers[0])
                .sum();
            assert!(
                video == 0 || audio + video <= estimate,
                "video over the estimate at {estimate} bps: {demands:?} -> {out:?}"
            );
        }
    }
}
