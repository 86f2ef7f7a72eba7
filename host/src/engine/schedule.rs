//! Static assignment of a phase's work units to worker threads.
//!
//! Every phase of the tiled engine has a fixed list of work units (tile columns, replica groups,
//! replicas) with very different amounts of work: a hidden-layer column integrates hundreds of
//! inputs, the readout column a few spikes. Each thread runs the same units every step, so that a
//! tile's memory stays in one core's cache. The list is cut into one contiguous run of units per
//! thread, each unit going to the thread whose share of the total cost holds the unit's midpoint.
//! The loads then differ by at most about one unit, and units listed next to each other share a
//! thread except where a cut falls (the tiled engine lists each replica group's tile columns
//! together, so that a thread runs the same samples in every phase).
//!
//! The assignment never changes results: units of one phase write disjoint memory.
//!
//! ```
//! use spiketile::engine::schedule::assign;
//! // Five equal units and a small one on two threads.
//! let plan = assign(&[10, 10, 10, 10, 10, 1], 2);
//! assert_eq!(plan, vec![vec![0, 1, 2], vec![3, 4, 5]]);
//! ```

/// Units per thread (each a contiguous, increasing run) for units of the given `costs`.
pub fn assign(costs: &[u64], threads: usize) -> Vec<Vec<usize>> {
    let threads = threads.max(1);
    let total: u128 = costs.iter().map(|&c| c.max(1) as u128).sum();
    let mut units = vec![Vec::new(); threads];
    let mut before = 0u128;
    for (u, &c) in costs.iter().enumerate() {
        let c = c.max(1) as u128;
        // Which thread's share [k, k+1) * total / threads holds the unit's midpoint.
        let k = ((2 * before + c) * threads as u128 / (2 * total)) as usize;
        units[k.min(threads - 1)].push(u);
        before += c;
    }
    units
}

#[cfg(test)]
mod tests {
    use super::assign;

    #[test]
    fn every_unit_runs_exactly_once() {
        for threads in 1..5 {
            let costs: Vec<u64> = (0..17).map(|i| (i * 7 % 5) as u64).collect();
            let plan = assign(&costs, threads);
            assert_eq!(plan.len(), threads);
            let mut all: Vec<usize> = plan.concat();
            all.sort_unstable();
            assert_eq!(all, (0..17).collect::<Vec<_>>());
        }
    }

    /// The W layout: 15 equal hidden columns and one light readout column.
    #[test]
    fn loads_are_balanced() {
        let mut costs = vec![100u64; 15];
        costs.push(5);
        let plan = assign(&costs, 2);
        let load = |k: usize| plan[k].iter().map(|&u| costs[u]).sum::<u64>();
        assert_eq!((load(0), load(1)), (800, 705));
        assert_eq!(plan[0], (0..8).collect::<Vec<_>>());
    }

    #[test]
    fn more_threads_than_units() {
        assert_eq!(assign(&[3, 1], 4), vec![vec![], vec![0], vec![], vec![1]]);
        assert_eq!(assign(&[], 2), vec![Vec::<usize>::new(), vec![]]);
    }
}
