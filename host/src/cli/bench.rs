//! `spiketile bench`: training throughput on random input of a given activity.

use super::args::{ModelArgs, ShapeArgs};
use super::gain::{calibrate, Calibration};
use super::train::make_engine;
use crate::atomic::{check_writable, write_atomic};
use crate::config::ModelConfig;
use crate::data::BinnedSample;
use crate::engine::{EngineMemory, InputBatch, LayerStats};
use crate::model::{OptimState, Params};
use anyhow::{bail, Result};
use clap::{Args, ValueEnum};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Instant;

/// What a sweep varies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Sweep {
    /// Input activity 1 %, 2 %, 5 %, 10 %, 20 %.
    Activity,
    /// Hidden width 256, 1024, 4096 (one hidden layer).
    Hidden,
    /// 1 thread up to all cores.
    Threads,
}

/// Arguments of `spiketile bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Model flags (as for `train`).
    #[command(flatten)]
    pub model: ModelArgs,
    /// Data shape.
    #[command(flatten)]
    pub shape: ShapeArgs,
    /// Fraction of input channels spiking per step.
    #[arg(long, default_value_t = 0.05, value_parser = parse_fraction, allow_negative_numbers = true)]
    pub activity: f64,
    /// Choose the initial-weight gain (instead of --init-gain) at which the first hidden layer
    /// fires this fraction of its neuron-steps on the random input, searched for before each
    /// measurement by running a batch forward at the initial weights of the gains it tries:
    /// each point of a sweep is then a network that fires alike.
    #[arg(long, value_parser = parse_fraction, allow_negative_numbers = true, conflicts_with = "init_gain")]
    pub hidden_activity: Option<f64>,
    /// Timed training steps (batches), at least 1.
    #[arg(long, default_value_t = 5, value_parser = super::args::at_least_one)]
    pub steps: usize,
    /// Untimed steps first.
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Repeat the --warmup and --steps steps, each time from the initial weights, until this
    /// many seconds have been timed: a sweep then times its small and large points over similar
    /// stretches of time, and over the same steps of training.
    #[arg(long, default_value_t = 0.0, value_parser = parse_seconds, allow_negative_numbers = true)]
    pub min_time: f64,
    /// Seed of the weights and the random input.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Run a sweep instead of one measurement.
    #[arg(long, value_enum)]
    pub sweep: Option<Sweep>,
    /// CSV file for the sweep's rows.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Write an execution trace of the first timed steps here (Chrome trace-event JSON: open it
    /// in ui.perfetto.dev, or run `spiketile trace summary FILE`). Tiled engine only.
    #[arg(long, conflicts_with = "sweep")]
    pub trace: Option<PathBuf>,
    /// Timed steps (batches) traced with --trace.
    #[arg(long, default_value_t = 2, requires = "trace", value_parser = super::args::at_least_one)]
    pub trace_steps: usize,
    /// Measure this many times and report the median samples/s with the range; a sweep runs
    /// its points in turn, round after round, so that a machine whose speed drifts affects every
    /// point alike (on a shared or virtual machine, 5 or more).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1000), conflicts_with = "trace")]
    pub repeat: u32,
}

/// A number of seconds: finite and not negative.
fn parse_seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(x) if x.is_finite() && x >= 0.0 => Ok(x),
        _ => Err(format!("expected seconds (a number >= 0), got {s:?}")),
    }
}

/// A fraction: a number in [0, 1].
fn parse_fraction(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(x) if (0.0..=1.0).contains(&x) => Ok(x),
        _ => Err(format!("expected a fraction in [0, 1], got {s:?}")),
    }
}

/// One measurement, or the median of several ([`median`]).
#[derive(Clone, Debug)]
pub struct BenchResult {
    /// Training samples per second (the median, over repeats).
    pub samples_per_s: f64,
    /// The slowest and fastest of the repeats, and how many there were (`(x, x, 1)` for one).
    pub spread: (f64, f64, usize),
    /// Per layer (hidden..., output) statistics over the timed steps.
    pub layers: Vec<LayerStats>,
    /// Tiles in the plan.
    pub tiles: usize,
    /// Bytes of tile memory.
    pub tile_bytes: usize,
    /// The tiled engine's account of its memory: tile bytes written, its own buffers.
    pub memory: Option<EngineMemory>,
    /// Weights in the model.
    pub weights: usize,
    /// Peak resident memory of the process so far (bytes), if known.
    pub peak_rss: Option<u64>,
    /// Timed steps (batches) and the seconds they took.
    pub timed: (usize, f64),
    /// The initial-weight gain the steps started from.
    pub init_gain: f32,
    /// How `--hidden-activity` found it, if it did.
    pub calibration: Option<Calibration>,
}

/// Peak resident set size of this process (Linux `VmHWM`).
pub fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Random binned samples: every channel spikes with probability `activity` at every step.
pub fn random_batch(cfg: &ModelConfig, activity: f64, rng: &mut ChaCha8Rng) -> Vec<BinnedSample> {
    let p = activity.clamp(0.0, 1.0);
    // Each (step, channel) spikes with probability p, independently: the gaps between spikes in
    // step-major order are geometric, so draw them instead of one Bernoulli per slot (20 times
    // fewer draws at 5 % activity).
    let log_q = (1.0 - p).ln();
    let slots = cfg.time_steps * cfg.inputs;
    (0..cfg.batch_size)
        .map(|_| {
            let mut offsets = Vec::with_capacity(cfg.time_steps + 1);
            let mut ids = Vec::new();
            let skip = |rng: &mut ChaCha8Rng| -> usize {
                if p <= 0.0 {
                    return slots;
                }
                let u: f64 = rng.gen::<f64>();
                // P(gap >= k) = (1 - p)^k; u in [0, 1), so 1 - u in (0, 1].
                ((1.0 - u).ln() / log_q).floor().min(slots as f64) as usize
            };
            let mut at = skip(rng);
            offsets.push(0);
            for t in 0..cfg.time_steps {
                let end = (t + 1) * cfg.inputs;
                while at < end {
                    ids.push((at - t * cfg.inputs) as u16);
                    at = (at + 1).saturating_add(skip(rng));
                }
                offsets.push(ids.len() as u32);
            }
            BinnedSample { offsets, ids, label: rng.gen_range(0..cfg.classes) as u16 }
        })
        .collect()
}

/// Measures training throughput of `cfg` with `threads` on input of `activity`.
pub fn measure(
    args: &BenchArgs,
    cfg: &ModelConfig,
    threads: usize,
    activity: f64,
) -> Result<BenchResult> {
    if !(0.0..=1.0).contains(&activity) {
        bail!("--activity must be in [0, 1]");
    }
    let params = Params::init(cfg, args.seed);
    let plan = crate::plan::Plan::new(cfg)?;
    let mut engine = make_engine(args.model.engine, cfg, &params, threads)?;
    // The engine holds the weights now: the peak RSS is the engine's, not a second copy.
    let weights = params.count();
    drop(params);
    // The gain is searched for on a batch of its own, so the timed steps see the same input
    // with and without the search.
    let calibration = match args.hidden_activity {
        Some(target) => {
            let mut rng = ChaCha8Rng::seed_from_u64(args.seed ^ 0xCA1B);
            let samples = random_batch(cfg, activity, &mut rng);
            let refs: Vec<&BinnedSample> = samples.iter().collect();
            let batch = InputBatch::new(&refs, cfg.time_steps, cfg.capacity(cfg.inputs));
            Some(calibrate(engine.as_mut(), cfg, args.seed, &batch, target)?)
        }
        None => None,
    };
    let cfg =
        &ModelConfig { init_gain: calibration.map_or(cfg.init_gain, |c| c.gain), ..cfg.clone() };
    if calibration.is_some() {
        engine.set_state(&Params::init(cfg, args.seed), Some(&OptimState::fresh()))?;
    }
    let mut rng = ChaCha8Rng::seed_from_u64(args.seed ^ 0xBE4C);
    // Each batch is drawn just before its step (outside the timed part), so the peak RSS is the
    // engine's and not that of every batch at once.
    let mut next_batch = || {
        let samples = random_batch(cfg, activity, &mut rng);
        let refs: Vec<&BinnedSample> = samples.iter().collect();
        InputBatch::new(&refs, cfg.time_steps, cfg.capacity(cfg.inputs))
    };
    let mut layers = vec![LayerStats::default(); cfg.hidden.len() + 1];
    let mut steps = 0;
    let mut seconds = 0.0;
    // Runs of --warmup and --steps steps, until --min-time is timed. Every run after the first
    // starts again from the initial weights and a fresh optimizer, so the timed steps are the
    // same stretch of training however long they are timed: training on random input moves the
    // activity (W's hidden layer fires 2.5 % in its first steps, 2.1 % after 300), and a sweep's
    // small points, timed over many more steps, would otherwise be measured on a network that
    // works less.
    for run in 0.. {
        if run > 0 {
            engine.set_state(&Params::init(cfg, args.seed), Some(&OptimState::fresh()))?;
        }
        for _ in 0..args.warmup {
            engine.run_batch(&next_batch(), true)?;
        }
        if run == 0 {
            super::trace::start(engine.as_mut(), args.trace.as_deref(), args.trace_steps)?;
        }
        for _ in 0..args.steps {
            steps += 1;
            let batch = next_batch();
            let started = Instant::now();
            let r = engine.run_batch(&batch, true)?;
            seconds += started.elapsed().as_secs_f64();
            for (acc, s) in layers.iter_mut().zip(&r.layers) {
                acc.add(s);
            }
        }
        if seconds >= args.min_time {
            break;
        }
    }
    super::trace::finish(engine.as_mut(), args.trace.as_deref())?;
    let samples = steps * cfg.batch_size;
    let samples_per_s = samples as f64 / seconds;
    Ok(BenchResult {
        samples_per_s,
        spread: (samples_per_s, samples_per_s, 1),
        layers,
        tiles: plan.tiles(),
        tile_bytes: plan.total_bytes(),
        memory: engine.memory(),
        weights,
        peak_rss: peak_rss(),
        timed: (steps, seconds),
        init_gain: cfg.init_gain,
        calibration,
    })
}

/// The median of `runs` (of one configuration, in the order they ran): its samples/s (the mean of
/// the middle two for an even count), the range, the peak RSS as of the first run (the process's
/// peak grows with the larger points of a sweep's later rounds), and the other figures of the run
/// at or just below the median. `None` for no runs.
pub fn median(runs: &[BenchResult]) -> Option<BenchResult> {
    let mut order: Vec<&BenchResult> = runs.iter().collect();
    order.sort_by(|a, b| a.samples_per_s.total_cmp(&b.samples_per_s));
    let n = order.len();
    let lower = order.get((n.max(1) - 1) / 2)?;
    let upper = order[n / 2];
    let mut out = (*lower).clone();
    out.samples_per_s = (lower.samples_per_s + upper.samples_per_s) / 2.0;
    out.spread = (order[0].samples_per_s, order[n - 1].samples_per_s, n);
    out.peak_rss = runs[0].peak_rss;
    Some(out)
}

/// A warning when a hidden layer fires outside 2-20 % of its neuron-steps: throughput of a
/// network that quiet (or that busy) says little about training one.
fn activity_note(r: &BenchResult) -> Option<String> {
    let hidden = &r.layers[..r.layers.len().saturating_sub(1)];
    let odd: Vec<String> = hidden
        .iter()
        .enumerate()
        .filter(|(_, s)| !(0.02..=0.2).contains(&s.activity()))
        .map(|(l, s)| format!("hidden{} {:.2} %", l + 1, 100.0 * s.activity()))
        .collect();
    (!odd.is_empty()).then(|| {
        format!(
            "note: {} outside 2-20 % activity; the figure is of a network this quiet or busy \
             (--init-gain and --activity change how hard the random input drives it)",
            odd.join(", ")
        )
    })
}

fn describe(r: &BenchResult) -> String {
    let act: Vec<String> = r
        .layers
        .iter()
        .enumerate()
        .map(|(l, s)| {
            let name =
                if l + 1 == r.layers.len() { "output".into() } else { format!("hidden{}", l + 1) };
            format!("{name} {:.2}% (overflow {})", 100.0 * s.activity(), s.overflow)
        })
        .collect();
    let rate = |x: f64| if x < 10.0 { format!("{x:.2}") } else { format!("{x:.0}") };
    let (lo, hi, n) = r.spread;
    let spread = if n > 1 {
        format!(" (median of {n}; {} to {})", rate(lo), rate(hi))
    } else {
        String::new()
    };
    let gain = match r.calibration {
        Some(c) => format!(
            "{:.4} (--hidden-activity {}: hidden1 {:.2} % at the initial weights, {} passes)",
            c.gain,
            c.target,
            100.0 * c.activity,
            c.passes
        ),
        None => format!("{}", r.init_gain),
    };
    format!(
        "{} samples/s{spread}  activity: {}  init gain {gain}  tiles {}  tile memory {}{}  peak RSS {}  {} steps in {:.2} s",
        rate(r.samples_per_s),
        act.join(", "),
        r.tiles,
        mib(r.tile_bytes as u64),
        r.memory.map_or(String::new(), |m| format!(
            " (written {}{}; engine buffers {})",
            mib(m.tile_written as u64),
            if m.huge_pages { ", on huge pages" } else { "" },
            mib(m.buffers as u64)
        )),
        r.peak_rss.map_or("?".into(), mib),
        r.timed.0,
        r.timed.1,
    )
}

/// `bytes` in MiB, one decimal.
fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}

/// Runs `spiketile bench`.
pub fn run(args: BenchArgs) -> Result<()> {
    if args.trace.is_some() && args.trace_steps > args.steps {
        bail!(
            "--trace-steps {} is more than --steps {}: a trace covers timed steps of one run",
            args.trace_steps,
            args.steps
        );
    }
    for path in [&args.out, &args.trace].into_iter().flatten() {
        check_writable(path)?;
    }
    let base = args.model.config(args.shape.inputs, args.shape.classes)?;
    if let Some(target) = args.hidden_activity {
        super::gain::check_target(&base, target)?;
    }
    let threads = args.model.threads();
    let Some(sweep) = args.sweep else {
        eprintln!(
            "bench: {}-{}-{}, T {}, batch {}, {}, input activity {}, {}, {} threads, kernels {:?}, {} timed steps{}",
            base.inputs,
            base.hidden.iter().map(|h| h.to_string()).collect::<Vec<_>>().join("-"),
            base.classes,
            base.time_steps,
            base.batch_size,
            base.optimizer,
            args.activity,
            match args.hidden_activity {
                Some(t) => format!("init gain for hidden1 at {t}"),
                None => format!("init gain {}", base.init_gain),
            },
            threads,
            spiketile_core::simd::level(),
            args.steps,
            if args.min_time > 0.0 {
                format!(", run again from the initial weights until {} s are timed", args.min_time)
            } else {
                String::new()
            }
        );
        let runs = (0..args.repeat)
            .map(|_| measure(&args, &base, threads, args.activity))
            .collect::<Result<Vec<_>>>()?;
        let r = median(&runs).expect("at least one run");
        println!("{}", describe(&r));
        if let Some(note) = activity_note(&r) {
            eprintln!("{note}");
        }
        return Ok(());
    };
    let points: Vec<(ModelConfig, usize, f64, String)> = match sweep {
        Sweep::Activity => [0.01, 0.02, 0.05, 0.1, 0.2]
            .iter()
            .map(|&a| (base.clone(), threads, a, format!("{a}")))
            .collect(),
        Sweep::Hidden => [256usize, 1024, 4096]
            .iter()
            .map(|&h| {
                (
                    ModelConfig { hidden: vec![h], ..base.clone() },
                    threads,
                    args.activity,
                    h.to_string(),
                )
            })
            .collect(),
        Sweep::Threads => {
            (1..=threads.max(2)).map(|t| (base.clone(), t, args.activity, t.to_string())).collect()
        }
    };
    let mut csv = String::from(
        "sweep,value,hidden,input_activity,threads,samples_per_s,weights,weight_updates_per_s,hidden_activity,output_activity,overflow,tiles,tile_bytes,peak_rss_bytes,repeats,samples_per_s_min,samples_per_s_max,tile_bytes_written,engine_buffer_bytes,init_gain\n",
    );
    // Round after round over all points, so that drift of the machine's speed hits each alike.
    let mut runs: Vec<Vec<BenchResult>> = vec![Vec::new(); points.len()];
    for round in 1..=args.repeat {
        for ((cfg, t, a, value), runs) in points.iter().zip(runs.iter_mut()) {
            let r = measure(&args, cfg, *t, *a)?;
            let of = if args.repeat > 1 {
                format!(" (round {round} of {})", args.repeat)
            } else {
                String::new()
            };
            eprintln!("{sweep:?} = {value}{of}: {}", describe(&r));
            runs.push(r);
        }
    }
    for ((cfg, t, a, value), runs) in points.into_iter().zip(&runs) {
        let r = median(runs).expect("at least one run");
        if args.repeat > 1 {
            eprintln!("{sweep:?} = {value}: {}", describe(&r));
        }
        let hidden_act = r.layers.first().map_or(0.0, LayerStats::activity);
        let out_act = r.layers.last().map_or(0.0, LayerStats::activity);
        let overflow: u64 = r.layers.iter().map(|s| s.overflow).sum();
        writeln!(
            csv,
            "{:?},{value},{},{a},{t},{:.1},{},{:.4e},{:.5},{:.5},{overflow},{},{},{},{},{:.1},{:.1},{},{},{}",
            sweep,
            cfg.hidden.iter().map(|h| h.to_string()).collect::<Vec<_>>().join("-"),
            r.samples_per_s,
            r.weights,
            r.samples_per_s * r.weights as f64,
            hidden_act,
            out_act,
            r.tiles,
            r.tile_bytes,
            r.peak_rss.unwrap_or(0),
            r.spread.2,
            r.spread.0,
            r.spread.1,
            r.memory.map_or(String::new(), |m| m.tile_written.to_string()),
            r.memory.map_or(String::new(), |m| m.buffers.to_string()),
            r.init_gain,
        )?;
    }
    match &args.out {
        Some(path) => write_atomic(path, csv.as_bytes())?,
        None => print!("{csv}"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draw(activity: f64) -> Vec<BinnedSample> {
        let base = crate::config::test_config();
        let cfg = ModelConfig { batch_size: 16, time_steps: 50, inputs: 300, ..base };
        random_batch(&cfg, activity, &mut ChaCha8Rng::seed_from_u64(7))
    }

    #[test]
    fn random_input_has_the_asked_activity() {
        for p in [0.01, 0.05, 0.2, 0.5] {
            let samples = draw(p);
            let spikes: usize = samples.iter().map(|s| s.ids.len()).sum();
            let rate = spikes as f64 / (16.0 * 50.0 * 300.0);
            // 240,000 slots: the standard error is below 0.001 for every p here.
            assert!((rate - p).abs() < 0.005 + 0.02 * p, "asked {p}, got {rate}");
            for s in &samples {
                assert_eq!(s.offsets.len(), 51);
                for t in 0..50 {
                    let step = &s.ids[s.offsets[t] as usize..s.offsets[t + 1] as usize];
                    assert!(step.windows(2).all(|w| w[0] < w[1]), "ids increase within a step");
                    assert!(step.iter().all(|&c| (c as usize) < 300));
                }
            }
        }
    }

    fn run(samples_per_s: f64, rss: u64) -> BenchResult {
        BenchResult {
            samples_per_s,
            spread: (samples_per_s, samples_per_s, 1),
            layers: vec![LayerStats { spikes: samples_per_s as u64, ..LayerStats::default() }],
            tiles: 3,
            tile_bytes: 10,
            memory: Some(EngineMemory { tile_written: 8, buffers: 1, huge_pages: false }),
            weights: 5,
            peak_rss: Some(rss),
            timed: (2, 0.5),
            init_gain: 32.0,
            calibration: None,
        }
    }

    #[test]
    fn median_of_repeats() {
        assert!(median(&[]).is_none());
        let one = median(&[run(7.0, 1)]).unwrap();
        assert_eq!((one.samples_per_s, one.spread), (7.0, (7.0, 7.0, 1)));
        let odd = median(&[run(30.0, 5), run(10.0, 9), run(20.0, 7)]).unwrap();
        assert_eq!((odd.samples_per_s, odd.spread), (20.0, (10.0, 30.0, 3)));
        assert_eq!(odd.layers[0].spikes, 20, "the other figures are the median run's");
        assert_eq!(odd.peak_rss, Some(5), "the first run's peak");
        let even = median(&[run(40.0, 1), run(10.0, 1), run(20.0, 1), run(30.0, 1)]).unwrap();
        assert_eq!((even.samples_per_s, even.spread), (25.0, (10.0, 40.0, 4)));
        assert_eq!(even.layers[0].spikes, 20);
        let text = describe(&odd);
        assert!(text.starts_with("20 samples/s (median of 3; 10 to 30)"), "{text}");
    }

    /// What `measure` relies on to time the same steps of training again: an engine given the
    /// initial weights and a fresh optimizer trains from there exactly as a new engine does.
    #[test]
    fn engines_restarted_train_as_new_ones() {
        use crate::cli::args::EngineKind;
        let cfg = ModelConfig { batch_size: 4, ..crate::config::test_config() };
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let batches: Vec<InputBatch> = (0..3)
            .map(|_| {
                let samples = random_batch(&cfg, 0.3, &mut rng);
                let refs: Vec<&BinnedSample> = samples.iter().collect();
                InputBatch::new(&refs, cfg.time_steps, cfg.capacity(cfg.inputs))
            })
            .collect();
        let train = |engine: &mut dyn crate::engine::Engine| -> Vec<f64> {
            batches.iter().map(|b| engine.run_batch(b, true).unwrap().loss_sum).collect()
        };
        for kind in [EngineKind::Tiled, EngineKind::Dense] {
            let init = Params::init(&cfg, 4);
            let mut engine = make_engine(kind, &cfg, &init, 2).unwrap();
            let first = train(engine.as_mut());
            let (params, optim) = (engine.params(), engine.optim_state());
            assert_ne!(params, init, "{kind:?}: training moved the weights");
            engine.set_state(&init, Some(&OptimState::fresh())).unwrap();
            assert_eq!(train(engine.as_mut()), first, "{kind:?}: losses");
            assert_eq!(engine.params(), params, "{kind:?}: weights");
            assert_eq!(engine.optim_state(), optim, "{kind:?}: optimizer");
        }
    }

    #[test]
    fn random_input_at_zero_and_full_activity() {
        assert!(draw(0.0).iter().all(|s| s.ids.is_empty()));
        assert!(draw(1.0).iter().all(|s| s.ids.len() == 50 * 300));
    }
}
