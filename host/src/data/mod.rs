//! Event datasets: samples as sparse `(time, channel)` events, and their binning into time steps.
//!
//! Every loader (the built-in [`synthetic`] generator, the SHD HDF5 reader behind the `hdf5` feature,
//! the [`nmnist`] and [`dvsgesture`] event-camera readers with their shared [`camera`] channel map)
//! produces an [`EventDataset`]; [`bin_sample`] turns one sample into per-step sorted channel lists
//! (SPEC §4) only when it is batched, so a loaded dataset stays sparse in memory.

pub mod camera;
pub mod dvsgesture;
pub mod inspect;
pub mod nmnist;
#[cfg(feature = "hdf5")]
pub mod shd;
pub mod synthetic;

/// The unit of a dataset's event times ([`Sample::times`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TimeUnit {
    /// Seconds: SHD files (float16 widened to f32) and the built-in data.
    #[default]
    Seconds,
    /// Whole microseconds: event-camera timestamps, exact in f32 below 2^24 µs (16.7 s), so that
    /// an event on a step boundary is binned exactly (in seconds, 9,000 µs is 0.008999999 as an
    /// f32 and would land one step early at 0.3 s over 100 steps).
    Microseconds,
}

impl TimeUnit {
    /// Time units per second.
    pub fn per_second(self) -> f64 {
        match self {
            TimeUnit::Seconds => 1.0,
            TimeUnit::Microseconds => 1e6,
        }
    }

    /// `t` (in this unit) in seconds.
    pub fn seconds(self, t: f32) -> f64 {
        f64::from(t) / self.per_second()
    }
}

/// One labelled sample: events kept sparse, times in the dataset's [`TimeUnit`], channel ids.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// Event times in the dataset's [`TimeUnit`] (non-finite/negative already removed by
    /// loaders).
    pub times: Vec<f32>,
    /// Channel id of each event (same length as `times`).
    pub units: Vec<u16>,
    /// Class id, `< classes`.
    pub label: u16,
}

/// A dataset of event samples with its input and class counts.
#[derive(Clone, Debug, PartialEq)]
pub struct EventDataset {
    /// Where it came from (a file path or `synthetic(seed)`), for messages.
    pub name: String,
    /// Number of input channels (every unit id is `< channels`).
    pub channels: usize,
    /// Number of classes (every label is `< classes`).
    pub classes: usize,
    /// The unit of the samples' times.
    pub time_unit: TimeUnit,
    /// The samples, in file order.
    pub samples: Vec<Sample>,
}

/// How events become time steps (SPEC §4).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Binning {
    /// Number of time steps `T`.
    pub time_steps: usize,
    /// Seconds mapped onto the `T` steps; events at or past it are dropped.
    pub duration: f64,
    /// The unit of the times binned.
    pub unit: TimeUnit,
}

/// A binned sample: step `t` holds the sorted, de-duplicated channel ids
/// `ids[offsets[t]..offsets[t + 1]]`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BinnedSample {
    /// `time_steps + 1` offsets into `ids`.
    pub offsets: Vec<u32>,
    /// Channel ids, sorted and unique within each step.
    pub ids: Vec<u16>,
    /// Class id.
    pub label: u16,
}

impl BinnedSample {
    /// The channels that spiked at step `t`.
    pub fn step(&self, t: usize) -> &[u16] {
        &self.ids[self.offsets[t] as usize..self.offsets[t + 1] as usize]
    }
}

impl Binning {
    /// The step of an event at `tau` (in [`Binning::unit`]), `floor(tau / duration * T)`; `None`
    /// at or past `duration` (or before 0).
    ///
    /// Seconds are binned with SPEC §4's formula as written, in f64. Whole microseconds are
    /// binned as `floor(tau * T / D)` with `D` the duration in microseconds (rounded to a whole
    /// number when it is one up to float noise: `1.4 * 1e6` is 1399999.9999999998): a product and
    /// one division of whole numbers, so an event on a step boundary lands on it.
    pub fn step_of(&self, tau: f32) -> Option<u32> {
        let t_steps = self.time_steps as f64;
        let step = match self.unit {
            TimeUnit::Seconds => f64::from(tau) / self.duration * t_steps,
            TimeUnit::Microseconds => {
                let d = self.duration * TimeUnit::Microseconds.per_second();
                let whole = d.round();
                let d = if (d - whole).abs() <= 1e-6 && whole > 0.0 { whole } else { d };
                f64::from(tau) * t_steps / d
            }
        }
        .floor();
        (step >= 0.0 && step < t_steps).then_some(step as u32)
    }
}

/// Bins one sample: an event at `tau` goes to step `floor(tau / duration * T)`; events at or past
/// `duration` are dropped; several events of one channel in one step make one spike.
pub fn bin_sample(sample: &Sample, binning: Binning) -> BinnedSample {
    bin_sample_counting(sample, binning).0
}

/// [`bin_sample`], also returning how many events it dropped for lying at or past `duration`.
pub fn bin_sample_counting(sample: &Sample, binning: Binning) -> (BinnedSample, usize) {
    let t_steps = binning.time_steps;
    let mut pairs: Vec<(u32, u16)> = sample
        .times
        .iter()
        .zip(&sample.units)
        .filter_map(|(&tau, &unit)| binning.step_of(tau).map(|step| (step, unit)))
        .collect();
    let late = sample.times.len().min(sample.units.len()) - pairs.len();
    pairs.sort_unstable();
    pairs.dedup();
    let mut offsets = vec![0u32; t_steps + 1];
    for &(step, _) in &pairs {
        offsets[step as usize + 1] += 1;
    }
    for t in 0..t_steps {
        offsets[t + 1] += offsets[t];
    }
    let ids = pairs.into_iter().map(|(_, u)| u).collect();
    (BinnedSample { offsets, ids, label: sample.label }, late)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binning_drops_late_events_and_merges_duplicates() {
        let s = Sample {
            times: vec![0.0, 0.05, 0.01, 0.99, 1.0, 1.5],
            units: vec![3, 3, 1, 2, 0, 0],
            label: 4,
        };
        let b = bin_sample(&s, Binning { time_steps: 10, duration: 1.0, unit: TimeUnit::Seconds });
        assert_eq!(b.step(0), &[1, 3]);
        assert_eq!(b.step(9), &[2]);
        assert_eq!(b.ids.len(), 3);
        assert_eq!(b.label, 4);
    }

    #[test]
    fn step_boundaries_are_those_of_the_given_decimal() {
        // 0.1875 / 0.3 * 1000 = 625 exactly; with 0.3 rounded to f32 (0.30000001) it would be
        // 624.99997, step 624.
        let s = Sample { times: vec![0.1875], units: vec![0], label: 0 };
        let b =
            bin_sample(&s, Binning { time_steps: 1000, duration: 0.3, unit: TimeUnit::Seconds });
        assert_eq!(b.step(625), &[0]);
    }

    #[test]
    fn microsecond_times_on_a_step_boundary_land_on_it() {
        // 9,000 µs at 0.3 s over 100 steps is step 3 exactly; as f32 seconds (0.008999999) it
        // would be step 2. 1.4 s is 1399999.9999999998 µs in f64, taken as 1,400,000.
        let us = |t: u32| t as f32;
        let s = Sample {
            times: vec![us(9_000), us(2_999), us(299_999), us(300_000)],
            units: vec![0, 1, 2, 3],
            label: 0,
        };
        let (b, late) = bin_sample_counting(
            &s,
            Binning { time_steps: 100, duration: 0.3, unit: TimeUnit::Microseconds },
        );
        assert_eq!((b.step(3), b.step(0), b.step(99), late), (&[0][..], &[1][..], &[2][..], 1));
        let at = |t: u32, duration: f64, steps: usize| {
            Binning { time_steps: steps, duration, unit: TimeUnit::Microseconds }.step_of(us(t))
        };
        for k in 0..100u32 {
            assert_eq!(at(k * 14_000, 1.4, 100), Some(k), "1.4 s, boundary {k}");
            assert_eq!(at(k * 14_000 + 13_999, 1.4, 100), Some(k));
            assert_eq!(at(k * 3_000, 0.3, 100), Some(k), "0.3 s, boundary {k}");
            assert_eq!(at(k * 60_000, 6.0, 100), Some(k));
        }
        assert_eq!(at(1_400_000, 1.4, 100), None);
    }
}
