//! The planner: layers → tiles within the 624 KiB budget (SPEC §3).
//!
//! For each layer it chooses the micro-batch `m` (samples per tile; the batch is split into
//! `ceil(B / m)` replicas of the layer's tiles) and the neurons per tile, using the core's exact
//! [`Footprint`]. For each micro-batch, the widest tiles that fit (at most [`WIDE_LANES`] where
//! whole cache-line rows fit, in multiples of [`ROW_LANES`]); among those plans, the widest
//! whole-row tiles, then replica counts the [`REPLICA_GROUPS`] divide evenly, then the fewest
//! tiles per replica within [`BYTES_SLACK`] of the fewest bytes, then the fewest bytes (the
//! largest `m` on ties). The plan depends on the model flags alone (never on `--threads`), so
//! runs are reproducible.

use crate::config::ModelConfig;
use anyhow::{bail, Result};
use spiketile_core::{Footprint, TileConfig, TILE_SRAM_BYTES};
use std::fmt;

/// How one layer is laid out on tiles.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerPlan {
    /// Layer width `N_l`.
    pub width: usize,
    /// Source width `N_{l-1}`.
    pub inputs: usize,
    /// Buffer capacity `K_l`.
    pub capacity: usize,
    /// Source buffer capacity `K_{l-1}`.
    pub in_capacity: usize,
    /// Recurrent weights.
    pub recurrent: bool,
    /// `(first neuron, neurons)` of each tile of one replica.
    pub splits: Vec<(usize, usize)>,
    /// Samples per tile.
    pub micro_batch: usize,
    /// Replicas of the layer's tiles (each runs one micro-batch).
    pub replicas: usize,
    /// Footprint of the largest tile.
    pub max_tile: Footprint,
    /// Bytes of all tiles of the layer, all replicas.
    pub total_bytes: usize,
}

impl LayerPlan {
    /// Tiles of the layer over all replicas.
    pub fn tiles(&self) -> usize {
        self.splits.len() * self.replicas
    }

    /// Samples of the batch that replica `r` runs.
    pub fn samples_of(&self, r: usize, batch: usize) -> std::ops::Range<usize> {
        (r * self.micro_batch).min(batch)..((r + 1) * self.micro_batch).min(batch)
    }
}

/// The plan of a whole network.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// Hidden layers then the output layer.
    pub layers: Vec<LayerPlan>,
    /// Samples per optimizer step.
    pub batch_size: usize,
    /// Time steps.
    pub time_steps: usize,
    /// Capacity of the input (data) buffer.
    pub input_capacity: usize,
}

impl Plan {
    /// Plans `cfg`, or explains why it cannot be planned and what to change.
    pub fn new(cfg: &ModelConfig) -> Result<Plan> {
        cfg.validate()?;
        let widths = cfg.widths();
        let optimizer = cfg.optimizer_kind()?;
        let mut layers = Vec::new();
        for l in 1..widths.len() {
            let recurrent = cfg.recurrent && l + 1 < widths.len();
            let base = TileConfig {
                neurons: 1,
                first_neuron: 0,
                layer_width: widths[l],
                inputs: widths[l - 1],
                recurrent,
                batch: 1,
                time_steps: cfg.time_steps,
                in_capacity: cfg.layer_capacity(l - 1),
                layer_capacity: cfg.layer_capacity(l),
                optimizer,
            };
            let limits = (cfg.max_neurons_per_tile, cfg.max_samples_per_tile);
            layers.push(plan_layer(base, cfg.batch_size, l, limits)?);
        }
        Ok(Plan {
            layers,
            batch_size: cfg.batch_size,
            time_steps: cfg.time_steps,
            input_capacity: cfg.capacity(cfg.inputs),
        })
    }

    /// Tiles over all layers and replicas.
    pub fn tiles(&self) -> usize {
        self.layers.iter().map(LayerPlan::tiles).sum()
    }

    /// Bytes of all tiles.
    pub fn total_bytes(&self) -> usize {
        self.layers.iter().map(|l| l.total_bytes).sum()
    }
}

fn fits(base: TileConfig, n: usize, m: usize) -> bool {
    let cfg = TileConfig { neurons: n, batch: m, ..base };
    cfg.footprint().map(|f| f.total() <= TILE_SRAM_BYTES).unwrap_or(false)
}

/// Largest neuron count that fits with micro-batch `m` (0 if none), by bisection: the footprint
/// grows with the neuron count.
fn max_neurons(base: TileConfig, m: usize) -> usize {
    let (mut lo, mut hi) = (0usize, base.layer_width);
    while lo < hi {
        let mid = (lo + hi).div_ceil(2);
        if fits(base, mid, m) {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    lo
}

/// Neurons per tile that make a weight row (one input's weights to the tile's neurons) exactly
/// one 64-byte cache line. A layer that needs several tiles gets tiles of a multiple of this
/// many neurons (and one smaller last tile if the width is not a multiple): the engine puts every
/// arena on a cache line, so each input spike then loads whole lines and nothing else.
/// Measured on W (256 hidden): 16 neurons per tile against 18, 1,608 against 1,470 samples/s
/// (median of 6 alternating runs).
pub const ROW_LANES: usize = 16;

/// The widest tile the planner aims for: two cache-line rows. Among the micro-batches that allow
/// tiles of whole rows, it takes those with the widest tiles up to this (then see
/// [`BYTES_SLACK`]):
/// per tile and sample and step there is a fixed cost (the input spikes copied into the tile's
/// history, the membrane update, the spike buffer), so fewer, wider tiles cost less. Wider still
/// would take more replicas (fewer samples per tile), whose weight copies and gradient sums
/// cost more than they save. Measured on W (256 hidden, Adam, batch 64): 32 neurons x 8 samples
/// against 16 x 16 (the fewest bytes), see docs/performance.md.
pub const WIDE_LANES: usize = 2 * ROW_LANES;

/// How many more bytes than the fewest a layer's plan may take for fewer tiles per replica.
/// Among the micro-batches with the widest whole-row tiles (up to [`WIDE_LANES`]) and replica
/// counts the groups divide evenly, the planner takes the fewest tiles per replica among the
/// plans that need at most this much more memory than the smallest, then the fewest bytes.
/// Each tile costs a fixed amount per sample and step (the input spikes copied into its
/// history, the membrane update, the spike buffer, one call), so where tiles must be narrower
/// than a cache line, fewer of them pay; more memory means more replicas, whose weight copies
/// and gradient sums cost as well, hence the bound. Measured on the N-MNIST shape (2312-256-10,
/// T 100): 11 neurons x 4 samples (8 % more bytes) against 6 x 8 (the fewest bytes), medians of
/// 5 alternating runs 632 against 460 samples/s (docs/performance.md).
pub const BYTES_SLACK: f64 = 0.1;

/// Replica groups per tile column (fewer if the layer has fewer replicas): the engine runs each
/// group as one unit, its replicas reading the first one's weights. Fixed, not derived from the
/// thread count, because the groups decide the order in which gradients are summed: results stay
/// bit-identical for any number of threads. Among otherwise equal plans the planner takes a
/// replica count these groups divide evenly.
pub const REPLICA_GROUPS: usize = 2;

/// Tiles of `n` neurons, the last one smaller if `n` does not divide `width`.
fn lane_splits(width: usize, n: usize) -> Vec<(usize, usize)> {
    (0..width).step_by(n).map(|first| (first, n.min(width - first))).collect()
}

fn even_splits(width: usize, tiles: usize) -> Vec<(usize, usize)> {
    let (q, r) = (width / tiles, width % tiles);
    let mut first = 0;
    (0..tiles)
        .map(|p| {
            let n = q + usize::from(p < r);
            let s = (first, n);
            first += n;
            s
        })
        .collect()
}

fn plan_layer(
    base: TileConfig,
    batch: usize,
    l: usize,
    (max_n, max_m): (Option<usize>, Option<usize>),
) -> Result<LayerPlan> {
    // Every micro-batch's plan, then the best of those within BYTES_SLACK of the fewest bytes.
    let mut plans: Vec<LayerPlan> = Vec::new();
    for m in 1..=batch.min(max_m.unwrap_or(usize::MAX)) {
        let fits = max_neurons(base, m).min(max_n.unwrap_or(usize::MAX));
        if fits == 0 {
            break; // larger micro-batches need more memory still
        }
        // Tiles of whole rows, as wide as WIDE_LANES.
        let whole_rows = fits.min(WIDE_LANES).min(base.layer_width) / ROW_LANES * ROW_LANES;
        let n_max = if whole_rows > 0 { fits.min(WIDE_LANES) } else { fits };
        let splits = if base.layer_width > n_max && n_max >= ROW_LANES {
            lane_splits(base.layer_width, n_max / ROW_LANES * ROW_LANES)
        } else {
            even_splits(base.layer_width, base.layer_width.div_ceil(n_max))
        };
        let replicas = batch.div_ceil(m);
        let foot = |n: usize| TileConfig { neurons: n, batch: m, ..base }.footprint();
        let per_replica: usize =
            splits.iter().map(|&(_, n)| foot(n).map(|f| f.total())).sum::<Result<_, _>>()?;
        plans.push(LayerPlan {
            width: base.layer_width,
            inputs: base.inputs,
            capacity: base.layer_capacity,
            in_capacity: base.in_capacity,
            recurrent: base.recurrent,
            max_tile: foot(splits[0].1)?,
            splits,
            micro_batch: m,
            replicas,
            total_bytes: per_replica * replicas,
        });
    }
    // First the widest whole-row tiles (up to WIDE_LANES) and replica counts the groups divide
    // evenly (they keep the engine's threads equally busy); among those plans, the fewest tiles
    // per replica within BYTES_SLACK of their fewest bytes; then the fewest bytes, and on ties
    // the larger micro-batch.
    let key = |p: &LayerPlan| {
        let whole_rows = p.splits[0].1.min(WIDE_LANES) / ROW_LANES * ROW_LANES;
        (whole_rows, p.replicas == 1 || p.replicas.is_multiple_of(REPLICA_GROUPS))
    };
    let top = plans.iter().map(key).max();
    plans.retain(|p| Some(key(p)) == top);
    let fewest = plans.iter().map(|p| p.total_bytes).min().unwrap_or(0);
    plans.retain(|p| p.total_bytes as f64 <= fewest as f64 * (1.0 + BYTES_SLACK));
    // `max_by_key` keeps the last of equal maxima: the larger micro-batch.
    let best = plans
        .into_iter()
        .max_by_key(|p| (std::cmp::Reverse(p.splits.len()), std::cmp::Reverse(p.total_bytes)));
    match best {
        Some(p) => Ok(p),
        None => {
            let one = TileConfig { neurons: 1, batch: 1, ..base }.footprint()?;
            // Number layers as the plan table does: 0 = the first hidden layer.
            let narrower = if l == 1 {
                "fewer input channels (e.g. --downsample for camera data)"
            } else {
                "a narrower previous layer"
            };
            bail!(
                "layer {} ({} inputs -> {} neurons) cannot be planned: one neuron with one sample \
                 needs {} bytes (weights {}, gradients {}, optimizer {}, backward history {}, \
                 exchange {}) but a tile has {TILE_SRAM_BYTES}; use fewer --time-steps, a smaller \
                 --max-activity, {narrower}, or --optimizer sgd",
                l - 1,
                base.inputs,
                base.layer_width,
                one.total(),
                one.weights,
                one.grads,
                one.optimizer,
                one.history,
                one.exchange,
            )
        }
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "plan: batch {} (T = {}), tile budget {TILE_SRAM_BYTES} bytes, input capacity {}",
            self.batch_size, self.time_steps, self.input_capacity
        )?;
        writeln!(
            f,
            "{:>5} {:>13} {:>6} {:>9} {:>8} {:>8} {:>7} {:>12} {:>6}  breakdown of the largest tile",
            "layer", "shape", "K", "neur/tile", "samp/tile", "replicas", "tiles", "bytes/tile", "use"
        )?;
        for (l, p) in self.layers.iter().enumerate() {
            let t = &p.max_tile;
            writeln!(
                f,
                "{:>5} {:>13} {:>6} {:>9} {:>8} {:>8} {:>7} {:>12} {:>5.1}%  weights {} grads {} optim {} state {} history {} exchange {}",
                l,
                format!("{}x{}{}", p.width, p.inputs, if p.recurrent { "+rec" } else { "" }),
                p.capacity,
                p.splits[0].1,
                p.micro_batch,
                p.replicas,
                p.tiles(),
                t.total(),
                100.0 * t.total() as f64 / TILE_SRAM_BYTES as f64,
                t.weights,
                t.grads,
                t.optimizer,
                t.state,
                t.history,
                t.exchange,
            )?;
        }
        write!(
            f,
            "total: {} tiles, {} bytes ({:.1} MiB) of tile memory",
            self.tiles(),
            self.total_bytes(),
            self.total_bytes() as f64 / (1 << 20) as f64
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_config;

    /// The W workload of issue 5: 700-256-20, T 100, batch 64, default sparse buffers.
    fn workload_w() -> ModelConfig {
        let mut cfg = test_config();
        cfg.inputs = 700;
        cfg.hidden = vec![256];
        cfg.classes = 20;
        cfg.time_steps = 100;
        cfg.batch_size = 64;
        cfg.max_activity = 0.1;
        cfg.window = 0.1;
        cfg
    }

    #[test]
    fn every_tile_fits_and_covers_the_layer() {
        let cfg = workload_w();
        let plan = Plan::new(&cfg).unwrap();
        for p in &plan.layers {
            assert!(p.max_tile.total() <= TILE_SRAM_BYTES);
            assert_eq!(p.splits.iter().map(|s| s.1).sum::<usize>(), p.width);
            assert!(p.micro_batch * p.replicas >= 64);
        }
        assert_eq!(Plan::new(&cfg).unwrap(), plan, "plans are reproducible");
    }

    /// Layers that need several tiles get whole cache-line rows (32 neurons per tile on W: two
    /// lines; a smaller last tile if need be); a layer that fits one tile stays whole, and a tile
    /// limit under 16 is obeyed as it is.
    #[test]
    fn tiles_of_a_split_layer_hold_whole_cache_lines() {
        let mut cfg = workload_w();
        let plan = Plan::new(&cfg).unwrap();
        assert!(plan.layers[0].splits.iter().all(|&(_, n)| n == WIDE_LANES));
        assert_eq!(plan.layers[1].splits, vec![(0, 20)]);
        cfg.hidden = vec![1000];
        let plan = Plan::new(&cfg).unwrap();
        let splits = &plan.layers[0].splits;
        assert!(splits[..splits.len() - 1].iter().all(|&(_, n)| n % ROW_LANES == 0));
        assert_eq!(splits.iter().map(|s| s.1).sum::<usize>(), 1000);
        cfg.max_neurons_per_tile = Some(10);
        let plan = Plan::new(&cfg).unwrap();
        assert_eq!(plan.layers[0].splits.len(), 100);
    }

    /// Where no tile holds a whole cache-line row (the N-MNIST shape, 2312 inputs), the planner
    /// takes fewer, wider tiles for a little more memory: 11 neurons x 4 samples (24 tiles per
    /// replica) rather than the fewest bytes, 6 x 8 (43 tiles), and never more than
    /// BYTES_SLACK above the fewest bytes.
    #[test]
    fn narrow_tiles_trade_a_little_memory_for_fewer_tiles() {
        let mut cfg = workload_w();
        cfg.inputs = 2312;
        cfg.classes = 10;
        let plan = Plan::new(&cfg).unwrap();
        let layer = &plan.layers[0];
        assert_eq!((layer.splits.len(), layer.micro_batch, layer.splits[0].1), (24, 4, 11));
        // The fewest bytes: 6 neurons x 8 samples.
        cfg.max_neurons_per_tile = Some(6);
        let small = Plan::new(&cfg).unwrap().layers.remove(0);
        assert_eq!((small.splits.len(), small.micro_batch), (43, 8));
        let fewest = small.total_bytes;
        assert!(layer.total_bytes as f64 <= fewest as f64 * (1.0 + BYTES_SLACK));
        assert!(layer.total_bytes > fewest, "the test needs a plan that is not the smallest");
    }

    #[test]
    fn unplannable_layer_says_why() {
        let mut cfg = test_config();
        cfg.inputs = 60000;
        cfg.hidden = vec![4];
        cfg.time_steps = 2000;
        cfg.max_activity = 1.0;
        let e = Plan::new(&cfg).unwrap_err().to_string();
        assert!(e.contains("cannot be planned") && e.contains("--time-steps"), "{e}");
    }
}
