//! Ignore rules: built-ins, gitignore files at any depth, negation, and a
//! walk that prunes and never follows symlinks.

use super::*;

fn tree(root: &Path, files: &[(&str, &str)]) {
    for (rel, body) in files {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        fs::write(p, body).expect("write");
    }
}

#[test]
fn git_the_marker_and_editor_files_never_sync() {
    let root = tempfile::tempdir().expect("tempdir");
    let ig = Ignores::new(root.path());
    assert!(ig.ignored(".git", true));
    assert!(ig.ignored(".git/config", false));
    assert!(ig.ignored("sub/.git/HEAD", false));
    assert!(ig.ignored(".xencode/link.json", false));
    assert!(ig.ignored(".main.py.swp", false));
    assert!(ig.ignored("dir/.xencode-tmp-abc", false));
    assert!(!ig.ignored(".gitignore", false));
    assert!(!ig.ignored("src/main.py", false));
}

#[test]
fn ignore_files_apply_below_their_directory_deepest_wins() {
    let root = tempfile::tempdir().expect("tempdir");
    tree(
        root.path(),
        &[
            (".gitignore", "*.log\nbuild/\n"),
            ("keep/.ignore", "!important.log\n"),
            ("notes/.xencodeignore", "private.txt\n"),
            ("a.log", ""),
            ("keep/important.log", ""),
            ("keep/other.log", ""),
            ("build/x.o", ""),
            ("notes/private.txt", ""),
            ("notes/public.txt", ""),
            ("private.txt", ""),
        ],
    );
    std::os::unix::fs::symlink("/etc", root.path().join("etc-link")).expect("symlink");
    let mut ig = Ignores::new(root.path());
    let mut errors = Vec::new();
    let w = walk(&mut ig, "", &mut errors);
    assert!(errors.is_empty(), "{errors:?}");
    let files: Vec<&str> = w.files.keys().map(String::as_str).collect();
    assert_eq!(
        files,
        vec![
            ".gitignore",
            "keep/.ignore",
            "keep/important.log",
            "notes/.xencodeignore",
            "notes/public.txt",
            "private.txt",
        ]
    );
    assert!(
        !w.dirs.contains(&"build".to_owned()),
        "ignored directories are pruned"
    );
    assert!(ig.ignored("build/new.o", false));
    assert!(ig.ignored("notes/private.txt", false));
    assert!(!ig.ignored("private.txt", false));
}
