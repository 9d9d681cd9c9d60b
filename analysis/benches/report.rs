//! What every benchmark report needs: the repository root, today's date,
//! and writing a marked section of `docs/benchmarks.md`. Included by the
//! analysis crate's benches and by the node's (`node/benches/common`).

#![allow(dead_code)] // each bench binary uses its own subset

use std::path::{Path, PathBuf};
use std::process::Command;

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
