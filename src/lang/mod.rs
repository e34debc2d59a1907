//! The loss-file language: spans, lexer, parser, syntax tree and the TOML schema. It knows no
//! tensors; the compiler turns what it produces into candle programs.

pub mod ast;
pub mod builtins;
pub mod file;
pub mod lexer;
pub mod parser;
