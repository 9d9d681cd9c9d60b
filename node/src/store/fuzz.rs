//! Fuzzing entry points for the sync receive path: the real engine over the
//! store's real [`HostView`] (documents in memory, no redb), with a member
//! who is admitted as a developer and sends what the fuzzer makes. Used by
//! the targets in `fuzz/` and by the test that replays their corpora.
//!
//! The invariants checked after every input: nothing panics outside the
//! engine's guard, and every document still saves and loads back with the
//! same heads (a document that does not would be lost at the next restart).

use std::collections::BTreeMap;
use std::sync::Arc;

use automerge::AutoCommit;
use ed25519_dalek::SigningKey;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use xencode_protocol::api::{Role, SpliceEdit};
use xencode_protocol::capability;
use xencode_protocol::envelope::SignedHead;
use xencode_protocol::ids::{actor_id, peer_id_of};
use xencode_protocol::sync::{Engine, Input, Limits, Output};
use xencode_protocol::wire::Frame;
use xencode_protocol::{DocId, PeerId, WorkspaceId, WorkspacePath};

use super::host::HostView;
use super::tables::Membership;
use super::tokens::TokenVerifier;
use crate::workspace::{Author, Workspace, access_doc_id, index_doc_id};

const OWNER: [u8; 32] = [1; 32];
const MEMBER: [u8; 32] = [2; 32];
const WS: [u8; 16] = [9; 16];
const NOW: u64 = 1_700_000_000_000;
const FILE: &str = "src/app.py";

fn author(secret: &[u8; 32]) -> (Author, SigningKey) {
    let key = SigningKey::from_bytes(secret);
    let public = key.verifying_key().to_bytes();
    let peer_id = peer_id_of(&public).map_or_else(|_| String::new(), |p| p.to_string());
    let author = Author {
        peer_id,
        public_key: public,
        actor: automerge::ActorId::from(actor_id(&public, 0).as_slice()),
    };
    (author, key)
}

/// The workspace as its owner built it: the member added with `role` and
/// one text file. Deterministic, so the member's copy is the same history.
fn workspace_with(role: Role) -> Option<(Workspace, Vec<u8>)> {
    let (owner, _) = author(&OWNER);
    let (member, _) = author(&MEMBER);
    let id = WorkspaceId::from_bytes(WS);
    let (mut ws, _) = Workspace::create(id, &[3; 16], "fuzz", &owner, NOW).ok()?;
    let member_peer: PeerId = member.peer_id.parse().ok()?;
    let token = capability::mint(
        &OWNER,
        &id,
        &member_peer,
        role,
        None,
        &mut ChaCha20Rng::seed_from_u64(7),
    )
    .ok()?;
    let grant = capability::authorize(
        &token,
        &owner.public_key,
        &id,
        &member_peer,
        &Default::default(),
        NOW,
    )
    .ok()?;
    ws.add_member(
        &member.peer_id,
        role,
        &grant.token_id,
        grant.expires_ms,
        &owner,
        NOW,
    )
    .ok()?;
    let path = WorkspacePath::parse(FILE).ok()?;
    ws.put_file(
        &path,
        b"def main():\n    return 1\n",
        &owner,
        NOW,
        [4; 16],
        usize::MAX,
    )
    .ok()?;
    Some((ws, token))
}

fn workspace() -> Option<(Workspace, Vec<u8>)> {
    workspace_with(Role::Developer)
}

/// Which document an input's changes go to, from its first byte.
fn target_doc(ws: &Workspace, selector: u8) -> DocId {
    match selector % 4 {
        0 => index_doc_id(&ws.id),
        1 => ws.file_doc_ids().first().copied().unwrap_or(ws.index.id),
        2 => access_doc_id(&ws.id),
        _ => DocId::from_bytes([selector; 16]),
    }
}

/// Splits `[selector][u16 LE length][bytes]…` into the selector and chunks.
pub fn split(data: &[u8]) -> (u8, Vec<Vec<u8>>) {
    let Some((&selector, mut rest)) = data.split_first() else {
        return (0, Vec::new());
    };
    let mut chunks = Vec::new();
    while rest.len() >= 2 && chunks.len() < 64 {
        let len = usize::from(u16::from_le_bytes([rest[0], rest[1]]));
        let end = (2 + len).min(rest.len());
        chunks.push(rest[2..end].to_vec());
        rest = &rest[end..];
    }
    (selector, chunks)
}

/// The inverse of [`split`], for writing seeds.
pub fn join(selector: u8, chunks: &[Vec<u8>]) -> Vec<u8> {
    let mut out = vec![selector];
    for c in chunks {
        let len = u16::try_from(c.len()).unwrap_or(u16::MAX);
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&c[..usize::from(len)]);
    }
    out
}

#[derive(Clone)]
struct Harness {
    workspaces: BTreeMap<WorkspaceId, Workspace>,
    memberships: BTreeMap<WorkspaceId, Membership>,
    owner: Author,
    decisions: xencode_protocol::policy::WriteRule,
    tokens: Arc<TokenVerifier>,
    engine: Engine,
    member: PeerId,
    key: SigningKey,
    ws: WorkspaceId,
}

thread_local! {
    /// Built once per thread (minting and checking the token is most of the
    /// cost); each input starts from a copy.
    static TEMPLATE: Option<Harness> = Harness::build(Role::Developer);
    /// The same with the member a viewer.
    static VIEWER: Option<Harness> = Harness::build(Role::Viewer);
}

impl Harness {
    /// A node holding the workspace with the member's session admitted.
    fn new() -> Option<Self> {
        TEMPLATE.with(Clone::clone)
    }

    /// The same with the member admitted as a viewer.
    fn viewer() -> Option<Self> {
        VIEWER.with(Clone::clone)
    }

    /// Every document's heads, by document (documents without changes left
    /// out: an empty document is no content).
    fn heads(&mut self) -> BTreeMap<DocId, Vec<automerge::ChangeHash>> {
        let mut out = BTreeMap::new();
        for ws in self.workspaces.values_mut() {
            for doc in ws.docs_mut() {
                let heads = doc.am.get_heads();
                if !heads.is_empty() {
                    out.insert(doc.id, heads);
                }
            }
        }
        out
    }

    fn build(role: Role) -> Option<Self> {
        let (ws, token) = workspace_with(role)?;
        let (owner, _) = author(&OWNER);
        let (member, key) = author(&MEMBER);
        let id = ws.id;
        let mut h = Self {
            workspaces: BTreeMap::from([(id, ws)]),
            memberships: BTreeMap::new(),
            owner,
            decisions: Default::default(),
            tokens: Arc::new(TokenVerifier::default()),
            // As the node runs it: applies wait for `settle`.
            engine: Engine::batched(Limits::default()),
            member: member.peer_id.parse().ok()?,
            key,
            ws: id,
        };
        let root = h.owner.public_key;
        h.tokens.set_roots([(id, root)].into());
        h.tokens.verify(&root, &token, NOW).ok()?;
        let peer = h.member;
        h.input(Input::Connected { peer });
        h.input(Input::Received {
            peer,
            frame: Frame::Open {
                workspace: id,
                token,
            },
        });
        Some(h)
    }

    fn input(&mut self, input: Input) {
        let mut host = HostView {
            workspaces: &mut self.workspaces,
            memberships: &self.memberships,
            db: None,
            author: &self.owner,
            write_rule: &mut self.decisions,
            tokens: &self.tokens,
        };
        self.engine.handle(&mut host, input, NOW);
        self.engine.settle(&mut host, NOW);
        while let Some(out) = self.engine.poll_output() {
            // What the driver would persist or send is already applied in
            // memory; a disconnect ends the member's part.
            if let Output::Disconnect { .. } = out {
                break;
            }
        }
    }

    fn sync(&mut self, doc: DocId, message: Option<Vec<u8>>, changes: Vec<Vec<u8>>) {
        let signatures = changes
            .iter()
            // The attacker's side: decoding can panic on crafted bytes (the
            // node's own decoding is guarded).
            .filter_map(|raw| {
                std::panic::catch_unwind(|| automerge::Change::from_bytes(raw.clone()))
                    .ok()?
                    .ok()
            })
            .map(|c| SignedHead::sign(&self.key, 0, &self.ws, &doc, c.hash().0))
            .collect();
        let peer = self.member;
        self.input(Input::Received {
            peer,
            frame: Frame::Sync {
                workspace: self.ws,
                doc,
                message,
                changes,
                signatures,
                sent_ms: NOW,
            },
        });
        self.input(Input::Tick);
    }

    /// A document chunk (`Frame::Chunk`) from the member, with the
    /// member's signature on each of its heads (the attacker signs what it
    /// likes; the node must still check every change the chunk adds).
    fn chunk(&mut self, doc: DocId, chunk: Vec<u8>) {
        let signatures = std::panic::catch_unwind(|| AutoCommit::load(&chunk))
            .ok()
            .and_then(Result::ok)
            .map(|mut am| {
                am.get_heads()
                    .iter()
                    .take(64)
                    .map(|h| SignedHead::sign(&self.key, 0, &self.ws, &doc, h.0))
                    .collect()
            })
            .unwrap_or_default();
        let peer = self.member;
        self.input(Input::Received {
            peer,
            frame: Frame::Chunk {
                workspace: self.ws,
                doc,
                message: None,
                chunk,
                signatures,
                sent_ms: NOW,
            },
        });
        self.input(Input::Tick);
    }

    /// Every document must still load the way the node loads it at the
    /// next start: from its change records, to the same heads. A snapshot
    /// is only written if it loads back (`verified_snapshot`).
    fn check(&mut self) {
        for ws in self.workspaces.values_mut() {
            for doc in ws.docs_mut() {
                let heads = doc.am.get_heads();
                let records: Vec<automerge::Change> = doc.am.get_changes(&[]);
                let mut fresh = AutoCommit::new();
                if let Err(e) = xencode_protocol::apply::apply_changes(&mut fresh, records) {
                    panic!("the change records no longer load: {e}");
                }
                assert_eq!(fresh.get_heads(), heads, "heads differ after reload");
                if let Some(saved) = crate::workspace::parking::verified_snapshot(&mut doc.am) {
                    assert!(AutoCommit::load(&saved).is_ok());
                }
            }
        }
    }
}

/// Raw Automerge changes from an admitted developer, each signed by it (the
/// fuzzer plays a malicious member, so signatures pass and the changes reach
/// the sequence checks and `apply_changes`). Input: see [`split`]. The same
/// bytes are also offered as a document to import (`file import`), whose
/// reader must refuse or read them without panicking, within its limits.
pub fn automerge_changes(data: &[u8]) {
    use crate::workspace::interop;
    let limits = interop::ImportLimits {
        max_inflated: 1 << 20,
        max_changes: 1_000,
        max_versions: 100,
        max_text_bytes: 1 << 16,
    };
    if let Ok(foreign) = interop::read(data, "text", limits) {
        assert!(foreign.versions.len() <= limits.max_versions);
        assert!(foreign.text.len() <= limits.max_text_bytes);
    }
    let Some(mut h) = Harness::new() else { return };
    let (selector, chunks) = split(data);
    let doc = h
        .workspaces
        .get(&h.ws)
        .map_or(DocId::from_bytes([0; 16]), |w| target_doc(w, selector));
    // Selector bit 0x40: the bytes as one document chunk instead.
    if selector & 0x40 != 0 {
        h.chunk(doc, chunks.concat());
    } else {
        h.sync(doc, None, chunks);
    }
    h.check();
}

/// Whether the input, sent as a document chunk, changed the document it
/// targets (for the test that checks the chunk seed reaches the path that
/// replaces a document whole).
pub fn chunk_applies(data: &[u8]) -> bool {
    let Some(mut h) = Harness::new() else {
        return false;
    };
    let (selector, chunks) = split(data);
    let Some(doc) = h.workspaces.get(&h.ws).map(|w| target_doc(w, selector)) else {
        return false;
    };
    let before = h.heads();
    h.chunk(doc, chunks.concat());
    h.check();
    h.heads() != before
}

/// How many of the input's changes the node applied (for the test that
/// checks seeds reach `apply_changes`).
pub fn applied_heads(data: &[u8]) -> usize {
    let Some(mut h) = Harness::new() else {
        return 0;
    };
    let (selector, chunks) = split(data);
    let Some(doc) = h.workspaces.get(&h.ws).map(|w| target_doc(w, selector)) else {
        return 0;
    };
    let hashes: Vec<_> = chunks
        .iter()
        .filter_map(|c| {
            std::panic::catch_unwind(|| automerge::Change::from_bytes(c.clone()))
                .ok()?
                .ok()
        })
        .map(|c| c.hash())
        .collect();
    h.sync(doc, None, chunks);
    let Some(w) = h.workspaces.get_mut(&h.ws) else {
        return 0;
    };
    w.docs_mut()
        .filter(|d| d.id == doc)
        .map(|d| {
            hashes
                .iter()
                .filter(|hash| d.am.get_change_by_hash(hash).is_some())
                .count()
        })
        .sum()
}

/// An Automerge sync message (have/need/bloom) from an admitted member,
/// then changes if the input has more chunks. Input: see [`split`].
pub fn sync_message(data: &[u8]) {
    let Some(mut h) = Harness::new() else { return };
    let (selector, mut chunks) = split(data);
    if chunks.is_empty() {
        return;
    }
    let message = chunks.remove(0);
    let doc = h
        .workspaces
        .get(&h.ws)
        .map_or(DocId::from_bytes([0; 16]), |w| target_doc(w, selector));
    h.sync(doc, Some(message), chunks);
    h.check();
}

/// The whole receive path under a viewer's session: the input's first
/// chunk is a sync message, the rest changes, all signed by the viewer and
/// sent beside the message; when the selector's high bit is set they also
/// go inside the message's own `changes` field (the way issue 12's viewer
/// wrote to the access document). A viewer may write nothing, so no
/// document may change at all. Input: see [`split`].
pub fn viewer_frames(data: &[u8]) {
    let Some(mut h) = Harness::viewer() else {
        return;
    };
    let (selector, mut chunks) = split(data);
    let Some(doc) = h.workspaces.get(&h.ws).map(|w| target_doc(w, selector)) else {
        return;
    };
    let before = h.heads();
    let message = (!chunks.is_empty()).then(|| chunks.remove(0));
    let message = if selector & 0x80 != 0 {
        use automerge::sync::{ChunkList, Message, SyncDoc};
        let mut msg = message
            .as_deref()
            .and_then(|m| std::panic::catch_unwind(|| Message::decode(m)).ok()?.ok())
            .or_else(|| {
                AutoCommit::new()
                    .sync()
                    .generate_sync_message(&mut automerge::sync::State::new())
            });
        if let Some(m) = msg.as_mut() {
            m.changes = ChunkList::from(chunks.clone());
        }
        msg.map(Message::encode).or(message)
    } else {
        message
    };
    if selector & 0x40 != 0 {
        h.chunk(doc, message.into_iter().chain(chunks).flatten().collect());
    } else {
        h.sync(doc, message, chunks);
    }
    assert_eq!(h.heads(), before, "a viewer's frame changed a document");
    h.check();
}

/// Seeds of real inputs: the member's genuine edits to the file and the
/// index, and the sync messages a real peer sends.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let mut out = Vec::new();
    let Some((mut mine, _)) = workspace() else {
        return out;
    };
    let (member, _) = author(&MEMBER);
    for doc in mine.docs_mut() {
        doc.am.set_actor(member.actor.clone());
    }
    let Ok(path) = WorkspacePath::parse(FILE) else {
        return out;
    };
    let mut file_changes = Vec::new();
    for (i, (pos, insert)) in [(0u64, "# header\n"), (4, "x"), (9, "import os\n")]
        .into_iter()
        .enumerate()
    {
        let edit = SpliceEdit {
            pos,
            delete: u64::from(i == 1),
            insert: insert.into(),
        };
        if let Ok((_, _, changes)) = mine.splice(&path, &[edit], &member, NOW + i as u64) {
            file_changes.extend(changes.into_iter().map(|c| c.change.raw_bytes().to_vec()));
        }
    }
    out.push(("automerge_changes", join(1, &file_changes)));
    if let Some(first) = file_changes.first() {
        out.push(("automerge_changes", join(1, std::slice::from_ref(first))));
        // Out of order: the second change before the first.
        let reversed: Vec<Vec<u8>> = file_changes.iter().rev().cloned().collect();
        out.push(("automerge_changes", join(1, &reversed)));
    }
    let other = WorkspacePath::parse("notes.md").ok();
    if let Some(p) = other
        && let Ok((_, changes)) =
            mine.put_file(&p, b"# notes\n", &member, NOW + 9, [5; 16], usize::MAX)
    {
        let raw: Vec<Vec<u8>> = changes
            .iter()
            .map(|c| c.change.raw_bytes().to_vec())
            .collect();
        out.push(("automerge_changes", join(0, &raw)));
        out.push(("automerge_changes", join(3, &raw)));
    }
    // The member's file document whole, as a catch-up chunk (0x40); the
    // same from a viewer must change nothing.
    if let Some(doc) = mine.files.all_mut().next() {
        let saved = doc.am.save();
        out.push((
            "automerge_changes",
            join(0x41, std::slice::from_ref(&saved)),
        ));
        out.push(("viewer_frames", join(0x41, &[saved])));
    }
    // Sync messages as a peer generates them, against this node's file doc.
    let mut state = automerge::sync::State::new();
    if let Some(doc) = mine.files.all_mut().next() {
        use automerge::sync::SyncDoc;
        if let Some(msg) = doc.am.sync().generate_sync_message(&mut state) {
            out.push(("sync_message", join(1, &[msg.clone().encode()])));
            out.push((
                "sync_message",
                join(
                    1,
                    &[
                        msg.encode(),
                        file_changes.first().cloned().unwrap_or_default(),
                    ],
                ),
            ));
        }
    }
    // A viewer's genuine-looking writes: an edit to the file and a change
    // promoting itself in the access document, beside and inside a sync
    // message (selector 1 | 0x80: file, inside; 2 | 0x80: access, inside).
    let first = {
        use automerge::sync::SyncDoc;
        AutoCommit::new()
            .sync()
            .generate_sync_message(&mut automerge::sync::State::new())
    };
    if let Some(msg) = first {
        let msg = msg.encode();
        let mut chunks = vec![msg.clone()];
        chunks.extend(file_changes.iter().cloned());
        out.push(("viewer_frames", join(1, &chunks)));
        out.push(("viewer_frames", join(1 | 0x80, &chunks)));
        let mut access = mine.access.am.fork();
        access.set_actor(member.actor.clone());
        if let Ok(Some((_, members))) = automerge::ReadDoc::get(&access, automerge::ROOT, "members")
            && let Ok(entry) = automerge::transaction::Transactable::put_object(
                &mut access,
                &members,
                member.peer_id.as_str(),
                automerge::ObjType::Map,
            )
            && automerge::transaction::Transactable::put(&mut access, &entry, "role", "admin")
                .is_ok()
        {
            access.commit();
            if let Some(c) = access.get_last_local_change() {
                let chunks = vec![msg, c.raw_bytes().to_vec()];
                out.push(("viewer_frames", join(2, &chunks)));
                out.push(("viewer_frames", join(2 | 0x80, &chunks)));
            }
        }
    }
    let mut fresh = automerge::sync::State::new();
    let mut empty = AutoCommit::new();
    {
        use automerge::sync::SyncDoc;
        if let Some(msg) = empty.sync().generate_sync_message(&mut fresh) {
            out.push(("sync_message", join(0, &[msg.encode()])));
        }
    }
    out
}
