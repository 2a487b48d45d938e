//! The localisation loss of a PixelLLM head ([`vlalign_models::pixel_head`]): L1 between the
//! predicted and the true point of every token that names an object, averaged over those
//! tokens and both coordinates, `L = Σ m·(|x̂ − x| + |ŷ − y|) / (2·Σ m + 1e-6)`. Tokens with
//! `m = 0` (template words, padding, tokens without an object) add nothing and get no gradient.

use burn::tensor::Tensor;

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
