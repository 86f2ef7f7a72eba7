//! Reading a checkpoint: parsing and validating a safetensors file, and explaining in words
//! why a file is not one.

use super::{numel, Checkpoint, Origin, Tensor, FORMAT_VERSION, METADATA_KEY, META_VERSION};
use anyhow::{anyhow, bail, Context as _};
use safetensors::tensor::TensorInfo;
use safetensors::{Dtype, SafeTensors};
use std::collections::BTreeMap;
use std::path::Path;

impl Checkpoint {
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
