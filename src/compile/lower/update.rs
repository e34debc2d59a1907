//! Lowering an optimizer written in the loss language (`[optimizers.NAME]`) for one param shape:
//! each state's initial value, and the update, whose lines may assign a state (others name
//! locals) and whose last line is the param's new value. Nothing here is differentiated, so
//! `sign`, `round` and the like are free to use.

use super::{Kind, Lowerer, Reg, Value};
use crate::compile::plan::Plan;
use crate::compile::shape::Shape;
use crate::diagnostic::{Diagnostic, Span};
use crate::lang::ast::Spanned;
use crate::lang::file::{OptimizerDef, StateDef, UPDATE_INPUTS};

/// Where a state's initial value reads its inputs: `p`, then the hyper-parameters in order.
pub const INIT_HYPER: usize = 1;

/// Where an update reads its hyper-parameters (after the [`UPDATE_INPUTS`], in their order),
/// then its states.
pub const UPDATE_HYPER: usize = UPDATE_INPUTS.len();

/// The lowered update of one param shape: a plan whose output is the param's new value, and the
/// registers of the new param and then of each state's new value.
pub struct Lowered {
    pub plan: Plan,
    pub outputs: Vec<Reg>,
}

impl Lowerer {
    /// Lowers state `s`'s initial value for a param of `shape`: `p` and the hyper-parameters
    /// (but `lr`) in scope. It must have the param's shape or be a number.
    pub fn state_init(
        mut self,
        def: &OptimizerDef,
        s: &StateDef,
        shape: &Shape,
    ) -> (Option<Plan>, Vec<Diagnostic>) {
        self.bind_input("p", 0, Kind::Given, shape.clone(), def.name.span.clone());
        self.bind_hyper(def, INIT_HYPER);
        let out = self.expr(&s.init).ok();
        let out = out.filter(|&r| {
            let got = self.shape(r).clone();
            if got == *shape || got.is_scalar() {
                return true;
            }
            self.error(
                format!(
                    "shape mismatch: state `{}` starts with shape {got}, but its param has shape {shape}",
                    s.name.node
                ),
                &s.init.span,
            )
            .help = Some("a state starts with its param's shape (e.g. zeros_like(p)) or as a number".into());
            false
        });
        let diags = std::mem::take(&mut self.diags);
        (out.map(|r| self.finish(r)), diags)
    }

    /// Lowers `def`'s update for a param of `shape` whose states have `states` shapes.
    pub fn update(
        mut self,
        def: &OptimizerDef,
        shape: &Shape,
        states: &[Shape],
    ) -> (Option<Lowered>, Vec<Diagnostic>) {
        for (i, (name, _)) in UPDATE_INPUTS.iter().enumerate() {
            let s = if i < 2 {
                shape.clone()
            } else {
                Shape::scalar()
            };
            self.bind_input(name, i, Kind::Given, s, def.name.span.clone());
        }
        self.bind_hyper(def, UPDATE_HYPER);
        let first_state = UPDATE_HYPER + def.hyper.len();
        for (k, (s, sh)) in def.state.iter().zip(states).enumerate() {
            self.bind_input(
                &s.name.node,
                first_state + k,
                Kind::State,
                sh.clone(),
                s.name.span.clone(),
            );
        }
        let program = &def.update.node;
        let mut locals: Vec<&Spanned<String>> = Vec::new();
        let mut assigned = vec![false; def.state.len()];
        for stmt in &program.stmts {
            let name = &stmt.name;
            let state = def.state.iter().position(|s| s.name.node == name.node);
            if state.is_none() && !self.assignable(name, &stmt.value) {
                self.mark_used(&stmt.value);
                self.bind(&name.node, Value::Poisoned, Kind::Local);
                continue;
            }
            let value = match self.expr(&stmt.value) {
                Ok(r) => Value::Reg(r),
                Err(_) => {
                    self.mark_used(&stmt.value);
                    Value::Poisoned
                }
            };
            match state {
                Some(k) => {
                    assigned[k] = true;
                    let value = self.keeps_shape(&name.node, value, &states[k], &stmt.value.span);
                    self.bind(&name.node, value, Kind::State);
                }
                None => {
                    locals.push(name);
                    self.used.remove(&name.node);
                    self.bind(&name.node, value, Kind::Local);
                }
            }
        }
        let result = self.expr(&program.result);
        if result.is_err() {
            self.mark_used(&program.result);
        }
        locals.retain(|n| !self.used.contains(&n.node));
        for name in locals {
            self.warn(format!("`{}` is never used", name.node), &name.span)
                .help = Some("remove it, or use it in the update".into());
        }
        for (s, _) in def.state.iter().zip(&assigned).filter(|(_, a)| !**a) {
            let name = &s.name.node;
            self.warn(
                format!("state `{name}` is never assigned, so it keeps its initial value"),
                &s.name.span,
            )
            .help = Some(format!("update it with a line `{name} = ...`"));
        }
        let Ok(out) = result else {
            return (None, self.diags);
        };
        let got = self.shape(out).clone();
        if got != *shape {
            self.error(
                format!("the update gives shape {got}, but the param has shape {shape}"),
                &program.result.span,
            )
            .help = Some(
                "the last line is the param's new value: it must have the param's shape".into(),
            );
        }
        let mut outputs = vec![out];
        for s in &def.state {
            match self.env.get(&s.name.node).map(|b| b.value.clone()) {
                Some(Value::Reg(r)) => outputs.push(r),
                _ => return (None, self.diags),
            }
        }
        let diags = std::mem::take(&mut self.diags);
        if diags.iter().any(Diagnostic::is_error) {
            return (None, diags);
        }
        let (plan, outputs) = self.finish_all(&outputs);
        (Some(Lowered { plan, outputs }), diags)
    }

    /// Binds `def`'s hyper-parameters from input `first` on, in order; `lr` is left out (an
    /// update's `lr` is the scheduled one, and a state starts before any schedule).
    fn bind_hyper(&mut self, def: &OptimizerDef, first: usize) {
        for (j, h) in def.hyper.iter().enumerate() {
            if h.name.node != "lr" {
                let span = h.name.span.clone();
                self.bind_input(&h.name.node, first + j, Kind::Hyper, Shape::scalar(), span);
            }
        }
    }

    /// Whether `name`, no state, may name a local: not a value the update is given or a
    /// hyper-parameter, and not a state forgotten in `state` (read by the line assigning it).
    fn assignable(&mut self, name: &Spanned<String>, value: &crate::lang::ast::Expr) -> bool {
        if let Some(b) = self.env.get(&name.node).filter(|b| b.kind != Kind::Local) {
            let kind = b.kind.describe();
            self.error(format!("`{}` is already {kind}", name.node), &name.span)
                .help =
                Some("assign a local of another name; only a state's line may update it".into());
            return false;
        }
        let reads_itself = super::super::data::free_names(value).contains(&name.node);
        if reads_itself && !self.env.contains_key(&name.node) {
            self.error(
                format!(
                    "unknown state `{}`: this line reads it before it has a value",
                    name.node
                ),
                &name.span,
            )
            .help = Some(format!(
                "declare it to keep it between updates: state = {{ {} = \"zeros_like(p)\" }}",
                name.node
            ));
            return false;
        }
        true
    }

    /// `value` for state `name` of shape `want`, poisoned (and reported) when a line gives the
    /// state another shape.
    fn keeps_shape(&mut self, name: &str, value: Value, want: &Shape, span: &Span) -> Value {
        let Value::Reg(r) = value else {
            return value;
        };
        let got = self.shape(r).clone();
        if got == *want {
            return value;
        }
        self.error(
            format!("shape mismatch: state `{name}` has shape {want}, but this line gives it shape {got}"),
            span,
        )
        .help = Some("a state keeps the shape it starts with".into());
        Value::Poisoned
    }
}
