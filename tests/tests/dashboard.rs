//! The dashboard end to end in real headless Chromium (driven over WebDriver):
//! two nodes, two browsers; create, invite, join, live editing both ways with
//! the cursor kept, and a PDF uploaded and read. Screenshots of every step go
//! to `<target>/tmp/dashboard-shots/`.
//!
//! Needs `/usr/bin/chromium` and `/usr/bin/chromedriver`; without them the
//! test prints why and skips, except under `XENCODE_REQUIRE_ALL_TESTS=1` (as
//! in CI, which installs them), where a skip is a failure.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;
use xencode_tests::browser::{self, Browser, Driver};
use xencode_tests::ollama_double::{OllamaDouble, REVIEW};
use xencode_tests::{Node, last_line, ok_stdout, skip_or_fail};

const UI: Duration = Duration::from_secs(30);

/// A script listing form controls and buttons that have no accessible name
/// (no label, no aria-label, no text).
const UNNAMED_CONTROLS: &str = r#"
const out = [];
for (const el of document.querySelectorAll('input, select, textarea, button')) {
  if (el.hidden || el.type === 'hidden') continue;
  const named = (el.labels && el.labels.length) || el.getAttribute('aria-label')
    || (el.tagName === 'BUTTON' && el.textContent.trim());
  if (!named) out.push(el.outerHTML.slice(0, 80));
}
return out;
"#;
const SYNC: Duration = Duration::from_secs(60);

fn shots_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard-shots")
}

/// Logs a browser into a node with `xencode dashboard --no-open`.
async fn login(b: &Browser, node: &Node) -> anyhow::Result<()> {
    let out = node.cli(&["dashboard", "--no-open"]);
    let url = last_line(&out);
    ok_stdout(&out);
    let expected = format!("{}/login?code=", node.api_url);
    assert!(
        url.starts_with("http://127.0.0.1:") && url.starts_with(&expected),
        "login URL {url:?}"
    );
    b.goto(&url).await?;
    b.wait_text("#node-id", UI, |t| t == node.peer_id).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_browsers_edit_one_file_live() -> anyhow::Result<()> {
    if let Some(reason) = browser::unavailable() {
        skip_or_fail("dashboard browser test", &reason);
        return Ok(());
    }
    let tmp = tempfile::tempdir()?;
    let a = Node::start(&tmp.path().join("a"))?;
    let b = Node::start(&tmp.path().join("b"))?;
    // On failure, the nodes' logs say what the pages cannot (which frames
    // were refused, whether sessions were open).
    let result = async {
        let shots = shots_dir();
        let driver = Driver::start(&tmp.path().join("chromedriver.log")).await?;
        let pa = Browser::open(&driver, &shots, "a").await?;
        let pb = Browser::open(&driver, &shots, "b").await?;

        // Both log in with one-time URLs; the overview shows each node's id.
        login(&pa, &a).await?;
        login(&pb, &b).await?;
        pa.screenshot("1-overview").await?;

        // A creates a workspace from the dashboard.
        pa.goto(&format!("{}/#/workspaces", a.api_url)).await?;
        let name = pa.wait("#create-ws-name", UI).await?;
        pa.type_text(&name, "Team Alpha").await?;
        pa.click(&pa.wait("#create-ws-btn", UI).await?).await?;
        pa.wait_text("#ws-title", UI, |t| t == "Team Alpha").await?;
        let url = pa.current_url().await?;
        let ws = url
            .rsplit_once("#/ws/")
            .map(|(_, id)| id.to_owned())
            .unwrap_or_default();
        assert_eq!(ws.len(), 32, "workspace id in {url}");

        // A invites B as a developer and gets a token to copy.
        let peer = pa.wait("#invite-peer", UI).await?;
        pa.type_text(&peer, &b.peer_id).await?;
        pa.click(&pa.wait("#invite-btn", UI).await?).await?;
        let token = pa
            .wait_value("#invite-token", UI, |v| v.len() > 100)
            .await?;
        pa.screenshot("2-invited").await?;

        // B joins in its own dashboard by pasting the token.
        pb.goto(&format!("{}/#/workspaces", b.api_url)).await?;
        let field = pb.wait("#join-token", UI).await?;
        pb.type_text(&field, &token).await?;
        pb.click(&pb.wait("#join-btn", UI).await?).await?;
        pb.wait_text("#ws-title", SYNC, |t| t == "Team Alpha")
            .await?;
        pb.wait_text("#members", SYNC, |t| t.contains("developer"))
            .await?;
        pb.screenshot("3-joined").await?;

        // A creates a file; B sees it appear (live, over SSE) and opens it.
        let path = pa.wait("#new-file-path", UI).await?;
        pa.type_text(&path, "notes.md").await?;
        pa.click(&pa.wait("#new-file-form button", UI).await?)
            .await?;
        let editor_a = pa.wait("#editor", UI).await?;
        pb.wait_text("#files", SYNC, |t| t.contains("notes.md"))
            .await?;
        pb.goto(&format!("{}/#/ws/{ws}/file/notes.md", b.api_url))
            .await?;
        let editor_b = pb.wait("#editor", UI).await?;

        // Typing in A's page shows up in B's.
        pa.type_text(&editor_a, "Hello from A").await?;
        pb.wait_value("#editor", SYNC, |v| v == "Hello from A")
            .await?;
        pb.screenshot("4-received").await?;

        // B types at the start while A types at the end: both pages converge,
        // and B's cursor stays after what B typed although A's edit arrived.
        pb.exec(
            "const e = document.getElementById('editor'); e.focus(); e.setSelectionRange(0, 0); return true;",
            json!([]),
        )
        .await?;
        pb.type_text(&editor_b, "[B] ").await?;
        pa.type_text(&editor_a, ", and more").await?;
        let want = "[B] Hello from A, and more";
        for (page, name) in [(&pa, "A"), (&pb, "B")] {
            if let Err(e) = page.wait_value("#editor", SYNC, |v| v == want).await {
                // Whether the nodes or the page fell behind.
                let held = |f: Option<Vec<u8>>| f.map(|b| String::from_utf8_lossy(&b).into_owned());
                let (in_a, in_b) = (
                    held(a.file(&ws, "notes.md").await),
                    held(b.file(&ws, "notes.md").await),
                );
                anyhow::bail!("{name}'s page: {e}\nA's node holds {in_a:?}, B's node {in_b:?}");
            }
        }
        let cursor = pb
            .exec(
                "return document.getElementById('editor').selectionStart;",
                json!([]),
            )
            .await?;
        assert_eq!(cursor, json!(4), "B's cursor moved with A's remote edit");
        pa.screenshot("5-converged").await?;
        pb.screenshot("5-converged").await?;
        // The nodes hold the same text as the pages.
        assert_eq!(
            b.file(&ws, "notes.md").await.as_deref(),
            Some(want.as_bytes())
        );

        // A uploads a PDF from the workspace page and reads its text.
        let pdf = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/data/pdfs/004-pdflatex-4-pages.pdf");
        if pdf.exists() {
            pa.goto(&format!("{}/#/ws/{ws}", a.api_url)).await?;
            let input = pa.wait("#doc-input", UI).await?;
            pa.type_text(&input, &pdf.canonicalize()?.display().to_string())
                .await?;
            pa.wait_text("#doc-text", UI, |t| {
                t.contains("Hello, here is some text without a meaning")
            })
            .await?;
            pa.screenshot("6-pdf").await?;
            // And B gets the processed document by sync.
            pb.goto(&format!("{}/#/ws/{ws}", b.api_url)).await?;
            pb.wait_text("#documents", SYNC, |t| {
                t.contains("004-pdflatex-4-pages.pdf")
            })
            .await?;
        } else {
            skip_or_fail(
                "dashboard PDF upload",
                &format!("{} is absent", pdf.display()),
            );
        }

        // A dropped file is uploaded too (a real drop event with a DataTransfer).
        pa.goto(&format!("{}/#/ws/{ws}", a.api_url)).await?;
        pa.wait("#drop-zone", UI).await?;
        pa.exec(
            "const dt = new DataTransfer();
             dt.items.add(new File(['# Dropped notes\\n\\nThe drop zone works.\\n'], 'dropped.md', {type: 'text/markdown'}));
             document.getElementById('drop-zone').dispatchEvent(new DragEvent('drop', {dataTransfer: dt, bubbles: true, cancelable: true}));
             return true;",
            json!([]),
        )
        .await?;
        pa.wait_text("#doc-text", UI, |t| t.contains("The drop zone works."))
            .await?;

        // A's overview shows B connected, with the shared workspace's lag.
        pa.goto(&format!("{}/#/", a.api_url)).await?;
        let short_b = &b.peer_id[b.peer_id.len() - 6..];
        pa.wait_text("#peers-table", UI, |t| {
            t.contains(short_b)
                && t.contains("connected (direct")
                && (t.contains("Team Alpha: syncing, up to date")
                    || t.contains(" changes behind")
                    || t.contains(" change behind"))
        })
        .await?;
        pa.screenshot("7-peers").await?;

        // B has the workspace page open while A revokes B.
        pb.goto(&format!("{}/#/ws/{ws}", b.api_url)).await?;
        pb.wait("#members", UI).await?;
        assert!(pb.find("#standing-banner").await?.is_none());

        // A revokes B from the dashboard, after confirming.
        pa.goto(&format!("{}/#/ws/{ws}", a.api_url)).await?;
        let revoke = pa
            .wait(&format!("button[aria-label='Revoke {}']", b.peer_id), UI)
            .await?;
        pa.click(&revoke).await?;
        pa.accept_dialog().await?;
        pa.wait_text("#members", UI, |t| t.contains("developer (revoked)"))
            .await?;
        // B's open page says so by itself (no reload): a banner, no write
        // controls.
        pb.wait_text("#standing-banner", SYNC, |t| t.contains("revoked"))
            .await?;
        assert!(
            pb.find("#new-file-form").await?.is_none() && pb.find("#drop-zone").await?.is_none(),
            "write controls are gone"
        );
        pb.screenshot("9-revoked").await?;
        // The audit view lists the revocation, and the chain is intact.
        pa.goto(&format!("{}/#/audit", a.api_url)).await?;
        pa.wait_text("#audit-chain", UI, |t| t.contains("intact"))
            .await?;
        pa.wait_text("#audit", UI, |t| t.contains("/revoke"))
            .await?;
        pa.screenshot("8-audit").await?;
        // Refusals only: a refused request (revoking the creator) shows,
        // nothing allowed does.
        assert!(!a.cli(&["revoke", &ws, &a.peer_id]).status.success());
        pa.exec(
            "const f = document.getElementById('audit-filter'); f.value = 'deny'; f.dispatchEvent(new Event('change'));",
            serde_json::json!([]),
        )
        .await?;
        pa.wait_text("#audit", UI, |t| {
            t.contains("deny") && t.contains("/revoke") && !t.contains("allow")
        })
        .await?;
        pa.close().await?;
        pb.close().await?;
        Ok::<(), anyhow::Error>(())
    }
    .await;
    if result.is_err() {
        for (name, node) in [("A", &a), ("B", &b)] {
            let log = node.log_text();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!(
                "--- {name}'s log, last 40 lines (newest first) ---\n{}",
                tail.join("\n")
            );
        }
    }
    result
}

/// `xencode dashboard --no-open` prints a login URL; opened in Chromium it
/// shows the node's workspaces by name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_login_url_shows_the_workspaces() -> anyhow::Result<()> {
    if let Some(reason) = browser::unavailable() {
        skip_or_fail("dashboard browser test", &reason);
        return Ok(());
    }
    let tmp = tempfile::tempdir()?;
    // The node asks an Ollama stand-in (real HTTP on a real socket) for reviews.
    let ollama = OllamaDouble::start()?;
    let dir = tmp.path().join("n");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join("config.toml"),
        format!("[analysis]\nollama_host = \"{}\"\n", ollama.url),
    )?;
    let node = Node::start(&dir)?;
    for name in ["Backend", "Docs <b>&amp;</b>"] {
        ok_stdout(&node.cli(&["workspace", "create", name]));
    }
    let driver = Driver::start(&tmp.path().join("chromedriver.log")).await?;
    let page = Browser::open(&driver, &shots_dir(), "login").await?;
    // Before logging in, the page says how to.
    page.goto(&format!("{}/", node.api_url)).await?;
    page.wait_text("#login-needed", UI, |t| t.contains("xencode dashboard"))
        .await?;
    login(&page, &node).await?;
    page.goto(&format!("{}/#/workspaces", node.api_url)).await?;
    // Names are shown as text, markup and all.
    let list = page
        .wait_text("#ws-list", UI, |t| t.contains("Backend"))
        .await?;
    assert!(list.contains("Docs <b>&amp;</b>"), "{list}");
    page.screenshot("workspaces").await?;

    // Analysis results are shown with each finding on its line.
    let ws = last_line(&node.cli(&["workspace", "create", "code"]));
    let source = "import os\n\ndef run(expr):\n    return eval(expr)\n";
    assert!(
        xencode_tests::put(&node, &ws, "app.py", source)
            .await
            .is_success()
    );
    page.goto(&format!("{}/#/ws/{ws}/file/app.py", node.api_url))
        .await?;
    page.wait_value("#editor", UI, |v| v == source).await?;
    page.click(&page.wait("#analyze-btn", UI).await?).await?;
    let flagged = page
        .wait_text("#code-view li.flag[data-line='4']", UI, |t| {
            t.contains("CWE-95")
        })
        .await?;
    assert!(flagged.contains("eval(expr)"), "{flagged}");
    let line_one = page.wait("#code-view li[data-line='1']", UI).await?;
    assert_eq!(
        page.property(&line_one, "className").await?,
        "",
        "line 1 has no finding"
    );
    page.screenshot("analysis").await?;

    // With AI, the review streams into the page as Ollama writes it.
    page.click(&page.wait("#analyze-ai", UI).await?).await?;
    page.click(&page.wait("#analyze-btn", UI).await?).await?;
    page.wait_text("#ai-review", UI, |t| t == REVIEW).await?;
    page.wait_text("#analysis h3", UI, |t| t.contains("AI review by"))
        .await?;
    page.screenshot("ai-review").await?;

    // Every control on each view has an accessible name (WCAG 2.1 AA basics).
    for view in [
        "#/",
        "#/workspaces",
        &format!("#/ws/{ws}"),
        &format!("#/ws/{ws}/file/app.py"),
        "#/audit",
    ] {
        page.goto(&format!("{}/{view}", node.api_url)).await?;
        page.wait("main h1", UI).await?;
        let unnamed = page.exec(UNNAMED_CONTROLS, json!([])).await?;
        assert_eq!(unnamed, json!([]), "controls without a name on {view}");
    }
    page.close().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_overview_lists_linked_folders_and_their_state() -> anyhow::Result<()> {
    if let Some(reason) = browser::unavailable() {
        skip_or_fail("dashboard browser test", &reason);
        return Ok(());
    }
    let tmp = tempfile::tempdir()?;
    let node = Node::start(&tmp.path().join("n"))?;
    let dir = tmp.path().join("project");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("a.py"), "A = 1\n")?;
    std::fs::write(dir.join("b.py"), "B = 2\n")?;
    let dir_s = dir.canonicalize()?.to_string_lossy().into_owned();
    ok_stdout(&node.cli(&["folder", "share", &dir_s, "--name", "Folder Team"]));
    let result = async {
        let driver = Driver::start(&tmp.path().join("chromedriver.log")).await?;
        let page = Browser::open(&driver, &shots_dir(), "folders").await?;
        login(&page, &node).await?;
        page.wait_text("#folders-table", UI, |t| {
            t.contains(&dir_s)
                && t.contains("Folder Team")
                && t.contains("watching")
                && t.contains("2 files")
        })
        .await?;
        // A new file on disk shows in the count without a reload.
        std::fs::write(dir.join("c.py"), "C = 3\n")?;
        page.wait_text("#folders-table", UI, |t| t.contains("3 files"))
            .await?;
        page.screenshot("folders").await?;
        anyhow::Ok(())
    }
    .await;
    if result.is_err() {
        eprintln!("--- node ---\n{}", node.log_text());
    }
    result
}

/// What a screenshot showed wrong, each checked in the page: the editor's
/// font, long ids kept inside their card on a narrow window, findings
/// coloured by weight, the stored analysis shown when a file opens (and
/// marked stale once the file changes), no Analyze on files that cannot be
/// analysed, a page (not JSON) for a spent login link, uptime in words.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_details_a_user_sees() -> anyhow::Result<()> {
    if let Some(reason) = browser::unavailable() {
        skip_or_fail("dashboard browser test", &reason);
        return Ok(());
    }
    let tmp = tempfile::tempdir()?;
    let home = tmp.path().join("n");
    ok_stdout(&xencode_tests::cli(&home, &["init", "--name", "Dee <b>"]));
    let node = Node::start(&home)?;
    let ws = last_line(&node.cli(&["workspace", "create", "details"]));
    let source = "import os\n\ndef run(expr):\n    return eval(expr)\n";
    for (path, body) in [("app.py", source), ("README.md", "# Notes\n")] {
        assert!(
            xencode_tests::put(&node, &ws, path, body)
                .await
                .is_success()
        );
    }
    let bin = tmp.path().join("logo.bin");
    std::fs::write(&bin, [0u8, 159, 146, 150, 255, 0, 1])?;
    ok_stdout(&node.cli(&[
        "file",
        "put",
        &ws,
        "logo.bin",
        bin.to_str().unwrap_or_default(),
    ]));
    let driver = Driver::start(&tmp.path().join("chromedriver.log")).await?;
    let page = Browser::open(&driver, &shots_dir(), "details").await?;

    // A spent login link: a page saying what to do, not raw JSON.
    let out = node.cli(&["dashboard", "--no-open"]);
    let url = last_line(&out);
    page.goto(&url).await?;
    page.wait_text("#node-id", UI, |t| t == node.peer_id)
        .await?;
    page.goto(&url).await?;
    page.wait_text("#login-failed", UI, |t| t.contains("cannot be used"))
        .await?;
    let text = page.page_text().await?;
    assert!(
        text.contains("xencode dashboard") && !text.contains("\"error\""),
        "{text}"
    );
    page.screenshot("spent-login-link").await?;

    // Uptime in words; the peer id stays inside its card on a narrow window.
    page.set_window(420, 900).await?;
    page.goto(&format!("{}/#/", node.api_url)).await?;
    let uptime = page
        .wait_text("#node-uptime", UI, |t| !t.is_empty())
        .await?;
    assert!(
        uptime.ends_with(" s") || uptime.ends_with(" min"),
        "{uptime}"
    );
    let inside = page
        .exec(
            "const c = document.getElementById('node-id'); const card = c.closest('.card');
             return c.getBoundingClientRect().right <= card.getBoundingClientRect().right + 1;",
            json!([]),
        )
        .await?;
    assert_eq!(inside, json!(true), "the peer id overflows its card");
    page.screenshot("narrow-overview").await?;
    page.set_window(1280, 900).await?;

    // The editor is in a monospace font.
    page.goto(&format!("{}/#/ws/{ws}/file/app.py", node.api_url))
        .await?;
    page.wait_value("#editor", UI, |v| v == source).await?;
    let font = page
        .exec(
            "return getComputedStyle(document.getElementById('editor')).fontFamily;",
            json!([]),
        )
        .await?;
    assert!(font.as_str().is_some_and(|f| f.contains("mono")), "{font}");

    // Findings coloured by weight: the eval (high) is not the colour of a
    // suggestion.
    page.click(&page.wait("#analyze-btn", UI).await?).await?;
    page.wait_text("#code-view li.flag[data-line='4']", UI, |t| {
        t.contains("CWE-95")
    })
    .await?;
    let colours = page
        .exec(
            "return [...document.querySelectorAll('#code-view .note')].map(n => [n.dataset.severity, getComputedStyle(n).color]);",
            json!([]),
        )
        .await?;
    let pairs: Vec<(String, String)> = serde_json::from_value(colours.clone())?;
    let high = pairs.iter().find(|(s, _)| s == "high").map(|p| p.1.clone());
    let other = pairs.iter().find(|(s, _)| s != "high").map(|p| p.1.clone());
    assert!(high.is_some() && other.is_some(), "{colours}");
    assert_ne!(
        high, other,
        "a high finding and a lesser one look alike: {colours}"
    );
    page.screenshot("severity-colours").await?;

    // Opened again: the stored analysis is there at once; after a change to
    // the file it is marked stale.
    page.goto(&format!("{}/#/ws/{ws}", node.api_url)).await?;
    page.wait("main h1", UI).await?;
    page.goto(&format!("{}/#/ws/{ws}/file/app.py", node.api_url))
        .await?;
    page.wait_text("#analysis-provenance", UI, |t| {
        t.contains("Stored analysis")
    })
    .await?;
    assert!(page.find("#analysis-stale").await?.is_none());
    page.wait_text("#code-view li.flag[data-line='4']", UI, |t| {
        t.contains("CWE-95")
    })
    .await?;
    let changed = format!("# changed\n{source}");
    assert!(
        xencode_tests::put(&node, &ws, "app.py", &changed)
            .await
            .is_success()
    );
    page.goto(&format!("{}/#/ws/{ws}", node.api_url)).await?;
    page.wait("main h1", UI).await?;
    page.goto(&format!("{}/#/ws/{ws}/file/app.py", node.api_url))
        .await?;
    page.wait_text("#analysis-stale", UI, |t| t.contains("changed since"))
        .await?;
    page.screenshot("stale-findings").await?;

    // Members by the name they gave themselves (as text, markup and all).
    page.goto(&format!("{}/#/ws/{ws}", node.api_url)).await?;
    page.wait_text("#members", UI, |t| t.contains("Dee <b>"))
        .await?;

    // No Analyze button where there is nothing to analyse.
    for (file, shown) in [("logo.bin", "binary"), ("README.md", "saved")] {
        page.goto(&format!("{}/#/ws/{ws}", node.api_url)).await?;
        page.wait("main h1", UI).await?;
        page.goto(&format!("{}/#/ws/{ws}/file/{file}", node.api_url))
            .await?;
        page.wait_text("#editor-status", UI, |t| t == shown).await?;
        let visible = page
            .exec(
                "const b = document.getElementById('analyze-btn'); return !!b && b.offsetParent !== null;",
                json!([]),
            )
            .await?;
        assert_eq!(visible, json!(false), "an Analyze button on {file}");
    }
    page.close().await?;
    Ok(())
}
