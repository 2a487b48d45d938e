//! `clip_pretrain --quick` end to end, and `cal_llava --vision-init` on its image tower.

use std::path::Path;
use std::process::Command;

fn clip_pretrain(world: &Path, out: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_clip_pretrain"));
    c.args(["--quick", "--quiet", "--device", "flex", "--world"])
        .arg(world)
        .arg("--out")
        .arg(out);
    c
}

#[test]
fn quick_run_reports_retrieval_and_its_tower_starts_a_llava() {
    let tmp = tempfile::tempdir().unwrap();
    let world = tmp.path().join("world");
    let out = tmp.path().join("clip");
    assert!(clip_pretrain(&world, &out).status().unwrap().success());
    for f in ["report.md", "summary.json", "loss.png", "config.toml"] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    for f in ["config.json", "model.safetensors"] {
        assert!(out.join("vision").join(f).is_file(), "vision/{f} missing");
        assert!(out.join("clip-model").join(f).is_file(), "clip-model/{f}");
    }
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("summary.json")).unwrap()).unwrap();
    for key in ["i2t_r1", "i2t_r5", "t2i_r1", "t2i_r5"] {
        let v = summary["retrieval"][key].as_f64();
        assert!(v.is_some_and(|v| (0.0..=1.0).contains(&v)), "{key}: {v:?}");
    }
    let r = &summary["retrieval"];
    assert!(r["i2t_r5"].as_f64() >= r["i2t_r1"].as_f64());
    assert_eq!(r["pairs"], 16);
    for attribute in ["count", "size", "color", "shape", "position"] {
        let z = &summary["zero_shot"][attribute];
        assert!(z["n"].as_u64().is_some_and(|n| n > 0), "{attribute}: {z}");
        assert!(z["chance"].as_f64().is_some_and(|c| c > 0.0 && c <= 0.5));
    }

    // The tower drops into the quick LLaVA...
    let llava = tmp.path().join("llava");
    let status = Command::new(env!("CARGO_BIN_EXE_cal_llava"))
        .args(["--quick", "--quiet", "--device", "flex", "--steps", "2"])
        .arg("--world")
        .arg(&world)
        .arg("--out")
        .arg(&llava)
        .arg("--vision-init")
        .arg(out.join("vision"))
        .status()
        .unwrap();
    assert!(status.success());
    let config = std::fs::read_to_string(llava.join("config.toml")).unwrap();
    assert!(config.contains("vision_init"), "{config}");

    // ...and a tower of another shape is refused, naming both shapes.
    let other = tmp.path().join("other.toml");
    let mut c: toml::Value = toml::from_str(&config).unwrap();
    c["model"]["image_size"] = toml::Value::Integer(48);
    std::fs::write(&other, toml::to_string(&c).unwrap()).unwrap();
    let refused = Command::new(env!("CARGO_BIN_EXE_cal_llava"))
        .args(["--quiet", "--device", "flex", "--config"])
        .arg(&other)
        .arg("--out")
        .arg(tmp.path().join("refused"))
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("--vision-init")
            && stderr.contains("(32, 8,")
            && stderr.contains("(48, 8,"),
        "{stderr}"
    );
}
