//! SeVa-style DPO on a LLaVA-style model, end to end.
//!
//! ```text
//! cargo run --release -p experiments --bin seva_dpo                   # the default run (CPU)
//! cargo run --release -p experiments --bin seva_dpo -- --quick        # CI smoke run
//! cargo run --release -p experiments --bin seva_dpo -- --base-run runs/cal_llava/default
//! cargo run --release -p experiments --bin seva_dpo -- --model HF_LLAVA --data records.json \
//!     --image-folder DIR                                               # the user's model and data
//! cargo run --release -p experiments --bin seva_dpo -- pairs --model DIR --data records.json \
//!     --image-folder DIR --out pairs.jsonl
//! cargo run --release -p experiments --bin seva_dpo -- score --model DIR --pairs F \
//!     --image-folder DIR --out scores.jsonl
//! ```
//! Trains (or loads) the stage-2 MLE model of the world, makes SeVa pairs from its answers on
//! clean and noised images, scores them with it, trains DPO (full and LoRA) over seeds and
//! evaluates before and after into `runs/seva_dpo/<time>/` (see `seva_report`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand};
use experiments::cal_llava::base_recipe;
use experiments::inputs::RealData;
use experiments::run::{RunArgs, StageKind, exit_code};
use experiments::seva_dpo::{SevaDpoConfig, Variant, run};
use experiments::seva_report;

#[derive(Parser, Debug)]
#[command(about = "SeVa-style DPO: self-generated preference pairs and preference training")]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
    /// Diffusion steps of the rejected images, comma separated (default 500,800).
    #[arg(long, value_delimiter = ',')]
    noise_steps: Option<Vec<usize>>,
    /// What DPO trains: full, lora, image_negative (full + mDPO's image-side negative),
    /// cal_weighted (full, token-weighted by CAL; not Calibrated DPO), comma separated.
    #[arg(long, value_delimiter = ',')]
    variants: Option<Vec<String>>,
    /// DPO steps.
    #[arg(long)]
    steps: Option<usize>,
    /// DPO runs per (variant, noise step).
    #[arg(long)]
    seeds: Option<usize>,
    /// Start from the stage-2 MLE model of this finished `cal_llava` run directory (its
    /// `finetune-mle-noise0/`) instead of training one.
    #[arg(long, conflicts_with = "data")]
    base_run: Option<PathBuf>,
    /// Real data: LLaVA records (JSON array or JSON Lines) whose questions the model answers
    /// (with --model and --image-folder); only the held-out reward accuracy is measured.
    #[arg(long, requires_all = ["model", "image_folder"])]
    data: Option<PathBuf>,
    /// Folder the records' image paths are relative to.
    #[arg(long)]
    image_folder: Option<PathBuf>,
    /// A Hugging Face LLaVA directory (with --data).
    #[arg(long, requires = "data")]
    model: Option<PathBuf>,
    /// `tokenizer.json` (default: the model's).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Chat template: plain, vicuna_v1, chatml.
    #[arg(long, default_value = "vicuna_v1")]
    template: vlalign_data::Template,
    /// Longest sequence with real data (tokens, image slots included; default 2048).
    #[arg(long)]
    max_len: Option<usize>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Score a pairs file with a model: one line per pair `{"id", "logp_chosen",
    /// "logp_rejected"}` (log-probs summed over each answer's supervised tokens).
    Score(experiments::seva_score::ScoreArgs),
    /// Make SeVa pairs with a model from records' questions (clean vs noised image), scored by
    /// that model (the reference), into one JSON Lines file.
    Pairs(experiments::seva_score::PairsArgs),
}

fn resolve(args: &Args) -> Result<SevaDpoConfig, String> {
    let mut c = args
        .run
        .config(SevaDpoConfig::quick, SevaDpoConfig::default)?;
    if let Some(dir) = &args.base_run {
        // Both keep the stage-2 MLE model in `finetune-mle-noise0/`.
        c.base = base_recipe(dir, "seva_dpo", |c: SevaDpoConfig| c.base)?;
        c.base_run = Some(dir.clone());
    }
    if let Some(w) = &args.run.world {
        c.base.world.dir = w.clone();
    }
    if let Some(n) = &args.noise_steps {
        if n.iter().any(|&t| t == 0 || t >= 1000) {
            return Err(format!("--noise-steps: each in 1..999, got {n:?}"));
        }
        c.pairs.noise_steps = n.clone();
    }
    if let Some(v) = &args.variants {
        c.variants = v
            .iter()
            .map(|s| match s.as_str() {
                "full" => Ok(Variant::Full),
                "lora" => Ok(Variant::Lora),
                "image_negative" => Ok(Variant::ImageNegative),
                "cal_weighted" => Ok(Variant::CalWeighted),
                other => Err(format!(
                    "--variants: expected full|lora|image_negative|cal_weighted, got {other}"
                )),
            })
            .collect::<Result<_, _>>()?;
    }
    if let Some(s) = args.steps {
        c.train.steps = s;
    }
    if args.data.is_some() {
        c.base.max_len = args.max_len.unwrap_or(2048);
    }
    if let Some(n) = args.seeds {
        if n == 0 {
            return Err("--seeds: at least 1".into());
        }
        c.seeds = n;
    }
    Ok(c)
}

fn main() -> ExitCode {
    experiments::alloc::keep_freed_memory();
    let args = Args::parse();
    exit_code(match &args.command {
        Some(Command::Score(s)) => experiments::seva_score::score(s, &args.run),
        Some(Command::Pairs(p)) => experiments::seva_score::pairs(p, &args.run),
        None => main_inner(&args),
    })
}

fn main_inner(args: &Args) -> Result<(), String> {
    let config = resolve(args)?;
    let selected = args.run.select_device()?;
    let device_name = format!(
        "{} ({})",
        selected.spec,
        selected.adapter.clone().unwrap_or_default()
    );
    let data_parallel = args.run.devices.as_ref().is_some_and(|d| d.len() > 1);
    if data_parallel && config.variants.contains(&Variant::CalWeighted) {
        // Its live reference stays on the first device while each step's batches run on all.
        return Err(
            "--devices: the cal_weighted variant scores with a live reference on one device; \
             run it on one --device"
                .into(),
        );
    }
    let out = args.run.run_dir("seva_dpo", &config, |_, _| {})?;
    eprintln!("seva_dpo on {device_name}, writing {}", out.display());
    let started = Instant::now();
    let opts = args.run.options(&selected.device, &out)?;
    let real = args.data.as_ref().map(|data| RealData {
        data: data.clone(),
        image_folder: args.image_folder.clone().unwrap_or_default(),
        model: args.model.clone(),
        vision: None,
        llm: None,
        tokenizer: args.tokenizer.clone(),
        template: args.template,
        stage: StageKind::Finetune,
        held_out: 0.0,
    });
    let outcome = run(&config, real.as_ref(), &opts)?;
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    seva_report::write_all(&out, &config, &outcome, &command, &device_name)?;
    seva_report::print_table(&outcome);
    println!(
        "\nwrote {} ({:.0} s)",
        out.join("report.md").display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
