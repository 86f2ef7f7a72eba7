//! Interoperability with h5py (the tool the SHD files were written with): a file written by h5py in
//! the SHD layout loads event for event, and h5py reads what [`shd::write`] wrote. Skipped, with a
//! printed note, when `python3 -c "import h5py"` fails.
#![cfg(feature = "hdf5")]

mod common;

use std::path::Path;
use std::process::Command;

use spiketile::data::shd::{self, LoadOptions};
use spiketile::data::{EventDataset, Sample, TimeUnit};
use tempfile::TempDir;

fn python(script: &str, path: &Path) -> String {
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(path)
        .env("HDF5_USE_FILE_LOCKING", "FALSE")
        .output()
        .expect("python3 runs");
    assert!(out.status.success(), "python failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// Written like the SHD authors' files: vlen float16 times, vlen uint16 units, uint16 labels, and
/// `extra/` metadata. Sample i has i % 5 events at times k/8 + i/1024 (exact in float16) and units
/// (7 i + 3 k) % 700; label i % 20; sample 3 holds a NaN time.
const WRITE_SHD: &str = r#"
import sys, h5py, numpy as np
n = 50
times, units = [], []
for i in range(n):
    k = np.arange(i % 5)
    times.append((k / 8 + i / 1024).astype(np.float16))
    units.append(((7 * i + 3 * k) % 700).astype(np.uint16))
times[3] = np.array([np.nan, 0.5], dtype=np.float16)
units[3] = np.array([1, 2], dtype=np.uint16)
with h5py.File(sys.argv[1], "w") as f:
    t = f.create_dataset("spikes/times", (n,), dtype=h5py.vlen_dtype(np.float16))
    u = f.create_dataset("spikes/units", (n,), dtype=h5py.vlen_dtype(np.uint16))
    for i in range(n):
        t[i] = times[i]
        u[i] = units[i]
    f.create_dataset("labels", data=np.arange(n, dtype=np.uint16) % 20)
    f.create_dataset("extra/speaker", data=np.zeros(n, dtype=np.uint16))
    f["extra"].attrs["note"] = "written by h5py"
"#;

#[test]
fn reads_a_file_written_by_h5py() {
    if !common::python_with_h5py("the h5py interoperability test") {
        return;
    }
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("h5py.h5");
    python(WRITE_SHD, &path);
    let (d, report) = shd::load(&path, &LoadOptions::default()).unwrap();
    assert_eq!(d.samples.len(), 50);
    assert_eq!(d.classes, 20);
    assert_eq!(report.times_dtype, "vlen float16");
    assert_eq!(report.units_dtype, "vlen uint16");
    assert_eq!((report.dropped_events, report.dropped_samples.clone()), (1, vec![3]));
    let mut max_unit = 0;
    for (i, s) in d.samples.iter().enumerate() {
        let want = if i == 3 {
            Sample { times: vec![0.5], units: vec![2], label: 3 }
        } else {
            let k = 0..(i % 5);
            Sample {
                times: k.clone().map(|k| k as f32 / 8.0 + i as f32 / 1024.0).collect(),
                units: k.map(|k| ((7 * i + 3 * k) % 700) as u16).collect(),
                label: (i % 20) as u16,
            }
        };
        assert_eq!(s, &want, "sample {i}");
        max_unit = max_unit.max(s.units.iter().copied().max().unwrap_or(0));
    }
    assert_eq!(d.channels, usize::from(max_unit) + 1);
}

#[test]
fn h5py_reads_what_we_write() {
    if !common::python_with_h5py("the h5py interoperability test") {
        return;
    }
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("ours.h5");
    let data = EventDataset {
        name: "ours".into(),
        channels: 700,
        classes: 20,
        time_unit: TimeUnit::Seconds,
        samples: vec![
            Sample { times: vec![0.0, 0.5, 1.25], units: vec![0, 699, 5], label: 19 },
            Sample { times: vec![], units: vec![], label: 0 },
        ],
    };
    shd::write(&path, &data).unwrap();
    let out = python(
        r#"
import sys, h5py
with h5py.File(sys.argv[1], "r") as f:
    t, u, l = f["spikes/times"], f["spikes/units"], f["labels"]
    print(h5py.check_vlen_dtype(t.dtype), h5py.check_vlen_dtype(u.dtype), l.dtype)
    for i in range(len(l)):
        print(list(map(float, t[i])), list(map(int, u[i])), int(l[i]))
"#,
        &path,
    );
    assert_eq!(out, "float16 uint16 uint16\n[0.0, 0.5, 1.25] [0, 699, 5] 19\n[] [] 0\n");
}
