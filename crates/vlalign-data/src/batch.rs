//! Batching: items → padded tensors, right padding for training and left padding for
//! generation.

use burn::data::dataloader::batcher::Batcher;
use burn::tensor::{Bool, Device, Int, Tensor, TensorData};

use crate::dataset::Item;
use crate::template::IGNORE;
use crate::truth::TokenTruth;

/// Where padding goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Padding {
    /// After the tokens (training).
    Right,
    /// Before the tokens (generation).
    Left,
}

/// A batch for a vision–language model.
#[derive(Clone, Debug)]
pub struct VlmBatch {
    /// Record ids.
    pub ids: Vec<String>,
    /// Pixels `[images, 3, H, W]` in slot order (row by row), or `None` for a text-only batch.
    pub images: Option<Tensor<4>>,
    /// Shared images: for each image in slot order, its index in `images` (DPO's chosen and
    /// rejected rows share one encoded image); `None`: one entry of `images` per image.
    pub image_index: Option<Vec<usize>>,
    /// For each image in slot order, the row it belongs to.
    pub image_sample: Vec<usize>,
    /// Token ids `[batch, seq]` (image slots expanded).
    pub input_ids: Tensor<2, Int>,
    /// Labels `[batch, seq]`: the token itself where supervised, −100 elsewhere (the loss
    /// predicts `labels[t]` from position `t − 1`).
    pub labels: Tensor<2, Int>,
    /// `[batch, seq]`, true for real tokens.
    pub attention_mask: Tensor<2, Bool>,
    /// Optional per-token loss weights `[batch, seq]` (1 where items carry none).
    pub token_weights: Option<Tensor<2>>,
    /// Grounding truth per position (host side; `None` at unsupervised and padding positions).
    pub truth: Vec<Vec<Option<TokenTruth>>>,
    /// Per position, the box `[x0, y0, x1, y1]` of the object the token names (host side,
    /// synthetic data; `None` elsewhere, and empty rows when the batch carries no boxes).
    pub boxes: Vec<Vec<Option<[f32; 4]>>>,
    /// Real length of each row.
    pub lengths: Vec<usize>,
    /// Padding side.
    pub padding: Padding,
}

/// Builds [`VlmBatch`]es.
#[derive(Clone, Debug)]
pub struct VlmBatcher {
    /// Token id used for padding.
    pub pad_id: u32,
    /// Padding side.
    pub padding: Padding,
    /// Image side (pixels per row/column).
    pub image_size: usize,
}

impl VlmBatcher {
    /// A training batcher (right padding).
    pub fn new(pad_id: u32, image_size: usize) -> Self {
        Self {
            pad_id,
            padding: Padding::Right,
            image_size,
        }
    }

    /// The same with left padding (generation).
    pub fn left(mut self) -> Self {
        self.padding = Padding::Left;
        self
    }
}

impl Batcher<Item, VlmBatch> for VlmBatcher {
    fn batch(&self, items: Vec<Item>, device: &Device) -> VlmBatch {
        let batch = items.len();
        let width = items.iter().map(|i| i.encoded.ids.len()).max().unwrap_or(0);
        let (mut ids, mut labels, mut mask) = (Vec::new(), Vec::new(), Vec::new());
        let mut weights = Vec::new();
        let any_weights = items.iter().any(|i| i.weights.is_some());
        let mut truth = Vec::with_capacity(batch);
        let mut boxes = Vec::with_capacity(batch);
        let mut pixels = Vec::new();
        let mut image_sample = Vec::new();
        for (row, item) in items.iter().enumerate() {
            let e = &item.encoded;
            let pad = width - e.ids.len();
            let (before, after) = match self.padding {
                Padding::Right => (0, pad),
                Padding::Left => (pad, 0),
            };
            let mut put = |n: usize, real: Option<usize>| match real {
                None => {
                    ids.extend(std::iter::repeat_n(self.pad_id as i64, n));
                    labels.extend(std::iter::repeat_n(IGNORE, n));
                    mask.extend(std::iter::repeat_n(false, n));
                    weights.extend(std::iter::repeat_n(0.0f32, n));
                }
                Some(_) => {
                    ids.extend(e.ids.iter().map(|&t| t as i64));
                    labels.extend(e.labels.iter().copied());
                    mask.extend(std::iter::repeat_n(true, e.ids.len()));
                    match &item.weights {
                        Some(w) => weights.extend(w.iter().copied()),
                        None => weights.extend(std::iter::repeat_n(1.0f32, e.ids.len())),
                    }
                }
            };
            put(before, None);
            put(e.ids.len(), Some(0));
            put(after, None);
            let mut t: Vec<Option<TokenTruth>> = vec![None; before];
            t.extend(e.truth.iter().copied());
            t.extend(vec![None; after]);
            truth.push(t);
            let mut bx = vec![None; before];
            bx.extend(e.boxes.iter().copied());
            bx.extend(vec![None; after]);
            boxes.push(bx);
            for p in item.pixels.iter().take(e.image_spans.len()) {
                pixels.extend_from_slice(p);
                image_sample.push(row);
            }
        }
        let shape = [batch, width];
        let s = self.image_size;
        let images = (!image_sample.is_empty()).then(|| {
            Tensor::<4>::from_data(
                TensorData::new(pixels, [image_sample.len(), 3, s, s]),
                device,
            )
        });
        VlmBatch {
            ids: items.iter().map(|i| i.id.clone()).collect(),
            images,
            image_index: None,
            image_sample,
            input_ids: Tensor::from_data(TensorData::new(ids, shape), device),
            labels: Tensor::from_data(TensorData::new(labels, shape), device),
            attention_mask: Tensor::from_data(TensorData::new(mask, shape), device),
            token_weights: any_weights
                .then(|| Tensor::from_data(TensorData::new(weights, shape), device)),
            truth,
            boxes,
            lengths: items.iter().map(|i| i.encoded.ids.len()).collect(),
            padding: self.padding,
        }
    }
}
