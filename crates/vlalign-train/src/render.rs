//! A plain-text renderer for burn-train: one line every N steps with burn-train's own metric
//! readings (loss, learning rate, speed, diagnostics), for logs and terminals without the TUI.
//! With `every = 0` it prints nothing (tests).

use burn::train::LearnerSummary;
use burn::train::logger::{EvaluationProgressLogger, TrainingProgressLogger};
use burn::train::metric::MetricDefinition;
use burn::train::renderer::{
    EvaluationName, MetricState, MetricsRenderer, MetricsRendererEvaluation,
    MetricsRendererTraining,
};

/// See the module docs.
pub struct LineRenderer {
    every: usize,
    label: String,
    total: usize,
    latest: Vec<(String, String)>,
    names: Vec<(String, String)>,
}

impl LineRenderer {
    /// Print a line every `every` steps (0 = never).
    pub fn new(every: usize) -> Self {
        Self {
            every,
            label: String::from("training"),
            total: 0,
            latest: Vec::new(),
            names: Vec::new(),
        }
    }

    fn record(&mut self, state: MetricState) {
        let entry = match state {
            MetricState::Generic(e) => e,
            MetricState::Numeric(e, _) => e,
        };
        let key = format!("{:?}", entry.metric_id);
        let name = self
            .names
            .iter()
            .find(|(k, _)| *k == key)
            .map_or("", |(_, n)| n.as_str());
        let text = format!("{name} {}", entry.serialized_entry.formatted);
        match self.latest.iter_mut().find(|(k, _)| *k == key) {
            Some((_, t)) => *t = text,
            None => self.latest.push((key, text)),
        }
    }
}

impl MetricsRendererTraining for LineRenderer {
    fn update_train(&mut self, state: MetricState) {
        self.record(state);
    }

    fn update_valid(&mut self, state: MetricState) {
        self.record(state);
    }

    fn on_train_end(
        &mut self,
        _summary: Option<LearnerSummary>,
    ) -> Result<(), Box<dyn core::error::Error>> {
        Ok(())
    }
}

impl MetricsRendererEvaluation for LineRenderer {
    fn update_test(&mut self, _name: EvaluationName, _state: MetricState) {}
}

impl TrainingProgressLogger for LineRenderer {
    fn start(&mut self, _: usize, _: usize, total_items: Option<usize>, label: Option<&str>) {
        self.total = total_items.unwrap_or(0);
        if let Some(label) = label {
            self.label = label.to_string();
        }
    }

    fn update_epoch(&mut self, _epoch: usize) {}

    fn start_split(&mut self, split: &str, total_items: usize) {
        self.total = total_items;
        if self.every > 0 && split == "valid" {
            println!("{}: validating on {total_items} items", self.label);
        }
    }

    fn update_split(&mut self, items_processed: usize) {
        if self.every > 0
            && (items_processed.is_multiple_of(self.every) || items_processed == self.total)
        {
            let metrics: Vec<&str> = self.latest.iter().map(|(_, t)| t.as_str()).collect();
            println!(
                "{} {items_processed}/{} | {}",
                self.label,
                self.total,
                metrics.join(" | ")
            );
        }
    }

    fn end_split(&mut self) {}

    fn end(&mut self) {}

    fn log_event_training(&mut self, _event: String) {}
}

impl EvaluationProgressLogger for LineRenderer {
    fn start_global_progress(&mut self, _: usize) {}
    fn start_test(&mut self, _: &str, _: usize) {}
    fn update_test_progress(&mut self, _: usize) {}
    fn end_test(&mut self) {}
    fn end_global_progress(&mut self) {}
    fn log_event_evaluation(&mut self, _: String) {}
}

impl MetricsRenderer for LineRenderer {
    fn manual_close(&mut self) {}

    fn register_metric(&mut self, definition: MetricDefinition) {
        self.names.push((
            format!("{:?}", definition.metric_id),
            definition.name.to_string(),
        ));
    }
}
