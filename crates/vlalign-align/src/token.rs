//! Token-level cross-entropy with an ignore index and per-token weights (burn's
//! `CrossEntropyLoss` has neither), written with `log_softmax` + `gather` + mask.

use burn::tensor::activation::log_softmax;
use burn::tensor::{Int, Tensor, TensorData};
use vlalign_data::IGNORE;

/// Per-token cross-entropy of next-token prediction.
#[derive(Clone, Debug)]
pub struct TokenCe {
    /// `−log p(label_{t+1} | ≤ t)`, `[batch, seq − 1]` (0 where unsupervised).
    pub ce: Tensor<2>,
    /// 1 where the target is supervised, else 0, `[batch, seq − 1]`.
    pub valid: Tensor<2>,
    /// Targets `[batch, seq − 1]` with ignored ones replaced by 0 (safe to gather with).
    pub targets: Tensor<2, Int>,
    /// Host copy of `valid`.
    pub valid_host: Vec<Vec<bool>>,
}

/// Shift and score: logits at `t` predict `labels[t + 1]`; labels equal to −100 are ignored.
pub fn token_ce(logits: Tensor<3>, labels: &Tensor<2, Int>) -> TokenCe {
    let [batch, seq, _] = logits.dims();
    let device = logits.device();
    let shifted: Vec<i64> = labels
        .to_data()
        .convert::<i64>()
        .try_into_vec::<i64>()
        .expect("int labels")
        .chunks(seq)
        .flat_map(|row| row[1..].to_vec())
        .collect();
    let valid_host: Vec<Vec<bool>> = shifted
        .chunks(seq - 1)
        .map(|r| r.iter().map(|&l| l != IGNORE).collect())
        .collect();
    let safe: Vec<i64> = shifted
        .iter()
        .map(|&l| if l == IGNORE { 0 } else { l })
        .collect();
    let mask: Vec<f32> = shifted
        .iter()
        .map(|&l| f32::from(u8::from(l != IGNORE)))
        .collect();
    let targets = Tensor::<2, Int>::from_data(TensorData::new(safe, [batch, seq - 1]), &device);
    let valid = Tensor::<2>::from_data(TensorData::new(mask, [batch, seq - 1]), &device);
    let logp = log_softmax(logits.narrow(1, 0, seq - 1), 2);
    let picked = logp
        .gather(2, targets.clone().reshape([batch, seq - 1, 1]))
        .reshape([batch, seq - 1]);
    TokenCe {
        ce: picked.neg() * valid.clone(),
        valid,
        targets,
        valid_host,
    }
}

/// `L = Σ w·ce / (Σ_valid w + 1e-6)`; `weights` (no gradient) default to 1.
pub fn weighted_loss(ce: &TokenCe, weights: Option<Tensor<2>>) -> Tensor<1> {
    let w = match weights {
        Some(w) => w.detach() * ce.valid.clone(),
        None => ce.valid.clone(),
    };
    let num = (ce.ce.clone() * w.clone()).sum();
    let den = w.sum().add_scalar(1e-6);
    num / den
}

/// Host matrix → tensor on the device of `like`.
pub fn host_to_tensor(rows: &[Vec<f32>], like: &Tensor<2>) -> Tensor<2> {
    let cols = rows.first().map_or(0, Vec::len);
    let flat: Vec<f32> = rows.iter().flatten().copied().collect();
    Tensor::from_data(TensorData::new(flat, [rows.len(), cols]), &like.device())
}
