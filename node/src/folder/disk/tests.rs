//! Disk writes on real directories: atomic, mode kept, never over a local
//! edit, never through a symlink.

use super::*;

#[test]
fn a_write_creates_directories_and_sets_the_mode() {
    let root = tempfile::tempdir().expect("tempdir");
    let w = write(
        root.path(),
        "a/b/run.sh",
        b"#!/bin/sh\n",
        0o755,
        None,
        1 << 20,
    )
    .expect("write");
    let Written::Done(stamp) = w else {
        panic!("expected a write");
    };
    let meta = std::fs::metadata(root.path().join("a/b/run.sh")).expect("stat");
    assert_eq!(meta.permissions().mode() & 0o777, 0o755);
    assert_eq!(stamp.size, 10);
    assert_eq!(stamp.hash, *blake3::hash(b"#!/bin/sh\n").as_bytes());
    // No temporary file is left behind.
    let names: Vec<_> = std::fs::read_dir(root.path().join("a/b"))
        .expect("dir")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(names.len(), 1);
}

#[test]
fn a_write_never_replaces_a_local_edit() {
    let root = tempfile::tempdir().expect("tempdir");
    let Written::Done(stamp) = write(root.path(), "f.txt", b"v1", 0o644, None, 1 << 20).expect("w")
    else {
        panic!("expected a write");
    };
    // Edited on disk after that sync.
    std::fs::write(root.path().join("f.txt"), b"local edit").expect("edit");
    let again = write(root.path(), "f.txt", b"v2", 0o644, Some(&stamp), 1 << 20).expect("w");
    assert!(matches!(again, Written::LocalEdit));
    assert_eq!(
        std::fs::read(root.path().join("f.txt")).expect("read"),
        b"local edit"
    );
    // An unknown file already there is a local edit too, unless identical.
    std::fs::write(root.path().join("g.txt"), b"mine").expect("g");
    assert!(matches!(
        write(root.path(), "g.txt", b"theirs", 0o644, None, 1 << 20).expect("w"),
        Written::LocalEdit
    ));
    assert!(matches!(
        write(root.path(), "g.txt", b"mine", 0o644, None, 1 << 20).expect("w"),
        Written::Done(_)
    ));
}

#[test]
fn symlinks_are_never_followed_or_replaced() {
    let root = tempfile::tempdir().expect("tempdir");
    let outside = tempfile::tempdir().expect("outside");
    std::os::unix::fs::symlink(outside.path(), root.path().join("escape")).expect("link");
    let r = write(root.path(), "escape/pwned.txt", b"x", 0o644, None, 1 << 20);
    assert!(matches!(r, Err(DiskError::InTheWay { .. })), "{r:?}");
    assert!(
        std::fs::read_dir(outside.path())
            .expect("dir")
            .next()
            .is_none()
    );
    std::os::unix::fs::symlink("/etc/passwd", root.path().join("passwd")).expect("link");
    let r = write(root.path(), "passwd", b"x", 0o644, None, 1 << 20);
    assert!(matches!(r, Err(DiskError::InTheWay { .. })), "{r:?}");
    assert!(matches!(
        read(&root.path().join("passwd"), 1 << 20),
        Err(DiskError::InTheWay { .. })
    ));
}

#[test]
fn a_delete_keeps_an_edited_file_and_removes_emptied_directories() {
    let root = tempfile::tempdir().expect("tempdir");
    let Written::Done(s1) =
        write(root.path(), "d/e/one.txt", b"1", 0o644, None, 1 << 20).expect("w")
    else {
        panic!("write");
    };
    let Written::Done(s2) = write(root.path(), "two.txt", b"2", 0o644, None, 1 << 20).expect("w")
    else {
        panic!("write");
    };
    std::fs::write(root.path().join("two.txt"), b"22").expect("edit");
    assert!(!delete(root.path(), "two.txt", &s2, 1 << 20).expect("delete"));
    assert!(root.path().join("two.txt").exists());
    assert!(delete(root.path(), "d/e/one.txt", &s1, 1 << 20).expect("delete"));
    assert!(!root.path().join("d").exists(), "emptied directories go");
    assert!(root.path().exists());
}

#[test]
fn files_over_the_limit_are_refused_with_their_size() {
    let root = tempfile::tempdir().expect("tempdir");
    std::fs::write(root.path().join("big"), vec![0u8; 2048]).expect("big");
    let r = read(&root.path().join("big"), 1024);
    assert!(
        matches!(r, Err(DiskError::TooLarge { size: 2048, .. })),
        "{r:?}"
    );
}

#[test]
fn this_disk_is_case_sensitive() {
    let root = tempfile::tempdir().expect("tempdir");
    assert!(!case_insensitive(root.path()));
}

/// A batch large enough to be flushed by file system (and a small one, by
/// file) ends with every file in place, its bytes and mode, and no
/// temporary file left.
#[test]
fn batches_large_and_small_are_flushed_and_renamed_into_place() {
    for n in [SYNCFS_FROM - 1, SYNCFS_FROM * 2] {
        let root = tempfile::tempdir().expect("tempdir");
        let prepared: Vec<Prepared> = (0..n)
            .map(|i| {
                let body = format!("file {i}\n");
                match prepare(
                    root.path(),
                    &format!("d/f{i}.txt"),
                    body.as_bytes(),
                    0o640,
                    None,
                    1 << 20,
                ) {
                    Ok(Ok(p)) => p,
                    other => panic!("prepare: {other:?}"),
                }
            })
            .collect();
        flush(&prepared).expect("flush");
        for p in prepared {
            assert!(matches!(
                commit(p, None, 1 << 20).expect("commit"),
                Written::Done(_)
            ));
        }
        let names: Vec<String> = std::fs::read_dir(root.path().join("d"))
            .expect("dir")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), n, "{names:?}");
        assert!(names.iter().all(|n| !n.starts_with(TMP_PREFIX)));
        let path = root.path().join(format!("d/f{}.txt", n - 1));
        assert_eq!(
            std::fs::read_to_string(&path).expect("read"),
            format!("file {}\n", n - 1)
        );
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o640);
    }
}
