//! What objectives need from a model.

use burn::module::Module;
use burn::tensor::Tensor;
use vlalign_data::VlmBatch;
use vlalign_models::{Llava, LlavaInput};

/// Logits of a pass without the image, with where each kept token sat in the full sequence.
#[derive(Clone, Debug)]
pub struct TextOnlyLogits {
    /// `[batch, kept, vocab]`, on a device without autodiff.
    pub logits: Tensor<3>,
    /// Per row, the original index of each kept token, in order.
    pub positions: Vec<Vec<usize>>,
}

/// The view of a model that objectives use.
pub trait AlignModel: Send + Sync {
    /// Next-token logits `[batch, seq, vocab]` of the full multimodal sequence (with graph when
    /// the model is on an autodiff device).
    fn logits(&self, batch: &VlmBatch) -> Tensor<3>;

    /// Logits of the same text without the image (CAL's contrast), computed without autodiff:
    /// a forward on an autodiff device whose graph is never backpropagated keeps the graph alive.
    fn text_only_logits(&self, batch: &VlmBatch) -> TextOnlyLogits;

    /// Logits of the full sequence computed without autodiff (for contrasts that change the
    /// images, e.g. a blurred copy).
    fn logits_no_grad(&self, batch: &VlmBatch) -> Tensor<3>;
}

/// The batch as LLaVA input; with `inner`, on the device without autodiff (no-grad passes).
fn input(batch: &VlmBatch, inner: bool) -> LlavaInput {
    let x = LlavaInput {
        input_ids: batch.input_ids.clone(),
        attention_mask: batch.attention_mask.clone(),
        images: batch.images.clone(),
    };
    if !inner {
        return x;
    }
    LlavaInput {
        input_ids: x.input_ids.inner(),
        attention_mask: x.attention_mask.inner(),
        images: x.images.map(Tensor::inner),
    }
}

impl AlignModel for Llava {
    fn logits_no_grad(&self, batch: &VlmBatch) -> Tensor<3> {
        self.valid().forward(input(batch, true)).logits
    }

    fn logits(&self, batch: &VlmBatch) -> Tensor<3> {
        self.forward(input(batch, false)).logits
    }

    fn text_only_logits(&self, batch: &VlmBatch) -> TextOnlyLogits {
        let out = self.valid().forward_text_only(input(batch, true));
        TextOnlyLogits {
            logits: out.logits,
            positions: out.positions,
        }
    }
}
