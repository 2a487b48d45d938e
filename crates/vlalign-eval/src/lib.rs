//! Evaluation. Captioning metrics that reproduce `pycocoevalcap` (the implementation papers quote)
//! number for number: [`tokenize`] (its PTB tokenization for plain English), [`bleu`] (BLEU-1..4,
//! closest-reference brevity penalty), [`rouge`] (ROUGE-L, β = 1.2), [`cider`] (CIDEr-D: σ = 6,
//! n = 1..4, corpus document frequencies, clipping, ×10).
//!
//! [`generation`] runs a model over a split and writes `{id, prompt, output, reference}` JSON
//! Lines. Hallucination and grounding: [`pope`] (yes/no existence questions), [`chair`] (CHAIR_i /
//! CHAIR_s), [`grounding`] (AUROC and average precision of per-token scores); [`stats`]: means
//! with 95 % intervals over seeds.
//!
//! Every caption scorer takes already tokenized text (space-separated tokens), as the reference's scorers
//! do after its tokenizer ran; [`score_captions`] does both.

pub mod bleu;
pub mod chair;
pub mod cider;
pub mod generation;
pub mod grounding;
pub mod pope;
pub mod rouge;
pub mod stats;
pub mod tokenize;

use std::collections::BTreeMap;

/// Scores of one candidate.
#[derive(Clone, Debug, PartialEq)]
pub struct SampleScores {
    /// BLEU-1..4 of this sample alone.
    pub bleu: [f64; 4],
    /// ROUGE-L.
    pub rouge_l: f64,
    /// CIDEr-D.
    pub cider: f64,
}

/// Corpus scores and per-sample scores.
#[derive(Clone, Debug, PartialEq)]
pub struct CaptionScores {
    /// Corpus BLEU-1..4.
    pub bleu: [f64; 4],
    /// Mean ROUGE-L.
    pub rouge_l: f64,
    /// Mean CIDEr-D.
    pub cider: f64,
    /// Per id.
    pub per_sample: BTreeMap<String, SampleScores>,
}

/// Tokenize and score candidates (`id → caption`) against references (`id → [captions]`).
/// Ids present in only one of the maps are ignored.
pub fn score_captions(
    candidates: &BTreeMap<String, String>,
    references: &BTreeMap<String, Vec<String>>,
) -> CaptionScores {
    let ids: Vec<&String> = candidates
        .keys()
        .filter(|k| references.contains_key(*k))
        .collect();
    let cand: Vec<String> = ids.iter().map(|k| tokenize::ptb(&candidates[*k])).collect();
    let refs: Vec<Vec<String>> = ids
        .iter()
        .map(|k| references[*k].iter().map(|r| tokenize::ptb(r)).collect())
        .collect();
    let (bleu, bleu_per) = bleu::bleu(&cand, &refs);
    let rouge_per: Vec<f64> = cand
        .iter()
        .zip(&refs)
        .map(|(c, r)| rouge::rouge_l(c, r))
        .collect();
    let cider_per = cider::cider_d(&cand, &refs);
    let mean = |v: &[f64]| {
        if v.is_empty() {
            0.0
        } else {
            v.iter().sum::<f64>() / v.len() as f64
        }
    };
    let per_sample = ids
        .iter()
        .enumerate()
        .map(|(i, k)| {
            (
                (*k).clone(),
                SampleScores {
                    bleu: bleu_per[i],
                    rouge_l: rouge_per[i],
                    cider: cider_per[i],
                },
            )
        })
        .collect();
    CaptionScores {
        bleu,
        rouge_l: mean(&rouge_per),
        cider: mean(&cider_per),
        per_sample,
    }
}
