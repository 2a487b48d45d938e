//! VIG: score the instruction data by visual information gain and train on the selection.
//!
//! ```text
//! cargo run --release -p experiments --bin vig_select                # default (≤ 20 min, CPU)
//! cargo run --release -p experiments --bin vig_select -- --quick     # CI smoke run
//! cargo run --release -p experiments --bin vig_select -- --percents 30,50,70,100 --sigma 6
//! ```
//! Stage 1 on captions, VIG scoring (scores written next to the dataset as
//! `train_qa.vig.jsonl`), stage 2 at each p and at p = 70 with CAL; writes
//! `runs/vig_select/<time>/` with `report.md`, `summary.json`, `vig_by_kind.png`,
//! `blurred.png`, `tokens.html` and `loss.png`. With `--data … --image-folder … --model DIR`
//! (or `--vision`/`--llm`) the loaded model scores the user's records (scores written next to
//! them as `<data>.vig.jsonl`) and stage 2 runs on their selections.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use experiments::inputs::RealData;
use experiments::run::{RunArgs, StageKind, exit_code};
use experiments::vig_report;
use experiments::vig_seeds::run_seeds;
use experiments::vig_select::{VigSelectConfig, run};

#[derive(Parser, Debug)]
#[command(about = "Select instruction data by visual information gain (VIG) and compare")]
struct Args {
    #[command(flatten)]
    run: RunArgs,
    /// Selection levels p, comma separated (100 = all data, plain MLE).
    #[arg(long, value_delimiter = ',')]
    percents: Option<Vec<f64>>,
    /// Blur σ in pixels of the model input.
    #[arg(long)]
    sigma: Option<f32>,
    /// Steps of stage 1 and stage 2.
    #[arg(long)]
    steps: Option<usize>,
    /// Weight of the supervised tokens a selection drops inside kept samples (0: the paper's
    /// rule, context only; default 0.2).
    #[arg(long)]
    floor: Option<f32>,
    /// Run the whole experiment over this many seeds (model init and data order) and report
    /// mean ± 95 % intervals and paired differences to MLE.
    #[arg(long)]
    seeds: Option<usize>,
    /// Real data: LLaVA records to score and select (instead of the world).
    #[arg(long, requires = "image_folder")]
    data: Option<PathBuf>,
    /// Folder the records' image paths are relative to.
    #[arg(long)]
    image_folder: Option<PathBuf>,
    /// A Hugging Face LLaVA directory (after projector pretraining: VIG scores with it).
    #[arg(long, conflicts_with_all = ["vision", "llm"])]
    model: Option<PathBuf>,
    /// A CLIP vision directory (with --llm).
    #[arg(long, requires = "llm")]
    vision: Option<PathBuf>,
    /// A LLaMA/Qwen2 directory (with --vision).
    #[arg(long, requires = "vision")]
    llm: Option<PathBuf>,
    /// `tokenizer.json` (default: the model's or the LLM's).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Chat template: plain, vicuna_v1, chatml.
    #[arg(long, default_value = "vicuna_v1")]
    template: vlalign_data::Template,
}

fn main() -> ExitCode {
    experiments::alloc::keep_freed_memory();
    exit_code(main_inner(&Args::parse()))
}

/// The configuration with the command line's overrides.
fn resolve(args: &Args) -> Result<VigSelectConfig, String> {
    let mut config = args
        .run
        .config(VigSelectConfig::quick, VigSelectConfig::default)?;
    if let Some(p) = &args.percents {
        if p.iter().any(|p| !(*p > 0.0 && *p <= 100.0)) {
            return Err(format!("--percents: each must be in (0, 100], got {p:?}"));
        }
        config.vig.percents = p.clone();
    }
    if let Some(s) = args.sigma {
        config.vig.sigma = s;
    }
    if let Some(f) = args.floor {
        if !(0.0..=1.0).contains(&f) {
            return Err(format!("--floor: in [0, 1], got {f}"));
        }
        config.vig.floor = f;
    }
    if let Some(n) = args.seeds {
        if n == 0 {
            return Err("--seeds: at least 1".into());
        }
        config.seeds = n;
    }
    if let Some(s) = args.steps {
        config.common.pretrain.steps = s;
        config.common.finetune.steps = s;
    }
    if let Some(w) = &args.run.world {
        config.common.world.dir = w.clone();
    }
    Ok(config)
}

fn main_inner(args: &Args) -> Result<(), String> {
    let config = resolve(args)?;
    let selected = args.run.select_device()?;
    let device_name = format!(
        "{} ({})",
        selected.spec,
        selected.adapter.clone().unwrap_or_default()
    );
    let out = args.run.run_dir("vig_select", &config, |_, _| {})?;
    eprintln!("vig_select on {device_name}, writing {}", out.display());
    let started = Instant::now();
    let real = args.data.as_ref().map(|data| RealData {
        data: data.clone(),
        image_folder: args.image_folder.clone().unwrap_or_default(),
        model: args.model.clone(),
        vision: args.vision.clone(),
        llm: args.llm.clone(),
        tokenizer: args.tokenizer.clone(),
        template: args.template,
        stage: StageKind::Finetune,
        held_out: 0.05,
    });
    let opts = args.run.options(&selected.device, &out)?;
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    if config.seeds > 1 {
        run_seeds(&config, real.as_ref(), &opts, &command, &device_name)?;
        println!(
            "wrote {} ({:.0} s)",
            out.join("report.md").display(),
            started.elapsed().as_secs_f64()
        );
        return Ok(());
    }
    let outcome = run(&config, real.as_ref(), &opts)?;
    vig_report::write_all(&out, &config, &outcome, &command, &device_name)?;
    vig_report::print_table(&outcome);
    println!(
        "VIG token AUROC {}; scoring {:.1} samples/s\nwrote {} ({:.0} s)",
        outcome
            .vig_token_auroc
            .map_or("–".into(), |a| format!("{a:.3}")),
        outcome.scoring_samples_per_s,
        out.join("report.md").display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
