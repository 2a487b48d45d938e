//! Preference training through the same trainer: a LLaVA with DPO on preference batches whose
//! pairs carry the reference's precomputed log-probs (training holds one model).

use burn::module::Module;
use burn::train::{InferenceStep, TrainOutput, TrainStep};
use vlalign_align::{DpoConfig, dpo_loss};
use vlalign_data::PreferenceBatch;
use vlalign_models::Llava;

use crate::step::{StepOutput, Trainable, backward};

/// A LLaVA under preference training.
#[derive(Module, Debug)]
pub struct DpoTrainee {
    /// The policy.
    pub model: Llava,
    /// The loss settings.
    #[module(skip)]
    pub config: DpoConfig,
    /// Loss multiplier (`1 / accumulation steps`).
    #[module(skip)]
    pub loss_scale: f32,
}

impl DpoTrainee {
    /// Train `model` with `config`.
    pub fn new(model: Llava, config: DpoConfig) -> Self {
        Self {
            model,
            config,
            loss_scale: 1.0,
        }
    }

    fn run(&self, batch: &PreferenceBatch) -> (burn::tensor::Tensor<1>, StepOutput) {
        StepOutput::of(dpo_loss(&self.config, &self.model, batch), &batch.ids)
    }
}

impl TrainStep for DpoTrainee {
    type Input = PreferenceBatch;
    type Output = StepOutput;

    fn step(&self, batch: PreferenceBatch) -> TrainOutput<StepOutput> {
        let (loss, item) = self.run(&batch);
        TrainOutput::new(self, backward(loss, self.loss_scale), item)
    }
}

impl InferenceStep for DpoTrainee {
    type Input = PreferenceBatch;
    type Output = StepOutput;

    fn step(&self, batch: PreferenceBatch) -> StepOutput {
        self.run(&batch).1
    }
}

impl Trainable for DpoTrainee {
    fn set_loss_scale(&mut self, scale: f32) {
        self.loss_scale = scale;
    }
}
