//! Preference losses (DESIGN §5, SeVa-style DPO): the policy's and the reference's log-probs of
//! a chosen and a rejected answer, summed over the answer's supervised tokens (the tokens MLE
//! supervises: answer + end-of-turn), give the margin
//!
//! `h = (log π(y_w) − log π_ref(y_w)) − (log π(y_l) − log π_ref(y_l))`
//!
//! and the loss, averaged over pairs:
//! - `sigmoid` (DPO): `−(1 − ε)·log σ(βh) − ε·log σ(−βh)` (ε: label smoothing),
//! - `ipo`: `(h − 1/(2β))²`, with each log-prob divided by its answer's token count by default
//!   (`length_normalized`; IPO's token-level form, as TRL computes it),
//! - `hinge`: `relu(1 − βh)`,
//!
//! plus, optionally, an SFT term `α·NLL(y_w)` per token (RPO) and an image-side negative
//! (mDPO-style: the chosen answer scored on the corrupted image is a further rejected answer,
//! with the same loss on its own margin, weighted). Per-token weights (CAL's, or a VIG
//! selection) multiply the per-token log-probs before the sum: token-weighted DPO.

use burn::tensor::Tensor;
use burn::tensor::activation::{log_sigmoid, relu};
use serde::{Deserialize, Serialize};

use vlalign_data::PreferenceBatch;

use crate::cal::{CalConfig, CalObjective};
use crate::token::{Targets, TokenCe, host_to_tensor, token_ce_at};
use crate::{AlignModel, ObjectiveOutput};

/// The preference loss.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DpoLoss {
    /// DPO's logistic loss.
    #[default]
    Sigmoid,
    /// IPO's squared loss.
    Ipo,
    /// SLiC's hinge loss.
    Hinge,
}

/// DPO's settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DpoConfig {
    /// The loss.
    pub loss: DpoLoss,
    /// β: how far from the reference the policy may move.
    pub beta: f64,
    /// ε of the sigmoid loss (0 = plain DPO).
    pub label_smoothing: f64,
    /// α of the SFT term on the chosen answer (0 = off).
    pub sft_weight: f64,
    /// Weight of the image-side negative (0 = off).
    pub image_negative_weight: f64,
    /// Divide each answer's summed log-prob by its supervised token count before the margin
    /// (`None`: yes for `ipo`, as the IPO paper's token-level form and TRL do; no for `sigmoid`
    /// and `hinge`, DPO's summed form).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub length_normalized: Option<bool>,
    /// Token-weighted DPO (`cal_weighted`; not Calibrated DPO, an unrelated method): every answer token's log-prob, of the policy and of the
    /// reference alike, is weighted by CAL's weight computed with the reference (its Δ between
    /// the image pass and the contrast pass). Needs a live reference: the weights are not in
    /// the pairs file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cal_token_weights: Option<CalConfig>,
}

impl Default for DpoConfig {
    fn default() -> Self {
        Self {
            loss: DpoLoss::Sigmoid,
            beta: 0.1,
            label_smoothing: 0.0,
            sft_weight: 0.0,
            image_negative_weight: 0.0,
            length_normalized: None,
            cal_token_weights: None,
        }
    }
}

/// Per-sequence log-probs of the supervised tokens.
#[derive(Clone, Debug)]
pub struct SequenceLogps {
    /// `Σ_t w_t · log p(y_t)` per row, `[batch]`.
    pub sum: Tensor<1>,
    /// Supervised tokens per row, `[batch]` (no gradient).
    pub tokens: Tensor<1>,
}

/// The log-probs of each row's supervised tokens, summed (times `weights` `[batch, seq − 1]`
/// when given: token-weighted DPO).
pub fn sequence_logps(ce: &TokenCe, weights: Option<Tensor<2>>) -> SequenceLogps {
    let [b, _] = ce.ce.dims();
    let logp = ce.ce.clone().neg();
    let logp = match weights {
        Some(w) => logp * w.detach(),
        None => logp,
    };
    SequenceLogps {
        sum: logp.sum_dim(1).reshape([b]),
        tokens: ce.valid.clone().sum_dim(1).reshape([b]).detach(),
    }
}

/// The log-probs of one preference pair set, under one model.
#[derive(Clone, Debug)]
pub struct PairLogps {
    /// Chosen answers.
    pub chosen: SequenceLogps,
    /// Rejected answers.
    pub rejected: SequenceLogps,
    /// The chosen answers on the corrupted images (the image-side negative), when the batch has
    /// them.
    pub image_negative: Option<SequenceLogps>,
}

/// What the loss needs: policy and reference log-probs of the pairs, and for the image-side
/// negative the chosen answers scored on the corrupted images (policy, reference).
#[derive(Clone, Debug)]
pub struct PreferenceLogps {
    /// The model being trained (with graph).
    pub policy: PairLogps,
    /// The reference (no gradient: precomputed, frozen weights, or adapters off).
    pub reference: PairLogps,
    /// `(policy, reference)` log-probs of the chosen answer on the corrupted image.
    pub image_negative: Option<(SequenceLogps, SequenceLogps)>,
}

/// The loss and what to log.
#[derive(Clone, Debug)]
pub struct DpoOutput {
    /// Mean over pairs, `[1]`.
    pub loss: Tensor<1>,
    /// `reward_chosen`, `reward_rejected`, `reward_margin`, `reward_accuracy`, `logp_chosen`,
    /// `logp_rejected` (means over pairs; rewards are `β·(log π − log π_ref)`).
    pub diagnostics: Vec<(&'static str, f64)>,
}

/// The per-pair loss of a margin `h` `[batch]`.
fn margin_loss(config: &DpoConfig, h: Tensor<1>) -> Tensor<1> {
    let beta = config.beta;
    match config.loss {
        DpoLoss::Sigmoid => {
            let eps = config.label_smoothing;
            let bh = h * beta;
            log_sigmoid(bh.clone()).neg() * (1.0 - eps) - log_sigmoid(bh.neg()) * eps
        }
        DpoLoss::Ipo => (h - 1.0 / (2.0 * beta)).powi_scalar(2),
        DpoLoss::Hinge => relu((h * beta).neg() + 1.0),
    }
}

fn mean_host(x: Tensor<1>) -> f64 {
    x.detach()
        .mean()
        .into_data()
        .convert::<f64>()
        .try_into_vec::<f64>()
        .expect("a float")[0]
}

/// The preference loss of `logps` (module docs).
pub fn preference_loss(config: &DpoConfig, logps: PreferenceLogps) -> DpoOutput {
    let PreferenceLogps {
        policy,
        reference,
        image_negative,
    } = logps;
    let normalized = config
        .length_normalized
        .unwrap_or(config.loss == DpoLoss::Ipo);
    // log π − log π_ref of one answer set (per token when length-normalised).
    let ratio = |p: &SequenceLogps, r: Tensor<1>| {
        let diff = p.sum.clone() - r.detach();
        if normalized {
            diff / p.tokens.clone().clamp_min(1.0)
        } else {
            diff
        }
    };
    let chosen_ratio = ratio(&policy.chosen, reference.chosen.sum.clone());
    let rejected_ratio = ratio(&policy.rejected, reference.rejected.sum.clone());
    let h = chosen_ratio.clone() - rejected_ratio.clone();
    let mut loss = margin_loss(config, h.clone()).mean();
    if config.sft_weight > 0.0 {
        let tokens = policy.chosen.tokens.clone().clamp_min(1.0);
        let nll = (policy.chosen.sum.clone().neg() / tokens).mean();
        loss = loss + nll * config.sft_weight;
    }
    if let Some((p, r)) = image_negative.filter(|_| config.image_negative_weight > 0.0) {
        let h_image = chosen_ratio.clone() - ratio(&p, r.sum);
        loss = loss + margin_loss(config, h_image).mean() * config.image_negative_weight;
    }
    let beta = config.beta;
    let wins = h.detach().greater_elem(0.0).float();
    DpoOutput {
        loss,
        diagnostics: vec![
            ("reward_chosen", beta * mean_host(chosen_ratio.clone())),
            ("reward_rejected", beta * mean_host(rejected_ratio.clone())),
            (
                "reward_margin",
                beta * mean_host(chosen_ratio - rejected_ratio),
            ),
            ("reward_accuracy", mean_host(wins)),
            ("logp_chosen", mean_host(policy.chosen.sum)),
            ("logp_rejected", mean_host(policy.rejected.sum)),
        ],
    }
}

/// The summed log-probs of a preference batch's chosen rows (`0..B`), rejected rows (`B..2B`)
/// and image-side negatives (`2B..3B`, when present) under `model`, with graph unless
/// `no_grad`.
pub fn pair_logps<M: AlignModel>(model: &M, batch: &PreferenceBatch, no_grad: bool) -> PairLogps {
    pair_logps_weighted(model, batch, no_grad, None)
}

/// [`pair_logps`] with per-token weights `[rows, seq − 1]` (no gradient) on the log-probs.
pub fn pair_logps_weighted<M: AlignModel>(
    model: &M,
    batch: &PreferenceBatch,
    no_grad: bool,
    weights: Option<Tensor<2>>,
) -> PairLogps {
    let seqs = &batch.sequences;
    let targets = Targets::new(&seqs.labels);
    let rows = targets.rows();
    let logits = if no_grad {
        model.logits_at_no_grad(seqs, &rows)
    } else {
        model.logits_at(seqs, &rows)
    };
    let all = sequence_logps(&token_ce_at(logits, &targets), weights);
    let b = batch.ids.len();
    let part = |k: usize| SequenceLogps {
        sum: all.sum.clone().narrow(0, k * b, b),
        tokens: all.tokens.clone().narrow(0, k * b, b),
    };
    PairLogps {
        chosen: part(0),
        rejected: part(1),
        image_negative: batch.image_negatives.then(|| part(2)),
    }
}

/// DPO on a batch whose pairs carry precomputed reference log-probs (the reference set-up that
/// holds one model: DESIGN §5).
///
/// # Panics
/// When the batch has no reference log-probs: the pipeline scores the pairs file before
/// training, so a batch without them is a bug, not data.
pub fn dpo_loss<M: AlignModel>(
    config: &DpoConfig,
    model: &M,
    batch: &PreferenceBatch,
) -> ObjectiveOutput {
    dpo_loss_with(config, model, None, batch)
}

/// CAL's token weights `[rows, seq − 1]` of a preference batch, computed with `reference` (no
/// gradient): Δ between its image pass and its contrast pass, clamped and pooled.
pub fn cal_token_weights<M: AlignModel>(
    cal: &CalConfig,
    reference: &M,
    batch: &PreferenceBatch,
) -> Tensor<2> {
    let seqs = &batch.sequences;
    let targets = Targets::new(&seqs.labels);
    let ce = token_ce_at(reference.logits_at_no_grad(seqs, &targets.rows()), &targets);
    let objective = CalObjective {
        config: cal.clone(),
    };
    let delta = objective.delta(reference, seqs, &ce);
    host_to_tensor(&cal.weights(&delta), &ce.ce)
}

/// DPO with the reference given live (`Some`: the frozen starting weights, scored without
/// autodiff) or precomputed in the batch (`None`; see [`dpo_loss`]).
///
/// # Panics
/// With CAL token weights and no live reference (a configuration the trainer refuses first).
pub fn dpo_loss_with<M: AlignModel>(
    config: &DpoConfig,
    model: &M,
    live: Option<&M>,
    batch: &PreferenceBatch,
) -> ObjectiveOutput {
    let weights = config.cal_token_weights.as_ref().map(|cal| {
        let r = live.expect("token-weighted DPO needs a live reference");
        cal_token_weights(cal, r, batch)
    });
    let policy = pair_logps_weighted(model, batch, false, weights.clone());
    let reference = match live {
        Some(r) => pair_logps_weighted(r, batch, true, weights),
        None => {
            let reference = batch.reference.clone().expect(
                "pairs without reference log-probs: score the pairs file with the reference \
                 model first, or train with a live reference",
            );
            let b = batch.ids.len();
            let column = |k: usize, tokens: &SequenceLogps| SequenceLogps {
                sum: reference.clone().narrow(1, k, 1).reshape([b]),
                tokens: tokens.tokens.clone(),
            };
            let image_negative = policy.image_negative.as_ref().map(|p| SequenceLogps {
                sum: batch.reference_negative.clone().expect(
                    "image-side negatives without reference log-probs: score the pairs with \
                     image negatives on",
                ),
                tokens: p.tokens.clone(),
            });
            PairLogps {
                chosen: column(0, &policy.chosen),
                rejected: column(1, &policy.rejected),
                image_negative,
            }
        }
    };
    let image_negative = policy
        .image_negative
        .clone()
        .zip(reference.image_negative.clone());
    let out = preference_loss(
        config,
        PreferenceLogps {
            policy,
            reference,
            image_negative,
        },
    );
    ObjectiveOutput {
        loss: out.loss,
        diagnostics: out.diagnostics,
        weights: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, TensorData};

    fn t(v: &[f32], device: &Device) -> Tensor<1> {
        Tensor::from_data(TensorData::new(v.to_vec(), [v.len()]), device)
    }

    fn seq(v: &[f32], tokens: &[f32], device: &Device) -> SequenceLogps {
        SequenceLogps {
            sum: t(v, device),
            tokens: t(tokens, device),
        }
    }

    fn value(x: Tensor<1>) -> f64 {
        x.into_data()
            .convert::<f64>()
            .try_into_vec::<f64>()
            .unwrap()[0]
    }

    fn sigmoid(x: f64) -> f64 {
        1.0 / (1.0 + (-x).exp())
    }

    /// Two pairs: policy (chosen, rejected) = (−3, −5), (−4, −2); reference (−3.5, −4.5),
    /// (−4, −3). Margins h = (0.5 − (−0.5)) = 1 and (0 − 1) = −1.
    fn logps(device: &Device) -> PreferenceLogps {
        PreferenceLogps {
            policy: PairLogps {
                chosen: seq(&[-3.0, -4.0], &[2.0, 4.0], device),
                rejected: seq(&[-5.0, -2.0], &[3.0, 1.0], device),
                image_negative: None,
            },
            reference: PairLogps {
                chosen: seq(&[-3.5, -4.0], &[2.0, 4.0], device),
                rejected: seq(&[-4.5, -3.0], &[3.0, 1.0], device),
                image_negative: None,
            },
            image_negative: Some((
                seq(&[-6.0, -4.5], &[2.0, 4.0], device),
                seq(&[-5.0, -4.0], &[2.0, 4.0], device),
            )),
        }
    }

    #[test]
    fn each_loss_matches_its_formula() {
        let d = Device::default();
        let hs = [1.0f64, -1.0];
        let mean = |f: &dyn Fn(f64) -> f64| hs.iter().map(|&h| f(h)).sum::<f64>() / 2.0;
        let cases: [(DpoConfig, f64); 5] = [
            (DpoConfig::default(), mean(&|h| -sigmoid(0.1 * h).ln())),
            (
                DpoConfig {
                    label_smoothing: 0.2,
                    ..DpoConfig::default()
                },
                mean(&|h| -0.8 * sigmoid(0.1 * h).ln() - 0.2 * sigmoid(-0.1 * h).ln()),
            ),
            (
                DpoConfig {
                    loss: DpoLoss::Ipo,
                    length_normalized: Some(false),
                    ..DpoConfig::default()
                },
                mean(&|h| (h - 5.0).powi(2)),
            ),
            // IPO's default: per-token log-probs. Pair 1: 0.5/2 − (−0.5)/3; pair 2: 0/4 − 1/1.
            (
                DpoConfig {
                    loss: DpoLoss::Ipo,
                    ..DpoConfig::default()
                },
                ((0.25 + 0.5 / 3.0 - 5.0f64).powi(2) + (-1.0 - 5.0f64).powi(2)) / 2.0,
            ),
            (
                DpoConfig {
                    loss: DpoLoss::Hinge,
                    beta: 2.0,
                    ..DpoConfig::default()
                },
                mean(&|h| (1.0 - 2.0 * h).max(0.0)),
            ),
        ];
        for (config, want) in cases {
            let mut l = logps(&d);
            l.image_negative = None;
            let got = value(preference_loss(&config, l).loss);
            // f32 arithmetic: relative to the loss (IPO's squares reach ~30).
            assert!(
                (got - want).abs() < 1e-6 * want.abs().max(1.0),
                "{config:?}: {got} vs {want}"
            );
        }
    }

    #[test]
    fn sft_and_image_negative_terms_add_their_weighted_losses() {
        let d = Device::default();
        let config = DpoConfig {
            sft_weight: 0.5,
            image_negative_weight: 0.25,
            ..DpoConfig::default()
        };
        let got = value(preference_loss(&config, logps(&d)).loss);
        let dpo = (-sigmoid(0.1).ln() - sigmoid(-0.1).ln()) / 2.0;
        // NLL per token of the chosen answers: 3/2 and 4/4.
        let sft = (1.5 + 1.0) / 2.0;
        // Image-side margins: chosen ratio (0.5, 0) minus corrupted ratio (−1, −0.5).
        let image = (-sigmoid(0.1 * 1.5).ln() - sigmoid(0.1 * 0.5).ln()) / 2.0;
        let want = dpo + 0.5 * sft + 0.25 * image;
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
    }

    #[test]
    fn diagnostics_are_the_rewards_and_their_accuracy() {
        let d = Device::default();
        let out = preference_loss(&DpoConfig::default(), logps(&d));
        let get = |k: &str| out.diagnostics.iter().find(|(n, _)| *n == k).unwrap().1;
        assert!((get("reward_chosen") - 0.1 * 0.25).abs() < 1e-7);
        assert!((get("reward_rejected") - 0.1 * 0.25).abs() < 1e-7);
        assert!(get("reward_margin").abs() < 1e-7);
        assert_eq!(get("reward_accuracy"), 0.5);
        assert!((get("logp_chosen") + 3.5).abs() < 1e-7);
    }

    /// d/d log π(y_w) of the sigmoid loss is −β·σ(−βh)/n per pair; the reference gets none.
    #[test]
    fn the_gradient_reaches_the_policy_only() {
        let d = Device::default().autodiff();
        let chosen = t(&[-3.0, -4.0], &d).require_grad();
        let reference = t(&[-3.5, -4.0], &d).require_grad();
        let mut l = logps(&d);
        l.image_negative = None;
        l.policy.chosen.sum = chosen.clone();
        l.reference.chosen.sum = reference.clone();
        let grads = preference_loss(&DpoConfig::default(), l).loss.backward();
        let g: Vec<f64> = chosen
            .grad(&grads)
            .unwrap()
            .into_data()
            .convert::<f64>()
            .try_into_vec()
            .unwrap();
        for (g, h) in g.iter().zip([1.0, -1.0]) {
            let want = -0.1 * sigmoid(-0.1 * h) / 2.0;
            assert!((g - want).abs() < 1e-6, "{g} vs {want}");
        }
        assert!(reference.grad(&grads).is_none());
    }
}
