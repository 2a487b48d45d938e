//! CIDEr-D as pycocoevalcap's `Cider` computes it: TF-IDF n-gram vectors (n = 1..4) with
//! document frequencies over the corpus's reference sets, `idf = log(#images) − log(max(1, df))`,
//! the clipped similarity `Σ min(v_c, v_r)·v_r / (‖v_c‖‖v_r‖)`, a Gaussian length penalty
//! `exp(−Δ²/2σ²)` with σ = 6, averaged over n and references, ×10.
//!
//! The length Δ is, as in the reference code, the difference of the **bigram** counts (its
//! `length` accumulates the term frequencies of n-grams of index 1).

use std::collections::HashMap;

use crate::bleu::ngrams;

const N: usize = 4;
const SIGMA: f64 = 6.0;

type Vector<'a> = [HashMap<Vec<&'a str>, f64>; N];

fn to_vec<'a>(
    counts: &HashMap<Vec<&'a str>, usize>,
    df: &HashMap<Vec<&'a str>, f64>,
    ref_len: f64,
) -> (Vector<'a>, [f64; N], f64) {
    let mut vec: Vector<'a> = std::array::from_fn(|_| HashMap::new());
    let mut norm = [0.0; N];
    let mut length = 0.0;
    for (g, &tf) in counts {
        let d = df.get(g).copied().unwrap_or(0.0).max(1.0).ln();
        let n = g.len() - 1;
        let v = tf as f64 * (ref_len - d);
        norm[n] += v * v;
        vec[n].insert(g.clone(), v);
        if n == 1 {
            length += tf as f64;
        }
    }
    (vec, norm.map(f64::sqrt), length)
}

fn sim(hyp: &(Vector<'_>, [f64; N], f64), r: &(Vector<'_>, [f64; N], f64)) -> [f64; N] {
    let delta = hyp.2 - r.2;
    std::array::from_fn(|n| {
        let mut val: f64 = hyp.0[n]
            .iter()
            .map(|(g, &vh)| {
                let vr = r.0[n].get(g).copied().unwrap_or(0.0);
                vh.min(vr) * vr
            })
            .sum();
        if hyp.1[n] != 0.0 && r.1[n] != 0.0 {
            val /= hyp.1[n] * r.1[n];
        }
        val * (-(delta * delta) / (2.0 * SIGMA * SIGMA)).exp()
    })
}

/// CIDEr-D of each tokenized candidate against its references (the corpus score is the mean).
pub fn cider_d(candidates: &[String], references: &[Vec<String>]) -> Vec<f64> {
    let refs: Vec<Vec<HashMap<Vec<&str>, usize>>> = references
        .iter()
        .map(|rs| rs.iter().map(|r| ngrams(r, N).1).collect())
        .collect();
    let mut df: HashMap<Vec<&str>, f64> = HashMap::new();
    for rs in &refs {
        let mut seen: Vec<&Vec<&str>> = rs.iter().flat_map(|c| c.keys()).collect();
        seen.sort();
        seen.dedup();
        for g in seen {
            *df.entry(g.clone()).or_insert(0.0) += 1.0;
        }
    }
    let ref_len = (refs.len() as f64).ln();
    candidates
        .iter()
        .zip(&refs)
        .map(|(c, rs)| {
            let hyp = to_vec(&ngrams(c, N).1, &df, ref_len);
            let mut score = [0.0; N];
            for r in rs {
                let s = sim(&hyp, &to_vec(r, &df, ref_len));
                (0..N).for_each(|n| score[n] += s[n]);
            }
            score.iter().sum::<f64>() / N as f64 / rs.len() as f64 * 10.0
        })
        .collect()
}
