//! What `vig_select` writes: `report.md`, `summary.json`, `vig_by_kind.png` (bar chart),
//! `tokens.html` (held-out answer tokens colored by VIG), `loss.png`.

use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;
use serde_json::json;
use vlalign_data::{TextTokenizer, WordKind};

use crate::table::Table;
use crate::vig_select::{VigOutcome, VigSelectConfig};

/// The mean POPE F1 over the splits a run has (`None` without hallucination scores).
pub(crate) fn pope_mean(r: &crate::cal_eval::RunResult) -> Option<f64> {
    let h = r.hallucination.as_ref()?;
    (!h.pope_f1.is_empty()).then(|| h.pope_f1.values().sum::<f64>() / h.pope_f1.len() as f64)
}

/// `summary.json`.
pub fn summary(o: &VigOutcome) -> serde_json::Value {
    let runs: Vec<_> = o
        .runs
        .iter()
        .map(|r| {
            let h = r.result.hallucination.as_ref();
            json!({
                "p": r.p,
                "objective": r.objective,
                "kept_samples_pct": r.kept_samples_pct,
                "kept_tokens_pct": r.kept_tokens_pct,
                "slot_accuracy": r.result.slot_accuracy,
                "pope_f1": pope_mean(&r.result),
                "pope_f1_by_split": h.map(|h| &h.pope_f1),
                "chair_s": h.map(|h| h.chair_s),
                "chair_i": h.map(|h| h.chair_i),
                "cider": h.map(|h| h.cider),
                "perplexity": r.result.perplexity,
                "step_ms": r.result.step_ms,
            })
        })
        .collect();
    json!({
        "scoring_samples_per_s": o.scoring_samples_per_s,
        "vig_token_auroc": o.vig_token_auroc,
        "vig_by_kind": o.vig_by_kind,
        "vig_prior_predictable": o.prior.0,
        "vig_prior_unpredictable": o.prior.1,
        "runs": runs,
    })
}

fn opt(x: Option<f64>, scale: f64) -> String {
    x.map_or("–".into(), |v| format!("{:.1}", v * scale))
}

/// `report.md`.
pub fn markdown(config: &VigSelectConfig, o: &VigOutcome, command: &str, device: &str) -> String {
    let c = &config.common;
    let mut s = String::new();
    let _ = writeln!(s, "# vig_select\n\n`{command}` on {device}.\n");
    let _ = writeln!(
        s,
        "World: {} scenes (language prior {}). Stage 1: {} steps on captions{} (everything \
         trains, from scratch). VIG scored with the stage-1 model on every training QA sample: real and \
         blurred images (Gaussian σ = {} px on the {} px input, see `blurred.png`) in one batched \
         forward, {:.1} samples/s. Stage 2: {} steps from the stage-1 model on each selection, \
         vision tower frozen, same data order; the supervised tokens a selection drops inside a \
         kept sample weigh {} (`vig.floor`; 0 = the paper's rule).\n",
        c.world.images,
        c.world.prior,
        c.pretrain.steps,
        if c.pretrain_qa { " and QA" } else { "" },
        config.vig.sigma,
        c.model.image_size,
        o.scoring_samples_per_s,
        c.finetune.steps,
        config.vig.floor
    );
    let mut t = Table::new([
        "p",
        "objective",
        "kept samples %",
        "kept tokens %",
        "slot acc. %",
        "POPE F1 % (mean of 3)",
        "CHAIR_s %",
        "CHAIR_i %",
        "CIDEr",
        "perplexity",
        "step ms",
    ]);
    for r in &o.runs {
        let h = r.result.hallucination.as_ref();
        t.row([
            r.p.to_string(),
            r.objective.clone(),
            format!("{:.1}", r.kept_samples_pct),
            format!("{:.1}", r.kept_tokens_pct),
            opt(r.result.slot_accuracy, 100.0),
            opt(pope_mean(&r.result), 100.0),
            opt(h.map(|h| h.chair_s), 100.0),
            opt(h.map(|h| h.chair_i), 100.0),
            h.map_or("–".into(), |h| format!("{:.3}", h.cider)),
            format!("{:.3}", r.result.perplexity),
            format!("{:.1}", r.result.step_ms),
        ]);
    }
    let _ = write!(s, "{t}");
    let _ = writeln!(
        s,
        "\nPer-token VIG (stage-1 model, held-out split) as a score for grounded vs template \
         tokens: AUROC {}.\n",
        o.vig_token_auroc.map_or("–".into(), |a| format!("{a:.3}"))
    );
    let _ = writeln!(s, "Mean VIG by word kind (`vig_by_kind.png`):\n");
    let mut t = Table::new(["kind", "mean VIG (nats)"]);
    for (k, v) in &o.vig_by_kind {
        t.row([k.to_string(), format!("{v:.3}")]);
    }
    let _ = write!(s, "{t}");
    let _ = writeln!(
        s,
        "\nLanguage prior: grounded words the prior predicts (the color of a star) have mean VIG \
         {}, the others {}.",
        o.prior.0.map_or("–".into(), |v| format!("{v:.3}")),
        o.prior.1.map_or("–".into(), |v| format!("{v:.3}"))
    );
    s
}

/// Bar chart of mean VIG per word kind.
pub fn bar_chart(path: &Path, o: &VigOutcome) -> Result<(), String> {
    let has_font = crate::plot::font();
    let kinds: Vec<(&str, f64)> = o.vig_by_kind.iter().map(|(k, v)| (*k, *v)).collect();
    if kinds.is_empty() {
        return Ok(());
    }
    let e = |x: &dyn std::fmt::Display| format!("{}: {x}", path.display());
    let root = BitMapBackend::new(path, (720, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(|x| e(&x))?;
    let lo = kinds.iter().map(|k| k.1).fold(0.0f64, f64::min);
    let hi = kinds.iter().map(|k| k.1).fold(0.0f64, f64::max);
    let mut b = ChartBuilder::on(&root);
    b.margin(16);
    if has_font {
        b.caption("mean VIG by word kind", ("sans-serif", 20))
            .x_label_area_size(36)
            .y_label_area_size(56);
    }
    let n = kinds.len();
    let mut chart = b
        .build_cartesian_2d(
            0.0..n as f64,
            (lo - 0.1 * (hi - lo).abs() - 0.01)..(hi * 1.1 + 0.01),
        )
        .map_err(|x| e(&x))?;
    let names: Vec<String> = kinds.iter().map(|k| k.0.to_string()).collect();
    let label = |x: &f64| {
        let i = x.floor() as usize;
        if (x - i as f64 - 0.5).abs() < 0.01 {
            names.get(i).cloned().unwrap_or_default()
        } else {
            String::new()
        }
    };
    let mut mesh = chart.configure_mesh();
    if has_font {
        mesh.x_labels(2 * n + 1)
            .x_label_formatter(&label)
            .y_desc("nats");
    } else {
        mesh.disable_x_axis().disable_y_axis();
    }
    mesh.draw().map_err(|x| e(&x))?;
    chart
        .draw_series(kinds.iter().enumerate().map(|(i, (k, v))| {
            let color = if *k == "template" {
                RGBColor(150, 150, 150)
            } else {
                RGBColor(200, 60, 40)
            };
            Rectangle::new(
                [(i as f64 + 0.15, 0.0), (i as f64 + 0.85, *v)],
                color.filled(),
            )
        }))
        .map_err(|x| e(&x))?;
    root.present().map_err(|x| e(&x))
}

/// `tokens.html`: held-out answer tokens colored by VIG (white ≤ 0, red at the 95th percentile).
pub fn tokens_html(o: &VigOutcome, tokenizer: &TextTokenizer, samples: usize) -> String {
    let mut v: Vec<f32> = o.tokens.iter().map(|t| t.2).collect();
    v.sort_by(f32::total_cmp);
    let top = v.get(v.len() * 95 / 100).copied().unwrap_or(1.0).max(1e-3);
    let mut s = String::from(
        "<!doctype html><meta charset=utf-8><title>VIG</title><style>\
         body{font-family:sans-serif;max-width:70em;margin:2em auto}\
         .t{padding:2px 1px;border-radius:3px;font-family:monospace}\
         .g{text-decoration:underline 2px #06c}td{vertical-align:top;padding:.3em .8em}</style>\
         <h1>Answer tokens colored by VIG</h1><p>VIG = log q(y | image) − log q(y | blurred \
         image) with the stage-1 model; white ≤ 0, red ≥ the 95th percentile. \
         <span class='g'>Underlined</span>: grounded words by the world's truth.</p><table>",
    );
    let mut ids: Vec<&str> = Vec::new();
    for t in &o.tokens {
        if !ids.contains(&t.0.as_str()) {
            ids.push(&t.0);
        }
    }
    for id in ids.into_iter().take(samples) {
        let _ = write!(s, "<tr><td>{id}</td><td>");
        for t in o.tokens.iter().filter(|t| t.0 == id) {
            let text = tokenizer
                .decode(&[t.1])
                .unwrap_or_default()
                .replace('&', "&amp;")
                .replace('<', "&lt;");
            let x = (t.2 / top).clamp(0.0, 1.0);
            let gb = (255.0 * (1.0 - x)) as u8;
            let class = if t.3 != WordKind::Template {
                "t g"
            } else {
                "t"
            };
            let _ = write!(
                s,
                "<span class='{class}' style='background:rgb(255,{gb},{gb})' title='vig={:.2} {}'>{text}</span>",
                t.2,
                t.3.name()
            );
        }
        let _ = write!(s, "</td></tr>");
    }
    s.push_str("</table>");
    s
}

/// Write `report.md`, `summary.json`, `tokens.html`, `vig_by_kind.png` and `loss.png` into `out`.
pub fn write_all(
    out: &Path,
    config: &VigSelectConfig,
    outcome: &VigOutcome,
    command: &str,
    device: &str,
) -> Result<(), String> {
    let w = |name: &str, body: &str| {
        std::fs::write(out.join(name), body)
            .map_err(|e| format!("{}: {e}", out.join(name).display()))
    };
    w("report.md", &markdown(config, outcome, command, device))?;
    w(
        "summary.json",
        &serde_json::to_string_pretty(&summary(outcome)).expect("json"),
    )?;
    let html = tokens_html(outcome, &outcome.tokenizer, config.common.eval.html_samples);
    w("tokens.html", &html)?;
    bar_chart(&out.join("vig_by_kind.png"), outcome)?;
    crate::plot::loss_curves(&out.join("loss.png"), "vig_select", &outcome.curves)
}

/// The comparison on the console.
pub fn print_table(outcome: &VigOutcome) {
    println!(
        "\n{:>5} {:<8} {:>9} {:>9} {:>10} {:>8} {:>8}",
        "p", "objective", "samples%", "tokens%", "slot acc%", "POPE F1", "CHAIR_s"
    );
    let show = |v: Option<f64>| v.map_or("–".into(), |a| format!("{:.1}", 100.0 * a));
    for r in &outcome.runs {
        let h = r.result.hallucination.as_ref();
        println!(
            "{:>5} {:<8} {:>9.1} {:>9.1} {:>10} {:>8} {:>8}",
            r.p,
            r.objective,
            r.kept_samples_pct,
            r.kept_tokens_pct,
            show(r.result.slot_accuracy),
            show(pope_mean(&r.result)),
            show(h.map(|h| h.chair_s)),
        );
    }
}
