//! LoRA on the LLM's linear layers, through burn's `Module::apply_lora`: every float parameter
//! of the model is frozen and the named projections of the language model get trainable
//! low-rank adapters (`W + (α/r)·A·B`, `B = 0` at first, so the model starts unchanged).

use burn::module::{Lora, Module, ParamGroup};
use serde::{Deserialize, Serialize};
use vlalign_models::Llava;

use crate::TrainError;

/// Which layers get adapters, and their rank and scale.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoraConfig {
    /// Rank r.
    pub rank: usize,
    /// α (the update is scaled by α / r).
    pub alpha: f64,
    /// Linear layers of the language model that get adapters, by field name.
    pub targets: Vec<String>,
}

impl Default for LoraConfig {
    fn default() -> Self {
        Self {
            rank: 8,
            alpha: 16.0,
            targets: ["q_proj", "k_proj", "v_proj", "o_proj"]
                .map(String::from)
                .to_vec(),
        }
    }
}

impl LoraConfig {
    /// `model` with every float parameter frozen and adapters on the target projections of its
    /// language model.
    pub fn apply(&self, model: Llava) -> Result<Llava, TrainError> {
        if self.rank == 0 || self.targets.is_empty() {
            return Err(TrainError::Config(
                "LoRA needs a rank of at least 1 and at least one target".into(),
            ));
        }
        let pattern = format!(r"(^|\.)({})\.weight$", self.targets.join("|"));
        let group = ParamGroup::from_any_regexes(vec![pattern])
            .map_err(|e| TrainError::Config(format!("LoRA targets {:?}: {e:?}", self.targets)))?;
        let mut model = model.no_grad();
        model.language_model = model
            .language_model
            .apply_lora(Lora::new(self.rank, self.alpha).set_param_group(group));
        Ok(model)
    }
}
