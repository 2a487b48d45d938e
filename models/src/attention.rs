//! Multi-head self-attention with grouped-query heads, on Burn's fused `attention` op.
//!
//! Burn 0.22's `nn::MultiHeadAttention` has neither grouped-query attention nor rotary
//! positions and materialises the attention weights; both the vision tower (plain MHA) and the
//! decoder (GQA + RoPE + KV cache) use this module instead.

use burn::config::Config;
use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, Device, Tensor};

use crate::plora::{LayerPLora, PLoraAdapter, adapted};
use crate::rope::RotaryCache;

/// Which keys each query may attend to.
#[derive(Clone, Debug)]
pub enum Masking {
    /// Every query sees every key (vision tower).
    Full,
    /// Causal: query `i` sees keys up to its own position (keys of a cache come first).
    Causal,
    /// An explicit mask `[batch, 1, queries, keys]`, `true` where a query must not attend
    /// (see [`crate::mask::causal_mask`]).
    Explicit(Box<Tensor<4, Bool>>),
}

/// Configuration of a [`SelfAttention`] layer.
#[derive(Config, Debug)]
pub struct SelfAttentionConfig {
    /// Model width.
    pub d_model: usize,
    /// Number of query heads.
    pub n_heads: usize,
    /// Number of key/value heads (`n_heads` for plain MHA, fewer for GQA).
    pub n_kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Bias on the query/key/value projections (CLIP, Qwen2).
    #[config(default = false)]
    pub qkv_bias: bool,
    /// Bias on the output projection (CLIP).
    #[config(default = false)]
    pub out_bias: bool,
}

/// Self-attention: `o_proj(softmax(q kᵀ / √d + mask) v)`, with `n_heads / n_kv_heads` query heads
/// sharing each key/value head.
#[derive(Module, Debug)]
pub struct SelfAttention {
    /// Query projection `[d_model, n_heads · head_dim]`.
    pub q_proj: Linear,
    /// Key projection `[d_model, n_kv_heads · head_dim]`.
    pub k_proj: Linear,
    /// Value projection `[d_model, n_kv_heads · head_dim]`.
    pub v_proj: Linear,
    /// Output projection `[n_heads · head_dim, d_model]`.
    pub o_proj: Linear,
    /// Number of query heads.
    pub n_heads: usize,
    /// Number of key/value heads.
    pub n_kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
}

impl SelfAttentionConfig {
    /// Initialise the layer on `device`.
    pub fn init(&self, device: &Device) -> SelfAttention {
        assert!(
            self.n_kv_heads > 0 && self.n_heads.is_multiple_of(self.n_kv_heads),
            "n_heads ({}) must be a multiple of n_kv_heads ({})",
            self.n_heads,
            self.n_kv_heads
        );
        let q = self.n_heads * self.head_dim;
        let kv = self.n_kv_heads * self.head_dim;
        SelfAttention {
            q_proj: LinearConfig::new(self.d_model, q)
                .with_bias(self.qkv_bias)
                .init(device),
            k_proj: LinearConfig::new(self.d_model, kv)
                .with_bias(self.qkv_bias)
                .init(device),
            v_proj: LinearConfig::new(self.d_model, kv)
                .with_bias(self.qkv_bias)
                .init(device),
            o_proj: LinearConfig::new(q, self.d_model)
                .with_bias(self.out_bias)
                .init(device),
            n_heads: self.n_heads,
            n_kv_heads: self.n_kv_heads,
            head_dim: self.head_dim,
        }
    }
}

/// Cached keys and values of one attention layer, `[batch, n_kv_heads, seq, head_dim]`, with
/// rotary positions already applied.
#[derive(Clone, Debug)]
pub struct LayerCache {
    /// Keys.
    pub key: Tensor<4>,
    /// Values.
    pub value: Tensor<4>,
}

impl SelfAttention {
    /// Attention over `x` `[batch, seq, d_model]`.
    ///
    /// - `rope`: rotary cos/sin for the query positions (decoder), or `None` (vision tower).
    /// - `masking`: which keys each query sees.
    /// - `cache`: keys/values of earlier positions; the new ones are appended to it.
    pub fn forward(
        &self,
        x: Tensor<3>,
        rope: Option<&RotaryCache>,
        masking: &Masking,
        cache: Option<&mut Option<LayerCache>>,
    ) -> Tensor<3> {
        self.forward_adapted(x, rope, masking, cache, None)
    }

    /// [`forward`](Self::forward) with PLoRA adapters on the projections, applied at the
    /// positions where `adapters.1` (`[batch, seq, 1]`) is 1 (see [`crate::plora`]).
    pub fn forward_adapted(
        &self,
        x: Tensor<3>,
        rope: Option<&RotaryCache>,
        masking: &Masking,
        cache: Option<&mut Option<LayerCache>>,
        adapters: Option<(&LayerPLora, &Tensor<3>)>,
    ) -> Tensor<3> {
        let [batch, seq, _] = x.dims();
        let image = adapters.map(|(_, m)| m);
        let project = |linear: &Linear, pick: fn(&LayerPLora) -> Option<&PLoraAdapter>, x| {
            adapted(linear, adapters.and_then(|(a, _)| pick(a)), x, image)
        };
        let q = project(&self.q_proj, |a| a.q_proj.as_ref(), x.clone());
        let k = project(&self.k_proj, |a| a.k_proj.as_ref(), x.clone());
        let v = project(&self.v_proj, |a| a.v_proj.as_ref(), x);
        let q = self.heads(q, self.n_heads);
        let k = self.heads(k, self.n_kv_heads);
        let v = self.heads(v, self.n_kv_heads);
        let (q, k) = match rope {
            Some(rope) => (rope.apply(q), rope.apply(k)),
            None => (q, k),
        };
        let (k, v) = match cache {
            Some(slot) => {
                let (k, v) = match slot.take() {
                    Some(past) => (
                        Tensor::cat(vec![past.key, k], 2),
                        Tensor::cat(vec![past.value, v], 2),
                    ),
                    None => (k, v),
                };
                *slot = Some(LayerCache {
                    key: k.clone(),
                    value: v.clone(),
                });
                (k, v)
            }
            None => (k, v),
        };
        let groups = self.n_heads / self.n_kv_heads;
        let out = |context: Tensor<3>| project(&self.o_proj, |a| a.o_proj.as_ref(), context);
        if seq == 1 && groups > 1 {
            return out(self.decode_grouped(q, k, v, masking, batch));
        }
        let k = repeat_kv(k, groups);
        let v = repeat_kv(v, groups);
        let keys = k.dims()[2];
        let mut options = AttentionModuleOptions::default();
        let mask = match masking {
            Masking::Full => None,
            Masking::Causal => {
                options.is_causal = true;
                None
            }
            Masking::Explicit(m) => Some((**m).clone().expand([batch, self.n_heads, seq, keys])),
        };
        let context = attention(q, k, v, mask, None, options);
        let context = context
            .swap_dims(1, 2)
            .reshape([batch, seq, self.n_heads * self.head_dim]);
        out(context)
    }

    /// One new token per row (cached decoding) with grouped-query heads: the `groups` query
    /// heads that share a key/value head are laid out as `groups` query rows of that head, so
    /// attention reads the cached keys and values once instead of repeating them per query head.
    /// A single query may see every cached key, so the only mask is an explicit one (padding).
    /// Returns the context `[batch, 1, n_heads · head_dim]` before the output projection.
    fn decode_grouped(
        &self,
        q: Tensor<4>,
        k: Tensor<4>,
        v: Tensor<4>,
        masking: &Masking,
        batch: usize,
    ) -> Tensor<3> {
        let groups = self.n_heads / self.n_kv_heads;
        let keys = k.dims()[2];
        let q = q.reshape([batch, self.n_kv_heads, groups, self.head_dim]);
        let mask = match masking {
            // `[batch, 1, 1, keys]`: the one query row, shared by the group's query heads.
            Masking::Explicit(m) => {
                Some((**m).clone().expand([batch, self.n_kv_heads, groups, keys]))
            }
            Masking::Full | Masking::Causal => None,
        };
        let context = attention(q, k, v, mask, None, AttentionModuleOptions::default());
        context.reshape([batch, 1, self.n_heads * self.head_dim])
    }

    /// `[batch, seq, heads·head_dim]` → `[batch, heads, seq, head_dim]`.
    fn heads(&self, x: Tensor<3>, heads: usize) -> Tensor<4> {
        let [batch, seq, _] = x.dims();
        x.reshape([batch, seq, heads, self.head_dim])
            .swap_dims(1, 2)
    }
}

/// Repeat each key/value head `groups` times along the head axis (HF's `repeat_kv`): head `h` of
/// the output is head `h / groups` of the input.
pub fn repeat_kv(x: Tensor<4>, groups: usize) -> Tensor<4> {
    if groups == 1 {
        return x;
    }
    let [batch, heads, seq, dim] = x.dims();
    x.unsqueeze_dim::<5>(2)
        .expand([batch, heads, groups, seq, dim])
        .reshape([batch, heads * groups, seq, dim])
}
