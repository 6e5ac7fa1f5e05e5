//! The `warren` binary: a thin command layer over the library.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = warren::cli::Cli::parse();
    warren::cli::init_logging(cli.quiet);
    match warren::cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("warren: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
