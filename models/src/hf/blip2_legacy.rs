//! BLIP-2 / InstructBLIP checkpoints saved before transformers 5 (the hub's Salesforce
//! repositories) keep the vision attention's bias as two tensors, `self_attn.q_bias` and
//! `self_attn.v_bias` (the key bias is zero); transformers 5 fuses them into `qkv.bias`. A key
//! map cannot fuse tensors, so after the regular load the two are read here (only their bytes:
//! a shard is never read whole) and the fused bias `[q, 0, v]` is set.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use burn::module::Param;
use burn::tensor::{DType, Tensor, TensorData};

use super::checkpoint::{LoadError, LoadReport, weight_files};
use crate::blip2::Blip2;

const PREFIX: &str = "vision_model.encoder.layers.";

/// The layer index of `vision_model.encoder.layers.<i>.self_attn.<suffix>`.
fn layer_of(key: &str, suffix: &str) -> Option<usize> {
    key.strip_prefix(PREFIX)?
        .strip_suffix(&format!(".self_attn.{suffix}"))?
        .parse()
        .ok()
}

/// A tensor of a safetensors file, as f32 (F32, F16 or BF16), or `None` when the file lacks it.
fn read_tensor(file: &Path, key: &str) -> Result<Option<Vec<f32>>, LoadError> {
    let err = |m: String| LoadError::File {
        path: file.to_path_buf(),
        message: m,
    };
    let mut f = std::fs::File::open(file).map_err(|e| err(e.to_string()))?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len).map_err(|e| err(e.to_string()))?;
    let n = u64::from_le_bytes(len) as usize;
    let mut header = vec![0u8; n];
    f.read_exact(&mut header).map_err(|e| err(e.to_string()))?;
    let header: serde_json::Value =
        serde_json::from_slice(&header).map_err(|e| err(format!("header: {e}")))?;
    let Some(entry) = header.get(key) else {
        return Ok(None);
    };
    let bad = || err(format!("{key}: malformed header entry {entry}"));
    let shape: Vec<usize> = entry["shape"]
        .as_array()
        .ok_or_else(bad)?
        .iter()
        .map(|d| d.as_u64().map(|d| d as usize).ok_or_else(bad))
        .collect::<Result<_, _>>()?;
    let offsets = entry["data_offsets"].as_array().ok_or_else(bad)?;
    let (start, end) = (
        offsets.first().and_then(|v| v.as_u64()).ok_or_else(bad)?,
        offsets.get(1).and_then(|v| v.as_u64()).ok_or_else(bad)?,
    );
    let dtype = match entry["dtype"].as_str() {
        Some("F32") => DType::F32,
        Some("F16") => DType::F16,
        Some("BF16") => DType::BF16,
        other => {
            return Err(err(format!(
                "{key}: dtype {other:?} (expected F32, F16, BF16)"
            )));
        }
    };
    let mut bytes = vec![0u8; end.saturating_sub(start) as usize];
    f.seek(SeekFrom::Start(8 + n as u64 + start))
        .and_then(|_| f.read_exact(&mut bytes))
        .map_err(|e| err(format!("{key}: {e}")))?;
    let data = TensorData::from_bytes_vec(bytes, shape, dtype).convert::<f32>();
    let values = data
        .try_into_vec::<f32>()
        .map_err(|e| err(format!("{key}: {e:?}")))?;
    Ok(Some(values))
}

/// The tensor `key` from whichever weight file of `dir` holds it.
fn find(files: &[std::path::PathBuf], key: &str) -> Result<Vec<f32>, LoadError> {
    for file in files {
        if let Some(v) = read_tensor(file, key)? {
            return Ok(v);
        }
    }
    Err(LoadError::Missing(vec![key.to_string()]))
}

/// After a load that allowed missing and unexpected tensors: fuse legacy `q_bias`/`v_bias`
/// pairs into the vision layers' `qkv.bias`; anything else missing or unexpected is an error.
pub(super) fn fuse_legacy_qkv_bias(
    model: &mut Blip2,
    dir: &Path,
    report: &mut LoadReport,
) -> Result<(), LoadError> {
    let (legacy_missing, missing): (Vec<String>, Vec<String>) = report
        .missing
        .drain(..)
        .partition(|k| layer_of(k, "qkv.bias").is_some());
    let (legacy_unused, unused): (Vec<String>, Vec<String>) = report
        .unused
        .drain(..)
        .partition(|k| layer_of(k, "q_bias").is_some() || layer_of(k, "v_bias").is_some());
    if !missing.is_empty() {
        return Err(LoadError::Missing(missing));
    }
    if !unused.is_empty() {
        return Err(LoadError::Unexpected(unused));
    }
    let files = weight_files(dir)?;
    for key in &legacy_missing {
        let i = layer_of(key, "qkv.bias").expect("partitioned above");
        let q = find(&files, &format!("{PREFIX}{i}.self_attn.q_bias"))?;
        let v = find(&files, &format!("{PREFIX}{i}.self_attn.v_bias"))?;
        let d = q.len();
        let qkv = &mut model.vision_model.encoder.layers[i].self_attn.qkv;
        let device = qkv.weight.device();
        let mut fused = q;
        fused.extend(std::iter::repeat_n(0.0, d));
        fused.extend(v);
        let expected = qkv.weight.dims()[1];
        if fused.len() != expected {
            return Err(LoadError::Shape {
                key: key.clone(),
                expected: vec![expected],
                found: vec![fused.len()],
            });
        }
        qkv.bias = Some(Param::from_tensor(Tensor::from_data(
            TensorData::new(fused, [expected]),
            &device,
        )));
        report.applied.push(key.clone());
    }
    report
        .ignored
        .extend(legacy_unused.into_iter().map(|k| format!("{k} (fused)")));
    Ok(())
}
