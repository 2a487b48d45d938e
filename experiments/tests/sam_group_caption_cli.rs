//! `sam_group_caption --quick` end to end: the world's change pairs are written, both models are
//! trained from the same base, and the report and summary carry every run.

use std::process::Command;

#[test]
fn quick_run_compares_qformer_and_sam_over_two_seeds() {
    let tmp = tempfile::tempdir().unwrap();
    let world = tmp.path().join("world");
    let out = tmp.path().join("sam");
    let run = Command::new(env!("CARGO_BIN_EXE_sam_group_caption"))
        .args(["--quick", "--quiet", "--device", "flex", "--seeds", "2"])
        .arg("--world")
        .arg(&world)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    for split in ["train", "val"] {
        let path = world.join(format!("{split}_changes.json"));
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("What changed between the two images?"));
    }
    for f in ["report.md", "summary.json", "loss.png", "config.toml"] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    for seed in ["seed-0", "seed-1"] {
        for model in ["base", "qformer", "sam"] {
            for f in ["groups.jsonl", "changes.jsonl"] {
                let p = out.join(seed).join(model).join(f);
                assert!(p.is_file(), "{} missing", p.display());
            }
        }
    }
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("summary.json")).unwrap()).unwrap();
    let runs = summary["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 4, "{runs:?}");
    for r in runs {
        assert!(["qformer", "sam"].contains(&r["model"].as_str().unwrap()));
        for key in ["cider", "bleu4", "rouge_l", "object_accuracy"] {
            assert!(r[key].as_f64().is_some_and(|v| v >= 0.0), "{key}: {r}");
        }
    }
    // SAM trains the W-Former on top of the same parameters.
    let params = |m: &str| {
        runs.iter()
            .find(|r| r["model"] == m)
            .and_then(|r| r["trainable_params"].as_u64())
            .unwrap()
    };
    assert!(params("sam") > params("qformer"));
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains("sam − qformer") && report.contains("images swapped"));
}
