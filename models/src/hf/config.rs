//! Hugging Face model directories: building vlalign modules from `config.json`.
//!
//! Both config dialects are read: the legacy one (`rope_theta`, `rope_scaling`) and the
//! transformers 5 one (`rope_parameters: {rope_theta, rope_type, …}`), flat or nested under
//! `text_config` / `vision_config`. Fields a config leaves out take the defaults of the
//! corresponding `transformers` config class, as `from_pretrained` does.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::blip2::Blip2Config;
use crate::llava::{FeatureSelect, LlavaConfig};
use crate::llm::DecoderConfig;
use crate::projector::ProjectorKind;
use crate::rope::RopeScaling;
use crate::vit::{VisionActivation, VisionConfig};

/// Why a config could not be turned into a model.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not JSON.
    #[error("{path} is not valid JSON: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: serde_json::Error,
    },
    /// A field has the wrong type or an unsupported value.
    #[error("config field `{field}`: {message}")]
    Invalid {
        /// Dotted path of the field.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// The config describes a model family vlalign does not build.
    #[error(
        "unsupported model_type `{0}` (supported: llava, llama, qwen2, clip, clip_vision_model, blip-2, instructblip)"
    )]
    Unsupported(String),
}

/// A model described by a `config.json`.
#[derive(Clone, Debug, PartialEq)]
pub enum HfModelConfig {
    /// `LlavaForConditionalGeneration`.
    Llava(LlavaConfig),
    /// `LlamaForCausalLM` / `Qwen2ForCausalLM`.
    Decoder(DecoderConfig),
    /// `CLIPVisionModel` (or the vision half of a `CLIPModel`).
    Vision(VisionConfig),
    /// `Blip2ForConditionalGeneration` / `InstructBlipForConditionalGeneration`.
    Blip2(Blip2Config),
}

/// Read and parse `dir/config.json` (or a path to the file itself).
pub fn read_config(path: impl AsRef<Path>) -> Result<HfModelConfig, ConfigError> {
    parse_config(&read_config_json(path)?)
}

/// Read `dir/config.json` (or a path to the file itself) as JSON.
pub fn read_config_json(path: impl AsRef<Path>) -> Result<Value, ConfigError> {
    let path = path.as_ref();
    let file = if path.is_dir() {
        path.join("config.json")
    } else {
        path.to_path_buf()
    };
    read_json(&file)
}

fn read_json(file: &Path) -> Result<Value, ConfigError> {
    let text = std::fs::read_to_string(file).map_err(|source| ConfigError::Io {
        path: file.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|source| ConfigError::Json {
        path: file.to_path_buf(),
        source,
    })
}

/// Parse a config by its `model_type`.
pub fn parse_config(value: &Value) -> Result<HfModelConfig, ConfigError> {
    let obj = Fields::root(value)?;
    match obj.model_type()?.as_str() {
        "llava" => Ok(HfModelConfig::Llava(llava_config(value)?)),
        "llama" | "qwen2" => Ok(HfModelConfig::Decoder(decoder_config(value)?)),
        "clip_vision_model" | "clip" => Ok(HfModelConfig::Vision(vision_config(value)?)),
        "blip-2" | "instructblip" => Ok(HfModelConfig::Blip2(super::blip2_config(value)?)),
        other => Err(ConfigError::Unsupported(other.to_string())),
    }
}

/// A JSON object with typed, path-naming accessors.
pub(super) struct Fields<'a> {
    map: &'a Map<String, Value>,
    prefix: String,
}

impl<'a> Fields<'a> {
    pub(super) fn root(value: &'a Value) -> Result<Self, ConfigError> {
        Self::new(value, String::new())
    }

    pub(super) fn new(value: &'a Value, prefix: String) -> Result<Self, ConfigError> {
        value
            .as_object()
            .map(|map| Self {
                map,
                prefix: prefix.clone(),
            })
            .ok_or_else(|| ConfigError::Invalid {
                field: if prefix.is_empty() {
                    "<root>".into()
                } else {
                    prefix
                },
                message: "expected a JSON object".into(),
            })
    }

    pub(super) fn path(&self, key: &str) -> String {
        if self.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.prefix)
        }
    }

    pub(super) fn invalid(&self, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            field: self.path(key),
            message: message.into(),
        }
    }

    /// A present, non-null field.
    pub(super) fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    pub(super) fn nested(&self, key: &str) -> Result<Option<Fields<'a>>, ConfigError> {
        self.get(key)
            .map(|v| Fields::new(v, self.path(key)))
            .transpose()
    }

    pub(super) fn usize_or(&self, key: &str, default: usize) -> Result<usize, ConfigError> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v.as_u64().map(|n| n as usize).ok_or_else(|| {
                self.invalid(key, format!("expected a non-negative integer, got {v}"))
            }),
        }
    }

    pub(super) fn opt_usize(&self, key: &str) -> Result<Option<usize>, ConfigError> {
        self.get(key).map(|_| self.usize_or(key, 0)).transpose()
    }

    pub(super) fn f64_or(&self, key: &str, default: f64) -> Result<f64, ConfigError> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .as_f64()
                .ok_or_else(|| self.invalid(key, format!("expected a number, got {v}"))),
        }
    }

    pub(super) fn bool_or(&self, key: &str, default: bool) -> Result<bool, ConfigError> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .as_bool()
                .ok_or_else(|| self.invalid(key, format!("expected true or false, got {v}"))),
        }
    }

    pub(super) fn str_or(&self, key: &str, default: &str) -> Result<String, ConfigError> {
        match self.get(key) {
            None => Ok(default.to_string()),
            Some(v) => v
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| self.invalid(key, format!("expected a string, got {v}"))),
        }
    }

    pub(super) fn model_type(&self) -> Result<String, ConfigError> {
        match self.get("model_type") {
            Some(_) => self.str_or("model_type", ""),
            None => Err(self.invalid("model_type", "missing: cannot tell which model this is")),
        }
    }
}

/// Build a decoder config from a `LlamaConfig` / `Qwen2Config` JSON (or an object holding one
/// under `text_config`).
pub fn decoder_config(value: &Value) -> Result<DecoderConfig, ConfigError> {
    let root = Fields::root(value)?;
    let f = root.nested("text_config")?.unwrap_or(root);
    let kind = f.str_or("model_type", "llama")?;
    // Defaults of transformers' LlamaConfig and Qwen2Config.
    let (vocab, hidden, inter, layers, heads, max_pos) = match kind.as_str() {
        "llama" => (32000, 4096, 11008, 32, 32, 2048),
        "qwen2" => (151936, 4096, 22016, 32, 32, 32768),
        other => return Err(ConfigError::Unsupported(other.to_string())),
    };
    let act = f.str_or("hidden_act", "silu")?;
    if act != "silu" {
        return Err(f.invalid(
            "hidden_act",
            format!("'{act}' is not supported (SwiGLU needs 'silu')"),
        ));
    }
    let heads = f.usize_or("num_attention_heads", heads)?;
    let (theta, scaling) = rope(&f)?;
    let attention_bias = f.bool_or("attention_bias", false)?;
    let qwen = kind == "qwen2";
    let mut config = DecoderConfig::new(
        f.usize_or("vocab_size", vocab)?,
        f.usize_or("hidden_size", hidden)?,
        f.usize_or("intermediate_size", inter)?,
        f.usize_or("num_hidden_layers", layers)?,
        heads,
        f.usize_or("num_key_value_heads", heads)?,
    )
    .with_head_dim(f.opt_usize("head_dim")?)
    .with_rms_norm_eps(f.f64_or("rms_norm_eps", 1e-6)?)
    .with_rope_theta(theta)
    .with_rope_scaling(scaling)
    .with_max_position_embeddings(f.usize_or("max_position_embeddings", max_pos)?)
    .with_qkv_bias(qwen || attention_bias)
    .with_o_bias(!qwen && attention_bias)
    .with_mlp_bias(f.bool_or("mlp_bias", false)?)
    .with_tie_word_embeddings(f.bool_or("tie_word_embeddings", false)?);
    if config.num_attention_heads == 0 || config.num_key_value_heads == 0 {
        return Err(f.invalid("num_attention_heads", "heads must be positive"));
    }
    if !config
        .num_attention_heads
        .is_multiple_of(config.num_key_value_heads)
    {
        return Err(f.invalid(
            "num_key_value_heads",
            format!(
                "{} query heads cannot be shared by {} key/value heads",
                config.num_attention_heads, config.num_key_value_heads
            ),
        ));
    }
    if config.head_dim.is_none()
        && !config
            .hidden_size
            .is_multiple_of(config.num_attention_heads)
    {
        return Err(f.invalid(
            "hidden_size",
            "not a multiple of num_attention_heads and no head_dim given",
        ));
    }
    config.head_dim = config
        .head_dim
        .or(Some(config.hidden_size / config.num_attention_heads));
    Ok(config)
}

/// RoPE base and scaling from either dialect.
fn rope(f: &Fields<'_>) -> Result<(f64, RopeScaling), ConfigError> {
    let params = f.nested("rope_parameters")?;
    let legacy = f.nested("rope_scaling")?;
    let theta = match &params {
        Some(p) if p.get("rope_theta").is_some() => p.f64_or("rope_theta", 10000.0)?,
        _ => f.f64_or("rope_theta", 10000.0)?,
    };
    let Some(s) = params.as_ref().or(legacy.as_ref()) else {
        return Ok((theta, RopeScaling::Default));
    };
    let kind = match s.get("rope_type") {
        Some(_) => s.str_or("rope_type", "default")?,
        None => s.str_or("type", "default")?,
    };
    let scaling = match kind.as_str() {
        "default" => RopeScaling::Default,
        "linear" => RopeScaling::Linear {
            factor: s.f64_or("factor", 1.0)?,
        },
        "llama3" => RopeScaling::Llama3 {
            factor: s.f64_or("factor", 8.0)?,
            low_freq_factor: s.f64_or("low_freq_factor", 1.0)?,
            high_freq_factor: s.f64_or("high_freq_factor", 4.0)?,
            original_max_position_embeddings: s
                .usize_or("original_max_position_embeddings", 8192)?,
        },
        other => {
            return Err(s.invalid(
                "rope_type",
                format!("'{other}' is not supported (default, linear, llama3)"),
            ));
        }
    };
    Ok((theta, scaling))
}

/// Build a vision tower config from a `CLIPVisionConfig` JSON (or a `CLIPConfig` / LLaVA config
/// holding one under `vision_config`).
pub fn vision_config(value: &Value) -> Result<VisionConfig, ConfigError> {
    let root = Fields::root(value)?;
    let f = root.nested("vision_config")?.unwrap_or(root);
    vision_fields(&f, (768, 3072, 12, 12, 224, 32))
}

pub(super) fn vision_fields(
    f: &Fields<'_>,
    defaults: (usize, usize, usize, usize, usize, usize),
) -> Result<VisionConfig, ConfigError> {
    let (hidden, inter, layers, heads, image, patch) = defaults;
    let act = f.str_or("hidden_act", "quick_gelu")?;
    let hidden_act: VisionActivation =
        serde_json::from_value(Value::String(act.clone())).map_err(|_| {
            f.invalid(
                "hidden_act",
                format!("'{act}' is not supported (quick_gelu, gelu, gelu_pytorch_tanh)"),
            )
        })?;
    let config = VisionConfig::new(
        f.usize_or("hidden_size", hidden)?,
        f.usize_or("intermediate_size", inter)?,
        f.usize_or("num_hidden_layers", layers)?,
        f.usize_or("num_attention_heads", heads)?,
        f.usize_or("image_size", image)?,
        f.usize_or("patch_size", patch)?,
    )
    .with_num_channels(f.usize_or("num_channels", 3)?)
    .with_layer_norm_eps(f.f64_or("layer_norm_eps", 1e-5)?)
    .with_hidden_act(hidden_act);
    if config.patch_size == 0 || !config.image_size.is_multiple_of(config.patch_size) {
        return Err(f.invalid(
            "patch_size",
            format!(
                "image_size {} is not a multiple of patch_size {}",
                config.image_size, config.patch_size
            ),
        ));
    }
    if config.num_attention_heads == 0
        || !config
            .hidden_size
            .is_multiple_of(config.num_attention_heads)
    {
        return Err(f.invalid("num_attention_heads", "must divide hidden_size"));
    }
    Ok(config)
}

/// Build a LLaVA config from a `LlavaConfig` JSON.
pub fn llava_config(value: &Value) -> Result<LlavaConfig, ConfigError> {
    let f = Fields::root(value)?;
    let vision = match f.nested("vision_config")? {
        // LlavaConfig's default tower is CLIP ViT-L/14 at 336 px.
        Some(v) => vision_fields(&v, (1024, 4096, 24, 16, 336, 14))?,
        None => VisionConfig::new(1024, 4096, 24, 16, 336, 14),
    };
    let text = match f.get("text_config") {
        Some(_) => decoder_config(value)?,
        None => decoder_config(&serde_json::json!({"model_type": "llama"}))?,
    };
    let act = f.str_or("projector_hidden_act", "gelu")?;
    if act != "gelu" {
        return Err(f.invalid(
            "projector_hidden_act",
            format!("'{act}' is not supported (gelu)"),
        ));
    }
    let layer = match f.get("vision_feature_layer") {
        None => -2,
        Some(v) => v.as_i64().ok_or_else(|| {
            f.invalid(
                "vision_feature_layer",
                format!(
                    "expected one integer layer, got {v} (multi-layer features are not supported)"
                ),
            )
        })?,
    };
    let select = match f
        .str_or("vision_feature_select_strategy", "default")?
        .as_str()
    {
        "default" => FeatureSelect::Default,
        "full" => FeatureSelect::Full,
        other => {
            return Err(f.invalid(
                "vision_feature_select_strategy",
                format!("'{other}' (expected default or full)"),
            ));
        }
    };
    let image_token = match f.get("image_token_index") {
        Some(_) => f.usize_or("image_token_index", 32000)?,
        None => f.usize_or("image_token_id", 32000)?,
    };
    if image_token >= text.vocab_size {
        return Err(f.invalid(
            "image_token_index",
            format!(
                "{image_token} is outside the vocabulary of {}",
                text.vocab_size
            ),
        ));
    }
    Ok(LlavaConfig::new(vision, text, image_token)
        .with_projector(ProjectorKind::MlpGelu { depth: 2 })
        .with_projector_bias(f.bool_or("multimodal_projector_bias", true)?)
        .with_vision_feature_layer(layer)
        .with_vision_feature_select_strategy(select))
}

/// A transformers-5 `config.json` for a LLaVA model built here (so that a model trained with
/// vlalign opens in `transformers`).
pub fn llava_to_hf(c: &LlavaConfig) -> Value {
    let t = &c.text;
    let v = &c.vision;
    let (rope_type, extra) = match &t.rope_scaling {
        RopeScaling::Default => ("default", serde_json::json!({})),
        RopeScaling::Linear { factor } => ("linear", serde_json::json!({ "factor": factor })),
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        } => (
            "llama3",
            serde_json::json!({"factor": factor, "low_freq_factor": low_freq_factor,
                "high_freq_factor": high_freq_factor,
                "original_max_position_embeddings": original_max_position_embeddings}),
        ),
    };
    let mut rope = serde_json::json!({"rope_theta": t.rope_theta, "rope_type": rope_type});
    if let (Some(r), Some(e)) = (rope.as_object_mut(), extra.as_object()) {
        r.extend(e.clone());
    }
    let model_type = if t.qkv_bias && !t.o_bias {
        "qwen2"
    } else {
        "llama"
    };
    serde_json::json!({
        "architectures": ["LlavaForConditionalGeneration"],
        "model_type": "llava",
        "image_token_index": c.image_token_id,
        "projector_hidden_act": "gelu",
        "multimodal_projector_bias": c.projector_bias,
        "vision_feature_layer": c.vision_feature_layer,
        "vision_feature_select_strategy": match c.vision_feature_select_strategy {
            FeatureSelect::Default => "default",
            FeatureSelect::Full => "full",
        },
        "image_seq_length": c.image_tokens(),
        "tie_word_embeddings": t.tie_word_embeddings,
        "text_config": {
            "model_type": model_type,
            "vocab_size": t.vocab_size,
            "hidden_size": t.hidden_size,
            "intermediate_size": t.intermediate_size,
            "num_hidden_layers": t.num_hidden_layers,
            "num_attention_heads": t.num_attention_heads,
            "num_key_value_heads": t.num_key_value_heads,
            "head_dim": t.head_dim(),
            "rms_norm_eps": t.rms_norm_eps,
            "rope_parameters": rope,
            "max_position_embeddings": t.max_position_embeddings,
            "attention_bias": t.o_bias,
            "mlp_bias": t.mlp_bias,
            "hidden_act": "silu",
            "tie_word_embeddings": t.tie_word_embeddings,
        },
        "vision_config": crate::clip::vision_to_hf(
            v,
            serde_json::to_value(v.hidden_act).unwrap_or(Value::Null),
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// `llava-hf/llava-1.5-7b-hf/config.json` (transformers 4.x layout).
    fn llava15() -> Value {
        json!({
          "architectures": ["LlavaForConditionalGeneration"],
          "ignore_index": -100, "image_token_index": 32000, "model_type": "llava",
          "pad_token_id": 32001, "projector_hidden_act": "gelu",
          "text_config": {"architectures": ["LlamaForCausalLM"], "max_position_embeddings": 4096,
            "model_type": "llama", "rms_norm_eps": 1e-05, "torch_dtype": "float16", "vocab_size": 32064},
          "tie_word_embeddings": false, "torch_dtype": "float16", "transformers_version": "4.36.0.dev0",
          "vision_config": {"hidden_size": 1024, "image_size": 336, "intermediate_size": 4096,
            "model_type": "clip_vision_model", "num_attention_heads": 16, "num_hidden_layers": 24,
            "patch_size": 14, "projection_dim": 768, "vocab_size": 32000},
          "vision_feature_layer": -2, "vision_feature_select_strategy": "default", "vocab_size": 32064
        })
    }

    #[test]
    fn llava15_builds_at_full_size() {
        let HfModelConfig::Llava(c) = parse_config(&llava15()).unwrap() else {
            panic!("not llava")
        };
        assert_eq!(c.text.hidden_size, 4096);
        assert_eq!(c.text.num_hidden_layers, 32);
        assert_eq!(c.text.num_key_value_heads, 32);
        assert_eq!(c.text.vocab_size, 32064);
        assert_eq!(c.text.rms_norm_eps, 1e-5);
        assert_eq!(c.vision.num_patches(), 576);
        assert_eq!(c.image_tokens(), 576);
        assert_eq!(c.vision.hidden_act, VisionActivation::QuickGelu);
        assert_eq!(c.vision_feature_layer, -2);
        assert_eq!(c.image_token_id, 32000);
    }

    #[test]
    fn transformers5_rope_parameters_and_qwen2_bias() {
        let v = json!({"model_type": "qwen2", "hidden_size": 64, "num_attention_heads": 4,
            "num_key_value_heads": 2, "intermediate_size": 128, "num_hidden_layers": 2,
            "vocab_size": 100, "tie_word_embeddings": true,
            "rope_parameters": {"rope_theta": 1000000.0, "rope_type": "default"}});
        let c = decoder_config(&v).unwrap();
        assert_eq!(c.rope_theta, 1e6);
        assert!(c.qkv_bias && !c.o_bias && c.tie_word_embeddings);
        assert_eq!(c.head_dim, Some(16));
        assert_eq!(c.max_position_embeddings, 32768);
    }

    #[test]
    fn llama3_scaling_is_read() {
        let v = json!({"model_type": "llama", "rope_theta": 500000.0,
            "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
            "original_max_position_embeddings": 8192, "rope_type": "llama3"}});
        let c = decoder_config(&v).unwrap();
        assert_eq!(c.rope_theta, 500000.0);
        assert!(matches!(c.rope_scaling, RopeScaling::Llama3 { factor, .. } if factor == 32.0));
    }

    #[test]
    fn written_llava_config_reads_back_equal() {
        let mut c = LlavaConfig::tiny(100, 99);
        c.text.head_dim = Some(c.text.head_dim()); // the reader always makes it explicit
        let HfModelConfig::Llava(back) = parse_config(&llava_to_hf(&c)).unwrap() else {
            panic!("not llava")
        };
        assert_eq!(back, c);
    }

    #[test]
    fn errors_name_the_field() {
        let v = json!({"model_type": "llama", "num_key_value_heads": 5});
        let e = decoder_config(&v).unwrap_err().to_string();
        assert!(e.contains("num_key_value_heads"), "{e}");
        let v = json!({"model_type": "llava", "text_config": {"model_type": "llama", "hidden_size": "big"}});
        let e = parse_config(&v).unwrap_err().to_string();
        assert!(e.contains("text_config.hidden_size"), "{e}");
        let e = parse_config(&json!({"model_type": "mamba"}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("mamba"), "{e}");
        let e = parse_config(&json!({"hidden_size": 3}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("model_type"), "{e}");
    }
}
