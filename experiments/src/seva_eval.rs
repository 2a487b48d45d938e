//! What `seva_dpo` measures of a model on held-out data: POPE accuracy / F1 / yes-ratio per
//! split, CHAIR of generated captions, grounded-slot accuracy (DPO must not break it), and the
//! reward accuracy and margin on held-out pairs (the share where the policy prefers the chosen
//! answer more than the reference does).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use burn::data::dataloader::batcher::Batcher;
use burn::data::dataset::Dataset;
use burn::module::Module;
use burn::tensor::Device;
use serde::Serialize;
use vlalign_align::{CalConfig, DpoConfig, dpo_loss};
use vlalign_data::{PreferenceBatcher, PreferenceDataset, Record, VlmBatcher};
use vlalign_models::Llava;

use crate::cal_eval::{EvalContext, hallucination, slots_written};
use crate::inputs::{Inputs, read_valid};
use crate::run::{EvalSection, RunOptions};

/// The scores of one model.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ModelScores {
    /// POPE accuracy per split (`random`, `popular`, `adversarial`).
    pub pope_accuracy: BTreeMap<String, f64>,
    /// POPE F1 per split.
    pub pope_f1: BTreeMap<String, f64>,
    /// POPE yes-ratio per split.
    pub pope_yes_ratio: BTreeMap<String, f64>,
    /// CHAIR_s: captions with a hallucinated shape.
    pub chair_s: f64,
    /// CHAIR_i: hallucinated shape mentions.
    pub chair_i: f64,
    /// Grounded-slot accuracy.
    pub slot_accuracy: Option<f64>,
    /// Held-out pairs where the policy's margin exceeds the reference's.
    pub reward_accuracy: Option<f64>,
    /// Mean β·(policy − reference margin) on held-out pairs.
    pub reward_margin: Option<f64>,
}

impl ModelScores {
    /// POPE F1 of `split`.
    pub fn pope_f1(&self, split: &str) -> Option<f64> {
        self.pope_f1.get(split).copied()
    }
}

/// Evaluates models on one held-out split.
pub struct Evaluator<'a> {
    eval: &'a EvalSection,
    world: &'a Path,
    inputs: &'a Inputs,
    opts: &'a RunOptions,
    records: Vec<Record>,
    cal: CalConfig,
}

impl<'a> Evaluator<'a> {
    /// The first `eval.records` QA records of the split in `world`.
    pub fn new(
        eval: &'a EvalSection,
        world: &'a Path,
        inputs: &'a Inputs,
        opts: &'a RunOptions,
    ) -> Result<Self, String> {
        let path = world.join(format!("{}_qa.json", eval.split));
        let records = read_valid(&path)?.into_iter().take(eval.records).collect();
        Ok(Self {
            eval,
            world,
            inputs,
            opts,
            records,
            cal: CalConfig::default(),
        })
    }

    /// Score `model`, writing its answers into `dir`; the reward accuracy on `held` pairs
    /// (scored by the reference) when given.
    pub fn scores(
        &self,
        model: &Llava,
        dir: &Path,
        held: Option<&PreferenceDataset>,
        dpo: &DpoConfig,
    ) -> Result<ModelScores, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let ctx = EvalContext {
            eval: self.eval,
            cal: &self.cal,
            world_dir: self.world,
            inputs: self.inputs,
            device: &self.opts.device,
            verbose: self.opts.verbose,
            world: true,
            val_records: &self.records,
            val: Arc::new(self.inputs.dataset(Vec::new())),
        };
        let slots = slots_written(model, &ctx, dir)?;
        let h = hallucination(model, &ctx, dir)?;
        let rewards = match held {
            Some(held) if !held.is_empty() => Some(held_out_rewards(
                model,
                held,
                dpo,
                &self.inputs.batcher,
                &self.opts.device,
                self.eval.batch_size,
            )?),
            _ => None,
        };
        Ok(ModelScores {
            pope_accuracy: h.pope_accuracy,
            pope_f1: h.pope_f1,
            pope_yes_ratio: h.pope_yes_ratio,
            chair_s: h.chair_s,
            chair_i: h.chair_i,
            slot_accuracy: slots.map(|s| s.overall()),
            reward_accuracy: rewards.map(|r| r.0),
            reward_margin: rewards.map(|r| r.1),
        })
    }
}

/// (reward accuracy, mean reward margin) of `model` on `held` pairs (scored by the reference),
/// in batches of `batch_size` on `device`.
pub fn held_out_rewards(
    model: &Llava,
    held: &PreferenceDataset,
    dpo: &DpoConfig,
    batcher: &VlmBatcher,
    device: &Device,
    batch_size: usize,
) -> Result<(f64, f64), String> {
    let model = model.valid();
    let batcher = PreferenceBatcher(batcher.clone());
    let (mut acc, mut margin, mut n) = (0.0, 0.0, 0usize);
    let size = batch_size.max(1);
    for start in (0..held.len()).step_by(size) {
        let items = (start..(start + size).min(held.len()))
            .map(|i| held.get(i).map_err(|e| e.to_string()))
            .collect::<Result<Vec<_>, _>>()?;
        let b = items.len();
        let batch = batcher.batch(items, device);
        let out = dpo_loss(dpo, &model, &batch);
        let get = |k: &str| {
            out.diagnostics
                .iter()
                .find(|(name, _)| *name == k)
                .map_or(0.0, |x| x.1)
        };
        acc += get("reward_accuracy") * b as f64;
        margin += get("reward_margin") * b as f64;
        n += b;
    }
    let n = n.max(1) as f64;
    Ok((acc / n, margin / n))
}

/// The scores a model without the world's truth gets: the held-out reward accuracy alone.
pub fn rewards_only(rewards: Option<(f64, f64)>) -> ModelScores {
    ModelScores {
        reward_accuracy: rewards.map(|r| r.0),
        reward_margin: rewards.map(|r| r.1),
        ..ModelScores::default()
    }
}
