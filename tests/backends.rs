//! The GPU backends run for real: the parity fixtures' logits on the device against
//! transformers, five training steps on it against the same steps on flex, CAL's text-only
//! contrast pass and KV-cache generation on it. Runs with `--features wgpu` (the device: wgpu)
//! or `--features cuda` (cuda:0); `VLALIGN_TEST_DEVICE=wgpu|cuda` picks when both are built. On
//! a machine without the device (for wgpu: no GPU and no Vulkan driver — Debian's
//! `mesa-vulkan-drivers` gives lavapipe, which CI installs) every test prints a SKIPPED line
//! and checks nothing — unless `VLALIGN_REQUIRE_DEVICE=1`, under which a missing, broken or
//! unknown device fails every test.
#![cfg(any(feature = "wgpu", feature = "cuda"))]

mod common;

use std::path::{Path, PathBuf};

use burn::optim::GradientsParams;
#[cfg(feature = "wgpu")]
use burn::tensor::DeviceKind;
use burn::tensor::{Bool, Device, Int, Tensor, TensorData};
use common::llava_train;
use common::max_abs_diff;
use vlalign::align::{AlignModel, MleObjective, Objective};
use vlalign::models::hf;
use vlalign::models::{Blip2Input, GenerationConfig, LlavaInput};
use vlalign::train::OptimConfig;

const TOL: f32 = 1e-4;

/// The device under test: `VLALIGN_TEST_DEVICE`, else wgpu when built, else cuda:0.
fn open(name: &str) -> Device {
    match name {
        #[cfg(feature = "cuda")]
        "cuda" => Device::cuda(0),
        #[cfg(feature = "wgpu")]
        "wgpu" => Device::wgpu(DeviceKind::DefaultDevice),
        other => panic!("VLALIGN_TEST_DEVICE={other}: this build has no such backend"),
    }
}

/// Whether the environment requires the device (`VLALIGN_REQUIRE_DEVICE=1`, set by `.ci/run`
/// after installing lavapipe and by `tools/gpu_check.sh`): then a device that is missing,
/// broken or unknown fails the test instead of skipping it.
fn device_required() -> bool {
    std::env::var("VLALIGN_REQUIRE_DEVICE").is_ok_and(|v| v == "1")
}

/// Why the device under test cannot run, if it cannot.
fn probe(name: &str) -> Result<Device, String> {
    let opened = std::panic::catch_unwind(|| {
        let device = open(name);
        let identity = device.identity();
        // A first op: adapters that cannot run compute fail here.
        let x = Tensor::<1>::from_data(TensorData::new(vec![1.0f32, 2.0], [2]), &device);
        let sum = x.sum().into_scalar::<f32>();
        (device, identity, sum)
    });
    match opened {
        Ok((device, identity, sum)) if sum == 3.0 => {
            let adapter = identity.map_or("unknown adapter".into(), |i| i.name);
            eprintln!("{name} device: {adapter}");
            Ok(device)
        }
        Ok((_, _, sum)) => Err(format!("the {name} device is broken: 1 + 2 gave {sum}")),
        Err(panic) => {
            let reason = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "it panicked".into());
            Err(format!(
                "no usable {name} device ({reason}; for wgpu without a GPU, a Vulkan driver: on \
                 Debian `apt-get install mesa-vulkan-drivers` gives lavapipe)"
            ))
        }
    }
}

/// The device under test, or `None` (with a SKIPPED line on stderr) when it cannot run; under
/// `VLALIGN_REQUIRE_DEVICE=1` a device that cannot run fails the test.
fn gpu() -> Option<Device> {
    let name = std::env::var("VLALIGN_TEST_DEVICE").unwrap_or_else(|_| {
        if cfg!(feature = "wgpu") {
            "wgpu"
        } else {
            "cuda"
        }
        .into()
    });
    match probe(&name) {
        Ok(device) => Some(device),
        Err(reason) if device_required() => {
            panic!("VLALIGN_REQUIRE_DEVICE=1 and {reason}")
        }
        Err(reason) => {
            eprintln!("SKIPPED: {reason}");
            None
        }
    }
}

#[test]
fn an_unknown_device_is_never_usable() {
    assert!(probe("tpu").is_err());
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// A tensor of a fixture's `io.safetensors`: (shape, f32 values or i64 values).
fn io(dir: &str, name: &str) -> (Vec<usize>, Vec<f32>, Vec<i64>) {
    let bytes = std::fs::read(fixture(dir).join("io.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let t = st.tensor(name).unwrap();
    let shape = t.shape().to_vec();
    match t.dtype() {
        safetensors::Dtype::F32 => {
            let v = t
                .data()
                .chunks(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect();
            (shape, v, Vec::new())
        }
        _ => {
            let v = t
                .data()
                .chunks(8)
                .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
                .collect();
            (shape, Vec::new(), v)
        }
    }
}

fn float<const D: usize>(dir: &str, name: &str, device: &Device) -> Tensor<D> {
    let (shape, v, _) = io(dir, name);
    Tensor::from_data(TensorData::new(v, shape), device)
}

fn int(dir: &str, name: &str, device: &Device) -> Tensor<2, Int> {
    let (shape, _, v) = io(dir, name);
    Tensor::from_data(TensorData::new(v, shape), device)
}

fn all_valid(ids: &Tensor<2, Int>, device: &Device) -> Tensor<2, Bool> {
    let [b, t] = ids.dims();
    Tensor::from_data(TensorData::new(vec![true; b * t], [b, t]), device)
}

/// Results read back on the host: the device's tensors compared with flex's expected ones.
fn host<const D: usize>(t: Tensor<D>) -> Tensor<D> {
    Tensor::from_data(t.into_data(), &Device::flex())
}

#[test]
fn decoder_and_vlm_fixtures_match_transformers_on_the_device() {
    let Some(device) = gpu() else { return };
    // Llama with a left-padded row.
    let (model, _, _) = hf::load_decoder(&fixture("llama"), &device).unwrap();
    let ids = int("llama", "input_ids", &device);
    let (_, _, mask) = io("llama", "attention_mask");
    let t = ids.dims()[1];
    let rows: Vec<Vec<bool>> = mask
        .chunks(t)
        .map(|r| r.iter().map(|&m| m == 1).collect())
        .collect();
    let pos = vlalign::models::mask::position_ids_from_mask(&rows).concat();
    let pos = Tensor::<2, Int>::from_data(TensorData::new(pos, ids.dims()), &device);
    let valid = Tensor::<2, Bool>::from_data(TensorData::new(rows.concat(), ids.dims()), &device);
    let logits = model.forward(ids, pos, Some(valid), None);
    let d = max_abs_diff(host(logits), float("llama", "logits", &Device::flex()));
    println!("device llama {d:e}");
    assert!(d <= TOL, "llama: {d}");

    let (model, _, _) = hf::load_decoder(&fixture("qwen2"), &device).unwrap();
    let ids = int("qwen2", "input_ids", &device);
    let t = ids.dims()[1];
    let pos = Tensor::<1, Int>::arange(0..t as i64, &device).reshape([1, t]);
    let d = max_abs_diff(
        host(model.forward(ids, pos, None, None)),
        float("qwen2", "logits", &Device::flex()),
    );
    println!("device qwen2 {d:e}");
    assert!(d <= TOL, "qwen2: {d}");

    let (model, _, _) = hf::load_llava(&fixture("llava"), &device).unwrap();
    let ids = int("llava", "input_ids", &device);
    let input = LlavaInput {
        attention_mask: all_valid(&ids, &device),
        input_ids: ids,
        images: Some(float("llava", "pixel_values", &device)),
        image_index: None,
    };
    let d = max_abs_diff(
        host(model.forward(input).logits),
        float("llava", "logits", &Device::flex()),
    );
    println!("device llava {d:e}");
    assert!(d <= TOL, "llava: {d}");

    let (model, _, _) = hf::load_blip2(&fixture("blip2"), &device).unwrap();
    let ids = int("blip2", "input_ids", &device);
    let input = Blip2Input {
        attention_mask: all_valid(&ids, &device),
        input_ids: ids,
        images: Some(float("blip2", "pixel_values", &device)),
        image_index: None,
        qformer_text: None,
    };
    let d = max_abs_diff(
        host(model.forward(input).logits),
        float("blip2", "logits", &Device::flex()),
    );
    println!("device blip2 {d:e}");
    assert!(d <= TOL, "blip2: {d}");
}

/// The losses of 5 AdamW steps (clipping, weight decay) on `device`.
fn five_step_losses(device: &Device) -> Vec<f32> {
    let device = device.clone().autodiff();
    let (mut model, _, _) = hf::load_llava(&llava_train::fixture("."), &device).unwrap();
    let batch = llava_train::batch(&device);
    let config = OptimConfig {
        lr: 1e-2,
        warmup_steps: 0,
        min_lr_ratio: 1.0,
        weight_decay: 0.01,
        grad_clip_norm: Some(1.0),
        ..OptimConfig::default()
    };
    let (mut optim, mut scheduler) = config.init(5).unwrap();
    let mut losses = Vec::new();
    for _ in 0..5 {
        let loss = MleObjective.loss(&model, &batch).loss;
        losses.push(loss.clone().into_scalar::<f32>());
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(scheduler.step(), model, grads);
    }
    losses
}

#[test]
fn five_training_steps_on_the_device_equal_flex() {
    let Some(device) = gpu() else { return };
    let ours = five_step_losses(&device);
    let flex = five_step_losses(&Device::flex());
    println!("device {ours:?}\nflex {flex:?}");
    for (step, (a, b)) in ours.iter().zip(&flex).enumerate() {
        assert!((a - b).abs() <= TOL, "step {step}: device {a} vs flex {b}");
    }
    assert!(flex[4] < flex[0], "the steps do not train: {flex:?}");
}

#[test]
fn cal_contrast_pass_and_generation_run_on_the_device() {
    let Some(device) = gpu() else { return };
    let flex = Device::flex();
    // CAL's second pass: the text tokens alone, without autodiff, from an autodiff model.
    let (model, _, _) =
        hf::load_llava(&llava_train::fixture("."), &device.clone().autodiff()).unwrap();
    let (reference, _, _) = hf::load_llava(&llava_train::fixture("."), &flex).unwrap();
    let ours = model.text_only_logits(&llava_train::batch(&device.clone().autodiff()));
    let theirs = reference.text_only_logits(&llava_train::batch(&flex));
    assert_eq!(ours.positions, theirs.positions);
    let d = max_abs_diff(host(ours.logits), theirs.logits);
    println!("device text-only pass {d:e}");
    assert!(d <= TOL, "text-only pass: {d}");

    // Greedy KV-cache generation gives transformers' tokens.
    let (model, _, _) = hf::load_llava(&fixture("llava"), &device).unwrap();
    let (_, _, ids) = io("llava", "input_ids");
    let (_, _, greedy) = io("llava", "greedy");
    let prompt: Vec<u32> = ids.iter().map(|&t| t as u32).collect();
    let config = GenerationConfig::new().with_max_new_tokens(greedy.len());
    let out = model.generate(
        &[prompt],
        Some(float("llava", "pixel_values", &device)),
        &config,
    );
    let expected: Vec<u32> = greedy.iter().map(|&t| t as u32).collect();
    assert_eq!(out[0], expected);
}
