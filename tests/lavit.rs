//! LaVIT's tokenizer and the LLaVA that reads its tokens: hard straight-through selection,
//! a merger that reads dropped patches only, quantisation to the nearest normalised code, the
//! LLM equal to LLaVA when every patch is kept and to LLaVA with every image slot hidden when
//! none is, cached generation equal to the full pass, and the codebook's perplexity.

mod common;

use burn::module::Param;
use burn::tensor::{Distribution, Tensor, TensorData};
use common::*;
use vlalign::align::{LavitLossConfig, codebook_perplexity, tokenizer_loss};
use vlalign::models::{GenerationConfig, GumbelSample, Lavit, LavitConfig, LavitLlava};

/// A tokenizer whose selector keeps (`bias` > 0) or drops (< 0) every patch, or decides by
/// its weights (`None`).
fn with_selector_bias(mut lavit: Lavit, bias: Option<f32>) -> Lavit {
    if let Some(b) = bias {
        let w = lavit.select_fc2.weight.val();
        lavit.select_fc2.weight = Param::from_tensor(w.zeros_like());
        let device = lavit.select_fc2.weight.val().device();
        lavit.select_fc2.bias = Some(Param::from_tensor(Tensor::from_data(
            TensorData::new(vec![-b, b], [2]),
            &device,
        )));
    }
    lavit
}

fn lavit_llava(device: &burn::tensor::Device, bias: Option<f32>) -> LavitLlava {
    let llava = tiny_llava(device);
    let probe = images(1, device);
    let [_, tokens, d] = llava.vision_features(probe).dims();
    let tokenizer = LavitConfig::new(d, tokens)
        .with_hidden(16)
        .with_d_code(8)
        .with_codebook_size(16)
        .init(device);
    LavitLlava {
        llava,
        tokenizer: with_selector_bias(tokenizer, bias),
    }
}

/// Gumbel noise for `x`'s patches at temperature 1, from a fixed generator.
fn noise(x: &Tensor<3>) -> GumbelSample {
    use rand::SeedableRng;
    let [n, t, _] = x.dims();
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    GumbelSample::draw(1.0, n, t, &mut rng, &x.device())
}

fn features(n: usize, t: usize, d: usize, device: &burn::tensor::Device) -> Tensor<3> {
    Tensor::random([n, t, d], Distribution::Normal(0.0, 1.0), device)
}

#[test]
fn selection_is_hard_and_straight_through() {
    let device = device().autodiff();
    let lavit = LavitConfig::new(12, 9).init(&device);
    let x = features(3, 9, 12, &device);
    let out = lavit.forward(x.clone(), Some(noise(&x)));
    let keep = to_vec(out.keep.clone().inner());
    assert!(keep.iter().all(|&k| k == 0.0 || k == 1.0), "{keep:?}");
    assert!(keep.contains(&0.0) && keep.contains(&1.0));
    // The keep ratio's gradient reaches the selector through the hard sample.
    let grads = out.keep.mean().backward();
    let g = to_vec(lavit.select_fc2.weight.grad(&grads).unwrap());
    assert!(g.iter().any(|v| *v != 0.0));
    // Without sampling: keep where the keep logit is the larger, deterministically.
    let a = to_vec(lavit.forward(x.clone(), None).keep.inner());
    let b = to_vec(lavit.forward(x, None).keep.inner());
    assert_eq!(a, b);
}

#[test]
fn a_token_folds_in_dropped_patches_only() {
    let device = device();
    let (t, d) = (9, 12);
    // Keep everything: nothing to fold in, the features pass through exactly.
    let all = with_selector_bias(LavitConfig::new(d, t).init(&device), Some(50.0));
    let x = features(2, t, d, &device);
    assert_eq!(
        max_abs_diff(all.forward(x.clone(), None).merged, x.clone()),
        0.0
    );
    // Some kept, some dropped: changing a kept patch leaves the other kept tokens' merged
    // features alone; changing a dropped one moves them. The random selector is drawn until it
    // keeps at least two of the first image's patches and drops one (the init comes from the
    // device's RNG, which tests running in parallel share, so one draw is not reproducible).
    let (lavit, keep) = (0..50)
        .map(|_| {
            let lavit = LavitConfig::new(d, t).init(&device);
            let keep = to_vec(lavit.forward(x.clone(), None).keep);
            (lavit, keep)
        })
        .find(|(_, k)| k[..t].iter().filter(|&&v| v > 0.5).count() >= 2 && k[..t].contains(&0.0))
        .expect("a selector that keeps some patches and drops others");
    let kept: Vec<usize> = (0..t).filter(|&j| keep[j] > 0.5).collect();
    let dropped: Vec<usize> = (0..t).filter(|&j| keep[j] < 0.5).collect();
    let nudge = |j: usize| {
        let mut v = to_vec(x.clone());
        v[j * d] += 0.01;
        Tensor::<3>::from_data(TensorData::new(v, [2, t, d]), &device)
    };
    let merged = |x: Tensor<3>| to_vec(lavit.forward(x, None).merged);
    let (base, other) = (merged(x.clone()), kept[1]);
    let moved = |m: &[f32]| {
        (0..d)
            .map(|c| (m[other * d + c] - base[other * d + c]).abs())
            .fold(0.0, f32::max)
    };
    let after_kept = merged(nudge(kept[0]));
    assert!(to_vec(lavit.forward(nudge(kept[0]), None).keep) == keep);
    assert_eq!(moved(&after_kept), 0.0);
    let after_dropped = merged(nudge(dropped[0]));
    assert!(moved(&after_dropped) > 0.0);
}

#[test]
fn every_token_takes_its_nearest_normalised_code() {
    let device = device();
    let lavit = LavitConfig::new(12, 9)
        .with_d_code(6)
        .with_codebook_size(10)
        .init(&device);
    let out = lavit.forward(features(2, 9, 12, &device), None);
    let enc = to_vec(out.encoded);
    let q = to_vec(out.quantized);
    let codes: Vec<i64> = out
        .codes
        .into_data()
        .convert::<i64>()
        .try_into_vec()
        .unwrap();
    let book = to_vec(lavit.codebook.val());
    let normalised: Vec<Vec<f32>> = book
        .chunks(6)
        .map(|c| {
            let n = c.iter().map(|v| v * v).sum::<f32>().sqrt();
            c.iter().map(|v| v / n).collect()
        })
        .collect();
    for (i, &code) in codes.iter().enumerate() {
        let z = &enc[i * 6..(i + 1) * 6];
        assert!((z.iter().map(|v| v * v).sum::<f32>() - 1.0).abs() < 1e-5);
        let sim = |c: &[f32]| z.iter().zip(c).map(|(a, b)| a * b).sum::<f32>();
        let best = (0..10)
            .max_by(|&a, &b| sim(&normalised[a]).total_cmp(&sim(&normalised[b])))
            .unwrap();
        assert_eq!(code as usize, best, "token {i}");
        let qi = &q[i * 6..(i + 1) * 6];
        let gap = qi.iter().zip(&normalised[best]).map(|(a, b)| (a - b).abs());
        assert!(gap.fold(0.0, f32::max) < 1e-6);
    }
}

#[test]
fn the_tokenizer_loss_trains_encoder_codebook_and_decoder() {
    let device = device().autodiff();
    let lavit = LavitConfig::new(12, 9).init(&device);
    let x = features(4, 9, 12, &device);
    let out = lavit.forward(x.clone(), Some(noise(&x)));
    let loss = tokenizer_loss(&out, x, &LavitLossConfig::default());
    assert!(loss.reconstruction > 0.0 && loss.keep_ratio > 0.0 && loss.keep_ratio < 1.0);
    let grads = loss.loss.backward();
    let nonzero = |g: Option<Tensor<2>>| to_vec(g.unwrap()).iter().any(|v| *v != 0.0);
    // The encoder through the straight-through codes, the codebook through its own term.
    assert!(nonzero(lavit.to_code.weight.grad(&grads)));
    assert!(nonzero(lavit.codebook.grad(&grads)));
    assert!(nonzero(lavit.dec_fc2.weight.grad(&grads)));
    assert!(nonzero(lavit.select_fc1.weight.grad(&grads)));
}

#[test]
fn keeping_every_patch_is_llava_and_keeping_none_hides_the_image() {
    let device = device();
    let rows = [row(&[1, 2, 3, 4, 5], 2), row(&[6, 7, 8], 1)];
    let input = || input(&rows, false, Some(images(2, &device)), &device);
    let seed = |m| {
        device.seed(3);
        m
    };
    let all = seed(lavit_llava(&device, Some(50.0)));
    let x = input();
    let plain = all.llava.forward(x.clone()).logits;
    let lavit = all
        .llava
        .language_model
        .logits(all.forward_hidden(x.clone()));
    assert!(max_abs_diff(plain, lavit) < 1e-6);
    let none = LavitLlava {
        tokenizer: with_selector_bias(all.tokenizer.clone(), Some(-50.0)),
        llava: all.llava.clone(),
    };
    let hidden = none.llava.forward_image_keys_masked(x.clone()).logits;
    let lavit = none.llava.language_model.logits(none.forward_hidden(x));
    // Text positions (the image slots' own outputs are not read).
    let text: Vec<usize> = rows[0]
        .iter()
        .enumerate()
        .filter(|(_, t)| **t != IMAGE)
        .map(|(i, _)| i)
        .collect();
    let (h, l) = (to_vec(hidden), to_vec(lavit));
    let vocab = VOCAB;
    for &i in &text {
        for v in 0..vocab {
            assert!(
                (h[i * vocab + v] - l[i * vocab + v]).abs() < 1e-5,
                "position {i}"
            );
        }
    }
}

/// Generation hides the dropped patches in the prompt as the full pass does; the tokens it
/// picks must be the full pass's greedy choices.
#[test]
fn cached_generation_agrees_with_the_full_pass() {
    let device = device();
    let image = images(1, &device);
    // A model whose tokenizer keeps some patches and drops others (drawn until it does: the
    // device's RNG is shared by the tests running in parallel).
    let model = (0..50)
        .map(|_| lavit_llava(&device, None))
        .find(|m| {
            let (_, keep) = m.tokens(image.clone());
            keep[0].iter().any(|&k| k) && keep[0].iter().any(|&k| !k)
        })
        .expect("a tokenizer that keeps some patches and drops others");
    let prompt: Vec<u32> = row(&[1, 2, 3, 4], 2).iter().map(|&t| t as u32).collect();
    let config = GenerationConfig::new().with_max_new_tokens(6);
    let out = model.generate(std::slice::from_ref(&prompt), Some(image.clone()), &config);
    let mut full: Vec<i64> = prompt.iter().map(|&t| t as i64).collect();
    full.extend(out[0][..5].iter().map(|&t| t as i64));
    let hidden = model.forward_hidden(input(&[full], false, Some(image), &device));
    let logits = to_vec(model.llava.language_model.logits(hidden));
    for (k, &token) in out[0].iter().enumerate() {
        let pos = prompt.len() - 1 + k;
        let row = &logits[pos * VOCAB..(pos + 1) * VOCAB];
        let best = (0..VOCAB)
            .filter(|&t| t != IMAGE as usize)
            .max_by(|&a, &b| row[a].total_cmp(&row[b]))
            .unwrap();
        assert_eq!(token as usize, best, "generated token {k}");
    }
}

#[test]
fn perplexity_counts_the_codes_in_use() {
    assert!((codebook_perplexity(&[3, 3, 3], 8) - 1.0).abs() < 1e-12);
    assert!((codebook_perplexity(&[0, 1, 2, 3], 8) - 4.0).abs() < 1e-9);
    // Two codes, used 3:1: exp(−(¾ ln ¾ + ¼ ln ¼)).
    let h: f64 = -(0.75f64 * 0.75f64.ln() + 0.25 * 0.25f64.ln());
    assert!((codebook_perplexity(&[5, 5, 5, 1], 8) - h.exp()).abs() < 1e-12);
    assert_eq!(codebook_perplexity(&[], 8), 0.0);
}

#[test]
fn the_code_entropy_rewards_sure_tokens_spread_over_codes() {
    use vlalign::align::code_entropy;
    let device = device();
    let sim = |rows: Vec<f32>| Tensor::<3>::from_data(TensorData::new(rows, [1, 4, 4]), &device);
    let keep = |k: Vec<f32>| Tensor::<2>::from_data(TensorData::new(k, [1, 4]), &device);
    let mut diagonal = vec![-1.0f32; 16];
    (0..4).for_each(|i| diagonal[i * 4 + i] = 1.0);
    let mut same = vec![-1.0f32; 16];
    (0..4).for_each(|i| same[i * 4] = 1.0);
    let h = |s: Vec<f32>, k: Vec<f32>| code_entropy(sim(s), keep(k), 0.01).into_scalar::<f32>();
    // Each token sure of its own code: H̄ = 0, H(p̄) = ln 4.
    assert!((h(diagonal.clone(), vec![1.0; 4]) + 4f32.ln()).abs() < 1e-4);
    // Only the kept tokens count: two kept, two codes.
    assert!((h(diagonal, vec![1.0, 0.0, 1.0, 0.0]) + 2f32.ln()).abs() < 1e-4);
    // Every token on one code: nothing to reward.
    assert!(h(same, vec![1.0; 4]).abs() < 1e-4);
}

#[test]
fn reconstruction_error_is_relative_to_the_mean_feature() {
    use vlalign::align::relative_mse;
    let device = device();
    let x = features(3, 5, 4, &device);
    let mean = x
        .clone()
        .reshape([15, 4])
        .mean_dim(0)
        .reshape([1, 1, 4])
        .expand([3, 5, 4]);
    assert!((relative_mse(mean, x.clone()).into_scalar::<f32>() - 1.0).abs() < 1e-5);
    assert_eq!(relative_mse(x.clone(), x.clone()).into_scalar::<f32>(), 0.0);
    // Half-way to the truth from the mean: a quarter of the error.
    let mean = x
        .clone()
        .reshape([15, 4])
        .mean_dim(0)
        .reshape([1, 1, 4])
        .expand([3, 5, 4]);
    let half = (mean + x.clone()).div_scalar(2.0);
    assert!((relative_mse(half, x).into_scalar::<f32>() - 0.25).abs() < 1e-5);
}

/// A batch of two images (the tokenizer stage reads the images only).
fn image_batch(device: &burn::tensor::Device) -> vlalign::data::VlmBatch {
    use burn::tensor::{Bool, Int};
    let ids = || Tensor::<2, Int>::zeros([2, 1], device);
    vlalign::data::VlmBatch {
        ids: vec!["a".into(), "b".into()],
        images: Some(images(2, device)),
        image_index: None,
        image_sample: vec![0, 1],
        input_ids: ids(),
        labels: ids(),
        attention_mask: Tensor::<2, Bool>::from_data(
            TensorData::new(vec![true, true], [2, 1]),
            device,
        ),
        token_weights: None,
        truth: vec![vec![None]; 2],
        boxes: Vec::new(),
        lengths: vec![1, 1],
        padding: vlalign::data::Padding::Right,
    }
}

/// The selector's noise at training step `k` comes from the run's seed and `k` alone: the same
/// seed draws the same noise whatever the device's global RNG did, another seed other noise,
/// and a trainee reopened from a record saved after two steps goes on with steps 3 and 4
/// exactly (the draw count is in the record, so it is in every checkpoint).
#[test]
fn tokenizer_noise_is_seeded_per_run_and_resumes_exactly() {
    use burn::module::Module;
    use burn::train::TrainStep;
    use vlalign::train::LavitTokenizerTrainee;
    let device = device().autodiff();
    let batch = image_batch(&device);
    // Parameters initialise lazily: a record round trip fixes them, so every trainee below
    // starts from the same weights and only the noise can differ.
    let model = lavit_llava(&device, None);
    let model = model.clone().load_record(model.into_record());
    let trainee =
        |seed| LavitTokenizerTrainee::new(model.clone(), LavitLossConfig::default(), seed);
    let losses = |t: &LavitTokenizerTrainee, n: usize| -> Vec<f64> {
        (0..n)
            .map(|_| t.step(batch.clone()).item.loss_value)
            .collect()
    };
    let first = losses(&trainee(1), 4);
    assert!(first.windows(2).any(|w| w[0] != w[1]), "{first:?}");
    let again = trainee(1);
    device.seed(99);
    assert_eq!(losses(&again, 4), first);
    assert_ne!(losses(&trainee(2), 4), first);
    let interrupted = trainee(1);
    losses(&interrupted, 2);
    let resumed = trainee(1).load_record(interrupted.into_record());
    assert_eq!(losses(&resumed, 2), first[2..]);
}
