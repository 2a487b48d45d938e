//! SAM's W-Former on a tiny BLIP-2: zero bridges give the plain Q-Former exactly, one image skips
//! the second stream, pooling is order-free, and groups of different sizes in one batch do not
//! see each other.

mod common;

use burn::nn::LinearConfig;
use burn::tensor::{Bool, Distribution, Int, Tensor, TensorData};
use common::{device, max_abs_diff};
use vlalign::models::{Blip2, Blip2Config, Blip2Input, Pooling};

const VOCAB: usize = 50;
const IMAGE: i64 = 49;

fn config() -> Blip2Config {
    Blip2Config::tiny(VOCAB, IMAGE as usize).with_sam()
}

/// A SAM model whose bridges are random (so that the second stream changes the output).
fn sam(pooling: Pooling) -> Blip2 {
    let device = device();
    let mut model = config().init(&device);
    let w = model.wformer.as_mut().unwrap();
    w.bridge_in = LinearConfig::new(64, 64).init(&device);
    w.bridge_out = LinearConfig::new(64, 64).init(&device);
    w.pooling = pooling;
    model
}

fn images(n: usize) -> Tensor<4> {
    Tensor::random([n, 3, 32, 32], Distribution::Normal(0.0, 1.0), &device())
}

fn pick(images: &Tensor<4>, order: &[usize]) -> Tensor<4> {
    let index: Vec<i64> = order.iter().map(|&i| i as i64).collect();
    let index =
        Tensor::<1, Int>::from_data(TensorData::new(index, [order.len()]), &images.device());
    images.clone().select(0, index)
}

/// Query outputs `[n, q, d]` of `images` in groups.
fn tokens(model: &Blip2, images: Tensor<4>, groups: &[usize]) -> Tensor<3> {
    model.encode_images(images, None, groups, None)
}

fn image_tokens(all: &Tensor<3>, i: usize) -> Tensor<3> {
    all.clone().narrow(0, i, 1)
}

/// One row per group: a text token, the group's image slots, a text token.
fn batch(groups: &[usize], images: Tensor<4>) -> Blip2Input {
    let q = config().image_tokens();
    let width = 2 + q * groups.iter().max().unwrap();
    let mut ids = Vec::new();
    let mut valid = Vec::new();
    for &g in groups {
        let mut row = vec![3i64];
        row.extend(std::iter::repeat_n(IMAGE, q * g));
        row.push(4);
        let real = row.len();
        row.resize(width, 0);
        valid.extend((0..width).map(|t| t < real));
        ids.extend(row);
    }
    let b = groups.len();
    Blip2Input {
        input_ids: Tensor::from_data(TensorData::new(ids, [b, width]), &device()),
        attention_mask: Tensor::<2, Bool>::from_data(TensorData::new(valid, [b, width]), &device()),
        images: Some(images),
        image_index: None,
        qformer_text: None,
    }
}

#[test]
fn zero_bridges_give_the_plain_qformer_exactly() {
    let device = device();
    let sam = config().init(&device);
    let imgs = images(5);
    let with = sam.forward(batch(&[3, 2], imgs.clone())).logits;
    let plain = Blip2 {
        wformer: None,
        ..sam
    };
    let without = plain.forward(batch(&[3, 2], imgs)).logits;
    assert_eq!(max_abs_diff(with, without), 0.0);
}

#[test]
fn the_wformer_changes_multi_image_tokens_and_skips_single_images() {
    let model = sam(Pooling::All);
    let imgs = images(3);
    let grouped = tokens(&model, imgs.clone(), &[3]);
    let single = tokens(&model, imgs.clone(), &[1, 1, 1]);
    let plain = Blip2 {
        wformer: None,
        ..model.clone()
    };
    let plain_single = tokens(&plain, imgs, &[1, 1, 1]);
    assert!(max_abs_diff(grouped, single.clone()) > 1e-3);
    assert_eq!(max_abs_diff(single, plain_single), 0.0);
}

#[test]
fn pooling_is_order_free_over_the_other_images() {
    for pooling in [Pooling::All, Pooling::Others] {
        let model = sam(pooling);
        let imgs = images(4);
        let a = tokens(&model, imgs.clone(), &[4]);
        let b = tokens(&model, pick(&imgs, &[0, 3, 1, 2]), &[4]);
        let d = max_abs_diff(image_tokens(&a, 0), image_tokens(&b, 0));
        assert!(d < 1e-5, "{pooling:?}: {d}");
    }
}

#[test]
fn groups_of_different_sizes_in_one_batch_stay_apart() {
    let model = sam(Pooling::All);
    let imgs = images(6);
    let together = tokens(&model, imgs.clone(), &[3, 1, 2]);
    let mut start = 0;
    for size in [3, 1, 2] {
        let order: Vec<usize> = (start..start + size).collect();
        let alone = tokens(&model, pick(&imgs, &order), &[size]);
        let d = max_abs_diff(together.clone().narrow(0, start, size), alone);
        assert!(d < 1e-5, "group at {start}: {d}");
        start += size;
    }
    // And through the full model: rows of a padded batch equal each row alone.
    let full = model.forward(batch(&[3, 1, 2], imgs.clone())).logits;
    let alone = model.forward(batch(&[1], pick(&imgs, &[3]))).logits;
    let row = full.narrow(0, 1, 1).narrow(1, 0, alone.dims()[1]);
    let d = max_abs_diff(row, alone);
    assert!(d < 1e-4, "{d}");
}

#[test]
fn others_pooling_differs_from_all() {
    let imgs = images(3);
    let all = sam(Pooling::All);
    let mut others = all.clone();
    others.wformer.as_mut().unwrap().pooling = Pooling::Others;
    let d = max_abs_diff(
        tokens(&all, imgs.clone(), &[3]),
        tokens(&others, imgs, &[3]),
    );
    assert!(d > 1e-4, "{d}");
}

#[test]
fn exchange_layers_are_configurable() {
    let imgs = images(3);
    let last = sam(Pooling::All);
    let mut early = last.clone();
    early.wformer.as_mut().unwrap().inject_layer = Some(0);
    let d = max_abs_diff(
        tokens(&last, imgs.clone(), &[3]),
        tokens(&early, imgs.clone(), &[3]),
    );
    assert!(d > 1e-4, "{d}");
    // Returning before injecting is refused: the main stream would never reach the second.
    let mut bad = last.clone();
    bad.wformer.as_mut().unwrap().return_layer = Some(0);
    bad.wformer.as_mut().unwrap().inject_layer = Some(1);
    let refused =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| tokens(&bad, imgs, &[3])));
    assert!(refused.is_err());
}
