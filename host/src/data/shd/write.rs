//! Writing an SHD file in the published on-disk types, atomically (a temporary file in the
//! destination directory, then a rename).

use super::{file_err, CHUNK, MAX_IDS};
use crate::data::EventDataset;
use anyhow::Context;
use half::f16;
use hdf5::types::VarLenArray;
use hdf5::File;
use std::path::{Path, PathBuf};

/// Checks that `data` can be stored in the SHD on-disk types; names the sample that cannot.
fn validate_for_write(path: &Path, data: &EventDataset) -> anyhow::Result<()> {
    if data.samples.is_empty() {
        return Err(file_err(path, "refusing to write a dataset with no samples"));
    }
    if data.channels > MAX_IDS || data.classes > MAX_IDS {
        return Err(file_err(
            path,
            format_args!(
                "{} channels / {} classes do not fit uint16 ids",
                data.channels, data.classes
            ),
        ));
    }
    let f16_max = f16::MAX.to_f32();
    for (i, s) in data.samples.iter().enumerate() {
        if s.times.len() != s.units.len() {
            return Err(file_err(
                path,
                format_args!(
                    "sample {i}: mismatched lengths: {} times but {} units",
                    s.times.len(),
                    s.units.len()
                ),
            ));
        }
        if usize::from(s.label) >= data.classes {
            return Err(file_err(
                path,
                format_args!("sample {i}: label {} >= classes {}", s.label, data.classes),
            ));
        }
        if let Some(&u) = s.units.iter().find(|&&u| usize::from(u) >= data.channels) {
            return Err(file_err(
                path,
                format_args!("sample {i}: unit id {u} >= channels {}", data.channels),
            ));
        }
        let seconds = |t: f32| data.time_unit.seconds(t) as f32;
        if let Some(t) = s
            .times
            .iter()
            .map(|&t| seconds(t))
            .find(|&t| !(t.is_finite() && t >= 0.0 && t <= f16_max))
        {
            return Err(file_err(
                path,
                format_args!("sample {i}: time {t} cannot be stored (must be finite, >= 0 and <= {f16_max} for float16)"),
            ));
        }
    }
    Ok(())
}

/// A temporary file that is removed on drop unless it was renamed into place.
struct TempFile {
    path: PathBuf,
    armed: bool,
}

impl TempFile {
    /// A fresh, unused name next to `dest` (same directory, so the rename is atomic), named as
    /// [`crate::atomic`] names its temporary files.
    fn next_to(dest: &Path) -> Self {
        TempFile { path: crate::atomic::temp_path_for(dest), armed: true }
    }

    /// Flushes the temporary file to disk and renames it to `dest`.
    fn commit(mut self, dest: &Path) -> anyhow::Result<()> {
        std::fs::File::open(&self.path)
            .and_then(|f| f.sync_all())
            .with_context(|| format!("{}: cannot sync {}", dest.display(), self.path.display()))?;
        std::fs::rename(&self.path, dest).with_context(|| {
            format!("{}: cannot rename {} into place", dest.display(), self.path.display())
        })?;
        self.armed = false;
        if let Some(dir) = dest.parent().filter(|p| !p.as_os_str().is_empty()) {
            // Best effort: make the rename itself durable.
            let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
        }
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if self.armed {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn write_hdf5(tmp: &Path, dest: &Path, data: &EventDataset) -> anyhow::Result<()> {
    let h5 = |e: hdf5::Error| file_err(dest, format_args!("cannot write HDF5 data: {e}"));
    // The temporary file is ours alone: no HDF5 file lock, which a child process spawned meanwhile
    // (HDF5 opens files without close-on-exec) could otherwise inherit and hold.
    let file =
        File::with_options().with_fapl(|p| p.file_locking(false)).create_excl(tmp).map_err(h5)?;
    {
        let n = data.samples.len();
        let spikes = file.create_group("spikes").map_err(h5)?;
        let times =
            spikes.new_dataset::<VarLenArray<f16>>().shape(n).create("times").map_err(h5)?;
        let units =
            spikes.new_dataset::<VarLenArray<u16>>().shape(n).create("units").map_err(h5)?;
        let unit = data.time_unit;
        let mut start = 0;
        while start < n {
            let end = (start + CHUNK).min(n);
            let chunk = &data.samples[start..end];
            let t: Vec<VarLenArray<f16>> = chunk
                .iter()
                .map(|s| {
                    s.times.iter().map(|&t| f16::from_f64(unit.seconds(t))).collect::<Vec<_>>()
                })
                .map(|v| VarLenArray::from_slice(&v))
                .collect();
            times.write_slice(&t, start..end).map_err(h5)?;
            drop(t);
            let u: Vec<VarLenArray<u16>> =
                chunk.iter().map(|s| VarLenArray::from_slice(&s.units)).collect();
            units.write_slice(&u, start..end).map_err(h5)?;
            start = end;
        }
        let labels: Vec<u16> = data.samples.iter().map(|s| s.label).collect();
        file.new_dataset_builder().with_data(&labels).create("labels").map_err(h5)?;
    }
    file.close().map_err(h5)
}

/// Writes `data` to `path` in the SHD layout with the published on-disk types: `spikes/times` vlen
/// float16 (seconds, rounded to the nearest float16), `spikes/units` vlen uint16, `labels` uint16.
///
/// The write is atomic: the file is written next to `path` under a temporary name, flushed, then
/// renamed; on any error nothing is left behind and an existing `path` is untouched. Errors (naming
/// the file and sample) for: no samples, mismatched lengths, ids out of range, times that are not
/// finite, negative, or too large for float16.
pub fn write(path: &Path, data: &EventDataset) -> anyhow::Result<()> {
    write_all(&[(path, data)])
}

/// Checks that `dest` can be written: a file name in an existing directory, not a directory.
fn check_destination(dest: &Path) -> anyhow::Result<()> {
    if dest.file_name().is_none() {
        return Err(file_err(dest, "not a file name"));
    }
    if dest.is_dir() {
        return Err(file_err(dest, "is a directory, cannot write a file there"));
    }
    let dir = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        return Err(file_err(dest, format_args!("directory {} does not exist", dir.display())));
    }
    Ok(())
}

/// A written but not yet renamed output of [`write_all`].
fn write_to_temp(path: &Path, data: &EventDataset) -> anyhow::Result<TempFile> {
    let tmp = TempFile::next_to(path);
    write_hdf5(&tmp.path, path, data)?;
    Ok(tmp)
}

/// Writes several datasets as [`write()`] does, renaming them into place only once all of them were
/// validated and written: an error before the renames (bad data, a destination that is a directory
/// or in a missing directory, an HDF5 failure) leaves none of the outputs behind or changed.
pub fn write_all(outputs: &[(&Path, &EventDataset)]) -> anyhow::Result<()> {
    for (path, data) in outputs {
        check_destination(path)?;
        validate_for_write(path, data)?;
    }
    let temps = outputs
        .iter()
        .map(|(path, data)| write_to_temp(path, data))
        .collect::<anyhow::Result<Vec<_>>>()?;
    for (tmp, (path, _)) in temps.into_iter().zip(outputs) {
        tmp.commit(path)?;
    }
    Ok(())
}
