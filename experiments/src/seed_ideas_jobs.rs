//! `seed_ideas`' stage-2 runs: what each job starts from, the runs of a chunk trained at
//! once, and their results collected into the outcome.

use std::path::Path;
use std::sync::Arc;

use burn::module::Module;
use vlalign_align::{CalConfig, MleObjective};
use vlalign_models::{Generator, LavitLlava, Llava, PixelHeadConfig, PixelLlava};
use vlalign_train::{TrainConfig, trainable_params};

use crate::cal_eval::{EvalContext, slots_written};
use crate::cal_llava::{Stage1Base, loss_curve};
use crate::inputs::Inputs;
use crate::run::RunOptions;
use crate::seed_ideas::{PLoraRun, PLoraSection, SeedIdeasConfig, SeedIdeasOutcome, Slots, Tuning};
use crate::seed_ideas_lavit::{LavitOutcome, lavit_run, lavit_start};
use crate::seed_ideas_pixel::{PixelOutcome, picture, pixel_run};
use crate::setup::draw_now;

/// Every stage-2 run of `config`, seed by seed.
pub(crate) fn work(config: &SeedIdeasConfig) -> Vec<(usize, Job)> {
    let mut work = Vec::new();
    for k in 0..config.seeds {
        work.extend(config.plora.tunings.iter().map(|&t| (k, Job::Tune(t))));
        if config.pixel_head.run {
            work.push((k, Job::Pixel));
        }
        if config.lavit.run {
            work.push((k, Job::Lavit));
        }
    }
    work
}

impl SeedIdeasOutcome {
    /// Log `finished` and add it (the first seed's curves and picture too).
    pub(crate) fn add(
        &mut self,
        finished: Finished,
        config: &SeedIdeasConfig,
        inputs: &Inputs,
        opts: &RunOptions,
    ) -> Result<(), String> {
        let first = |seed: u64| seed == config.base.finetune.seed;
        match finished {
            Finished::Tuned(run, curve) => {
                eprintln!(
                    "seed {}: {:<5} slot accuracy {:.1} %, {} trainable parameters, {:.0} ms/step",
                    run.seed,
                    run.tuning.name(),
                    100.0 * run.slot_accuracy,
                    run.trainable_params,
                    run.step_ms
                );
                if first(run.seed) {
                    self.curves.push(curve);
                }
                self.plora.push(run);
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
                if first(run.seed) {
                    self.curves.push(outcome.curve);
                    let png = opts.out.join("pixel_head.png");
                    picture(
                        &png,
                        &config.base.world.dir,
                        &inputs.images,
                        &outcome.placed,
                    )?;
                }
                self.pixel_head.push(run);
            }
            Finished::Lavit(outcome) => {
                let run = outcome.run;
                eprintln!(
                    "seed {}: LaVIT keeps {:.1} of {} tokens per image, codebook perplexity \
                     {:.1}, reconstruction error {:.3}, slot accuracy {:.1} %",
                    run.seed,
                    run.kept_per_image,
                    run.patches,
                    run.codebook_perplexity,
                    run.reconstruction_error,
                    100.0 * run.slot_accuracy
                );
                if first(run.seed) {
                    self.curves.extend(outcome.curves);
                }
                self.lavit.push(run);
            }
        }
        Ok(())
    }
}

/// One stage-2 run of the comparison.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Job {
    /// PLoRA / LoRA / full.
    Tune(Tuning),
    /// The plain (full) run with PixelLLM's head.
    Pixel,
    /// The plain (full) run reading LaVIT tokens (after the tokenizer's own training).
    Lavit,
}

/// A stage-2 run's start: its settings and its model, adapters or head drawn.
pub(crate) enum Start {
    Tuned(Tuning, TrainConfig, Box<Llava>),
    Pixel(TrainConfig, Box<PixelLlava>),
    Lavit(TrainConfig, Box<LavitLlava>),
}

/// A finished stage-2 run.
pub(crate) enum Finished {
    Tuned(PLoraRun, Curve),
    Pixel(Box<PixelOutcome>),
    Lavit(Box<LavitOutcome>),
}

/// The start of `job` for the `k`-th seed from the stage-1 model.
pub(crate) fn start(
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
            Start::Tuned(tuning, tc, Box::new(model))
        }
        Job::Pixel => {
            let tc = stage2_config(config, Tuning::Full, k);
            opts.device.seed(tc.seed);
            let head = PixelHeadConfig::new(stage1.language_model.hidden_size())
                .with_hidden(config.pixel_head.hidden);
            Start::Pixel(
                tc,
                Box::new(draw_now(PixelLlava::new(stage1.clone(), &head))),
            )
        }
        Job::Lavit => {
            let tc = stage2_config(config, Tuning::Full, k);
            opts.device.seed(tc.seed);
            let size = config.base.model.image_size;
            Start::Lavit(
                tc,
                Box::new(draw_now(lavit_start(&config.lavit, stage1, size))),
            )
        }
    })
}

/// Stage 2 of each start at once, one thread each (progress shown only for a single run).
pub(crate) fn train_at_once(
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
                        plora_run(config, tuning, tc, *model, base, inputs, quiet)
                            .map(|(run, curve)| Finished::Tuned(run, curve))
                    }
                    Start::Pixel(tc, model) => pixel_slots(config, tc, *model, base, inputs, quiet)
                        .map(|o| Finished::Pixel(Box::new(o))),
                    Start::Lavit(tc, model) => lavit_slots(config, tc, *model, base, inputs, quiet)
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
pub(crate) fn stage2_config(config: &SeedIdeasConfig, tuning: Tuning, k: usize) -> TrainConfig {
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
pub(crate) type Curve = (String, Vec<(usize, f64)>);

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
