//! The work units of a batch (replicas, replica groups, tile columns) and their assignment to
//! threads by measured cost.

use super::TiledEngine;
use crate::engine::schedule;
use std::sync::atomic::Ordering;

/// The work units of a batch and which of them each thread runs.
pub(super) struct Units {
    /// Replica units `(l, r)` (exchange phases).
    pub(super) replica: Vec<(usize, usize)>,
    /// Replica-group units `(l, p, g)` (the forward pass's compute phases).
    pub(super) group: Vec<(usize, usize, usize)>,
    /// Backward units `(l, p0, p1, g)`: replica group `g` of columns `p0..p1` of layer `l`, one
    /// column each, or all of the layer's with [`LayerRt::unit_sums`](super::layer::LayerRt).
    pub(super) back: Vec<(usize, usize, usize, usize)>,
    /// Column units `(l, p)` (update).
    pub(super) column: Vec<(usize, usize)>,
    /// List units `(l, g, run)` of the layers with deferred input-weight gradients.
    pub(super) lists: Vec<(usize, usize, usize)>,
    /// Per thread and layer, by [`Measured`] phase: indices into `group` (running ahead), into
    /// `replica` (merging) and into `back` (backward blocks).
    pub(super) mine_layer: Vec<Vec<[Vec<usize>; 3]>>,
    /// Per thread: indices into `back` for the backward step by step (all layers at once).
    pub(super) mine_steps: Vec<Vec<usize>>,
    /// Per thread: indices into `column`.
    pub(super) mine_columns: Vec<Vec<usize>>,
    /// Per thread and layer: indices into `lists`.
    pub(super) mine_lists: Vec<Vec<Vec<usize>>>,
}

/// The units of one phase, by thread (see [`Units::list`]).
#[derive(Clone, Copy)]
pub(super) enum Lists {
    /// Layer `l`'s units of a phase measured for the schedule (the forward compute's are replica
    /// groups, the forward exchange's replicas, the backward blocks' backward units; the sums of
    /// the partials run on the forward exchange's lists).
    Layer(usize, Measured),
    /// The backward pass step by step: every layer's replica groups.
    Steps,
    /// The update: tile columns.
    Columns,
    /// Layer `l`'s lists of deferred gradients' uses: `(l, group, run)`.
    Uses(usize),
}

impl Units {
    /// Thread `tid`'s units of `lists` (indices into [`Units::replica`], [`Units::group`] or
    /// [`Units::column`]).
    pub(super) fn list(&self, tid: usize, lists: Lists) -> &[usize] {
        match lists {
            Lists::Layer(l, k) => &self.mine_layer[tid][l][k as usize],
            Lists::Steps => &self.mine_steps[tid],
            Lists::Columns => &self.mine_columns[tid],
            Lists::Uses(l) => &self.mine_lists[tid][l],
        }
    }

    /// How many units of the kind `lists` lists there are (for the trace).
    pub(super) fn count(&self, lists: Lists) -> usize {
        match lists {
            Lists::Layer(_, Measured::ForwardExchange) => self.replica.len(),
            Lists::Layer(_, Measured::BackwardCompute) | Lists::Steps => self.back.len(),
            Lists::Layer(..) => self.group.len(),
            Lists::Columns => self.column.len(),
            Lists::Uses(l) => self.lists.iter().filter(|u| u.0 == l).count(),
        }
    }
}

/// The phases whose units' times are measured to schedule the next batch (index into
/// [`TiledEngine::unit_ns`] and [`Units::mine_layer`]).
#[derive(Clone, Copy)]
pub(super) enum Measured {
    ForwardCompute = 0,
    ForwardExchange = 1,
    BackwardCompute = 2,
}

impl TiledEngine {
    /// The work units of this engine and their assignment to `threads` threads, by estimated
    /// cost (see [`schedule::assign`]): for the compute units, the time they took in the last
    /// training batch. The assignment changes no result, only which core does the work.
    pub(super) fn units(&self, threads: usize) -> Units {
        let mut replica = Vec::new();
        let mut group = Vec::new();
        let mut column = Vec::new();
        let mut back = Vec::new();
        let (mut rc, mut gc, mut cc, mut bc) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (l, lr) in self.layers.iter().enumerate() {
            let lp = &lr.plan;
            let (m, p_count) = (lp.micro_batch as u64, lr.p() as u64);
            let fan_in = (lp.in_capacity + if lp.recurrent { lp.capacity } else { 0 }) as u64;
            for r in 0..lp.replicas {
                replica.push((l, r));
                rc.push(m * p_count);
            }
            for (p, &(_, n)) in lp.splits.iter().enumerate() {
                for g in 0..lr.groups() {
                    group.push((l, p, g));
                    gc.push(lr.group(g).len() as u64 * m * fan_in * n as u64);
                }
                column.push((l, p));
                let width = lp.inputs + if lp.recurrent { lp.width } else { 0 };
                cc.push((width * n) as u64 * (lp.replicas as u64 + 2));
            }
            for p0 in (0..lr.p()).step_by(lr.back_cols(0).len()) {
                let p1 = lr.back_cols(p0).end;
                for g in 0..lr.groups() {
                    back.push((l, p0, p1, g));
                    let n: usize = lp.splits[p0..p1].iter().map(|&(_, n)| n).sum();
                    bc.push(lr.group(g).len() as u64 * m * fan_in * n as u64);
                }
            }
        }
        // Measured costs, once every unit has been measured: the static estimates above cannot
        // know how active each layer is.
        let measured: [Vec<u64>; 3] = self
            .unit_ns
            .each_ref()
            .map(|counters| counters.iter().map(|c| c.swap(0, Ordering::Relaxed)).collect());
        let costs = |k: usize, units: &[usize]| -> Vec<u64> {
            let statics = [&gc, &rc, &bc][k];
            let m = &measured[k];
            if units.iter().all(|&i| m[i] > 0) {
                units.iter().map(|&i| m[i]).collect()
            } else {
                units.iter().map(|&i| statics[i]).collect()
            }
        };
        let threads = threads.max(1);
        let mut mine_layer: Vec<Vec<[Vec<usize>; 3]>> =
            vec![vec![Default::default(); self.layers.len()]; threads];
        // Forward and backward blocks: each layer's units on their own (the layers run one
        // after the other). Replica groups one after the other, each with all its columns: the
        // cuts between threads fall between groups, so a thread runs the same samples in every
        // layer and phase (its replicas' merges, the next layer's reads of their buffers, the
        // backward pass's reads of the partials the layer above wrote all stay in its cache).
        // 700-4096-20, three alternating traced pairs: thread time 92.1-93.8 ms per batch
        // against 95.1-97.0 with the columns one after the other (backward 6 %, the readout's
        // forward 25 % less); W within noise.
        for l in 0..self.layers.len() {
            let mut groups: Vec<usize> = (0..group.len()).filter(|&i| group[i].0 == l).collect();
            groups.sort_by_key(|&i| (group[i].2, group[i].1));
            let replicas = (0..replica.len()).filter(|&i| replica[i].0 == l).collect();
            let mut backs: Vec<usize> = (0..back.len()).filter(|&i| back[i].0 == l).collect();
            backs.sort_by_key(|&i| (back[i].3, back[i].1));
            for (k, units) in [groups, replicas, backs].iter().enumerate() {
                let plan = schedule::assign(&costs(k, units), threads);
                for (tid, picked) in plan.into_iter().enumerate() {
                    let picked: Vec<usize> = picked.into_iter().map(|j| units[j]).collect();
                    mine_layer[tid][l][k] = picked;
                }
            }
        }
        // Backward step by step: every layer's units in each step's phase.
        let all: Vec<usize> = (0..back.len()).collect();
        let mine_steps =
            schedule::assign(&costs(Measured::BackwardCompute as usize, &all), threads);
        let mine_columns = schedule::assign(&cc, threads);
        // Lists, layer by layer: each group's runs list about as many uses.
        let mut lists = Vec::new();
        let mut mine_lists = vec![vec![Vec::new(); self.layers.len()]; threads];
        for (l, lr) in self.layers.iter().enumerate() {
            if let Some(d) = &lr.deferred {
                let first = lists.len();
                let runs = d.run_count();
                lists.extend((0..lr.groups()).flat_map(|g| (0..runs).map(move |ri| (l, g, ri))));
                let plan = schedule::assign(&vec![1; lists.len() - first], threads);
                for (tid, picked) in plan.into_iter().enumerate() {
                    mine_lists[tid][l] = picked.into_iter().map(|j| first + j).collect();
                }
            }
        }
        Units {
            replica,
            group,
            back,
            column,
            lists,
            mine_layer,
            mine_steps,
            mine_columns,
            mine_lists,
        }
    }
}
