//! Captioning and hallucination metrics of a trained model on the world's held-out split:
//! CIDEr-D / BLEU-4 of generated captions, CHAIR against the shapes truly in each image, and
//! POPE (random / popular / adversarial) on yes/no existence questions.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::{Deserialize, Serialize};
use vlalign_data::{Encoder, ImageProcessor, Record};
use vlalign_eval::chair::{ChairScores, ObjectVocab, chair};
use vlalign_eval::generation::{GenerationRun, Prediction, generate_split, write_predictions};
use vlalign_eval::pope::{PopeScores, pope, read_questions};
use vlalign_eval::{CaptionScores, score_captions};
use vlalign_models::{GenerationConfig, Llava};

/// The scores of one model.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct HallucinationScores {
    /// CIDEr-D of the generated captions (pycocoevalcap scale).
    pub cider: f64,
    /// BLEU-4.
    pub bleu4: f64,
    /// CHAIR_i: hallucinated shape mentions / shape mentions.
    pub chair_i: f64,
    /// CHAIR_s: captions with a hallucinated shape / captions.
    pub chair_s: f64,
    /// POPE F1 per split (`random`, `popular`, `adversarial`).
    pub pope_f1: BTreeMap<String, f64>,
    /// POPE accuracy per split.
    #[serde(default)]
    pub pope_accuracy: BTreeMap<String, f64>,
    /// POPE yes-ratio per split.
    pub pope_yes_ratio: BTreeMap<String, f64>,
}

/// How much to evaluate and with what.
pub struct HallucinationRun<'a> {
    /// The world folder (`{split}_captions.json`, `pope_*_{split}.jsonl`, `images/`).
    pub world: &'a Path,
    /// `val` or `test`.
    pub split: &'a str,
    /// `plain` encoder (captions).
    pub plain: &'a Encoder,
    /// Chat encoder (POPE questions).
    pub chat: &'a Encoder,
    /// Image preprocessing.
    pub processor: &'a ImageProcessor,
    /// Captions scored.
    pub captions: usize,
    /// Questions per POPE split.
    pub pope_questions: usize,
    /// Generation batch.
    pub batch_size: usize,
    /// Show progress bars.
    pub verbose: bool,
    /// Write the generated captions and POPE answers here (`captions.jsonl`, `pope_*.jsonl`).
    pub write_to: Option<&'a Path>,
}

fn generation(encoder: &Encoder, max_new_tokens: usize) -> GenerationConfig {
    GenerationConfig::new()
        .with_max_new_tokens(max_new_tokens)
        .with_stop_tokens(vec![encoder.end_of_turn()])
        .with_pad_token_id(encoder.tokenizer().token_id("<pad>").unwrap_or(0))
}

/// Score `model`; see the module docs.
pub fn evaluate(model: &Llava, run: &HallucinationRun<'_>) -> Result<HallucinationScores, String> {
    let (captions, chair_scores) = caption_scores(model, run)?;
    let mut out = HallucinationScores {
        cider: captions.cider,
        bleu4: captions.bleu[3],
        chair_i: chair_scores.chair_i,
        chair_s: chair_scores.chair_s,
        ..HallucinationScores::default()
    };
    for split in ["random", "popular", "adversarial"] {
        let scores = pope_split(model, run, split)?;
        out.pope_f1.insert(split.into(), scores.f1);
        out.pope_accuracy.insert(split.into(), scores.accuracy);
        out.pope_yes_ratio.insert(split.into(), scores.yes_ratio);
    }
    Ok(out)
}

/// Greedy `records` with `encoder` (bounded by `max_new_tokens`), written to `file` in the run's
/// directory when it has one; `what` names the set in an error.
fn generate(
    model: &Llava,
    run: &HallucinationRun<'_>,
    records: &[Record],
    encoder: &Encoder,
    max_new_tokens: usize,
    (what, file): (&str, &str),
) -> Result<Vec<Prediction>, String> {
    let config = generation(encoder, max_new_tokens);
    let (predictions, errors) = generate_split(
        model,
        records,
        &GenerationRun {
            encoder,
            processor: run.processor,
            image_folder: &run.world.join("images"),
            batch_size: run.batch_size,
            config: &config,
            show_progress: run.verbose,
        },
    );
    if let Some(e) = errors.first() {
        return Err(format!("{what}: {e}"));
    }
    if let Some(dir) = run.write_to {
        write_predictions(&dir.join(file), &predictions).map_err(|e| e.to_string())?;
    }
    Ok(predictions)
}

/// CIDEr-D / BLEU and CHAIR of greedy held-out captions.
fn caption_scores(
    model: &Llava,
    run: &HallucinationRun<'_>,
) -> Result<(CaptionScores, ChairScores), String> {
    let records: Vec<Record> =
        vlalign_data::read_records(&run.world.join(format!("{}_captions.json", run.split)))
            .map_err(|e| e.to_string())?
            .into_iter()
            .filter_map(Result::ok)
            .take(run.captions)
            .collect();
    let predictions = generate(
        model,
        run,
        &records,
        run.plain,
        48,
        ("captions", "captions.jsonl"),
    )?;
    let candidates: BTreeMap<String, String> = predictions
        .iter()
        .map(|p| (p.id.clone(), p.output.clone()))
        .collect();
    let references: BTreeMap<String, Vec<String>> = predictions
        .iter()
        .map(|p| (p.id.clone(), vec![p.reference.clone()]))
        .collect();
    let captions = score_captions(&candidates, &references);
    // The shapes truly present: the shape words of the reference caption (it names every object).
    let truth: BTreeMap<&str, BTreeSet<String>> = records
        .iter()
        .map(|r| {
            let text = r.turns.get(1).map_or("", |t| t.value.as_str());
            let shapes = r
                .truth
                .iter()
                .filter(|s| s.kind == "shape")
                .filter_map(|s| text.get(s.start..s.end))
                .map(|w| w.trim_end_matches('s').to_lowercase())
                .collect();
            (r.id.as_str(), shapes)
        })
        .collect();
    let empty = BTreeSet::new();
    let chair_scores = chair(
        &ObjectVocab::shapes(),
        predictions.iter().map(|p| {
            (
                p.output.as_str(),
                truth.get(p.id.as_str()).unwrap_or(&empty),
            )
        }),
    );
    Ok((captions, chair_scores))
}

/// POPE on one split of the world's existence questions.
fn pope_split(
    model: &Llava,
    run: &HallucinationRun<'_>,
    split: &str,
) -> Result<PopeScores, String> {
    let path = run.world.join(format!("pope_{split}_{}.jsonl", run.split));
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let questions = read_questions(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let questions: Vec<_> = questions.into_iter().take(run.pope_questions).collect();
    let records: Vec<Record> = questions
        .iter()
        .enumerate()
        .map(|(i, q)| {
            Record::question_answer(format!("pope-{split}-{i}"), &q.image, &q.text, &q.label)
        })
        .collect();
    let file = format!("pope_{split}.jsonl");
    let what = format!("POPE {split}");
    let predictions = generate(model, run, &records, run.chat, 4, (&what, &file))?;
    Ok(pope(
        predictions
            .iter()
            .zip(&questions)
            .map(|(p, q)| (p.output.as_str(), q.label == "yes")),
    ))
}
