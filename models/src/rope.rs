//! Rotary position embedding in the Hugging Face LLaMA layout ("rotate half").
//!
//! Burn's `nn::RotaryEncoding` rotates interleaved pairs `(x0, x1), (x2, x3), …`; LLaMA and Qwen2
//! checkpoints rotate the two halves `(x_i, x_{i+d/2})`, and positions must be explicit so that
//! left-padded batches and CAL's text-only pass keep each token's original position.

use burn::tensor::{Device, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

/// How the rotary frequencies are rescaled for long contexts (`rope_scaling` /
/// `rope_parameters.rope_type` in HF configs).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(tag = "rope_type", rename_all = "snake_case")]
pub enum RopeScaling {
    /// Plain RoPE.
    #[default]
    Default,
    /// Positions divided by `factor` (all frequencies divided by `factor`).
    Linear {
        /// Scaling factor.
        factor: f64,
    },
    /// LLaMA 3.1's piecewise frequency rescaling.
    Llama3 {
        /// Scaling factor for low frequencies.
        factor: f64,
        /// Wavelength threshold factor (low).
        low_freq_factor: f64,
        /// Wavelength threshold factor (high).
        high_freq_factor: f64,
        /// Context length of the original pretraining.
        original_max_position_embeddings: usize,
    },
}

/// Inverse frequencies `1 / θ^(2i/d)` for `i < d/2`, computed in f32 as `transformers` does,
/// then rescaled.
pub fn inv_freq(head_dim: usize, theta: f64, scaling: &RopeScaling) -> Vec<f32> {
    let base = theta as f32;
    let freqs = (0..head_dim / 2).map(|i| 1.0 / base.powf((2 * i) as f32 / head_dim as f32));
    match *scaling {
        RopeScaling::Default => freqs.collect(),
        RopeScaling::Linear { factor } => freqs.map(|f| f / factor as f32).collect(),
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        } => {
            let old = original_max_position_embeddings as f64;
            let low_wavelen = old / low_freq_factor;
            let high_wavelen = old / high_freq_factor;
            freqs
                .map(|f| {
                    let f = f as f64;
                    let wavelen = 2.0 * std::f64::consts::PI / f;
                    let scaled = if wavelen > low_wavelen { f / factor } else { f };
                    let smooth =
                        (old / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
                    let medium = (high_wavelen..=low_wavelen).contains(&wavelen);
                    if medium {
                        ((1.0 - smooth) * scaled / factor + smooth * scaled) as f32
                    } else {
                        scaled as f32
                    }
                })
                .collect()
        }
    }
}

/// Cosines and sines for a batch of position ids, `[batch, 1, seq, head_dim]` each.
#[derive(Clone, Debug)]
pub struct RotaryCache {
    cos: Tensor<4>,
    sin: Tensor<4>,
}

impl RotaryCache {
    /// Angles `position · inv_freq`, duplicated over both halves of the head.
    pub fn new(position_ids: Tensor<2, Int>, inv_freq: &[f32], device: &Device) -> Self {
        let [batch, seq] = position_ids.dims();
        let half = inv_freq.len();
        let inv = Tensor::<1>::from_data(TensorData::new(inv_freq.to_vec(), [half]), device)
            .reshape([1, 1, half]);
        let freqs = position_ids.float().reshape([batch, seq, 1]) * inv;
        let emb = Tensor::cat(vec![freqs.clone(), freqs], 2).unsqueeze_dim::<4>(1);
        Self {
            cos: emb.clone().cos(),
            sin: emb.sin(),
        }
    }

    /// `x · cos + rotate_half(x) · sin` for `x` `[batch, heads, seq, head_dim]`.
    pub fn apply(&self, x: Tensor<4>) -> Tensor<4> {
        let [batch, heads, seq, dim] = x.dims();
        let half = dim / 2;
        let x1 = x.clone().narrow(3, 0, half);
        let x2 = x.clone().narrow(3, half, half);
        let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
        let cos = self.cos.clone().expand([batch, heads, seq, dim]);
        let sin = self.sin.clone().expand([batch, heads, seq, dim]);
        x * cos + rotated * sin
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_frequencies_follow_theta() {
        let f = inv_freq(8, 10_000.0, &RopeScaling::Default);
        assert_eq!(f.len(), 4);
        assert!((f[0] - 1.0).abs() < 1e-7);
        assert!((f[1] - 0.1).abs() < 1e-6);
        assert!((f[3] - 0.001).abs() < 1e-7);
    }

    #[test]
    fn linear_scaling_divides() {
        let f = inv_freq(4, 100.0, &RopeScaling::Linear { factor: 2.0 });
        assert!((f[0] - 0.5).abs() < 1e-7);
        assert!((f[1] - 0.05).abs() < 1e-7);
    }
}
