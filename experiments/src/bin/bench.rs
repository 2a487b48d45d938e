//! The benchmark binary: fixed presets (`tools/bench_presets.json`), every backend compiled in.
//!
//! ```text
//! cargo run --release -p experiments --bin bench                      # all presets, all backends
//! cargo run --release -p experiments --bin bench -- --preset tiny --device flex --out bench.json
//! tools/bench_compare.sh                                               # against PyTorch
//! ```
//! Prints one table per (backend, preset) and writes `bench.json`. `tools/bench_torch.py` measures
//! the same architecture and work in PyTorch and prints the same table.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use experiments::bench::{Preset, PresetResult, presets, run_preset, table};
use experiments::device::{SelectedDevice, compiled_backends, select_device};
use serde::Serialize;

#[derive(Parser, Debug)]
#[command(about = "Time training steps, contrast passes, VIG scoring and generation")]
struct Args {
    /// Presets to run (default: all of tools/bench_presets.json).
    #[arg(long, value_delimiter = ',')]
    preset: Option<Vec<String>>,
    /// Devices to run on (default: every backend compiled in, except a wgpu that only finds a
    /// software rasteriser).
    #[arg(long, value_delimiter = ',')]
    device: Option<Vec<String>>,
    /// CPU threads of the flex backend's pool (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Override the timed iterations of every preset.
    #[arg(long)]
    iters: Option<usize>,
    /// Override the warm-up iterations of every preset.
    #[arg(long)]
    warmup: Option<usize>,
    /// Only these rows (e.g. `train_mle,gen_b1`; default: all).
    #[arg(long, value_delimiter = ',')]
    rows: Option<Vec<String>>,
    /// Where the JSON goes.
    #[arg(long, default_value = "bench.json")]
    out: PathBuf,
}

#[derive(Serialize)]
struct BackendResult {
    backend: String,
    adapter: Option<String>,
    presets: Vec<PresetResult>,
}

#[derive(Serialize)]
struct Report {
    side: &'static str,
    burn: &'static str,
    threads: usize,
    cpu: Option<String>,
    results: Vec<BackendResult>,
}

fn cpu_model() -> Option<String> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("model name"))?;
    Some(line.split_once(':')?.1.trim().to_string())
}

fn main() -> ExitCode {
    experiments::alloc::keep_freed_memory();
    match main_inner(&Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main_inner(args: &Args) -> Result<(), String> {
    if let Some(n) = args.threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
            .map_err(|e| format!("--threads {n}: {e}"))?;
    }
    let chosen = chosen_presets(args)?;
    let explicit = args.device.is_some();
    let devices: Vec<String> = args.device.clone().unwrap_or_else(|| {
        compiled_backends()
            .iter()
            .map(|b| b.name().to_string())
            .collect()
    });
    let mut report = Report {
        side: "vlalign",
        burn: "0.22",
        threads: rayon::current_num_threads(),
        cpu: cpu_model(),
        results: Vec::new(),
    };
    for name in devices {
        let selected = select_device(Some(&name)).map_err(|e| e.to_string())?;
        if let Some(w) = &selected.warning {
            eprintln!("warning: {w}");
            if !explicit {
                eprintln!("skipping {name} (ask for it with --device {name})");
                continue;
            }
        }
        report.results.push(run_backend(args, &chosen, &selected)?);
    }
    let json = serde_json::to_string_pretty(&report).expect("serialisable");
    std::fs::write(&args.out, json).map_err(|e| format!("writing {}: {e}", args.out.display()))?;
    eprintln!("wrote {}", args.out.display());
    Ok(())
}

/// The presets `--preset` names (all by default), with `--iters` / `--warmup` applied.
fn chosen_presets(args: &Args) -> Result<Vec<Preset>, String> {
    let mut chosen = presets();
    if let Some(names) = &args.preset {
        if let Some(bad) = names.iter().find(|n| !chosen.iter().any(|p| &p.name == *n)) {
            let known: Vec<&str> = chosen.iter().map(|p| p.name.as_str()).collect();
            return Err(format!(
                "unknown preset '{bad}' (known: {})",
                known.join(", ")
            ));
        }
        chosen.retain(|p| names.contains(&p.name));
    }
    for p in &mut chosen {
        if let Some(i) = args.iters {
            p.iters = i;
        }
        if let Some(w) = args.warmup {
            p.warmup = w;
        }
    }
    Ok(chosen)
}

/// Every chosen preset on one backend, each table printed as it is done.
fn run_backend(
    args: &Args,
    chosen: &[Preset],
    selected: &SelectedDevice,
) -> Result<BackendResult, String> {
    let backend = selected.spec.to_string();
    let mut presets_done = Vec::new();
    for preset in chosen {
        eprintln!(
            "{} on {backend} ({} threads): {} warm-up + {} timed iterations per row",
            preset.name,
            rayon::current_num_threads(),
            preset.warmup,
            preset.iters
        );
        let wanted = |row: &str| {
            args.rows
                .as_ref()
                .is_none_or(|r| r.iter().any(|x| x == row))
        };
        let r = run_preset(preset, &selected.device, &wanted, |row| {
            eprintln!("  {row} …")
        })?;
        println!("{}", table(&backend, &r));
        presets_done.push(r);
    }
    Ok(BackendResult {
        backend,
        adapter: selected.adapter.clone(),
        presets: presets_done,
    })
}
