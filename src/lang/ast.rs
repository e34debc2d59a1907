//! The syntax tree of loss programs. Every node carries its span in the loss file.

use crate::diagnostic::Span;

/// A value with the span it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Spanned<T> {
    pub node: T,
    pub span: Span,
}

impl<T> Spanned<T> {
    /// A node with the span it was read from.
    pub fn new(node: T, span: Span) -> Self {
        Self { node, span }
    }
}

/// An expression of the loss language, with the span of its source text.
#[derive(Debug, Clone, PartialEq)]
pub struct Expr {
    pub kind: ExprKind,
    pub span: Span,
}

/// A binary operator, as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
    MatMul,
    Pow,
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
    Ne,
}

impl BinOp {
    /// The operator as written, for messages.
    pub fn symbol(self) -> &'static str {
        match self {
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
            BinOp::MatMul => "@",
            BinOp::Pow => "^",
            BinOp::Lt => "<",
            BinOp::Le => "<=",
            BinOp::Gt => ">",
            BinOp::Ge => ">=",
            BinOp::Eq => "==",
            BinOp::Ne => "!=",
        }
    }

    /// Comparisons give 0/1 masks and carry no gradient.
    pub fn is_comparison(self) -> bool {
        matches!(
            self,
            BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge | BinOp::Eq | BinOp::Ne
        )
    }
}

/// One position in `x[...]`: a single index (drops the axis) or a slice `a:b` (keeps it).
#[derive(Debug, Clone, PartialEq)]
pub enum IndexItem {
    At(i64),
    Slice {
        start: Option<i64>,
        end: Option<i64>,
    },
}

/// What an expression is; its span is on [`Expr`].
#[derive(Debug, Clone, PartialEq)]
pub enum ExprKind {
    Number(f64),
    Name(String),
    Array(Vec<Expr>),
    Neg(Box<Expr>),
    Binary {
        op: BinOp,
        op_span: Span,
        lhs: Box<Expr>,
        rhs: Box<Expr>,
    },
    Call {
        func: Spanned<String>,
        args: Vec<Expr>,
        kwargs: Vec<Kwarg>,
    },
    Index {
        target: Box<Expr>,
        items: Vec<Spanned<IndexItem>>,
    },
    /// `x.T`, a spelling of `transpose(x)` for matrices; `t_span` covers the `.T`.
    Transposed {
        target: Box<Expr>,
        t_span: Span,
    },
}

/// `name=value` in a call's argument list, after the positional arguments (`sum(x, axis=1)`).
#[derive(Debug, Clone, PartialEq)]
pub struct Kwarg {
    pub name: Spanned<String>,
    pub value: Expr,
}

/// `name = value`, one line of a program.
#[derive(Debug, Clone, PartialEq)]
pub struct Stmt {
    pub name: Spanned<String>,
    pub value: Expr,
}

/// A loss program: statements, then the expression whose value is the loss.
#[derive(Debug, Clone, PartialEq)]
pub struct Program {
    pub stmts: Vec<Stmt>,
    pub result: Expr,
}
