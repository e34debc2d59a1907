//! Shape rules of every operation, checked before any tensor is touched so a mismatch becomes a
//! diagnostic naming both shapes, never a candle error.

use std::fmt;

/// Largest tensor gradscope will build: 2^28 elements (2 GiB in f64).
pub const MAX_ELEMENTS: usize = 1 << 28;

/// A tensor shape; `[]` is a scalar.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Shape(pub Vec<usize>);

impl Shape {
    /// The shape of a scalar, `[]`.
    pub fn scalar() -> Self {
        Shape(Vec::new())
    }

    /// Number of axes.
    pub fn rank(&self) -> usize {
        self.0.len()
    }

    /// Whether it has no axis.
    pub fn is_scalar(&self) -> bool {
        self.0.is_empty()
    }

    /// Sizes of the axes, first to last.
    pub fn dims(&self) -> &[usize] {
        &self.0
    }

    /// Number of elements, or None when it overflows.
    pub fn elements(&self) -> Option<usize> {
        self.0.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[")?;
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                write!(f, ", ")?;
            }
            write!(f, "{d}")?;
        }
        write!(f, "]")
    }
}

/// NumPy broadcasting of two shapes.
pub fn broadcast(a: &Shape, b: &Shape) -> Option<Shape> {
    let rank = a.rank().max(b.rank());
    (0..rank)
        .map(
            |i| match (dim_from_end(a, rank - 1 - i), dim_from_end(b, rank - 1 - i)) {
                (x, y) if x == y => Some(x),
                (1, y) => Some(y),
                (x, 1) => Some(x),
                _ => None,
            },
        )
        .collect::<Option<Vec<_>>>()
        .map(Shape)
}

fn dim_from_end(s: &Shape, k: usize) -> usize {
    if k < s.rank() {
        s.0[s.rank() - 1 - k]
    } else {
        1
    }
}

/// Why two shapes cannot be multiplied with `@`; its message is the diagnostic's help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MatmulError {
    #[error("`@` needs tensors of rank 1 or more; use `*` for scalars")]
    Scalar,
    #[error(
        "inner dimensions differ: {left} (last axis of the left side) vs {right} ({} of the right side)",
        if *right_is_vector { "length" } else { "second-to-last axis" }
    )]
    Inner {
        left: usize,
        right: usize,
        right_is_vector: bool,
    },
    #[error("batch dimensions {0} and {1} do not broadcast")]
    Batch(Shape, Shape),
}

/// The result of NumPy's `@`, or why the shapes don't fit.
pub fn matmul(a: &Shape, b: &Shape) -> Result<Shape, MatmulError> {
    let (ra, rb) = (a.rank(), b.rank());
    if ra == 0 || rb == 0 {
        return Err(MatmulError::Scalar);
    }
    let k_a = a.0[ra - 1];
    let k_b = if rb == 1 { b.0[0] } else { b.0[rb - 2] };
    if k_a != k_b {
        return Err(MatmulError::Inner {
            left: k_a,
            right: k_b,
            right_is_vector: rb == 1,
        });
    }
    match (ra, rb) {
        (1, 1) => Ok(Shape::scalar()),
        (1, _) => {
            let mut out = b.0.clone();
            out.remove(rb - 2);
            Ok(Shape(out))
        }
        (_, 1) => Ok(Shape(a.0[..ra - 1].to_vec())),
        _ => {
            let (batch_a, batch_b) = (Shape(a.0[..ra - 2].to_vec()), Shape(b.0[..rb - 2].to_vec()));
            let mut out = broadcast(&batch_a, &batch_b)
                .ok_or(MatmulError::Batch(batch_a, batch_b))?
                .0;
            out.push(a.0[ra - 2]);
            out.push(b.0[rb - 1]);
            Ok(Shape(out))
        }
    }
}

/// Resolves a possibly negative axis against a rank.
pub fn axis(axis: i64, rank: usize) -> Option<usize> {
    let r = rank as i64;
    let a = if axis < 0 { axis + r } else { axis };
    (0..r).contains(&a).then_some(a as usize)
}

/// The shape left when `axis` is removed (None: all axes).
pub fn reduce(s: &Shape, axis: Option<usize>) -> Shape {
    match axis {
        None => Shape::scalar(),
        Some(a) => {
            let mut out = s.0.clone();
            out.remove(a);
            Shape(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(d: &[usize]) -> Shape {
        Shape(d.to_vec())
    }

    #[test]
    fn broadcasting_follows_numpy() {
        assert_eq!(broadcast(&s(&[3, 1]), &s(&[1, 4])), Some(s(&[3, 4])));
        assert_eq!(broadcast(&s(&[3, 1]), &s(&[4])), Some(s(&[3, 4])));
        assert_eq!(broadcast(&s(&[]), &s(&[2, 3])), Some(s(&[2, 3])));
        assert_eq!(broadcast(&s(&[256]), &s(&[3])), None);
    }

    #[test]
    fn matmul_follows_numpy() {
        assert_eq!(matmul(&s(&[5, 3]), &s(&[3])), Ok(s(&[5])));
        assert_eq!(matmul(&s(&[3]), &s(&[3, 4])), Ok(s(&[4])));
        assert_eq!(matmul(&s(&[3]), &s(&[3])), Ok(s(&[])));
        assert_eq!(matmul(&s(&[2, 5, 3]), &s(&[3, 4])), Ok(s(&[2, 5, 4])));
        assert_eq!(matmul(&s(&[3]), &s(&[2, 3, 4])), Ok(s(&[2, 4])));
        assert!(matmul(&s(&[5, 3]), &s(&[4])).is_err());
    }

    #[test]
    fn negative_axes_count_from_the_end() {
        assert_eq!(axis(-1, 3), Some(2));
        assert_eq!(axis(-3, 3), Some(0));
        assert_eq!(axis(3, 3), None);
        assert_eq!(axis(-4, 3), None);
    }
}
