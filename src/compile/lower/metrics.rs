//! Lowering a file's `[metrics]` after a run's loss program: each metric may read the names the
//! program defines, must be a scalar, and is lowered as if inside `detach(...)`, since nothing
//! differentiates it. All metric values of a run come out of one plan, stacked in file order.

use std::collections::HashSet;

use super::{Kind, Lowerer, Reg};
use crate::compile::data::name_uses;
use crate::compile::plan::{Op, Plan};
use crate::compile::shape::Shape;
use crate::diagnostic::Diagnostic;
use crate::lang::ast::{Program, Spanned};
use crate::lang::file::MetricEntry;

/// A variant whose own loss program replaces the file's: a metric reading a line of the file's
/// program that the variant no longer defines is reported naming the variant.
pub struct VariantLoss<'a> {
    pub name: &'a str,
    /// The names the file's own loss program defines.
    pub base_lines: &'a HashSet<String>,
}

impl Lowerer {
    /// Lowers a loss program and then `metrics` over its names. Returns the loss plan, a plan
    /// whose output is every metric's value stacked (`[metrics.len()]`; None without metrics),
    /// and the diagnostics of both.
    pub fn program_with_metrics(
        self,
        p: &Spanned<Program>,
        metrics: &[MetricEntry],
        variant: Option<VariantLoss>,
    ) -> (Option<Plan>, Option<Plan>, Vec<Diagnostic>) {
        self.program_with(p, |lw| lw.metrics(metrics, variant.as_ref()))
    }

    /// The register holding every metric stacked, or None when one failed (and was reported).
    fn metrics(&mut self, metrics: &[MetricEntry], variant: Option<&VariantLoss>) -> Option<Reg> {
        let mut regs = Vec::new();
        let mut ok = true;
        self.detached += 1;
        for m in metrics {
            let named_like = match self.env.get(&m.name.node) {
                Some(b) if b.kind == Kind::Local => Some("a line of the loss program"),
                Some(b) => Some(b.kind.describe()),
                // `check` and the summaries show the loss beside the metrics.
                None if m.name.node == "loss" => Some("the loss"),
                None => None,
            };
            if let Some(kind) = named_like {
                self.warn(
                    format!("metric `{}` is named like {kind}", m.name.node),
                    &m.name.span,
                )
                .help = Some(format!(
                    "`check`, `run` and the TUI show it beside the loss and the params' \
                     gradients, where it reads as {kind}: name it apart (`{}_metric`)",
                    m.name.node
                ));
            }
            if !self.reads_defined_names(m, variant) {
                ok = false;
                continue;
            }
            match self.expr(&m.value) {
                Ok(r) if self.shape(r).is_scalar() => regs.push(r),
                Ok(r) => {
                    let shape = self.shape(r).clone();
                    self.error(
                        format!(
                            "metric `{}` must be a scalar, but this has shape {shape}",
                            m.name.node
                        ),
                        &m.value.span,
                    )
                    .help = Some("reduce it with mean(...) or sum(...)".into());
                    ok = false;
                }
                Err(_) => {
                    self.mark_used(&m.value);
                    ok = false;
                }
            }
        }
        self.detached -= 1;
        let first = metrics.first()?;
        if !ok {
            return None;
        }
        let shape = Shape(vec![regs.len()]);
        self.emit(Op::Stack { axis: 0 }, regs, shape, &first.value.span)
            .ok()
    }

    /// Whether every name metric `m` reads is defined here. In a variant with its own loss, a
    /// line of the file's program that the variant lacks is reported naming the variant; any
    /// other unknown name is left to the base run's report, so it is reported once.
    fn reads_defined_names(&mut self, m: &MetricEntry, variant: Option<&VariantLoss>) -> bool {
        let Some(v) = variant else {
            return true;
        };
        let mut ok = true;
        for (name, span) in name_uses(&m.value) {
            if self.env.contains_key(&name) || crate::lang::builtins::constant(&name).is_some() {
                continue;
            }
            ok = false;
            if v.base_lines.contains(&name) {
                self.error(
                    format!(
                        "metric `{}` reads `{name}`, which the loss of variant `{}` does not define",
                        m.name.node, v.name
                    ),
                    &span,
                )
                .help = Some(format!(
                    "define `{name}` in the variant's loss too, or write the metric without it"
                ));
            }
        }
        ok
    }
}
