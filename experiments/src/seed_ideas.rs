//! The survey's other alignment ideas on the world (DESIGN §6b), each against the plain model
//! from the same start. Built so far: **PLoRA** — stage 2 of `cal_llava`'s recipe from one
//! stage-1 model, three ways (full finetuning of projector + LLM; LoRA on the LLM's linear
//! layers + the projector; PLoRA, the same adapters acting at image tokens only, + the
//! projector), the same steps and data order per seed; held-out grounded-slot accuracy,
//! trainable parameters and step time. The stage-1 model reads the image (its held-out
//! caption accuracy, own images vs swapped, is reported). Seeds move stage 2's data order and
//! the adapters' init; stage 1 is shared.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use burn::module::Module;
use serde::{Deserialize, Serialize};
use vlalign_align::{CalConfig, MleObjective};
use vlalign_models::{Generator, LavitLlava, Llava, PixelHeadConfig, PixelLlava};
use vlalign_train::{LoraConfig, PLoraTraining, TrainConfig, trainable_params};

use crate::cal_eval::{EvalContext, slots_written};
use crate::cal_llava::{CalLlavaConfig, Stage1Base, loss_curve, stage1_base};
use crate::eval::captions::CaptionAccuracy;
use crate::inputs::{Inputs, world_inputs};
use crate::run::RunOptions;
use crate::seed_ideas_lavit::{LavitOutcome, LavitRun, LavitSection, lavit_run, lavit_start};
use crate::seed_ideas_pixel::{PixelOutcome, PixelRun, PixelSection, picture, pixel_run};
use crate::setup::draw_now;

/// How stage 2 tunes the stage-1 model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tuning {
    /// Projector and LLM, every weight (LLaVA's stage 2).
    Full,
    /// LoRA on the LLM's linear layers (every token), the projector trained fully.
    Lora,
    /// PLoRA on the same layers (image tokens only), the projector trained fully.
    Plora,
}

impl Tuning {
    /// `full` / `lora` / `plora`.
    pub fn name(self) -> &'static str {
        match self {
            Tuning::Full => "full",
            Tuning::Lora => "lora",
            Tuning::Plora => "plora",
        }
    }

    /// Parse a `--tunings` entry.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "full" => Ok(Tuning::Full),
            "lora" => Ok(Tuning::Lora),
            "plora" => Ok(Tuning::Plora),
            other => Err(format!("expected full|lora|plora, got {other}")),
        }
    }
}

/// The PLoRA comparison.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PLoraSection {
    /// What is compared.
    pub tunings: Vec<Tuning>,
    /// LoRA's rank, scale and targets (the same as PLoRA's by default).
    pub lora: LoraConfig,
    /// PLoRA's rank, scale, targets; `with_projector` for the projector.
    pub plora: PLoraTraining,
    /// Learning rate of the LoRA and PLoRA runs (the full run takes `base.finetune`'s).
    pub adapter_lr: f64,
}

impl Default for PLoraSection {
    fn default() -> Self {
        let plora = PLoraTraining {
            with_projector: true,
            ..PLoraTraining::default()
        };
        Self {
            tunings: vec![Tuning::Full, Tuning::Lora, Tuning::Plora],
            lora: LoraConfig {
                rank: plora.rank,
                alpha: plora.alpha,
                targets: plora.targets.clone(),
            },
            plora,
            adapter_lr: 2e-3,
        }
    }
}

/// Everything the experiment does; written to the run directory as `config.toml`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SeedIdeasConfig {
    /// `cal_llava`'s recipe: the world, the sizes, stage 1 and stage 2 (`finetune`).
    pub base: CalLlavaConfig,
    /// Start from the `pretrain/` stage of this finished `cal_llava` (or `seed_ideas`) run
    /// instead of training stage 1 (its `config.toml` becomes `base`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base_run: Option<PathBuf>,
    /// PLoRA vs LoRA vs full finetuning.
    pub plora: PLoraSection,
    /// PixelLLM's localisation head on the plain (full) stage 2.
    pub pixel_head: PixelSection,
    /// LaVIT's tokenizer between the vision tower and the projector of the plain stage 2.
    pub lavit: LavitSection,
    /// Stage-2 runs per tuning: data order and adapter init `finetune.seed + k`.
    pub seeds: usize,
}

impl Default for SeedIdeasConfig {
    fn default() -> Self {
        let mut base = CalLlavaConfig::default();
        base.finetune.steps = 400;
        base.finetune.optim.warmup_steps = 20;
        Self {
            base,
            base_run: None,
            plora: PLoraSection::default(),
            pixel_head: PixelSection::default(),
            lavit: LavitSection::default(),
            seeds: 3,
        }
    }
}

impl SeedIdeasConfig {
    /// The CI smoke profile: `cal_llava --quick`'s world, model and steps, two seeds.
    pub fn quick() -> Self {
        Self {
            base: CalLlavaConfig::quick(),
            lavit: LavitSection {
                tokenizer_steps: 16,
                ..LavitSection::default()
            },
            seeds: 2,
            ..Self::default()
        }
    }
}

/// One stage-2 run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PLoraRun {
    /// `full`, `lora` or `plora`.
    pub tuning: Tuning,
    /// Stage 2's seed.
    pub seed: u64,
    /// Held-out grounded-slot accuracy (all slots).
    pub slot_accuracy: f64,
    /// Per slot kind (color, shape, count, …).
    pub slots_by_kind: Vec<(String, f64)>,
    /// Trainable parameters.
    pub trainable_params: usize,
    /// Median optimizer step time, ms.
    pub step_ms: f64,
    /// Stage 2's last training loss.
    pub final_loss: f64,
}

/// Held-out grounded-slot accuracy, overall and per slot kind.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Slots {
    /// All slots.
    pub slot_accuracy: f64,
    /// Per slot kind (color, shape, count, …).
    pub slots_by_kind: Vec<(String, f64)>,
}

impl Slots {
    fn of(scores: &crate::eval::slots::SlotScores) -> Self {
        Self {
            slot_accuracy: scores.overall(),
            slots_by_kind: scores
                .by_kind
                .keys()
                .filter_map(|kind| scores.kind(kind).map(|a| (kind.clone(), a)))
                .collect(),
        }
    }
}

/// What the experiment produced.
pub struct SeedIdeasOutcome {
    /// The stage-1 model's held-out caption accuracy (own images and swapped).
    pub stage1: Vec<(String, CaptionAccuracy)>,
    /// The stage-1 model's own slot accuracy (stage 1 trains on QA too): where stage 2 starts.
    pub stage1_slots: Slots,
    /// Loss curves of every stage.
    pub curves: Vec<Curve>,
    /// The PLoRA comparison.
    pub plora: Vec<PLoraRun>,
    /// The pixel-head runs.
    pub pixel_head: Vec<PixelRun>,
    /// The LaVIT runs.
    pub lavit: Vec<LavitRun>,
    /// Seconds of the whole run.
    pub seconds: f64,
}

/// Run the experiment (module docs) into `opts.out`, `jobs` stage-2 runs at a time.
pub fn run(
    config: &SeedIdeasConfig,
    opts: &RunOptions,
    jobs: usize,
) -> Result<SeedIdeasOutcome, String> {
    let started = Instant::now();
    let inputs = world_inputs(config.base.spec(), opts)?;
    if let Some(dir) = &config.base_run {
        adopt_stage1(dir, &opts.out)?;
    }
    // A finished stage 1 (this run's on --resume, or --base-run's) is loaded, not retrained.
    let stage1_opts = RunOptions {
        resume: opts.resume || config.base_run.is_some(),
        ..opts.clone()
    };
    let base = stage1_base(&config.base, &inputs, &stage1_opts)?;
    let stage1_slots = Slots::of(&slot_scores(
        config,
        &base.model,
        &base,
        &inputs,
        opts,
        &opts.out.join("pretrain"),
    )?);
    eprintln!(
        "stage 1: slot accuracy {:.1} %",
        100.0 * stage1_slots.slot_accuracy
    );
    let mut curves = base.curves.clone();
    let (mut runs, mut pixel_runs, mut lavit_runs) = (Vec::new(), Vec::new(), Vec::new());
    let mut work: Vec<(usize, Job)> = Vec::new();
    for k in 0..config.seeds {
        work.extend(config.plora.tunings.iter().map(|&t| (k, Job::Tune(t))));
        if config.pixel_head.run {
            work.push((k, Job::Pixel));
        }
        if config.lavit.run {
            work.push((k, Job::Lavit));
        }
    }
    for chunk in work.chunks(jobs.max(1)) {
        // Each run's adapters (or head) are drawn here, in a fixed order; the runs of a chunk
        // then train at once (a flex run keeps about one core busy).
        let starts = chunk
            .iter()
            .map(|&(k, job)| start(config, job, k, &base.model, opts))
            .collect::<Result<Vec<_>, String>>()?;
        for result in train_at_once(config, starts, &base, &inputs, opts) {
            match result? {
                Finished::Tuned(run, curve) => {
                    eprintln!(
                        "seed {}: {:<5} slot accuracy {:.1} %, {} trainable parameters, {:.0} ms/step",
                        run.seed,
                        run.tuning.name(),
                        100.0 * run.slot_accuracy,
                        run.trainable_params,
                        run.step_ms
                    );
                    if run.seed == config.base.finetune.seed {
                        curves.push(curve);
                    }
                    runs.push(run);
                }
                Finished::Pixel(outcome) => {
                    let run = outcome.run;
                    eprintln!(
                        "seed {}: pixel head {:.1} px mean centre error ({:.1} px with swapped \
                         images), slot accuracy {:.1} %",
                        run.seed,
                        run.own.all.mean_px,
                        run.swapped.all.mean_px,
                        100.0 * run.slot_accuracy
                    );
                    if run.seed == config.base.finetune.seed {
                        curves.push(outcome.curve);
                        let png = opts.out.join("pixel_head.png");
                        picture(
                            &png,
                            &config.base.world.dir,
                            &inputs.images,
                            &outcome.placed,
                        )?;
                    }
                    pixel_runs.push(run);
                }
                Finished::Lavit(outcome) => {
                    let run = outcome.run;
                    eprintln!(
                        "seed {}: LaVIT keeps {:.1} of {} tokens per image, codebook \
                         perplexity {:.1}, reconstruction error {:.3}, slot accuracy {:.1} %",
                        run.seed,
                        run.kept_per_image,
                        run.patches,
                        run.codebook_perplexity,
                        run.reconstruction_error,
                        100.0 * run.slot_accuracy
                    );
                    if run.seed == config.base.finetune.seed {
                        curves.extend(outcome.curves);
                    }
                    lavit_runs.push(run);
                }
            }
        }
    }
    Ok(SeedIdeasOutcome {
        stage1: base.stage1,
        stage1_slots,
        curves,
        plora: runs,
        pixel_head: pixel_runs,
        lavit: lavit_runs,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// One stage-2 run of the comparison.
#[derive(Clone, Copy, Debug)]
enum Job {
    /// PLoRA / LoRA / full.
    Tune(Tuning),
    /// The plain (full) run with PixelLLM's head.
    Pixel,
    /// The plain (full) run reading LaVIT tokens (after the tokenizer's own training).
    Lavit,
}

/// A stage-2 run's start: its settings and its model, adapters or head drawn.
enum Start {
    Tuned(Tuning, TrainConfig, Llava),
    Pixel(TrainConfig, PixelLlava),
    Lavit(TrainConfig, LavitLlava),
}

/// A finished stage-2 run.
enum Finished {
    Tuned(PLoraRun, Curve),
    Pixel(Box<PixelOutcome>),
    Lavit(Box<LavitOutcome>),
}

/// The start of `job` for the `k`-th seed from the stage-1 model.
fn start(
    config: &SeedIdeasConfig,
    job: Job,
    k: usize,
    stage1: &Llava,
    opts: &RunOptions,
) -> Result<Start, String> {
    Ok(match job {
        Job::Tune(tuning) => {
            let tc = stage2_config(config, tuning, k);
            opts.device.seed(tc.seed);
            let model = draw_now(tuned_start(&config.plora, tuning, stage1)?);
            Start::Tuned(tuning, tc, model)
        }
        Job::Pixel => {
            let tc = stage2_config(config, Tuning::Full, k);
            opts.device.seed(tc.seed);
            let head = PixelHeadConfig::new(stage1.language_model.hidden_size())
                .with_hidden(config.pixel_head.hidden);
            Start::Pixel(tc, draw_now(PixelLlava::new(stage1.clone(), &head)))
        }
        Job::Lavit => {
            let tc = stage2_config(config, Tuning::Full, k);
            opts.device.seed(tc.seed);
            let size = config.base.model.image_size;
            Start::Lavit(tc, draw_now(lavit_start(&config.lavit, stage1, size)))
        }
    })
}

/// Stage 2 of each start at once, one thread each (progress shown only for a single run).
fn train_at_once(
    config: &SeedIdeasConfig,
    starts: Vec<Start>,
    base: &Stage1Base,
    inputs: &Inputs,
    opts: &RunOptions,
) -> Vec<Result<Finished, String>> {
    let quiet = RunOptions {
        verbose: opts.verbose && starts.len() == 1,
        ..opts.clone()
    };
    let quiet = &quiet;
    std::thread::scope(|scope| {
        let handles: Vec<_> = starts
            .into_iter()
            .map(|start| {
                scope.spawn(move || match start {
                    Start::Tuned(tuning, tc, model) => {
                        plora_run(config, tuning, tc, model, base, inputs, quiet)
                            .map(|(run, curve)| Finished::Tuned(run, curve))
                    }
                    Start::Pixel(tc, model) => pixel_slots(config, tc, model, base, inputs, quiet)
                        .map(|o| Finished::Pixel(Box::new(o))),
                    Start::Lavit(tc, model) => lavit_slots(config, tc, model, base, inputs, quiet)
                        .map(|o| Finished::Lavit(Box::new(o))),
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("a run's thread panicked".into()))
            })
            .collect()
    })
}

/// A pixel-head run and its model's held-out slot accuracy.
fn pixel_slots(
    config: &SeedIdeasConfig,
    tc: TrainConfig,
    model: PixelLlava,
    base: &Stage1Base,
    inputs: &Inputs,
    opts: &RunOptions,
) -> Result<PixelOutcome, String> {
    let dir = opts.out.join(format!("seed-{}/pixel", tc.seed));
    let mut outcome = pixel_run(&config.pixel_head, tc, model, base, inputs, opts)?;
    let slots = slot_scores(config, &outcome.model.llava, base, inputs, opts, &dir)?;
    outcome.run.slot_accuracy = slots.overall();
    Ok(outcome)
}

/// A LaVIT run and its model's held-out slot accuracy.
fn lavit_slots(
    config: &SeedIdeasConfig,
    tc: TrainConfig,
    model: LavitLlava,
    base: &Stage1Base,
    inputs: &Inputs,
    opts: &RunOptions,
) -> Result<LavitOutcome, String> {
    let dir = opts.out.join(format!("seed-{}/lavit", tc.seed));
    let world = &config.base.world.dir;
    let mut outcome = lavit_run(&config.lavit, tc, model, base, inputs, world, opts)?;
    let slots = slot_scores(config, &outcome.model, base, inputs, opts, &dir)?;
    outcome.run.slot_accuracy = slots.overall();
    Ok(outcome)
}

/// Stage 2's training settings for `tuning` and the `k`-th seed.
fn stage2_config(config: &SeedIdeasConfig, tuning: Tuning, k: usize) -> TrainConfig {
    let mut tc = config.base.finetune.clone();
    tc.seed += k as u64;
    if tuning != Tuning::Full {
        tc.optim.lr = config.plora.adapter_lr;
    }
    tc
}

/// The model stage 2 tunes: the stage-1 model with `tuning`'s trainable parts.
pub fn tuned_start(section: &PLoraSection, tuning: Tuning, start: &Llava) -> Result<Llava, String> {
    Ok(match tuning {
        Tuning::Full => start.clone(),
        Tuning::Lora => {
            let mut m = section
                .lora
                .apply(start.clone())
                .map_err(|e| e.to_string())?;
            m.multi_modal_projector = m.multi_modal_projector.set_require_grad(true);
            m
        }
        Tuning::Plora => section
            .plora
            .apply(start.clone())
            .map_err(|e| e.to_string())?,
    })
}

/// A labelled loss curve.
type Curve = (String, Vec<(usize, f64)>);

/// Stage 2 of `model` (the stage-1 model with `tuning`'s trainable parts) with `tc`, and its
/// held-out slot accuracy.
fn plora_run(
    config: &SeedIdeasConfig,
    tuning: Tuning,
    tc: TrainConfig,
    model: Llava,
    base: &Stage1Base,
    inputs: &Inputs,
    opts: &RunOptions,
) -> Result<(PLoraRun, Curve), String> {
    let trainable = trainable_params(&model);
    let name = format!("seed-{}/{}", tc.seed, tuning.name());
    eprintln!(
        "{name}: {} steps, {trainable} trainable parameters",
        tc.steps
    );
    let (model, report) = opts.train_stage(
        &inputs.batcher,
        model,
        Arc::new(MleObjective),
        base.data.clone(),
        &tc,
        &name,
    )?;
    let slots = slot_scores(config, &model, base, inputs, opts, &opts.out.join(&name))?;
    let Slots {
        slot_accuracy,
        slots_by_kind,
    } = Slots::of(&slots);
    let run = PLoraRun {
        tuning,
        seed: tc.seed,
        slot_accuracy,
        slots_by_kind,
        trainable_params: trainable,
        step_ms: report.median_step_ms().unwrap_or(0.0),
        final_loss: report.steps.last().map_or(f64::NAN, |s| s.loss),
    };
    let label = format!("finetune-{}", tuning.name());
    Ok((run, (label, loss_curve(&report))))
}

/// Held-out slot accuracy of `model`, its answers written into `dir`.
pub(crate) fn slot_scores(
    config: &SeedIdeasConfig,
    model: &impl Generator,
    base: &Stage1Base,
    inputs: &Inputs,
    opts: &RunOptions,
    dir: &Path,
) -> Result<crate::eval::slots::SlotScores, String> {
    let cal = CalConfig::default();
    let ctx = EvalContext {
        eval: &config.base.eval,
        cal: &cal,
        world_dir: &config.base.world.dir,
        inputs,
        device: &opts.device,
        verbose: opts.verbose,
        world: true,
        val_records: &base.val_records,
        val: base.data.1.clone(),
    };
    slots_written(model, &ctx, dir)?.ok_or_else(|| "no held-out single-turn question".into())
}

/// Copy `base_run/pretrain` (a finished stage 1) into `out/pretrain` unless it is there.
fn adopt_stage1(base_run: &Path, out: &Path) -> Result<(), String> {
    let (from, to) = (base_run.join("pretrain"), out.join("pretrain"));
    if to.exists() {
        return Ok(());
    }
    if !from.join("checkpoints").is_dir() {
        return Err(format!(
            "--base-run: {} has no stage-1 checkpoints",
            from.display()
        ));
    }
    copy_dir(&from, &to)
}

fn copy_dir(from: &Path, to: &Path) -> Result<(), String> {
    let err = |p: &Path, e: std::io::Error| format!("{}: {e}", p.display());
    std::fs::create_dir_all(to).map_err(|e| err(to, e))?;
    for entry in std::fs::read_dir(from).map_err(|e| err(from, e))? {
        let entry = entry.map_err(|e| err(from, e))?;
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target).map_err(|e| err(&target, e))?;
        }
    }
    Ok(())
}
