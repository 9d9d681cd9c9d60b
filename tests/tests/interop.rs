//! Automerge interop through real nodes and the `automerge` npm package:
//! a document made by another Automerge application is imported with its
//! history, syncs to a teammate like any file, and exports back to a
//! document the npm package reads, edits and hands back.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use xencode_tests::{Pair, error_code, json_of as json, ok_stdout, skip_or_fail, wait_for};

/// `tests/js`, with the npm package installed (`npm ci --prefix tests/js`,
/// which `.ci/run` does); `None` after saying why not.
fn js_dir() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("js");
    let node = Command::new("node").arg("--version").output();
    if !node.is_ok_and(|o| o.status.success()) {
        skip_or_fail(
            "interop",
            "Node.js is not installed (apt install nodejs npm)",
        );
        return None;
    }
    if !dir
        .join("node_modules/@automerge/automerge/package.json")
        .exists()
    {
        skip_or_fail(
            "interop",
            "the automerge npm package is not installed: run `npm ci --prefix tests/js`",
        );
        return None;
    }
    Some(dir)
}

/// Runs `automerge-docs.js` with `args`; its JSON answer.
fn js(dir: &Path, args: &[&str]) -> serde_json::Value {
    let out = Command::new("node")
        .arg(dir.join("automerge-docs.js"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run node");
    assert!(
        out.status.success(),
        "automerge-docs.js {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON from automerge-docs.js")
}

fn texts(v: &serde_json::Value) -> Vec<String> {
    v["texts"]
        .as_array()
        .expect("texts")
        .iter()
        .map(|t| t.as_str().expect("text").to_owned())
        .collect()
}

/// Whether `all` holds `part` in order (other versions may come between).
fn in_order(part: &[String], all: &[String]) -> bool {
    let mut rest = all.iter();
    part.iter().all(|p| rest.any(|a| a == p))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_document_from_the_automerge_npm_package_round_trips_with_its_history() {
    let Some(dir) = js_dir() else { return };
    let pair = Pair::sharing(&[("README.md", "shared\n")]).await;
    let (a, b, ws) = (&pair.a, &pair.b, pair.ws.as_str());
    let tmp = pair.tmp.path();
    let file = |name: &str| tmp.join(name).to_str().expect("utf8").to_owned();

    // A document made by two authors in the npm package.
    let made = js(&dir, &["make", &file("notes.automerge")]);
    let final_text = made["text"].as_str().expect("text").to_owned();
    let original = texts(&made);
    assert!(original.len() >= 5, "{original:?}");

    let out = a.cli(&[
        "file",
        "import",
        ws,
        "docs/notes.md",
        &file("notes.automerge"),
        "--json",
    ]);
    let imported = json(&out);
    assert!(out.status.success(), "{imported}");
    assert_eq!(
        imported["versions"], 5,
        "one per change to the text: {imported}"
    );
    assert_eq!(imported["foreign_actors"], 2);
    assert_eq!(imported["file"]["kind"], "text");
    assert_eq!(
        a.file(ws, "docs/notes.md").await.as_deref(),
        Some(final_text.as_bytes())
    );

    // The importer's changes sync like any: B's node accepts them, and its
    // linked folder gets the file.
    let on_b = pair.fb.join("docs/notes.md");
    let arrived = wait_for(Duration::from_secs(60), || async {
        std::fs::read_to_string(&on_b).is_ok_and(|s| s == final_text)
    })
    .await;
    assert!(
        arrived,
        "the imported file never reached B's folder\n{}",
        pair.logs()
    );

    // B edits it; A exports; the npm package reads the whole history.
    let edited = format!("{final_text}- B's item\n");
    ok_stdout(&xencode_tests::cli_with_stdin(
        &b.dir,
        &["file", "put", ws, "docs/notes.md"],
        edited.as_bytes(),
    ));
    let synced = wait_for(Duration::from_secs(60), || async {
        a.file(ws, "docs/notes.md").await.as_deref() == Some(edited.as_bytes())
    })
    .await;
    assert!(synced, "B's edit never reached A\n{}", pair.logs());
    ok_stdout(&a.cli(&[
        "file",
        "export",
        ws,
        "docs/notes.md",
        &file("export.automerge"),
    ]));
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(file("export.automerge"))
            .expect("exported")
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "the export holds content: private");
    let history = js(&dir, &["history", &file("export.automerge")]);
    assert_eq!(history["text"], edited.as_str());
    let exported = texts(&history);
    assert!(
        in_order(&original[1..], &exported),
        "every original version, in order:\n{original:?}\n{exported:?}"
    );
    assert_eq!(exported.last(), Some(&edited));
    let messages = history["messages"].to_string();
    assert!(
        messages.contains("imported from a11ce0000000000000000000000000a1 #2: step 0")
            && messages.contains("imported from b0b0000000000000000000000000b0b0"),
        "the original authors are named: {messages}"
    );

    // The npm package edits the export; it comes back as a new file.
    let js_edit = js(
        &dir,
        &["edit", &file("export.automerge"), &file("back.automerge")],
    );
    let out = a.cli(&[
        "file",
        "import",
        ws,
        "docs/notes-v2.md",
        &file("back.automerge"),
    ]);
    ok_stdout(&out);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("imported docs/notes-v2.md"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        a.file(ws, "docs/notes-v2.md").await.as_deref(),
        Some(js_edit["text"].as_str().expect("text").as_bytes())
    );

    // Refusals say what to do, and leave the workspace as it was.
    let import = |path: &str, from: &str, extra: &[&str]| {
        let from = file(from);
        let mut args = vec!["file", "import", ws, path, from.as_str(), "--json"];
        args.extend_from_slice(extra);
        a.cli(&args)
    };
    let again = import("docs/notes.md", "notes.automerge", &[]);
    assert_eq!(error_code(&again), "file_exists");
    let wrong = import("other.md", "notes.automerge", &["--field", "body"]);
    assert_eq!(error_code(&wrong), "no_text");
    let message = json(&wrong)["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(message.contains("text (text), title (text)"), "{message}");
    std::fs::write(file("junk.automerge"), b"not an automerge document").expect("write");
    assert_eq!(
        error_code(&import("junk.md", "junk.automerge", &[])),
        "not_automerge"
    );
    let title = import("title.txt", "notes.automerge", &["--field", "title"]);
    assert_eq!(json(&title)["versions"], 1, "{}", json(&title));
    assert_eq!(
        a.file(ws, "title.txt").await.as_deref(),
        Some(&b"Meeting notes"[..])
    );
    let list = ok_stdout(&a.cli(&["file", "list", ws]));
    assert!(
        !list.contains("other.md") && !list.contains("junk.md"),
        "{list}"
    );
}
