//! LaVIT through the same trainer. Two trainees: [`LavitTokenizerTrainee`] trains the
//! tokenizer alone on a frozen LLaVA's ViT features (reconstruction, codebook, commitment,
//! keep ratio; `vlalign_align::lavit`), and [`LavitLlavaTrainee`] trains the LLaVA that reads
//! the tokenizer's tokens with an objective of `vlalign-align` (the tokenizer frozen).

use burn::module::Module;
use burn::train::{InferenceStep, TrainOutput, TrainStep};
use vlalign_align::{LavitLossConfig, tokenizer_loss};
use vlalign_data::VlmBatch;
use vlalign_models::LavitLlava;

use crate::step::{StepOutput, Trainable, backward, objective_trainee};

objective_trainee!(
    LavitLlavaTrainee,
    LavitObjectiveRef,
    LavitLlava,
    "a LLaVA reading LaVIT tokens"
);

/// The tokenizer of a [`LavitLlava`] under training; only the batch's images are used.
#[derive(Module, Debug)]
pub struct LavitTokenizerTrainee {
    /// The model (its LLaVA frozen: only the tokenizer has gradients).
    pub model: LavitLlava,
    /// Loss weights and the selector's temperature.
    #[module(skip)]
    pub loss: LavitLossConfig,
    /// Loss multiplier (`1 / accumulation steps`).
    #[module(skip)]
    pub loss_scale: f32,
}

impl LavitTokenizerTrainee {
    /// Train `model`'s tokenizer (its LLaVA is frozen here) with `loss`.
    pub fn new(model: LavitLlava, loss: LavitLossConfig) -> Self {
        let LavitLlava { llava, tokenizer } = model;
        Self {
            model: LavitLlava {
                llava: llava.no_grad(),
                tokenizer,
            },
            loss,
            loss_scale: 1.0,
        }
    }

    /// The loss on `batch`'s images; `tau`: sample the selection (training), else decide.
    fn run(&self, batch: &VlmBatch, tau: Option<f64>) -> (burn::tensor::Tensor<1>, StepOutput) {
        let images = batch.images.clone().expect("tokenizer batches hold images");
        let features = self.model.features(images).detach();
        let out = self.model.tokenizer.forward(features.clone(), tau);
        let l = tokenizer_loss(&out, features, &self.loss);
        let output = vlalign_align::ObjectiveOutput {
            loss: l.loss,
            diagnostics: vec![
                ("reconstruction", l.reconstruction),
                ("codebook", l.codebook),
                ("commitment", l.commitment),
                ("keep_ratio", l.keep_ratio),
                ("code_entropy", l.entropy),
            ],
            weights: None,
        };
        StepOutput::of(output, &batch.ids)
    }
}

impl Trainable for LavitTokenizerTrainee {
    fn set_loss_scale(&mut self, scale: f32) {
        self.loss_scale = scale;
    }
}

impl TrainStep for LavitTokenizerTrainee {
    type Input = VlmBatch;
    type Output = StepOutput;

    fn step(&self, batch: VlmBatch) -> TrainOutput<StepOutput> {
        let (loss, item) = self.run(&batch, Some(self.loss.tau));
        TrainOutput::new(self, backward(loss, self.loss_scale), item)
    }
}

impl InferenceStep for LavitTokenizerTrainee {
    type Input = VlmBatch;
    type Output = StepOutput;

    fn step(&self, batch: VlmBatch) -> StepOutput {
        // Validation scores the deterministic tokenizer (no Gumbel noise).
        self.run(&batch, None).1
    }
}
