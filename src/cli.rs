//! Command-line interface: one [`Command`] enum, dispatched in one place (`lib::run`).

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// See what your custom loss functions, their gradients and optimizers actually do.
#[derive(Debug, Parser)]
#[command(name = "gradscope", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// One row per loss file: name, params with shapes, variants, and ok or the first error.
    List {
        /// Directory of loss files (searched recursively).
        #[arg(default_value = "losses")]
        dir: PathBuf,
        /// One JSON object per file per line.
        #[arg(long)]
        json: bool,
    },
    /// Load, compile every variant, and take one forward and backward pass at the initial params.
    Check {
        /// Loss files or directories (searched recursively).
        #[arg(default_value = "losses")]
        paths: Vec<PathBuf>,
        /// One JSON object per file per line.
        #[arg(long)]
        json: bool,
    },
}
