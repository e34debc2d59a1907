//! Dense layers one after another (`tanh(x @ W + b)`, the next layer reading only its output)
//! backpropagated as one candle node. candle's backward adds every node's gradient into a fresh
//! zero tensor, so each `[rows, n]` activation of an MLP cost a zero-fill and an add per step
//! (single-threaded, and for f16 with a per-element conversion that took half an f16 step). The
//! chain's forward runs each layer as one op (`fused::Dense`), their values kept; one node over
//! the chain's input and its packed weights stands for the output, and its backward runs the
//! layers' backward in turn, each gradient written once. The numbers are those of the ops one by
//! one; the kept values keep their graphs, so a second derivative through the chain is right.

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Storage, Tensor};

use super::fused::{self, ColumnSum, MatMul, tanh_backward};
use super::plan::{Op, Plan, Reg, Unary};
use super::threads;

/// One layer: `x @ W`, then `+ b` when it has a bias, then tanh when `tanh`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    /// The matmul's right side, W.
    pub weight: Reg,
    pub bias: Option<Reg>,
    pub tanh: bool,
}

/// Layers whose intermediate values nothing else reads, found in a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    /// The first layer's input.
    pub input: Reg,
    /// Whether the input needs a gradient (the first matmul's flag).
    pub input_grad: bool,
    pub layers: Vec<Layer>,
    /// Every register the chain computes, in order; the last is its output.
    pub regs: Vec<Reg>,
}

impl Chain {
    /// The registers it reads from outside: its input, then each layer's W and b.
    pub fn reads(&self) -> Vec<Reg> {
        let mut r = vec![self.input];
        for l in &self.layers {
            r.push(l.weight);
            r.extend(l.bias);
        }
        r
    }

    /// The register holding its result.
    pub fn output(&self) -> Reg {
        *self.regs.last().expect("a chain computes something")
    }
}

/// The chains of `plan` worth running as one node: two layers or more, or one with a bias or
/// tanh after its matmul; every operand a matrix, every inner value read only by the next op.
pub fn chains(plan: &Plan) -> Vec<Chain> {
    let n = plan.instrs.len();
    let readers = plan.readers();
    // The one op reading `r`, when exactly one does and `r` is not the plan's result.
    let only_reader = |r: Reg| match readers[r].as_slice() {
        [k] if r != plan.output => Some(*k),
        _ => None,
    };
    let matrix = |r: Reg| plan.instrs[r].shape.rank() == 2;
    // The layer whose matmul is instruction `k`, with the registers it computes.
    let layer_at = |k: Reg| -> Option<(Layer, Vec<Reg>, bool)> {
        let instr = &plan.instrs[k];
        let Op::MatMul { lhs_grad, .. } = instr.op else {
            return None;
        };
        if !(matrix(instr.args[0]) && matrix(instr.args[1])) {
            return None;
        }
        let width = instr.shape.dims()[1];
        let mut layer = Layer {
            weight: instr.args[1],
            bias: None,
            tanh: false,
        };
        let mut regs = vec![k];
        if let Some(j) = only_reader(k) {
            let add = &plan.instrs[j];
            if matches!(add.op, Op::BiasAdd)
                && add.args[0] == k
                && plan.instrs[add.args[1]].shape.dims() == [width]
            {
                layer.bias = Some(add.args[1]);
                regs.push(j);
            }
        }
        let last = *regs.last().expect("the matmul");
        if let Some(t) = only_reader(last)
            && matches!(plan.instrs[t].op, Op::Unary(Unary::Tanh))
        {
            layer.tanh = true;
            regs.push(t);
        }
        Some((layer, regs, lhs_grad))
    };
    let mut inside = vec![false; n];
    let mut found = Vec::new();
    for k in 0..n {
        if inside[k] {
            continue;
        }
        let Some((first, mut regs, input_grad)) = layer_at(k) else {
            continue;
        };
        let mut chain = Chain {
            input: plan.instrs[k].args[0],
            input_grad,
            layers: vec![first],
            regs: Vec::new(),
        };
        loop {
            let end = *regs.last().expect("a layer computes something");
            chain.regs.append(&mut regs);
            let next = only_reader(end)
                .filter(|&m| plan.instrs[m].args.first() == Some(&end))
                .and_then(layer_at);
            match next {
                Some((layer, more, _)) => {
                    chain.layers.push(layer);
                    regs = more;
                }
                None => break,
            }
        }
        for &r in &chain.regs {
            inside[r] = true;
        }
        let one = &chain.layers[0];
        if chain.layers.len() > 1 || one.bias.is_some() || one.tanh {
            found.push(chain);
        }
    }
    found
}

/// Runs `chain` on `x` and each layer's W and b (in [`Chain::reads`] order after the input).
///
/// The weights are packed in f32 when they are f16 or bf16 (exactly): candle adds every
/// gradient into zeros in the node's dtype, and its half-precision add costs ~22 ns a value
/// here (f32: 0.13), so the pack and its pieces would each have paid that for every weight.
pub fn apply(chain: &Chain, x: &Tensor, params: &[&Tensor]) -> Result<Tensor> {
    let mut params = params.iter();
    let mut next = || {
        params
            .next()
            .copied()
            .ok_or_else(|| candle_core::Error::Msg("a dense chain misses a param".into()))
    };
    let mut weights = Vec::new();
    let mut values = Vec::new();
    let mut h = x.clone();
    for (i, layer) in chain.layers.iter().enumerate() {
        let w = next()?;
        weights.push(packable(w)?.flatten_all()?);
        let b = match layer.bias {
            Some(_) => Some(next()?),
            None => None,
        };
        weights.extend(b.map(packable).transpose()?);
        h = fused::dense(&h, w, b, layer.tanh, i > 0 || chain.input_grad)?;
        values.push(h.clone());
    }
    let packed = Tensor::cat(&weights, 0)?;
    x.apply_op2(
        &packed,
        Node {
            layers: chain.layers.clone(),
            input_grad: chain.input_grad,
            values,
        },
    )
}

/// `t` as it goes into the packed weights: f32 where it is f16 or bf16 (see [`apply`]).
fn packable(t: &Tensor) -> Result<Tensor> {
    match t.dtype() {
        DType::F16 | DType::BF16 => t.to_dtype(DType::F32),
        _ => Ok(t.clone()),
    }
}

/// A layer's weight gradient, flattened, and its bias gradient when it has a bias.
type LayerGrads = (Tensor, Option<Tensor>);

/// The chain as one node over (input, packed weights): each W flattened, then its b.
struct Node {
    layers: Vec<Layer>,
    input_grad: bool,
    /// Each layer's output as the forward pass computed it, with its graph.
    values: Vec<Tensor>,
}

impl CustomOp2 for Node {
    fn name(&self) -> &'static str {
        "dense-chain"
    }

    fn cpu_fwd(
        &self,
        _x: &CpuStorage,
        _xl: &Layout,
        _p: &CpuStorage,
        _pl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let out = self.values.last().expect("a chain has a layer");
        let (storage, layout) = out.storage_and_layout();
        match (
            &*storage,
            layout.is_contiguous() && layout.start_offset() == 0,
        ) {
            (Storage::Cpu(s), true) => Ok((s.clone(), out.shape().clone())),
            _ => Err(candle_core::Error::Msg(
                "a dense chain's output is not a contiguous CPU tensor".into(),
            )),
        }
    }

    fn bwd(
        &self,
        x: &Tensor,
        packed: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let both = MatMul {
            lhs_grad: true,
            rhs_grad: true,
        };
        // Where each layer's W and b start in the packed weights.
        let mut offsets = Vec::new();
        let mut at = 0;
        let mut rows_in = x.dim(1)?;
        for (layer, value) in self.layers.iter().zip(&self.values) {
            let cols = value.dim(1)?;
            offsets.push((at, rows_in, cols));
            at += rows_in * cols + if layer.bias.is_some() { cols } else { 0 };
            rows_in = cols;
        }
        // A layer's weight and bias gradients are off the path from the output back to the
        // input: they run beside the rest of the pass, on one thread of the pool, while the
        // others carry the gradient on to the next layer (in turn, without a pool).
        let mut layer_grads: Vec<Option<Result<LayerGrads>>> =
            self.layers.iter().map(|_| None).collect();
        let slots: Vec<_> = layer_grads.iter_mut().collect();
        let carried: Result<Tensor> = threads::side_tasks(|s| {
            (move || {
                let mut g = grad.contiguous()?;
                for ((i, layer), slot) in self.layers.iter().enumerate().zip(slots).rev() {
                    let (at, rows, cols) = offsets[i];
                    if layer.tanh {
                        g = tanh_backward(&g, &self.values[i])?;
                    }
                    let input = if i == 0 { x } else { &self.values[i - 1] }.t()?;
                    let (gi, bias) = (g.clone(), layer.bias.is_some());
                    let grads = move || {
                        threads::serially(|| {
                            let weight = input.apply_op2(&gi, both)?.flatten_all()?;
                            let bias = bias.then(|| gi.apply_op1(ColumnSum)).transpose()?;
                            Ok((weight, bias))
                        })
                    };
                    match s {
                        Some(s) => s.spawn(move |_| *slot = Some(grads())),
                        None => *slot = Some(grads()),
                    }
                    if i > 0 || self.input_grad {
                        let w = packed
                            .narrow(0, at, rows * cols)?
                            .reshape((rows, cols))?
                            .to_dtype(g.dtype())?;
                        g = g.apply_op2(&w.t()?, both)?;
                    }
                }
                Ok(g)
            })()
        });
        let g = carried?;
        let mut grads = Vec::new();
        for slot in layer_grads {
            let (weight, bias) = slot.expect("every layer's gradients were computed")?;
            grads.push(weight);
            grads.extend(bias);
        }
        let dx = self.input_grad.then_some(g);
        let packed_grad = Tensor::cat(&grads, 0)?.to_dtype(packed.dtype())?;
        Ok((dx, Some(packed_grad)))
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::compile::{CompiledFile, Evaluator, candle_dtype, compile};
    use crate::lang::file::{self, DType as FileDType};

    fn compiled(text: &str) -> CompiledFile {
        let loaded = file::load_bytes(Path::new("dense.toml"), text.as_bytes().to_vec());
        compile(loaded.file.expect("the test file loads"))
            .0
            .expect("it compiles")
    }

    /// A loss file in `dtype` with data `X`, `y` and `params`.
    fn text(loss: &str, params: &str, dtype: &str) -> String {
        format!(
            "name = \"d\"\ndtype = \"{dtype}\"\nseed = 3\nloss = \"\"\"\n{loss}\n\"\"\"\n[data]\n\
             X = \"randn(300, 12)\"\ny = \"randn(300)\"\n[params]\n{params}\n"
        )
    }

    #[test]
    fn the_bench_mlp_is_one_chain_of_its_three_layers() {
        let text = std::fs::read_to_string("losses/bench/mlp.toml").unwrap();
        let c = compiled(&text);
        let found = chains(&c.runs[0].plan);
        assert_eq!(found.len(), 1);
        let shape: Vec<(bool, bool)> = found[0]
            .layers
            .iter()
            .map(|l| (l.bias.is_some(), l.tanh))
            .collect();
        assert_eq!(shape, [(true, true), (true, true), (true, false)]);
        assert!(!found[0].input_grad, "X is data");
    }

    #[test]
    fn a_value_read_twice_ends_the_chain_there() {
        // z is read by tanh and by the sum: the layer keeps its bias but not the tanh.
        let c = compiled(&text(
            "z = X @ W + b\nsum(tanh(z)) + sum(z)",
            "W = \"randn(12, 7)\"\nb = \"zeros(7)\"",
            "f32",
        ));
        let found = chains(&c.runs[0].plan);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].layers.len(), 1);
        assert!(found[0].layers[0].bias.is_some() && !found[0].layers[0].tanh);
        // A lone matmul is no chain.
        let c = compiled(&text("sum(X @ W)", "W = \"randn(12, 7)\"", "f32"));
        assert!(chains(&c.runs[0].plan).is_empty());
    }

    /// Loss and gradients of `ev` with every op on its own (no chain), as `run_traced` runs it.
    fn one_by_one(ev: &Evaluator) -> (f64, Vec<Vec<f64>>) {
        let mut inputs: Vec<&Tensor> = ev.data.iter().collect();
        inputs.extend(ev.params.iter().map(|v| v.as_tensor()));
        let (values, _) = ev.exec.run_traced(&inputs, false).unwrap();
        let out = &values[ev.exec.plan().output];
        let store = out.backward().unwrap();
        let grads = ev
            .params
            .iter()
            .map(|p| crate::compile::values_f64(store.get(p.as_tensor()).unwrap()).unwrap())
            .collect();
        (crate::compile::values_f64(out).unwrap()[0], grads)
    }

    #[test]
    fn a_chain_gives_the_ops_own_loss_and_gradients_in_every_dtype() {
        // A param as the input (its gradient too), a layer without bias, one without tanh.
        let loss = "h1 = tanh(X @ A + b1)\nh2 = tanh(h1 @ W2)\nout = h2 @ W3 + b3\n\
                    mean((reshape(out, -1) - y)^2)";
        let params = "A = \"randn(12, 9) / 3\"\nb1 = \"randn(9) / 5\"\n\
                      W2 = \"randn(9, 8) / 3\"\nW3 = \"randn(8, 1) / 3\"\nb3 = \"[0.1]\"";
        for dtype in [
            FileDType::F32,
            FileDType::F64,
            FileDType::F16,
            FileDType::BF16,
        ] {
            let c = compiled(&text(loss, params, "f64"));
            let ev = Evaluator::with_dtype(&c, 0, dtype).unwrap();
            assert_eq!(ev.dtype(), candle_dtype(dtype));
            assert_eq!(chains(ev.exec.plan()).len(), 1);
            let fused = ev.evaluate().unwrap();
            let (loss, grads) = one_by_one(&ev);
            assert_eq!(fused.loss.to_bits(), loss.to_bits(), "{dtype:?}");
            for (g, want) in fused.grads.iter().zip(&grads) {
                assert_eq!(g.dtype(), candle_dtype(dtype));
                assert_eq!(&crate::compile::values_f64(g).unwrap(), want, "{dtype:?}");
            }
        }
        // The input's gradient when it is a param.
        let c = compiled(&text(
            "mean(tanh(P @ A + b1))",
            "P = \"randn(40, 12)\"\nA = \"randn(12, 9) / 3\"\nb1 = \"randn(9) / 5\"",
            "f64",
        ));
        let ev = Evaluator::new(&c, 0).unwrap();
        let found = chains(ev.exec.plan());
        assert!(found.len() == 1 && found[0].input_grad);
        let fused = ev.evaluate().unwrap();
        let (_, grads) = one_by_one(&ev);
        assert_eq!(
            crate::compile::values_f64(&fused.grads[0]).unwrap(),
            grads[0]
        );
    }
}
