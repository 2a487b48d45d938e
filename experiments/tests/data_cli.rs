//! The data binaries end to end: make_world writes a world and a tokenizer, check_data loads it
//! as training does and fails under `--on-bad-record fail` when a record is bad.

use std::process::Command;

#[test]
fn make_world_then_check_data() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("world");
    let status = Command::new(env!("CARGO_BIN_EXE_make_world"))
        .args([
            "--images",
            "40",
            "--seed",
            "1",
            "--image-size",
            "64",
            "--out",
        ])
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    assert!(out.join("tokenizer.json").is_file() && out.join("images/000039.png").is_file());

    let check = |data: &std::path::Path, policy: &str, json: &std::path::Path| {
        Command::new(env!("CARGO_BIN_EXE_check_data"))
            .arg("--data")
            .arg(data)
            .arg("--image-folder")
            .arg(out.join("images"))
            .arg("--tokenizer")
            .arg(out.join("tokenizer.json"))
            .args([
                "--template",
                "vicuna_v1",
                "--image-tokens",
                "16",
                "--on-bad-record",
                policy,
            ])
            .arg("--json")
            .arg(json)
            .output()
            .unwrap()
    };
    let report = dir.path().join("report.json");
    let ok = check(&out.join("train_qa.json"), "fail", &report);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(r["skipped"], 0);
    assert_eq!(r["records"], r["loaded"]);
    assert!(r["supervised_tokens"].as_u64().unwrap() > 0);

    // One record pointing at a missing image.
    let mut records: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(out.join("train_qa.json")).unwrap()).unwrap();
    records[0]["image"] = "gone.png".into();
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, serde_json::to_string(&records).unwrap()).unwrap();
    let skip = check(&bad, "skip", &report);
    assert!(skip.status.success());
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(r["skipped"], 1);
    assert_eq!(r["skipped_by_reason"]["missing_image"], 1);
    let fail = check(&bad, "fail", &report);
    assert!(!fail.status.success());
    let stderr = String::from_utf8_lossy(&fail.stderr);
    assert!(
        stderr.contains(records[0]["id"].as_str().unwrap()),
        "{stderr}"
    );
}
