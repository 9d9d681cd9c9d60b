//! Analysis quality against the specialist tools, on code nobody here wrote:
//! the `.py` files of the machine's Python standard library.
//!
//! - Security: per class xencode claims, its findings against bandit's, by
//!   file and line (bandit's test ids mapped to the class; its import-only
//!   warnings B403/B404 and its "every subprocess call" B603 are not
//!   findings xencode claims). Every line only one tool reports, and every
//!   hard-coded-secret line, is judged by hand in `quality-judged.tsv` (next
//!   to this file): precision and recall of both tools are computed against
//!   those judgements. A line found by both tools in the other classes is a
//!   true finding by the class's definition (a call of `eval`, `pickle.loads`,
//!   `md5`, a shell). Lines not judged yet (another Python version moves the
//!   corpus) are written to `target/quality-unjudged.tsv` in the same format
//!   and counted in the table.
//! - Complexity: each function's cyclomatic complexity against radon's.
//! - PDF text: bag-of-words F1 of each sample in `../shared/data/pdfs`
//!   against `pdftotext` (and against the ground truth where there is one).
//!
//! The peers are installed by the bench: bandit and radon (pinned) into a
//! virtualenv under `target/`, from PyPI; `pdftotext` from Debian's
//! poppler-utils when it is missing and the bench runs as root. Run:
//! `cargo bench -p xencode-analysis --bench quality`. Writes the
//! `analysis-quality` section of `docs/benchmarks.md`.

mod report;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;

use report::{BoxError, python_files, repo_root, stdlib, today};
use xencode_analysis::code::{Limits, analyze, parse};
use xencode_analysis::documents::{Kind, extract};

const BANDIT: &str = "bandit==1.8.6";
const RADON: &str = "radon==6.0.1";

/// The classes xencode claims, and the bandit tests that find each.
const CLASSES: &[(&str, &str, &[&str])] = &[
    ("CWE-95", "eval / exec", &["B102", "B307"]),
    (
        "CWE-502",
        "unsafe deserialization (pickle, marshal, yaml)",
        &["B301", "B302", "B506"],
    ),
    ("CWE-78", "shell command injection", &["B602", "B605"]),
    ("CWE-328", "weak hash (md5, sha1)", &["B303", "B324"]),
    ("CWE-798", "hard-coded secret", &["B105", "B106", "B107"]),
];

/// A virtualenv with bandit and radon; its `bin` directory.
fn peers() -> Result<PathBuf, BoxError> {
    let venv = repo_root()?.join("target/quality-venv");
    let bin = venv.join("bin");
    if !bin.join("bandit").exists() || !bin.join("radon").exists() {
        run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
        run(Command::new(bin.join("pip")).args(["install", "-q", BANDIT, RADON]))?;
    }
    Ok(bin)
}

fn run(cmd: &mut Command) -> Result<Vec<u8>, BoxError> {
    let out = cmd.output()?;
    if !out.status.success() && out.stdout.is_empty() {
        return Err(format!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(out.stdout)
}

/// Where a finding is: file and line.
type At = (String, u32);

/// Each tool's findings, by class.
type Findings = BTreeMap<&'static str, BTreeSet<At>>;

/// Bandit's report on `dir` (a quarter of an hour on the standard library,
/// single-threaded): kept under `target/` and reused while the corpus, its
/// file count and bandit's version are the same.
fn bandit(bin: &Path, dir: &Path, files: usize) -> Result<Findings, BoxError> {
    let cache = repo_root()?.join("target/quality-bandit.json");
    let key = format!("{BANDIT} {} {files}\n", dir.display());
    let out = match std::fs::read(&cache) {
        Ok(kept) if kept.starts_with(key.as_bytes()) => kept[key.len()..].to_vec(),
        _ => {
            let out = run(Command::new(bin.join("bandit"))
                .args(["-r", "-q", "-f", "json"])
                .arg(dir))?;
            std::fs::write(&cache, [key.as_bytes(), &out].concat())?;
            out
        }
    };
    let json: serde_json::Value = serde_json::from_slice(&out)?;
    let mut found = Findings::new();
    for r in json["results"].as_array().into_iter().flatten() {
        let id = r["test_id"].as_str().unwrap_or("");
        let Some((cwe, _, _)) = CLASSES.iter().find(|(_, _, ids)| ids.contains(&id)) else {
            continue;
        };
        let file = r["filename"].as_str().unwrap_or("").to_owned();
        if file.contains("/site-packages/") {
            continue;
        }
        let line = r["line_number"].as_u64().unwrap_or(0) as u32;
        found.entry(cwe).or_default().insert((file, line));
    }
    Ok(found)
}

/// Complexity by (file, line of the `def`).
fn radon(bin: &Path, dir: &Path) -> Result<HashMap<(String, u32), u32>, BoxError> {
    let out = run(Command::new(bin.join("radon")).args(["cc", "-j"]).arg(dir))?;
    let json: serde_json::Value = serde_json::from_slice(&out)?;
    let mut found = HashMap::new();
    fn walk(file: &str, blocks: &serde_json::Value, found: &mut HashMap<(String, u32), u32>) {
        for b in blocks.as_array().into_iter().flatten() {
            if matches!(b["type"].as_str(), Some("function" | "method")) {
                let line = b["lineno"].as_u64().unwrap_or(0) as u32;
                let cc = b["complexity"].as_u64().unwrap_or(0) as u32;
                found.insert((file.to_owned(), line), cc);
            }
            walk(file, &b["methods"], found);
            walk(file, &b["closures"], found);
        }
    }
    for (file, blocks) in json.as_object().into_iter().flatten() {
        if file.contains("/site-packages/") {
            continue;
        }
        walk(file, blocks, &mut found);
    }
    Ok(found)
}

/// Lines of one finding may differ between the tools for a call written
/// over several lines (bandit names the line of `shell=True`): a finding of
/// ours matches one of theirs in the same file at most this many lines away.
const LINE_SLACK: u32 = 6;

/// Pairs findings one to one (same file, lines within [`LINE_SLACK`]):
/// the pairs (ours, theirs), and those of each side left over.
type Paired<'a> = (Vec<(&'a At, &'a At)>, Vec<&'a At>, Vec<&'a At>);

fn pair<'a>(ours: &'a BTreeSet<At>, theirs: &'a BTreeSet<At>) -> Paired<'a> {
    let mut left: BTreeSet<&At> = theirs.iter().collect();
    let mut only_ours = Vec::new();
    let mut both = Vec::new();
    for o in ours {
        let near = left
            .iter()
            .find(|t| t.0 == o.0 && t.1.abs_diff(o.1) <= LINE_SLACK)
            .copied();
        match near {
            Some(t) => {
                left.remove(t);
                both.push((o, t));
            }
            None => only_ours.push(o),
        }
    }
    (both, left.into_iter().collect(), only_ours)
}

/// The class every line is judged in, not only the disagreements: whether
/// a string is a secret is a judgement even when both tools report it.
const JUDGE_ALL: &str = "CWE-798";

/// The hand judgements, next to this file.
const JUDGED: &str = "quality-judged.tsv";

/// A judged line: class, file relative to the corpus, the line's text.
type Line = (String, String, String);

/// Reads [`JUDGED`]: tab-separated class, verdict (`yes` a true finding,
/// `no` a false one, `?` not judged), file, line text, why.
fn judgements() -> Result<HashMap<Line, bool>, BoxError> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("benches")
        .join(JUDGED);
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut out = HashMap::new();
    for (n, row) in text.lines().enumerate() {
        if row.starts_with('#') || row.trim().is_empty() {
            continue;
        }
        let cols: Vec<&str> = row.split('\t').collect();
        let [class, verdict, file, line, ..] = cols[..] else {
            return Err(format!("{JUDGED}:{}: want class, verdict, file, line, why", n + 1).into());
        };
        let verdict = match verdict {
            "yes" => true,
            "no" => false,
            "?" => continue,
            other => {
                return Err(
                    format!("{JUDGED}:{}: verdict {other:?} is not yes, no or ?", n + 1).into(),
                );
            }
        };
        out.insert((class.into(), file.into(), line.into()), verdict);
    }
    Ok(out)
}

/// The text of line `at` of a file, as [`JUDGED`] keys it (trimmed, tabs
/// as spaces), and the file relative to the corpus.
struct Source<'d> {
    dir: &'d Path,
    files: HashMap<String, Vec<String>>,
}

impl Source<'_> {
    fn key(&mut self, class: &str, (file, line): &At) -> Line {
        let rel = Path::new(file)
            .strip_prefix(self.dir)
            .map_or_else(|_| file.clone(), |p| p.display().to_string());
        let lines = self.files.entry(file.clone()).or_insert_with(|| {
            std::fs::read(file)
                .map(|b| {
                    String::from_utf8_lossy(&b)
                        .lines()
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default()
        });
        let text = lines
            .get((*line as usize).saturating_sub(1))
            .map(|l| l.trim().replace('\t', " "))
            .unwrap_or_default();
        (class.to_owned(), rel, text)
    }
}

/// True findings, judged findings and the unjudged, of one tool in one class.
#[derive(Default)]
struct Score {
    right: usize,
    judged: usize,
}

fn pct(n: usize, d: usize) -> String {
    if d == 0 {
        "—".into()
    } else {
        format!("{:.2}", n as f64 / d as f64)
    }
}

/// Bag-of-words F1 of `got` against `want`.
fn word_f1(got: &str, want: &str) -> f64 {
    let bag = |s: &str| {
        let mut m: HashMap<String, usize> = HashMap::new();
        for w in s.split_whitespace() {
            *m.entry(w.to_owned()).or_default() += 1;
        }
        m
    };
    let (g, w) = (bag(got), bag(want));
    let common: usize = g
        .iter()
        .map(|(k, n)| (*n).min(w.get(k).copied().unwrap_or(0)))
        .sum();
    let (ng, nw) = (g.values().sum::<usize>(), w.values().sum::<usize>());
    if common == 0 {
        return 0.0;
    }
    let (p, r) = (common as f64 / ng as f64, common as f64 / nw as f64);
    2.0 * p * r / (p + r)
}

fn pdftotext() -> bool {
    if Command::new("pdftotext").arg("-v").output().is_ok() {
        return true;
    }
    // Debian's poppler-utils, as CI installs packages.
    let _ = Command::new("apt-get")
        .args([
            "install",
            "-y",
            "-qq",
            "--no-install-recommends",
            "poppler-utils",
        ])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status();
    Command::new("pdftotext").arg("-v").output().is_ok()
}

fn main() -> Result<(), BoxError> {
    let Some(dir) = stdlib() else {
        println!("SKIP: no python3 on the PATH; this benchmark reads its standard library");
        return Ok(());
    };
    let bin = peers()?;
    let mut paths = Vec::new();
    python_files(&dir, &mut paths);
    paths.sort();
    println!("{} files under {}", paths.len(), dir.display());

    // Xencode over the same files.
    let mut ours = Findings::new();
    let mut not_utf8 = Vec::new();
    let mut complexity: HashMap<(String, u32), u32> = HashMap::new();
    for p in &paths {
        // The node stores a file that is not UTF-8 whole and does not
        // analyze it (a PEP 263 declaration of another encoding included).
        let Ok(src) = std::fs::read_to_string(p) else {
            not_utf8.push(p.strip_prefix(&dir).unwrap_or(p).display().to_string());
            continue;
        };
        let Ok((parsed, _)) = parse(&src, None, Limits::default()) else {
            continue;
        };
        let a = analyze(&parsed);
        let file = p.display().to_string();
        for i in &a.security_issues {
            if let Some((cwe, _, _)) = CLASSES
                .iter()
                .find(|(c, _, _)| *c == i.cwe_id)
                // A password hashed with md5 is CWE-916 here, a weak hash to bandit.
                .or_else(|| (i.cwe_id == "CWE-916").then_some(&CLASSES[3]))
            {
                ours.entry(cwe).or_default().insert((file.clone(), i.line));
            }
        }
        for o in a.outline.iter().filter(|o| o.kind != "class") {
            complexity.insert((file.clone(), o.line_start), o.complexity);
        }
    }
    let theirs = bandit(&bin, &dir, paths.len())?;
    let judged = judgements()?;
    let mut source = Source {
        dir: &dir,
        files: HashMap::new(),
    };
    let mut rows = String::new();
    let mut unjudged = String::new();
    let mut unjudged_lines = 0;
    for (cwe, what, ids) in CLASSES {
        let empty = BTreeSet::new();
        let (o, t) = (
            ours.get(cwe).unwrap_or(&empty),
            theirs.get(cwe).unwrap_or(&empty),
        );
        let (both, only_theirs, only_ours) = pair(o, t);
        // Each line: who found it, and whether it is a true finding.
        let mut lines: Vec<(&At, &str)> = Vec::new();
        lines.extend(both.iter().map(|(o, _)| (*o, "both")));
        lines.extend(only_ours.iter().map(|o| (*o, "xencode")));
        lines.extend(only_theirs.iter().map(|t| (*t, "bandit")));
        let (mut x, mut b, mut truth, mut open) = (Score::default(), Score::default(), 0, 0);
        for (at, who) in lines {
            let key = source.key(cwe, at);
            let verdict = if who == "both" && *cwe != JUDGE_ALL {
                Some(true)
            } else {
                judged.get(&key).copied()
            };
            let Some(right) = verdict else {
                open += 1;
                let (class, file, text) = key;
                let by = if who == "bandit" {
                    format!("bandit {}", ids.join("/"))
                } else {
                    who.to_owned()
                };
                unjudged.push_str(&format!(
                    "{class}\t?\t{file}\t{text}\tfound by {by} at line {}\n",
                    at.1
                ));
                continue;
            };
            truth += usize::from(right);
            for (score, found) in [(&mut x, who != "bandit"), (&mut b, who != "xencode")] {
                if found {
                    score.judged += 1;
                    score.right += usize::from(right);
                }
            }
        }
        unjudged_lines += open;
        rows.push_str(&format!(
            "| {cwe} {what} | {} | {} | {} | {truth} | {} | {} | {} | {} | {open} |\n",
            t.len(),
            o.len(),
            both.len(),
            pct(x.right, x.judged),
            pct(x.right, truth),
            pct(b.right, b.judged),
            pct(b.right, truth),
        ));
    }
    let listed = repo_root()?.join("target/quality-unjudged.tsv");
    std::fs::write(&listed, &unjudged)?;
    println!(
        "{unjudged_lines} lines not judged yet (add them to analysis/benches/{JUDGED}): {}",
        listed.display()
    );

    let radon = radon(&bin, &dir)?;
    let (mut compared, mut exact, mut within) = (0usize, 0usize, 0usize);
    for (key, theirs) in &radon {
        if let Some(ours) = complexity.get(key) {
            compared += 1;
            exact += usize::from(ours == theirs);
            within += usize::from(ours.abs_diff(*theirs) <= 1);
        }
    }

    // PDFs.
    let pdfs = repo_root()?.join("../shared/data/pdfs");
    let mut pdf_rows = String::new();
    if pdftotext() && pdfs.is_dir() {
        let mut names: Vec<PathBuf> = std::fs::read_dir(&pdfs)?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "pdf"))
            .collect();
        names.sort();
        for p in names {
            let bytes = std::fs::read(&p)?;
            let Ok(out) = extract(Kind::Pdf, &bytes, &mut |_, _| {}) else {
                continue;
            };
            let reference = run(Command::new("pdftotext").arg(&p).arg("-"))?;
            let reference = String::from_utf8_lossy(&reference);
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let truth = p.with_file_name(name.replace("-komprimiert.pdf", ".groundtruth.txt"));
            let vs_truth = std::fs::read_to_string(&truth).ok().map(|t| {
                format!(
                    "{:.3} (pdftotext {:.3})",
                    word_f1(&out.text, &t),
                    word_f1(&reference, &t)
                )
            });
            pdf_rows.push_str(&format!(
                "| {name} | {:.3} | {} |\n",
                word_f1(&out.text, &reference),
                vs_truth.unwrap_or_else(|| "—".into())
            ));
        }
    } else {
        pdf_rows.push_str("| (pdftotext or ../shared/data/pdfs missing: not measured) | | |\n");
    }

    let report = format!(
        "Measured {} with `cargo bench -p xencode-analysis --bench quality`. Corpus: the `.py` \
         files of the machine's Python standard library outside `site-packages` ({}; {} files), code nobody here wrote. \
         Peers installed by the bench: {BANDIT} and {RADON} from PyPI, pdftotext from Debian.\n\n\
         Security findings, xencode's and bandit's, paired by file and line (within {LINE_SLACK} lines, one to one; \
         bandit's test ids per class in `analysis/benches/quality.rs`; its import-only warnings are not counted). \
         Judged by hand (`analysis/benches/{JUDGED}`, with the reason for each verdict): every line only one tool \
         reports, and every hard-coded-secret line; a line both report in the other classes is a true finding by \
         the class's definition. The judgements were made on Python 3.11's library and are keyed by file and line \
         text, so another version's new lines show as not judged. Precision: the share of a tool's findings that are true; recall: the share of \
         all true findings (either tool's) it reports.\n\n\
         | class | bandit | xencode | both | true | xencode precision | xencode recall | bandit precision | bandit recall | not judged |\n\
         |---|---|---|---|---|---|---|---|---|---|\n{rows}\n\
         Files xencode does not analyze because they are not UTF-8 (it stores them whole): {}.\n\n\
         Cyclomatic complexity against radon's, per function and method (matched by file and \
         `def` line): {compared} compared, {} exact ({:.1} %), {} within one ({:.1} %).\n\n\
         PDF text, bag-of-words F1 against pdftotext's text of the same file (1.0 = the same \
         words, equally often), and against the ground truth where there is one:\n\n\
         | file | F1 vs pdftotext | F1 vs ground truth |\n|---|---|---|\n{pdf_rows}",
        today(),
        dir.display(),
        paths.len(),
        if not_utf8.is_empty() {
            "none".to_owned()
        } else {
            format!("{} ({})", not_utf8.len(), not_utf8.join(", "))
        },
        exact,
        100.0 * exact as f64 / compared.max(1) as f64,
        within,
        100.0 * within as f64 / compared.max(1) as f64,
    );
    print!("{report}");
    report::write_report("analysis-quality", &report)
}
