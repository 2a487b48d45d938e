//! LaVIT through the same trainer. Two trainees: [`LavitTokenizerTrainee`] trains the
//! tokenizer alone on a frozen LLaVA's ViT features (reconstruction, codebook, commitment,
//! keep ratio; `vlalign_align::lavit`), and [`LavitLlavaTrainee`] trains the LLaVA that reads
//! the tokenizer's tokens with an objective of `vlalign-align` (the tokenizer frozen).

use burn::module::{Module, RunningState};
use burn::tensor::Tensor;
use burn::train::{InferenceStep, TrainOutput, TrainStep};
use rand::SeedableRng;
use vlalign_align::{LavitLossConfig, tokenizer_loss};
use vlalign_data::VlmBatch;
use vlalign_data::augment::record_seed;
use vlalign_models::{GumbelSample, LavitLlava};

use crate::step::{StepOutput, Trainable, backward, objective_trainee};

objective_trainee!(
    LavitLlavaTrainee,
    LavitObjectiveRef,
    LavitLlava,
    "a LLaVA reading LaVIT tokens"
);

/// The tokenizer of a [`LavitLlava`] under training; only the batch's images are used.
///
/// The selector's Gumbel noise of training step `k` is drawn from a generator seeded by the
/// run's seed and `k` alone; `k` (the draws made so far) is part of the module, so it is saved
/// with every checkpoint and a resumed stage draws what the uninterrupted one drew, whatever
/// else runs in the process.
#[derive(Module, Debug)]
pub struct LavitTokenizerTrainee {
    /// The model (its LLaVA frozen: only the tokenizer has gradients).
    pub model: LavitLlava,
    /// Training forwards run so far (one value), saved in the checkpoints.
    pub draws: RunningState<Tensor<1>>,
    /// Seed of the selector's noise.
    #[module(skip)]
    pub seed: u64,
    /// Loss weights and the selector's temperature.
    #[module(skip)]
    pub loss: LavitLossConfig,
    /// Loss multiplier (`1 / accumulation steps`).
    #[module(skip)]
    pub loss_scale: f32,
}

impl LavitTokenizerTrainee {
    /// Train `model`'s tokenizer (its LLaVA is frozen here) with `loss`, the selector's noise
    /// seeded by `seed`.
    pub fn new(model: LavitLlava, loss: LavitLossConfig, seed: u64) -> Self {
        let LavitLlava { llava, tokenizer } = model;
        let device = tokenizer.codebook.device();
        Self {
            model: LavitLlava {
                llava: llava.no_grad(),
                tokenizer,
            },
            draws: RunningState::new(Tensor::zeros([1], &device)),
            seed,
            loss,
            loss_scale: 1.0,
        }
    }

    /// The next training forward's noise for `images` × `tokens` patches (counts the draw).
    fn next_noise(&self, images: usize, tokens: usize) -> GumbelSample {
        let value = self.draws.value_sync();
        let k = value.clone().into_scalar::<f32>() as u64;
        self.draws.update(value.add_scalar(1.0));
        // Apply the update now (a running state applies it lazily): a checkpoint taken after
        // this step must hold this draw.
        self.draws.value_sync();
        let mut rng = rand::rngs::StdRng::seed_from_u64(record_seed(self.seed, &k.to_string()));
        let device = self.model.tokenizer.codebook.device();
        GumbelSample::draw(self.loss.tau, images, tokens, &mut rng, &device)
    }

    /// The loss on `batch`'s images; `train`: sample the selection, else decide.
    fn run(&self, batch: &VlmBatch, train: bool) -> (burn::tensor::Tensor<1>, StepOutput) {
        let images = batch.images.clone().expect("tokenizer batches hold images");
        let features = self.model.features(images).detach();
        let [n, t, _] = features.dims();
        let noise = train.then(|| self.next_noise(n, t));
        let out = self.model.tokenizer.forward(features.clone(), noise);
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
        let (loss, item) = self.run(&batch, true);
        TrainOutput::new(self, backward(loss, self.loss_scale), item)
    }
}

impl InferenceStep for LavitTokenizerTrainee {
    type Input = VlmBatch;
    type Output = StepOutput;

    fn step(&self, batch: VlmBatch) -> StepOutput {
        // Validation scores the deterministic tokenizer (no Gumbel noise).
        self.run(&batch, false).1
    }
}
