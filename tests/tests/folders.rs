//! Workspaces as real folders (`docs/folders.md`): real `xencode` nodes on
//! loopback, real directories edited the way editors and tools save.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use xencode_tests::{Node, Pair, invite_and_join, last_line, ok_stdout, wait_for};

const SYNC: Duration = Duration::from_secs(60);

/// Every regular file under `dir` (not `.xencode/`): bytes and mode.
fn tree(dir: &Path) -> BTreeMap<String, (Vec<u8>, u32)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            let Ok(meta) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            let rel = p
                .strip_prefix(dir)
                .expect("under dir")
                .to_string_lossy()
                .into_owned();
            if rel == ".xencode" || rel.contains(".xencode-tmp-") {
                continue;
            }
            if meta.is_dir() {
                stack.push(p);
            } else if meta.is_file() {
                let bytes = std::fs::read(&p).unwrap_or_default();
                out.insert(rel, (bytes, meta.permissions().mode() & 0o777));
            }
        }
    }
    out
}

/// The tree without the paths that must not sync.
fn shared_part(t: &BTreeMap<String, (Vec<u8>, u32)>) -> BTreeMap<String, (Vec<u8>, u32)> {
    t.iter()
        .filter(|(k, _)| !k.starts_with(".git/"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn write(dir: &Path, rel: &str, body: &str) {
    let p = dir.join(rel);
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent).expect("mkdir");
    }
    std::fs::write(p, body).expect("write");
}

fn sh(dir: &Path, script: &str) {
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .output()
        .expect("sh");
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn same_files(a: &Path, b: &Path) -> bool {
    let (a, b) = (a.to_path_buf(), b.to_path_buf());
    wait_for(SYNC, || {
        let (a, b) = (a.clone(), b.clone());
        async move { shared_part(&tree(&a)) == shared_part(&tree(&b)) }
    })
    .await
}

/// Waits until the file at `dir/rel` passes `check` (`None`: absent).
async fn until(dir: &Path, rel: &str, check: impl Fn(Option<String>) -> bool) -> bool {
    let p = dir.join(rel);
    let check = &check;
    wait_for(SYNC, || {
        let p = p.clone();
        async move {
            let present = std::fs::symlink_metadata(&p).is_ok();
            check(present.then(|| std::fs::read_to_string(&p).unwrap_or_default()))
        }
    })
    .await
}

async fn has(dir: &Path, rel: &str, body: &str) -> bool {
    until(dir, rel, |s| s.as_deref() == Some(body)).await
}

async fn gone(dir: &Path, rel: &str) -> bool {
    until(dir, rel, |s| s.is_none()).await
}

fn diff(a: &Path, b: &Path) -> String {
    let (ta, tb) = (shared_part(&tree(a)), shared_part(&tree(b)));
    let mut out = String::new();
    for k in ta.keys().chain(tb.keys()) {
        if ta.get(k) != tb.get(k) {
            out.push_str(&format!(
                "{k}: {:?} vs {:?}\n",
                ta.get(k)
                    .map(|(b, m)| (String::from_utf8_lossy(b).into_owned(), format!("{m:o}"))),
                tb.get(k)
                    .map(|(b, m)| (String::from_utf8_lossy(b).into_owned(), format!("{m:o}")))
            ));
        }
    }
    out
}

/// A shares folder `fa` (filled by `fill` first), B joins with `role` and
/// links the empty `fb`.
async fn pair(role: &str, fill: impl FnOnce(&Path)) -> Pair {
    let tmp = tempfile::tempdir().expect("tempdir");
    let a = Node::start(&tmp.path().join("a")).expect("a");
    let b = Node::start(&tmp.path().join("b")).expect("b");
    let fa = tmp.path().join("folder-a");
    let fb = tmp.path().join("folder-b");
    std::fs::create_dir_all(&fa).expect("mkdir");
    fill(&fa);
    let out = a.cli(&[
        "folder",
        "share",
        fa.to_str().expect("utf8"),
        "--name",
        "project",
    ]);
    let ws = last_line(&out);
    ok_stdout(&out);
    assert_eq!(ws.len(), 32, "{}", String::from_utf8_lossy(&out.stderr));
    invite_and_join(&a, &ws, &b, role);
    let out = b.cli(&["folder", "link", &ws, fb.to_str().expect("utf8")]);
    ok_stdout(&out);
    Pair {
        tmp,
        a,
        b,
        ws,
        fa,
        fb,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_folder_reaches_an_empty_one_with_its_bytes_and_modes_and_nothing_else() {
    let p = pair("developer", |dir| {
        write(dir, "README.md", "# project\n");
        write(dir, "src/main.py", "print('hello')\n");
        write(dir, "src/pkg/util.py", "def f():\n    return 1\n");
        write(dir, "run.sh", "#!/bin/sh\necho run\n");
        std::fs::set_permissions(dir.join("run.sh"), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        std::fs::write(dir.join("logo.bin"), [0u8, 159, 146, 150, 255, 0, 1]).expect("bin");
        write(dir, ".gitignore", "build/\n*.log\n");
        write(dir, "build/out.o", "object");
        write(dir, "debug.log", "secret log");
        write(dir, ".git/config", "[core]\n");
        write(dir, "notes/.xencodeignore", "private.txt\n");
        write(dir, "notes/private.txt", "mine only");
        write(dir, "notes/public.txt", "for the team");
        std::os::unix::fs::symlink("/etc/passwd", dir.join("passwd-link")).expect("symlink");
    })
    .await;
    let expected: Vec<&str> = vec![
        ".gitignore",
        "README.md",
        "logo.bin",
        "notes/.xencodeignore",
        "notes/public.txt",
        "run.sh",
        "src/main.py",
        "src/pkg/util.py",
    ];
    let fb = p.fb.clone();
    let arrived = wait_for(SYNC, || {
        let fb = fb.clone();
        let expected = expected.clone();
        async move { tree(&fb).keys().map(String::as_str).collect::<Vec<_>>() == expected }
    })
    .await;
    assert!(
        arrived,
        "B's folder: {:?}\n{}",
        tree(&p.fb).keys().collect::<Vec<_>>(),
        p.logs()
    );
    let (ta, tb) = (tree(&p.fa), tree(&p.fb));
    for path in &expected {
        assert_eq!(ta[*path], tb[*path], "{path}: bytes and mode");
    }
    assert_eq!(tb["run.sh"].1, 0o755, "the executable bit travels");
    // Nothing ignored left A: not in the workspace either.
    let files = p.a.files(&p.ws).await;
    assert_eq!(files, expected, "A's workspace");
    assert!(std::fs::symlink_metadata(p.fb.join("passwd-link")).is_err());
    // A file a teammate puts under `.git/` through the API (a hook would run
    // code) is never written into a folder, and B says so.
    assert_eq!(
        xencode_tests::put(
            &p.a,
            &p.ws,
            ".git/hooks/pre-commit",
            "#!/bin/sh\nrm -rf ~\n"
        )
        .await,
        reqwest::StatusCode::OK
    );
    let b = &p.b;
    let reported = wait_for(SYNC, || async move {
        String::from_utf8_lossy(&b.cli(&["folder", "list"]).stdout)
            .contains(".git/hooks/pre-commit: in the workspace, never written")
    })
    .await;
    assert!(reported, "{}", ok_stdout(&p.b.cli(&["folder", "list"])));
    assert!(!p.fb.join(".git").exists());
    assert!(!p.fa.join(".git/hooks").exists());
    // `folder list` tells the state.
    let list: serde_json::Value =
        serde_json::from_str(&ok_stdout(&p.b.cli(&["--json", "folder", "list"]))).expect("json");
    let f = &list["folders"][0];
    assert_eq!(f["state"], "watching");
    assert_eq!(f["files"], expected.len());
    assert_eq!(f["workspace_name"], "project");
    assert_eq!(f["receive_only"], false);
    assert_eq!(f["whole_files"], 1, "logo.bin is stored whole");
    drop(p.tmp);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saves_of_every_kind_reach_the_teammates_folder() {
    let p = pair("developer", |dir| {
        write(dir, "log.txt", "one\n");
        write(dir, "config.ini", "mode = debug\nlevel = 1\n");
        write(dir, "doc.md", "draft\n");
        write(dir, "old.txt", "to delete\n");
        write(dir, "lib/a.py", "A = 1\n");
        write(dir, "lib/sub/b.py", "B = 2\n");
    })
    .await;
    assert!(
        same_files(&p.fa, &p.fb).await,
        "{}\n{}",
        diff(&p.fa, &p.fb),
        p.logs()
    );
    // Appending in place.
    sh(&p.fa, "echo two >> log.txt");
    assert!(
        has(&p.fb, "log.txt", "one\ntwo\n").await,
        "append\n{}",
        p.logs()
    );
    // sed -i: a new file renamed over the old one.
    sh(&p.fa, "sed -i 's/debug/release/' config.ini");
    assert!(
        has(&p.fb, "config.ini", "mode = release\nlevel = 1\n").await,
        "sed -i\n{}",
        p.logs()
    );
    // Write a temporary file, then rename it over (editors, Python tools).
    sh(
        &p.fa,
        "python3 -c \"import os; open('doc.md.tmp','w').write('final\\n'); os.replace('doc.md.tmp','doc.md')\"",
    );
    assert!(
        has(&p.fb, "doc.md", "final\n").await,
        "rename-over\n{}",
        p.logs()
    );
    // Delete, and delete a tree.
    sh(&p.fa, "rm old.txt");
    assert!(gone(&p.fb, "old.txt").await, "delete\n{}", p.logs());
    sh(
        &p.fa,
        "mkdir -p tmp/deep && echo x > tmp/deep/x.txt && echo y > tmp/y.txt",
    );
    assert!(
        has(&p.fb, "tmp/deep/x.txt", "x\n").await,
        "new tree\n{}",
        p.logs()
    );
    sh(&p.fa, "rm -r tmp");
    assert!(gone(&p.fb, "tmp").await, "rm -r\n{}", p.logs());
    // Move a directory.
    sh(&p.fa, "mv lib library");
    assert!(
        has(&p.fb, "library/sub/b.py", "B = 2\n").await,
        "mv dir\n{}",
        p.logs()
    );
    assert!(
        gone(&p.fb, "lib").await,
        "the old directory goes\n{}",
        p.logs()
    );
    // And the other way: B's edits reach A.
    sh(&p.fb, "printf 'A = 10\\n' > library/a.py");
    assert!(
        has(&p.fa, "library/a.py", "A = 10\n").await,
        "B -> A\n{}",
        p.logs()
    );
    assert!(same_files(&p.fa, &p.fb).await, "{}", diff(&p.fa, &p.fb));
    drop(p.tmp);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_to_different_lines_of_one_file_at_once_merge_on_both_disks() {
    let base: String = (1..=20).map(|i| format!("line {i}\n")).collect();
    let p = pair("developer", |dir| write(dir, "shared.txt", &base)).await;
    assert!(has(&p.fb, "shared.txt", &base).await, "{}", p.logs());
    // Both save at the same moment, each a different line.
    let a_text = base.replace("line 3\n", "line 3 edited by A\n");
    let b_text = base.replace("line 17\n", "line 17 edited by B\n");
    std::fs::write(p.fa.join("shared.txt"), &a_text).expect("A writes");
    std::fs::write(p.fb.join("shared.txt"), &b_text).expect("B writes");
    let both = base
        .replace("line 3\n", "line 3 edited by A\n")
        .replace("line 17\n", "line 17 edited by B\n");
    assert!(
        has(&p.fa, "shared.txt", &both).await,
        "A:\n{}\n{}",
        std::fs::read_to_string(p.fa.join("shared.txt")).unwrap_or_default(),
        p.logs()
    );
    assert!(
        has(&p.fb, "shared.txt", &both).await,
        "B:\n{}\n{}",
        std::fs::read_to_string(p.fb.join("shared.txt")).unwrap_or_default(),
        p.logs()
    );
    drop(p.tmp);
}

fn git(dir: &Path, args: &[&str]) {
    let out = Command::new("git")
        .args(["-c", "user.name=t", "-c", "user.email=t@example.invalid"])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("git");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_git_checkout_of_hundreds_of_files_lands_exactly_in_the_teammates_folder() {
    let p = pair("developer", |dir| {
        git(dir, &["init", "-q", "-b", "main"]);
        for i in 0..300 {
            write(
                dir,
                &format!("pkg{}/mod{i}.py", i % 12),
                &format!("VALUE = {i}\n"),
            );
        }
        git(dir, &["add", "-A"]);
        git(dir, &["commit", "-q", "-m", "main"]);
        git(dir, &["checkout", "-q", "-b", "other"]);
        for i in 0..300 {
            let f = format!("pkg{}/mod{i}.py", i % 12);
            match i % 6 {
                0 => std::fs::remove_file(dir.join(&f)).expect("rm"),
                1..=3 => write(dir, &f, &format!("VALUE = {i}\nOTHER = True\n")),
                _ => {}
            }
        }
        for i in 0..50 {
            write(dir, &format!("added/new{i}.py"), &format!("NEW = {i}\n"));
        }
        git(dir, &["add", "-A"]);
        git(dir, &["commit", "-q", "-m", "other"]);
        git(dir, &["checkout", "-q", "main"]);
    })
    .await;
    assert!(
        same_files(&p.fa, &p.fb).await,
        "{}\n{}",
        diff(&p.fa, &p.fb),
        p.logs()
    );
    const COMMITS: &str = "xencode_store_commits_total{outcome=\"ok\"}";
    let before = p.a.metric(COMMITS).await;
    git(&p.fa, &["checkout", "-q", "other"]);
    let listed = Command::new("git")
        .args(["ls-files"])
        .current_dir(&p.fa)
        .output()
        .expect("ls-files");
    let expected: BTreeMap<String, Vec<u8>> = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .map(|f| (f.to_owned(), std::fs::read(p.fa.join(f)).expect("read")))
        .collect();
    assert_eq!(expected.len(), 300 - 50 + 50);
    let fb = p.fb.clone();
    let landed = wait_for(SYNC, || {
        let fb = fb.clone();
        let expected = expected.clone();
        async move {
            let t: BTreeMap<String, Vec<u8>> =
                tree(&fb).into_iter().map(|(k, (b, _))| (k, b)).collect();
            t == expected
        }
    })
    .await;
    assert!(landed, "{}\n{}", diff(&p.fa, &p.fb), p.logs());
    // Batched: far fewer index commits than files changed.
    let changed = 250.0;
    let commits = p.a.metric(COMMITS).await - before;
    assert!(commits > 0.0);
    assert!(
        commits < changed,
        "{commits} commits for a checkout of {changed} changed files"
    );
    drop(p.tmp);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_made_while_the_node_was_stopped_merge_with_a_teammates_edits_meanwhile() {
    let base: String = (1..=10).map(|i| format!("line {i}\n")).collect();
    let Pair {
        tmp, a, b, fa, fb, ..
    } = pair("developer", |dir| write(dir, "notes.txt", &base)).await;
    assert!(has(&fb, "notes.txt", &base).await, "{}", b.log_text());
    let a_dir = a.dir.clone();
    let a_port = a.p2p_port;
    a.stop();
    // Offline on A; and B edits the same file meanwhile.
    std::fs::write(
        fa.join("notes.txt"),
        base.replace("line 2\n", "line 2 (A offline)\n"),
    )
    .expect("A edits offline");
    write(&fa, "offline-new.txt", "made while stopped\n");
    std::fs::write(
        fb.join("notes.txt"),
        base.replace("line 8\n", "line 8 (B)\n"),
    )
    .expect("B edits");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let a = Node::start_with(&a_dir, a_port, &[b.addr()]).expect("A restarts");
    let both = base
        .replace("line 2\n", "line 2 (A offline)\n")
        .replace("line 8\n", "line 8 (B)\n");
    let logs = || format!("--- A ---\n{}\n--- B ---\n{}", a.log_text(), b.log_text());
    assert!(
        has(&fa, "notes.txt", &both).await,
        "A: {:?}\n{}",
        std::fs::read_to_string(fa.join("notes.txt")),
        logs()
    );
    assert!(
        has(&fb, "notes.txt", &both).await,
        "B: {:?}\n{}",
        std::fs::read_to_string(fb.join("notes.txt")),
        logs()
    );
    assert!(
        has(&fb, "offline-new.txt", "made while stopped\n").await,
        "{}",
        logs()
    );
    drop(tmp);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewers_folder_is_receive_only_and_revert_restores_it() {
    let p = pair("viewer", |dir| {
        write(dir, "spec.md", "v1\n");
        write(dir, "other.md", "x\n");
    })
    .await;
    assert!(has(&p.fb, "spec.md", "v1\n").await, "{}", p.logs());
    // The viewer edits: nothing is sent, the edit is listed.
    write(&p.fb, "spec.md", "viewer's edit\n");
    write(&p.fb, "mine.txt", "viewer's file\n");
    let b = &p.b;
    let listed = wait_for(SYNC, || async move {
        let out = b.cli(&["--json", "folder", "list"]);
        let list: serde_json::Value =
            serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
        let f = &list["folders"][0];
        f["receive_only"] == true && f["local_changes"].as_array().is_some_and(|l| l.len() == 2)
    })
    .await;
    assert!(listed, "{}", ok_stdout(&p.b.cli(&["folder", "list"])));
    // A teammate's edit of another file still arrives; the viewer's edited
    // file is not overwritten.
    write(&p.fa, "other.md", "y\n");
    assert!(has(&p.fb, "other.md", "y\n").await, "{}", p.logs());
    assert_eq!(
        std::fs::read_to_string(p.fb.join("spec.md")).expect("read"),
        "viewer's edit\n"
    );
    assert_eq!(
        p.a.file(&p.ws, "spec.md").await.as_deref(),
        Some(&b"v1\n"[..])
    );
    assert_eq!(p.a.file(&p.ws, "mine.txt").await, None);
    // Revert puts the workspace's version back.
    let out =
        p.b.cli(&["--json", "folder", "revert", p.fb.to_str().expect("utf8")]);
    let outcome: serde_json::Value = serde_json::from_str(&ok_stdout(&out)).expect("json");
    assert_eq!(outcome["changed"], 1, "{outcome}");
    assert_eq!(outcome["kept"], serde_json::json!(["mine.txt"]));
    assert_eq!(
        std::fs::read_to_string(p.fb.join("spec.md")).expect("read"),
        "v1\n"
    );
    // On a developer's folder there is nothing to revert.
    let out = p.a.cli(&["folder", "revert", p.fa.to_str().expect("utf8")]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not receive-only"));
    drop(p.tmp);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linking_a_folder_that_has_files_keeps_both_sides() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let a = Node::start(&tmp.path().join("a")).expect("a");
    let ws = last_line(&a.cli(&["workspace", "create", "both"]));
    assert_eq!(
        xencode_tests::put(&a, &ws, "shared.txt", "one\ntwo\nthree\n").await,
        reqwest::StatusCode::OK
    );
    assert_eq!(
        xencode_tests::put(&a, &ws, "only-in-workspace.txt", "ws\n").await,
        reqwest::StatusCode::OK
    );
    let dir = tmp.path().join("existing");
    write(&dir, "shared.txt", "one\ntwo (local)\nthree\n");
    write(&dir, "only-on-disk.txt", "disk\n");
    let out = a.cli(&["folder", "link", "both", dir.to_str().expect("utf8")]);
    ok_stdout(&out);
    assert!(
        has(&dir, "only-in-workspace.txt", "ws\n").await,
        "{}",
        a.log_text()
    );
    let files = a.files(&ws).await;
    assert_eq!(
        files,
        ["only-in-workspace.txt", "only-on-disk.txt", "shared.txt"]
    );
    // The local version became an edit on top of the workspace's.
    assert_eq!(
        a.file(&ws, "shared.txt").await.as_deref(),
        Some(&b"one\ntwo (local)\nthree\n"[..])
    );
    // A file put through the API lands on disk too, and `file rm` removes it.
    assert_eq!(
        xencode_tests::put(&a, &ws, "from-api.txt", "api\n").await,
        reqwest::StatusCode::OK
    );
    assert!(has(&dir, "from-api.txt", "api\n").await, "{}", a.log_text());
    ok_stdout(&a.cli(&["file", "rm", &ws, "from-api.txt"]));
    assert!(gone(&dir, "from-api.txt").await, "{}", a.log_text());
    // Unlinked, the files stay and no longer follow the workspace.
    ok_stdout(&a.cli(&["folder", "unlink", dir.to_str().expect("utf8")]));
    assert_eq!(
        xencode_tests::put(&a, &ws, "after-unlink.txt", "no\n").await,
        reqwest::StatusCode::OK
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!dir.join("after-unlink.txt").exists());
    assert!(dir.join("shared.txt").exists());
    let list: serde_json::Value =
        serde_json::from_str(&ok_stdout(&a.cli(&["--json", "folder", "list"]))).expect("json");
    assert_eq!(list["folders"], serde_json::json!([]));
    drop(tmp);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_line_save_in_a_large_file_sends_the_line_not_the_file() {
    let line = |i: usize| format!("{i:08} the quick brown fox jumps over the lazy dog, line {i}\n");
    // 200 KB (the benchmark does 1 MB, in a release build).
    let big: String = (0..3_000).map(line).collect();
    let p = pair("developer", |dir| write(dir, "big.txt", &big)).await;
    assert!(has(&p.fb, "big.txt", &big).await, "{}", p.logs());
    tokio::time::sleep(Duration::from_millis(500)).await;
    const OUT: &str = "xencode_sync_bytes_total{direction=\"out\"}";
    let before = p.a.metric(OUT).await;
    sh(
        &p.fa,
        "sed -i 's/00001500 the quick/00001500 the QUICK/' big.txt",
    );
    let changed = big.replacen("00001500 the quick", "00001500 the QUICK", 1);
    assert_ne!(changed, big);
    assert!(has(&p.fb, "big.txt", &changed).await, "{}", p.logs());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sent = p.a.metric(OUT).await - before;
    assert!(
        sent > 0.0 && sent < 4096.0,
        "{sent} bytes sent for one changed word of a {} byte file\n{}\n{}",
        big.len(),
        p.a.get_text("/metrics")
            .await
            .lines()
            .filter(|l| l.contains("sync_"))
            .collect::<Vec<_>>()
            .join("\n"),
        p.logs()
    );
    drop(p.tmp);
}
