//! `seva_dpo --quick` end to end: pairs made and scored by the starting model, DPO full and
//! LoRA over two seeds, the report and summary; `seva_dpo score` on the saved starting model
//! reproduces the reference log-probs of the pairs file; `--resume` reuses every finished stage.

use std::path::Path;
use std::process::Command;

fn seva(world: &Path, out: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_seva_dpo"));
    c.args(["--quick", "--quiet", "--device", "flex", "--world"])
        .arg(world)
        .arg("--out")
        .arg(out);
    c
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// The live reference of `cal_weighted` stays on one device: a data-parallel run of it is
/// refused before anything is written.
#[test]
fn cal_weighted_on_several_devices_is_refused_before_writing() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let run = Command::new(env!("CARGO_BIN_EXE_seva_dpo"))
        .args([
            "--quick",
            "--quiet",
            "--devices",
            "flex,flex",
            "--variants",
            "cal_weighted",
        ])
        .arg("--world")
        .arg(tmp.path().join("world"))
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success());
    assert!(
        stderr.contains("cal_weighted") && stderr.contains("--devices"),
        "{stderr}"
    );
    assert!(!out.exists(), "the run directory was created");
}

#[test]
fn quick_run_writes_pairs_runs_and_the_summary() {
    let tmp = tempfile::tempdir().unwrap();
    let world = tmp.path().join("world");
    let out = tmp.path().join("seva");
    let run = seva(&world, &out).output().unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    assert!(stderr.contains("pairs/s"), "no pair rate logged: {stderr}");
    for f in ["report.md", "summary.json", "rewards.png", "config.toml"] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let s = json(&out.join("summary.json"));
    let runs = s["runs"].as_array().unwrap();
    // 2 noise steps × 2 variants × 2 seeds.
    assert_eq!(runs.len(), 8, "{s}");
    for r in runs {
        for key in [
            "pope_f1_adversarial",
            "pope_f1_random",
            "chair_s",
            "slot_accuracy",
        ] {
            let v = r[key].as_f64();
            assert!(v.is_some_and(|v| (0.0..=1.0).contains(&v)), "{key}: {r}");
        }
        let reward = r["reward_accuracy"].as_f64();
        assert!(reward.is_some_and(|v| (0.0..=1.0).contains(&v)), "{r}");
        assert!(["full", "lora"].contains(&r["variant"].as_str().unwrap()));
    }
    let lora = runs.iter().find(|r| r["variant"] == "lora").unwrap();
    let full = runs.iter().find(|r| r["variant"] == "full").unwrap();
    assert!(
        lora["trainable_parameters"].as_u64() < full["trainable_parameters"].as_u64(),
        "LoRA trains fewer parameters: {lora} vs {full}"
    );
    let pairs = &s["pairs"];
    let generated = pairs["generated"].as_u64().unwrap();
    assert!(generated > 0, "{pairs}");
    // Every training question is a pair or dropped, at each noise step.
    for p in pairs["by_noise_step"].as_array().unwrap() {
        let n = p["generated"].as_u64().unwrap() + p["dropped_identical"].as_u64().unwrap();
        assert_eq!(n, 240, "{p}");
    }
    // The pairs file carries the reference's log-probs.
    let text = std::fs::read_to_string(out.join("pairs-noise500.jsonl")).unwrap();
    let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    for key in [
        "id",
        "image",
        "question",
        "chosen",
        "rejected",
        "augmentation",
    ] {
        assert!(first[key].is_string(), "{key}: {first}");
    }
    assert!(first["ref_logp_chosen"].as_f64().is_some_and(|x| x < 0.0));
    assert!(first["ref_logp_rejected"].as_f64().is_some_and(|x| x < 0.0));
    let merged = out.join("dpo-lora-noise500-seed0").join("merged");
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        assert!(merged.join(f).is_file(), "merged/{f} missing");
    }

    // `score` with the starting model (saved as a transformers directory) reproduces the
    // reference log-probs written into the pairs file.
    let scores = tmp.path().join("scores.jsonl");
    let status = Command::new(env!("CARGO_BIN_EXE_seva_dpo"))
        .args(["--quiet", "--device", "flex", "score", "--model"])
        .arg(out.join("start-model"))
        .arg("--pairs")
        .arg(out.join("pairs-noise500.jsonl"))
        .arg("--image-folder")
        .arg(world.join("images"))
        .arg("--out")
        .arg(&scores)
        .args(["--system", vlalign_data::world::SYSTEM])
        .status()
        .unwrap();
    assert!(status.success());
    let scored = std::fs::read_to_string(&scores).unwrap();
    assert_eq!(scored.lines().count(), text.lines().count());
    for (a, b) in scored.lines().zip(text.lines()) {
        let (a, b): (serde_json::Value, serde_json::Value) = (
            serde_json::from_str(a).unwrap(),
            serde_json::from_str(b).unwrap(),
        );
        assert_eq!(a["id"], b["id"]);
        for (x, y) in [
            ("logp_chosen", "ref_logp_chosen"),
            ("logp_rejected", "ref_logp_rejected"),
        ] {
            let (x, y) = (a[x].as_f64().unwrap(), b[y].as_f64().unwrap());
            assert!((x - y).abs() < 1e-3, "{}: {x} vs {y}", a["id"]);
        }
    }

    // A resumed run finds every stage finished and reproduces the scores.
    let again = seva(&world, &out).arg("--resume").output().unwrap();
    assert!(again.status.success());
    let s2 = json(&out.join("summary.json"));
    let metrics = |s: &serde_json::Value| -> Vec<serde_json::Value> {
        let keys = [
            "pope_f1_adversarial",
            "chair_s",
            "slot_accuracy",
            "reward_accuracy",
        ];
        s["runs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| serde_json::json!(keys.map(|k| r[k].clone())))
            .collect()
    };
    assert_eq!(metrics(&s), metrics(&s2));
}

/// `seva_dpo score` on the transformers fixture (`tools/make_fixtures.py --only seva_score`):
/// a tiny LLaVA with a byte-level BPE tokenizer; each answer's summed log-prob under vicuna_v1
/// equals what `LlavaForConditionalGeneration` gives (≤ 1e-4).
#[test]
fn score_matches_transformers_on_the_fixture() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/seva_score");
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("scores.jsonl");
    let run = Command::new(env!("CARGO_BIN_EXE_seva_dpo"))
        .args(["--quiet", "--device", "flex", "score", "--model"])
        .arg(fixture.join("model"))
        .arg("--pairs")
        .arg(fixture.join("pairs.jsonl"))
        .arg("--image-folder")
        .arg(fixture.join("images"))
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let ours = std::fs::read_to_string(&out).unwrap();
    let want = std::fs::read_to_string(fixture.join("expected.jsonl")).unwrap();
    assert_eq!(ours.lines().count(), 3);
    for (a, b) in ours.lines().zip(want.lines()) {
        let (a, b): (serde_json::Value, serde_json::Value) = (
            serde_json::from_str(a).unwrap(),
            serde_json::from_str(b).unwrap(),
        );
        assert_eq!(a["id"], b["id"]);
        for key in ["logp_chosen", "logp_rejected"] {
            let (x, y) = (a[key].as_f64().unwrap(), b[key].as_f64().unwrap());
            assert!(
                (x - y).abs() <= 1e-4,
                "{} {key}: {x} vs transformers {y}",
                a["id"]
            );
        }
    }
}

/// A bad pair (its image missing, its answer cut by `--max-len`) is reported by id and skipped;
/// the good pairs are scored and written as before.
#[test]
fn score_skips_bad_pairs_by_id_and_writes_the_others() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/seva_score");
    let tmp = tempfile::tempdir().unwrap();
    let mut pairs = std::fs::read_to_string(fixture.join("pairs.jsonl")).unwrap();
    let long = "very ".repeat(400);
    pairs.push_str(concat!(
        r#"{"id": "no-image", "image": "missing.png", "question": "Q?", "#,
        r#""chosen": "A.", "rejected": "B."}"#,
        "\n"
    ));
    pairs.push_str(&format!(
        "{{\"id\": \"cut\", \"image\": \"a.png\", \"question\": \"Q?\", \"chosen\": \"{long}\", \"rejected\": \"B.\"}}\n"
    ));
    let input = tmp.path().join("pairs.jsonl");
    std::fs::write(&input, pairs).unwrap();
    let out = tmp.path().join("scores.jsonl");
    let run = Command::new(env!("CARGO_BIN_EXE_seva_dpo"))
        .args([
            "--quiet",
            "--device",
            "flex",
            "score",
            "--max-len",
            "256",
            "--model",
        ])
        .arg(fixture.join("model"))
        .arg("--pairs")
        .arg(&input)
        .arg("--image-folder")
        .arg(fixture.join("images"))
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    assert!(stderr.contains("skipped pair no-image"), "{stderr}");
    assert!(stderr.contains("skipped pair cut"), "{stderr}");
    let ours = std::fs::read_to_string(&out).unwrap();
    let want = std::fs::read_to_string(fixture.join("expected.jsonl")).unwrap();
    let ids = |text: &str| -> Vec<String> {
        text.lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["id"].to_string())
            .collect()
    };
    assert_eq!(ids(&ours), ids(&want));
}

/// The user's model and records (the transformers fixture, a tiny random LLaVA whose answers
/// depend on the image): `seva_dpo pairs` makes and scores pairs; the experiment itself runs
/// DPO (LoRA) on them and reports the held-out reward accuracy, saving the merged model.
#[test]
fn pairs_and_dpo_run_on_a_users_model_and_records() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/seva_score");
    let tmp = tempfile::tempdir().unwrap();
    let records: Vec<serde_json::Value> = (0..40)
        .map(|i| {
            let q = [
                "What is in the image?",
                "What color is it?",
                "Describe the scene.",
                "Is it large?",
            ];
            serde_json::json!({
                "id": format!("r{i}"),
                "image": if i % 2 == 0 { "a.png" } else { "b.png" },
                "conversations": [
                    {"from": "human", "value": format!("<image>\n{}", q[i % 4])},
                    {"from": "gpt", "value": "It is red."}
                ]
            })
        })
        .collect();
    let data = tmp.path().join("records.json");
    std::fs::write(&data, serde_json::to_string(&records).unwrap()).unwrap();
    let common = |c: &mut Command| {
        c.arg("--model")
            .arg(fixture.join("model"))
            .arg("--data")
            .arg(&data)
            .arg("--image-folder")
            .arg(fixture.join("images"));
    };
    let pairs = tmp.path().join("pairs.jsonl");
    let mut c = Command::new(env!("CARGO_BIN_EXE_seva_dpo"));
    c.args([
        "--quiet",
        "--device",
        "flex",
        "pairs",
        "--max-new-tokens",
        "6",
    ]);
    common(&mut c);
    let out = c.arg("--out").arg(&pairs).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&pairs).unwrap();
    assert!(text.lines().count() > 0, "no pair made");
    for line in text.lines() {
        let p: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_ne!(p["chosen"], p["rejected"]);
        assert!(
            p["ref_logp_chosen"].as_f64().is_some_and(|x| x < 0.0),
            "{p}"
        );
    }

    let run = tmp.path().join("run");
    let mut c = Command::new(env!("CARGO_BIN_EXE_seva_dpo"));
    c.args([
        "--quiet", "--device", "flex", "--steps", "2", "--seeds", "1",
    ])
    .args(["--variants", "lora", "--noise-steps", "800"]);
    common(&mut c);
    let out = c.arg("--out").arg(&run).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = json(&run.join("summary.json"));
    let runs = s["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 1, "{s}");
    assert!(
        runs[0]["pope_f1_adversarial"].is_null(),
        "no world: no POPE"
    );
    let merged = run.join("dpo-lora-noise800-seed0").join("merged");
    assert!(merged.join("model.safetensors").is_file());
}
