//! A tile: its memory, carved from one arena, and its superstep programs (SPEC §1, §3).
//!
//! One tile owns neurons `first_neuron .. first_neuron + neurons` of one layer for a micro-batch
//! of `batch` samples. Per time step `t` and sample `b` the driver (host engine or firmware) runs:
//!
//! 1. [`Tile::forward`] with the source layer's buffer `S_{l-1}[t-1]` (global ids) and, for a
//!    recurrent layer, the own layer's buffer `S_l[t-1]`; the tile writes its candidate buffer;
//! 2. the exchange: the layer's tiles are merged with [`crate::LayerMerge`], and each tile is told
//!    how many of its spikes and near-threshold ids the layer kept with [`Tile::commit`].
//!
//! Then, for `t = T-1 .. 0`:
//!
//! 3. the driver writes `dL/dS_l[t]` at the tile's gradient set into [`Tile::dlds_mut`];
//! 4. [`Tile::backward`] updates the adjoints, accumulates the weight gradients and writes partial
//!    `dL/dS` for the source layer's gradient set at `t-1` ([`Tile::src_partials`]) and, if
//!    recurrent, for the own layer's ([`Tile::rec_partials`]); the driver sums them over tiles.
//!
//! Finally [`Tile::apply`] runs the optimizer on the tile's own weights.
//!
//! A driver that keeps every step's source buffers itself (as the host engine does) passes them
//! to [`Tile::forward_external`] and [`Tile::backward_external`] instead, and the tile does not
//! copy them into its histories (module `external`).
//!
//! Weights are stored input-major (`w[j * neurons + i]` is the weight from source neuron `j` to
//! local neuron `i`) so that one input spike touches one contiguous row.
//!
//! ```
//! use spiketile_core::{NeuronParams, Optimizer, OptimizerKind, SpikeView, Tile, TileConfig};
//! let cfg = TileConfig {
//!     neurons: 2, first_neuron: 0, layer_width: 2, inputs: 3, recurrent: false,
//!     batch: 1, time_steps: 2, in_capacity: 3, layer_capacity: 2,
//!     optimizer: OptimizerKind::Sgd,
//! };
//! let mut arena = vec![0u32; cfg.footprint().unwrap().arena() / 4];
//! let mut tile = Tile::new(cfg, NeuronParams::default(), bytemuck::cast_slice_mut(&mut arena)).unwrap();
//! tile.weights_mut().fill(30.0);
//! tile.forward(0, 0, SpikeView::EMPTY, SpikeView::EMPTY).unwrap();
//! tile.commit_all(0, 0).unwrap();
//! let input = SpikeView::new(&[0, 2], 2).unwrap();
//! tile.forward(1, 0, input, SpikeView::EMPTY).unwrap();
//! tile.commit_all(1, 0).unwrap();
//! assert_eq!(tile.out_buffer(1, 0).spikes(), &[0, 1]); // u = 0.05 * 60 = 3 >= 1
//! ```

use crate::budget::{pad4, Regions};
use crate::rows::{accumulate_rows, scatter_add};
use crate::spikes::{build_into, BuildResult, SpikeView};
use crate::{Footprint, NeuronParams, Optimizer, OptimizerKind, TileError};
use bytemuck::Pod;

mod external;
mod out_view;
pub use external::StepInput;
pub use out_view::OutBuffers;

/// Everything that sizes a tile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct TileConfig {
    /// Neurons on this tile.
    pub neurons: usize,
    /// Global id of its first neuron within the layer.
    pub first_neuron: usize,
    /// Width `N_l` of the whole layer.
    pub layer_width: usize,
    /// Width `N_{l-1}` of the source layer.
    pub inputs: usize,
    /// Whether the layer has recurrent weights `V_l` (SPEC §1.4).
    pub recurrent: bool,
    /// Samples this tile runs (its micro-batch).
    pub batch: usize,
    /// Time steps `T`.
    pub time_steps: usize,
    /// Capacity `K_{l-1}` of the source layer's spike buffer.
    pub in_capacity: usize,
    /// Capacity `K_l` of the own layer's spike buffer.
    pub layer_capacity: usize,
    /// Optimizer (decides optimizer state).
    pub optimizer: OptimizerKind,
}

impl TileConfig {
    /// Capacity of this tile's own buffer: `min(neurons, layer_capacity)`.
    pub fn own_capacity(&self) -> usize {
        self.neurons.min(self.layer_capacity)
    }

    /// Checks that every field is in range (ids and counts fit `u16`).
    pub fn validate(&self) -> Result<(), TileError> {
        let max = u16::MAX as usize;
        let check = |ok: bool, what| if ok { Ok(()) } else { Err(TileError::InvalidConfig(what)) };
        check(self.neurons >= 1, "neurons must be >= 1")?;
        check(self.layer_width <= max, "layer width must be <= 65535")?;
        check(self.first_neuron + self.neurons <= self.layer_width, "neurons beyond layer width")?;
        check((1..=max).contains(&self.inputs), "inputs must be in 1..=65535")?;
        check(self.batch >= 1, "batch must be >= 1")?;
        check(self.time_steps >= 1, "time steps must be >= 1")?;
        check((1..=self.inputs).contains(&self.in_capacity), "input capacity not in 1..=inputs")?;
        check(
            (1..=self.layer_width).contains(&self.layer_capacity),
            "layer capacity not in 1..=layer width",
        )
    }

    /// The footprint of this configuration (see [`Footprint::of`]).
    pub fn footprint(&self) -> Result<Footprint, TileError> {
        Footprint::of(self)
    }
}

/// Spike counts of a tile since the last [`Tile::reset_stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct TileStats {
    /// Neurons at or over threshold, over all steps and samples.
    pub spikes_raw: u64,
    /// Neurons in the gradient window under threshold.
    pub near_raw: u64,
    /// Spikes the layer kept.
    pub spikes_kept: u64,
    /// Near-threshold ids the layer kept.
    pub near_kept: u64,
}

impl TileStats {
    /// Neurons dropped for lack of buffer capacity (spikes and near-threshold).
    pub fn overflow(&self) -> u64 {
        self.spikes_raw + self.near_raw - self.spikes_kept - self.near_kept
    }

    /// Adds another tile's counts.
    pub fn add(&mut self, o: &TileStats) {
        self.spikes_raw += o.spikes_raw;
        self.near_raw += o.near_raw;
        self.spikes_kept += o.spikes_kept;
        self.near_kept += o.near_kept;
    }
}

/// Weights a tile reads instead of its own (see [`Tile::forward_shared`]): incoming `w` and
/// recurrent `v`, laid out like [`Tile::weights`] and [`Tile::recurrent`].
#[derive(Clone, Copy, Debug)]
pub struct SharedWeights<'w> {
    /// Incoming weights, input-major.
    pub w: &'w [f32],
    /// Recurrent weights (empty if not recurrent).
    pub v: &'w [f32],
}

/// Gradient buffers a tile accumulates into instead of its own (see [`Tile::backward_shared`]),
/// laid out like [`Tile::grads`].
#[derive(Debug)]
pub struct SharedGrads<'g> {
    /// `dL/dW`, input-major.
    pub dw: &'g mut [f32],
    /// `dL/dV` (empty if not recurrent).
    pub dv: &'g mut [f32],
}

impl SharedGrads<'_> {
    /// A shorter-lived borrow of the same buffers.
    pub fn reborrow(&mut self) -> SharedGrads<'_> {
        SharedGrads { dw: &mut *self.dw, dv: &mut *self.dv }
    }
}

/// A tile configuration and neuron parameters, validated, with the tile's memory layout: what
/// [`Tile::attach_layout`] needs to attach to an arena without recomputing anything.
///
/// ```
/// use spiketile_core::{NeuronParams, OptimizerKind, Tile, TileConfig, TileLayout};
/// let cfg = TileConfig {
///     neurons: 4, first_neuron: 0, layer_width: 4, inputs: 8, recurrent: false,
///     batch: 2, time_steps: 5, in_capacity: 8, layer_capacity: 4,
///     optimizer: OptimizerKind::Sgd,
/// };
/// let layout = TileLayout::new(cfg, NeuronParams::default()).unwrap();
/// let mut arena = vec![0u32; layout.arena_bytes() / 4];
/// Tile::new(cfg, NeuronParams::default(), bytemuck::cast_slice_mut(&mut arena)).unwrap();
/// let tile = Tile::attach_layout(&layout, bytemuck::cast_slice_mut(&mut arena)).unwrap();
/// assert_eq!(tile.weights().len(), 8 * 4);
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TileLayout {
    cfg: TileConfig,
    params: NeuronParams,
    regions: Regions,
    arena: usize,
}

impl TileLayout {
    /// Validates `cfg` (it must fit [`crate::TILE_SRAM_BYTES`]) and `params`.
    pub fn new(cfg: TileConfig, params: NeuronParams) -> Result<Self, TileError> {
        params.validate()?;
        let fp = Footprint::of(&cfg)?;
        fp.check()?;
        Ok(TileLayout { cfg, params, regions: Regions::of(&cfg)?, arena: fp.arena() })
    }

    /// The configuration.
    pub fn config(&self) -> &TileConfig {
        &self.cfg
    }

    /// The neuron parameters.
    pub fn params(&self) -> &NeuronParams {
        &self.params
    }

    /// Bytes of arena the tile needs ([`Footprint::arena`]).
    pub fn arena_bytes(&self) -> usize {
        self.arena
    }
}

/// One tile: configuration, parameters and the slices of its arena.
#[derive(Debug)]
pub struct Tile<'a> {
    cfg: TileConfig,
    params: NeuronParams,
    w: &'a mut [f32],
    v: &'a mut [f32],
    dw: &'a mut [f32],
    dv: &'a mut [f32],
    opt: &'a mut [f32],
    u: &'a mut [f32],
    g: &'a mut [f32],
    cur: &'a mut [f32],
    c: &'a mut [f32],
    u_hist: &'a mut [f32],
    dlds: &'a mut [f32],
    src_partials: &'a mut [f32],
    rec_partials: &'a mut [f32],
    out_hist: &'a mut [u16],
    in_hist: &'a mut [u16],
    rec_hist: &'a mut [u16],
    stats: TileStats,
}

/// Takes the next `count` elements of type `T` (`f32` or `u16`) off the front of `rest`, padded
/// to whole 4-byte words. The casts from words cannot fail (`T` is no larger than a word and
/// its alignment divides 4), so they compile to nothing; what remains is one bounds check.
#[inline(always)]
fn carve<'a, T: Pod>(rest: &mut &'a mut [u32], count: usize) -> &'a mut [T] {
    let words = pad4(count * core::mem::size_of::<T>()) / 4;
    let (head, tail) = core::mem::take(rest).split_at_mut(words);
    *rest = tail;
    &mut bytemuck::cast_slice_mut(head)[..count]
}

/// A buffer slot in a history: `[n_spikes, n_grad, ids...]`.
fn slot_view(slot: &[u16]) -> SpikeView<'_> {
    let n_grad = slot[1] as usize;
    SpikeView { ids: &slot[2..2 + n_grad], n_spikes: slot[0] as usize }
}

/// Stores `view` in `slot`; whether every id is below `width`.
fn store_checked(slot: &mut [u16], view: SpikeView<'_>, width: usize) -> bool {
    slot[0] = view.n_spikes as u16;
    slot[1] = view.ids.len() as u16;
    let mut max = 0u16;
    for (dst, &id) in slot[2..2 + view.ids.len()].iter_mut().zip(view.ids) {
        *dst = id;
        max = max.max(id);
    }
    view.ids.is_empty() || (max as usize) < width
}

#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).fold(0.0, |s, (x, y)| s + x * y)
}

impl<'a> Tile<'a> {
    /// Builds a tile in `arena` (4-byte aligned, at least `cfg.footprint()?.arena()` bytes),
    /// zeroing what it uses. Refuses configurations over [`crate::TILE_SRAM_BYTES`].
    pub fn new(
        cfg: TileConfig,
        params: NeuronParams,
        arena: &'a mut [u8],
    ) -> Result<Self, TileError> {
        let fp = Self::check_arena(&cfg, &params, arena)?;
        arena[..fp.arena()].fill(0);
        Self::attach(cfg, params, arena)
    }

    fn check_arena(
        cfg: &TileConfig,
        params: &NeuronParams,
        arena: &[u8],
    ) -> Result<Footprint, TileError> {
        params.validate()?;
        let fp = Footprint::of(cfg)?;
        fp.check()?;
        if arena.len() < fp.arena() {
            return Err(TileError::ArenaTooSmall { needed: fp.arena(), got: arena.len() });
        }
        if arena.as_ptr() as usize % 4 != 0 {
            return Err(TileError::Misaligned);
        }
        Ok(fp)
    }

    /// Re-attaches a tile to an arena that [`Tile::new`] initialised with the same configuration,
    /// keeping its contents (weights, state, history). Spike counts start at zero.
    ///
    /// This is how a driver that keeps many tiles' arenas (rather than `Tile` values) runs a
    /// tile's program: attach, run, drop. A driver that attaches often validates once with
    /// [`TileLayout::new`] and attaches with [`Tile::attach_layout`].
    pub fn attach(
        cfg: TileConfig,
        params: NeuronParams,
        arena: &'a mut [u8],
    ) -> Result<Self, TileError> {
        Self::attach_layout(&TileLayout::new(cfg, params)?, arena)
    }

    /// [`Tile::attach`] with a layout validated beforehand: only the arena's size and alignment
    /// are checked, then it is split into the tile's regions.
    pub fn attach_layout(layout: &TileLayout, arena: &'a mut [u8]) -> Result<Self, TileError> {
        if arena.len() < layout.arena {
            return Err(TileError::ArenaTooSmall { needed: layout.arena, got: arena.len() });
        }
        if arena.as_ptr() as usize % 4 != 0 {
            return Err(TileError::Misaligned);
        }
        let (cfg, params, r) = (layout.cfg, layout.params, &layout.regions);
        // Every region is whole 4-byte words (`layout.arena` is their sum).
        let words: &mut [u32] = bytemuck::try_cast_slice_mut(&mut arena[..layout.arena])
            .map_err(|_| TileError::Misaligned)?;
        let mut rest = words;
        let n = cfg.neurons;
        let w = carve(&mut rest, r.weights);
        let v = carve(&mut rest, r.recurrent);
        let dw = carve(&mut rest, r.weights);
        let dv = carve(&mut rest, r.recurrent);
        let opt = carve(&mut rest, r.opt_words);
        let state: &mut [f32] = carve(&mut rest, r.state_words);
        let (u, state) = state.split_at_mut(cfg.batch * n);
        let (g, state) = state.split_at_mut(cfg.batch * n);
        let (cur, c) = state.split_at_mut(n);
        let u_hist = carve(&mut rest, r.u_hist);
        let out_hist = carve(&mut rest, r.out_hist);
        let in_hist = carve(&mut rest, r.in_hist);
        let rec_hist = carve(&mut rest, r.rec_hist);
        let dlds = carve(&mut rest, r.dlds);
        let src_partials = carve(&mut rest, r.src_partials);
        let rec_partials = carve(&mut rest, r.rec_partials);
        debug_assert!(rest.is_empty(), "footprint and carving disagree");
        Ok(Tile {
            cfg,
            params,
            w,
            v,
            dw,
            dv,
            opt,
            u,
            g,
            cur,
            c,
            u_hist,
            dlds,
            src_partials,
            rec_partials,
            out_hist,
            in_hist,
            rec_hist,
            stats: TileStats::default(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &TileConfig {
        &self.cfg
    }

    /// The neuron parameters.
    pub fn params(&self) -> &NeuronParams {
        &self.params
    }

    /// Incoming weights, input-major: `[inputs][neurons]`.
    pub fn weights(&self) -> &[f32] {
        self.w
    }

    /// Incoming weights, mutable.
    pub fn weights_mut(&mut self) -> &mut [f32] {
        self.w
    }

    /// Recurrent weights, `[layer_width][neurons]` (empty if not recurrent).
    pub fn recurrent(&self) -> &[f32] {
        self.v
    }

    /// Recurrent weights, mutable.
    pub fn recurrent_mut(&mut self) -> &mut [f32] {
        self.v
    }

    /// Accumulated gradients `(dL/dW, dL/dV)`, laid out like the weights.
    pub fn grads(&self) -> (&[f32], &[f32]) {
        (self.dw, self.dv)
    }

    /// Gradients, mutable (the driver sums replicas' gradients here).
    pub fn grads_mut(&mut self) -> (&mut [f32], &mut [f32]) {
        (self.dw, self.dv)
    }

    /// Optimizer state (Adam: first moments of W, second moments of W, then the same for V).
    pub fn optimizer_state(&self) -> &[f32] {
        self.opt
    }

    /// Optimizer state, mutable (for checkpoints).
    pub fn optimizer_state_mut(&mut self) -> &mut [f32] {
        self.opt
    }

    /// The tile's weights to share with its replicas and its gradient buffers for them to
    /// accumulate into (see [`Tile::forward_shared`], [`Tile::backward_shared`]).
    pub fn split_for_replicas(&mut self) -> (SharedWeights<'_>, SharedGrads<'_>) {
        (SharedWeights { w: self.w, v: self.v }, SharedGrads { dw: self.dw, dv: self.dv })
    }

    /// Sets every gradient to zero.
    pub fn zero_grads(&mut self) {
        self.dw.fill(0.0);
        self.dv.fill(0.0);
    }

    /// Spike counts since the last reset.
    pub fn stats(&self) -> TileStats {
        self.stats
    }

    /// Resets the spike counts.
    pub fn reset_stats(&mut self) {
        self.stats = TileStats::default();
    }

    fn check_shared(&self, shared: &Option<SharedWeights<'_>>) -> Result<(), TileError> {
        match shared {
            Some(sh) if sh.w.len() != self.w.len() || sh.v.len() != self.v.len() => {
                Err(TileError::BadInput)
            }
            _ => Ok(()),
        }
    }

    fn check_tb(&self, t: usize, b: usize) -> Result<(), TileError> {
        if t < self.cfg.time_steps && b < self.cfg.batch {
            Ok(())
        } else {
            Err(TileError::OutOfRange)
        }
    }

    /// Index of step `t`, sample `b` in the histories: step-major, so that one step of every
    /// sample is one contiguous stretch of memory (streamed forward, then backward).
    #[inline]
    fn step_index(&self, t: usize, b: usize) -> usize {
        t * self.cfg.batch + b
    }

    fn out_slot(&self, t: usize, b: usize) -> usize {
        self.step_index(t, b) * (self.cfg.own_capacity() + 2)
    }

    fn in_slot(&self, t: usize, b: usize) -> usize {
        self.step_index(t, b) * (self.cfg.in_capacity + 2)
    }

    fn rec_slot(&self, t: usize, b: usize) -> usize {
        self.step_index(t, b) * (self.cfg.layer_capacity + 2)
    }

    /// Whether `view` fits a buffer of capacity `cap` (its ids are checked by [`store_checked`]).
    fn fits(view: &SpikeView<'_>, cap: usize) -> bool {
        view.ids.len() <= cap && view.n_spikes <= view.ids.len()
    }

    /// Forward compute of step `t` for sample `b`: integrates `input` (`S_{l-1}[t-1]`, global
    /// ids) and, if recurrent, `rec` (`S_l[t-1]`), updates membranes, and writes the candidate
    /// buffer ([`Tile::out_buffer`], local ids). Commit it with [`Tile::commit`] after the
    /// exchange, before step `t + 1`.
    pub fn forward(
        &mut self,
        t: usize,
        b: usize,
        input: SpikeView<'_>,
        rec: SpikeView<'_>,
    ) -> Result<BuildResult, TileError> {
        self.forward_shared(t, b, input, rec, None)
    }

    /// [`Tile::forward`], reading the weights from `shared` instead of the tile's own copy.
    ///
    /// For drivers that run the replicas of one tile (identical weights, bit for bit, since every
    /// replica applies the same summed gradient) on one core: reading one copy keeps it in cache.
    /// The result is identical to [`Tile::forward`] with equal weights. `BadInput` if the shapes
    /// differ from the tile's.
    pub fn forward_shared(
        &mut self,
        t: usize,
        b: usize,
        input: SpikeView<'_>,
        rec: SpikeView<'_>,
        shared: Option<SharedWeights<'_>>,
    ) -> Result<BuildResult, TileError> {
        self.check_step(t, b, &input, &rec, &shared)?;
        let cfg = self.cfg;
        // The ids are checked while they are copied into the history (one pass over them); a
        // refused step leaves its history slots empty.
        let (si, sr) = (self.in_slot(t, b), self.rec_slot(t, b));
        let in_slot = &mut self.in_hist[si..si + cfg.in_capacity + 2];
        let mut ids_ok = store_checked(in_slot, input, cfg.inputs);
        if cfg.recurrent {
            let rec_slot = &mut self.rec_hist[sr..sr + cfg.layer_capacity + 2];
            ids_ok &= store_checked(rec_slot, rec, cfg.layer_width);
        }
        if !ids_ok {
            self.in_hist[si..si + 2].fill(0);
            if cfg.recurrent {
                self.rec_hist[sr..sr + 2].fill(0);
            }
            return Err(TileError::BadInput);
        }
        Ok(self.forward_step(t, b, StepInput { input, rec }, shared))
    }

    /// The checks of a forward step before its ids: `(t, b)` in range, the shared weights' shapes,
    /// the buffers' lengths (a tile that is not recurrent takes no own-layer buffer).
    fn check_step(
        &self,
        t: usize,
        b: usize,
        input: &SpikeView<'_>,
        rec: &SpikeView<'_>,
        shared: &Option<SharedWeights<'_>>,
    ) -> Result<(), TileError> {
        self.check_tb(t, b)?;
        self.check_shared(shared)?;
        let cfg = &self.cfg;
        let rec_ok =
            if cfg.recurrent { Self::fits(rec, cfg.layer_capacity) } else { rec.ids.is_empty() };
        if Self::fits(input, cfg.in_capacity) && rec_ok {
            Ok(())
        } else {
            Err(TileError::BadInput)
        }
    }

    /// The forward step after every check: integrates `step`, updates the membranes and writes
    /// the candidate buffer and the membranes of its gradient set.
    fn forward_step(
        &mut self,
        t: usize,
        b: usize,
        step_in: StepInput<'_>,
        shared: Option<SharedWeights<'_>>,
    ) -> BuildResult {
        let cfg = self.cfg;
        let n = cfg.neurons;
        let (input, rec) = (step_in.input, step_in.rec);
        let (w, v): (&[f32], &[f32]) = match &shared {
            Some(sh) => (sh.w, sh.v),
            None => (self.w, self.v),
        };
        accumulate_rows(self.cur, w, input.spikes(), true);
        if cfg.recurrent {
            accumulate_rows(self.cur, v, rec.spikes(), false);
        }
        let step = self.step_index(t, b);
        let prev_step = step.wrapping_sub(cfg.batch);
        let u = &mut self.u[b * n..(b + 1) * n];
        if t == 0 {
            u.fill(0.0);
        } else {
            let s = prev_step * (cfg.own_capacity() + 2);
            let prev = slot_view(&self.out_hist[s..]);
            for &i in prev.spikes() {
                u[i as usize] = 0.0;
            }
        }
        let alpha = self.params.lif.alpha;
        let one_minus = 1.0 - alpha;
        for (u, &x) in u.iter_mut().zip(self.cur.iter()) {
            *u = alpha * *u + one_minus * x;
        }
        let kt = cfg.own_capacity();
        let s = step * (kt + 2);
        let slot = &mut self.out_hist[s..s + kt + 2];
        let r = build_into(u, self.params.lif.theta, self.params.window, &mut slot[2..]);
        slot[0] = r.n_spikes as u16;
        slot[1] = r.n_grad as u16;
        let uh = &mut self.u_hist[step * kt..][..kt];
        for (dst, &i) in uh.iter_mut().zip(&slot[2..2 + r.n_grad]) {
            *dst = u[i as usize];
        }
        self.stats.spikes_raw += r.raw_spikes as u64;
        self.stats.near_raw += r.raw_near as u64;
        r
    }

    /// The tile's buffer of step `t`, sample `b` (local ids): candidates after
    /// [`Tile::forward`], what the layer kept after [`Tile::commit`].
    pub fn out_buffer(&self, t: usize, b: usize) -> SpikeView<'_> {
        slot_view(&self.out_hist[self.out_slot(t, b)..])
    }

    /// The source-layer buffer the tile integrated at step `t` (global ids of `S_{l-1}[t-1]`).
    pub fn in_buffer(&self, t: usize, b: usize) -> SpikeView<'_> {
        slot_view(&self.in_hist[self.in_slot(t, b)..])
    }

    /// The own-layer buffer a recurrent tile integrated at step `t` (`S_l[t-1]`); empty if not
    /// recurrent.
    pub fn rec_buffer(&self, t: usize, b: usize) -> SpikeView<'_> {
        if self.cfg.recurrent {
            slot_view(&self.rec_hist[self.rec_slot(t, b)..])
        } else {
            SpikeView::EMPTY
        }
    }

    /// Keeps the first `keep_spikes` spikes and the first `keep_near` near-threshold ids of the
    /// candidate buffer of step `t`, sample `b` (what the layer merge kept); the rest is dropped.
    pub fn commit(
        &mut self,
        t: usize,
        b: usize,
        keep_spikes: usize,
        keep_near: usize,
    ) -> Result<(), TileError> {
        self.check_tb(t, b)?;
        let step = self.step_index(t, b);
        let kt = self.cfg.own_capacity();
        let s = step * (kt + 2);
        let slot = &mut self.out_hist[s..s + kt + 2];
        let (ns, ng) = (slot[0] as usize, slot[1] as usize);
        if keep_spikes > ns || keep_near > ng - ns {
            return Err(TileError::OutOfRange);
        }
        if keep_spikes < ns {
            slot.copy_within(2 + ns..2 + ns + keep_near, 2 + keep_spikes);
            let uh = &mut self.u_hist[step * kt..][..kt];
            uh.copy_within(ns..ns + keep_near, keep_spikes);
        }
        slot[0] = keep_spikes as u16;
        slot[1] = (keep_spikes + keep_near) as u16;
        self.stats.spikes_kept += keep_spikes as u64;
        self.stats.near_kept += keep_near as u64;
        Ok(())
    }

    /// Commits the whole candidate buffer (a layer on one tile, or nothing over capacity).
    pub fn commit_all(&mut self, t: usize, b: usize) -> Result<(), TileError> {
        let v = self.out_buffer(t, b);
        let (ns, nn) = (v.n_spikes, v.near().len());
        self.commit(t, b, ns, nn)
    }

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
        self.backward_step(t, b, StepInput { input, rec }, source_partials, shared, grads);
        self.in_hist = in_hist;
        self.rec_hist = rec_hist;
        Ok(())
    }

    /// The checks of a backward step: `(t, b)` in range, the shapes of the shared weights and
    /// gradient buffers.
    fn check_backward(
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
    fn backward_step(
        &mut self,
        t: usize,
        b: usize,
        step_in: StepInput<'_>,
        source_partials: bool,
        shared: Option<SharedWeights<'_>>,
        grads: Option<SharedGrads<'_>>,
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
        for x in g.iter_mut() {
            *x *= alpha;
        }
        let out = slot_view(&self.out_hist[step * (kt + 2)..]);
        for &i in out.spikes() {
            g[i as usize] = 0.0;
        }
        let uh = &self.u_hist[step * kt..];
        let dlds = &self.dlds[b * kt..];
        for (k, &i) in out.ids.iter().enumerate() {
            let sp = self.params.surrogate.grad(uh[k], theta);
            g[i as usize] += sp * dlds[k];
        }
        let one_minus = 1.0 - alpha;
        for (c, &x) in self.c.iter_mut().zip(g.iter()) {
            *c = one_minus * x;
        }
        let (input, rec) = (step_in.input, step_in.rec);
        let (dw, dv): (&mut [f32], &mut [f32]) = match grads {
            Some(gr) => (gr.dw, gr.dv),
            None => (&mut *self.dw, &mut *self.dv),
        };
        scatter_add(dw, self.c, input.spikes());
        let (w, v): (&[f32], &[f32]) = match &shared {
            Some(sh) => (sh.w, sh.v),
            None => (self.w, self.v),
        };
        if source_partials {
            let p = &mut self.src_partials[b * cfg.in_capacity..];
            for (p, &j) in p.iter_mut().zip(input.ids) {
                let j = j as usize;
                *p = dot(&w[j * n..(j + 1) * n], self.c);
            }
        }
        if cfg.recurrent {
            scatter_add(dv, self.c, rec.spikes());
            let p = &mut self.rec_partials[b * cfg.layer_capacity..];
            for (p, &j) in p.iter_mut().zip(rec.ids) {
                let j = j as usize;
                *p = dot(&v[j * n..(j + 1) * n], self.c);
            }
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

    /// The hints of [`Tile::prefetch_backward`] for the tile's own buffer and its membranes;
    /// `(t, b)` in range.
    #[inline]
    fn prefetch_own_history(&self, t: usize, b: usize) {
        let kt = self.cfg.own_capacity();
        crate::simd::prefetch(&self.out_hist[self.out_slot(t, b)]);
        crate::simd::prefetch(&self.u_hist[self.step_index(t, b) * kt]);
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

    /// Applies optimizer step `step` (1-based) to the weights with the accumulated gradients.
    ///
    /// # Panics
    /// If `opt.kind` differs from the configured optimizer (a programming error).
    pub fn apply(&mut self, opt: &Optimizer, step: u32) {
        assert_eq!(opt.kind, self.cfg.optimizer, "optimizer kind differs from the tile's");
        let (nw, nv) = (self.w.len(), self.v.len());
        match opt.kind {
            OptimizerKind::Sgd => {
                opt.step(step, self.w, self.dw, &mut [], &mut []);
                opt.step(step, self.v, self.dv, &mut [], &mut []);
            }
            OptimizerKind::Adam => {
                let (mw, rest) = self.opt.split_at_mut(nw);
                let (vw, rest) = rest.split_at_mut(nw);
                let (mv, vv) = rest.split_at_mut(nv);
                opt.step(step, self.w, self.dw, mw, vw);
                opt.step(step, self.v, self.dv, mv, vv);
            }
        }
    }
}
