//! CLIP pre-training through the same trainer: a [`Clip`] pair of towers with the symmetric
//! InfoNCE objective of `vlalign-align`, on batches of image–caption pairs.

use burn::module::Module;
use burn::train::{InferenceStep, TrainOutput, TrainStep};
use vlalign_align::contrastive_loss;
use vlalign_data::PairBatch;
use vlalign_models::Clip;

use crate::step::{StepOutput, Trainable, backward};

/// A CLIP model under contrastive training.
#[derive(Module, Debug)]
pub struct ClipTrainee {
    /// The model.
    pub model: Clip,
    /// Loss multiplier (`1 / accumulation steps`).
    #[module(skip)]
    pub loss_scale: f32,
}

impl ClipTrainee {
    /// Train `model`.
    pub fn new(model: Clip) -> Self {
        Self {
            model,
            loss_scale: 1.0,
        }
    }
}

impl TrainStep for ClipTrainee {
    type Input = PairBatch;
    type Output = StepOutput;

    fn step(&self, batch: PairBatch) -> TrainOutput<StepOutput> {
        let (loss, item) = StepOutput::of(contrastive_loss(&self.model, &batch), &batch.ids);
        TrainOutput::new(self, backward(loss, self.loss_scale), item)
    }
}

impl InferenceStep for ClipTrainee {
    type Input = PairBatch;
    type Output = StepOutput;

    fn step(&self, batch: PairBatch) -> StepOutput {
        StepOutput::of(contrastive_loss(&self.model, &batch), &batch.ids).1
    }
}

impl Trainable for ClipTrainee {
    fn set_loss_scale(&mut self, scale: f32) {
        self.loss_scale = scale;
    }
}
