//! PixelLLM's localisation head and its loss: points in [0, 1]², the masked L1 against a hand
//! computation, no gradient from masked tokens, a head that learns points from hidden states,
//! and the pixel error.

mod common;

use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{Distribution, Tensor, TensorData};
use common::*;
use vlalign::align::{localisation_l1, mean_pixel_error};
use vlalign::models::PixelHeadConfig;

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
