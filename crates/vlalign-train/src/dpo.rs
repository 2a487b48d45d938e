//! Preference training through the same trainer: a LLaVA with DPO on preference batches, the
//! reference's log-probs precomputed in the pairs (training holds one model) or from a live
//! frozen copy of the starting weights on the device without autodiff.

use burn::module::Module;
use burn::train::{InferenceStep, TrainOutput, TrainStep};
use vlalign_align::{DpoConfig, dpo_loss_with};
use vlalign_data::PreferenceBatch;
use vlalign_models::Llava;

use crate::step::{StepOutput, Trainable, backward};

/// A LLaVA under preference training.
#[derive(Module, Debug)]
pub struct DpoTrainee {
    /// The policy.
    pub model: Llava,
    /// A live reference: the frozen starting weights on the device without autodiff (`None`:
    /// the batches carry precomputed reference log-probs).
    #[module(skip)]
    pub reference: Option<Llava>,
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
            reference: None,
            config,
            loss_scale: 1.0,
        }
    }

    /// Train `model` against a live reference: a frozen copy of the starting weights, scored
    /// without autodiff (`reference` must live on the device without autodiff).
    pub fn with_live_reference(model: Llava, reference: Llava, config: DpoConfig) -> Self {
        Self {
            reference: Some(reference),
            ..Self::new(model, config)
        }
    }

    fn run(&self, batch: &PreferenceBatch) -> (burn::tensor::Tensor<1>, StepOutput) {
        let out = dpo_loss_with(&self.config, &self.model, self.reference.as_ref(), batch);
        StepOutput::of(out, &batch.ids)
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
