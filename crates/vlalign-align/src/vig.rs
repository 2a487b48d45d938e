//! VIG — visual information gain (Lee & Hwang 2026; no public code, the design text is the
//! specification): with a stage-1 model and no gradient,
//! `vig[i,t] = −log q(y_t | blurred image) + log q(y_t | image)` per supervised token (same
//! sequence, so positions match), `VIG_i = mean_t vig[i,t]`.
//!
//! Selection at p: `τ_p` is the (100 − p)-th percentile of `VIG_i` over samples with an image;
//! samples with `VIG_i ≥ τ_p` are kept and inside them only tokens with `vig ≥ τ_p` are
//! supervised (the others stay as context); text-only samples keep their full loss. The
//! selection becomes per-token weights on the batch, so it composes with CAL by multiplication.

use burn::tensor::Tensor;
use vlalign_data::VlmBatch;

use crate::AlignModel;
use crate::cal::blur_batch;
use crate::token::{Targets, token_ce_at};

/// Per-token VIG of `batch`, `[batch][seq − 1]` at target positions (entry `t` scores token
/// `t + 1`), `None` where unsupervised. Real and blurred images (σ in pixels) run as one batched
/// forward without gradient.
pub fn vig_scores<M: AlignModel>(model: &M, batch: &VlmBatch, sigma: f32) -> Vec<Vec<Option<f32>>> {
    let [b, t] = batch.input_ids.dims();
    let doubled = stack_blurred(batch, sigma);
    let targets = Targets::new(&doubled.labels.clone().inner());
    let logits = model.logits_at_no_grad(&doubled, &targets.rows());
    // ce = −log q(y_t | ·); rows 0..b see the real images, rows b..2b the blurred ones.
    let ce = token_ce_at(logits, &targets);
    let v: Vec<f32> = ce
        .ce
        .to_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("float data");
    (0..b)
        .map(|row| {
            (0..t - 1)
                .map(|j| {
                    ce.targets.valid_host[row][j]
                        .then(|| v[(b + row) * (t - 1) + j] - v[row * (t - 1) + j])
                })
                .collect()
        })
        .collect()
}

/// `batch` twice along the batch axis, the second copy with every image blurred.
pub fn stack_blurred(batch: &VlmBatch, sigma: f32) -> VlmBatch {
    let b = batch.ids.len();
    let blurred = blur_batch(batch, sigma);
    let cat2 = |a: &Tensor<2>, c: &Tensor<2>| Tensor::cat(vec![a.clone(), c.clone()], 0);
    let mut out = batch.clone();
    out.ids = [batch.ids.clone(), batch.ids.clone()].concat();
    out.images = match (&batch.images, &blurred.images) {
        (Some(a), Some(c)) => Some(Tensor::cat(vec![a.clone(), c.clone()], 0)),
        _ => None,
    };
    out.image_sample = batch
        .image_sample
        .iter()
        .copied()
        .chain(batch.image_sample.iter().map(|&r| r + b))
        .collect();
    out.input_ids = Tensor::cat(vec![batch.input_ids.clone(), batch.input_ids.clone()], 0);
    out.labels = Tensor::cat(vec![batch.labels.clone(), batch.labels.clone()], 0);
    out.attention_mask = Tensor::cat(
        vec![batch.attention_mask.clone(), batch.attention_mask.clone()],
        0,
    );
    out.token_weights = batch.token_weights.as_ref().map(|w| cat2(w, w));
    out.truth = [batch.truth.clone(), batch.truth.clone()].concat();
    out.boxes = [batch.boxes.clone(), batch.boxes.clone()].concat();
    out.lengths = [batch.lengths.clone(), batch.lengths.clone()].concat();
    out
}

/// The `q`-th percentile (0–100) of `values` with linear interpolation between closest ranks
/// (numpy's default); `None` when empty.
pub fn percentile(values: &[f32], q: f64) -> Option<f32> {
    if values.is_empty() {
        return None;
    }
    let mut v: Vec<f32> = values.to_vec();
    v.sort_by(f32::total_cmp);
    let pos = (q.clamp(0.0, 100.0) / 100.0) * (v.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    let frac = (pos - lo as f64) as f32;
    Some(v[lo] + (v[hi] - v[lo]) * frac)
}

/// A sample's scores.
#[derive(Clone, Debug, PartialEq)]
pub struct SampleVig {
    /// Whether the sample has an image (text-only samples are never filtered).
    pub has_image: bool,
    /// VIG of each supervised token, in order.
    pub tokens: Vec<f32>,
}

impl SampleVig {
    /// `VIG_i`: the mean over supervised tokens (0 when there are none).
    pub fn mean(&self) -> f32 {
        if self.tokens.is_empty() {
            0.0
        } else {
            self.tokens.iter().sum::<f32>() / self.tokens.len() as f32
        }
    }
}

/// The outcome of a selection.
#[derive(Clone, Debug, PartialEq)]
pub struct Selection {
    /// The threshold `τ_p` (`None` at p = 100 or without image samples: nothing is filtered).
    pub tau: Option<f32>,
    /// Per sample: `None` = dropped, `Some(mask)` = kept, one flag per supervised token.
    pub keep: Vec<Option<Vec<bool>>>,
}

impl Selection {
    /// Kept samples / all samples.
    pub fn kept_samples(&self) -> f64 {
        let n = self.keep.len().max(1) as f64;
        self.keep.iter().filter(|k| k.is_some()).count() as f64 / n
    }

    /// Supervised tokens kept / supervised tokens of all samples.
    pub fn kept_tokens(&self, samples: &[SampleVig]) -> f64 {
        let total: usize = samples.iter().map(|s| s.tokens.len()).sum();
        let kept: usize = self
            .keep
            .iter()
            .flatten()
            .map(|m| m.iter().filter(|&&k| k).count())
            .sum();
        kept as f64 / total.max(1) as f64
    }
}

/// Select at `p` (percent of image samples kept, 100 = everything); see the module docs.
pub fn select(samples: &[SampleVig], p: f64) -> Selection {
    let means: Vec<f32> = samples
        .iter()
        .filter(|s| s.has_image)
        .map(SampleVig::mean)
        .collect();
    let tau = if p >= 100.0 {
        None
    } else {
        percentile(&means, 100.0 - p)
    };
    let keep = samples
        .iter()
        .map(|s| match tau {
            Some(tau) if s.has_image => {
                (s.mean() >= tau).then(|| s.tokens.iter().map(|&v| v >= tau).collect())
            }
            _ => Some(vec![true; s.tokens.len()]),
        })
        .collect();
    Selection { tau, keep }
}

/// Token weights for a sample's sequence from its mask over supervised tokens: `labels` is the
/// encoded sequence's labels (−100 where unsupervised); weight 1 on kept supervised tokens and
/// on everything unsupervised (it carries no loss anyway), `floor` on dropped ones (0: the
/// paper's rule, the token only context; a floor > 0 keeps answer templates supervised, as CAL's
/// α keeps every token's weight ≥ α).
pub fn token_weights(labels: &[i64], mask: &[bool], floor: f32) -> Vec<f32> {
    let mut k = 0;
    labels
        .iter()
        .enumerate()
        .map(|(i, &l)| {
            // Position 0 is never a target (nothing predicts it).
            if i == 0 || l == vlalign_data::IGNORE {
                1.0
            } else {
                let w = if mask.get(k).copied().unwrap_or(true) {
                    1.0
                } else {
                    floor
                };
                k += 1;
                w
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(has_image: bool, tokens: &[f32]) -> SampleVig {
        SampleVig {
            has_image,
            tokens: tokens.to_vec(),
        }
    }

    #[test]
    fn percentile_interpolates_like_numpy() {
        let v = [4.0, 1.0, 3.0, 2.0];
        assert_eq!(percentile(&v, 0.0), Some(1.0));
        assert_eq!(percentile(&v, 100.0), Some(4.0));
        assert_eq!(percentile(&v, 50.0), Some(2.5));
        // numpy.percentile([1, 2, 3, 4], 30) = 1.9
        assert!((percentile(&v, 30.0).unwrap() - 1.9).abs() < 1e-6);
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn selection_keeps_samples_and_tokens_above_tau() {
        // Sample means: 0.5, 2.0, 3.5, 6.0 (image samples); a text-only sample with low VIG.
        let samples = [
            s(true, &[0.0, 1.0]),
            s(true, &[1.0, 3.0]),
            s(true, &[3.0, 4.0]),
            s(true, &[2.0, 10.0]),
            s(false, &[-5.0, -5.0]),
        ];
        // p = 50: τ = 50th percentile of [0.5, 2, 3.5, 6] = 2.75.
        let sel = select(&samples, 50.0);
        assert_eq!(sel.tau, Some(2.75));
        assert_eq!(
            sel.keep,
            vec![
                None,
                None,
                Some(vec![true, true]),
                Some(vec![false, true]),
                Some(vec![true, true]),
            ]
        );
        assert!((sel.kept_samples() - 0.6).abs() < 1e-9);
        assert!((sel.kept_tokens(&samples) - 0.5).abs() < 1e-9);
        // p = 100 keeps everything.
        let all = select(&samples, 100.0);
        assert_eq!(all.tau, None);
        assert!(
            all.keep
                .iter()
                .all(|k| k.as_ref().is_some_and(|m| m.iter().all(|&x| x)))
        );
    }

    #[test]
    fn token_weights_follow_the_mask_over_supervised_positions() {
        let labels = [-100, -100, 7, 8, -100, 9];
        assert_eq!(
            token_weights(&labels, &[true, false, true], 0.0),
            vec![1.0, 1.0, 1.0, 0.0, 1.0, 1.0]
        );
        assert_eq!(
            token_weights(&labels, &[false, false, false], 0.0),
            vec![1.0, 1.0, 0.0, 0.0, 1.0, 0.0]
        );
        // A floor weights the dropped supervised tokens, nothing else.
        assert_eq!(
            token_weights(&labels, &[true, false, false], 0.25),
            vec![1.0, 1.0, 1.0, 0.25, 1.0, 0.25]
        );
    }
}
