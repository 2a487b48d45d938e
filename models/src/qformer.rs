//! The BLIP-2 Querying Transformer (Q-Former): learned query tokens run through post-norm BERT
//! layers: self-attention over the queries (and, in InstructBLIP, the instruction's text tokens),
//! cross-attention from the queries to the image features every `cross_attention_frequency`
//! layers, and separate feed-forward blocks for query and text tokens.
//!
//! Field names follow transformers' module tree (`Blip2QFormerModel`,
//! `InstructBlipQFormerModel`) except BERT's `LayerNorm`, spelled `layer_norm` here.
//! [`QFormer::run_layer`] exposes one layer so that SAM's W-Former can run a second stream of
//! query states through the same layers.

use burn::config::Config;
use burn::module::Module;
use burn::nn::{Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, Device, Int, Tensor};

use crate::vit::VisionActivation;

/// Configuration of a [`QFormer`] (field names as HF's `Blip2QFormerConfig`).
#[derive(Config, Debug, PartialEq)]
pub struct QFormerConfig {
    /// Width of the query states.
    pub hidden_size: usize,
    /// Number of BERT layers.
    pub num_hidden_layers: usize,
    /// Number of attention heads.
    pub num_attention_heads: usize,
    /// Width of the feed-forward blocks.
    pub intermediate_size: usize,
    /// Width of the image features the queries cross-attend to.
    pub encoder_hidden_size: usize,
    /// A cross-attention block in every layer whose index is a multiple of this.
    #[config(default = 2)]
    pub cross_attention_frequency: usize,
    /// LayerNorm epsilon.
    #[config(default = 1e-12)]
    pub layer_norm_eps: f64,
    /// Feed-forward activation.
    #[config(default = "VisionActivation::Gelu")]
    pub hidden_act: VisionActivation,
    /// InstructBLIP: the instruction's tokens run through the Q-Former with the queries (word
    /// and position embeddings, text feed-forward blocks).
    #[config(default = false)]
    pub text_input: bool,
    /// Vocabulary of the instruction tokenizer (BERT's), with `text_input`.
    #[config(default = 30522)]
    pub vocab_size: usize,
    /// Longest instruction, with `text_input`.
    #[config(default = 512)]
    pub max_position_embeddings: usize,
}

impl QFormerConfig {
    /// A Q-Former small enough to train from scratch on two CPU cores: 2 layers of width 64
    /// (cross-attention in the first), reading features of width `encoder_hidden_size`.
    pub fn tiny(encoder_hidden_size: usize) -> Self {
        Self::new(64, 2, 4, 128, encoder_hidden_size).with_cross_attention_frequency(1)
    }

    /// Initialise the Q-Former on `device`.
    pub fn init(&self, device: &Device) -> QFormer {
        assert!(
            self.hidden_size.is_multiple_of(self.num_attention_heads),
            "hidden_size {} is not a multiple of num_attention_heads {}",
            self.hidden_size,
            self.num_attention_heads
        );
        assert!(
            self.cross_attention_frequency > 0,
            "cross_attention_frequency must be at least 1"
        );
        let d = self.hidden_size;
        let norm = || {
            LayerNormConfig::new(d)
                .with_epsilon(self.layer_norm_eps)
                .init(device)
        };
        let block = |kv: usize| BertAttention {
            attention: BertSelfAttention {
                query: LinearConfig::new(d, d).init(device),
                key: LinearConfig::new(kv, d).init(device),
                value: LinearConfig::new(kv, d).init(device),
                heads: self.num_attention_heads,
            },
            output: BertSelfOutput {
                dense: LinearConfig::new(d, d).init(device),
                layer_norm: norm(),
            },
        };
        let ffn = || {
            (
                Intermediate {
                    dense: LinearConfig::new(d, self.intermediate_size).init(device),
                    act: self.hidden_act,
                },
                BertOutput {
                    dense: LinearConfig::new(self.intermediate_size, d).init(device),
                    layer_norm: norm(),
                },
            )
        };
        let layer = (0..self.num_hidden_layers)
            .map(|i| {
                let (intermediate_query, output_query) = ffn();
                let (intermediate, output) = match self.text_input {
                    true => {
                        let (i, o) = ffn();
                        (Some(i), Some(o))
                    }
                    false => (None, None),
                };
                QFormerLayer {
                    attention: block(d),
                    crossattention: i
                        .is_multiple_of(self.cross_attention_frequency)
                        .then(|| block(self.encoder_hidden_size)),
                    intermediate,
                    output,
                    intermediate_query,
                    output_query,
                }
            })
            .collect();
        let (layernorm, embeddings) = match self.text_input {
            false => (Some(norm()), None),
            true => (
                None,
                Some(QFormerEmbeddings {
                    word_embeddings: EmbeddingConfig::new(self.vocab_size, d).init(device),
                    position_embeddings: EmbeddingConfig::new(self.max_position_embeddings, d)
                        .init(device),
                    layernorm: norm(),
                }),
            ),
        };
        QFormer {
            layernorm,
            embeddings,
            encoder: QFormerEncoder { layer },
        }
    }
}

/// Multi-head attention projections (the keys and values may come from the image features).
#[derive(Module, Debug)]
pub struct BertSelfAttention {
    /// Query projection.
    pub query: Linear,
    /// Key projection.
    pub key: Linear,
    /// Value projection.
    pub value: Linear,
    /// Number of heads.
    #[module(skip)]
    pub heads: usize,
}

/// The output projection, residual and post-norm of an attention block.
#[derive(Module, Debug)]
pub struct BertSelfOutput {
    /// Projection.
    pub dense: Linear,
    /// Post-norm (`LayerNorm` in HF).
    pub layer_norm: LayerNorm,
}

/// One attention block: `LN(x + dense(attn(x, kv)))`.
#[derive(Module, Debug)]
pub struct BertAttention {
    /// The attention itself.
    pub attention: BertSelfAttention,
    /// Projection, residual, norm.
    pub output: BertSelfOutput,
}

impl BertAttention {
    /// `x` `[b, q, d]` attends to `kv` `[b, k, d_kv]`; `mask` `[b, 1, 1|q, k]` is `true` where
    /// a key must not be seen.
    pub fn forward(&self, x: Tensor<3>, kv: Tensor<3>, mask: Option<Tensor<4, Bool>>) -> Tensor<3> {
        let a = &self.attention;
        let [batch, q_len, d] = x.dims();
        let k_len = kv.dims()[1];
        let hd = d / a.heads;
        let heads = |t: Tensor<3>, n: usize| t.reshape([batch, n, a.heads, hd]).swap_dims(1, 2);
        let q = heads(a.query.forward(x.clone()), q_len);
        let k = heads(a.key.forward(kv.clone()), k_len);
        let v = heads(a.value.forward(kv), k_len);
        let mask = mask.map(|m| m.expand([batch, a.heads, q_len, k_len]));
        let context = attention(q, k, v, mask, None, AttentionModuleOptions::default())
            .swap_dims(1, 2)
            .reshape([batch, q_len, d]);
        self.output
            .layer_norm
            .forward(self.output.dense.forward(context) + x)
    }
}

/// The feed-forward up projection and activation.
#[derive(Module, Debug)]
pub struct Intermediate {
    /// Up projection.
    pub dense: Linear,
    /// Activation.
    #[module(skip)]
    pub act: VisionActivation,
}

/// The feed-forward down projection, residual and post-norm.
#[derive(Module, Debug)]
pub struct BertOutput {
    /// Down projection.
    pub dense: Linear,
    /// Post-norm (`LayerNorm` in HF).
    pub layer_norm: LayerNorm,
}

fn feed_forward(up: &Intermediate, down: &BertOutput, x: Tensor<3>) -> Tensor<3> {
    let h = up.act.apply(up.dense.forward(x.clone()));
    down.layer_norm.forward(down.dense.forward(h) + x)
}

/// One Q-Former layer.
#[derive(Module, Debug)]
pub struct QFormerLayer {
    /// Self-attention over queries and text.
    pub attention: BertAttention,
    /// Cross-attention from the queries to the image features (every
    /// `cross_attention_frequency` layers).
    pub crossattention: Option<BertAttention>,
    /// Text feed-forward (InstructBLIP).
    pub intermediate: Option<Intermediate>,
    /// Text feed-forward output (InstructBLIP).
    pub output: Option<BertOutput>,
    /// Query feed-forward.
    pub intermediate_query: Intermediate,
    /// Query feed-forward output.
    pub output_query: BertOutput,
}

/// The layers.
#[derive(Module, Debug)]
pub struct QFormerEncoder {
    /// Layers, first to last.
    pub layer: Vec<QFormerLayer>,
}

/// InstructBLIP's instruction embeddings (queries first, then word + position embeddings of
/// the text, one LayerNorm over both).
#[derive(Module, Debug)]
pub struct QFormerEmbeddings {
    /// BERT word embeddings.
    pub word_embeddings: Embedding,
    /// Absolute positions of the text tokens.
    pub position_embeddings: Embedding,
    /// LayerNorm over queries and text.
    pub layernorm: LayerNorm,
}

/// Instruction tokens for InstructBLIP's Q-Former: ids `[b, t]` and `valid` `[b, t]`
/// (`false` for padding).
#[derive(Clone, Debug)]
pub struct QFormerText {
    /// BERT token ids.
    pub ids: Tensor<2, Int>,
    /// `true` for real tokens.
    pub valid: Tensor<2, Bool>,
}

/// The Q-Former.
#[derive(Module, Debug)]
pub struct QFormer {
    /// BLIP-2: LayerNorm on the query embeddings.
    pub layernorm: Option<LayerNorm>,
    /// InstructBLIP: text embeddings and the LayerNorm over queries and text.
    pub embeddings: Option<QFormerEmbeddings>,
    /// The layers.
    pub encoder: QFormerEncoder,
}

/// States entering the layers: `[b, q (+ t), d]`, the query count, and the self-attention mask.
#[derive(Clone, Debug)]
pub struct QFormerStates {
    /// Query states, then text states.
    pub hidden: Tensor<3>,
    /// How many leading positions are queries.
    pub query_length: usize,
    /// `[b, 1, 1, q + t]`, `true` where a key is padding (text only).
    pub mask: Option<Tensor<4, Bool>>,
}

impl QFormer {
    /// Number of layers.
    pub fn num_layers(&self) -> usize {
        self.encoder.layer.len()
    }

    /// The states entering the first layer: the (normalised) queries `[b, q, d]`, followed by
    /// the instruction's tokens when given (InstructBLIP).
    pub fn embed(&self, queries: Tensor<3>, text: Option<QFormerText>) -> QFormerStates {
        let query_length = queries.dims()[1];
        match (&self.embeddings, text) {
            (Some(e), Some(text)) => {
                let [batch, t] = text.ids.dims();
                let device = queries.device();
                let positions = Tensor::<1, Int>::arange(0..t as i64, &device)
                    .reshape([1, t])
                    .expand([batch, t]);
                let words =
                    e.word_embeddings.forward(text.ids) + e.position_embeddings.forward(positions);
                let hidden = e.layernorm.forward(Tensor::cat(vec![queries, words], 1));
                let query_valid = Tensor::<2, Bool>::full([batch, query_length], true, &device);
                let valid = Tensor::cat(vec![query_valid, text.valid], 1);
                let keys = query_length + t;
                QFormerStates {
                    hidden,
                    query_length,
                    mask: Some(valid.bool_not().reshape([batch, 1, 1, keys])),
                }
            }
            (Some(e), None) => QFormerStates {
                hidden: e.layernorm.forward(queries),
                query_length,
                mask: None,
            },
            (None, text) => {
                assert!(
                    text.is_none(),
                    "this Q-Former takes no instruction text (BLIP-2); InstructBLIP's does"
                );
                let norm = self
                    .layernorm
                    .as_ref()
                    .expect("a BLIP-2 Q-Former has a layernorm");
                QFormerStates {
                    hidden: norm.forward(queries),
                    query_length,
                    mask: None,
                }
            }
        }
    }

    /// Layer `index` on `states`, its query positions cross-attending to `image` `[b, p, d_v]`.
    pub fn run_layer(
        &self,
        index: usize,
        states: QFormerStates,
        image: Tensor<3>,
    ) -> QFormerStates {
        let layer = &self.encoder.layer[index];
        let QFormerStates {
            hidden,
            query_length,
            mask,
        } = states;
        let attended = layer
            .attention
            .forward(hidden.clone(), hidden, mask.clone());
        let [batch, total, d] = attended.dims();
        let mut queries = attended.clone().narrow(1, 0, query_length);
        if let Some(cross) = &layer.crossattention {
            queries = cross.forward(queries, image, None);
        }
        let mut out = feed_forward(&layer.intermediate_query, &layer.output_query, queries);
        if total > query_length {
            let (up, down) = match (&layer.intermediate, &layer.output) {
                (Some(up), Some(down)) => (up, down),
                _ => panic!("text states need the text feed-forward (InstructBLIP Q-Former)"),
            };
            let text = attended.narrow(1, query_length, total - query_length);
            out = Tensor::cat(vec![out, feed_forward(up, down, text)], 1);
        }
        debug_assert_eq!(out.dims(), [batch, total, d]);
        QFormerStates {
            hidden: out,
            query_length,
            mask,
        }
    }

    /// The query outputs `[b, q, d]` for `queries` `[b, q, d]` reading `image` `[b, p, d_v]`
    /// (and the instruction `text`, InstructBLIP).
    pub fn forward(
        &self,
        queries: Tensor<3>,
        image: Tensor<3>,
        text: Option<QFormerText>,
    ) -> Tensor<3> {
        let mut states = self.embed(queries, text);
        for i in 0..self.num_layers() {
            states = self.run_layer(i, states, image.clone());
        }
        let q = states.query_length;
        states.hidden.narrow(1, 0, q)
    }
}

/// HF → vlalign key map of a Q-Former whose keys start with `prefix`.
pub fn hf_key_map(prefix: &str) -> Vec<(String, String)> {
    let p = crate::hf::checkpoint::escape(prefix);
    vec![(
        format!(r"^({p}.*)\.LayerNorm\.(weight|bias)$"),
        "${1}.layer_norm.${2}".to_string(),
    )]
}
