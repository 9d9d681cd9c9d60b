//! Everything that crosses the network on `/xencode/sync/2`, encoded with
//! postcard. Decoding checks the size first and never panics; a frame that
//! fails to decode is a protocol violation by the sender.
//!
//! Versioning: the protocol name carries the major version; a new frame kind
//! is a new variant at the end of [`Frame`] (old nodes refuse it as
//! malformed, which closes the stream, not the node).

use serde::{Deserialize, Serialize};

use crate::card::{AddressCard, MAX_CARD_ADDR_BYTES, MAX_CARD_ADDRS};
use crate::envelope::SignedHead;
use crate::ids::{DocId, WorkspaceId};

/// The libp2p stream protocol of workspace sync.
/// Version 2: a request carries one or more length-prefixed frames (version
/// 1 carried one; a version-1 node would drop all but the first).
pub const SYNC_PROTOCOL: &str = "/xencode/sync/2";
/// Largest frame accepted, in bytes.
pub const MAX_FRAME_BYTES: usize = 8 * 1024 * 1024;
/// Target size of the changes carried by one frame; larger sets are split.
pub const TARGET_CHANGES_BYTES: usize = 2 * 1024 * 1024;
/// Longest capability token accepted.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// Longest refusal reason.
pub const MAX_REASON_BYTES: usize = 512;

/// Files one presence frame may name.
pub const MAX_PRESENCE_FILES: usize = 64;
/// Longest cursor (an Automerge cursor's text form) accepted.
pub const MAX_CURSOR_BYTES: usize = 128;

/// Address cards one frame may carry.
pub const MAX_FRAME_CARDS: usize = 64;

/// Largest gossip announcement accepted, in bytes.
pub const MAX_ANNOUNCEMENT_BYTES: usize = 64;

/// What a node publishes on a workspace's gossip topic after it changed the
/// workspace: an opaque digest of its heads, nothing else. Any connected
/// peer can subscribe to a topic, so announcements carry no content; a
/// member that hears a digest unlike its own and has no session with the
/// announcer dials it and syncs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announcement {
    /// A keyed hash of the workspace's documents and their heads.
    pub digest: [u8; 16],
}

/// Encodes an announcement.
pub fn encode_announcement(a: &Announcement) -> Vec<u8> {
    // A fixed-size array of bytes: postcard cannot fail on it.
    postcard::to_stdvec(a).unwrap_or_default()
}

/// Decodes an announcement, refusing oversize or trailing bytes.
pub fn decode_announcement(bytes: &[u8]) -> Result<Announcement, WireError> {
    if bytes.len() > MAX_ANNOUNCEMENT_BYTES {
        return Err(WireError::TooLarge(bytes.len()));
    }
    let (a, rest) = postcard::take_from_bytes::<Announcement>(bytes)
        .map_err(|e| WireError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(WireError::Malformed("trailing bytes".into()));
    }
    Ok(a)
}

/// One message of a sync session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Frame {
    /// Asks to sync `workspace`, proving membership with a capability token
    /// bound to the sender's peer id.
    Open {
        workspace: WorkspaceId,
        token: Vec<u8>,
    },
    /// Accepts an `Open`, proving the accepting side's membership in turn.
    Accept {
        workspace: WorkspaceId,
        token: Vec<u8>,
    },
    /// Refuses an `Open` or `Accept`; the session is not (or no longer) open.
    Refuse {
        workspace: WorkspaceId,
        reason: String,
    },
    /// Automerge sync have/need for one document (with its changes taken
    /// out) and raw changes with the signatures that vouch for them. The
    /// changes of one generated sync message may be split over several
    /// frames; only the last carries the sync message.
    Sync {
        workspace: WorkspaceId,
        doc: DocId,
        message: Option<Vec<u8>>,
        changes: Vec<Vec<u8>>,
        signatures: Vec<SignedHead>,
        /// The sender's clock (Unix ms) when it sent the frame; receivers
        /// measure propagation latency from it (clamped: clocks differ).
        sent_ms: u64,
    },
    /// Ends the session for a workspace.
    Close { workspace: WorkspaceId },
    /// The files of the workspace the sender has open in an editor, with
    /// where its cursor is: all of them (it replaces what the sender said
    /// before; empty when none). Ephemeral: never stored, gone with the
    /// session.
    Presence {
        workspace: WorkspaceId,
        files: Vec<OpenFile>,
    },
    /// Catch-up of much history at once: `chunk` is one Automerge document
    /// chunk (the sender's whole document, as `save()` writes it), with the
    /// signatures that cover its changes and the sync message that would
    /// have gone with them. The receiver loads it into a scratch document
    /// and checks every change it lacks before any of it is applied
    /// (`docs/protocol.md`, "Catch-up by document chunk").
    Chunk {
        workspace: WorkspaceId,
        doc: DocId,
        message: Option<Vec<u8>>,
        chunk: Vec<u8>,
        signatures: Vec<SignedHead>,
        sent_ms: u64,
    },
    /// Members' signed address cards: the sender's own, and the latest it
    /// holds of other members of `workspace` (`card.rs`, `docs/protocol.md`,
    /// "Finding a member that moved").
    Addresses {
        workspace: WorkspaceId,
        cards: Vec<AddressCard>,
    },
}

/// A file open in an editor on the sending node.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct OpenFile {
    /// The file's workspace path (the receiver checks it like any path).
    pub path: String,
    /// An Automerge cursor (its text form) in the file's text: it stays on
    /// the same character whatever is typed around it.
    pub cursor: Option<String>,
}

impl Frame {
    /// The workspace the frame is about.
    pub fn workspace(&self) -> WorkspaceId {
        match self {
            Frame::Open { workspace, .. }
            | Frame::Accept { workspace, .. }
            | Frame::Refuse { workspace, .. }
            | Frame::Sync { workspace, .. }
            | Frame::Chunk { workspace, .. }
            | Frame::Close { workspace }
            | Frame::Presence { workspace, .. }
            | Frame::Addresses { workspace, .. } => *workspace,
        }
    }
}

/// Why bytes are not a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    #[error("the frame is {0} bytes; the limit is {MAX_FRAME_BYTES}")]
    TooLarge(usize),
    #[error("the frame is malformed: {0}")]
    Malformed(String),
    #[error("a field exceeds its limit: {0}")]
    FieldTooLarge(&'static str),
}

/// Encodes a frame.
pub fn encode(frame: &Frame) -> Result<Vec<u8>, WireError> {
    let bytes = postcard::to_stdvec(frame).map_err(|e| WireError::Malformed(e.to_string()))?;
    if bytes.len() > MAX_FRAME_BYTES {
        return Err(WireError::TooLarge(bytes.len()));
    }
    Ok(bytes)
}

/// Decodes a frame, checking every bound.
pub fn decode(bytes: &[u8]) -> Result<Frame, WireError> {
    if bytes.len() > MAX_FRAME_BYTES {
        return Err(WireError::TooLarge(bytes.len()));
    }
    let frame: Frame =
        postcard::from_bytes(bytes).map_err(|e| WireError::Malformed(e.to_string()))?;
    match &frame {
        Frame::Open { token, .. } | Frame::Accept { token, .. }
            if token.len() > MAX_TOKEN_BYTES =>
        {
            Err(WireError::FieldTooLarge("token"))
        }
        Frame::Refuse { reason, .. } if reason.len() > MAX_REASON_BYTES => {
            Err(WireError::FieldTooLarge("reason"))
        }
        Frame::Presence { files, .. } if files.len() > MAX_PRESENCE_FILES => {
            Err(WireError::FieldTooLarge("presence files"))
        }
        Frame::Presence { files, .. }
            if files.iter().any(|f| {
                f.path.len() > crate::path::MAX_PATH_BYTES
                    || f.cursor
                        .as_ref()
                        .is_some_and(|c| c.len() > MAX_CURSOR_BYTES)
            }) =>
        {
            Err(WireError::FieldTooLarge("presence path or cursor"))
        }
        Frame::Addresses { cards, .. } if cards.len() > MAX_FRAME_CARDS => {
            Err(WireError::FieldTooLarge("address cards"))
        }
        Frame::Addresses { cards, .. }
            if cards.iter().any(|c| {
                c.addrs.len() > MAX_CARD_ADDRS
                    || c.addrs.iter().any(|a| a.len() > MAX_CARD_ADDR_BYTES)
            }) =>
        {
            Err(WireError::FieldTooLarge("address card"))
        }
        _ => Ok(frame),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let frames = [
            Frame::Open {
                workspace: WorkspaceId::from_bytes([1; 16]),
                token: vec![1, 2, 3],
            },
            Frame::Refuse {
                workspace: WorkspaceId::from_bytes([1; 16]),
                reason: "no".into(),
            },
            Frame::Sync {
                workspace: WorkspaceId::from_bytes([1; 16]),
                doc: DocId::from_bytes([2; 16]),
                message: Some(vec![0x42]),
                changes: vec![vec![1; 10]],
                signatures: vec![SignedHead {
                    author: [3; 32],
                    epoch: 1,
                    hash: [4; 32],
                    signature: vec![5; 64],
                }],
                sent_ms: 1_795_000_000_000,
            },
            Frame::Close {
                workspace: WorkspaceId::from_bytes([9; 16]),
            },
            Frame::Presence {
                workspace: WorkspaceId::from_bytes([9; 16]),
                files: vec![OpenFile {
                    path: "src/app.py".into(),
                    cursor: Some("12@0a1b".into()),
                }],
            },
            Frame::Chunk {
                workspace: WorkspaceId::from_bytes([1; 16]),
                doc: DocId::from_bytes([2; 16]),
                message: None,
                chunk: vec![0x85, 0x6f, 0x4a, 0x83],
                signatures: Vec::new(),
                sent_ms: 7,
            },
            Frame::Addresses {
                workspace: WorkspaceId::from_bytes([1; 16]),
                cards: vec![AddressCard {
                    key: [3; 32],
                    addrs: vec!["/ip4/10.0.0.2/tcp/7000".into()],
                    at_ms: 9,
                    signature: vec![5; 64],
                }],
            },
        ];
        for f in frames {
            assert_eq!(decode(&encode(&f).expect("encode")), Ok(f));
        }
    }

    #[test]
    fn announcements_round_trip_and_refuse_junk() {
        let a = Announcement { digest: [7; 16] };
        assert_eq!(decode_announcement(&encode_announcement(&a)), Ok(a));
        assert!(decode_announcement(&[]).is_err());
        assert!(decode_announcement(&[1; 10]).is_err());
        let mut long = encode_announcement(&a);
        long.push(0);
        assert!(matches!(
            decode_announcement(&long),
            Err(WireError::Malformed(_))
        ));
        assert!(matches!(
            decode_announcement(&[0; 65]),
            Err(WireError::TooLarge(65))
        ));
    }

    #[test]
    fn malformed_and_oversize_frames_are_errors_not_panics() {
        assert!(matches!(decode(&[]), Err(WireError::Malformed(_))));
        assert!(matches!(decode(&[200, 1, 2]), Err(WireError::Malformed(_))));
        assert!(matches!(
            decode(&vec![0; MAX_FRAME_BYTES + 1]),
            Err(WireError::TooLarge(_))
        ));
        let big = Frame::Open {
            workspace: WorkspaceId::from_bytes([1; 16]),
            token: vec![0; MAX_TOKEN_BYTES + 1],
        };
        let bytes = postcard::to_stdvec(&big).expect("encode");
        assert_eq!(decode(&bytes), Err(WireError::FieldTooLarge("token")));
        let crowd = Frame::Presence {
            workspace: WorkspaceId::from_bytes([1; 16]),
            files: vec![
                OpenFile {
                    path: "a".into(),
                    cursor: None
                };
                MAX_PRESENCE_FILES + 1
            ],
        };
        let bytes = postcard::to_stdvec(&crowd).expect("encode");
        assert_eq!(
            decode(&bytes),
            Err(WireError::FieldTooLarge("presence files"))
        );
        let card = AddressCard {
            key: [3; 32],
            addrs: Vec::new(),
            at_ms: 0,
            signature: vec![0; 64],
        };
        let crowd = Frame::Addresses {
            workspace: WorkspaceId::from_bytes([1; 16]),
            cards: vec![card.clone(); MAX_FRAME_CARDS + 1],
        };
        let bytes = postcard::to_stdvec(&crowd).expect("encode");
        assert_eq!(
            decode(&bytes),
            Err(WireError::FieldTooLarge("address cards"))
        );
        for addrs in [
            vec!["/ip4/1.1.1.1".to_owned(); MAX_CARD_ADDRS + 1],
            vec!["/".repeat(MAX_CARD_ADDR_BYTES + 1)],
        ] {
            let long = Frame::Addresses {
                workspace: WorkspaceId::from_bytes([1; 16]),
                cards: vec![AddressCard {
                    addrs,
                    ..card.clone()
                }],
            };
            let bytes = postcard::to_stdvec(&long).expect("encode");
            assert_eq!(
                decode(&bytes),
                Err(WireError::FieldTooLarge("address card"))
            );
        }
        for (path, cursor) in [
            ("a".repeat(crate::path::MAX_PATH_BYTES + 1), None),
            ("a".into(), Some("1".repeat(MAX_CURSOR_BYTES + 1))),
        ] {
            let long = Frame::Presence {
                workspace: WorkspaceId::from_bytes([1; 16]),
                files: vec![OpenFile { path, cursor }],
            };
            let bytes = postcard::to_stdvec(&long).expect("encode");
            assert_eq!(
                decode(&bytes),
                Err(WireError::FieldTooLarge("presence path or cursor"))
            );
        }
        // Every prefix of a valid frame fails cleanly.
        let valid = encode(&Frame::Sync {
            workspace: WorkspaceId::from_bytes([1; 16]),
            doc: DocId::from_bytes([2; 16]),
            message: None,
            changes: vec![vec![7; 100]],
            signatures: vec![],
            sent_ms: 0,
        })
        .expect("encode");
        for cut in 0..valid.len() {
            assert!(decode(&valid[..cut]).is_err(), "prefix {cut}");
        }
    }
}
