//! The LLaMA / Qwen2 decoder: token embeddings, RMSNorm, rotate-half RoPE with explicit
//! positions, grouped-query attention, SwiGLU MLP, tied or separate LM head, KV cache.

use burn::config::Config;
use burn::module::Module;
use burn::nn::{Embedding, EmbeddingConfig, Linear, LinearConfig, RmsNorm, RmsNormConfig};
use burn::tensor::activation::silu;
use burn::tensor::module::linear;
use burn::tensor::{Bool, Device, Int, Tensor};

use crate::attention::{LayerCache, Masking, SelfAttention, SelfAttentionConfig};
use crate::mask::causal_mask;
use crate::plora::{LayerPLora, PLoraAdapter, adapted};
use crate::rope::{RopeScaling, RotaryCache, inv_freq};

/// Configuration of a [`DecoderLm`] (field names as in HF's `LlamaConfig` / `Qwen2Config`).
#[derive(Config, Debug, PartialEq)]
pub struct DecoderConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Model width.
    pub hidden_size: usize,
    /// SwiGLU width.
    pub intermediate_size: usize,
    /// Number of decoder layers.
    pub num_hidden_layers: usize,
    /// Number of query heads.
    pub num_attention_heads: usize,
    /// Number of key/value heads (grouped-query attention when fewer than query heads).
    pub num_key_value_heads: usize,
    /// Width of one head; `hidden_size / num_attention_heads` when absent.
    #[config(default = "None")]
    pub head_dim: Option<usize>,
    /// RMSNorm epsilon.
    #[config(default = 1e-6)]
    pub rms_norm_eps: f64,
    /// RoPE base.
    #[config(default = 10000.0)]
    pub rope_theta: f64,
    /// RoPE frequency rescaling.
    #[config(default = "RopeScaling::Default")]
    pub rope_scaling: RopeScaling,
    /// Longest context the model was trained for (informational).
    #[config(default = 2048)]
    pub max_position_embeddings: usize,
    /// Bias on q/k/v projections (Qwen2: true; LLaMA: `attention_bias`).
    #[config(default = false)]
    pub qkv_bias: bool,
    /// Bias on the attention output projection (LLaMA's `attention_bias`; Qwen2: false).
    #[config(default = false)]
    pub o_bias: bool,
    /// Bias on the MLP projections (LLaMA's `mlp_bias`).
    #[config(default = false)]
    pub mlp_bias: bool,
    /// LM head shares the embedding matrix.
    #[config(default = false)]
    pub tie_word_embeddings: bool,
}

impl DecoderConfig {
    /// A decoder that trains from scratch on two CPU cores in seconds: 2 layers of width 64,
    /// 4 query heads sharing 2 key/value heads.
    pub fn tiny(vocab_size: usize) -> Self {
        Self::new(vocab_size, 64, 128, 2, 4, 2)
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads)
    }

    /// Initialise the decoder on `device`.
    pub fn init(&self, device: &Device) -> DecoderLm {
        let head_dim = self.head_dim();
        assert!(
            head_dim.is_multiple_of(2),
            "RoPE needs an even head_dim, got {head_dim}"
        );
        let d = self.hidden_size;
        let layers = (0..self.num_hidden_layers)
            .map(|_| DecoderLayer {
                input_layernorm: RmsNormConfig::new(d)
                    .with_epsilon(self.rms_norm_eps)
                    .init(device),
                self_attn: SelfAttentionConfig::new(
                    d,
                    self.num_attention_heads,
                    self.num_key_value_heads,
                    head_dim,
                )
                .with_qkv_bias(self.qkv_bias)
                .with_out_bias(self.o_bias)
                .init(device),
                post_attention_layernorm: RmsNormConfig::new(d)
                    .with_epsilon(self.rms_norm_eps)
                    .init(device),
                mlp: SwiGluMlp {
                    gate_proj: LinearConfig::new(d, self.intermediate_size)
                        .with_bias(self.mlp_bias)
                        .init(device),
                    up_proj: LinearConfig::new(d, self.intermediate_size)
                        .with_bias(self.mlp_bias)
                        .init(device),
                    down_proj: LinearConfig::new(self.intermediate_size, d)
                        .with_bias(self.mlp_bias)
                        .init(device),
                },
                plora: None,
            })
            .collect();
        DecoderLm {
            embed_tokens: EmbeddingConfig::new(self.vocab_size, d).init(device),
            layers,
            norm: RmsNormConfig::new(d)
                .with_epsilon(self.rms_norm_eps)
                .init(device),
            lm_head: (!self.tie_word_embeddings).then(|| {
                LinearConfig::new(d, self.vocab_size)
                    .with_bias(false)
                    .init(device)
            }),
            inv_freq: inv_freq(head_dim, self.rope_theta, &self.rope_scaling),
        }
    }
}

/// `down(silu(gate(x)) · up(x))`.
#[derive(Module, Debug)]
pub struct SwiGluMlp {
    /// Gate projection.
    pub gate_proj: Linear,
    /// Up projection.
    pub up_proj: Linear,
    /// Down projection.
    pub down_proj: Linear,
}

impl SwiGluMlp {
    /// The MLP, with PLoRA adapters at the positions where `adapters.1` is 1.
    fn forward(&self, x: Tensor<3>, adapters: Option<(&LayerPLora, &Tensor<3>)>) -> Tensor<3> {
        let image = adapters.map(|(_, m)| m);
        let pick = |f: fn(&LayerPLora) -> Option<&PLoraAdapter>| adapters.and_then(|(a, _)| f(a));
        let gate = silu(adapted(
            &self.gate_proj,
            pick(|a| a.gate_proj.as_ref()),
            x.clone(),
            image,
        ));
        let up = adapted(&self.up_proj, pick(|a| a.up_proj.as_ref()), x, image);
        adapted(
            &self.down_proj,
            pick(|a| a.down_proj.as_ref()),
            gate * up,
            image,
        )
    }
}

/// One pre-norm decoder layer.
#[derive(Module, Debug)]
pub struct DecoderLayer {
    /// RMSNorm before attention.
    pub input_layernorm: RmsNorm,
    /// Grouped-query self-attention with RoPE.
    pub self_attn: SelfAttention,
    /// RMSNorm before the MLP.
    pub post_attention_layernorm: RmsNorm,
    /// SwiGLU MLP.
    pub mlp: SwiGluMlp,
    /// PLoRA adapters acting at image-token positions only ([`crate::plora`]); `None`: none.
    pub plora: Option<LayerPLora>,
}

impl DecoderLayer {
    fn forward(
        &self,
        x: Tensor<3>,
        rope: &RotaryCache,
        masking: &Masking,
        cache: Option<&mut Option<LayerCache>>,
        image: Option<&Tensor<3>>,
    ) -> Tensor<3> {
        let adapters = self.plora.as_ref().zip(image);
        let h = x.clone()
            + self.self_attn.forward_adapted(
                self.input_layernorm.forward(x),
                Some(rope),
                masking,
                cache,
                adapters,
            );
        h.clone()
            + self
                .mlp
                .forward(self.post_attention_layernorm.forward(h), adapters)
    }
}

/// Keys and values of every layer for the tokens seen so far.
#[derive(Clone, Debug, Default)]
pub struct KvCache {
    layers: Vec<Option<LayerCache>>,
}

impl KvCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of cached positions (0 when empty).
    pub fn len(&self) -> usize {
        self.layers
            .first()
            .and_then(|l| l.as_ref())
            .map_or(0, |l| l.key.dims()[2])
    }

    /// Whether nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The decoder-only language model.
#[derive(Module, Debug)]
pub struct DecoderLm {
    /// Token embeddings `[vocab, d]`.
    pub embed_tokens: Embedding,
    /// Decoder layers.
    pub layers: Vec<DecoderLayer>,
    /// Final RMSNorm.
    pub norm: RmsNorm,
    /// Output projection; `None` when tied to `embed_tokens`.
    pub lm_head: Option<Linear>,
    /// RoPE inverse frequencies (derived from the config, not a parameter).
    #[module(skip)]
    pub inv_freq: Vec<f32>,
}

impl DecoderLm {
    /// Embed token ids `[batch, seq]` → `[batch, seq, d]`.
    pub fn embed(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        self.embed_tokens.forward(ids)
    }

    /// Vocabulary size.
    pub fn vocab_size(&self) -> usize {
        self.embed_tokens.weight.dims()[0]
    }

    /// Model width.
    pub fn hidden_size(&self) -> usize {
        self.embed_tokens.weight.dims()[1]
    }

    /// Grow the vocabulary to `vocab` rows (tokens added to the tokenizer, e.g. `<image>`): the
    /// new rows of the embeddings and of an untied LM head start at the mean of the existing
    /// ones (as transformers' `resize_token_embeddings(mean_resizing=True)` starts them, without
    /// the sampling), so the new tokens begin as an average token and logits of the old tokens
    /// are unchanged. A `vocab` not above the current size changes nothing.
    pub fn grow_vocab(mut self, vocab: usize) -> Self {
        let old = self.vocab_size();
        if vocab <= old {
            return self;
        }
        let grow = |w: Tensor<2>, dim: usize| {
            let mean = w.clone().mean_dim(dim);
            let mut reps = [1, 1];
            reps[dim] = vocab - old;
            Tensor::cat(vec![w, mean.repeat(&reps)], dim)
        };
        self.embed_tokens.weight = self.embed_tokens.weight.map(|w| grow(w, 0));
        if let Some(head) = self.lm_head.as_mut() {
            // burn's Linear stores `[d_in, d_out]`: the vocabulary is dimension 1.
            head.weight = head.weight.clone().map(|w| grow(w, 1));
            head.bias = head.bias.clone().map(|b| {
                b.map(|b| {
                    let mean = b.clone().mean();
                    Tensor::cat(vec![b, mean.repeat(&[vocab - old])], 0)
                })
            });
        }
        self
    }

    /// Run the decoder on embeddings `[batch, seq, d]` and return the final-normed hidden states.
    ///
    /// - `position_ids` `[batch, seq]`: the RoPE position of each new token.
    /// - `key_valid` `[batch, cached + seq]`: `false` for keys no query may see (padding,
    ///   hidden image tokens). `None`: every key is real, plain causal attention.
    /// - `cache`: keys/values of earlier tokens, extended with the new ones.
    pub fn forward_embeds(
        &self,
        embeds: Tensor<3>,
        position_ids: Tensor<2, Int>,
        key_valid: Option<Tensor<2, Bool>>,
        cache: Option<&mut KvCache>,
    ) -> Tensor<3> {
        self.forward_spliced(embeds, position_ids, key_valid, None, cache)
    }

    /// Whether any layer has PLoRA adapters (then the image positions matter to the decoder).
    pub fn has_plora(&self) -> bool {
        self.layers.iter().any(|l| l.plora.is_some())
    }

    /// [`forward_embeds`](Self::forward_embeds) on a sequence with image tokens spliced in:
    /// `image` `[batch, seq]` marks them, so that PLoRA adapters act there (and nowhere else).
    /// Without adapters `image` changes nothing.
    pub fn forward_spliced(
        &self,
        embeds: Tensor<3>,
        position_ids: Tensor<2, Int>,
        key_valid: Option<Tensor<2, Bool>>,
        image: Option<Tensor<2, Bool>>,
        mut cache: Option<&mut KvCache>,
    ) -> Tensor<3> {
        let image = image
            .filter(|_| self.has_plora())
            .map(crate::plora::image_mask);
        let device = embeds.device();
        let seq = embeds.dims()[1];
        let rope = RotaryCache::new(position_ids, &self.inv_freq, &device);
        let masking = match key_valid {
            Some(valid) => Masking::Explicit(Box::new(causal_mask(valid, seq))),
            None => Masking::Causal,
        };
        if let Some(cache) = cache.as_deref_mut()
            && cache.layers.is_empty()
        {
            cache.layers = vec![None; self.layers.len()];
        }
        let mut x = embeds;
        for (i, layer) in self.layers.iter().enumerate() {
            let slot = cache.as_deref_mut().map(|c| &mut c.layers[i]);
            x = layer.forward(x, &rope, &masking, slot, image.as_ref());
        }
        self.norm.forward(x)
    }

    /// LM head: hidden states `[..., d]` → logits `[..., vocab]`.
    pub fn logits<const D: usize>(&self, hidden: Tensor<D>) -> Tensor<D> {
        match &self.lm_head {
            Some(head) => head.forward(hidden),
            None => linear(hidden, self.embed_tokens.weight.val().transpose(), None),
        }
    }

    /// Logits `[batch, seq, vocab]` for token ids, as [`forward_embeds`](Self::forward_embeds).
    pub fn forward(
        &self,
        ids: Tensor<2, Int>,
        position_ids: Tensor<2, Int>,
        key_valid: Option<Tensor<2, Bool>>,
        cache: Option<&mut KvCache>,
    ) -> Tensor<3> {
        let hidden = self.forward_embeds(self.embed(ids), position_ids, key_valid, cache);
        self.logits(hidden)
    }
}

/// HF → vlalign key map of a LLaMA/Qwen2 causal LM whose keys start with `prefix`
/// (`model.*`, `lm_head.*` below it).
pub fn hf_key_map(prefix: &str) -> Vec<(String, String)> {
    let p = crate::hf::checkpoint::escape(prefix);
    vec![(format!(r"^{p}model\."), prefix.to_string())]
}

/// vlalign → HF key map (inverse of [`hf_key_map`]).
pub fn hf_save_map(prefix: &str) -> Vec<(String, String)> {
    let p = crate::hf::checkpoint::escape(prefix);
    vec![(
        format!(r"^{p}(embed_tokens|layers|norm)\."),
        format!("{prefix}model.${{1}}."),
    )]
}
