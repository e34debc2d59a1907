//! Loops over a tensor's elements that replace chains of whole-tensor ops. Written as tensor
//! ops, Adam's update made ten temporaries (a 64 MB param's update read and wrote 1.3 GB) and a
//! norm two f64 copies of the tensor. The update kernel does the same arithmetic as the tensor
//! ops, op for op in the same order and precision, so every number is theirs. Its outputs are
//! new tensors, since its inputs (the optimizer's state) may be shared with rewind snapshots
//! and with the state a step started from; only a step the run has kept writes the moments in
//! place, and only those no other state holds ([`Moments`]).

use std::mem::MaybeUninit;
use std::sync::Arc;

use candle_core::{CpuStorage, DType, InplaceOp3, Layout, Result, Storage, Tensor, WithDType};
use half::{bf16, f16};
use rayon::prelude::*;

use super::classic::{AdamRule, AdamState};

/// Elements per parallel chunk; a tensor of fewer than two chunks is done on the calling thread.
const CHUNK: usize = 1 << 16;

/// The floating-point element types the kernels take (f16/bf16 round differently, see `lowp`).
trait Real: WithDType + Send + Sync {
    fn sqrt(self) -> Self;
}

impl Real for f32 {
    fn sqrt(self) -> Self {
        f32::sqrt(self)
    }
}

impl Real for f64 {
    fn sqrt(self) -> Self {
        f64::sqrt(self)
    }
}

/// A contiguous CPU tensor's elements (None for any other, or another element type).
pub fn elements<'a, T: WithDType>(storage: &'a Storage, layout: &Layout) -> Option<&'a [T]> {
    let Storage::Cpu(cpu) = storage else {
        return None;
    };
    let (from, to) = layout.contiguous_offsets()?;
    cpu.as_slice::<T>().ok()?.get(from..to)
}

/// The L2 norm of `a`'s elements (of `a - b`'s, the difference taken in their dtype), in f64:
/// the square root of [`slice_squares`], or, where that sum overflows though every value is
/// finite (a value past 1.3e154 in f64), the norm of the values scaled by a power of two and
/// scaled back. A finite gradient of 1e155 then has the norm 1e155, not inf (which read as a
/// non-finite gradient and halted the run).
pub fn norm(a: &Tensor, b: Option<&Tensor>) -> Result<f64> {
    Ok(norms_of(a, b, 1)?[0])
}

/// Each lane's [`norm`] of `t` `[lanes, ..]` (its leading axis split into `lanes` equal
/// parts), each taken as [`norm`] takes that lane's values alone: the same numbers as a run
/// alone gets, without a tensor op per lane.
pub fn lane_norms(t: &Tensor, lanes: usize) -> Result<Vec<f64>> {
    norms_of(t, None, lanes)
}

/// The L2 norm of norms (a step's over its params'), overflow-safe as [`norm`] is: the root of
/// their sum of squares, or, where that overflows though every norm is finite, taken scaled.
pub fn norm_of_norms(norms: &[f64]) -> f64 {
    slice_norm(norms, None)
}

/// [`norm`] of each of `lanes` equal parts of `a`'s elements (of `a - b`'s).
fn norms_of(a: &Tensor, b: Option<&Tensor>, lanes: usize) -> Result<Vec<f64>> {
    if let Some(b) = b
        && a.dims() != b.dims()
    {
        return Err(candle_core::Error::ShapeMismatchBinaryOp {
            lhs: a.shape().clone(),
            rhs: b.shape().clone(),
            op: "distance",
        });
    }
    match a.dtype() {
        DType::F32 => norms_in::<f32>(a, b, lanes),
        DType::F64 => norms_in::<f64>(a, b, lanes),
        DType::F16 => norms_in::<f16>(a, b, lanes),
        DType::BF16 => norms_in::<bf16>(a, b, lanes),
        _ => {
            let wide = |t: &Tensor| t.to_dtype(DType::F64);
            norms_in::<f64>(&wide(a)?, b.map(wide).transpose()?.as_ref(), lanes)
        }
    }
}

fn norms_in<T: Wide>(a: &Tensor, b: Option<&Tensor>, lanes: usize) -> Result<Vec<f64>> {
    let (a, b) = (a.contiguous()?, b.map(Tensor::contiguous).transpose()?);
    let (sa, la) = a.storage_and_layout();
    let sb = b.as_ref().map(|b| b.storage_and_layout());
    let cpu = || candle_core::Error::Msg("a norm of a tensor not on the CPU".into());
    let xs = elements::<T>(&sa, la).ok_or_else(cpu)?;
    let ys = match &sb {
        Some((s, l)) => Some(elements::<T>(s, l).ok_or_else(cpu)?),
        None => None,
    };
    let len = xs.len().checked_div(lanes).unwrap_or(0);
    Ok((0..lanes)
        .map(|r| {
            let part = r * len..(r + 1) * len;
            slice_norm(&xs[part.clone()], ys.map(|ys| &ys[part]))
        })
        .collect())
}

/// Values widened to f64 exactly, inline: candle's `WithDType::to_f64` is a call per value,
/// which for f16 and bf16 was a tenth of a bf16 MLP's serial time in its gradient norm.
pub trait Wide: WithDType {
    fn wide(self) -> f64;
}

impl Wide for f32 {
    #[inline(always)]
    fn wide(self) -> f64 {
        f64::from(self)
    }
}

impl Wide for f64 {
    #[inline(always)]
    fn wide(self) -> f64 {
        self
    }
}

impl Wide for f16 {
    #[inline(always)]
    fn wide(self) -> f64 {
        f64::from(self.to_f32())
    }
}

impl Wide for bf16 {
    #[inline(always)]
    fn wide(self) -> f64 {
        f64::from(self.to_f32())
    }
}

/// The sum of the squares of the values `xs` (of `xs - ys`, the difference taken in their
/// dtype), in f64. Each chunk of [`CHUNK`] elements is summed in eight lanes (element `i` of
/// the chunk into lane `i % 8`, the lanes added pairwise), then the chunks' sums in order: the
/// same number on any thread count, with less rounding than one running sum, and ten times as
/// fast.
pub fn slice_squares<T: Wide>(xs: &[T], ys: Option<&[T]>) -> f64 {
    let chunk = |k: usize| {
        let range = k * CHUNK..((k + 1) * CHUNK).min(xs.len());
        let x = &xs[range.clone()];
        match ys {
            None => lanes(
                x.chunks_exact(8)
                    .map(|c| std::array::from_fn(|i| c[i].wide())),
                x.chunks_exact(8).remainder().iter().map(|v| v.wide()),
            ),
            Some(ys) => {
                let y = &ys[range];
                let (xc, yc) = (x.chunks_exact(8), y.chunks_exact(8));
                let rest = xc.remainder().iter().zip(yc.remainder());
                lanes(
                    xc.zip(yc)
                        .map(|(a, b)| std::array::from_fn(|i| (a[i] - b[i]).wide())),
                    rest.map(|(&a, &b)| (a - b).wide()),
                )
            }
        }
    };
    let chunks = xs.len().div_ceil(CHUNK);
    match chunks < 2 {
        true => (0..chunks).map(chunk).sum(),
        false => {
            let sums: Vec<f64> = (0..chunks).into_par_iter().map(chunk).collect();
            sums.iter().sum()
        }
    }
}

/// [`norm`] of the values `xs` (of `xs - ys`).
fn slice_norm<T: Wide>(xs: &[T], ys: Option<&[T]>) -> f64 {
    let sum = slice_squares(xs, ys);
    if sum.is_finite() || sum.is_nan() {
        return sum.sqrt();
    }
    let value = |i: usize| match ys {
        Some(ys) => (xs[i] - ys[i]).wide(),
        None => xs[i].wide(),
    };
    let largest = (0..xs.len()).map(|i| value(i).abs()).fold(0.0, f64::max);
    if !largest.is_finite() {
        return sum.sqrt();
    }
    // 2^-e with e the exponent of the largest: exact, and it brings the largest square near 1.
    let e = largest.log2().floor() as i32;
    let (down, up) = (2f64.powi(-e), 2f64.powi(e));
    let scaled: Vec<f64> = (0..xs.len()).map(|i| value(i) * down).collect();
    slice_squares(&scaled, None).sqrt() * up
}

/// The sum of the squares of the values in `blocks` (value `k` of each in lane `k`) and then
/// in `rest` (value `k` in lane `k`), the lanes added pairwise at the end.
fn lanes(blocks: impl Iterator<Item = [f64; 8]>, rest: impl Iterator<Item = f64>) -> f64 {
    let mut acc = [0.0f64; 8];
    for block in blocks {
        for (a, v) in acc.iter_mut().zip(block) {
            *a += v * v;
        }
    }
    for (a, v) in acc.iter_mut().zip(rest) {
        *a += v * v;
    }
    ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]))
}

/// `f(from, chunk)` on every chunk of `out` (`from` its first element's index), in parallel
/// chunks of [`CHUNK`] elements.
fn in_chunks<U: Send>(out: &mut [U], f: impl Fn(usize, &mut [U]) + Sync) {
    if out.len() < 2 * CHUNK {
        f(0, out);
    } else {
        out.par_chunks_mut(CHUNK)
            .enumerate()
            .for_each(|(k, chunk)| f(k * CHUNK, chunk));
    }
}

/// Three vectors of `n` elements written by `f(from, a, b, c)`, which fills elements
/// `from..from + a.len()` of each, in parallel chunks.
fn fill3<T: Send>(
    n: usize,
    f: impl Fn(usize, &mut [MaybeUninit<T>], &mut [MaybeUninit<T>], &mut [MaybeUninit<T>]) + Sync,
) -> [Vec<T>; 3] {
    let mut out = [
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    ];
    let [a, b, c] = &mut out;
    let (a, b, c) = (
        &mut a.spare_capacity_mut()[..n],
        &mut b.spare_capacity_mut()[..n],
        &mut c.spare_capacity_mut()[..n],
    );
    if n < 2 * CHUNK {
        f(0, a, b, c);
    } else {
        a.par_chunks_mut(CHUNK)
            .zip(b.par_chunks_mut(CHUNK))
            .zip(c.par_chunks_mut(CHUNK))
            .enumerate()
            .for_each(|(k, ((a, b), c))| f(k * CHUNK, a, b, c));
    }
    for v in &mut out {
        // SAFETY: `f` wrote every one of the first `n` elements.
        unsafe { v.set_len(n) };
    }
    out
}

/// How the Adam kernel keeps a state's moments. A large param's step held its param, gradient,
/// both moments and the three new tensors at once: writing the moments in place saves two of
/// the seven. That is safe only for moments no other state holds (a rewind snapshot, the state
/// a step started from), and only once the run keeps the step (it discards one that left
/// non-finite params), so the kernel leaves the moments' update to [`commit`].
#[derive(Debug, Clone, Default)]
pub struct Moments {
    /// Present when the kernel made the moments: shared by every copy of the state, so a count
    /// of one says no other state holds them.
    own: Option<Arc<()>>,
    /// Set on a step's working copy (`OptimizerState::defer_moments`): the kernel computes the
    /// new param alone and leaves the moments' update in `pending`.
    defer: bool,
    pending: Option<Pending>,
}

impl Moments {
    /// Asks the kernel to leave the moments' update to [`commit`].
    pub(super) fn defer(&mut self) {
        self.defer = true;
    }

    /// Forgets that the kernel made the moments: for a rule that replaced them itself (its
    /// tensor ops, the low-precision loop), whose tensors are never written in place.
    pub(super) fn disown(&mut self) {
        self.own = None;
    }
}

/// A step's update of the moments, as the kernel left it.
#[derive(Debug, Clone)]
struct Pending {
    lanes: Vec<(AdamRule, f64)>,
    p: Tensor,
    g: Tensor,
    t: u64,
}

/// Adam's (and AdamW's) update of `p` in one pass: `AdamRule::step`'s tensor ops element by
/// element, with the moments it keeps in `s` (left to [`commit`] when deferred). `lanes` holds
/// each lane's rule and lr (one for a run alone; lane `r` is the `r`-th of as many equal parts
/// of `p`'s elements). None where the kernel does not apply (amsgrad, f16/bf16, tensors not
/// contiguous on the CPU): the rule's tensor ops then run.
pub(super) fn adam(
    lanes: &[(&AdamRule, f64)],
    s: &mut AdamState,
    p: &Tensor,
    grad: &Tensor,
    t: u64,
) -> Result<Option<Tensor>> {
    if lanes.is_empty() || lanes.iter().any(|(rule, _)| rule.amsgrad) {
        return Ok(None);
    }
    // A second update within one step builds on the first's moments, never in place.
    apply_pending(s, false)?;
    match p.dtype() {
        DType::F32 => adam_typed::<f32>(lanes, s, p, grad, t),
        DType::F64 => adam_typed::<f64>(lanes, s, p, grad, t),
        _ => Ok(None),
    }
}

/// Applies the moments' update the kernel left in `s`, in place where no other state holds
/// them, and ends the deferral: once the run keeps the step.
pub(super) fn commit(s: &mut AdamState) -> Result<()> {
    s.moments.defer = false;
    apply_pending(s, true)
}

/// Applies the moments' update the kernel left in `s`, in place when `in_place` and no other
/// state holds them, else into new tensors.
fn apply_pending(s: &mut AdamState, in_place: bool) -> Result<()> {
    let Some(pending) = s.moments.pending.take() else {
        return Ok(());
    };
    let exclusive = s
        .moments
        .own
        .as_ref()
        .is_some_and(|o| Arc::strong_count(o) == 1);
    match (&s.exp_avg, &s.exp_avg_sq) {
        (Some(m), Some(v)) if in_place && exclusive => {
            m.inplace_op3(&pending.p, &pending.g, &MomentPass(&pending, First))?;
            v.inplace_op3(&pending.p, &pending.g, &MomentPass(&pending, Second))
        }
        _ => {
            let (m, v) = match pending.p.dtype() {
                DType::F32 => new_moments::<f32>(s, &pending)?,
                DType::F64 => new_moments::<f64>(s, &pending)?,
                d => candle_core::bail!("the Adam kernel takes f32 or f64, not {d:?}"),
            };
            s.exp_avg = Some(m);
            s.exp_avg_sq = Some(v);
            s.moments.own = Some(Arc::new(()));
            Ok(())
        }
    }
}

/// Which of an element's new values a pass writes, as a type: each pass's loop is compiled for
/// its part alone (the others' arithmetic dropped) and vectorises.
trait Part: Copy + Send + Sync {
    fn of<T>(r: (T, T, T)) -> T;
}

/// The new param.
#[derive(Clone, Copy)]
struct NewParam;
/// The new first moment.
#[derive(Clone, Copy)]
struct First;
/// The new second moment.
#[derive(Clone, Copy)]
struct Second;

impl Part for NewParam {
    fn of<T>((p, _, _): (T, T, T)) -> T {
        p
    }
}

impl Part for First {
    fn of<T>((_, m, _): (T, T, T)) -> T {
        m
    }
}

impl Part for Second {
    fn of<T>((_, _, v): (T, T, T)) -> T {
        v
    }
}

/// A moment, written in place: the update reads it as its own, and the other moment (which does
/// not enter its new value) as `zero`.
trait Moment: Part {
    fn pair<T>(own: T, zero: T) -> (T, T);
}

impl Moment for First {
    fn pair<T>(own: T, zero: T) -> (T, T) {
        (own, zero)
    }
}

impl Moment for Second {
    fn pair<T>(own: T, zero: T) -> (T, T) {
        (zero, own)
    }
}

/// The elements of `from..to` in lanes of `per_lane`: each lane's index and range.
fn segments(
    from: usize,
    to: usize,
    per_lane: usize,
) -> impl Iterator<Item = (usize, usize, usize)> {
    let mut at = from;
    std::iter::from_fn(move || {
        (at < to).then(|| {
            let lane = at / per_lane;
            let end = ((lane + 1) * per_lane).min(to);
            let out = (lane, at, end);
            at = end;
            out
        })
    })
}

/// The moments' new values into new tensors (the first step's, or moments another state holds).
fn new_moments<T: Real>(s: &AdamState, pending: &Pending) -> Result<(Tensor, Tensor)> {
    let (ps, pl) = pending.p.storage_and_layout();
    let (gs, gl) = pending.g.storage_and_layout();
    let moments = match (&s.exp_avg, &s.exp_avg_sq) {
        (Some(m), Some(v)) => Some((m.storage_and_layout(), v.storage_and_layout())),
        _ => None,
    };
    let storages = moments
        .as_ref()
        .map(|((ms, ml), (vs, vl))| ((&**ms, *ml), (&**vs, *vl)));
    let inputs = Inputs::<T>::of(&ps, pl, &gs, gl, storages)
        .ok_or_else(|| candle_core::Error::Msg("Adam's pending update lost its inputs".into()))?;
    let coefs = pending.coefs::<T>();
    let (m, v) = (
        inputs.fresh::<First>(&coefs),
        inputs.fresh::<Second>(&coefs),
    );
    let (shape, device) = (pending.p.shape().clone(), pending.p.device().clone());
    Ok((
        Tensor::from_vec(m, shape.clone(), &device)?,
        Tensor::from_vec(v, shape, &device)?,
    ))
}

impl Pending {
    fn coefs<T: Real>(&self) -> Vec<AdamCoefs<T>> {
        self.lanes
            .iter()
            .map(|(rule, lr)| AdamCoefs::of(rule, *lr, self.t))
            .collect()
    }
}

/// One moment's update written over it: the dst is the moment, the sources the param and
/// gradient the step was taken from.
struct MomentPass<'a, M>(&'a Pending, M);

impl<M: Moment> InplaceOp3 for MomentPass<'_, M> {
    fn name(&self) -> &'static str {
        "adam-moment"
    }

    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dl: &Layout,
        p: &CpuStorage,
        pl: &Layout,
        g: &CpuStorage,
        gl: &Layout,
    ) -> Result<()> {
        match (dst, p, g) {
            (CpuStorage::F32(d), CpuStorage::F32(p), CpuStorage::F32(g)) => {
                self.pass::<f32>(d, dl, p, pl, g, gl)
            }
            (CpuStorage::F64(d), CpuStorage::F64(p), CpuStorage::F64(g)) => {
                self.pass::<f64>(d, dl, p, pl, g, gl)
            }
            _ => candle_core::bail!("adam-moment takes f32 or f64 of one dtype"),
        }
    }
}

impl<M: Moment> MomentPass<'_, M> {
    fn pass<T: Real>(
        &self,
        dst: &mut [T],
        dl: &Layout,
        p: &[T],
        pl: &Layout,
        g: &[T],
        gl: &Layout,
    ) -> Result<()> {
        let span = |l: &Layout| {
            l.contiguous_offsets()
                .map(|(from, to)| from..to)
                .ok_or_else(|| candle_core::Error::Msg("adam-moment: not contiguous".into()))
        };
        let (p, g, dst) = (&p[span(pl)?], &g[span(gl)?], &mut dst[span(dl)?]);
        if p.len() != dst.len() || g.len() != dst.len() {
            candle_core::bail!("adam-moment: sizes differ");
        }
        let coefs = self.0.coefs::<T>();
        let per_lane = dst.len() / coefs.len();
        let zero = T::from_f64(0.0);
        let run = |at: usize, chunk: &mut [T]| {
            for (lane, a, b) in segments(at, at + chunk.len(), per_lane) {
                let c = &coefs[lane];
                let ins = p[a..b].iter().zip(&g[a..b]);
                for (d, (&p, &g)) in chunk[a - at..b - at].iter_mut().zip(ins) {
                    *d = M::of(c.update(p, g, Some(M::pair(*d, zero))));
                }
            }
        };
        in_chunks(dst, run);
        Ok(())
    }
}

/// One lane's constants of Adam's update, each as the tensor op takes it: `affine(mul, add)`
/// rounds both to T.
struct AdamCoefs<T> {
    decoupled: bool,
    /// No weight decay: the coupled form adds nothing to the gradient.
    no_decay: bool,
    keep: T,
    decay: T,
    w1: T,
    beta2: T,
    w2: T,
    inv_bc2: T,
    eps: T,
    step: T,
}

impl<T: Real> AdamCoefs<T> {
    fn of(rule: &AdamRule, lr: f64, t: u64) -> Self {
        let ((b1, b2), wd, tf) = (rule.betas, rule.weight_decay, t as f64);
        let c = |x: f64| T::from_f64(x);
        let bc1 = 1.0 - b1.powf(tf);
        let bc2_sqrt = (1.0 - b2.powf(tf)).sqrt();
        Self {
            decoupled: rule.decoupled,
            no_decay: wd == 0.0,
            keep: c(1.0 - lr * wd),
            decay: c(wd),
            w1: c(1.0 - b1),
            beta2: c(b2),
            w2: c(1.0 - b2),
            inv_bc2: c(1.0 / bc2_sqrt),
            eps: c(rule.eps),
            step: c(lr / bc1),
        }
    }

    /// The new param and moments of one element. The first step has no moments yet: as if
    /// both were zero, with torch's first-step ops.
    #[inline(always)]
    fn update(&self, p: T, g: T, mv: Option<(T, T)>) -> (T, T, T) {
        let zero = T::from_f64(0.0);
        // Both forms computed and one chosen (not branched on), so the loops vectorise; the
        // other form's value is dropped, whatever it is.
        let (decayed, coupled) = (p * self.keep + zero, g + (p * self.decay + zero));
        let p = if self.decoupled { decayed } else { p };
        let g = if self.decoupled || self.no_decay {
            g
        } else {
            coupled
        };
        let (m, v) = match mv {
            Some((m, v)) => (
                m + ((g - m) * self.w1 + zero),
                (v * self.beta2 + zero) + (g * self.w2 + zero) * g,
            ),
            None => (g * self.w1 + zero, (g * self.w2 + zero) * g),
        };
        let denom = v.sqrt() * self.inv_bc2 + self.eps;
        (p - ((m / denom) * self.step + zero), m, v)
    }
}

/// A tensor's storage and layout, as `Inputs::of` reads them.
type Stored<'a> = (&'a Storage, &'a Layout);

/// A step's inputs, element by element: the param, its gradient and the moments (none before
/// the first step).
struct Inputs<'a, T> {
    p: &'a [T],
    g: &'a [T],
    mv: Option<(&'a [T], &'a [T])>,
}

impl<'a, T: Real> Inputs<'a, T> {
    /// The elements of each storage, when all are contiguous CPU tensors of one size.
    fn of(
        ps: &'a Storage,
        pl: &Layout,
        gs: &'a Storage,
        gl: &Layout,
        moments: Option<(Stored<'a>, Stored<'a>)>,
    ) -> Option<Self> {
        let (p, g) = (elements::<T>(ps, pl)?, elements::<T>(gs, gl)?);
        let mv = match moments {
            None => None,
            Some(((ms, ml), (vs, vl))) => Some((elements::<T>(ms, ml)?, elements::<T>(vs, vl)?)),
        };
        let n = p.len();
        let sized = g.len() == n && mv.is_none_or(|(m, v)| m.len() == n && v.len() == n);
        sized.then_some(Self { p, g, mv })
    }

    /// One part of every element's update, into a new vector.
    fn fresh<P: Part>(&self, coefs: &[AdamCoefs<T>]) -> Vec<T> {
        let n = self.p.len();
        let per_lane = n / coefs.len();
        let mut out = Vec::with_capacity(n);
        let run = |from: usize, chunk: &mut [MaybeUninit<T>]| {
            for (lane, a, b) in segments(from, from + chunk.len(), per_lane) {
                let (c, out) = (&coefs[lane], &mut chunk[a - from..b - from]);
                let ins = self.p[a..b].iter().zip(&self.g[a..b]);
                match self.mv {
                    Some((m, v)) => {
                        let moments = m[a..b].iter().zip(&v[a..b]);
                        for (o, ((&p, &g), (&m, &v))) in out.iter_mut().zip(ins.zip(moments)) {
                            o.write(P::of(c.update(p, g, Some((m, v)))));
                        }
                    }
                    None => {
                        for (o, (&p, &g)) in out.iter_mut().zip(ins) {
                            o.write(P::of(c.update(p, g, None)));
                        }
                    }
                }
            }
        };
        in_chunks(&mut out.spare_capacity_mut()[..n], run);
        // SAFETY: `run` wrote every one of the first `n` elements.
        unsafe { out.set_len(n) };
        out
    }

    /// Every element's new param and moments, in one pass.
    fn all(&self, coefs: &[AdamCoefs<T>]) -> [Vec<T>; 3] {
        let per_lane = self.p.len() / coefs.len();
        fill3(self.p.len(), |from, out_p, out_m, out_v| {
            for (lane, a, b) in segments(from, from + out_p.len(), per_lane) {
                let c = &coefs[lane];
                let o = a - from..b - from;
                let outs = out_p[o.clone()]
                    .iter_mut()
                    .zip(&mut out_m[o.clone()])
                    .zip(&mut out_v[o]);
                type Out<'a, T> = (
                    (&'a mut MaybeUninit<T>, &'a mut MaybeUninit<T>),
                    &'a mut MaybeUninit<T>,
                );
                let write = |((op, om), ov): Out<T>, (np, nm, nv): (T, T, T)| {
                    op.write(np);
                    om.write(nm);
                    ov.write(nv);
                };
                let ins = self.p[a..b].iter().zip(&self.g[a..b]);
                match self.mv {
                    Some((m, v)) => {
                        let moments = m[a..b].iter().zip(&v[a..b]);
                        for (o, ((&p, &g), (&m, &v))) in outs.zip(ins.zip(moments)) {
                            write(o, c.update(p, g, Some((m, v))));
                        }
                    }
                    None => {
                        for (o, (&p, &g)) in outs.zip(ins) {
                            write(o, c.update(p, g, None));
                        }
                    }
                }
            }
        })
    }
}

fn adam_typed<T: Real>(
    lanes: &[(&AdamRule, f64)],
    s: &mut AdamState,
    p: &Tensor,
    grad: &Tensor,
    t: u64,
) -> Result<Option<Tensor>> {
    let (ps, pl) = p.storage_and_layout();
    let (gs, gl) = grad.storage_and_layout();
    let moments = match (&s.exp_avg, &s.exp_avg_sq) {
        (None, None) => None,
        (Some(m), Some(v)) => Some((m.storage_and_layout(), v.storage_and_layout())),
        _ => return Ok(None),
    };
    let storages = moments
        .as_ref()
        .map(|((ms, ml), (vs, vl))| ((&**ms, *ml), (&**vs, *vl)));
    let Some(inputs) = Inputs::<T>::of(&ps, pl, &gs, gl, storages) else {
        return Ok(None);
    };
    if !inputs.p.len().is_multiple_of(lanes.len()) {
        return Ok(None);
    }
    let coefs: Vec<AdamCoefs<T>> = lanes
        .iter()
        .map(|&(rule, lr)| AdamCoefs::of(rule, lr, t))
        .collect();
    let (shape, device) = (p.shape().clone(), p.device().clone());
    if s.moments.defer {
        let new = inputs.fresh::<NewParam>(&coefs);
        drop((ps, gs, moments));
        s.moments.pending = Some(Pending {
            lanes: lanes.iter().map(|&(rule, lr)| (rule.clone(), lr)).collect(),
            p: p.clone(),
            g: grad.clone(),
            t,
        });
        return Ok(Some(Tensor::from_vec(new, shape, &device)?));
    }
    let [new, m, v] = inputs.all(&coefs);
    drop((ps, gs, moments));
    s.exp_avg = Some(Tensor::from_vec(m, shape.clone(), &device)?);
    s.exp_avg_sq = Some(Tensor::from_vec(v, shape.clone(), &device)?);
    s.moments.own = Some(Arc::new(()));
    Ok(Some(Tensor::from_vec(new, shape, &device)?))
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;
    use crate::optim::spec::OptimizerSpec;
    use crate::optim::step::UpdateRule;

    /// Every value's bits, row-major.
    fn bits(t: &Tensor) -> Vec<u64> {
        let t = t.flatten_all().unwrap();
        match t.dtype() {
            DType::F32 => t
                .to_vec1::<f32>()
                .unwrap()
                .iter()
                .map(|v| u64::from(v.to_bits()))
                .collect(),
            _ => t
                .to_vec1::<f64>()
                .unwrap()
                .iter()
                .map(|v| v.to_bits())
                .collect(),
        }
    }

    /// Adam's rule for each spec the tests step (plain Adam, both weight decays, lerp's other
    /// end), in f32 and f64.
    fn rules() -> Vec<(OptimizerSpec, AdamRule, DType)> {
        let specs = [
            "adam(lr=0.01)",
            "adam(lr=0.01, weight_decay=0.1)",
            "adamw(lr=0.01, weight_decay=0.1)",
            "adam(lr=0.3, beta1=0.3, beta2=0.9, eps=1e-3)",
        ];
        let mut out = Vec::new();
        for s in specs {
            let spec = OptimizerSpec::parse(s).unwrap();
            let rule = AdamRule::of(&spec).unwrap();
            for dtype in [DType::F32, DType::F64] {
                out.push((spec.clone(), rule.clone(), dtype));
            }
        }
        out
    }

    #[test]
    fn the_adam_kernel_gives_the_tensor_ops_numbers_bit_for_bit() {
        // A transposed param is not contiguous, so the rule takes its tensor ops there: the
        // reference.
        for (spec, rule, dtype) in rules() {
            let dev = &Device::Cpu;
            // Zeros of both signs, and values of mixed size.
            let start = Tensor::new(&[[0.5f64, -1.5, 2.0], [0.0, -0.0, 1e-3]], dev)
                .and_then(|t| t.to_dtype(dtype))
                .unwrap();
            // The reference param is kept transposed and handed over as a view.
            let (mut p, mut q_t) = (start.clone(), start.t().unwrap().contiguous().unwrap());
            let (mut s, mut r) = (AdamState::default(), AdamState::default());
            for t in 1..=30u64 {
                // A gradient that changes sign and size from step to step.
                let grad = |x: &Tensor| x.affine((t as f64).sin(), 0.3 * (t as f64).cos());
                let q = q_t.t().unwrap();
                let (g, h) = (grad(&p).unwrap(), grad(&q).unwrap());
                p = adam(&[(&rule, 0.01)], &mut s, &p, &g, t)
                    .unwrap()
                    .expect("contiguous");
                assert!(
                    adam(&[(&rule, 0.01)], &mut r.clone(), &q, &h, t)
                        .unwrap()
                        .is_none()
                );
                let q = match &spec {
                    OptimizerSpec::Adam(o) => o.step(&mut r, &q, &h, 0.01, t),
                    OptimizerSpec::AdamW(o) => o.step(&mut r, &q, &h, 0.01, t),
                    _ => unreachable!("adam specs only"),
                }
                .unwrap();
                q_t = q.t().unwrap().contiguous().unwrap();
            }
            let what = format!("{spec:?} in {dtype:?}");
            assert_eq!(bits(&p), bits(&q_t.t().unwrap()), "{what}: params");
            for (a, b) in [(&s.exp_avg, &r.exp_avg), (&s.exp_avg_sq, &r.exp_avg_sq)] {
                assert_eq!(
                    bits(a.as_ref().unwrap()),
                    bits(b.as_ref().unwrap()),
                    "{what}"
                );
            }
        }
    }

    #[test]
    fn moments_left_to_the_commit_give_the_one_pass_numbers_in_place_or_not() {
        // Two lanes of a size the kernels split into parallel chunks.
        let n = 2 * CHUNK + 6;
        for (spec, rule, dtype) in rules() {
            let lanes = [(&rule, 0.01), (&rule, 0.03)];
            let start = Tensor::randn(0f64, 1.0, n, &Device::Cpu)
                .and_then(|t| t.to_dtype(dtype))
                .unwrap();
            let grad = |x: &Tensor, t: u64| x.affine((t as f64).sin(), 0.3 * (t as f64).cos());
            // A step as a run keeps it: its working copy (here the state itself, moved in)
            // defers the moments, steps, and commits them.
            let kept_step = |mut s: AdamState, p: &Tensor, t: u64| {
                s.moments.defer();
                let new = adam(&lanes, &mut s, p, &grad(p, t).unwrap(), t)
                    .unwrap()
                    .unwrap();
                commit(&mut s).unwrap();
                (s, new)
            };
            // One pass; left to the commit and written in place; left to the commit while a
            // copy of the state (a rewind snapshot) holds the moments.
            let (mut p1, mut s1) = (start.clone(), AdamState::default());
            let (mut p2, mut s2) = (start.clone(), AdamState::default());
            let (mut p3, mut s3) = (start.clone(), AdamState::default());
            let mut in_place_since = None;
            for t in 1..=12u64 {
                p1 = adam(&lanes, &mut s1, &p1, &grad(&p1, t).unwrap(), t)
                    .unwrap()
                    .unwrap();
                // A step that is not kept leaves the state as it was.
                let before = bits(s2.exp_avg.as_ref().unwrap_or(&start));
                let mut dropped = s2.clone();
                dropped.moments.defer();
                adam(&lanes, &mut dropped, &p2, &grad(&p2, t).unwrap(), t).unwrap();
                drop(dropped);
                assert_eq!(bits(s2.exp_avg.as_ref().unwrap_or(&start)), before);
                (s2, p2) = kept_step(s2, &p2, t);
                let id = s2.exp_avg.as_ref().unwrap().id();
                let since = *in_place_since.get_or_insert(id);
                // The first step makes the moments; every later one writes over them.
                assert_eq!(id, since, "{spec:?} {dtype:?}: step {t} in place");

                let snapshot = s3.clone();
                let held = snapshot.exp_avg.as_ref().map(bits);
                (s3, p3) = kept_step(s3, &p3, t);
                assert_eq!(
                    snapshot.exp_avg.as_ref().map(bits),
                    held,
                    "the snapshot keeps its moments"
                );

                for (p, s) in [(&p2, &s2), (&p3, &s3)] {
                    let what = format!("{spec:?} in {dtype:?}, step {t}");
                    assert_eq!(bits(p), bits(&p1), "{what}: params");
                    assert_eq!(
                        bits(s.exp_avg.as_ref().unwrap()),
                        bits(s1.exp_avg.as_ref().unwrap()),
                        "{what}"
                    );
                    assert_eq!(
                        bits(s.exp_avg_sq.as_ref().unwrap()),
                        bits(s1.exp_avg_sq.as_ref().unwrap()),
                        "{what}"
                    );
                }
            }
        }
    }

    #[test]
    fn norms_are_the_same_on_any_thread_count_and_match_one_running_sum() {
        // Three chunks and a ragged end: the parallel path, the lanes and the remainder.
        let n = 2 * CHUNK + 13;
        let xs: Vec<f32> = (0..n)
            .map(|i| ((i * 7919) % 1000) as f32 / 250.0 - 2.0)
            .collect();
        let ys: Vec<f32> = xs.iter().map(|x| x * 0.5 + 0.25).collect();
        let dev = &Device::Cpu;
        let (a, b) = (
            Tensor::from_vec(xs.clone(), n, dev).unwrap(),
            Tensor::from_vec(ys.clone(), n, dev).unwrap(),
        );
        let running: f64 = xs.iter().map(|&x| f64::from(x) * f64::from(x)).sum();
        let one = norm(&a, None).unwrap().powi(2);
        assert!(
            (one - running).abs() <= 1e-12 * running,
            "{one} vs {running}"
        );
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        assert_eq!(pool.install(|| norm(&a, None).unwrap().powi(2)), one);
        // The difference is taken in f32 first, as `a - b` would be.
        let diff = (&a - &b).unwrap();
        assert_eq!(norm(&a, Some(&b)).unwrap(), norm(&diff, None).unwrap());
        assert!(norm(&a, Some(&b.narrow(0, 0, 5).unwrap())).is_err());
    }

    #[test]
    fn every_half_value_widens_as_candle_widens_it() {
        let same = |a: f64, b: f64| a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan());
        for bits in 0..=u16::MAX {
            let (h, b) = (f16::from_bits(bits), bf16::from_bits(bits));
            assert!(same(h.wide(), WithDType::to_f64(h)), "f16 {bits:#06x}");
            assert!(same(b.wide(), WithDType::to_f64(b)), "bf16 {bits:#06x}");
        }
        // And a bf16 tensor's sum of squares is its values' in f64.
        let xs: Vec<f32> = (0..1000).map(|i| (i as f32 - 500.0) / 7.0).collect();
        let t = Tensor::new(xs.as_slice(), &Device::Cpu)
            .unwrap()
            .to_dtype(DType::BF16)
            .unwrap();
        let want: f64 = t
            .to_dtype(DType::F64)
            .unwrap()
            .to_vec1::<f64>()
            .unwrap()
            .iter()
            .map(|x| x * x)
            .sum();
        let got = norm(&t, None).unwrap().powi(2);
        assert!((got - want).abs() <= 1e-12 * want, "{got} vs {want}");
    }
}
