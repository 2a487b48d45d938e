//! `vig_select --quick` end to end: scores, selections, report and summary.

use std::process::Command;

#[test]
fn quick_run_writes_scores_report_and_summary() {
    let tmp = tempfile::tempdir().unwrap();
    let world = tmp.path().join("world");
    let out = tmp.path().join("run");
    let status = Command::new(env!("CARGO_BIN_EXE_vig_select"))
        .args(["--quick", "--quiet", "--device", "flex", "--world"])
        .arg(&world)
        .arg("--out")
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    for f in [
        "report.md",
        "summary.json",
        "vig_by_kind.png",
        "blurred.png",
        "tokens.html",
        "train_qa.vig.jsonl",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    assert!(
        world.join("train_qa.vig.jsonl").is_file(),
        "scores next to the dataset"
    );
    let first = std::fs::read_to_string(out.join("train_qa.vig.jsonl")).unwrap();
    let line: serde_json::Value = serde_json::from_str(first.lines().next().unwrap()).unwrap();
    assert!(line["id"].is_string() && line["vig"].is_number() && line["tokens"].is_array());
    let s: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("summary.json")).unwrap()).unwrap();
    assert!(s["scoring_samples_per_s"].as_f64().unwrap() > 0.0);
    assert!(s["vig_token_auroc"].is_number());
    let runs = s["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 3);
    for r in runs {
        for key in [
            "p",
            "kept_samples_pct",
            "kept_tokens_pct",
            "slot_accuracy",
            "pope_f1",
            "chair_s",
        ] {
            assert!(r[key].is_number(), "{key} missing in {r}");
        }
    }
    assert_eq!(runs[1]["objective"], "mle");
    assert_eq!(runs[1]["kept_tokens_pct"], 100.0);
    assert_eq!(runs[2]["objective"], "vig+cal");
}

/// `--seeds 2`: each seed's full report in `seed-<s>/`, and one comparison with every run's
/// interval and its paired difference to MLE.
#[test]
fn seeds_give_per_seed_reports_and_paired_differences_to_mle() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let status = Command::new(env!("CARGO_BIN_EXE_vig_select"))
        .args([
            "--quick", "--quiet", "--device", "flex", "--seeds", "2", "--world",
        ])
        .arg(tmp.path().join("world"))
        .arg("--out")
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    let s: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("summary.json")).unwrap()).unwrap();
    let seeds: Vec<u64> = serde_json::from_value(s["seeds"].clone()).unwrap();
    assert_eq!(seeds.len(), 2);
    for seed in &seeds {
        assert!(out.join(format!("seed-{seed}/report.md")).is_file());
    }
    let c = &s["comparison"];
    assert_eq!(c["baseline"], "mle");
    let slots = &c["runs"]["vig p50"]["slot_accuracy"];
    assert_eq!(slots["values"].as_array().unwrap().len(), 2);
    assert!(slots["interval"]["ci95"].is_number());
    let diff = &c["paired_differences"]["vig p50 - mle"]["slot_accuracy"]["values"];
    assert_eq!(diff.as_array().unwrap().len(), 2);
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains("**vig p50 − mle**"), "{report}");
}

#[test]
fn real_data_scores_the_users_records_with_the_loaded_model() {
    use burn::tensor::Device;
    use experiments::setup::ModelSize;
    use vlalign_data::TextTokenizer;

    let tmp = tempfile::tempdir().unwrap();
    let world = tmp.path().join("world");
    let config = vlalign_data::world::WorldConfig::new(40, 1);
    experiments::world::make_world(&config, &world, 400, false).unwrap();
    let tk = TextTokenizer::from_file(&world.join("tokenizer.json")).unwrap();
    let size = ModelSize {
        image_size: 32,
        width: 64,
        ..ModelSize::default()
    };
    let llava = size.llava(tk.vocab_size(), tk.token_id("<image>").unwrap() as usize);
    let hf = tmp.path().join("hf");
    vlalign_models::hf::save_llava(&llava.init(&Device::flex()), &llava, &hf).unwrap();
    std::fs::copy(world.join("tokenizer.json"), hf.join("tokenizer.json")).unwrap();
    let data = tmp.path().join("mine.json");
    std::fs::copy(world.join("train_qa.json"), &data).unwrap();

    let out = tmp.path().join("run");
    let output = Command::new(env!("CARGO_BIN_EXE_vig_select"))
        .args(["--quick", "--quiet", "--steps", "2", "--data"])
        .arg(&data)
        .arg("--image-folder")
        .arg(world.join("images"))
        .arg("--model")
        .arg(&hf)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        tmp.path().join("mine.vig.jsonl").is_file(),
        "scores next to the data"
    );
    let s: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(s["runs"].as_array().unwrap().len(), 3);
    assert!(!out.join("pretrain").exists(), "no stage 1 on real data");
}
