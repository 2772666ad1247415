//! How often each Go process's goroutine-state breakdown is read, under a per-node CPU budget.
//!
//! The breakdown (goroutines by status and wait reason) reads every g of a process: its cost grows
//! with the goroutine count (~0.6 µs per g on a VM). Everything else of the periodic read is
//! O(P) and happens every interval. The breakdowns share `[go] read_cpu_budget` (a fraction of
//! one core, summed over the node's Go processes) max-min fairly: a process whose breakdown costs
//! less than its fair share is read as often as `[go] goroutine_states_interval_seconds` allows
//! (30 s by default: the states are detail, the count is read every interval), and what it
//! leaves is shared by the others,
//! each of which is then read as often as its share allows (a big process less often). Processes
//! whose goroutine count itself needs the every-g read (their binary lacks what the O(P) count
//! needs) are read every interval whatever they cost; what they use is taken off the budget first.
//!
//! Pure: costs in, periods out (the discovery thread measures and applies them).

/// One process's breakdown, for the scheduler.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Demand {
    /// CPU seconds the last breakdown read took (thread CPU time).
    pub cost: f64,
    /// Read every interval regardless of the budget (the goroutine count depends on it).
    pub forced: bool,
}

/// Seconds between two breakdown reads of each process (same order as `demands`): no period is
/// shorter than `interval`, the budget (fraction of one core) is shared max-min fairly, and
/// Σ cost / period stays within it unless the forced reads alone overrun it; the others then
/// share a hundredth of the budget, so they are still read now and then. A budget of 0 gives
/// an infinite period to every process that costs anything.
///
/// No process that is not forced is read more often than every `shortest` seconds (at least
/// `interval`), even when the budget would allow it; forced ones are read every `interval`.
pub fn periods(demands: &[Demand], interval: f64, shortest: f64, budget: f64) -> Vec<f64> {
    let interval = if interval.is_finite() && interval > 0.0 { interval } else { 1.0 };
    let shortest = if shortest.is_finite() { shortest.max(interval) } else { interval };
    let budget = if budget.is_finite() && budget > 0.0 { budget } else { 0.0 };
    let mut out = vec![interval; demands.len()];
    // Forced reads first: they run every interval.
    let forced: f64 = demands.iter().filter(|d| d.forced).map(|d| rate(d.cost, interval)).sum();
    let mut left = (budget - forced).max(budget / 100.0);
    // The others by cost, cheapest first: each takes its full rate if it fits its fair share of
    // what is left, else every remaining one gets the fair share.
    let mut free: Vec<usize> = (0..demands.len()).filter(|&i| !demands[i].forced).collect();
    free.sort_by(|&a, &b| demands[a].cost.partial_cmp(&demands[b].cost).unwrap_or(std::cmp::Ordering::Equal));
    for &i in &free {
        out[i] = shortest;
    }
    let mut k = free.len();
    for (n, &i) in free.iter().enumerate() {
        let share = left / k as f64;
        let want = rate(demands[i].cost, shortest);
        if want <= share {
            left -= want;
            k -= 1;
            continue;
        }
        // From here on every process costs at least as much as this one: all get `share`.
        for &j in &free[n..] {
            out[j] = if share > 0.0 { (cost(demands[j].cost) / share).max(shortest) } else { f64::INFINITY };
        }
        break;
    }
    out
}

fn cost(c: f64) -> f64 {
    if c.is_finite() && c > 0.0 {
        c
    } else {
        0.0
    }
}

/// CPU fraction of reading at `cost` every `interval`.
fn rate(c: f64, interval: f64) -> f64 {
    cost(c) / interval
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(cost: f64) -> Demand {
        Demand { cost, forced: false }
    }

    const BUDGET: f64 = 0.005;

    /// The CPU fraction of the reads `periods` schedules for `demands`.
    fn spent(demands: &[Demand], periods: &[f64]) -> f64 {
        demands.iter().zip(periods).map(|(d, p)| if p.is_finite() && *p > 0.0 { cost(d.cost) / p } else { 0.0 }).sum()
    }

    #[test]
    fn a_shortest_period_holds_for_cheap_processes_not_for_forced_ones() {
        let ds = vec![d(0.000_2), Demand { cost: 0.000_2, forced: true }, d(0.3)];
        let p = periods(&ds, 5.0, 30.0, BUDGET);
        assert_eq!(p[0], 30.0, "{p:?}");
        assert_eq!(p[1], 5.0, "forced: every interval: {p:?}");
        // The big one shares what is left after the forced one's rate at its real interval.
        let left = BUDGET - 0.000_2 / 5.0 - 0.000_2 / 30.0;
        assert!((p[2] - 0.3 / left).abs() < 1e-9, "{p:?}");
        assert!(spent(&ds[..1], &p[..1]) + 0.000_2 / 5.0 + spent(&ds[2..], &p[2..]) <= BUDGET + 1e-12);
        // A shortest period below the interval is the interval.
        assert_eq!(periods(&[d(0.000_2)], 5.0, 1.0, BUDGET), vec![5.0]);
    }

    #[test]
    fn small_processes_are_read_every_interval() {
        // 100 processes of ~1,000 goroutines (~0.5 ms each) at 5 s: 1% of the budget's 0.5%.
        let ds: Vec<Demand> = (0..100).map(|i| d(0.000_2 + i as f64 * 1e-7)).collect();
        let p = periods(&ds, 5.0, 5.0, BUDGET);
        assert!(p.iter().all(|&x| x == 5.0), "{p:?}");
        assert!(spent(&ds, &p) <= BUDGET);
    }

    #[test]
    fn a_big_process_is_read_less_often_and_the_sum_stays_in_budget() {
        // 500,000 goroutines: ~0.3 s per read; read every 5 s that is 6% of a core.
        let ds = vec![d(0.3), d(0.001), d(0.002)];
        let p = periods(&ds, 5.0, 5.0, BUDGET);
        assert_eq!(p[1], 5.0);
        assert_eq!(p[2], 5.0);
        // The big one gets what the small ones leave: 0.005 − 0.0006 = 0.0044 → 68 s.
        assert!((p[0] - 0.3 / (BUDGET - 0.003 / 5.0)).abs() < 1e-9, "{p:?}");
        let s = spent(&ds, &p);
        assert!(s <= BUDGET + 1e-12 && s > BUDGET * 0.99, "spent {s}");
    }

    #[test]
    fn big_processes_share_the_budget_fairly() {
        let ds = vec![d(0.4), d(0.1), d(0.2)];
        let p = periods(&ds, 5.0, 5.0, BUDGET);
        // Each gets a third of the budget: period = cost / (budget / 3).
        for (x, c) in p.iter().zip([0.4, 0.1, 0.2]) {
            assert!((x - c * 3.0 / BUDGET).abs() < 1e-9, "{p:?}");
        }
        assert!((spent(&ds, &p) - BUDGET).abs() < 1e-12);
        // The costlier, the longer between reads.
        assert!(p[0] > p[2] && p[2] > p[1]);
    }

    #[test]
    fn everything_fits_a_large_budget() {
        let ds = vec![d(0.3), d(0.5)];
        assert_eq!(periods(&ds, 5.0, 5.0, 1.0), vec![5.0, 5.0]);
    }

    #[test]
    fn forced_reads_come_off_the_budget_first() {
        // A forced read of 0.02 s every 5 s uses 0.004 of the 0.005.
        let ds = vec![Demand { cost: 0.02, forced: true }, d(0.1)];
        let p = periods(&ds, 5.0, 5.0, BUDGET);
        assert_eq!(p[0], 5.0);
        assert!((p[1] - 0.1 / 0.001).abs() < 1e-9, "{p:?}");
        // A budget the forced reads overrun still reads the others, at a hundredth of it.
        let ds = vec![Demand { cost: 1.0, forced: true }, d(0.1)];
        let p = periods(&ds, 5.0, 5.0, BUDGET);
        assert_eq!(p[0], 5.0);
        assert!((p[1] - 0.1 / (BUDGET / 100.0)).abs() < 1e-6, "{p:?}");
    }

    #[test]
    fn unknown_and_odd_inputs() {
        assert!(periods(&[], 5.0, 5.0, BUDGET).is_empty());
        // Zero or bogus costs are free; a zero budget never reads the costly ones again.
        let p = periods(&[d(0.0), d(f64::NAN), d(-1.0)], 5.0, 5.0, BUDGET);
        assert_eq!(p, vec![5.0, 5.0, 5.0]);
        let p = periods(&[d(0.1)], 5.0, 5.0, 0.0);
        assert!(p[0].is_infinite());
        // Never shorter than the interval.
        let p = periods(&[d(1e-9)], 0.5, 0.5, BUDGET);
        assert_eq!(p, vec![0.5]);
    }
}
