//! What objectives need from a model.

use burn::module::Module;
use burn::tensor::{Int, Tensor, TensorData};
use vlalign_data::VlmBatch;
use vlalign_models::{Blip2, Blip2Input, Llava, LlavaInput};

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

    /// Logits `[rows.len(), vocab]` at the flat positions `rows` (`b·seq + t`) of the full
    /// multimodal sequence, with graph. The default slices [`logits`](Self::logits); models
    /// override it to run their LM head only at those positions.
    fn logits_at(&self, batch: &VlmBatch, rows: &[i64]) -> Tensor<2> {
        select_rows(self.logits(batch), rows)
    }

    /// [`logits_at`](Self::logits_at) without autodiff.
    fn logits_at_no_grad(&self, batch: &VlmBatch, rows: &[i64]) -> Tensor<2> {
        select_rows(self.logits_no_grad(batch), rows)
    }
}

/// Rows `rows` (flat `b·seq + t`) of `x` `[batch, seq, d]` → `[rows.len(), d]`.
pub fn select_rows(x: Tensor<3>, rows: &[i64]) -> Tensor<2> {
    let [b, t, d] = x.dims();
    let index =
        Tensor::<1, Int>::from_data(TensorData::new(rows.to_vec(), [rows.len()]), &x.device());
    x.reshape([b * t, d]).select(0, index)
}

/// The batch as LLaVA input; with `inner`, on the device without autodiff (no-grad passes).
pub(crate) fn input(batch: &VlmBatch, inner: bool) -> LlavaInput {
    let x = LlavaInput {
        input_ids: batch.input_ids.clone(),
        attention_mask: batch.attention_mask.clone(),
        images: batch.images.clone(),
        image_index: batch.image_index.clone(),
    };
    if !inner {
        return x;
    }
    LlavaInput {
        input_ids: x.input_ids.inner(),
        attention_mask: x.attention_mask.inner(),
        images: x.images.map(Tensor::inner),
        image_index: x.image_index,
    }
}

impl AlignModel for Llava {
    fn logits_no_grad(&self, batch: &VlmBatch) -> Tensor<3> {
        self.valid().forward(input(batch, true)).logits
    }

    fn logits(&self, batch: &VlmBatch) -> Tensor<3> {
        self.forward(input(batch, false)).logits
    }

    fn logits_at(&self, batch: &VlmBatch, rows: &[i64]) -> Tensor<2> {
        let hidden = self.forward_hidden(input(batch, false));
        self.language_model.logits(select_rows(hidden, rows))
    }

    fn logits_at_no_grad(&self, batch: &VlmBatch, rows: &[i64]) -> Tensor<2> {
        let model = self.valid();
        let hidden = model.forward_hidden(input(batch, true));
        model.language_model.logits(select_rows(hidden, rows))
    }

    fn text_only_logits(&self, batch: &VlmBatch) -> TextOnlyLogits {
        let out = self.valid().forward_text_only(input(batch, true));
        TextOnlyLogits {
            logits: out.logits,
            positions: out.positions,
        }
    }
}

/// The batch as BLIP-2 / SAM input; with `inner`, on the device without autodiff.
fn blip2_input(batch: &VlmBatch, inner: bool) -> Blip2Input {
    let x = input(batch, inner);
    Blip2Input {
        input_ids: x.input_ids,
        attention_mask: x.attention_mask,
        images: x.images,
        image_index: x.image_index,
        qformer_text: None,
    }
}

impl AlignModel for Blip2 {
    fn logits_no_grad(&self, batch: &VlmBatch) -> Tensor<3> {
        self.valid().forward(blip2_input(batch, true)).logits
    }

    fn logits(&self, batch: &VlmBatch) -> Tensor<3> {
        self.forward(blip2_input(batch, false)).logits
    }

    fn logits_at(&self, batch: &VlmBatch, rows: &[i64]) -> Tensor<2> {
        let hidden = self.forward_hidden(blip2_input(batch, false));
        self.language_model.logits(select_rows(hidden, rows))
    }

    fn text_only_logits(&self, batch: &VlmBatch) -> TextOnlyLogits {
        let out = self.valid().forward_text_only(&blip2_input(batch, true));
        TextOnlyLogits {
            logits: out.logits,
            positions: out.positions,
        }
    }
}
