//! BLEU-1..4 as pycocoevalcap computes it (`option='closest'`): clipped n-gram counts against
//! the per-n-gram maximum over references, the closest reference length (ties → the shorter)
//! for the brevity penalty, `tiny = 1e-15` and `small = 1e-9` smoothing, corpus scores from
//! summed counts, per-sample scores from each sample's own counts.

use std::collections::HashMap;

const N: usize = 4;
const TINY: f64 = 1e-15;
const SMALL: f64 = 1e-9;

/// N-gram counts of a whitespace-split sentence, with its length.
pub(crate) fn ngrams(s: &str, n: usize) -> (usize, HashMap<Vec<&str>, usize>) {
    let words: Vec<&str> = s.split_whitespace().collect();
    let mut counts = HashMap::new();
    for k in 1..=n {
        for w in words.windows(k) {
            *counts.entry(w.to_vec()).or_insert(0) += 1;
        }
    }
    (words.len(), counts)
}

struct Cooked {
    testlen: usize,
    reflen: usize,
    guess: [usize; N],
    correct: [usize; N],
}

fn cook(candidate: &str, references: &[String]) -> Cooked {
    let mut reflens = Vec::new();
    let mut maxcounts: HashMap<Vec<&str>, usize> = HashMap::new();
    for r in references {
        let (len, counts) = ngrams(r, N);
        reflens.push(len);
        for (g, c) in counts {
            let e = maxcounts.entry(g).or_insert(0);
            *e = (*e).max(c);
        }
    }
    let (testlen, counts) = ngrams(candidate, N);
    let reflen = reflens
        .iter()
        .map(|&l| (l.abs_diff(testlen), l))
        .min()
        .map_or(0, |(_, l)| l);
    let mut correct = [0; N];
    for (g, c) in &counts {
        correct[g.len() - 1] += c.min(maxcounts.get(g).unwrap_or(&0));
    }
    Cooked {
        testlen,
        reflen,
        guess: std::array::from_fn(|k| (testlen + 1).saturating_sub(k + 1)),
        correct,
    }
}

fn score(testlen: usize, reflen: usize, guess: &[usize; N], correct: &[usize; N]) -> [f64; N] {
    let mut out = [0.0; N];
    let mut acc = 1.0f64;
    for k in 0..N {
        acc *= (correct[k] as f64 + TINY) / (guess[k] as f64 + SMALL);
        out[k] = acc.powf(1.0 / (k as f64 + 1.0));
    }
    let ratio = (testlen as f64 + TINY) / (reflen as f64 + SMALL);
    if ratio < 1.0 {
        let bp = (1.0 - 1.0 / ratio).exp();
        out.iter_mut().for_each(|b| *b *= bp);
    }
    out
}

/// Corpus BLEU-1..4 and per-sample BLEU-1..4 of tokenized candidates against their references.
pub fn bleu(candidates: &[String], references: &[Vec<String>]) -> ([f64; N], Vec<[f64; N]>) {
    let cooked: Vec<Cooked> = candidates
        .iter()
        .zip(references)
        .map(|(c, r)| cook(c, r))
        .collect();
    let per = cooked
        .iter()
        .map(|c| score(c.testlen, c.reflen, &c.guess, &c.correct))
        .collect();
    let (mut tl, mut rl, mut guess, mut correct) = (0, 0, [0; N], [0; N]);
    for c in &cooked {
        tl += c.testlen;
        rl += c.reflen;
        for k in 0..N {
            guess[k] += c.guess[k];
            correct[k] += c.correct[k];
        }
    }
    (score(tl, rl, &guess, &correct), per)
}
