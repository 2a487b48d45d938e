//! CLIP (`CLIPModel`): the vision tower of [`crate::vit`], a causal text transformer pooled at
//! each caption's end-of-text token, linear projections into a shared embedding space and a
//! learned temperature. Field names follow transformers, so HF checkpoints load by key map.

use burn::config::Config;
use burn::module::{Module, Param};
use burn::nn::{Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::{Device, Int, Tensor, TensorData};
use serde_json::{Value, json};

use crate::attention::Masking;
use crate::vit::{EncoderLayer, VisionActivation, VisionConfig, VisionTransformer};

/// Configuration of a [`ClipTextTransformer`] (field names as in HF's `CLIPTextConfig`).
#[derive(Config, Debug, PartialEq)]
pub struct ClipTextConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Width.
    pub hidden_size: usize,
    /// Width of the MLP.
    pub intermediate_size: usize,
    /// Encoder layers.
    pub num_hidden_layers: usize,
    /// Attention heads.
    pub num_attention_heads: usize,
    /// Longest caption in tokens.
    pub max_position_embeddings: usize,
    /// LayerNorm epsilon.
    #[config(default = 1e-5)]
    pub layer_norm_eps: f64,
    /// MLP activation.
    #[config(default = "VisionActivation::QuickGelu")]
    pub hidden_act: VisionActivation,
}

impl ClipTextConfig {
    /// Initialise the text encoder on `device`.
    pub fn init(&self, device: &Device) -> ClipTextTransformer {
        assert!(
            self.hidden_size.is_multiple_of(self.num_attention_heads),
            "hidden_size {} is not a multiple of num_attention_heads {}",
            self.hidden_size,
            self.num_attention_heads
        );
        let d = self.hidden_size;
        ClipTextTransformer {
            token_embedding: EmbeddingConfig::new(self.vocab_size, d).init(device),
            position_embedding: EmbeddingConfig::new(self.max_position_embeddings, d).init(device),
            layers: EncoderLayer::stack(
                self.num_hidden_layers,
                d,
                self.num_attention_heads,
                self.intermediate_size,
                self.layer_norm_eps,
                self.hidden_act,
                device,
            ),
            final_layer_norm: LayerNormConfig::new(d)
                .with_epsilon(self.layer_norm_eps)
                .init(device),
        }
    }
}

/// CLIP's text encoder: token + learned position embeddings, causal pre-norm layers, a final
/// LayerNorm.
#[derive(Module, Debug)]
pub struct ClipTextTransformer {
    /// Token embeddings.
    pub token_embedding: Embedding,
    /// Learned positions.
    pub position_embedding: Embedding,
    /// Encoder layers (causal attention).
    pub layers: Vec<EncoderLayer>,
    /// Norm of the last hidden states.
    pub final_layer_norm: LayerNorm,
}

impl ClipTextTransformer {
    /// The pooled caption features `[batch, d]`: the final-normed hidden state at each row's
    /// last real token (`lengths[i] − 1`, the end-of-text token). Rows are right-padded;
    /// attention is causal, so the padding after a caption never reaches its pooled state.
    pub fn forward_pooled(&self, input_ids: Tensor<2, Int>, lengths: &[usize]) -> Tensor<2> {
        let [batch, seq] = input_ids.dims();
        let [n_pos, d] = self.position_embedding.weight.dims();
        assert!(
            seq <= n_pos,
            "captions of {seq} tokens exceed the {n_pos} positions of the text encoder"
        );
        assert_eq!(lengths.len(), batch, "one length per row");
        let positions = self.position_embedding.weight.val().narrow(0, 0, seq);
        let mut x = self.token_embedding.forward(input_ids) + positions.unsqueeze_dim(0);
        for layer in &self.layers {
            x = layer.forward_masked(x, &Masking::Causal);
        }
        let x = self.final_layer_norm.forward(x);
        let rows: Vec<i64> = lengths
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                assert!((1..=seq).contains(&n), "row {i} has length {n} of {seq}");
                (i * seq + n - 1) as i64
            })
            .collect();
        let index = Tensor::<1, Int>::from_data(TensorData::new(rows, [batch]), &x.device());
        x.reshape([batch * seq, d]).select(0, index)
    }
}

/// Configuration of a [`Clip`] model (HF's `CLIPConfig`).
#[derive(Config, Debug, PartialEq)]
pub struct ClipConfig {
    /// The image tower.
    pub vision: VisionConfig,
    /// The text encoder.
    pub text: ClipTextConfig,
    /// Width of the shared embedding space.
    pub projection_dim: usize,
    /// Initial log temperature (`ln(1 / 0.07)`).
    #[config(default = 2.6592)]
    pub logit_scale_init_value: f64,
}

/// The most the temperature may scale the cosine logits (CLIP clips `exp(logit_scale)` at 100).
pub const MAX_LOGIT_SCALE: f64 = 100.0;

impl ClipConfig {
    /// Initialise the model on `device`.
    pub fn init(&self, device: &Device) -> Clip {
        let p = self.projection_dim;
        Clip {
            vision_model: self.vision.init(device),
            text_model: self.text.init(device),
            visual_projection: LinearConfig::new(self.vision.hidden_size, p)
                .with_bias(false)
                .init(device),
            text_projection: LinearConfig::new(self.text.hidden_size, p)
                .with_bias(false)
                .init(device),
            logit_scale: Param::from_tensor(Tensor::from_data(
                TensorData::new(vec![self.logit_scale_init_value as f32], [1]),
                device,
            )),
        }
    }

    /// The `config.json` of an HF `CLIPModel` with this configuration.
    pub fn to_hf(&self) -> Value {
        let act = serde_json::to_value(self.vision.hidden_act).expect("json");
        let text_act = serde_json::to_value(self.text.hidden_act).expect("json");
        json!({
            "architectures": ["CLIPModel"],
            "model_type": "clip",
            "projection_dim": self.projection_dim,
            "logit_scale_init_value": self.logit_scale_init_value,
            "vision_config": vision_to_hf(&self.vision, act),
            "text_config": {
                "model_type": "clip_text_model",
                "vocab_size": self.text.vocab_size,
                "hidden_size": self.text.hidden_size,
                "intermediate_size": self.text.intermediate_size,
                "num_hidden_layers": self.text.num_hidden_layers,
                "num_attention_heads": self.text.num_attention_heads,
                "max_position_embeddings": self.text.max_position_embeddings,
                "layer_norm_eps": self.text.layer_norm_eps,
                "hidden_act": text_act,
                "projection_dim": self.projection_dim,
            },
        })
    }
}

/// The `config.json` fields of a `CLIPVisionConfig`.
pub fn vision_to_hf(v: &VisionConfig, act: Value) -> Value {
    json!({
        "model_type": "clip_vision_model",
        "hidden_size": v.hidden_size,
        "intermediate_size": v.intermediate_size,
        "num_hidden_layers": v.num_hidden_layers,
        "num_attention_heads": v.num_attention_heads,
        "image_size": v.image_size,
        "patch_size": v.patch_size,
        "num_channels": v.num_channels,
        "layer_norm_eps": v.layer_norm_eps,
        "hidden_act": act,
    })
}

/// CLIP: an image tower and a text encoder embedding into one space.
#[derive(Module, Debug)]
pub struct Clip {
    /// The image tower (pooled: post-LayerNorm of the class token).
    pub vision_model: VisionTransformer,
    /// The text encoder (pooled at the end-of-text token).
    pub text_model: ClipTextTransformer,
    /// Image features → shared space (no bias).
    pub visual_projection: Linear,
    /// Text features → shared space (no bias).
    pub text_projection: Linear,
    /// Log of the logit scale (learned).
    pub logit_scale: Param<Tensor<1>>,
}

/// Rows scaled to unit L2 norm.
fn l2_normalize(x: Tensor<2>) -> Tensor<2> {
    let norm = x.clone().powi_scalar(2).sum_dim(1).sqrt();
    x / norm
}

impl Clip {
    /// Unit-norm image embeddings `[images, projection_dim]`.
    pub fn image_embeds(&self, images: Tensor<4>) -> Tensor<2> {
        l2_normalize(
            self.visual_projection
                .forward(self.vision_model.forward_pooled(images)),
        )
    }

    /// Unit-norm caption embeddings `[captions, projection_dim]` (rows right-padded).
    pub fn text_embeds(&self, input_ids: Tensor<2, Int>, lengths: &[usize]) -> Tensor<2> {
        l2_normalize(
            self.text_projection
                .forward(self.text_model.forward_pooled(input_ids, lengths)),
        )
    }

    /// The multiplier of the cosine similarities: `exp(logit_scale)`, clipped at
    /// [`MAX_LOGIT_SCALE`] (no gradient beyond the clip).
    pub fn scale(&self) -> Tensor<1> {
        self.logit_scale.val().exp().clamp_max(MAX_LOGIT_SCALE)
    }

    /// Scaled cosine similarities of embeddings: `[images, captions]`.
    pub fn logits(&self, image_embeds: Tensor<2>, text_embeds: Tensor<2>) -> Tensor<2> {
        image_embeds.matmul(text_embeds.transpose()) * self.scale().unsqueeze_dim(0)
    }

    /// `logits_per_image` of transformers' `CLIPModel`: image `i` against caption `j`.
    pub fn forward(
        &self,
        images: Tensor<4>,
        input_ids: Tensor<2, Int>,
        lengths: &[usize],
    ) -> Tensor<2> {
        let image = self.image_embeds(images);
        let text = self.text_embeds(input_ids, lengths);
        self.logits(image, text)
    }
}

/// HF → vlalign key map of a `CLIPModel`.
pub fn hf_key_map() -> Vec<(String, String)> {
    let mut map = crate::vit::hf_key_map("vision_model.");
    let t = r"^text_model\.";
    map.extend([
        (
            format!(r"{t}embeddings\.(token_embedding|position_embedding)\."),
            "text_model.${1}.".to_string(),
        ),
        (
            format!(r"{t}embeddings\.position_ids$"),
            "text_model.position_ids".to_string(),
        ),
        (
            format!(r"{t}encoder\.layers\.(\d+)\.self_attn\.out_proj\."),
            "text_model.layers.${1}.self_attn.o_proj.".to_string(),
        ),
        (
            format!(r"{t}encoder\.layers\.(\d+)\.mlp\."),
            "text_model.layers.${1}.".to_string(),
        ),
        (
            format!(r"{t}encoder\.layers\.(\d+)\."),
            "text_model.layers.${1}.".to_string(),
        ),
    ]);
    map
}

/// vlalign → HF key map of a `CLIPModel`.
pub fn hf_save_map() -> Vec<(String, String)> {
    let mut map = crate::vit::hf_save_map("vision_model.", false);
    let t = r"^text_model\.";
    map.extend([
        (
            format!(r"{t}layers\.(\d+)\.self_attn\.o_proj\."),
            "text_model.encoder.layers.${1}.self_attn.out_proj.".to_string(),
        ),
        (
            format!(r"{t}layers\.(\d+)\.(fc1|fc2)\."),
            "text_model.encoder.layers.${1}.mlp.${2}.".to_string(),
        ),
        (
            format!(r"{t}layers\.(\d+)\.(self_attn|layer_norm1|layer_norm2)\."),
            "text_model.encoder.layers.${1}.${2}.".to_string(),
        ),
        (
            format!(r"{t}(token_embedding|position_embedding)\."),
            "text_model.embeddings.${1}.".to_string(),
        ),
    ]);
    map
}
