//! Writing a checkpoint: validation, the safetensors header in a fixed order, atomic save.

use super::{Checkpoint, Origin, METADATA_KEY};
use anyhow::{anyhow, bail, Context as _};
use safetensors::tensor::TensorInfo;
use safetensors::Dtype;
use serde::ser::{SerializeMap, Serializer};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

impl Checkpoint {
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
