//! Re-scoring the trained models of a finished `cal_llava` run on another split (`evaluate
//! --run`), as they were scored at the end of training.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::data::dataset::Dataset;
use burn::module::Module;
use burn::tensor::Device;
use vlalign_align::MleObjective;
use vlalign_data::{Item, Record, VlmDataset};
use vlalign_models::Llava;
use vlalign_train::Trainee;

use crate::cal_eval::{EvalContext, Outcome, evaluate_model};
use crate::cal_llava::CalLlavaConfig;
use crate::inputs::{Inputs, read_valid, world_inputs};
use crate::run::{RunOptions, read_config};

/// Re-score the trained models of a run directory on `split` (`val` or `test`): every stage
/// directory `{stage}-{objective}-noise{r}` with an intact checkpoint is loaded at its newest
/// checkpoint and evaluated as at the end of training.
pub fn rescore(
    run_dir: &Path,
    split: &str,
    device: &Device,
    verbose: bool,
) -> Result<(CalLlavaConfig, Outcome), String> {
    let mut config: CalLlavaConfig = read_config(&run_dir.join("config.toml"))?;
    if !["val", "test"].contains(&split) {
        return Err(format!("--split: expected val or test, got {split}"));
    }
    config.eval.split = split.into();
    let opts = RunOptions {
        device: device.clone(),
        out: run_dir.to_path_buf(),
        resume: false,
        verbose,
        devices: Vec::new(),
    };
    let inputs = world_inputs(config.spec(), &opts)?;
    let (val_records, val) = held_out_qa(&config, &inputs)?;
    let val: Arc<dyn Dataset<Item>> = Arc::new(val);
    let (mut runs, mut tokens, mut curves) = (Vec::new(), Vec::new(), Vec::new());
    for dir in stage_dirs(run_dir)? {
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
        let Some((model, step)) = load_stage(&dir, &name, &inputs)? else {
            continue;
        };
        eprintln!("{name}: step {step} on {split}");
        let ctx = EvalContext {
            eval: &config.eval,
            cal: &config.cal,
            world_dir: &config.world.dir,
            inputs: &inputs,
            device,
            verbose,
            world: true,
            val_records: &val_records,
            val: val.clone(),
        };
        let (mut result, te) = evaluate_model(&model, &ctx, &dir.join(format!("eval-{split}")))?;
        result.objective = objective;
        result.noise = noise;
        let log = vlalign_train::TrainReport {
            steps,
            ..Default::default()
        };
        result.step_ms = log.median_step_ms().unwrap_or(0.0);
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

/// The first `eval.records` QA records of the configured split, and the same as a dataset.
fn held_out_qa(
    config: &CalLlavaConfig,
    inputs: &Inputs,
) -> Result<(Vec<Record>, VlmDataset), String> {
    let path = config
        .world
        .dir
        .join(format!("{}_qa.json", config.eval.split));
    let records: Vec<Record> = read_valid(&path)?
        .into_iter()
        .take(config.eval.records)
        .collect();
    let val = inputs.dataset(vec![(records.clone(), &inputs.enc.chat)]);
    Ok((records, val))
}

/// The stage directories of a run (those with `checkpoints/`), sorted.
fn stage_dirs(run_dir: &Path) -> Result<Vec<PathBuf>, String> {
    let mut stages: Vec<PathBuf> = std::fs::read_dir(run_dir)
        .map_err(|e| format!("{}: {e}", run_dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("checkpoints").is_dir())
        .collect();
    stages.sort();
    Ok(stages)
}

/// The model of a stage directory at its newest intact checkpoint (`None` when it has none;
/// damaged checkpoints are named on stderr).
pub fn load_stage(
    dir: &Path,
    name: &str,
    inputs: &Inputs,
) -> Result<Option<(Llava, usize)>, String> {
    use burn::train::checkpoint::Checkpointer;
    let checkpoints = dir.join("checkpoints");
    let (found, problems) = vlalign_train::latest_valid(&checkpoints).map_err(|e| e.to_string())?;
    for p in problems {
        eprintln!("{name}: {p}");
    }
    let Some(manifest) = found else {
        return Ok(None);
    };
    let record = vlalign_train::checkpoint::AtomicFileCheckpointer::new(&checkpoints, "model")
        .restore(manifest.step)
        .map_err(|e| format!("{name}: {e}"))?;
    let model = Trainee::new(inputs.init.clone(), Arc::new(MleObjective))
        .load_record(record)
        .model;
    Ok(Some((model, manifest.step)))
}

/// `finetune-cal-noise0.3` → (`cal`, 0.3).
fn parse_stage_name(name: &str) -> Option<(String, f64)> {
    let mut parts = name.splitn(3, '-');
    let _stage = parts.next()?;
    let objective = parts.next()?.to_string();
    let noise = parts.next()?.strip_prefix("noise")?.parse().ok()?;
    Some((objective, noise))
}
