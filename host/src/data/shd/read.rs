//! Reading an SHD file: the HDF5 checks, the typed readers of times, units and labels (in
//! chunks), and [`load`].

use super::{file_err, list_samples, plural, LoadOptions, LoadReport, CHUNK, MAX_IDS};
use crate::data::{EventDataset, Sample, TimeUnit};
use half::f16;
use hdf5::types::{FloatSize, IntSize, TypeDescriptor, VarLenArray};
use hdf5::{Dataset, File, H5Type};
use std::io::Read;
use std::ops::Range;
use std::path::Path;

/// HDF5 superblock signature; it sits at byte 0, or at 512, 1024, 2048, ... after a user block.
const SIGNATURE: [u8; 8] = [0x89, b'H', b'D', b'F', b'\r', b'\n', 0x1a, b'\n'];

/// Checks that `path` is a readable regular file that carries an HDF5 signature, so that the
/// common mistakes get a precise message instead of an HDF5 error stack.
fn check_hdf5_file(path: &Path) -> anyhow::Result<()> {
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => file_err(path, "no such file"),
        _ => file_err(path, format_args!("cannot read: {e}")),
    })?;
    if meta.is_dir() {
        return Err(file_err(path, "is a directory, not an HDF5 file"));
    }
    if meta.len() == 0 {
        return Err(file_err(path, "empty file (0 bytes), not an HDF5 file"));
    }
    let mut f =
        std::fs::File::open(path).map_err(|e| file_err(path, format_args!("cannot open: {e}")))?;
    let mut offset = 0u64;
    let mut buf = [0u8; 8];
    while offset + 8 <= meta.len() {
        if offset > 0 {
            use std::io::Seek;
            f.seek(std::io::SeekFrom::Start(offset))
                .map_err(|e| file_err(path, format_args!("cannot read: {e}")))?;
        }
        f.read_exact(&mut buf).map_err(|e| file_err(path, format_args!("cannot read: {e}")))?;
        if buf == SIGNATURE {
            return Ok(());
        }
        offset = if offset == 0 { 512 } else { offset * 2 };
    }
    Err(file_err(path, "not an HDF5 file (no HDF5 signature found)"))
}

/// Opens the dataset `group/name` (or `name` at the root when `group` is empty) with messages for a
/// missing group, a missing dataset, and an object that is not a dataset.
fn open_dataset(file: &File, path: &Path, group: &str, name: &str) -> anyhow::Result<Dataset> {
    let full = if group.is_empty() { name.to_string() } else { format!("{group}/{name}") };
    let missing = || {
        file_err(path, format_args!("missing dataset `{full}` (the SHD layout has `spikes/times`, `spikes/units` and `labels`)"))
    };
    let parent = if group.is_empty() {
        file.group("/")
            .map_err(|e| file_err(path, format_args!("cannot open the root group: {e}")))?
    } else {
        if !file.link_exists(group) {
            return Err(missing());
        }
        file.group(group).map_err(|_| {
            file_err(path, format_args!("`{group}` is not a group (expected `{full}`)"))
        })?
    };
    if !parent.link_exists(name) {
        return Err(missing());
    }
    let ds = parent
        .dataset(name)
        .map_err(|_| file_err(path, format_args!("`{full}` is not a dataset")))?;
    let shape = ds.shape();
    if shape.len() != 1 {
        return Err(file_err(
            path,
            format_args!("dataset `{full}` has shape {shape:?}; expected one dimension (one entry per sample)"),
        ));
    }
    Ok(ds)
}

fn dtype(ds: &Dataset, path: &Path, full: &str) -> anyhow::Result<TypeDescriptor> {
    ds.dtype().and_then(|t| t.to_descriptor()).map_err(|e| {
        file_err(path, format_args!("dataset `{full}` has an unsupported dtype ({e})"))
    })
}

/// Human name of an HDF5 type, numpy style (`float16`, `uint16`, `vlen float16`).
fn dtype_name(td: &TypeDescriptor) -> String {
    match td {
        TypeDescriptor::Integer(s) => format!("int{}", *s as usize * 8),
        TypeDescriptor::Unsigned(s) => format!("uint{}", *s as usize * 8),
        TypeDescriptor::Float(s) => format!("float{}", *s as usize * 8),
        TypeDescriptor::VarLenArray(inner) => format!("vlen {}", dtype_name(inner)),
        TypeDescriptor::FixedArray(inner, n) => format!("array[{n}] of {}", dtype_name(inner)),
        other => other.to_string(),
    }
}

#[derive(Clone, Copy)]
enum FloatKind {
    F16,
    F32,
    F64,
}

#[derive(Clone, Copy)]
enum IntKind {
    U8,
    U16,
    U32,
    U64,
    I8,
    I16,
    I32,
    I64,
}

fn int_kind(td: &TypeDescriptor) -> Option<IntKind> {
    Some(match td {
        TypeDescriptor::Unsigned(IntSize::U1) => IntKind::U8,
        TypeDescriptor::Unsigned(IntSize::U2) => IntKind::U16,
        TypeDescriptor::Unsigned(IntSize::U4) => IntKind::U32,
        TypeDescriptor::Unsigned(IntSize::U8) => IntKind::U64,
        TypeDescriptor::Integer(IntSize::U1) => IntKind::I8,
        TypeDescriptor::Integer(IntSize::U2) => IntKind::I16,
        TypeDescriptor::Integer(IntSize::U4) => IntKind::I32,
        TypeDescriptor::Integer(IntSize::U8) => IntKind::I64,
        _ => return None,
    })
}

/// An integer id as read from the file: `Err(value)` when negative.
trait Id: Copy + H5Type {
    fn id(self) -> Result<u64, i64>;
}

macro_rules! impl_id {
    (unsigned: $($t:ty),*; signed: $($s:ty),*) => {
        $(impl Id for $t {
            fn id(self) -> Result<u64, i64> {
                Ok(u64::from(self))
            }
        })*
        $(impl Id for $s {
            fn id(self) -> Result<u64, i64> {
                u64::try_from(self).map_err(|_| i64::from(self))
            }
        })*
    };
}
impl_id!(unsigned: u8, u16, u32, u64; signed: i8, i16, i32, i64);

/// A time as read from the file, widened to f32 (float16 first, before any arithmetic).
trait Time: Copy + H5Type {
    fn widen(self) -> f32;
}
impl Time for f16 {
    fn widen(self) -> f32 {
        self.to_f32()
    }
}
impl Time for f32 {
    fn widen(self) -> f32 {
        self
    }
}
impl Time for f64 {
    fn widen(self) -> f32 {
        // A finite f64 beyond f32's range becomes infinite, and is dropped like other bad times.
        self as f32
    }
}

fn read_err(path: &Path, full: &str, range: &Range<usize>, e: hdf5::Error) -> anyhow::Error {
    file_err(
        path,
        format_args!(
            "cannot read `{full}` for samples {}..{} (truncated or corrupt file?): {e}",
            range.start, range.end
        ),
    )
}

fn read_times_chunk<T: Time>(
    ds: &Dataset,
    path: &Path,
    range: Range<usize>,
) -> anyhow::Result<Vec<Vec<f32>>> {
    let arr = ds
        .read_slice_1d::<VarLenArray<T>, _>(range.clone())
        .map_err(|e| read_err(path, "spikes/times", &range, e))?;
    Ok(arr.iter().map(|v| v.as_slice().iter().map(|t| t.widen()).collect()).collect())
}

fn read_times(
    ds: &Dataset,
    kind: FloatKind,
    path: &Path,
    range: Range<usize>,
) -> anyhow::Result<Vec<Vec<f32>>> {
    match kind {
        FloatKind::F16 => read_times_chunk::<f16>(ds, path, range),
        FloatKind::F32 => read_times_chunk::<f32>(ds, path, range),
        FloatKind::F64 => read_times_chunk::<f64>(ds, path, range),
    }
}

/// Reads the unit ids of samples `range`, checking each against `limit` (the given channel count,
/// or [`MAX_IDS`]).
fn read_units_chunk<T: Id>(
    ds: &Dataset,
    path: &Path,
    range: Range<usize>,
    limit: usize,
    given: bool,
) -> anyhow::Result<Vec<Vec<u16>>> {
    let arr = ds
        .read_slice_1d::<VarLenArray<T>, _>(range.clone())
        .map_err(|e| read_err(path, "spikes/units", &range, e))?;
    let mut out = Vec::with_capacity(arr.len());
    for (k, v) in arr.iter().enumerate() {
        let sample = range.start + k;
        let mut units = Vec::with_capacity(v.len());
        for &u in v.as_slice() {
            let u = u.id().map_err(|neg| {
                file_err(path, format_args!("sample {sample}: negative unit id {neg}"))
            })?;
            if u >= limit as u64 {
                return Err(if given {
                    file_err(path, format_args!("sample {sample}: unit id {u} >= channels {limit}"))
                } else {
                    file_err(
                        path,
                        format_args!("sample {sample}: unit id {u} >= {MAX_IDS}, more channels than spiketile supports"),
                    )
                });
            }
            units.push(u as u16);
        }
        out.push(units);
    }
    Ok(out)
}

/// `$f::<T>(args)` with `T` the Rust integer type of the on-disk `IntKind`.
macro_rules! with_int_type {
    ($kind:expr, $f:ident($($arg:expr),*)) => {
        match $kind {
            IntKind::U8 => $f::<u8>($($arg),*),
            IntKind::U16 => $f::<u16>($($arg),*),
            IntKind::U32 => $f::<u32>($($arg),*),
            IntKind::U64 => $f::<u64>($($arg),*),
            IntKind::I8 => $f::<i8>($($arg),*),
            IntKind::I16 => $f::<i16>($($arg),*),
            IntKind::I32 => $f::<i32>($($arg),*),
            IntKind::I64 => $f::<i64>($($arg),*),
        }
    };
}

fn read_units(
    ds: &Dataset,
    kind: IntKind,
    path: &Path,
    range: Range<usize>,
    limit: usize,
    given: bool,
) -> anyhow::Result<Vec<Vec<u16>>> {
    with_int_type!(kind, read_units_chunk(ds, path, range, limit, given))
}

fn read_labels_chunk<T: Id>(
    ds: &Dataset,
    path: &Path,
    range: Range<usize>,
    limit: usize,
    given: bool,
) -> anyhow::Result<Vec<u16>> {
    let arr =
        ds.read_slice_1d::<T, _>(range.clone()).map_err(|e| read_err(path, "labels", &range, e))?;
    arr.iter()
        .enumerate()
        .map(|(k, &l)| {
            let sample = range.start + k;
            let l = l.id().map_err(|neg| file_err(path, format_args!("sample {sample}: negative label {neg}")))?;
            if l >= limit as u64 {
                return Err(if given {
                    file_err(path, format_args!("sample {sample}: label {l} >= classes {limit}"))
                } else {
                    file_err(path, format_args!("sample {sample}: label {l} >= {MAX_IDS}, more classes than spiketile supports"))
                });
            }
            Ok(l as u16)
        })
        .collect()
}

fn read_labels(
    ds: &Dataset,
    kind: IntKind,
    path: &Path,
    range: Range<usize>,
    limit: usize,
    given: bool,
) -> anyhow::Result<Vec<u16>> {
    with_int_type!(kind, read_labels_chunk(ds, path, range, limit, given))
}

fn check_count(path: &Path, what: &str, n: Option<usize>) -> anyhow::Result<Option<usize>> {
    match n {
        Some(0) => Err(file_err(path, format_args!("{what} must be at least 1"))),
        Some(n) if n > MAX_IDS => Err(file_err(
            path,
            format_args!("{what} = {n} is more than the {MAX_IDS} spiketile supports"),
        )),
        other => Ok(other),
    }
}

/// Reads an SHD-layout HDF5 file.
///
/// Channels and classes come from `opts` when given (then every unit id and label is checked
/// against them), otherwise from the data (largest id + 1). Events with NaN, infinite or negative
/// times are dropped and counted in the report (see [`LoadReport::warnings`]), or are an error with
/// `opts.strict`. Errors name the file, the sample when relevant, and the problem: a missing file,
/// a directory, a file that is not HDF5 or is truncated, a missing dataset, a wrong dtype or shape,
/// mismatched lengths, no samples, out-of-range unit ids or labels.
pub fn load(path: &Path, opts: &LoadOptions) -> anyhow::Result<(EventDataset, LoadReport)> {
    let channels_opt = check_count(path, "channels", opts.channels)?;
    let classes_opt = check_count(path, "classes", opts.classes)?;
    check_hdf5_file(path)?;
    let file = File::open(path).map_err(|e| {
        let msg = e.to_string();
        if msg.contains("unable to lock file") {
            file_err(
                path,
                format_args!(
                    "cannot open: the file is locked by another process (is it being written?); \
                     HDF5_USE_FILE_LOCKING=FALSE turns HDF5's file locks off: {msg}"
                ),
            )
        } else if msg.contains("truncated") {
            file_err(path, format_args!("truncated HDF5 file: {msg}"))
        } else {
            file_err(path, format_args!("cannot open HDF5 file (truncated or corrupt?): {msg}"))
        }
    })?;

    let times = open_dataset(&file, path, "spikes", "times")?;
    let units = open_dataset(&file, path, "spikes", "units")?;
    let labels = open_dataset(&file, path, "", "labels")?;

    let times_td = dtype(&times, path, "spikes/times")?;
    let units_td = dtype(&units, path, "spikes/units")?;
    let labels_td = dtype(&labels, path, "labels")?;
    let time_kind = match &times_td {
        TypeDescriptor::VarLenArray(inner) => match **inner {
            TypeDescriptor::Float(FloatSize::U2) => Some(FloatKind::F16),
            TypeDescriptor::Float(FloatSize::U4) => Some(FloatKind::F32),
            TypeDescriptor::Float(FloatSize::U8) => Some(FloatKind::F64),
            _ => None,
        },
        _ => None,
    }
    .ok_or_else(|| {
        file_err(
            path,
            format_args!(
                "dataset `spikes/times` has dtype {}; expected variable-length floats (SHD: vlen float16)",
                dtype_name(&times_td)
            ),
        )
    })?;
    let unit_kind = match &units_td {
        TypeDescriptor::VarLenArray(inner) => int_kind(inner),
        _ => None,
    }
    .ok_or_else(|| {
        file_err(
            path,
            format_args!(
                "dataset `spikes/units` has dtype {}; expected variable-length unsigned integers (SHD: vlen uint16)",
                dtype_name(&units_td)
            ),
        )
    })?;
    let label_kind = int_kind(&labels_td).ok_or_else(|| {
        file_err(
            path,
            format_args!(
                "dataset `labels` has dtype {}; expected unsigned integers (SHD: uint16)",
                dtype_name(&labels_td)
            ),
        )
    })?;

    let n = times.shape()[0];
    let (n_units, n_labels) = (units.shape()[0], labels.shape()[0]);
    if n != n_units || n != n_labels {
        return Err(file_err(
            path,
            format_args!(
                "mismatched lengths: `spikes/times` has {n} samples, `spikes/units` {n_units}, `labels` {n_labels}"
            ),
        ));
    }
    if n == 0 {
        return Err(file_err(
            path,
            "empty dataset: `spikes/times`, `spikes/units` and `labels` hold no samples",
        ));
    }

    let mut report = LoadReport {
        file: path.to_path_buf(),
        times_dtype: dtype_name(&times_td),
        units_dtype: dtype_name(&units_td),
        labels_dtype: dtype_name(&labels_td),
        ..LoadReport::default()
    };
    let unit_limit = channels_opt.unwrap_or(MAX_IDS);
    let label_limit = classes_opt.unwrap_or(MAX_IDS);
    // Capped: the sample count comes from the file and may be corrupt.
    let mut samples = Vec::with_capacity(n.min(1 << 16));
    let mut max_unit: Option<u16> = None;
    let mut max_label = 0u16;
    let mut start = 0;
    while start < n {
        let range = start..(start + CHUNK).min(n);
        let t_chunk = read_times(&times, time_kind, path, range.clone())?;
        let u_chunk =
            read_units(&units, unit_kind, path, range.clone(), unit_limit, channels_opt.is_some())?;
        let l_chunk = read_labels(
            &labels,
            label_kind,
            path,
            range.clone(),
            label_limit,
            classes_opt.is_some(),
        )?;
        for (k, ((mut ts, mut us), label)) in
            t_chunk.into_iter().zip(u_chunk).zip(l_chunk).enumerate()
        {
            let index = range.start + k;
            if ts.len() != us.len() {
                return Err(file_err(
                    path,
                    format_args!(
                        "sample {index}: mismatched lengths: {} times but {} units",
                        ts.len(),
                        us.len()
                    ),
                ));
            }
            let bad = ts.iter().filter(|t| !(t.is_finite() && **t >= 0.0)).count();
            if bad > 0 {
                report.dropped_events += bad;
                report.dropped_samples.push(index);
                let mut keep = 0;
                for j in 0..ts.len() {
                    if ts[j].is_finite() && ts[j] >= 0.0 {
                        ts[keep] = ts[j];
                        us[keep] = us[j];
                        keep += 1;
                    }
                }
                ts.truncate(keep);
                us.truncate(keep);
            }
            if let Some(&m) = us.iter().max() {
                max_unit = Some(max_unit.map_or(m, |x| x.max(m)));
            }
            max_label = max_label.max(label);
            report.events += ts.len();
            samples.push(Sample { times: ts, units: us, label });
        }
        start = range.end;
    }
    if opts.strict && report.dropped_events > 0 {
        return Err(file_err(
            path,
            format_args!(
                "{} event{} with non-finite or negative times in {} (rejected by --strict)",
                report.dropped_events,
                plural(report.dropped_events),
                list_samples(&report.dropped_samples)
            ),
        ));
    }
    let channels = match (channels_opt, max_unit) {
        (Some(c), _) => c,
        (None, Some(m)) => usize::from(m) + 1,
        (None, None) => {
            return Err(file_err(
                path,
                "no spike events in any sample, so the number of channels cannot be read from the data (give it explicitly)",
            ))
        }
    };
    let classes = classes_opt.unwrap_or(usize::from(max_label) + 1);
    let name = path.display().to_string();
    let data = EventDataset { name, channels, classes, time_unit: TimeUnit::Seconds, samples };
    Ok((data, report))
}
