//! The built-in synthetic dataset: SHD-shaped "spoken words through a cochlea model".
//!
//! It is the default training data when no `--data` is given, shaped like the Spiking Heidelberg Digits
//! (SPEC §4): [`CHANNELS`] = 700 input channels, [`CLASSES`] = 20 classes, about one second of sparse
//! `(time, channel)` events per sample (all events in `[0, DURATION_S)`), a few thousand events per
//! sample, so that at the default binning (`T = 100` steps over 1.4 s) a few per cent of the channels
//! spike per step.
//!
//! # Generative model
//!
//! * **Phonemes** (shared by all classes, drawn from the seed): a pool of [`PHONEMES`] sound segments.
//!   A *vowel* has three formants (F1 low, F2 mid, F3 high channels); a *nasal* a strong low band and a
//!   weak mid one; a *fricative* one broad high-channel noise band. Each formant is a band of
//!   neighbouring channels (Gaussian profile, width a few channels) whose centre glides smoothly
//!   (smoothstep) from a start to an end channel across the segment.
//! * **Words** (the class prototypes, from the seed): each class is a sequence of three phonemes with a
//!   vowel in the middle and its own relative segment lengths; any two classes differ in at least two
//!   of the three positions (and not only by order), so classes share sounds and are best told apart
//!   by *which sounds come when*. Train and test share the prototypes.
//! * **Utterances** (one per sample, from its own RNG stream): the word is spoken with a random
//!   duration (0.55-0.9 s) and onset (< 0.1 s), a smooth monotone time warp, jittered segment
//!   lengths, a speaker channel shift (a few channels) and scale, per-utterance and per-formant gains,
//!   and small glide perturbations. Each formant emits events as an inhomogeneous Poisson process
//!   (rate times a rise-and-fall envelope; random thinning drops a share of them), each event at a
//!   channel drawn around the moving centre and with a few milliseconds of time jitter. Background
//!   Poisson noise (uniform over channels and time) is added; events are sorted by time.
//!
//! Everything is deterministic in [`SynthConfig::seed`]. Each sample has its own ChaCha8 stream derived
//! from `(seed, split, index)`, so the data do not depend on generation order (generation runs on
//! several threads) and the train and test splits are disjoint draws from the same distribution.
//! Labels are balanced: sample `i` of either split has label `i % CLASSES`.

use super::{EventDataset, Sample, TimeUnit};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Number of input channels (as in SHD).
pub const CHANNELS: usize = 700;
/// Number of classes (as in SHD).
pub const CLASSES: usize = 20;
/// Every event time lies in `[0, DURATION_S)` seconds (utterances last 0.55-0.9 s, end before 0.98 s).
pub const DURATION_S: f32 = 1.0;
/// Size of the shared phoneme pool the class prototypes are built from.
pub const PHONEMES: usize = 12;

/// Phonemes per word (class prototype).
const WORD_LEN: usize = 3;
/// Most formant bands per phoneme.
const MAX_BANDS: usize = 3;
/// Stream id of the prototype RNG; sample streams are `split << 56 | index` with split 1 (train) or 2 (test).
const PROTOTYPE_STREAM: u64 = 0;
const TRAIN_SPLIT: u64 = 1;
const TEST_SPLIT: u64 = 2;
/// Speaker channel shift (standard deviation, channels).
const SHIFT: f32 = 4.0;
/// Per-utterance perturbation of a glide's end channel (standard deviation, channels).
const GLIDE: f32 = 8.0;
/// Global multiplier of the band event rates.
const RATE: f32 = 1.3;
/// Event time jitter (standard deviation, seconds).
const JITTER_S: f32 = 0.003;

/// Sizes and seed of the synthetic dataset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SynthConfig {
    /// Seed of everything: the class prototypes and every sample.
    pub seed: u64,
    /// Number of training samples (balanced over the classes).
    pub train_samples: usize,
    /// Number of test samples (balanced over the classes).
    pub test_samples: usize,
}

impl Default for SynthConfig {
    /// Seed 0, 2000 training and 500 test samples.
    fn default() -> Self {
        Self { seed: 0, train_samples: 2000, test_samples: 500 }
    }
}

/// Generates the `(train, test)` datasets of `config`: same class prototypes, disjoint samples.
///
/// The datasets are named `synthetic(seed=N)` and `synthetic(seed=N, test)` and have [`CHANNELS`]
/// channels and [`CLASSES`] classes.
pub fn generate(config: &SynthConfig) -> (EventDataset, EventDataset) {
    let words = prototypes(config.seed);
    let split = |split: u64, n: usize, suffix: &str| EventDataset {
        name: format!("synthetic(seed={}{suffix})", config.seed),
        channels: CHANNELS,
        classes: CLASSES,
        time_unit: TimeUnit::Seconds,
        samples: render_all(&words, config.seed, split, n),
    };
    (split(TRAIN_SPLIT, config.train_samples, ""), split(TEST_SPLIT, config.test_samples, ", test"))
}

/// One formant band of a phoneme: a Gaussian band of channels whose centre glides from `start` to `end`.
#[derive(Clone, Copy, Debug)]
struct Band {
    /// Centre channel at the segment start.
    start: f32,
    /// Centre channel at the segment end.
    end: f32,
    /// Standard deviation of the channel profile, in channels.
    width: f32,
    /// Events per second at the envelope peak (before gains and thinning).
    rate: f32,
}

/// A sound segment: up to [`MAX_BANDS`] bands.
#[derive(Clone, Copy, Debug)]
struct Phoneme {
    bands: [Band; MAX_BANDS],
    n_bands: usize,
    /// Relative length of the segment (vowels are longer).
    length: f32,
}

/// A class prototype: a sequence of phonemes with relative segment lengths.
#[derive(Clone, Debug)]
struct Word {
    phonemes: [Phoneme; WORD_LEN],
    /// Relative segment lengths (sum to 1).
    lengths: [f32; WORD_LEN],
}

fn stream(seed: u64, stream: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(stream);
    rng
}

/// Two independent standard normal draws (Box-Muller).
fn normal_pair(rng: &mut ChaCha8Rng) -> (f32, f32) {
    let u1: f32 = 1.0 - rng.gen::<f32>(); // (0, 1]
    let u2: f32 = rng.gen();
    let r = (-2.0 * u1.ln()).sqrt();
    let (sin, cos) = (std::f32::consts::TAU * u2).sin_cos();
    (r * cos, r * sin)
}

/// A standard normal draw.
fn normal(rng: &mut ChaCha8Rng) -> f32 {
    normal_pair(rng).0
}

/// A Poisson draw: Knuth's method for small means, a rounded normal approximation for large ones.
fn poisson(rng: &mut ChaCha8Rng, mean: f32) -> usize {
    if mean <= 0.0 {
        return 0;
    }
    if mean < 30.0 {
        let limit = (-mean).exp();
        let mut k = 0;
        let mut p: f32 = rng.gen();
        while p > limit {
            k += 1;
            p *= rng.gen::<f32>();
        }
        k
    } else {
        (mean + mean.sqrt() * normal(rng)).round().max(0.0) as usize
    }
}

fn random_phoneme(rng: &mut ChaCha8Rng, vowel: bool) -> Phoneme {
    let zero = Band { start: 0.0, end: 0.0, width: 1.0, rate: 0.0 };
    let mut bands = [zero; MAX_BANDS];
    let glide = |rng: &mut ChaCha8Rng, lo: f32, hi: f32, spread: f32| {
        let start = rng.gen_range(lo..hi);
        (start, (start + spread * normal(rng)).clamp(lo - 20.0, hi + 20.0))
    };
    if vowel {
        let ranges = [(70.0, 230.0), (250.0, 430.0), (450.0, 630.0)];
        for (band, &(lo, hi)) in bands.iter_mut().zip(&ranges) {
            let (start, end) = glide(rng, lo, hi, 45.0);
            *band = Band {
                start,
                end,
                width: rng.gen_range(3.0..6.0),
                rate: rng.gen_range(1100.0..1700.0),
            };
        }
        Phoneme { bands, n_bands: 3, length: rng.gen_range(1.3..2.0) }
    } else if rng.gen_bool(0.5) {
        // Nasal: a strong low band and a weak mid one.
        let (start, end) = glide(rng, 30.0, 140.0, 15.0);
        bands[0] = Band {
            start,
            end,
            width: rng.gen_range(3.0..5.0),
            rate: rng.gen_range(1300.0..1900.0),
        };
        let (start, end) = glide(rng, 220.0, 420.0, 25.0);
        bands[1] =
            Band { start, end, width: rng.gen_range(4.0..7.0), rate: rng.gen_range(400.0..700.0) };
        Phoneme { bands, n_bands: 2, length: rng.gen_range(0.7..1.1) }
    } else {
        // Fricative: one broad high noise band.
        let (start, end) = glide(rng, 470.0, 660.0, 20.0);
        bands[0] = Band {
            start,
            end,
            width: rng.gen_range(12.0..25.0),
            rate: rng.gen_range(1800.0..2600.0),
        };
        Phoneme { bands, n_bands: 1, length: rng.gen_range(0.7..1.1) }
    }
}

/// The class prototypes of `seed`.
fn prototypes(seed: u64) -> Vec<Word> {
    let mut rng = stream(seed, PROTOTYPE_STREAM);
    // Half the pool vowels (the middle of every word), the rest consonants.
    let pool: Vec<Phoneme> =
        (0..PHONEMES).map(|p| random_phoneme(&mut rng, p < PHONEMES / 2)).collect();
    let vowels = PHONEMES / 2;
    let mut sequences: Vec<[usize; WORD_LEN]> = Vec::with_capacity(CLASSES);
    while sequences.len() < CLASSES {
        let seq =
            [rng.gen_range(0..PHONEMES), rng.gen_range(0..vowels), rng.gen_range(0..PHONEMES)];
        if seq[0] == seq[1] || seq[1] == seq[2] {
            continue;
        }
        // Differ from every other word in at least two positions, and in the bag of sounds too (so
        // that a model without temporal memory can still tell every pair apart, if less easily).
        let mut bag = seq;
        bag.sort_unstable();
        let distinct = sequences.iter().all(|other| {
            let mut other_bag = *other;
            other_bag.sort_unstable();
            other.iter().zip(&seq).filter(|(a, b)| a != b).count() >= 2 && other_bag != bag
        });
        if distinct {
            sequences.push(seq);
        }
    }
    sequences
        .into_iter()
        .map(|seq| {
            let phonemes = seq.map(|p| pool[p]);
            let raw = phonemes.map(|p| p.length * rng.gen_range(0.8..1.25));
            let total: f32 = raw.iter().sum();
            Word { phonemes, lengths: raw.map(|l| l / total) }
        })
        .collect()
}

/// Renders `n` samples of one split, on as many threads as there are cores.
fn render_all(words: &[Word], seed: u64, split: u64, n: usize) -> Vec<Sample> {
    let threads = std::thread::available_parallelism().map_or(1, |t| t.get()).clamp(1, 8);
    let chunk = n.div_ceil(threads).max(64);
    let mut samples: Vec<Sample> = Vec::with_capacity(n);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..n)
            .step_by(chunk)
            .map(|first| {
                let last = (first + chunk).min(n);
                scope.spawn(move || {
                    (first..last).map(|i| render(words, seed, split, i)).collect::<Vec<_>>()
                })
            })
            .collect();
        for handle in handles {
            samples.extend(handle.join().expect("synthetic generation thread panicked"));
        }
    });
    samples
}

/// Renders sample `index` of `split`: one utterance of word `index % CLASSES`.
fn render(words: &[Word], seed: u64, split: u64, index: usize) -> Sample {
    let mut rng = stream(seed, split << 56 | index as u64);
    let label = index % CLASSES;
    let word = &words[label];

    // Utterance-level variability.
    let duration: f32 = rng.gen_range(0.55..0.9);
    let onset: f32 = rng.gen_range(0.0..0.1f32.min(0.98 - duration));
    let warp: f32 = rng.gen_range(-0.35..0.35); // u -> u + warp·u·(1-u), monotone for |warp| < 1
    let shift = SHIFT * normal(&mut rng);
    let scale = 1.0 + 0.03 * normal(&mut rng);
    let gain = (0.25 * normal(&mut rng)).exp();
    let keep: f32 = rng.gen_range(0.7..0.95);
    let noise_hz: f32 = rng.gen_range(0.3..0.8);
    let lengths = word.lengths.map(|l| l * (0.2 * normal(&mut rng)).exp());
    let total: f32 = lengths.iter().sum();
    let gap = 0.02; // silence between segments, in normalised time

    // Events packed as `time bits << 16 | channel`: non-negative floats order like their bits, so
    // sorting the integers sorts by time (then channel).
    let mut events: Vec<u64> = Vec::with_capacity(4096);
    let mut push = |time: f32, channel: f32| {
        if (0.0..DURATION_S).contains(&time) && (0.0..CHANNELS as f32).contains(&channel) {
            events.push(u64::from(time.to_bits()) << 16 | channel as u64);
        }
    };
    let mut seg_start = 0.0;
    for (phoneme, &length) in word.phonemes.iter().zip(&lengths) {
        let seg_len = length / total;
        let (u0, u1) = (seg_start + gap / 2.0, seg_start + seg_len - gap / 2.0);
        seg_start += seg_len;
        let seconds = (u1 - u0) * duration;
        for band in &phoneme.bands[..phoneme.n_bands] {
            let band_gain = gain * (0.3 * normal(&mut rng)).exp();
            let start = 350.0 + (band.start - 350.0) * scale + shift + 1.5 * normal(&mut rng);
            let end = 350.0 + (band.end - 350.0) * scale + shift + GLIDE * normal(&mut rng);
            let width = band.width * (0.15 * normal(&mut rng)).exp();
            let candidates = poisson(&mut rng, RATE * band.rate * band_gain * keep * seconds);
            for _ in 0..candidates {
                let v: f32 = rng.gen();
                // Trapezoidal rise-and-fall envelope (ramps over the first and last fifth), by thinning.
                if rng.gen::<f32>() * 0.2 > v.min(1.0 - v) {
                    continue;
                }
                let glide = v * v * (3.0 - 2.0 * v);
                let centre = start + (end - start) * glide;
                let (z_channel, z_time) = normal_pair(&mut rng);
                let u = u0 + (u1 - u0) * v;
                let time = onset + duration * (u + warp * u * (1.0 - u)) + JITTER_S * z_time;
                push(time, (centre + width * z_channel).round());
            }
        }
    }
    for _ in 0..poisson(&mut rng, noise_hz * CHANNELS as f32 * DURATION_S) {
        let time = rng.gen::<f32>() * DURATION_S;
        push(time, rng.gen_range(0..CHANNELS) as f32);
    }
    events.sort_unstable();
    let times = events.iter().map(|&e| f32::from_bits((e >> 16) as u32)).collect();
    let units = events.iter().map(|&e| e as u16).collect();
    Sample { times, units, label: label as u16 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{bin_sample, Binning};

    const BINNING: Binning =
        Binning { time_steps: 100, duration: 1.4, unit: crate::data::TimeUnit::Seconds };

    fn small(seed: u64) -> SynthConfig {
        SynthConfig { seed, train_samples: 100, test_samples: 40 }
    }

    #[test]
    fn deterministic_in_the_seed() {
        assert_eq!(generate(&small(3)), generate(&small(3)));
        let (a, _) = generate(&small(3));
        let (b, _) = generate(&small(4));
        assert_ne!(a.samples, b.samples);
        assert_eq!(a.name, "synthetic(seed=3)");
    }

    #[test]
    fn samples_do_not_depend_on_split_sizes() {
        let (a, a_test) = generate(&small(7));
        let (b, b_test) = generate(&SynthConfig { seed: 7, train_samples: 30, test_samples: 200 });
        assert_eq!(a.samples[..30], b.samples[..]);
        assert_eq!(a_test.samples[..], b_test.samples[..40]);
        // Train and test are different draws.
        assert!(a.samples.iter().all(|s| !a_test.samples.contains(s)));
    }

    #[test]
    fn shapes_ranges_and_balance() {
        let (train, test) = generate(&small(1));
        for (set, n) in [(&train, 100), (&test, 40)] {
            assert_eq!((set.channels, set.classes, set.samples.len()), (CHANNELS, CLASSES, n));
            let mut per_class = [0usize; CLASSES];
            for s in &set.samples {
                assert_eq!(s.times.len(), s.units.len());
                assert!(!s.times.is_empty());
                assert!(s.units.iter().all(|&u| (u as usize) < CHANNELS));
                assert!(s.times.iter().all(|&t| (0.0..DURATION_S).contains(&t)));
                assert!(s.times.windows(2).all(|w| w[0] <= w[1]), "times sorted");
                assert!((s.label as usize) < CLASSES);
                per_class[s.label as usize] += 1;
            }
            assert!(per_class.iter().all(|&c| c == n / CLASSES));
        }
    }

    #[test]
    fn activity_is_shd_like() {
        let (train, _) = generate(&SynthConfig { seed: 0, train_samples: 200, test_samples: 0 });
        let (events, active) = activity(&train);
        println!("events/sample {events:.0}, active fraction per step {:.2} %", 100.0 * active);
        assert!((800.0..5000.0).contains(&events), "events per sample {events}");
        assert!((0.01..0.08).contains(&active), "active fraction {active}");
    }

    /// Counts per channel per 10-step window of the default binning, L2-normalised.
    fn features(sample: &Sample) -> Vec<f32> {
        let binned = bin_sample(sample, BINNING);
        let mut f = vec![0.0f32; 10 * CHANNELS];
        for t in 0..100 {
            for &c in binned.step(t) {
                f[t / 10 * CHANNELS + c as usize] += 1.0;
            }
        }
        let norm = f.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-9);
        f.iter_mut().for_each(|x| *x /= norm);
        f
    }

    /// Test accuracy of a nearest-class-centroid classifier on [`features`], fitted on the train split.
    fn centroid_accuracy(train: &EventDataset, test: &EventDataset) -> f64 {
        let mut centroids = vec![vec![0.0f32; 10 * CHANNELS]; CLASSES];
        let mut counts = [0usize; CLASSES];
        for s in &train.samples {
            counts[s.label as usize] += 1;
            for (c, x) in centroids[s.label as usize].iter_mut().zip(features(s)) {
                *c += x;
            }
        }
        for (c, &n) in centroids.iter_mut().zip(&counts) {
            c.iter_mut().for_each(|x| *x /= n.max(1) as f32);
        }
        let norms: Vec<f32> = centroids.iter().map(|c| c.iter().map(|x| x * x).sum()).collect();
        let correct = test
            .samples
            .iter()
            .filter(|s| {
                let f = features(s);
                // |c - f|² = |c|² - 2 c·f + |f|²; |f|² is the same for every class, f is sparse.
                let active: Vec<usize> = (0..f.len()).filter(|&i| f[i] != 0.0).collect();
                let score = |k: usize| {
                    norms[k] - 2.0 * active.iter().map(|&i| centroids[k][i] * f[i]).sum::<f32>()
                };
                let best = (0..CLASSES)
                    .map(|k| (score(k), k))
                    .min_by(|a, b| a.0.total_cmp(&b.0))
                    .expect("classes")
                    .1;
                best == s.label as usize
            })
            .count();
        correct as f64 / test.samples.len() as f64
    }

    /// Test accuracy of a softmax regression on [`features`] (plain SGD), a stronger baseline.
    fn softmax_accuracy(train: &EventDataset, test: &EventDataset, epochs: usize) -> f64 {
        let dim = 10 * CHANNELS;
        let mut w = vec![0.0f32; CLASSES * dim];
        let train_f: Vec<_> = train.samples.iter().map(features).collect();
        let logits = |w: &[f32], f: &[f32]| -> Vec<f32> {
            (0..CLASSES)
                .map(|k| w[k * dim..(k + 1) * dim].iter().zip(f).map(|(a, b)| a * b).sum())
                .collect()
        };
        for _ in 0..epochs {
            for (f, s) in train_f.iter().zip(&train.samples) {
                let z = logits(&w, f);
                let max = z.iter().cloned().fold(f32::MIN, f32::max);
                let e: Vec<f32> = z.iter().map(|z| (z - max).exp()).collect();
                let sum: f32 = e.iter().sum();
                for k in 0..CLASSES {
                    let g = e[k] / sum - f32::from(k == s.label as usize);
                    for (wi, x) in w[k * dim..(k + 1) * dim].iter_mut().zip(f) {
                        *wi -= 2.0 * g * x;
                    }
                }
            }
        }
        let correct = test
            .samples
            .iter()
            .filter(|s| {
                let z = logits(&w, &features(s));
                (0..CLASSES).max_by(|&a, &b| z[a].total_cmp(&z[b])) == Some(s.label as usize)
            })
            .count();
        correct as f64 / test.samples.len() as f64
    }

    /// Mean events per sample, and mean fraction of channels active per step (all 100 steps).
    fn activity(set: &EventDataset) -> (f64, f64) {
        let n = set.samples.len() as f64;
        let events = set.samples.iter().map(|s| s.times.len() as f64).sum::<f64>() / n;
        let active = set
            .samples
            .iter()
            .map(|s| bin_sample(s, BINNING).ids.len() as f64 / (100.0 * CHANNELS as f64))
            .sum::<f64>()
            / n;
        (events, active)
    }

    #[test]
    fn nearest_centroid_separates_but_not_trivially() {
        let (train, test) =
            generate(&SynthConfig { seed: 0, train_samples: 600, test_samples: 300 });
        let accuracy = centroid_accuracy(&train, &test);
        println!("nearest-centroid test accuracy {:.1} %", 100.0 * accuracy);
        assert!((0.75..=0.98).contains(&accuracy), "centroid accuracy {accuracy}");
    }

    /// Measurements at the default sizes; run with
    /// `cargo test --release -p spiketile synthetic -- --ignored --nocapture`.
    #[test]
    #[ignore = "measurement, slow in debug builds"]
    fn report_default_dataset() {
        for seed in 0..3 {
            let config = SynthConfig { seed, ..SynthConfig::default() };
            let start = std::time::Instant::now();
            let (train, test) = generate(&config);
            let elapsed = start.elapsed();
            let words = prototypes(seed);
            let start = std::time::Instant::now();
            let serial: Vec<Sample> = (0..2500).map(|i| render(&words, seed, 1, i)).collect();
            let serial_elapsed = start.elapsed();
            assert_eq!(serial[..2000], train.samples[..]);
            let (events, active) = activity(&train);
            let accuracy = centroid_accuracy(&train, &test);
            let softmax: Vec<String> = [1, 2, 5]
                .iter()
                .map(|&e| format!("{e} ep {:.1} %", 100.0 * softmax_accuracy(&train, &test, e)))
                .collect();
            println!("seed {seed}: softmax regression test accuracy {}", softmax.join(", "));
            println!(
                "seed {seed}: generated {}+{} samples in {:.0} ms ({:.0} ms on one thread); {events:.0} events/sample; \
                 {:.2} % active per step; nearest-centroid test accuracy {:.1} %",
                train.samples.len(),
                test.samples.len(),
                elapsed.as_secs_f64() * 1e3,
                serial_elapsed.as_secs_f64() * 1e3,
                100.0 * active,
                100.0 * accuracy
            );
        }
    }
}
