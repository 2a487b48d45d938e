//! Parity with pycocoevalcap on committed fixture captions (`tools/make_caption_fixtures.py`):
//! tokenization, and BLEU-1..4 / ROUGE-L / CIDEr-D at corpus level and per sample, to 1e-6.

use std::collections::BTreeMap;

use serde_json::Value;
use vlalign_eval::{score_captions, tokenize::ptb};

fn fixture() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/captions.json"
    );
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn map(v: &Value) -> BTreeMap<String, Value> {
    v.as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

#[test]
fn tokenization_matches_the_ptb_tokenizer() {
    let f = fixture();
    let mut checked = 0;
    for (k, c) in map(&f["candidates"]) {
        assert_eq!(
            ptb(c.as_str().unwrap()),
            f["candidates_tokenized"][&k],
            "candidate {k}"
        );
        checked += 1;
    }
    for (k, refs) in map(&f["references"]) {
        for (i, r) in refs.as_array().unwrap().iter().enumerate() {
            assert_eq!(
                ptb(r.as_str().unwrap()),
                f["references_tokenized"][&k][i],
                "reference {k}/{i}"
            );
            checked += 1;
        }
    }
    assert!(checked > 150);
}

#[test]
fn scores_match_pycocoevalcap() {
    let f = fixture();
    let cands: BTreeMap<String, String> = map(&f["candidates"])
        .into_iter()
        .map(|(k, v)| (k, v.as_str().unwrap().to_string()))
        .collect();
    let refs: BTreeMap<String, Vec<String>> = map(&f["references"])
        .into_iter()
        .map(|(k, v)| {
            (
                k,
                v.as_array()
                    .unwrap()
                    .iter()
                    .map(|s| s.as_str().unwrap().to_string())
                    .collect(),
            )
        })
        .collect();
    assert!(cands.len() >= 50);
    let s = score_captions(&cands, &refs);
    let close = |a: f64, b: &Value, what: &str| {
        let b = b.as_f64().unwrap();
        assert!((a - b).abs() <= 1e-6, "{what}: {a} vs pycocoevalcap {b}");
    };
    for n in 0..4 {
        close(
            s.bleu[n],
            &f["corpus"]["bleu"][n],
            &format!("corpus BLEU-{}", n + 1),
        );
    }
    close(s.rouge_l, &f["corpus"]["rouge_l"], "corpus ROUGE-L");
    close(s.cider, &f["corpus"]["cider"], "corpus CIDEr-D");
    let mut worst = 0.0f64;
    for (k, per) in &s.per_sample {
        let r = &f["per_sample"][k];
        for n in 0..4 {
            close(per.bleu[n], &r["bleu"][n], &format!("{k} BLEU-{}", n + 1));
            worst = worst.max((per.bleu[n] - r["bleu"][n].as_f64().unwrap()).abs());
        }
        close(per.rouge_l, &r["rouge_l"], &format!("{k} ROUGE-L"));
        close(per.cider, &r["cider"], &format!("{k} CIDEr-D"));
        worst = worst.max((per.cider - r["cider"].as_f64().unwrap()).abs());
    }
    println!("max abs diff per sample: {worst:e}");
}
