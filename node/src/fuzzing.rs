//! Entry points for the fuzz targets in `fuzz/`: one per decoder of peer or
//! user input. Each takes arbitrary bytes, runs the node's real decoding and
//! validation code on them, and panics only when an invariant breaks (a
//! decoded value that does not encode back to itself, a document that no
//! longer loads). The same functions replay the committed seed corpora and
//! the regression inputs in an ordinary test (`fuzzing/tests.rs`).
//!
//! Built only with the `fuzzing` feature (which `fuzz/` turns on) or for
//! the node's unit tests: the shipped binary holds no fuzz entry point.

use std::collections::BTreeSet;
use std::path::Path;

use ed25519_dalek::SigningKey;
use futures::executor::block_on;
use libp2p::StreamProtocol;
use libp2p::request_response::Codec;
use xencode_protocol::analysis::AnalyzeRequest;
use xencode_protocol::api::{
    CreateWorkspace, InviteRequest, JoinRequest, RevokeRequest, Role, SpliceEdit, SpliceRequest,
    validate_workspace_name,
};
use xencode_protocol::envelope::{SignedHead, decode_citation};
use xencode_protocol::ids::peer_id_of;
use xencode_protocol::invite::Invitation;
use xencode_protocol::wire::{self, Announcement, Frame};
use xencode_protocol::{DocId, PeerId, WorkspaceId, WorkspacePath, capability};

use crate::config::Config;
use crate::net::codec::{FrameCodec, RawFrame};
use crate::workspace::{Author, Workspace};

pub use crate::store::fuzz::{automerge_changes, sync_message, viewer_frames};

/// A fuzz target's entry point.
pub type Target = fn(&[u8]);

/// Every target, by the name of its file in `fuzz/fuzz_targets/`.
pub const TARGETS: &[(&str, Target)] = &[
    ("wire_frame", wire_frame),
    ("signed_envelope", signed_envelope),
    ("automerge_changes", automerge_changes),
    ("sync_message", sync_message),
    ("viewer_frames", viewer_frames),
    ("capability_token", capability_token),
    ("config_file", config_file),
    ("api_json", api_json),
];

/// For the fuzz binaries: panics that the node catches and treats as a
/// refused message (Automerge on crafted input, see `sync::guarded`) are
/// not crashes, so they are not printed. A panic that escapes a target
/// still aborts the run (libFuzzer's wrapper does that) and is reported.
pub fn quiet_panics() {
    std::panic::set_hook(Box::new(|_| {}));
}

/// Runs target `name` on `data`; false if there is no such target.
pub fn run(name: &str, data: &[u8]) -> bool {
    match TARGETS.iter().find(|(n, _)| *n == name) {
        Some((_, f)) => {
            f(data);
            true
        }
        None => false,
    }
}

/// A frame as it arrives on `/xencode/sync/2`: the stream codec (length
/// prefix, bounds), then `wire::decode`; a decoded frame must encode back to
/// the same frame. Announcements (gossip payloads) too.
pub fn wire_frame(data: &[u8]) {
    let protocol = StreamProtocol::new(wire::SYNC_PROTOCOL);
    let mut stream = futures::io::Cursor::new(data);
    if let Ok(RawFrame::Frames(frames)) = block_on(FrameCodec.read_request(&protocol, &mut stream))
    {
        for bytes in frames {
            roundtrip(&bytes);
        }
    }
    roundtrip(data);
    if let Ok(a) = wire::decode_announcement(data) {
        let again = wire::decode_announcement(&wire::encode_announcement(&a));
        assert_eq!(again, Ok(Announcement { digest: a.digest }));
    }
}

fn roundtrip(bytes: &[u8]) {
    if let Ok(frame) = wire::decode(bytes) {
        if let Frame::Addresses { cards, .. } = &frame {
            for card in cards {
                let _ = card.verify(1_800_000_000_000);
            }
        }
        match wire::encode(&frame) {
            Ok(again) => assert_eq!(wire::decode(&again).ok(), Some(frame)),
            Err(e) => panic!("a decoded frame does not encode: {e}"),
        }
    }
}

/// A signed head (the envelope that vouches for a change): decoded with
/// postcard as it travels in frames, verified against a workspace and
/// document; and the citation in a change's message.
pub fn signed_envelope(data: &[u8]) {
    let ws = WorkspaceId::from_bytes([1; 16]);
    let doc = DocId::from_bytes([2; 16]);
    if let Ok(head) = postcard::from_bytes::<SignedHead>(data) {
        let _ = head.verify(&ws, &doc);
        let _ = head.actor();
    }
    if let Ok(heads) = postcard::from_bytes::<Vec<SignedHead>>(data) {
        for h in heads.iter().take(64) {
            let _ = h.verify(&ws, &doc);
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = decode_citation(Some(text));
    }
}

const ROOT_SECRET: [u8; 32] = [1; 32];

fn root() -> ([u8; 32], WorkspaceId, PeerId) {
    let public = SigningKey::from_bytes(&ROOT_SECRET)
        .verifying_key()
        .to_bytes();
    let ws = WorkspaceId::derive(&public, &[3; 16]);
    let holder = peer_id_of(&SigningKey::from_bytes(&[2; 32]).verifying_key().to_bytes())
        .unwrap_or_else(|_| PeerId::random());
    (public, ws, holder)
}

/// A capability token as a peer presents it in `Open`/`Accept`, checked
/// against the workspace's root key; and an invitation as a user pastes it.
pub fn capability_token(data: &[u8]) {
    let (public, ws, holder) = root();
    let now = 1_700_000_000_000;
    if let Ok(grant) = capability::authorize(data, &public, &ws, &holder, &BTreeSet::new(), now) {
        // Only a token the root signed can be accepted; the fuzzer cannot
        // forge one, so a grant here means the seed's genuine token.
        assert!(grant.role.allows(capability::Right::Read));
    }
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(inv) = Invitation::decode(text)
    {
        let _ = capability::authorize(
            &inv.token,
            &inv.root_key,
            &inv.workspace,
            &holder,
            &BTreeSet::new(),
            now,
        );
    }
}

/// `config.toml`: parsed, validated, and written back; what validates must
/// parse again to the same config.
pub fn config_file(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("config.toml");
    if let Ok(config) = Config::parse(text, path)
        && config.validate().is_ok()
    {
        let again = Config::parse(&config.to_toml(), path);
        assert_eq!(again.ok(), Some(config), "config does not round-trip");
    }
}

/// The JSON bodies the API accepts, decoded as the handlers decode them
/// (first byte picks the route), then validated; a splice is applied to a
/// real workspace in memory.
pub fn api_json(data: &[u8]) {
    let Some((&route, body)) = data.split_first() else {
        return;
    };
    match route % 6 {
        0 => {
            if let Ok(req) = serde_json::from_slice::<SpliceRequest>(body)
                && let Ok((path, edits)) = req.into_edits()
            {
                splice_in_memory(&path, &edits);
            }
        }
        1 => {
            if let Ok(req) = serde_json::from_slice::<CreateWorkspace>(body)
                && validate_workspace_name(&req.name).is_ok()
            {
                let _ = Workspace::create(
                    WorkspaceId::from_bytes([9; 16]),
                    &[0; 16],
                    &req.name,
                    &author(),
                    0,
                );
            }
        }
        2 => {
            if let Ok(req) = serde_json::from_slice::<InviteRequest>(body) {
                let _ = req.peer_id.parse::<PeerId>();
                let _ = req.expires_secs.map(|s| s.saturating_mul(1000));
            }
        }
        3 => {
            if let Ok(req) = serde_json::from_slice::<JoinRequest>(body) {
                let _ = Invitation::decode(&req.token);
            }
        }
        4 => {
            if let Ok(req) = serde_json::from_slice::<RevokeRequest>(body) {
                let _ = req.target.parse::<PeerId>();
            }
        }
        _ => {
            if let Ok(req) = serde_json::from_slice::<AnalyzeRequest>(body) {
                let _ = WorkspacePath::parse(&req.path);
            }
        }
    }
}

fn author() -> Author {
    let public = SigningKey::from_bytes(&ROOT_SECRET)
        .verifying_key()
        .to_bytes();
    Author {
        peer_id: peer_id_of(&public).map_or_else(|_| String::new(), |p| p.to_string()),
        public_key: public,
        actor: automerge::ActorId::from(xencode_protocol::ids::actor_id(&public, 0).as_slice()),
    }
}

/// Applies a splice to a file holding a short text, as the store would.
fn splice_in_memory(path: &WorkspacePath, edits: &[SpliceEdit]) {
    let me = author();
    let Ok((mut ws, _)) =
        Workspace::create(WorkspaceId::from_bytes([9; 16]), &[0; 16], "w", &me, 0)
    else {
        return;
    };
    if ws
        .put_file(path, "héllo wörld\n".as_bytes(), &me, 0, [1; 16], 1 << 20)
        .is_err()
    {
        return;
    }
    if ws.splice(path, edits, &me, 1).is_ok() {
        let text = ws.get_file(path).map(|f| f.bytes).unwrap_or_default();
        assert!(
            std::str::from_utf8(&text).is_ok(),
            "a splice left invalid UTF-8"
        );
    }
}

/// Seed inputs made from real values, per target: frames and tokens as the
/// node makes them, the default config, the API bodies the CLI sends.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let mut out = crate::store::fuzz::seeds();
    let (public, ws, holder) = root();
    let doc = DocId::from_bytes([2; 16]);
    let key = SigningKey::from_bytes(&[2; 32]);
    let head = SignedHead::sign(&key, 0, &ws, &doc, [7; 32]);
    let mut rng = rand_chacha::ChaCha20Rng::from_seed([5; 32]);
    use rand_core::SeedableRng;
    let token = capability::mint(&ROOT_SECRET, &ws, &holder, Role::Developer, None, &mut rng)
        .unwrap_or_default();
    let expiring = capability::mint(
        &ROOT_SECRET,
        &ws,
        &holder,
        Role::Viewer,
        Some(1_800_000_000_000),
        &mut rng,
    )
    .unwrap_or_default();
    let frames = [
        Frame::Open {
            workspace: ws,
            token: token.clone(),
        },
        Frame::Accept {
            workspace: ws,
            token: token.clone(),
        },
        Frame::Refuse {
            workspace: ws,
            reason: "not authorized".into(),
        },
        Frame::Sync {
            workspace: ws,
            doc,
            message: Some(vec![0x42, 0, 0, 1, 0]),
            changes: vec![vec![0x85, 0x6f, 0x4a, 0x83, 1, 2, 3]],
            signatures: vec![head.clone()],
            sent_ms: 1_700_000_000_000,
        },
        Frame::Close { workspace: ws },
        Frame::Addresses {
            workspace: ws,
            cards: vec![xencode_protocol::card::AddressCard::sign(
                &key,
                vec!["/ip4/10.0.0.2/tcp/7421/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN".into()],
                1_700_000_000_000,
            )],
        },
    ];
    for f in &frames {
        if let Ok(bytes) = wire::encode(f) {
            let mut framed = u32::try_from(bytes.len())
                .unwrap_or(0)
                .to_be_bytes()
                .to_vec();
            framed.extend_from_slice(&bytes);
            out.push(("wire_frame", framed));
        }
    }
    out.push((
        "wire_frame",
        wire::encode_announcement(&Announcement { digest: [6; 16] }),
    ));
    if let Ok(bytes) = postcard::to_stdvec(&head) {
        out.push(("signed_envelope", bytes));
    }
    if let Ok(bytes) = postcard::to_stdvec(&vec![head.clone(), head]) {
        out.push(("signed_envelope", bytes));
    }
    out.push((
        "signed_envelope",
        xencode_protocol::envelope::encode_citation(&[automerge::ChangeHash([8; 32])]).into_bytes(),
    ));
    out.push(("capability_token", token.clone()));
    out.push(("capability_token", expiring));
    let invitation = Invitation {
        workspace: ws,
        name: "team".into(),
        root_key: public,
        nonce: [3; 16],
        role: Role::Developer,
        token,
        inviter: holder.to_string(),
        addrs: vec!["/ip4/127.0.0.1/tcp/7421".into()],
    }
    .encode();
    out.push(("capability_token", invitation.clone().into_bytes()));
    out.push(("config_file", Config::default_file_text().into_bytes()));
    out.push((
        "config_file",
        b"[api]\nlisten = \"127.0.0.1:7420\"\nmax_body_bytes = 1024\n[network]\nmdns = false\npeers = [\"/ip4/10.0.0.2/tcp/7421\"]\n[analysis]\nmax_document_bytes = 2048\ntimeout_secs = 5\nollama_host = \"http://127.0.0.1:11434\"\n".to_vec(),
    ));
    let bodies: [(u8, String); 8] = [
        (
            0,
            r#"{"path":"src/a.py","pos":3,"delete":1,"insert":"é"}"#.into(),
        ),
        (
            0,
            r#"{"path":"notes.md","edits":[{"pos":0,"delete":0,"insert":"a"},{"pos":5,"delete":2,"insert":""}]}"#.into(),
        ),
        (1, r#"{"name":"backend team"}"#.into()),
        (
            2,
            format!(r#"{{"peer_id":"{holder}","role":"developer","expires_secs":3600}}"#),
        ),
        (3, format!(r#"{{"token":"{invitation}"}}"#)),
        (4, format!(r#"{{"target":"{holder}"}}"#)),
        (5, r#"{"path":"src/app.py","ai":true,"model":"llama3"}"#.into()),
        (0, r#"{"path":"../etc/passwd","pos":0}"#.into()),
    ];
    for (route, body) in bodies {
        let mut bytes = vec![route];
        bytes.extend_from_slice(body.as_bytes());
        out.push(("api_json", bytes));
    }
    out
}

#[cfg(test)]
mod tests;
