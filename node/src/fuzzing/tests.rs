//! Replays every fuzz target's committed seed corpus (`fuzz/seeds/TARGET/`)
//! and regression inputs (`fuzz/regressions/TARGET/`: crashers found by
//! fuzzing, kept after the fix) through the same entry points the fuzzer
//! calls, so a fixed crash cannot come back unnoticed.
//!
//! `XENCODE_WRITE_FUZZ_SEEDS=1 cargo test -p xencode-node --lib fuzzing`
//! rewrites the seed corpora from real values made by the node's code.

use std::path::{Path, PathBuf};

use crate::fuzzing;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

fn inputs(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<(PathBuf, Vec<u8>)> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .filter_map(|p| std::fs::read(&p).ok().map(|b| (p, b)))
        .collect();
    out.sort();
    out
}

#[test]
fn every_target_has_a_fuzz_binary_a_dictionary_and_seeds() {
    let dir = fuzz_dir();
    let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).expect("fuzz/Cargo.toml");
    for (name, _) in fuzzing::TARGETS {
        let src = dir.join("fuzz_targets").join(format!("{name}.rs"));
        let code = std::fs::read_to_string(&src).unwrap_or_default();
        assert!(
            code.contains(&format!("fuzzing::{name}")),
            "{} must call fuzzing::{name}",
            src.display()
        );
        assert!(
            manifest.contains(&format!("name = \"{name}\"")),
            "{name} in fuzz/Cargo.toml"
        );
        assert!(
            dir.join("dict").join(format!("{name}.dict")).is_file(),
            "{name}.dict"
        );
        assert!(
            !inputs(&dir.join("seeds").join(name)).is_empty(),
            "fuzz/seeds/{name} is empty: run with XENCODE_WRITE_FUZZ_SEEDS=1"
        );
    }
}

#[test]
fn seeds_and_regression_inputs_replay_without_a_crash() {
    let dir = fuzz_dir();
    let seeds = fuzzing::seeds();
    if std::env::var_os("XENCODE_WRITE_FUZZ_SEEDS").is_some() {
        for (i, (target, bytes)) in seeds.iter().enumerate() {
            let d = dir.join("seeds").join(target);
            std::fs::create_dir_all(&d).expect("seed dir");
            std::fs::write(d.join(format!("seed-{i:03}")), bytes).expect("write seed");
        }
    }
    // Fresh seeds from the current code, then the committed ones.
    for (target, bytes) in &seeds {
        assert!(fuzzing::run(target, bytes), "unknown target {target}");
    }
    let mut replayed = 0;
    for (name, _) in fuzzing::TARGETS {
        for kind in ["seeds", "regressions"] {
            for (path, bytes) in inputs(&dir.join(kind).join(name)) {
                eprintln!("replaying {}", path.display());
                fuzzing::run(name, &bytes);
                replayed += 1;
            }
        }
    }
    assert!(
        replayed >= fuzzing::TARGETS.len(),
        "only {replayed} inputs replayed"
    );
}

#[test]
fn the_sync_harness_applies_a_members_genuine_changes() {
    // A seed must reach `apply_changes`, or the fuzzer would only ever
    // exercise the refusal paths: the member's genuine edits are applied.
    let seeds = fuzzing::seeds();
    let (_, genuine) = seeds
        .iter()
        .find(|(t, _)| *t == "automerge_changes")
        .expect("a change seed");
    assert!(crate::store::fuzz::applied_heads(genuine) > 0);
}

#[test]
fn the_sync_harness_takes_a_members_genuine_document_chunk() {
    // The chunk seed must get past every check to the replacing path.
    let seeds = fuzzing::seeds();
    let (_, chunk) = seeds
        .iter()
        .find(|(t, d)| *t == "automerge_changes" && d.first() == Some(&0x41))
        .expect("a chunk seed");
    assert!(crate::store::fuzz::chunk_applies(chunk));
}
