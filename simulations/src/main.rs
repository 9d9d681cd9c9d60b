//! `xencode-simulations run SCENARIO.toml --seed N`: one deterministic run,
//! its report on stdout; exit 1 if an invariant failed (the seed is printed
//! so the run can be replayed). `sweep SCENARIO.toml --seeds A..B` runs many.

use std::process::ExitCode;

use xencode_simulations::{Scenario, run};

const USAGE: &str = "usage: xencode-simulations run SCENARIO.toml [--seed N]\n       xencode-simulations sweep SCENARIO.toml [--seeds A..B]";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (cmd, path) = match (args.first(), args.get(1)) {
        (Some(c), Some(p)) => (c.as_str(), p.as_str()),
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let scenario = match Scenario::load(path) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    match cmd {
        "run" => {
            let seed = match flag("--seed").map(|s| s.parse::<u64>()) {
                None => 1,
                Some(Ok(s)) => s,
                Some(Err(_)) => {
                    eprintln!("--seed takes a number");
                    return ExitCode::from(2);
                }
            };
            let report = run(&scenario, seed);
            print!("{}", report.render());
            if report.violations.is_empty() {
                ExitCode::SUCCESS
            } else {
                eprintln!("invariant failed; replay with: --seed {seed}");
                ExitCode::FAILURE
            }
        }
        "sweep" => {
            let range = flag("--seeds").unwrap_or_else(|| "1..100".into());
            let Some((a, b)) = range
                .split_once("..")
                .and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?)))
            else {
                eprintln!("--seeds takes A..B");
                return ExitCode::from(2);
            };
            let mut failed = Vec::new();
            for seed in a..b {
                let r = run(&scenario, seed);
                if !r.violations.is_empty() {
                    eprintln!("seed {seed}: {}", r.violations.join("; "));
                    failed.push(seed);
                }
            }
            println!(
                "{}: {} seeds, {} failed {:?}",
                scenario.name,
                b.saturating_sub(a),
                failed.len(),
                failed
            );
            if failed.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        _ => {
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
    }
}
