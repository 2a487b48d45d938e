//! The model as burn-train sees it. [`fit`](crate::fit) trains anything [`Trainable`]: a module
//! whose train and inference steps take its own batch type and produce a [`StepOutput`] that
//! burn-train's loss, learning-rate and speed metrics (and our own diagnostics metrics) read.
//! [`Trainee`] is the LLaVA one: a model paired with an objective of `vlalign-align`; another
//! model family (a CLIP pair, a multi-image model) or another batch type (preference pairs)
//! brings its own module implementing the trait, with its objective held the same way.

use std::fmt;
use std::sync::Arc;

use burn::module::Module;
use burn::tensor::Tensor;
use burn::train::metric::{Adaptor, LossInput};
use burn::train::{InferenceStep, ItemLazy, LearnerModel, TrainOutput, TrainStep};
use vlalign_align::{Objective, ObjectiveOutput};
use vlalign_data::VlmBatch;
use vlalign_models::Llava;

/// What [`fit`](crate::fit) trains: a module whose train step (backward included) and inference
/// step take the same batch type and report a [`StepOutput`].
///
/// Burn's `#[module(skip)]` cannot hold a field whose type names a module generic, so the trait
/// is implemented per model family by a concrete module that holds its objective (as
/// [`Trainee`] does), rather than by one `Trainee<M, B>`.
pub trait Trainable:
    LearnerModel
    + TrainStep<Output = StepOutput>
    + InferenceStep<Input = <Self as TrainStep>::Input, Output = StepOutput>
{
    /// Multiply the loss by `scale` before the backward pass (`1 / accumulation`, so that
    /// accumulated gradients are a mean).
    fn set_loss_scale(&mut self, scale: f32);
}

impl Trainable for Trainee {
    fn set_loss_scale(&mut self, scale: f32) {
        self.loss_scale = scale;
    }
}

/// A shared objective (not a module: it holds no parameters).
#[derive(Clone)]
pub struct ObjectiveRef(pub Arc<dyn Objective<Llava>>);

impl fmt::Debug for ObjectiveRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Objective({})", self.0.name())
    }
}

/// A model under training with its objective. The objective sees the model only through
/// [`vlalign_align::AlignModel`].
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
        StepOutput::of(self.objective.0.loss(&self.model, batch), &batch.ids)
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
    /// The report of an objective's output on the batch `ids`, with the loss (graph kept) to
    /// backpropagate.
    pub fn of(out: ObjectiveOutput, ids: &[String]) -> (Tensor<1>, StepOutput) {
        let value = out
            .loss
            .clone()
            .try_into_scalar::<f64>()
            .expect("the loss is readable");
        let item = StepOutput {
            loss: out.loss.clone().detach(),
            loss_value: value,
            diagnostics: out.diagnostics,
            ids: ids.to_vec(),
        };
        (out.loss, item)
    }

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

/// Gradients of `loss · scale`.
pub fn backward(loss: Tensor<1>, scale: f32) -> burn::tensor::Gradients {
    if scale == 1.0 {
        loss.backward()
    } else {
        (loss * scale).backward()
    }
}

impl TrainStep for Trainee {
    type Input = VlmBatch;
    type Output = StepOutput;

    fn step(&self, batch: VlmBatch) -> TrainOutput<StepOutput> {
        let (loss, item) = self.run(&batch);
        TrainOutput::new(self, backward(loss, self.loss_scale), item)
    }
}

impl InferenceStep for Trainee {
    type Input = VlmBatch;
    type Output = StepOutput;

    fn step(&self, batch: VlmBatch) -> StepOutput {
        self.run(&batch).1
    }
}

/// A trainee for another model family trained by an objective of `vlalign-align` on
/// [`VlmBatch`]es, as [`Trainee`] is for LLaVA: `objective_trainee!(Name, ObjectiveRefName,
/// Model, "what it is")` defines the shared-objective handle, the module and its steps.
macro_rules! objective_trainee {
    ($trainee:ident, $objective:ident, $model:ty, $what:literal) => {
        #[doc = concat!("A shared objective of ", $what, " (not a module: no parameters).")]
        #[derive(Clone)]
        pub struct $objective(pub std::sync::Arc<dyn vlalign_align::Objective<$model>>);

        impl std::fmt::Debug for $objective {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "Objective({})", self.0.name())
            }
        }

        #[doc = concat!("The trainee of ", $what, ": the model under training with its objective.")]
        #[derive(burn::module::Module, Debug)]
        pub struct $trainee {
            /// The model.
            pub model: $model,
            /// The training objective.
            #[module(skip)]
            pub objective: $objective,
            /// Loss multiplier (`1 / accumulation steps`).
            #[module(skip)]
            pub loss_scale: f32,
        }

        impl $trainee {
            /// Pair `model` with `objective`.
            pub fn new(
                model: $model,
                objective: std::sync::Arc<dyn vlalign_align::Objective<$model>>,
            ) -> Self {
                Self {
                    model,
                    objective: $objective(objective),
                    loss_scale: 1.0,
                }
            }

            fn run(
                &self,
                batch: &vlalign_data::VlmBatch,
            ) -> (burn::tensor::Tensor<1>, $crate::step::StepOutput) {
                $crate::step::StepOutput::of(self.objective.0.loss(&self.model, batch), &batch.ids)
            }
        }

        impl $crate::step::Trainable for $trainee {
            fn set_loss_scale(&mut self, scale: f32) {
                self.loss_scale = scale;
            }
        }

        impl burn::train::TrainStep for $trainee {
            type Input = vlalign_data::VlmBatch;
            type Output = $crate::step::StepOutput;

            fn step(
                &self,
                batch: vlalign_data::VlmBatch,
            ) -> burn::train::TrainOutput<$crate::step::StepOutput> {
                let (loss, item) = self.run(&batch);
                burn::train::TrainOutput::new(
                    self,
                    $crate::step::backward(loss, self.loss_scale),
                    item,
                )
            }
        }

        impl burn::train::InferenceStep for $trainee {
            type Input = vlalign_data::VlmBatch;
            type Output = $crate::step::StepOutput;

            fn step(&self, batch: vlalign_data::VlmBatch) -> $crate::step::StepOutput {
                self.run(&batch).1
            }
        }
    };
}
pub(crate) use objective_trainee;
