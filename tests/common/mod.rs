//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod llava_train;

use burn::tensor::{Bool, Device, Int, Tensor, TensorData};
use vlalign::models::{Llava, LlavaConfig, LlavaInput};

/// The test device: flex (CPU), seeded.
pub fn device() -> Device {
    let device = Device::flex();
    device.seed(7);
    device
}

pub const VOCAB: usize = 97;
pub const IMAGE: i64 = 96;
pub const PAD: i64 = 0;

pub fn tiny_config() -> LlavaConfig {
    LlavaConfig::tiny(VOCAB, IMAGE as usize)
}

pub fn tiny_llava(device: &Device) -> Llava {
    tiny_config().init(device)
}

/// Image slots for one image.
pub fn image_slots() -> Vec<i64> {
    vec![IMAGE; tiny_config().image_tokens()]
}

/// A row of text tokens with one image block after the first `before` tokens.
pub fn row(text: &[i64], before: usize) -> Vec<i64> {
    let mut r = text[..before].to_vec();
    r.extend(image_slots());
    r.extend(&text[before..]);
    r
}

pub fn images(n: usize, device: &Device) -> Tensor<4> {
    let c = tiny_config();
    Tensor::random(
        [n, 3, c.vision.image_size, c.vision.image_size],
        burn::tensor::Distribution::Normal(0.0, 1.0),
        device,
    )
}

/// Batch rows padded with PAD on the left or the right.
pub fn input(
    rows: &[Vec<i64>],
    left: bool,
    images: Option<Tensor<4>>,
    device: &Device,
) -> LlavaInput {
    let width = rows.iter().map(Vec::len).max().unwrap();
    let mut ids = Vec::new();
    let mut valid = Vec::new();
    for r in rows {
        let pad = width - r.len();
        let (mut i, mut v) = (Vec::new(), Vec::new());
        if left {
            i.extend(vec![PAD; pad]);
            v.extend(vec![false; pad]);
        }
        i.extend(r);
        v.extend(vec![true; r.len()]);
        if !left {
            i.extend(vec![PAD; pad]);
            v.extend(vec![false; pad]);
        }
        ids.extend(i);
        valid.extend(v);
    }
    LlavaInput {
        image_index: None,
        input_ids: Tensor::<2, Int>::from_data(TensorData::new(ids, [rows.len(), width]), device),
        attention_mask: Tensor::<2, Bool>::from_data(
            TensorData::new(valid, [rows.len(), width]),
            device,
        ),
        images,
    }
}

pub fn to_vec<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .unwrap()
}

pub fn max_abs_diff<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> f32 {
    assert_eq!(a.dims(), b.dims());
    to_vec(a)
        .iter()
        .zip(to_vec(b))
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}
