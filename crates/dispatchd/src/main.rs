//! `dispatchd`: the dispatch server as a process. Reads its settings
//! (flags over `DISPATCH_*` variables over the `--config` file over the
//! defaults), sets up logging, binds, and serves until SIGINT or SIGTERM.
//!
//! # Layout
//!
//! - `flags`: every setting, its heading in `--help`, its default (the
//!   server's own) and how it becomes the server's configuration.
//! - `config_file`: the `--config` file as flags, and `dispatchd config`.
//! - `serve`: binding and serving, single node or cluster; `dispatchd token`.
//! - `sched`: asking the kernel for short CPU slices.

use std::process::ExitCode;

mod config_file;
mod flags;
mod sched;
mod serve;

use flags::{Flags, LogFormat, Subcommand};
use tracing::{error, info, warn};

// Location updates are allocated on the stream readers' threads and freed
// on the engine's; glibc's allocator spent a fifth of the server's time on
// that under load (perf, korea scenario). jemalloc frees across threads
// cheaply and returns memory to the system in the background.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt().with_writer(std::io::stderr).with_env_filter(filter);
    match format {
        LogFormat::Text => logs.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).init(),
        LogFormat::Json => logs.json().with_current_span(false).init(),
    }
}

/// Reads the flags over the environment over the config file, or exits
/// with clap's message; with them, what the earlier spellings among them
/// should be written as now.
fn read_flags() -> Result<(Flags, Vec<String>), ExitCode> {
    use clap::{CommandFactory, FromArgMatches};
    let command = Flags::command().args_override_self(true);
    let given: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let (args, from_file) = match config_file::layered(given.clone(), &command) {
        Ok(layered) => layered,
        Err(cause) => {
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "dispatchd: {cause}");
            return Err(ExitCode::FAILURE);
        }
    };
    let matches = command.clone().try_get_matches_from(&args).unwrap_or_else(|e| e.exit());
    let mut flags = Flags::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    if let Some(Subcommand::Config { .. }) = &flags.command {
        use std::io::Write;
        let text = config_file::print(&matches, &command, &from_file, &given);
        let shown = write!(std::io::stdout(), "{text}");
        return Err(if shown.is_ok() { ExitCode::SUCCESS } else { ExitCode::FAILURE });
    }
    let said = flags.take_earlier_spellings(&matches);
    Ok((flags, said))
}

fn main() -> ExitCode {
    let (flags, said) = match read_flags() {
        Ok(read) => read,
        Err(code) => return code,
    };
    init_logs(flags.log_format);
    for line in said {
        warn!("{line}");
    }
    // Before any other thread starts, so that all of them inherit it.
    ask_for_slice(flags.sched_slice);
    match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime.block_on(serve::serve(flags)),
        Err(cause) => {
            error!(%cause, "cannot start the async runtime");
            ExitCode::FAILURE
        }
    }
}

/// Asks the kernel for short slices (`--sched-slice`), and says what it
/// came to.
fn ask_for_slice(slice: flags::Dur) {
    if slice.0.is_zero() {
        return;
    }
    match sched::ask(slice.0) {
        Ok(sched::Outcome::Set(ns)) => info!(slice_us = ns / 1_000, "threads run with short CPU slices"),
        Ok(sched::Outcome::Kept(ns)) => {
            warn!(
                asked = %slice,
                slice_us = ns / 1_000,
                "the kernel gave another CPU slice (it takes 100 µs to 100 ms per thread, from Linux 6.12)"
            );
        }
        Ok(sched::Outcome::OtherPolicy(policy)) => {
            info!(policy, "threads keep the scheduling policy they were started with")
        }
        Err(cause) => warn!(%cause, "cannot ask for short CPU slices"),
    }
}
