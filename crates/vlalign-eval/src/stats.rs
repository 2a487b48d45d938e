//! Results over seeds: the mean with a two-sided 95 % Student-t interval, for per-seed values
//! and for paired per-seed differences (CAL − MLE on the same seed).

use serde::{Deserialize, Serialize};
use statrs::distribution::{ContinuousCDF, StudentsT};

/// The 0.975 quantile of Student's t with `df` degrees of freedom (exact for every df, from
/// `statrs`; infinite for 0).
pub fn t95(df: usize) -> f64 {
    if df == 0 {
        return f64::INFINITY;
    }
    StudentsT::new(0.0, 1.0, df as f64)
        .expect("location 0, scale 1 and df ≥ 1 are valid")
        .inverse_cdf(0.975)
}

/// Mean and 95 % interval of a sample.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Interval {
    /// Sample size.
    pub n: usize,
    /// Sample mean.
    pub mean: f64,
    /// Sample standard deviation (n − 1); 0 for one value.
    pub std: f64,
    /// Half-width of the 95 % t interval (`None` for fewer than two values).
    pub ci95: Option<f64>,
}

impl Interval {
    /// The interval of `values` (`None` when empty).
    pub fn of(values: &[f64]) -> Option<Self> {
        let n = values.len();
        if n == 0 {
            return None;
        }
        let mean = values.iter().sum::<f64>() / n as f64;
        let var = if n > 1 {
            values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64
        } else {
            0.0
        };
        let std = var.sqrt();
        let ci95 = (n > 1).then(|| t95(n - 1) * std / (n as f64).sqrt());
        Some(Self { n, mean, std, ci95 })
    }

    /// `mean ± ci95` scaled by `scale` with `digits` decimals (`mean` alone for one value).
    pub fn show(&self, scale: f64, digits: usize) -> String {
        match self.ci95 {
            Some(h) => format!("{:.d$} ± {:.d$}", scale * self.mean, scale * h, d = digits),
            None => format!("{:.d$}", scale * self.mean, d = digits),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interval_matches_a_hand_computation() {
        // mean 2, sample std 1, n 3: half-width 4.303 / sqrt(3).
        let i = Interval::of(&[1.0, 2.0, 3.0]).expect("non-empty");
        assert_eq!(i.n, 3);
        assert!((i.mean - 2.0).abs() < 1e-12);
        assert!((i.std - 1.0).abs() < 1e-12);
        assert!((i.ci95.expect("n > 1") - 4.302653 / 3f64.sqrt()).abs() < 1e-6);
        assert_eq!(i.show(1.0, 2), "2.00 ± 2.48");
        let one = Interval::of(&[0.5]).expect("non-empty");
        assert_eq!((one.ci95, one.show(100.0, 1)), (None, "50.0".to_string()));
        assert!(Interval::of(&[]).is_none());
    }

    #[test]
    fn t_quantiles_are_exact_past_thirty_degrees_of_freedom() {
        // Tables (R's qt(0.975, df)): no jump to the normal 1.960 at 31.
        for (df, t) in [
            (1, 12.706205),
            (2, 4.302653),
            (30, 2.042272),
            (31, 2.039513),
            (60, 2.000298),
            (100, 1.983972),
            (1000, 1.962339),
        ] {
            assert!((t95(df) - t).abs() < 1e-5, "df {df}: {} vs {t}", t95(df));
        }
        assert!(t95(0).is_infinite());
    }
}
