use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = gradscope::cli::Cli::parse();
    gradscope::init_process(cli.threads);
    match gradscope::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("gradscope: {e:#}");
            ExitCode::from(2)
        }
    }
}
