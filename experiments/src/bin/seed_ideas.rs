//! The survey's other alignment ideas on the world, against the plain model: PLoRA vs LoRA vs
//! full finetuning in stage 2, a PixelLLM localisation head, a LaVIT visual tokenizer.
//!
//! ```text
//! cargo run --release -p experiments --bin seed_ideas                  # default (CPU)
//! cargo run --release -p experiments --bin seed_ideas -- --quick       # CI smoke run
//! cargo run --release -p experiments --bin seed_ideas -- --base-run runs/cal_llava/default
//! ```
//! Trains (or takes `--base-run`'s) stage-1 model of `cal_llava`'s recipe, then stage 2 per
//! seed and tuning, and writes `runs/seed_ideas/<time>/`: `report.md`, `summary.json`
//! (`{"plora", "pixel_head", "lavit"}`, each with `runs`, `aggregate`, `differences`),
//! `loss.png`, `pixel_head.png`, `pretrain/` and `seed-<s>/<run>/` (metrics, checkpoints,
//! `predictions.jsonl`; runs `full`, `lora`, `plora`, `pixel`, `lavit-tokenizer`, `lavit`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use experiments::cal_llava::{CalLlavaConfig, base_recipe};
use experiments::run::{RunArgs, exit_code};
use experiments::seed_ideas::{SeedIdeasConfig, Tuning, run};
use experiments::seed_ideas_report::{markdown, write_all};

#[derive(Parser, Debug)]
#[command(
    about = "The survey's other alignment ideas (PLoRA, PixelLLM, LaVIT) against the plain model"
)]
struct Args {
    #[command(flatten)]
    run: RunArgs,
    /// Stage-2 runs per tuning (data order and adapter init).
    #[arg(long)]
    seeds: Option<usize>,
    /// Stage-2 steps (overrides the config).
    #[arg(long)]
    steps: Option<usize>,
    /// Which ideas run: plora, pixel_head, lavit (comma separated; default all). The PLoRA
    /// comparison's `full` run is the plain baseline of the other two.
    #[arg(long, value_delimiter = ',')]
    ideas: Option<Vec<String>>,
    /// What stage 2 compares: full, lora, plora (comma separated).
    #[arg(long, value_delimiter = ',')]
    tunings: Option<Vec<String>>,
    /// Adapter rank of LoRA and PLoRA.
    #[arg(long)]
    rank: Option<usize>,
    /// Start from the stage-1 model (`pretrain/`) of this finished `cal_llava` or `seed_ideas`
    /// run instead of training one (its configuration becomes the base recipe).
    #[arg(long)]
    base_run: Option<PathBuf>,
    /// Learning rate of the plain (`full`) stage 2, the baseline of every idea (the adapters
    /// take `plora.adapter_lr`).
    #[arg(long)]
    lr: Option<f64>,
    /// Stage-2 runs trained at once (each keeps about one core busy on flex).
    #[arg(long, default_value_t = 2)]
    jobs: usize,
}

fn resolve(args: &Args) -> Result<SeedIdeasConfig, String> {
    let mut c = args
        .run
        .config(SeedIdeasConfig::quick, SeedIdeasConfig::default)?;
    if let Some(dir) = &args.base_run {
        let base = base_recipe(dir, "seed_ideas", |c: SeedIdeasConfig| c.base)?;
        // Stage 1 and the world come from the base run; stage 2 stays this run's.
        c.base = CalLlavaConfig {
            finetune: c.base.finetune,
            eval: c.base.eval,
            ..base
        };
        c.base_run = Some(dir.clone());
    }
    if let Some(w) = &args.run.world {
        c.base.world.dir = w.clone();
    }
    if let Some(n) = args.seeds {
        if n == 0 {
            return Err("--seeds: at least 1".into());
        }
        c.seeds = n;
    }
    if let Some(s) = args.steps {
        c.base.finetune.steps = s;
    }
    if let Some(lr) = args.lr {
        if !(lr > 0.0 && lr.is_finite()) {
            return Err(format!("--lr: a positive learning rate, got {lr}"));
        }
        c.base.finetune.optim.lr = lr;
    }
    if let Some(t) = &args.tunings {
        c.plora.tunings = t
            .iter()
            .map(|s| Tuning::parse(s).map_err(|e| format!("--tunings: {e}")))
            .collect::<Result<_, _>>()?;
    }
    if let Some(ideas) = &args.ideas {
        for idea in ideas {
            if !["plora", "pixel_head", "lavit"].contains(&idea.as_str()) {
                return Err(format!(
                    "--ideas: expected plora|pixel_head|lavit, got {idea}"
                ));
            }
        }
        let on = |name: &str| ideas.iter().any(|i| i == name);
        if !on("plora") {
            c.plora.tunings.clear();
        }
        c.pixel_head.run = on("pixel_head");
        c.lavit.run = on("lavit");
    }
    if let Some(r) = args.rank {
        if r == 0 {
            return Err("--rank: at least 1".into());
        }
        c.plora.lora.rank = r;
        c.plora.plora.rank = r;
    }
    Ok(c)
}

fn main() -> ExitCode {
    experiments::alloc::keep_freed_memory();
    exit_code(main_inner(&Args::parse()))
}

fn main_inner(args: &Args) -> Result<(), String> {
    let config = resolve(args)?;
    let selected = args.run.select_device()?;
    let out = args.run.run_dir("seed_ideas", &config, |_, _| {})?;
    eprintln!(
        "seed_ideas on {}, {} seed(s), writing {}",
        selected.spec,
        config.seeds,
        out.display()
    );
    let opts = args.run.options(&selected.device, &out)?;
    let outcome = run(&config, &opts, args.jobs)?;
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    write_all(&out, &config, &outcome, &command)?;
    println!(
        "\n{}\nwrote {}",
        markdown(&config, &outcome, &command),
        out.join("report.md").display()
    );
    Ok(())
}
