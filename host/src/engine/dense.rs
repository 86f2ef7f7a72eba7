//! A plain dense engine of the same math (SPEC §1), one sample at a time, no tiles: the oracle.
//!
//! Spikes are dense 0/1 vectors defined by the layer's spike buffer (built with the core's
//! [`build_into`], so capacity and gradient window mean exactly what they mean on tiles). With
//! [`SpikeFn::Smooth`] (tests only) a neuron emits `s(u - theta)`, the antiderivative of the
//! surrogate, while resets still use `H(u - theta)`: the network is then differentiable and BPTT
//! with the surrogate computes its exact gradient, which finite differences check.

use super::{batch_loss, BatchResult, Engine, InputBatch, LayerStats};
use crate::config::ModelConfig;
use crate::data::BinnedSample;
use crate::model::{LayerParams, OptimState, Params};
use anyhow::{ensure, Result};
use spiketile_core::lif::{adjoint_step, membrane_step};
use spiketile_core::spikes::build_into;
use spiketile_core::{NeuronParams, Optimizer, OptimizerKind};

/// The spike nonlinearity of the forward pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpikeFn {
    /// `H(u - theta)`, as in training.
    Heaviside,
    /// `s(u - theta)` with `s' = ` the surrogate (gradient checks only; exact mode).
    Smooth,
}

/// Dense reference engine.
#[derive(Clone, Debug)]
pub struct DenseEngine {
    cfg: ModelConfig,
    params: Params,
    optim: OptimState,
    spike_fn: SpikeFn,
}

/// Per-sample forward record of one layer: `[t][i]` arrays.
struct Record {
    s: Vec<f32>,
    u: Vec<f32>,
    spiked: Vec<bool>,
    in_grad: Vec<bool>,
}

impl DenseEngine {
    /// A dense engine with the given parameters and a fresh optimizer.
    pub fn new(cfg: &ModelConfig, params: Params, spike_fn: SpikeFn) -> Result<Self> {
        cfg.validate()?;
        let adam = cfg.optimizer_kind()? == OptimizerKind::Adam;
        let optim = OptimState {
            m: adam.then(|| Params::zeros(cfg)),
            v: adam.then(|| Params::zeros(cfg)),
            step: 0,
        };
        Ok(DenseEngine { cfg: cfg.clone(), params, optim, spike_fn })
    }

    fn forward(&self, input: &InputBatch, b: usize, stats: &mut [LayerStats]) -> Vec<Record> {
        let cfg = &self.cfg;
        let t_steps = cfg.time_steps;
        let widths = cfg.widths();
        let mut recs: Vec<Record> = Vec::new();
        // Layer 0: the data.
        let mut s0 = vec![0.0f32; t_steps * widths[0]];
        for t in 0..t_steps {
            for &j in input.step(b, t).spikes() {
                s0[t * widths[0] + j as usize] = 1.0;
            }
        }
        recs.push(Record { s: s0, u: Vec::new(), spiked: Vec::new(), in_grad: Vec::new() });
        for (l, p) in self.params.layers.iter().enumerate() {
            let (n, n_in) = (p.rows, p.cols);
            let cap = cfg.layer_capacity(l + 1);
            let np: NeuronParams = cfg.layer_params(l + 1);
            let mut rec = Record {
                s: vec![0.0; t_steps * n],
                u: vec![0.0; t_steps * n],
                spiked: vec![false; t_steps * n],
                in_grad: vec![false; t_steps * n],
            };
            let src = &recs[l].s;
            let mut u = vec![0.0f32; n];
            let mut ids = vec![0u16; cap];
            for t in 0..t_steps {
                for i in 0..n {
                    let mut acc = 0.0f32;
                    if t > 0 {
                        let s_in = &src[(t - 1) * n_in..t * n_in];
                        let w = &p.weight[i * n_in..(i + 1) * n_in];
                        for j in 0..n_in {
                            acc += w[j] * s_in[j];
                        }
                        if let Some(v) = &p.recurrent {
                            let s_own = &rec.s[(t - 1) * n..t * n];
                            for j in 0..n {
                                acc += v[i * n + j] * s_own[j];
                            }
                        }
                    }
                    let spiked_prev = t > 0 && rec.spiked[(t - 1) * n + i];
                    u[i] = membrane_step(&np.lif, u[i], spiked_prev, acc);
                }
                let row = t * n..(t + 1) * n;
                rec.u[row.clone()].copy_from_slice(&u);
                match self.spike_fn {
                    SpikeFn::Heaviside => {
                        let r = build_into(&u, np.lif.theta, np.window, &mut ids);
                        for (k, &i) in ids[..r.n_grad].iter().enumerate() {
                            rec.in_grad[t * n + i as usize] = true;
                            if k < r.n_spikes {
                                rec.s[t * n + i as usize] = 1.0;
                                rec.spiked[t * n + i as usize] = true;
                            }
                        }
                        stats[l].spikes += r.n_spikes as u64;
                        stats[l].overflow += r.dropped() as u64;
                    }
                    SpikeFn::Smooth => {
                        for i in 0..n {
                            let x = u[i];
                            rec.s[t * n + i] = np.surrogate.smooth_spike(x, np.lif.theta);
                            rec.spiked[t * n + i] = x >= np.lif.theta;
                            rec.in_grad[t * n + i] = true;
                        }
                    }
                }
                stats[l].neuron_steps += n as u64;
            }
            recs.push(rec);
        }
        recs
    }

    fn counts_of(&self, recs: &[Record], out: &mut [f32]) {
        let c = self.cfg.classes;
        let last = recs.last().expect("at least the output layer");
        out.fill(0.0);
        for t in 0..self.cfg.time_steps {
            for k in 0..c {
                out[k] += last.s[t * c + k];
            }
        }
    }

    /// BPTT of one sample, accumulating into `grads`.
    fn backward(&self, recs: &[Record], dldc: &[f32], grads: &mut Params) {
        let cfg = &self.cfg;
        let np = cfg.neuron_params();
        let (alpha, theta) = (np.lif.alpha, np.lif.theta);

        let t_steps = cfg.time_steps;
        let n_layers = self.params.layers.len();
        // dlds[l] = dL/dS_l at the step being processed; g[l] = dL/du_l at the step after it.
        let mut dlds: Vec<Vec<f32>> =
            self.params.layers.iter().map(|p| vec![0.0; p.rows]).collect();
        let mut g: Vec<Vec<f32>> = self.params.layers.iter().map(|p| vec![0.0; p.rows]).collect();
        for t in (0..t_steps).rev() {
            dlds[n_layers - 1].iter_mut().zip(dldc).for_each(|(d, &x)| *d += x);
            let mut next: Vec<Vec<f32>> = dlds.iter().map(|d| vec![0.0; d.len()]).collect();
            for l in 0..n_layers {
                let p = &self.params.layers[l];
                let (n, n_in) = (p.rows, p.cols);
                let rec = &recs[l + 1];
                let mut c = vec![0.0f32; n];
                for i in 0..n {
                    let idx = t * n + i;
                    let sp =
                        if rec.in_grad[idx] { np.surrogate.grad(rec.u[idx], theta) } else { 0.0 };
                    g[l][i] = adjoint_step(&np.lif, sp, dlds[l][i], rec.spiked[idx], g[l][i]);
                    c[i] = (1.0 - alpha) * g[l][i];
                }
                if t == 0 {
                    continue;
                }
                let src = &recs[l].s[(t - 1) * n_in..t * n_in];
                let gw = &mut grads.layers[l].weight;
                for i in 0..n {
                    for j in 0..n_in {
                        gw[i * n_in + j] += c[i] * src[j];
                    }
                }
                if l > 0 {
                    for j in 0..n_in {
                        let mut acc = 0.0f32;
                        for i in 0..n {
                            acc += p.weight[i * n_in + j] * c[i];
                        }
                        next[l - 1][j] += acc;
                    }
                }
                if let Some(v) = &p.recurrent {
                    let own = &rec.s[(t - 1) * n..t * n];
                    let gv = grads.layers[l].recurrent.as_mut().expect("shapes match");
                    for i in 0..n {
                        for j in 0..n {
                            gv[i * n + j] += c[i] * own[j];
                        }
                    }
                    for j in 0..n {
                        let mut acc = 0.0f32;
                        for i in 0..n {
                            acc += v[i * n + j] * c[i];
                        }
                        next[l][j] += acc;
                    }
                }
            }
            dlds = next;
        }
    }

    /// Loss (sum over the batch) and gradients (of the batch-mean loss) without updating.
    pub fn loss_and_grads(&self, input: &InputBatch) -> Result<(f64, Params, BatchResult)> {
        let c = self.cfg.classes;
        let mut stats = vec![LayerStats::default(); self.params.layers.len()];
        let mut counts = vec![0.0f32; input.len * c];
        let mut records = Vec::with_capacity(input.len);
        for b in 0..input.len {
            let recs = self.forward(input, b, &mut stats);
            self.counts_of(&recs, &mut counts[b * c..(b + 1) * c]);
            records.push(recs);
        }
        let mut dldc = vec![0.0f32; counts.len()];
        let loss = batch_loss(&self.cfg, &counts, &input.labels, &mut dldc)?;
        let mut grads = Params::zeros(&self.cfg);
        for (b, recs) in records.iter().enumerate() {
            self.backward(recs, &dldc[b * c..(b + 1) * c], &mut grads);
        }
        Ok((loss, grads, BatchResult { loss_sum: loss, counts, layers: stats }))
    }

    /// The spikes of one binned sample through the network, `[layer][t] -> ids`: layer 0 is the
    /// input as the network sees it (truncated to the input capacity), then every hidden layer
    /// and the output layer (the spikes each layer passes on).
    pub fn spike_raster(&self, sample: &BinnedSample) -> Vec<Vec<Vec<u16>>> {
        let cfg = &self.cfg;
        let input = InputBatch::new(&[sample], cfg.time_steps, cfg.capacity(cfg.inputs));
        let mut stats = vec![LayerStats::default(); self.params.layers.len()];
        let recs = self.forward(&input, 0, &mut stats);
        let widths = cfg.widths();
        recs.iter()
            .enumerate()
            .map(|(l, rec)| {
                let n = widths[l];
                (0..cfg.time_steps)
                    .map(|t| {
                        let fired = |i: &usize| {
                            if l == 0 {
                                rec.s[t * n + i] > 0.0
                            } else {
                                rec.spiked[t * n + i]
                            }
                        };
                        (0..n).filter(fired).map(|i| i as u16).collect()
                    })
                    .collect()
            })
            .collect()
    }

    /// Parameters, mutable (finite-difference tests perturb them).
    pub fn params_mut(&mut self) -> &mut Params {
        &mut self.params
    }
}

fn apply(
    opt: &Optimizer,
    step: u32,
    p: &mut LayerParams,
    g: &LayerParams,
    m: Option<&mut LayerParams>,
    v: Option<&mut LayerParams>,
) {
    match (m, v) {
        (Some(m), Some(v)) => {
            opt.step(step, &mut p.weight, &g.weight, &mut m.weight, &mut v.weight);
            if let (Some(pr), Some(gr), Some(mr), Some(vr)) = (
                p.recurrent.as_mut(),
                g.recurrent.as_ref(),
                m.recurrent.as_mut(),
                v.recurrent.as_mut(),
            ) {
                opt.step(step, pr, gr, mr, vr);
            }
        }
        _ => {
            opt.step(step, &mut p.weight, &g.weight, &mut [], &mut []);
            if let (Some(pr), Some(gr)) = (p.recurrent.as_mut(), g.recurrent.as_ref()) {
                opt.step(step, pr, gr, &mut [], &mut []);
            }
        }
    }
}

impl Engine for DenseEngine {
    fn run_batch(&mut self, input: &InputBatch, train: bool) -> Result<BatchResult> {
        ensure!(input.len > 0, "empty batch");
        input.check_ids(self.cfg.inputs)?;
        let (_, grads, result) = self.loss_and_grads(input)?;
        if train {
            let opt = self.cfg.optimizer()?;
            self.optim.step += 1;
            let step = self.optim.step;
            for l in 0..self.params.layers.len() {
                let m = self.optim.m.as_mut().map(|m| &mut m.layers[l]);
                let v = self.optim.v.as_mut().map(|v| &mut v.layers[l]);
                apply(&opt, step, &mut self.params.layers[l], &grads.layers[l], m, v);
            }
        }
        Ok(result)
    }

    fn params(&mut self) -> Params {
        self.params.clone()
    }

    fn optim_state(&mut self) -> OptimState {
        self.optim.clone()
    }

    fn set_state(&mut self, params: &Params, optim: Option<&OptimState>) -> Result<()> {
        ensure!(params.layers.len() == self.params.layers.len(), "layer count differs");
        self.params = params.clone();
        if let Some(o) = optim {
            // Moments left out are zeros, as in the tiled engine.
            let zeros = |m: &Option<Params>| match (m, &self.optim.m) {
                (Some(m), _) => Some(m.clone()),
                (None, Some(_)) => Some(Params::zeros(&self.cfg)),
                (None, None) => None,
            };
            self.optim = OptimState { m: zeros(&o.m), v: zeros(&o.v), step: o.step };
        }
        Ok(())
    }

    fn config(&self) -> &ModelConfig {
        &self.cfg
    }
}
