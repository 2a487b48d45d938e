//! How well a per-token score (a CAL weight, a VIG value) separates grounded tokens from the
//! rest: AUROC (Mann–Whitney, ties counted half) and average precision (scikit-learn's step
//! definition, `AP = Σ (R_k − R_{k−1}) P_k` over distinct thresholds).

/// AUROC of `scores` for binary `labels` (true = positive); `None` without both classes.
pub fn auroc(scores: &[f64], labels: &[bool]) -> Option<f64> {
    let pos = labels.iter().filter(|&&l| l).count();
    let neg = labels.len() - pos;
    if pos == 0 || neg == 0 {
        return None;
    }
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    // Average ranks (1-based) over ties.
    let mut rank_sum_pos = 0.0;
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && scores[idx[j + 1]] == scores[idx[i]] {
            j += 1;
        }
        let avg = (i + j) as f64 / 2.0 + 1.0;
        rank_sum_pos += avg * idx[i..=j].iter().filter(|&&k| labels[k]).count() as f64;
        i = j + 1;
    }
    let u = rank_sum_pos - (pos * (pos + 1)) as f64 / 2.0;
    Some(u / (pos * neg) as f64)
}

/// Average precision of `scores` for `labels`; `None` without positives.
pub fn average_precision(scores: &[f64], labels: &[bool]) -> Option<f64> {
    let pos = labels.iter().filter(|&&l| l).count();
    if pos == 0 {
        return None;
    }
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let (mut tp, mut fp, mut ap, mut last_recall) = (0usize, 0usize, 0.0, 0.0);
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j < idx.len() && scores[idx[j]] == scores[idx[i]] {
            if labels[idx[j]] {
                tp += 1;
            } else {
                fp += 1;
            }
            j += 1;
        }
        let recall = tp as f64 / pos as f64;
        let precision = tp as f64 / (tp + fp) as f64;
        ap += (recall - last_recall) * precision;
        last_recall = recall;
        i = j;
    }
    Some(ap)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn by_hand() {
        // Perfect separation.
        assert_eq!(
            auroc(&[0.1, 0.2, 0.8, 0.9], &[false, false, true, true]),
            Some(1.0)
        );
        assert_eq!(
            average_precision(&[0.1, 0.2, 0.8, 0.9], &[false, false, true, true]),
            Some(1.0)
        );
        // Scores 0.9(+) 0.8(−) 0.7(+) 0.1(−): pairs (+,−) ordered right: 3 of 4 → 0.75.
        let s = [0.9, 0.8, 0.7, 0.1];
        let l = [true, false, true, false];
        assert_eq!(auroc(&s, &l), Some(0.75));
        // AP: at 0.9 R=.5 P=1; at 0.8 R=.5; at 0.7 R=1 P=2/3 → .5 + .5·2/3.
        assert!((average_precision(&s, &l).unwrap() - (0.5 + 1.0 / 3.0)).abs() < 1e-12);
        // All tied: AUROC 0.5.
        assert_eq!(auroc(&[1.0; 4], &l), Some(0.5));
        assert_eq!(auroc(&[1.0, 2.0], &[true, true]), None);
    }
}
