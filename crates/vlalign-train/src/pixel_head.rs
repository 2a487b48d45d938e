//! LLaVA with a PixelLLM head through the same trainer: the model with an objective of
//! `vlalign-align` (`PixelObjective`: LM loss + localisation), on LLaVA's batches.

use vlalign_models::PixelLlava;

use crate::step::objective_trainee;

objective_trainee!(
    PixelTrainee,
    PixelObjectiveRef,
    PixelLlava,
    "a LLaVA with a localisation head"
);
