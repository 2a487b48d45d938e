//! CAL vs MLE on a LLaVA-style model, end to end.
//!
//! ```text
//! cargo run --release -p experiments --bin cal_llava                 # the default run (~15 min, CPU)
//! cargo run --release -p experiments --bin cal_llava -- --quick      # CI smoke run (< 1 min)
//! cargo run --release -p experiments --bin cal_llava -- --noise 0,0.1,0.3
//! cargo run --release -p experiments --bin cal_llava -- --config my.toml --out runs/x [--resume]
//! ```
//! Generates the grounded world if absent, trains stage 1 (captions) and stage 2 (QA) with MLE
//! and with CAL, evaluates both and writes `runs/cal_llava/<time>/` (see `cal_report`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use experiments::cal_eval::Outcome;
use experiments::cal_llava::{CalLlavaConfig, run};
use experiments::inputs::RealData;
use experiments::run::{RunArgs, exit_code};
use experiments::run::{RunOptions, StageKind};
use experiments::{cal_report, seeds};
use vlalign_align::{Contrast, Pooling};

#[derive(Parser, Debug)]
#[command(about = "Train a LLaVA-style model with and without CAL and compare them")]
struct Args {
    #[command(flatten)]
    run: RunArgs,
    /// Label-noise levels, comma separated (share of training records whose answers are swapped
    /// between images), e.g. `0,0.1,0.3`.
    #[arg(long, value_delimiter = ',')]
    noise: Option<Vec<f64>>,
    /// Steps of stage 1 and stage 2 (overrides the config).
    #[arg(long)]
    steps: Option<usize>,
    /// CAL pooling: reference | per_sequence.
    #[arg(long)]
    pooling: Option<String>,
    /// CAL contrast: drop | blur:SIGMA.
    #[arg(long)]
    contrast: Option<String>,
    /// Stages where CAL is on: pretrain,finetune.
    #[arg(long, value_delimiter = ',')]
    cal_stages: Option<Vec<String>>,
    /// Real data: LLaVA records (JSON array or JSON Lines) instead of the world.
    #[arg(long, requires = "image_folder")]
    data: Option<PathBuf>,
    /// Folder the records' image paths are relative to.
    #[arg(long)]
    image_folder: Option<PathBuf>,
    /// A Hugging Face LLaVA directory (with --data).
    #[arg(long, conflicts_with_all = ["vision", "llm"])]
    model: Option<PathBuf>,
    /// A CLIP vision directory (with --llm; the projector starts fresh).
    #[arg(long, requires = "llm")]
    vision: Option<PathBuf>,
    /// A LLaMA/Qwen2 directory (with --vision).
    #[arg(long, requires = "vision")]
    llm: Option<PathBuf>,
    /// `tokenizer.json` (default: the model's or the LLM's).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Chat template for the finetune stage: plain, vicuna_v1, chatml.
    #[arg(long, default_value = "vicuna_v1")]
    template: vlalign_data::Template,
    /// Stage to run on real data: pretrain (projector only) or finetune (projector + LLM).
    #[arg(long, default_value = "finetune")]
    stage: String,
    /// Start the image tower from a `CLIPVisionModel` directory, e.g. `clip_pretrain`'s
    /// `runs/clip_pretrain/<run>/vision` (world runs; the tower's sizes must match `[model]`).
    #[arg(long, conflicts_with = "data")]
    vision_init: Option<PathBuf>,
    /// Run the comparison over N seeds (model init and data order), each in `seed-<s>/`, and
    /// report mean ± 95 % intervals and paired CAL − MLE differences.
    #[arg(long)]
    seeds: Option<usize>,
}

fn resolve(args: &Args) -> Result<CalLlavaConfig, String> {
    let mut c = args
        .run
        .config(CalLlavaConfig::quick, CalLlavaConfig::default)?;
    if let Some(n) = &args.noise {
        if n.iter().any(|r| !(0.0..=1.0).contains(r)) {
            return Err(format!("--noise: every level must be in [0, 1], got {n:?}"));
        }
        c.noise = n.clone();
    }
    if let Some(s) = args.steps {
        c.pretrain.steps = s;
        c.finetune.steps = s;
    }
    if let Some(p) = &args.pooling {
        c.cal.pooling = match p.as_str() {
            "reference" => Pooling::Reference,
            "per_sequence" => Pooling::PerSequence,
            other => {
                return Err(format!(
                    "--pooling: expected reference|per_sequence, got {other}"
                ));
            }
        };
    }
    if let Some(x) = &args.contrast {
        c.cal.contrast = match x.split_once(':') {
            None if x == "drop" => Contrast::Drop,
            Some(("blur", s)) => Contrast::Blur {
                sigma: s
                    .parse()
                    .map_err(|_| format!("--contrast: bad sigma `{s}`"))?,
            },
            _ => return Err(format!("--contrast: expected drop | blur:SIGMA, got {x}")),
        };
    }
    if let Some(stages) = &args.cal_stages {
        c.cal_stages = stages
            .iter()
            .map(|s| match s.as_str() {
                "pretrain" => Ok(StageKind::Pretrain),
                "finetune" => Ok(StageKind::Finetune),
                other => Err(format!(
                    "--cal-stages: expected pretrain|finetune, got {other}"
                )),
            })
            .collect::<Result<_, _>>()?;
    }
    if let Some(w) = &args.run.world {
        c.world.dir = w.clone();
    }
    if let Some(dir) = &args.vision_init {
        c.vision_init = Some(dir.clone());
    }
    if let Some(n) = args.seeds {
        if n == 0 {
            return Err("--seeds: at least 1".into());
        }
        c.seeds = n;
    }
    Ok(c)
}

/// Run the experiment once, or once per seed into `seed-<s>/` with the aggregate report on top.
fn run_seeds(
    config: &CalLlavaConfig,
    real: Option<&RealData>,
    opts: &RunOptions,
    command: &str,
    device: &str,
) -> Result<Vec<(u64, Outcome)>, String> {
    if config.seeds <= 1 {
        let outcome = run(config, real, opts)?;
        cal_report::write_all(&opts.out, config, &outcome, command, device)?;
        return Ok(vec![(config.seed, outcome)]);
    }
    let mut outcomes = Vec::new();
    for k in 0..config.seeds {
        let c = seeds::seeded(config, k);
        let dir = opts.out.join(format!("seed-{}", c.seed));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        eprintln!("== seed {} ({}/{})", c.seed, k + 1, config.seeds);
        let seed_opts = RunOptions {
            out: dir.clone(),
            ..opts.clone()
        };
        let outcome = run(&c, real, &seed_opts)?;
        cal_report::write_all(&dir, &c, &outcome, command, device)?;
        outcomes.push((c.seed, outcome));
    }
    let mut md = format!(
        "# cal_llava over {} seeds\n\n`{command}` on {device}.\n\n",
        config.seeds
    );
    md.push_str(&seeds::markdown(&outcomes));
    md.push_str("\nEach seed's full report: ");
    let links: Vec<String> = outcomes
        .iter()
        .map(|(s, _)| format!("[seed {s}](seed-{s}/report.md)"))
        .collect();
    md.push_str(&links.join(", "));
    md.push('\n');
    let write = |name: &str, text: String| {
        let path = opts.out.join(name);
        std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))
    };
    write("report.md", md)?;
    write(
        "summary.json",
        serde_json::to_string_pretty(&seeds::summary(config, &outcomes)).expect("json"),
    )?;
    Ok(outcomes)
}

fn main() -> ExitCode {
    experiments::alloc::keep_freed_memory();
    exit_code(main_inner(&Args::parse()))
}

fn main_inner(args: &Args) -> Result<(), String> {
    let config = resolve(args)?;
    let selected = args.run.select_device()?;
    let device_name = format!(
        "{} ({})",
        selected.spec,
        selected.adapter.clone().unwrap_or_default()
    );
    let real = match &args.data {
        None => None,
        Some(data) => Some(RealData {
            data: data.clone(),
            image_folder: args.image_folder.clone().unwrap_or_default(),
            model: args.model.clone(),
            vision: args.vision.clone(),
            llm: args.llm.clone(),
            tokenizer: args.tokenizer.clone(),
            template: args.template,
            stage: match args.stage.as_str() {
                "pretrain" => StageKind::Pretrain,
                "finetune" => StageKind::Finetune,
                other => return Err(format!("--stage: expected pretrain|finetune, got {other}")),
            },
            held_out: 0.05,
        }),
    };
    let out = args.run.run_dir("cal_llava", &config, |before, now| {
        // Stages are named by objective and noise level, so a resumed run may add levels.
        before.noise = now.noise.clone();
    })?;
    eprintln!("cal_llava on {device_name}, writing {}", out.display());
    let started = Instant::now();
    let opts = args.run.options(&selected.device, &out)?;
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let outcomes = run_seeds(&config, real.as_ref(), &opts, &command, &device_name)?;
    println!();
    println!(
        "{:<5} {:<10} {:>6} {:>10} {:>11} {:>10} {:>9}",
        "seed", "objective", "noise", "slot acc %", "perplexity", "CAL AUROC", "step ms"
    );
    for (seed, outcome) in &outcomes {
        for r in &outcome.runs {
            println!(
                "{:<5} {:<10} {:>6} {:>10} {:>11.3} {:>10} {:>9.1}",
                seed,
                r.objective,
                r.noise,
                r.slot_accuracy
                    .map_or("–".into(), |a| format!("{:.1}", 100.0 * a)),
                r.perplexity,
                r.cal_weight_auroc.map_or("–".into(), |a| format!("{a:.3}")),
                r.step_ms
            );
        }
    }
    println!(
        "\nwrote {} ({:.0} s)",
        out.join("report.md").display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
