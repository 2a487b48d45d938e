//! SAM's W-Former vs the plain Q-Former on the world's multi-image tasks.
//!
//! ```text
//! cargo run --release -p experiments --bin sam_group_caption                # default (3 seeds, CPU)
//! cargo run --release -p experiments --bin sam_group_caption -- --quick     # CI smoke run
//! cargo run --release -p experiments --bin sam_group_caption -- --seeds 5 --pooling others
//! ```
//! Generates the group world if absent (`data/world-groups`), then per seed trains the base,
//! continues it with and without the W-Former and scores both (see
//! `experiments::sam_group_caption`). Writes `runs/sam_group_caption/<time>/`: `report.md`,
//! `summary.json` (`"runs"`: model, seed, cider, bleu4, rouge_l, object_accuracy, …), `loss.png`
//! and `seed-<s>/` with each stage's metrics, checkpoints and answers.

use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use experiments::run::{RunArgs, RunOptions, exit_code};
use experiments::sam_group_caption::{SamGroupCaptionConfig, SamOutcome, run, start};
use experiments::sam_report::write_all;
use vlalign_models::Pooling;

#[derive(Parser, Debug)]
#[command(about = "Train a Q-Former model with and without SAM's W-Former on multi-image tasks")]
struct Args {
    #[command(flatten)]
    run: RunArgs,
    /// Seeds compared (model init and data order).
    #[arg(long)]
    seeds: Option<usize>,
    /// Steps of the compared continuation (overrides the config).
    #[arg(long)]
    steps: Option<usize>,
    /// What the group context pools: all (the public code) | others (the paper).
    #[arg(long)]
    pooling: Option<String>,
    /// Train only the W-Former in SAM's run (the public code's default).
    #[arg(long)]
    wformer_only: bool,
    /// Seeds trained at once (each keeps about one core busy on flex).
    #[arg(long, default_value_t = 2)]
    jobs: usize,
}

fn resolve(args: &Args) -> Result<SamGroupCaptionConfig, String> {
    let mut c = args
        .run
        .config(SamGroupCaptionConfig::quick, SamGroupCaptionConfig::default)?;
    if let Some(n) = args.seeds {
        if n == 0 {
            return Err("--seeds: at least 1".into());
        }
        c.seeds = n;
    }
    if let Some(s) = args.steps {
        c.compare.steps = s;
    }
    if let Some(p) = &args.pooling {
        c.sam.pooling = match p.as_str() {
            "all" => Pooling::All,
            "others" => Pooling::Others,
            other => return Err(format!("--pooling: expected all|others, got {other}")),
        };
    }
    if args.wformer_only {
        c.sam.wformer_only = true;
    }
    if let Some(w) = &args.run.world {
        c.world.dir = w.clone();
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
    let out = args.run.run_dir("sam_group_caption", &config, |_, _| {})?;
    eprintln!(
        "sam_group_caption on {}, {} seed(s), writing {}",
        selected.spec,
        config.seeds,
        out.display()
    );
    let started = Instant::now();
    experiments::inputs::ensure_world(&config.world, !args.run.quiet)?;
    let jobs = args.jobs.max(1);
    let mut outcomes = Vec::new();
    let seeds: Vec<usize> = (0..config.seeds).collect();
    for chunk in seeds.chunks(jobs) {
        // Starting weights are drawn here, in seed order; the seeds of a chunk then train in
        // parallel (a flex run keeps about one core busy).
        let mut work = Vec::new();
        for &k in chunk {
            let seeded = config.seeded(k);
            let dir = out.join(format!("seed-{}", seeded.seed));
            let opts = RunOptions {
                verbose: !args.run.quiet && jobs == 1,
                ..args.run.options(&selected.device, &dir)?
            };
            let start = start(&seeded, &opts)?;
            work.push((seeded, opts, start));
        }
        let results: Vec<Result<SamOutcome, String>> = std::thread::scope(|scope| {
            let handles: Vec<_> = work
                .into_iter()
                .map(|(seeded, opts, start)| scope.spawn(move || run(&seeded, start, &opts)))
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err("a seed's thread panicked".into()))
                })
                .collect()
        });
        for outcome in results {
            let outcome = outcome?;
            for r in &outcome.runs {
                eprintln!(
                    "seed {}: {:<8} CIDEr-D {:.3}, object accuracy {:.1} %, change accuracy {:.1} %",
                    outcome.seed,
                    r.model,
                    r.scores.cider,
                    100.0 * r.scores.object_accuracy.accuracy,
                    100.0 * r.scores.change_accuracy.accuracy
                );
            }
            outcomes.push(outcome);
        }
    }
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    write_all(&out, &config, &outcomes, &command)?;
    println!(
        "\n{}\nwrote {} ({:.0} s)",
        experiments::sam_report::markdown(&config, &outcomes, &command),
        out.join("report.md").display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
