//! The weights and optimizer state: the update of a tile column, and reading and writing the
//! whole model's parameters from and to the tiles.

use super::TiledEngine;
use crate::model::{OptimState, Params};
use anyhow::{anyhow, ensure, Result};
use spiketile_core::{OptimizerKind, TileError};

impl TiledEngine {
    /// Sums the group leaders' gradients of tile column `(l, p)` (group order) into replica 0,
    /// applies the optimizer there, copies the new weights to the column's weights that every
    /// replica reads ([`Self::col_weights`]: what each replica's own update with the summed
    /// gradient would compute, bit for bit), and clears the gradients. Only replica 0 steps the
    /// optimizer and keeps weights and optimizer state (checkpoints read them there).
    pub(super) fn update(&self, l: usize, p: usize) -> Result<(), TileError> {
        let lr = &self.layers[l];
        let p_count = lr.p();
        // Safety: the column's tiles and its weights in `col_w` belong to this unit alone in
        // this phase.
        let mut first = unsafe { self.home(l, p) }.tile()?;
        for g in 1..lr.groups() {
            let mut leader = unsafe { self.home(l, lr.group(g).start * p_count + p) }.tile()?;
            let (sw, sv) = first.grads_mut();
            let (dw, dv) = leader.grads();
            sw.iter_mut().zip(dw).for_each(|(a, b)| *a += b);
            sv.iter_mut().zip(dv).for_each(|(a, b)| *a += b);
            leader.zero_grads();
        }
        first.apply(&self.optimizer, self.step + 1);
        first.zero_grads();
        let (at, nw, nv) = lr.col_at[p];
        // Safety: as above (the column's weights).
        let col = unsafe { lr.col_w.slice_mut(at, nw + nv) };
        col[..nw].copy_from_slice(first.weights());
        col[nw..].copy_from_slice(first.recurrent());
        Ok(())
    }

    /// The model's parameters, read from replica 0's tiles.
    pub(super) fn read_params(&mut self) -> Params {
        let mut out = Params::zeros(&self.cfg);
        for (lr, lp) in self.layers.iter_mut().zip(out.layers.iter_mut()) {
            let p_count = lr.p();
            for home in lr.tiles.get_mut().iter_mut().take(p_count) {
                let cfg = home.layout.config();
                let (n, f) = (cfg.neurons, cfg.first_neuron);
                let Ok(tile) = home.tile() else { continue };
                copy_out(tile.weights(), n, f, lp.cols, &mut lp.weight);
                if let Some(v) = lp.recurrent.as_mut() {
                    copy_out(tile.recurrent(), n, f, lp.rows, v);
                }
            }
        }
        out
    }

    /// Adam's moments (zeros for SGD) and the step, read from replica 0's tiles.
    pub(super) fn read_optim_state(&mut self) -> OptimState {
        let adam = self.optimizer.kind == OptimizerKind::Adam;
        let (mut m, mut v) = (Params::zeros(&self.cfg), Params::zeros(&self.cfg));
        if adam {
            for (l, lr) in self.layers.iter_mut().enumerate() {
                let p_count = lr.p();
                for home in lr.tiles.get_mut().iter_mut().take(p_count) {
                    let cfg = *home.layout.config();
                    let Ok(tile) = home.tile() else { continue };
                    let st = tile.optimizer_state();
                    let (n, f, cols, rows) =
                        (cfg.neurons, cfg.first_neuron, cfg.inputs, cfg.layer_width);
                    let nw = cols * n;
                    let nv = if cfg.recurrent { rows * n } else { 0 };
                    copy_out(&st[..nw], n, f, cols, &mut m.layers[l].weight);
                    copy_out(&st[nw..2 * nw], n, f, cols, &mut v.layers[l].weight);
                    if let (Some(mr), Some(vr)) =
                        (m.layers[l].recurrent.as_mut(), v.layers[l].recurrent.as_mut())
                    {
                        copy_out(&st[2 * nw..2 * nw + nv], n, f, rows, mr);
                        copy_out(&st[2 * nw + nv..2 * nw + 2 * nv], n, f, rows, vr);
                    }
                }
            }
        }
        OptimState { m: adam.then_some(m), v: adam.then_some(v), step: self.step }
    }

    /// Writes `params` (and `optim`, else zeros) to replica 0's tiles and the columns' weights,
    /// and clears every gradient.
    pub(super) fn write_state(
        &mut self,
        params: &Params,
        optim: Option<&OptimState>,
    ) -> Result<()> {
        ensure!(params.layers.len() == self.layers.len(), "layer count differs from the model");
        for (l, (lr, lp)) in self.layers.iter_mut().zip(&params.layers).enumerate() {
            ensure!(
                lp.rows == lr.plan.width && lp.cols == lr.plan.inputs,
                "layer {l} weights are {}x{}, the model needs {}x{}",
                lp.rows,
                lp.cols,
                lr.plan.width,
                lr.plan.inputs
            );
            ensure!(
                lp.recurrent.is_some() == lr.plan.recurrent,
                "layer {l}: recurrent weights mismatch"
            );
            // Replica 0 holds the weights and the optimizer state (see `update`), group leaders
            // gradients; the other replicas' tiles only their own step state.
            let p_count = lr.p();
            let leaders: Vec<bool> = (0..lr.plan.replicas).map(|r| lr.leads_group(r)).collect();
            let (col_w, col_at) = (lr.col_w.get_mut(), &lr.col_at);
            for (i, home) in lr.tiles.get_mut().iter_mut().enumerate() {
                let (r, p) = (i / p_count, i % p_count);
                if r > 0 {
                    if leaders[r] {
                        home.tile().map_err(|e| anyhow!("{e}"))?.zero_grads();
                    }
                    continue;
                }
                let cfg = *home.layout.config();
                let mut tile = home.tile().map_err(|e| anyhow!("{e}"))?;
                let (n, f) = (cfg.neurons, cfg.first_neuron);
                copy_in(&lp.weight, n, f, cfg.inputs, tile.weights_mut());
                if let Some(v) = &lp.recurrent {
                    copy_in(v, n, f, cfg.layer_width, tile.recurrent_mut());
                }
                let (at, nw, nv) = col_at[p];
                col_w[at..at + nw].copy_from_slice(tile.weights());
                col_w[at + nw..at + nw + nv].copy_from_slice(tile.recurrent());
                let st = tile.optimizer_state_mut();
                st.fill(0.0);
                if let Some(o) = optim {
                    if let (Some(m), Some(v)) = (&o.m, &o.v) {
                        if !st.is_empty() {
                            copy_in(&m.layers[l].weight, n, f, cfg.inputs, &mut st[..nw]);
                            copy_in(&v.layers[l].weight, n, f, cfg.inputs, &mut st[nw..2 * nw]);
                            if let (Some(mr), Some(vr)) =
                                (&m.layers[l].recurrent, &v.layers[l].recurrent)
                            {
                                copy_in(mr, n, f, cfg.layer_width, &mut st[2 * nw..2 * nw + nv]);
                                copy_in(
                                    vr,
                                    n,
                                    f,
                                    cfg.layer_width,
                                    &mut st[2 * nw + nv..2 * nw + 2 * nv],
                                );
                            }
                        }
                    }
                }
                tile.zero_grads();
            }
        }
        if let Some(o) = optim {
            self.step = o.step;
        }
        Ok(())
    }
}

/// Row-major `[rows][cols]` rows `first..first+n` → input-major `[cols][n]`.
fn copy_in(rowmajor: &[f32], n: usize, first: usize, cols: usize, dst: &mut [f32]) {
    for j in 0..cols {
        for i in 0..n {
            dst[j * n + i] = rowmajor[(first + i) * cols + j];
        }
    }
}

/// Input-major `[cols][n]` → row-major rows `first..first+n`.
fn copy_out(src: &[f32], n: usize, first: usize, cols: usize, rowmajor: &mut [f32]) {
    for j in 0..cols {
        for i in 0..n {
            rowmajor[(first + i) * cols + j] = src[j * n + i];
        }
    }
}
