//! `Blip2Config` / `InstructBlipConfig` JSON → [`Blip2Config`] (LLaMA-family language models).

use serde_json::Value;

use super::config::{ConfigError, Fields, decoder_config};
use crate::blip_vision::BlipVisionConfig;
use crate::blip2::Blip2Config;
use crate::qformer::QFormerConfig;
use crate::vit::VisionActivation;

fn activation(f: &Fields<'_>) -> Result<VisionActivation, ConfigError> {
    let act = f.str_or("hidden_act", "gelu")?;
    serde_json::from_value(Value::String(act.clone())).map_err(|_| {
        f.invalid(
            "hidden_act",
            format!("'{act}' is not supported (gelu, quick_gelu, gelu_pytorch_tanh)"),
        )
    })
}

/// Build a BLIP-2 (`model_type` `blip-2`) or InstructBLIP (`instructblip`) config; fields left
/// out take transformers' defaults.
pub fn blip2_config(value: &Value) -> Result<Blip2Config, ConfigError> {
    let root = Fields::root(value)?;
    let instruct = root.model_type()? == "instructblip";
    let empty = Value::Object(Default::default());
    let v = match root.nested("vision_config")? {
        Some(v) => v,
        None => Fields::new(&empty, "vision_config".into())?,
    };
    let vision = BlipVisionConfig::new(
        v.usize_or("hidden_size", 1408)?,
        v.usize_or("intermediate_size", 6144)?,
        v.usize_or("num_hidden_layers", 39)?,
        v.usize_or("num_attention_heads", 16)?,
        v.usize_or("image_size", 224)?,
        v.usize_or("patch_size", 14)?,
    )
    .with_layer_norm_eps(v.f64_or("layer_norm_eps", 1e-6)?)
    .with_hidden_act(activation(&v)?)
    .with_qkv_bias(v.bool_or("qkv_bias", true)?);
    if vision.patch_size == 0 || !vision.image_size.is_multiple_of(vision.patch_size) {
        return Err(v.invalid("patch_size", "must divide image_size"));
    }
    if vision.num_attention_heads == 0
        || !vision
            .hidden_size
            .is_multiple_of(vision.num_attention_heads)
    {
        return Err(v.invalid("num_attention_heads", "must divide hidden_size"));
    }
    let q = match root.nested("qformer_config")? {
        Some(q) => q,
        None => Fields::new(&empty, "qformer_config".into())?,
    };
    let qformer = QFormerConfig::new(
        q.usize_or("hidden_size", 768)?,
        q.usize_or("num_hidden_layers", 12)?,
        q.usize_or("num_attention_heads", 12)?,
        q.usize_or("intermediate_size", 3072)?,
        q.usize_or("encoder_hidden_size", 1408)?,
    )
    .with_cross_attention_frequency(q.usize_or("cross_attention_frequency", 2)?)
    .with_layer_norm_eps(q.f64_or("layer_norm_eps", 1e-12)?)
    .with_hidden_act(activation(&q)?)
    .with_text_input(instruct)
    .with_vocab_size(q.usize_or("vocab_size", 30522)?)
    .with_max_position_embeddings(q.usize_or("max_position_embeddings", 512)?);
    if qformer.num_attention_heads == 0
        || !qformer
            .hidden_size
            .is_multiple_of(qformer.num_attention_heads)
    {
        return Err(q.invalid("num_attention_heads", "must divide hidden_size"));
    }
    if qformer.cross_attention_frequency == 0 {
        return Err(q.invalid("cross_attention_frequency", "must be at least 1"));
    }
    if qformer.encoder_hidden_size != vision.hidden_size {
        return Err(q.invalid(
            "encoder_hidden_size",
            format!(
                "{} differs from the vision tower's hidden_size {}",
                qformer.encoder_hidden_size, vision.hidden_size
            ),
        ));
    }
    let lm_kind = root
        .nested("text_config")?
        .map(|t| t.str_or("model_type", "opt"))
        .transpose()?
        .unwrap_or_else(|| "opt".into());
    if !matches!(lm_kind.as_str(), "llama" | "qwen2") {
        return Err(root.invalid(
            "text_config.model_type",
            format!("a '{lm_kind}' language model is not supported (llama, qwen2)"),
        ));
    }
    let text = decoder_config(value)?;
    let image_token = match root.get("image_token_index") {
        Some(_) => root.usize_or("image_token_index", 0)?,
        None => root.opt_usize("image_token_id")?.ok_or_else(|| {
            root.invalid(
                "image_token_index",
                "missing: a checkpoint without image slots in its text (transformers < 4.47) \
                     is not supported",
            )
        })?,
    };
    if image_token >= text.vocab_size {
        return Err(root.invalid(
            "image_token_index",
            format!(
                "{image_token} is outside the vocabulary of {}",
                text.vocab_size
            ),
        ));
    }
    Ok(Blip2Config::new(vision, qformer, text, image_token)
        .with_num_query_tokens(root.usize_or("num_query_tokens", 32)?))
}
