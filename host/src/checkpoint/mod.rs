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

mod read;
#[cfg(test)]
mod tests;
mod write;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{anyhow, bail, Context as _};

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
}
