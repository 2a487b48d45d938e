//! LaVIT's tokenizer losses ([`vlalign_models::lavit`]) and the LLaVA that reads its tokens as
//! an [`AlignModel`].
//!
//! Tokenizer training, on frozen ViT features `x` `[images, tokens, d]`:
//! `L = ‖x̂ − x‖² / ‖x − x̄‖²  +  ‖sg(z) − q‖²_kept  +  β·‖z − sg(q)‖²_kept  +  γ·(mean keep − ρ)²
//!      + λ·(H̄(p) − H(p̄))`
//! — relative reconstruction error of every patch from the kept codes; the codebook and
//! commitment terms of VQ-VAE over the kept tokens (`z` the normalised encoding, `q` its code);
//! a keep-ratio constraint on the batch's mean (so the number kept per image is free to follow
//! the image's content); and an entropy term on the soft code assignments `p = softmax(z·Cᵀ/t)`
//! of the kept tokens — each token sure of its code (low mean entropy `H̄(p)`), the batch using
//! many codes (high entropy of the mean assignment `H(p̄)`) — without which every token
//! collapses onto one code (measured: perplexity 1.0 after 600 steps).

use burn::module::Module;
use burn::tensor::Tensor;
use burn::tensor::activation::softmax;
use serde::{Deserialize, Serialize};
use vlalign_data::VlmBatch;
use vlalign_models::{LavitLlava, LavitOutput};

use crate::model::{AlignModel, TextOnlyLogits, input, select_rows};

/// Tokenizer loss weights.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LavitLossConfig {
    /// β: commitment weight.
    pub commitment: f64,
    /// ρ: target share of kept patches (over a batch).
    pub keep_ratio: f64,
    /// γ: weight of the keep-ratio constraint.
    pub ratio_weight: f64,
    /// Gumbel-softmax temperature of the selector in training.
    pub tau: f64,
    /// λ: weight of the code-usage entropy term.
    pub entropy_weight: f64,
    /// Temperature `t` of the soft code assignments.
    pub entropy_temperature: f64,
}

impl Default for LavitLossConfig {
    fn default() -> Self {
        Self {
            commitment: 0.25,
            keep_ratio: 0.4,
            ratio_weight: 4.0,
            tau: 1.0,
            entropy_weight: 0.1,
            entropy_temperature: 0.1,
        }
    }
}

/// The tokenizer loss and its parts (host values).
#[derive(Clone, Debug)]
pub struct LavitLoss {
    /// The total, with graph.
    pub loss: Tensor<1>,
    /// Relative reconstruction error `‖x̂ − x‖² / ‖x − x̄‖²`.
    pub reconstruction: f64,
    /// Codebook term.
    pub codebook: f64,
    /// Commitment term (before β).
    pub commitment: f64,
    /// Share of patches kept.
    pub keep_ratio: f64,
    /// `H̄(p) − H(p̄)` of the kept tokens' soft code assignments.
    pub entropy: f64,
}

/// `‖x̂ − x‖² / ‖x − x̄‖²` over the whole batch, `x̄` the mean feature (per channel, over
/// every image and patch): 1 for predicting the mean feature everywhere, 0 for a perfect
/// reconstruction.
pub fn relative_mse(reconstruction: Tensor<3>, target: Tensor<3>) -> Tensor<1> {
    let [n, t, d] = target.dims();
    let flat = target.reshape([n * t, d]);
    let mean = flat.clone().mean_dim(0);
    let spread = (flat.clone() - mean).powi_scalar(2).sum();
    let err = (reconstruction.reshape([n * t, d]) - flat)
        .powi_scalar(2)
        .sum();
    err / spread.add_scalar(1e-12)
}

/// Mean over kept tokens of `‖a − b‖²` (`keep` `[n, t]`, 0/1).
fn kept_sq(a: Tensor<3>, b: Tensor<3>, keep: Tensor<2>) -> Tensor<1> {
    let per_token = (a - b).powi_scalar(2).sum_dim(2).squeeze_dim::<2>(2);
    (per_token * keep.clone()).sum() / keep.sum().add_scalar(1e-6)
}

/// `H̄(p) − H(p̄)` of the soft assignments `softmax(similarity / t)` of the kept tokens.
pub fn code_entropy(similarity: Tensor<3>, keep: Tensor<2>, t: f64) -> Tensor<1> {
    let [n, s, k] = similarity.dims();
    let p = softmax(similarity.div_scalar(t), 2).reshape([n * s, k]);
    let keep = keep.reshape([n * s, 1]);
    let kept = keep.clone().sum().add_scalar(1e-6);
    let log = |x: Tensor<2>| x.clamp_min(1e-12).log();
    let per_token = (p.clone() * log(p.clone())).sum_dim(1).neg() * keep.clone();
    let mean_entropy = per_token.sum() / kept.clone();
    let mean_p = (p * keep).sum_dim(0) / kept.unsqueeze_dim::<2>(0);
    let batch_entropy = (mean_p.clone() * log(mean_p)).sum().neg();
    mean_entropy - batch_entropy
}

/// The tokenizer loss of `out` against the ViT features `target` it was made from.
pub fn tokenizer_loss(out: &LavitOutput, target: Tensor<3>, cfg: &LavitLossConfig) -> LavitLoss {
    let hard = out.keep.clone().detach();
    let recon = relative_mse(out.reconstruction.clone(), target.detach());
    let codebook = kept_sq(
        out.encoded.clone().detach(),
        out.quantized.clone(),
        hard.clone(),
    );
    let commit = kept_sq(
        out.encoded.clone(),
        out.quantized.clone().detach(),
        hard.clone(),
    );
    let entropy = code_entropy(out.similarity.clone(), hard, cfg.entropy_temperature);
    let ratio = out.keep.clone().mean();
    let ratio_gap = ratio.clone().sub_scalar(cfg.keep_ratio).powi_scalar(2);
    let value = |x: &Tensor<1>| x.clone().detach().into_scalar::<f64>();
    let (r, c, m, k, h) = (
        value(&recon),
        value(&codebook),
        value(&commit),
        value(&ratio),
        value(&entropy),
    );
    LavitLoss {
        loss: recon
            + codebook
            + commit.mul_scalar(cfg.commitment)
            + ratio_gap.mul_scalar(cfg.ratio_weight)
            + entropy.mul_scalar(cfg.entropy_weight),
        reconstruction: r,
        codebook: c,
        commitment: m,
        keep_ratio: k,
        entropy: h,
    }
}

/// `exp(H)` of the code usage `codes` (a codebook's perplexity: 1 when one code is used,
/// the number of codes when all are used equally).
pub fn codebook_perplexity(codes: &[i64], codebook_size: usize) -> f64 {
    if codes.is_empty() {
        return 0.0;
    }
    let mut counts = vec![0usize; codebook_size];
    for &c in codes {
        counts[c as usize] += 1;
    }
    let n = codes.len() as f64;
    let entropy: f64 = counts
        .iter()
        .filter(|&&k| k > 0)
        .map(|&k| {
            let p = k as f64 / n;
            -p * p.ln()
        })
        .sum();
    entropy.exp()
}

impl AlignModel for LavitLlava {
    fn logits(&self, batch: &VlmBatch) -> Tensor<3> {
        let hidden = self.forward_hidden(input(batch, false));
        self.llava.language_model.logits(hidden)
    }

    fn text_only_logits(&self, batch: &VlmBatch) -> TextOnlyLogits {
        self.llava.text_only_logits(batch)
    }

    fn logits_no_grad(&self, batch: &VlmBatch) -> Tensor<3> {
        let model = self.valid();
        let hidden = model.forward_hidden(input(batch, true));
        model.llava.language_model.logits(hidden)
    }

    fn logits_at(&self, batch: &VlmBatch, rows: &[i64]) -> Tensor<2> {
        let hidden = self.forward_hidden(input(batch, false));
        self.llava.language_model.logits(select_rows(hidden, rows))
    }

    fn logits_at_no_grad(&self, batch: &VlmBatch, rows: &[i64]) -> Tensor<2> {
        let model = self.valid();
        let hidden = model.forward_hidden(input(batch, true));
        model.llava.language_model.logits(select_rows(hidden, rows))
    }
}
