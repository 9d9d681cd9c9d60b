//! Editors join live through `xencode lsp` (`docs/editors.md`): two real
//! nodes on loopback, each with its linked folder, and a real Neovim
//! (headless, its built-in LSP client) on each.
//!
//! Needs `nvim`; without it the tests skip (fail under
//! `XENCODE_REQUIRE_ALL_TESTS=1`).

use std::path::Path;
use std::time::Duration;

use xencode_tests::neovim::{self, Neovim};
use xencode_tests::{Node, Pair, ok_stdout, skip_or_fail, wait_for};

const SYNC: Duration = Duration::from_secs(60);

/// Two nodes sharing `files` through linked folders, if Neovim is here.
async fn pair(files: &[(&str, &str)]) -> Option<Pair> {
    if let Some(reason) = neovim::unavailable() {
        skip_or_fail("editor tests", &reason);
        return None;
    }
    Some(Pair::sharing(files).await)
}

/// Waits until `f` holds (polling).
async fn until(f: impl Fn() -> bool) -> bool {
    let f = &f;
    wait_for(SYNC, || async move { f() }).await
}

fn open(p: &Pair, who: &str, folder: &Path, node: &Node, rel: &str) -> Neovim {
    Neovim::open(
        &p.tmp.path().join(format!("nvim-{who}")),
        &node.dir,
        &folder.join(rel),
    )
    .unwrap_or_else(|e| panic!("{who}'s Neovim: {e:#}\n{}", p.logs()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_neovims_co_edit_through_their_nodes_and_nothing_is_lost_or_doubled() {
    let Some(p) = pair(&[("src/app.py", "def main():\n    return 1\n")]).await else {
        return;
    };
    let va = open(&p, "a", &p.fa, &p.a, "src/app.py");
    let vb = open(&p, "b", &p.fb, &p.b, "src/app.py");
    // Typed in one appears in the other.
    va.insert(0, "# from A|").expect("type in A");
    assert!(
        until(|| vb.text() == "# from A\ndef main():\n    return 1\n").await,
        "B's buffer: {:?}\n{}",
        vb.text(),
        p.logs()
    );
    // Both type at the same spot at once: both end identical, with both.
    std::thread::scope(|s| {
        s.spawn(|| va.insert(0, "AAA").expect("A"));
        s.spawn(|| vb.insert(0, "BBB").expect("B"));
    });
    assert!(
        until(|| {
            let (ta, tb) = (va.text(), vb.text());
            ta == tb && ta.contains("AAA") && ta.contains("BBB")
        })
        .await,
        "A {:?} B {:?}",
        va.text(),
        vb.text()
    );
    // A third tool writes the file on disk in A's folder: both buffers get it.
    let disk = p.fa.join("src/app.py");
    let now = std::fs::read_to_string(&disk).unwrap_or_default();
    let edited = va.text().replace("return 1", "return 2");
    assert_ne!(now, edited);
    std::fs::write(&disk, &edited).expect("third tool");
    // What the buffers already had is not taken in twice.
    assert!(
        until(|| va.text() == edited && vb.text() == edited).await,
        "A {:?} B {:?}\n{}",
        va.text(),
        vb.text(),
        p.logs()
    );
    // 1,000 edits from both sides at once at random places: A types runs
    // of `x`, B of `y` (and now and then a new line). At the end both
    // buffers are equal, and hold exactly what was typed: every `x` and `y`
    // once, the text from before in its order, nothing lost or doubled.
    let before = va.text();
    let edits = 500;
    let typed = |name: &str, i: usize| {
        let c = if name == "a" { "x" } else { "y" };
        let run = c.repeat(1 + i % 3);
        if i % 50 == 49 { format!("{run}|") } else { run }
    };
    std::thread::scope(|s| {
        for (name, v) in [("a", &va), ("b", &vb)] {
            s.spawn(move || {
                let mut seed: u64 = if name == "a" { 7 } else { 11 };
                for i in 0..edits {
                    seed = seed
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let len = v.text().chars().count();
                    let pos = usize::try_from(seed >> 33).unwrap_or(0) % (len + 1);
                    v.insert(pos, &typed(name, i)).expect("edit");
                }
            });
        }
    });
    // Settled: both buffers and both nodes hold the same text.
    let settled = wait_for(SYNC, || async {
        let (Some(ta), Some(tb)) = (va.try_text(), vb.try_text()) else {
            return false;
        };
        let na = p.a.file(&p.ws, "src/app.py").await;
        let nb = p.b.file(&p.ws, "src/app.py").await;
        ta == tb && na.as_deref() == Some(ta.as_bytes()) && nb.as_deref() == Some(ta.as_bytes())
    })
    .await;
    let (ta, tb) = (va.text(), vb.text());
    let na = p.a.file(&p.ws, "src/app.py").await;
    let na = na.map(|b| String::from_utf8_lossy(&b).into_owned());
    assert!(
        settled,
        "buffers and nodes differ:\nA {ta:?}\nB {tb:?}\nnode A {na:?}"
    );
    let count = |t: &str, c: char| t.chars().filter(|x| *x == c).count();
    let xs: usize = (0..edits).map(|i| 1 + i % 3).sum();
    let logs = || {
        format!(
            "--- A's Neovim ---\n{}\n--- B's Neovim ---\n{}\n{}",
            va.lsp_log(),
            vb.lsp_log(),
            p.logs()
        )
    };
    assert_eq!(
        count(&ta, 'x'),
        xs,
        "A's typing lost or doubled: {ta:?}\n{}",
        logs()
    );
    assert_eq!(
        count(&ta, 'y'),
        xs,
        "B's typing lost or doubled: {ta:?}\n{}",
        logs()
    );
    assert_eq!(count(&ta, '\n'), count(&before, '\n') + 2 * edits / 50);
    let rest = |t: &str| {
        t.chars()
            .filter(|c| !matches!(c, 'x' | 'y' | '\n'))
            .collect::<String>()
    };
    assert_eq!(rest(&ta), rest(&before), "the text from before changed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_teams_findings_show_as_diagnostics_and_follow_a_teammates_analysis() {
    let body = "x = eval(input())\ndef broken(:\n    pass\n";
    let Some(p) = pair(&[("bad.py", body)]).await else {
        return;
    };
    let vb = open(&p, "b", &p.fb, &p.b, "bad.py");
    // The teammate (A) analyses the file: B's editor shows the findings.
    ok_stdout(&p.a.cli(&["analyze", &p.ws, "bad.py"]));
    let shown = until(|| {
        let d = vb.diagnostics();
        d.lines()
            .any(|l| l.starts_with("0:") && l.contains("CWE-95"))
            && d.lines()
                .any(|l| l.starts_with("1:") && l.contains("syntax error"))
    })
    .await;
    assert!(shown, "diagnostics: {:?}\n{}", vb.diagnostics(), p.logs());
    // A fixes the syntax error and analyses again: B's diagnostics follow.
    std::fs::write(
        p.fa.join("bad.py"),
        "x = eval(input())\ndef fixed():\n    pass\n",
    )
    .expect("fix");
    assert!(
        until(|| vb.text().contains("fixed")).await,
        "{:?}",
        vb.text()
    );
    let fresh = wait_for(SYNC, || async {
        ok_stdout(&p.a.cli(&["analyze", &p.ws, "bad.py"]));
        let d = vb.diagnostics();
        d.contains("CWE-95") && !d.contains("syntax error") && !d.contains("stale")
    })
    .await;
    assert!(fresh, "diagnostics: {:?}\n{}", vb.diagnostics(), p.logs());
    // A suggested fix is a code action: B applies it in its editor, and
    // the fixed text reaches A.
    let bare = "try:\n    go()\nexcept:\n    pass\n";
    std::fs::write(p.fa.join("bad.py"), bare).expect("write");
    assert!(until(|| vb.text() == bare).await, "{:?}", vb.text());
    let offered = wait_for(SYNC, || async {
        ok_stdout(&p.a.cli(&["analyze", &p.ws, "bad.py"]));
        vb.diagnostics().contains("bare_except") && !vb.diagnostics().contains("stale")
    })
    .await;
    assert!(offered, "diagnostics: {:?}", vb.diagnostics());
    vb.fix(2).expect("code action");
    let fixed = "try:\n    go()\nexcept Exception:\n    pass\n";
    assert!(
        until(|| vb.fixed().contains("except Exception:")).await,
        "no code action applied: {:?}",
        vb.text()
    );
    let reached = wait_for(SYNC, || async {
        p.a.file(&p.ws, "bad.py")
            .await
            .is_some_and(|t| t == fixed.as_bytes())
    })
    .await;
    assert!(reached, "B's buffer {:?}", vb.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_killed_under_neovim_loses_nothing() {
    let Some(p) = pair(&[("notes.md", "one\n")]).await else {
        return;
    };
    let mut va = open(&p, "a", &p.fa, &p.a, "notes.md");
    let ws = p.ws.clone();
    let (dir, port) = (p.a.dir.clone(), p.a.p2p_port);
    let Pair {
        tmp: _tmp, a, b, ..
    } = p;
    a.kill9();
    va.insert(0, "typed while the node was down|")
        .expect("type");
    assert!(
        until(|| va.messages().contains("node")).await,
        "no word of the node going: {:?}",
        va.messages()
    );
    assert!(va.alive(), "Neovim must keep running");
    let a = Node::start_with(&dir, port, &[b.addr()]).expect("restart");
    let want = "typed while the node was down\none\n";
    let resumed = wait_for(SYNC, || async {
        a.file(&ws, "notes.md")
            .await
            .is_some_and(|t| t == want.as_bytes())
    })
    .await;
    assert!(
        resumed,
        "A's node: {:?}; buffer {:?}\n{}",
        a.file(&ws, "notes.md")
            .await
            .map(|b| String::from_utf8_lossy(&b).into_owned()),
        va.text(),
        a.log_text()
    );
    let reached_b = wait_for(SYNC, || async {
        b.file(&ws, "notes.md")
            .await
            .is_some_and(|t| t == want.as_bytes())
    })
    .await;
    assert!(
        reached_b,
        "B never got the edit made while A's node was down"
    );
    assert_eq!(va.text(), want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn teammates_see_who_has_the_file_open_and_where_their_cursor_is() {
    let Some(p) = pair(&[("src/app.py", "def main():\n    return 1\n")]).await else {
        return;
    };
    let va = open(&p, "a", &p.fa, &p.a, "src/app.py");
    let vb = open(&p, "b", &p.fb, &p.b, "src/app.py");
    let a_id = p.a.get_json("/api/v1/node").await["peer_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let a_short = &a_id[a_id.len().saturating_sub(8)..];
    // A types at the start of the second line: B's editor names A (with
    // its role) and draws A's cursor where A typed, after the new text.
    va.insert(12, "# A ").expect("type in A");
    let drawn = until(|| {
        vb.presence()
            .lines()
            .any(|l| l == format!("1:4: {a_short} (admin)"))
    })
    .await;
    assert!(
        drawn,
        "B's presence marks: {:?}, buffer {:?}\n{}",
        vb.presence(),
        vb.text(),
        p.logs()
    );
    assert!(
        vb.messages()
            .contains(&format!("{a_short} (admin) opened src/app.py")),
        "{:?}",
        vb.messages()
    );
    // The API says the same, cursor counted in characters of B's text.
    let presence =
        p.b.get_json(&format!("/api/v1/workspaces/{}/presence", p.ws))
            .await;
    let them = &presence["teammates"];
    assert_eq!(them.as_array().map(Vec::len), Some(1), "{presence}");
    assert_eq!(them[0]["peer_id"], a_id.as_str());
    assert_eq!(them[0]["path"], "src/app.py");
    assert_eq!(them[0]["cursor"], 12 + 4);
    // B typing before A's cursor moves it along (an Automerge cursor).
    vb.insert(0, "#|").expect("type in B");
    assert!(
        until(|| vb.presence().lines().any(|l| l.starts_with("2:4:"))).await,
        "A's cursor did not follow the text: {:?}",
        vb.presence()
    );
    // A closes the file: B hears it.
    va.close_buffer().expect("close in A");
    assert!(
        until(|| vb.presence().is_empty()
            && vb
                .messages()
                .contains(&format!("{a_short} (admin) closed src/app.py")))
        .await,
        "{:?} {:?}",
        vb.presence(),
        vb.messages()
    );
}
