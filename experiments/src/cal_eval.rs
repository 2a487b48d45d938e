//! Evaluating a trained LLaVA as `cal_llava` reports it (grounded slots, perplexity, per-token
//! CAL scores, captioning and hallucination), and re-scoring the models of a finished run.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::data::dataset::Dataset;
use burn::tensor::Device;
use serde::{Deserialize, Serialize};
use vlalign_align::CalConfig;
use vlalign_data::TextTokenizer;
use vlalign_data::{Item, Record};
use vlalign_eval::generation::{GenerationRun, Prediction, generate_split, write_predictions};
use vlalign_models::{GenerationConfig, Generator, Llava};

use crate::eval::captions::CaptionAccuracy;
use crate::eval::hallucination::{HallucinationRun, HallucinationScores};
use crate::eval::slots::{SlotScores, score, single_turn};
use crate::eval::token_eval::{TokenEval, evaluate_tokens};
use crate::inputs::Inputs;
use crate::run::EvalSection;

/// What evaluating a model needs.
pub struct EvalContext<'a> {
    /// How to evaluate.
    pub eval: &'a EvalSection,
    /// CAL's settings (its per-token scores are reported for every model).
    pub cal: &'a CalConfig,
    /// The world folder (captions, POPE files).
    pub world_dir: &'a Path,
    /// Encoders, image preprocessing and folder, batching.
    pub inputs: &'a Inputs,
    /// Device (without autodiff).
    pub device: &'a Device,
    /// Progress bars.
    pub verbose: bool,
    /// The world's captions and POPE files are there.
    pub world: bool,
    /// Held-out records (slots).
    pub val_records: &'a [Record],
    /// The same as a dataset (perplexity, token scores).
    pub val: Arc<dyn Dataset<Item>>,
}

/// One trained model's results.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunResult {
    /// `mle` or `cal`.
    pub objective: String,
    /// Label noise.
    pub noise: f64,
    /// Grounded-slot accuracy over all slots (`None` without grounding truth).
    pub slot_accuracy: Option<f64>,
    /// Slot accuracy per kind.
    pub slot_accuracy_by_kind: std::collections::BTreeMap<String, f64>,
    /// Perplexity of the held-out answers.
    pub perplexity: f64,
    /// Median stage-2 step time, ms.
    pub step_ms: f64,
    /// AUROC of the CAL weight (reference pooling) for grounded vs template tokens.
    pub cal_weight_auroc: Option<f64>,
    /// The same with per-sequence pooling.
    pub cal_weight_auroc_per_sequence: Option<f64>,
    /// AUROC of the raw Δ.
    pub delta_auroc: Option<f64>,
    /// Mean CAL weight per word kind.
    pub weight_by_kind: std::collections::BTreeMap<String, f64>,
    /// Final validation loss of stage 2.
    pub valid_loss: Option<f64>,
    /// Captioning and hallucination metrics (world only).
    pub hallucination: Option<HallucinationScores>,
    /// Stage directory.
    pub dir: PathBuf,
}

/// What the whole experiment produced.
pub struct Outcome {
    /// One entry per (noise, objective).
    pub runs: Vec<RunResult>,
    /// Caption accuracy of each stage-1 model, own images and swapped (world only).
    pub stage1: Vec<(String, CaptionAccuracy)>,
    /// Stage-1 step log and each stage-2 log, for the loss plot: (label, (step, loss)).
    pub curves: Vec<(String, Vec<(usize, f64)>)>,
    /// Stage-1 median step time, ms.
    pub pretrain_step_ms: f64,
    /// Token scores of each run (same order as `runs`), for the HTML view.
    pub tokens: Vec<TokenEval>,
    /// The tokenizer (to draw tokens).
    pub tokenizer: TextTokenizer,
}

/// Evaluate `model` (slots, perplexity, token scores, hallucination), writing the slot
/// predictions into `dir`. The objective, noise and training fields of the result are left
/// for the caller.
pub fn evaluate_model(
    model: &Llava,
    ctx: &EvalContext<'_>,
    dir: &Path,
) -> Result<(RunResult, TokenEval), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let slots = slots_written(model, ctx, dir)?;
    let te = evaluate_tokens(
        model,
        ctx.val.as_ref(),
        &ctx.inputs.batcher,
        ctx.cal,
        ctx.device,
        ctx.eval.batch_size,
        ctx.verbose,
    )?;
    let hallucination = if ctx.world {
        Some(hallucination(model, ctx, dir)?)
    } else {
        None
    };
    let result = RunResult {
        objective: String::new(),
        noise: 0.0,
        slot_accuracy: slots.as_ref().map(SlotScores::overall),
        slot_accuracy_by_kind: slots
            .as_ref()
            .map(|s| {
                s.by_kind
                    .keys()
                    .filter_map(|k| s.kind(k).map(|a| (k.clone(), a)))
                    .collect()
            })
            .unwrap_or_default(),
        perplexity: te.perplexity(),
        step_ms: 0.0,
        cal_weight_auroc: te.auroc(|t| t.weight_reference),
        cal_weight_auroc_per_sequence: te.auroc(|t| t.weight_sequence),
        delta_auroc: te.auroc(|t| t.delta),
        weight_by_kind: te
            .mean_by_kind(|t| t.weight_reference)
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
        valid_loss: None,
        hallucination,
        dir: dir.to_path_buf(),
    };
    Ok((result, te))
}

/// Grounded-slot accuracy of `model` (as [`slot_accuracy`]), its predictions written to
/// `dir/predictions.jsonl`.
pub fn slots_written(
    model: &impl Generator,
    ctx: &EvalContext<'_>,
    dir: &Path,
) -> Result<Option<SlotScores>, String> {
    let slots = slot_accuracy(model, ctx)?;
    if let Some((_, predictions)) = &slots {
        write_predictions(&dir.join("predictions.jsonl"), predictions)
            .map_err(|e| e.to_string())?;
    }
    Ok(slots.map(|s| s.0))
}

/// Captioning and hallucination metrics of `model` on the world's held-out split, the
/// captions and POPE answers written into `dir`.
pub fn hallucination(
    model: &Llava,
    ctx: &EvalContext<'_>,
    dir: &Path,
) -> Result<HallucinationScores, String> {
    crate::eval::hallucination::evaluate(
        model,
        &HallucinationRun {
            world: ctx.world_dir,
            split: &ctx.eval.split,
            plain: &ctx.inputs.enc.plain,
            chat: &ctx.inputs.enc.chat,
            processor: &ctx.inputs.processor,
            captions: ctx.eval.captions,
            pope_questions: ctx.eval.pope_questions,
            batch_size: ctx.eval.batch_size,
            verbose: ctx.verbose,
            write_to: Some(dir),
        },
    )
}

/// Grounded-slot accuracy of `model` on the held-out records' single-turn questions, with the
/// predictions (`None` when no record has grounding truth).
pub fn slot_accuracy(
    model: &impl Generator,
    ctx: &EvalContext<'_>,
) -> Result<Option<(SlotScores, Vec<Prediction>)>, String> {
    let enc = &ctx.inputs.enc;
    let questions = single_turn(ctx.val_records);
    if questions.is_empty() {
        return Ok(None);
    }
    let generation = GenerationConfig::new()
        .with_max_new_tokens(ctx.eval.max_new_tokens)
        .with_stop_tokens(vec![enc.chat.end_of_turn()])
        .with_pad_token_id(enc.chat.tokenizer().token_id("<pad>").unwrap_or(0));
    let (predictions, errors) = generate_split(
        model,
        &questions,
        &GenerationRun {
            encoder: &enc.chat,
            processor: &ctx.inputs.processor,
            image_folder: &ctx.inputs.images,
            batch_size: ctx.eval.batch_size,
            config: &generation,
            show_progress: ctx.verbose,
        },
    );
    if let Some(e) = errors.first() {
        return Err(format!(
            "generation: {} bad records, first: {e}",
            errors.len()
        ));
    }
    Ok(Some((score(&questions, &predictions), predictions)))
}
