//! Properties of the model family: shapes, causality, KV cache, padding, CAL's text-only
//! identity, gradient flow.

mod common;

use burn::module::Module;
use burn::tensor::{Int, Tensor, TensorData};
use common::*;
use vlalign::models::{
    DecoderConfig, GenerationConfig, ProjectorConfig, ProjectorKind, VisionConfig,
};

#[test]
fn output_shapes() {
    let device = device();
    let vit = VisionConfig::tiny().init(&device);
    let x = images(2, &device);
    assert_eq!(
        vit.forward_features(x.clone(), -2, true).dims(),
        [2, 16, 64]
    );
    assert_eq!(
        vit.forward_features(x.clone(), -1, false).dims(),
        [2, 17, 64]
    );
    assert_eq!(
        vit.forward_features(x.clone(), 0, false).dims(),
        [2, 17, 64]
    );
    assert_eq!(vit.forward_pooled(x).dims(), [2, 64]);

    for (kind, layers) in [
        (ProjectorKind::Linear, 1),
        (ProjectorKind::MlpGelu { depth: 2 }, 2),
    ] {
        let p = ProjectorConfig::new(64, 48).with_kind(kind).init(&device);
        assert_eq!(p.layers.len(), layers);
        let y = p.forward(Tensor::<3>::zeros([2, 16, 64], &device));
        assert_eq!(y.dims(), [2, 16, 48]);
    }

    for tie in [false, true] {
        let lm = DecoderConfig::tiny(VOCAB)
            .with_tie_word_embeddings(tie)
            .init(&device);
        assert_eq!(lm.lm_head.is_none(), tie);
        let ids = Tensor::<2, Int>::from_data(
            TensorData::new(vec![1i64, 2, 3, 4, 5, 6], [2, 3]),
            &device,
        );
        let pos = Tensor::<2, Int>::from_data(
            TensorData::new(vec![0i64, 1, 2, 0, 1, 2], [2, 3]),
            &device,
        );
        assert_eq!(lm.forward(ids, pos, None, None).dims(), [2, 3, VOCAB]);
    }

    let llava = tiny_llava(&device);
    let rows = vec![row(&[1, 2, 3, 4], 1), row(&[5, 6], 2)];
    let out = llava.forward(input(&rows, false, Some(images(2, &device)), &device));
    assert_eq!(out.logits.dims(), [2, 20, VOCAB]);
}

#[test]
fn changing_a_later_token_leaves_earlier_logits_unchanged() {
    let device = device();
    let llava = tiny_llava(&device);
    let imgs = images(1, &device);
    let a = row(&[1, 2, 3, 4, 5, 6], 2);
    let mut b = a.clone();
    let changed = a.len() - 2;
    b[changed] = 42;
    let la = llava
        .forward(input(
            std::slice::from_ref(&a),
            false,
            Some(imgs.clone()),
            &device,
        ))
        .logits;
    let lb = llava
        .forward(input(&[b], false, Some(imgs), &device))
        .logits;
    let before = max_abs_diff(
        la.clone().narrow(1, 0, changed),
        lb.clone().narrow(1, 0, changed),
    );
    let after = max_abs_diff(la.narrow(1, changed, 1), lb.narrow(1, changed, 1));
    assert!(before < 1e-6, "earlier logits moved by {before}");
    assert!(
        after > 1e-4,
        "the changed position itself must change ({after})"
    );
}

#[test]
fn left_padded_batch_matches_each_item_alone() {
    let device = device();
    let llava = tiny_llava(&device);
    let imgs = images(2, &device);
    let rows = vec![row(&[1, 2, 3, 4, 5, 6, 7], 1), row(&[8, 9], 1)];
    for left in [true, false] {
        let batch = llava
            .forward(input(&rows, left, Some(imgs.clone()), &device))
            .logits;
        let width = batch.dims()[1];
        for (i, r) in rows.iter().enumerate() {
            let alone = llava
                .forward(input(
                    std::slice::from_ref(r),
                    left,
                    Some(imgs.clone().narrow(0, i, 1)),
                    &device,
                ))
                .logits;
            let start = if left { width - r.len() } else { 0 };
            let part = batch.clone().narrow(0, i, 1).narrow(1, start, r.len());
            let diff = max_abs_diff(part, alone);
            assert!(diff < 1e-5, "row {i} (left={left}) differs by {diff}");
        }
    }
}

#[test]
fn text_only_pass_equals_masking_the_image_keys() {
    let device = device();
    let llava = tiny_llava(&device);
    // Two images in the first row (one in the middle of the text), one in the second, padding.
    let mut first = row(&[1, 2, 3, 4, 5], 1);
    first.extend(image_slots());
    first.extend([6, 7, 8]);
    let rows = vec![first, row(&[9, 10, 11], 2)];
    let input = input(&rows, true, Some(images(3, &device)), &device);
    let masked = llava.forward_image_keys_masked(input.clone()).logits;
    let text = llava.forward_text_only(input.clone());
    let full = llava.forward(input).logits;
    let mut worst = 0f32;
    let mut moved = 0f32;
    for (b, positions) in text.positions.iter().enumerate() {
        assert_eq!(positions.len(), [8, 3][b]);
        for (j, &t) in positions.iter().enumerate() {
            let a = text.logits.clone().narrow(0, b, 1).narrow(1, j, 1);
            let m = masked.clone().narrow(0, b, 1).narrow(1, t, 1);
            let f = full.clone().narrow(0, b, 1).narrow(1, t, 1);
            worst = worst.max(max_abs_diff(a.clone(), m));
            moved = moved.max(max_abs_diff(a, f));
        }
    }
    assert!(worst <= 1e-5, "text-only and masked differ by {worst}");
    assert!(
        moved > 1e-3,
        "the image must matter to the full pass ({moved})"
    );
}

/// Greedy decoding by recomputing the whole sequence at every step (image token excluded).
fn greedy_uncached(
    llava: &vlalign::models::Llava,
    prompt: &[i64],
    imgs: Tensor<4>,
    steps: usize,
) -> Vec<u32> {
    let device = imgs.device();
    let mut seq = prompt.to_vec();
    let mut out = Vec::new();
    for _ in 0..steps {
        let logits = llava
            .forward(input(&[seq.clone()], false, Some(imgs.clone()), &device))
            .logits;
        let t = seq.len();
        // Generation never emits the image token: mask it here too.
        let mut bias = vec![0.0f32; VOCAB];
        bias[IMAGE as usize] = -1e9;
        let bias = Tensor::<2>::from_data(TensorData::new(bias, [1, VOCAB]), &device);
        let last = logits.narrow(1, t - 1, 1).reshape([1, VOCAB]) + bias;
        let next: Tensor<2, Int> = last.argmax(1);
        let next = next
            .into_data()
            .convert::<i64>()
            .try_into_vec::<i64>()
            .unwrap()[0];
        out.push(next as u32);
        seq.push(next);
    }
    out
}

#[test]
fn kv_cache_generation_matches_recomputation() {
    let device = device();
    let llava = tiny_llava(&device);
    let imgs = images(2, &device);
    let prompts = [row(&[1, 2, 3, 4, 5], 2), row(&[6, 7], 1)];
    let config = GenerationConfig::new().with_max_new_tokens(10);
    let as_u32 = |r: &Vec<i64>| r.iter().map(|&t| t as u32).collect::<Vec<_>>();
    let batch = llava.generate(
        &prompts.iter().map(as_u32).collect::<Vec<_>>(),
        Some(imgs.clone()),
        &config,
    );
    for (i, p) in prompts.iter().enumerate() {
        let expected = greedy_uncached(&llava, p, imgs.clone().narrow(0, i, 1), 10);
        let alone = llava.generate(&[as_u32(p)], Some(imgs.clone().narrow(0, i, 1)), &config);
        assert_eq!(alone[0], expected, "cached generation of prompt {i} alone");
        assert_eq!(
            batch[i], expected,
            "cached, left-padded batch generation of prompt {i}"
        );
    }
    // Stop tokens end a row and are kept.
    let stop = batch[0][3];
    let first = batch[0].iter().position(|&t| t == stop).unwrap();
    let stopped = llava.generate(
        &[as_u32(&prompts[0])],
        Some(imgs.narrow(0, 0, 1)),
        &config.clone().with_stop_tokens(vec![stop]),
    );
    assert_eq!(stopped[0], batch[0][..=first].to_vec());
}

#[test]
fn gradients_reach_projector_and_llm_but_not_a_frozen_vit() {
    let device = device().autodiff();
    let mut llava = tiny_llava(&device);
    llava.vision_tower = llava.vision_tower.no_grad();
    let rows = vec![row(&[1, 2, 3], 1)];
    let logits = llava
        .forward(input(&rows, false, Some(images(1, &device)), &device))
        .logits;
    let grads = logits.powf_scalar(2.0).mean().backward();
    let proj = &llava.multi_modal_projector.layers[0].weight;
    assert!(
        proj.grad(&grads).is_some(),
        "projector weight has no gradient"
    );
    let lm = &llava.language_model;
    assert!(lm.embed_tokens.weight.grad(&grads).is_some());
    assert!(lm.layers[0].self_attn.q_proj.weight.grad(&grads).is_some());
    assert!(lm.lm_head.as_ref().unwrap().weight.grad(&grads).is_some());
    let vit = &llava.vision_tower;
    assert!(vit.patch_embedding.weight.grad(&grads).is_none());
    assert!(vit.layers[0].fc1.weight.grad(&grads).is_none());
    let g = to_vec(proj.grad(&grads).unwrap());
    assert!(g.iter().any(|v| v.abs() > 0.0) && g.iter().all(|v| v.is_finite()));

    // Unfrozen, the ViT gets gradients too.
    let llava = tiny_llava(&device);
    let logits = llava
        .forward(input(&rows, false, Some(images(1, &device)), &device))
        .logits;
    let grads = logits.powf_scalar(2.0).mean().backward();
    assert!(
        llava
            .vision_tower
            .patch_embedding
            .weight
            .grad(&grads)
            .is_some()
    );
}

#[test]
fn kv_cache_logits_match_the_full_forward() {
    let device = device();
    let lm = DecoderConfig::tiny(VOCAB).init(&device);
    let tokens: Vec<i64> = vec![3, 14, 15, 92, 65, 35, 89, 79, 32, 38];
    let t = tokens.len();
    let ids = |r: std::ops::Range<usize>| {
        Tensor::<2, Int>::from_data(
            TensorData::new(tokens[r.clone()].to_vec(), [1, r.len()]),
            &device,
        )
    };
    let pos = |r: std::ops::Range<usize>| {
        let p: Vec<i64> = r.clone().map(|p| p as i64).collect();
        Tensor::<2, Int>::from_data(TensorData::new(p, [1, r.len()]), &device)
    };
    let full = lm.forward(ids(0..t), pos(0..t), None, None);
    let mut cache = vlalign::models::KvCache::new();
    let mut parts = vec![lm.forward(ids(0..4), pos(0..4), None, Some(&mut cache))];
    for i in 4..t {
        parts.push(lm.forward(ids(i..i + 1), pos(i..i + 1), None, Some(&mut cache)));
        assert_eq!(cache.len(), i + 1);
    }
    let diff = max_abs_diff(Tensor::cat(parts, 1), full.clone());
    assert!(diff < 1e-5, "cached logits differ by {diff}");
    // RoPE is relative: shifting every position alike changes nothing, a gap changes the
    // logits after it.
    let shifted = lm.forward(ids(0..t), pos(5..t + 5), None, None);
    assert!(max_abs_diff(shifted, full.clone()) < 1e-4);
    let gap: Vec<i64> = (0..t as i64)
        .map(|p| if p < 4 { p } else { p + 3 })
        .collect();
    let gap = Tensor::<2, Int>::from_data(TensorData::new(gap, [1, t]), &device);
    let gapped = lm.forward(ids(0..t), gap, None, None);
    assert!(max_abs_diff(gapped.clone().narrow(1, 0, 4), full.clone().narrow(1, 0, 4)) < 1e-6);
    assert!(max_abs_diff(gapped.narrow(1, 4, t - 4), full.narrow(1, 4, t - 4)) > 1e-4);
}

#[test]
fn hf_config_builds_a_model_and_configs_round_trip() {
    use vlalign::models::hf::{HfModelConfig, parse_config};
    let json = serde_json::json!({
        "model_type": "llava", "image_token_index": 90, "projector_hidden_act": "gelu",
        "vision_feature_layer": -1, "vision_feature_select_strategy": "full",
        "text_config": {"model_type": "qwen2", "vocab_size": 97, "hidden_size": 32,
            "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4,
            "num_key_value_heads": 1, "tie_word_embeddings": true,
            "rope_parameters": {"rope_theta": 1000000.0, "rope_type": "default"}},
        "vision_config": {"model_type": "clip_vision_model", "hidden_size": 16,
            "intermediate_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
            "image_size": 16, "patch_size": 8, "hidden_act": "gelu"}
    });
    let HfModelConfig::Llava(config) = parse_config(&json).unwrap() else {
        panic!("expected a llava config")
    };
    assert_eq!(
        config.image_tokens(),
        5,
        "4 patches + the class token ('full')"
    );
    let device = device();
    let model = config.init(&device);
    assert!(model.language_model.lm_head.is_none());
    assert!(
        model.language_model.layers[0]
            .self_attn
            .q_proj
            .bias
            .is_some()
    );
    assert!(
        model.language_model.layers[0]
            .self_attn
            .o_proj
            .bias
            .is_none()
    );
    let rows = vec![{
        let mut r = vec![1, 2];
        r.extend(vec![90; 5]);
        r.extend([3, 4]);
        r
    }];
    let imgs = Tensor::<4>::zeros([1, 3, 16, 16], &device);
    let out = model.forward(input(&rows, false, Some(imgs), &device));
    assert_eq!(out.logits.dims(), [1, 9, 97]);

    // Configs serialise as JSON and read back equal (run directories store them).
    let text = serde_json::to_string(&config).unwrap();
    let back: vlalign::models::LlavaConfig = serde_json::from_str(&text).unwrap();
    assert_eq!(back, config);
}

#[test]
fn generation_never_emits_the_image_token() {
    let device = device();
    let mut llava = tiny_llava(&device);
    // Make the image token overwhelmingly likely: its LM-head column dominates.
    let head = llava.language_model.lm_head.take().unwrap();
    let w = head.weight.val();
    let [d, v] = w.dims();
    let mut boost = vec![0.0f32; d * v];
    for row in 0..d {
        boost[row * v + IMAGE as usize] = 100.0;
    }
    let boosted = w + Tensor::<2>::from_data(TensorData::new(boost, [d, v]), &device);
    llava.language_model.lm_head = Some(burn::nn::Linear {
        weight: burn::module::Param::from_tensor(boosted),
        bias: None,
    });
    let out = llava.generate(
        &[row(&[1, 2, 3], 1).iter().map(|&t| t as u32).collect()],
        Some(images(1, &device)),
        &GenerationConfig::new().with_max_new_tokens(6),
    );
    assert_eq!(out[0].len(), 6);
    assert!(!out[0].contains(&(IMAGE as u32)), "{:?}", out[0]);
}

#[test]
fn growing_the_vocabulary_keeps_old_logits_and_starts_new_rows_at_the_mean() {
    let device = device();
    let llava = tiny_llava(&device);
    let ids = Tensor::<2, Int>::from_data(TensorData::new(vec![1i64, 5, 9, 3], [1, 4]), &device);
    let positions =
        Tensor::<2, Int>::from_data(TensorData::new(vec![0i64, 1, 2, 3], [1, 4]), &device);
    let lm = llava.language_model;
    let before = lm.forward(ids.clone(), positions.clone(), None, None);
    let old_rows = lm.embed_tokens.weight.val();
    let grown = lm.grow_vocab(VOCAB + 2);
    assert_eq!(grown.vocab_size(), VOCAB + 2);
    let after = grown.forward(ids, positions, None, None);
    assert_eq!(after.dims(), [1, 4, VOCAB + 2]);
    let d = max_abs_diff(before.clone(), after.clone().narrow(2, 0, VOCAB));
    assert!(d < 1e-6, "old logits moved by {d}");
    // Both new tokens: the mean embedding, and (untied head) the mean head column.
    let new_rows = grown.embed_tokens.weight.val().narrow(0, VOCAB, 2);
    let mean = old_rows.mean_dim(0).repeat(&[2, 1]);
    assert!(max_abs_diff(new_rows, mean) < 1e-6);
    let mean_logit = before.mean_dim(2).repeat(&[1, 1, 2]);
    assert!(max_abs_diff(after.narrow(2, VOCAB, 2), mean_logit) < 1e-5);
    // Not larger: unchanged.
    assert_eq!(grown.grow_vocab(VOCAB).vocab_size(), VOCAB + 2);
}

/// Bool tensors read back on the host whatever the backend stores them as: flex keeps native
/// bytes, wgpu and cuda `u32` (a read assuming native bools panicked on wgpu with
/// `DTypeMismatch { expected: Bool(Native), actual: Bool(U32) }`).
#[test]
fn bool_read_back_accepts_every_bool_storage() {
    use burn::tensor::{BoolStore, DType};
    use vlalign::models::llava::host_bools;
    let want = [true, false, false, true];
    let native =
        TensorData::from_bytes_vec(vec![1, 0, 0, 1], [2, 2], DType::Bool(BoolStore::Native));
    let words: Vec<u8> = [1u32, 0, 0, 1]
        .iter()
        .flat_map(|v| v.to_ne_bytes())
        .collect();
    let u32s = TensorData::from_bytes_vec(words, [2, 2], DType::Bool(BoolStore::U32));
    let bytes = TensorData::from_bytes_vec(vec![1, 0, 0, 1], [2, 2], DType::Bool(BoolStore::U8));
    for data in [native, u32s, bytes] {
        assert_eq!(host_bools(&data), want, "{:?}", data.dtype());
    }
    // And a mask made on the device reads back as it was made.
    let mask = Tensor::<2, burn::tensor::Bool>::from_data(
        TensorData::from([[true, false], [false, true]]),
        &device(),
    );
    assert_eq!(host_bools(&mask.to_data()), want);
}
