//! The node as a service: SIGHUP reloads `config.toml` (live keys applied,
//! the rest named as needing a restart) instead of killing the node; the
//! systemd units shipped under `packaging/` pass `systemd-analyze verify`.

use std::time::Duration;

use xencode_tests::{Node, free_port, skip_or_fail, wait_for};

fn models_error(node: &Node) -> String {
    let out = node.cli(&["models", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_reloads_what_can_change_live_and_names_the_rest() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let home = tmp.path().join("a");
    std::fs::create_dir_all(&home).expect("mkdir");
    let (first, second) = (free_port(), free_port());
    let config = home.join("config.toml");
    std::fs::write(
        &config,
        format!("[analysis]\nollama_host = \"http://127.0.0.1:{first}\"\n"),
    )
    .expect("write config");
    let a = Node::start(&home).expect("a starts");
    let b = Node::start(&tmp.path().join("b")).expect("b starts");
    assert!(models_error(&a).contains(&first.to_string()));
    assert_eq!(a.metric("xencode_peers_connected").await, 0.0);

    // A broken file: refused, the node runs on unchanged.
    std::fs::write(&config, "[analysis\nollama_host = 3\n").expect("write");
    let hup = |pid: u32| {
        let ok = std::process::Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok);
    };
    hup(a.pid());
    let logged = wait_for(Duration::from_secs(10), || async {
        a.log_text().contains("config.toml was not reloaded")
    })
    .await;
    assert!(logged, "{}", a.log_text());
    assert!(models_error(&a).contains(&first.to_string()));

    // Live keys (the Ollama host, a peer to dial) take effect;
    // store.max_text_bytes needs a restart and says so. (api.listen is
    // given on the command line, which wins over the file at a reload too.)
    std::fs::write(
        &config,
        format!(
            "[api]\nlisten = \"127.0.0.1:{}\"\n[store]\nmax_text_bytes = 4096\n[network]\npeers = [\"{}\"]\n[analysis]\nollama_host = \"http://127.0.0.1:{second}\"\n",
            free_port(),
            b.addr()
        ),
    )
    .expect("write config");
    hup(a.pid());
    let reloaded = wait_for(Duration::from_secs(20), || async {
        models_error(&a).contains(&second.to_string())
    })
    .await;
    assert!(
        reloaded,
        "the Ollama host was not reloaded\n{}",
        a.log_text()
    );
    let dialed = wait_for(Duration::from_secs(30), || async {
        a.metric("xencode_peers_connected").await >= 1.0
    })
    .await;
    assert!(dialed, "the added peer was not dialed\n{}", a.log_text());
    let log = a.log_text();
    assert!(
        log.contains("needs_restart") && log.contains("store.max_text_bytes"),
        "{log}"
    );
    assert!(
        !log.contains("\"api.listen\""),
        "the --api flag still wins: {log}"
    );
    // Still the same process, still answering where it did.
    let status = a.cli(&["status", "--json"]);
    assert!(status.status.success());
    assert!(a.stop().success(), "an orderly exit after reloads");
}

/// The systemd user units shipped in `packaging/systemd/` are valid.
#[test]
fn the_systemd_units_verify() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .join("packaging/systemd");
    let units: Vec<_> = [
        "xencode.service",
        "xencode-backup.service",
        "xencode-backup.timer",
    ]
    .iter()
    .map(|u| root.join(u))
    .collect();
    for u in &units {
        assert!(u.exists(), "{} is shipped", u.display());
    }
    // `verify` checks that ExecStart's program exists: the binary where
    // `cargo install` puts it, in a stand-in home.
    let home = tempfile::tempdir().expect("tempdir");
    let bin = home.path().join(".cargo/bin");
    std::fs::create_dir_all(&bin).expect("mkdir");
    std::os::unix::fs::symlink(xencode_tests::xencode_bin(), bin.join("xencode")).expect("link");
    let Ok(out) = std::process::Command::new("systemd-analyze")
        .arg("--user")
        .arg("verify")
        .args(&units)
        .env("HOME", home.path())
        .env("XDG_RUNTIME_DIR", home.path())
        .output()
    else {
        skip_or_fail(
            "the_systemd_units_verify",
            "systemd-analyze is not installed (apt install systemd)",
        );
        return;
    };
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(!err.contains("Unknown"), "{err}");
}

/// The container files: the compose file is valid for Compose, and the
/// image installs the node the way the README does. (Building the image
/// needs a Docker daemon, which CI does not have: `docs/operations.md`.)
#[test]
fn the_compose_file_is_valid_and_the_image_installs_like_the_readme() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf();
    let dockerfile =
        std::fs::read_to_string(root.join("packaging/docker/Dockerfile")).expect("Dockerfile");
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README");
    assert!(readme.contains("cargo install --locked --path node"));
    assert!(dockerfile.contains("cargo install --locked --path node"));
    assert!(
        dockerfile.contains("exec xencode node"),
        "signals reach the node"
    );
    let compose = root.join("packaging/docker/compose.yaml");
    let Ok(out) = std::process::Command::new("docker-compose")
        .args(["-f", compose.to_str().expect("utf8"), "config"])
        .output()
    else {
        skip_or_fail(
            "the_compose_file_is_valid_and_the_image_installs_like_the_readme",
            "docker-compose is not installed (apt install docker-compose)",
        );
        return;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for needle in [
        "ollama/ollama",
        "network_mode: host",
        "XENCODE_ANALYSIS_OLLAMA_HOST",
    ] {
        assert!(text.contains(needle), "{needle}: {text}");
    }
}
