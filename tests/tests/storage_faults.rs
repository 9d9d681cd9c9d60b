//! Storage faults under a real node: the disk filling up during commits (a
//! small tmpfs), the redb file truncated, the data directory read-only.
//! Each gives a clear error; nothing acknowledged is lost; the store is
//! never silently reset. The tmpfs and read-only mounts need root.

use std::path::Path;
use std::process::Command;

use xencode_tests::netns::{is_root, run};
use xencode_tests::{Node, cli, health_ok, last_line, ok_stdout, put, skip_or_fail};

/// Unmounts on drop.
struct Mount(std::path::PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn store_of(home: &Path) -> std::path::PathBuf {
    home.join("xencode.redb")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_refuses_writes_clearly_and_loses_nothing_acknowledged() {
    if !is_root() {
        return skip_or_fail("the full-disk test", "mounting a tmpfs needs root");
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let mnt = tmp.path().join("small");
    std::fs::create_dir_all(&mnt).expect("dir");
    if let Err(e) = run(
        "mount",
        &[
            "-t",
            "tmpfs",
            "-o",
            "size=12m",
            "tmpfs",
            &mnt.display().to_string(),
        ],
    ) {
        return skip_or_fail("the full-disk test", &e);
    }
    let _mount = Mount(mnt.clone());
    let home = mnt.join("home");
    let node = Node::start(&home).expect("node");
    let ws = last_line(&node.cli(&["workspace", "create", "full"]));

    // Fill the disk to a little headroom, then write until refused.
    let filler = mnt.join("filler");
    let free = 12 << 20;
    let used: u64 = std::fs::metadata(store_of(&home))
        .map(|m| m.len())
        .unwrap_or(0);
    std::fs::write(
        &filler,
        vec![0u8; (free - used as usize).saturating_sub(3 << 20)],
    )
    .expect("filler");
    let mut acked = Vec::new();
    let mut refusal = None;
    let mut x = 0x2545_f491_4f6c_dd1d_u64;
    for i in 0..400 {
        // Text that does not compress (Automerge would fold repeats).
        let body: String = (0..64 * 1024)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                char::from(b'a' + (x % 26) as u8)
            })
            .collect();
        let path = format!("f{i:03}.txt");
        let resp = node
            .http()
            .put(format!(
                "{}/api/v1/workspaces/{ws}/files/{path}",
                node.api_url
            ))
            .body(body.clone())
            .send()
            .await
            .expect("the node answers");
        if resp.status().is_success() {
            acked.push(path);
        } else {
            refusal = Some((resp.status(), resp.text().await.unwrap_or_default()));
            break;
        }
    }
    let (status, text) = refusal.expect("the disk filled up");
    eprintln!("after {} writes: {status} {text}", acked.len());
    assert!(status.is_server_error(), "{status} {text}");
    assert!(
        text.contains("disk") || text.contains("space") || text.contains("storage"),
        "a clear error: {text}"
    );
    assert!(health_ok(&node.api_url), "the node keeps running");
    // Everything acknowledged reads back.
    for p in &acked {
        assert_eq!(
            node.file(&ws, p).await.map(|b| b.len()),
            Some(64 * 1024),
            "{p}"
        );
    }

    // Space comes back: the node takes writes again (after a restart at
    // worst), and still has every acknowledged write.
    std::fs::remove_file(&filler).expect("free space");
    let mut node = node;
    if put(&node, &ws, "after.txt", "space again").await != reqwest::StatusCode::OK {
        node.stop();
        node = Node::start(&home).expect("restart");
        assert_eq!(
            put(&node, &ws, "after.txt", "space again").await,
            reqwest::StatusCode::OK
        );
    }
    node.stop();
    let node = Node::start(&home).expect("restart");
    for p in acked.iter().chain(std::iter::once(&"after.txt".to_owned())) {
        assert!(node.file(&ws, p).await.is_some(), "{p} after restart");
    }
}

#[test]
fn a_truncated_store_stops_the_node_clearly_and_is_left_alone() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let home = tmp.path().join("home");
    let node = Node::start(&home).expect("node");
    let ws = last_line(&node.cli(&["workspace", "create", "cut"]));
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    for i in 0..20 {
        rt.block_on(put(&node, &ws, &format!("f{i}.txt"), &"y".repeat(10_000)));
    }
    node.stop();
    let bytes = std::fs::read(store_of(&home)).expect("read");
    for cut in [bytes.len() / 2, 4096, 100] {
        std::fs::write(store_of(&home), &bytes[..cut]).expect("truncate");
        let out = cli(&home, &["node", "--api", "127.0.0.1:0", "--no-mdns"]);
        let err = String::from_utf8_lossy(&out.stderr);
        eprintln!("cut at {cut}: {}", err.lines().last().unwrap_or(""));
        assert!(!out.status.success(), "a truncated store is refused");
        assert!(err.contains("error"), "{err}");
        assert_eq!(
            std::fs::read(store_of(&home)).expect("read").len(),
            cut,
            "the file is left alone, not reset"
        );
    }
    // The intact file still works.
    std::fs::write(store_of(&home), &bytes).expect("restore");
    let node = Node::start(&home).expect("node on the intact store");
    assert_eq!(rt.block_on(node.files(&ws)).len(), 20);
}

#[test]
fn a_read_only_data_dir_stops_the_node_with_a_clear_error() {
    if !is_root() {
        return skip_or_fail("the read-only test", "a read-only bind mount needs root");
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let home = tmp.path().join("home");
    ok_stdout(&cli(&home, &["init"]));
    let node = Node::start(&home).expect("node");
    let ws = last_line(&node.cli(&["workspace", "create", "ro"]));
    node.stop();
    let dir = home.display().to_string();
    if let Err(e) = run("mount", &["--bind", &dir, &dir])
        .and_then(|()| run("mount", &["-o", "remount,ro,bind", &dir]))
    {
        return skip_or_fail("the read-only test", &e);
    }
    let _mount = Mount(home.clone());
    let before = std::fs::read(store_of(&home)).expect("read");
    let out = cli(&home, &["node", "--api", "127.0.0.1:0", "--no-mdns"]);
    let err = String::from_utf8_lossy(&out.stderr);
    eprintln!("read-only: {}", err.lines().last().unwrap_or(""));
    assert!(!out.status.success());
    assert!(
        err.contains("read-only") || err.contains("Read-only") || err.contains("permission"),
        "{err}"
    );
    assert_eq!(std::fs::read(store_of(&home)).expect("read"), before);
    drop(_mount);
    let node = Node::start(&home).expect("node after the mount is gone");
    let list = String::from_utf8_lossy(&node.cli(&["workspace", "list"]).stdout).into_owned();
    assert!(list.contains(&ws), "{list}");
}
