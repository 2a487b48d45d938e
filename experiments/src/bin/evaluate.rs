//! Score predictions against references with the captioning metrics of pycocoevalcap, or
//! re-score the trained models of a `cal_llava` run.
//!
//! ```text
//! cargo run --release -p experiments --bin evaluate -- --pred preds.jsonl --refs refs.json \
//!     [--metrics cider,bleu,rouge] [--json scores.json]
//! cargo run --release -p experiments --bin evaluate -- --run runs/cal_llava/X --split test
//! ```
//! `--run` loads each stage-2 model of the run at its newest intact checkpoint, evaluates it on
//! the split (grounded slots, perplexity, CAL-weight AUROC, CIDEr, CHAIR, POPE) and writes
//! `eval-{split}.md` and `eval-{split}.json` into the run directory.
//! `preds.jsonl`: one `{"id", "output"}` per line (the generation driver writes these; extra
//! fields are ignored). `refs.json`: `{id: [reference, …]}` or a COCO captions file
//! (`{"annotations": [{"image_id", "caption"}]}`). Prints corpus scores; `--json` writes
//! `{"corpus": {"cider", "bleu": [b1, b2, b3, b4], "rouge_l"}, "per_sample": {id: {"cider",
//! "bleu4", "rouge_l"}}}` on pycocoevalcap's scale (not ×100).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use serde_json::{Value, json};
use vlalign_eval::score_captions;

#[derive(Parser, Debug)]
#[command(about = "Score captions with BLEU, ROUGE-L and CIDEr-D (pycocoevalcap's numbers)")]
struct Args {
    /// Predictions, JSON Lines `{"id", "output"}`.
    #[arg(long, required_unless_present = "run", requires = "refs")]
    pred: Option<PathBuf>,
    /// References: `{id: [captions]}` or COCO captions JSON.
    #[arg(long, requires = "pred")]
    refs: Option<PathBuf>,
    /// A `cal_llava` run directory to re-score.
    #[arg(long, conflicts_with_all = ["pred", "refs"])]
    run: Option<PathBuf>,
    /// Split for `--run`: val or test.
    #[arg(long, default_value = "test")]
    split: String,
    /// Device for `--run`: flex | ndarray | wgpu | cuda[:N].
    #[arg(long)]
    device: Option<String>,
    /// Metrics to print: any of cider, bleu, rouge.
    #[arg(long, value_delimiter = ',', default_value = "cider,bleu,rouge")]
    metrics: Vec<String>,
    /// Write corpus and per-sample scores here.
    #[arg(long)]
    json: Option<PathBuf>,
}

fn id_of(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn read_preds(path: &PathBuf) -> Result<BTreeMap<String, String>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut out = BTreeMap::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let at = || format!("{} line {}", path.display(), i + 1);
        let v: Value = serde_json::from_str(line).map_err(|e| format!("{}: {e}", at()))?;
        let id = v
            .get("id")
            .and_then(id_of)
            .ok_or_else(|| format!("{}: field `id` missing or not a string/number", at()))?;
        let output = v
            .get("output")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("{}: field `output` missing or not a string", at()))?;
        out.insert(id, output.to_string());
    }
    Ok(out)
}

fn read_refs(path: &PathBuf) -> Result<BTreeMap<String, Vec<String>>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let v: Value = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    if let Some(anns) = v.get("annotations").and_then(Value::as_array) {
        for (i, a) in anns.iter().enumerate() {
            let id = a.get("image_id").and_then(id_of);
            let cap = a.get("caption").and_then(Value::as_str);
            match (id, cap) {
                (Some(id), Some(cap)) => out.entry(id).or_default().push(cap.to_string()),
                _ => {
                    return Err(format!(
                        "{}: annotations[{i}] needs `image_id` and `caption`",
                        path.display()
                    ));
                }
            }
        }
    } else if let Some(obj) = v.as_object() {
        for (id, refs) in obj {
            let refs = refs
                .as_array()
                .and_then(|a| {
                    a.iter()
                        .map(|r| r.as_str().map(str::to_string))
                        .collect::<Option<Vec<_>>>()
                })
                .filter(|r| !r.is_empty())
                .ok_or_else(|| {
                    format!(
                        "{}: `{id}` must be a non-empty list of strings",
                        path.display()
                    )
                })?;
            out.insert(id.clone(), refs);
        }
    } else {
        return Err(format!(
            "{}: expected {{id: [captions]}} or a COCO captions file",
            path.display()
        ));
    }
    Ok(out)
}

fn rescore(args: &Args, dir: &std::path::Path) -> Result<(), String> {
    let selected =
        experiments::device::select_device(args.device.as_deref()).map_err(|e| e.to_string())?;
    let (config, outcome) =
        experiments::cal_rescore::rescore(dir, &args.split, &selected.device, true)?;
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let device = selected.spec.to_string();
    let md = experiments::cal_report::markdown(&config, &outcome, &command, &device);
    let md = md.replacen(
        "# cal_llava",
        &format!("# cal_llava — re-scored on `{}`", args.split),
        1,
    );
    let md_path = dir.join(format!("eval-{}.md", args.split));
    std::fs::write(&md_path, md).map_err(|e| format!("{}: {e}", md_path.display()))?;
    let json_path = dir.join(format!("eval-{}.json", args.split));
    let json = serde_json::to_string_pretty(&experiments::cal_report::summary(&config, &outcome))
        .expect("json");
    std::fs::write(&json_path, json).map_err(|e| format!("{}: {e}", json_path.display()))?;
    for r in &outcome.runs {
        println!(
            "{:<5} noise {:<4} slot acc {:>6} perplexity {:.3} CAL AUROC {}",
            r.objective,
            r.noise,
            r.slot_accuracy
                .map_or("–".into(), |a| format!("{:.1}", 100.0 * a)),
            r.perplexity,
            r.cal_weight_auroc.map_or("–".into(), |a| format!("{a:.3}"))
        );
    }
    println!("wrote {}", md_path.display());
    Ok(())
}

fn run(args: &Args) -> Result<(), String> {
    if let Some(dir) = &args.run {
        return rescore(args, dir);
    }
    let (Some(pred), Some(refs)) = (&args.pred, &args.refs) else {
        return Err("give --pred and --refs, or --run".into());
    };
    for m in &args.metrics {
        if !["cider", "bleu", "rouge"].contains(&m.as_str()) {
            return Err(format!("unknown metric '{m}' (cider, bleu, rouge)"));
        }
    }
    let preds = read_preds(pred)?;
    let refs = read_refs(refs)?;
    let missing: Vec<&String> = preds.keys().filter(|k| !refs.contains_key(*k)).collect();
    if !missing.is_empty() {
        eprintln!(
            "warning: {} prediction(s) have no references and are not scored (e.g. {})",
            missing.len(),
            missing
                .iter()
                .take(3)
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let s = score_captions(&preds, &refs);
    println!(
        "{} predictions scored against {} reference sets",
        s.per_sample.len(),
        refs.len()
    );
    for m in &args.metrics {
        match m.as_str() {
            "cider" => println!("CIDEr-D  {:.6}", s.cider),
            "bleu" => println!(
                "BLEU-1..4  {:.6} {:.6} {:.6} {:.6}",
                s.bleu[0], s.bleu[1], s.bleu[2], s.bleu[3]
            ),
            _ => println!("ROUGE-L  {:.6}", s.rouge_l),
        }
    }
    if let Some(path) = &args.json {
        let per: serde_json::Map<String, Value> = s
            .per_sample
            .iter()
            .map(|(k, p)| {
                (
                    k.clone(),
                    json!({"cider": p.cider, "bleu4": p.bleu[3], "rouge_l": p.rouge_l}),
                )
            })
            .collect();
        let v = json!({"corpus": {"cider": s.cider, "bleu": s.bleu, "rouge_l": s.rouge_l}, "per_sample": per});
        std::fs::write(path, serde_json::to_string_pretty(&v).expect("json"))
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(())
}

fn main() -> ExitCode {
    experiments::alloc::keep_freed_memory();
    match run(&Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
