//! Evaluating a trained LLaVA as `cal_llava` reports it (grounded slots, perplexity, per-token
//! CAL scores, captioning and hallucination), and re-scoring the models of a finished run.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::data::dataset::Dataset;
use burn::module::Module;
use burn::tensor::Device;
use vlalign_align::MleObjective;
use vlalign_data::dataset::prepare;
use vlalign_data::{
    ImageCheck, ImageProcessor, Item, Record, VlmBatcher, VlmDataset, read_records,
};
use vlalign_eval::generation::{GenerationRun, Prediction, generate_split, write_predictions};
use vlalign_models::{GenerationConfig, Llava};
use vlalign_train::Trainee;

use crate::cal_llava::{CalLlavaConfig, Outcome, RunOptions, RunResult, world_inputs};
use crate::hallucination::HallucinationRun;
use crate::setup::Encoders;
use crate::slots::{SlotScores, score, single_turn};
use crate::token_eval::{TokenEval, evaluate_tokens};

/// What evaluating a model needs.
pub struct EvalContext<'a> {
    /// The experiment's configuration (evaluation section, CAL settings, world).
    pub config: &'a CalLlavaConfig,
    /// Encoders.
    pub enc: &'a Encoders,
    /// Image preprocessing.
    pub processor: &'a ImageProcessor,
    /// Image folder.
    pub images: &'a Path,
    /// Batching.
    pub batcher: &'a VlmBatcher,
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

/// Evaluate `model` (slots, perplexity, token scores, hallucination), writing the slot
/// predictions into `dir`. The objective, noise and training fields of the result are left
/// for the caller.
pub fn evaluate_model(
    model: &Llava,
    ctx: &EvalContext<'_>,
    dir: &Path,
) -> Result<(RunResult, TokenEval), String> {
    let config = ctx.config;
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let slots = slot_accuracy(model, ctx)?;
    if let Some((_, predictions)) = &slots {
        write_predictions(&dir.join("predictions.jsonl"), predictions)
            .map_err(|e| e.to_string())?;
    }
    let te = evaluate_tokens(
        model,
        ctx.val.as_ref(),
        ctx.batcher,
        &config.cal,
        ctx.device,
        config.eval.batch_size,
        ctx.verbose,
    )?;
    let slots = slots.map(|s| s.0);
    let hallucination = if ctx.world {
        Some(crate::hallucination::evaluate(
            model,
            &HallucinationRun {
                world: &config.world.dir,
                split: &config.eval.split,
                plain: &ctx.enc.plain,
                chat: &ctx.enc.chat,
                processor: ctx.processor,
                captions: config.eval.captions,
                pope_questions: config.eval.pope_questions,
                batch_size: config.eval.batch_size,
                verbose: ctx.verbose,
                write_to: Some(dir),
            },
        )?)
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

fn slot_accuracy(
    model: &Llava,
    ctx: &EvalContext<'_>,
) -> Result<Option<(SlotScores, Vec<Prediction>)>, String> {
    let (enc, config) = (ctx.enc, ctx.config);
    let questions = single_turn(ctx.val_records);
    if questions.is_empty() {
        return Ok(None);
    }
    let generation = GenerationConfig::new()
        .with_max_new_tokens(config.eval.max_new_tokens)
        .with_stop_tokens(vec![enc.chat.end_of_turn()])
        .with_pad_token_id(enc.chat.tokenizer().token_id("<pad>").unwrap_or(0));
    let (predictions, errors) = generate_split(
        model,
        &questions,
        &GenerationRun {
            encoder: &enc.chat,
            processor: ctx.processor,
            image_folder: ctx.images,
            batch_size: config.eval.batch_size,
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

/// Re-score the trained models of a run directory on `split` (`val` or `test`): every stage
/// directory `{stage}-{objective}-noise{r}` with an intact checkpoint is loaded at its newest
/// checkpoint and evaluated as at the end of training.
pub fn rescore(
    run_dir: &Path,
    split: &str,
    device: &Device,
    verbose: bool,
) -> Result<(CalLlavaConfig, Outcome), String> {
    let path = run_dir.join("config.toml");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut config: CalLlavaConfig =
        toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    if !["val", "test"].contains(&split) {
        return Err(format!("--split: expected val or test, got {split}"));
    }
    config.eval.split = split.into();
    let opts = RunOptions {
        device: device.clone(),
        out: run_dir.to_path_buf(),
        resume: false,
        verbose,
    };
    let inputs = world_inputs(&config, &opts)?;
    let world = config.world.dir.clone();
    let val_records: Vec<Record> = read_records(&world.join(format!("{split}_qa.json")))
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter_map(Result::ok)
        .take(config.eval.records)
        .collect();
    let (samples, _) = prepare(
        val_records.iter().cloned().map(Ok).collect(),
        &inputs.enc.chat,
        &inputs.images,
        ImageCheck::Exists,
    );
    let val: Arc<dyn Dataset<Item>> = Arc::new(VlmDataset::new(samples, inputs.processor.clone()));
    let mut stages: Vec<PathBuf> = std::fs::read_dir(run_dir)
        .map_err(|e| format!("{}: {e}", run_dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("checkpoints").is_dir())
        .collect();
    stages.sort();
    let mut runs = Vec::new();
    let mut tokens = Vec::new();
    let mut curves = Vec::new();
    for dir in stages {
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let steps = vlalign_train::read_csv(&dir.join("metrics.csv")).unwrap_or_default();
        curves.push((
            name.clone(),
            steps.iter().map(|s| (s.step, s.loss)).collect(),
        ));
        let Some((objective, noise)) = parse_stage_name(&name) else {
            continue;
        };
        let (found, problems) =
            vlalign_train::latest_valid(&dir.join("checkpoints")).map_err(|e| e.to_string())?;
        for p in problems {
            eprintln!("{name}: {p}");
        }
        let Some(manifest) = found else { continue };
        let record = {
            use burn::train::checkpoint::Checkpointer;
            vlalign_train::checkpoint::AtomicFileCheckpointer::new(
                &dir.join("checkpoints"),
                "model",
            )
            .restore(manifest.step)
            .map_err(|e| format!("{name}: {e}"))?
        };
        let model = Trainee::new(inputs.init.clone(), Arc::new(MleObjective))
            .load_record(record)
            .model;
        eprintln!("{name}: step {} on {split}", manifest.step);
        let ctx = EvalContext {
            config: &config,
            enc: &inputs.enc,
            processor: &inputs.processor,
            images: &inputs.images,
            batcher: &inputs.batcher,
            device,
            verbose,
            world: true,
            val_records: &val_records,
            val: val.clone(),
        };
        let (mut result, te) = evaluate_model(&model, &ctx, &dir.join(format!("eval-{split}")))?;
        result.objective = objective;
        result.noise = noise;
        let mut ms: Vec<f64> = steps.iter().skip(1).map(|s| s.step_ms).collect();
        ms.sort_by(f64::total_cmp);
        result.step_ms = ms.get(ms.len() / 2).copied().unwrap_or(0.0);
        runs.push(result);
        tokens.push(te);
    }
    if runs.is_empty() {
        return Err(format!(
            "{}: no trained stage-2 model found",
            run_dir.display()
        ));
    }
    Ok((
        config,
        Outcome {
            runs,
            stage1: Vec::new(),
            curves,
            pretrain_step_ms: 0.0,
            tokens,
            tokenizer: inputs.tokenizer,
        },
    ))
}

/// `finetune-cal-noise0.3` → (`cal`, 0.3).
fn parse_stage_name(name: &str) -> Option<(String, f64)> {
    let mut parts = name.splitn(3, '-');
    let _stage = parts.next()?;
    let objective = parts.next()?.to_string();
    let noise = parts.next()?.strip_prefix("noise")?.parse().ok()?;
    Some((objective, noise))
}
