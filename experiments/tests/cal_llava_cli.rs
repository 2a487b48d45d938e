//! `cal_llava` end to end: the `--quick` profile writes its report, and a run killed with
//! SIGKILL and resumed gives the same losses as one never interrupted.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn cal_llava(world: &Path, out: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_cal_llava"));
    c.args(["--quick", "--quiet", "--device", "flex", "--world"])
        .arg(world)
        .arg("--out")
        .arg(out)
        .args(extra);
    c
}

fn losses(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stages: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.path().join("metrics.csv").is_file())
        .map(|e| e.path())
        .collect();
    stages.sort();
    for s in stages {
        let text = std::fs::read_to_string(s.join("metrics.csv")).unwrap();
        for line in text.lines().skip(1) {
            let cells: Vec<&str> = line.split(',').collect();
            out.push(format!(
                "{}:{}:{}",
                s.file_name().unwrap().to_string_lossy(),
                cells[0],
                cells[1]
            ));
        }
    }
    out
}

/// Every file under `dir` with its bytes.
fn snapshot(dir: &Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                files.push((p.clone(), std::fs::read(&p).unwrap()));
            }
        }
    }
    files.sort();
    files
}

#[test]
fn quick_run_writes_the_report() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let status = cal_llava(&tmp.path().join("world"), &out, &[])
        .status()
        .unwrap();
    assert!(status.success());
    for f in [
        "report.md",
        "summary.json",
        "loss.png",
        "tokens.html",
        "config.toml",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("summary.json")).unwrap()).unwrap();
    let runs = summary["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2);
    for (r, obj) in runs.iter().zip(["mle", "cal"]) {
        assert_eq!(r["objective"], obj);
        for key in [
            "noise",
            "slot_accuracy",
            "perplexity",
            "step_ms",
            "cal_weight_auroc",
        ] {
            assert!(r[key].is_number(), "{key} missing in {r}");
        }
    }
    // Stage 1's caption accuracy, own images and swapped, per attribute (fractions).
    for key in ["caption_accuracy", "blind_caption_accuracy"] {
        for attribute in ["count", "size", "color", "shape", "position", "all"] {
            let v = summary["stage1"][key][attribute].as_f64();
            assert!(
                v.is_some_and(|v| (0.0..=1.0).contains(&v)),
                "stage1.{key}.{attribute}: {v:?}"
            );
        }
    }
    assert!(out.join("pretrain/captions.jsonl").is_file());
    assert!(out.join("pretrain/captions_swapped.jsonl").is_file());
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    for column in [
        "CAL-weight AUROC",
        "CIDEr",
        "CHAIR_s",
        "POPE F1",
        "images swapped",
    ] {
        assert!(report.contains(column), "{column} missing from the report");
    }

    // A rerun into the finished directory without --resume, or with a bad flag, is refused
    // naming the directory or the flag, and every file stays as it was.
    let before = snapshot(&out);
    for extra in [&[][..], &["--resume", "--devices", "flex,bogus"][..]] {
        let again = cal_llava(&tmp.path().join("world"), &out, extra)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&again.stderr);
        assert!(!again.status.success(), "{extra:?}: {stderr}");
        let named = if extra.is_empty() {
            out.display().to_string()
        } else {
            "--devices".to_string()
        };
        assert!(stderr.contains(&named), "{extra:?}: {stderr}");
        assert!(
            snapshot(&out) == before,
            "{extra:?} changed the run directory"
        );
    }

    // `evaluate --run` re-scores the trained models on the test split.
    let status = Command::new(env!("CARGO_BIN_EXE_evaluate"))
        .args(["--split", "test", "--device", "flex", "--run"])
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    let eval: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("eval-test.json")).unwrap()).unwrap();
    assert_eq!(eval["runs"].as_array().unwrap().len(), 2);
    assert!(out.join("eval-test.md").is_file());
}

#[test]
fn seeds_give_per_seed_rows_and_intervals() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let status = cal_llava(
        &tmp.path().join("world"),
        &out,
        &["--steps", "3", "--seeds", "2"],
    )
    .status()
    .unwrap();
    assert!(status.success());
    for seed in ["seed-0", "seed-1"] {
        assert!(
            out.join(seed).join("report.md").is_file(),
            "{seed} report missing"
        );
    }
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("summary.json")).unwrap()).unwrap();
    let runs = summary["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 4);
    let seeds: Vec<i64> = runs.iter().map(|r| r["seed"].as_i64().unwrap()).collect();
    assert_eq!(seeds, [0, 0, 1, 1]);
    // The two seeds train different models.
    assert_ne!(runs[0]["perplexity"], runs[2]["perplexity"]);
    let agg = &summary["aggregate"];
    for row in agg["runs"].as_array().unwrap() {
        assert_eq!(row["slot_accuracy"]["n"], 2, "{row}");
        assert!(row["perplexity"]["ci95"].is_number(), "{row}");
    }
    let diff = &agg["cal_minus_mle"][0]["perplexity"];
    let by_hand = (runs[1]["perplexity"].as_f64().unwrap()
        - runs[0]["perplexity"].as_f64().unwrap()
        + runs[3]["perplexity"].as_f64().unwrap()
        - runs[2]["perplexity"].as_f64().unwrap())
        / 2.0;
    assert!(
        (diff["mean"].as_f64().unwrap() - by_hand).abs() < 1e-9,
        "{diff}"
    );
    assert!(summary["stage1"]["caption_accuracy"]["all"].is_number());
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains("Over 2 seeds") && report.contains("cal − mle"));
}

#[test]
fn killed_run_resumes_to_the_same_losses() {
    let tmp = tempfile::tempdir().unwrap();
    let world = tmp.path().join("world");
    let steps = ["--steps", "30"];
    let full = tmp.path().join("full");
    assert!(cal_llava(&world, &full, &steps).status().unwrap().success());

    let cut = tmp.path().join("cut");
    let mut child = cal_llava(&world, &cut, &steps)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let first = cut.join("pretrain/checkpoints/step-6.json");
    let start = Instant::now();
    while !first.is_file() && start.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(first.is_file(), "no checkpoint appeared");

    let status = cal_llava(&world, &cut, &[&steps[..], &["--resume"]].concat())
        .status()
        .unwrap();
    assert!(status.success());
    let (a, b) = (losses(&full), losses(&cut));
    assert!(!a.is_empty());
    assert_eq!(a, b, "losses after kill + resume differ");
}

#[test]
fn real_data_flags_train_a_loaded_model() {
    use burn::tensor::Device;
    use experiments::setup::ModelSize;
    use vlalign_data::TextTokenizer;

    let tmp = tempfile::tempdir().unwrap();
    let world = tmp.path().join("world");
    // A quick run makes the world; then a Hugging Face LLaVA directory with its tokenizer.
    assert!(
        cal_llava(&world, &tmp.path().join("q"), &["--steps", "2"])
            .status()
            .unwrap()
            .success()
    );
    let tk = TextTokenizer::from_file(&world.join("tokenizer.json")).unwrap();
    let size = ModelSize {
        image_size: 32,
        width: 64,
        ..ModelSize::default()
    };
    let config = size.llava(tk.vocab_size(), tk.token_id("<image>").unwrap() as usize);
    let model = config.init(&Device::flex());
    let hf = tmp.path().join("hf");
    vlalign_models::hf::save_llava(&model, &config, &hf).unwrap();
    std::fs::copy(world.join("tokenizer.json"), hf.join("tokenizer.json")).unwrap();

    let out = tmp.path().join("real");
    let output = Command::new(env!("CARGO_BIN_EXE_cal_llava"))
        .args(["--quick", "--quiet", "--steps", "3", "--data"])
        .arg(world.join("train_qa.json"))
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
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["runs"].as_array().unwrap().len(), 2);
    assert!(summary["runs"][0]["perplexity"].is_number());
    assert!(out.join("finetune-cal-noise0/metrics.csv").is_file());
}

/// A word-level `tokenizer.json` of exactly `size` tokens (`<unk>`, `<s>`, `</s>`, a newline,
/// the world's words, fillers) and neither `<image>` nor `<pad>`.
fn bare_tokenizer(size: usize) -> serde_json::Value {
    let words = "how many objects are there what color is the shape object it a small large at top \
                 bottom left right center circle square triangle diamond star red green blue \
                 yellow purple orange yes no one two three four in image where of or . ? :";
    let mut vocab = serde_json::Map::new();
    for (i, w) in ["<unk>", "<s>", "</s>", "\n"]
        .into_iter()
        .map(String::from)
        .chain(words.split_whitespace().map(String::from))
        .chain((0..).map(|k| format!("filler{k}")))
        .take(size)
        .enumerate()
    {
        vocab.insert(w, i.into());
    }
    let added = |id: usize, content: &str, special: bool| {
        serde_json::json!({"id": id, "content": content, "single_word": false, "lstrip": false,
                           "rstrip": false, "normalized": false, "special": special})
    };
    serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [added(0, "<unk>", true), added(1, "<s>", true), added(2, "</s>", true),
                         added(3, "\n", false)],
        "normalizer": {"type": "Lowercase"}, "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": null, "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"},
    })
}

#[test]
fn composes_a_llava_from_a_bare_llm_whose_tokenizer_lacks_image_and_pad() {
    let tmp = tempfile::tempdir().unwrap();
    let world = tmp.path().join("world");
    let wc = vlalign_data::world::WorldConfig::new(30, 0);
    experiments::world::make_world(&wc, &world, 300, false).unwrap();
    // The Llama fixture (128 embedding rows) with a tokenizer that fills all 128 ids.
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures");
    let llm = tmp.path().join("llm");
    std::fs::create_dir_all(&llm).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixtures.join("llama").join(f), llm.join(f)).unwrap();
    }
    let tk = serde_json::to_string(&bare_tokenizer(128)).unwrap();
    std::fs::write(llm.join("tokenizer.json"), tk).unwrap();
    let out = tmp.path().join("run");
    let output = Command::new(env!("CARGO_BIN_EXE_cal_llava"))
        .args([
            "--quick", "--quiet", "--steps", "2", "--noise", "0", "--data",
        ])
        .arg(world.join("train_qa.json"))
        .arg("--image-folder")
        .arg(world.join("images"))
        .arg("--vision")
        .arg(fixtures.join("clip_vision"))
        .arg("--llm")
        .arg(&llm)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("added <image> as token 128"), "{stderr}");
    // The run keeps the grown tokenizer; the model trained with 130 rows.
    let saved = vlalign_data::TextTokenizer::from_file(&out.join("tokenizer.json")).unwrap();
    assert_eq!(saved.token_id("<image>"), Some(128));
    assert_eq!(saved.token_id("<pad>"), Some(129));
    assert_eq!(saved.vocab_size(), 130);
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["runs"].as_array().unwrap().len(), 2);
}

#[test]
fn a_world_made_with_other_settings_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let world = tmp.path().join("world");
    // The quick profile asks for 200 scenes of seed 0; this folder holds seed 1.
    let wc = vlalign_data::world::WorldConfig::new(200, 1);
    experiments::world::make_world(&wc, &world, 400, false).unwrap();
    let output = cal_llava(&world, &tmp.path().join("run"), &[])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("made with seed = 1, the configuration asks for 0"),
        "{stderr}"
    );
}
