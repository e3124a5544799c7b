//! `dispatchctl`: see the library's docs, or `dispatchctl --help`.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let cli = dispatchctl::Cli::parse();
    let mut out = std::io::stdout();
    match dispatchctl::run(cli, &mut out).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            let _ = writeln!(std::io::stderr(), "dispatchctl: {err}");
            ExitCode::FAILURE
        }
    }
}
