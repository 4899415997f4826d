//! A small fixed-size latency histogram.
//!
//! Each power-of-two octave of nanoseconds is split into eight linear
//! sub-buckets, so a reported quantile is within 12.5% of the true value.
//! The whole histogram is 1.3 KiB, small enough to keep one per edge and per
//! stage of every session.

use std::time::Duration;

/// Sub-buckets per octave. A power of two.
const SUB_BUCKETS: usize = 8;
const SUB_BITS: u32 = SUB_BUCKETS.trailing_zeros();
/// Octaves covered: 2^41 ns is about 36 minutes, far beyond any latency of
/// interest. Longer values land in the last bucket.
const OCTAVES: usize = 41;
const BUCKETS: usize = OCTAVES * SUB_BUCKETS;

/// Counts of durations in logarithmic buckets.
#[derive(Clone)]
pub struct LatencyHistogram {
    counts: Box<[u32; BUCKETS]>,
    total: u64,
    max_nanos: u64,
    sum_nanos: u128,
}

impl std::fmt::Debug for LatencyHistogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LatencyHistogram")
            .field("count", &self.total)
            .field("p50", &self.quantile(0.5))
            .field("max", &self.max())
            .finish()
    }
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self::new()
    }
}

fn bucket_of(nanos: u64) -> usize {
    if nanos < SUB_BUCKETS as u64 {
        return nanos as usize;
    }
    let octave = 63 - nanos.leading_zeros();
    // The top SUB_BITS bits below the leading one pick the sub-bucket.
    let sub = ((nanos >> (octave - SUB_BITS)) as usize) & (SUB_BUCKETS - 1);
    let index = (octave - SUB_BITS + 1) as usize * SUB_BUCKETS + sub;
    index.min(BUCKETS - 1)
}

/// Returns the midpoint in nanoseconds of the values that fall in `index`.
fn bucket_midpoint(index: usize) -> u64 {
    if index < SUB_BUCKETS {
        return index as u64;
    }
    let octave = (index / SUB_BUCKETS) as u32 + SUB_BITS - 1;
    let sub = (index % SUB_BUCKETS) as u64;
    let width = 1_u64 << (octave - SUB_BITS);
    (1_u64 << octave) + sub * width + width / 2
}

impl LatencyHistogram {
    /// An empty histogram.
    pub fn new() -> Self {
        LatencyHistogram { counts: Box::new([0; BUCKETS]), total: 0, max_nanos: 0, sum_nanos: 0 }
    }

    /// Adds one value.
    pub fn record(&mut self, value: Duration) {
        let nanos = u64::try_from(value.as_nanos()).unwrap_or(u64::MAX);
        let bucket = &mut self.counts[bucket_of(nanos)];
        *bucket = bucket.saturating_add(1);
        self.total += 1;
        self.max_nanos = self.max_nanos.max(nanos);
        self.sum_nanos += u128::from(nanos);
    }

    /// Returns the number of values recorded.
    pub fn count(&self) -> u64 {
        self.total
    }

    /// Returns the largest value recorded, exactly.
    pub fn max(&self) -> Duration {
        Duration::from_nanos(self.max_nanos)
    }

    /// Returns the mean of the values recorded.
    pub fn mean(&self) -> Duration {
        if self.total == 0 {
            return Duration::ZERO;
        }
        Duration::from_nanos(u64::try_from(self.sum_nanos / u128::from(self.total)).unwrap_or(u64::MAX))
    }

    /// Returns the sum of the values recorded.
    pub fn sum(&self) -> Duration {
        Duration::from_nanos(u64::try_from(self.sum_nanos).unwrap_or(u64::MAX))
    }

    /// Returns the value below which a fraction `q` (0.0 to 1.0) of the
    /// values fall, within 12.5%; zero when empty.
    pub fn quantile(&self, q: f64) -> Duration {
        if self.total == 0 {
            return Duration::ZERO;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0_u64;
        for (index, &count) in self.counts.iter().enumerate() {
            seen += u64::from(count);
            if seen >= rank && index == BUCKETS - 1 {
                // The last bucket is open-ended, so its midpoint means nothing.
                return self.max();
            }
            if seen >= rank {
                return Duration::from_nanos(bucket_midpoint(index).min(self.max_nanos));
            }
        }
        self.max()
    }

    /// Returns how many values were at most `bound`, counting whole buckets,
    /// for Prometheus bucket lines.
    pub fn count_at_most(&self, bound: Duration) -> u64 {
        let last = bucket_of(u64::try_from(bound.as_nanos()).unwrap_or(u64::MAX));
        self.counts[..=last].iter().map(|&c| u64::from(c)).sum()
    }

    /// Adds every value of `other` into this histogram.
    pub fn merge(&mut self, other: &LatencyHistogram) {
        for (mine, theirs) in self.counts.iter_mut().zip(other.counts.iter()) {
            *mine = mine.saturating_add(*theirs);
        }
        self.total += other.total;
        self.max_nanos = self.max_nanos.max(other.max_nanos);
        self.sum_nanos += other.sum_nanos;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_within_bucket_error() {
        let mut histogram = LatencyHistogram::new();
        for micros in 1..=1000_u64 {
            histogram.record(Duration::from_micros(micros));
        }
        for (q, expected) in [(0.5, 500.0), (0.95, 950.0), (0.99, 990.0)] {
            let got = histogram.quantile(q).as_secs_f64() * 1e6;
            let error = (got - expected).abs() / expected;
            assert!(error <= 0.125, "q{q}: got {got} µs, expected {expected} µs");
        }
        assert_eq!(histogram.count(), 1000);
        assert_eq!(histogram.max(), Duration::from_micros(1000));
    }

    #[test]
    fn bucket_midpoints_increase() {
        let mut previous = 0;
        for index in 1..BUCKETS {
            let midpoint = bucket_midpoint(index);
            assert!(midpoint > previous, "bucket {index}");
            assert_eq!(bucket_of(midpoint), index, "midpoint of bucket {index} maps back");
            previous = midpoint;
        }
    }

    #[test]
    fn empty_histogram_is_zero() {
        let histogram = LatencyHistogram::new();
        assert_eq!(histogram.quantile(0.99), Duration::ZERO);
        assert_eq!(histogram.mean(), Duration::ZERO);
    }

    #[test]
    fn huge_values_saturate_last_bucket() {
        let mut histogram = LatencyHistogram::new();
        histogram.record(Duration::from_secs(100_000));
        assert_eq!(histogram.count_at_most(Duration::from_secs(1)), 0);
        assert_eq!(histogram.quantile(1.0), Duration::from_secs(100_000));
    }
}
