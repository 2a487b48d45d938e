//! Numerical parity with `transformers` on tiny random checkpoints (`tools/make_fixtures.py`),
//! every key layout, sharded and bf16 files, error messages, and the save → load round trip.

mod common;

use std::path::{Path, PathBuf};

use burn::tensor::{Bool, Int, Tensor, TensorData};
use common::{device, max_abs_diff};
use vlalign::models::hf::{self, LoadError};
use vlalign::models::{GenerationConfig, LlavaInput};

/// Max abs difference asserted for every logit, hidden state and embedding against transformers
/// (the README quotes this bound and the measured values).
const TOL: f32 = 1e-5;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// The tensors of an `io.safetensors`.
struct Io(Vec<u8>);

impl Io {
    fn open(dir: &str) -> Self {
        Io(std::fs::read(fixture(dir).join("io.safetensors")).unwrap())
    }

    fn view(&self, name: &str) -> (Vec<usize>, safetensors::Dtype, Vec<u8>) {
        let st = safetensors::SafeTensors::deserialize(&self.0).unwrap();
        let t = st.tensor(name).unwrap();
        (t.shape().to_vec(), t.dtype(), t.data().to_vec())
    }

    fn float<const D: usize>(&self, name: &str) -> Tensor<D> {
        let (shape, dtype, data) = self.view(name);
        assert_eq!(dtype, safetensors::Dtype::F32);
        let v: Vec<f32> = data
            .chunks(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        Tensor::from_data(TensorData::new(v, shape), &device())
    }

    fn ints(&self, name: &str) -> (Vec<usize>, Vec<i64>) {
        let (shape, dtype, data) = self.view(name);
        assert_eq!(dtype, safetensors::Dtype::I64);
        (
            shape,
            data.chunks(8)
                .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
                .collect(),
        )
    }

    fn int(&self, name: &str) -> Tensor<2, Int> {
        let (shape, v) = self.ints(name);
        Tensor::from_data(TensorData::new(v, shape), &device())
    }
}

#[test]
fn clip_vision_features_match() {
    let (vit, _, report) = hf::load_vision(&fixture("clip_vision"), &device()).unwrap();
    assert!(
        report.missing.is_empty() && report.unused.is_empty(),
        "{report}"
    );
    let io = Io::open("clip_vision");
    let pixels = io.float::<4>("pixel_values");
    let feats = vit.forward_features(pixels.clone(), -2, true);
    let d = max_abs_diff(feats, io.float::<3>("hidden_m2"));
    println!("clip hidden_states[-2] (no CLS) max abs diff {d:e}");
    assert!(d <= TOL, "{d}");
    let d = max_abs_diff(vit.forward_pooled(pixels), io.float::<2>("pooled"));
    println!("clip pooled max abs diff {d:e}");
    assert!(d <= TOL, "{d}");
}

fn positions(mask: &[i64], t: usize) -> Tensor<2, Int> {
    let rows: Vec<Vec<bool>> = mask
        .chunks(t)
        .map(|r| r.iter().map(|&m| m == 1).collect())
        .collect();
    let p: Vec<i64> = vlalign::models::mask::position_ids_from_mask(&rows).concat();
    Tensor::from_data(TensorData::new(p, [rows.len(), t]), &device())
}

#[test]
fn llama_logits_match_including_a_left_padded_row() {
    let (lm, config, report) = hf::load_decoder(&fixture("llama"), &device()).unwrap();
    assert!(
        config.num_key_value_heads < config.num_attention_heads,
        "GQA fixture"
    );
    assert!(
        report.missing.is_empty() && report.unused.is_empty(),
        "{report}"
    );
    let io = Io::open("llama");
    let ids = io.int("input_ids");
    let (shape, mask) = io.ints("attention_mask");
    let valid: Vec<bool> = mask.iter().map(|&m| m == 1).collect();
    let key_valid =
        Tensor::<2, Bool>::from_data(TensorData::new(valid.clone(), shape.clone()), &device());
    let logits = lm.forward(ids, positions(&mask, shape[1]), Some(key_valid), None);
    // Compare real positions only (transformers' logits at padding are arbitrary).
    let expected = io.float::<3>("logits");
    let keep =
        Tensor::<3, Bool>::from_data(TensorData::new(valid, [shape[0], shape[1], 1]), &device())
            .expand([shape[0], shape[1], config.vocab_size]);
    let d = max_abs_diff(
        logits.mask_fill(keep.clone().bool_not(), 0.0),
        expected.mask_fill(keep.bool_not(), 0.0),
    );
    println!("llama logits max abs diff {d:e}");
    assert!(d <= TOL, "{d}");
}

#[test]
fn qwen2_with_bias_and_tied_embeddings_matches() {
    let (lm, config, report) = hf::load_decoder(&fixture("qwen2"), &device()).unwrap();
    assert!(config.tie_word_embeddings && config.qkv_bias && lm.lm_head.is_none());
    assert!(
        report.missing.is_empty() && report.unused.is_empty(),
        "{report}"
    );
    let io = Io::open("qwen2");
    let ids = io.int("input_ids");
    let t = ids.dims()[1];
    let logits = lm.forward(ids, positions(&vec![1; t], t), None, None);
    let d = max_abs_diff(logits, io.float::<3>("logits"));
    println!("qwen2 logits max abs diff {d:e}");
    assert!(d <= TOL, "{d}");
}

#[test]
fn sharded_and_bf16_checkpoints_load() {
    for dir in ["llama_sharded", "llama_bf16"] {
        let (lm, _, report) = hf::load_decoder(&fixture(dir), &device()).unwrap();
        assert!(
            report.missing.is_empty() && report.unused.is_empty(),
            "{dir}: {report}"
        );
        if dir == "llama_sharded" {
            assert!(report.files.len() > 1, "{dir} should have several shards");
        }
        let io = Io::open(dir);
        let ids = io.int("input_ids");
        let t = ids.dims()[1];
        let logits = lm.forward(ids, positions(&vec![1; t], t), None, None);
        let d = max_abs_diff(logits, io.float::<3>("logits"));
        println!("{dir} logits max abs diff {d:e}");
        assert!(d <= TOL, "{dir}: {d}");
    }
}

fn llava_input(io: &Io) -> LlavaInput {
    let ids = io.int("input_ids");
    let [b, t] = ids.dims();
    LlavaInput {
        image_index: None,
        input_ids: ids,
        attention_mask: Tensor::from_data(TensorData::new(vec![true; b * t], [b, t]), &device()),
        images: Some(io.float::<4>("pixel_values")),
    }
}

#[test]
fn llava_forward_matches_in_every_key_layout() {
    let io = Io::open("llava");
    for dir in ["llava", "llava_hub", "llava_v452"] {
        let (llava, _, report) = hf::load_llava(&fixture(dir), &device()).unwrap();
        assert!(
            report.missing.is_empty() && report.unused.is_empty(),
            "{dir}: {report}"
        );
        let logits = llava.forward(llava_input(&io)).logits;
        let d = max_abs_diff(logits, io.float::<3>("logits"));
        println!("{dir} llava logits max abs diff {d:e}");
        assert!(d <= TOL, "{dir}: {d}");
        // The image path ran: another image moves the logits far past the tolerance.
        let mut negated = llava_input(&io);
        negated.images = negated.images.map(|x| x.neg());
        let moved = max_abs_diff(llava.forward(negated).logits, io.float::<3>("logits"));
        println!("{dir}: the image moves a logit by {moved:.3}");
        assert!(
            moved > 1e-1,
            "{dir}: the image barely moves the logits ({moved})"
        );
    }
}

#[test]
fn kv_cache_greedy_generation_matches_transformers() {
    let io = Io::open("llava");
    let (llava, _, _) = hf::load_llava(&fixture("llava"), &device()).unwrap();
    let (_, ids) = io.ints("input_ids");
    let prompt: Vec<u32> = ids.iter().map(|&t| t as u32).collect();
    let (_, expected) = io.ints("greedy");
    let out = llava.generate(
        &[prompt],
        Some(io.float::<4>("pixel_values")),
        &GenerationConfig::new().with_max_new_tokens(expected.len()),
    );
    assert_eq!(
        out[0],
        expected.iter().map(|&t| t as u32).collect::<Vec<_>>()
    );
}

#[test]
fn original_projector_file_loads_into_llava() {
    let (reference, _, _) = hf::load_llava(&fixture("llava"), &device()).unwrap();
    let (_, config, _) = hf::load_llava(&fixture("llava"), &device()).unwrap();
    let mut fresh = config.init(&device());
    let report = hf::load_projector(&mut fresh, &fixture("mm_projector.safetensors")).unwrap();
    assert_eq!(report.applied.len(), 4);
    for i in 0..2 {
        let d = max_abs_diff(
            fresh.multi_modal_projector.layers[i].weight.val(),
            reference.multi_modal_projector.layers[i].weight.val(),
        );
        assert_eq!(d, 0.0);
    }
}

#[test]
fn errors_name_the_key_and_the_shapes() {
    // A config that disagrees with the weights: shape mismatch named with both shapes.
    let dir = tempfile::tempdir().unwrap();
    let weights = "model.safetensors";
    std::fs::copy(fixture("llama").join(weights), dir.path().join(weights)).unwrap();
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture("llama").join("config.json")).unwrap())
            .unwrap();
    config["intermediate_size"] = 80.into();
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    let err = hf::load_decoder(dir.path(), &device()).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("shape mismatch") && msg.contains("80") && msg.contains("96"),
        "{msg}"
    );

    // Fewer layers in the config: the extra layer's tensors are unexpected.
    config["intermediate_size"] = 96.into();
    config["num_hidden_layers"] = 1.into();
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    let err = hf::load_decoder(dir.path(), &device()).unwrap_err();
    assert!(
        matches!(&err, hf::HfError::Load(LoadError::Unexpected(k)) if k.iter().any(|k| k.starts_with("layers.1."))),
        "{err}"
    );

    // More layers: the missing ones are named.
    config["num_hidden_layers"] = 3.into();
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    let err = hf::load_decoder(dir.path(), &device()).unwrap_err();
    assert!(
        matches!(&err, hf::HfError::Load(LoadError::Missing(k)) if k.iter().any(|k| k.starts_with("layers.2."))),
        "{err}"
    );

    // No weights at all.
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    let err = hf::load_decoder(dir.path(), &device())
        .unwrap_err()
        .to_string();
    assert!(err.contains("no weights"), "{err}");
}

#[test]
fn save_then_load_gives_identical_tensors() {
    let (llava, config, _) = hf::load_llava(&fixture("llava"), &device()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    hf::save_llava(&llava, &config, dir.path()).unwrap();
    let (back, back_config, report) = hf::load_llava(dir.path(), &device()).unwrap();
    assert_eq!(back_config, config);
    assert!(
        report.missing.is_empty() && report.unused.is_empty(),
        "{report}"
    );
    // Same keys as transformers writes.
    let ours = safetensors::SafeTensors::deserialize(
        &std::fs::read(dir.path().join("model.safetensors")).unwrap(),
    )
    .unwrap()
    .names()
    .into_iter()
    .map(str::to_string)
    .collect::<std::collections::BTreeSet<_>>();
    let theirs_bytes = std::fs::read(fixture("llava").join("model.safetensors")).unwrap();
    let theirs = safetensors::SafeTensors::deserialize(&theirs_bytes)
        .unwrap()
        .names()
        .into_iter()
        .map(str::to_string)
        .collect::<std::collections::BTreeSet<_>>();
    assert_eq!(ours, theirs);
    let io = Io::open("llava");
    let a = llava.forward(llava_input(&io)).logits;
    let b = back.forward(llava_input(&io)).logits;
    assert_eq!(max_abs_diff(a, b), 0.0);
    let l = |m: &vlalign::models::Llava| m.language_model.layers[1].mlp.up_proj.weight.val();
    assert_eq!(max_abs_diff(l(&llava), l(&back)), 0.0);
}

#[test]
fn clip_model_and_its_info_nce_match_transformers() {
    let dir = fixture("clip");
    let (clip, config, report) = hf::load_clip(&dir, &device()).unwrap();
    assert!(
        report.missing.is_empty() && report.unused.is_empty(),
        "{report}"
    );
    let io = Io::open("clip");
    let ids = io.int("input_ids");
    let lengths: Vec<usize> = io.ints("lengths").1.iter().map(|&n| n as usize).collect();
    let pixels = io.float::<4>("pixel_values");
    let image = clip.image_embeds(pixels.clone());
    let text = clip.text_embeds(ids.clone(), &lengths);
    assert!(max_abs_diff(image.clone(), io.float("image_embeds")) < TOL);
    assert!(max_abs_diff(text.clone(), io.float("text_embeds")) < TOL);
    let logits = clip.logits(image, text);
    assert!(max_abs_diff(logits.clone(), io.float("logits_per_image")) < TOL);
    let loss = vlalign::align::info_nce(logits).loss;
    assert!(max_abs_diff(loss, io.float("loss")) < TOL);

    // Saved and reopened (logit_scale back to a rank-0 tensor): the same logits.
    let out = std::env::temp_dir().join(format!("vlalign-clip-{}", std::process::id()));
    hf::save_clip(&clip, &config, &out).unwrap();
    let (again, _, _) = hf::load_clip(&out, &device()).unwrap();
    let before = clip.forward(pixels.clone(), ids.clone(), &lengths);
    assert!(max_abs_diff(again.forward(pixels, ids, &lengths), before) < 1e-6);
    std::fs::remove_dir_all(&out).ok();
}

#[test]
fn blip2_and_instructblip_forward_match_transformers() {
    use vlalign::models::{Blip2Input, QFormerText};
    for dir in ["blip2", "instructblip"] {
        let io = Io::open(dir);
        let (model, config, report) = hf::load_blip2(&fixture(dir), &device()).unwrap();
        assert!(
            report.missing.is_empty() && report.unused.is_empty(),
            "{dir}: {report}"
        );
        assert_eq!(config.qformer.text_input, dir == "instructblip");
        let ids = io.int("input_ids");
        let [b, t] = ids.dims();
        let qformer_text = (dir == "instructblip").then(|| {
            let q = io.int("qformer_input_ids");
            let [qb, qt] = q.dims();
            QFormerText {
                ids: q,
                valid: Tensor::<2, Bool>::from_data(
                    TensorData::new(vec![true; qb * qt], [qb, qt]),
                    &device(),
                ),
            }
        });
        let input = Blip2Input {
            input_ids: ids,
            attention_mask: Tensor::from_data(
                TensorData::new(vec![true; b * t], [b, t]),
                &device(),
            ),
            images: Some(io.float::<4>("pixel_values")),
            image_index: None,
            qformer_text,
        };
        let logits = model.forward(input).logits;
        let d = max_abs_diff(logits, io.float::<3>("logits"));
        println!("{dir} logits max abs diff {d:e}");
        assert!(d <= TOL, "{dir}: {d}");
    }
}

#[test]
fn blip2_hub_layout_with_q_and_v_biases_loads_fused() {
    use vlalign::models::Blip2Input;
    let io = Io::open("blip2_legacy");
    let (model, _, report) = hf::load_blip2(&fixture("blip2_legacy"), &device()).unwrap();
    assert!(
        report.missing.is_empty() && report.unused.is_empty(),
        "{report}"
    );
    assert_eq!(
        report
            .ignored
            .iter()
            .filter(|k| k.contains("_bias"))
            .count(),
        4,
        "{:?}",
        report.ignored
    );
    let ids = io.int("input_ids");
    let [b, t] = ids.dims();
    let input = Blip2Input {
        input_ids: ids,
        attention_mask: Tensor::from_data(TensorData::new(vec![true; b * t], [b, t]), &device()),
        images: Some(io.float::<4>("pixel_values")),
        image_index: None,
        qformer_text: None,
    };
    let d = max_abs_diff(model.forward(input).logits, io.float::<3>("logits"));
    println!("blip2 hub layout logits max abs diff {d:e}");
    assert!(d <= TOL, "{d}");
}

/// SAM's W-Former against a PyTorch port of SAM's public encoder loop (McCartney01/SAM,
/// `Qformer.py`, `BertEncoder.forward`) on the InstructBLIP fixture: random scorer and bridges,
/// six images in groups of 1, 2 and 3, with instruction text. Pooling over all images (the code)
/// and over the others (the paper); the exchange at SAM's last layer and moved earlier.
#[test]
fn wformer_matches_sams_public_encoder_loop() {
    use burn::module::Param;
    use burn::nn::Linear;
    use vlalign::models::{Pooling, QFormerText, WFormerConfig};
    let io = Io::open("wformer");
    let (mut model, _, _) = hf::load_blip2(&fixture("instructblip"), &device()).unwrap();
    // torch's Linear weight is [out, in]; burn's [in, out].
    let linear = |name: &str| Linear {
        weight: Param::from_tensor(io.float::<2>(&format!("{name}.weight")).transpose()),
        bias: Some(Param::from_tensor(io.float::<1>(&format!("{name}.bias")))),
    };
    let groups: Vec<usize> = io.ints("groups").1.iter().map(|&g| g as usize).collect();
    let ids = io.int("qformer_input_ids");
    let [n, t] = ids.dims();
    let text = QFormerText {
        ids,
        valid: Tensor::from_data(TensorData::new(vec![true; n * t], [n, t]), &device()),
    };
    let pixels = io.float::<4>("pixel_values");
    let plain = model.encode_images(pixels.clone(), None, &groups, Some(text.clone()));
    let cases = [
        ("all", Pooling::All, None, None),
        ("others", Pooling::Others, None, None),
        ("inject0", Pooling::All, Some(0), None),
        ("inject0_return1", Pooling::All, Some(0), Some(1)),
    ];
    for (name, pooling, inject, ret) in cases {
        let mut w = WFormerConfig::new(32, 32)
            .with_pooling(pooling)
            .with_inject_layer(inject)
            .with_return_layer(ret)
            .init(&device());
        w.score = linear("score");
        w.bridge_in = linear("bridge_in");
        w.bridge_out = linear("bridge_out");
        model.wformer = Some(w);
        let ours = model.encode_images(pixels.clone(), None, &groups, Some(text.clone()));
        let expected = io.float::<3>(name);
        // The fixture is not the plain Q-Former: the W-Former moves the multi-image tokens.
        let moved = max_abs_diff(
            plain.clone().narrow(0, 1, 5),
            expected.clone().narrow(0, 1, 5),
        );
        assert!(moved > 1e-1, "{name}: {moved}");
        let d = max_abs_diff(ours, expected);
        println!("wformer {name}: max abs diff {d:e} (the W-Former moves a token by {moved:.3})");
        assert!(d <= 1e-5, "{name}: {d}");
    }
}
