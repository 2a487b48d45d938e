//! `bench` end to end on the tiny preset, and the parameter counts the PyTorch side must match.

use std::process::Command;

use experiments::bench::presets;

/// Parameter counts of the presets as Hugging Face transformers builds them
/// (`python3 tools/bench_torch.py` prints them): vision, projector, language.
const TORCH_PARAMS: [(&str, [usize; 3]); 2] = [
    ("tiny", [115_392, 24_832, 426_624]),
    ("small", [4_986_880, 394_240, 31_990_272]),
];

#[test]
fn presets_have_the_parameter_counts_of_the_pytorch_peer() {
    use burn::module::Module;
    let device = burn::tensor::Device::flex();
    for (name, [vision, projector, language]) in TORCH_PARAMS {
        let preset = presets().into_iter().find(|p| p.name == name).unwrap();
        let model = preset.llava().init(&device);
        assert_eq!(model.vision_tower.num_params(), vision, "{name} vision");
        assert_eq!(
            model.multi_modal_projector.num_params(),
            projector,
            "{name} projector"
        );
        assert_eq!(
            model.language_model.num_params(),
            language,
            "{name} language"
        );
    }
}

#[test]
fn tiny_bench_writes_every_row() {
    let tmp = tempfile::tempdir().unwrap();
    let json = tmp.path().join("bench.json");
    let output = Command::new(env!("CARGO_BIN_EXE_bench"))
        .args([
            "--preset", "tiny", "--device", "flex", "--iters", "1", "--warmup", "0", "--out",
        ])
        .arg(&json)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(table.contains("CAL / MLE step"), "{table}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let rows = &report["results"][0]["presets"][0]["rows"];
    let names: Vec<&str> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "train_mle",
            "train_cal",
            "dpo_precomputed",
            "dpo_live",
            "dpo_lora",
            "forward",
            "contrast_text_only",
            "contrast_masked_full",
            "vig_score",
            "gen_b1",
            "gen_b8"
        ]
    );
    for r in rows.as_array().unwrap() {
        let ms = r["median_ms"].as_f64().unwrap();
        assert!(ms.is_finite() && ms > 0.0, "{r}");
    }
}

#[test]
fn unknown_preset_is_an_error() {
    let output = Command::new(env!("CARGO_BIN_EXE_bench"))
        .args(["--preset", "huge", "--out", "/dev/null"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("unknown preset 'huge'"));
}
