//! The CAL experiment: a LLaVA trained from scratch on the grounded world, stage 1 (captions,
//! `plain` template) then stage 2 (questions/answers) with MLE and with CAL from the same
//! stage-1 model, the same data order and the same number of steps, at each label-noise level;
//! then grounded-slot accuracy, perplexity and the AUROC of CAL's token weights for grounded vs
//! template tokens on the held-out split.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::data::dataset::Dataset;
use burn::module::Module;
use serde::{Deserialize, Serialize};
use vlalign_align::{CalConfig, CalObjective, MleObjective, Objective};
use vlalign_data::{Encoder, Item, Record};
use vlalign_eval::generation::write_predictions;
use vlalign_models::Llava;
use vlalign_train::{TrainConfig, TrainReport};

use crate::cal_eval::{EvalContext, Outcome, RunResult, evaluate_model};
use crate::eval::captions::{self, CaptionAccuracy};
use crate::eval::token_eval::TokenEval;
use crate::inputs::{Inputs, ModelSpec, RealData, inputs_for, read_valid};
use crate::run::{EvalSection, RunOptions, StageKind, WorldSection};
use crate::setup::{ModelSize, add_label_noise};

/// Everything the experiment does; written to the run directory as `config.toml`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CalLlavaConfig {
    /// Model and run seed.
    pub seed: u64,
    /// Longest sequence (tokens, image slots included).
    pub max_len: usize,
    /// The world.
    pub world: WorldSection,
    /// Model sizes.
    pub model: ModelSize,
    /// Stage 1.
    pub pretrain: TrainConfig,
    /// Stage 2.
    pub finetune: TrainConfig,
    /// CAL's settings.
    pub cal: CalConfig,
    /// Stages where CAL replaces MLE in the CAL runs.
    pub cal_stages: Vec<StageKind>,
    /// Train the vision tower in stage 2 too (LLaVA freezes it after stage 1).
    pub finetune_vision: bool,
    /// Stage 1 trains on the (clean) QA records too, shuffled with the captions: a decoder
    /// trained from scratch has no retrieval circuits ("what color is *the square*?" needs
    /// attention by content), and stage 1's long high-learning-rate phase is where they form.
    pub pretrain_qa: bool,
    /// Start the image tower from this `CLIPVisionModel` directory (e.g. `clip_pretrain`'s
    /// `vision/`) instead of random weights.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vision_init: Option<PathBuf>,
    /// Label-noise levels (share of training records whose answers are swapped between images).
    pub noise: Vec<f64>,
    /// Evaluation.
    pub eval: EvalSection,
    /// Seeds of the comparison (model init and data order: `seed`, `seed + 1`, …), each in
    /// `seed-<s>/`, reported as mean ± 95 % interval and paired CAL − MLE differences.
    pub seeds: usize,
}

impl Default for CalLlavaConfig {
    fn default() -> Self {
        let stage = |steps: usize, lr: f64, batch_size: usize| {
            let mut c = TrainConfig {
                steps,
                batch_size,
                checkpoint_every: 100,
                ..TrainConfig::default()
            };
            c.optim.lr = lr;
            c.optim.warmup_steps = steps / 20;
            c
        };
        Self {
            seed: 0,
            max_len: 256,
            world: WorldSection::default(),
            model: ModelSize::default(),
            pretrain: stage(2000, 2e-3, 32),
            finetune: stage(600, 2e-3, 24),
            cal: CalConfig::default(),
            cal_stages: vec![StageKind::Finetune],
            finetune_vision: false,
            pretrain_qa: true,
            vision_init: None,
            noise: vec![0.0],
            eval: EvalSection::default(),
            seeds: 1,
        }
    }
}

impl CalLlavaConfig {
    /// What the model and its inputs are built from.
    pub fn spec(&self) -> ModelSpec<'_> {
        ModelSpec {
            seed: self.seed,
            max_len: self.max_len,
            world: &self.world,
            model: &self.model,
            vision_init: self.vision_init.as_deref(),
        }
    }

    /// The CI smoke profile: a small world, a smaller model, a few steps.
    pub fn quick() -> Self {
        let mut c = Self::default();
        c.world.dir = PathBuf::from("data/world-quick");
        c.world.images = 200;
        c.world.vocab = 400;
        c.model.image_size = 32;
        c.model.width = 64;
        for (stage, steps) in [(&mut c.pretrain, 16), (&mut c.finetune, 12)] {
            stage.steps = steps;
            stage.batch_size = 8;
            stage.checkpoint_every = 6;
            stage.optim.warmup_steps = 2;
        }
        c.noise = vec![0.0];
        c.eval.records = 12;
        c.eval.html_samples = 3;
        c.eval.captions = 8;
        c.eval.pope_questions = 8;
        c
    }
}

/// Train and evaluate; see the module docs. `real` replaces the world with the user's data.
pub fn run(
    config: &CalLlavaConfig,
    real: Option<&RealData>,
    opts: &RunOptions,
) -> Result<Outcome, String> {
    let inputs = inputs_for(config.spec(), real, opts)?;
    let objectives = Objectives {
        mle: Arc::new(MleObjective),
        cal: Arc::new(CalObjective {
            config: config.cal.clone(),
        }),
    };
    let mut log = StageLog::default();
    // Stage 1 on the world (one starting model per objective when CAL is on in pretraining),
    // or the user's model and records.
    let plan = match real {
        None => world_stage1(config, &inputs, &objectives, opts, &mut log)?,
        Some(r) => real_plan(config, r, &inputs)?,
    };
    // Stage 2: MLE and CAL from the same start, data order and steps, at each noise level.
    let (runs, tokens) = stage2(
        config,
        real.is_none(),
        &plan,
        &inputs,
        &objectives,
        opts,
        &mut log,
    )?;
    Ok(Outcome {
        runs,
        stage1: log.stage1,
        curves: log.curves,
        pretrain_step_ms: plan.pretrain_step_ms,
        tokens,
        tokenizer: inputs.tokenizer,
    })
}

/// The stage-2 MLE model of the world at noise 0 — stage 1 as [`run`] trains it, then stage 2
/// with MLE, in the same stage directories (`pretrain`, `finetune-mle-noise0`), so a finished
/// stage is reused on resume — and the stage-1 model's held-out caption accuracy (the check
/// that it reads the image). What experiments that start from a trained model build on.
pub struct MleBase {
    /// The stage-2 model.
    pub model: Llava,
    /// Stage 1's caption accuracy (own images and swapped).
    pub stage1: Vec<(String, CaptionAccuracy)>,
    /// Both stages' losses.
    pub curves: Vec<(String, Vec<(usize, f64)>)>,
}

/// Train [`MleBase`] on the world of `config` (CAL settings are ignored).
pub fn mle_base(
    config: &CalLlavaConfig,
    inputs: &Inputs,
    opts: &RunOptions,
) -> Result<MleBase, String> {
    let Stage1Base {
        model,
        stage1,
        mut curves,
        data,
        val_records: _,
    } = stage1_base(config, inputs, opts)?;
    let name = "finetune-mle-noise0";
    eprintln!("{name}: {} steps", config.finetune.steps);
    let (model, report) = opts.train_stage(
        &inputs.batcher,
        model,
        Arc::new(MleObjective),
        data,
        &config.finetune,
        name,
    )?;
    curves.push((name.into(), loss_curve(&report)));
    Ok(MleBase {
        model,
        stage1,
        curves,
    })
}

/// The `cal_llava` recipe of the finished run in `dir` (`--base-run`): its `config.toml` as a
/// `cal_llava` configuration, or the `base` of experiment `other`'s configuration `C`.
pub fn base_recipe<C: serde::de::DeserializeOwned>(
    dir: &Path,
    other: &str,
    base_of: impl Fn(C) -> CalLlavaConfig,
) -> Result<CalLlavaConfig, String> {
    let path = dir.join("config.toml");
    crate::run::read_config(&path).or_else(|cal_err| {
        crate::run::read_config::<C>(&path)
            .map(base_of)
            .map_err(|_| format!("--base-run: not a cal_llava or {other} run ({cal_err})"))
    })
}

/// The stage-1 model of `cal_llava`'s recipe (in the run's `pretrain/`, reused on resume) and
/// what stage 2 trains on: the world's training QA (no label noise) and held-out QA.
pub struct Stage1Base {
    /// The stage-1 model, its vision tower frozen unless `finetune_vision`.
    pub model: Llava,
    /// Its held-out caption accuracy (own images and swapped).
    pub stage1: Vec<(String, CaptionAccuracy)>,
    /// Stage 1's losses.
    pub curves: Vec<(String, Vec<(usize, f64)>)>,
    /// Stage 2's training and validation data.
    pub data: (Arc<dyn Dataset<Item>>, Arc<dyn Dataset<Item>>),
    /// The held-out QA records (at most `eval.records`).
    pub val_records: Vec<Record>,
}

/// Train (or, on resume, load) [`Stage1Base`] on the world of `config` (CAL is off).
pub fn stage1_base(
    config: &CalLlavaConfig,
    inputs: &Inputs,
    opts: &RunOptions,
) -> Result<Stage1Base, String> {
    let mut c = config.clone();
    c.cal_stages.clear();
    let objectives = Objectives {
        mle: Arc::new(MleObjective),
        cal: Arc::new(MleObjective),
    };
    let mut log = StageLog::default();
    let plan = world_stage1(&c, inputs, &objectives, opts, &mut log)?;
    let data = mixed(inputs, vec![(plan.train.clone(), plan.encoder)]);
    let val = mixed(inputs, vec![(plan.val.clone(), plan.encoder)]);
    let mut model = plan.starts[0].clone();
    if !config.finetune_vision {
        model.vision_tower = model.vision_tower.no_grad();
    }
    Ok(Stage1Base {
        model,
        stage1: log.stage1,
        curves: log.curves,
        data: (data, val),
        val_records: plan.val,
    })
}

/// The objectives compared.
struct Objectives {
    mle: Arc<dyn Objective<Llava>>,
    cal: Arc<dyn Objective<Llava>>,
}

/// What the stages leave for the report: loss curves and stage-1 caption accuracy.
#[derive(Default)]
struct StageLog {
    curves: Vec<(String, Vec<(usize, f64)>)>,
    stage1: Vec<(String, CaptionAccuracy)>,
}

/// What stage 2 starts from.
struct Stage2Plan<'a> {
    /// One starting model per objective (`mle`, `cal`), or one shared.
    starts: Vec<Llava>,
    config: &'a TrainConfig,
    name: &'static str,
    encoder: &'a Encoder,
    train: Vec<Record>,
    /// Held-out records (at most `eval.records`).
    val: Vec<Record>,
    pretrain_step_ms: f64,
}

/// One dataset from record sets, each encoded with its template.
fn mixed(inputs: &Inputs, parts: Vec<(Vec<Record>, &Encoder)>) -> Arc<dyn Dataset<Item>> {
    Arc::new(inputs.dataset(parts))
}

/// Stage 1 on the world's captions (and QA records with `pretrain_qa`), each stage-1 model's
/// held-out caption accuracy, and what stage 2 trains on.
fn world_stage1<'a>(
    config: &'a CalLlavaConfig,
    inputs: &'a Inputs,
    objectives: &Objectives,
    opts: &RunOptions,
    log: &mut StageLog,
) -> Result<Stage2Plan<'a>, String> {
    let (world, enc) = (&config.world.dir, &inputs.enc);
    let mut parts = vec![(read_valid(&world.join("train_captions.json"))?, &enc.plain)];
    if config.pretrain_qa {
        parts.push((read_valid(&world.join("train_qa.json"))?, &enc.chat));
    }
    let captions = mixed(inputs, parts);
    let captions_val = mixed(
        inputs,
        vec![(read_valid(&world.join("val_captions.json"))?, &enc.plain)],
    );
    let held_out = |kind: &str, n: usize| -> Result<Vec<Record>, String> {
        let path = world.join(format!("{}_{kind}.json", config.eval.split));
        Ok(read_valid(&path)?.into_iter().take(n).collect())
    };
    let cal_pretrain = config.cal_stages.contains(&StageKind::Pretrain);
    let stages = if cal_pretrain {
        vec![
            (objectives.mle.clone(), "pretrain-mle"),
            (objectives.cal.clone(), "pretrain-cal"),
        ]
    } else {
        vec![(objectives.mle.clone(), "pretrain")]
    };
    let (mut starts, mut step_ms) = (Vec::new(), 0.0);
    for (objective, name) in stages {
        eprintln!(
            "stage 1 ({name}): {} steps on captions{}",
            config.pretrain.steps,
            if config.pretrain_qa { " and QA" } else { "" }
        );
        let (m, report) = opts.train_stage(
            &inputs.batcher,
            inputs.init.clone(),
            objective,
            (captions.clone(), captions_val.clone()),
            &config.pretrain,
            name,
        )?;
        log.curves.push((name.to_string(), loss_curve(&report)));
        step_ms = report.median_step_ms().unwrap_or(0.0);
        let run = captions::CaptionRun {
            encoder: &enc.plain,
            processor: &inputs.processor,
            image_folder: &inputs.images,
            batch_size: config.eval.batch_size,
            verbose: opts.verbose,
        };
        let records = held_out("captions", config.eval.captions)?;
        let acc = stage1_captions(&m, &records, &run, &opts.out.join(name), name)?;
        log.stage1.push((name.to_string(), acc));
        starts.push(m);
    }
    Ok(Stage2Plan {
        starts,
        config: &config.finetune,
        name: "finetune",
        encoder: &enc.chat,
        train: read_valid(&world.join("train_qa.json"))?,
        val: held_out("qa", config.eval.records)?,
        pretrain_step_ms: step_ms,
    })
}

/// The user's records: a share held out, the stage `--stage` says (pretraining trains only
/// the projector, as LLaVA's stage 1).
fn real_plan<'a>(
    config: &'a CalLlavaConfig,
    r: &RealData,
    inputs: &'a Inputs,
) -> Result<Stage2Plan<'a>, String> {
    let mut records = read_valid(&r.data)?;
    let held = ((records.len() as f64) * r.held_out).ceil() as usize;
    let held = held.clamp(1, records.len().saturating_sub(1).max(1));
    let mut val = records.split_off(records.len() - held);
    val.truncate(config.eval.records);
    let (tc, name, encoder) = match r.stage {
        StageKind::Pretrain => (&config.pretrain, "pretrain", &inputs.enc.plain),
        StageKind::Finetune => (&config.finetune, "finetune", &inputs.enc.chat),
    };
    let mut m = inputs.init.clone();
    if r.stage == StageKind::Pretrain {
        m.language_model = m.language_model.no_grad();
    }
    Ok(Stage2Plan {
        starts: vec![m],
        config: tc,
        name,
        encoder,
        train: records,
        val,
        pretrain_step_ms: 0.0,
    })
}

/// Train MLE and CAL from the plan's start(s) at each noise level and evaluate each model.
fn stage2(
    config: &CalLlavaConfig,
    world: bool,
    plan: &Stage2Plan<'_>,
    inputs: &Inputs,
    objectives: &Objectives,
    opts: &RunOptions,
    log: &mut StageLog,
) -> Result<(Vec<RunResult>, Vec<TokenEval>), String> {
    let cal_here = if plan.name == "pretrain" {
        config.cal_stages.contains(&StageKind::Pretrain)
    } else {
        config.cal_stages.contains(&StageKind::Finetune)
    };
    let val = mixed(inputs, vec![(plan.val.clone(), plan.encoder)]);
    let (mut runs, mut tokens) = (Vec::new(), Vec::new());
    for &noise in &config.noise {
        let mut records = plan.train.clone();
        let changed = add_label_noise(&mut records, noise, config.seed);
        let data = mixed(inputs, vec![(records, plan.encoder)]);
        for (k, obj) in ["mle", "cal"].into_iter().enumerate() {
            let objective = match (obj, cal_here) {
                ("cal", true) => objectives.cal.clone(),
                _ => objectives.mle.clone(),
            };
            let mut model = plan.starts[k.min(plan.starts.len() - 1)].clone();
            // The vision tower stays frozen after stage 1 (LLaVA) unless configured otherwise.
            if !config.finetune_vision {
                model.vision_tower = model.vision_tower.no_grad();
            }
            let name = format!("{}-{obj}-noise{noise}", plan.name);
            eprintln!(
                "{name}: {} steps ({changed} records with swapped images)",
                plan.config.steps
            );
            let (model, report) = opts.train_stage(
                &inputs.batcher,
                model,
                objective,
                (data.clone(), val.clone()),
                plan.config,
                &name,
            )?;
            log.curves.push((name.clone(), loss_curve(&report)));
            let ctx = EvalContext {
                eval: &config.eval,
                cal: &config.cal,
                world_dir: &config.world.dir,
                inputs,
                device: &opts.device,
                verbose: opts.verbose,
                world,
                val_records: &plan.val,
                val: val.clone(),
            };
            let (mut result, te) = evaluate_model(&model, &ctx, &opts.out.join(&name))?;
            result.objective = obj.into();
            result.noise = noise;
            result.step_ms = report.median_step_ms().unwrap_or(0.0);
            result.valid_loss = report.valid_loss;
            runs.push(result);
            tokens.push(te);
        }
    }
    Ok((runs, tokens))
}

/// Caption accuracy of a stage-1 model on held-out `records` (own images and swapped), with
/// the generated captions written into `dir`: does the model read the image?
pub fn stage1_captions(
    model: &impl vlalign_models::Generator,
    records: &[Record],
    run: &captions::CaptionRun<'_>,
    dir: &Path,
    name: &str,
) -> Result<CaptionAccuracy, String> {
    let (acc, [own, swapped]) = captions::evaluate(model, records, run)?;
    for (file, p) in [
        ("captions.jsonl", &own),
        ("captions_swapped.jsonl", &swapped),
    ] {
        write_predictions(&dir.join(file), p).map_err(|e| e.to_string())?;
    }
    let a = &acc.caption_accuracy;
    let b = &acc.blind_caption_accuracy;
    eprintln!(
        "{name}: held-out caption accuracy {:.1} % (count {:.1}, size {:.1}, color {:.1}, shape {:.1}, position {:.1}); images swapped {:.1} %",
        100.0 * a.all,
        100.0 * a.count,
        100.0 * a.size,
        100.0 * a.color,
        100.0 * a.shape,
        100.0 * a.position,
        100.0 * b.all
    );
    Ok(acc)
}

pub(crate) fn loss_curve(report: &TrainReport) -> Vec<(usize, f64)> {
    report.steps.iter().map(|s| (s.step, s.loss)).collect()
}
