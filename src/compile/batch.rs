//! Batching a plan over many param points at once, for loss landscapes: when every value that
//! depends on a param is a scalar computed elementwise, feeding each scalar param as a vector of
//! G values (and each vector param as a `[n, G]` matrix read only through `p[k]`) evaluates the
//! loss at G points in one pass. Anything else (reductions, matmuls, reshapes of param values,
//! user functions) is evaluated point by point instead.

use super::plan::{Instr, Narrow, Op, Plan};
use super::shape::Shape;

/// The plan with every param-dependent register widened to `[g]`, or None when the loss does not
/// batch this way. `n_data` inputs come before the params.
pub fn batch_plan(plan: &Plan, n_data: usize, g: usize) -> Option<Plan> {
    let n = plan.instrs.len();
    let mut dep = vec![false; n];
    for (k, instr) in plan.instrs.iter().enumerate() {
        dep[k] = match instr.op {
            Op::Input(i) => i >= n_data,
            Op::Const(_) => false,
            _ => instr.args.iter().any(|&a| dep[a]),
        };
    }
    if !dep[plan.output] {
        return None;
    }
    let scalar = |i: &Instr| i.shape.0.is_empty();
    for (k, instr) in plan.instrs.iter().enumerate() {
        if !dep[k] {
            continue;
        }
        let ok = match &instr.op {
            Op::Input(_) => scalar(instr) || vector_read_by_element(plan, k),
            Op::Index { .. } if !scalar(&plan.instrs[instr.args[0]]) => {
                // Only `p[k]` of a vector param, which the check on the input covers.
                matches!(plan.instrs[instr.args[0]].op, Op::Input(_))
            }
            Op::Unary(_)
            | Op::Affine { .. }
            | Op::Powf(_)
            | Op::Binary(_)
            | Op::Compare(_)
            | Op::Where
            | Op::Clamp
            | Op::Detach => scalar(instr) && instr.args.iter().all(|&a| scalar(&plan.instrs[a])),
            _ => false,
        };
        if !ok {
            return None;
        }
    }
    let mut out = plan.clone();
    for (k, instr) in out.instrs.iter_mut().enumerate() {
        if dep[k] {
            instr.shape = match instr.op {
                Op::Input(_) if !instr.shape.0.is_empty() => Shape(vec![instr.shape.0[0], g]),
                _ => Shape(vec![g]),
            };
        }
    }
    Some(out)
}

/// Whether a rank-1 input is only ever read as single elements (`p[0]`, `p[1]`), which select a
/// row of its batched `[n, G]` form.
fn vector_read_by_element(plan: &Plan, input: usize) -> bool {
    if plan.instrs[input].shape.0.len() != 1 || plan.output == input {
        return false;
    }
    plan.instrs
        .iter()
        .filter(|i| i.args.contains(&input))
        .all(|i| match &i.op {
            Op::Index { narrows, squeeze } => {
                matches!(narrows.as_slice(), [Narrow { dim: 0, len: 1, .. }])
                    && squeeze.as_slice() == [0]
            }
            _ => false,
        })
}
