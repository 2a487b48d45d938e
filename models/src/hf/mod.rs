//! Hugging Face model directories: `config.json` → configs ([`config`]), safetensors weights →
//! modules and back ([`checkpoint`]).

pub mod blip2_config;
mod blip2_legacy;
pub mod checkpoint;
pub mod clip_config;
pub mod config;

pub use blip2_config::blip2_config;
pub use checkpoint::{
    LoadError, LoadOptions, LoadReport, load_weights, save_weights, weight_files,
};
pub use clip_config::clip_config;
pub use config::{
    ConfigError, HfModelConfig, decoder_config, llava_config, llava_to_hf, parse_config,
    read_config, read_config_json, vision_config,
};

use std::path::Path;

use burn::store::ModuleSnapshot;
use burn::tensor::Device;

use crate::blip2::{Blip2, Blip2Config};
use crate::clip::{Clip, ClipConfig, vision_to_hf};
use crate::llava::{Llava, LlavaConfig};
use crate::llm::{DecoderConfig, DecoderLm};
use crate::vit::{VisionConfig, VisionTransformer};

/// Why a model directory could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum HfError {
    /// `config.json` is unreadable or unsupported.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The weights do not fit the config.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The directory holds another kind of model.
    #[error("{dir} holds a {found} model, expected {expected}")]
    Kind {
        /// The directory.
        dir: String,
        /// What was asked for.
        expected: &'static str,
        /// What the config says.
        found: &'static str,
    },
}

fn kind(c: &HfModelConfig) -> &'static str {
    match c {
        HfModelConfig::Llava(_) => "llava",
        HfModelConfig::Decoder(_) => "causal LM",
        HfModelConfig::Vision(_) => "CLIP vision",
        HfModelConfig::Blip2(_) => "BLIP-2",
    }
}

/// Read `dir/config.json`, check it describes the wanted kind (`pick` returns its config),
/// build the module with `init` and load the weights with `key_map`.
fn open<C, M: ModuleSnapshot>(
    dir: &Path,
    expected: &'static str,
    pick: impl FnOnce(&HfModelConfig) -> Option<C>,
    init: impl FnOnce(&C) -> M,
    key_map: &[(String, String)],
) -> Result<(M, C, LoadReport), HfError> {
    let found = read_config(dir)?;
    let config = pick(&found).ok_or_else(|| HfError::Kind {
        dir: dir.display().to_string(),
        expected,
        found: kind(&found),
    })?;
    let mut model = init(&config);
    let report = load_weights(&mut model, dir, key_map, &LoadOptions::default())?;
    Ok((model, config, report))
}

/// Open a `LlavaForConditionalGeneration` directory at full size on `device`.
pub fn load_llava(
    dir: &Path,
    device: &Device,
) -> Result<(Llava, LlavaConfig, LoadReport), HfError> {
    let pick = |c: &HfModelConfig| match c {
        HfModelConfig::Llava(c) => Some(c.clone()),
        _ => None,
    };
    open(
        dir,
        "llava",
        pick,
        |c: &LlavaConfig| c.init(device),
        &crate::llava::hf_key_map(),
    )
}

/// Open a `Blip2ForConditionalGeneration` / `InstructBlipForConditionalGeneration` directory
/// (LLaMA-family LM) on `device`: transformers 5's layout, or the hub's older one with the
/// vision attention's `q_bias`/`v_bias` (fused on load).
pub fn load_blip2(
    dir: &Path,
    device: &Device,
) -> Result<(Blip2, Blip2Config, LoadReport), HfError> {
    let found = read_config(dir)?;
    let HfModelConfig::Blip2(config) = found else {
        return Err(HfError::Kind {
            dir: dir.display().to_string(),
            expected: "BLIP-2",
            found: kind(&found),
        });
    };
    let mut model = config.init(device);
    // Missing and unexpected tensors are checked by the legacy pass (which fuses the
    // pre-transformers-5 `q_bias`/`v_bias` pairs and refuses anything else).
    let options = LoadOptions {
        allow_missing: true,
        allow_unexpected: true,
    };
    let mut report = load_weights(&mut model, dir, &crate::blip2::hf_key_map(), &options)?;
    blip2_legacy::fuse_legacy_qkv_bias(&mut model, dir, &mut report)?;
    Ok((model, config, report))
}

/// Open a `LlamaForCausalLM` / `Qwen2ForCausalLM` directory on `device`.
pub fn load_decoder(
    dir: &Path,
    device: &Device,
) -> Result<(DecoderLm, DecoderConfig, LoadReport), HfError> {
    let pick = |c: &HfModelConfig| match c {
        HfModelConfig::Decoder(c) => Some(c.clone()),
        _ => None,
    };
    open(
        dir,
        "causal LM",
        pick,
        |c: &DecoderConfig| c.init(device),
        &crate::llm::hf_key_map(""),
    )
}

/// Open a `CLIPVisionModel` directory on `device`.
pub fn load_vision(
    dir: &Path,
    device: &Device,
) -> Result<(VisionTransformer, VisionConfig, LoadReport), HfError> {
    let pick = |c: &HfModelConfig| match c {
        HfModelConfig::Vision(c) => Some(c.clone()),
        _ => None,
    };
    open(
        dir,
        "CLIP vision",
        pick,
        |c: &VisionConfig| c.init(device),
        &crate::vit::hf_key_map(""),
    )
}

/// Load an original LLaVA projector file (`mm_projector.bin` converted to safetensors, keys
/// `model.mm_projector.{0,2}`) into an existing model.
pub fn load_projector(model: &mut Llava, file: &Path) -> Result<LoadReport, HfError> {
    let options = LoadOptions {
        allow_missing: true,
        allow_unexpected: false,
    };
    let report = load_weights(model, file, &crate::llava::hf_key_map(), &options)?;
    if !report
        .applied
        .iter()
        .all(|p| p.starts_with("multi_modal_projector."))
        || report.applied.is_empty()
    {
        return Err(
            LoadError::Apply(format!("{} holds no projector weights", file.display())).into(),
        );
    }
    Ok(report)
}

/// Save a LLaVA model as a transformers-5 directory: `config.json` + `model.safetensors`.
pub fn save_llava(model: &Llava, config: &LlavaConfig, dir: &Path) -> Result<(), HfError> {
    save_weights(model, dir, &crate::llava::hf_save_map())?;
    let path = dir.join("config.json");
    let text = serde_json::to_string_pretty(&llava_to_hf(config)).expect("json");
    std::fs::write(&path, text).map_err(|e| LoadError::File {
        path,
        message: e.to_string(),
    })?;
    Ok(())
}

/// Open a `CLIPModel` directory (both towers, projections, temperature) on `device`.
pub fn load_clip(dir: &Path, device: &Device) -> Result<(Clip, ClipConfig, LoadReport), HfError> {
    let value = read_config_json(dir)?;
    let found = parse_config(&value)?;
    if !matches!(found, HfModelConfig::Vision(_))
        || value.get("text_config").is_none_or(|t| t.is_null())
    {
        return Err(HfError::Kind {
            dir: dir.display().to_string(),
            expected: "CLIP",
            found: kind(&found),
        });
    }
    let config = clip_config(&value)?;
    let mut model = config.init(device);
    let report = load_weights(
        &mut model,
        dir,
        &crate::clip::hf_key_map(),
        &LoadOptions::default(),
    )?;
    Ok((model, config, report))
}

/// Save a CLIP model as a transformers directory: `config.json` + `model.safetensors`.
pub fn save_clip(model: &Clip, config: &ClipConfig, dir: &Path) -> Result<(), HfError> {
    save_weights(model, dir, &crate::clip::hf_save_map())?;
    write_json(dir, &config.to_hf())
}

/// Save a vision tower as a `CLIPVisionModel` directory (what `--vision` and LLaVA's
/// `vision_tower` take).
pub fn save_vision(
    tower: &VisionTransformer,
    config: &VisionConfig,
    dir: &Path,
) -> Result<(), HfError> {
    save_weights(tower, dir, &crate::vit::hf_save_map("", true))?;
    let act = serde_json::to_value(config.hidden_act).expect("json");
    let mut value = vision_to_hf(config, act);
    value["architectures"] = serde_json::json!(["CLIPVisionModel"]);
    write_json(dir, &value)
}

fn write_json(dir: &Path, value: &serde_json::Value) -> Result<(), HfError> {
    let path = dir.join("config.json");
    let text = serde_json::to_string_pretty(value).expect("json");
    std::fs::write(&path, text).map_err(|e| LoadError::File {
        path,
        message: e.to_string(),
    })?;
    Ok(())
}
