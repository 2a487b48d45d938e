//! BLIP-2 / SAM through the same trainer: the model with an objective of `vlalign-align`,
//! on the same batches as LLaVA (one row's images form a SAM group).

use std::fmt;
use std::sync::Arc;

use burn::module::Module;
use burn::tensor::Tensor;
use burn::train::{InferenceStep, TrainOutput, TrainStep};
use vlalign_align::Objective;
use vlalign_data::VlmBatch;
use vlalign_models::Blip2;

use crate::step::{StepOutput, Trainable, backward};

/// A shared BLIP-2 objective (not a module: it holds no parameters).
#[derive(Clone)]
pub struct Blip2ObjectiveRef(pub Arc<dyn Objective<Blip2>>);

impl fmt::Debug for Blip2ObjectiveRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Objective({})", self.0.name())
    }
}

/// A BLIP-2 / SAM model under training with its objective.
#[derive(Module, Debug)]
pub struct Blip2Trainee {
    /// The model.
    pub model: Blip2,
    /// The training objective.
    #[module(skip)]
    pub objective: Blip2ObjectiveRef,
    /// Loss multiplier (`1 / accumulation steps`).
    #[module(skip)]
    pub loss_scale: f32,
}

impl Blip2Trainee {
    /// Pair `model` with `objective`.
    pub fn new(model: Blip2, objective: Arc<dyn Objective<Blip2>>) -> Self {
        Self {
            model,
            objective: Blip2ObjectiveRef(objective),
            loss_scale: 1.0,
        }
    }

    fn run(&self, batch: &VlmBatch) -> (Tensor<1>, StepOutput) {
        StepOutput::of(self.objective.0.loss(&self.model, batch), &batch.ids)
    }
}

impl Trainable for Blip2Trainee {
    fn set_loss_scale(&mut self, scale: f32) {
        self.loss_scale = scale;
    }
}

impl TrainStep for Blip2Trainee {
    type Input = VlmBatch;
    type Output = StepOutput;

    fn step(&self, batch: VlmBatch) -> TrainOutput<StepOutput> {
        let (loss, item) = self.run(&batch);
        TrainOutput::new(self, backward(loss, self.loss_scale), item)
    }
}

impl InferenceStep for Blip2Trainee {
    type Input = VlmBatch;
    type Output = StepOutput;

    fn step(&self, batch: VlmBatch) -> StepOutput {
        self.run(&batch).1
    }
}
