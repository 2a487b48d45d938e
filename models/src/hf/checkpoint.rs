//! Loading Hugging Face safetensors checkpoints into vlalign modules, and saving them back.
//!
//! Goes through `burn-store`: a [`SafetensorsStore`] per file with the PyTorch→Burn adapter
//! (linear weights transposed, norm `weight`/`bias` → `gamma`/`beta`), a cast of every float to
//! f32 (bf16/f16 checkpoints), and the model's key map (regex pairs, one list next to each
//! model). burn-store has no reader for sharded checkpoints: `model.safetensors.index.json` is
//! read here and the shards are applied one by one. Loading never half-succeeds silently: a
//! missing parameter, an unexpected tensor or a shape mismatch is an error naming it, and the
//! report lists what was applied, missing and unused.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use burn::store::burn_pack::Tensor as PackTensor;
use burn::store::{
    BurnToPyTorchAdapter, FloatCastAdapter, KeyRemapper, ModuleAdapter, ModuleContext,
    ModuleSnapshot, PyTorchToBurnAdapter, SafetensorsStore, bridge,
};
use burn::tensor::{DType, Shape, TensorData};

/// Tensors that checkpoints carry but models recompute (rotary tables, position ids).
const BUFFERS: [&str; 3] = ["rotary_emb.inv_freq", "position_ids", "num_batches_tracked"];

/// Why weights could not be loaded or saved.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// No weight file where one was expected.
    #[error("no weights in {0}: expected model.safetensors or model.safetensors.index.json")]
    NoWeights(PathBuf),
    /// A file could not be read or parsed.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// Parameters of the model that no file provides.
    #[error("{} parameter(s) missing from the checkpoint, e.g. {}", .0.len(), .0.iter().take(5).cloned().collect::<Vec<_>>().join(", "))]
    Missing(Vec<String>),
    /// Tensors in the checkpoint that the model has no place for.
    #[error("{} unexpected tensor(s) in the checkpoint, e.g. {}", .0.len(), .0.iter().take(5).cloned().collect::<Vec<_>>().join(", "))]
    Unexpected(Vec<String>),
    /// A tensor whose shape differs from the model's parameter.
    #[error(
        "shape mismatch for {key}: the model expects {expected:?}, the checkpoint has {found:?}"
    )]
    Shape {
        /// The model path.
        key: String,
        /// The model's shape.
        expected: Vec<usize>,
        /// The checkpoint's shape.
        found: Vec<usize>,
    },
    /// Anything else burn-store reported for a tensor.
    #[error("{0}")]
    Apply(String),
}

/// What loading may tolerate.
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// Leave parameters the files do not provide as they are (e.g. a projector-only file).
    pub allow_missing: bool,
    /// Ignore tensors the model has no place for.
    pub allow_unexpected: bool,
}

/// What a load did.
#[derive(Clone, Debug, Default)]
pub struct LoadReport {
    /// Files read.
    pub files: Vec<PathBuf>,
    /// Model paths that received a tensor.
    pub applied: Vec<String>,
    /// Model paths no file provided (only with `allow_missing`).
    pub missing: Vec<String>,
    /// Checkpoint tensors without a place (only with `allow_unexpected`), after remapping.
    pub unused: Vec<String>,
    /// Checkpoint buffers deliberately not loaded (rotary tables, a tied LM head).
    pub ignored: Vec<String>,
}

impl std::fmt::Display for LoadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} file(s): applied {}, missing {}, unused {}, ignored buffers {}",
            self.files.len(),
            self.applied.len(),
            self.missing.len(),
            self.unused.len(),
            self.ignored.len()
        )
    }
}

/// The weight files of a model directory (shards in index order), or the file itself.
pub fn weight_files(path: &Path) -> Result<Vec<PathBuf>, LoadError> {
    if path.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let index = path.join("model.safetensors.index.json");
    if index.is_file() {
        let text = std::fs::read_to_string(&index).map_err(|e| LoadError::File {
            path: index.clone(),
            message: e.to_string(),
        })?;
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| LoadError::File {
                path: index.clone(),
                message: e.to_string(),
            })?;
        let map = value
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| LoadError::File {
                path: index.clone(),
                message: "no `weight_map` object".into(),
            })?;
        let shards: BTreeSet<String> = map
            .values()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect();
        return shards
            .into_iter()
            .map(|s| {
                let p = path.join(&s);
                if p.is_file() {
                    Ok(p)
                } else {
                    Err(LoadError::File {
                        path: p,
                        message: "shard listed in model.safetensors.index.json is missing".into(),
                    })
                }
            })
            .collect();
    }
    let single = path.join("model.safetensors");
    if single.is_file() {
        Ok(vec![single])
    } else {
        Err(LoadError::NoWeights(path.to_path_buf()))
    }
}

fn remapper(key_map: &[(String, String)]) -> Result<KeyRemapper, LoadError> {
    KeyRemapper::from_patterns(key_map.to_vec())
        .map_err(|e| LoadError::Apply(format!("bad key map: {e}")))
}

/// Load the safetensors weights at `path` (a file, or a directory with `model.safetensors` or
/// a sharded index) into `module`, renaming keys with `key_map` (HF → module paths).
pub fn load_weights<M: ModuleSnapshot>(
    module: &mut M,
    path: &Path,
    key_map: &[(String, String)],
    options: &LoadOptions,
) -> Result<LoadReport, LoadError> {
    let files = weight_files(path)?;
    let mut applied: BTreeSet<String> = BTreeSet::new();
    let mut missing: Option<BTreeSet<String>> = None;
    let mut unused: BTreeSet<String> = BTreeSet::new();
    for file in &files {
        let adapter = PyTorchToBurnAdapter
            .chain(FloatCastAdapter::to(DType::F32))
            .chain(Scalars::Load);
        let mut store = SafetensorsStore::from_file(file)
            .with_from_adapter(adapter)
            .remap(remapper(key_map)?)
            .allow_partial(true)
            .validate(false);
        let result = module.load_from(&mut store).map_err(|e| LoadError::File {
            path: file.clone(),
            message: e.to_string(),
        })?;
        if let Some(e) = result.errors.first() {
            return Err(match e {
                burn::store::ApplyError::ShapeMismatch {
                    path,
                    expected,
                    found,
                } => LoadError::Shape {
                    key: path.clone(),
                    expected: expected.to_vec(),
                    found: found.to_vec(),
                },
                other => LoadError::Apply(format!("{}: {other}", file.display())),
            });
        }
        applied.extend(result.applied);
        let here: BTreeSet<String> = result.missing.into_iter().map(|(p, _)| p).collect();
        missing = Some(match missing {
            None => here,
            Some(m) => m.intersection(&here).cloned().collect(),
        });
        unused.extend(result.unused);
    }
    let missing: Vec<String> = missing
        .unwrap_or_default()
        .into_iter()
        .filter(|p| !applied.contains(p))
        .collect();
    let tied_head = |k: &str| {
        k.ends_with("lm_head.weight") && !applied.iter().any(|a| a.ends_with("lm_head.weight"))
    };
    let (ignored, unused): (Vec<String>, Vec<String>) = unused
        .into_iter()
        .partition(|k| BUFFERS.iter().any(|b| k.ends_with(b)) || tied_head(k));
    if !missing.is_empty() && !options.allow_missing {
        return Err(LoadError::Missing(missing));
    }
    if !unused.is_empty() && !options.allow_unexpected {
        return Err(LoadError::Unexpected(unused));
    }
    Ok(LoadReport {
        files,
        applied: applied.into_iter().collect(),
        missing,
        unused,
        ignored,
    })
}

/// Save `module` as an HF-layout `model.safetensors` in `dir` (created), renaming module paths
/// with `key_map` (module → HF) and transposing linear weights back to PyTorch's layout.
pub fn save_weights<M: ModuleSnapshot>(
    module: &M,
    dir: &Path,
    key_map: &[(String, String)],
) -> Result<PathBuf, LoadError> {
    std::fs::create_dir_all(dir).map_err(|e| LoadError::File {
        path: dir.to_path_buf(),
        message: e.to_string(),
    })?;
    let file = dir.join("model.safetensors");
    let mut store = SafetensorsStore::from_file(&file)
        .with_to_adapter(BurnToPyTorchAdapter.chain(Scalars::Save))
        .remap(remapper(key_map)?)
        .metadata("format", "pt")
        .overwrite(true);
    module.save_into(&mut store).map_err(|e| LoadError::File {
        path: file.clone(),
        message: e.to_string(),
    })?;
    Ok(file)
}

/// Scalar parameters: HF checkpoints store them as rank-0 tensors (CLIP's `logit_scale`), Burn
/// modules hold them as `[1]`. Loading reshapes `[]` → `[1]`; saving reshapes the parameters
/// named in [`SCALARS`] back.
#[derive(Clone, Copy, Debug)]
enum Scalars {
    Load,
    Save,
}

/// Module parameters that are rank-0 tensors in HF checkpoints.
const SCALARS: [&str; 1] = ["logit_scale"];

impl ModuleAdapter for Scalars {
    fn adapt(&self, tensor: PackTensor, _ctx: ModuleContext<'_>) -> PackTensor {
        let shape = match self {
            Self::Load if tensor.shape.rank() == 0 => Shape::new([1]),
            Self::Save if SCALARS.iter().any(|s| tensor.name.ends_with(s)) => Shape::new([]),
            _ => return tensor,
        };
        let (name, dtype) = (tensor.name.clone(), tensor.dtype);
        let dims = shape.clone();
        bridge::map_data(tensor, name, dtype, shape, move |data| {
            let dtype = data.dtype();
            TensorData::from_bytes(data.into_bytes(), dims.clone(), dtype)
        })
    }

    fn clone_box(&self) -> Box<dyn ModuleAdapter> {
        Box::new(*self)
    }
}

/// `\.`-escape a literal key prefix for use in a key-map pattern.
pub(crate) fn escape(prefix: &str) -> String {
    prefix.replace('.', r"\.")
}
