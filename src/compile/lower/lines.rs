//! Lowering lines one after another outside a loss program: a gradient program continues the
//! loss program it differentiates, so both are lowered into one lowerer, the loss's lines first.

use std::sync::Arc;

use super::{Kind, Lowerer, Value};
use crate::compile::plan::Plan;
use crate::diagnostic::SourceFile;
use crate::lang::ast::Stmt;

impl Lowerer {
    /// Lowers `stmts` in order, binding each name to its value (a name already bound to an
    /// input or const is an error, as in a program).
    pub fn lines(&mut self, stmts: &[Stmt]) {
        for stmt in stmts {
            let name = &stmt.name;
            if let Some(b) = self.env.get(&name.node).filter(|b| b.kind != Kind::Local) {
                let kind = b.kind.describe();
                self.error(format!("`{}` is already {kind}", name.node), &name.span)
                    .help = Some("pick another name for this line".into());
                continue;
            }
            let value = match self.expr(&stmt.value) {
                Ok(r) => Value::Reg(r),
                Err(_) => Value::Poisoned,
            };
            self.bind(&name.node, value, Kind::Local);
        }
    }

    /// The register holding line `name`'s value (None: no such line, or it failed).
    pub fn line_register(&self, name: &str) -> Option<usize> {
        match &self.env.get(name)?.value {
            Value::Reg(r) => Some(*r),
            Value::Known(_) | Value::Poisoned => None,
        }
    }

    /// How many instructions it has lowered so far: the ones after it belong to what comes next.
    pub fn lowered(&self) -> usize {
        self.instrs.len()
    }

    /// Every instruction lowered so far, the last one the output (None: nothing lowered), so a
    /// traced run sees each line's value.
    pub fn plan_of_everything(&self) -> Option<Plan> {
        let output = self.instrs.len().checked_sub(1)?;
        Some(Plan {
            instrs: self.instrs.clone(),
            output,
        })
    }

    /// Reports what is lowered from here on against `source` (the gradient program's text).
    pub fn report_in(&mut self, source: &Arc<SourceFile>) {
        self.source = Arc::clone(source);
    }
}
