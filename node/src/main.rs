//! `xencode`: the node and its command-line client.

mod cli;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    // The document extraction worker: no runtime, no logging, its own limits.
    if let Some((kind, max_memory_mib)) = args.extract_worker() {
        return ExitCode::from(xencode_analysis::worker::run_worker(kind, max_memory_mib));
    }
    let json = args.json();
    let default_level = if args.runs_node() { "info" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli::run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if json {
                println!("{}", cli::error_json(&e));
            }
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
