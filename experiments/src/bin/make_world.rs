//! Generate the grounded synthetic world and train its tokenizer.
//!
//! ```text
//! cargo run --release -p experiments --bin make_world -- --out data/world --images 5000 --seed 0
//! ```
//! Writes a LLaVA-format dataset (PNG images + JSON records with per-word grounding truth),
//! POPE question files, `scenes.json`, `world.json` and a byte-level BPE `tokenizer.json` trained
//! on the world's texts. Prints the generation speed and the share of answer tokens that are
//! grounded.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use experiments::world::{grounded_share, make_world};
use vlalign_data::world::WorldConfig;

#[derive(Parser, Debug)]
#[command(about = "Generate the grounded synthetic world (images, records, tokenizer)")]
struct Args {
    /// Output folder.
    #[arg(long, default_value = "data/world")]
    out: PathBuf,
    /// Number of single-image scenes.
    #[arg(long, default_value_t = 5000)]
    images: usize,
    /// Seed (same seed, same world).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Side of the PNGs in pixels.
    #[arg(long, default_value_t = 128)]
    image_size: u32,
    /// Probability that a star is yellow (language prior); 0 turns the bias off.
    #[arg(long, default_value_t = 0.8)]
    prior: f32,
    /// Number of multi-image groups (default: one per 10 scenes).
    #[arg(long)]
    groups: Option<usize>,
    /// Tokenizer vocabulary size.
    #[arg(long, default_value_t = 512)]
    vocab: usize,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let mut config = WorldConfig::new(args.images, args.seed);
    config.image_size = args.image_size;
    config.sampler.prior = args.prior;
    if let Some(g) = args.groups {
        config.groups = g;
    }
    let start = Instant::now();
    let summary = match make_world(&config, &args.out, args.vocab, true) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let secs = start.elapsed().as_secs_f64();
    println!(
        "wrote {} images and {} record files to {} in {:.1} s ({:.0} images/s, tokenizer included)",
        summary.images_written,
        summary.records.len(),
        args.out.display(),
        secs,
        summary.images_written as f64 / secs
    );
    for (file, n) in &summary.records {
        println!("  {file:<32} {n:>6}");
    }
    match grounded_share(&args.out) {
        Ok(share) => println!("{share}"),
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
