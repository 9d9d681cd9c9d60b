//! What every benchmark report needs: the repository root, today's date,
//! writing a marked section of `docs/benchmarks.md`, percentiles, and a
//! process's CPU time and memory. Included by the
//! analysis crate's benches and by the node's (`node/benches/common`).

#![allow(dead_code)] // each bench binary uses its own subset

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

pub type BoxError = Box<dyn std::error::Error>;

/// The repository root.
pub fn repo_root() -> Result<PathBuf, BoxError> {
    Ok(Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or("no repo root")?
        .to_path_buf())
}

/// Today, as `date +%Y-%m-%d` says.
pub fn today() -> String {
    Command::new("date")
        .arg("+%Y-%m-%d")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map_or_else(|| "today".into(), |s| s.trim().to_owned())
}

/// Replaces the text between `<!-- NAME:start -->` and `<!-- NAME:end -->`
/// in `docs/benchmarks.md` (or appends the markers).
pub fn write_report(name: &str, section: &str) -> Result<(), BoxError> {
    let path = repo_root()?.join("docs/benchmarks.md");
    let start = format!("<!-- {name}:start -->");
    let end = format!("<!-- {name}:end -->");
    let old = std::fs::read_to_string(&path).unwrap_or_else(|_| "# Benchmarks\n\n".into());
    let block = format!("{start}\n{section}{end}");
    let new = match (old.find(&start), old.find(&end)) {
        (Some(s), Some(e)) if e > s => format!("{}{block}{}", &old[..s], &old[e + end.len()..]),
        _ => format!("{old}\n{block}\n"),
    };
    std::fs::write(&path, new)?;
    println!("wrote {} ({name})", path.display());
    Ok(())
}

/// Runs `script` of `tests/benches/automerge-repo/` (the automerge-repo
/// baselines) with `args` in a scratch directory where npm installed its
/// package; its stdout. Needs `node` and `npm`.
pub fn automerge_repo(script: &str, args: &[String]) -> Result<String, BoxError> {
    let src = repo_root()?.join("tests/benches/automerge-repo");
    let dir = std::env::temp_dir().join(format!("xencode-automerge-repo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    for f in ["package.json", "pair.mjs", script] {
        std::fs::copy(src.join(f), dir.join(f))?;
    }
    let out = run_ok(
        Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--silent"])
            .current_dir(&dir),
    )
    .and_then(|_| {
        run_ok(
            Command::new("node")
                .arg(script)
                .args(args)
                .current_dir(&dir),
        )
    });
    let _ = std::fs::remove_dir_all(&dir);
    out
}

/// Runs `cmd`; its stdout, or an error with its stderr.
pub fn run_ok(cmd: &mut Command) -> Result<String, BoxError> {
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {:?}: {e}", cmd.get_program()))?;
    if !out.status.success() {
        return Err(format!(
            "{:?} failed: {}",
            cmd.get_program(),
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The standard library of the `python3` on the PATH.
pub fn stdlib() -> Option<PathBuf> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_paths()['stdlib'])",
        ])
        .output()
        .ok()?;
    let dir = PathBuf::from(String::from_utf8(out.stdout).ok()?.trim());
    dir.is_dir().then_some(dir)
}

/// Every `.py` file under `dir`, outside `site-packages`.
pub fn python_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.file_name().is_some_and(|n| n == "site-packages") {
            continue;
        }
        if p.is_dir() {
            python_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "py") {
            out.push(p);
        }
    }
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// (p50, p99) of `v`, which is sorted in place.
pub fn percentiles(v: &mut [Duration]) -> (Duration, Duration) {
    v.sort_unstable();
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.99))
}

/// A process's resident memory now (`VmRSS:`) or at its peak (`VmHWM:`),
/// in MiB; NaN if it cannot be read.
pub fn rss_mib(pid: u32, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// CPU time a process has used so far (user + system), in seconds, from
/// `/proc/<pid>/stat` (clock ticks of 10 ms); NaN if it cannot be read.
pub fn cpu_secs(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return f64::NAN;
    };
    // Fields after the command name (which may hold spaces, in parentheses).
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return f64::NAN;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 here.
    match (ticks(11), ticks(12)) {
        (Some(u), Some(s)) => (u + s) / 100.0,
        _ => f64::NAN,
    }
}
