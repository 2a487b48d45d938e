//! ROUGE-L as pycocoevalcap computes it: LCS over space-split tokens, the best precision and the
//! best recall over the references, `F = (1 + β²) P R / (R + β² P)` with β = 1.2.

/// LCS length of two token lists.
fn lcs(a: &[&str], b: &[&str]) -> usize {
    let mut prev = vec![0usize; b.len() + 1];
    let mut cur = vec![0usize; b.len() + 1];
    for x in a {
        for (j, y) in b.iter().enumerate() {
            cur[j + 1] = if x == y {
                prev[j] + 1
            } else {
                prev[j + 1].max(cur[j])
            };
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// ROUGE-L of a tokenized candidate against tokenized references.
pub fn rouge_l(candidate: &str, references: &[String]) -> f64 {
    const BETA: f64 = 1.2;
    // The reference splits on single spaces: an empty string is one empty token.
    let c: Vec<&str> = candidate.split(' ').collect();
    let (mut p_max, mut r_max) = (0.0f64, 0.0f64);
    for reference in references {
        let r: Vec<&str> = reference.split(' ').collect();
        let l = lcs(&r, &c) as f64;
        p_max = p_max.max(l / c.len() as f64);
        r_max = r_max.max(l / r.len() as f64);
    }
    if p_max != 0.0 && r_max != 0.0 {
        (1.0 + BETA * BETA) * p_max * r_max / (r_max + BETA * BETA * p_max)
    } else {
        0.0
    }
}
