//! Files open in an editor (`xencode lsp`): the editor owns them.
//!
//! While a file is open, its text reaches the workspace keystroke by
//! keystroke through the language server, and teammates' edits reach the
//! editor's buffer the same way. The folder must then stay out of the way:
//! it does not write the file underneath the editor (the editor would see a
//! file changed on disk, or overwrite it on its next save), and a save by the
//! editor is not taken in again (its edits are in already; taking them in a
//! second time against an older record would double them). The language
//! server says which files are open, and what each save wrote (hash and the
//! heads that text is at); a write to an open file that is not the editor's
//! save (a third tool) is taken in as usual, after a grace period that lets
//! the editor's word arrive first.
//!
//! Sessions are leases: a language server renews its list; one that stops
//! (killed, crashed) expires and its files are the folder's again. A
//! session is per language server and workspace (one server may edit files
//! of several linked folders).
//!
//! What is open, with the cursors the servers report, is also this node's
//! presence, which its teammates see ([`Editors::presence`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use xencode_protocol::WorkspaceId;

/// How long a session's word holds without renewal.
pub const LEASE: Duration = Duration::from_secs(30);
/// Sessions at once (one per editor window).
const MAX_SESSIONS: usize = 256;
/// Files one session may hold open.
pub const MAX_OPEN: usize = 4096;
/// Saves remembered per file (the latest few).
const SAVES_PER_FILE: usize = 4;

/// A save an editor made: the bytes' blake3 hash, and the file's heads at
/// which the workspace holds that text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Save {
    pub hash: [u8; 32],
    pub heads: Vec<[u8; 32]>,
}

/// Where an editor's cursor is: an offset in Unicode scalar values into the
/// file's text at `heads`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub offset: u64,
    pub heads: Vec<[u8; 32]>,
}

#[derive(Debug)]
struct Session {
    open: BTreeSet<String>,
    cursors: BTreeMap<String, Cursor>,
    /// When the session last spoke (the freshest cursor wins).
    renewed: Instant,
    expires: Instant,
}

type SessionKey = (String, WorkspaceId);

#[derive(Debug, Default)]
struct Inner {
    sessions: HashMap<SessionKey, Session>,
    saves: BTreeMap<(WorkspaceId, String), Vec<Save>>,
}

/// Which files editors hold open, and what they saved.
#[derive(Debug, Default)]
pub struct Editors {
    inner: Mutex<Inner>,
}

/// Why a session's word was refused.
#[derive(Debug, thiserror::Error)]
pub enum EditorsError {
    #[error("{0} files open in one session; the limit is {MAX_OPEN}")]
    TooManyFiles(usize),
    #[error("{MAX_SESSIONS} editor sessions are open; close some editors")]
    TooManySessions,
}

impl Editors {
    /// Session `id` holds `open` of `workspace` open (replacing what it said
    /// before), with its cursor in some of them, and wrote `saves`. Returns
    /// the files (of any workspace) no session holds open any more.
    pub fn update(
        &self,
        id: &str,
        workspace: WorkspaceId,
        open: BTreeSet<String>,
        saves: Vec<(String, Save)>,
        cursors: Vec<(String, Cursor)>,
    ) -> Result<Vec<(WorkspaceId, String)>, EditorsError> {
        if open.len() > MAX_OPEN {
            return Err(EditorsError::TooManyFiles(open.len()));
        }
        let now = Instant::now();
        let mut inner = self.lock();
        let closed = expire(&mut inner, now);
        let key = (id.to_owned(), workspace);
        if !inner.sessions.contains_key(&key) && inner.sessions.len() >= MAX_SESSIONS {
            return Err(EditorsError::TooManySessions);
        }
        let cursors = cursors
            .into_iter()
            .filter(|(p, _)| open.contains(p))
            .collect();
        for (path, save) in saves {
            let list = inner.saves.entry((workspace, path)).or_default();
            list.retain(|s| s.hash != save.hash);
            list.push(save);
            if list.len() > SAVES_PER_FILE {
                list.remove(0);
            }
        }
        let before = inner.sessions.insert(
            key,
            Session {
                open,
                cursors,
                renewed: now,
                expires: now + LEASE,
            },
        );
        let mut released = closed;
        if let Some(s) = before {
            released.extend(s.open.into_iter().map(|p| (workspace, p)));
        }
        Ok(still_closed(&mut inner, released))
    }

    /// This node's presence in `workspace`: each file some live session
    /// holds open, with the cursor of the session that spoke last.
    pub fn presence(&self, workspace: WorkspaceId) -> Vec<(String, Option<Cursor>)> {
        let now = Instant::now();
        let inner = self.lock();
        let mut files: BTreeMap<&String, (Option<&Cursor>, Instant)> = BTreeMap::new();
        for ((_, ws), s) in &inner.sessions {
            if *ws != workspace || s.expires <= now {
                continue;
            }
            for path in &s.open {
                let entry = files.entry(path).or_insert((None, s.renewed));
                if let Some(c) = s.cursors.get(path)
                    && (entry.0.is_none() || s.renewed >= entry.1)
                {
                    *entry = (Some(c), s.renewed);
                }
            }
        }
        files
            .into_iter()
            .map(|(p, (c, _))| (p.clone(), c.cloned()))
            .collect()
    }

    /// Sessions whose lease ran out; the files no session holds open any
    /// more because of it.
    pub fn expire(&self) -> Vec<(WorkspaceId, String)> {
        let mut inner = self.lock();
        let closed = expire(&mut inner, Instant::now());
        still_closed(&mut inner, closed)
    }

    /// The files of `workspace` some live session holds open.
    pub fn open_in(&self, workspace: WorkspaceId) -> BTreeSet<String> {
        let now = Instant::now();
        let inner = self.lock();
        inner
            .sessions
            .iter()
            .filter(|((_, ws), s)| *ws == workspace && s.expires > now)
            .flat_map(|(_, s)| s.open.iter().cloned())
            .collect()
    }

    /// The heads of an editor's save of `path` with these bytes, if one was
    /// reported.
    pub fn saved(&self, workspace: WorkspaceId, path: &str, hash: &[u8; 32]) -> Option<Save> {
        let inner = self.lock();
        inner
            .saves
            .get(&(workspace, path.to_owned()))
            .and_then(|l| l.iter().rev().find(|s| s.hash == *hash))
            .cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic elsewhere while holding the lock leaves plain data behind.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn expire(inner: &mut Inner, now: Instant) -> Vec<(WorkspaceId, String)> {
    let gone: Vec<SessionKey> = inner
        .sessions
        .iter()
        .filter(|(_, s)| s.expires <= now)
        .map(|(key, _)| key.clone())
        .collect();
    let mut closed = Vec::new();
    for key in gone {
        if let Some(s) = inner.sessions.remove(&key) {
            closed.extend(s.open.into_iter().map(|p| (key.1, p)));
        }
    }
    closed
}

/// Of `released`, the files no session holds open; their saves are
/// forgotten.
fn still_closed(
    inner: &mut Inner,
    released: Vec<(WorkspaceId, String)>,
) -> Vec<(WorkspaceId, String)> {
    let mut out: Vec<(WorkspaceId, String)> = released
        .into_iter()
        .filter(|(ws, p)| {
            !inner
                .sessions
                .iter()
                .any(|((_, w), s)| w == ws && s.open.contains(p))
        })
        .collect();
    out.sort();
    out.dedup();
    for key in &out {
        inner.saves.remove(key);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(paths: &[&str]) -> BTreeSet<String> {
        paths.iter().map(|p| (*p).to_owned()).collect()
    }

    #[test]
    fn a_file_stays_open_while_any_session_holds_it() {
        let e = Editors::default();
        let ws = WorkspaceId::from_bytes([1; 16]);
        let save = Save {
            hash: [7; 32],
            heads: vec![[8; 32]],
        };
        let closed = e
            .update(
                "a",
                ws,
                set(&["x.py", "y.py"]),
                vec![("x.py".into(), save.clone())],
                vec![],
            )
            .expect("a");
        assert!(closed.is_empty());
        e.update("b", ws, set(&["x.py"]), vec![], vec![])
            .expect("b");
        assert_eq!(e.open_in(ws), set(&["x.py", "y.py"]));
        assert_eq!(e.saved(ws, "x.py", &[7; 32]), Some(save));
        assert_eq!(e.saved(ws, "x.py", &[9; 32]), None);
        // A closes both: y.py is closed, x.py still open in B.
        let closed = e.update("a", ws, set(&[]), vec![], vec![]).expect("a");
        assert_eq!(closed, vec![(ws, "y.py".to_owned())]);
        assert!(e.saved(ws, "x.py", &[7; 32]).is_some());
        let closed = e.update("b", ws, set(&[]), vec![], vec![]).expect("b");
        assert_eq!(closed, vec![(ws, "x.py".to_owned())]);
        assert!(e.saved(ws, "x.py", &[7; 32]).is_none(), "forgotten");
        assert!(e.open_in(ws).is_empty());
    }

    #[test]
    fn limits_hold() {
        let e = Editors::default();
        let ws = WorkspaceId::from_bytes([1; 16]);
        let many: BTreeSet<String> = (0..=MAX_OPEN).map(|i| format!("f{i}")).collect();
        assert!(matches!(
            e.update("a", ws, many, vec![], vec![]),
            Err(EditorsError::TooManyFiles(_))
        ));
        for i in 0..MAX_SESSIONS {
            e.update(&format!("s{i}"), ws, set(&[]), vec![], vec![])
                .expect("room");
        }
        assert!(matches!(
            e.update("one-more", ws, set(&[]), vec![], vec![]),
            Err(EditorsError::TooManySessions)
        ));
    }

    #[test]
    fn one_server_keeps_files_of_two_workspaces_and_presence_takes_the_latest_cursor() {
        let e = Editors::default();
        let (w1, w2) = (
            WorkspaceId::from_bytes([1; 16]),
            WorkspaceId::from_bytes([2; 16]),
        );
        let at = |offset| Cursor {
            offset,
            heads: vec![[3; 32]],
        };
        e.update(
            "lsp",
            w1,
            set(&["a.py"]),
            vec![],
            vec![("a.py".into(), at(4))],
        )
        .expect("w1");
        e.update("lsp", w2, set(&["b.py"]), vec![], vec![])
            .expect("w2");
        assert_eq!(e.open_in(w1), set(&["a.py"]), "w2's word kept w1's");
        assert_eq!(e.presence(w1), vec![("a.py".to_owned(), Some(at(4)))]);
        assert_eq!(e.presence(w2), vec![("b.py".to_owned(), None)]);
        // A second editor on the same file moves the cursor; a cursor in a
        // file a session does not hold open is ignored.
        std::thread::sleep(Duration::from_millis(2));
        e.update(
            "other",
            w1,
            set(&["a.py"]),
            vec![],
            vec![("a.py".into(), at(9)), ("zzz.py".into(), at(1))],
        )
        .expect("other");
        assert_eq!(e.presence(w1), vec![("a.py".to_owned(), Some(at(9)))]);
    }
}
