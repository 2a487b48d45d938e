//! CLIP pre-training on the world's captions, with zero-shot retrieval and attribute
//! classification on held-out pairs.
//!
//! ```text
//! cargo run --release -p experiments --bin clip_pretrain                 # default (~10 min, CPU)
//! cargo run --release -p experiments --bin clip_pretrain -- --quick      # CI smoke run
//! cargo run --release -p experiments --bin cal_llava -- --vision-init runs/clip_pretrain/<run>/vision
//! ```
//! Writes `runs/clip_pretrain/<time>/`: `report.md`, `summary.json` (`"retrieval"`,
//! `"zero_shot"`), `loss.png`, the stage directory `clip/` (metrics, checkpoints), the image
//! tower `vision/` (a `CLIPVisionModel` directory) and the whole model `clip-model/`.

use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use experiments::clip_pretrain::{ClipPretrainConfig, run, write_all};
use experiments::run::{RunArgs, exit_code};

#[derive(Parser, Debug)]
#[command(about = "Pre-train a CLIP pair of towers on the world's captions and evaluate it")]
struct Args {
    #[command(flatten)]
    run: RunArgs,
    /// Optimizer steps (overrides the config).
    #[arg(long)]
    steps: Option<usize>,
}

fn resolve(args: &Args) -> Result<ClipPretrainConfig, String> {
    let mut c = args
        .run
        .config(ClipPretrainConfig::quick, ClipPretrainConfig::default)?;
    if let Some(s) = args.steps {
        c.train.steps = s;
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
    let out = args.run.run_dir("clip_pretrain", &config, |_, _| {})?;
    eprintln!(
        "clip_pretrain on {}, writing {}",
        selected.spec,
        out.display()
    );
    let started = Instant::now();
    let opts = args.run.options(&selected.device, &out)?;
    let outcome = run(&config, &opts)?;
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    write_all(&out, &config, &outcome, &command)?;
    let r = &outcome.retrieval;
    println!(
        "\nretrieval on {} held-out pairs: image→caption R@1 {:.1} % R@5 {:.1} %, \
         caption→image R@1 {:.1} % R@5 {:.1} %",
        r.pairs,
        100.0 * r.i2t_r1,
        100.0 * r.i2t_r5,
        100.0 * r.t2i_r1,
        100.0 * r.t2i_r5
    );
    for a in experiments::eval::captions::ATTRIBUTES {
        let Some(z) = outcome.zero_shot.get(a) else {
            continue;
        };
        println!(
            "zero-shot {a:<9} {:>5.1} % (chance {:.1} %)",
            100.0 * z.accuracy,
            100.0 * z.chance
        );
    }
    println!(
        "\nwrote {} ({:.0} s)",
        out.join("report.md").display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
