//! PLoRA: adapters that act at image-token positions only. At init (B = 0) the model is the
//! base model exactly; with trained (here: random) B, the text tokens' own projections stay the
//! base's exactly, image tokens change, and text after an image reads the changed image states.

mod common;

use burn::module::Module;
use burn::tensor::{Bool, Distribution, Tensor, TensorData};
use common::*;
use vlalign::models::plora::{PLoraAdapter, adapted, image_mask};
use vlalign::models::{GenerationConfig, Llava, PLoraConfig, PLoraError};

/// Give every adapter a random B, as training would, so that the adapters act.
fn with_random_b(mut llava: Llava) -> Llava {
    let randomize = |a: &mut Option<PLoraAdapter>| {
        if let Some(a) = a.as_mut() {
            a.lora_b.weight = a.lora_b.weight.clone().map(|w| {
                let dims = w.dims();
                Tensor::random(dims, Distribution::Normal(0.0, 0.5), &w.device())
            });
        }
    };
    for layer in llava.language_model.layers.iter_mut() {
        let p = layer.plora.as_mut().expect("adapters");
        for a in [
            &mut p.q_proj,
            &mut p.k_proj,
            &mut p.v_proj,
            &mut p.o_proj,
            &mut p.gate_proj,
            &mut p.up_proj,
            &mut p.down_proj,
        ] {
            randomize(a);
        }
    }
    llava
}

fn with_plora(llava: Llava, config: &PLoraConfig) -> Llava {
    let mut llava = llava;
    llava.language_model = config.init(llava.language_model).expect("valid config");
    llava
}

/// Two rows: text, an image block after 3 tokens, more text.
fn batch_rows() -> Vec<Vec<i64>> {
    vec![row(&[1, 2, 3, 4, 5, 6], 3), row(&[7, 8, 9, 10, 11, 12], 3)]
}

/// Logits `[batch, seq, vocab]` at positions `range` of the sequence.
fn at(logits: &Tensor<3>, range: std::ops::Range<usize>) -> Tensor<3> {
    logits.clone().narrow(1, range.start, range.len())
}

#[test]
fn fresh_adapters_leave_the_model_exactly_unchanged() {
    let device = device();
    let base = tiny_llava(&device);
    let plora = with_plora(base.clone(), &PLoraConfig::new());
    assert!(plora.language_model.has_plora());
    let images = images(2, &device);
    let batch = || input(&batch_rows(), false, Some(images.clone()), &device);
    let (a, b) = (base.forward(batch()).logits, plora.forward(batch()).logits);
    assert_eq!(max_abs_diff(a, b), 0.0);
}

#[test]
fn adapters_act_at_image_tokens_only() {
    let device = device();
    let base = tiny_llava(&device);
    let plora = with_random_b(with_plora(base.clone(), &PLoraConfig::new()));
    let images = images(2, &device);
    let batch = || input(&batch_rows(), false, Some(images.clone()), &device);
    let (a, b) = (base.forward(batch()).logits, plora.forward(batch()).logits);
    let slots = tiny_config().image_tokens();
    let seq = a.dims()[1];
    // Text before the image: its projections are the base's and it attends to text only.
    assert_eq!(max_abs_diff(at(&a, 0..3), at(&b, 0..3)), 0.0);
    // The image tokens change, and the text after them reads the adapted image states.
    assert!(max_abs_diff(at(&a, 3..3 + slots), at(&b, 3..3 + slots)) > 1e-3);
    assert!(max_abs_diff(at(&a, 3 + slots..seq), at(&b, 3 + slots..seq)) > 1e-3);

    // Without an image every token is text: the model is the base model exactly.
    let text = || input(&[vec![1, 2, 3, 4, 5]], false, None, &device);
    let (a, b) = (base.forward(text()).logits, plora.forward(text()).logits);
    assert_eq!(max_abs_diff(a, b), 0.0);
    // CAL's text-only pass runs no image token either.
    let (a, b) = (
        base.forward_text_only(batch()).logits,
        plora.forward_text_only(batch()).logits,
    );
    assert_eq!(max_abs_diff(a, b), 0.0);
}

#[test]
fn an_adapted_linear_equals_the_base_linear_at_text_positions() {
    let device = device();
    let base = tiny_llava(&device);
    let plora = with_random_b(with_plora(base, &PLoraConfig::new().with_rank(4)));
    let layer = &plora.language_model.layers[0];
    let adapter = layer.plora.as_ref().and_then(|p| p.q_proj.as_ref());
    let linear = &layer.self_attn.q_proj;
    let d = linear.weight.dims()[0];
    let x = Tensor::<3>::random([2, 5, d], Distribution::Normal(0.0, 1.0), &device);
    let marks = vec![
        false, true, true, false, false, // row 0
        true, false, false, false, true, // row 1
    ];
    let mask = image_mask(Tensor::<2, Bool>::from_data(
        TensorData::new(marks.clone(), [2, 5]),
        &device,
    ));
    let y0 = to_vec(linear.forward(x.clone()));
    let y = to_vec(adapted(linear, adapter, x.clone(), Some(&mask)));
    let width = y.len() / marks.len();
    for (k, &image) in marks.iter().enumerate() {
        let (r0, r) = (
            &y0[k * width..(k + 1) * width],
            &y[k * width..(k + 1) * width],
        );
        let diff = r0
            .iter()
            .zip(r)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        if image {
            assert!(
                diff > 1e-3,
                "token {k} is an image token but did not change"
            );
        } else {
            assert_eq!(diff, 0.0, "text token {k} changed by {diff}");
        }
    }
    // No mask: the plain linear layer.
    assert_eq!(
        to_vec(adapted(linear, adapter, x.clone(), None)),
        to_vec(linear.forward(x))
    );
}

#[test]
fn targets_choose_the_adapted_layers_and_bad_configs_are_refused() {
    let device = device();
    let lm = tiny_llava(&device).language_model;
    let only_v = PLoraConfig::new().with_targets(vec!["v_proj".into(), "down_proj".into()]);
    let lm = only_v.init(lm).unwrap();
    let p = lm.layers[1].plora.as_ref().unwrap();
    assert!(p.v_proj.is_some() && p.down_proj.is_some());
    assert!(p.q_proj.is_none() && p.k_proj.is_none() && p.o_proj.is_none());
    assert!(p.gate_proj.is_none() && p.up_proj.is_none());
    // rank 4 on a [64, 32] projection: A 64·4 + B 4·32.
    let v = p.v_proj.as_ref().unwrap();
    assert_eq!(v.lora_a.weight.dims(), [64, 8]);
    assert_eq!(v.lora_b.weight.dims(), [8, 32]);
    assert_eq!(v.scale, 2.0);

    let lm = tiny_llava(&device).language_model;
    assert_eq!(
        PLoraConfig::new().with_rank(0).init(lm.clone()).err(),
        Some(PLoraError::Empty)
    );
    assert_eq!(
        PLoraConfig::new()
            .with_targets(vec!["wqkv".into()])
            .init(lm)
            .err(),
        Some(PLoraError::UnknownTarget("wqkv".into()))
    );
}

/// Generation runs the prompt (image tokens adapted) and then one generated token at a time
/// (text: not adapted); the tokens it picks must be the full forward pass's greedy choices.
#[test]
fn cached_generation_agrees_with_the_full_pass() {
    let device = device();
    let plora = with_random_b(with_plora(tiny_llava(&device), &PLoraConfig::new()));
    let prompt: Vec<u32> = row(&[1, 2, 3, 4], 2).iter().map(|&t| t as u32).collect();
    let image = images(1, &device);
    let config = GenerationConfig::new().with_max_new_tokens(6);
    let out = plora.generate(std::slice::from_ref(&prompt), Some(image.clone()), &config);
    let mut full: Vec<i64> = prompt.iter().map(|&t| t as i64).collect();
    full.extend(out[0][..5].iter().map(|&t| t as i64));
    let logits = plora
        .forward(input(&[full], false, Some(image), &device))
        .logits;
    let [_, seq, vocab] = logits.dims();
    let logits = to_vec(logits);
    for (k, &token) in out[0].iter().enumerate() {
        let pos = prompt.len() - 1 + k;
        assert!(pos < seq);
        let row = &logits[pos * vocab..(pos + 1) * vocab];
        let mut allowed: Vec<(usize, f32)> = row.iter().copied().enumerate().collect();
        allowed.retain(|&(t, _)| t != IMAGE as usize);
        let best = allowed
            .iter()
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map(|&(t, _)| t as u32)
            .unwrap();
        assert_eq!(token, best, "generated token {k}");
    }
}

/// Only the adapters train when the base is frozen, and their gradient is nonzero although B
/// starts at zero.
#[test]
fn adapters_get_gradients_from_text_after_the_image() {
    let device = device();
    let ad = device.autodiff();
    let plora = with_plora(tiny_llava(&ad).no_grad(), &PLoraConfig::new());
    let images = images(2, &ad);
    let logits = plora
        .forward(input(&batch_rows(), false, Some(images), &ad))
        .logits;
    let slots = tiny_config().image_tokens();
    let seq = logits.dims()[1];
    // A loss on the text after the image only.
    let loss = at(&logits, 3 + slots..seq).powi_scalar(2).mean();
    let grads = loss.backward();
    let layer = &plora.language_model.layers[0];
    let b = &layer
        .plora
        .as_ref()
        .unwrap()
        .v_proj
        .as_ref()
        .unwrap()
        .lora_b;
    let g = b.weight.grad(&grads).expect("B has a gradient");
    assert!(to_vec(g).iter().any(|v| v.abs() > 0.0));
    assert!(layer.self_attn.q_proj.weight.grad(&grads).is_none());
}

/// The training set-up freezes the base: the adapters alone train (plus the projector when
/// asked), and a bad target is a configuration error, not a panic.
#[test]
fn plora_training_trains_the_adapters_and_optionally_the_projector() {
    use vlalign::train::{PLoraTraining, trainable_params};
    let device = device().autodiff();
    let setup = PLoraTraining {
        rank: 4,
        ..PLoraTraining::default()
    };
    let model = setup.apply(tiny_llava(&device)).unwrap();
    // tiny decoder: 2 layers, width 64, 4 heads of 16, 2 key/value heads (32), SwiGLU 128.
    // rank 4: A d_in·4 + B 4·d_out for q, k, v, o, gate, up, down.
    let per_layer: usize = [
        (64, 64),
        (64, 32),
        (64, 32),
        (64, 64),
        (64, 128),
        (64, 128),
        (128, 64),
    ]
    .iter()
    .map(|(i, o)| 4 * (i + o))
    .sum();
    assert_eq!(trainable_params(&model), 2 * per_layer);
    let projector = trainable_params(&tiny_llava(&device).multi_modal_projector);
    let with = PLoraTraining {
        with_projector: true,
        ..setup.clone()
    }
    .apply(tiny_llava(&device))
    .unwrap();
    assert_eq!(trainable_params(&with), 2 * per_layer + projector);
    let bad = PLoraTraining {
        targets: vec!["lm_head".into()],
        ..setup
    };
    assert!(bad.apply(tiny_llava(&device)).is_err());
}
