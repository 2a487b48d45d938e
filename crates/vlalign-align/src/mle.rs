//! The baseline: every supervised token weighs 1 (the mean over valid tokens, as LLaVA), times
//! the batch's own token weights when it carries some (a VIG selection).

use crate::token::{Targets, token_ce_at, weighted_loss};
use crate::{AlignModel, Objective, ObjectiveOutput};
use vlalign_data::VlmBatch;

/// Maximum likelihood on the supervised tokens.
#[derive(Clone, Copy, Debug, Default)]
pub struct MleObjective;

/// The batch's token weights shifted to target positions `[batch, seq − 1]`.
pub(crate) fn batch_weights(batch: &VlmBatch) -> Option<burn::tensor::Tensor<2>> {
    batch.token_weights.as_ref().map(|w| {
        let [b, t] = w.dims();
        w.clone().narrow(1, 1, t - 1).reshape([b, t - 1])
    })
}

impl<M: AlignModel> Objective<M> for MleObjective {
    fn loss(&self, model: &M, batch: &VlmBatch) -> ObjectiveOutput {
        let targets = Targets::new(&batch.labels);
        let ce = token_ce_at(model.logits_at(batch, &targets.rows()), &targets);
        let supervised = targets.len();
        ObjectiveOutput {
            loss: weighted_loss(&ce, batch_weights(batch)),
            diagnostics: vec![("supervised_tokens", supervised as f64)],
            weights: None,
        }
    }

    fn name(&self) -> &'static str {
        "mle"
    }
}
