//! gradscope: see what custom loss functions, their gradients and optimizers actually do.
//!
//! `lang` parses loss files (no tensors), `compile` turns them into candle programs, `check`
//! reports on them; `main.rs` only parses the command line and calls [`run`].

pub mod check;
pub mod cli;
pub mod compile;
pub mod diagnostic;
pub mod lang;
pub mod optim;
pub mod run;

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use cli::{Cli, Command};

/// Runs one command; the exit code is 0 when every file is fine and 1 when any has an error.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let color = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let mut out = std::io::stdout().lock();
    let all_ok = match cli.command {
        Some(Command::List { dir, json }) => check::list(&[dir], json, color, &mut out)?,
        Some(Command::Check { paths, json }) => check::check(&paths, json, color, &mut out)?,
        None => check::check(&["losses".into()], false, color, &mut out)?,
    };
    out.flush()?;
    Ok(if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
