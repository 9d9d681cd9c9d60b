//! The CLI contract (ARCHITECTURE section 7) against a real node process.

use xencode_tests::{Node, cli, cli_with_stdin, last_line, ok_stdout};

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
