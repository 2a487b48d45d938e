//! The localisation loss of a PixelLLM head ([`vlalign_models::pixel_head`]): L1 between the
//! predicted and the true point of every token that names an object, averaged over those
//! tokens and both coordinates, `L = Σ m·(|x̂ − x| + |ŷ − y|) / (2·Σ m + 1e-6)`. Tokens with
//! `m = 0` (template words, padding, tokens without an object) add nothing and get no gradient.
//!
//! [`PixelObjective`] trains a model with a head ([`LocateModel`]): the LM loss plus
//! `weight ·` this loss, the point of token `t + 1` read at position `t` (the state that writes
//! the token, as the logits are), its target the centre of the box the batch gives the token.

use burn::module::Module;
use burn::tensor::{Tensor, TensorData};
use vlalign_data::VlmBatch;
use vlalign_models::PixelLlava;

use crate::mle::batch_weights;
use crate::model::{AlignModel, TextOnlyLogits, input, select_rows};
use crate::token::{Targets, token_ce_at, weighted_loss};
use crate::{Objective, ObjectiveOutput};

/// A model that writes a point for each token beside its logits.
pub trait LocateModel: AlignModel {
    /// Logits `[rows.len(), vocab]` and points `[rows.len(), 2]` at the flat positions `rows`
    /// (`b·seq + t`) of the full multimodal sequence, with graph.
    fn logits_and_points_at(&self, batch: &VlmBatch, rows: &[i64]) -> (Tensor<2>, Tensor<2>);

    /// Points `[batch, seq, 2]` of every position, without autodiff.
    fn points_no_grad(&self, batch: &VlmBatch) -> Tensor<3>;
}

impl AlignModel for PixelLlava {
    fn logits(&self, batch: &VlmBatch) -> Tensor<3> {
        self.llava.logits(batch)
    }

    fn text_only_logits(&self, batch: &VlmBatch) -> TextOnlyLogits {
        self.llava.text_only_logits(batch)
    }

    fn logits_no_grad(&self, batch: &VlmBatch) -> Tensor<3> {
        self.llava.logits_no_grad(batch)
    }

    fn logits_at(&self, batch: &VlmBatch, rows: &[i64]) -> Tensor<2> {
        self.llava.logits_at(batch, rows)
    }

    fn logits_at_no_grad(&self, batch: &VlmBatch, rows: &[i64]) -> Tensor<2> {
        self.llava.logits_at_no_grad(batch, rows)
    }
}

impl LocateModel for PixelLlava {
    fn logits_and_points_at(&self, batch: &VlmBatch, rows: &[i64]) -> (Tensor<2>, Tensor<2>) {
        let hidden = select_rows(self.forward_hidden(input(batch, false)), rows);
        let logits = self.llava.language_model.logits(hidden.clone());
        let points = self
            .head
            .forward(hidden.unsqueeze_dim::<3>(0))
            .squeeze_dim(0);
        (logits, points)
    }

    fn points_no_grad(&self, batch: &VlmBatch) -> Tensor<3> {
        self.valid().points(input(batch, true))
    }
}

/// The centre of `[x0, y0, x1, y1]`.
pub fn box_centre(b: [f32; 4]) -> [f32; 2] {
    [(b[0] + b[2]) / 2.0, (b[1] + b[3]) / 2.0]
}

/// Per target of `targets` (its order), the centre of the box of the token it predicts and 1,
/// or `(0, 0)` and 0 where the token names no object: `([n·2], [n])`.
pub fn target_centres(batch: &VlmBatch, targets: &Targets) -> (Vec<f32>, Vec<f32>) {
    let n = targets.source.len().max(1);
    let (mut centres, mut mask) = (vec![0.0; 2 * n], vec![0.0; n]);
    for (i, &source) in targets.source.iter().enumerate() {
        let (b, t) = (source as usize / targets.seq, source as usize % targets.seq);
        let bbox = batch.boxes.get(b).and_then(|row| row.get(t + 1)).copied();
        if let Some(Some(bbox)) = bbox {
            let c = box_centre(bbox);
            centres[2 * i..2 * i + 2].copy_from_slice(&c);
            mask[i] = 1.0;
        }
    }
    (centres, mask)
}

/// PixelLLM's training loss: the LM loss (MLE on the supervised tokens) plus `weight` times
/// the localisation L1 of the tokens that name an object.
#[derive(Clone, Copy, Debug)]
pub struct PixelObjective {
    /// The localisation loss's weight.
    pub weight: f32,
}

impl<M: LocateModel> Objective<M> for PixelObjective {
    fn loss(&self, model: &M, batch: &VlmBatch) -> ObjectiveOutput {
        let targets = Targets::new(&batch.labels);
        let (logits, points) = model.logits_and_points_at(batch, &targets.rows());
        let lm = weighted_loss(&token_ce_at(logits, &targets), batch_weights(batch));
        let (centres, mask) = target_centres(batch, &targets);
        let n = mask.len();
        let located = mask.iter().sum::<f32>();
        let device = points.device();
        let l1 = localisation_l1(
            points.unsqueeze_dim(0),
            Tensor::from_data(TensorData::new(centres, [1, n, 2]), &device),
            Tensor::from_data(TensorData::new(mask, [1, n]), &device),
        );
        let (lm_value, l1_value) = (scalar(&lm), scalar(&l1));
        ObjectiveOutput {
            loss: lm + l1.mul_scalar(self.weight),
            diagnostics: vec![
                ("lm_loss", lm_value),
                ("localisation_l1", l1_value),
                ("located_tokens", f64::from(located)),
            ],
            weights: None,
        }
    }

    fn name(&self) -> &'static str {
        "pixel"
    }
}

fn scalar(x: &Tensor<1>) -> f64 {
    x.clone().detach().into_scalar::<f64>()
}

/// The masked L1 loss of `predicted` and `target` points `[batch, seq, 2]` over the tokens
/// where `mask` `[batch, seq]` is 1 (it is 0 elsewhere).
pub fn localisation_l1(predicted: Tensor<3>, target: Tensor<3>, mask: Tensor<2>) -> Tensor<1> {
    let mask = mask.unsqueeze_dim::<3>(2);
    let total = (predicted - target).abs().mul(mask.clone()).sum();
    total / (mask.sum().mul_scalar(2.0).add_scalar(1e-6))
}

/// Mean distance in pixels between `predicted` and `target` points (`[n, 2]` in `[0, 1]`) on
/// an image of `width × height` pixels: the head's error as PixelLLM reports it.
pub fn mean_pixel_error(
    predicted: &[[f32; 2]],
    target: &[[f32; 2]],
    width: f32,
    height: f32,
) -> f64 {
    assert_eq!(predicted.len(), target.len(), "one target per prediction");
    if predicted.is_empty() {
        return 0.0;
    }
    let sum: f64 = predicted
        .iter()
        .zip(target)
        .map(|(p, t)| {
            let dx = (p[0] - t[0]) * width;
            let dy = (p[1] - t[1]) * height;
            f64::from((dx * dx + dy * dy).sqrt())
        })
        .sum();
    sum / predicted.len() as f64
}
