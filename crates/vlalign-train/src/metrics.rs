//! burn-train metrics for an objective's named diagnostics (e.g. CAL's mean weight), so they
//! show in burn-train's renderer and logs next to its loss and learning rate.

use std::sync::Arc;

use burn::tensor::TensorReadError;
use burn::train::metric::state::{FormatOptions, NumericMetricState};
use burn::train::metric::{
    Adaptor, Metric, MetricAttributes, MetricMetadata, MetricName, Numeric, NumericAttributes,
    NumericEntry, SerializedEntry,
};

use crate::step::StepOutput;

/// The diagnostics of one step.
pub struct DiagnosticsInput(pub Vec<(&'static str, f64)>);

impl Adaptor<DiagnosticsInput> for StepOutput {
    fn adapt(&self) -> DiagnosticsInput {
        DiagnosticsInput(self.diagnostics.clone())
    }
}

/// One named diagnostic as a numeric metric (steps that do not report it are skipped).
#[derive(Clone)]
pub struct DiagnosticMetric {
    key: &'static str,
    name: MetricName,
    state: NumericMetricState,
}

impl DiagnosticMetric {
    /// A metric for the diagnostic `key`, displayed as `label`.
    pub fn new(key: &'static str, label: &str) -> Self {
        Self {
            key,
            name: Arc::new(label.to_string()),
            state: NumericMetricState::new(),
        }
    }
}

impl Metric for DiagnosticMetric {
    type Input = DiagnosticsInput;

    fn name(&self) -> MetricName {
        self.name.clone()
    }

    fn update(
        &mut self,
        item: &DiagnosticsInput,
        _metadata: &MetricMetadata,
    ) -> Result<SerializedEntry, TensorReadError> {
        if let Some((_, v)) = item.0.iter().find(|(k, _)| *k == self.key) {
            self.state.update(*v, 1);
        }
        Ok(self
            .state
            .compute_update(FormatOptions::new(self.name()).precision(3)))
    }

    fn compute(&mut self) -> Result<SerializedEntry, TensorReadError> {
        Ok(self
            .state
            .compute_final(FormatOptions::new(self.name()).precision(3)))
    }

    fn clear(&mut self) {
        self.state.reset()
    }

    fn attributes(&self) -> MetricAttributes {
        NumericAttributes {
            unit: None,
            higher_is_better: false,
        }
        .into()
    }
}

impl Numeric for DiagnosticMetric {
    fn value(&self) -> Option<NumericEntry> {
        Some(self.state.current_value())
    }

    fn running_value(&self) -> Option<NumericEntry> {
        Some(self.state.running_value())
    }

    fn final_value(&self) -> NumericEntry {
        self.state.final_value()
    }
}
