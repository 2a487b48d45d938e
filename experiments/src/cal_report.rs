//! What `cal_llava` writes next to its checkpoints: `report.md` (the comparison), `summary.json`
//! (the same numbers for machines), `loss.png` and `tokens.html` (answer tokens colored by CAL
//! weight, the CAL paper's figure 1 for our data).

use std::fmt::Write as _;
use std::path::Path;

use serde_json::json;
use vlalign_data::{TextTokenizer, WordKind};

use crate::cal_eval::{Outcome, RunResult};
use crate::cal_llava::CalLlavaConfig;
use crate::eval::captions::{ATTRIBUTES, CaptionAccuracy};
use crate::eval::token_eval::TokenEval;
use crate::table::{Table, opt3, pct};

/// `summary.json` (every row carries the run's `seed`).
pub fn summary(config: &CalLlavaConfig, outcome: &Outcome) -> serde_json::Value {
    let runs: Vec<_> = outcome
        .runs
        .iter()
        .map(|r| {
            json!({
                "seed": config.seed,
                "objective": r.objective,
                "noise": r.noise,
                "slot_accuracy": r.slot_accuracy,
                "perplexity": r.perplexity,
                "step_ms": r.step_ms,
                "cal_weight_auroc": r.cal_weight_auroc,
                "cal_weight_auroc_per_sequence": r.cal_weight_auroc_per_sequence,
                "delta_auroc": r.delta_auroc,
                "slot_accuracy_by_kind": r.slot_accuracy_by_kind,
                "valid_loss": r.valid_loss,
                "cider": r.hallucination.as_ref().map(|h| h.cider),
                "bleu4": r.hallucination.as_ref().map(|h| h.bleu4),
                "chair_s": r.hallucination.as_ref().map(|h| h.chair_s),
                "chair_i": r.hallucination.as_ref().map(|h| h.chair_i),
                "pope_f1": r.hallucination.as_ref().map(|h| &h.pope_f1),
                "pope_yes_ratio": r.hallucination.as_ref().map(|h| &h.pope_yes_ratio),
            })
        })
        .collect();
    let mut out = json!({ "pretrain_step_ms": outcome.pretrain_step_ms, "runs": runs });
    if let Some((_, acc)) = outcome.stage1.first() {
        out["stage1"] = json!({
            "seed": config.seed,
            "caption_accuracy": acc.caption_accuracy,
            "blind_caption_accuracy": acc.blind_caption_accuracy,
            "captions": acc.captions,
        });
    }
    out
}

/// The stage-1 table: caption attribute accuracy on the own images and with images swapped.
fn stage1_table(s: &mut String, stage1: &[(String, CaptionAccuracy)]) {
    if stage1.is_empty() {
        return;
    }
    let _ = writeln!(
        s,
        "Does the stage-1 model read the image? Share of object attributes its greedy held-out \
         captions name correctly ({} captions), and the same with images swapped (each record \
         captioned from another record's image: the language prior alone):\n",
        stage1[0].1.captions
    );
    let header = ["stage 1", "images"]
        .into_iter()
        .chain(ATTRIBUTES)
        .chain(["all"]);
    let mut t = Table::new(header);
    for (name, acc) in stage1 {
        for (images, a) in [
            ("own", &acc.caption_accuracy),
            ("swapped", &acc.blind_caption_accuracy),
        ] {
            let cells = ATTRIBUTES.iter().map(|k| pct(a.get(k)));
            t.row(
                [name.clone(), images.into()]
                    .into_iter()
                    .chain(cells)
                    .chain([pct(a.all)]),
            );
        }
    }
    let _ = writeln!(s, "{t}");
}

fn kinds(runs: &[RunResult]) -> Vec<String> {
    let mut k: Vec<String> = runs
        .iter()
        .flat_map(|r| r.slot_accuracy_by_kind.keys().cloned())
        .collect();
    k.sort();
    k.dedup();
    k
}

/// `report.md`.
pub fn markdown(config: &CalLlavaConfig, outcome: &Outcome, command: &str, device: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# cal_llava\n");
    let _ = writeln!(s, "`{command}` on {device}.\n");
    setup_text(&mut s, config, outcome);
    stage1_table(&mut s, &outcome.stage1);
    slots_table(&mut s, &outcome.runs, outcome.pretrain_step_ms);
    hallucination_table(&mut s, config, &outcome.runs);
    weights_table(&mut s, &outcome.runs);
    let _ = writeln!(
        s,
        "\nFiles: `config.toml` (resolved), `summary.json`, `loss.png`, `tokens.html`; per stage \
         `metrics.csv`, `checkpoints/`, and for stage 2 `predictions.jsonl`."
    );
    s
}

/// The world, the model, the stages and the held-out set, in words.
fn setup_text(s: &mut String, config: &CalLlavaConfig, outcome: &Outcome) {
    let _ = writeln!(
        s,
        "World: {} scenes in `{}` (language prior {}), tokenizer of {} tokens. Model: ViT {}×{} on {} px \
         (patch {}), decoder {}×{}. Stage 1: {} steps × {} captions (vision tower, projector and \
         decoder all train: nothing is pretrained here). Stage 2: {} steps × {} QA records, vision \
         tower frozen, MLE and CAL from the same stage-1 model and data order. CAL on in: {:?}; \
         α = {}, β = {}, W = {}, pooling {:?}, contrast {:?}.\n",
        config.world.images,
        config.world.dir.display(),
        config.world.prior,
        outcome.tokenizer.vocab_size(),
        config.model.vision_layers,
        config.model.vision_width,
        config.model.image_size,
        config.model.patch_size,
        config.model.layers,
        config.model.width,
        config.pretrain.steps,
        config.pretrain.batch_size,
        config.finetune.steps,
        config.finetune.batch_size,
        config.cal_stages,
        config.cal.alpha,
        config.cal.beta,
        config.cal.window,
        config.cal.pooling,
        config.cal.contrast,
    );
    let _ = writeln!(
        s,
        "Held-out: the first {} validation QA records (grounded answer slots generated greedily, one \
         question at a time; perplexity and per-token scores on the full answers).\n",
        config.eval.records
    );
}

/// Slot accuracy per kind, perplexity and CAL's AUROCs per run, and CAL − MLE per noise level.
fn slots_table(s: &mut String, runs: &[RunResult], pretrain_step_ms: f64) {
    let k = kinds(runs);
    let header = ["objective", "noise", "slot acc. %"]
        .into_iter()
        .map(String::from)
        .chain(k.iter().cloned())
        .chain(
            [
                "perplexity",
                "CAL-weight AUROC",
                "(per-seq.)",
                "Δ AUROC",
                "step ms",
            ]
            .map(String::from),
        );
    let mut t = Table::new(header);
    for r in runs {
        let by = k.iter().map(|k| {
            r.slot_accuracy_by_kind
                .get(k)
                .map_or("–".into(), |a| pct(*a))
        });
        let head = [
            r.objective.clone(),
            r.noise.to_string(),
            r.slot_accuracy.map_or("–".into(), pct),
        ];
        let tail = [
            format!("{:.3}", r.perplexity),
            opt3(r.cal_weight_auroc),
            opt3(r.cal_weight_auroc_per_sequence),
            opt3(r.delta_auroc),
            format!("{:.1}", r.step_ms),
        ];
        t.row(head.into_iter().chain(by).chain(tail));
    }
    let _ = writeln!(
        s,
        "{t}\nAUROC: CAL's weight (computed with each run's own model) as a score for grounded vs \
         template answer tokens of the world's truth; 0.5 = no signal. Step ms: median stage-2 \
         optimizer step (stage 1: {pretrain_step_ms:.1} ms).\n"
    );
    for noise in dedup(runs.iter().map(|r| r.noise)) {
        let find = |obj: &str| runs.iter().find(|r| r.noise == noise && r.objective == obj);
        if let (Some(m), Some(c)) = (find("mle"), find("cal")) {
            let diff = match (c.slot_accuracy, m.slot_accuracy) {
                (Some(c), Some(m)) => format!("{:+.1} points", 100.0 * (c - m)),
                _ => "n/a".into(),
            };
            let _ = writeln!(
                s,
                "- noise {noise}: CAL − MLE slot accuracy {diff}; perplexity {:.3} vs {:.3}; CAL/MLE step time {:.2}×.",
                c.perplexity,
                m.perplexity,
                c.step_ms / m.step_ms.max(1e-9)
            );
        }
    }
}

/// CIDEr, BLEU-4, CHAIR and POPE per run (world runs only).
fn hallucination_table(s: &mut String, config: &CalLlavaConfig, runs: &[RunResult]) {
    if !runs.iter().any(|r| r.hallucination.is_some()) {
        return;
    }
    let _ = writeln!(
        s,
        "\nCaptioning and hallucination ({} held-out captions generated from the image alone; \
         POPE: {} questions per split):\n",
        config.eval.captions, config.eval.pope_questions
    );
    let mut t = Table::new([
        "objective",
        "noise",
        "CIDEr",
        "BLEU-4",
        "CHAIR_s %",
        "CHAIR_i %",
        "POPE F1 random",
        "popular",
        "adversarial",
        "yes-ratio (adv.)",
    ]);
    for r in runs {
        let Some(h) = &r.hallucination else { continue };
        let f = |k: &str| h.pope_f1.get(k).map_or("–".into(), |v| pct(*v));
        t.row([
            r.objective.clone(),
            r.noise.to_string(),
            format!("{:.3}", h.cider),
            format!("{:.3}", h.bleu4),
            pct(h.chair_s),
            pct(h.chair_i),
            f("random"),
            f("popular"),
            f("adversarial"),
            h.pope_yes_ratio
                .get("adversarial")
                .map_or("–".into(), |v| pct(*v)),
        ]);
    }
    let _ = write!(s, "{t}");
}

/// Mean CAL weight per word kind per run.
fn weights_table(s: &mut String, runs: &[RunResult]) {
    let _ = writeln!(s, "\nMean CAL weight by word kind (reference pooling):\n");
    let mut kinds_w: Vec<String> = runs
        .iter()
        .flat_map(|r| r.weight_by_kind.keys().cloned())
        .collect();
    kinds_w.sort();
    kinds_w.dedup();
    let header = ["objective".to_string(), "noise".to_string()]
        .into_iter()
        .chain(kinds_w.iter().cloned());
    let mut t = Table::new(header);
    for r in runs {
        let v = kinds_w.iter().map(|k| {
            r.weight_by_kind
                .get(k)
                .map_or("–".into(), |w| format!("{w:.2}"))
        });
        t.row(
            [r.objective.clone(), r.noise.to_string()]
                .into_iter()
                .chain(v),
        );
    }
    let _ = write!(s, "{t}");
}

fn dedup(v: impl Iterator<Item = f64>) -> Vec<f64> {
    let mut out: Vec<f64> = Vec::new();
    for x in v {
        if !out.contains(&x) {
            out.push(x);
        }
    }
    out
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\n', "⏎")
}

/// `tokens.html`: the first `samples` held-out records, each answer token on a background as
/// dark as its CAL weight (α white … β red), grounded words underlined, for every run given.
pub fn tokens_html(
    runs: &[(&RunResult, &TokenEval)],
    tokenizer: &TextTokenizer,
    alpha: f32,
    beta: f32,
    samples: usize,
) -> String {
    let mut s = String::from(
        "<!doctype html><meta charset=utf-8><title>CAL weights</title><style>\
         body{font-family:sans-serif;max-width:70em;margin:2em auto}\
         .t{padding:2px 1px;border-radius:3px;font-family:monospace}\
         .g{text-decoration:underline 2px #06c}\
         td{vertical-align:top;padding:.3em .8em}</style>\
         <h1>Answer tokens colored by CAL weight</h1>\
         <p>Background: the CAL weight of the token (white = α, red = β), computed with each run's \
         own model on held-out samples. <span class='g'>Underlined</span>: grounded words \
         (color, shape, size, position, count, yes/no) by the world's truth. Hover a token for its \
         weight, Δ and kind.</p>",
    );
    for (run, te) in runs {
        let _ = write!(
            s,
            "<h2>{} (noise {}) — CAL-weight AUROC {}</h2><table>",
            run.objective,
            run.noise,
            opt3(run.cal_weight_auroc)
        );
        let mut ids: Vec<&str> = Vec::new();
        for t in &te.tokens {
            if !ids.contains(&t.id.as_str()) {
                ids.push(&t.id);
            }
        }
        for id in ids.into_iter().take(samples) {
            let _ = write!(s, "<tr><td>{}</td><td>", escape(id));
            for t in te.tokens.iter().filter(|t| t.id == id) {
                let text = tokenizer.decode(&[t.token]).unwrap_or_default();
                let x = ((t.weight_reference - alpha) / (beta - alpha).max(1e-6)).clamp(0.0, 1.0);
                let (g, b) = ((255.0 * (1.0 - x)) as u8, (255.0 * (1.0 - x)) as u8);
                let class = if t.kind != WordKind::Template {
                    "t g"
                } else {
                    "t"
                };
                let _ = write!(
                    s,
                    "<span class='{class}' style='background:rgb(255,{g},{b})' \
                     title='w={:.2} Δ={:.2} {}'>{}</span>",
                    t.weight_reference,
                    t.delta,
                    t.kind.name(),
                    escape(&text)
                );
            }
            let _ = write!(s, "</td></tr>");
        }
        let _ = write!(s, "</table>");
    }
    s
}

/// Write every file of the report into `dir`.
pub fn write_all(
    dir: &Path,
    config: &CalLlavaConfig,
    outcome: &Outcome,
    command: &str,
    device: &str,
) -> Result<(), String> {
    let w = |name: &str, text: &str| {
        std::fs::write(dir.join(name), text)
            .map_err(|e| format!("{}: {e}", dir.join(name).display()))
    };
    w("report.md", &markdown(config, outcome, command, device))?;
    w(
        "summary.json",
        &serde_json::to_string_pretty(&summary(config, outcome)).expect("json"),
    )?;
    let pairs: Vec<(&RunResult, &TokenEval)> = outcome.runs.iter().zip(&outcome.tokens).collect();
    w(
        "tokens.html",
        &tokens_html(
            &pairs,
            &outcome.tokenizer,
            config.cal.alpha,
            config.cal.beta,
            config.eval.html_samples,
        ),
    )?;
    crate::plot::loss_curves(&dir.join("loss.png"), "cal_llava", &outcome.curves)
}
