//! `hf_check` on the fixtures: loads, prints the report and writes the logits transformers
//! computed.

use std::path::{Path, PathBuf};
use std::process::Command;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

fn io(model: &str) -> Vec<u8> {
    std::fs::read(fixtures().join(model).join("io.safetensors")).unwrap()
}

fn ids(bytes: &[u8]) -> Vec<String> {
    named_ids(bytes, "input_ids")
}

fn named_ids(bytes: &[u8], name: &str) -> Vec<String> {
    let st = safetensors::SafeTensors::deserialize(bytes).unwrap();
    let data = st.tensor(name).unwrap().data().to_vec();
    data.chunks(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap()).to_string())
        .collect()
}

fn floats(d: &[u8]) -> Vec<f32> {
    d.chunks(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

#[test]
fn hf_check_writes_the_fixture_logits() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("logits.safetensors");
    let qio = io("qwen2");
    let run = Command::new(env!("CARGO_BIN_EXE_hf_check"))
        .arg("--model")
        .arg(fixtures().join("qwen2"))
        .arg("--input-ids")
        .arg(ids(&qio).join(","))
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(
        stdout.contains("missing 0, unused 0") && stdout.contains("top-5"),
        "{stdout}"
    );
    let written = std::fs::read(&out).unwrap();
    let written = safetensors::SafeTensors::deserialize(&written).unwrap();
    let ours = written.tensor("logits").unwrap();
    let expected = safetensors::SafeTensors::deserialize(&qio).unwrap();
    let theirs = expected.tensor("logits").unwrap();
    assert_eq!(ours.shape(), &theirs.shape()[1..]);
    let diff = floats(ours.data())
        .iter()
        .zip(floats(theirs.data()))
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(diff <= 1e-4, "{diff}");
}

#[test]
fn hf_check_opens_a_llava_layout() {
    // Text-only ids (the first two tokens, before the image slots).
    let llava_ids = ids(&io("llava"));
    let run = Command::new(env!("CARGO_BIN_EXE_hf_check"))
        .arg("--model")
        .arg(fixtures().join("llava_hub"))
        .args(["--input-ids", &llava_ids[..2].join(",")])
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(String::from_utf8_lossy(&run.stdout).contains("loaded LLaVA"));
}

#[test]
fn hf_check_rejects_ids_outside_the_vocabulary() {
    let run = Command::new(env!("CARGO_BIN_EXE_hf_check"))
        .arg("--model")
        .arg(fixtures().join("qwen2"))
        .args(["--input-ids", "1,128"])
        .output()
        .unwrap();
    assert!(!run.status.success());
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        stderr.contains("128") && stderr.contains("vocabulary"),
        "{stderr}"
    );
}

/// The largest absolute difference between the logits `hf_check` wrote and the fixture's.
fn logit_diff(written: &Path, fixture_io: &[u8]) -> f32 {
    let written = std::fs::read(written).unwrap();
    let written = safetensors::SafeTensors::deserialize(&written).unwrap();
    let ours = written.tensor("logits").unwrap();
    let expected = safetensors::SafeTensors::deserialize(fixture_io).unwrap();
    let theirs = expected.tensor("logits").unwrap();
    assert_eq!(ours.shape(), &theirs.shape()[1..]);
    floats(ours.data())
        .iter()
        .zip(floats(theirs.data()))
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max)
}

#[test]
fn hf_check_runs_blip2_and_instructblip_on_a_png_like_transformers() {
    for model in ["blip2", "instructblip"] {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("logits.safetensors");
        let fio = io(model);
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_hf_check"));
        cmd.arg("--model")
            .arg(fixtures().join(model))
            .arg("--input-ids")
            .arg(ids(&fio).join(","))
            .arg("--image")
            .arg(fixtures().join(model).join("image.png"))
            .arg("--out")
            .arg(&out);
        if model == "instructblip" {
            cmd.arg("--qformer-input-ids")
                .arg(named_ids(&fio, "qformer_input_ids").join(","));
        }
        let run = cmd.output().unwrap();
        let stdout = String::from_utf8_lossy(&run.stdout);
        assert!(
            run.status.success(),
            "{model}: {}",
            String::from_utf8_lossy(&run.stderr)
        );
        assert!(
            stdout.contains("loaded BLIP-2") && stdout.contains("missing 0, unused 0"),
            "{stdout}"
        );
        let diff = logit_diff(&out, &fio);
        assert!(diff <= 1e-4, "{model}: {diff}");
    }
}

#[test]
fn hf_check_asks_instructblip_for_its_qformer_text() {
    let fio = io("instructblip");
    let run = Command::new(env!("CARGO_BIN_EXE_hf_check"))
        .arg("--model")
        .arg(fixtures().join("instructblip"))
        .arg("--input-ids")
        .arg(ids(&fio).join(","))
        .arg("--image")
        .arg(fixtures().join("instructblip").join("image.png"))
        .output()
        .unwrap();
    assert!(!run.status.success());
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(stderr.contains("--qformer-input-ids"), "{stderr}");
}
