//! Products of a matrix that needs no gradient (data: `X` in `X @ w`, `A` in `w @ A`) with a
//! vector that does. gemm packs the whole matrix into its own layout on every call, which for
//! one column costs as much as the product (two thirds of a logistic-regression step went to
//! it); these read the matrix once, in place, in the order it is stored. Each is the other's
//! backward pass, so neither transposes anything and both stay differentiable (Hessians).
//!
//! `m @ v` takes each row's dot product with `v`; `v @ m` runs the lane kernel (`fused`) with
//! one lane. Every sum is taken in one fixed order, so the result does not depend on the
//! thread count, and both count the vector's subnormal values as zeros (see the lane kernel's
//! `normal_values`: a multiply-add on one takes a microcode assist).

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::fused::contiguous;
#[cfg(target_arch = "x86_64")]
use super::lane_kernel::Simd;
use super::lane_kernel::{LaneDims, Num, normal_values, vecmat};
use super::threads::{MATMUL_TASK, tasks};

/// `m @ v`: `m` `[rows, n]` (no gradient), `v` `[n]`; `[rows]`. None when the dtype is not f32
/// or f64 (the caller takes gemm's path).
pub fn matvec(m: &Tensor, v: &Tensor) -> Option<Result<Tensor>> {
    let m = supported(m, v)?;
    Some(m.and_then(|m| v.contiguous()?.apply_op1(RowDot { m })))
}

/// `v @ m`: `v` `[rows]`, `m` `[rows, n]` (no gradient); `[n]`. None as for [`matvec`].
pub fn vecmat_of(v: &Tensor, m: &Tensor) -> Option<Result<Tensor>> {
    let m = supported(m, v)?;
    Some(m.and_then(|m| v.contiguous()?.apply_op1(ColDot { m })))
}

/// `m` made contiguous, if both are of a dtype the kernels take.
fn supported(m: &Tensor, v: &Tensor) -> Option<Result<Tensor>> {
    let ok = |t: &Tensor| matches!(t.dtype(), DType::F32 | DType::F64);
    (ok(m) && m.dtype() == v.dtype() && m.rank() == 2 && v.rank() == 1)
        .then(|| m.detach().contiguous())
}

/// Rows of `m` per task on the pool (a task is about [`MATMUL_TASK`] multiply-adds).
fn rows_per_task(rows: usize, n: usize) -> usize {
    rows.div_ceil(tasks(rows * n, MATMUL_TASK).max(1)).max(1)
}

/// `out[i] = Σ_j m[i, j] v[j]` for every row of `m` (`[rows, n]`), on the pool when large.
fn row_dots<T: Num>(m: &[T], v: &[T], rows: usize, n: usize) -> Vec<T> {
    let v = &*normal_values(v);
    if n == 0 {
        return vec![T::default(); rows];
    }
    let mut out = vec![T::default(); rows];
    let chunk = rows_per_task(rows, n);
    let work = |(c, out): (usize, &mut [T])| {
        let from = c * chunk;
        dots(&m[from * n..(from + out.len()) * n], v, n, out);
    };
    if rows.div_ceil(chunk) > 1 {
        out.par_chunks_mut(chunk).enumerate().for_each(work);
    } else {
        out.chunks_mut(chunk.max(1)).enumerate().for_each(work);
    }
    out
}

/// [`row_dots`]'s kernel, vectorised where the CPU allows.
fn dots<T: Num>(m: &[T], v: &[T], n: usize, out: &mut [T]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has AVX2 and FMA, checked just now.
        return unsafe { dots_fma(m, v, n, out) };
    }
    for (o, row) in out.iter_mut().zip(m.chunks_exact(n)) {
        *o = row
            .iter()
            .zip(v)
            .fold(T::default(), |s, (&a, &b)| a.mul_add(b, s));
    }
}

/// Eight rows at a time (eight independent sums in flight), then the rest one by one; see
/// [`dot_rows`].
///
/// # Safety
/// The CPU must have AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn dots_fma<T: Num>(m: &[T], v: &[T], n: usize, out: &mut [T]) {
    let eights = out.len() / 8 * 8;
    // SAFETY: AVX2 and FMA (this function's features); rows below out.len() = m.len() / n.
    unsafe {
        for i in (0..eights).step_by(8) {
            dot_rows::<T, 8>(m, v, n, i, out);
        }
        for i in eights..out.len() {
            dot_rows::<T, 1>(m, v, n, i, out);
        }
    }
}

/// Rows `i..i + R` of `m @ v`: each row summed a register's width at a time, the register's
/// lanes then added in order, and the columns past the last whole register after (the same
/// operations for a row whatever `R`).
///
/// # Safety
/// The CPU must have AVX2 and FMA; rows `i..i + R` lie within `m` and `out`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn dot_rows<T: Num, const R: usize>(m: &[T], v: &[T], n: usize, i: usize, out: &mut [T]) {
    type V<T> = <T as Num>::V;
    let whole = n / V::<T>::W * V::<T>::W;
    // SAFETY: every load addresses W values below `whole` of a row of `m` or of `v`.
    unsafe {
        let mut acc = [V::<T>::zero(); R];
        let mut j = 0;
        while j < whole {
            let x = V::<T>::load(v.as_ptr().add(j));
            for (r, a) in acc.iter_mut().enumerate() {
                *a = V::<T>::fma(V::<T>::load(m.as_ptr().add((i + r) * n + j)), x, *a);
            }
            j += V::<T>::W;
        }
        for (r, a) in acc.iter().enumerate() {
            let mut lanes = [T::default(); 8];
            V::<T>::store(lanes.as_mut_ptr(), *a);
            let mut sum = lanes[..V::<T>::W].iter().fold(T::default(), |s, &l| s + l);
            for j in whole..n {
                sum = m[(i + r) * n + j].mul_add(v[j], sum);
            }
            out[i + r] = sum;
        }
    }
}

/// Typed dispatch of a kernel `f(m, v)` over f32 and f64 storages.
fn on_storages(
    m: &Tensor,
    v: &CpuStorage,
    vl: &Layout,
    f32s: impl FnOnce(&[f32], &[f32]) -> Vec<f32>,
    f64s: impl FnOnce(&[f64], &[f64]) -> Vec<f64>,
) -> Result<CpuStorage> {
    let (ms, ml) = m.storage_and_layout();
    let candle_core::Storage::Cpu(ms) = &*ms else {
        candle_core::bail!("a matrix-vector product off the CPU");
    };
    Ok(match (ms, v) {
        (CpuStorage::F32(m), CpuStorage::F32(v)) => {
            CpuStorage::F32(f32s(contiguous(m, ml)?, contiguous(v, vl)?))
        }
        (CpuStorage::F64(m), CpuStorage::F64(v)) => {
            CpuStorage::F64(f64s(contiguous(m, ml)?, contiguous(v, vl)?))
        }
        _ => candle_core::bail!("matrix-vector products take f32 or f64 of one dtype"),
    })
}

/// `m @ v` as an op on `v`.
#[derive(Debug, Clone)]
struct RowDot {
    m: Tensor,
}

impl CustomOp1 for RowDot {
    fn name(&self) -> &'static str {
        "matvec"
    }

    fn cpu_fwd(&self, v: &CpuStorage, vl: &Layout) -> Result<(CpuStorage, Shape)> {
        let (rows, n) = self.m.dims2()?;
        if vl.shape().dims() != [n] {
            candle_core::bail!(
                "matvec of a {:?} matrix with {:?}",
                self.m.shape(),
                vl.shape()
            );
        }
        let out = on_storages(
            &self.m,
            v,
            vl,
            |m, v| row_dots(m, v, rows, n),
            |m, v| row_dots(m, v, rows, n),
        )?;
        Ok((out, Shape::from(rows)))
    }

    fn bwd(&self, _v: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        // d/dv (m v) = gradᵀ m
        Ok(Some(
            grad.contiguous()?.apply_op1(ColDot { m: self.m.clone() })?,
        ))
    }
}

/// `v @ m` as an op on `v`.
#[derive(Debug, Clone)]
struct ColDot {
    m: Tensor,
}

impl CustomOp1 for ColDot {
    fn name(&self) -> &'static str {
        "vecmat"
    }

    fn cpu_fwd(&self, v: &CpuStorage, vl: &Layout) -> Result<(CpuStorage, Shape)> {
        let (rows, n) = self.m.dims2()?;
        if vl.shape().dims() != [rows] {
            candle_core::bail!(
                "vecmat of {:?} with a {:?} matrix",
                vl.shape(),
                self.m.shape()
            );
        }
        let d = LaneDims {
            lanes: 1,
            n: rows,
            k: n,
            shared: true,
        };
        let out = on_storages(
            &self.m,
            v,
            vl,
            |m, v| vecmat(v, m, d),
            |m, v| vecmat(v, m, d),
        )?;
        Ok((out, Shape::from(n)))
    }

    fn bwd(&self, _v: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        // d/dv (v m) = m grad
        Ok(Some(
            grad.contiguous()?.apply_op1(RowDot { m: self.m.clone() })?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// A `[rows, n]` matrix of varied values (n not a multiple of a register's width).
    fn matrix(rows: usize, n: usize, dtype: DType) -> Tensor {
        let v: Vec<f64> = (0..rows * n)
            .map(|i| ((i * 37 % 101) as f64 - 50.0) / 17.0)
            .collect();
        Tensor::from_vec(v, (rows, n), &Device::Cpu)
            .and_then(|t| t.to_dtype(dtype))
            .unwrap()
    }

    fn f64s(t: &Tensor) -> Vec<f64> {
        t.to_dtype(DType::F64).and_then(|t| t.to_vec1()).unwrap()
    }

    fn close(a: &[f64], b: &[f64], tol: f64, what: &str) {
        assert_eq!(a.len(), b.len(), "{what}");
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() <= tol * (1.0 + y.abs()), "{what}: {x} vs {y}");
        }
    }

    #[test]
    fn products_and_their_gradients_match_candles_matmul() {
        // 13 rows: a group of 8 and a remainder; 21 columns: two registers and a tail.
        for (dtype, tol) in [(DType::F64, 1e-13), (DType::F32, 1e-5)] {
            let m = matrix(13, 21, dtype);
            for (rows_side, len) in [(true, 21), (false, 13)] {
                let w = Var::from_tensor(&matrix(1, len, dtype).squeeze(0).unwrap()).unwrap();
                let (ours, theirs) = if rows_side {
                    (
                        matvec(&m, w.as_tensor()).unwrap().unwrap(),
                        m.matmul(&w.as_tensor().unsqueeze(1).unwrap())
                            .unwrap()
                            .squeeze(1)
                            .unwrap(),
                    )
                } else {
                    (
                        vecmat_of(w.as_tensor(), &m).unwrap().unwrap(),
                        w.as_tensor()
                            .unsqueeze(0)
                            .unwrap()
                            .matmul(&m)
                            .unwrap()
                            .squeeze(0)
                            .unwrap(),
                    )
                };
                let what = format!("{dtype:?} rows side {rows_side}");
                close(&f64s(&ours), &f64s(&theirs), tol, &what);
                // A weighted sum, so each output's gradient differs.
                let weights = matrix(1, ours.dim(0).unwrap(), dtype).squeeze(0).unwrap();
                let grad = |t: &Tensor| {
                    let g = (t * &weights)
                        .unwrap()
                        .sum_all()
                        .unwrap()
                        .backward()
                        .unwrap();
                    f64s(g.get(&w).unwrap())
                };
                close(&grad(&ours), &grad(&theirs), tol, &what);
            }
        }
    }

    #[test]
    fn a_rows_sum_does_not_depend_on_the_rows_around_it() {
        // Split into tasks on a pool, the rows are taken in other groups of eight: each row's
        // bits stay the same (the thread count changes nothing).
        let (m, v) = (matrix(29, 70, DType::F32), matrix(1, 70, DType::F32));
        let (m, v) = (
            m.to_vec2::<f32>().unwrap().concat(),
            v.flatten_all().unwrap(),
        );
        let v = v.to_vec1::<f32>().unwrap();
        let whole = row_dots(&m, &v, 29, 70);
        for split in [1, 3, 8, 13] {
            let mut parts = row_dots(&m[..split * 70], &v, split, 70);
            parts.extend(row_dots(&m[split * 70..], &v, 29 - split, 70));
            assert_eq!(
                parts.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                whole.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                "split after {split} rows"
            );
        }
    }

    /// Both products count the vector's subnormal values as zeros of their sign: `m @ v` (a run
    /// alone's `X @ w`) and `v @ m` (its backward pass, `gᵀ X`), in f32 and f64.
    #[test]
    fn products_count_the_vectors_subnormal_values_as_zeros() {
        for (dtype, tiny, normal) in [
            (DType::F32, 1e-39, f64::from(f32::MIN_POSITIVE)),
            (DType::F64, 1e-310, f64::MIN_POSITIVE),
        ] {
            let m = matrix(37, 37, dtype);
            // Every third value below the normal range, the others normal.
            let values: Vec<f64> = (0..37)
                .map(|i| match i % 3 {
                    0 => tiny * (1.0 + i as f64 / 37.0),
                    _ => (i as f64 - 18.0) / 7.0,
                })
                .collect();
            let vector = |v: &[f64]| {
                Tensor::from_vec(v.to_vec(), 37, &Device::Cpu)
                    .and_then(|t| t.to_dtype(dtype))
                    .unwrap()
            };
            let v = vector(&values);
            let held = f64s(&v).iter().filter(|&&x| x != 0.0).count();
            assert_eq!(
                held, 37,
                "{dtype:?}: the tiny values are held as subnormals"
            );
            let zeroed = vector(
                &values
                    .iter()
                    .map(|&x| if x.abs() < normal { 0.0 } else { x })
                    .collect::<Vec<_>>(),
            );
            let bits = |t: Tensor| f64s(&t).iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_ne!(
                bits(v.clone()),
                bits(zeroed.clone()),
                "{dtype:?}: some are zeroed"
            );
            for rows_side in [true, false] {
                let product = |v: &Tensor| match rows_side {
                    true => matvec(&m, v).unwrap().unwrap(),
                    false => vecmat_of(v, &m).unwrap().unwrap(),
                };
                assert_eq!(
                    bits(product(&v)),
                    bits(product(&zeroed)),
                    "{dtype:?} rows side {rows_side}"
                );
                let only_tiny =
                    vector(&values.iter().map(|&x| tiny.copysign(x)).collect::<Vec<_>>());
                assert!(f64s(&product(&only_tiny)).iter().all(|&x| x == 0.0));
            }
        }
    }
}
