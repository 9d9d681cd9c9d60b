//! The store on real redb files: durability across reopen, group commit,
//! compaction, migrations, damaged and foreign files.

use std::path::Path;
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTableMetadata};
use xencode_protocol::api::SpliceEdit;
use xencode_protocol::{WorkspaceId, WorkspacePath};

use super::tables::{CHANGES, SNAPSHOTS};
use super::*;
use crate::metrics::Metrics;

fn author() -> AuthorKey {
    AuthorKey {
        peer_id: "12D3KooWtest".into(),
        public_key: pk(5),
        secret: [5; 32],
    }
}

fn open(path: &Path, compact_after: u64) -> Result<(Store, StoreThread), OpenError> {
    let options = StoreOptions {
        compact_after_changes: compact_after,
        ..StoreOptions::default()
    };
    Store::open(
        path,
        author(),
        options,
        Arc::new(Metrics::new().expect("metrics")),
    )
}

fn close(store: Store, thread: StoreThread) {
    drop(store);
    thread.join();
}

fn p(s: &str) -> WorkspacePath {
    WorkspacePath::parse(s).expect("path")
}

fn ins(pos: u64, text: &str) -> Vec<SpliceEdit> {
    vec![SpliceEdit {
        pos,
        delete: 0,
        insert: text.into(),
    }]
}

/// A workspace named "team", made at time 1: what most tests write into.
async fn team(store: &Store) -> WorkspaceId {
    store
        .create_workspace("team".into(), 1)
        .await
        .expect("create")
        .id
}

async fn text_of(store: &Store, ws: WorkspaceId, path: &str) -> String {
    let f = store.get_file(ws, p(path)).await.expect("get");
    String::from_utf8(f.bytes).expect("utf8")
}

/// Documents still held as change records are rebuilt on several threads
/// at a reopen: every one comes back, in its workspace, and writes go on
/// from where its records ended.
#[tokio::test]
async fn many_documents_not_yet_folded_reopen_whole() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("x.redb");
    let (store, thread) = open(&path, 1000).expect("open");
    let ws = team(&store).await;
    for i in 0..200 {
        let path = format!("src/m{i}.py");
        store
            .put_file(ws, p(&path), format!("n = {i}\n").into_bytes(), 2)
            .await
            .expect("put");
        store
            .splice(ws, p(&path), None, ins(0, "# two records\n"), 3)
            .await
            .expect("splice");
    }
    let before = store.workspace(ws).await.expect("show");
    close(store, thread);

    let (store, thread) = open(&path, 1000).expect("reopen");
    assert_eq!(store.workspace(ws).await.expect("show"), before);
    for i in [0, 63, 64, 127, 199] {
        let path = format!("src/m{i}.py");
        assert_eq!(
            text_of(&store, ws, &path).await,
            format!("# two records\nn = {i}\n")
        );
        store
            .splice(ws, p(&path), None, ins(0, "!"), 4)
            .await
            .expect("a write after the reopen");
    }
    close(store, thread);
    let (store, thread) = open(&path, 1000).expect("reopen again");
    assert_eq!(
        text_of(&store, ws, "src/m199.py").await,
        "!# two records\nn = 199\n"
    );
    close(store, thread);
}

#[tokio::test]
async fn everything_survives_a_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("x.redb");
    let (store, thread) = open(&path, 1000).expect("open");
    let ws = team(&store).await;
    store
        .put_file(ws, p("a.py"), b"x = 1\n".to_vec(), 2)
        .await
        .expect("put");
    store
        .put_file(ws, p("img.bin"), vec![0, 255, 7], 2)
        .await
        .expect("put");
    store
        .splice(ws, p("a.py"), None, ins(0, "# hi\n"), 3)
        .await
        .expect("splice");
    let before = store.workspace(ws).await.expect("show");
    close(store, thread);

    let (store, thread) = open(&path, 1000).expect("reopen");
    let after = store.workspace(ws).await.expect("show");
    assert_eq!(after, before, "same members, files and heads");
    assert_eq!(text_of(&store, ws, "a.py").await, "# hi\nx = 1\n");
    assert_eq!(
        store.get_file(ws, p("img.bin")).await.expect("get").bytes,
        vec![0, 255, 7]
    );
    // Writing after a reopen continues the same actor's sequence.
    store
        .splice(ws, p("a.py"), None, ins(0, "!"), 4)
        .await
        .expect("splice after reopen");
    close(store, thread);
    let (store, thread) = open(&path, 1000).expect("reopen again");
    assert_eq!(text_of(&store, ws, "a.py").await, "!# hi\nx = 1\n");
    close(store, thread);
}

#[tokio::test]
async fn concurrent_writers_are_all_acknowledged_and_kept() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("x.redb");
    let (store, thread) = open(&path, 1000).expect("open");
    let ws = team(&store).await;
    let mut tasks = Vec::new();
    for i in 0..40 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let path = p(&format!("f{i:02}.txt"));
            store.put_file(ws, path.clone(), Vec::new(), 1).await?;
            store
                .splice(ws, path, None, ins(0, &format!("file {i}")), 2)
                .await
        }));
    }
    for t in tasks {
        t.await.expect("join").expect("acknowledged");
    }
    close(store, thread);
    let (store, thread) = open(&path, 1000).expect("reopen");
    let files = store.list_files(ws).await.expect("list");
    assert_eq!(files.len(), 40);
    for i in [0, 17, 39] {
        assert_eq!(
            text_of(&store, ws, &format!("f{i:02}.txt")).await,
            format!("file {i}")
        );
    }
    close(store, thread);
}

/// Change records and snapshots in the (closed) store file.
fn records(path: &Path) -> (u64, u64) {
    let db = Database::open(path).expect("open raw");
    let read = db.begin_read().expect("read");
    let changes = read.open_table(CHANGES).expect("changes");
    let snapshots = read.open_table(SNAPSHOTS).expect("snapshots");
    (changes.len().expect("len"), snapshots.len().expect("len"))
}

/// A store (compacting after 10 records) with a workspace whose `log.txt`
/// got 25 one-character splices, each awaited: the store never idle long.
async fn log_of_25_splices(path: &Path) -> (Store, StoreThread, WorkspaceId) {
    let (store, thread) = open(path, 10).expect("open");
    let ws = team(&store).await;
    store
        .put_file(ws, p("log.txt"), Vec::new(), 1)
        .await
        .expect("put");
    for i in 0..25u64 {
        store
            .splice(ws, p("log.txt"), None, ins(i, "x"), 2)
            .await
            .expect("splice");
    }
    (store, thread, ws)
}

#[tokio::test]
async fn compaction_folds_change_records_into_a_snapshot() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("x.redb");
    let (store, thread, ws) = log_of_25_splices(&path).await;
    let heads = store.workspace(ws).await.expect("show").heads;
    idle().await;
    close(store, thread);

    let (changes, snapshots) = records(&path);
    // 26 changes to the file doc crossed the threshold twice; fewer than 10
    // records remain for it, plus the access and index documents' ones.
    assert!(snapshots >= 1, "a snapshot was written");
    assert!(changes < 12, "{changes} change records remain");

    let (store, thread) = open(&path, 10).expect("reopen");
    assert_eq!(text_of(&store, ws, "log.txt").await, "x".repeat(25));
    assert_eq!(store.workspace(ws).await.expect("show").heads, heads);
    store
        .splice(ws, p("log.txt"), None, ins(0, "y"), 3)
        .await
        .expect("splice");
    assert!(store.compact().await.expect("compact all") >= 1);
    close(store, thread);
    let (store, thread) = open(&path, 10).expect("reopen after full compaction");
    assert_eq!(
        text_of(&store, ws, "log.txt").await,
        format!("y{}", "x".repeat(25))
    );
    close(store, thread);
}

/// Long enough without commands for the store to compact what is due.
async fn idle() {
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
}

/// A store kept busy (each command arriving before it has been idle long
/// enough to compact) still folds its records once they pile up past four
/// thresholds: compaction waits for a quiet moment, but not forever.
#[tokio::test]
async fn a_busy_store_compacts_once_records_pile_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("x.redb");
    let (store, thread, ws) = log_of_25_splices(&path).await;
    close(store, thread);
    // Below four thresholds (40 records) nothing was folded while busy.
    let (changes, snapshots) = records(&path);
    assert!(
        changes >= 26,
        "{changes} records: folded while busy, too early"
    );
    let (store, thread) = open(&path, 10).expect("reopen");
    for i in 0..60u64 {
        store
            .splice(ws, p("log.txt"), None, ins(i, "y"), 3)
            .await
            .expect("splice");
    }
    close(store, thread);
    let (changes, more) = records(&path);
    assert!(more > snapshots, "nothing was folded while busy");
    assert!(changes < 50, "{changes} change records remain");
    let (store, thread) = open(&path, 10).expect("reopen");
    assert_eq!(
        text_of(&store, ws, "log.txt").await,
        format!("{}{}", "y".repeat(60), "x".repeat(25))
    );
    close(store, thread);
}

/// Many documents of a record or two each (a burst of new files) never
/// reach the per-document threshold, yet load slower than snapshots: once
/// the store holds as many unfolded records as one document may, every
/// document with records is folded when the store is next idle, without
/// waiting for the timer.
#[tokio::test]
async fn many_small_documents_are_compacted_once_their_records_add_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("x.redb");
    let (store, thread) = open(&path, 50).expect("open");
    let ws = team(&store).await;
    for i in 0..60u64 {
        store
            .put_file(
                ws,
                p(&format!("f{i:02}.txt")),
                format!("file {i}").into_bytes(),
                2,
            )
            .await
            .expect("put");
    }
    idle().await;
    close(store, thread);
    let (changes, snapshots) = records(&path);
    assert!(
        snapshots >= 40,
        "{snapshots} snapshots: the small documents were not folded"
    );
    assert!(changes < 50, "{changes} change records remain");
    let (store, thread) = open(&path, 50).expect("reopen");
    for i in [0, 33, 59] {
        assert_eq!(
            text_of(&store, ws, &format!("f{i:02}.txt")).await,
            format!("file {i}")
        );
    }
    close(store, thread);
}

#[test]
fn a_file_that_is_not_a_store_is_refused_and_left_untouched() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("x.redb");
    let garbage: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&path, &garbage).expect("write");
    let err = open(&path, 1000).expect_err("must refuse");
    assert!(matches!(err, OpenError::NotAStore { .. }), "{err}");
    assert!(err.to_string().contains("left untouched"));
    assert_eq!(hash_of(&path), blake3::hash(&garbage));
}

#[test]
fn a_damaged_store_gives_an_error_not_a_panic_or_a_reset() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("x.redb");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let (store, thread) = open(&path, 1000).expect("open");
    rt.block_on(async {
        let ws = team(&store).await;
        store
            .put_file(ws, p("a"), vec![b'a'; 20_000], 1)
            .await
            .expect("put");
    });
    close(store, thread);
    // Overwrite the middle of the file: the header is intact, the tree is not.
    let mut bytes = std::fs::read(&path).expect("read");
    let len = bytes.len();
    for b in &mut bytes[4096..len - 4096] {
        *b = 0xA5;
    }
    std::fs::write(&path, &bytes).expect("write");
    match open(&path, 1000) {
        Err(err) => assert!(
            matches!(err, OpenError::Corrupt { .. } | OpenError::NotAStore { .. }),
            "{err}"
        ),
        Ok((store, thread)) => {
            let n = rt.block_on(store.list_workspaces()).expect("list").len();
            close(store, thread);
            panic!("a damaged store opened silently with {n} workspaces");
        }
    }
}

#[test]
fn a_foreign_redb_file_is_refused_and_left_untouched() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("x.redb");
    {
        let db = Database::create(&path).expect("create");
        let tx = db.begin_write().expect("write");
        {
            let def: redb::TableDefinition<&str, u64> = redb::TableDefinition::new("someone-else");
            tx.open_table(def)
                .expect("table")
                .insert("k", 1)
                .expect("insert");
        }
        tx.commit().expect("commit");
    }
    let before = hash_of(&path);
    let err = open(&path, 1000).expect_err("must refuse");
    assert!(matches!(err, OpenError::Foreign { .. }), "{err}");
    assert_eq!(hash_of(&path), before, "the foreign file was modified");
}

#[test]
fn a_store_from_a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("x.redb");
    close_after(open(&path, 1000).expect("open"));
    {
        let db = Database::open(&path).expect("open");
        let tx = db.begin_write().expect("write");
        tx.open_table(tables::META)
            .expect("meta")
            .insert(
                "schema_version",
                (tables::SCHEMA_VERSION + 1).to_le_bytes().as_slice(),
            )
            .expect("insert");
        tx.commit().expect("commit");
    }
    let before = hash_of(&path);
    let err = open(&path, 1000).expect_err("must refuse");
    assert!(matches!(err, OpenError::NewerSchema { .. }), "{err}");
    assert_eq!(hash_of(&path), before, "the newer store was modified");
    assert!(err.to_string().contains("upgrade xencode"));
}

#[test]
fn a_store_in_use_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("x.redb");
    let first = open(&path, 1000).expect("open");
    let err = open(&path, 1000).expect_err("second open");
    assert!(matches!(err, OpenError::InUse { .. }), "{err}");
    close_after(first);
}

#[test]
fn table_names_carry_a_version() {
    for name in tables::table_names() {
        let (_, version) = name.rsplit_once('-').expect("a -N suffix");
        assert!(version.parse::<u32>().is_ok(), "{name}");
    }
}

fn hash_of(path: &Path) -> blake3::Hash {
    blake3::hash(&std::fs::read(path).expect("read"))
}

fn close_after((store, thread): (Store, StoreThread)) {
    close(store, thread);
}

fn pk(n: u8) -> [u8; 32] {
    ed25519_dalek::SigningKey::from_bytes(&[n; 32])
        .verifying_key()
        .to_bytes()
}

#[tokio::test]
async fn a_schema_1_store_is_migrated_and_keeps_its_data() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("x.redb");
    let (store, thread) = open(&path, 1000).expect("open");
    let ws = store
        .create_workspace("old".into(), 1)
        .await
        .expect("create")
        .id;
    store
        .put_file(ws, p("a.txt"), b"kept".to_vec(), 2)
        .await
        .expect("put");
    close(store, thread);
    // Turn it into what schema 1 wrote: no signatures, memberships or sync states.
    {
        let db = Database::open(&path).expect("open raw");
        let tx = db.begin_write().expect("write");
        assert!(tx.delete_table(tables::SIGNATURES).expect("delete"));
        assert!(tx.delete_table(tables::MEMBERSHIPS).expect("delete"));
        assert!(tx.delete_table(tables::SYNC_STATES).expect("delete"));
        assert!(tx.delete_table(tables::AI_CACHE).expect("delete"));
        assert!(tx.delete_table(tables::REFUSALS).expect("delete"));
        tx.open_table(tables::META)
            .expect("meta")
            .insert("schema_version", 1u32.to_le_bytes().as_slice())
            .expect("insert");
        tx.commit().expect("commit");
    }
    let (store, thread) = open(&path, 1000).expect("migrates");
    assert_eq!(text_of(&store, ws, "a.txt").await, "kept");
    store
        .put_file(ws, p("b.txt"), b"new".to_vec(), 3)
        .await
        .expect("writes after migration");
    close(store, thread);
    let db = Database::open(&path).expect("open raw");
    let read = db.begin_read().expect("read");
    let version = read
        .open_table(tables::META)
        .expect("meta")
        .get("schema_version")
        .expect("get")
        .map(|v| v.value().to_vec());
    assert_eq!(version, Some(tables::SCHEMA_VERSION.to_le_bytes().to_vec()));
    assert!(
        read.open_table(tables::AI_CACHE).is_ok(),
        "schema 3 added the AI cache"
    );
    assert!(
        read.open_table(tables::REFUSALS).is_ok(),
        "schema 5 added the refusal tallies"
    );
    assert!(
        read.open_table(tables::ADDRESS_CARDS).is_ok(),
        "schema 8 added members' address cards"
    );
    assert!(
        read.open_table(tables::SIGNATURES)
            .expect("signatures")
            .len()
            .expect("len")
            >= 1
    );
}

#[tokio::test]
async fn a_schema_5_store_gains_folder_links_that_survive_a_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("x.redb");
    let (store, thread) = open(&path, 1000).expect("open");
    let ws = store.create_workspace("w".into(), 1).await.expect("ws").id;
    close(store, thread);
    {
        let db = Database::open(&path).expect("open raw");
        let tx = db.begin_write().expect("write");
        assert!(tx.delete_table(tables::FOLDERS).expect("delete"));
        assert!(tx.delete_table(tables::FOLDER_FILES).expect("delete"));
        tx.open_table(tables::META)
            .expect("meta")
            .insert("schema_version", 5u32.to_le_bytes().as_slice())
            .expect("insert");
        tx.commit().expect("commit");
    }
    let (store, thread) = open(&path, 1000).expect("migrates");
    assert!(store.folder_links().await.expect("links").is_empty());
    let link = folders::FolderLink {
        dir: "/srv/project".into(),
        workspace: ws,
        linked_at: 7,
    };
    store.link_folder(link.clone()).await.expect("link");
    // One directory, one workspace: nested or equal directories are refused.
    for taken in ["/srv/project", "/srv/project/sub", "/srv"] {
        let again = folders::FolderLink {
            dir: taken.into(),
            ..link.clone()
        };
        let e = store.link_folder(again).await.expect_err(taken);
        assert!(e.to_string().contains("overlaps"), "{e}");
    }
    let record = folders::FileRecord {
        base: crate::workspace::folder::SyncBase {
            doc: xencode_protocol::DocId::derive(&ws, &[1; 16]),
            heads: vec![[3; 32]],
        },
        content_hash: [4; 32],
        disk: None,
    };
    store
        .folder_record(
            link.dir.clone(),
            vec![("a.txt".into(), Some(record.clone()))],
        )
        .await
        .expect("record");
    close(store, thread);
    let (store, thread) = open(&path, 1000).expect("reopen");
    assert_eq!(
        store.folder_links().await.expect("links"),
        vec![link.clone()]
    );
    let records = store
        .folder_records(link.dir.clone())
        .await
        .expect("records");
    assert_eq!(records.get("a.txt"), Some(&record));
    assert!(store.unlink_folder(link.dir.clone()).await.expect("unlink"));
    assert!(store.folder_links().await.expect("links").is_empty());
    assert!(
        store
            .folder_records(link.dir)
            .await
            .expect("records")
            .is_empty()
    );
    close(store, thread);
}

/// The `xencode_documents{state}` gauge, after the store's last command.
fn documents(metrics: &Metrics, state: &str) -> u64 {
    let want = format!("xencode_documents{{state=\"{state}\"}} ");
    metrics
        .render()
        .lines()
        .find_map(|l| l.strip_prefix(&want)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {want} in the metrics"))
}

fn open_parking(path: &Path, metrics: &Arc<Metrics>) -> (Store, StoreThread) {
    let options = StoreOptions {
        compact_after_changes: 10,
        loaded_file_docs: 4,
        ..StoreOptions::default()
    };
    Store::open(path, author(), options, Arc::clone(metrics)).expect("open")
}

/// A parking store (`open_parking`) with a workspace of files `1..=n`,
/// each path and content from `file(i)`.
async fn parking_store_with(
    path: &Path,
    metrics: &Arc<Metrics>,
    n: usize,
    file: impl Fn(usize) -> (String, Vec<u8>),
) -> (Store, StoreThread, WorkspaceId) {
    let (store, thread) = open_parking(path, metrics);
    let ws = team(&store).await;
    for i in 1..=n {
        let (name, bytes) = file(i);
        store.put_file(ws, p(&name), bytes, 2).await.expect("put");
    }
    (store, thread, ws)
}

/// Idle file documents beyond the budget are parked as their snapshots;
/// they read, list and take edits as before, and after a restart they are
/// listed without being loaded (their listing facts are stored beside the
/// snapshot).
#[tokio::test]
async fn idle_file_documents_are_parked_and_listed_after_a_restart_without_loading() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("x.redb");
    let metrics = Arc::new(Metrics::new().expect("metrics"));
    let (store, thread, ws) = parking_store_with(&path, &metrics, 20, |i| {
        (format!("f{i:02}.txt"), "é".repeat(i).into_bytes())
    })
    .await;
    idle().await;
    // A command after compaction publishes the counts.
    store.list_files(ws).await.expect("list");
    assert!(documents(&metrics, "loaded") <= 4, "the budget holds");
    assert!(documents(&metrics, "parked") >= 16);
    // Parked documents read and take edits as if loaded.
    assert_eq!(text_of(&store, ws, "f03.txt").await, "ééé");
    store
        .splice(ws, p("f03.txt"), None, ins(0, "x"), 3)
        .await
        .expect("splice");
    assert_eq!(text_of(&store, ws, "f03.txt").await, "xééé");
    // Everything folded: at the restart every file is parked from its
    // snapshot.
    store.compact().await.expect("compact all");
    let before = store.list_files(ws).await.expect("list");
    close(store, thread);

    let metrics = Arc::new(Metrics::new().expect("metrics"));
    let (store, thread) = open_parking(&path, &metrics);
    let after = store.list_files(ws).await.expect("list");
    assert_eq!(
        after, before,
        "the same listing, sizes and authors included"
    );
    assert_eq!(documents(&metrics, "loaded"), 0, "listed without loading");
    assert_eq!(documents(&metrics, "parked"), 20);
    assert_eq!(text_of(&store, ws, "f20.txt").await, "é".repeat(20));
    close(store, thread);
}

/// A store from before the facts table (or one whose cache was lost)
/// loads each parked file once for its first listing, keeps what it
/// learned, and lists without loading from then on.
#[tokio::test]
async fn a_store_without_listing_facts_learns_them_at_its_first_listing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("x.redb");
    let metrics = Arc::new(Metrics::new().expect("metrics"));
    let (store, thread, ws) =
        parking_store_with(&path, &metrics, 8, |i| (format!("f{i}.txt"), vec![b'a'; i])).await;
    store.compact().await.expect("compact all");
    let before = store.list_files(ws).await.expect("list");
    close(store, thread);
    {
        let db = Database::open(&path).expect("open");
        let tx = db.begin_write().expect("write");
        tx.open_table(super::tables::FILE_FACTS)
            .expect("facts")
            .retain(|_, _| false)
            .expect("clear");
        tx.commit().expect("commit");
    }
    for (round, loads) in [(1, "some"), (2, "none")] {
        let metrics = Arc::new(Metrics::new().expect("metrics"));
        let (store, thread) = open_parking(&path, &metrics);
        assert_eq!(store.list_files(ws).await.expect("list"), before);
        let loaded = documents(&metrics, "loaded");
        match loads {
            "some" => assert!(loaded > 0, "round {round}: facts unknown, documents loaded"),
            _ => assert_eq!(loaded, 0, "round {round}: listed from the kept facts"),
        }
        close(store, thread);
    }
}
