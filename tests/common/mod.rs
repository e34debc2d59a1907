//! Helpers shared by the integration tests that run the real binary.

use std::process::{Command, Output};

/// Runs `gradscope` with `args` and returns what it printed and its exit status.
pub fn gradscope(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gradscope"))
        .args(args)
        .output()
        .expect("the gradscope binary runs")
}
