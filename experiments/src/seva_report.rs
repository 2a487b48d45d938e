//! `seva_dpo`'s report: `summary.json`, `report.md` (the starting model, the pairs, each run
//! and per (variant, noise step) the mean ± 95 % interval over seeds with the change from the
//! starting model) and `rewards.png` (reward margin and accuracy over the DPO steps).

use std::fmt::Write as _;
use std::path::Path;

use serde_json::json;
use vlalign_eval::stats::Interval;

use crate::seva_dpo::{DpoRun, SevaDpoConfig, SevaOutcome, Variant};
use crate::seva_eval::ModelScores;
use crate::table::{Table, pct};

/// A metric of a model's scores: (key, label, value, shown as %).
type Metric = (
    &'static str,
    &'static str,
    fn(&ModelScores) -> Option<f64>,
    bool,
);

const METRICS: [Metric; 8] = [
    (
        "pope_f1_adversarial",
        "POPE F1 adv. %",
        |s| s.pope_f1("adversarial"),
        true,
    ),
    (
        "pope_f1_random",
        "POPE F1 rand. %",
        |s| s.pope_f1("random"),
        true,
    ),
    (
        "pope_accuracy_adversarial",
        "POPE acc. adv. %",
        |s| s.pope_accuracy.get("adversarial").copied(),
        true,
    ),
    (
        "pope_yes_ratio_adversarial",
        "yes-ratio adv. %",
        |s| s.pope_yes_ratio.get("adversarial").copied(),
        true,
    ),
    ("chair_s", "CHAIR_s %", |s| Some(s.chair_s), true),
    ("chair_i", "CHAIR_i %", |s| Some(s.chair_i), true),
    ("slot_accuracy", "slot acc. %", |s| s.slot_accuracy, true),
    (
        "reward_accuracy",
        "held-out reward acc. %",
        |s| s.reward_accuracy,
        true,
    ),
];

/// The (variant, noise step) groups of the runs, in order.
fn groups(o: &SevaOutcome) -> Vec<(Variant, usize)> {
    let mut out = Vec::new();
    for r in &o.runs {
        if !out.contains(&(r.variant, r.noise_step)) {
            out.push((r.variant, r.noise_step));
        }
    }
    out
}

fn values(o: &SevaOutcome, g: (Variant, usize), m: &Metric) -> Vec<f64> {
    o.runs
        .iter()
        .filter(|r| (r.variant, r.noise_step) == g)
        .filter_map(|r| m.2(&r.scores))
        .collect()
}

/// `summary.json`.
pub fn summary(config: &SevaDpoConfig, o: &SevaOutcome) -> serde_json::Value {
    let runs: Vec<_> = o
        .runs
        .iter()
        .map(|r| {
            let mut row = json!({
                "variant": r.variant.name(),
                "noise_step": r.noise_step,
                "seed": r.seed,
                "step_ms": r.step_ms,
                "trainable_parameters": r.trainable,
            });
            for m in &METRICS {
                row[m.0] = json!(m.2(&r.scores));
            }
            row
        })
        .collect();
    let aggregate: Vec<_> = groups(o)
        .into_iter()
        .map(|g| {
            let mut row = json!({ "variant": g.0.name(), "noise_step": g.1 });
            for m in &METRICS {
                row[m.0] = json!(Interval::of(&values(o, g, m)));
            }
            row
        })
        .collect();
    let mut base = json!({});
    for m in &METRICS {
        base[m.0] = json!(m.2(&o.base));
    }
    json!({
        "runs": runs,
        "pairs": {
            "generated": o.pairs.iter().map(|p| p.generated).sum::<usize>(),
            "dropped_identical": o.pairs.iter().map(|p| p.dropped_identical).sum::<usize>(),
            "by_noise_step": o.pairs,
        },
        "base": base,
        "aggregate": aggregate,
        "seeds": config.seeds,
    })
}

/// `report.md`.
pub fn markdown(config: &SevaDpoConfig, o: &SevaOutcome, command: &str, device: &str) -> String {
    let mut md = format!(
        "# seva_dpo\n\n`{command}` on {device}.\n\nDPO ({:?}, β = {}) from the stage-2 MLE model \
         on its own answers: chosen = the answer on the clean image, rejected = the answer on \
         the image under diffusion noise; reference log-probs precomputed with the starting \
         model. {} steps × {} pairs (full: lr {}; LoRA rank {}, α {}: lr {}); {} seed(s) per \
         (variant, noise step), each a data order (and LoRA init) over the same pairs.\n\n",
        config.dpo.loss,
        config.dpo.beta,
        config.train.steps,
        config.train.batch_size,
        config.train.optim.lr,
        config.lora.rank,
        config.lora.alpha,
        config.lora_lr,
        config.seeds
    );
    for (name, acc) in &o.stage1 {
        let _ = writeln!(
            md,
            "The starting model reads the image: its stage 1 (`{name}`) names {} of the held-out \
             caption attributes on the images and {} with the images swapped.\n",
            pct(acc.caption_accuracy.all),
            pct(acc.blind_caption_accuracy.all)
        );
    }
    let mut pairs = Table::new([
        "noise step",
        "pairs",
        "identical (dropped)",
        "held-out pairs",
        "seconds",
    ]);
    for p in &o.pairs {
        pairs.row([
            p.noise_step.to_string(),
            p.generated.to_string(),
            p.dropped_identical.to_string(),
            p.held_out.to_string(),
            format!("{:.0}", p.seconds),
        ]);
    }
    let _ = write!(md, "## Pairs\n\n{pairs}\n");
    md.push_str(&aggregate_table(o));
    md.push_str(&runs_table(o));
    md.push_str("\n![reward margin and accuracy](rewards.png)\n");
    md
}

fn show(x: Option<f64>) -> String {
    x.map_or("–".into(), pct)
}

/// Mean ± 95 % over seeds per (variant, noise step), and the change from the starting model.
fn aggregate_table(o: &SevaOutcome) -> String {
    let mut header = vec!["model".to_string()];
    header.extend(METRICS.iter().map(|m| m.1.to_string()));
    let mut t = Table::new(header);
    let mut row = vec!["starting model (the reference)".to_string()];
    row.extend(METRICS.iter().map(|m| show(m.2(&o.base))));
    t.row(row);
    for g in groups(o) {
        let mut row = vec![format!("DPO {} noise {}", g.0.name(), g.1)];
        let mut delta = vec![format!("… change from the start")];
        for m in &METRICS {
            let i = Interval::of(&values(o, g, m));
            row.push(i.as_ref().map_or("–".into(), |i| i.show(100.0, 1)));
            delta.push(match (i, m.2(&o.base)) {
                (Some(i), Some(b)) => format!("{:+.1}", 100.0 * (i.mean - b)),
                _ => "–".into(),
            });
        }
        t.row(row);
        t.row(delta);
    }
    format!(
        "## Before and after (mean ± 95 % t-interval over seeds)\n\n{t}\nCHAIR: lower is \
         better. Reward accuracy: held-out pairs (training questions no DPO step saw) where the policy prefers the chosen answer more than the reference does; the starting \
         model is the reference, so it has none.\n\n"
    )
}

fn runs_table(o: &SevaOutcome) -> String {
    let mut header = vec!["variant", "noise", "seed", "trainable", "step ms"];
    header.extend(METRICS.iter().map(|m| m.1));
    let mut t = Table::new(header);
    for r in &o.runs {
        let mut row = vec![
            r.variant.name().to_string(),
            r.noise_step.to_string(),
            r.seed.to_string(),
            r.trainable.to_string(),
            format!("{:.0}", r.step_ms),
        ];
        row.extend(METRICS.iter().map(|m| show(m.2(&r.scores))));
        t.row(row);
    }
    format!("## Every run\n\n{t}")
}

/// `rewards.png`: training-batch reward margin and accuracy over the steps of each run.
pub fn plot(path: &Path, runs: &[DpoRun]) -> Result<(), String> {
    let mut series = Vec::new();
    for r in runs {
        let label = format!("{}-n{}-s{}", r.variant.name(), r.noise_step, r.seed);
        let margin = r.rewards.iter().map(|x| (x.0, x.1)).collect();
        let acc = r.rewards.iter().map(|x| (x.0, x.2)).collect();
        series.push((format!("margin-{label}"), margin));
        series.push((format!("accuracy-{label}"), acc));
    }
    crate::plot::loss_curves(
        path,
        "DPO reward margin and accuracy (training batches)",
        &series,
    )
}

/// Write `report.md`, `summary.json` and `rewards.png` into `out`.
pub fn write_all(
    out: &Path,
    config: &SevaDpoConfig,
    o: &SevaOutcome,
    command: &str,
    device: &str,
) -> Result<(), String> {
    let write = |name: &str, text: String| {
        let path = out.join(name);
        std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))
    };
    write("report.md", markdown(config, o, command, device))?;
    write(
        "summary.json",
        serde_json::to_string_pretty(&summary(config, o)).expect("json"),
    )?;
    plot(&out.join("rewards.png"), &o.runs)
}

/// The table printed at the end of a run.
pub fn print_table(o: &SevaOutcome) {
    println!(
        "\n{:<26} {:>12} {:>12} {:>9} {:>9} {:>12}",
        "model", "POPE F1 adv", "POPE F1 rand", "CHAIR_s", "slots %", "reward acc"
    );
    let line = |name: String, s: &ModelScores| {
        println!(
            "{:<26} {:>12} {:>12} {:>9} {:>9} {:>12}",
            name,
            show(s.pope_f1("adversarial")),
            show(s.pope_f1("random")),
            pct(s.chair_s),
            show(s.slot_accuracy),
            show(s.reward_accuracy)
        );
    };
    line("start".into(), &o.base);
    for r in &o.runs {
        line(
            format!("{} noise{} seed{}", r.variant.name(), r.noise_step, r.seed),
            &r.scores,
        );
    }
}
