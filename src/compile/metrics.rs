//! A file's `[metrics]` evaluated at a run's current params: forward only, with the params
//! detached, so no graph is built and nothing is differentiated.

use candle_core::Tensor;

use super::{CompiledFile, Evaluator, values_f64};
use crate::diagnostic::Diagnostic;

impl CompiledFile {
    /// The names of the file's metrics, in file order (the order of [`Evaluator::metrics`]).
    pub fn metric_names(&self) -> Vec<String> {
        self.file
            .metrics
            .iter()
            .map(|m| m.name.node.clone())
            .collect()
    }
}

impl Evaluator {
    /// The names of the values [`Evaluator::metrics`] gives, in order.
    pub fn metric_names(&self) -> &[String] {
        &self.metric_names
    }

    /// Every metric's value at the current params, in file order (empty without metrics).
    pub fn metrics(&self) -> Result<Vec<f64>, Diagnostic> {
        let Some(exec) = &self.metrics else {
            return Ok(Vec::new());
        };
        let params: Vec<Tensor> = self.params.iter().map(|v| v.as_tensor().detach()).collect();
        let inputs: Vec<&Tensor> = self.data.iter().chain(&params).collect();
        let out = exec.run(&inputs).map_err(|e| {
            Diagnostic::error(format!("evaluating the metrics failed: {}", e.error))
                .at(&self.source, e.span)
        })?;
        values_f64(&out).map_err(|e| self.internal(e))
    }
}
