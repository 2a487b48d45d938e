//! PLoRA training set-up: every weight of the model frozen, fresh PLoRA adapters (image-token
//! positions only, [`vlalign_models::plora`]) on the language model's linear layers, and
//! optionally the projector trainable beside them (InternLM-XComposer2 trains both).

use burn::module::Module;
use serde::{Deserialize, Serialize};
use vlalign_models::{Llava, PLoraConfig};

use crate::TrainError;

/// What trains in a PLoRA stage.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PLoraTraining {
    /// Rank r.
    pub rank: usize,
    /// α (the update is scaled by α / r).
    pub alpha: f64,
    /// Decoder linear layers that get adapters, by field name.
    pub targets: Vec<String>,
    /// Train the vision → LLM projector too.
    pub with_projector: bool,
}

impl Default for PLoraTraining {
    fn default() -> Self {
        let c = PLoraConfig::new();
        Self {
            rank: c.rank,
            alpha: c.alpha,
            targets: c.targets,
            with_projector: false,
        }
    }
}

impl PLoraTraining {
    /// `model` with every parameter frozen, fresh adapters on its language model, and the
    /// projector unfrozen when asked.
    pub fn apply(&self, model: Llava) -> Result<Llava, TrainError> {
        let config = PLoraConfig::new()
            .with_rank(self.rank)
            .with_alpha(self.alpha)
            .with_targets(self.targets.clone());
        let mut model = model.no_grad();
        model.language_model = config
            .init(model.language_model)
            .map_err(|e| TrainError::Config(e.to_string()))?;
        if self.with_projector {
            model.multi_modal_projector = model.multi_modal_projector.set_require_grad(true);
        }
        Ok(model)
    }
}
