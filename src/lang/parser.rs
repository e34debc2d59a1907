//! A Pratt parser for loss programs and single expressions. It recovers at line ends so one file
//! reports all its syntax errors, and bounds nesting so no input can overflow the stack.

use super::ast::{BinOp, Expr, ExprKind, IndexItem, Kwarg, Program, Spanned, Stmt};
use super::lexer::{LexError, OffsetMap, Tok, Token, lex};
use crate::diagnostic::Span;

/// Deepest expression tree accepted; deeper input is an error, never a stack overflow.
pub const MAX_DEPTH: usize = 200;

/// A syntax error in file offsets.
pub type ParseError = LexError;

/// Parses a whole program (statements, last line the result).
pub fn parse_program(text: &str, map: &OffsetMap) -> Result<Program, Vec<ParseError>> {
    lines(text, map, Role::Loss)
}

/// Parses an optimizer's update (statements, last line the param's new value).
pub fn parse_update(text: &str, map: &OffsetMap) -> Result<Program, Vec<ParseError>> {
    lines(text, map, Role::Update)
}

/// What a program's last line is, for the errors about it.
#[derive(Debug, Clone, Copy)]
enum Role {
    Loss,
    Update,
}

impl Role {
    /// The error for a program with no line, and its help.
    fn empty(self) -> (&'static str, &'static str) {
        match self {
            Role::Loss => (
                "the loss program is empty",
                "write the loss as the last line, e.g. `mean((x @ w - y)^2)`",
            ),
            Role::Update => (
                "the update is empty",
                "write the param's new value as the last line, e.g. `p - lr * g`",
            ),
        }
    }

    /// The error for a program whose last line assigns `name`, and its help.
    fn last_assigns(self, name: &str) -> (&'static str, String) {
        match self {
            Role::Loss => (
                "the last line must be the loss expression, not an assignment",
                format!("add a final line `{name}`"),
            ),
            Role::Update => (
                "the last line must be the param's new value, not an assignment",
                format!("add a last line with the new value, e.g. `p - lr * {name}`"),
            ),
        }
    }
}

fn lines(text: &str, map: &OffsetMap, role: Role) -> Result<Program, Vec<ParseError>> {
    let (tokens, mut errors) = lex(text, map);
    let mut p = Parser::new(tokens);
    // None for a line that failed: it is reported, and no later check may blame it again.
    let mut lines: Vec<Option<(Option<Spanned<String>>, Expr)>> = Vec::new();
    // Whether the line before ended mid-expression (`r = w -`): a bare expression after it is
    // its rest, which that error already explains.
    let mut rest = false;
    loop {
        p.skip_newlines();
        if p.peek() == &Tok::Eof {
            break;
        }
        let start = p.span().start;
        let parsed = p.statement();
        let was_rest = std::mem::replace(&mut rest, false);
        match parsed {
            Ok((None, _)) if was_rest => lines.push(None),
            Ok(line) => lines.push(Some(line)),
            Err(e) => {
                rest = p.peek() == &Tok::Newline;
                p.recover_to_line_end();
                let end = p.span().start;
                // A character the lexer refused already explains why the line does not parse.
                if !errors.iter().any(|l| (start..end).contains(&l.span.start)) {
                    errors.push(e);
                }
                lines.push(None);
            }
        }
    }
    let end = p.tokens.last().map(|t| t.span.clone()).unwrap_or(0..0);
    let Some(last) = lines.pop() else {
        if errors.is_empty() {
            let (message, help) = role.empty();
            errors.push(err(message, end, Some(help)));
        }
        return Err(errors);
    };
    let Some((last_name, result)) = last else {
        return Err(errors);
    };
    if let Some(name) = last_name {
        let (message, help) = role.last_assigns(&name.node);
        errors.push(err(message, name.span.clone(), Some(&help)));
    }
    let mut stmts = Vec::new();
    for (name, value) in lines.into_iter().flatten() {
        match name {
            Some(name) => stmts.push(Stmt { name, value }),
            None => errors.push(err(
                "only the last line may be a bare expression",
                value.span.clone(),
                Some("give it a name: `name = ...`"),
            )),
        }
    }
    if errors.is_empty() {
        Ok(Program { stmts, result })
    } else {
        Err(errors)
    }
}

/// Parses a gradient program: lines `name = value` only, continuing a loss program (which
/// defines the names it reads), so no line is the result.
pub fn parse_assignments(text: &str, map: &OffsetMap) -> Result<Vec<Stmt>, Vec<ParseError>> {
    let (tokens, mut errors) = lex(text, map);
    let mut p = Parser::new(tokens);
    let mut stmts = Vec::new();
    loop {
        p.skip_newlines();
        if p.peek() == &Tok::Eof {
            break;
        }
        match p.statement() {
            Ok((Some(name), value)) => stmts.push(Stmt { name, value }),
            Ok((None, value)) => errors.push(err(
                "every line of a gradient program names its value",
                value.span,
                Some("write `name = ...`"),
            )),
            Err(e) => {
                p.recover_to_line_end();
                errors.push(e);
            }
        }
    }
    if errors.is_empty() {
        Ok(stmts)
    } else {
        Err(errors)
    }
}

/// Parses one expression (a `[data]` or `[params]` value).
pub fn parse_expr(text: &str, map: &OffsetMap) -> Result<Expr, Vec<ParseError>> {
    let (tokens, mut errors) = lex(text, map);
    let mut p = Parser::new(tokens);
    p.skip_newlines();
    let result = p.expr(0).and_then(|e| {
        p.skip_newlines();
        match p.peek() {
            Tok::Eof => Ok(e),
            _ => Err(p.unexpected("the end of the expression")),
        }
    });
    match result {
        Ok(e) if errors.is_empty() => Ok(e),
        Ok(_) => Err(errors),
        Err(e) => {
            errors.push(e);
            Err(errors)
        }
    }
}

fn err(message: &str, span: Span, help: Option<&str>) -> ParseError {
    ParseError {
        message: message.to_string(),
        span,
        help: help.map(str::to_string),
    }
}

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
    depth: usize,
    /// Open brackets; inside them newlines are skipped so expressions may span lines.
    brackets: usize,
    /// The first newline skipped before the current token, to recover from an unclosed bracket.
    skipped_newline: Option<usize>,
}

/// Binding powers, loosest first: comparison, additive, multiplicative, unary minus, power.
fn infix(tok: &Tok) -> Option<(BinOp, u8)> {
    Some(match tok {
        Tok::Lt => (BinOp::Lt, 1),
        Tok::Le => (BinOp::Le, 1),
        Tok::Gt => (BinOp::Gt, 1),
        Tok::Ge => (BinOp::Ge, 1),
        Tok::EqEq => (BinOp::Eq, 1),
        Tok::Ne => (BinOp::Ne, 1),
        Tok::Plus => (BinOp::Add, 2),
        Tok::Minus => (BinOp::Sub, 2),
        Tok::Star => (BinOp::Mul, 3),
        Tok::Slash => (BinOp::Div, 3),
        Tok::At => (BinOp::MatMul, 3),
        Tok::Caret => (BinOp::Pow, 5),
        _ => return None,
    })
}

const UNARY_BP: u8 = 4;

impl Parser {
    fn new(tokens: Vec<Token>) -> Self {
        Self {
            tokens,
            pos: 0,
            depth: 0,
            brackets: 0,
            skipped_newline: None,
        }
    }

    fn peek(&mut self) -> &Tok {
        if self.brackets > 0 {
            while self.tokens[self.pos].tok == Tok::Newline {
                self.skipped_newline.get_or_insert(self.pos);
                self.pos += 1;
            }
        }
        &self.tokens[self.pos].tok
    }

    /// The error for a bracket still open at the end of its line; recovery resumes at that line's
    /// end so the following lines are still parsed.
    fn unclosed(&mut self, open: &Span, wanted: &str) -> Option<ParseError> {
        let at_end = self.peek() == &Tok::Eof;
        if !at_end {
            self.pos = self.skipped_newline?;
        }
        self.brackets = 0;
        Some(err(
            "this bracket is never closed",
            open.clone(),
            Some(&format!("expected {wanted} before the end of the line")),
        ))
    }

    fn peek_at(&self, k: usize) -> &Tok {
        &self.tokens[(self.pos + k).min(self.tokens.len() - 1)].tok
    }

    fn span(&mut self) -> Span {
        self.peek();
        self.tokens[self.pos].span.clone()
    }

    fn bump(&mut self) -> Token {
        self.peek();
        self.skipped_newline = None;
        let t = self.tokens[self.pos].clone();
        if self.pos + 1 < self.tokens.len() {
            self.pos += 1;
        }
        t
    }

    fn skip_newlines(&mut self) {
        while self.peek() == &Tok::Newline {
            self.bump();
        }
    }

    fn recover_to_line_end(&mut self) {
        while !matches!(self.peek(), Tok::Newline | Tok::Eof) {
            self.bump();
        }
    }

    fn unexpected(&mut self, wanted: &str) -> ParseError {
        self.peek();
        let t = &self.tokens[self.pos];
        let help = match (&t.tok, wanted) {
            (Tok::Assign, _) => Some("compare with `==`; `=` only names a whole line's value"),
            (Tok::Newline, _) => Some(
                "the expression is incomplete; to continue it on the next line, put it in parentheses",
            ),
            (Tok::Eof, _) => Some("the expression is incomplete"),
            _ => None,
        };
        err(
            &format!("expected {wanted}, found {}", t.tok.describe()),
            t.span.clone(),
            help,
        )
    }

    fn expect(&mut self, tok: Tok, wanted: &str, open: &Span) -> Result<Span, ParseError> {
        if *self.peek() == tok {
            return Ok(self.bump().span);
        }
        match self.unclosed(open, wanted) {
            Some(e) => Err(e),
            None => Err(self.unexpected(wanted)),
        }
    }

    fn statement(&mut self) -> Result<(Option<Spanned<String>>, Expr), ParseError> {
        self.depth = 0;
        self.brackets = 0;
        self.skipped_newline = None;
        let name = match (self.peek().clone(), self.peek_at(1)) {
            (Tok::Ident(name), Tok::Assign) => {
                let span = self.bump().span;
                self.bump();
                Some(Spanned::new(name, span))
            }
            _ => None,
        };
        let value = self.expr(0)?;
        match self.peek() {
            Tok::Newline | Tok::Eof => Ok((name, value)),
            _ => Err(self.unexpected("an operator or the end of the line")),
        }
    }

    fn enter(&mut self) -> Result<(), ParseError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(err(
                &format!(
                    "expression nested too deeply (more than {MAX_DEPTH} levels of parentheses, \
                     calls or operators in one chain)"
                ),
                self.span(),
                Some(
                    "split it into named steps, one per line (a long sum: partial sums on lines of their own)",
                ),
            ));
        }
        Ok(())
    }

    /// Pratt loop. Each level of the tree counts toward the depth limit, including long chains
    /// like `a + a + ... + a`, whose left-nested tree is as deep as it is long.
    fn expr(&mut self, min_bp: u8) -> Result<Expr, ParseError> {
        self.enter()?;
        let entry_depth = self.depth;
        let mut lhs = self.unary()?;
        // Whether this loop has just made a comparison: `(w > 0) == m` compares a parenthesised
        // one, which is no chain.
        let mut compared = false;
        while let Some((op, bp)) = infix(self.peek()) {
            if bp < min_bp {
                break;
            }
            if op.is_comparison() && compared {
                return Err(err(
                    "comparisons cannot be chained",
                    self.span(),
                    Some("use where(...) or parentheses"),
                ));
            }
            let op_span = self.bump().span;
            // `^` is right-associative and its right side may start with unary minus: `x^-1`.
            let rhs = if op == BinOp::Pow {
                self.power_rhs()?
            } else {
                self.expr(bp + 1)?
            };
            self.enter()?;
            let span = lhs.span.start..rhs.span.end;
            compared = op.is_comparison();
            lhs = Expr {
                kind: ExprKind::Binary {
                    op,
                    op_span,
                    lhs: Box::new(lhs),
                    rhs: Box::new(rhs),
                },
                span,
            };
        }
        self.depth = entry_depth - 1;
        Ok(lhs)
    }

    fn power_rhs(&mut self) -> Result<Expr, ParseError> {
        if self.peek() == &Tok::Minus {
            self.enter()?;
            let start = self.bump().span.start;
            let operand = self.power_rhs()?;
            self.depth -= 1;
            let span = start..operand.span.end;
            return Ok(Expr {
                kind: ExprKind::Neg(Box::new(operand)),
                span,
            });
        }
        self.expr(5)
    }

    fn unary(&mut self) -> Result<Expr, ParseError> {
        if self.peek() == &Tok::Minus {
            self.enter()?;
            let start = self.bump().span.start;
            let operand = self.expr(UNARY_BP + 1)?;
            self.depth -= 1;
            let span = start..operand.span.end;
            return Ok(Expr {
                kind: ExprKind::Neg(Box::new(operand)),
                span,
            });
        }
        let entry_depth = self.depth;
        let mut e = self.primary()?;
        loop {
            e = match self.peek() {
                Tok::LBracket => self.index(e)?,
                Tok::Dot => self.attribute(e)?,
                _ => {
                    self.depth = entry_depth;
                    return Ok(e);
                }
            };
            // Each `[...]` or `.T` wraps the tree one level deeper: `w.T.T...` counts as a chain.
            self.enter()?;
        }
    }

    /// `x.T`, the only attribute; anything else after a `.` is an error naming it.
    fn attribute(&mut self, target: Expr) -> Result<Expr, ParseError> {
        self.enter()?;
        let dot = self.bump().span;
        let t = self.tokens[self.pos].clone();
        match &t.tok {
            Tok::Ident(a) if a == "T" => {
                self.bump();
                self.depth -= 1;
                let span = target.span.start..t.span.end;
                Ok(Expr {
                    kind: ExprKind::Transposed {
                        target: Box::new(target),
                        t_span: dot.start..t.span.end,
                    },
                    span,
                })
            }
            Tok::Ident(a) => Err(err(
                &format!("unknown attribute `.{a}`"),
                dot.start..t.span.end,
                Some("the only attribute is `.T` (transpose); functions are called as f(x)"),
            )),
            _ => Err(self.unexpected("`T` after `.`")),
        }
    }

    fn primary(&mut self) -> Result<Expr, ParseError> {
        let t = self.tokens[self.pos].clone();
        match t.tok {
            Tok::Number(n) => {
                self.bump();
                Ok(Expr {
                    kind: ExprKind::Number(n),
                    span: t.span,
                })
            }
            Tok::Ident(name) => {
                self.bump();
                if self.peek() != &Tok::LParen {
                    return Ok(Expr {
                        kind: ExprKind::Name(name),
                        span: t.span,
                    });
                }
                let open = self.bump().span;
                let (args, kwargs) = self.list(Tok::RParen, &open)?;
                let end = self.tokens[self.pos - 1].span.end;
                Ok(Expr {
                    kind: ExprKind::Call {
                        func: Spanned::new(name, t.span.clone()),
                        args,
                        kwargs,
                    },
                    span: t.span.start..end,
                })
            }
            Tok::LParen => {
                self.bump();
                self.brackets += 1;
                let inner = self.expr(0)?;
                let close = self.expect(Tok::RParen, "`)`", &t.span)?;
                self.brackets -= 1;
                Ok(Expr {
                    kind: inner.kind,
                    span: t.span.start..close.end,
                })
            }
            Tok::LBracket => {
                self.bump();
                let (items, _) = self.list(Tok::RBracket, &t.span)?;
                let end = self.tokens[self.pos - 1].span.end;
                if items.is_empty() {
                    return Err(err(
                        "empty array",
                        t.span.start..end,
                        Some("use zeros(0) for an empty tensor"),
                    ));
                }
                Ok(Expr {
                    kind: ExprKind::Array(items),
                    span: t.span.start..end,
                })
            }
            _ => Err(self.unexpected("a number, a name, `(` or `[`")),
        }
    }

    /// Comma-separated expressions up to `close` (a trailing comma is allowed). In a call's `( )`
    /// they may end with keyword arguments `name=value`; an array's `[ ]` has none.
    fn list(&mut self, close: Tok, open: &Span) -> Result<(Vec<Expr>, Vec<Kwarg>), ParseError> {
        self.enter()?;
        self.brackets += 1;
        let wanted = format!("`,` or `{}`", if close == Tok::RParen { ")" } else { "]" });
        let mut items = Vec::new();
        let mut kwargs: Vec<Kwarg> = Vec::new();
        while *self.peek() != close {
            if self.peek() == &Tok::Eof {
                return Err(self
                    .unclosed(open, &wanted)
                    .unwrap_or_else(|| self.unexpected(&wanted)));
            }
            if let (Tok::Ident(name), Tok::Assign, Tok::RParen) =
                (self.peek().clone(), self.peek_at(1), &close)
            {
                let name = Spanned::new(name, self.bump().span);
                self.bump();
                let value = self.expr(0)?;
                if kwargs.iter().any(|k| k.name.node == name.node) {
                    return Err(err(
                        &format!("`{}` is given twice", name.node),
                        name.span,
                        Some("give each keyword argument once"),
                    ));
                }
                kwargs.push(Kwarg { name, value });
            } else {
                let e = self.expr(0)?;
                if let Some(k) = kwargs.first() {
                    return Err(err(
                        "a positional argument cannot follow a keyword argument",
                        e.span,
                        Some(&format!(
                            "put positional arguments first, then `{}=...`",
                            k.name.node
                        )),
                    ));
                }
                items.push(e);
            }
            if self.peek() == &Tok::Comma {
                self.bump();
            } else if *self.peek() != close {
                return Err(match self.unclosed(open, &wanted) {
                    Some(e) => e,
                    None => self.unexpected(&wanted),
                });
            }
        }
        self.bump();
        self.brackets -= 1;
        self.depth -= 1;
        Ok((items, kwargs))
    }

    fn index(&mut self, target: Expr) -> Result<Expr, ParseError> {
        self.enter()?;
        let open = self.bump().span;
        self.brackets += 1;
        let mut items = Vec::new();
        loop {
            let start = self.span().start;
            let lo = self.index_int()?;
            let item = if self.peek() == &Tok::Colon {
                self.bump();
                let hi = self.index_int()?;
                IndexItem::Slice { start: lo, end: hi }
            } else {
                match lo {
                    Some(i) => IndexItem::At(i),
                    None => return Err(self.unexpected("an integer index or `:`")),
                }
            };
            let end = self.tokens[self.pos - 1].span.end.max(start);
            items.push(Spanned::new(item, start..end));
            match self.peek() {
                Tok::Comma => {
                    self.bump();
                }
                Tok::RBracket => {
                    let close = self.bump().span;
                    self.brackets -= 1;
                    self.depth -= 1;
                    let span = target.span.start..close.end;
                    return Ok(Expr {
                        kind: ExprKind::Index {
                            target: Box::new(target),
                            items,
                        },
                        span,
                    });
                }
                _ => {
                    return Err(match self.unclosed(&open, "`]`") {
                        Some(e) => e,
                        None => self.unexpected("`,` or `]`"),
                    });
                }
            }
        }
    }

    /// An optional integer literal, possibly negative.
    fn index_int(&mut self) -> Result<Option<i64>, ParseError> {
        let neg = self.peek() == &Tok::Minus;
        if neg {
            self.bump();
        }
        match self.peek().clone() {
            Tok::Number(n) if n.fract() == 0.0 && n.abs() < 1e15 => {
                self.bump();
                Ok(Some(if neg { -(n as i64) } else { n as i64 }))
            }
            // A whole number past any tensor's length is one, just out of range.
            Tok::Number(n) if n.fract() == 0.0 => Err(err(
                "this index is past the end of any tensor",
                self.span(),
                Some("an axis has at most a few billion elements; x[-1] is the last"),
            )),
            Tok::Number(_) | Tok::Ident(_) | Tok::LParen => Err(err(
                "indices must be integer literals",
                self.span(),
                Some("write x[0], x[-1], x[1:3] or x[:, 2]"),
            )),
            _ if neg => Err(self.unexpected("an integer after `-`")),
            _ => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn show(e: &Expr) -> String {
        match &e.kind {
            ExprKind::Number(n) => format!("{n}"),
            ExprKind::Name(n) => n.clone(),
            ExprKind::Array(items) => {
                format!(
                    "[{}]",
                    items.iter().map(show).collect::<Vec<_>>().join(", ")
                )
            }
            ExprKind::Neg(x) => format!("(-{})", show(x)),
            ExprKind::Binary { op, lhs, rhs, .. } => {
                format!("({} {} {})", show(lhs), op.symbol(), show(rhs))
            }
            ExprKind::Call { func, args, kwargs } => format!(
                "{}({})",
                func.node,
                args.iter()
                    .map(show)
                    .chain(
                        kwargs
                            .iter()
                            .map(|k| format!("{}={}", k.name.node, show(&k.value)))
                    )
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            ExprKind::Index { target, items } => format!("{}[{}]", show(target), items.len()),
            ExprKind::Transposed { target, .. } => format!("{}.T", show(target)),
        }
    }

    fn parse(s: &str) -> String {
        show(&parse_expr(s, &OffsetMap::Shift(0)).unwrap())
    }

    #[test]
    fn precedence_table() {
        for (src, want) in [
            ("-x^2", "(-(x ^ 2))"),
            ("a + b * c", "(a + (b * c))"),
            ("a - b - c", "((a - b) - c)"),
            ("x^y^z", "(x ^ (y ^ z))"),
            ("x^-1", "(x ^ (-1))"),
            ("a @ b + c", "((a @ b) + c)"),
            ("a < b + 1", "(a < (b + 1))"),
            ("-a * b", "((-a) * b)"),
            ("2 * -x", "(2 * (-x))"),
            ("f(x)[0]", "f(x)[1]"),
            ("(a + b) * c", "((a + b) * c)"),
            ("[[1, 2], [3, 4]]", "[[1, 2], [3, 4]]"),
            ("x ** 2", "(x ^ 2)"),
            ("a @ b.T", "(a @ b.T)"),
            ("-x.T", "(-x.T)"),
            ("x[0].T", "x[1].T"),
            ("f(x).T.T", "f(x).T.T"),
            ("x^y.T", "(x ^ y.T)"),
            (".5 * x", "(0.5 * x)"),
            ("sum(x, axis=-1)", "sum(x, axis=(-1))"),
            ("stack(a, b,\n axis=1,)", "stack(a, b, axis=1)"),
        ] {
            assert_eq!(parse(src), want, "{src}");
        }
    }

    #[test]
    fn program_needs_a_final_expression() {
        let e = parse_program("a = 1\nb = 2", &OffsetMap::Shift(0)).unwrap_err();
        assert!(e[0].message.contains("last line"), "{e:?}");
    }

    #[test]
    fn a_line_ending_in_an_operator_is_one_error() {
        let e = parse_program("r = w -\n  1\nsum(r^2)", &OffsetMap::Shift(0)).unwrap_err();
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].help.as_deref().unwrap().contains("parentheses"),
            "{e:?}"
        );
    }

    #[test]
    fn all_line_errors_are_reported() {
        let e = parse_program("a = (1\nb = 2 +\nc = ]\nc", &OffsetMap::Shift(0)).unwrap_err();
        assert_eq!(e.len(), 3, "{e:?}");
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let n = 100_000;
        let src = format!("{}x{}", "(".repeat(n), ")".repeat(n));
        let e = parse_expr(&src, &OffsetMap::Shift(0)).unwrap_err();
        assert!(e[0].message.contains("nested too deeply"));
        let chain = vec!["a"; n].join(" + ");
        assert!(parse_expr(&chain, &OffsetMap::Shift(0)).is_err());
        let minus = format!("{}x", "-".repeat(n));
        assert!(parse_expr(&minus, &OffsetMap::Shift(0)).is_err());
        for postfix in [".T", "[0:3]"] {
            let chain = format!("w{}", postfix.repeat(n));
            let e = parse_expr(&chain, &OffsetMap::Shift(0)).unwrap_err();
            assert!(
                e[0].message.contains("nested too deeply"),
                "{postfix}: {e:?}"
            );
        }
        let within = format!("sum(w{})", ".T".repeat(MAX_DEPTH / 2));
        assert!(parse_expr(&within, &OffsetMap::Shift(0)).is_ok());
    }

    #[test]
    fn expressions_continue_across_lines_inside_brackets() {
        assert_eq!(
            parse("sum(\n  exp(x)\n  * (y + 1)\n)"),
            "sum((exp(x) * (y + 1)))"
        );
        assert_eq!(parse("[1,\n 2]"), "[1, 2]");
        let p = parse_program("a = (1 +\n 2)\na", &OffsetMap::Shift(0)).unwrap();
        assert_eq!(p.stmts.len(), 1);
    }

    #[test]
    fn an_unclosed_bracket_is_reported_at_its_opener_and_later_lines_still_parse() {
        let e = parse_program("a = (1\nb = 2 +\nc", &OffsetMap::Shift(0)).unwrap_err();
        assert_eq!(e[0].message, "this bracket is never closed");
        assert_eq!(e[0].span, 4..5);
        assert_eq!(e.len(), 2, "{e:?}");
    }

    #[test]
    fn keyword_arguments_and_dot_t_carry_their_spans() {
        let e = parse_expr("sum(x, axis=1) + w.T", &OffsetMap::Shift(0)).unwrap();
        let ExprKind::Binary { lhs, rhs, .. } = e.kind else {
            panic!("a sum")
        };
        let ExprKind::Call { args, kwargs, .. } = lhs.kind else {
            panic!("a call")
        };
        assert_eq!(args.len(), 1);
        assert_eq!(kwargs[0].name.node, "axis");
        assert_eq!(kwargs[0].name.span, 7..11);
        assert_eq!(kwargs[0].value.span, 12..13);
        assert_eq!(rhs.span, 17..20);
        let ExprKind::Transposed { target, t_span } = rhs.kind else {
            panic!("a transpose")
        };
        assert_eq!(target.span, 17..18);
        assert_eq!(t_span, 18..20);
    }

    #[test]
    fn misplaced_or_repeated_keywords_and_unknown_attributes_are_errors() {
        for (src, message, span) in [
            (
                "sum(axis=1, x)",
                "a positional argument cannot follow a keyword argument",
                12..13,
            ),
            ("sum(x, axis=1, axis=2)", "`axis` is given twice", 15..19),
            ("x.shape", "unknown attribute `.shape`", 1..7),
        ] {
            let e = parse_expr(src, &OffsetMap::Shift(0)).unwrap_err();
            assert_eq!((e[0].message.as_str(), e[0].span.clone()), (message, span));
        }
    }

    #[test]
    fn a_broken_last_line_is_reported_once() {
        for (src, message) in [
            (
                "a = 1\nmean(a))",
                "expected an operator or the end of the line, found `)`",
            ),
            ("a = 1\nmean(a) % 2", "unexpected character `%`"),
        ] {
            let e = parse_program(src, &OffsetMap::Shift(0)).unwrap_err();
            let got: Vec<&str> = e.iter().map(|e| e.message.as_str()).collect();
            assert_eq!(got, [message], "{src}");
        }
    }

    #[test]
    fn a_gradient_program_is_assignments_only() {
        let s =
            parse_assignments("d_r = 2 * r\ngrad_w = x.T @ d_r\n", &OffsetMap::Shift(0)).unwrap();
        let names: Vec<&str> = s.iter().map(|s| s.name.node.as_str()).collect();
        assert_eq!(names, ["d_r", "grad_w"]);
        let e = parse_assignments("d_r = 2 * r\nd_r + 1", &OffsetMap::Shift(0)).unwrap_err();
        assert_eq!(
            e[0].message,
            "every line of a gradient program names its value"
        );
        assert_eq!(e[0].span, 12..19);
    }

    #[test]
    fn chained_comparisons_are_rejected() {
        for chain in ["a < b < c", "a + 1 < b == c", "(a) < b < c"] {
            assert!(parse_expr(chain, &OffsetMap::Shift(0)).is_err(), "{chain}");
        }
        // A parenthesised comparison compared again is no chain.
        for text in ["(w > 0) == m", "m == (w > 0)", "(a < b) < (c < d)"] {
            assert!(parse_expr(text, &OffsetMap::Shift(0)).is_ok(), "{text}");
        }
    }
}
