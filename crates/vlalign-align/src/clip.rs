//! CLIP's contrastive objective: symmetric InfoNCE over a batch of matching (image, caption)
//! pairs. Row `i` of the logits is image `i` against every caption; the pair on the diagonal is
//! the positive, every other caption of the batch a negative (and the same per caption):
//!
//! `L = ½ [CE(logits, diag) + CE(logitsᵀ, diag)]`, with `logits = exp(t)·cos(img, txt)`,
//! `exp(t)` clipped at 100 by the model.

use burn::tensor::activation::log_softmax;
use burn::tensor::{Int, Tensor};
use vlalign_data::PairBatch;
use vlalign_models::Clip;

use crate::ObjectiveOutput;

/// What the contrastive objective needs from a model: the scaled similarities of a batch of
/// images against a batch of captions, and the scale.
pub trait DualEncoder: Send + Sync {
    /// `logits_per_image` `[images, captions]`: `scale · cos(image_i, caption_j)`.
    fn logits_per_image(
        &self,
        images: Tensor<4>,
        input_ids: Tensor<2, Int>,
        lengths: &[usize],
    ) -> Tensor<2>;

    /// The multiplier of the cosines (`exp(t)`, clipped), `[1]`.
    fn logit_scale(&self) -> Tensor<1>;
}

impl DualEncoder for Clip {
    fn logits_per_image(
        &self,
        images: Tensor<4>,
        input_ids: Tensor<2, Int>,
        lengths: &[usize],
    ) -> Tensor<2> {
        self.forward(images, input_ids, lengths)
    }

    fn logit_scale(&self) -> Tensor<1> {
        self.scale()
    }
}

/// CLIP's objective on a batch of pairs: symmetric InfoNCE, with the retrieval accuracy of the
/// batch each way and the current logit scale as diagnostics.
pub fn contrastive_loss<M: DualEncoder>(model: &M, batch: &PairBatch) -> ObjectiveOutput {
    let logits = model.logits_per_image(
        batch.images.clone(),
        batch.input_ids.clone(),
        &batch.lengths,
    );
    let scale = model
        .logit_scale()
        .detach()
        .try_into_scalar::<f64>()
        .expect("the scale is readable");
    let out = info_nce(logits);
    ObjectiveOutput {
        loss: out.loss,
        diagnostics: vec![
            ("i2t_accuracy", out.i2t_accuracy),
            ("t2i_accuracy", out.t2i_accuracy),
            ("logit_scale", scale),
        ],
        weights: None,
    }
}

/// The loss and what to log about a batch.
#[derive(Clone, Debug)]
pub struct InfoNceOutput {
    /// `[1]`, with graph.
    pub loss: Tensor<1>,
    /// Share of images whose own caption scores highest (host).
    pub i2t_accuracy: f64,
    /// Share of captions whose own image scores highest (host).
    pub t2i_accuracy: f64,
}

/// Mean cross-entropy of each row against the diagonal target.
fn diagonal_ce(logits: Tensor<2>) -> Tensor<1> {
    let [n, _] = logits.dims();
    let targets = Tensor::<1, Int>::arange(0..n as i64, &logits.device()).reshape([n, 1]);
    log_softmax(logits, 1).gather(1, targets).mean().neg()
}

/// Share of rows whose largest entry is on the diagonal.
fn diagonal_accuracy(logits: Tensor<2>) -> f64 {
    let [n, _] = logits.dims();
    let best = logits.argmax(1).reshape([n]);
    let targets = Tensor::<1, Int>::arange(0..n as i64, &best.device());
    let hits = best.equal(targets).int().sum().into_scalar::<i64>();
    hits as f64 / n.max(1) as f64
}

/// Symmetric InfoNCE of `logits_per_image` `[n, n]` (image `i`, caption `j`).
pub fn info_nce(logits_per_image: Tensor<2>) -> InfoNceOutput {
    let [n, m] = logits_per_image.dims();
    assert_eq!(
        n, m,
        "InfoNCE needs as many captions as images, got {n}×{m}"
    );
    let per_text = logits_per_image.clone().transpose();
    let detached = logits_per_image.clone().detach();
    InfoNceOutput {
        loss: (diagonal_ce(logits_per_image) + diagonal_ce(per_text)) * 0.5,
        i2t_accuracy: diagonal_accuracy(detached.clone()),
        t2i_accuracy: diagonal_accuracy(detached.transpose()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, TensorData};

    fn logits(values: Vec<f32>, n: usize) -> Tensor<2> {
        Tensor::from_data(TensorData::new(values, [n, n]), &Device::default())
    }

    /// The loss written out by hand: −½ [Σ_i log softmax_row(i)_i + Σ_j log softmax_col(j)_j] / n.
    #[test]
    fn matches_the_formula_and_is_symmetric_in_its_two_directions() {
        let v = vec![2.0f32, -1.0, 0.5, 0.0, 1.5, 3.0, -2.0, 0.25, 1.0];
        let out = info_nce(logits(v.clone(), 3));
        let at = |i: usize, j: usize| v[i * 3 + j] as f64;
        let lse_row = |i: usize| (0..3).map(|j| at(i, j).exp()).sum::<f64>().ln();
        let lse_col = |j: usize| (0..3).map(|i| at(i, j).exp()).sum::<f64>().ln();
        let rows: f64 = (0..3).map(|i| lse_row(i) - at(i, i)).sum::<f64>() / 3.0;
        let cols: f64 = (0..3).map(|j| lse_col(j) - at(j, j)).sum::<f64>() / 3.0;
        let loss = out.loss.into_scalar::<f64>();
        assert!((loss - 0.5 * (rows + cols)).abs() < 1e-5, "{loss}");
        // Row 1's best is column 2; column 2's best is row 1: one miss each way.
        assert!((out.i2t_accuracy - 2.0 / 3.0).abs() < 1e-9);
        assert!((out.t2i_accuracy - 2.0 / 3.0).abs() < 1e-9);
        let transposed: Vec<f32> = (0..9).map(|k| v[(k % 3) * 3 + k / 3]).collect();
        let again = info_nce(logits(transposed, 3)).loss.into_scalar::<f64>();
        assert!((again - loss).abs() < 1e-6);
    }

    #[test]
    fn perfect_separation_drives_the_loss_to_zero() {
        let mut v = vec![-50.0f32; 16];
        for i in 0..4 {
            v[i * 4 + i] = 50.0;
        }
        let out = info_nce(logits(v, 4));
        assert!(out.loss.into_scalar::<f64>() < 1e-6);
        assert_eq!(out.i2t_accuracy, 1.0);
    }
}
