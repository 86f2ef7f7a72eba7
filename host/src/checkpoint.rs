//! safetensors checkpoints: named f32 tensors plus a string metadata map (SPEC §5).
//!
//! Layout of a spiketile checkpoint:
//! - `layers.{l}.weight`: f32 `[N_l, N_{l-1}]`, `l` from 0 for the first hidden layer (the last one
//!   is the output layer); `layers.{l}.recurrent`: f32 `[N_l, N_l]` for recurrent layers;
//! - optimizer state under `optim.` (names chosen by the trainer);
//! - metadata [`META_CONFIG`] (run config as JSON), [`META_VERSION`] ([`FORMAT_VERSION`]),
//!   [`META_STEP`], [`META_EPOCH`], [`META_RNG`].
//!
//! [`Checkpoint::load`] also accepts files written by any other tool (e.g. Python
//! `safetensors.torch.save_file`), with or without metadata, as long as every tensor is f32.
//! It validates everything once (header, offsets, dtypes, shapes), so accessors afterwards only
//! look up names and compare shapes. Errors name the file and the tensor.
//!
//! [`Checkpoint::save`] writes atomically (see [`crate::atomic`]) and deterministically: tensors in
//! name order, metadata keys sorted, so equal checkpoints are equal files.
//!
//! ```
//! use spiketile::checkpoint::{Checkpoint, Tensor, FORMAT_VERSION, META_STEP, META_VERSION};
//!
//! let mut ckpt = Checkpoint::new();
//! ckpt.insert_layer(0, Tensor::new(vec![3, 2], vec![0.5; 6])?, None);
//! ckpt.insert_layer(1, Tensor::new(vec![4, 3], vec![-1.0; 12])?, None);
//! ckpt.set_meta(META_VERSION, FORMAT_VERSION);
//! ckpt.set_meta(META_STEP, 120);
//!
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join("model.safetensors");
//! ckpt.save(&path)?;
//!
//! let loaded = Checkpoint::load(&path)?;
//! assert_eq!(loaded.meta_parse::<u64>(META_STEP)?, 120);
//! let layers = loaded.layer_weights()?;
//! assert_eq!(layers.len(), 2);
//! assert_eq!((layers[1].neurons(), layers[1].inputs()), (4, 3));
//! assert_eq!(loaded.tensor("layers.0.weight", &[3, 2])?.data, vec![0.5; 6]);
//! # Ok::<(), anyhow::Error>(())
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{anyhow, bail, Context as _};
use safetensors::tensor::TensorInfo;
use safetensors::{Dtype, SafeTensors};
use serde::ser::{SerializeMap, Serializer};

/// The checkpoint format version this build writes and reads (metadata key [`META_VERSION`]).
pub const FORMAT_VERSION: &str = "1";

/// Metadata key: the run configuration, as JSON.
pub const META_CONFIG: &str = "spiketile.config";
/// Metadata key: the checkpoint format version ([`FORMAT_VERSION`]).
pub const META_VERSION: &str = "spiketile.version";
/// Metadata key: optimizer steps taken.
pub const META_STEP: &str = "spiketile.step";
/// Metadata key: epochs completed.
pub const META_EPOCH: &str = "spiketile.epoch";
/// Metadata key: the random number generator state.
pub const META_RNG: &str = "spiketile.rng";

/// The safetensors header key reserved for the metadata map.
const METADATA_KEY: &str = "__metadata__";

/// A dense f32 tensor in row-major (C) order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Tensor {
    /// Dimensions, outermost first (`[rows, columns]` for a weight matrix).
    pub shape: Vec<usize>,
    /// The `shape.iter().product()` elements, row-major.
    pub data: Vec<f32>,
}

impl Tensor {
    /// A tensor of `shape` holding `data`.
    ///
    /// # Errors
    /// If `data.len()` is not the product of `shape`.
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> anyhow::Result<Self> {
        let tensor = Self { shape, data };
        tensor.check().map_err(|e| anyhow!("{e}"))?;
        Ok(tensor)
    }

    /// A tensor of `shape` filled with zeros.
    ///
    /// # Panics
    /// If the product of `shape` overflows `usize`.
    pub fn zeros(shape: Vec<usize>) -> Self {
        let n = numel(&shape).expect("Tensor::zeros: shape overflows usize");
        Self { shape, data: vec![0.0; n] }
    }

    /// Number of elements (the product of the shape).
    pub fn numel(&self) -> usize {
        self.data.len()
    }

    /// `Err` with a description if `data.len()` does not match `shape`.
    fn check(&self) -> Result<(), String> {
        match numel(&self.shape) {
            Some(n) if n == self.data.len() => Ok(()),
            Some(n) => Err(format!(
                "shape {:?} holds {n} elements but the data has {}",
                self.shape,
                self.data.len()
            )),
            None => Err(format!("shape {:?} overflows usize", self.shape)),
        }
    }
}

/// Product of `shape`, `None` on overflow.
fn numel(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}

/// The weights of one layer, as found by [`Checkpoint::layer_weights`].
#[derive(Debug, Clone, PartialEq)]
pub struct LayerTensors {
    /// Feed-forward weights `W_l`, `[N_l, N_{l-1}]` (row = post-synaptic neuron).
    pub weight: Tensor,
    /// Recurrent weights `V_l`, `[N_l, N_l]`, if the layer is recurrent.
    pub recurrent: Option<Tensor>,
}

impl LayerTensors {
    /// Neurons in the layer (`N_l`, rows of the weight).
    pub fn neurons(&self) -> usize {
        self.weight.shape[0]
    }

    /// Inputs to the layer (`N_{l-1}`, columns of the weight).
    pub fn inputs(&self) -> usize {
        self.weight.shape[1]
    }
}

/// Name of the feed-forward weight tensor of layer `l`: `layers.{l}.weight`.
pub fn weight_name(l: usize) -> String {
    format!("layers.{l}.weight")
}

/// Name of the recurrent weight tensor of layer `l`: `layers.{l}.recurrent`.
pub fn recurrent_name(l: usize) -> String {
    format!("layers.{l}.recurrent")
}

/// A checkpoint in memory: named tensors and string metadata.
#[derive(Debug, Clone, Default)]
pub struct Checkpoint {
    /// Tensors by name (`layers.*`, `optim.*`, ...).
    pub tensors: BTreeMap<String, Tensor>,
    /// Metadata strings by key (see the `META_*` constants).
    pub metadata: BTreeMap<String, String>,
    /// The file this checkpoint was loaded from, for error messages (`None` if built in memory).
    pub source: Option<PathBuf>,
}

/// How a checkpoint names itself in error messages.
struct Origin<'a>(Option<&'a Path>);

impl fmt::Display for Origin<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(p) => write!(f, "checkpoint {}", p.display()),
            None => write!(f, "checkpoint (in memory)"),
        }
    }
}

impl Checkpoint {
    /// An empty checkpoint (no tensors, no metadata).
    pub fn new() -> Self {
        Self::default()
    }

    fn origin(&self) -> Origin<'_> {
        Origin(self.source.as_deref())
    }

    /// Inserts the weights of layer `l` under [`weight_name`] and (if given) [`recurrent_name`].
    /// Shapes are checked when the layers are read back ([`Checkpoint::layer_weights`]).
    pub fn insert_layer(&mut self, l: usize, weight: Tensor, recurrent: Option<Tensor>) {
        self.tensors.insert(weight_name(l), weight);
        match recurrent {
            Some(r) => self.tensors.insert(recurrent_name(l), r),
            None => self.tensors.remove(&recurrent_name(l)),
        };
    }

    /// Sets metadata `key` to `value` (any [`ToString`]: numbers, strings, ...).
    pub fn set_meta(&mut self, key: impl Into<String>, value: impl ToString) {
        self.metadata.insert(key.into(), value.to_string());
    }

    /// The metadata string under `key`, if any.
    pub fn meta(&self, key: &str) -> Option<&str> {
        self.metadata.get(key).map(String::as_str)
    }

    /// The metadata under `key`, parsed as `T`.
    ///
    /// # Errors
    /// If `key` is missing or its value does not parse; the message names the file and the key.
    pub fn meta_parse<T>(&self, key: &str) -> anyhow::Result<T>
    where
        T: FromStr,
        T::Err: fmt::Display,
    {
        let value =
            self.meta(key).ok_or_else(|| anyhow!("{}: no metadata `{key}`", self.origin()))?;
        value.parse().map_err(|e| {
            anyhow!(
                "{}: metadata `{key}` = {value:?} is not a valid {}: {e}",
                self.origin(),
                std::any::type_name::<T>()
            )
        })
    }

    /// The metadata under `key`, parsed as JSON (e.g. [`META_CONFIG`]).
    ///
    /// # Errors
    /// If `key` is missing or its value is not JSON of type `T`; the message names file and key.
    pub fn meta_json<T: serde::de::DeserializeOwned>(&self, key: &str) -> anyhow::Result<T> {
        let value =
            self.meta(key).ok_or_else(|| anyhow!("{}: no metadata `{key}`", self.origin()))?;
        serde_json::from_str(value)
            .with_context(|| format!("{}: metadata `{key}` is not valid JSON", self.origin()))
    }

    /// The tensor `name`, checked to have exactly `shape`.
    ///
    /// # Errors
    /// If there is no such tensor, or its shape differs; the message names the file, the tensor
    /// and both shapes.
    pub fn tensor(&self, name: &str, shape: &[usize]) -> anyhow::Result<&Tensor> {
        let tensor = self.tensors.get(name).ok_or_else(|| {
            anyhow!(
                "{}: no tensor `{name}` (expected shape {shape:?}; the file holds {})",
                self.origin(),
                self.tensor_list()
            )
        })?;
        if tensor.shape != shape {
            bail!(
                "{}: tensor `{name}` has shape {:?}, expected {shape:?}",
                self.origin(),
                tensor.shape
            );
        }
        Ok(tensor)
    }

    /// A short list of tensor names for error messages.
    fn tensor_list(&self) -> String {
        const SHOWN: usize = 8;
        if self.tensors.is_empty() {
            return "no tensors".to_string();
        }
        let names: Vec<&str> = self.tensors.keys().take(SHOWN).map(String::as_str).collect();
        let more = self.tensors.len().saturating_sub(SHOWN);
        let mut list = format!("{} tensors: {}", self.tensors.len(), names.join(", "));
        if more > 0 {
            list.push_str(&format!(", ... ({more} more)"));
        }
        list
    }

    /// The layers' weights: `layers.{l}.weight` (and `layers.{l}.recurrent` if present) for
    /// `l = 0, 1, ...`, with their shapes checked against each other.
    ///
    /// Every weight is 2-D and non-empty, the columns of layer `l` equal the rows of layer `l-1`,
    /// and a recurrent matrix is `[N_l, N_l]`. The input width (`inputs()` of layer 0) and the
    /// output width (`neurons()` of the last layer) are the caller's to check against the data.
    ///
    /// # Errors
    /// If `layers.0.weight` is missing, the layer indices have a gap, a `layers.*` tensor is
    /// neither `weight` nor `recurrent` (a bias, say: this model has none), or a shape does not
    /// fit. Messages name the file and the tensor.
    pub fn layer_weights(&self) -> anyhow::Result<Vec<LayerTensors>> {
        let highest = self.highest_layer_index()?;
        let Some(highest) = highest else {
            bail!(
                "{}: no tensor `layers.0.weight`, so no layers to load (the file holds {})",
                self.origin(),
                self.tensor_list()
            );
        };
        let mut layers: Vec<LayerTensors> = Vec::with_capacity(highest + 1);
        for l in 0..=highest {
            let name = weight_name(l);
            let weight = self.tensors.get(&name).ok_or_else(|| {
                anyhow!(
                    "{}: no tensor `{name}`, but layers up to {highest} exist (layer indices \
                     must count up from 0 without gaps)",
                    self.origin()
                )
            })?;
            self.check_weight_shape(l, weight, layers.last())?;
            let recurrent = match self.tensors.get(&recurrent_name(l)) {
                Some(r) => {
                    let n = weight.shape[0];
                    if r.shape != [n, n] {
                        bail!(
                            "{}: tensor `{}` has shape {:?}, expected [{n}, {n}] (layer {l} has \
                             {n} neurons)",
                            self.origin(),
                            recurrent_name(l),
                            r.shape
                        );
                    }
                    Some(r.clone())
                }
                None => None,
            };
            layers.push(LayerTensors { weight: weight.clone(), recurrent });
        }
        Ok(layers)
    }

    /// The highest `l` among `layers.{l}.*` tensors (`None` if there are none), rejecting names
    /// that are not `layers.{l}.weight` or `layers.{l}.recurrent`.
    fn highest_layer_index(&self) -> anyhow::Result<Option<usize>> {
        let mut highest: Option<usize> = None;
        for name in self.tensors.keys() {
            let Some(rest) = name.strip_prefix("layers.") else {
                continue;
            };
            let parsed = rest.split_once('.').and_then(|(index, kind)| {
                let l: usize = index.parse().ok()?;
                (l.to_string() == index && matches!(kind, "weight" | "recurrent")).then_some(l)
            });
            let l = parsed.ok_or_else(|| {
                anyhow!(
                    "{}: unexpected tensor `{name}`: layer tensors are `layers.{{l}}.weight` and \
                     `layers.{{l}}.recurrent` (l = 0, 1, ...; the model has no biases)",
                    self.origin()
                )
            })?;
            highest = highest.max(Some(l));
        }
        Ok(highest)
    }

    fn check_weight_shape(
        &self,
        l: usize,
        weight: &Tensor,
        previous: Option<&LayerTensors>,
    ) -> anyhow::Result<()> {
        let name = weight_name(l);
        if weight.shape.len() != 2 || weight.shape.contains(&0) {
            bail!(
                "{}: tensor `{name}` has shape {:?}, expected a non-empty matrix [neurons, inputs]",
                self.origin(),
                weight.shape
            );
        }
        if let Some(prev) = previous {
            if weight.shape[1] != prev.neurons() {
                bail!(
                    "{}: tensor `{name}` has shape {:?}: its {} columns (inputs) should equal the \
                     {} rows (neurons) of `{}` {:?}",
                    self.origin(),
                    weight.shape,
                    weight.shape[1],
                    prev.neurons(),
                    weight_name(l - 1),
                    prev.weight.shape
                );
            }
        }
        Ok(())
    }

    /// Writes the checkpoint to `path` as a safetensors file (f32, little-endian), atomically.
    ///
    /// Tensors are stored in name order and the metadata with sorted keys, so the bytes depend
    /// only on the contents. Without metadata the file has no `__metadata__` entry at all.
    ///
    /// # Errors
    /// If a tensor's data does not match its shape, a tensor is named `__metadata__`, or the
    /// write fails; `path` is then unchanged. Messages name the file (and the tensor).
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let origin = Origin(Some(path));
        self.validate_for_write(&origin)?;
        crate::atomic::write_atomic_with(path, |w| self.write_unchecked(w))
            .with_context(|| format!("cannot save {origin}"))
    }

    /// The checkpoint as the bytes of a safetensors file (what [`Checkpoint::save`] writes).
    ///
    /// # Errors
    /// As [`Checkpoint::save`], minus the I/O.
    pub fn to_bytes(&self) -> anyhow::Result<Vec<u8>> {
        self.validate_for_write(&self.origin())?;
        let mut bytes = Vec::new();
        self.write_unchecked(&mut bytes)?;
        Ok(bytes)
    }

    fn validate_for_write(&self, origin: &Origin<'_>) -> anyhow::Result<()> {
        for (name, tensor) in &self.tensors {
            if name == METADATA_KEY {
                bail!(
                    "{origin}: a tensor cannot be named `{METADATA_KEY}` (reserved by safetensors)"
                );
            }
            tensor.check().map_err(|e| anyhow!("{origin}: cannot write tensor `{name}`: {e}"))?;
        }
        Ok(())
    }

    /// Writes the safetensors bytes (tensors already validated).
    fn write_unchecked(&self, w: &mut dyn Write) -> anyhow::Result<()> {
        let header = self.header_bytes()?;
        w.write_all(&(header.len() as u64).to_le_bytes())?;
        w.write_all(&header)?;
        let mut chunk = [0u8; 4 * 1024];
        for tensor in self.tensors.values() {
            for values in tensor.data.chunks(chunk.len() / 4) {
                for (dst, v) in chunk.chunks_exact_mut(4).zip(values) {
                    dst.copy_from_slice(&v.to_le_bytes());
                }
                w.write_all(&chunk[..4 * values.len()])?;
            }
        }
        Ok(())
    }

    /// The JSON header, padded with spaces to a multiple of 8 bytes (as the safetensors crate does).
    fn header_bytes(&self) -> anyhow::Result<Vec<u8>> {
        let mut offset = 0usize;
        let mut entries = Vec::with_capacity(self.tensors.len());
        for (name, tensor) in &self.tensors {
            let end = offset + 4 * tensor.data.len();
            let info = TensorInfo {
                dtype: Dtype::F32,
                shape: tensor.shape.clone(),
                data_offsets: (offset, end),
            };
            entries.push((name.as_str(), info));
            offset = end;
        }
        let header = Header {
            metadata: (!self.metadata.is_empty()).then_some(&self.metadata),
            tensors: entries,
        };
        let mut bytes = serde_json::to_vec(&header).context("cannot encode the header")?;
        bytes.resize(bytes.len().next_multiple_of(8), b' ');
        Ok(bytes)
    }

    /// Reads and validates the safetensors file at `path`. Nothing is written.
    ///
    /// # Errors
    /// If the file cannot be read, is not a well-formed safetensors file (bad or truncated
    /// header, offsets beyond the data, shape and data length disagreeing), holds a tensor whose
    /// dtype is not F32, or says it has a format version other than [`FORMAT_VERSION`]. Messages
    /// name the file and, where one is at fault, the tensor.
    pub fn load(path: &Path) -> anyhow::Result<Checkpoint> {
        let bytes = std::fs::read(path)
            .with_context(|| format!("cannot read checkpoint {}", path.display()))?;
        Self::parse(&bytes, Some(path))
    }

    /// Parses the bytes of a safetensors file, validated as by [`Checkpoint::load`].
    ///
    /// # Errors
    /// As [`Checkpoint::load`], minus the I/O.
    pub fn from_bytes(bytes: &[u8]) -> anyhow::Result<Checkpoint> {
        Self::parse(bytes, None)
    }

    fn parse(bytes: &[u8], source: Option<&Path>) -> anyhow::Result<Checkpoint> {
        let origin = Origin(source);
        let (header_len, header) = SafeTensors::read_metadata(bytes).map_err(|e| {
            let why = diagnose(bytes).unwrap_or_else(|| e.to_string());
            anyhow::Error::new(e).context(format!("{origin}: not a valid safetensors file: {why}"))
        })?;
        // `read_metadata` checked that the offsets tile the data exactly; slice defensively anyway.
        let data_section = &bytes[8 + header_len..];
        let mut tensors = BTreeMap::new();
        for (name, info) in header.tensors() {
            if info.dtype != Dtype::F32 {
                bail!("{origin}: tensor `{name}` has dtype {:?}, expected F32", info.dtype);
            }
            let (start, end) = info.data_offsets;
            let raw = data_section.get(start..end).ok_or_else(|| {
                anyhow!(
                    "{origin}: tensor `{name}` has data offsets [{start}, {end}) beyond the data"
                )
            })?;
            if numel(&info.shape).and_then(|n| n.checked_mul(4)) != Some(raw.len()) {
                bail!(
                    "{origin}: tensor `{name}` has shape {:?} but {} bytes of data",
                    info.shape,
                    raw.len()
                );
            }
            let data =
                raw.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
            let shape = info.shape.clone();
            tensors.insert(name, Tensor { shape, data });
        }
        let metadata: BTreeMap<String, String> =
            header.metadata().clone().unwrap_or_default().into_iter().collect();
        if let Some(v) = metadata.get(META_VERSION) {
            if v != FORMAT_VERSION {
                bail!(
                    "{origin}: format version {v:?} (metadata `{META_VERSION}`) is not supported: \
                     this build reads version {FORMAT_VERSION:?}"
                );
            }
        }
        Ok(Checkpoint { tensors, metadata, source: source.map(Path::to_path_buf) })
    }
}

/// The safetensors header, serialized in a fixed order: `__metadata__` first (if any), then the
/// tensors in the order given, each as `{"dtype", "shape", "data_offsets"}`.
struct Header<'a> {
    metadata: Option<&'a BTreeMap<String, String>>,
    tensors: Vec<(&'a str, TensorInfo)>,
}

impl serde::Serialize for Header<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let len = self.tensors.len() + usize::from(self.metadata.is_some());
        let mut map = serializer.serialize_map(Some(len))?;
        if let Some(metadata) = self.metadata {
            map.serialize_entry(METADATA_KEY, metadata)?;
        }
        for (name, info) in &self.tensors {
            map.serialize_entry(name, info)?;
        }
        map.end()
    }
}

/// Explains why `bytes` is not a valid safetensors file, in words a user can act on (the crate's
/// errors do not say which tensor or how many bytes). `None` if no specific cause is found.
fn diagnose(bytes: &[u8]) -> Option<String> {
    let len = bytes.len();
    if len == 0 {
        return Some("the file is empty".into());
    }
    if len < 8 {
        return Some(format!(
            "the file has {len} bytes, fewer than the 8 of the header length field"
        ));
    }
    let n = u64::from_le_bytes(bytes[..8].try_into().ok()?);
    let available = (len - 8) as u64;
    if n > available {
        return Some(format!(
            "the header length field says {n} bytes but only {available} follow (a truncated file, \
             or not a safetensors file)"
        ));
    }
    let header_end = 8 + n as usize;
    let Ok(text) = std::str::from_utf8(&bytes[8..header_end]) else {
        return Some("the header is not UTF-8 text (not a safetensors file)".into());
    };
    let entries: serde_json::Map<String, serde_json::Value> = match serde_json::from_str(text) {
        Ok(map) => map,
        Err(e) => return Some(format!("the header is not a JSON object: {e}")),
    };
    let data_len = len - header_end;
    let mut infos = Vec::with_capacity(entries.len());
    for (name, value) in entries {
        if name == METADATA_KEY {
            if serde_json::from_value::<BTreeMap<String, String>>(value).is_err() {
                return Some(format!("`{METADATA_KEY}` is not a map of strings to strings"));
            }
            continue;
        }
        match serde_json::from_value::<TensorInfo>(value) {
            Ok(info) => infos.push((name, info)),
            Err(e) => return Some(format!("tensor `{name}` has a bad header entry: {e}")),
        }
    }
    infos.sort_by_key(|(_, info)| info.data_offsets);
    let mut expected_start = 0usize;
    for (name, info) in &infos {
        let (start, end) = info.data_offsets;
        let needed = numel(&info.shape).and_then(|n| n.checked_mul(info.dtype.size()));
        if end < start {
            return Some(format!(
                "tensor `{name}` has data offsets [{start}, {end}), which end before they start"
            ));
        }
        if needed != Some(end - start) {
            return Some(format!(
                "tensor `{name}` of shape {:?} and dtype {:?} needs {} bytes but its data offsets \
                 [{start}, {end}) span {}",
                info.shape,
                info.dtype,
                needed.map_or_else(|| "more than usize".into(), |b| b.to_string()),
                end - start
            ));
        }
        if start != expected_start {
            return Some(format!(
                "tensor `{name}` starts at data offset {start}, expected {expected_start} \
                 (tensors must be contiguous, without gaps or overlaps)"
            ));
        }
        if end > data_len {
            return Some(format!(
                "tensor `{name}` has data offsets [{start}, {end}) beyond the end of the data \
                 ({data_len} bytes): the file is truncated"
            ));
        }
        expected_start = end;
    }
    if expected_start != data_len {
        return Some(format!(
            "the tensors use {expected_start} bytes of data but the file holds {data_len}"
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use safetensors::tensor::TensorView;
    use std::collections::HashMap;

    fn tensor(shape: &[usize], seed: u32) -> Tensor {
        let n: usize = shape.iter().product();
        // Awkward values: subnormals, negative zero, NaN payloads, extremes.
        let special = [
            f32::from_bits(1),
            -0.0,
            f32::from_bits(0x7fc0_1234),
            f32::MAX,
            f32::MIN_POSITIVE,
            f32::NEG_INFINITY,
        ];
        let data = (0..n)
            .map(|i| {
                let i = i as u32;
                if i % 7 == 3 {
                    special[(i as usize / 7) % special.len()]
                } else {
                    (i.wrapping_mul(2_654_435_761) ^ seed) as f32 / 1e9 - 2.0
                }
            })
            .collect();
        Tensor::new(shape.to_vec(), data).unwrap()
    }

    fn model() -> Checkpoint {
        let mut c = Checkpoint::new();
        c.insert_layer(0, tensor(&[5, 7], 1), Some(tensor(&[5, 5], 2)));
        c.insert_layer(1, tensor(&[4, 5], 3), None);
        c.insert_layer(2, tensor(&[3, 4], 4), None);
        c.tensors.insert("optim.adam.m.layers.0.weight".into(), tensor(&[5, 7], 5));
        c.tensors.insert("optim.t".into(), tensor(&[], 6));
        c.set_meta(META_CONFIG, r#"{"hidden":[5,4],"recurrent":true}"#);
        c.set_meta(META_VERSION, FORMAT_VERSION);
        c.set_meta(META_STEP, 1234u64);
        c.set_meta(META_EPOCH, 3);
        c.set_meta(META_RNG, "0123456789abcdef");
        c.set_meta("note", "ünïcödé \"quoted\"\n");
        c
    }

    fn bits(t: &Tensor) -> Vec<u32> {
        t.data.iter().map(|v| v.to_bits()).collect()
    }

    fn err_of<T: fmt::Debug>(r: anyhow::Result<T>) -> String {
        format!("{:#}", r.unwrap_err())
    }

    /// Writes a file with the safetensors crate itself, as another tool would.
    fn write_raw(
        path: &Path,
        tensors: &[(&str, Dtype, Vec<usize>, Vec<u8>)],
        meta: Option<HashMap<String, String>>,
    ) {
        let views: Vec<(&str, TensorView<'_>)> = tensors
            .iter()
            .map(|(n, d, s, b)| (*n, TensorView::new(*d, s.clone(), b).unwrap()))
            .collect();
        std::fs::write(path, safetensors::serialize(views, &meta).unwrap()).unwrap();
    }

    fn f32_bytes(values: &[f32]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    fn dir_entries(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn round_trip_is_bit_exact_for_data_and_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.safetensors");
        let original = model();
        original.save(&path).unwrap();
        let loaded = Checkpoint::load(&path).unwrap();
        assert_eq!(loaded.source.as_deref(), Some(path.as_path()));
        assert_eq!(loaded.metadata, original.metadata);
        assert_eq!(
            loaded.tensors.keys().collect::<Vec<_>>(),
            original.tensors.keys().collect::<Vec<_>>()
        );
        for (name, t) in &original.tensors {
            let l = &loaded.tensors[name];
            assert_eq!(l.shape, t.shape, "{name}");
            assert_eq!(bits(l), bits(t), "{name}");
        }
        assert_eq!(loaded.meta_parse::<u64>(META_STEP).unwrap(), 1234);
        assert_eq!(loaded.meta_parse::<u32>(META_EPOCH).unwrap(), 3);
        assert_eq!(loaded.meta(META_RNG), Some("0123456789abcdef"));
        let config: serde_json::Value = loaded.meta_json(META_CONFIG).unwrap();
        assert_eq!(config["recurrent"], true);
        assert_eq!(dir_entries(dir.path()), ["c.safetensors"]);
    }

    #[test]
    fn saved_bytes_are_deterministic_and_readable_by_the_safetensors_crate() {
        let a = model().to_bytes().unwrap();
        let b = model().to_bytes().unwrap();
        assert_eq!(a, b);
        let st = SafeTensors::deserialize(&a).unwrap();
        assert_eq!(st.len(), 6);
        let w = st.tensor("layers.1.weight").unwrap();
        assert_eq!(w.dtype(), Dtype::F32);
        assert_eq!(w.shape(), [4, 5]);
        assert_eq!(w.data(), f32_bytes(&model().tensors["layers.1.weight"].data));
        let (_, header) = SafeTensors::read_metadata(&a).unwrap();
        let meta = header.metadata().clone().unwrap();
        assert_eq!(meta.get(META_STEP).map(String::as_str), Some("1234"));
        // The header is padded to 8 bytes, as the safetensors crate pads it.
        let n = u64::from_le_bytes(a[..8].try_into().unwrap());
        assert_eq!(n % 8, 0);
    }

    #[test]
    fn bytes_equal_the_safetensors_crate_serialization() {
        // With at most one metadata key the crate's output is deterministic too: ours must match.
        let mut c = model();
        for meta in [None, Some(HashMap::from([(META_VERSION.into(), "1".into())]))] {
            c.metadata = meta.clone().unwrap_or_default().into_iter().collect();
            let bytes: Vec<(String, Vec<u8>)> =
                c.tensors.iter().map(|(n, t)| (n.clone(), f32_bytes(&t.data))).collect();
            let views: Vec<(&str, TensorView<'_>)> = bytes
                .iter()
                .map(|(n, b)| {
                    let shape = c.tensors[n].shape.clone();
                    (n.as_str(), TensorView::new(Dtype::F32, shape, b).unwrap())
                })
                .collect();
            let theirs = safetensors::serialize(views, &meta).unwrap();
            assert_eq!(c.to_bytes().unwrap(), theirs);
        }
    }

    #[test]
    fn tensors_only_file_without_metadata_loads() {
        // As Python `safetensors.torch.save_file({...})` writes it: no `__metadata__`.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("init.safetensors");
        let w0: Vec<f32> = (0..6).map(|i| i as f32 * 0.25).collect();
        let w1: Vec<f32> = (0..4).map(|i| -(i as f32)).collect();
        write_raw(
            &path,
            &[
                ("layers.0.weight", Dtype::F32, vec![3, 2], f32_bytes(&w0)),
                ("layers.1.weight", Dtype::F32, vec![1, 3], f32_bytes(&w1[..3])),
            ],
            None,
        );
        let before = std::fs::read(&path).unwrap();
        let c = Checkpoint::load(&path).unwrap();
        assert!(c.metadata.is_empty());
        assert_eq!(c.meta(META_VERSION), None);
        let layers = c.layer_weights().unwrap();
        assert_eq!(layers.len(), 2);
        assert_eq!(layers[0].weight.data, w0);
        assert_eq!((layers[1].neurons(), layers[1].inputs()), (1, 3));
        assert!(layers.iter().all(|l| l.recurrent.is_none()));
        // Loading never modifies anything.
        assert_eq!(std::fs::read(&path).unwrap(), before);
        assert_eq!(dir_entries(dir.path()), ["init.safetensors"]);
        let msg = err_of(c.meta_parse::<u64>(META_STEP));
        assert!(msg.contains("init.safetensors") && msg.contains(META_STEP), "{msg}");
    }

    #[test]
    fn missing_file_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent.safetensors");
        let msg = err_of(Checkpoint::load(&path));
        assert!(msg.contains("absent.safetensors"), "{msg}");
        assert!(msg.contains("No such file"), "{msg}");
    }

    #[test]
    fn truncated_file_is_rejected_at_every_cut() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.safetensors");
        let bytes = model().to_bytes().unwrap();
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        for cut in [0, 5, 8, 8 + n / 2, 8 + n, 8 + n + 10, bytes.len() - 1] {
            std::fs::write(&path, &bytes[..cut]).unwrap();
            let msg = err_of(Checkpoint::load(&path));
            assert!(msg.contains("t.safetensors"), "cut {cut}: {msg}");
            assert!(msg.contains("not a valid safetensors file"), "cut {cut}: {msg}");
        }
        // Cut inside the data: the message says which tensor and that the file is truncated.
        std::fs::write(&path, &bytes[..bytes.len() - 1]).unwrap();
        let msg = err_of(Checkpoint::load(&path));
        assert!(msg.contains("truncated"), "{msg}");
        assert!(msg.contains("tensor `optim.t`"), "{msg}");
        // Cut inside the header: the length field points past the end.
        std::fs::write(&path, &bytes[..8 + n / 2]).unwrap();
        let msg = err_of(Checkpoint::load(&path));
        assert!(msg.contains("header length field"), "{msg}");
        std::fs::write(&path, b"").unwrap();
        assert!(err_of(Checkpoint::load(&path)).contains("empty"));
    }

    #[test]
    fn garbage_and_bad_headers_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.safetensors");
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"this is not a checkpoint at all".to_vec(), "header length field"),
            (header_file(b"{not json"), "not a JSON object"),
            (header_file(&[0xff, 0xfe, b'{', b'}']), "not UTF-8"),
            (
                header_file(br#"{"w":{"dtype":"F99","shape":[1],"data_offsets":[0,4]}}"#),
                "tensor `w` has a bad header entry",
            ),
            (
                with_data(br#"{"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,12]}}"#, 12),
                "tensor `w` of shape [2, 2] and dtype F32 needs 16 bytes",
            ),
            (
                with_data(br#"{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#, 8),
                "use 4 bytes of data but the file holds 8",
            ),
            (
                with_data(br#"{"w":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#, 8),
                "tensor `w` starts at data offset 4, expected 0",
            ),
            (header_file(br#"{"__metadata__":{"a":1}}"#), "not a map of strings"),
        ];
        for (bytes, expected) in cases {
            std::fs::write(&path, &bytes).unwrap();
            let msg = err_of(Checkpoint::load(&path));
            assert!(msg.contains("g.safetensors"), "{msg}");
            assert!(msg.contains(expected), "expected {expected:?} in: {msg}");
        }
    }

    fn header_file(header: &[u8]) -> Vec<u8> {
        with_data(header, 0)
    }

    fn with_data(header: &[u8], data_len: usize) -> Vec<u8> {
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header);
        bytes.resize(bytes.len() + data_len, 0);
        bytes
    }

    #[test]
    fn wrong_dtype_names_file_tensor_and_dtypes() {
        let dir = tempfile::tempdir().unwrap();
        for (dtype, size) in [(Dtype::F64, 8), (Dtype::F16, 2), (Dtype::BF16, 2), (Dtype::I32, 4)] {
            let path = dir.path().join("d.safetensors");
            write_raw(
                &path,
                &[
                    ("layers.0.weight", dtype, vec![2, 3], vec![0u8; 6 * size]),
                    ("layers.1.weight", Dtype::F32, vec![1, 2], vec![0u8; 8]),
                ],
                None,
            );
            let msg = err_of(Checkpoint::load(&path));
            assert!(msg.contains("d.safetensors"), "{msg}");
            let expected = format!("tensor `layers.0.weight` has dtype {dtype:?}, expected F32");
            assert!(msg.contains(&expected), "{msg}");
        }
    }

    #[test]
    fn tensor_checks_presence_and_shape() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.safetensors");
        model().save(&path).unwrap();
        let c = Checkpoint::load(&path).unwrap();
        assert_eq!(c.tensor("layers.1.weight", &[4, 5]).unwrap().shape, [4, 5]);
        assert_eq!(c.tensor("optim.t", &[]).unwrap().numel(), 1);

        let msg = err_of(c.tensor("layers.7.weight", &[2, 2]));
        assert!(msg.contains("s.safetensors"), "{msg}");
        assert!(msg.contains("no tensor `layers.7.weight`"), "{msg}");
        assert!(msg.contains("layers.0.recurrent"), "lists what is there: {msg}");

        let msg = err_of(c.tensor("layers.1.weight", &[5, 4]));
        assert!(msg.contains("s.safetensors"), "{msg}");
        assert!(
            msg.contains("tensor `layers.1.weight` has shape [4, 5], expected [5, 4]"),
            "{msg}"
        );
        let msg = err_of(model().tensor("layers.1.weight", &[4]));
        assert!(msg.contains("checkpoint (in memory)"), "{msg}");
    }

    #[test]
    fn layer_weights_reads_chained_layers_and_recurrence() {
        let layers = model().layer_weights().unwrap();
        assert_eq!(layers.len(), 3);
        let dims: Vec<_> = layers.iter().map(|l| (l.neurons(), l.inputs())).collect();
        assert_eq!(dims, [(5, 7), (4, 5), (3, 4)]);
        assert_eq!(layers[0].recurrent.as_ref().unwrap().shape, [5, 5]);
        assert!(layers[1].recurrent.is_none());
        assert_eq!(layers[2].weight, model().tensors["layers.2.weight"]);
    }

    #[test]
    fn layer_weights_rejects_chain_mismatch() {
        let mut c = model();
        c.insert_layer(1, tensor(&[4, 6], 9), None);
        let msg = err_of(c.layer_weights());
        assert!(msg.contains("`layers.1.weight` has shape [4, 6]"), "{msg}");
        assert!(msg.contains("6 columns"), "{msg}");
        assert!(msg.contains("5 rows"), "{msg}");
        assert!(msg.contains("`layers.0.weight` [5, 7]"), "{msg}");
    }

    #[test]
    fn layer_weights_rejects_bad_recurrent_shape() {
        let mut c = model();
        c.insert_layer(1, tensor(&[4, 5], 3), Some(tensor(&[4, 5], 8)));
        let msg = err_of(c.layer_weights());
        assert!(msg.contains("`layers.1.recurrent` has shape [4, 5], expected [4, 4]"), "{msg}");
    }

    #[test]
    fn layer_weights_rejects_missing_first_layer_and_gaps() {
        let mut c = model();
        c.tensors.remove("layers.0.weight");
        let msg = err_of(c.layer_weights());
        assert!(msg.contains("no tensor `layers.0.weight`"), "{msg}");

        let mut c = model();
        c.tensors.remove("layers.1.weight");
        let msg = err_of(c.layer_weights());
        assert!(msg.contains("no tensor `layers.1.weight`"), "{msg}");
        assert!(msg.contains("up to 2"), "{msg}");

        // A recurrent matrix past the last weight is a gap too.
        let mut c = model();
        c.tensors.insert(recurrent_name(3), tensor(&[3, 3], 1));
        let msg = err_of(c.layer_weights());
        assert!(msg.contains("no tensor `layers.3.weight`"), "{msg}");

        let msg = err_of(Checkpoint::new().layer_weights());
        assert!(msg.contains("no tensor `layers.0.weight`"), "{msg}");
        assert!(msg.contains("no tensors"), "{msg}");
    }

    #[test]
    fn layer_weights_rejects_unknown_layer_tensors_and_bad_ranks() {
        for name in ["layers.0.bias", "layers.01.weight", "layers.x.weight", "layers.0"] {
            let mut c = model();
            c.tensors.insert(name.into(), tensor(&[5], 1));
            let msg = err_of(c.layer_weights());
            assert!(msg.contains(&format!("unexpected tensor `{name}`")), "{msg}");
        }
        for shape in [&[35][..], &[5, 7, 1], &[0, 7]] {
            let mut c = model();
            c.insert_layer(0, tensor(shape, 1), None);
            let msg = err_of(c.layer_weights());
            assert!(msg.contains("`layers.0.weight` has shape"), "{msg}");
            assert!(msg.contains("[neurons, inputs]"), "{msg}");
        }
    }

    #[test]
    fn meta_parse_reports_missing_and_bad_values() {
        let mut c = model();
        c.set_meta(META_STEP, "twelve");
        let msg = err_of(c.meta_parse::<u64>(META_STEP));
        assert!(msg.contains("`spiketile.step`") && msg.contains("\"twelve\""), "{msg}");
        assert!(msg.contains("u64"), "{msg}");
        let msg = err_of(c.meta_parse::<u64>("spiketile.nope"));
        assert!(msg.contains("no metadata `spiketile.nope`"), "{msg}");
        assert!(err_of(c.meta_json::<serde_json::Value>(META_RNG)).contains("not valid JSON"));
    }

    #[test]
    fn other_format_version_is_rejected() {
        let mut c = model();
        c.set_meta(META_VERSION, "2");
        let msg = err_of(Checkpoint::from_bytes(&c.to_bytes().unwrap()));
        assert!(msg.contains("format version \"2\""), "{msg}");
    }

    #[test]
    fn inconsistent_tensor_is_not_written_and_old_file_survives() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keep.safetensors");
        model().save(&path).unwrap();
        let before = std::fs::read(&path).unwrap();
        let mut bad = model();
        bad.tensors.get_mut("layers.2.weight").unwrap().data.pop();
        let msg = err_of(bad.save(&path));
        assert!(msg.contains("keep.safetensors"), "{msg}");
        assert!(msg.contains("tensor `layers.2.weight`"), "{msg}");
        assert!(msg.contains("12 elements but the data has 11"), "{msg}");
        let mut reserved = model();
        reserved.tensors.insert(METADATA_KEY.into(), tensor(&[1], 0));
        assert!(err_of(reserved.save(&path)).contains("reserved"));
        assert_eq!(std::fs::read(&path).unwrap(), before);
        assert_eq!(dir_entries(dir.path()), ["keep.safetensors"]);
        assert!(Tensor::new(vec![2, 2], vec![0.0; 3]).is_err());
    }

    #[test]
    fn failed_save_into_missing_directory_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing").join("c.safetensors");
        let msg = err_of(model().save(&path));
        assert!(msg.contains("c.safetensors"), "{msg}");
        assert!(dir_entries(dir.path()).is_empty());
    }

    #[test]
    fn empty_checkpoint_and_empty_tensors_round_trip() {
        let c = Checkpoint::from_bytes(&Checkpoint::new().to_bytes().unwrap()).unwrap();
        assert!(c.tensors.is_empty() && c.metadata.is_empty());
        let mut c = Checkpoint::new();
        c.tensors.insert("optim.empty".into(), Tensor::zeros(vec![0, 3]));
        let back = Checkpoint::from_bytes(&c.to_bytes().unwrap()).unwrap();
        assert_eq!(back.tensors["optim.empty"], Tensor::zeros(vec![0, 3]));
    }
}
