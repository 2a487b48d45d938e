//! LLaVA with a PixelLLM head through the same trainer: the model with an objective of
//! `vlalign-align` (`PixelObjective`: LM loss + localisation), on LLaVA's batches.

use std::fmt;
use std::sync::Arc;

use burn::module::Module;
use burn::tensor::Tensor;
use burn::train::{InferenceStep, TrainOutput, TrainStep};
use vlalign_align::Objective;
use vlalign_data::VlmBatch;
use vlalign_models::PixelLlava;

use crate::step::{StepOutput, Trainable, backward};

/// A shared objective of a located model (not a module: it holds no parameters).
#[derive(Clone)]
pub struct PixelObjectiveRef(pub Arc<dyn Objective<PixelLlava>>);

impl fmt::Debug for PixelObjectiveRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Objective({})", self.0.name())
    }
}

/// A LLaVA with a localisation head under training with its objective.
#[derive(Module, Debug)]
pub struct PixelTrainee {
    /// The model.
    pub model: PixelLlava,
    /// The training objective.
    #[module(skip)]
    pub objective: PixelObjectiveRef,
    /// Loss multiplier (`1 / accumulation steps`).
    #[module(skip)]
    pub loss_scale: f32,
}

impl PixelTrainee {
    /// Pair `model` with `objective`.
    pub fn new(model: PixelLlava, objective: Arc<dyn Objective<PixelLlava>>) -> Self {
        Self {
            model,
            objective: PixelObjectiveRef(objective),
            loss_scale: 1.0,
        }
    }

    fn run(&self, batch: &VlmBatch) -> (Tensor<1>, StepOutput) {
        StepOutput::of(self.objective.0.loss(&self.model, batch), &batch.ids)
    }
}

impl Trainable for PixelTrainee {
    fn set_loss_scale(&mut self, scale: f32) {
        self.loss_scale = scale;
    }
}

impl TrainStep for PixelTrainee {
    type Input = VlmBatch;
    type Output = StepOutput;

    fn step(&self, batch: VlmBatch) -> TrainOutput<StepOutput> {
        let (loss, item) = self.run(&batch);
        TrainOutput::new(self, backward(loss, self.loss_scale), item)
    }
}

impl InferenceStep for PixelTrainee {
    type Input = VlmBatch;
    type Output = StepOutput;

    fn step(&self, batch: VlmBatch) -> StepOutput {
        self.run(&batch).1
    }
}
