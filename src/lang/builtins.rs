//! The closed set of built-in functions: names, arities and signatures. The compiler matches on
//! [`Builtin`] exhaustively, so a function cannot be named here and forgotten there.

/// How many arguments a function takes: at least `min`, at most `max` (None: any number).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arity {
    pub min: usize,
    pub max: Option<usize>,
}

/// Where a function takes an axis: at a positional index that `axis=k` may fill instead, or only
/// as the keyword (its positional arguments are all tensors).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AxisArg {
    At(usize),
    KeywordOnly,
}

macro_rules! builtins {
    ($($variant:ident $name:literal $min:literal $max:expr, $axis:expr, $sig:literal;)*) => {
        /// A built-in function of the expression language.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Builtin { $($variant),* }

        impl Builtin {
            /// Every built-in, in the order the help lists them.
            pub const ALL: &'static [Builtin] = &[$(Builtin::$variant),*];

            /// The name a loss file calls it by.
            pub fn name(self) -> &'static str {
                match self { $(Builtin::$variant => $name),* }
            }

            /// How many arguments it takes.
            pub fn arity(self) -> Arity {
                match self { $(Builtin::$variant => Arity { min: $min, max: $max }),* }
            }

            /// Where it takes an axis, if it takes one.
            pub fn axis(self) -> Option<AxisArg> {
                use AxisArg::*;
                match self { $(Builtin::$variant => $axis),* }
            }

            /// How to call it, for error messages.
            pub fn signature(self) -> &'static str {
                match self { $(Builtin::$variant => $sig),* }
            }
        }
    };
}

builtins! {
    Exp "exp" 1 Some(1), None, "exp(x)";
    Log "log" 1 Some(1), None, "log(x)";
    Log1p "log1p" 1 Some(1), None, "log1p(x)";
    Sqrt "sqrt" 1 Some(1), None, "sqrt(x)";
    Abs "abs" 1 Some(1), None, "abs(x)";
    Sqr "sqr" 1 Some(1), None, "sqr(x)";
    Sin "sin" 1 Some(1), None, "sin(x)";
    Cos "cos" 1 Some(1), None, "cos(x)";
    Tanh "tanh" 1 Some(1), None, "tanh(x)";
    Sigmoid "sigmoid" 1 Some(1), None, "sigmoid(x)";
    Softplus "softplus" 1 Some(1), None, "softplus(x)";
    Relu "relu" 1 Some(1), None, "relu(x)";
    Gelu "gelu" 1 Some(1), None, "gelu(x)";
    Elu "elu" 1 Some(2), None, "elu(x) or elu(x, alpha)";
    Silu "silu" 1 Some(1), None, "silu(x)";
    Erf "erf" 1 Some(1), None, "erf(x)";
    Clamp "clamp" 3 Some(3), None, "clamp(x, lo, hi)";
    Min "min" 2 Some(2), None, "min(a, b)";
    Max "max" 2 Some(2), None, "max(a, b)";
    Pow "pow" 2 Some(2), None, "pow(a, b)";
    Where "where" 3 Some(3), None, "where(cond, a, b)";
    Sum "sum" 1 Some(2), Some(At(1)), "sum(x) or sum(x, axis)";
    Mean "mean" 1 Some(2), Some(At(1)), "mean(x) or mean(x, axis)";
    Amax "amax" 1 Some(2), Some(At(1)), "amax(x) or amax(x, axis)";
    Amin "amin" 1 Some(2), Some(At(1)), "amin(x) or amin(x, axis)";
    Logsumexp "logsumexp" 1 Some(2), Some(At(1)), "logsumexp(x) or logsumexp(x, axis)";
    Norm "norm" 1 Some(2), Some(At(1)), "norm(x) or norm(x, axis)";
    Softmax "softmax" 1 Some(2), Some(At(1)), "softmax(x) or softmax(x, axis)";
    LogSoftmax "log_softmax" 1 Some(2), Some(At(1)), "log_softmax(x) or log_softmax(x, axis)";
    Argmax "argmax" 2 Some(2), Some(At(1)), "argmax(x, axis)";
    Argmin "argmin" 2 Some(2), Some(At(1)), "argmin(x, axis)";
    OneHot "one_hot" 2 Some(2), None, "one_hot(labels, n)";
    Put "put" 3 Some(4), Some(At(3)), "put(x, i, n) or put(x, i, n, axis)";
    Pad "pad" 3 Some(4), Some(At(3)), "pad(x, before, after) or pad(x, before, after, axis)";
    Stack "stack" 1 None, Some(KeywordOnly), "stack(a, b, ..., axis=0)";
    Concat "concat" 1 None, Some(KeywordOnly), "concat(a, b, ..., axis=0)";
    Reshape "reshape" 2 None, None, "reshape(x, d0, d1, ...)";
    Transpose "transpose" 1 Some(1), None, "transpose(x)";
    Detach "detach" 1 Some(1), None, "detach(x)";
    Zeros "zeros" 0 None, None, "zeros(d0, d1, ...)";
    Ones "ones" 0 None, None, "ones(d0, d1, ...)";
    ZerosLike "zeros_like" 1 Some(1), None, "zeros_like(x)";
    OnesLike "ones_like" 1 Some(1), None, "ones_like(x)";
    Randn "randn" 0 None, None, "randn(d0, d1, ...)";
    Rand "rand" 0 None, None, "rand(d0, d1, ...)";
    Full "full" 1 None, None, "full(value, d0, d1, ...)";
    Linspace "linspace" 3 Some(3), None, "linspace(a, b, n)";
    Arange "arange" 1 Some(3), None, "arange(n) or arange(a, b, step)";
    Eye "eye" 1 Some(1), None, "eye(n)";
    Round "round" 1 Some(1), None, "round(x)";
    Floor "floor" 1 Some(1), None, "floor(x)";
    Ceil "ceil" 1 Some(1), None, "ceil(x)";
    Sign "sign" 1 Some(1), None, "sign(x)";
}

impl Builtin {
    /// The built-in called `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|b| b.name() == name)
    }

    /// Every name, for did-you-mean help.
    pub fn names() -> impl Iterator<Item = &'static str> {
        Self::ALL.iter().map(|b| b.name())
    }

    /// The keyword arguments it accepts (`axis` for the functions that take an axis).
    pub fn keywords(self) -> &'static [&'static str] {
        if self.axis().is_some() {
            &["axis"]
        } else {
            &[]
        }
    }

    /// Whether `n` arguments fit its arity.
    pub fn accepts(self, n: usize) -> bool {
        let a = self.arity();
        n >= a.min && a.max.is_none_or(|m| n <= m)
    }
}

/// What to write for a torch or numpy function the language does not have by that name: the
/// idiom it is here (a torch user's first `gather` or `cross_entropy`).
pub fn written_as(name: &str) -> Option<&'static str> {
    Some(match name {
        "gather" | "take_along_dim" | "take_along_axis" => {
            "pick one entry a row with one_hot: `sum(one_hot(labels, n) * x, axis=1)` for n classes (torch's gather along the last axis)"
        }
        "cross_entropy" | "nll_loss" => {
            "write it out: `-mean(sum(one_hot(labels, n) * log_softmax(logits, 1), axis=1))`"
        }
        "binary_cross_entropy_with_logits" | "bce_with_logits" => {
            "write it out: `mean(softplus(z) - y * z)` for logits z, stable for any z"
        }
        "mse_loss" => "write it out: `mean((pred - y)^2)`",
        "l1_loss" => "write it out: `mean(abs(pred - y))`",
        "logsigmoid" | "log_sigmoid" => "`-softplus(-x)`, stable for any x",
        "matmul" | "mm" | "dot" | "bmm" => "use the `@` operator: `X @ w`",
        "square" => "`sqr(x)` or `x^2`",
        "maximum" => "`max(a, b)`, elementwise; `amax(x, axis)` over an axis",
        "minimum" => "`min(a, b)`, elementwise; `amin(x, axis)` over an axis",
        "clip" => "`clamp(x, lo, hi)`",
        "cat" | "concatenate" => "`concat(a, b, ..., axis=0)`",
        "log2" => "`log(x) / log(2)`",
        "log10" => "`log(x) / log(10)`",
        "tan" => "`sin(x) / cos(x)`",
        "reciprocal" => "`1 / x`",
        "rsqrt" => "`1 / sqrt(x)`",
        "var" => "`mean((x - mean(x))^2)` (the population variance; axis= for one axis)",
        "std" => "`sqrt(mean((x - mean(x))^2))` (the population deviation)",
        "logaddexp" => "`logsumexp(stack(a, b, axis=0), 0)`",
        _ => return None,
    })
}

/// The value of a named constant, `pi` or `e`. A data entry, const, param or program step of the
/// same name shadows it.
pub fn constant(name: &str) -> Option<f64> {
    match name {
        "pi" => Some(std::f64::consts::PI),
        "e" => Some(std::f64::consts::E),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for &b in Builtin::ALL {
            assert_eq!(Builtin::from_name(b.name()), Some(b));
        }
        assert_eq!(Builtin::from_name("expp"), None);
    }
}
