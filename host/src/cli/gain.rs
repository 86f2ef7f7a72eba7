//! `spiketile bench --hidden-activity`: the initial-weight gain at which the first hidden layer
//! fires a chosen fraction of its neuron-steps.
//!
//! A throughput figure counts only for a network that works: on random input the hidden layer's
//! activity follows the input's and the weights' scale (at the default gain W's hidden layer
//! fires 1.3 % at 5 % input and 0.03 % at 1 %). With `--hidden-activity`, `bench` first looks
//! for the gain (`--init-gain`) at which the first hidden layer fires that fraction on a batch of
//! the random input, running the batch forward at the initial weights of each gain it tries, and
//! then times training from that gain's initial weights: every point of a sweep is a network
//! that fires alike.

use crate::config::ModelConfig;
use crate::engine::{Engine, InputBatch, LayerStats};
use crate::model::Params;
use anyhow::{bail, Context, Result};

/// The lowest and highest gains tried.
pub const GAIN_RANGE: (f32, f32) = (0.25, 4096.0);

/// The search stops at a gain whose activity lies within this fraction of the target.
const TOLERANCE: f64 = 0.02;

/// At most this many halvings of the gain's range (on a log scale: `4096 / 0.25` is `2^14`, so
/// 30 narrow it to about one part in `10^4` of the gain).
const HALVINGS: usize = 30;

/// Where the search ended.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Calibration {
    /// The activity asked for.
    pub target: f64,
    /// The gain found.
    pub gain: f32,
    /// The first hidden layer's activity at that gain (on the calibration batch).
    pub activity: f64,
    /// Forward passes it took.
    pub passes: usize,
}

/// The gain in [`GAIN_RANGE`] at which `activity(gain)` is closest to `target`, by bisection on
/// the logarithm of the gain: `activity` must not fall as the gain grows. Stops as soon as an
/// activity lies within 2 % of the target (relative), else after the range is narrowed to about
/// one part in `10^4`, with the closest gain found. An error if the target lies outside the
/// activities at the ends of the range.
///
/// ```
/// use spiketile::cli::gain::solve;
/// // A layer whose activity grows with the square of the gain.
/// let c = solve(0.03, |g| Ok((g as f64 / 100.0).powi(2) * 0.01)).unwrap();
/// assert!((c.activity - 0.03).abs() <= 0.02 * 0.03);
/// assert!((c.gain - 173.2).abs() < 2.0);
/// ```
pub fn solve(target: f64, mut activity: impl FnMut(f32) -> Result<f64>) -> Result<Calibration> {
    let (mut lo, mut hi) = GAIN_RANGE;
    let (bottom, top) = (activity(lo)?, activity(hi)?);
    if top < target {
        bail!(
            "the first hidden layer fires {:.3} % of its neuron-steps even at initial-weight gain \
             {hi}, below the {:.3} % asked for (more input activity drives it harder)",
            100.0 * top,
            100.0 * target
        );
    }
    if bottom > target {
        bail!(
            "the first hidden layer fires {:.3} % of its neuron-steps already at initial-weight \
             gain {lo}, above the {:.3} % asked for",
            100.0 * bottom,
            100.0 * target
        );
    }
    let miss = |a: f64| (a - target).abs();
    let mut best = if miss(bottom) <= miss(top) { (lo, bottom) } else { (hi, top) };
    let mut passes = 2;
    for _ in 0..HALVINGS {
        if miss(best.1) <= TOLERANCE * target {
            break;
        }
        let mid = (lo * hi).sqrt();
        let a = activity(mid)?;
        passes += 1;
        if miss(a) < miss(best.1) {
            best = (mid, a);
        }
        if a < target {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Ok(Calibration { target, gain: best.0, activity: best.1, passes })
}

/// The gain at which `cfg`'s first hidden layer fires `target` of its neuron-steps on `batch`
/// ([`solve`]): the engine runs the batch forward (no training) from the initial weights each
/// tried gain draws from `seed`. The engine is left holding the last weights it tried.
pub fn calibrate(
    engine: &mut dyn Engine,
    cfg: &ModelConfig,
    seed: u64,
    batch: &InputBatch,
    target: f64,
) -> Result<Calibration> {
    check_target(cfg, target)?;
    solve(target, |gain| {
        let cfg = ModelConfig { init_gain: gain, ..cfg.clone() };
        engine.set_state(&Params::init(&cfg, seed), None)?;
        let r = engine
            .run_batch(batch, false)
            .with_context(|| format!("forward pass at initial-weight gain {gain}"))?;
        Ok(r.layers.first().map_or(0.0, LayerStats::activity))
    })
    .context("--hidden-activity")
}

/// `target` is an activity the first hidden layer can reach: above 0, and within the spike
/// buffers' capacity (the activity counts the spikes they keep).
pub fn check_target(cfg: &ModelConfig, target: f64) -> Result<()> {
    if cfg.hidden.is_empty() {
        bail!("--hidden-activity needs a hidden layer");
    }
    if !(target > 0.0 && target <= 1.0) {
        bail!("--hidden-activity must be a fraction above 0 and at most 1 (got {target})");
    }
    if target > cfg.max_activity {
        bail!(
            "--hidden-activity {target} is above --max-activity {}: the spike buffers keep at most \
             that fraction of a layer's neurons per step",
            cfg.max_activity
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A layer whose activity grows by 1/1000 at every fourth unit of gain, saturating at 10 %.
    fn stepped(g: f32) -> Result<f64> {
        Ok(((g as f64 / 4.0).floor() / 1000.0).min(0.1))
    }

    #[test]
    fn finds_the_gain_within_the_tolerance() {
        let c = solve(0.02, stepped).unwrap();
        assert!((c.activity - 0.02).abs() <= TOLERANCE * 0.02, "{c:?}");
        assert!((80.0..84.0).contains(&c.gain), "{c:?}");
        assert!(c.passes <= 2 + HALVINGS);
    }

    #[test]
    fn keeps_the_closest_gain_when_the_target_falls_between_steps() {
        // 0.0215 lies between the steps at 0.021 and 0.022: the closest is 0.022 (or 0.021).
        let c = solve(0.0215, stepped).unwrap();
        assert!((c.activity - 0.0215).abs() <= 0.0005 + 1e-12, "{c:?}");
        assert_eq!(c.passes, 2 + HALVINGS);
    }

    #[test]
    fn refuses_targets_outside_the_range() {
        let high = solve(0.5, stepped).unwrap_err().to_string();
        assert!(high.contains("even at initial-weight gain 4096"), "{high}");
        let low = solve(0.01, |_| Ok(0.05)).unwrap_err().to_string();
        assert!(low.contains("already at initial-weight gain 0.25"), "{low}");
    }

    #[test]
    fn passes_the_activity_errors_on() {
        let e = solve(0.02, |_| bail!("engine broke")).unwrap_err();
        assert!(e.to_string().contains("engine broke"));
    }
}
