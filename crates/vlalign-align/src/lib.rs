//! Alignment objectives. One seam: an [`Objective`] turns a model and a batch into a loss plus
//! named diagnostics, and sees the model only through [`AlignModel`], so the objectives work
//! for LLaVA and any future model alike.
//!
//! Token-level objectives share one core ([`token`]): per-token cross-entropy over supervised
//! positions and a weight per token, `L = Σ w·ce / (Σ_valid w + 1e-6)`. Weightings compose by
//! multiplication (CAL × a VIG mask carried by the batch); the weight never carries gradient.

pub mod cal;
pub mod clip;
pub mod dpo;
pub mod lavit;
pub mod mle;
pub mod model;
pub mod pixel_head;
pub mod token;
pub mod vig;

pub use cal::{CalConfig, CalObjective, Contrast, Pooling};
pub use clip::{DualEncoder, InfoNceOutput, contrastive_loss, info_nce};
pub use dpo::{
    DpoConfig, DpoLoss, DpoOutput, PairLogps, PreferenceLogps, SequenceLogps, cal_token_weights,
    dpo_loss, dpo_loss_with, pair_logps, pair_logps_weighted, preference_loss, sequence_logps,
};
pub use lavit::{
    LavitLoss, LavitLossConfig, code_entropy, codebook_perplexity, relative_mse, tokenizer_loss,
};
pub use mle::MleObjective;
pub use model::{AlignModel, TextOnlyLogits};
pub use pixel_head::{
    LocateModel, PixelObjective, box_centre, localisation_l1, mean_pixel_error, target_centres,
};

use burn::tensor::Tensor;
use vlalign_data::VlmBatch;

/// A loss and what to log about it.
#[derive(Clone, Debug)]
pub struct ObjectiveOutput {
    /// The scalar loss (with graph on an autodiff device).
    pub loss: Tensor<1>,
    /// Named diagnostics (host values), e.g. `supervised_tokens`, `cal_weight_mean`.
    pub diagnostics: Vec<(&'static str, f64)>,
    /// Per-token weights used `[batch][seq − 1]` (targets shifted: entry `t` weighs the
    /// prediction of token `t + 1`); `None` when all weights are 1.
    pub weights: Option<Vec<Vec<f32>>>,
}

/// An alignment objective.
pub trait Objective<M: AlignModel>: Send + Sync {
    /// Loss and diagnostics of `model` on `batch`.
    fn loss(&self, model: &M, batch: &VlmBatch) -> ObjectiveOutput;

    /// Short name for reports (`mle`, `cal`).
    fn name(&self) -> &'static str;
}
