//! The BLIP vision tower (`Blip2VisionModel`, `InstructBlipVisionModel`): a ViT with a biased
//! patch convolution, learned class token and positions, no pre-LayerNorm, attention through one
//! fused `qkv` projection, and a final `post_layernorm` applied to every token.
//!
//! Field names follow transformers' module tree, so the checkpoint's keys map one to one.

use burn::config::Config;
use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Device, Distribution, Tensor};

use crate::vit::{VisionActivation, check_tower};

/// Configuration of a [`BlipVisionModel`] (field names as HF's `Blip2VisionConfig`).
#[derive(Config, Debug, PartialEq)]
pub struct BlipVisionConfig {
    /// Width of the tokens.
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
    /// LayerNorm epsilon.
    #[config(default = 1e-6)]
    pub layer_norm_eps: f64,
    /// MLP activation.
    #[config(default = "VisionActivation::Gelu")]
    pub hidden_act: VisionActivation,
    /// Bias on the fused qkv projection.
    #[config(default = true)]
    pub qkv_bias: bool,
}

impl BlipVisionConfig {
    /// A tower small enough to train from scratch on two CPU cores: 32 px images in 8 px
    /// patches (16 patches + the class token), 2 layers of width 64.
    pub fn tiny() -> Self {
        Self::new(64, 128, 2, 4, 32, 8)
    }

    /// Number of patches per image (without the class token).
    pub fn num_patches(&self) -> usize {
        (self.image_size / self.patch_size).pow(2)
    }

    /// Initialise the tower on `device`.
    pub fn init(&self, device: &Device) -> BlipVisionModel {
        check_tower(
            self.image_size,
            self.patch_size,
            self.hidden_size,
            self.num_attention_heads,
        );
        let d = self.hidden_size;
        let normal = Distribution::Normal(0.0, 0.02);
        let layers = (0..self.num_hidden_layers)
            .map(|_| BlipEncoderLayer {
                self_attn: BlipAttention {
                    qkv: LinearConfig::new(d, 3 * d)
                        .with_bias(self.qkv_bias)
                        .init(device),
                    projection: LinearConfig::new(d, d).init(device),
                    heads: self.num_attention_heads,
                },
                layer_norm1: LayerNormConfig::new(d)
                    .with_epsilon(self.layer_norm_eps)
                    .init(device),
                mlp: BlipMlp {
                    fc1: LinearConfig::new(d, self.intermediate_size).init(device),
                    fc2: LinearConfig::new(self.intermediate_size, d).init(device),
                    act: self.hidden_act,
                },
                layer_norm2: LayerNormConfig::new(d)
                    .with_epsilon(self.layer_norm_eps)
                    .init(device),
            })
            .collect();
        BlipVisionModel {
            embeddings: BlipVisionEmbeddings {
                patch_embedding: Conv2dConfig::new([3, d], [self.patch_size, self.patch_size])
                    .with_stride([self.patch_size, self.patch_size])
                    .init(device),
                class_embedding: Param::from_tensor(Tensor::random([1, 1, d], normal, device)),
                position_embedding: Param::from_tensor(Tensor::random(
                    [1, self.num_patches() + 1, d],
                    normal,
                    device,
                )),
            },
            encoder: BlipEncoder { layers },
            post_layernorm: LayerNormConfig::new(d)
                .with_epsilon(self.layer_norm_eps)
                .init(device),
        }
    }
}

/// Patch, class and position embeddings.
#[derive(Module, Debug)]
pub struct BlipVisionEmbeddings {
    /// Patchify convolution (with bias).
    pub patch_embedding: Conv2d,
    /// The class token `[1, 1, d]`.
    pub class_embedding: Param<Tensor<3>>,
    /// Learned positions `[1, 1 + patches, d]`, class token first.
    pub position_embedding: Param<Tensor<3>>,
}

/// Bidirectional attention with one fused `qkv` projection (its bias: query, zero key, value).
#[derive(Module, Debug)]
pub struct BlipAttention {
    /// `[d, 3d]`: query, key and value.
    pub qkv: Linear,
    /// Output projection.
    pub projection: Linear,
    /// Number of heads.
    #[module(skip)]
    pub heads: usize,
}

impl BlipAttention {
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let [batch, seq, d] = x.dims();
        let head_dim = d / self.heads;
        // [b, s, 3, h, hd] → [3, b, h, s, hd]
        let qkv = self
            .qkv
            .forward(x)
            .reshape([batch, seq, 3, self.heads, head_dim])
            .permute([2, 0, 3, 1, 4]);
        let part = |i: usize| {
            qkv.clone()
                .narrow(0, i, 1)
                .reshape([batch, self.heads, seq, head_dim])
        };
        let context = attention(
            part(0),
            part(1),
            part(2),
            None,
            None,
            AttentionModuleOptions::default(),
        );
        self.projection
            .forward(context.swap_dims(1, 2).reshape([batch, seq, d]))
    }
}

/// `fc2(act(fc1(x)))`.
#[derive(Module, Debug)]
pub struct BlipMlp {
    /// Up projection.
    pub fc1: Linear,
    /// Down projection.
    pub fc2: Linear,
    /// Activation.
    #[module(skip)]
    pub act: VisionActivation,
}

/// A pre-norm encoder layer.
#[derive(Module, Debug)]
pub struct BlipEncoderLayer {
    /// Attention.
    pub self_attn: BlipAttention,
    /// Norm before attention.
    pub layer_norm1: LayerNorm,
    /// MLP.
    pub mlp: BlipMlp,
    /// Norm before the MLP.
    pub layer_norm2: LayerNorm,
}

impl BlipEncoderLayer {
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let h = x.clone() + self.self_attn.forward(self.layer_norm1.forward(x));
        let m = &self.mlp;
        h.clone()
            + m.fc2
                .forward(m.act.apply(m.fc1.forward(self.layer_norm2.forward(h))))
    }
}

/// The encoder layers.
#[derive(Module, Debug)]
pub struct BlipEncoder {
    /// Layers, first to last.
    pub layers: Vec<BlipEncoderLayer>,
}

/// The BLIP vision tower.
#[derive(Module, Debug)]
pub struct BlipVisionModel {
    /// Embeddings.
    pub embeddings: BlipVisionEmbeddings,
    /// Encoder.
    pub encoder: BlipEncoder,
    /// LayerNorm on every output token.
    pub post_layernorm: LayerNorm,
}

impl BlipVisionModel {
    /// `last_hidden_state` `[images, 1 + patches, d]` (class token first, after
    /// `post_layernorm`): what BLIP-2's Q-Former cross-attends to.
    pub fn forward(&self, images: Tensor<4>) -> Tensor<3> {
        let e = &self.embeddings;
        let patches = e.patch_embedding.forward(images);
        let [batch, d, gh, gw] = patches.dims();
        let patches = patches.reshape([batch, d, gh * gw]).swap_dims(1, 2);
        let cls = e.class_embedding.val().expand([batch, 1, d]);
        let positions = e.position_embedding.val();
        assert_eq!(
            positions.dims()[1],
            gh * gw + 1,
            "the image gives {} patches but the tower has {} positions: wrong image size?",
            gh * gw,
            positions.dims()[1] - 1
        );
        let mut x = Tensor::cat(vec![cls, patches], 1) + positions;
        for layer in &self.encoder.layers {
            x = layer.forward(x);
        }
        self.post_layernorm.forward(x)
    }
}
