//! The closed set of built-in functions: names, arities and signatures. The compiler matches on
//! [`Builtin`] exhaustively, so a function cannot be named here and forgotten there.

/// How many arguments a function takes: at least `min`, at most `max` (None: any number).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arity {
    pub min: usize,
    pub max: Option<usize>,
}

macro_rules! builtins {
    ($($variant:ident $name:literal $min:literal $max:expr, $sig:literal;)*) => {
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

            /// How to call it, for error messages.
            pub fn signature(self) -> &'static str {
                match self { $(Builtin::$variant => $sig),* }
            }
        }
    };
}

builtins! {
    Exp "exp" 1 Some(1), "exp(x)";
    Log "log" 1 Some(1), "log(x)";
    Log1p "log1p" 1 Some(1), "log1p(x)";
    Sqrt "sqrt" 1 Some(1), "sqrt(x)";
    Abs "abs" 1 Some(1), "abs(x)";
    Sqr "sqr" 1 Some(1), "sqr(x)";
    Sin "sin" 1 Some(1), "sin(x)";
    Cos "cos" 1 Some(1), "cos(x)";
    Tanh "tanh" 1 Some(1), "tanh(x)";
    Sigmoid "sigmoid" 1 Some(1), "sigmoid(x)";
    Softplus "softplus" 1 Some(1), "softplus(x)";
    Relu "relu" 1 Some(1), "relu(x)";
    Gelu "gelu" 1 Some(1), "gelu(x)";
    Elu "elu" 1 Some(2), "elu(x) or elu(x, alpha)";
    Silu "silu" 1 Some(1), "silu(x)";
    Erf "erf" 1 Some(1), "erf(x)";
    Clamp "clamp" 3 Some(3), "clamp(x, lo, hi)";
    Min "min" 2 Some(2), "min(a, b)";
    Max "max" 2 Some(2), "max(a, b)";
    Pow "pow" 2 Some(2), "pow(a, b)";
    Where "where" 3 Some(3), "where(cond, a, b)";
    Sum "sum" 1 Some(2), "sum(x) or sum(x, axis)";
    Mean "mean" 1 Some(2), "mean(x) or mean(x, axis)";
    Amax "amax" 1 Some(2), "amax(x) or amax(x, axis)";
    Amin "amin" 1 Some(2), "amin(x) or amin(x, axis)";
    Logsumexp "logsumexp" 1 Some(2), "logsumexp(x) or logsumexp(x, axis)";
    Norm "norm" 1 Some(2), "norm(x) or norm(x, axis)";
    Softmax "softmax" 1 Some(2), "softmax(x) or softmax(x, axis)";
    LogSoftmax "log_softmax" 1 Some(2), "log_softmax(x) or log_softmax(x, axis)";
    Reshape "reshape" 2 None, "reshape(x, d0, d1, ...)";
    Transpose "transpose" 1 Some(1), "transpose(x)";
    Detach "detach" 1 Some(1), "detach(x)";
    Zeros "zeros" 0 None, "zeros(d0, d1, ...)";
    Ones "ones" 0 None, "ones(d0, d1, ...)";
    Randn "randn" 0 None, "randn(d0, d1, ...)";
    Rand "rand" 0 None, "rand(d0, d1, ...)";
    Full "full" 1 None, "full(value, d0, d1, ...)";
    Linspace "linspace" 3 Some(3), "linspace(a, b, n)";
    Arange "arange" 1 Some(3), "arange(n) or arange(a, b, step)";
    Eye "eye" 1 Some(1), "eye(n)";
    Round "round" 1 Some(1), "round(x)";
    Floor "floor" 1 Some(1), "floor(x)";
    Ceil "ceil" 1 Some(1), "ceil(x)";
    Sign "sign" 1 Some(1), "sign(x)";
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

    /// Whether `n` arguments fit its arity.
    pub fn accepts(self, n: usize) -> bool {
        let a = self.arity();
        n >= a.min && a.max.is_none_or(|m| n <= m)
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
