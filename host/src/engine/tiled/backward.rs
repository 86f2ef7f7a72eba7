//! The backward pass: each tile gathers its `dL/dS` from the partials the layer above wrote, steps
//! back, and writes its own partials for the layer below; the sums of partials over a layer's
//! tiles; the prefetch hints of wide layers.

use super::TiledEngine;
use crate::engine::shared::Shared;
use crate::engine::InputBatch;
use spiketile_core::{SharedGrads, SharedWeights, SpikeView, StepInput, Tile, TileError};

impl TiledEngine {
    /// Backward compute of `steps` (from the last down) for replica group `g` of layer `l`'s
    /// tile columns `cols` (one, or with [`LayerRt::unit_sums`] all: [`Self::backward_columns`]):
    /// at each step, every replica in turn; every replica reads the column's weights, and those
    /// after the leader accumulate their weight gradients into its buffers, so one copy of each
    /// stays in this core's cache (the update needs only their sum).
    ///
    /// [`LayerRt::unit_sums`]: super::layer::LayerRt::unit_sums
    pub(super) fn backward_compute(
        &self,
        input: &InputBatch,
        (l, cols, g): (usize, std::ops::Range<usize>, usize),
        steps: std::ops::Range<usize>,
        vecs: &mut [f32],
    ) -> Result<(), TileError> {
        let lr = &self.layers[l];
        if let Some(d) = &lr.deferred {
            return self.backward_deferred(input, d, (l, cols, g), steps, vecs);
        }
        if cols.len() > 1 {
            return self.backward_columns(input, (l, cols, g), steps);
        }
        let (p, reps) = (cols.start, lr.group(g));
        // Safety: not the update phase.
        let shared = unsafe { self.col_weights(l, p) };
        // Safety: the tiles of group (l, p, g) and their partial out-buffers belong to this unit.
        let mut tile0 = unsafe { self.home(l, reps.start * lr.p() + p) }.tile()?;
        for t in steps.rev() {
            self.backward_group_step(input, (l, p, reps.clone()), t, &mut tile0, shared)?;
        }
        Ok(())
    }

    /// Backward step `t` of column `(l, p)` for the replicas `reps` of a group: the leader's
    /// tile `tile0`, then every other replica's, accumulating into the leader's gradients.
    #[inline(always)]
    fn backward_group_step(
        &self,
        input: &InputBatch,
        (l, p, reps): (usize, usize, std::ops::Range<usize>),
        t: usize,
        tile0: &mut Tile<'_>,
        shared: SharedWeights<'_>,
    ) -> Result<(), TileError> {
        let (sh, p_count) = (Some(shared), self.layers[l].p());
        self.backward_replica(input, l, reps.start, p, t, tile0, sh, None, None)?;
        let (dw, dv) = tile0.grads_mut();
        let mut grads = SharedGrads { dw, dv };
        for r in reps.start + 1..reps.end {
            // Safety: the tiles of the group belong to the caller's unit.
            let mut tile = unsafe { self.home(l, r * p_count + p) }.tile()?;
            let g = Some(grads.reborrow());
            self.backward_replica(input, l, r, p, t, &mut tile, sh, g, None)?;
        }
        Ok(())
    }

    /// [`Self::backward_compute`] of several columns `cols`: at each step, column after column
    /// (in order: a sample's partials are summed over the columns as they come). Kept out of
    /// line: with the loops of one column and of several in one function, W (one column per
    /// unit) ran 1-4 % slower.
    #[inline(never)]
    fn backward_columns(
        &self,
        input: &InputBatch,
        (l, cols, g): (usize, std::ops::Range<usize>, usize),
        steps: std::ops::Range<usize>,
    ) -> Result<(), TileError> {
        let lr = &self.layers[l];
        let reps = lr.group(g);
        for t in steps.rev() {
            for p in cols.clone() {
                // Safety: not the update phase.
                let shared = unsafe { self.col_weights(l, p) };
                // Safety: the tiles of group (l, p, g) and their partial out-buffers belong to
                // this unit.
                let mut tile0 = unsafe { self.home(l, reps.start * lr.p() + p) }.tile()?;
                self.backward_group_step(input, (l, p, reps.clone()), t, &mut tile0, shared)?;
            }
        }
        Ok(())
    }

    /// Adds column `p`'s partials `src` of sample `b` to layer `l`'s sums in `slot`
    /// ([`LayerRt::unit_sums`]: this unit runs every column of the sample, in order), so that
    /// each entry is the sum over the layer's tiles in tile order from zero, what
    /// [`Self::sum_partials`] would write. Out of line, as [`Self::backward_columns`].
    ///
    /// [`LayerRt::unit_sums`]: super::layer::LayerRt::unit_sums
    #[inline(never)]
    fn add_to_sums(&self, l: usize, p: usize, (slot, b): (usize, usize), src: &[f32]) {
        let k = self.layers[l].plan.in_capacity;
        let at = (slot * self.cfg.batch_size + b) * k;
        // Safety: the sums of this unit's samples belong to it alone.
        let dst = unsafe { self.layers[l].part_sum.slice_mut(at, src.len()) };
        if p == 0 {
            dst.iter_mut().zip(src).for_each(|(d, &x)| *d = 0.0 + x);
        } else {
            dst.iter_mut().zip(src).for_each(|(d, &x)| *d += x);
        }
    }

    /// The slot of the partial-`dL/dS` buffers that holds backward step `t`.
    fn slot(&self, t: usize) -> usize {
        self.slots[t]
    }

    /// Backward step `t` of replica `r`'s tile `tile` of column `(l, p)`, sample after sample:
    /// the `dL/dS` gather, the tile's step, its partials out. The input-weight gradients go to
    /// `grads` (or the tile's own), or with `deferred` (`[sample][lane]`) the `dL/dc` vectors
    /// go there instead (see [`super::deferred`]).
    pub(super) fn backward_replica(
        &self,
        input: &InputBatch,
        l: usize,
        r: usize,
        p: usize,
        t: usize,
        tile: &mut Tile<'_>,
        shared: Option<SharedWeights<'_>>,
        mut grads: Option<SharedGrads<'_>>,
        mut deferred: Option<&mut [f32]>,
    ) -> Result<(), TileError> {
        let lr = &self.layers[l];
        let m = lr.plan.micro_batch;
        let ti = r * lr.p() + p;
        // This step's partials go to its slot (step t + 1's, still to be read, is another).
        let tiles = lr.plan.tiles();
        let (slot, rec_slot) = (self.slot(t), t % 2);
        let samples = lr.plan.samples_of(r, input.len);
        let far = self.far_partials(l);
        if deferred.is_none() && !lr.plan.recurrent && !far {
            // Every sample of the step in one call (`Tile::backward_external_samples`): W's
            // readout, and any feed-forward layer above the first whose partials are near.
            let b0 = samples.start;
            let (last, classes) = (l + 1 == self.layers.len(), self.cfg.classes);
            let dlds = |bl: usize, buf: SpikeView<'_>, dst: &mut [f32]| {
                let counts = (buf.n_spikes, buf.near().len());
                self.gather_dlds((l, r, p), (b0 + bl, bl, t), counts, dst);
            };
            // Safety: layer buffers are read-only in backward phases.
            let step = |bl: usize| unsafe { self.step_input(input, l, b0 + bl, t) }.input;
            let k = lr.plan.in_capacity;
            let partials = |bl: usize, src: &[f32]| {
                if lr.unit_sums {
                    self.add_to_sums(l, p, (slot, b0 + bl), src);
                } else {
                    let at = ((slot * tiles + ti) * m + bl) * k;
                    // Safety: tile ti's partial out-buffer of this slot belongs to this unit.
                    unsafe { lr.part_src.slice_mut(at, src.len()) }.copy_from_slice(src);
                }
            };
            let len = samples.len();
            if last && len > 0 {
                // The output layer: dL/dS of each neuron is its class's dL/dc at every step (the
                // sums of `gather_dlds` with their one term), read in neuron order.
                let (first, n) = (tile.config().first_neuron, tile.config().neurons);
                // Safety: dL/dc is read-only in backward phases.
                let dldc =
                    unsafe { self.dldc.slice(b0 * classes + first, (len - 1) * classes + n) };
                return tile.backward_output_samples(
                    t,
                    len,
                    dldc,
                    classes,
                    step,
                    partials,
                    l > 0,
                    shared,
                    grads,
                );
            }
            return tile.backward_external_samples(
                t,
                len,
                dlds,
                step,
                partials,
                l > 0,
                shared,
                grads,
            );
        }
        if far && t > 1 && !samples.is_empty() {
            // Where the dL/dS entries of the step after next lie (read a step ahead, below).
            self.prefetch_dlds_starts((l, p), (samples.start, t - 2));
            self.prefetch_dlds_starts((l, p), (samples.end - 1, t - 2));
        }
        for (bl, b) in samples.enumerate() {
            if far && t > 0 {
                // Wide layers (histories and partials far beyond L2): this sample's history of
                // the step before, the tile's next work there, and where its dL/dS entries lie
                // in the partials, a step of the tile ahead, one sample at a time.
                tile.prefetch_backward_external(t - 1, bl);
                self.prefetch_dlds((l, r, p), (b, bl, t - 1));
            } else if !far && t > 0 {
                // This sample's history of the step before, a step of the tile ahead (the
                // group's other replicas run in between). Session 15's CPU (512 KiB of L2),
                // against the next sample's history: W's hidden backward 5.97 -> 5.66 ms per
                // thread and batch on average over six traced pairs, every pair's total lower
                // (by 1-9 %); on one thread 3 pairs of 4 lower.
                tile.prefetch_backward_external(t - 1, bl);
            }
            let mine = tile.out_buffer(t, bl);
            let counts = (mine.n_spikes, mine.near().len());
            self.gather_dlds((l, r, p), (b, bl, t), counts, tile.dlds_mut(bl));
            // Safety: layer buffers are read-only in backward phases. The first layer's deferred
            // step reads nothing of its source buffer (the lists carry the input spikes, and
            // nobody needs dL/dS of the data), so unless it is recurrent (its own layer's
            // buffer is read) nothing is looked up.
            let step = if l == 0 && deferred.is_some() && !lr.plan.recurrent {
                StepInput::EMPTY
            } else {
                unsafe { self.step_input(input, l, b, t) }
            };
            match deferred.as_deref_mut() {
                Some(vecs) => {
                    let n = tile.config().neurons;
                    let v = &mut vecs[bl * n..(bl + 1) * n];
                    let grads = grads.as_mut().map(SharedGrads::reborrow);
                    tile.backward_external_deferred(t, bl, step, l > 0, shared, grads, v)?;
                }
                None => {
                    let grads = grads.as_mut().map(SharedGrads::reborrow);
                    tile.backward_external(t, bl, step, l > 0, shared, grads)?;
                }
            }
            if l > 0 && lr.unit_sums {
                let n = step.input.n_grad();
                self.add_to_sums(l, p, (slot, b), &tile.src_partials(bl)[..n]);
            } else if l > 0 {
                let k = lr.plan.in_capacity;
                let n = step.input.n_grad();
                // Safety: tile ti's partial out-buffer of this slot belongs to this unit alone.
                let at = ((slot * tiles + ti) * m + bl) * k;
                let dst = unsafe { lr.part_src.slice_mut(at, n) };
                dst.copy_from_slice(&tile.src_partials(bl)[..n]);
            }
            if lr.plan.recurrent {
                let k = lr.plan.capacity;
                let n = step.rec.n_grad();
                let at = ((rec_slot * tiles + ti) * m + bl) * k;
                let dst = unsafe { lr.part_rec.slice_mut(at, n) };
                dst.copy_from_slice(&tile.rec_partials(bl)[..n]);
            }
        }
        Ok(())
    }

    /// Writes `dL/dS_l[t]` of sample `b` (the tile's `bl`) at the tile's gradient set (its
    /// buffer of step `t`: `ns` spikes, then `nn` near-threshold ids) into `dst` (its `dL/dS`
    /// in-buffer, [`Tile::dlds_mut`]): the exchange of the backward pass, run by the receiving
    /// tile.
    ///
    /// The layer's buffer is two runs (spikes, then near-threshold ids), each in tile order, so
    /// the tile's entries are one stretch of each run, in the order of its own gradient set;
    /// the merge recorded where they start (`starts`). Each entry sums, in this order, the
    /// recurrent partials of step `t + 1` (tile order), the next layer's partials of step
    /// `t + 1` (tile order), and for the output layer `dL/dc`.
    pub(super) fn gather_dlds(
        &self,
        (l, r, p): (usize, usize, usize),
        (b, bl, t): (usize, usize, usize),
        (ns, nn): (usize, usize),
        dst: &mut [f32],
    ) {
        if ns + nn == 0 {
            // No entry (most tile-samples of a quiet layer): nothing to look up.
            return;
        }
        let last = l + 1 == self.layers.len();
        // Safety: layer buffers and starts are read-only in backward phases; the partials of
        // step t + 1 were written in an earlier phase.
        let (s0, n0) = self.dlds_starts((l, p), (b, t));
        let sources = self.dlds_sources((l, r), (b, bl, t));
        // The output layer's dL/dc, and the class of each entry of its buffer.
        let dldc = last.then(|| unsafe {
            (self.dldc.slice(b * self.cfg.classes, self.cfg.classes), self.layer_buf(l, b, t).ids)
        });
        // The tile's entries are two stretches of the layer buffer (its spikes at s0, its
        // near-threshold ids at n0), so the common cases below are loops over slices, without
        // the general loop's iterators and per-entry bounds checks: the same sums in the same
        // order, from zero.
        match (sources, dldc) {
            ([None, None], Some((dldc, ids))) => {
                // The output layer: its dL/dc alone.
                let (d0, d1) = dst[..ns + nn].split_at_mut(ns);
                for (d, &i) in d0.iter_mut().zip(&ids[s0..s0 + ns]) {
                    *d = 0.0 + dldc[i as usize];
                }
                for (d, &i) in d1.iter_mut().zip(&ids[n0..n0 + nn]) {
                    *d = 0.0 + dldc[i as usize];
                }
            }
            // Every other layer at the last step: nothing to sum.
            ([None, None], None) => dst[..ns + nn].fill(0.0),
            ([None, Some((part, base, _, 1))] | [Some((part, base, _, 1)), None], None) => {
                // One source tile (a feed-forward layer under a one-tile or summed layer).
                let (d0, d1) = dst[..ns + nn].split_at_mut(ns);
                // Safety: as above.
                let (p0, p1) = unsafe { (part.slice(base + s0, ns), part.slice(base + n0, nn)) };
                d0.iter_mut().zip(p0).for_each(|(d, &x)| *d = 0.0 + x);
                d1.iter_mut().zip(p1).for_each(|(d, &x)| *d = 0.0 + x);
            }
            _ => {
                let own = (s0..s0 + ns).chain(n0..n0 + nn);
                for (d, k) in dst.iter_mut().zip(own) {
                    let mut a = 0.0f32;
                    for &(part, base, stride, tiles) in sources.iter().flatten() {
                        for q in 0..tiles {
                            a += unsafe { part.slice(base + q * stride + k, 1)[0] };
                        }
                    }
                    if let Some((dldc, ids)) = dldc {
                        a += dldc[ids[k] as usize];
                    }
                    *d = a;
                }
            }
        }
    }

    /// Where tile `p`'s entries of layer `l`'s buffer of sample `b` at step `t` start: its
    /// spikes, and its near-threshold ids.
    #[inline(always)]
    fn dlds_starts(&self, (l, p): (usize, usize), (b, t): (usize, usize)) -> (usize, usize) {
        // Safety: starts are read-only in backward phases.
        let start = unsafe { self.layers[l].starts.slice(self.start_at(p, (b, t)), 2) };
        (start[0] as usize, start[1] as usize)
    }

    /// Index of tile `p`'s entry for sample `b` at step `t` in a layer's `starts`.
    #[inline(always)]
    pub(super) fn start_at(&self, p: usize, (b, t): (usize, usize)) -> usize {
        ((p * self.cfg.time_steps + t) * self.cfg.batch_size + b) * 2
    }

    /// The partial `dL/dS` buffers [`Self::gather_dlds`] sums for replica `r` of layer `l`,
    /// sample `b` (the replica's `bl`), step `t`: `(buffer, base, stride, tiles)`, tile `q`'s
    /// partial of layer-buffer entry `k` at `base + q * stride + k`; the recurrent ones, then
    /// the next layer's.
    #[inline(always)]
    #[allow(clippy::type_complexity)]
    fn dlds_sources(
        &self,
        (l, r): (usize, usize),
        (b, bl, t): (usize, usize, usize),
    ) -> [Option<(&Shared<f32>, usize, usize, usize)>; 2] {
        let lr = &self.layers[l];
        let last = l + 1 == self.layers.len();
        if t + 1 >= self.cfg.time_steps {
            return [None, None];
        }
        let (slot, rec_slot) = (self.slot(t + 1), (t + 1) % 2);
        let rec_at = lr.plan.recurrent.then(|| {
            let (p_count, m, cap) = (lr.p(), lr.plan.micro_batch, lr.plan.capacity);
            let base = ((rec_slot * lr.plan.tiles() + r * p_count) * m + bl) * cap;
            (&lr.part_rec, base, m * cap, p_count)
        });
        let next_at = (!last).then(|| {
            let nx = &self.layers[l + 1];
            let (np, nm, ncap) = (nx.p(), nx.plan.micro_batch, nx.plan.in_capacity);
            if self.summed(l + 1) {
                return (&nx.part_sum, (slot * self.cfg.batch_size + b) * ncap, 0, 1);
            }
            let base = (slot * nx.plan.tiles() * nm + nx.part_row[b]) * ncap;
            (&nx.part_src, base, nm * ncap, np)
        });
        [rec_at, next_at]
    }

    /// Whether layer `l`'s partial `dL/dS` are summed over its tiles before the layer below
    /// reads them ([`Self::sum_partials`], or its units: [`LayerRt::unit_sums`]): a layer above
    /// the first with several tiles per replica, in a backward pass in blocks.
    ///
    /// [`LayerRt::unit_sums`]: super::layer::LayerRt::unit_sums
    pub(super) fn summed(&self, l: usize) -> bool {
        l > 0 && self.block > 1 && self.layers[l].p() > 1
    }

    /// Sums replica `r` of layer `l`'s partial `dL/dS_{l-1}` of `steps` over its tiles into
    /// `part_sum`: per entry from zero, in tile order, the sum [`Self::gather_dlds`] would make
    /// from `part_src`, so the results are the same bit for bit. The source layer's tiles then
    /// read one float per entry where they read one per tile of this layer, scattered over
    /// buffers of up to hundreds of megabytes (at hidden 4096 this layer has 4 tiles per
    /// replica, between two 4096-wide layers 820); here each tile's partials are read in order.
    /// Layers whose units sum their partials themselves have no such phase.
    pub(super) fn sum_partials(
        &self,
        batch: usize,
        l: usize,
        r: usize,
        steps: std::ops::Range<usize>,
    ) {
        let lr = &self.layers[l];
        let (np, m, cap, tiles) =
            (lr.p(), lr.plan.micro_batch, lr.plan.in_capacity, lr.plan.tiles());
        // Step 0's partials (dL/dS of step -1) have no reader.
        for t in steps.filter(|&t| t > 0) {
            let slot = self.slot(t);
            for (bl, b) in lr.plan.samples_of(r, batch).enumerate() {
                // Safety: the layer buffers are read-only in backward phases, this replica's
                // partials of these steps were written in the phase before, and the sums of its
                // samples at these steps belong to this unit alone.
                let n = unsafe { self.layer_buf(l - 1, b, t - 1) }.n_grad();
                let sum =
                    unsafe { lr.part_sum.slice_mut((slot * self.cfg.batch_size + b) * cap, n) };
                sum.fill(0.0);
                for q in 0..np {
                    let at = ((slot * tiles + r * np + q) * m + bl) * cap;
                    let part = unsafe { lr.part_src.slice(at, n) };
                    for (s, &x) in sum.iter_mut().zip(part) {
                        *s += x;
                    }
                }
            }
        }
    }

    /// Whether the partial `dL/dS` layer `l` gathers from lie in buffers larger than a core's
    /// L2 cache: a wide layer, whose histories, partials and column weights come from L3 (then
    /// [`Self::backward_replica`] asks for them a step of the tile ahead, and each unit asks
    /// for its column's weights or gradient rows as it starts; below that, the hints cost more
    /// than they save).
    pub(super) fn far_partials(&self, l: usize) -> bool {
        const L2_BYTES: usize = 2 << 20;
        let sources = self.layers.get(l + 1).map(|nx| {
            let part = if self.summed(l + 1) { &nx.part_sum } else { &nx.part_src };
            part.len()
        });
        let rec = if self.layers[l].plan.recurrent { self.layers[l].part_rec.len() } else { 0 };
        (sources.unwrap_or(0) + rec) * 4 > L2_BYTES
    }

    /// Asks for the cache lines [`Self::gather_dlds`] of sample `b` (the replica's `bl`) at
    /// step `t` reads first: where the tile's entries start in each partial buffer of every
    /// source tile (a tile's entries are a few consecutive floats). Above the first hidden
    /// layer's tiles these lie in buffers of tens of megabytes, written a whole block of steps
    /// earlier. A hint: it changes no result.
    pub(super) fn prefetch_dlds(
        &self,
        (l, r, p): (usize, usize, usize),
        (b, bl, t): (usize, usize, usize),
    ) {
        let (s0, n0) = self.dlds_starts((l, p), (b, t));
        for &(part, base, stride, tiles) in self.dlds_sources((l, r), (b, bl, t)).iter().flatten() {
            for q in 0..tiles {
                part.prefetch(base + q * stride + s0);
                part.prefetch(base + q * stride + n0);
            }
        }
    }

    /// Asks for what [`Self::prefetch_dlds`] of sample `b` at step `t` reads: tile `p`'s starts.
    pub(super) fn prefetch_dlds_starts(&self, (l, p): (usize, usize), (b, t): (usize, usize)) {
        self.layers[l].starts.prefetch(self.start_at(p, (b, t)));
    }
}
