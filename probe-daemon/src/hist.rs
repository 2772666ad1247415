//! Fixed-bucket histograms that merge (per-pod series, folded processes) and copy cheaply into a
//! scrape: a plain value, no lock. Pure.

/// Counts per bucket of fixed upper bounds (plus +Inf), with sum and count.
#[derive(Debug, Clone, PartialEq)]
pub struct Buckets {
    bounds: &'static [f64],
    /// Per bucket (not cumulative); the last one is +Inf.
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Buckets {
    /// `bounds`: increasing finite upper bounds.
    pub fn new(bounds: &'static [f64]) -> Buckets {
        Buckets { bounds, counts: vec![0; bounds.len() + 1], sum: 0.0, count: 0 }
    }

    pub fn observe(&mut self, v: f64) {
        let i = self.bounds.iter().position(|b| v <= *b).unwrap_or(self.bounds.len());
        self.counts[i] += 1;
        self.sum += v;
        self.count += 1;
    }

    /// Adds `other`'s observations. Histograms of other bounds are not mergeable: their counts
    /// go to the bucket of the same upper bound or above (the sum and count stay exact).
    pub fn merge(&mut self, other: &Buckets) {
        if std::ptr::eq(self.bounds, other.bounds) || self.bounds == other.bounds {
            for (a, b) in self.counts.iter_mut().zip(&other.counts) {
                *a += b;
            }
        } else {
            for (i, n) in other.counts.iter().enumerate() {
                let ub = other.bounds.get(i).copied().unwrap_or(f64::INFINITY);
                let j = self.bounds.iter().position(|b| ub <= *b).unwrap_or(self.bounds.len());
                self.counts[j] += n;
            }
        }
        self.sum += other.sum;
        self.count += other.count;
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn sum(&self) -> f64 {
        self.sum
    }

    /// (upper bound, count in that bucket), the last bound `f64::MAX` (+Inf): what
    /// prometheus-client's histogram encoder takes.
    pub fn encoder_buckets(&self) -> Vec<(f64, u64)> {
        self.bounds.iter().copied().chain([f64::MAX]).zip(self.counts.iter().copied()).collect()
    }

    /// (upper bound, observations ≤ it), the last bound +Inf.
    pub fn cumulative(&self) -> Vec<(f64, u64)> {
        let mut acc = 0;
        self.bounds
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(&self.counts)
            .map(|(b, n)| {
                acc += n;
                (b, acc)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: &[f64] = &[0.001, 0.01, 0.1];

    #[test]
    fn observes_merges_and_accumulates() {
        let mut a = Buckets::new(B);
        for v in [0.0005, 0.001, 0.05, 3.0] {
            a.observe(v);
        }
        assert_eq!(a.cumulative(), vec![(0.001, 2), (0.01, 2), (0.1, 3), (f64::INFINITY, 4)]);
        let mut b = Buckets::new(B);
        b.observe(0.005);
        a.merge(&b);
        assert_eq!(a.count(), 5);
        assert!((a.sum() - 3.0565).abs() < 1e-9);
        assert_eq!(a.encoder_buckets(), vec![(0.001, 2), (0.01, 1), (0.1, 1), (f64::MAX, 1)]);
        // Other bounds: counts land at or above their own upper bound.
        const C: &[f64] = &[0.005, 1.0];
        let mut c = Buckets::new(C);
        c.observe(0.004);
        c.observe(0.5);
        a.merge(&c);
        assert_eq!(a.cumulative(), vec![(0.001, 2), (0.01, 4), (0.1, 5), (f64::INFINITY, 7)]);
    }
}
