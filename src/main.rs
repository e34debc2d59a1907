use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = gradscope::cli::Cli::parse();
    gradscope::init_process(cli.threads);
    match gradscope::run(cli) {
        Ok(code) => code,
        // A closed pipe (`gradscope run ... | head`) is the reader's choice, not an error.
        Err(e)
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            ExitCode::SUCCESS
        }
        Err(e) => {
            // Written, not printed: a closed stderr must not turn the error into a panic.
            let _ = writeln!(std::io::stderr(), "gradscope: {e:#}");
            ExitCode::from(2)
        }
    }
}
