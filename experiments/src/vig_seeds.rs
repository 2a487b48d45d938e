//! `vig_select --seeds N`: the experiment once per seed (stage 1, scoring, every selection; model
//! init and data order moved, the world the same), each seed's full report in `seed-<s>/`, and
//! one comparison: every run's mean ± 95 % interval over seeds and its paired per-seed
//! difference to plain MLE (p = 100).

use std::path::Path;

use crate::comparison::{MetricSpec, SeedComparison};
use crate::inputs::RealData;
use crate::run::RunOptions;
use crate::vig_report;
use crate::vig_select::{SelectRun, VigOutcome, VigSelectConfig, run};

const METRICS: [MetricSpec; 5] = [
    MetricSpec {
        key: "slot_accuracy",
        header: "slot acc. %",
        scale: 100.0,
        digits: 1,
    },
    MetricSpec {
        key: "pope_f1",
        header: "POPE F1 % (mean of 3)",
        scale: 100.0,
        digits: 1,
    },
    MetricSpec {
        key: "chair_s",
        header: "CHAIR_s %",
        scale: 100.0,
        digits: 1,
    },
    MetricSpec {
        key: "perplexity",
        header: "perplexity",
        scale: 1.0,
        digits: 3,
    },
    MetricSpec {
        key: "kept_tokens_pct",
        header: "kept tokens %",
        scale: 1.0,
        digits: 1,
    },
];

/// The run's name in the comparison: `mle`, `vig p70`, `vig+cal p70`.
fn label(r: &SelectRun) -> String {
    if r.objective == "mle" {
        "mle".into()
    } else {
        format!("{} p{}", r.objective, r.p)
    }
}

fn values(r: &SelectRun) -> Vec<Option<f64>> {
    let h = r.result.hallucination.as_ref();
    vec![
        r.result.slot_accuracy,
        vig_report::pope_mean(&r.result),
        h.map(|h| h.chair_s),
        Some(r.result.perplexity),
        Some(r.kept_tokens_pct),
    ]
}

/// Run `config.seeds` seeds into `opts.out/seed-<s>/` and write the comparison into
/// `opts.out` (`report.md`, `summary.json`).
pub fn run_seeds(
    config: &VigSelectConfig,
    real: Option<&RealData>,
    opts: &RunOptions,
    command: &str,
    device: &str,
) -> Result<Vec<(u64, VigOutcome)>, String> {
    let mut outcomes = Vec::new();
    let mut comparison = SeedComparison::new(&METRICS);
    for k in 0..config.seeds {
        let seeded = VigSelectConfig {
            common: crate::seeds::seeded(&config.common, k),
            seeds: 1,
            ..config.clone()
        };
        let seed = seeded.common.seed;
        let dir = opts.out.join(format!("seed-{seed}"));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        eprintln!("== seed {seed} ({}/{})", k + 1, config.seeds);
        let seed_opts = RunOptions {
            out: dir.clone(),
            ..opts.clone()
        };
        let outcome = run(&seeded, real, &seed_opts)?;
        vig_report::write_all(&dir, &seeded, &outcome, command, device)?;
        for r in &outcome.runs {
            comparison.add(&label(r), seed, values(r));
        }
        outcomes.push((seed, outcome));
    }
    write(&opts.out, config, &comparison, &outcomes, command, device)?;
    Ok(outcomes)
}

fn write(
    out: &Path,
    config: &VigSelectConfig,
    comparison: &SeedComparison,
    outcomes: &[(u64, VigOutcome)],
    command: &str,
    device: &str,
) -> Result<(), String> {
    let links: Vec<String> = outcomes
        .iter()
        .map(|(s, _)| format!("[seed {s}](seed-{s}/report.md)"))
        .collect();
    let auroc: Vec<String> = outcomes
        .iter()
        .map(|(_, o)| o.vig_token_auroc.map_or("–".into(), |a| format!("{a:.3}")))
        .collect();
    let md = format!(
        "# vig_select over {} seeds\n\n`{command}` on {device}; dropped tokens of kept samples \
         weighted {} (`vig.floor`). Mean ± 95 % t-interval over seeds; the bold rows are the \
         intervals of the paired per-seed differences to plain MLE.\n\n{}\nVIG token AUROC per \
         seed: {}.\n\nEach seed's full report: {}\n",
        config.seeds,
        config.vig.floor,
        comparison.markdown("mle"),
        auroc.join(", "),
        links.join(", ")
    );
    let summary = serde_json::json!({
        "seeds": outcomes.iter().map(|(s, _)| s).collect::<Vec<_>>(),
        "floor": config.vig.floor,
        "vig_token_auroc": outcomes.iter().map(|(_, o)| o.vig_token_auroc).collect::<Vec<_>>(),
        "comparison": comparison.json("mle"),
    });
    let w = |name: &str, body: String| {
        std::fs::write(out.join(name), body)
            .map_err(|e| format!("{}: {e}", out.join(name).display()))
    };
    w("report.md", md)?;
    w(
        "summary.json",
        serde_json::to_string_pretty(&summary).expect("json"),
    )
}
