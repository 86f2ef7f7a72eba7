//! Statistics of an [`EventDataset`] (`spiketile data inspect`): sample and class counts, channels
//! used, events per sample and sample durations (min / median / max), events that binning would drop
//! (at or past `duration`), and warnings for anything odd. Works on any dataset, from any loader.

use std::fmt;

use super::{Binning, EventDataset};

/// How many sample indices a warning lists before "...".
const FIRST_FEW: usize = 8;

/// Minimum, median and maximum of a quantity over samples.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Summary {
    /// Smallest value.
    pub min: f64,
    /// Median (mean of the two middle values for an even count).
    pub median: f64,
    /// Largest value.
    pub max: f64,
}

impl Summary {
    /// Summarises `values` (sorted in place); `None` when empty.
    pub fn of(values: &mut [f64]) -> Option<Self> {
        if values.is_empty() {
            return None;
        }
        values.sort_by(f64::total_cmp);
        let n = values.len();
        let median =
            if n % 2 == 1 { values[n / 2] } else { (values[n / 2 - 1] + values[n / 2]) / 2.0 };
        Some(Summary { min: values[0], median, max: values[n - 1] })
    }
}

/// What [`inspect`] found.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DatasetStats {
    /// The dataset's name (usually its file).
    pub name: String,
    /// Number of samples.
    pub samples: usize,
    /// Declared number of channels.
    pub channels: usize,
    /// Declared number of classes.
    pub classes: usize,
    /// Samples per class (`classes` entries; labels out of range are not counted here).
    pub class_counts: Vec<usize>,
    /// Channels with at least one event.
    pub channels_used: usize,
    /// Events over all samples.
    pub events: usize,
    /// Events per sample.
    pub events_per_sample: Summary,
    /// Time of the last event of each sample, in seconds (samples without events left out);
    /// `None` when no sample has an event.
    pub sample_duration: Option<Summary>,
    /// The binning duration the counts below refer to, in seconds.
    pub duration: f64,
    /// Events at or past `duration` (binning drops them).
    pub events_past_duration: usize,
    /// Samples with at least one event at or past `duration`.
    pub samples_past_duration: usize,
    /// Odd things worth a look, one sentence each.
    pub warnings: Vec<String>,
}

/// "3, 7, 12" or "3, 7, 12, ..." for the first few of `indices`.
fn first_few(indices: &[usize]) -> String {
    let mut s: Vec<String> = indices.iter().take(FIRST_FEW).map(|i| i.to_string()).collect();
    if indices.len() > FIRST_FEW {
        s.push("...".into());
    }
    s.join(", ")
}

/// Computes the statistics of `data` for binning over `duration` seconds.
pub fn inspect(data: &EventDataset, duration: f64) -> DatasetStats {
    let mut class_counts = vec![0usize; data.classes];
    let mut channel_seen = vec![false; data.channels];
    let mut events_per_sample = Vec::with_capacity(data.samples.len());
    let mut durations = Vec::with_capacity(data.samples.len());
    let (mut events, mut past, mut samples_past) = (0usize, 0usize, 0usize);
    let mut empty = Vec::new();
    let mut unsorted = Vec::new();
    let mut mismatched = Vec::new();
    let mut bad_label = Vec::new();
    let mut bad_unit = Vec::new();
    let mut bad_time = Vec::new();
    let past_end = Binning { time_steps: 1, duration, unit: data.time_unit };
    for (i, s) in data.samples.iter().enumerate() {
        match class_counts.get_mut(usize::from(s.label)) {
            Some(c) => *c += 1,
            None => bad_label.push(i),
        }
        if s.times.len() != s.units.len() {
            mismatched.push(i);
        }
        let mut unit_out_of_range = false;
        for &u in &s.units {
            match channel_seen.get_mut(usize::from(u)) {
                Some(seen) => *seen = true,
                None => unit_out_of_range = true,
            }
        }
        if unit_out_of_range {
            bad_unit.push(i);
        }
        events += s.times.len();
        events_per_sample.push(s.times.len() as f64);
        if s.times.is_empty() {
            empty.push(i);
            continue;
        }
        if s.times.iter().any(|t| !(t.is_finite() && *t >= 0.0)) {
            bad_time.push(i);
        }
        if s.times.windows(2).any(|w| w[1] < w[0]) {
            unsorted.push(i);
        }
        let last =
            s.times.iter().copied().filter(|t| t.is_finite()).fold(f32::NEG_INFINITY, f32::max);
        if last.is_finite() {
            durations.push(data.time_unit.seconds(last));
        }
        // Past the duration as binning sees it (one step over the whole duration).
        let n_past = s.times.iter().filter(|&&t| t >= 0.0 && past_end.step_of(t).is_none()).count();
        past += n_past;
        samples_past += usize::from(n_past > 0);
    }
    let channels_used = channel_seen.iter().filter(|&&b| b).count();
    let sample_duration = Summary::of(&mut durations);

    let mut warnings = Vec::new();
    let mut warn_samples = |what: &str, list: &[usize]| {
        if !list.is_empty() {
            warnings.push(format!("{} sample(s) {what}: {}", list.len(), first_few(list)));
        }
    };
    warn_samples("have different numbers of times and units", &mismatched);
    warn_samples(&format!("have a label >= classes ({})", data.classes), &bad_label);
    warn_samples(&format!("have unit ids >= channels ({})", data.channels), &bad_unit);
    warn_samples("have non-finite or negative times", &bad_time);
    warn_samples("have no events at all", &empty);
    warn_samples("have event times out of order", &unsorted);
    if data.samples.is_empty() {
        warnings.push("the dataset has no samples".into());
    }
    let missing: Vec<usize> = (0..data.classes).filter(|&c| class_counts[c] == 0).collect();
    if !missing.is_empty() {
        warnings.push(format!(
            "{} class(es) have no samples: {}",
            missing.len(),
            first_few(&missing)
        ));
    } else if let (Some(&lo), Some(&hi)) = (class_counts.iter().min(), class_counts.iter().max()) {
        if lo > 0 && hi > 2 * lo {
            warnings.push(format!("classes are imbalanced: {lo} to {hi} samples per class"));
        }
    }
    if channels_used < data.channels {
        warnings.push(format!(
            "{} of {} channels never fire (the channel count may be larger than the data needs)",
            data.channels - channels_used,
            data.channels
        ));
    }
    if past > 0 {
        warnings.push(format!(
            "{past} event(s) ({:.2}%) in {samples_past} sample(s) are at or past --duration {duration} s and will be dropped by binning",
            100.0 * past as f64 / events.max(1) as f64
        ));
    }
    if let Some(d) = sample_duration {
        if d.max < 0.5 * duration {
            warnings.push(format!(
                "every sample ends before {:.3} s, less than half of --duration {duration} s: most time steps will be empty",
                d.max
            ));
        }
    }

    DatasetStats {
        name: data.name.clone(),
        samples: data.samples.len(),
        channels: data.channels,
        classes: data.classes,
        class_counts,
        channels_used,
        events,
        events_per_sample: Summary::of(&mut events_per_sample).unwrap_or_default(),
        sample_duration,
        duration,
        events_past_duration: past,
        samples_past_duration: samples_past,
        warnings,
    }
}

impl fmt::Display for DatasetStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "dataset            {}", self.name)?;
        writeln!(f, "samples            {}", self.samples)?;
        writeln!(f, "channels           {} ({} used)", self.channels, self.channels_used)?;
        writeln!(f, "classes            {}", self.classes)?;
        let e = self.events_per_sample;
        writeln!(
            f,
            "events             {} in all; per sample min {} / median {} / max {}",
            self.events, e.min, e.median, e.max
        )?;
        match self.sample_duration {
            Some(d) => writeln!(
                f,
                "duration (s)       last event per sample min {:.4} / median {:.4} / max {:.4}",
                d.min, d.median, d.max
            )?,
            None => writeln!(f, "duration (s)       no events")?,
        }
        writeln!(
            f,
            "past --duration    {} event(s) in {} sample(s) at or past {} s",
            self.events_past_duration, self.samples_past_duration, self.duration
        )?;
        writeln!(f, "class histogram")?;
        let most = self.class_counts.iter().copied().max().unwrap_or(0).max(1);
        for (c, &n) in self.class_counts.iter().enumerate() {
            let bar = "#".repeat((n * 40).div_ceil(most));
            writeln!(f, "  {c:>5} {n:>8}  {bar}")?;
        }
        if self.warnings.is_empty() {
            writeln!(f, "warnings           none")?;
        } else {
            writeln!(f, "warnings")?;
            for w in &self.warnings {
                writeln!(f, "  - {w}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{Sample, TimeUnit};

    fn sample(times: &[f32], units: &[u16], label: u16) -> Sample {
        Sample { times: times.to_vec(), units: units.to_vec(), label }
    }

    #[test]
    fn counts_and_summaries() {
        let data = EventDataset {
            name: "t".into(),
            channels: 4,
            classes: 3,
            time_unit: TimeUnit::Seconds,
            samples: vec![
                sample(&[0.1, 0.2, 1.5], &[0, 1, 1], 0),
                sample(&[0.3], &[2], 1),
                sample(&[], &[], 1),
                sample(&[0.5, 0.4], &[0, 0], 0),
            ],
        };
        let s = inspect(&data, 1.4);
        assert_eq!(s.samples, 4);
        assert_eq!(s.class_counts, vec![2, 2, 0]);
        assert_eq!(s.channels_used, 3);
        assert_eq!(s.events, 6);
        assert_eq!(s.events_per_sample, Summary { min: 0.0, median: 1.5, max: 3.0 });
        let d = s.sample_duration.unwrap();
        assert_eq!((d.min as f32, d.max as f32), (0.3, 1.5));
        assert_eq!((s.events_past_duration, s.samples_past_duration), (1, 1));
        let w = s.warnings.join("\n");
        assert!(w.contains("no events at all: 2"), "{w}");
        assert!(w.contains("out of order: 3"), "{w}");
        assert!(w.contains("class(es) have no samples: 2"), "{w}");
        assert!(w.contains("1 of 4 channels never fire"), "{w}");
        assert!(w.contains("past --duration 1.4"), "{w}");
        let text = s.to_string();
        assert!(text.contains("samples            4"), "{text}");
    }

    #[test]
    fn empty_dataset_does_not_panic() {
        let data = EventDataset {
            name: "e".into(),
            channels: 0,
            classes: 0,
            time_unit: TimeUnit::Seconds,
            samples: vec![],
        };
        let s = inspect(&data, 1.4);
        assert!(s.warnings.iter().any(|w| w.contains("no samples")));
        let _ = s.to_string();
    }
}
