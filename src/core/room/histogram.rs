//! Distributions the relay measures for operators (time to first media, and what viewers'
//! receiver reports say: loss, jitter, round-trip time), kept as Prometheus exports histograms:
//! counts of observations at or under each bound, their sum and their count. Fixed size and
//! allocation-free, so observing one on the packet path costs a few comparisons.

/// Most bounds a histogram has (the last bucket, over every bound, is one more).
pub const MAX_BOUNDS: usize = 12;

/// Time from a viewer session's start (its signalling request) to the first media packet sent
/// to it, in µs.
pub const JOIN_US: &[u64] = &[
    100_000, 200_000, 300_000, 500_000, 750_000, 1_000_000, 1_500_000, 2_000_000, 3_000_000,
    5_000_000, 10_000_000,
];
/// Round-trip time to a viewer (its receiver reports echo the sender reports it was sent), µs.
pub const RTT_US: &[u64] = &[
    5_000, 10_000, 20_000, 50_000, 100_000, 150_000, 200_000, 300_000, 500_000, 1_000_000,
];
/// Interarrival jitter a viewer reports for a stream, µs.
pub const JITTER_US: &[u64] = &[
    1_000, 2_000, 5_000, 10_000, 20_000, 30_000, 50_000, 100_000, 200_000,
];
/// Loss a viewer reports for a stream since its previous report, per mille.
pub const LOSS_PER_MILLE: &[u64] = &[0, 5, 10, 20, 50, 100, 200, 500];

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Histogram {
    /// Observations per bucket: `counts[i]` at or under `bounds[i]` (and over the one before),
    /// `counts[bounds.len()]` over every bound.
    pub counts: [u64; MAX_BOUNDS + 1],
    pub sum: u64,
    pub count: u64,
}

impl Histogram {
    pub fn observe(&mut self, bounds: &[u64], value: u64) {
        let i = bounds
            .iter()
            .position(|&b| value <= b)
            .unwrap_or(bounds.len())
            .min(MAX_BOUNDS);
        self.counts[i] += 1;
        self.sum = self.sum.saturating_add(value);
        self.count += 1;
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (c, o) in self.counts.iter_mut().zip(other.counts) {
            *c += o;
        }
        self.sum = self.sum.saturating_add(other.sum);
        self.count += other.count;
    }

    /// Observations at or under each bound (Prometheus' `le` buckets), then in all.
    pub fn cumulative<'a>(&'a self, bounds: &'a [u64]) -> impl Iterator<Item = (u64, u64)> + 'a {
        bounds
            .iter()
            .enumerate()
            .map(move |(i, &b)| (b, self.counts[..=i].iter().sum::<u64>()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_land_in_the_first_bucket_that_holds_them() {
        let bounds = &[10, 20, 50];
        let mut h = Histogram::default();
        // (value, bucket)
        for (v, bucket) in [
            (0, 0),
            (10, 0),
            (11, 1),
            (20, 1),
            (49, 2),
            (51, 3),
            (u64::MAX, 3),
        ] {
            let before = h.counts[bucket];
            h.observe(bounds, v);
            assert_eq!(h.counts[bucket], before + 1, "{v}");
        }
        assert_eq!(h.count, 7);
        let c: Vec<_> = h.cumulative(bounds).collect();
        assert_eq!(c, [(10, 2), (20, 4), (50, 5)]);
        let mut m = h;
        m.merge(&h);
        assert_eq!((m.count, m.counts[3]), (14, 4));
        assert_eq!(m.sum, u64::MAX, "the sum saturates");
    }

    #[test]
    fn every_metric_fits() {
        for b in [JOIN_US, RTT_US, JITTER_US, LOSS_PER_MILLE] {
            assert!(b.len() <= MAX_BOUNDS && b.windows(2).all(|w| w[0] < w[1]));
        }
    }
}
