//! LaVIT's dynamic visual tokenizer (Jin et al. 2024, "Unified Language-Vision Pretraining in
//! LLM with Dynamic Discrete Visual Tokenization"), on the ViT patch features of a LLaVA:
//!
//! 1. **Selector**: an MLP scores each patch `[drop, keep]`; in training a hard Gumbel-softmax
//!    sample decides (straight-through: the forward value is 0/1, the gradient is the soft
//!    sample's), in use the larger logit.
//! 2. **Merger**: every token attends to the *dropped* patches of its image only (one head,
//!    residual), so a kept token carries what was dropped around it.
//! 3. **Codebook**: the merged tokens, mapped to `d_code` and L2-normalised, are quantised to
//!    the most similar of `K` L2-normalised codes (straight-through: the decoder sees the code,
//!    the encoder gets its gradient).
//! 4. **Decoder**: one learned query per patch attends to the *kept* codes and reconstructs the
//!    ViT features of every patch, kept or not.
//!
//! The LLM ([`LavitLlava`]) sees the merged features of the kept patches through LLaVA's
//! projector in their slots; the dropped patches' slots are hidden from attention, so each image
//! costs the LLM as many tokens as it kept. The losses (reconstruction, codebook, commitment,
//! keep ratio) live with the objectives (`vlalign_align::lavit`).

use burn::config::Config;
use burn::module::{Module, Param};
use burn::nn::{LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::activation::{gelu, softmax};
use burn::tensor::{Device, Distribution, Int, Tensor};

use crate::generate::{GenerationConfig, generate_spliced};
use crate::llava::{Layout, Llava, LlavaInput, decode, int_tensor, select_images, splice_visual};

/// LaVIT tokenizer sizes.
#[derive(Config, Debug, PartialEq)]
pub struct LavitConfig {
    /// Width of the ViT features.
    pub d_vision: usize,
    /// Patches per image (one decoder query each).
    pub tokens: usize,
    /// Selector hidden width.
    #[config(default = 64)]
    pub hidden: usize,
    /// Code width.
    #[config(default = 32)]
    pub d_code: usize,
    /// Codebook entries.
    #[config(default = 128)]
    pub codebook_size: usize,
}

/// The tokenizer (module docs).
#[derive(Module, Debug)]
pub struct Lavit {
    /// Selector: features → hidden.
    pub select_fc1: Linear,
    /// Selector: hidden → `[drop, keep]` logits.
    pub select_fc2: Linear,
    /// Merger query, key, value, output projections.
    pub merge_q: Linear,
    /// Merger key.
    pub merge_k: Linear,
    /// Merger value.
    pub merge_v: Linear,
    /// Merger output.
    pub merge_o: Linear,
    /// Norm before the merger.
    pub merge_norm: LayerNorm,
    /// Merged feature → code space.
    pub to_code: Linear,
    /// Codes `[K, d_code]` (used L2-normalised).
    pub codebook: Param<Tensor<2>>,
    /// One decoder query per patch `[tokens, d_code]`.
    pub queries: Param<Tensor<2>>,
    /// Decoder key.
    pub dec_k: Linear,
    /// Decoder value.
    pub dec_v: Linear,
    /// Decoder MLP in.
    pub dec_fc1: Linear,
    /// Decoder MLP out → ViT width.
    pub dec_fc2: Linear,
}

impl LavitConfig {
    /// A fresh tokenizer.
    pub fn init(&self, device: &Device) -> Lavit {
        let (d, c) = (self.d_vision, self.d_code);
        let lin = |i, o| LinearConfig::new(i, o).init(device);
        Lavit {
            select_fc1: lin(d, self.hidden),
            select_fc2: lin(self.hidden, 2),
            merge_q: lin(d, d),
            merge_k: lin(d, d),
            merge_v: lin(d, d),
            // No bias: a token with no dropped patch to fold in keeps its feature exactly.
            merge_o: LinearConfig::new(d, d).with_bias(false).init(device),
            merge_norm: LayerNormConfig::new(d).init(device),
            to_code: lin(d, c),
            codebook: Param::from_tensor(Tensor::random(
                [self.codebook_size, c],
                Distribution::Normal(0.0, 1.0),
                device,
            )),
            queries: Param::from_tensor(Tensor::random(
                [self.tokens, c],
                Distribution::Normal(0.0, 1.0),
                device,
            )),
            dec_k: lin(c, c),
            dec_v: lin(c, c),
            dec_fc1: lin(c, 2 * d),
            dec_fc2: lin(2 * d, d),
        }
    }
}

/// What the tokenizer makes of `[images, tokens, d_vision]` features.
#[derive(Clone, Debug)]
pub struct LavitOutput {
    /// 1 for kept patches, 0 for dropped `[images, tokens]` (straight-through when sampled).
    pub keep: Tensor<2>,
    /// Features with the dropped patches folded in `[images, tokens, d_vision]` (what the LLM
    /// sees at the kept patches).
    pub merged: Tensor<3>,
    /// Encoded tokens, L2-normalised `[images, tokens, d_code]`.
    pub encoded: Tensor<3>,
    /// Their codes' vectors (normalised; no straight-through) `[images, tokens, d_code]`.
    pub quantized: Tensor<3>,
    /// Code indices `[images, tokens]`.
    pub codes: Tensor<2, Int>,
    /// Cosine similarity of every encoded token to every code `[images, tokens, K]`.
    pub similarity: Tensor<3>,
    /// Reconstructed ViT features of every patch `[images, tokens, d_vision]`.
    pub reconstruction: Tensor<3>,
}

fn l2_normalize(x: Tensor<3>) -> Tensor<3> {
    let norm = x.clone().powi_scalar(2).sum_dim(2).sqrt().clamp_min(1e-6);
    x / norm
}

/// Attention of `q` `[n, t, d]` over keys `k` and values `v` `[n, s, d]` restricted to the keys
/// where `allowed` `[n, s]` is 1 (rows with no allowed key give 0).
fn masked_attention(q: Tensor<3>, k: Tensor<3>, v: Tensor<3>, allowed: Tensor<2>) -> Tensor<3> {
    let d = q.dims()[2] as f64;
    let allowed = allowed.unsqueeze_dim::<3>(1);
    let scores = q.matmul(k.swap_dims(1, 2)).div_scalar(d.sqrt());
    let scores = scores + (allowed.clone() - 1.0).mul_scalar(1e4);
    let attn = softmax(scores, 2) * allowed;
    attn.matmul(v)
}

/// The selector's noise for one training forward: the Gumbel-softmax temperature and uniform
/// draws `[images, tokens, 2]` in (0, 1). The caller draws them (from a seeded generator of its
/// run), so a selection never depends on the device's global RNG or on other jobs using it.
#[derive(Clone, Debug)]
pub struct GumbelSample {
    /// Temperature.
    pub tau: f64,
    /// Uniform draws, one per patch and class (drop, keep).
    pub uniform: Tensor<3>,
}

impl GumbelSample {
    /// Draws from `rng` for `images` × `tokens` patches, kept inside [1e-6, 1 − 1e-6].
    pub fn draw(
        tau: f64,
        images: usize,
        tokens: usize,
        rng: &mut impl rand::Rng,
        device: &Device,
    ) -> Self {
        let values: Vec<f32> = (0..images * tokens * 2)
            .map(|_| rng.random_range(1e-6f32..1.0 - 1e-6))
            .collect();
        let uniform = Tensor::from_data(
            burn::tensor::TensorData::new(values, [images, tokens, 2]),
            device,
        );
        Self { tau, uniform }
    }
}

impl Lavit {
    /// Tokenize `features` `[images, tokens, d_vision]`; `gumbel`: sample the selection with
    /// this noise (training), else keep where the keep logit is the larger.
    pub fn forward(&self, features: Tensor<3>, gumbel: Option<GumbelSample>) -> LavitOutput {
        let [n, t, _] = features.dims();
        let logits = self
            .select_fc2
            .forward(gelu(self.select_fc1.forward(features.clone())));
        let keep = match gumbel {
            Some(GumbelSample { tau, uniform: u }) => {
                assert_eq!(u.dims(), [n, t, 2], "Gumbel draws for another shape");
                let gumbel = u.log().neg().log().neg();
                let soft = softmax((logits + gumbel).div_scalar(tau), 2)
                    .narrow(2, 1, 1)
                    .reshape([n, t]);
                let hard = soft.clone().greater_elem(0.5).float();
                hard - soft.clone().detach() + soft
            }
            None => {
                let keep = logits.clone().narrow(2, 1, 1) - logits.narrow(2, 0, 1);
                keep.greater_elem(0.0).float().reshape([n, t])
            }
        };
        let dropped = keep.clone().neg().add_scalar(1.0);
        let x = self.merge_norm.forward(features.clone());
        let folded = masked_attention(
            self.merge_q.forward(x.clone()),
            self.merge_k.forward(x.clone()),
            self.merge_v.forward(x) * dropped.clone().unsqueeze_dim::<3>(2),
            dropped.detach().greater_elem(0.5).float(),
        );
        let merged = features + self.merge_o.forward(folded);
        let (encoded, quantized, codes, similarity) = self.quantize(merged.clone());
        let straight = encoded.clone() + (quantized.clone() - encoded.clone()).detach();
        let reconstruction = self.decode(straight, keep.clone());
        LavitOutput {
            keep,
            merged,
            encoded,
            quantized,
            codes,
            similarity,
            reconstruction,
        }
    }

    /// The L2-normalised encodings of every token, their codes' vectors, indices, and the
    /// similarities to every code.
    fn quantize(&self, merged: Tensor<3>) -> (Tensor<3>, Tensor<3>, Tensor<2, Int>, Tensor<3>) {
        let [n, t, _] = merged.dims();
        let encoded = l2_normalize(self.to_code.forward(merged));
        let book = l2_normalize(self.codebook.val().unsqueeze_dim::<3>(0)).squeeze_dim::<2>(0);
        let [k, c] = book.dims();
        let sim = encoded
            .clone()
            .reshape([n * t, c])
            .matmul(book.clone().transpose());
        let codes = sim.clone().argmax(1).reshape([n * t]);
        let quantized = book.select(0, codes.clone()).reshape([n, t, c]);
        (
            encoded,
            quantized,
            codes.reshape([n, t]),
            sim.reshape([n, t, k]),
        )
    }

    /// Every patch's ViT feature from the kept tokens' codes.
    fn decode(&self, codes: Tensor<3>, keep: Tensor<2>) -> Tensor<3> {
        let [n, _, _] = codes.dims();
        let [t, c] = self.queries.dims();
        let queries = self.queries.val().unsqueeze_dim::<3>(0).expand([n, t, c]);
        let values = self.dec_v.forward(codes.clone()) * keep.clone().unsqueeze_dim::<3>(2);
        let allowed = keep.detach().greater_elem(0.5).float();
        let read = masked_attention(queries.clone(), self.dec_k.forward(codes), values, allowed);
        self.dec_fc2
            .forward(gelu(self.dec_fc1.forward(read + queries)))
    }
}

/// LLaVA reading LaVIT tokens: the kept patches' merged features through the projector, the
/// dropped patches' slots hidden from attention.
#[derive(Module, Debug)]
pub struct LavitLlava {
    /// The vision–language model.
    pub llava: Llava,
    /// The tokenizer between its vision tower and its projector.
    pub tokenizer: Lavit,
}

impl LavitLlava {
    /// The ViT features LLaVA's projector reads `[images, tokens, d_vision]`.
    pub fn features(&self, images: Tensor<4>) -> Tensor<3> {
        self.llava.vision_features(images)
    }

    /// Deterministic tokens of `images`: `(merged features, keep per image and patch)`.
    pub fn tokens(&self, images: Tensor<4>) -> (Tensor<3>, Vec<Vec<bool>>) {
        let out = self.tokenizer.forward(self.features(images), None);
        let [n, t] = out.keep.dims();
        let keep: Vec<f32> = out
            .keep
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .expect("float keep");
        let keep = (0..n)
            .map(|i| keep[i * t..(i + 1) * t].iter().map(|&k| k > 0.5).collect())
            .collect();
        (out.merged, keep)
    }

    /// Embeddings with the kept tokens spliced in, and per position whether it is a dropped
    /// patch's slot (to hide from attention).
    fn splice(
        &self,
        input_ids: Tensor<2, Int>,
        images: Option<Tensor<4>>,
        image_index: Option<&[usize]>,
        layout: &Layout,
    ) -> (Tensor<3>, Vec<Vec<bool>>) {
        let text = self.llava.language_model.embed(input_ids);
        let mut hidden =
            vec![vec![false; layout.image.first().map_or(0, Vec::len)]; layout.image.len()];
        let Some(images) = images else {
            return (splice_visual(text, None, layout), hidden);
        };
        let (merged, keep) = self.tokens(images);
        let visual = self.llava.multi_modal_projector.forward(merged);
        let (visual, keep) = match image_index {
            Some(index) => (
                select_images(visual, index),
                index.iter().map(|&i| keep[i].clone()).collect(),
            ),
            None => (visual, keep),
        };
        let mut slots = keep.iter().flatten();
        for (row, image) in hidden.iter_mut().zip(&layout.image) {
            for (h, &is_image) in row.iter_mut().zip(image) {
                if is_image {
                    *h = !*slots.next().expect("one keep decision per image slot");
                }
            }
        }
        (splice_visual(text, Some(visual), layout), hidden)
    }

    /// Final hidden states `[batch, seq, d]`, dropped patches' slots hidden from attention.
    pub fn forward_hidden(&self, input: LlavaInput) -> Tensor<3> {
        let mut layout = Layout::read(&input, self.llava.image_token_id);
        let device = input.input_ids.device();
        let (embeds, hidden) = self.splice(
            input.input_ids,
            input.images,
            input.image_index.as_deref(),
            &layout,
        );
        hide(&mut layout.valid, &hidden);
        decode(&self.llava.language_model, embeds, &layout, &device)
    }

    /// Greedy or sampled continuations (see [`Llava::generate`]); call on a model without
    /// autodiff.
    pub fn generate(
        &self,
        prompts: &[Vec<u32>],
        images: Option<Tensor<4>>,
        config: &GenerationConfig,
    ) -> Vec<Vec<u32>> {
        let lm = &self.llava.language_model;
        generate_spliced(
            lm,
            self.llava.image_token_id,
            prompts,
            |ids, layout| {
                let device = lm.embed_tokens.weight.device();
                let (embeds, hidden) = self.splice(int_tensor(ids, &device), images, None, layout);
                (embeds, Some(hidden))
            },
            config,
        )
    }
}

/// `valid[b][t] &= !hidden[b][t]`.
pub(crate) fn hide(valid: &mut [Vec<bool>], hidden: &[Vec<bool>]) {
    for (v, h) in valid.iter_mut().zip(hidden) {
        for (v, &h) in v.iter_mut().zip(h) {
            *v = *v && !h;
        }
    }
}
