//! The vision → language projector: `linear` or LLaVA's `mlp{N}x_gelu`.

use std::fmt;
use std::str::FromStr;

use burn::config::Config;
use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::activation::gelu;
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Projector architecture, written as LLaVA's `mm_projector_type` string.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProjectorKind {
    /// One linear layer (LLaVA-1).
    Linear,
    /// `depth` linear layers with GELU in between (`mlp2x_gelu` is LLaVA-1.5).
    MlpGelu {
        /// Number of linear layers.
        depth: usize,
    },
}

impl FromStr for ProjectorKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "linear" {
            return Ok(Self::Linear);
        }
        s.strip_prefix("mlp")
            .and_then(|rest| rest.strip_suffix("x_gelu"))
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|&depth| depth >= 1)
            .map(|depth| Self::MlpGelu { depth })
            .ok_or_else(|| {
                format!("unknown projector type '{s}': expected 'linear' or 'mlp<N>x_gelu'")
            })
    }
}

impl fmt::Display for ProjectorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Linear => write!(f, "linear"),
            Self::MlpGelu { depth } => write!(f, "mlp{depth}x_gelu"),
        }
    }
}

impl Serialize for ProjectorKind {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for ProjectorKind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// Configuration of a [`Projector`].
#[derive(Config, Debug, PartialEq)]
pub struct ProjectorConfig {
    /// Width of the vision features.
    pub input_dim: usize,
    /// Width of the LLM embeddings.
    pub output_dim: usize,
    /// Architecture.
    #[config(default = "ProjectorKind::MlpGelu { depth: 2 }")]
    pub kind: ProjectorKind,
    /// Bias on the linear layers (`multimodal_projector_bias` in HF configs).
    #[config(default = true)]
    pub bias: bool,
}

impl ProjectorConfig {
    /// Initialise the projector on `device`.
    pub fn init(&self, device: &Device) -> Projector {
        let depth = match self.kind {
            ProjectorKind::Linear => 1,
            ProjectorKind::MlpGelu { depth } => depth,
        };
        let layers = (0..depth)
            .map(|i| {
                let d_in = if i == 0 {
                    self.input_dim
                } else {
                    self.output_dim
                };
                LinearConfig::new(d_in, self.output_dim)
                    .with_bias(self.bias)
                    .init(device)
            })
            .collect();
        Projector { layers }
    }
}

/// Linear layers with exact GELU between consecutive ones.
#[derive(Module, Debug)]
pub struct Projector {
    /// The linear layers, input first.
    pub layers: Vec<Linear>,
}

impl Projector {
    /// Project `[..., input_dim]` features to `[..., output_dim]`.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let last = self.layers.len() - 1;
        self.layers.iter().enumerate().fold(x, |x, (i, layer)| {
            let y = layer.forward(x);
            if i < last { gelu(y) } else { y }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_llava_names() {
        assert_eq!("linear".parse(), Ok(ProjectorKind::Linear));
        assert_eq!(
            "mlp2x_gelu".parse(),
            Ok(ProjectorKind::MlpGelu { depth: 2 })
        );
        assert_eq!(
            ProjectorKind::MlpGelu { depth: 3 }.to_string(),
            "mlp3x_gelu"
        );
        assert!("mlp0x_gelu".parse::<ProjectorKind>().is_err());
        assert!("qformer".parse::<ProjectorKind>().is_err());
    }
}
