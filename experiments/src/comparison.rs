//! A comparison over seeds: named runs, each measured on every seed, reported as mean ± 95 %
//! t-interval per metric and as the interval of the paired per-seed differences to a baseline
//! run (same seed: the same stage-1 model, data order and evaluation). One table for
//! `report.md`, the same numbers for `summary.json`.

use serde_json::json;
use vlalign_eval::stats::Interval;

use crate::table::Table;

/// One metric: its `summary.json` key, its column header and the scale of its display
/// (100 for fractions shown as %).
#[derive(Clone, Copy, Debug)]
pub struct MetricSpec {
    /// Key in `summary.json`.
    pub key: &'static str,
    /// Column header.
    pub header: &'static str,
    /// Display scale.
    pub scale: f64,
    /// Decimals shown.
    pub digits: usize,
}

/// One seed's values of a run: the seed and a value per metric.
type SeedValues = (u64, Vec<Option<f64>>);

/// Runs × seeds × metrics.
#[derive(Clone, Debug)]
pub struct SeedComparison {
    metrics: Vec<MetricSpec>,
    /// (run, [(seed, a value per metric)]), in the order first added.
    runs: Vec<(String, Vec<SeedValues>)>,
}

impl SeedComparison {
    /// An empty comparison of `metrics`.
    pub fn new(metrics: &[MetricSpec]) -> Self {
        Self {
            metrics: metrics.to_vec(),
            runs: Vec::new(),
        }
    }

    /// Record `run`'s `values` (one per metric) on `seed`.
    pub fn add(&mut self, run: &str, seed: u64, values: Vec<Option<f64>>) {
        assert_eq!(values.len(), self.metrics.len(), "a value per metric");
        match self.runs.iter_mut().find(|(r, _)| r == run) {
            Some((_, seeds)) => seeds.push((seed, values)),
            None => self.runs.push((run.to_string(), vec![(seed, values)])),
        }
    }

    fn seeds(&self, run: &str) -> &[SeedValues] {
        self.runs
            .iter()
            .find(|(r, _)| r == run)
            .map_or(&[], |(_, s)| s.as_slice())
    }

    /// Metric `m` of `run` per seed.
    fn values(&self, run: &str, m: usize) -> Vec<f64> {
        self.seeds(run).iter().filter_map(|(_, v)| v[m]).collect()
    }

    /// Metric `m` of `run` minus `baseline`'s, on the seeds both have.
    fn paired(&self, run: &str, baseline: &str, m: usize) -> Vec<f64> {
        self.seeds(run)
            .iter()
            .filter_map(|(seed, v)| {
                let b = self.seeds(baseline).iter().find(|(s, _)| s == seed)?;
                Some(v[m]? - b.1[m]?)
            })
            .collect()
    }

    /// The markdown table: a row per run, then a row of paired differences to `baseline` per
    /// other run.
    pub fn markdown(&self, baseline: &str) -> String {
        let mut header = vec!["run".to_string(), "seeds".to_string()];
        header.extend(self.metrics.iter().map(|m| m.header.to_string()));
        let mut t = Table::new(header);
        let show = |values: &[f64], m: &MetricSpec, signed: bool| {
            Interval::of(values).map_or("–".into(), |i| {
                let s = i.show(m.scale, m.digits);
                if signed && i.mean >= 0.0 {
                    format!("+{s}")
                } else {
                    s
                }
            })
        };
        for (run, seeds) in &self.runs {
            let mut row = vec![run.clone(), seeds.len().to_string()];
            for (k, m) in self.metrics.iter().enumerate() {
                row.push(show(&self.values(run, k), m, false));
            }
            t.row(row);
        }
        for (run, _) in self.runs.iter().filter(|(r, _)| r != baseline) {
            let pairs = self.paired(run, baseline, 0).len();
            let mut row = vec![format!("**{run} − {baseline}**"), pairs.to_string()];
            for (k, m) in self.metrics.iter().enumerate() {
                row.push(show(&self.paired(run, baseline, k), m, true));
            }
            t.row(row);
        }
        t.to_string()
    }

    /// The `summary.json` section: per run and metric the interval and the seeds' values, and
    /// the paired differences to `baseline`.
    pub fn json(&self, baseline: &str) -> serde_json::Value {
        let section = |values: &dyn Fn(usize) -> Vec<f64>| -> serde_json::Value {
            self.metrics
                .iter()
                .enumerate()
                .map(|(k, m)| {
                    let v = values(k);
                    (
                        m.key.to_string(),
                        json!({"interval": Interval::of(&v), "values": v}),
                    )
                })
                .collect::<serde_json::Map<_, _>>()
                .into()
        };
        let runs: serde_json::Map<_, _> = self
            .runs
            .iter()
            .map(|(run, seeds)| {
                let mut v = section(&|k| self.values(run, k));
                v["seeds"] = json!(seeds.iter().map(|(s, _)| s).collect::<Vec<_>>());
                (run.clone(), v)
            })
            .collect();
        let diffs: serde_json::Map<_, _> = self
            .runs
            .iter()
            .filter(|(r, _)| r != baseline)
            .map(|(run, _)| {
                let v = section(&|k| self.paired(run, baseline, k));
                (format!("{run} - {baseline}"), v)
            })
            .collect();
        json!({"baseline": baseline, "runs": runs, "paired_differences": diffs})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: [MetricSpec; 2] = [
        MetricSpec {
            key: "acc",
            header: "acc %",
            scale: 100.0,
            digits: 1,
        },
        MetricSpec {
            key: "ppl",
            header: "ppl",
            scale: 1.0,
            digits: 2,
        },
    ];

    #[test]
    fn intervals_and_paired_differences_per_seed() {
        let mut c = SeedComparison::new(&M);
        for (seed, a, b) in [(0, 0.5, 0.6), (1, 0.6, 0.8), (2, 0.7, 0.7)] {
            c.add("base", seed, vec![Some(a), Some(2.0)]);
            c.add("new", seed, vec![Some(b), None]);
        }
        let j = c.json("base");
        assert_eq!(j["runs"]["base"]["acc"]["values"], json!([0.5, 0.6, 0.7]));
        let d = &j["paired_differences"]["new - base"]["acc"];
        let values: Vec<f64> = serde_json::from_value(d["values"].clone()).unwrap();
        for (v, want) in values.iter().zip([0.1, 0.2, 0.0]) {
            assert!((v - want).abs() < 1e-12);
        }
        let mean = d["interval"]["mean"].as_f64().unwrap();
        assert!((mean - 0.1).abs() < 1e-12);
        // A metric a run lacks is "–", not a number.
        let md = c.markdown("base");
        assert!(md.contains("| new | 3 | 70.0 ± "), "{md}");
        assert!(md.contains("| **new − base** | 3 | +10.0 ± "), "{md}");
        assert!(md.contains(" – |"), "{md}");
    }
}
