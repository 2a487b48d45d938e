//! The benchmark's DPO rows: one preference training step (forward over chosen and rejected,
//! backward, AdamW) with each of the three reference set-ups of DESIGN §5 — precomputed
//! reference log-probs (one model), a live frozen copy of the starting weights, LoRA adapters
//! (the reference is the base weights) — timed and with the process's peak memory, each
//! measured alone so that its peak is its own.

use burn::tensor::{Device, Tensor};
use burn::train::Learner;
use vlalign_align::DpoConfig;
use vlalign_data::PreferenceBatch;
use vlalign_models::Llava;
use vlalign_train::{DpoTrainee, LoraConfig, OptimConfig};

use crate::bench::{Job, Preset, Row, measure_interleaved, training_batch};

/// A preference batch of the preset's size: its `batch` rows are `batch / 2` pairs (chosen
/// rows, then rejected), each pair's image encoded once, with reference log-probs.
pub fn preference_batch(preset: &Preset, device: &Device) -> PreferenceBatch {
    let mut sequences = training_batch(preset, 0, device);
    let pairs = (preset.batch / 2).max(1);
    if let Some(images) = sequences.images.take() {
        sequences.images = Some(images.narrow(0, 0, pairs));
        sequences.image_index = Some((0..pairs).chain(0..pairs).collect());
    }
    PreferenceBatch {
        sequences,
        reference: Some(Tensor::<2>::full([pairs, 2], -30.0, device)),
        image_negatives: false,
        reference_negative: None,
        ids: (0..pairs).map(|i| format!("pair-{i}")).collect(),
    }
}

/// The three set-ups' training steps, each timed alone.
pub fn dpo_rows(
    preset: &Preset,
    model: &Llava,
    device: &Device,
    wanted: &dyn Fn(&str) -> bool,
    progress: &mut impl FnMut(&str),
) -> Result<Vec<Row>, String> {
    if preset.batch < 2 {
        return Ok(Vec::new());
    }
    let train_device = device.clone().autodiff();
    let batch = preference_batch(preset, &train_device);
    let tokens = (preset.batch * preset.seq) as f64;
    let config = DpoConfig::default();
    let optim = OptimConfig {
        lr: 1e-4,
        warmup_steps: 0,
        ..OptimConfig::default()
    };
    let mut rows = Vec::new();
    for name in ["dpo_precomputed", "dpo_live", "dpo_lora"] {
        if !wanted(name) {
            continue;
        }
        progress(name);
        let trainee = match name {
            "dpo_precomputed" => DpoTrainee::new(model.clone(), config.clone()),
            "dpo_live" => {
                use burn::module::Module;
                DpoTrainee::with_live_reference(model.clone(), model.valid(), config.clone())
            }
            _ => {
                let lora = LoraConfig::default()
                    .apply(model.clone())
                    .map_err(|e| e.to_string())?;
                DpoTrainee::new(lora, config.clone())
            }
        };
        let (optimizer, scheduler) = optim
            .init(preset.warmup + preset.iters + 1)
            .map_err(|e| e.to_string())?;
        let mut learner = Learner::new(trainee, optimizer, scheduler);
        let batch = &batch;
        let job = Job::new(name, tokens, "tok/s", move || {
            let out = learner.train_step(batch.clone());
            learner.lr_step();
            learner.optimizer_step(out.grads);
        });
        rows.extend(measure_interleaved(preset, device, vec![job]));
    }
    Ok(rows)
}
