//! Load a dataset exactly as training would and report what is in it.
//!
//! ```text
//! cargo run --release -p experiments --bin check_data -- --data X.json --image-folder DIR \
//!     --tokenizer tokenizer.json --template vicuna_v1 [--on-bad-record skip|fail] [--json FILE]
//! ```
//! Prints records, loaded, skipped by reason (with the first few record ids each), images,
//! supervised tokens, truncated records and the loading speed (records/s, images decoded).
//! Exits non-zero under `--on-bad-record fail` when any record is bad.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use burn::data::dataset::Dataset;
use clap::Parser;
use vlalign_data::dataset::prepare;
use vlalign_data::{
    BadRecordPolicy, Encoder, ImageCheck, ImageProcessor, Sample, Template, TextTokenizer,
    VlmDataset, read_records,
};

#[derive(Parser, Debug)]
#[command(about = "Load a LLaVA-format dataset as training would and report on it")]
struct Args {
    /// Records: a JSON array or JSON Lines file.
    #[arg(long)]
    data: PathBuf,
    /// Folder the image paths are relative to.
    #[arg(long)]
    image_folder: PathBuf,
    /// `tokenizer.json`.
    #[arg(long)]
    tokenizer: PathBuf,
    /// Chat template: plain, vicuna_v1, chatml.
    #[arg(long, default_value = "vicuna_v1")]
    template: Template,
    /// Image slots per `<image>` (the vision model's token count; LLaVA-1.5: 576).
    #[arg(long, default_value_t = 576)]
    image_tokens: usize,
    /// Longest sequence; longer records are truncated (never inside image slots).
    #[arg(long, default_value_t = 2048)]
    max_len: usize,
    /// Token id of the image slots, when the tokenizer has no `<image>` token.
    #[arg(long)]
    image_token_id: Option<u32>,
    /// What a bad record does: skip it (and report) or fail.
    #[arg(long, default_value = "skip")]
    on_bad_record: BadRecordPolicy,
    /// Only check that images exist instead of decoding them.
    #[arg(long)]
    no_decode: bool,
    /// Also run the full image preprocessing (decode, pad, resize to this side, normalize) for
    /// every loaded sample, as the training data loader does, and report its speed.
    #[arg(long)]
    preprocess: Option<usize>,
    /// Also write the report as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Samples per second through the full image pipeline (decode, pad, resize, normalise) at
/// `size` pixels, one thread.
fn preprocess_rate(samples: Vec<Sample>, size: usize) -> f64 {
    let dataset = VlmDataset::new(samples, ImageProcessor::clip(size));
    let start = Instant::now();
    let mut failed = 0;
    for i in 0..dataset.len() {
        failed += usize::from(dataset.get(i).is_err());
    }
    let rate = dataset.len() as f64 / start.elapsed().as_secs_f64().max(1e-9);
    println!("  preprocessing      {rate:.0} samples/s ({size} px, one thread, {failed} failed)");
    rate
}

fn run(args: &Args) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let tokenizer = TextTokenizer::from_file(&args.tokenizer)?;
    let encoder = Encoder::new(
        tokenizer,
        args.template,
        args.image_tokens,
        args.max_len,
        args.image_token_id,
    )?;
    let start = Instant::now();
    let parsed = read_records(&args.data)?;
    let check = if args.no_decode {
        ImageCheck::Exists
    } else {
        ImageCheck::Decode
    };
    let (samples, report) = prepare(parsed, &encoder, &args.image_folder, check);
    let secs = start.elapsed().as_secs_f64().max(1e-9);
    let preprocess_speed = args.preprocess.map(|size| preprocess_rate(samples, size));
    println!("{}", args.data.display());
    println!("  records            {}", report.records);
    println!("  loaded             {}", report.loaded);
    println!("  skipped            {}", report.errors.len());
    for (reason, (n, ids)) in report.by_reason() {
        println!("    {reason:<22} {n:>6}   e.g. {}", ids.join(", "));
    }
    println!("  images             {}", report.images);
    println!("  supervised tokens  {}", report.supervised_tokens);
    println!("  truncated records  {}", report.truncated.len());
    println!(
        "  speed              {:.0} records/s ({} images {})",
        report.records as f64 / secs,
        report.images,
        if args.no_decode { "checked" } else { "decoded" }
    );
    for e in report.errors.iter().take(10) {
        println!("  ! {e}");
    }
    if let Some(path) = &args.json {
        let by_reason: serde_json::Map<String, serde_json::Value> = report
            .by_reason()
            .into_iter()
            .map(|(k, (n, _))| (k.to_string(), n.into()))
            .collect();
        let value = serde_json::json!({
            "records": report.records,
            "loaded": report.loaded,
            "skipped": report.errors.len(),
            "skipped_by_reason": by_reason,
            "supervised_tokens": report.supervised_tokens,
            "images": report.images,
            "truncated": report.truncated.len(),
            "records_per_s": report.records as f64 / secs,
            "preprocessed_samples_per_s": preprocess_speed,
        });
        std::fs::write(path, serde_json::to_string_pretty(&value)?)?;
    }
    if args.on_bad_record == BadRecordPolicy::Fail && !report.errors.is_empty() {
        eprintln!(
            "error: {} bad record(s) under --on-bad-record fail; first: {}",
            report.errors.len(),
            report.errors[0]
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}
