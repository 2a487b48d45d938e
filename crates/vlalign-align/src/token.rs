//! Token-level cross-entropy with an ignore index and per-token weights (burn's
//! `CrossEntropyLoss` has neither), written with `log_softmax` + `gather` + mask.
//!
//! Only the supervised positions need logits: [`Targets`] lists them once (host side) and
//! [`token_ce_at`] scores logits computed at those positions alone (`[n, vocab]`, see
//! [`crate::AlignModel::logits_at`]), so the LM head and the softmax never run over prompt and
//! image positions — with a 32k vocabulary that is most of a LLaVA step's head cost. The
//! per-token results are scattered back into dense `[batch, seq − 1]` matrices, which is what
//! the weightings work on.

use burn::tensor::activation::log_softmax;
use burn::tensor::{IndexingUpdateOp, Int, Tensor, TensorData};
use vlalign_data::IGNORE;

use crate::model::select_rows;

/// The supervised next-token targets of a batch, read once on the host, in row-major order.
#[derive(Clone, Debug)]
pub struct Targets {
    /// Rows of the batch.
    pub batch: usize,
    /// Sequence length.
    pub seq: usize,
    /// For each target, the flat index `b·seq + t` of the position whose logits predict it.
    pub source: Vec<i64>,
    /// For each target, its flat index `b·(seq − 1) + t` in `[batch, seq − 1]` matrices.
    pub slot: Vec<i64>,
    /// For each target, the label.
    pub label: Vec<i64>,
    /// `[batch][seq − 1]`: whether the target at `t` (token `t + 1`) is supervised.
    pub valid_host: Vec<Vec<bool>>,
}

impl Targets {
    /// Read the targets of `labels` `[batch, seq]` (the loss predicts `labels[t]` from position
    /// `t − 1`; −100 is ignored).
    pub fn new(labels: &Tensor<2, Int>) -> Self {
        let [batch, seq] = labels.dims();
        let host: Vec<i64> = labels
            .to_data()
            .convert::<i64>()
            .try_into_vec::<i64>()
            .expect("int labels");
        let mut out = Self {
            batch,
            seq,
            source: Vec::new(),
            slot: Vec::new(),
            label: Vec::new(),
            valid_host: vec![vec![false; seq.saturating_sub(1)]; batch],
        };
        for b in 0..batch {
            for t in 0..seq.saturating_sub(1) {
                let l = host[b * seq + t + 1];
                if l != IGNORE {
                    out.source.push((b * seq + t) as i64);
                    out.slot.push((b * (seq - 1) + t) as i64);
                    out.label.push(l);
                    out.valid_host[b][t] = true;
                }
            }
        }
        out
    }

    /// The positions to compute logits at: [`source`](Self::source), or position 0 as a
    /// placeholder when nothing is supervised (its loss is multiplied by 0).
    pub fn rows(&self) -> Vec<i64> {
        if self.source.is_empty() {
            vec![0]
        } else {
            self.source.clone()
        }
    }

    /// Per-target `values` (in target order) laid out as a `[batch][seq − 1]` matrix, `fill`
    /// elsewhere.
    pub fn dense<T: Copy>(&self, values: &[T], fill: T) -> Vec<Vec<T>> {
        let t1 = self.seq.saturating_sub(1);
        let mut out = vec![vec![fill; t1]; self.batch];
        for (&slot, &v) in self.slot.iter().zip(values) {
            out[slot as usize / t1][slot as usize % t1] = v;
        }
        out
    }

    /// Number of supervised targets.
    pub fn len(&self) -> usize {
        self.source.len()
    }

    /// Whether nothing is supervised.
    pub fn is_empty(&self) -> bool {
        self.source.is_empty()
    }
}

/// Per-token cross-entropy of next-token prediction.
#[derive(Clone, Debug)]
pub struct TokenCe {
    /// `−log p(label_{t+1} | ≤ t)`, `[batch, seq − 1]` (0 where unsupervised).
    pub ce: Tensor<2>,
    /// 1 where the target is supervised, else 0, `[batch, seq − 1]`.
    pub valid: Tensor<2>,
    /// The raw logit of each supervised target's label, in [`Targets`] order, `[n]` (no
    /// gradient).
    pub label_logits: Tensor<1>,
    /// Where the targets are (with the host copy of `valid`, `targets.valid_host`).
    pub targets: Targets,
}

/// Score logits `[n, vocab]` computed at `targets.rows()`.
pub fn token_ce_at(logits: Tensor<2>, targets: &Targets) -> TokenCe {
    let device = logits.device();
    let (b, t1) = (targets.batch, targets.seq.saturating_sub(1));
    let n = logits.dims()[0];
    let labels: Vec<i64> = if targets.is_empty() {
        vec![0; n]
    } else {
        targets.label.clone()
    };
    let index = Tensor::<2, Int>::from_data(TensorData::new(labels, [n, 1]), &device);
    let label_logits = logits
        .clone()
        .detach()
        .gather(1, index.clone())
        .reshape([n]);
    let mut picked = log_softmax(logits, 1).gather(1, index).reshape([n]).neg();
    let slots: Vec<i64> = if targets.is_empty() {
        picked = picked.mul_scalar(0.0);
        vec![0]
    } else {
        targets.slot.clone()
    };
    let slots = Tensor::<1, Int>::from_data(TensorData::new(slots, [n]), &device);
    let ce = Tensor::<1>::zeros([b * t1], &device)
        .select_assign(0, slots, picked, IndexingUpdateOp::Add)
        .reshape([b, t1]);
    let mask: Vec<f32> = targets
        .valid_host
        .iter()
        .flatten()
        .map(|&v| f32::from(u8::from(v)))
        .collect();
    TokenCe {
        ce,
        valid: Tensor::<2>::from_data(TensorData::new(mask, [b, t1]), &device),
        label_logits,
        targets: targets.clone(),
    }
}

/// Shift and score full logits `[batch, seq, vocab]`: logits at `t` predict `labels[t + 1]`;
/// labels equal to −100 are ignored. (Objectives compute only the supervised rows, through
/// [`token_ce_at`].)
pub fn token_ce(logits: Tensor<3>, labels: &Tensor<2, Int>) -> TokenCe {
    let targets = Targets::new(labels);
    token_ce_at(select_rows(logits, &targets.rows()), &targets)
}

/// The label logits of `ce` as a dense host matrix `[batch][seq − 1]` (0 where unsupervised).
pub fn label_logits_host(ce: &TokenCe) -> Vec<Vec<f32>> {
    if ce.targets.is_empty() {
        return ce.targets.dense(&[], 0.0);
    }
    let v: Vec<f32> = ce
        .label_logits
        .to_data()
        .convert::<f32>()
        .try_into_vec()
        .expect("float data");
    ce.targets.dense(&v, 0.0)
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
