//! The comparison over seeds (`--seeds N`): the whole experiment N times with model init and
//! data order seeded `seed, seed + 1, …` (the world stays the same), then per (noise,
//! objective) the mean ± 95 % interval of slot accuracy, perplexity and POPE F1, and the paired
//! per-seed CAL − MLE difference of each.

use std::fmt::Write as _;

use serde_json::json;
use vlalign_eval::stats::Interval;

use crate::cal_eval::{Outcome, RunResult};
use crate::cal_llava::CalLlavaConfig;
use crate::table::Table;

/// The configuration of the `k`-th seed: the model init and both stages' data order move.
pub fn seeded(config: &CalLlavaConfig, k: usize) -> CalLlavaConfig {
    let mut c = config.clone();
    let seed = config.seed + k as u64;
    c.seed = seed;
    c.pretrain.seed = config.pretrain.seed + k as u64;
    c.finetune.seed = config.finetune.seed + k as u64;
    c.seeds = 1;
    c
}

/// The metrics aggregated over seeds: (name, value of a run).
type Metric = (&'static str, fn(&RunResult) -> Option<f64>);

const METRICS: [Metric; 3] = [
    ("slot_accuracy", |r| r.slot_accuracy),
    ("perplexity", |r| Some(r.perplexity)),
    ("pope_f1_adversarial", |r| {
        r.hallucination
            .as_ref()
            .and_then(|h| h.pope_f1.get("adversarial").copied())
    }),
];

fn noises(outcomes: &[(u64, Outcome)]) -> Vec<f64> {
    let mut out: Vec<f64> = Vec::new();
    for r in outcomes.iter().flat_map(|(_, o)| &o.runs) {
        if !out.contains(&r.noise) {
            out.push(r.noise);
        }
    }
    out
}

fn find<'a>(o: &'a Outcome, noise: f64, objective: &str) -> Option<&'a RunResult> {
    o.runs
        .iter()
        .find(|r| r.noise == noise && r.objective == objective)
}

/// Values of `metric` per seed for (noise, objective), or paired CAL − MLE differences when
/// `objective` is `None`.
fn values(
    outcomes: &[(u64, Outcome)],
    noise: f64,
    objective: Option<&str>,
    m: &Metric,
) -> Vec<f64> {
    outcomes
        .iter()
        .filter_map(|(_, o)| match objective {
            Some(obj) => find(o, noise, obj).and_then(m.1),
            None => Some(m.1(find(o, noise, "cal")?)? - m.1(find(o, noise, "mle")?)?),
        })
        .collect()
}

/// The `"aggregate"` section of `summary.json`.
pub fn aggregate(outcomes: &[(u64, Outcome)]) -> serde_json::Value {
    let mut rows = Vec::new();
    let mut diffs = Vec::new();
    for noise in noises(outcomes) {
        for objective in ["mle", "cal"] {
            let mut row = json!({ "noise": noise, "objective": objective });
            for m in &METRICS {
                row[m.0] = json!(Interval::of(&values(outcomes, noise, Some(objective), m)));
            }
            rows.push(row);
        }
        let mut d = json!({ "noise": noise });
        for m in &METRICS {
            d[m.0] = json!(Interval::of(&values(outcomes, noise, None, m)));
        }
        diffs.push(d);
    }
    let stage1: Vec<f64> = outcomes
        .iter()
        .filter_map(|(_, o)| o.stage1.first().map(|(_, a)| a.caption_accuracy.all))
        .collect();
    let blind: Vec<f64> = outcomes
        .iter()
        .filter_map(|(_, o)| o.stage1.first().map(|(_, a)| a.blind_caption_accuracy.all))
        .collect();
    json!({
        "seeds": outcomes.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        "runs": rows,
        "cal_minus_mle": diffs,
        "stage1_caption_accuracy_all": Interval::of(&stage1),
        "stage1_blind_caption_accuracy_all": Interval::of(&blind),
    })
}

/// `summary.json` of a multi-seed run: every seed's run rows (each with its `"seed"`), the
/// stage-1 caption accuracy per seed and its mean over seeds (`"stage1"`, the single-seed keys),
/// and the [`aggregate`].
pub fn summary(config: &CalLlavaConfig, outcomes: &[(u64, Outcome)]) -> serde_json::Value {
    let per_seed: Vec<serde_json::Value> = outcomes
        .iter()
        .map(|(k, o)| crate::cal_report::summary(&seeded_by(config, *k), o))
        .collect();
    let runs: Vec<&serde_json::Value> = per_seed
        .iter()
        .filter_map(|s| s["runs"].as_array())
        .flatten()
        .collect();
    let by_seed: Vec<&serde_json::Value> = per_seed
        .iter()
        .map(|s| &s["stage1"])
        .filter(|s| !s.is_null())
        .collect();
    let mut mean = serde_json::Map::new();
    for key in ["caption_accuracy", "blind_caption_accuracy"] {
        let mut m = serde_json::Map::new();
        for attribute in crate::eval::captions::ATTRIBUTES.iter().chain(&["all"]) {
            let v: Vec<f64> = by_seed
                .iter()
                .filter_map(|s| s[key][*attribute].as_f64())
                .collect();
            m.insert(
                attribute.to_string(),
                json!(Interval::of(&v).map(|i| i.mean)),
            );
        }
        mean.insert(key.into(), m.into());
    }
    json!({
        "runs": runs,
        "stage1": mean,
        "stage1_by_seed": by_seed,
        "aggregate": aggregate(outcomes),
    })
}

/// The configuration of the seed `seed` of a multi-seed run of `config`.
fn seeded_by(config: &CalLlavaConfig, seed: u64) -> CalLlavaConfig {
    seeded(config, seed.saturating_sub(config.seed) as usize)
}

/// The markdown section of the aggregate.
pub fn markdown(outcomes: &[(u64, Outcome)]) -> String {
    let mut s = String::new();
    let seeds: Vec<String> = outcomes.iter().map(|(s, _)| s.to_string()).collect();
    let _ = writeln!(
        s,
        "## Over {} seeds ({})\n\nMean ± 95 % t-interval over seeds (model init and data order; \
         the world is the same). Differences are paired: CAL − MLE on the same seed, then the \
         interval of those differences.\n",
        outcomes.len(),
        seeds.join(", ")
    );
    let show = |v: Vec<f64>, scale: f64, digits: usize| {
        Interval::of(&v).map_or("–".into(), |i| i.show(scale, digits))
    };
    let mut t = Table::new([
        "noise",
        "objective",
        "slot acc. %",
        "perplexity",
        "POPE F1 adv. %",
    ]);
    for noise in noises(outcomes) {
        for objective in ["mle", "cal", "cal − mle"] {
            let obj = (objective != "cal − mle").then_some(objective);
            let cell = |k: usize, scale: f64, digits: usize| {
                show(values(outcomes, noise, obj, &METRICS[k]), scale, digits)
            };
            t.row([
                noise.to_string(),
                objective.to_string(),
                cell(0, 100.0, 1),
                cell(1, 1.0, 3),
                cell(2, 100.0, 1),
            ]);
        }
    }
    let _ = write!(s, "{t}");
    let stage1 = |blind: bool| {
        let v: Vec<f64> = outcomes
            .iter()
            .filter_map(|(_, o)| {
                o.stage1.first().map(|(_, a)| {
                    if blind {
                        a.blind_caption_accuracy.all
                    } else {
                        a.caption_accuracy.all
                    }
                })
            })
            .collect();
        show(v, 100.0, 1)
    };
    let _ = writeln!(
        s,
        "\nStage-1 held-out caption accuracy (all attributes): {} % on the own images, {} % with \
         images swapped.",
        stage1(false),
        stage1(true)
    );
    s
}
