//! `xencode backup` while the node runs and writes, and `xencode restore`:
//! the restored node starts a new actor epoch, gets back from its peer what
//! it wrote after the backup, and its new writes reach the peer (reusing the
//! old epoch's sequence numbers would make them diverge).

use std::time::Duration;

use xencode_tests::{
    Node, converged, free_port, invite_and_join, last_line, ok_stdout, put, splice, wait_for,
};

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn backup_while_writing_then_restore_with_a_new_epoch() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let a_port = free_port();
    let a = Node::start_with(&tmp.path().join("a"), a_port, &[]).expect("a");
    let b = Node::start(&tmp.path().join("b")).expect("b");
    let ws = last_line(&a.cli(&["workspace", "create", "kept"]));
    invite_and_join(&a, &ws, &b, "developer");
    assert!(put(&a, &ws, "before.txt", "").await.is_success());

    // Back up while A keeps taking edits.
    let file = tmp.path().join("a.backup");
    let file_arg = file.display().to_string();
    let writer = async {
        for i in 0..40 {
            assert!(
                splice(&a, &ws, "before.txt", i, "x").await.is_success(),
                "edit {i} during the backup"
            );
        }
    };
    let (out, ()) = tokio::join!(async { a.cli(&["backup", &file_arg]) }, writer);
    assert_eq!(ok_stdout(&out).trim(), file_arg);
    assert!(file.exists());
    // A backup never overwrites.
    assert!(!a.cli(&["backup", &file_arg]).status.success());

    // After the backup: A writes more, and B receives it.
    assert!(
        put(&a, &ws, "after.txt", "written after the backup")
            .await
            .is_success()
    );
    assert!(wait_for(WAIT, || async { converged(&[&a, &b], &ws).await }).await);
    let epoch_before = a.get_json("/api/v1/node").await["epoch"]
        .as_u64()
        .expect("epoch");

    // Restoring while the node runs is refused.
    let busy = a.cli(&["restore", &file_arg]);
    assert!(!busy.status.success());
    assert!(String::from_utf8_lossy(&busy.stderr).contains("stop the node"));
    let dir = a.dir.clone();
    assert!(a.stop().success());
    let restored = xencode_tests::cli(&dir, &["--json", "restore", &file_arg]);
    let report: serde_json::Value = serde_json::from_slice(&restored.stdout)
        .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&restored.stderr)));
    assert_eq!(report["workspaces"], 1);
    assert!(
        report["previous"]
            .as_str()
            .is_some_and(|p| std::path::Path::new(p).exists())
    );

    // The restored node writes under a new epoch and holds the backup's state.
    let a = Node::start_with(&dir, a_port, &[b.addr()]).expect("restart a");
    let epoch = a.get_json("/api/v1/node").await["epoch"]
        .as_u64()
        .expect("epoch");
    assert!(epoch > epoch_before, "epoch {epoch} after {epoch_before}");
    assert_eq!(report["epoch"], epoch);
    // B sends back what A wrote after the backup.
    assert!(
        wait_for(WAIT, || async {
            a.file(&ws, "after.txt").await.as_deref()
                == Some(b"written after the backup".as_slice())
        })
        .await,
        "A got back its post-backup write from B:\n{}",
        a.log_text()
    );
    // New writes on A reach B, and both converge.
    assert!(
        put(&a, &ws, "new.txt", "after the restore")
            .await
            .is_success()
    );
    assert!(
        wait_for(WAIT, || async {
            b.file(&ws, "new.txt").await.as_deref() == Some(b"after the restore".as_slice())
        })
        .await,
        "B took A's post-restore write:\n{}",
        b.log_text()
    );
    assert!(wait_for(WAIT, || async { converged(&[&a, &b], &ws).await }).await);
    let forty = String::from_utf8(a.file(&ws, "before.txt").await.expect("file")).expect("utf8");
    assert_eq!(
        forty,
        "x".repeat(40),
        "no edit made during the backup was lost"
    );

    // A file that is not a backup is refused with a clear message.
    let junk = tmp.path().join("junk");
    std::fs::write(&junk, b"not a backup").expect("write");
    let dir = a.dir.clone();
    assert!(a.stop().success());
    let out = xencode_tests::cli(&dir, &["restore", &junk.display().to_string()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a xencode backup"));
}
