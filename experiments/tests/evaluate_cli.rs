//! `evaluate --pred --refs` reproduces pycocoevalcap's corpus and per-sample numbers on the
//! fixture captions, from both reference formats.

use std::path::Path;
use std::process::Command;

use serde_json::{Value, json};

#[test]
fn evaluate_scores_predictions_like_pycocoevalcap() {
    let fixture: Value = serde_json::from_slice(
        &std::fs::read(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/captions.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let preds: String = fixture["candidates"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| format!("{}\n", json!({"id": k, "output": v, "prompt": "ignored"})))
        .collect();
    std::fs::write(dir.path().join("preds.jsonl"), preds).unwrap();
    let annotations: Vec<Value> = fixture["references"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(k, refs)| {
            refs.as_array()
                .unwrap()
                .iter()
                .map(move |r| json!({"image_id": k, "caption": r}))
        })
        .collect();
    std::fs::write(
        dir.path().join("refs.json"),
        fixture["references"].to_string(),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("coco.json"),
        json!({"annotations": annotations}).to_string(),
    )
    .unwrap();
    for refs in ["refs.json", "coco.json"] {
        let out = dir.path().join("scores.json");
        let run = Command::new(env!("CARGO_BIN_EXE_evaluate"))
            .arg("--pred")
            .arg(dir.path().join("preds.jsonl"))
            .arg("--refs")
            .arg(dir.path().join(refs))
            .arg("--json")
            .arg(&out)
            .output()
            .unwrap();
        assert!(
            run.status.success(),
            "{}",
            String::from_utf8_lossy(&run.stderr)
        );
        let s: Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
        let close =
            |a: &Value, b: &Value| (a.as_f64().unwrap() - b.as_f64().unwrap()).abs() <= 1e-6;
        assert!(
            close(&s["corpus"]["cider"], &fixture["corpus"]["cider"]),
            "{refs}"
        );
        assert!(close(
            &s["corpus"]["rouge_l"],
            &fixture["corpus"]["rouge_l"]
        ));
        for n in 0..4 {
            assert!(close(
                &s["corpus"]["bleu"][n],
                &fixture["corpus"]["bleu"][n]
            ));
        }
        for (k, p) in s["per_sample"].as_object().unwrap() {
            assert!(
                close(&p["bleu4"], &fixture["per_sample"][k]["bleu"][3]),
                "{k}"
            );
            assert!(
                close(&p["cider"], &fixture["per_sample"][k]["cider"]),
                "{k}"
            );
        }
    }
    // A malformed prediction line is an error naming the line.
    std::fs::write(dir.path().join("bad.jsonl"), "{\"id\": \"img000\"}\n").unwrap();
    let run = Command::new(env!("CARGO_BIN_EXE_evaluate"))
        .arg("--pred")
        .arg(dir.path().join("bad.jsonl"))
        .arg("--refs")
        .arg(dir.path().join("refs.json"))
        .output()
        .unwrap();
    assert!(!run.status.success());
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(err.contains("line 1") && err.contains("output"), "{err}");
}
