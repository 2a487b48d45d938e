//! Per-token evaluation of a model on a held-out split: perplexity of the answers, and CAL's
//! contrast (Δ and the pooled weight, in both pooling modes) for every supervised token with the
//! world's truth label, so their AUROC for grounded vs template tokens can be computed.

use std::collections::BTreeMap;

use burn::data::dataloader::batcher::Batcher;
use burn::data::dataset::Dataset;
use burn::module::Module;
use burn::tensor::Device;
use indicatif::{ProgressBar, ProgressStyle};
use vlalign_align::token::{Targets, token_ce_at};
use vlalign_align::{AlignModel, CalConfig, CalObjective, Pooling};
use vlalign_data::{Item, VlmBatcher, WordKind};
use vlalign_eval::grounding::auroc;
use vlalign_models::Llava;

/// One supervised target token.
#[derive(Clone, Debug)]
pub struct TokenScore {
    /// Record id.
    pub id: String,
    /// Token id.
    pub token: u32,
    /// Its word kind (template when unlabelled).
    pub kind: WordKind,
    /// Whether the word is predictable from the language prior.
    pub prior: bool,
    /// Raw-logit Δ (image − text-only).
    pub delta: f32,
    /// CAL weight, reference pooling.
    pub weight_reference: f32,
    /// CAL weight, per-sequence pooling.
    pub weight_sequence: f32,
    /// Cross-entropy of the token with the image.
    pub ce: f32,
}

/// The tokens of a split, in order.
#[derive(Clone, Debug, Default)]
pub struct TokenEval {
    /// Every supervised token.
    pub tokens: Vec<TokenScore>,
}

impl TokenEval {
    /// `exp(mean CE)` over the supervised tokens.
    pub fn perplexity(&self) -> f64 {
        let n = self.tokens.len().max(1) as f64;
        (self.tokens.iter().map(|t| t.ce as f64).sum::<f64>() / n).exp()
    }

    /// AUROC of a score for grounded (positive) vs template tokens.
    pub fn auroc(&self, score: impl Fn(&TokenScore) -> f32) -> Option<f64> {
        let (s, l): (Vec<f64>, Vec<bool>) = self
            .tokens
            .iter()
            .filter(|t| t.kind != WordKind::Other)
            .map(|t| (score(t) as f64, t.kind != WordKind::Template))
            .unzip();
        auroc(&s, &l)
    }

    /// Mean of a score per word kind.
    pub fn mean_by_kind(&self, score: impl Fn(&TokenScore) -> f32) -> BTreeMap<&'static str, f64> {
        let mut acc: BTreeMap<&'static str, (f64, usize)> = BTreeMap::new();
        for t in &self.tokens {
            let e = acc.entry(t.kind.name()).or_default();
            e.0 += score(t) as f64;
            e.1 += 1;
        }
        acc.into_iter()
            .map(|(k, (s, n))| (k, s / n.max(1) as f64))
            .collect()
    }
}

/// Score every item of `data` with `model` (no autodiff), `batch_size` at a time.
pub fn evaluate_tokens(
    model: &Llava,
    data: &dyn Dataset<Item>,
    batcher: &VlmBatcher,
    cal: &CalConfig,
    device: &Device,
    batch_size: usize,
    show_progress: bool,
) -> Result<TokenEval, String> {
    let model = model.valid();
    let n = data.len();
    let bar = if show_progress {
        ProgressBar::new(n as u64)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("scoring tokens {bar:40} {pos}/{len} ({per_sec})")
            .expect("valid template"),
    );
    let reference = CalObjective {
        config: CalConfig {
            pooling: Pooling::Reference,
            ..cal.clone()
        },
    };
    let sequence = CalConfig {
        pooling: Pooling::PerSequence,
        ..cal.clone()
    };
    let mut out = TokenEval::default();
    let mut start = 0;
    while start < n {
        let end = (start + batch_size).min(n);
        let items = (start..end)
            .map(|i| data.get(i).map_err(|e| e.to_string()))
            .collect::<Result<Vec<_>, _>>()?;
        let batch = batcher.batch(items, device);
        let targets = Targets::new(&batch.labels);
        let ce = token_ce_at(model.logits_at(&batch, &targets.rows()), &targets);
        let delta = reference.delta(&model, &batch, &ce);
        let w_ref = reference.config.weights(&delta);
        let w_seq = sequence.weights(&delta);
        let ce_host: Vec<f32> = ce
            .ce
            .to_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .map_err(|e| format!("{e:?}"))?;
        let cols = delta.first().map_or(0, Vec::len);
        let ids: Vec<i64> = batch
            .input_ids
            .to_data()
            .convert::<i64>()
            .try_to_vec::<i64>()
            .map_err(|e| format!("{e:?}"))?;
        for (row, d_row) in delta.iter().enumerate() {
            for (t, d) in d_row.iter().enumerate() {
                let Some(d) = d else { continue };
                let truth = batch.truth[row].get(t + 1).copied().flatten();
                let token = ids[row * (cols + 1) + t + 1] as u32;
                out.tokens.push(TokenScore {
                    id: batch.ids[row].clone(),
                    token,
                    kind: truth.map_or(WordKind::Template, |x| x.kind),
                    prior: truth.is_some_and(|x| x.prior),
                    delta: *d,
                    weight_reference: w_ref[row][t],
                    weight_sequence: w_seq[row][t],
                    ce: ce_host[row * cols + t],
                });
            }
        }
        bar.inc((end - start) as u64);
        start = end;
    }
    bar.finish_and_clear();
    Ok(out)
}
