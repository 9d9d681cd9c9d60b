//! `xencode-extract-worker extract-worker --kind KIND --max-memory-mib N`:
//! the document extraction worker ([`xencode_analysis::worker`]) as its own
//! program, taking the same arguments the node passes to
//! `xencode extract-worker`. The document comes on stdin; newline-delimited
//! JSON messages go to stdout.

use std::process::ExitCode;

use xencode_analysis::worker::{SUBCOMMAND, run_worker};

const USAGE: &str =
    "usage: xencode-extract-worker extract-worker --kind pdf|html|docx|markdown --max-memory-mib N";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
    };
    let kind = flag("--kind");
    let memory = flag("--max-memory-mib").and_then(|m| m.parse::<u64>().ok());
    match (args.first().map(String::as_str), kind, memory) {
        (Some(SUBCOMMAND), Some(kind), Some(memory)) => ExitCode::from(run_worker(kind, memory)),
        _ => {
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
    }
}
