//! `sam_group_caption`'s outputs: `summary.json`, `report.md` (the base's grounding check, the
//! Q-Former vs SAM comparison as mean ± 95 % interval over seeds with paired SAM − Q-Former
//! differences) and the loss curves of the first seed.

use std::fmt::Write as _;
use std::path::Path;

use serde_json::json;
use vlalign_eval::stats::Interval;

use crate::sam_eval::GroupScores;
use crate::sam_group_caption::{SamGroupCaptionConfig, SamOutcome};
use crate::table::Table;

/// A metric of a model's scores: (label, value, scale, decimals).
type Metric = (&'static str, fn(&GroupScores) -> Option<f64>, f64, usize);

const METRICS: [Metric; 8] = [
    ("CIDEr-D", |s| Some(s.cider), 1.0, 3),
    ("BLEU-4", |s| Some(s.bleu4), 100.0, 1),
    ("ROUGE-L", |s| Some(s.rouge_l), 100.0, 1),
    (
        "object acc. %",
        |s| Some(s.object_accuracy.accuracy),
        100.0,
        1,
    ),
    (
        "… 2 images %",
        |s| s.by_size.get(&2).map(|x| x.accuracy),
        100.0,
        1,
    ),
    (
        "… 3 images %",
        |s| s.by_size.get(&3).map(|x| x.accuracy),
        100.0,
        1,
    ),
    (
        "… 4 images %",
        |s| s.by_size.get(&4).map(|x| x.accuracy),
        100.0,
        1,
    ),
    (
        "change acc. %",
        |s| Some(s.change_accuracy.accuracy),
        100.0,
        1,
    ),
];

fn scores<'a>(o: &'a SamOutcome, model: &str) -> Option<&'a GroupScores> {
    match model {
        "base" => Some(&o.base),
        m => o.runs.iter().find(|r| r.model == m).map(|r| &r.scores),
    }
}

/// Per seed, the metric of `model`, or the paired SAM − Q-Former difference (`model` = `diff`).
fn values(outcomes: &[SamOutcome], model: &str, f: fn(&GroupScores) -> Option<f64>) -> Vec<f64> {
    outcomes
        .iter()
        .filter_map(|o| match model {
            "diff" => Some(f(scores(o, "sam")?)? - f(scores(o, "qformer")?)?),
            m => f(scores(o, m)?),
        })
        .collect()
}

fn show(v: &[f64], scale: f64, digits: usize) -> String {
    Interval::of(v).map_or("–".into(), |i| i.show(scale, digits))
}

/// `summary.json`: every run, and the aggregate per model and of the paired difference.
pub fn summary(config: &SamGroupCaptionConfig, outcomes: &[SamOutcome]) -> serde_json::Value {
    let runs: Vec<serde_json::Value> = outcomes
        .iter()
        .flat_map(|o| {
            o.runs.iter().map(move |r| {
                json!({
                    "model": r.model,
                    "seed": o.seed,
                    "cider": r.scores.cider,
                    "bleu4": r.scores.bleu4,
                    "rouge_l": r.scores.rouge_l,
                    "object_accuracy": r.scores.object_accuracy.accuracy,
                    "object_accuracy_by_size": r.scores.by_size,
                    "change_accuracy": r.scores.change_accuracy.accuracy,
                    "trainable_params": r.trainable_params,
                    "step_ms": r.step_ms,
                    "bridge_norms": r.bridge_norms,
                })
            })
        })
        .collect();
    let mut aggregate = serde_json::Map::new();
    for model in ["base", "qformer", "sam", "diff"] {
        let mut m = serde_json::Map::new();
        for (label, f, _, _) in METRICS {
            m.insert(
                label.into(),
                json!(Interval::of(&values(outcomes, model, f))),
            );
        }
        aggregate.insert(model.into(), m.into());
    }
    let grounding: Vec<serde_json::Value> = outcomes
        .iter()
        .map(|o| {
            json!({
                "seed": o.seed,
                "caption_accuracy": o.grounding.caption_accuracy.all,
                "images_swapped": o.grounding.blind_caption_accuracy.all,
            })
        })
        .collect();
    json!({
        "experiment": "sam_group_caption",
        "config": config,
        "runs": runs,
        "base": outcomes.iter().map(|o| json!({"seed": o.seed, "scores": o.base})).collect::<Vec<_>>(),
        "grounding": grounding,
        "aggregate": aggregate,
    })
}

/// The grounding section: each seed's base on its own images and with images swapped.
fn grounding(s: &mut String, outcomes: &[SamOutcome]) {
    let _ = writeln!(
        s,
        "## Does the base read the image?\n\nHeld-out caption attribute accuracy of the base, on \
         the own images and with the images swapped between records (the language-prior \
         baseline).\n"
    );
    let mut t = Table::new(["seed", "own images %", "images swapped %"]);
    for o in outcomes {
        t.row([
            o.seed.to_string(),
            format!("{:.1}", 100.0 * o.grounding.caption_accuracy.all),
            format!("{:.1}", 100.0 * o.grounding.blind_caption_accuracy.all),
        ]);
    }
    let _ = writeln!(s, "{t}");
}

/// The trained bridges' norms of each seed's SAM run.
fn bridges(s: &mut String, outcomes: &[SamOutcome]) {
    let norms: Vec<String> = outcomes
        .iter()
        .filter_map(|o| {
            let r = o.runs.iter().find(|r| r.model == "sam")?;
            let [a, b] = r.bridge_norms?;
            Some(format!("seed {}: {a:.3} / {b:.3}", o.seed))
        })
        .collect();
    if !norms.is_empty() {
        let _ = writeln!(
            s,
            "Trained bridge norms (‖main → second‖ / ‖second → main‖, both start at 0): {}.\n",
            norms.join("; ")
        );
    }
}

/// `report.md`.
pub fn markdown(config: &SamGroupCaptionConfig, outcomes: &[SamOutcome], command: &str) -> String {
    let mut s = String::new();
    let seeds: Vec<String> = outcomes.iter().map(|o| o.seed.to_string()).collect();
    let _ = writeln!(
        s,
        "# sam_group_caption\n\n`{command}`\n\nA BLIP-2-style model (BLIP ViT, Q-Former with {} \
         queries, decoder) trained from scratch on the world's captions, group records and \
         change pairs ({} steps), then trained {} more steps on groups and changes twice from \
         that base: the plain Q-Former, and SAM (the W-Former added with zero bridges, pooling \
         `{:?}`{}). Seeds {}.\n",
        config.model.queries,
        config.base.steps,
        config.compare.steps,
        config.sam.pooling,
        if config.sam.wformer_only {
            ", only the W-Former trains"
        } else {
            ", everything trains"
        },
        seeds.join(", ")
    );
    grounding(&mut s, outcomes);
    let groups = outcomes.first().map_or(0, |o| o.base.object_accuracy.n);
    let changes = outcomes.first().map_or(0, |o| o.base.change_accuracy.n);
    let _ = writeln!(
        s,
        "## Q-Former vs SAM\n\nHeld-out: {groups} group records (CIDEr-D, BLEU-4, ROUGE-L and \
         exact shared-object accuracy, per group size) and {changes} change pairs. Mean ± 95 % \
         t-interval over seeds; `sam − qformer` is the interval of the per-seed differences.\n"
    );
    let mut header = vec!["model"];
    header.extend(METRICS.iter().map(|m| m.0));
    let mut t = Table::new(header);
    for model in ["base", "qformer", "sam", "diff"] {
        let label = if model == "diff" {
            "sam − qformer"
        } else {
            model
        };
        let mut row = vec![label.to_string()];
        for (_, f, scale, digits) in METRICS {
            row.push(show(&values(outcomes, model, f), scale, digits));
        }
        t.row(row);
    }
    let _ = writeln!(s, "{t}");
    let mut t = Table::new(["model", "trainable parameters", "median step ms"]);
    if let Some(o) = outcomes.first() {
        for r in &o.runs {
            t.row([
                r.model.clone(),
                r.trainable_params.to_string(),
                format!("{:.0}", r.step_ms),
            ]);
        }
    }
    bridges(&mut s, outcomes);
    let _ = writeln!(
        s,
        "Cost (seed {}):\n\n{t}",
        seeds.first().cloned().unwrap_or_default()
    );
    let _ = writeln!(
        s,
        "Each seed's answers are in `seed-<s>/<model>/{{groups,changes}}.jsonl`; loss curves of \
         the first seed in `loss.png`."
    );
    s
}

/// Write `summary.json`, `report.md` and `loss.png` into `out`.
pub fn write_all(
    out: &Path,
    config: &SamGroupCaptionConfig,
    outcomes: &[SamOutcome],
    command: &str,
) -> Result<(), String> {
    let path = out.join("summary.json");
    let text =
        serde_json::to_string_pretty(&summary(config, outcomes)).map_err(|e| e.to_string())?;
    std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    let path = out.join("report.md");
    std::fs::write(&path, markdown(config, outcomes, command))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if let Some(o) = outcomes.first() {
        crate::plot::loss_curves(&out.join("loss.png"), "sam_group_caption", &o.curves)?;
    }
    Ok(())
}
