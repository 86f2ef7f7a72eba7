//! The backward step: the adjoints, the weight gradients and the partial `dL/dS` the tile sends
//! to its source layer (and, if recurrent, to its own).

use super::{slot_view, SharedGrads, SharedWeights, StepInput, Tile};
use crate::rows::{dots, scatter_add};
use crate::spikes::SpikeView;
use crate::TileError;

impl<'a> Tile<'a> {
    /// Where the driver writes `dL/dS_l[t]` for sample `b` before [`Tile::backward`]: entry `k`
    /// belongs to `out_buffer(t, b).ids[k]` (only the first `n_grad` entries are read).
    pub fn dlds_mut(&mut self, b: usize) -> &mut [f32] {
        let kt = self.cfg.own_capacity();
        &mut self.dlds[b * kt..(b + 1) * kt]
    }

    /// Backward compute of step `t` (call for `t = T-1` down to 0) for sample `b`.
    ///
    /// Reads [`Tile::dlds_mut`], updates the adjoints `g = dL/du`, accumulates `dL/dW` (and
    /// `dL/dV`), and writes the tile's partial `dL/dS_{l-1}[t-1]` at `in_buffer(t, b)`'s gradient
    /// set into [`Tile::src_partials`] (and `dL/dS_l[t-1]` at `rec_buffer(t, b)`'s into
    /// [`Tile::rec_partials`]).
    pub fn backward(&mut self, t: usize, b: usize) -> Result<(), TileError> {
        self.backward_with(t, b, true)
    }

    /// [`Tile::backward`], skipping the source-layer partials when `source_partials` is false
    /// (the first hidden layer: nobody needs `dL/dS` of the data).
    pub fn backward_with(
        &mut self,
        t: usize,
        b: usize,
        source_partials: bool,
    ) -> Result<(), TileError> {
        self.backward_shared(t, b, source_partials, None, None)
    }

    /// [`Tile::backward_with`], reading the weights (for the partial `dL/dS`) from `shared`
    /// instead of the tile's own copy (see [`Tile::forward_shared`]) and, with `grads`,
    /// accumulating the weight gradients there instead of in the tile's own memory (so that the
    /// replicas of a tile sum into one buffer). `BadInput` if a shape differs from the tile's.
    pub fn backward_shared(
        &mut self,
        t: usize,
        b: usize,
        source_partials: bool,
        shared: Option<SharedWeights<'_>>,
        grads: Option<SharedGrads<'_>>,
    ) -> Result<(), TileError> {
        self.check_backward(t, b, &shared, &grads)?;
        // The step's source buffers are read from the histories while the rest of the tile
        // changes: the histories are set aside meanwhile (the slices, not their contents).
        let in_hist = core::mem::take(&mut self.in_hist);
        let rec_hist = core::mem::take(&mut self.rec_hist);
        let input = slot_view(&in_hist[self.in_slot(t, b)..]);
        let rec = if self.cfg.recurrent {
            slot_view(&rec_hist[self.rec_slot(t, b)..])
        } else {
            SpikeView::EMPTY
        };
        let step_in = StepInput { input, rec };
        self.backward_step(t, b, step_in, source_partials, shared, grads, None);
        self.in_hist = in_hist;
        self.rec_hist = rec_hist;
        Ok(())
    }

    /// The checks of a backward step: `(t, b)` in range, the shapes of the shared weights and
    /// gradient buffers.
    pub(super) fn check_backward(
        &self,
        t: usize,
        b: usize,
        shared: &Option<SharedWeights<'_>>,
        grads: &Option<SharedGrads<'_>>,
    ) -> Result<(), TileError> {
        self.check_tb(t, b)?;
        self.check_shared(shared)?;
        match grads {
            Some(gr) if gr.dw.len() != self.dw.len() || gr.dv.len() != self.dv.len() => {
                Err(TileError::BadInput)
            }
            _ => Ok(()),
        }
    }

    /// The backward step after every check, with the source buffers the forward step integrated.
    /// With `deferred`, the step's `dL/dc` goes there instead of into the input-weight gradient
    /// rows of its input spikes (see [`Tile::backward_external_deferred`]).
    pub(super) fn backward_step(
        &mut self,
        t: usize,
        b: usize,
        step_in: StepInput<'_>,
        source_partials: bool,
        shared: Option<SharedWeights<'_>>,
        grads: Option<SharedGrads<'_>>,
        deferred: Option<&mut [f32]>,
    ) {
        let cfg = self.cfg;
        let n = cfg.neurons;
        let kt = cfg.own_capacity();
        let alpha = self.params.lif.alpha;
        let theta = self.params.lif.theta;
        let step = self.step_index(t, b);
        let g = &mut self.g[b * n..(b + 1) * n];
        if t + 1 == cfg.time_steps {
            g.fill(0.0);
        }
        // dL/dc = (1 - alpha) g: into the driver's vector when the input-weight gradient is
        // deferred, else into the tile's scratch. Computed in the same pass as the decay of g,
        // for every neuron; those of the gradient set (every spike among them) change below and
        // have theirs computed again there, so no vector load reads what a scalar store just
        // wrote (the store could not be forwarded to it).
        let defer = deferred.is_some();
        let c: &mut [f32] = match deferred {
            Some(out) => out,
            None => &mut *self.c,
        };
        let one_minus = 1.0 - alpha;
        let c = &mut c[..n];
        let whole = n - n % 8;
        for (g8, c8) in g[..whole].chunks_exact_mut(8).zip(c.chunks_exact_mut(8)) {
            let g8: &mut [f32; 8] = g8.try_into().expect("whole chunks");
            let c8: &mut [f32; 8] = c8.try_into().expect("whole chunks");
            crate::simd::decay8(g8, c8, alpha, one_minus);
        }
        for (c, x) in c[whole..].iter_mut().zip(g[whole..].iter_mut()) {
            *x *= alpha;
            *c = one_minus * *x;
        }
        let out = slot_view(&self.out_hist[step * (kt + 2)..]);
        for &i in out.spikes() {
            g[i as usize] = 0.0;
        }
        // sigma'(u) dL/dS over the gradient set, in a loop of its own (contiguous, so it runs
        // in vector instructions: a 20-class readout's whole layer is its gradient set), into
        // the forward step's scratch; then added to g at the set's ids.
        let ng = out.ids.len();
        if ng == 0 && defer && !source_partials && !cfg.recurrent {
            // No gradient set, the input-weight gradient deferred and no partials to send (a
            // quiet step of a first layer): the decay above was all of it.
            return;
        }
        let (uh, dlds) = (&self.u_hist[step * kt..][..ng], &self.dlds[b * kt..][..ng]);
        let surrogate = self.params.surrogate;
        let sg = &mut self.cur[..ng];
        for ((x, &u), &d) in sg.iter_mut().zip(uh).zip(dlds) {
            *x = surrogate.grad(u, theta) * d;
        }
        if out.n_spikes == 0 && ng == n {
            // The gradient set is the whole tile in order (near-threshold ids are ascending and
            // distinct): the same sums over contiguous lanes.
            for ((gi, ci), &x) in g.iter_mut().zip(c.iter_mut()).zip(sg.iter()) {
                *gi += x;
                *ci = one_minus * *gi;
            }
        } else {
            for (&x, &i) in sg.iter().zip(out.ids) {
                let gi = g[i as usize] + x;
                g[i as usize] = gi;
                c[i as usize] = one_minus * gi;
            }
        }
        let c: &[f32] = c;
        let (input, rec) = (step_in.input, step_in.rec);
        let (dw, dv): (&mut [f32], &mut [f32]) = match grads {
            Some(gr) => (gr.dw, gr.dv),
            None => (&mut *self.dw, &mut *self.dv),
        };
        if !defer {
            scatter_add(dw, c, input.spikes());
        }
        let (w, v): (&[f32], &[f32]) = match &shared {
            Some(sh) => (sh.w, sh.v),
            None => (self.w, self.v),
        };
        if source_partials {
            let p = &mut self.src_partials[b * cfg.in_capacity..][..input.ids.len()];
            dots(p, w, input.ids, c);
        }
        if cfg.recurrent {
            scatter_add(dv, c, rec.spikes());
            let p = &mut self.rec_partials[b * cfg.layer_capacity..][..rec.ids.len()];
            dots(p, v, rec.ids, c);
        }
    }

    /// Asks the CPU to start loading what [`Tile::backward`] of step `t`, sample `b` reads first
    /// from the histories (its own buffer, its membranes there, the input buffer), so that a
    /// driver can overlap those loads with the work before. A hint: it changes no result, and
    /// an out-of-range `(t, b)` is ignored.
    #[inline]
    pub fn prefetch_backward(&self, t: usize, b: usize) {
        if self.check_tb(t, b).is_err() {
            return;
        }
        self.prefetch_own_history(t, b);
        crate::simd::prefetch(&self.in_hist[self.in_slot(t, b)]);
    }

    /// The hints of [`Tile::prefetch_backward`] for the tile's own buffer and its membranes,
    /// every line of each; `(t, b)` in range.
    #[inline]
    pub(super) fn prefetch_own_history(&self, t: usize, b: usize) {
        let kt = self.cfg.own_capacity();
        let slot = self.out_slot(t, b);
        crate::simd::prefetch_lines(&self.out_hist[slot..slot + kt + 2]);
        let at = self.step_index(t, b) * kt;
        crate::simd::prefetch_lines(&self.u_hist[at..at + kt]);
    }

    /// This tile's partial `dL/dS_{l-1}[t-1]` for sample `b` after [`Tile::backward`] at `t`:
    /// entry `k` belongs to `in_buffer(t, b).ids[k]`.
    pub fn src_partials(&self, b: usize) -> &[f32] {
        let k = self.cfg.in_capacity;
        &self.src_partials[b * k..(b + 1) * k]
    }

    /// This tile's partial `dL/dS_l[t-1]` through the recurrent weights: entry `k` belongs to
    /// `rec_buffer(t, b).ids[k]`. Empty if not recurrent.
    pub fn rec_partials(&self, b: usize) -> &[f32] {
        if !self.cfg.recurrent {
            return &[];
        }
        let k = self.cfg.layer_capacity;
        &self.rec_partials[b * k..(b + 1) * k]
    }
}
