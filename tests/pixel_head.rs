//! PixelLLM's localisation head and its loss: points in [0, 1]², the masked L1 against a hand
//! computation, no gradient from masked tokens, a head that learns points from hidden states,
//! and the pixel error.

mod common;

use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{Bool, Device, Distribution, Int, Tensor, TensorData};
use common::*;
use vlalign::align::{
    LocateModel, MleObjective, Objective, PixelObjective, box_centre, localisation_l1,
    mean_pixel_error,
};
use vlalign::data::{IGNORE, Padding, VlmBatch};
use vlalign::models::{PixelHeadConfig, PixelLlava};

#[test]
fn the_head_gives_a_point_in_the_image_per_token() {
    let device = device();
    let head = PixelHeadConfig::new(64).with_hidden(32).init(&device);
    let hidden = Tensor::<3>::random([2, 5, 64], Distribution::Normal(0.0, 3.0), &device);
    let points = head.forward(hidden.clone());
    assert_eq!(points.dims(), [2, 5, 2]);
    let v = to_vec(points);
    assert!(v.iter().all(|&p| p > 0.0 && p < 1.0), "{v:?}");
    // A token's point depends on its own hidden state only.
    let part = head.forward(hidden.clone().narrow(1, 1, 4));
    assert!(max_abs_diff(part, head.forward(hidden).narrow(1, 1, 4)) < 1e-6);
}

#[test]
fn the_loss_is_the_masked_mean_l1() {
    let device = device();
    let t =
        |v: Vec<f32>, shape: [usize; 3]| Tensor::<3>::from_data(TensorData::new(v, shape), &device);
    let predicted = t(vec![0.1, 0.2, 0.5, 0.5, 0.9, 0.0], [1, 3, 2]);
    let target = t(vec![0.3, 0.2, 0.0, 1.0, 0.8, 0.4], [1, 3, 2]);
    let mask = Tensor::<2>::from_data(TensorData::new(vec![1.0f32, 0.0, 1.0], [1, 3]), &device);
    // tokens 0 and 2: (0.2 + 0) + (0.1 + 0.4) = 0.7 over 2 tokens × 2 coordinates.
    let loss = localisation_l1(predicted, target, mask).into_scalar::<f32>();
    assert!((loss - 0.7 / 4.0).abs() < 1e-5, "{loss}");
}

#[test]
fn masked_tokens_get_no_gradient() {
    let device = device().autodiff();
    let head = PixelHeadConfig::new(16).init(&device);
    let hidden =
        Tensor::<3>::random([1, 4, 16], Distribution::Normal(0.0, 1.0), &device).require_grad();
    let target = Tensor::<3>::random([1, 4, 2], Distribution::Uniform(0.0, 1.0), &device);
    let mask = Tensor::<2>::from_data(
        TensorData::new(vec![0.0f32, 1.0, 0.0, 1.0], [1, 4]),
        &device,
    );
    let loss = localisation_l1(head.forward(hidden.clone()), target, mask);
    let grads = loss.backward();
    let g = to_vec(hidden.grad(&grads).expect("a gradient"));
    for (token, row) in g.chunks(16).enumerate() {
        let norm: f32 = row.iter().map(|v| v.abs()).sum();
        if token % 2 == 0 {
            assert_eq!(norm, 0.0, "masked token {token}");
        } else {
            assert!(norm > 0.0, "token {token}");
        }
    }
}

#[test]
fn a_head_learns_points_from_hidden_states() {
    let device = device().autodiff();
    let mut head = PixelHeadConfig::new(8).with_hidden(32).init(&device);
    // Each token's point is a fixed function of its hidden state.
    let hidden = Tensor::<3>::random([4, 16, 8], Distribution::Normal(0.0, 1.0), &device);
    let x = hidden.clone().narrow(2, 0, 1);
    let y = hidden.clone().narrow(2, 1, 1);
    let target = burn::tensor::activation::sigmoid(Tensor::cat(vec![x, y.neg()], 2));
    let mask = Tensor::<2>::ones([4, 16], &device);
    let mut optim = AdamConfig::new().init();
    let mut losses = Vec::new();
    for _ in 0..150 {
        let loss = localisation_l1(head.forward(hidden.clone()), target.clone(), mask.clone());
        losses.push(loss.clone().into_scalar::<f32>());
        let grads = GradientsParams::from_grads(loss.backward(), &head);
        head = optim.step(1e-2, head, grads);
    }
    let (first, last) = (losses[0], *losses.last().unwrap());
    assert!(last < 0.25 * first, "L1 {first} → {last}");
}

#[test]
fn pixel_error_is_the_mean_euclidean_distance_in_pixels() {
    let e = mean_pixel_error(
        &[[0.0, 0.0], [0.5, 0.5]],
        &[[0.3, 0.4], [0.5, 0.5]],
        10.0,
        10.0,
    );
    assert!((e - 2.5).abs() < 1e-6, "{e}");
    // Width and height scale x and y apart.
    let e = mean_pixel_error(&[[0.0, 0.0]], &[[0.5, 0.5]], 6.0, 16.0);
    assert!((e - 73f64.sqrt()).abs() < 1e-5, "{e}");
    assert_eq!(mean_pixel_error(&[], &[], 10.0, 10.0), 0.0);
}

/// Two rows of the tiny LLaVA: text, an image, a supervised answer; boxes on some answer tokens
/// and one on a prompt token (not supervised, so it must not count).
fn located_batch(device: &Device) -> VlmBatch {
    let rows = [
        row(&[5, 6, 7, 8, 9, 10, 11, 12], 2),
        row(&[13, 14, 15, 16, 17, 18], 1),
    ];
    let width = rows.iter().map(Vec::len).max().unwrap();
    let answer_from = |r: usize| rows[r].len() - 4;
    let (mut ids, mut labels, mut mask) = (Vec::new(), Vec::new(), Vec::new());
    let mut boxes = Vec::new();
    for (r, tokens) in rows.iter().enumerate() {
        let mut bx = vec![None; width];
        for t in 0..width {
            let real = t < tokens.len();
            ids.push(if real { tokens[t] } else { PAD });
            mask.push(real);
            labels.push(if real && t >= answer_from(r) {
                tokens[t]
            } else {
                IGNORE
            });
        }
        let a = answer_from(r);
        bx[a] = Some([0.1, 0.2, 0.3, 0.6]);
        bx[a + 2] = Some([0.5 + 0.1 * r as f32, 0.0, 0.9, 0.4]);
        bx[1] = Some([0.0, 0.0, 1.0, 1.0]);
        boxes.push(bx);
    }
    VlmBatch {
        ids: vec!["a".into(), "b".into()],
        images: Some(images(2, device)),
        image_index: None,
        image_sample: vec![0, 1],
        input_ids: Tensor::<2, Int>::from_data(TensorData::new(ids, [2, width]), device),
        labels: Tensor::<2, Int>::from_data(TensorData::new(labels, [2, width]), device),
        attention_mask: Tensor::<2, Bool>::from_data(TensorData::new(mask, [2, width]), device),
        token_weights: None,
        truth: vec![vec![None; width]; 2],
        boxes,
        lengths: rows.iter().map(Vec::len).collect(),
        padding: Padding::Right,
    }
}

fn pixel_llava(device: &Device) -> PixelLlava {
    let llava = tiny_llava(device);
    let d = llava.language_model.hidden_size();
    PixelLlava::new(llava, &PixelHeadConfig::new(d).with_hidden(16))
}

#[test]
fn the_objective_is_the_lm_loss_plus_the_weighted_l1_of_supervised_object_words() {
    let device = device();
    let model = pixel_llava(&device);
    let batch = located_batch(&device);
    let mle = MleObjective.loss(&model, &batch).loss.into_scalar::<f32>();
    let zero = PixelObjective { weight: 0.0 }.loss(&model, &batch);
    assert!((zero.loss.into_scalar::<f32>() - mle).abs() < 1e-6);
    // By hand: the point of token t + 1 is read at t; the prompt token's box does not count.
    let points = to_vec(model.points_no_grad(&batch));
    let width = batch.boxes[0].len();
    let (mut sum, mut n) = (0.0f32, 0);
    for (r, row) in batch.boxes.iter().enumerate() {
        for (t, b) in row.iter().enumerate().skip(2) {
            let Some(b) = b else { continue };
            let c = box_centre(*b);
            let at = 2 * (r * width + t - 1);
            sum += (points[at] - c[0]).abs() + (points[at + 1] - c[1]).abs();
            n += 1;
        }
    }
    assert_eq!(n, 4);
    let l1 = sum / (2.0 * n as f32);
    let out = PixelObjective { weight: 0.5 }.loss(&model, &batch);
    let located = out.diagnostics.iter().find(|d| d.0 == "located_tokens");
    assert_eq!(located.map(|d| d.1), Some(4.0));
    let got = out.loss.into_scalar::<f32>();
    assert!(
        (got - mle - 0.5 * l1).abs() < 1e-5,
        "{got} vs {mle} + 0.5·{l1}"
    );
    assert!(l1 > 0.01, "the hand L1 is not trivially 0: {l1}");
}

#[test]
fn the_localisation_loss_trains_the_head_and_the_llm() {
    let device = device().autodiff();
    let model = pixel_llava(&device);
    let batch = located_batch(&device);
    let head_grad = |weight: f32| {
        let grads = PixelObjective { weight }
            .loss(&model, &batch)
            .loss
            .backward();
        let g = model.head.fc1.weight.grad(&grads).map(to_vec);
        let lm = model.llava.language_model.layers[0]
            .mlp
            .down_proj
            .weight
            .grad(&grads)
            .map(to_vec);
        (g, lm)
    };
    let (none, lm0) = head_grad(0.0);
    assert!(
        none.is_none_or(|g| g.iter().all(|v| *v == 0.0)),
        "weight 0: no head gradient"
    );
    let (some, lm1) = head_grad(2.0);
    assert!(some.unwrap().iter().any(|v| *v != 0.0), "the head learns");
    let (lm0, lm1) = (lm0.unwrap(), lm1.unwrap());
    let moved = lm0
        .iter()
        .zip(&lm1)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(moved > 0.0, "the L1 reaches the LLM's weights");
}

#[test]
fn the_head_leaves_the_logits_alone() {
    let device = device();
    let model = pixel_llava(&device);
    let batch = located_batch(&device);
    let rows = [3i64, 9, 17];
    let (logits, points) = model.logits_and_points_at(&batch, &rows);
    let plain = vlalign::align::AlignModel::logits_at(&model.llava, &batch, &rows);
    assert_eq!(max_abs_diff(logits, plain), 0.0);
    assert_eq!(points.dims(), [3, 2]);
    let picked = vlalign::align::model::select_rows(model.points_no_grad(&batch), &rows);
    assert!(max_abs_diff(points, picked) < 1e-6);
}
