//! `seed_ideas`'s outputs: `summary.json` (`{"plora": {...}}`), `report.md` (the stage-1
//! grounding check; PLoRA vs LoRA vs full finetuning as mean ± 95 % interval over seeds, with
//! paired per-seed differences) and `loss.png`.

use std::fmt::Write as _;
use std::path::Path;

use serde_json::json;
use vlalign_eval::stats::Interval;

use crate::seed_ideas::{PLoraRun, SeedIdeasConfig, SeedIdeasOutcome, Tuning};
use crate::seed_ideas_lavit::LavitRun;
use crate::seed_ideas_pixel::{Localisation, Located, PixelRun};
use crate::table::{Table, pct};

/// Slot kinds shown as columns (the world's grounded answer kinds).
const KINDS: [&str; 6] = ["count", "color", "shape", "size", "position", "yesno"];

fn runs(outcome: &SeedIdeasOutcome, tuning: Tuning) -> Vec<&PLoraRun> {
    outcome
        .plora
        .iter()
        .filter(|r| r.tuning == tuning)
        .collect()
}

fn kind(r: &PLoraRun, k: &str) -> Option<f64> {
    r.slots_by_kind
        .iter()
        .find(|(name, _)| name == k)
        .map(|x| x.1)
}

/// Per seed, `a − b` of `f` (runs paired by seed).
fn paired(
    outcome: &SeedIdeasOutcome,
    a: Tuning,
    b: Tuning,
    f: impl Fn(&PLoraRun) -> Option<f64>,
) -> Vec<f64> {
    runs(outcome, a)
        .iter()
        .filter_map(|ra| {
            let rb = runs(outcome, b).into_iter().find(|rb| rb.seed == ra.seed)?;
            Some(f(ra)? - f(rb)?)
        })
        .collect()
}

fn show(v: &[f64], scale: f64, digits: usize) -> String {
    Interval::of(v).map_or("–".into(), |i| i.show(scale, digits))
}

/// The PLoRA comparison as JSON: every run, the aggregate per tuning and the paired
/// differences of PLoRA to the others.
fn plora_summary(config: &SeedIdeasConfig, outcome: &SeedIdeasOutcome) -> serde_json::Value {
    let mut aggregate = serde_json::Map::new();
    for &t in &config.plora.tunings {
        let rs = runs(outcome, t);
        let acc: Vec<f64> = rs.iter().map(|r| r.slot_accuracy).collect();
        let ms: Vec<f64> = rs.iter().map(|r| r.step_ms).collect();
        aggregate.insert(
            t.name().into(),
            json!({
                "slot_accuracy": Interval::of(&acc),
                "step_ms": Interval::of(&ms),
                "trainable_params": rs.first().map(|r| r.trainable_params),
            }),
        );
    }
    let mut differences = serde_json::Map::new();
    for other in [Tuning::Lora, Tuning::Full] {
        let d = paired(outcome, Tuning::Plora, other, |r| Some(r.slot_accuracy));
        differences.insert(format!("plora-{}", other.name()), json!(Interval::of(&d)));
    }
    json!({
        "stage1_slots": outcome.stage1_slots,
        "runs": outcome.plora,
        "aggregate": aggregate,
        "differences": differences,
        "rank": config.plora.plora.rank,
        "targets": config.plora.plora.targets,
        "steps": config.base.finetune.steps,
    })
}

/// `summary.json`.
pub fn summary(config: &SeedIdeasConfig, outcome: &SeedIdeasOutcome) -> serde_json::Value {
    let stage1: Vec<serde_json::Value> = outcome
        .stage1
        .iter()
        .map(|(name, a)| {
            json!({
                "stage": name,
                "caption_accuracy": a.caption_accuracy.all,
                "caption_accuracy_images_swapped": a.blind_caption_accuracy.all,
                "captions": a.captions,
            })
        })
        .collect();
    json!({
        "stage1": stage1,
        "plora": plora_summary(config, outcome),
        "pixel_head": (config.pixel_head.run).then(|| pixel_summary(config, outcome)),
        "lavit": (config.lavit.run).then(|| lavit_summary(config, outcome)),
        "seconds": outcome.seconds,
    })
}

/// `report.md`.
pub fn markdown(config: &SeedIdeasConfig, outcome: &SeedIdeasOutcome, command: &str) -> String {
    let mut s = String::new();
    let p = &config.plora;
    let _ = writeln!(
        s,
        "# seed_ideas\n\n`{command}`\n\n({:.0} s.) Stage 1 of `cal_llava`'s recipe ({} steps), \
         then stage 2 ({} steps, {} seeds of data order and adapter init) three ways from that \
         one model: `full` (projector + LLM, lr {:e}), `lora` (LoRA rank {} on {} of every \
         decoder layer, every token, + the projector) and `plora` (the same adapters at image \
         tokens only, + the projector), adapters at lr {:e}.\n",
        outcome.seconds,
        config.base.pretrain.steps,
        config.base.finetune.steps,
        config.seeds,
        config.base.finetune.optim.lr,
        p.lora.rank,
        p.lora.targets.join(", "),
        p.adapter_lr,
    );
    for (name, a) in &outcome.stage1 {
        let _ = writeln!(
            s,
            "Does the stage-1 model read the image? ({name}) held-out caption attributes {} % \
             with its own images vs {} % with the images swapped between records ({} \
             captions).\n",
            pct(a.caption_accuracy.all),
            pct(a.blind_caption_accuracy.all),
            a.captions
        );
    }
    let _ = writeln!(
        s,
        "## PLoRA vs LoRA vs full finetuning\n\nHeld-out grounded-slot accuracy (%), mean ± 95 % \
         t-interval over seeds; the difference rows are intervals of the per-seed differences.\n"
    );
    let t = comparison(config, outcome);
    let _ = writeln!(
        s,
        "{t}\nStep times are medians of each run's optimizer steps; runs train `--jobs` at a time, \
         so compare them within one run directory only.\n\nEach run's answers: `seed-<s>/<tuning>/predictions.jsonl`; loss curves of the \
         first seed in `loss.png`.\n"
    );
    if config.pixel_head.run {
        s.push_str(&pixel_markdown(config, outcome));
    }
    if config.lavit.run {
        s.push_str(&lavit_markdown(config, outcome));
    }
    s
}

/// The comparison table: the stage-1 model, each tuning over seeds, PLoRA's paired differences.
fn comparison(config: &SeedIdeasConfig, outcome: &SeedIdeasOutcome) -> Table {
    let mut header = vec!["stage 2", "slots %"];
    header.extend(KINDS);
    header.extend(["trainable parameters", "median step ms"]);
    let mut t = Table::new(header);
    let start = &outcome.stage1_slots;
    let mut row = vec![
        "none (the stage-1 model)".to_string(),
        pct(start.slot_accuracy),
    ];
    for k in KINDS {
        let v = start.slots_by_kind.iter().find(|(n, _)| n == k);
        row.push(v.map_or("–".into(), |(_, a)| pct(*a)));
    }
    row.extend(["0".to_string(), "".to_string()]);
    t.row(row);
    for &tuning in &config.plora.tunings {
        let rs = runs(outcome, tuning);
        let mut row = vec![
            tuning.name().to_string(),
            show(
                &rs.iter().map(|r| r.slot_accuracy).collect::<Vec<_>>(),
                100.0,
                1,
            ),
        ];
        for k in KINDS {
            row.push(show(
                &rs.iter().filter_map(|r| kind(r, k)).collect::<Vec<_>>(),
                100.0,
                1,
            ));
        }
        row.push(
            rs.first()
                .map_or("–".into(), |r| r.trainable_params.to_string()),
        );
        row.push(show(
            &rs.iter().map(|r| r.step_ms).collect::<Vec<_>>(),
            1.0,
            0,
        ));
        t.row(row);
    }
    for other in [Tuning::Lora, Tuning::Full] {
        let mut row = vec![
            format!("plora − {}", other.name()),
            show(
                &paired(outcome, Tuning::Plora, other, |r| Some(r.slot_accuracy)),
                100.0,
                1,
            ),
        ];
        for k in KINDS {
            row.push(show(
                &paired(outcome, Tuning::Plora, other, |r| kind(r, k)),
                100.0,
                1,
            ));
        }
        row.extend(["".to_string(), "".to_string()]);
        t.row(row);
    }
    t
}

/// Write `summary.json`, `report.md` and `loss.png` into `out`.
pub fn write_all(
    out: &Path,
    config: &SeedIdeasConfig,
    outcome: &SeedIdeasOutcome,
    command: &str,
) -> Result<(), String> {
    let path = out.join("summary.json");
    let text =
        serde_json::to_string_pretty(&summary(config, outcome)).map_err(|e| e.to_string())?;
    std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    let path = out.join("report.md");
    std::fs::write(&path, markdown(config, outcome, command))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    crate::plot::loss_curves(&out.join("loss.png"), "seed_ideas", &outcome.curves)
}

/// The word kinds a pixel run reports, `all` first.
fn pixel_kinds(outcome: &SeedIdeasOutcome) -> Vec<String> {
    let mut kinds = vec!["all".to_string()];
    if let Some(r) = outcome.pixel_head.first() {
        kinds.extend(r.own.by_kind.iter().map(|(k, _)| k.clone()));
    }
    kinds
}

/// One localisation number of every pixel run for word kind `kind` (`all`: every token).
fn located(
    outcome: &SeedIdeasOutcome,
    kind: &str,
    which: impl Fn(&PixelRun) -> &Localisation,
    f: impl Fn(&Located) -> f64,
) -> Vec<f64> {
    outcome
        .pixel_head
        .iter()
        .filter_map(|r| {
            let l = which(r);
            if kind == "all" {
                return Some(f(&l.all));
            }
            l.by_kind.iter().find(|(k, _)| k == kind).map(|(_, x)| f(x))
        })
        .collect()
}

/// `"pixel_head"` of `summary.json`.
fn pixel_summary(config: &SeedIdeasConfig, outcome: &SeedIdeasOutcome) -> serde_json::Value {
    let mut by_kind = serde_json::Map::new();
    for kind in pixel_kinds(outcome) {
        let mut entry = serde_json::Map::new();
        for (name, which) in PIXEL_INPUTS {
            let px = located(outcome, &kind, which, |l| l.mean_px);
            let inside = located(outcome, &kind, which, |l| l.within_box);
            entry.insert(
                name.into(),
                json!({"mean_px": Interval::of(&px), "within_box": Interval::of(&inside)}),
            );
        }
        by_kind.insert(kind, entry.into());
    }
    let slots: Vec<f64> = outcome.pixel_head.iter().map(|r| r.slot_accuracy).collect();
    let full_slots = pixel_minus_full(outcome);
    json!({
        "runs": outcome.pixel_head,
        "aggregate": {
            "localisation": by_kind,
            "slot_accuracy": Interval::of(&slots),
            "trainable_params": outcome.pixel_head.first().map(|r| r.trainable_params),
        },
        "differences": {"slot_accuracy_pixel-full": Interval::of(&full_slots)},
        "weight": config.pixel_head.weight,
        "hidden": config.pixel_head.hidden,
    })
}

/// Per seed, the slot accuracy of `seed_accuracy`'s runs minus the plain `full` run's.
fn minus_full(
    outcome: &SeedIdeasOutcome,
    seed_accuracy: impl Iterator<Item = (u64, f64)>,
) -> Vec<f64> {
    seed_accuracy
        .filter_map(|(seed, acc)| {
            let full = runs(outcome, Tuning::Full)
                .into_iter()
                .find(|r| r.seed == seed)?;
            Some(acc - full.slot_accuracy)
        })
        .collect()
}

/// Per seed, slot accuracy with the head minus the plain `full` run's.
fn pixel_minus_full(outcome: &SeedIdeasOutcome) -> Vec<f64> {
    let pixel = outcome.pixel_head.iter();
    minus_full(outcome, pixel.map(|r| (r.seed, r.slot_accuracy)))
}

/// What the head saw: the records' own images, swapped images, or nothing (the mean centre).
type Which = fn(&PixelRun) -> &Localisation;
const PIXEL_INPUTS: [(&str, Which); 3] = [
    ("own_images", |r| &r.own),
    ("images_swapped", |r| &r.swapped),
    ("mean_centre", |r| &r.constant),
];

/// The pixel head's section of `report.md`.
fn pixel_markdown(config: &SeedIdeasConfig, outcome: &SeedIdeasOutcome) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "## PixelLLM localisation head\n\nStage 2 `full` (same seeds, steps and data order) with \
         a head (MLP, hidden {}) on the LLM's last hidden state, trained by LM loss + {} · L1 of \
         the point written with each word that names an object (target: the object's box \
         centre). Held-out words, teacher forced; error in the world image's pixels, mean ± 95 % \
         t over seeds. `images swapped`: each record gets another record's image; `mean \
         centre`: the same point (the mean true centre) for every word.\n",
        config.pixel_head.hidden, config.pixel_head.weight,
    );
    let mut t = Table::new(vec![
        "words",
        "tokens",
        "error px (own)",
        "error px (swapped)",
        "error px (mean centre)",
        "in box % (own)",
        "in box % (swapped)",
        "in box % (mean centre)",
    ]);
    for kind in pixel_kinds(outcome) {
        let tokens = located(outcome, &kind, |r| &r.own, |l| l.tokens as f64);
        let mut row = vec![
            kind.clone(),
            tokens.first().map_or("–".into(), |n| format!("{n:.0}")),
        ];
        for (_, which) in PIXEL_INPUTS {
            row.push(show(&located(outcome, &kind, which, |l| l.mean_px), 1.0, 1));
        }
        for (_, which) in PIXEL_INPUTS {
            row.push(show(
                &located(outcome, &kind, which, |l| l.within_box),
                100.0,
                1,
            ));
        }
        t.row(row);
    }
    let slots: Vec<f64> = outcome.pixel_head.iter().map(|r| r.slot_accuracy).collect();
    let _ = writeln!(
        s,
        "{t}\nHeld-out slot accuracy with the head {} % (plain `full`: {} %; with − without, \
         paired by seed: {} points). Predicted vs true centres on held-out images: \
         `pixel_head.png`.\n",
        show(&slots, 100.0, 1),
        show(
            &runs(outcome, Tuning::Full)
                .iter()
                .map(|r| r.slot_accuracy)
                .collect::<Vec<_>>(),
            100.0,
            1
        ),
        show(&pixel_minus_full(outcome), 100.0, 1),
    );
    s
}

/// Per seed, slot accuracy reading LaVIT tokens minus the plain `full` run's.
fn lavit_minus_full(outcome: &SeedIdeasOutcome) -> Vec<f64> {
    let lavit = outcome.lavit.iter();
    minus_full(outcome, lavit.map(|r| (r.seed, r.slot_accuracy)))
}

fn lavit_values(outcome: &SeedIdeasOutcome, f: impl Fn(&LavitRun) -> f64) -> Vec<f64> {
    outcome.lavit.iter().map(f).collect()
}

/// Mean tokens kept by images with `objects` objects, per run.
fn kept_with(outcome: &SeedIdeasOutcome, objects: usize) -> Vec<f64> {
    outcome
        .lavit
        .iter()
        .filter_map(|r| {
            r.kept_by_objects
                .iter()
                .find(|k| k.objects == objects)
                .map(|k| k.kept)
        })
        .collect()
}

fn object_counts(outcome: &SeedIdeasOutcome) -> Vec<(usize, usize)> {
    outcome.lavit.first().map_or(Vec::new(), |r| {
        r.kept_by_objects
            .iter()
            .map(|k| (k.objects, k.images))
            .collect()
    })
}

/// `"lavit"` of `summary.json`.
fn lavit_summary(config: &SeedIdeasConfig, outcome: &SeedIdeasOutcome) -> serde_json::Value {
    let by_objects: serde_json::Map<String, serde_json::Value> = object_counts(outcome)
        .into_iter()
        .map(|(o, images)| {
            let v = json!({"images": images, "kept": Interval::of(&kept_with(outcome, o))});
            (o.to_string(), v)
        })
        .collect();
    let iv = |f: fn(&LavitRun) -> f64| json!(Interval::of(&lavit_values(outcome, f)));
    json!({
        "runs": outcome.lavit,
        "aggregate": {
            "kept_per_image": iv(|r| r.kept_per_image),
            "kept_by_objects": by_objects,
            "kept_objects_correlation": iv(|r| r.kept_objects_correlation),
            "codebook_perplexity": iv(|r| r.codebook_perplexity),
            "codes_used": iv(|r| r.codes_used as f64),
            "reconstruction_error": iv(|r| r.reconstruction_error),
            "slot_accuracy": iv(|r| r.slot_accuracy),
        },
        "differences": {"slot_accuracy_lavit-full": Interval::of(&lavit_minus_full(outcome))},
        "patches": outcome.lavit.first().map(|r| r.patches),
        "codebook_size": config.lavit.codebook_size,
        "loss": config.lavit.loss,
        "tokenizer_steps": config.lavit.tokenizer_steps,
    })
}

/// A LaVIT row: its name, its number per run, the digits shown.
type Measure = (&'static str, fn(&LavitRun) -> f64, usize);

/// LaVIT's section of `report.md`.
fn lavit_markdown(config: &SeedIdeasConfig, outcome: &SeedIdeasOutcome) -> String {
    let mut s = String::new();
    let l = &config.lavit;
    let patches = outcome.lavit.first().map_or(0, |r| r.patches);
    let _ = writeln!(
        s,
        "## LaVIT dynamic visual tokenizer\n\nPer seed: the tokenizer (selector, merger, \
         codebook of {} × {}, decoder) trained {} steps to reconstruct the stage-1 ViT features \
         (target keep ratio {}, Gumbel τ {}), then stage 2 `full` (same seed, steps, data order) \
         with the LLM reading the kept, merged tokens (dropped patches hidden), the tokenizer \
         frozen. Held-out images; mean ± 95 % t over seeds.\n",
        l.codebook_size, l.d_code, l.tokenizer_steps, l.loss.keep_ratio, l.loss.tau,
    );
    let mut t = Table::new(vec!["measure", "LaVIT"]);
    t.row(vec![
        format!("tokens per image (of {patches})"),
        show(&lavit_values(outcome, |r| r.kept_per_image), 1.0, 1),
    ]);
    for (objects, images) in object_counts(outcome) {
        t.row(vec![
            format!("  images with {objects} object(s) ({images})"),
            show(&kept_with(outcome, objects), 1.0, 1),
        ]);
    }
    let rows: [Measure; 4] = [
        (
            "correlation tokens kept ~ objects",
            |r| r.kept_objects_correlation,
            2,
        ),
        ("codebook perplexity", |r| r.codebook_perplexity, 1),
        ("codes used", |r| r.codes_used as f64, 0),
        (
            "reconstruction error ‖x̂−x‖²/‖x−x̄‖²",
            |r| r.reconstruction_error,
            3,
        ),
    ];
    for (name, f, digits) in rows {
        t.row(vec![
            name.into(),
            show(&lavit_values(outcome, f), 1.0, digits),
        ]);
    }
    let full: Vec<f64> = runs(outcome, Tuning::Full)
        .iter()
        .map(|r| r.slot_accuracy)
        .collect();
    t.row(vec![
        "slot accuracy % (LaVIT tokens)".into(),
        show(&lavit_values(outcome, |r| r.slot_accuracy), 100.0, 1),
    ]);
    t.row(vec![
        format!("slot accuracy % (all {patches} patches, plain `full`)"),
        show(&full, 100.0, 1),
    ]);
    t.row(vec![
        "LaVIT − full (paired by seed), points".into(),
        show(&lavit_minus_full(outcome), 100.0, 1),
    ]);
    let _ = writeln!(s, "{t}");
    s
}
