//! AdamW with linear warmup and cosine decay, gradient clipping and per-module learning-rate
//! multipliers, built from burn-optim's own pieces (`AdamWConfig`, `SequentialLrScheduler` of a
//! linear and a cosine scheduler, `ModuleLrScheduler` groups matched by parameter path).

use burn::module::ParamGroup;
use burn::optim::grad_clipping::GradientClippingConfig;
use burn::optim::lr_scheduler::LrSchedulerConfig;
use burn::optim::lr_scheduler::cosine::CosineAnnealingLrSchedulerConfig;
use burn::optim::lr_scheduler::linear::LinearLrSchedulerConfig;
use burn::optim::lr_scheduler::module_lr_scheduler::{ModuleLrScheduler, ModuleLrSchedulerConfig};
use burn::optim::lr_scheduler::sequential::SequentialLrSchedulerConfig;
use burn::optim::{AdamWConfig, ModuleOptimizer};
use serde::{Deserialize, Serialize};

use crate::TrainError;

/// The optimizer and its schedule. burn's AdamW defaults differ from PyTorch's (ε 1e-5 vs 1e-8,
/// weight decay 1e-4 vs 1e-2): every value is explicit here.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OptimConfig {
    /// Peak learning rate (after warmup).
    pub lr: f64,
    /// Linear warmup steps (from `lr / warmup_steps` to `lr`).
    pub warmup_steps: usize,
    /// The cosine decays to `lr · min_lr_ratio` at the last step.
    pub min_lr_ratio: f64,
    /// AdamW decoupled weight decay.
    pub weight_decay: f32,
    /// AdamW β₁.
    pub beta1: f32,
    /// AdamW β₂.
    pub beta2: f32,
    /// AdamW ε.
    pub epsilon: f32,
    /// Clip each parameter's gradient to this L2 norm (burn clips per parameter tensor).
    pub grad_clip_norm: Option<f32>,
    /// Learning-rate multipliers by parameter path substring (e.g. `("projector", 10.0)`); the
    /// last match wins. Freeze a module with `no_grad()` instead of a zero multiplier.
    pub lr_multipliers: Vec<(String, f64)>,
}

impl Default for OptimConfig {
    fn default() -> Self {
        Self {
            lr: 1e-3,
            warmup_steps: 20,
            min_lr_ratio: 0.1,
            weight_decay: 0.0,
            beta1: 0.9,
            beta2: 0.999,
            epsilon: 1e-8,
            grad_clip_norm: Some(1.0),
            lr_multipliers: Vec::new(),
        }
    }
}

impl OptimConfig {
    /// The optimizer and scheduler for a run of `total_steps` optimizer steps.
    pub fn init(
        &self,
        total_steps: usize,
    ) -> Result<(ModuleOptimizer, ModuleLrScheduler), TrainError> {
        let bad = |m: String| TrainError::Config(format!("optimizer: {m}"));
        if !(self.lr > 0.0 && self.lr <= 1.0) {
            return Err(bad(format!("lr must be in (0, 1], got {}", self.lr)));
        }
        if !(0.0..=1.0).contains(&self.min_lr_ratio) {
            return Err(bad(format!(
                "min_lr_ratio must be in [0, 1], got {}",
                self.min_lr_ratio
            )));
        }
        let mut adamw = AdamWConfig::new()
            .with_beta_1(self.beta1)
            .with_beta_2(self.beta2)
            .with_epsilon(self.epsilon)
            .with_weight_decay(self.weight_decay);
        if let Some(norm) = self.grad_clip_norm {
            adamw = adamw.with_grad_clipping(Some(GradientClippingConfig::Norm(norm)));
        }
        let optim = adamw.init();

        let mut scheduler = ModuleLrSchedulerConfig::new(self.schedule(self.lr, total_steps)?);
        for (path, mult) in &self.lr_multipliers {
            let lr = self.lr * mult;
            if !(lr > 0.0 && lr <= 1.0) {
                return Err(bad(format!(
                    "multiplier {mult} for `{path}` gives lr {lr}, outside (0, 1]"
                )));
            }
            scheduler = scheduler.with_group(
                ParamGroup::from_predicate(path.as_str()),
                self.schedule(lr, total_steps)?,
            );
        }
        Ok((optim, scheduler.init().map_err(bad)?))
    }

    fn schedule(&self, lr: f64, total_steps: usize) -> Result<LrSchedulerConfig, TrainError> {
        let total = total_steps.max(1);
        let warmup = self.warmup_steps.min(total - 1);
        let cosine = CosineAnnealingLrSchedulerConfig::new(lr, total - warmup)
            .with_min_lr(lr * self.min_lr_ratio);
        if warmup == 0 {
            return Ok(cosine.into());
        }
        let linear = LinearLrSchedulerConfig::new(lr / warmup as f64, lr, warmup);
        Ok(
            SequentialLrSchedulerConfig::new(vec![linear.into(), cosine.into()], vec![warmup])
                .into(),
        )
    }
}
