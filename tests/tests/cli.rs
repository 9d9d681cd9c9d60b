//! The CLI contract (ARCHITECTURE section 7) against a real node process.

use xencode_tests::{
    Node, cli, cli_with_stdin, free_port, health_ok, last_line, ok_stdout, run_with_stdin,
    xencode_bin,
};

#[test]
fn the_cli_drives_a_real_node_end_to_end() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let home = tmp.path().join("home");
    let home_s = home.to_str().expect("utf8 path");

    let init = cli(&home, &["init"]);
    let peer_id = last_line(&init);
    ok_stdout(&init);
    assert!(peer_id.starts_with("12D3KooW"), "{peer_id}");
    assert_eq!(last_line(&cli(&home, &["id"])), peer_id);

    let node = Node::start(&home).expect("node starts");
    let status: serde_json::Value =
        serde_json::from_str(&ok_stdout(&cli(&home, &["status", "--json"]))).expect("bare JSON");
    assert_eq!(status["peer_id"], peer_id.as_str());
    assert_eq!(status["api_url"], node.api_url.as_str());
    assert_eq!(status["data_dir"], home_s);

    let create = cli(&home, &["workspace", "create", "Team Docs"]);
    ok_stdout(&create);
    let ws = last_line(&create);
    assert_eq!(ws.len(), 32, "the id alone on the last line: {ws:?}");

    // A file from disk, one from stdin, one binary; by id and by name.
    let src = tmp.path().join("main.py");
    std::fs::write(&src, "print('hi')\n").expect("write");
    ok_stdout(&cli(
        &home,
        &[
            "file",
            "put",
            &ws,
            "src/main.py",
            src.to_str().expect("utf8"),
        ],
    ));
    ok_stdout(&cli_with_stdin(
        &home,
        &["file", "put", "Team Docs", "README.md", "-"],
        b"# Team\n",
    ));
    let binary: Vec<u8> = (0..=255u8).rev().collect();
    ok_stdout(&cli_with_stdin(
        &home,
        &["file", "put", &ws, "assets/logo.bin"],
        &binary,
    ));

    assert_eq!(
        ok_stdout(&cli(&home, &["file", "list", &ws])),
        "README.md\nassets/logo.bin\nsrc/main.py\n",
        "one sorted path per line, nothing else"
    );
    let got = cli(&home, &["file", "get", &ws, "assets/logo.bin"]);
    assert!(got.status.success());
    assert_eq!(got.stdout, binary, "file get prints the exact bytes");
    assert_eq!(
        ok_stdout(&cli(&home, &["file", "get", "Team Docs", "src/main.py"])),
        "print('hi')\n"
    );

    let list: serde_json::Value =
        serde_json::from_str(&ok_stdout(&cli(&home, &["workspace", "list", "--json"])))
            .expect("json");
    assert_eq!(list["workspaces"][0]["id"], ws.as_str());
    assert_eq!(list["workspaces"][0]["files"], 3);
    let show: serde_json::Value = serde_json::from_str(&ok_stdout(&cli(
        &home,
        &["workspace", "show", "Team Docs", "--json"],
    )))
    .expect("json");
    assert_eq!(show["owner"], peer_id.as_str());
    assert_eq!(show["members"][0]["role"], "admin");
    assert!(show["heads"].as_array().is_some_and(|h| !h.is_empty()));

    ok_stdout(&cli(&home, &["file", "rm", &ws, "README.md"]));
    assert_eq!(
        ok_stdout(&cli(&home, &["file", "list", &ws])),
        "assets/logo.bin\nsrc/main.py\n"
    );

    // Errors: non-zero exit, a message on stderr that says what to do.
    let missing = cli(&home, &["file", "get", &ws, "README.md"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no file README.md"));
    assert!(missing.stdout.is_empty());
    let unknown = cli(&home, &["workspace", "show", "no such workspace"]);
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("xencode workspace list"));
    let bad_path = cli_with_stdin(&home, &["file", "put", &ws, "../escape.txt"], b"x");
    assert!(!bad_path.status.success());
    assert!(String::from_utf8_lossy(&bad_path.stderr).contains("'..'"));
    assert!(!ok_stdout(&cli(&home, &["file", "list", &ws])).contains("escape"));

    let config = ok_stdout(&cli(&home, &["config", "show"]));
    assert!(
        config.contains("[api]") && config.contains("max_body_bytes"),
        "{config}"
    );

    let exit = node.stop();
    assert!(exit.success(), "orderly shutdown on SIGTERM: {exit}");
    assert!(
        !home.join("api-url").exists(),
        "a stopped node removes api-url"
    );
}

#[test]
fn commands_without_a_running_node_say_how_to_start_one() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let home = tmp.path().join("home");
    ok_stdout(&cli(&home, &["init"]));
    for args in [
        &["status"][..],
        &["workspace", "list"],
        &["file", "list", "x"],
    ] {
        let out = cli(&home, args);
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("start one with `xencode node`"),
            "{args:?}: {err}"
        );
    }
    // A stale api-url (node killed) gets the same advice.
    std::fs::write(home.join("api-url"), "http://127.0.0.1:9\n").expect("write");
    let out = cli(&home, &["status"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no node answers at"));
}

#[test]
fn invalid_configuration_is_reported_with_the_key_to_fix() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let home = tmp.path().join("home");
    ok_stdout(&cli(&home, &["init"]));
    std::fs::write(
        home.join("config.toml"),
        "[api]\nlisten = \"0.0.0.0:7420\"\n",
    )
    .expect("write");
    let out = cli(&home, &["node", "--api", "0.0.0.0:0"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("loopback"));
    let out = cli(&home, &["config", "show"]);
    assert!(!out.status.success());
    std::fs::write(home.join("config.toml"), "[network]\nmdsn = false\n").expect("write");
    let out = cli(&home, &["config", "show"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("mdsn"));
}

/// A script that waits for `/health` and then runs the CLI must work the
/// first time: health turns 200 only once `api-url` is written. The node is
/// restarted with a linked folder each round, which widens the window the
/// old order left (store loaded, folders still starting, no `api-url`).
#[test]
fn health_answers_200_only_once_the_cli_can_reach_the_node() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let home = tmp.path().join("home");
    let folder = tmp.path().join("project");
    std::fs::create_dir_all(&folder).expect("mkdir");
    for i in 0..200 {
        std::fs::write(folder.join(format!("f{i}.py")), format!("x = {i}\n")).expect("write");
    }
    ok_stdout(&cli(&home, &["init"]));
    for round in 0..4 {
        let port = free_port();
        let api_url = format!("http://127.0.0.1:{port}");
        // A killed node leaves its api-url behind.
        let _ = std::fs::remove_file(home.join("api-url"));
        let mut child = Running(
            std::process::Command::new(xencode_bin())
                .arg("--data-dir")
                .arg(&home)
                .args(["node", "--api", &format!("127.0.0.1:{port}")])
                .args(["--listen", "/ip4/127.0.0.1/tcp/0", "--no-mdns"])
                .env_remove("XENCODE_HOME")
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("spawn node"),
        );
        let started = std::time::Instant::now();
        while !health_ok(&api_url) {
            assert!(
                started.elapsed() < std::time::Duration::from_secs(60),
                "round {round}: /health never answered 200"
            );
            assert!(
                child.0.try_wait().expect("wait").is_none(),
                "the node exited"
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert_eq!(
            std::fs::read_to_string(home.join("api-url"))
                .unwrap_or_default()
                .trim(),
            api_url,
            "round {round}: /health said ok before api-url was written"
        );
        ok_stdout(&cli(&home, &["workspace", "list"]));
        if round == 0 {
            // Later rounds start with a linked folder to compare.
            let folder = folder.to_str().expect("utf-8 path");
            ok_stdout(&cli(
                &home,
                &["folder", "share", folder, "--name", "project"],
            ));
        }
        drop(child);
    }
}

/// A node process, killed when dropped (also when an assertion fails).
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `xencode dashboard` says it opened a browser only when the opener says
/// so: a failing `xdg-open` or no graphical session (over SSH) gets the URL
/// and what went wrong, never "opened".
#[test]
fn dashboard_reports_whether_the_browser_really_opened() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().expect("tempdir");
    let home = tmp.path().join("home");
    ok_stdout(&cli(&home, &["init"]));
    let _node = Node::start(&home).expect("node starts");
    let bin = tmp.path().join("bin");
    std::fs::create_dir_all(&bin).expect("mkdir");
    let opener = bin.join("xdg-open");
    let opened_file = tmp.path().join("opened");
    let run = |display: Option<&str>| {
        let mut cmd = std::process::Command::new(xencode_bin());
        cmd.arg("--data-dir").arg(&home).arg("dashboard");
        let path = format!(
            "{}:{}",
            bin.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        cmd.env("PATH", path).env_remove("WAYLAND_DISPLAY");
        match display {
            Some(d) => cmd.env("DISPLAY", d),
            None => cmd.env_remove("DISPLAY"),
        };
        let out = run_with_stdin(cmd, &[]);
        let url = last_line(&out);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{err}");
        assert!(
            url.starts_with("http://127.0.0.1:"),
            "no URL printed: {url}"
        );
        (url, err)
    };
    let script = |body: &str| {
        std::fs::write(&opener, format!("#!/bin/sh\n{body}\n")).expect("write opener");
        std::fs::set_permissions(&opener, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    };

    // No display at all: the opener is not even tried.
    script(&format!("echo \"$1\" > {}", opened_file.display()));
    let (_, err) = run(None);
    assert!(err.contains("no graphical session"), "{err}");
    assert!(!err.contains("opened the dashboard"), "{err}");
    assert!(!opened_file.exists(), "xdg-open ran without a display");

    // A display, but the opener fails (what xdg-open does over SSH).
    script("echo 'xdg-open: no method available' >&2; exit 3");
    let (_, err) = run(Some(":9"));
    assert!(err.contains("failed"), "{err}");
    assert!(!err.contains("opened the dashboard"), "{err}");

    // The opener succeeds: it got the login URL, and it is reported.
    script(&format!("echo \"$1\" > {}", opened_file.display()));
    let (url, err) = run(Some(":9"));
    assert!(
        err.contains("opened the dashboard in your browser"),
        "{err}"
    );
    let given = std::fs::read_to_string(&opened_file).expect("the opener ran");
    assert_eq!(given.trim(), url);
}

/// `--json` means JSON for every command: `init`, `id` and `node` print an
/// object, and an error is `{"error": {code, message}}` on stdout with the
/// same non-zero exit as in text mode (also when Ollama is down).
#[test]
fn json_mode_prints_json_for_every_command_and_every_error() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let home = tmp.path().join("home");
    let parse = |out: &std::process::Output| -> serde_json::Value {
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "not bare JSON ({e}): {}\nstderr: {}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        })
    };
    let init = cli(&home, &["init", "--json"]);
    assert!(init.status.success());
    let init = parse(&init);
    assert_eq!(init["created"], true);
    let peer_id = init["peer_id"].as_str().expect("peer_id").to_owned();
    assert_eq!(parse(&cli(&home, &["init", "--json"]))["created"], false);
    assert_eq!(parse(&cli(&home, &["id", "--json"]))["peer_id"], peer_id);

    // No node yet: the error is JSON too, with a code to branch on.
    let down = cli(&home, &["status", "--json"]);
    assert!(!down.status.success());
    assert_eq!(parse(&down)["error"]["code"], "node_not_running");
    assert!(String::from_utf8_lossy(&down.stderr).contains("xencode node"));

    // Ollama: a closed port.
    let port = free_port();
    std::fs::write(
        home.join("config.toml"),
        format!("[analysis]\nollama_host = \"http://127.0.0.1:{port}\"\n"),
    )
    .expect("write config");
    let node = Node::start(&home).expect("node starts");
    for json in [false, true] {
        let mut args = vec!["models"];
        if json {
            args.push("--json");
        }
        let out = cli(&home, &args);
        assert!(!out.status.success(), "models --json={json} exits non-zero");
        if json {
            let err = parse(&out);
            assert_eq!(err["error"]["code"], "ollama_unavailable");
            assert!(
                err["error"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains(&port.to_string())),
                "{err}"
            );
        }
    }
    // A refusal by the node keeps the node's own code.
    let missing = cli(&home, &["workspace", "show", "no such workspace", "--json"]);
    assert!(!missing.status.success());
    assert_eq!(parse(&missing)["error"]["code"], "workspace_not_found");
    node.stop();

    // `node --json`: one JSON line once it is ready.
    let mut child = std::process::Command::new(xencode_bin())
        .args(["--data-dir", home.to_str().expect("utf8"), "--json", "node"])
        .args([
            "--api",
            "127.0.0.1:0",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--no-mdns",
        ])
        .env_remove("XENCODE_HOME")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn node");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line)
        .expect("read the ready line");
    let _ = child.kill();
    let _ = child.wait();
    let ready: serde_json::Value = serde_json::from_str(&line).expect("one JSON line");
    assert_eq!(ready["peer_id"], peer_id);
    assert!(
        ready["api_url"]
            .as_str()
            .is_some_and(|u| u.starts_with("http://127.0.0.1:")),
        "{ready}"
    );
    assert!(ready["listen"].as_array().is_some_and(|l| !l.is_empty()));
}

/// The README tour's commands, run twice against the same data dir (a new
/// user trying it again): the second run works as the first did, on the same
/// workspace, and every name-based command still resolves.
#[test]
fn the_readme_tour_runs_twice() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let home = tmp.path().join("tour");
    let logo = tmp.path().join("logo.png");
    std::fs::write(&logo, [0x89, b'P', b'N', b'G', 0, 1, 2, 3]).expect("write logo");
    let mut first_ws = None;
    for run in 1..=2 {
        let init = cli(&home, &["init"]);
        assert!(init.status.success(), "run {run}: init");
        let node = Node::start(&home).expect("node starts");
        let create = cli(&home, &["workspace", "create", "Team Docs", "--exist-ok"]);
        let ws = last_line(&create);
        ok_stdout(&create);
        assert_eq!(*first_ws.get_or_insert_with(|| ws.clone()), ws, "run {run}");
        ok_stdout(&cli_with_stdin(
            &home,
            &["file", "put", "Team Docs", "src/main.py"],
            b"print(\"hello\")\n",
        ));
        ok_stdout(&cli(
            &home,
            &[
                "file",
                "put",
                &ws,
                "docs/logo.png",
                logo.to_str().expect("utf8"),
            ],
        ));
        assert_eq!(
            ok_stdout(&cli(&home, &["file", "list", &ws])),
            "docs/logo.png\nsrc/main.py\n",
            "run {run}"
        );
        ok_stdout(&cli(&home, &["workspace", "show", "Team Docs"]));
        ok_stdout(&cli(&home, &["analyze", &ws, "src/main.py"]));
        ok_stdout(&cli(&home, &["status", "--json"]));
        let exported = tmp.path().join("main.automerge");
        let exported = exported.to_str().expect("utf8");
        ok_stdout(&cli(
            &home,
            &["file", "export", &ws, "src/main.py", exported],
        ));
        ok_stdout(&cli(&home, &["audit"]));
        let backup = tmp.path().join(format!("tour-{run}.backup"));
        ok_stdout(&cli(&home, &["backup", backup.to_str().expect("utf8")]));
        let list = ok_stdout(&cli(&home, &["workspace", "list"]));
        assert_eq!(list.lines().count(), 1, "run {run}: one Team Docs\n{list}");
        assert!(node.stop().success());
    }
}

/// Completions and manual pages come from the clap definitions: every
/// command is in them, including the newest.
#[test]
fn completions_and_manual_pages_cover_every_command() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let home = tmp.path().join("home");
    for shell in ["bash", "zsh", "fish"] {
        let script = ok_stdout(&cli(&home, &["completions", shell]));
        for word in ["workspace", "folder", "completions", "leave"] {
            assert!(script.contains(word), "{shell} completion lacks {word}");
        }
    }
    let bad = cli(&home, &["completions", "tcsh"]);
    assert!(!bad.status.success());
    let page = ok_stdout(&cli(&home, &["man"]));
    assert!(page.contains(".TH xencode 1"), "{page}");
    assert!(page.contains("workspace"));
    let dir = tmp.path().join("man1");
    let out = cli(&home, &["man", "--dir", dir.to_str().expect("utf8")]);
    assert!(out.status.success());
    let rm =
        std::fs::read_to_string(dir.join("xencode-workspace-rm.1")).expect("a page per command");
    assert!(rm.contains("Example") && rm.contains("\\-\\-yes"), "{rm}");
    // `man` renders it, where the machine has man-db.
    if let Ok(rendered) = std::process::Command::new("man")
        .args([
            "-l",
            dir.join("xencode-folder-link.1").to_str().expect("utf8"),
        ])
        .env("MANPAGER", "cat")
        .env("MANWIDTH", "100")
        .output()
        && rendered.status.success()
    {
        let text = String::from_utf8_lossy(&rendered.stdout);
        assert!(text.contains("xencode folder link"), "{text}");
    }
}

/// `--version` names what decides compatibility: the commit, the sync
/// protocol and the store schema; `status` says the same of the running node.
#[test]
fn version_names_the_commit_the_protocol_and_the_store_schema() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let home = tmp.path().join("home");
    let long = ok_stdout(&cli(&home, &["--version"]));
    assert!(long.starts_with("xencode "), "{long}");
    assert!(long.contains("(commit "), "{long}");
    assert!(long.contains("protocol: /xencode/sync/"), "{long}");
    assert!(long.contains("store schema: "), "{long}");
    let short = ok_stdout(&cli(&home, &["-V"]));
    assert_eq!(short.lines().count(), 1, "{short}");
    ok_stdout(&cli(&home, &["init"]));
    let node = Node::start(&home).expect("node");
    let status: serde_json::Value =
        serde_json::from_str(&ok_stdout(&cli(&home, &["status", "--json"]))).expect("json");
    assert!(
        status["protocol"]
            .as_str()
            .is_some_and(|p| long.contains(p)),
        "{status}"
    );
    assert!(
        status["commit"]
            .as_str()
            .is_some_and(|c| !c.is_empty() && long.contains(c)),
        "{status}"
    );
    let text = ok_stdout(&cli(&home, &["status"]));
    assert!(
        text.contains("uptime:      ") && text.contains(" s\n"),
        "{text}"
    );
    node.stop();
}

/// `xencode doctor` finds what is wrong and says what to do: a missing data
/// dir, a token file others can read, a stopped node, teammates that cannot
/// reach a loopback-only node, Ollama down; and compares members' clocks.
#[tokio::test(flavor = "multi_thread")]
async fn doctor_finds_problems_and_says_what_to_do() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let home = tmp.path().join("a");
    let report = |home: &std::path::Path| -> (bool, serde_json::Value) {
        let out = cli(home, &["doctor", "--json"]);
        let text = String::from_utf8_lossy(&out.stdout);
        // The report, then (on failure) the error object: take the first.
        let first: serde_json::Value = serde_json::Deserializer::from_str(&text)
            .into_iter()
            .next()
            .and_then(Result::ok)
            .unwrap_or_else(|| panic!("no JSON report: {text}"));
        (out.status.success(), first)
    };
    let check = |r: &serde_json::Value, name: &str| -> serde_json::Value {
        r["checks"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["name"] == name).cloned())
            .unwrap_or_else(|| panic!("no {name} check: {r}"))
    };
    let (ok, r) = report(&home);
    assert!(!ok);
    assert_eq!(check(&r, "data dir")["status"], "fail");
    assert!(
        check(&r, "data dir")["fix"]
            .as_str()
            .is_some_and(|f| f.contains("xencode init"))
    );

    ok_stdout(&cli(&home, &["init"]));
    let token = home.join("api-token");
    std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o644))
        .expect("chmod");
    let (ok, r) = report(&home);
    assert!(!ok);
    assert_eq!(check(&r, "api token")["status"], "fail");
    assert!(
        check(&r, "api token")["fix"]
            .as_str()
            .is_some_and(|f| f.contains("chmod 600"))
    );
    assert_eq!(check(&r, "node")["status"], "fail");
    std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod");

    std::fs::write(
        home.join("config.toml"),
        format!(
            "[analysis]\nollama_host = \"http://127.0.0.1:{}\"\n",
            free_port()
        ),
    )
    .expect("config");
    let a = Node::start(&home).expect("a");
    let b = Node::start(&tmp.path().join("b")).expect("b");
    let (ok, r) = report(&home);
    assert!(ok, "{r}");
    assert_eq!(r["status"], "warn", "{r}");
    assert_eq!(check(&r, "node")["status"], "ok");
    assert_eq!(check(&r, "api")["status"], "ok");
    assert_eq!(check(&r, "listen")["status"], "warn", "loopback only: {r}");
    assert_eq!(check(&r, "ollama")["status"], "warn");
    assert_eq!(
        check(&r, "mdns")["status"],
        "warn",
        "the node runs --no-mdns: {r}"
    );

    // After a sync, the member's clock is compared (same machine: close).
    let ws = last_line(&a.cli(&["workspace", "create", "clocks"]));
    xencode_tests::invite_and_join(&a, &ws, &b, "developer");
    assert_eq!(
        xencode_tests::put(&a, &ws, "x.txt", "x").await,
        reqwest::StatusCode::OK
    );
    let measured = xencode_tests::wait_for(std::time::Duration::from_secs(60), || async {
        check(&report(&home).1, "clocks")["detail"]
            .as_str()
            .is_some_and(|d| d.contains("1 members within"))
    })
    .await;
    assert!(measured, "{}", report(&home).1);
    let text = String::from_utf8_lossy(&cli(&home, &["doctor"]).stdout).into_owned();
    assert!(
        text.contains("warn  listen") && text.contains("→ "),
        "{text}"
    );
}
