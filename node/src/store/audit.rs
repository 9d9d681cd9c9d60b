//! The audit log: every authorization decision (local API and peer
//! sessions, allow and deny), appended to `audit-1` with a hash chain so a
//! changed, removed or reordered entry shows.
//!
//! Entry n stores `hash_n = blake3(hash_{n-1} || postcard(entry_n))`, with
//! `hash_0` all zeros. Entries are staged by the actor and written with the
//! next commit (group commit); a commit holding only audit entries of allowed
//! reads is not fsync'd on its own (it becomes durable with the next durable
//! commit), a denial always is.

use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata};
use serde::{Deserialize, Serialize};
use xencode_protocol::WorkspaceId;
use xencode_protocol::api::{AuditChain, AuditEntry, RefusalCount};

use super::tables::{AUDIT, REFUSALS};

/// Most tallies of refused unauthenticated requests kept in `refusals-1`
/// (a week of one tally a minute); older ones are dropped. This cap is
/// apart from [`MAX_ENTRIES`]: strangers can fill only their own table.
pub const MAX_REFUSAL_ROWS: u64 = 10_080;

/// Why the audit log cannot be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    #[error("the audit log cannot be read: {0}")]
    Storage(#[from] redb::Error),
    #[error("an audit record is unreadable: {0}")]
    Record(#[from] postcard::Error),
}

/// Appends tallies of refused unauthenticated requests, dropping the oldest
/// beyond [`MAX_REFUSAL_ROWS`].
pub fn append_refusals(db: &redb::Database, tallies: &[RefusalCount]) -> Result<(), redb::Error> {
    let tx = db.begin_write()?;
    {
        let mut table = tx.open_table(REFUSALS)?;
        let first = table.last()?.map_or(0, |(k, _)| k.value()) + 1;
        for (seq, t) in (first..).zip(tallies) {
            let bytes = postcard::to_stdvec(t)
                .map_err(|e| redb::Error::Corrupted(format!("refusal tally: {e}")))?;
            table.insert(seq, bytes.as_slice())?;
        }
        let len = table.len()?;
        if len > MAX_REFUSAL_ROWS {
            let first = table.first()?.map_or(1, |(k, _)| k.value());
            let drop_to = first + (len - MAX_REFUSAL_ROWS) - 1;
            table.retain_in(..=drop_to, |_, _| false)?;
        }
    }
    tx.commit()?;
    Ok(())
}

/// The newest `limit` tallies, oldest first.
pub fn read_refusals(db: &redb::Database, limit: usize) -> Result<Vec<RefusalCount>, AuditError> {
    let tx = db.begin_read().map_err(redb::Error::from)?;
    let table = match tx.open_table(REFUSALS) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(e) => return Err(redb::Error::from(e).into()),
    };
    let mut out = Vec::new();
    for entry in table.iter().map_err(redb::Error::from)?.rev().take(limit) {
        let (_, v) = entry.map_err(redb::Error::from)?;
        if let Ok(t) = postcard::from_bytes::<RefusalCount>(v.value()) {
            out.push(t);
        }
    }
    out.reverse();
    Ok(out)
}

/// Most entries kept; older ones are dropped in batches, and the hash of the
/// last dropped entry is kept as the chain's new anchor.
pub const MAX_ENTRIES: u64 = 1_000_000;
/// The meta key holding `(seq, hash)` of the last pruned entry.
pub const ANCHOR_KEY: &str = "audit-anchor";

/// A decision to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub at_ms: u64,
    pub who: String,
    pub action: String,
    pub workspace: Option<WorkspaceId>,
    pub allow: bool,
    pub reason: String,
}

/// What `audit-1` stores per entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Record {
    at_ms: u64,
    who: String,
    action: String,
    workspace: Option<[u8; 16]>,
    allow: bool,
    reason: String,
    hash: [u8; 32],
}

/// The part of a record the hash covers (everything but the hash).
#[derive(Serialize)]
struct Hashed<'a> {
    seq: u64,
    at_ms: u64,
    who: &'a str,
    action: &'a str,
    workspace: Option<[u8; 16]>,
    allow: bool,
    reason: &'a str,
}

fn chain_hash(prev: &[u8; 32], seq: u64, r: &Record) -> Result<[u8; 32], postcard::Error> {
    let body = postcard::to_stdvec(&Hashed {
        seq,
        at_ms: r.at_ms,
        who: &r.who,
        action: &r.action,
        workspace: r.workspace,
        allow: r.allow,
        reason: &r.reason,
    })?;
    let mut h = blake3::Hasher::new();
    h.update(prev);
    h.update(&body);
    Ok(*h.finalize().as_bytes())
}

/// The end of the chain: the last sequence number and its hash.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tip {
    pub seq: u64,
    pub hash: [u8; 32],
}

/// Reads the chain's tip (or the anchor of an empty, pruned log).
pub fn tip(db: &redb::Database) -> Result<Tip, AuditError> {
    let tx = db.begin_read().map_err(redb::Error::from)?;
    let table = tx.open_table(AUDIT).map_err(redb::Error::from)?;
    if let Some((k, v)) = table.last().map_err(redb::Error::from)? {
        let r: Record = postcard::from_bytes(v.value())?;
        return Ok(Tip {
            seq: k.value(),
            hash: r.hash,
        });
    }
    anchor(&tx)
}

fn anchor(tx: &redb::ReadTransaction) -> Result<Tip, AuditError> {
    let meta = tx
        .open_table(super::tables::META)
        .map_err(redb::Error::from)?;
    Ok(match meta.get(ANCHOR_KEY).map_err(redb::Error::from)? {
        Some(v) => {
            let (seq, hash): (u64, [u8; 32]) = postcard::from_bytes(v.value())?;
            Tip { seq, hash }
        }
        None => Tip::default(),
    })
}

/// Appends decisions after `tip` inside a write transaction; returns the new
/// tip. Over `max_entries`, drops the oldest tenth, keeping the last dropped
/// entry's hash as the chain's anchor.
pub fn append(
    tx: &redb::WriteTransaction,
    mut tip: Tip,
    decisions: &[Decision],
    max_entries: u64,
) -> Result<Tip, redb::Error> {
    let storage = |e: postcard::Error| redb::Error::Corrupted(format!("audit entry: {e}"));
    let mut table = tx.open_table(AUDIT)?;
    for d in decisions {
        let mut r = Record {
            at_ms: d.at_ms,
            who: d.who.clone(),
            action: d.action.clone(),
            workspace: d.workspace.map(|w| *w.as_bytes()),
            allow: d.allow,
            reason: d.reason.clone(),
            hash: [0; 32],
        };
        let seq = tip.seq + 1;
        r.hash = chain_hash(&tip.hash, seq, &r).map_err(storage)?;
        let bytes = postcard::to_stdvec(&r).map_err(storage)?;
        table.insert(seq, bytes.as_slice())?;
        tip = Tip { seq, hash: r.hash };
    }
    if table.len()? > max_entries {
        let first = table.first()?.map_or(1, |(k, _)| k.value());
        let last_dropped = first + (max_entries / 10).max(1) - 1;
        let dropped: Option<Record> = table
            .get(last_dropped)?
            .and_then(|v| postcard::from_bytes(v.value()).ok());
        if let Some(r) = dropped {
            let anchor = postcard::to_stdvec(&(last_dropped, r.hash)).map_err(storage)?;
            table.retain_in(..=last_dropped, |_, _| false)?;
            tx.open_table(super::tables::META)?
                .insert(ANCHOR_KEY, anchor.as_slice())?;
        }
    }
    Ok(tip)
}

/// Redacts every entry about workspace `ws` (its id in the entry, or its id
/// written in the action or reason) inside a write transaction, for a
/// workspace this node forgets: who, when and allow/deny stay, what and
/// why become "redacted". The chain is re-sealed from the first redacted
/// entry on (each later hash recomputed), so it still verifies; the caller
/// records the redaction as a new entry. Returns the new tip and how many
/// entries were redacted.
pub fn redact_workspace(
    tx: &redb::WriteTransaction,
    tip: Tip,
    ws: &WorkspaceId,
) -> Result<(Tip, u64), redb::Error> {
    let storage = |e: postcard::Error| redb::Error::Corrupted(format!("audit entry: {e}"));
    let text = ws.to_string();
    let bytes = *ws.as_bytes();
    let mut table = tx.open_table(AUDIT)?;
    let mut first = None;
    for entry in table.iter()? {
        let (k, v) = entry?;
        if let Ok(r) = postcard::from_bytes::<Record>(v.value())
            && about(&r, &bytes, &text)
        {
            first = Some(k.value());
            break;
        }
    }
    let Some(first) = first else {
        return Ok((tip, 0));
    };
    // The hash the re-sealed part starts from: the entry before, or the
    // anchor of a pruned log.
    let mut prev = match table.range(..first)?.next_back() {
        Some(entry) => {
            let (k, v) = entry?;
            let r: Record = postcard::from_bytes(v.value()).map_err(storage)?;
            Tip {
                seq: k.value(),
                hash: r.hash,
            }
        }
        None => {
            let meta = tx.open_table(super::tables::META)?;
            match meta.get(ANCHOR_KEY)? {
                Some(v) => {
                    let (seq, hash): (u64, [u8; 32]) =
                        postcard::from_bytes(v.value()).map_err(storage)?;
                    Tip { seq, hash }
                }
                None => Tip::default(),
            }
        }
    };
    let mut rewritten = Vec::new();
    let mut redacted = 0;
    for entry in table.range(first..)? {
        let (k, v) = entry?;
        let seq = k.value();
        let mut r: Record = postcard::from_bytes(v.value()).map_err(storage)?;
        if about(&r, &bytes, &text) {
            r.workspace = None;
            r.action = REDACTED.to_owned();
            r.reason = REDACTED.to_owned();
            redacted += 1;
        }
        r.hash = chain_hash(&prev.hash, seq, &r).map_err(storage)?;
        prev = Tip { seq, hash: r.hash };
        rewritten.push((seq, postcard::to_stdvec(&r).map_err(storage)?));
    }
    for (seq, bytes) in rewritten {
        table.insert(seq, bytes.as_slice())?;
    }
    debug_assert_eq!(prev.seq, tip.seq);
    Ok((prev, redacted))
}

/// What a redacted entry says instead of its action and reason.
pub const REDACTED: &str = "(redacted: the workspace was removed from this node)";

fn about(r: &Record, ws: &[u8; 16], text: &str) -> bool {
    r.workspace.as_ref() == Some(ws) || r.action.contains(text) || r.reason.contains(text)
}

/// Reads the log: verifies the whole chain, and returns the newest `limit`
/// entries that `visible` admits, oldest first.
pub fn read(
    db: &redb::Database,
    limit: usize,
    visible: impl Fn(Option<WorkspaceId>, bool) -> bool,
) -> Result<(Vec<AuditEntry>, AuditChain), AuditError> {
    let tx = db.begin_read().map_err(redb::Error::from)?;
    let start = anchor(&tx)?;
    let table = tx.open_table(AUDIT).map_err(redb::Error::from)?;
    let mut prev = start;
    let mut chain = AuditChain {
        intact: true,
        checked: 0,
        broken_at: None,
    };
    let mut out = std::collections::VecDeque::with_capacity(limit.min(4096));
    for entry in table.iter().map_err(redb::Error::from)? {
        let (k, v) = entry.map_err(redb::Error::from)?;
        let seq = k.value();
        chain.checked += 1;
        let record: Option<Record> = postcard::from_bytes(v.value()).ok();
        let follows = record.as_ref().is_some_and(|r| {
            seq == prev.seq + 1 && chain_hash(&prev.hash, seq, r).is_ok_and(|h| h == r.hash)
        });
        if !follows && chain.intact {
            chain.intact = false;
            chain.broken_at = Some(seq);
        }
        let Some(r) = record else {
            prev = Tip { seq, hash: [0; 32] };
            continue;
        };
        prev = Tip { seq, hash: r.hash };
        let workspace = r.workspace.map(WorkspaceId::from_bytes);
        if !visible(workspace, r.allow) {
            continue;
        }
        if out.len() == limit {
            out.pop_front();
        }
        if limit > 0 {
            out.push_back(AuditEntry {
                seq,
                at: r.at_ms,
                who: r.who,
                action: r.action,
                workspace,
                decision: if r.allow { "allow" } else { "deny" }.into(),
                reason: r.reason,
                hash: hex::encode(r.hash),
            });
        }
    }
    Ok((out.into_iter().collect(), chain))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decision(i: u64, allow: bool) -> Decision {
        Decision {
            at_ms: 1_700_000_000_000 + i,
            who: "local:api-token".into(),
            action: format!("GET /api/v1/things/{i}"),
            workspace: None,
            allow,
            reason: "ok".into(),
        }
    }

    fn db_with(n: u64) -> (tempfile::TempDir, redb::Database) {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = redb::Database::create(dir.path().join("a.redb")).expect("db");
        let tx = db.begin_write().expect("tx");
        tx.open_table(super::super::tables::META).expect("meta");
        let decisions: Vec<Decision> = (0..n).map(|i| decision(i, i % 3 != 0)).collect();
        append(&tx, Tip::default(), &decisions, MAX_ENTRIES).expect("append");
        tx.commit().expect("commit");
        (dir, db)
    }

    #[test]
    fn an_untouched_chain_verifies() {
        let (_dir, db) = db_with(50);
        let (entries, chain) = read(&db, 10, |_, _| true).expect("read");
        assert!(chain.intact);
        assert_eq!(chain.checked, 50);
        assert_eq!(entries.len(), 10);
        assert_eq!(entries.first().map(|e| e.seq), Some(41));
        assert_eq!(entries[9].decision, "allow");
        assert_eq!(tip(&db).expect("tip").seq, 50);
    }

    #[test]
    fn edits_removals_and_reorders_show() {
        type Tamper = fn(&mut redb::Table<u64, &[u8]>);
        let tampers: [(Tamper, u64); 3] = [
            // Turn a denial into an allow.
            (
                |t| {
                    // Entry 7 holds decision 6, a denial (every third is).
                    let bytes = t.get(7).expect("get").expect("7").value().to_vec();
                    let mut r: Record = postcard::from_bytes(&bytes).expect("record");
                    assert!(!r.allow);
                    r.allow = true;
                    let b = postcard::to_stdvec(&r).expect("encode");
                    t.insert(7, b.as_slice()).expect("insert");
                },
                7,
            ),
            // Remove an entry.
            (
                |t| {
                    t.remove(20).expect("remove");
                },
                21,
            ),
            // Swap two entries.
            (
                |t| {
                    let a = t.get(30).expect("get").expect("30").value().to_vec();
                    let b = t.get(31).expect("get").expect("31").value().to_vec();
                    t.insert(30, b.as_slice()).expect("insert");
                    t.insert(31, a.as_slice()).expect("insert");
                },
                30,
            ),
        ];
        for (tamper, broken_at) in tampers {
            let (_dir, db) = db_with(40);
            let tx = db.begin_write().expect("tx");
            {
                let mut t = tx.open_table(AUDIT).expect("table");
                tamper(&mut t);
            }
            tx.commit().expect("commit");
            let (_, chain) = read(&db, 0, |_, _| true).expect("read");
            assert!(!chain.intact);
            assert_eq!(chain.broken_at, Some(broken_at));
        }
    }

    #[test]
    fn a_full_log_drops_its_oldest_and_stays_verifiable() {
        let (_dir, db) = db_with(0);
        let mut tip = Tip::default();
        for i in 0..120 {
            let tx = db.begin_write().expect("tx");
            tip = append(&tx, tip, &[decision(i, true)], 50).expect("append");
            tx.commit().expect("commit");
        }
        let (entries, chain) = read(&db, 1000, |_, _| true).expect("read");
        assert!(chain.intact, "{chain:?}");
        assert!(
            entries.len() <= 51 && entries.len() >= 45,
            "{}",
            entries.len()
        );
        assert_eq!(entries.last().map(|e| e.seq), Some(120));
        assert_eq!(tip.seq, 120);
    }

    #[test]
    fn redacting_a_workspace_keeps_the_chain_verifiable_and_leaves_no_trace() {
        let (_dir, db) = db_with(0);
        let gone = WorkspaceId::from_bytes([7; 16]);
        let kept = WorkspaceId::from_bytes([9; 16]);
        let mut decisions: Vec<Decision> = (0..30).map(|i| decision(i, true)).collect();
        decisions[3].workspace = Some(gone);
        decisions[4].action = format!("GET /api/v1/workspaces/{gone}/files/secret.py");
        decisions[5].workspace = Some(kept);
        decisions[20].workspace = Some(gone);
        let tx = db.begin_write().expect("tx");
        let tip = append(&tx, Tip::default(), &decisions, MAX_ENTRIES).expect("append");
        let (new_tip, n) = redact_workspace(&tx, tip, &gone).expect("redact");
        tx.commit().expect("commit");
        assert_eq!(n, 3);
        assert_eq!(new_tip.seq, tip.seq);
        assert_ne!(new_tip.hash, tip.hash, "re-sealed");
        assert_eq!(super::tip(&db).expect("tip"), new_tip);
        let (entries, chain) = read(&db, 100, |_, _| true).expect("read");
        assert!(chain.intact, "{chain:?}");
        assert_eq!(entries.len(), 30);
        assert_eq!(entries[3].action, REDACTED);
        assert_eq!(entries[3].workspace, None);
        assert_eq!(
            entries[5].workspace,
            Some(kept),
            "other workspaces untouched"
        );
        let text = gone.to_string();
        assert!(
            entries
                .iter()
                .all(|e| !e.action.contains(&text) && e.workspace != Some(gone))
        );
        // A later append continues the re-sealed chain.
        let tx = db.begin_write().expect("tx");
        append(&tx, new_tip, &[decision(99, false)], MAX_ENTRIES).expect("append");
        tx.commit().expect("commit");
        assert!(read(&db, 0, |_, _| true).expect("read").1.intact);
    }

    #[test]
    fn visibility_filters_entries_but_not_the_check() {
        let (_dir, db) = db_with(12);
        let (entries, chain) = read(&db, 100, |_, _| false).expect("read");
        assert!(entries.is_empty());
        assert_eq!(chain.checked, 12);
    }
}
