//! Re-scoring the trained models of a finished `cal_llava` run on another split (`evaluate
//! --run`), as they were scored at the end of training.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::data::dataset::Dataset;
use burn::module::Module;
use burn::tensor::Device;
use vlalign_align::MleObjective;
use vlalign_data::dataset::prepare;
use vlalign_data::{ImageCheck, Item, Record, VlmDataset, read_records};
use vlalign_train::Trainee;

use crate::cal_eval::{EvalContext, Outcome, evaluate_model};
use crate::cal_llava::CalLlavaConfig;
use crate::inputs::world_inputs;
use crate::run::RunOptions;

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
    let inputs = world_inputs(config.spec(), &opts)?;
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
