//! CAL — Contrastive ALignment (Xiao et al. 2024): weigh each answer token by how much the
//! image raises the raw logit of its label.
//!
//! `Δ_t = z_img[t][y_t] − z_txt[t][y_t]` (raw logits, no softmax), `w_t = AvgPool_W(clamp(Δ_t,
//! α, β))` with stride 1, padding ⌊W/2⌋ and a count that excludes padding, then
//! `L = Σ w·ce / (Σ_valid w + 1e-6)`. The text-only logits come from a second pass without
//! gradient in which only the text tokens run, each with the position id it has with the image
//! present (equal to the reference's full pass with the image keys masked, at a fraction of the
//! cost).

use burn::tensor::{Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};
use vlalign_data::VlmBatch;
use vlalign_data::augment::gaussian_blur;

use crate::mle::batch_weights;
use crate::token::{
    Targets, TokenCe, host_to_tensor, label_logits_host, token_ce_at, weighted_loss,
};
use crate::{AlignModel, Objective, ObjectiveOutput};

/// How the weights are smoothed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pooling {
    /// As the reference code: one average pool over the flattened batch (weights leak across
    /// prompt tokens and sample boundaries). Unsupervised positions enter with Δ = 0, i.e. the
    /// floor α after clamping.
    Reference,
    /// Within each sequence, over supervised tokens only.
    PerSequence,
}

/// What the image is contrasted with.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Contrast {
    /// No image: the text-only pass.
    Drop,
    /// A Gaussian-blurred image of standard deviation `sigma` pixels.
    Blur {
        /// Blur σ in pixels.
        sigma: f32,
    },
}

/// CAL's settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CalConfig {
    /// Floor of the clamp (α).
    pub alpha: f32,
    /// Ceiling of the clamp (β).
    pub beta: f32,
    /// Average-pool window (W, odd).
    pub window: usize,
    /// Pooling mode.
    pub pooling: Pooling,
    /// The contrast.
    pub contrast: Contrast,
}

impl Default for CalConfig {
    /// The paper's defaults: α = 1, β = 5, W = 3, reference pooling, image dropped.
    fn default() -> Self {
        Self {
            alpha: 1.0,
            beta: 5.0,
            window: 3,
            pooling: Pooling::Reference,
            contrast: Contrast::Drop,
        }
    }
}

impl CalConfig {
    /// Token weights from Δ per target (`None` where unsupervised), `[batch][seq − 1]`.
    pub fn weights(&self, delta: &[Vec<Option<f32>>]) -> Vec<Vec<f32>> {
        let clamp = |d: Option<f32>| d.unwrap_or(0.0).clamp(self.alpha, self.beta);
        let half = (self.window / 2) as isize;
        match self.pooling {
            Pooling::Reference => {
                let flat: Vec<f32> = delta.iter().flatten().map(|&d| clamp(d)).collect();
                let n = flat.len() as isize;
                let pooled: Vec<f32> = (0..n)
                    .map(|i| {
                        let (lo, hi) = ((i - half).max(0), (i + half).min(n - 1));
                        let s: f32 = flat[lo as usize..=hi as usize].iter().sum();
                        s / (hi - lo + 1) as f32
                    })
                    .collect();
                let cols = delta.first().map_or(0, Vec::len);
                pooled.chunks(cols.max(1)).map(<[f32]>::to_vec).collect()
            }
            Pooling::PerSequence => delta
                .iter()
                .map(|row| {
                    let n = row.len() as isize;
                    (0..n)
                        .map(|i| {
                            if row[i as usize].is_none() {
                                return 0.0;
                            }
                            let near: Vec<f32> = ((i - half).max(0)..=(i + half).min(n - 1))
                                .filter_map(|j| row[j as usize])
                                .map(|d| d.clamp(self.alpha, self.beta))
                                .collect();
                            near.iter().sum::<f32>() / near.len() as f32
                        })
                        .collect()
                })
                .collect(),
        }
    }
}

/// The CAL objective.
#[derive(Clone, Debug, Default)]
pub struct CalObjective {
    /// Settings.
    pub config: CalConfig,
}

fn host(t: Tensor<2>) -> Vec<Vec<f32>> {
    let [_, cols] = t.dims();
    let v: Vec<f32> = t
        .into_data()
        .convert::<f32>()
        .try_into_vec()
        .expect("float data");
    v.chunks(cols.max(1)).map(<[f32]>::to_vec).collect()
}

impl CalObjective {
    /// Δ per target position (`None` where unsupervised) for `batch`, given the image pass's
    /// [`TokenCe`] (its label logits, targets and mask).
    pub fn delta<M: AlignModel>(
        &self,
        model: &M,
        batch: &VlmBatch,
        ce: &TokenCe,
    ) -> Vec<Vec<Option<f32>>> {
        let contrast = self.contrast_logits(model, batch, &ce.targets);
        combine(ce, &contrast)
    }

    /// The contrast's raw logit of each supervised target's label, `[batch][seq − 1]` (`None`
    /// where unsupervised), from a pass without gradient.
    pub fn contrast_logits<M: AlignModel>(
        &self,
        model: &M,
        batch: &VlmBatch,
        targets: &Targets,
    ) -> Vec<Vec<Option<f32>>> {
        let (b, t1) = (targets.batch, targets.seq.saturating_sub(1));
        let mut z: Vec<Vec<Option<f32>>> = vec![vec![None; t1]; b];
        if targets.is_empty() {
            return z;
        }
        match self.config.contrast {
            Contrast::Drop => {
                let label = targets.dense(&targets.label, 0);
                let txt = model.text_only_logits(batch);
                let [_, kept, _] = txt.logits.dims();
                // Kept token j+1 (original position p) is predicted from kept token j.
                let mut idx = vec![0i64; b * kept];
                for (row, pos) in txt.positions.iter().enumerate() {
                    for j in 1..pos.len() {
                        idx[row * kept + j - 1] = label[row][pos[j] - 1];
                    }
                }
                let device = txt.logits.device();
                let idx = Tensor::<3, Int>::from_data(TensorData::new(idx, [b, kept, 1]), &device);
                let z_txt = host(txt.logits.gather(2, idx).reshape([b, kept]));
                for (row, pos) in txt.positions.iter().enumerate() {
                    for j in 1..pos.len() {
                        let target = pos[j] - 1;
                        if targets.valid_host[row][target] {
                            z[row][target] = Some(z_txt[row][j - 1]);
                        }
                    }
                }
            }
            Contrast::Blur { sigma } => {
                let blurred = blur_batch(batch, sigma);
                let logits = model.logits_at_no_grad(&blurred, &targets.rows());
                let n = targets.len();
                let device = logits.device();
                let idx = Tensor::<2, Int>::from_data(
                    TensorData::new(targets.label.clone(), [n, 1]),
                    &device,
                );
                let picked: Vec<Option<f32>> = logits
                    .gather(1, idx)
                    .into_data()
                    .convert::<f32>()
                    .try_into_vec::<f32>()
                    .expect("float data")
                    .into_iter()
                    .map(Some)
                    .collect();
                z = targets.dense(&picked, None);
            }
        }
        z
    }
}

/// `Δ = z_img − z_contrast` where both exist.
fn combine(ce: &TokenCe, contrast: &[Vec<Option<f32>>]) -> Vec<Vec<Option<f32>>> {
    let z_img = label_logits_host(ce);
    contrast
        .iter()
        .zip(&z_img)
        .map(|(c, i)| c.iter().zip(i).map(|(c, i)| c.map(|c| i - c)).collect())
        .collect()
}

/// A copy of the batch with every image blurred (σ in pixels).
pub fn blur_batch(batch: &VlmBatch, sigma: f32) -> VlmBatch {
    let mut out = batch.clone();
    if let Some(images) = &batch.images {
        let [n, c, h, w] = images.dims();
        let v: Vec<f32> = images
            .to_data()
            .convert::<f32>()
            .try_into_vec()
            .expect("float data");
        let blurred: Vec<f32> = v
            .chunks(c * h * w)
            .flat_map(|img| gaussian_blur(img, c, h, sigma))
            .collect();
        out.images = Some(Tensor::from_data(
            TensorData::new(blurred, [n, c, h, w]),
            &images.device(),
        ));
    }
    out
}

impl<M: AlignModel> Objective<M> for CalObjective {
    fn loss(&self, model: &M, batch: &VlmBatch) -> ObjectiveOutput {
        let targets = Targets::new(&batch.labels);
        // The contrast pass needs no gradient and nothing from the image pass: it runs on a
        // second thread while the image pass (with graph) runs here. Each pass alone keeps the
        // CPU backend's thread pool only partly busy, so the overlap hides much of CAL's cost.
        let (ce, contrast) = std::thread::scope(|scope| {
            let contrast = scope.spawn(|| self.contrast_logits(model, batch, &targets));
            let ce = token_ce_at(model.logits_at(batch, &targets.rows()), &targets);
            match contrast.join() {
                Ok(z) => (ce, z),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        });
        let delta = combine(&ce, &contrast);
        let weights = self.config.weights(&delta);
        let mut w = host_to_tensor(&weights, &ce.valid);
        if let Some(extra) = batch_weights(batch) {
            w = w * extra;
        }
        let valid: Vec<f32> = weights
            .iter()
            .zip(&ce.targets.valid_host)
            .flat_map(|(w, v)| w.iter().zip(v).filter(|(_, v)| **v).map(|(w, _)| *w))
            .collect();
        let floor = delta
            .iter()
            .flatten()
            .flatten()
            .filter(|&&d| d <= self.config.alpha)
            .count();
        let n = valid.len().max(1) as f64;
        ObjectiveOutput {
            loss: weighted_loss(&ce, Some(w)),
            diagnostics: vec![
                ("supervised_tokens", valid.len() as f64),
                (
                    "cal_weight_mean",
                    valid.iter().map(|&w| w as f64).sum::<f64>() / n,
                ),
                (
                    "cal_weight_max",
                    valid.iter().copied().fold(0.0f32, f32::max) as f64,
                ),
                ("cal_floor_share", floor as f64 / n),
            ],
            weights: Some(weights),
        }
    }

    fn name(&self) -> &'static str {
        "cal"
    }
}
