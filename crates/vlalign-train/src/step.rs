//! The model as burn-train sees it: a [`Trainee`] pairs a model with an objective, and its
//! train/inference steps produce a [`StepOutput`] that burn-train's loss, learning-rate and
//! speed metrics (and our own diagnostics metrics) read.

use std::fmt;
use std::sync::Arc;

use burn::module::Module;
use burn::tensor::Tensor;
use burn::train::metric::{Adaptor, LossInput};
use burn::train::{InferenceStep, ItemLazy, TrainOutput, TrainStep};
use vlalign_align::Objective;
use vlalign_data::VlmBatch;
use vlalign_models::Llava;

/// A shared objective (not a module: it holds no parameters).
#[derive(Clone)]
pub struct ObjectiveRef(pub Arc<dyn Objective<Llava>>);

impl fmt::Debug for ObjectiveRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Objective({})", self.0.name())
    }
}

/// A model under training with its objective. The objective sees the model only through
/// [`vlalign_align::AlignModel`]; the trainer is written for the LLaVA composition, the model
/// every experiment trains (the type is the one place to widen when another model trains).
#[derive(Module, Debug)]
pub struct Trainee {
    /// The model.
    pub model: Llava,
    /// The training objective.
    #[module(skip)]
    pub objective: ObjectiveRef,
    /// Loss multiplier (`1 / accumulation steps`, so accumulated gradients are a mean).
    #[module(skip)]
    pub loss_scale: f32,
}

impl Trainee {
    /// Pair `model` with `objective`.
    pub fn new(model: Llava, objective: Arc<dyn Objective<Llava>>) -> Self {
        Self {
            model,
            objective: ObjectiveRef(objective),
            loss_scale: 1.0,
        }
    }

    /// The objective's name.
    pub fn objective_name(&self) -> &'static str {
        self.objective.0.name()
    }

    fn run(&self, batch: &VlmBatch) -> (Tensor<1>, StepOutput) {
        let out = self.objective.0.loss(&self.model, batch);
        let value = out
            .loss
            .clone()
            .try_into_scalar::<f64>()
            .expect("the loss is readable");
        let item = StepOutput {
            loss: out.loss.clone().detach(),
            loss_value: value,
            diagnostics: out.diagnostics,
            ids: batch.ids.clone(),
        };
        (out.loss, item)
    }
}

/// What one step reports.
#[derive(Clone, Debug)]
pub struct StepOutput {
    /// The loss (detached), `[1]`.
    pub loss: Tensor<1>,
    /// The loss on the host (NaN/inf detection, CSV).
    pub loss_value: f64,
    /// The objective's named diagnostics.
    pub diagnostics: Vec<(&'static str, f64)>,
    /// The batch's record ids (named when a loss is not finite).
    pub ids: Vec<String>,
}

impl StepOutput {
    /// A diagnostic by name.
    pub fn diagnostic(&self, name: &str) -> Option<f64> {
        self.diagnostics
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| *v)
    }
}

impl ItemLazy for StepOutput {
    fn sync(self) -> Result<Self, burn::tensor::ExecutionError> {
        Ok(StepOutput {
            loss: self.loss.without_autodiff(),
            ..self
        })
    }
}

impl Adaptor<LossInput> for StepOutput {
    fn adapt(&self) -> LossInput {
        LossInput::new(self.loss.clone())
    }
}

impl TrainStep for Trainee {
    type Input = VlmBatch;
    type Output = StepOutput;

    fn step(&self, batch: VlmBatch) -> TrainOutput<StepOutput> {
        let (loss, item) = self.run(&batch);
        let grads = if self.loss_scale == 1.0 {
            loss.backward()
        } else {
            (loss * self.loss_scale).backward()
        };
        TrainOutput::new(self, grads, item)
    }
}

impl InferenceStep for Trainee {
    type Input = VlmBatch;
    type Output = StepOutput;

    fn step(&self, batch: VlmBatch) -> StepOutput {
        self.run(&batch).1
    }
}
