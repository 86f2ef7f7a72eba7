//! Tile programs for a driver that keeps the source buffers itself.
//!
//! [`Tile::forward`] copies each step's source buffers (`S_{l-1}[t-1]` and, if recurrent,
//! `S_l[t-1]`) into the tile's histories, because the backward step needs them again. A driver
//! that keeps those buffers anyway (the host engine keeps every layer buffer of a batch) can
//! pass them to both steps instead: [`Tile::forward_external`] leaves the tile's input histories
//! alone and [`Tile::backward_external`] reads the buffers it is given. The arithmetic is the
//! same, so with the same buffers the results are the same, bit for bit. The histories stay in
//! the footprint (a tile on its own hardware keeps its inputs), they are only not written.
//!
//! The buffers' lengths are checked, their ids are not: the driver checks them once where they
//! come from (every tile of a layer reads the same buffers; [`StepInput::check`] is one way),
//! where [`Tile::forward`] checks them on every tile while copying them. An id out of range
//! panics (an index out of bounds, never an access outside the tile's memory).
//!
//! ```
//! use spiketile_core::{NeuronParams, OptimizerKind, SpikeView, StepInput, Tile, TileConfig};
//! let cfg = TileConfig {
//!     neurons: 2, first_neuron: 0, layer_width: 2, inputs: 3, recurrent: false,
//!     batch: 1, time_steps: 2, in_capacity: 3, layer_capacity: 2,
//!     optimizer: OptimizerKind::Sgd,
//! };
//! let mut arena = vec![0u32; cfg.footprint().unwrap().arena() / 4];
//! let mut tile = Tile::new(cfg, NeuronParams::default(), bytemuck::cast_slice_mut(&mut arena)).unwrap();
//! tile.weights_mut().fill(30.0);
//! let steps = [StepInput::EMPTY, StepInput::feed_forward(SpikeView::new(&[0, 2], 2).unwrap())];
//! for (t, step) in steps.iter().enumerate() {
//!     tile.forward_external(t, 0, *step, None).unwrap();
//!     tile.commit_all(t, 0).unwrap();
//! }
//! assert_eq!(tile.out_buffer(1, 0).spikes(), &[0, 1]);
//! for (t, step) in steps.iter().enumerate().rev() {
//!     tile.dlds_mut(0)[..2].copy_from_slice(&[1.0, 1.0]);
//!     tile.backward_external(t, 0, *step, false, None, None).unwrap();
//! }
//! assert!(tile.grads().0[0] != 0.0); // input 0 spiked at step 1
//! ```

use super::{SharedGrads, SharedWeights, Tile};
use crate::spikes::{BuildResult, SpikeView};
use crate::TileError;

/// The source buffers one step of a tile integrates: the source layer's `S_{l-1}[t-1]` (global
/// ids) and, for a recurrent layer, its own layer's `S_l[t-1]` (empty otherwise, and both empty
/// at step 0).
#[derive(Clone, Copy, Debug)]
pub struct StepInput<'s> {
    /// `S_{l-1}[t-1]`.
    pub input: SpikeView<'s>,
    /// `S_l[t-1]`, or empty if the layer is not recurrent.
    pub rec: SpikeView<'s>,
}

impl<'s> StepInput<'s> {
    /// No spikes at all (step 0).
    pub const EMPTY: StepInput<'static> =
        StepInput { input: SpikeView::EMPTY, rec: SpikeView::EMPTY };

    /// The input of a layer without recurrent weights.
    pub fn feed_forward(input: SpikeView<'s>) -> Self {
        StepInput { input, rec: SpikeView::EMPTY }
    }

    /// Whether every id is below `inputs` (the source layer's width) and every recurrent id
    /// below `layer_width` (the tile's layer's): [`TileError::BadInput`] if not.
    pub fn check(&self, inputs: usize, layer_width: usize) -> Result<(), TileError> {
        if ids_below(self.input.ids, inputs) && ids_below(self.rec.ids, layer_width) {
            Ok(())
        } else {
            Err(TileError::BadInput)
        }
    }
}

/// Whether every id is below `width`.
fn ids_below(ids: &[u16], width: usize) -> bool {
    ids.iter().all(|&i| (i as usize) < width)
}

impl Tile<'_> {
    /// [`Tile::forward_shared`] without copying `step` into the tile's histories: the caller
    /// passes the same buffers to [`Tile::backward_external`] at step `t`. `shared` as in
    /// [`Tile::forward_shared`]. `BadInput` (and nothing changed) if a buffer is longer than its
    /// capacity or `step` has recurrent spikes for a tile that is not recurrent.
    ///
    /// # Panics
    /// If an id of `step` is out of the tile's range (see [`StepInput::check`]).
    pub fn forward_external(
        &mut self,
        t: usize,
        b: usize,
        step: StepInput<'_>,
        shared: Option<SharedWeights<'_>>,
    ) -> Result<BuildResult, TileError> {
        self.check_step(t, b, &step.input, &step.rec, &shared)?;
        Ok(self.forward_step(t, b, step, shared))
    }

    /// [`Tile::backward_shared`] reading the source buffers of step `t` from `step` (what
    /// [`Tile::forward_external`] integrated at step `t`) instead of the tile's histories.
    /// [`Tile::src_partials`] and [`Tile::rec_partials`] then belong to `step`'s gradient sets.
    /// `BadInput` (and nothing changed) if a buffer is longer than its capacity.
    ///
    /// # Panics
    /// If an id of `step` is out of the tile's range (see [`StepInput::check`]).
    pub fn backward_external(
        &mut self,
        t: usize,
        b: usize,
        step: StepInput<'_>,
        source_partials: bool,
        shared: Option<SharedWeights<'_>>,
        grads: Option<SharedGrads<'_>>,
    ) -> Result<(), TileError> {
        self.check_backward(t, b, &shared, &grads)?;
        self.check_lengths(&step.input, &step.rec)?;
        self.backward_step(t, b, step, source_partials, shared, grads, None);
        Ok(())
    }

    /// [`Tile::backward_external`] that leaves the input-weight gradient to the driver: the
    /// step's `dL/dc = (1 - alpha) g` (the vector [`Tile::backward`] adds to the gradient row of
    /// every input spike of `step`) is written into `dldc` (one float per neuron) and no input
    /// gradient row is touched. A driver that keeps these vectors for a run of steps and samples
    /// can add them with [`crate::rows::gather_add`], each row once for all its uses; listed in
    /// the order the steps ran, the gradients are the same bit for bit. A recurrent tile still
    /// adds its recurrent-weight gradients, into `grads`' `dV` (or its own; `grads`' `dW` is
    /// not touched). `BadInput` (and nothing changed) if `dldc` is not one float per neuron, or
    /// as [`Tile::backward_external`].
    ///
    /// ```
    /// use spiketile_core::rows::gather_add;
    /// use spiketile_core::{NeuronParams, OptimizerKind, SpikeView, StepInput, Tile, TileConfig};
    /// let cfg = TileConfig {
    ///     neurons: 2, first_neuron: 0, layer_width: 2, inputs: 3, recurrent: false,
    ///     batch: 1, time_steps: 2, in_capacity: 3, layer_capacity: 2,
    ///     optimizer: OptimizerKind::Sgd,
    /// };
    /// let mut arena = vec![0u32; cfg.footprint().unwrap().arena() / 4];
    /// let mut tile = Tile::new(cfg, NeuronParams::default(), bytemuck::cast_slice_mut(&mut arena)).unwrap();
    /// tile.weights_mut().fill(30.0);
    /// let step = StepInput::feed_forward(SpikeView::new(&[0, 2], 2).unwrap());
    /// tile.forward_external(0, 0, StepInput::EMPTY, None).unwrap();
    /// tile.commit_all(0, 0).unwrap();
    /// tile.forward_external(1, 0, step, None).unwrap();
    /// tile.commit_all(1, 0).unwrap();
    /// tile.dlds_mut(0)[..2].copy_from_slice(&[1.0, 1.0]);
    /// let mut dldc = [0.0f32; 2];
    /// tile.backward_external_deferred(1, 0, step, false, None, None, &mut dldc).unwrap();
    /// assert!(tile.grads().0.iter().all(|&g| g == 0.0));
    /// // Inputs 0 and 2 spiked: their rows get the vector.
    /// gather_add(tile.grads_mut().0, 2, &dldc, &[0, 1, 1, 2], &[0, 0]);
    /// assert!(tile.grads().0[0] != 0.0 && tile.grads().0[2] == 0.0 && tile.grads().0[4] != 0.0);
    /// ```
    pub fn backward_external_deferred(
        &mut self,
        t: usize,
        b: usize,
        step: StepInput<'_>,
        source_partials: bool,
        shared: Option<SharedWeights<'_>>,
        grads: Option<SharedGrads<'_>>,
        dldc: &mut [f32],
    ) -> Result<(), TileError> {
        if dldc.len() != self.cfg.neurons {
            return Err(TileError::BadInput);
        }
        self.check_backward(t, b, &shared, &grads)?;
        self.check_lengths(&step.input, &step.rec)?;
        self.backward_step(t, b, step, source_partials, shared, grads, Some(dldc));
        Ok(())
    }

    /// [`Tile::prefetch_backward`] for [`Tile::backward_external`]: the tile's own buffer of step
    /// `t`, sample `b`, and its membranes there, every line (the source buffers are the
    /// driver's). A hint: it changes no result, and an out-of-range `(t, b)` is ignored.
    #[inline]
    pub fn prefetch_backward_external(&self, t: usize, b: usize) {
        if self.check_tb(t, b).is_ok() {
            self.prefetch_own_history(t, b);
        }
    }

    /// Asks the CPU for the history a forward step `t` writes, every sample: the candidate
    /// buffers and the membranes of their gradient sets. A hint for a driver that runs a tile
    /// through many steps whose histories lie beyond the caches: it changes no result, and an
    /// out-of-range `t` is ignored.
    #[inline]
    pub fn prefetch_forward(&self, t: usize) {
        if t < self.cfg.time_steps {
            let kt = self.cfg.own_capacity();
            let (lo, hi) = (self.step_index(t, 0), self.step_index(t, self.cfg.batch - 1) + 1);
            crate::simd::prefetch_lines(&self.out_hist[lo * (kt + 2)..hi * (kt + 2)]);
            crate::simd::prefetch_lines(&self.u_hist[lo * kt..hi * kt]);
        }
    }
}
