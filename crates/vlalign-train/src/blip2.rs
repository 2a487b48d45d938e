//! BLIP-2 / SAM through the same trainer: the model with an objective of `vlalign-align`,
//! on the same batches as LLaVA (one row's images form a SAM group).

use vlalign_models::Blip2;

use crate::step::objective_trainee;

objective_trainee!(
    Blip2Trainee,
    Blip2ObjectiveRef,
    Blip2,
    "a BLIP-2 / SAM model"
);
