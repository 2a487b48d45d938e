//! Hugging Face model directories: `config.json` → configs ([`config`]), safetensors weights →
//! modules and back ([`checkpoint`]).

pub mod checkpoint;
pub mod config;

pub use checkpoint::{
    LoadError, LoadOptions, LoadReport, load_weights, save_weights, weight_files,
};
pub use config::{
    ConfigError, HfModelConfig, decoder_config, llava_config, llava_to_hf, parse_config,
    read_config, vision_config,
};

use std::path::Path;

use burn::tensor::Device;

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
    }
}

/// Open a `LlavaForConditionalGeneration` directory at full size on `device`.
pub fn load_llava(
    dir: &Path,
    device: &Device,
) -> Result<(Llava, LlavaConfig, LoadReport), HfError> {
    match read_config(dir)? {
        HfModelConfig::Llava(config) => {
            let mut model = config.init(device);
            let report = load_weights(
                &mut model,
                dir,
                &crate::llava::hf_key_map(),
                &LoadOptions::default(),
            )?;
            Ok((model, config, report))
        }
        other => Err(HfError::Kind {
            dir: dir.display().to_string(),
            expected: "llava",
            found: kind(&other),
        }),
    }
}

/// Open a `LlamaForCausalLM` / `Qwen2ForCausalLM` directory on `device`.
pub fn load_decoder(
    dir: &Path,
    device: &Device,
) -> Result<(DecoderLm, DecoderConfig, LoadReport), HfError> {
    match read_config(dir)? {
        HfModelConfig::Decoder(config) => {
            let mut model = config.init(device);
            let report = load_weights(
                &mut model,
                dir,
                &crate::llm::hf_key_map(""),
                &LoadOptions::default(),
            )?;
            Ok((model, config, report))
        }
        other => Err(HfError::Kind {
            dir: dir.display().to_string(),
            expected: "causal LM",
            found: kind(&other),
        }),
    }
}

/// Open a `CLIPVisionModel` directory on `device`.
pub fn load_vision(
    dir: &Path,
    device: &Device,
) -> Result<(VisionTransformer, VisionConfig, LoadReport), HfError> {
    match read_config(dir)? {
        HfModelConfig::Vision(config) => {
            let mut model = config.init(device);
            let report = load_weights(
                &mut model,
                dir,
                &crate::vit::hf_key_map(""),
                &LoadOptions::default(),
            )?;
            Ok((model, config, report))
        }
        other => Err(HfError::Kind {
            dir: dir.display().to_string(),
            expected: "CLIP vision",
            found: kind(&other),
        }),
    }
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
