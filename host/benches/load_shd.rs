//! Loading an SHD-sized HDF5 file: time and peak memory of [`shd::load`] plus binning every sample
//! (T = 100, duration 1.4 s). Targets: under 5 s and under 1 GiB peak RSS.
//!
//! The file (8,156 samples, 1,000–7,000 events each, 700 channels, 20 classes, float16 times) is
//! generated into a temporary directory by a child run of this same binary, so that the peak RSS
//! (`VmHWM` from `/proc/self/status`) measured here is that of loading and binning alone.
//! `LOAD_SHD_SAMPLES=N` shrinks the file for a quick run. Run with
//! `cargo bench -p spiketile --features hdf5 --bench load_shd`.

use std::hint::black_box;
use std::path::Path;
use std::time::Instant;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use spiketile::data::shd::{self, LoadOptions};
use spiketile::data::{bin_sample, Binning, EventDataset, Sample, TimeUnit};

const GENERATE_ENV: &str = "LOAD_SHD_GENERATE";
const SAMPLES: usize = 8_156;
const CHANNELS: usize = 700;
const CLASSES: usize = 20;

/// Writes the SHD-sized file (in the child process).
fn generate(path: &Path, n: usize) {
    let mut rng = ChaCha8Rng::seed_from_u64(8156);
    let samples = (0..n)
        .map(|i| {
            let events = rng.gen_range(1_000..=7_000);
            // Most events inside one second, a few past the 1.4 s binning window.
            let mut times: Vec<f32> = (0..events).map(|_| rng.gen_range(0.0f32..1.45)).collect();
            times.sort_by(f32::total_cmp);
            let units = (0..events).map(|_| rng.gen_range(0..CHANNELS as u16)).collect();
            Sample { times, units, label: (i % CLASSES) as u16 }
        })
        .collect();
    let data = EventDataset {
        name: "load_shd".into(),
        channels: CHANNELS,
        classes: CLASSES,
        time_unit: TimeUnit::Seconds,
        samples,
    };
    shd::write(path, &data).expect("write the benchmark file");
}

/// Peak resident set size in KiB (`VmHWM`), if the kernel reports it.
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn main() {
    let n = std::env::var("LOAD_SHD_SAMPLES").ok().and_then(|s| s.parse().ok()).unwrap_or(SAMPLES);
    if let Some(path) = std::env::var_os(GENERATE_ENV) {
        generate(Path::new(&path), n);
        return;
    }
    let dir = tempfile::TempDir::new().expect("temporary directory");
    let path = dir.path().join("shd_sized.h5");
    let t = Instant::now();
    let status = std::process::Command::new(std::env::current_exe().expect("own path"))
        .env(GENERATE_ENV, &path)
        .status()
        .expect("spawn the generator");
    assert!(status.success(), "generating the benchmark file failed");
    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    println!(
        "load_shd: generated {} ({n} samples, {:.1} MiB) in {:.2} s",
        path.display(),
        size as f64 / (1 << 20) as f64,
        t.elapsed().as_secs_f64()
    );
    let rss_before = peak_rss_kib();

    let t = Instant::now();
    let (data, report) = shd::load(&path, &LoadOptions::default()).expect("load");
    let load_s = t.elapsed().as_secs_f64();
    let binning = Binning { time_steps: 100, duration: 1.4, unit: TimeUnit::Seconds };
    let t_bin = Instant::now();
    let mut spikes = 0usize;
    for s in &data.samples {
        let b = bin_sample(s, binning);
        spikes += b.ids.len();
        black_box(&b);
    }
    let bin_s = t_bin.elapsed().as_secs_f64();
    let total_s = t.elapsed().as_secs_f64();
    let peak = peak_rss_kib();

    println!(
        "load_shd: {} samples, {} events, {} channels, {} classes; {} binned spikes (T=100, 1.4 s)",
        data.samples.len(),
        report.events,
        data.channels,
        data.classes,
        spikes
    );
    println!("load_shd: load {load_s:.3} s + binning {bin_s:.3} s = {total_s:.3} s (target < 5 s)");
    match (peak, rss_before) {
        (Some(p), Some(b)) => println!(
            "load_shd: peak RSS (VmHWM) {:.1} MiB (before loading {:.1} MiB; target < 1024 MiB)",
            p as f64 / 1024.0,
            b as f64 / 1024.0
        ),
        _ => println!("load_shd: peak RSS unavailable (no /proc/self/status)"),
    }
    let ok = total_s < 5.0 && peak.is_none_or(|p| p < 1024 * 1024);
    println!("load_shd: {}", if ok { "within targets" } else { "OVER TARGET" });
}
