//! CAL's weights and loss on a fixed small tensor, against values computed by hand.

use burn::tensor::{Bool, Device, Int, Tensor, TensorData};
use vlalign::align::{
    AlignModel, CalConfig, CalObjective, MleObjective, Objective, Pooling, TextOnlyLogits,
};
use vlalign::data::{Padding, VlmBatch};

/// A "model" with fixed logits for the image and text-only passes.
struct Fixed {
    img: Tensor<3>,
    txt: Tensor<3>,
}

impl AlignModel for Fixed {
    fn logits(&self, _: &VlmBatch) -> Tensor<3> {
        self.img.clone()
    }
    fn text_only_logits(&self, _: &VlmBatch) -> TextOnlyLogits {
        // No image slots: every token is kept, at its own position.
        TextOnlyLogits {
            logits: self.txt.clone(),
            positions: vec![vec![0, 1, 2, 3]; 2],
        }
    }
    fn logits_no_grad(&self, _: &VlmBatch) -> Tensor<3> {
        self.txt.clone()
    }
}

fn t3(v: [[[f32; 3]; 4]; 2], d: &Device) -> Tensor<3> {
    let flat: Vec<f32> = v.iter().flatten().flatten().copied().collect();
    Tensor::from_data(TensorData::new(flat, [2, 4, 3]), d)
}

fn setup() -> (Fixed, VlmBatch) {
    let d = Device::flex();
    // Row 0 labels [-, 2, 1, -]: targets (shifted) [2, 1, -]. Row 1 [-, -, 0, 2]: [-, 0, 2].
    let labels = vec![-100i64, 2, 1, -100, -100, -100, 0, 2];
    let img = t3(
        [
            [[0., 0., 4.], [0., 3., 0.], [1., 1., 1.], [0., 0., 0.]],
            [[9., 9., 9.], [2., 0., 0.], [0., 0., 1.5], [0., 0., 0.]],
        ],
        &d,
    );
    let txt = t3(
        [
            [[0., 0., 1.], [0., 5., 0.], [7., 7., 7.], [0., 0., 0.]],
            [[0., 0., 0.], [-4., 0., 0.], [0., 0., 0.], [0., 0., 0.]],
        ],
        &d,
    );
    let batch = VlmBatch {
        image_index: None,
        ids: vec!["a".into(), "b".into()],
        images: None,
        image_sample: vec![],
        input_ids: Tensor::<2, Int>::from_data(TensorData::new(vec![1i64; 8], [2, 4]), &d),
        labels: Tensor::<2, Int>::from_data(TensorData::new(labels, [2, 4]), &d),
        attention_mask: Tensor::<2, Bool>::from_data(TensorData::new(vec![true; 8], [2, 4]), &d),
        token_weights: None,
        truth: vec![vec![None; 4]; 2],
        boxes: Vec::new(),
        lengths: vec![4, 4],
        padding: Padding::Right,
    };
    (Fixed { img, txt }, batch)
}

fn close(a: f32, b: f64) -> bool {
    (a as f64 - b).abs() < 1e-5
}

/// −log softmax(row)[k]
fn ce(row: [f64; 3], k: usize) -> f64 {
    row.iter().map(|x| x.exp()).sum::<f64>().ln() - row[k]
}

#[test]
fn delta_uses_raw_label_logits() {
    let (model, batch) = setup();
    let cal = CalObjective::default();
    let logits = model.logits(&batch);
    let ce = vlalign::align::token::token_ce(logits, &batch.labels);
    let delta = cal.delta(&model, &batch, &ce);
    // Δ = z_img[y] − z_txt[y]: 4−1, 3−5 ; 2−(−4), 1.5−0.
    assert_eq!(
        delta,
        vec![
            vec![Some(3.0), Some(-2.0), None],
            vec![None, Some(6.0), Some(1.5)]
        ]
    );
}

#[test]
fn weights_and_loss_by_hand_for_both_poolings() {
    let (model, batch) = setup();
    // Clamped to [1, 5]: row 0 [3, 1, (1)], row 1 [(1), 5, 1.5] — unsupervised enter as α.
    let cases = [
        // Reference: one window-3 pool over [3, 1, 1, 1, 5, 1.5], count without padding.
        (
            Pooling::Reference,
            [[2.0, 5.0 / 3.0, 1.0], [7.0 / 3.0, 2.5, 3.25]],
        ),
        // Per sequence over supervised tokens: row 0 {3, 1}, row 1 {5, 1.5}.
        (Pooling::PerSequence, [[2.0, 2.0, 0.0], [0.0, 3.25, 3.25]]),
    ];
    let ces = [
        (0usize, 0usize, ce([0., 0., 4.], 2)),
        (0, 1, ce([0., 3., 0.], 1)),
        (1, 1, ce([2., 0., 0.], 0)),
        (1, 2, ce([0., 0., 1.5], 2)),
    ];
    for (pooling, expected) in cases {
        let cal = CalObjective {
            config: CalConfig {
                pooling,
                ..CalConfig::default()
            },
        };
        let out = cal.loss(&model, &batch);
        let w = out.weights.clone().unwrap();
        for r in 0..2 {
            for c in 0..3 {
                assert!(
                    close(w[r][c], expected[r][c]),
                    "{pooling:?} w[{r}][{c}] = {} ≠ {}",
                    w[r][c],
                    expected[r][c]
                );
            }
        }
        let num: f64 = ces.iter().map(|&(r, c, ce)| expected[r][c] * ce).sum();
        let den: f64 = ces.iter().map(|&(r, c, _)| expected[r][c]).sum::<f64>() + 1e-6;
        let loss: Vec<f32> = out.loss.into_data().try_into_vec().unwrap();
        assert!(
            close(loss[0], num / den),
            "{pooling:?} loss {} ≠ {}",
            loss[0],
            num / den
        );
        let diag: std::collections::HashMap<_, _> = out.diagnostics.into_iter().collect();
        assert_eq!(diag["supervised_tokens"], 4.0);
        assert!(
            (diag["cal_floor_share"] - 0.25).abs() < 1e-9,
            "one of four Δ is at the floor"
        );
    }
    // MLE is the plain mean over supervised tokens.
    let out = MleObjective.loss(&model, &batch);
    let mean = ces.iter().map(|c| c.2).sum::<f64>() / (4.0 + 1e-6);
    let loss: Vec<f32> = out.loss.into_data().try_into_vec().unwrap();
    assert!(close(loss[0], mean), "{} ≠ {mean}", loss[0]);
}

#[test]
fn cal_on_llava_trains_through_the_image_pass_only() {
    use burn::module::Module;
    let d = Device::flex().autodiff();
    d.seed(3);
    let config = vlalign::models::LlavaConfig::tiny(50, 49);
    let mut llava = config.init(&d);
    llava.vision_tower = llava.vision_tower.no_grad();
    let n = config.image_tokens();
    // [bos, img×n, 5, 6, 7, 8]: supervise 7 and 8 (targets preceded by text tokens).
    let mut ids: Vec<i64> = vec![1];
    ids.extend(vec![49; n]);
    ids.extend([5, 6, 7, 8]);
    let t = ids.len();
    let mut labels = vec![-100i64; t];
    labels[t - 2] = 7;
    labels[t - 1] = 8;
    let batch = VlmBatch {
        image_index: None,
        ids: vec!["x".into()],
        images: Some(Tensor::random(
            [1, 3, 32, 32],
            burn::tensor::Distribution::Normal(0.0, 1.0),
            &d,
        )),
        image_sample: vec![0],
        input_ids: Tensor::<2, Int>::from_data(TensorData::new(ids.clone(), [1, t]), &d),
        labels: Tensor::<2, Int>::from_data(TensorData::new(labels, [1, t]), &d),
        attention_mask: Tensor::<2, Bool>::from_data(TensorData::new(vec![true; t], [1, t]), &d),
        token_weights: None,
        truth: vec![vec![None; t]],
        boxes: Vec::new(),
        lengths: vec![t],
        padding: Padding::Right,
    };
    let cal = CalObjective::default();
    let out = cal.loss(&llava, &batch);
    let w = out.weights.clone().unwrap();
    assert!(w[0][t - 3] >= 1.0 && w[0][t - 3] <= 5.0 && w[0][t - 2] >= 1.0);
    // Δ from the text-only pass equals Δ from the reference's masked full pass.
    let logits = llava
        .valid()
        .forward_image_keys_masked(vlalign::models::LlavaInput {
            image_index: None,
            input_ids: batch.input_ids.clone().inner(),
            attention_mask: batch.attention_mask.clone().inner(),
            images: batch.images.clone().map(Tensor::inner),
        });
    let img = llava.valid().forward(vlalign::models::LlavaInput {
        image_index: None,
        input_ids: batch.input_ids.clone().inner(),
        attention_mask: batch.attention_mask.clone().inner(),
        images: batch.images.clone().map(Tensor::inner),
    });
    let at = |l: &Tensor<3>, pos: usize, tok: usize| -> f32 {
        let v: Vec<f32> = l
            .clone()
            .narrow(1, pos, 1)
            .narrow(2, tok, 1)
            .into_data()
            .try_into_vec()
            .unwrap();
        v[0]
    };
    let ce = vlalign::align::token::token_ce(llava.logits(&batch), &batch.labels);
    let delta = cal.delta(&llava, &batch, &ce);
    for (pos, tok) in [(t - 3, 7usize), (t - 2, 8)] {
        let expected = at(&img.logits, pos, tok) - at(&logits.logits, pos, tok);
        let got = delta[0][pos].unwrap();
        assert!(
            (got - expected).abs() < 1e-4,
            "Δ at {pos}: {got} vs masked reference {expected}"
        );
    }
    let grads = out.loss.backward();
    assert!(
        llava.multi_modal_projector.layers[0]
            .weight
            .grad(&grads)
            .is_some()
    );
    assert!(
        llava.vision_tower.layers[0]
            .fc1
            .weight
            .grad(&grads)
            .is_none()
    );
}

#[test]
fn head_at_supervised_positions_only_gives_the_full_loss_and_gradient() {
    let d = Device::flex().autodiff();
    d.seed(5);
    let config = vlalign::models::LlavaConfig::tiny(50, 49);
    let llava = config.init(&d);
    let n = config.image_tokens();
    // Two rows, the second right-padded; supervised targets scattered over both.
    let mut rows: Vec<Vec<i64>> = Vec::new();
    for tail in [[5i64, 6, 7, 8, 9, 10], [11, 12, 13, 0, 0, 0]] {
        let mut r = vec![1];
        r.extend(vec![49; n]);
        r.extend(tail);
        rows.push(r);
    }
    let t = rows[0].len();
    let ids: Vec<i64> = rows.concat();
    let mut labels = vec![-100i64; 2 * t];
    for (row, pos) in [(0, t - 4), (0, t - 2), (0, t - 1), (1, t - 5), (1, t - 4)] {
        labels[row * t + pos] = ids[row * t + pos];
    }
    let mut mask = vec![true; 2 * t];
    for m in &mut mask[2 * t - 3..] {
        *m = false;
    }
    let batch = VlmBatch {
        image_index: None,
        ids: vec!["a".into(), "b".into()],
        images: Some(Tensor::random(
            [2, 3, 32, 32],
            burn::tensor::Distribution::Normal(0.0, 1.0),
            &d,
        )),
        image_sample: vec![0, 1],
        input_ids: Tensor::<2, Int>::from_data(TensorData::new(ids, [2, t]), &d),
        labels: Tensor::<2, Int>::from_data(TensorData::new(labels, [2, t]), &d),
        attention_mask: Tensor::<2, Bool>::from_data(TensorData::new(mask, [2, t]), &d),
        token_weights: None,
        truth: vec![vec![None; t]; 2],
        boxes: Vec::new(),
        lengths: vec![t, t - 3],
        padding: Padding::Right,
    };
    // The objective (head at the 5 supervised positions) against the full-logits definition.
    let fast = MleObjective.loss(&llava, &batch).loss;
    let full_ce = vlalign::align::token::token_ce(llava.logits(&batch), &batch.labels);
    let dense = full_ce.ce.clone().into_data().try_to_vec::<f32>().unwrap();
    assert_eq!(dense.iter().filter(|&&c| c != 0.0).count(), 5);
    let full = vlalign::align::token::weighted_loss(&full_ce, None);
    let (a, b) = (
        fast.clone().into_scalar::<f32>(),
        full.clone().into_scalar::<f32>(),
    );
    assert!((a - b).abs() < 1e-5, "{a} vs {b}");
    let (ga, gb) = (fast.backward(), full.backward());
    let weight = &llava.language_model.lm_head.as_ref().unwrap().weight;
    let diff = (weight.grad(&ga).unwrap() - weight.grad(&gb).unwrap())
        .abs()
        .max()
        .into_scalar::<f32>();
    assert!(diff < 1e-5, "lm_head gradients differ by {diff}");
}
