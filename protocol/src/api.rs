//! JSON bodies of the local HTTP API (`/api/v1`), shared by the node, the CLI
//! and the tests so the three can never disagree about a field name.

use serde::{Deserialize, Serialize};

use crate::ids::WorkspaceId;
use crate::path::WorkspacePath;

/// Longest workspace name accepted, in characters.
pub const MAX_WORKSPACE_NAME_CHARS: usize = 128;
/// Most edits accepted in one splice batch.
pub const MAX_SPLICE_EDITS: usize = 100_000;

/// Every error answer: `{"error": {"code": "...", "message": "..."}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// A machine-readable `code` and a message that tells the user what to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
}

/// `GET /health`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Health {
    /// `"ok"` once the store is loaded, `"starting"` before.
    pub status: String,
}

/// `GET /api/v1/node`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct NodeInfo {
    pub peer_id: String,
    pub version: String,
    /// The commit the node was built from ("unknown" outside a checkout).
    #[serde(default)]
    pub commit: String,
    /// The sync protocol peers must speak (`/xencode/sync/N`).
    #[serde(default)]
    pub protocol: String,
    pub api_url: String,
    pub data_dir: String,
    /// Network listen addresses from the configuration.
    pub listen: Vec<String>,
    pub mdns: bool,
    /// The Automerge actor epoch this node writes in.
    pub epoch: u64,
    pub workspaces: usize,
    pub uptime_secs: u64,
    pub store: StoreInfo,
    /// The largest requests this node accepts.
    pub limits: NodeLimits,
    /// Whether peers can dial this node, as AutoNAT found by asking peers
    /// to dial it back: `public`, `private` (behind a NAT or firewall: it
    /// keeps reservations on its members' relays) or `unknown` (not probed
    /// yet, or no address to probe).
    #[serde(default)]
    pub reachability: Reachability,
}

/// What AutoNAT found about a node's reachability.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Reachability {
    #[default]
    Unknown,
    Public,
    Private,
}

/// Size limits of the API, from the node's `config.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct NodeLimits {
    /// A JSON body or a file's bytes (`api.max_body_bytes`).
    pub max_body_bytes: u64,
    /// A document to extract (`analysis.max_document_bytes`).
    pub max_document_bytes: u64,
}

/// The redb store behind the node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct StoreInfo {
    pub path: String,
    pub size_bytes: u64,
    pub schema_version: u32,
}

/// Roles of a workspace member.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Viewer,
    Developer,
    Admin,
}

impl Role {
    /// The role's name as written in documents and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Developer => "developer",
            Role::Admin => "admin",
        }
    }

    /// Parses a role name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "viewer" => Some(Role::Viewer),
            "developer" => Some(Role::Developer),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

/// `POST /api/v1/workspaces`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWorkspace {
    pub name: String,
}

/// `PATCH /api/v1/workspaces/{id}`: a new name for the workspace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct RenameWorkspace {
    pub name: String,
}

/// `DELETE /api/v1/workspaces/{id}`: what this node forgot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct WorkspaceRemoved {
    pub id: WorkspaceId,
    pub name: String,
    /// Whether this node created the workspace (`workspace rm`); members
    /// keep their own copies either way.
    pub was_owner: bool,
    /// Documents whose history was deleted from the store.
    pub documents: usize,
    /// Linked folders unlinked (their files stay on disk).
    pub folders_unlinked: usize,
    /// Audit entries about the workspace, redacted (the chain re-sealed).
    pub audit_entries_redacted: u64,
    /// Whether the store file was compacted afterwards, so no freed page
    /// still holds the workspace's bytes (false: retried at the next
    /// removal; `docs/operations.md`).
    pub compacted: bool,
}

/// Checks a workspace name: 1 to [`MAX_WORKSPACE_NAME_CHARS`] characters, no
/// control characters, not only whitespace.
pub fn validate_workspace_name(name: &str) -> Result<(), NameError> {
    let chars = name.chars().count();
    if name.trim().is_empty() {
        return Err(NameError::Empty);
    }
    if chars > MAX_WORKSPACE_NAME_CHARS {
        return Err(NameError::TooLong(chars));
    }
    if name.chars().any(char::is_control) {
        return Err(NameError::ControlCharacter);
    }
    Ok(())
}

/// The form names are compared in: trimmed, lower case. "Team Docs" and
/// "team docs " name the same workspace.
pub fn name_key(name: &str) -> String {
    name.trim().to_lowercase()
}

/// Whether two workspace names are the same name (see [`name_key`]).
pub fn same_name(a: &str, b: &str) -> bool {
    name_key(a) == name_key(b)
}

/// Up to three of `names` close to a mistyped `wanted` (edit distance on
/// [`name_key`]s, at most a third of the length, at least 2), nearest first.
pub fn similar_names<'a>(wanted: &str, names: impl IntoIterator<Item = &'a str>) -> Vec<&'a str> {
    let key: Vec<char> = name_key(wanted).chars().collect();
    let budget = (key.len() / 3).max(2);
    let mut close: Vec<(usize, &str)> = names
        .into_iter()
        .filter_map(|n| {
            let other: Vec<char> = name_key(n).chars().collect();
            let d = edit_distance(&key, &other, budget)?;
            // A prefix ("team" for "Team Docs") is a fair guess too.
            let prefix = !key.is_empty() && other.starts_with(&key);
            (d <= budget || prefix).then_some((if prefix { d.min(budget) } else { d }, n))
        })
        .collect();
    close.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(b.1)));
    close.dedup_by(|a, b| a.1 == b.1);
    close.into_iter().take(3).map(|(_, n)| n).collect()
}

/// Levenshtein distance, or `None` as soon as it must exceed `budget`
/// (bounded work for long names).
fn edit_distance(a: &[char], b: &[char], budget: usize) -> Option<usize> {
    if a.len().abs_diff(b.len()) > budget {
        // Too far apart to be a typo, but maybe a prefix: report the bound.
        return Some(budget + 1);
    }
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut row = vec![0; b.len() + 1];
    for (i, ca) in a.iter().enumerate() {
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitute = prev[j] + usize::from(ca != cb);
            row[j + 1] = substitute.min(prev[j + 1] + 1).min(row[j] + 1);
        }
        std::mem::swap(&mut prev, &mut row);
        if prev.iter().min().is_some_and(|m| *m > budget) {
            return Some(budget + 1);
        }
    }
    prev.last().copied()
}

/// Why a workspace name is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NameError {
    #[error("the workspace name is empty")]
    Empty,
    #[error("the workspace name has {0} characters; the limit is {MAX_WORKSPACE_NAME_CHARS}")]
    TooLong(usize),
    #[error("the workspace name contains a control character")]
    ControlCharacter,
}

/// One workspace in `GET /api/v1/workspaces`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct WorkspaceSummary {
    pub id: WorkspaceId,
    pub name: String,
    /// Unix milliseconds, from the creator's clock.
    pub created_at: u64,
    /// Peer id of the creator, whose key is the capability root.
    pub owner: String,
    /// This node's role in the workspace as recorded in its membership
    /// (kept after a revocation or expiry: see `standing`).
    pub role: Role,
    pub files: usize,
    /// Whether that membership holds now. Writes are judged by
    /// `effective_role`, which is `role` only while `standing` is `member`.
    #[serde(default)]
    pub standing: Standing,
    /// The role this node's writes are judged by now; `null`: none (revoked,
    /// expired, or not a member): it can read what it holds, not write.
    #[serde(default)]
    pub effective_role: Option<Role>,
}

/// Whether a membership holds now.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Standing {
    /// A member in good standing.
    #[default]
    Member,
    /// The membership was revoked by an admin.
    Revoked,
    /// The membership's token expired.
    Expired,
    /// Not in the member list this node holds (perhaps not yet synced).
    NotMember,
}

/// `GET /api/v1/workspaces`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct WorkspaceList {
    pub workspaces: Vec<WorkspaceSummary>,
}

/// A member as recorded in the workspace's access document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Member {
    pub peer_id: String,
    pub role: Role,
    pub added_by: String,
    pub added_at: u64,
    /// The membership was revoked.
    #[serde(default)]
    pub revoked: bool,
    /// When the membership ends with its token (unix ms); absent: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
    /// The display name the member gave itself (`[node] name`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// `GET /api/v1/workspaces/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct WorkspaceDetail {
    #[serde(flatten)]
    pub summary: WorkspaceSummary,
    pub members: Vec<Member>,
    /// Sorted hex change hashes at the heads of every document of the
    /// workspace (access, index and files): equal on two nodes exactly when
    /// they hold the same history.
    pub heads: Vec<String>,
    /// Number of Automerge documents the workspace consists of.
    pub documents: usize,
}

/// How a file's content is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum FileKind {
    /// UTF-8 text in an Automerge Text: concurrent character edits merge.
    Text,
    /// Anything else, stored whole: the last write wins.
    Binary,
}

/// One file in `GET /api/v1/workspaces/{id}/files` and the answer to `PUT`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct FileInfo {
    pub path: WorkspacePath,
    pub kind: FileKind,
    pub size_bytes: u64,
    /// Unicode scalar values, for text files.
    pub chars: Option<u64>,
    pub updated_by: String,
    pub updated_at: u64,
}

/// The answer to `PUT /api/v1/workspaces/{id}/automerge/{*path}`: a
/// document made by another Automerge application, imported with its
/// history (`xencode file import`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct FileImported {
    pub file: FileInfo,
    /// Changes the file got: one per version of the text (consecutive
    /// foreign changes are grouped in long histories, `docs/api.md`).
    pub versions: u64,
    /// Changes in the foreign history, including those that did not touch
    /// the text.
    pub foreign_changes: u64,
    /// Distinct Automerge actors among them.
    pub foreign_actors: u64,
}

/// `GET /api/v1/workspaces/{id}/files`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct FileList {
    /// Sorted by path.
    pub files: Vec<FileInfo>,
}

/// One character-level edit: delete `delete` characters at `pos`, then insert
/// `insert` there. Positions count Unicode scalar values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SpliceEdit {
    pub pos: u64,
    #[serde(default)]
    pub delete: u64,
    #[serde(default)]
    pub insert: String,
}

/// `POST /api/v1/workspaces/{id}/splice`: either one edit
/// (`{path, pos, delete, insert}`) or a batch (`{path, edits: [...]}`). A
/// batch applies in order, each position relative to the text left by the
/// edits before it, atomically, as one Automerge change.
///
/// With `base` (the file's heads an editor's text corresponds to), the edits
/// are relative to the text at `base` and merged with whatever arrived since;
/// the answer's `catch_up` then turns the editor's text into the merged one
/// (`xencode lsp`). `edits` may be empty with a base: only the catch-up. An
/// empty base is the empty document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SpliceRequest {
    pub path: WorkspacePath,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pos: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delete: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub insert: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edits: Option<Vec<SpliceEdit>>,
    /// Hex change hashes: the version the edits were made at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<Vec<String>>,
}

impl SpliceRequest {
    /// A batch request.
    pub fn batch(path: WorkspacePath, edits: Vec<SpliceEdit>) -> Self {
        Self {
            path,
            pos: None,
            delete: None,
            insert: None,
            edits: Some(edits),
            base: None,
        }
    }

    /// A batch made at `base` (hex heads); `edits` may be empty.
    pub fn at(path: WorkspacePath, base: Vec<String>, edits: Vec<SpliceEdit>) -> Self {
        Self {
            base: Some(base),
            ..Self::batch(path, edits)
        }
    }

    /// The edits this request asks for, or why the request is malformed.
    pub fn into_edits(self) -> Result<(WorkspacePath, Vec<SpliceEdit>), String> {
        let single = self.pos.is_some() || self.delete.is_some() || self.insert.is_some();
        match (self.edits, single) {
            (Some(_), true) => {
                Err("give either `edits` or `pos`/`delete`/`insert`, not both".into())
            }
            (Some(edits), false) if edits.is_empty() && self.base.is_none() => {
                Err("`edits` is empty".into())
            }
            (Some(edits), false) if edits.len() > MAX_SPLICE_EDITS => Err(format!(
                "{} edits in one request; the limit is {MAX_SPLICE_EDITS}",
                edits.len()
            )),
            (Some(edits), false) => Ok((self.path, edits)),
            (None, true) => match self.pos {
                Some(pos) => Ok((
                    self.path,
                    vec![SpliceEdit {
                        pos,
                        delete: self.delete.unwrap_or(0),
                        insert: self.insert.unwrap_or_default(),
                    }],
                )),
                None => Err("`pos` is required".into()),
            },
            (None, false) => Err("give `pos` (with `delete` and/or `insert`) or `edits`".into()),
        }
    }
}

/// Answer to a splice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SpliceResponse {
    pub path: WorkspacePath,
    pub edits_applied: usize,
    /// Length of the text afterwards, in Unicode scalar values.
    pub chars: u64,
    /// Heads of the file's document after the change.
    pub heads: Vec<String>,
    /// With a `base`: the version the editor holds now (its base plus its
    /// edits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mine: Option<Vec<String>>,
    /// With a `base`: edits, each relative to the text the ones before it
    /// left, from the text at `mine` to the text at `heads`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catch_up: Option<Vec<SpliceEdit>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(json: &str) -> Result<(WorkspacePath, Vec<SpliceEdit>), String> {
        serde_json::from_str::<SpliceRequest>(json)
            .map_err(|e| e.to_string())?
            .into_edits()
    }

    #[test]
    fn names_match_without_case_and_typos_get_suggestions() {
        assert!(same_name("Team Docs", " team docs"));
        assert!(!same_name("Team Docs", "Team Doc"));
        let names = ["Team Docs", "Backend", "team-docs-old", "Design"];
        assert_eq!(similar_names("Team Dcos", names), vec!["Team Docs"]);
        assert_eq!(similar_names("backnd", names), vec!["Backend"]);
        assert_eq!(
            similar_names("team", names),
            vec!["Team Docs", "team-docs-old"]
        );
        assert!(similar_names("Marketing", names).is_empty());
        assert!(similar_names("", names).is_empty());
        // Long names cost bounded work and still find a typo.
        let long = "x".repeat(200);
        let typo = format!("{}y", "x".repeat(199));
        assert_eq!(similar_names(&typo, [long.as_str()]), vec![long.as_str()]);
    }

    #[test]
    fn single_and_batch_splices_parse() {
        let (path, edits) = req(r#"{"path":"a.py","pos":3,"insert":"x"}"#).expect("single");
        assert_eq!(path.as_str(), "a.py");
        assert_eq!(
            edits,
            vec![SpliceEdit {
                pos: 3,
                delete: 0,
                insert: "x".into()
            }]
        );
        let (_, edits) =
            req(r#"{"path":"a.py","edits":[{"pos":0,"delete":2},{"pos":1,"insert":"y"}]}"#)
                .expect("batch");
        assert_eq!(edits.len(), 2);
    }

    #[test]
    fn malformed_splices_are_refused() {
        assert!(req(r#"{"path":"a.py"}"#).is_err());
        assert!(req(r#"{"path":"a.py","insert":"x"}"#).is_err());
        assert!(req(r#"{"path":"a.py","pos":1,"edits":[{"pos":0}]}"#).is_err());
        assert!(req(r#"{"path":"a.py","edits":[]}"#).is_err());
        assert!(req(r#"{"path":"../a.py","pos":0}"#).is_err());
        assert!(req(r#"{"path":"a.py","pos":-1}"#).is_err());
        assert!(req(r#"{"path":"a.py","pos":0,"bogus":1}"#).is_err());
    }

    #[test]
    fn workspace_names_are_checked() {
        assert!(validate_workspace_name("team docs").is_ok());
        assert!(validate_workspace_name("  ").is_err());
        assert!(validate_workspace_name("a\u{7}b").is_err());
        assert!(validate_workspace_name(&"n".repeat(MAX_WORKSPACE_NAME_CHARS + 1)).is_err());
    }
}

/// `POST /api/v1/workspaces/{id}/invites`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InviteRequest {
    /// The invitee's peer id (`xencode id` on their machine).
    pub peer_id: String,
    pub role: Role,
    /// Lifetime of the token in seconds; none means it does not expire.
    #[serde(default)]
    pub expires_secs: Option<u64>,
}

/// The answer to an invite: the string to hand to `xencode join`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct InviteResponse {
    pub token: String,
    /// What `revoke` names to cancel this token.
    pub token_id: String,
    pub peer_id: String,
    pub role: Role,
    pub expires_at: Option<u64>,
}

/// `POST /api/v1/join`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JoinRequest {
    pub token: String,
}

/// `POST /api/v1/workspaces/{id}/revoke`: a member's peer id or a token id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RevokeRequest {
    pub target: String,
}

/// One peer in `GET /api/v1/peers`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct PeerInfo {
    pub peer_id: String,
    pub connected: bool,
    pub addresses: Vec<String>,
    pub workspaces: Vec<PeerWorkspace>,
    /// The display name the peer gave itself in a workspace shared with
    /// this node, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// How far this node's clock is ahead of the peer's, in ms (negative:
    /// behind), from the send times of its recent sync frames (the network
    /// delay included); `null` before any. Membership expiry and change
    /// timestamps are judged by clocks: `xencode doctor` warns past 2 min.
    #[serde(default)]
    pub clock_offset_ms: Option<i64>,
    /// How the connection to the peer runs, its best one when there are
    /// several; absent when not connected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection: Option<ConnectionKind>,
    /// The relay's peer id, for a relayed connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay: Option<String>,
    /// The last measured round-trip time (libp2p ping) of that connection,
    /// in microseconds; `null` before the first ping.
    #[serde(default)]
    pub rtt_us: Option<u64>,
}

/// How this node is connected to a peer.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum ConnectionKind {
    /// Through a member's relay (libp2p circuit relay v2), end-to-end
    /// encrypted: the relay sees who talks to whom and how much, not what.
    Relayed,
    /// Dialled directly, by either side.
    Direct,
    /// Direct, after hole punching (DCUtR) upgraded a relayed connection.
    HolePunched,
}

/// A workspace shared with a peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct PeerWorkspace {
    pub id: WorkspaceId,
    /// A sync session is open.
    pub syncing: bool,
    /// Changes this node holds that the peer is not known to have; `None`
    /// when that is not known (see `lag`).
    pub behind: Option<u64>,
    /// What `behind` means: measured in the open session (`live`), or from
    /// the state the peer's last session ended with, against this node's
    /// changes now (an offline peer's last known lag).
    #[serde(default)]
    pub lag: Lag,
}

/// How far a peer is from this node in one workspace.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Lag {
    /// Measured in the open session.
    Live,
    /// Not syncing now: counted from where the peer's last session ended.
    LastKnown,
    /// In the open session, the peer holds changes this node has not seen
    /// yet, and lacks none of ours.
    PeerAhead,
    /// Never synced with this node (or nothing is remembered of it).
    #[default]
    Unknown,
}

/// `GET /api/v1/peers`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct PeerList {
    pub peers: Vec<PeerInfo>,
}

/// Where a change came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ChangeOrigin {
    /// Written through this node's API.
    Local,
    /// Received from a peer and applied.
    Remote,
}

/// What happened to a sync session with a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SessionState {
    Opened,
    Closed,
    Refused,
}

/// One event of `GET /api/v1/events` (Server-Sent Events: the SSE event name
/// is `type`, the data this object as JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum NodeEvent {
    /// A file's content changed, here or by a peer (committed durably).
    FileChanged {
        workspace: WorkspaceId,
        path: String,
        origin: ChangeOrigin,
    },
    /// The index (file list, documents, analyses) changed.
    IndexChanged {
        workspace: WorkspaceId,
        origin: ChangeOrigin,
    },
    /// The members or revocations changed.
    AccessChanged {
        workspace: WorkspaceId,
        origin: ChangeOrigin,
    },
    /// A workspace was created or joined here.
    WorkspaceAdded { workspace: WorkspaceId },
    /// This node forgot a workspace (`workspace leave` or `rm`).
    WorkspaceRemoved { workspace: WorkspaceId },
    /// A peer connected or disconnected.
    Peer { peer: String, connected: bool },
    /// A sync session with a peer opened, closed or was refused.
    Session {
        workspace: WorkspaceId,
        peer: String,
        state: SessionState,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// Changes from a peer were verified and applied.
    Applied {
        workspace: WorkspaceId,
        peer: String,
        changes: u64,
    },
    /// Changes from a peer were refused.
    Rejected {
        workspace: WorkspaceId,
        peer: String,
        reason: String,
        count: u64,
    },
    /// An analysis or a processed document was stored.
    Analysis {
        workspace: WorkspaceId,
        target: String,
        kind: String,
    },
    /// Which files teammates have open (or where their cursors are)
    /// changed: see `GET /api/v1/workspaces/{id}/presence`.
    Presence { workspace: WorkspaceId },
    /// The client fell behind and missed events: refetch what it shows.
    Lagged { missed: u64 },
}

impl NodeEvent {
    /// The workspace the event is about, if any.
    pub fn workspace(&self) -> Option<WorkspaceId> {
        match self {
            Self::FileChanged { workspace, .. }
            | Self::IndexChanged { workspace, .. }
            | Self::AccessChanged { workspace, .. }
            | Self::WorkspaceAdded { workspace }
            | Self::WorkspaceRemoved { workspace }
            | Self::Session { workspace, .. }
            | Self::Applied { workspace, .. }
            | Self::Rejected { workspace, .. }
            | Self::Analysis { workspace, .. }
            | Self::Presence { workspace } => Some(*workspace),
            Self::Peer { .. } | Self::Lagged { .. } => None,
        }
    }

    /// The SSE event name: the `type` tag.
    pub fn name(&self) -> &'static str {
        match self {
            Self::FileChanged { .. } => "file_changed",
            Self::IndexChanged { .. } => "index_changed",
            Self::AccessChanged { .. } => "access_changed",
            Self::WorkspaceAdded { .. } => "workspace_added",
            Self::WorkspaceRemoved { .. } => "workspace_removed",
            Self::Peer { .. } => "peer",
            Self::Session { .. } => "session",
            Self::Applied { .. } => "applied",
            Self::Rejected { .. } => "rejected",
            Self::Analysis { .. } => "analysis",
            Self::Presence { .. } => "presence",
            Self::Lagged { .. } => "lagged",
        }
    }
}

/// `POST /api/v1/dashboard/login`: a one-time login URL for the dashboard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct LoginLink {
    /// `http://127.0.0.1:PORT/login?code=...`; works once, within
    /// `expires_in_secs`.
    pub url: String,
    pub expires_in_secs: u64,
}

/// `GET /api/v1/session`: who is asking, and the CSRF token a dashboard
/// session sends as `X-CSRF-Token` on every state-changing request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SessionInfo {
    /// `token` (bearer) or `cookie` (dashboard session).
    pub auth: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub csrf_token: Option<String>,
    pub peer_id: String,
}

/// One authorization decision in the audit log (`GET /api/v1/audit`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct AuditEntry {
    /// Position in the log, from 1.
    pub seq: u64,
    /// Unix milliseconds.
    pub at: u64,
    /// Who asked: `local:api-token`, `local:dashboard:<id>`, `peer:<peer id>`
    /// or `unauthenticated`.
    pub who: String,
    /// What was asked: `POST /api/v1/workspaces/{id}/splice`, `sync.open`, ...
    pub action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace: Option<WorkspaceId>,
    /// `allow` or `deny`.
    pub decision: String,
    /// Why: the refusal's code, or what granted it.
    pub reason: String,
    /// blake3 over the previous entry's hash and this entry (hex).
    pub hash: String,
}

/// Whether the audit log's hash chain is intact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct AuditChain {
    pub intact: bool,
    /// Entries checked (the whole log).
    pub checked: u64,
    /// The first entry whose hash does not follow from its predecessor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broken_at: Option<u64>,
}

/// `GET /api/v1/audit`: the newest entries the caller may see, oldest first,
/// and the state of the whole chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct AuditLog {
    pub entries: Vec<AuditEntry>,
    pub chain: AuditChain,
    /// Refused requests that never authenticated, tallied per minute, source
    /// and reason (newest last). Kept apart from `entries`, under their own
    /// cap, so a flood of them never pushes out entries about members.
    #[serde(default)]
    pub refusals: Vec<RefusalCount>,
}

/// How many requests from one source were refused for one reason in one
/// minute, none of them authenticated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct RefusalCount {
    /// Start of the minute (unix ms).
    pub minute: u64,
    /// The page's `Origin`, or `local` for a request without one.
    pub source: String,
    /// The refusal's error code (`unauthorized`, `forbidden_host`, ...).
    pub reason: String,
    pub count: u64,
}

/// What a linked folder is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum FolderState {
    /// Comparing the folder with the workspace (at start, on link, on a
    /// watcher overflow, periodically).
    Scanning,
    /// Watching for changes on both sides.
    Watching,
    /// Stopped by an error (see `errors`); retried.
    Error,
}

/// A folder linked to a workspace (`xencode folder list`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct FolderInfo {
    /// Absolute path of the directory.
    pub dir: String,
    pub workspace: WorkspaceId,
    pub workspace_name: String,
    pub state: FolderState,
    /// Files synced between the folder and the workspace.
    pub files: usize,
    /// Files found by the running scan, of `scan_total` (progress).
    pub scanned: usize,
    pub scan_total: usize,
    /// Changes seen on disk not yet taken into the workspace.
    pub pending: usize,
    /// Receive-only (this node may not write the workspace): local edits are
    /// not sent; `local_changes` lists them and `folder revert` undoes them.
    pub receive_only: bool,
    /// Paths changed on disk that the workspace does not have (receive-only).
    pub local_changes: Vec<String>,
    /// Files stored whole (binary, or text over `store.max_text_bytes`):
    /// they sync, but concurrent edits do not merge (the last write wins).
    pub whole_files: usize,
    /// Files left out: over the size limit, unrepresentable names, special
    /// files (symlinks are never followed; ignored files are not counted).
    pub skipped: Vec<String>,
    /// When a change last went either way (ms since the epoch).
    pub last_sync: Option<u64>,
    /// Recent problems, newest last.
    pub errors: Vec<String>,
}

/// `GET /api/v1/folders`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct FolderList {
    pub folders: Vec<FolderInfo>,
}

/// `POST /api/v1/folders`: link `dir` to `workspace`, or (without one)
/// create a workspace named `name` (default: the directory's name) from it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LinkFolder {
    /// Absolute path of the directory (created if missing).
    pub dir: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace: Option<WorkspaceId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// `POST /api/v1/folders/unlink` and `/revert`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FolderRequest {
    /// Absolute path of a linked directory.
    pub dir: String,
}

/// `POST /api/v1/workspaces/{id}/editors`: an editor session (`xencode
/// lsp`) says which files of the workspace it holds open, and what it saved.
/// It owns those files while the lease lasts: the linked folder does not
/// write them and does not take its saves in twice. Renew before the lease
/// ends; `open: []` closes them all.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EditorSession {
    /// Chosen by the editor session, unique to it (1–64 characters).
    pub session: String,
    pub open: Vec<WorkspacePath>,
    #[serde(default)]
    pub saves: Vec<EditorSave>,
    /// Where the editor's cursor is in open files (teammates see it).
    #[serde(default)]
    pub cursors: Vec<EditorCursor>,
}

/// An editor's cursor: an offset in Unicode scalar values into the file's
/// text at `heads` (hex; the version the editor holds).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EditorCursor {
    pub path: WorkspacePath,
    pub offset: u64,
    pub heads: Vec<String>,
}

/// A teammate (another node) with a file of the workspace open in an
/// editor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Teammate {
    pub peer_id: String,
    /// Its role in the workspace, if it is a member still.
    pub role: Option<Role>,
    pub path: WorkspacePath,
    /// Its cursor: an offset in Unicode scalar values into the file's
    /// current text on this node, if it said where it is.
    pub cursor: Option<u64>,
}

/// `GET /api/v1/workspaces/{id}/presence`: who has which files open.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Presence {
    pub teammates: Vec<Teammate>,
}

/// A save an editor made: the saved bytes' blake3 hash (hex), and the
/// file's heads (hex) at which the workspace holds that text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EditorSave {
    pub path: WorkspacePath,
    pub hash: String,
    pub heads: Vec<String>,
}

/// Answer to [`EditorSession`]: renew within this many milliseconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct EditorLease {
    pub lease_ms: u64,
    /// Teammates with one of the session's open files open too.
    #[serde(default)]
    pub teammates: Vec<Teammate>,
}

/// What `folder unlink` or `folder revert` did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct FolderOutcome {
    pub dir: String,
    /// Unlink: whether a link was removed. Revert: files restored.
    pub changed: usize,
    /// Revert: files only on disk, left in place.
    pub kept: Vec<String>,
}
