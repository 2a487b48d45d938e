//! `CLIPConfig` JSON → [`ClipConfig`].

use serde_json::Value;

use super::config::{ConfigError, Fields, vision_fields};
use crate::clip::{ClipConfig, ClipTextConfig};
use crate::vit::VisionActivation;

/// Build a CLIP config from a `CLIPConfig` JSON (`text_config`, `vision_config`,
/// `projection_dim`; missing fields take `transformers`' defaults).
pub fn clip_config(value: &Value) -> Result<ClipConfig, ConfigError> {
    let root = Fields::root(value)?;
    let vision = match root.nested("vision_config")? {
        Some(v) => vision_fields(&v, (768, 3072, 12, 12, 224, 32))?,
        None => return Err(root.invalid("vision_config", "a CLIPConfig needs one")),
    };
    let Some(t) = root.nested("text_config")? else {
        return Err(root.invalid("text_config", "a CLIPConfig needs one"));
    };
    let act = t.str_or("hidden_act", "quick_gelu")?;
    let hidden_act: VisionActivation = serde_json::from_value(Value::String(act.clone()))
        .map_err(|_| t.invalid("hidden_act", format!("'{act}' is not supported")))?;
    let text = ClipTextConfig::new(
        t.usize_or("vocab_size", 49408)?,
        t.usize_or("hidden_size", 512)?,
        t.usize_or("intermediate_size", 2048)?,
        t.usize_or("num_hidden_layers", 12)?,
        t.usize_or("num_attention_heads", 8)?,
        t.usize_or("max_position_embeddings", 77)?,
    )
    .with_layer_norm_eps(t.f64_or("layer_norm_eps", 1e-5)?)
    .with_hidden_act(hidden_act);
    if text.num_attention_heads == 0 || !text.hidden_size.is_multiple_of(text.num_attention_heads) {
        return Err(t.invalid("num_attention_heads", "must divide hidden_size"));
    }
    Ok(
        ClipConfig::new(vision, text, root.usize_or("projection_dim", 512)?)
            .with_logit_scale_init_value(root.f64_or("logit_scale_init_value", 2.6592)?),
    )
}
