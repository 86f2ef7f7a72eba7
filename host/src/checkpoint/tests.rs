//! Tests of checkpoints: round trips bit for bit, files from other tools, and every way a file
//! can be broken.

use super::*;
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
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
    assert!(msg.contains("tensor `layers.1.weight` has shape [4, 5], expected [5, 4]"), "{msg}");
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
