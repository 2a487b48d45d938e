//! The CLIP vision tower (`CLIPVisionModel`): patch embedding, class token, learned positions,
//! pre-LayerNorm, pre-norm encoder layers.

use burn::config::Config;
use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::activation::{gelu, gelu_approximate, sigmoid};
use burn::tensor::{Device, Distribution, Tensor};
use serde::{Deserialize, Serialize};

use crate::attention::{Masking, SelfAttention, SelfAttentionConfig};

/// The MLP activation of the encoder layers (`hidden_act` in HF configs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VisionActivation {
    /// `x · σ(1.702 x)` (OpenAI CLIP).
    QuickGelu,
    /// Exact GELU.
    Gelu,
    /// Tanh-approximated GELU (`gelu_pytorch_tanh`, SigLIP).
    #[serde(rename = "gelu_pytorch_tanh")]
    GeluTanh,
}

impl VisionActivation {
    pub(crate) fn apply<const D: usize>(self, x: Tensor<D>) -> Tensor<D> {
        match self {
            Self::QuickGelu => x.clone() * sigmoid(x * 1.702),
            Self::Gelu => gelu(x),
            Self::GeluTanh => gelu_approximate(x),
        }
    }
}

/// Configuration of a [`VisionTransformer`] (field names as in HF's `CLIPVisionConfig`).
#[derive(Config, Debug, PartialEq)]
pub struct VisionConfig {
    /// Width of the token embeddings.
    pub hidden_size: usize,
    /// Width of the MLP.
    pub intermediate_size: usize,
    /// Number of encoder layers.
    pub num_hidden_layers: usize,
    /// Number of attention heads.
    pub num_attention_heads: usize,
    /// Input resolution (square).
    pub image_size: usize,
    /// Patch size (square).
    pub patch_size: usize,
    /// Image channels.
    #[config(default = 3)]
    pub num_channels: usize,
    /// LayerNorm epsilon.
    #[config(default = 1e-5)]
    pub layer_norm_eps: f64,
    /// MLP activation.
    #[config(default = "VisionActivation::QuickGelu")]
    pub hidden_act: VisionActivation,
}

impl VisionConfig {
    /// A tower small enough to train from scratch on two CPU cores: 32 px images in 8 px patches
    /// (16 visual tokens), 2 layers of width 64.
    pub fn tiny() -> Self {
        Self::new(64, 128, 2, 4, 32, 8)
    }

    /// Number of patches per image (visual tokens without the class token).
    pub fn num_patches(&self) -> usize {
        (self.image_size / self.patch_size).pow(2)
    }

    /// Initialise the tower on `device`.
    pub fn init(&self, device: &Device) -> VisionTransformer {
        check_tower(
            self.image_size,
            self.patch_size,
            self.hidden_size,
            self.num_attention_heads,
        );
        let d = self.hidden_size;
        let layers = EncoderLayer::stack(
            self.num_hidden_layers,
            d,
            self.num_attention_heads,
            self.intermediate_size,
            self.layer_norm_eps,
            self.hidden_act,
            device,
        );
        VisionTransformer {
            patch_embedding: Conv2dConfig::new(
                [self.num_channels, d],
                [self.patch_size, self.patch_size],
            )
            .with_stride([self.patch_size, self.patch_size])
            .with_bias(false)
            .init(device),
            class_embedding: Param::from_tensor(Tensor::random(
                [d],
                Distribution::Normal(0.0, 0.02),
                device,
            )),
            position_embedding: EmbeddingConfig::new(self.num_patches() + 1, d).init(device),
            pre_layrnorm: LayerNormConfig::new(d)
                .with_epsilon(self.layer_norm_eps)
                .init(device),
            layers,
            post_layernorm: LayerNormConfig::new(d)
                .with_epsilon(self.layer_norm_eps)
                .init(device),
        }
    }
}

/// A ViT's shape must tile the image into whole patches and the width into whole heads
/// (CLIP's and BLIP's towers alike).
pub(crate) fn check_tower(image_size: usize, patch_size: usize, hidden: usize, heads: usize) {
    assert!(
        image_size.is_multiple_of(patch_size),
        "image_size {image_size} is not a multiple of patch_size {patch_size}"
    );
    assert!(
        hidden.is_multiple_of(heads),
        "hidden_size {hidden} is not a multiple of num_attention_heads {heads}"
    );
}

/// One pre-norm encoder layer: `x + attn(ln1(x))`, then `x + fc2(act(fc1(ln2(x))))`.
#[derive(Module, Debug)]
pub struct EncoderLayer {
    /// Norm before attention.
    pub layer_norm1: LayerNorm,
    /// Bidirectional multi-head attention.
    pub self_attn: SelfAttention,
    /// Norm before the MLP.
    pub layer_norm2: LayerNorm,
    /// MLP up projection.
    pub fc1: Linear,
    /// MLP down projection.
    pub fc2: Linear,
    /// MLP activation.
    #[module(skip)]
    pub act: VisionActivation,
}

impl EncoderLayer {
    /// A layer of width `d` (CLIP's vision and text encoders share this layer).
    fn init(
        d: usize,
        heads: usize,
        intermediate: usize,
        eps: f64,
        act: VisionActivation,
        device: &Device,
    ) -> Self {
        Self {
            layer_norm1: LayerNormConfig::new(d).with_epsilon(eps).init(device),
            self_attn: SelfAttentionConfig::new(d, heads, heads, d / heads)
                .with_qkv_bias(true)
                .with_out_bias(true)
                .init(device),
            layer_norm2: LayerNormConfig::new(d).with_epsilon(eps).init(device),
            fc1: LinearConfig::new(d, intermediate).init(device),
            fc2: LinearConfig::new(intermediate, d).init(device),
            act,
        }
    }

    /// `n` fresh layers of width `d`.
    pub(crate) fn stack(
        n: usize,
        d: usize,
        heads: usize,
        intermediate: usize,
        eps: f64,
        act: VisionActivation,
        device: &Device,
    ) -> Vec<Self> {
        (0..n)
            .map(|_| Self::init(d, heads, intermediate, eps, act, device))
            .collect()
    }

    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        self.forward_masked(x, &Masking::Full)
    }

    /// The layer with `masking` (`Causal` in CLIP's text encoder).
    pub(crate) fn forward_masked(&self, x: Tensor<3>, masking: &Masking) -> Tensor<3> {
        let h = x.clone()
            + self
                .self_attn
                .forward(self.layer_norm1.forward(x), None, masking, None);
        let m = self.fc2.forward(
            self.act
                .apply(self.fc1.forward(self.layer_norm2.forward(h.clone()))),
        );
        h + m
    }
}

/// The CLIP vision tower.
#[derive(Module, Debug)]
pub struct VisionTransformer {
    /// Patchify convolution, stride = kernel = patch size, no bias.
    pub patch_embedding: Conv2d,
    /// The class token.
    pub class_embedding: Param<Tensor<1>>,
    /// Learned positions (class token first).
    pub position_embedding: Embedding,
    /// LayerNorm on the embeddings (sic, as HF names it).
    pub pre_layrnorm: LayerNorm,
    /// Encoder layers.
    pub layers: Vec<EncoderLayer>,
    /// LayerNorm of the pooled class token.
    pub post_layernorm: LayerNorm,
}

impl VisionTransformer {
    /// Number of encoder layers.
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Patch + class + position embeddings after the pre-LayerNorm: `[batch, 1 + patches, d]`
    /// (HF's `hidden_states[0]`).
    pub fn embed(&self, images: Tensor<4>) -> Tensor<3> {
        let patches = self.patch_embedding.forward(images);
        let [batch, d, gh, gw] = patches.dims();
        let patches = patches.reshape([batch, d, gh * gw]).swap_dims(1, 2);
        let cls = self
            .class_embedding
            .val()
            .reshape([1, 1, d])
            .expand([batch, 1, d]);
        let x = Tensor::cat(vec![cls, patches], 1);
        let positions = self.position_embedding.weight.val();
        let [n_pos, _] = positions.dims();
        assert_eq!(
            n_pos,
            gh * gw + 1,
            "the image gives {} patches but the tower has {} positions: wrong image size?",
            gh * gw,
            n_pos - 1
        );
        self.pre_layrnorm.forward(x + positions.unsqueeze_dim(0))
    }

    /// Hidden states after encoder layer `layer`, counted as HF's `hidden_states` tuple:
    /// 0 is the embeddings, `num_layers()` the last layer; negative values count from the end
    /// (`-1` = last layer, `-2` = LLaVA's choice). Only the layers needed run. With `drop_cls`
    /// the class token is removed: `[batch, patches, d]`.
    pub fn forward_features(&self, images: Tensor<4>, layer: i64, drop_cls: bool) -> Tensor<3> {
        let stop = self.resolve_layer(layer);
        let mut x = self.embed(images);
        for layer in &self.layers[..stop] {
            x = layer.forward(x);
        }
        if drop_cls {
            let n = x.dims()[1];
            x.narrow(1, 1, n - 1)
        } else {
            x
        }
    }

    /// The pooled output: `post_layernorm` of the last layer's class token, `[batch, d]`.
    pub fn forward_pooled(&self, images: Tensor<4>) -> Tensor<2> {
        let x = self.forward_features(images, -1, false);
        let [batch, _, d] = x.dims();
        self.post_layernorm
            .forward(x.narrow(1, 0, 1).reshape([batch, d]))
    }

    fn resolve_layer(&self, layer: i64) -> usize {
        let n = self.layers.len() as i64;
        let idx = if layer < 0 { n + 1 + layer } else { layer };
        assert!(
            (0..=n).contains(&idx),
            "vision feature layer {layer} is out of range for a tower of {n} layers"
        );
        idx as usize
    }
}

/// HF → vlalign key map of a CLIP vision tower whose keys start with `prefix` (`""` for a
/// `CLIPVisionModel`, `"vision_tower."` inside LLaVA); accepts keys with and without the
/// `vision_model.` level.
pub fn hf_key_map(prefix: &str) -> Vec<(String, String)> {
    let p = crate::hf::checkpoint::escape(prefix);
    let v = r"(vision_model\.)?";
    vec![
        (
            format!(r"^{p}{v}embeddings\.patch_embedding\."),
            format!("{prefix}patch_embedding."),
        ),
        (
            format!(r"^{p}{v}embeddings\.class_embedding$"),
            format!("{prefix}class_embedding"),
        ),
        (
            format!(r"^{p}{v}embeddings\.position_embedding\."),
            format!("{prefix}position_embedding."),
        ),
        (
            format!(r"^{p}{v}embeddings\.position_ids$"),
            format!("{prefix}position_ids"),
        ),
        (
            format!(r"^{p}{v}pre_layrnorm\."),
            format!("{prefix}pre_layrnorm."),
        ),
        (
            format!(r"^{p}{v}post_layernorm\."),
            format!("{prefix}post_layernorm."),
        ),
        (
            format!(r"^{p}{v}encoder\.layers\.(\d+)\.self_attn\.out_proj\."),
            format!("{prefix}layers.${{2}}.self_attn.o_proj."),
        ),
        (
            format!(r"^{p}{v}encoder\.layers\.(\d+)\.mlp\."),
            format!("{prefix}layers.${{2}}."),
        ),
        (
            format!(r"^{p}{v}encoder\.layers\.(\d+)\."),
            format!("{prefix}layers.${{2}}."),
        ),
    ]
}

/// vlalign → HF key map (the layout transformers 5 writes: no `vision_model.` level inside
/// LLaVA, `vision_model.` for a standalone `CLIPVisionModel`).
pub fn hf_save_map(prefix: &str, vision_model_level: bool) -> Vec<(String, String)> {
    let p = crate::hf::checkpoint::escape(prefix);
    let out = if vision_model_level {
        format!("{prefix}vision_model.")
    } else {
        prefix.to_string()
    };
    vec![
        (
            format!(r"^{p}layers\.(\d+)\.self_attn\.o_proj\."),
            format!("{out}encoder.layers.${{1}}.self_attn.out_proj."),
        ),
        (
            format!(r"^{p}layers\.(\d+)\.(fc1|fc2)\."),
            format!("{out}encoder.layers.${{1}}.mlp.${{2}}."),
        ),
        (
            format!(r"^{p}layers\.(\d+)\.(self_attn|layer_norm1|layer_norm2)\."),
            format!("{out}encoder.layers.${{1}}.${{2}}."),
        ),
        (
            format!(r"^{p}(patch_embedding|class_embedding|position_embedding)"),
            format!("{out}embeddings.${{1}}"),
        ),
        (
            format!(r"^{p}(pre_layrnorm|post_layernorm)\."),
            format!("{out}${{1}}."),
        ),
    ]
}
