//! `seed_ideas --quick` end to end: one stage-1 model, stage 2 full / LoRA / PLoRA / with the
//! PixelLLM head / reading LaVIT tokens over two seeds, the report and summary carrying every
//! run; `--base-run` reuses that stage 1.

use std::path::Path;
use std::process::Command;

fn seed_ideas(world: &Path, out: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_seed_ideas"));
    c.args(["--quick", "--quiet", "--device", "flex", "--world"])
        .arg(world)
        .arg("--out")
        .arg(out);
    c
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// The PixelLLM head and LaVIT ran per seed and are in the summary, the report and the picture.
fn pixel_head_and_lavit_are_reported(out: &Path, summary: &serde_json::Value, report: &str) {
    assert!(out.join("pixel_head.png").is_file());
    for seed in ["seed-0", "seed-1"] {
        for run in ["pixel", "lavit"] {
            let p = out.join(seed).join(run).join("predictions.jsonl");
            assert!(p.is_file(), "{} missing", p.display());
        }
    }
    let pixel = summary["pixel_head"]["runs"].as_array().unwrap();
    assert_eq!(pixel.len(), 2);
    for r in pixel {
        let own = &r["own"]["all"];
        assert!(own["tokens"].as_u64().unwrap() > 0, "{r}");
        assert!(own["mean_px"].as_f64().unwrap() > 0.0);
        let inside = own["within_box"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&inside));
        assert!(r["swapped"]["all"]["mean_px"].is_number());
        assert!(r["constant"]["all"]["mean_px"].is_number());
    }
    let agg = &summary["pixel_head"]["aggregate"]["localisation"]["all"];
    assert_eq!(agg["own_images"]["mean_px"]["n"], 2);
    let lavit = summary["lavit"]["runs"].as_array().unwrap();
    assert_eq!(lavit.len(), 2);
    for r in lavit {
        let patches = r["patches"].as_f64().unwrap();
        let kept = r["kept_per_image"].as_f64().unwrap();
        assert!(patches > 0.0 && (0.0..=patches).contains(&kept), "{r}");
        assert!(r["reconstruction_error"].as_f64().unwrap().is_finite());
        assert!(r["codebook_perplexity"].as_f64().unwrap() >= 0.0);
        let acc = r["slot_accuracy"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&acc));
        assert!(!r["kept_by_objects"].as_array().unwrap().is_empty());
    }
    assert_eq!(
        summary["lavit"]["differences"]["slot_accuracy_lavit-full"]["n"],
        2
    );
    assert!(report.contains("PixelLLM localisation head") && report.contains("LaVIT"));
}

#[test]
fn quick_run_compares_plora_lora_and_full_finetuning() {
    let tmp = tempfile::tempdir().unwrap();
    let world = tmp.path().join("world");
    let out = tmp.path().join("ideas");
    let run = seed_ideas(&world, &out).output().unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    for f in ["report.md", "summary.json", "loss.png", "config.toml"] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    for seed in ["seed-0", "seed-1"] {
        for t in ["full", "lora", "plora"] {
            let p = out.join(seed).join(t).join("predictions.jsonl");
            assert!(p.is_file(), "{} missing", p.display());
        }
    }
    let summary = json(&out.join("summary.json"));
    let runs = summary["plora"]["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 6, "{runs:?}");
    let params = |t: &str| {
        let ps: Vec<u64> = runs
            .iter()
            .filter(|r| r["tuning"] == t)
            .map(|r| r["trainable_params"].as_u64().unwrap())
            .collect();
        assert_eq!(ps.len(), 2);
        ps[0]
    };
    // LoRA and PLoRA train the same adapters (+ the projector), far fewer than full.
    assert_eq!(params("lora"), params("plora"));
    assert!(params("plora") < params("full"));
    for r in runs {
        let acc = r["slot_accuracy"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&acc), "{r}");
        assert!(r["step_ms"].as_f64().unwrap() > 0.0);
    }
    assert!(summary["plora"]["differences"]["plora-lora"]["n"] == 2);
    assert!(summary["stage1"][0]["caption_accuracy_images_swapped"].is_number());
    assert!(summary["plora"]["stage1_slots"]["slot_accuracy"].is_number());
    assert!(out.join("pretrain").join("predictions.jsonl").is_file());
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains("plora − lora") && report.contains("images swapped"));
    pixel_head_and_lavit_are_reported(&out, &summary, &report);

    // A second run on the first one's stage 1: its stage-1 checkpoints are copied and loaded,
    // so its stage-1 caption accuracy is the same.
    let again = tmp.path().join("again");
    let run = seed_ideas(&world, &again)
        .args(["--seeds", "1", "--tunings", "plora", "--ideas", "plora"])
        .arg("--base-run")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let second = json(&again.join("summary.json"));
    assert_eq!(second["stage1"], summary["stage1"]);
    assert_eq!(second["plora"]["runs"].as_array().unwrap().len(), 1);
    assert!(second["pixel_head"].is_null() && second["lavit"].is_null());
    // A folder without a stage 1 is refused with a clear error.
    let run = seed_ideas(&world, &tmp.path().join("none"))
        .arg("--base-run")
        .arg(tmp.path())
        .output()
        .unwrap();
    assert!(!run.status.success());
    assert!(String::from_utf8_lossy(&run.stderr).contains("--base-run"));
}
