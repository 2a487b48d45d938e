//! BLIP-2 / InstructBLIP checkpoints saved before transformers 5 (the hub's Salesforce
//! repositories) keep the vision attention's bias as two tensors, `self_attn.q_bias` and
//! `self_attn.v_bias` (the key bias is zero); transformers 5 fuses them into `qkv.bias`. A key
//! map cannot fuse tensors, so after the regular load the two are read here (only their bytes:
//! a shard is never read whole) and the fused bias `[q, 0, v]` is set.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use burn::module::Param;
use burn::tensor::{DType, Tensor, TensorData};
use safetensors::Dtype;
use safetensors::tensor::Metadata;

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

/// The largest header a safetensors file may have (the `safetensors` crate's own bound).
const MAX_HEADER_BYTES: u64 = 100_000_000;

/// A tensor of a safetensors file, as f32 (F32, F16 or BF16), or `None` when the file lacks it.
/// Only the header and that tensor's bytes are read. The header is bounded (at most 100 MB and
/// within the file) before anything is allocated, then parsed and validated by the `safetensors`
/// crate (contiguous offsets, each tensor's byte count equal to its shape × dtype, no overflow),
/// and its data must end where the file ends: a hostile header is an error naming the file.
fn read_tensor(file: &Path, key: &str) -> Result<Option<Vec<f32>>, LoadError> {
    let err = |m: String| LoadError::File {
        path: file.to_path_buf(),
        message: m,
    };
    let mut f = std::fs::File::open(file).map_err(|e| err(e.to_string()))?;
    let file_len = f.metadata().map_err(|e| err(e.to_string()))?.len();
    let mut len = [0u8; 8];
    f.read_exact(&mut len)
        .map_err(|e| err(format!("header length: {e}")))?;
    let n = u64::from_le_bytes(len);
    if n > MAX_HEADER_BYTES || n > file_len.saturating_sub(8) {
        return Err(err(format!(
            "the header claims {n} bytes; the file has {file_len} (headers are at most \
             {MAX_HEADER_BYTES} bytes)"
        )));
    }
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header)
        .map_err(|e| err(format!("header: {e}")))?;
    let metadata: Metadata =
        serde_json::from_slice(&header).map_err(|e| err(format!("header: {e}")))?;
    let data_len = file_len - 8 - n;
    if metadata.data_len() as u64 != data_len {
        return Err(err(format!(
            "the header's tensors span {} bytes; the file holds {data_len} after the header",
            metadata.data_len()
        )));
    }
    let Some(info) = metadata.info(key) else {
        return Ok(None);
    };
    let dtype = match info.dtype {
        Dtype::F32 => DType::F32,
        Dtype::F16 => DType::F16,
        Dtype::BF16 => DType::BF16,
        other => {
            return Err(err(format!(
                "{key}: dtype {other:?} (expected F32, F16, BF16)"
            )));
        }
    };
    let (start, end) = info.data_offsets;
    let mut bytes = vec![0u8; end - start];
    f.seek(SeekFrom::Start(8 + n + start as u64))
        .and_then(|_| f.read_exact(&mut bytes))
        .map_err(|e| err(format!("{key}: {e}")))?;
    let data = TensorData::from_bytes_vec(bytes, info.shape.clone(), dtype).convert::<f32>();
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A file of `header` (JSON) followed by `data` bytes.
    fn file(name: &str, header: &str, claimed: Option<u64>, data: &[u8]) -> std::path::PathBuf {
        let path = std::env::temp_dir().join(format!(
            "vlalign-legacy-{}-{name}.safetensors",
            std::process::id()
        ));
        let n = claimed.unwrap_or(header.len() as u64);
        let mut bytes = n.to_le_bytes().to_vec();
        bytes.extend(header.as_bytes());
        bytes.extend(data);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    fn error(path: &Path) -> String {
        let e = read_tensor(path, "t").unwrap_err().to_string();
        std::fs::remove_file(path).ok();
        assert!(e.contains(&path.display().to_string()), "{e}");
        e
    }

    #[test]
    fn a_valid_file_reads_the_tensor() {
        let data: Vec<u8> = [1.0f32, -2.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let path = file(
            "ok",
            r#"{"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#,
            None,
            &data,
        );
        assert_eq!(read_tensor(&path, "t").unwrap(), Some(vec![1.0, -2.0]));
        assert_eq!(read_tensor(&path, "other").unwrap(), None);
        std::fs::remove_file(&path).ok();
    }

    #[test]
    fn hostile_headers_are_errors_naming_the_file() {
        let header = r#"{"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
        // A header length of 2^60 bytes: refused before any allocation.
        let e = error(&file("huge", header, Some(1 << 60), &[0; 8]));
        assert!(e.contains("1152921504606846976"), "{e}");
        // Offsets past the end of the file.
        let e = error(&file(
            "past",
            r#"{"t":{"dtype":"F32","shape":[1024],"data_offsets":[0,4096]}}"#,
            None,
            &[0; 8],
        ));
        assert!(e.contains("4096"), "{e}");
        // Overlapping tensors.
        error(&file(
            "overlap",
            r#"{"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"u":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#,
            None,
            &[0; 12],
        ));
        // A byte count that is not the shape's, and a shape whose size overflows.
        error(&file(
            "size",
            r#"{"t":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#,
            None,
            &[0; 8],
        ));
        error(&file(
            "overflow",
            r#"{"t":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,8]}}"#,
            None,
            &[0; 8],
        ));
        // A dtype the fused bias cannot take, and a truncated file.
        let e = error(&file(
            "dtype",
            r#"{"t":{"dtype":"I64","shape":[1],"data_offsets":[0,8]}}"#,
            None,
            &[0; 8],
        ));
        assert!(e.contains("I64"), "{e}");
        error(&file("short", header, None, &[0; 4]));
    }
}
