//! What an SVC (VP9 or AV1) track sends per spatial and temporal layer, and the choices it offers the
//! allocator: the lowest picture at its lowest frame rate, then each picture size at full rate.

use std::time::Instant;

use super::alloc::{Demand, MAX_LAYERS};
use super::{MediaKind, RateMeter};
use crate::core::forward::{LayerFrame, SvcLayers};
use crate::core::rtp::codec::{av1_dd, vp9};

/// Spatial and temporal ids measured (more are forwarded, but not chosen between).
const IDS: usize = 4;

/// One choice: the layers sent, and what they need in bps.
pub(super) type Choice = (SvcLayers, u64);

#[derive(Default)]
pub(super) struct SvcRates {
    /// By spatial, then temporal id.
    meters: [[RateMeter; IDS]; IDS],
}

impl SvcRates {
    /// Counts one VP9 packet (`len` bytes on the wire) in the layer its descriptor names.
    pub fn on_vp9(&mut self, now: Instant, payload: &[u8], len: usize) {
        if let Some(d) = vp9::Descriptor::parse(payload).filter(|d| d.layered) {
            self.on_layer(now, d.sid, d.tid, len);
        }
    }

    /// Counts one packet of layer (`spatial`, `temporal`).
    pub fn on_layer(&mut self, now: Instant, spatial: u8, temporal: u8, len: usize) {
        if let Some(m) = self
            .meters
            .get_mut(usize::from(spatial))
            .and_then(|m| m.get_mut(usize::from(temporal)))
        {
            m.on_bytes(now, len);
        }
    }

    /// The choices the stream offers now, lowest first, into `out`; returns how many. 0 when
    /// it has a single layer (nothing to choose).
    pub fn choices(&self, now: Instant, out: &mut [Choice; MAX_LAYERS]) -> usize {
        let mut bps = [[0u64; IDS]; IDS];
        let (mut spatial, mut temporal) = (0, 0);
        for (s, row) in self.meters.iter().enumerate() {
            for (t, m) in row.iter().enumerate() {
                bps[s][t] = m.bps(now);
                if bps[s][t] > 0 {
                    spatial = spatial.max(s + 1);
                    temporal = temporal.max(t + 1);
                }
            }
        }
        if spatial * temporal <= 1 {
            return 0;
        }
        // Every layer up to (s, t): what a viewer of that choice is sent.
        let need = |s: usize, t: usize| -> u64 {
            bps[..=s].iter().map(|r| r[..=t].iter().sum::<u64>()).sum()
        };
        let layers = |s: usize, t: usize| SvcLayers {
            spatial: s as u8,
            temporal: t as u8,
        };
        let mut all = [(SvcLayers::ALL, 0); IDS + 1];
        let mut n = 0;
        if temporal > 1 {
            all[n] = (layers(0, 0), need(0, 0));
            n += 1;
        }
        for s in 0..spatial {
            all[n] = (layers(s, temporal - 1), need(s, temporal - 1));
            n += 1;
        }
        // The best ones when there are more than the allocator weighs.
        let skip = n.saturating_sub(MAX_LAYERS);
        out[..n - skip].copy_from_slice(&all[skip..n]);
        n - skip
    }
}

/// The allocator's view of an SVC track offering `choices`, for a viewer sent up to `target`
/// (`None`: paused).
pub(super) fn demand(choices: &[Choice], priority: u8, target: Option<SvcLayers>) -> Demand {
    let mut d = Demand::single(MediaKind::Video, 0, priority, false);
    for (k, c) in choices.iter().enumerate() {
        d.layers[k] = c.1;
    }
    d.n_layers = choices.len();
    // The best choice within what the viewer follows (every layer, at first).
    d.on = target.map(|t| {
        choices
            .iter()
            .rposition(|c| c.0.spatial <= t.spatial && c.0.temporal <= t.temporal)
            .unwrap_or(0)
    });
    d
}

/// The dependency descriptors of an AV1 track: the structure of its last key frame.
#[derive(Default)]
pub(super) struct DdState {
    structure: av1_dd::Structure,
    has_structure: bool,
}

impl DdState {
    /// The layers of the frame a packet's descriptor describes; `None` where it cannot be read
    /// (the packet is then forwarded whole). Only the newest packets' structures are kept: a late
    /// one's is read but not taken over.
    pub fn frame(&mut self, data: &[u8], newest: bool) -> Option<LayerFrame> {
        let mut late = None;
        let (structure, has) = if newest {
            (&mut self.structure, &mut self.has_structure)
        } else {
            let (s, h) = late.insert((self.structure.clone(), self.has_structure));
            (s, h)
        };
        let f = av1_dd::parse(data, structure, has).ok()?;
        let s = &*structure;
        let mut switch_points = 0u64;
        for (dt, &(spatial, temporal)) in s.target_layers[..usize::from(s.decode_targets)]
            .iter()
            .enumerate()
        {
            if f.dti(dt) == av1_dd::DTI_SWITCH && spatial < 8 && temporal < 8 {
                switch_points |= 1 << (spatial * 8 + temporal);
            }
        }
        Some(LayerFrame {
            start: f.start,
            end: f.end,
            spatial: f.spatial,
            temporal: f.temporal,
            key: f.new_structure,
            switch_points,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn layer(sid: u8, tid: u8) -> [u8; 3] {
        [0x2c, (tid << 5) | (sid << 1), 0]
    }

    #[test]
    fn choices_and_their_rates() {
        let t0 = Instant::now();
        let mut out = [(SvcLayers::ALL, 0); MAX_LAYERS];
        // (spatial layers, temporal layers) sent, then the choices expected: (s, t, kbps).
        type Want = &'static [(u8, u8, u64)];
        let cases: &[((u8, u8), Want)] = &[
            ((1, 1), &[]),
            ((1, 3), &[(0, 0, 8), (0, 2, 24)]),
            ((3, 1), &[(0, 0, 8), (1, 0, 16), (2, 0, 24)]),
            ((3, 3), &[(0, 0, 8), (0, 2, 24), (1, 2, 48), (2, 2, 72)]),
            ((4, 2), &[(0, 1, 16), (1, 1, 32), (2, 1, 48), (3, 1, 64)]),
        ];
        for (i, ((spatial, temporal), want)) in cases.iter().enumerate() {
            let mut r = SvcRates::default();
            for ms in 0..=1000u64 {
                let now = t0 + Duration::from_millis(ms);
                for s in 0..*spatial {
                    for t in 0..*temporal {
                        // 1 kB per second per layer: 8 kbps.
                        if ms % 100 == 0 && ms < 1000 || ms == 1000 {
                            r.on_vp9(now, &layer(s, t), if ms == 1000 { 0 } else { 100 });
                        }
                    }
                }
            }
            let n = r.choices(t0 + Duration::from_millis(1000), &mut out);
            let got: Vec<(u8, u8, u64)> = out[..n]
                .iter()
                .map(|(l, bps)| (l.spatial, l.temporal, bps / 1000))
                .collect();
            assert_eq!(got, *want, "case {i}");
        }
    }

    #[test]
    fn demand_marks_the_choice_followed() {
        let l = |s, t| SvcLayers {
            spatial: s,
            temporal: t,
        };
        let choices = [(l(0, 0), 10), (l(0, 2), 30), (l(1, 2), 60), (l(2, 2), 100)];
        let on = |t| demand(&choices, 0, t).on;
        assert_eq!(on(Some(SvcLayers::ALL)), Some(3));
        assert_eq!(on(Some(l(1, 2))), Some(2));
        assert_eq!(on(Some(l(1, 1))), Some(0));
        assert_eq!(on(None), None);
        assert_eq!(demand(&choices, 0, None).layers, [10, 30, 60, 100]);
    }
}
