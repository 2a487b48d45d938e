//! PLoRA, the Partial LoRA of InternLM-XComposer2 (Dong et al. 2024): low-rank adapters on the
//! language model's linear layers that act **only at image-token positions**,
//!
//! ```text
//! y = W0·x + b          (every token)
//! y[img] += B(A(x[img]))·α/r
//! ```
//!
//! with `B` zero-initialised, so a model with fresh adapters computes exactly what it computed
//! before. Text tokens keep the base weights exactly (their own projections never see the
//! adapters); they still read the adapted image states through attention, which is the point:
//! the image tokens get extra capacity without disturbing the language model's text path.
//!
//! The adapters live beside the linear layers they adapt ([`LayerPLora`] in each decoder layer),
//! so the base weights keep their paths and a plain checkpoint still loads; the decoder applies
//! them when it is told which positions are image tokens (`image` in
//! [`DecoderLm::forward_spliced`](crate::llm::DecoderLm::forward_spliced)).

use burn::config::Config;
use burn::module::Module;
use burn::nn::{Initializer, Linear, LinearConfig};
use burn::tensor::{Bool, Device, Tensor};

use crate::llm::DecoderLm;

/// The linear layers of a LLaMA/Qwen2 decoder layer PLoRA can adapt, by field name.
pub const PLORA_TARGETS: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

/// Configuration of PLoRA adapters.
#[derive(Config, Debug, PartialEq)]
pub struct PLoraConfig {
    /// Rank r.
    #[config(default = 8)]
    pub rank: usize,
    /// α (the update is scaled by α / r).
    #[config(default = 16.0)]
    pub alpha: f64,
    /// Linear layers of every decoder layer that get adapters (names from [`PLORA_TARGETS`]);
    /// InternLM-XComposer2 adapts all of them.
    #[config(default = "PLORA_TARGETS.iter().map(|s| s.to_string()).collect::<Vec<String>>()")]
    pub targets: Vec<String>,
}

/// What is wrong with a [`PLoraConfig`].
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PLoraError {
    /// Rank 0 or no target.
    #[error("PLoRA needs a rank of at least 1 and at least one target")]
    Empty,
    /// A target that is not a decoder linear layer.
    #[error("PLoRA target `{0}` is not one of {PLORA_TARGETS:?}")]
    UnknownTarget(String),
}

/// One adapter: `B(A(x))·scale`, `A: d_in → r`, `B: r → d_out` (zero at first).
#[derive(Module, Debug)]
pub struct PLoraAdapter {
    /// Down-projection `A` `[d_in, r]`.
    pub lora_a: Linear,
    /// Up-projection `B` `[r, d_out]`, zero-initialised.
    pub lora_b: Linear,
    /// α / r.
    #[module(skip)]
    pub scale: f64,
}

impl PLoraAdapter {
    /// The update `B(A(x·m))·scale` for inputs `x` `[batch, seq, d_in]` and an image mask `m`
    /// `[batch, seq, 1]` (1 at image tokens, 0 elsewhere): exactly zero at text positions.
    pub fn delta(&self, x: Tensor<3>, image: &Tensor<3>) -> Tensor<3> {
        self.lora_b
            .forward(self.lora_a.forward(x * image.clone()))
            .mul_scalar(self.scale)
    }
}

/// The adapters of one decoder layer; `None` where a linear layer is not a target.
#[derive(Module, Debug)]
pub struct LayerPLora {
    /// On the query projection.
    pub q_proj: Option<PLoraAdapter>,
    /// On the key projection.
    pub k_proj: Option<PLoraAdapter>,
    /// On the value projection.
    pub v_proj: Option<PLoraAdapter>,
    /// On the attention output projection.
    pub o_proj: Option<PLoraAdapter>,
    /// On the MLP gate projection.
    pub gate_proj: Option<PLoraAdapter>,
    /// On the MLP up projection.
    pub up_proj: Option<PLoraAdapter>,
    /// On the MLP down projection.
    pub down_proj: Option<PLoraAdapter>,
}

/// `linear(x)`, plus `adapter`'s update at the image positions when there are both an adapter
/// and an image mask `[batch, seq, 1]`.
pub fn adapted(
    linear: &Linear,
    adapter: Option<&PLoraAdapter>,
    x: Tensor<3>,
    image: Option<&Tensor<3>>,
) -> Tensor<3> {
    match (adapter, image) {
        (Some(adapter), Some(image)) => linear.forward(x.clone()) + adapter.delta(x, image),
        _ => linear.forward(x),
    }
}

/// The float mask `[batch, seq, 1]` (1 at image tokens) of a bool mask `[batch, seq]`.
pub fn image_mask(image: Tensor<2, Bool>) -> Tensor<3> {
    image.float().unsqueeze_dim(2)
}

impl PLoraConfig {
    /// Check the rank and the targets.
    pub fn validate(&self) -> Result<(), PLoraError> {
        if self.rank == 0 || self.targets.is_empty() {
            return Err(PLoraError::Empty);
        }
        match self
            .targets
            .iter()
            .find(|t| !PLORA_TARGETS.contains(&t.as_str()))
        {
            Some(t) => Err(PLoraError::UnknownTarget(t.clone())),
            None => Ok(()),
        }
    }

    /// One adapter for a linear layer of shape `[d_in, d_out]`.
    pub fn init_adapter(&self, d_in: usize, d_out: usize, device: &Device) -> PLoraAdapter {
        PLoraAdapter {
            lora_a: LinearConfig::new(d_in, self.rank)
                .with_bias(false)
                .init(device),
            lora_b: LinearConfig::new(self.rank, d_out)
                .with_bias(false)
                .with_initializer(Initializer::Zeros)
                .init(device),
            scale: self.alpha / self.rank as f64,
        }
    }

    /// `lm` with fresh adapters (replacing any it had) on the target layers of every decoder
    /// layer. The base weights are untouched (freezing them is the trainer's choice).
    pub fn init(&self, mut lm: DecoderLm) -> Result<DecoderLm, PLoraError> {
        self.validate()?;
        let device = lm.embed_tokens.weight.device();
        let wants = |name: &str| self.targets.iter().any(|t| t == name);
        for layer in lm.layers.iter_mut() {
            let adapter = |name: &str, linear: &Linear| {
                let [d_in, d_out] = linear.weight.dims();
                wants(name).then(|| self.init_adapter(d_in, d_out, &device))
            };
            let (attn, mlp) = (&layer.self_attn, &layer.mlp);
            layer.plora = Some(LayerPLora {
                q_proj: adapter("q_proj", &attn.q_proj),
                k_proj: adapter("k_proj", &attn.k_proj),
                v_proj: adapter("v_proj", &attn.v_proj),
                o_proj: adapter("o_proj", &attn.o_proj),
                gate_proj: adapter("gate_proj", &mlp.gate_proj),
                up_proj: adapter("up_proj", &mlp.up_proj),
                down_proj: adapter("down_proj", &mlp.down_proj),
            });
        }
        Ok(lm)
    }
}
