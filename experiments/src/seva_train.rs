//! One DPO run of `seva_dpo`: the policy of a variant (full, LoRA, image-side negative,
//! cal_weighted) from the starting model, trained through the trainer with DPO's diagnostics live;
//! what it reports (trainable parameters, reward curves); a model saved as a transformers
//! directory (LoRA adapters merged).

use std::sync::Arc;

use burn::data::dataset::Dataset;
use burn::module::Module;
use vlalign_data::{PreferenceBatcher, PreferenceItem};
use vlalign_models::{Llava, LlavaConfig, hf};
use vlalign_train::{DpoTrainee, TrainConfig, TrainReport};

use crate::inputs::Inputs;
use crate::run::RunOptions;
use crate::seva_dpo::{SevaDpoConfig, Variant};

/// DPO's diagnostics, shown live.
const DPO_SHOWN: &[(&str, &str)] = &[
    ("reward_margin", "reward margin"),
    ("reward_accuracy", "reward accuracy"),
];

/// Train one DPO run from `base`: the `k`-th seed's data order (and LoRA init).
#[allow(clippy::too_many_arguments)]
pub fn train_dpo(
    config: &SevaDpoConfig,
    variant: Variant,
    k: usize,
    base: &Llava,
    data: (
        Arc<dyn Dataset<PreferenceItem>>,
        Arc<dyn Dataset<PreferenceItem>>,
    ),
    batcher: &PreferenceBatcher,
    opts: &RunOptions,
    name: &str,
) -> Result<(Llava, TrainReport, usize), String> {
    let mut tc: TrainConfig = config.train.clone();
    tc.seed += k as u64;
    let policy = match variant {
        Variant::Full | Variant::ImageNegative | Variant::CalWeighted => {
            let mut m = base.clone();
            m.vision_tower = m.vision_tower.no_grad();
            m
        }
        Variant::Lora => {
            tc.optim.lr = config.lora_lr;
            opts.device.seed(tc.seed);
            config.lora.apply(base.clone()).map_err(|e| e.to_string())?
        }
    };
    let trainable = vlalign_train::trainable_params(&policy);
    eprintln!(
        "{name}: {} steps on {} pairs, {trainable} trainable parameters",
        tc.steps,
        data.0.len()
    );
    let mut dpo = config.dpo.clone();
    if variant == Variant::ImageNegative {
        dpo.image_negative_weight = config.image_negative_weight;
    }
    let trainee = if variant == Variant::CalWeighted {
        dpo.cal_token_weights = Some(config.base.cal.clone());
        DpoTrainee::with_live_reference(policy, base.valid(), dpo)
    } else {
        DpoTrainee::new(policy, dpo)
    };
    let (trained, report) = opts.fit_stage(trainee, data, batcher.clone(), &tc, name, DPO_SHOWN)?;
    Ok((trained.model, report, trainable))
}

/// `model` (a LoRA model with its adapters merged into the weights) saved as a transformers
/// LLaVA directory with the tokenizer, which `--model`, `hf_check` and `score` open.
pub fn save_hf(
    model: &Llava,
    llava: &LlavaConfig,
    inputs: &Inputs,
    dir: &std::path::Path,
) -> Result<(), String> {
    let merged = model.valid().materialize();
    hf::save_llava(&merged, llava, dir).map_err(|e| e.to_string())?;
    inputs
        .tokenizer
        .save(&dir.join("tokenizer.json"))
        .map_err(|e| e.to_string())
}

/// (step, reward margin, reward accuracy) of each logged step.
pub fn rewards(report: &TrainReport) -> Vec<(usize, f64, f64)> {
    let get = |d: &[(String, f64)], k: &str| d.iter().find(|(n, _)| n == k).map(|x| x.1);
    report
        .steps
        .iter()
        .filter_map(|s| {
            Some((
                s.step,
                get(&s.diagnostics, "reward_margin")?,
                get(&s.diagnostics, "reward_accuracy")?,
            ))
        })
        .collect()
}
