//! One document open in the editor, kept in step with the node.
//!
//! The editor's text (`shadow`, exactly as its `didChange`s say) is always
//! "the node's text at `base`, plus the editor's own edits since". To send
//! those edits, the server diffs the base text against the shadow and asks
//! the node to apply the difference *at* `base`; the node merges it with
//! whatever arrived meanwhile and answers with the catch-up from the editor's
//! text to the merged one. If the editor has not moved on, the catch-up goes
//! to it as a `workspace/applyEdit`, and the server waits for the editor to
//! report the result (the echo) before it sends anything else. If the
//! editor moved on first, or refused or skipped the edit (a version check),
//! the base stays at the editor's last sent text and the next exchange
//! brings the catch-up again: rebased, resent, never lost or doubled. An
//! edit's fate is read from the editor's answer to *its* request only: the
//! answer to an earlier one can arrive after the next edit went out, and
//! taking it for the next one's would make that edit's echo look like
//! typing (sent back, doubled).

use serde_json::Value;
use xencode_protocol::api::{EditorCursor, SpliceRequest, SpliceResponse};
use xencode_protocol::{WorkspaceId, WorkspacePath};

use xencode_node::workspace::merge;

use super::text::{self, Pos};

/// Where the editor's text stands while an applied edit is awaited.
#[derive(Debug)]
struct Echo {
    /// The text the editor has once it applied the edit.
    target: String,
    /// If it never does: the base to go back to.
    fallback: (Vec<String>, String),
    /// The id of the `applyEdit` request that carries it: the answer to an
    /// earlier one (whose echo was seen) says nothing about this one.
    request: Option<i64>,
    /// The edits sent, and the editor's first change after they were sent
    /// (for the log, when the two disagree).
    sent: String,
    first_change: Option<String>,
}

#[derive(Debug)]
pub struct OpenDoc {
    pub uri: String,
    pub workspace: WorkspaceId,
    pub path: WorkspacePath,
    pub version: i64,
    pub shadow: String,
    /// The node's heads and its text there; `None` before the first answer.
    base: Option<(Vec<String>, String)>,
    /// The editor's text when it opened the document, until the first
    /// answer: everything typed since is the editor's own, even what was
    /// typed before a first request that failed (the node was down) and
    /// went again.
    opened: Option<String>,
    /// The editor's text when the request in flight was sent.
    in_flight: Option<String>,
    echo: Option<Echo>,
    /// The node's file changed since the last exchange.
    pub poll: bool,
    /// The file was not in the workspace when opened: the editor's text is
    /// the news, not the node's.
    pub editor_wins: bool,
    /// A save whose text is not yet a known version of the node's.
    saved: Option<String>,
    /// Where the editor's cursor was last seen (the end of its last edit,
    /// or a position it asked about), as a byte offset into `shadow` that
    /// moves with the text.
    cursor: Option<usize>,
    /// The cursor as last placed in the node's text.
    placed: Option<EditorCursor>,
}

impl OpenDoc {
    pub fn new(
        uri: String,
        workspace: WorkspaceId,
        path: WorkspacePath,
        version: i64,
        text: String,
    ) -> Self {
        Self {
            uri,
            workspace,
            path,
            version,
            opened: Some(text.clone()),
            shadow: text,
            base: None,
            in_flight: None,
            echo: None,
            poll: false,
            editor_wins: false,
            saved: None,
            cursor: None,
            placed: None,
        }
    }

    /// The cursor as an offset into the node's text at a version the node
    /// knows: placed afresh when the editor's text is the node's (nothing
    /// of its own in flight), else where it was last placed.
    pub fn placed_cursor(&mut self) -> Option<EditorCursor> {
        if let (Some(at), Some((heads, base)), None, None) =
            (self.cursor, &self.base, &self.in_flight, &self.echo)
            && *base == self.shadow
            && base.is_char_boundary(at)
        {
            self.placed = Some(EditorCursor {
                path: self.path.clone(),
                offset: base[..at].chars().count() as u64,
                heads: heads.clone(),
            });
        }
        self.placed.clone()
    }

    /// The node's text at the base, if known.
    pub fn node_text(&self) -> Option<&str> {
        self.base.as_ref().map(|(_, t)| t.as_str())
    }

    /// Whether a request may go now and should.
    pub fn next_request(&mut self) -> Option<SpliceRequest> {
        if self.in_flight.is_some() || self.echo.is_some() {
            return None;
        }
        let req = match &self.base {
            None => SpliceRequest::at(self.path.clone(), Vec::new(), Vec::new()),
            Some((heads, base_text)) => {
                let edits = text::diff(base_text, &self.shadow);
                if edits.is_empty() && !self.poll {
                    return None;
                }
                SpliceRequest::at(self.path.clone(), heads.clone(), edits)
            }
        };
        self.poll = false;
        self.in_flight = Some(self.shadow.clone());
        Some(req)
    }

    /// The request in flight failed: it is sent again later.
    pub fn failed(&mut self) {
        self.in_flight = None;
    }

    /// Takes the node's answer; returns the LSP edits to send the editor.
    pub fn answer(&mut self, resp: SpliceResponse) -> Option<Vec<Value>> {
        let sent = self.in_flight.take()?;
        let catch_up = resp.catch_up.unwrap_or_default();
        let mine = resp.mine.unwrap_or_default();
        if self.base.is_none() {
            // The first answer: the node's whole text.
            let node = text::apply_splices("", &catch_up);
            self.base = Some((resp.heads, node.clone()));
            if self.editor_wins {
                // The editor's text goes to the node next.
                return None;
            }
            // What the editor typed since it opened the document is its
            // own, on top of the node's text: the editor gets the node's
            // side, and keeps its keystrokes.
            let opened = self.opened.take().unwrap_or(sent);
            let target = if self.shadow == opened {
                node
            } else {
                let mine = merge::edits(&opened, &self.shadow);
                merge::apply(&node, &merge::rebase(&opened, &mine, &node))
            };
            if target == self.shadow {
                return None;
            }
            return self.expect_echo(target, None);
        }
        let node = text::apply_splices(&sent, &catch_up);
        if self.shadow != sent {
            // The editor moved on: its base is what it sent; the next
            // exchange brings the catch-up again, from there.
            self.base = Some((mine, sent));
            return None;
        }
        if node == self.shadow {
            self.base = Some((resp.heads, node));
            return None;
        }
        self.base = Some((resp.heads, node.clone()));
        self.expect_echo(node, Some((mine, sent)))
    }

    fn expect_echo(
        &mut self,
        target: String,
        fallback: Option<(Vec<String>, String)>,
    ) -> Option<Vec<Value>> {
        let edits = text::text_edits(&self.shadow, &target);
        let fallback = fallback.or_else(|| self.base.clone())?;
        let sent = clip(Value::from(edits.clone()).to_string());
        self.echo = Some(Echo {
            target,
            fallback,
            request: None,
            sent,
            first_change: None,
        });
        Some(edits)
    }

    /// The editor reports a change (one `contentChanges` entry).
    pub fn change(&mut self, change: &Value) -> Result<(), String> {
        // While our own edit is coming back, changes are its echo: not where
        // the editor's user is.
        let echoing = self.echo.is_some();
        if let Some(e) = self.echo.as_mut().filter(|e| e.first_change.is_none()) {
            e.first_change = Some(clip(change.to_string()));
        }
        let replaced = text::apply_change(&mut self.shadow, change)?;
        if self.echo.as_ref().is_some_and(|e| e.target == self.shadow) {
            self.echo = None;
        }
        self.cursor = match (replaced, self.cursor) {
            (None, _) => None,
            (Some((a, _, n)), _) if !echoing => Some(a + n),
            // Someone else's edit: the cursor moves with the text.
            (Some((a, b, n)), Some(c)) if c >= b => Some(c - (b - a) + n),
            (Some((a, _, n)), Some(c)) if c > a => Some(a + n),
            (_, c) => c,
        };
        Ok(())
    }

    /// The editor's cursor is at `pos`.
    pub fn cursor_at(&mut self, pos: Pos) {
        self.cursor = Some(text::byte_at(&self.shadow, pos));
    }

    /// The edits just returned by [`Self::answer`] went to the editor as
    /// the `applyEdit` request `id`.
    pub fn sent_as(&mut self, id: i64) {
        if let Some(e) = &mut self.echo {
            e.request = Some(id);
        }
    }

    /// The editor answered the `applyEdit` request `id`: if its echo has not
    /// been seen, it did not apply it (refused, or skipped as out of date).
    pub fn applied(&mut self, id: i64) {
        if self.echo.as_ref().is_some_and(|e| e.request != Some(id)) {
            return;
        }
        let Some(e) = self.echo.take() else {
            return;
        };
        if self.shadow == e.fallback.1 {
            self.base = Some(e.fallback);
            return;
        }
        // The editor changed its text, and it is neither what it had nor
        // what it was sent. Either it typed and skipped the edit (the usual
        // case: its text is its old one plus a few keystrokes), or it
        // applied the edit a little differently (an editor's own fix-up of
        // the last line, say): taking the second for the first would send
        // the teammate's edit back as this editor's, doubled. The nearer
        // of the two texts tells them apart.
        let typed = distance(&e.fallback.1, &self.shadow);
        let fixed_up = distance(&e.target, &self.shadow);
        if typed <= fixed_up {
            tracing::debug!(uri = %self.uri, typed, fixed_up, "the editor skipped an edit; it is sent again");
            self.base = Some(e.fallback);
        } else {
            // The base stays the node's text the edit brought: the fix-up
            // goes to the node as this editor's change.
            tracing::warn!(
                uri = %self.uri,
                typed,
                fixed_up,
                edits = %e.sent,
                first_change = e.first_change.as_deref().unwrap_or(""),
                "the editor applied an edit differently from what was sent; its difference is taken as its own edit"
            );
        }
    }

    /// The editor saved `text`.
    pub fn save(&mut self, text: String) {
        self.saved = Some(text);
    }

    /// A save whose text is the node's at the base: its hash and heads.
    pub fn settled_save(&mut self) -> Option<([u8; 32], Vec<String>)> {
        if self.echo.is_some() {
            return None;
        }
        let (heads, base_text) = self.base.as_ref()?;
        let saved = self.saved.as_ref()?;
        if saved != base_text {
            return None;
        }
        let hash = *blake3::hash(saved.as_bytes()).as_bytes();
        let heads = heads.clone();
        self.saved = None;
        Some((hash, heads))
    }
}

/// How many characters an edit from `a` to `b` deletes and inserts.
fn distance(a: &str, b: &str) -> usize {
    merge::edits(a, b)
        .iter()
        .map(|e| e.delete + e.insert.chars().count())
        .sum()
}

/// At most 300 bytes of `s` for a log line, cut at a character boundary.
fn clip(mut s: String) -> String {
    let mut end = s.len().min(300);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    s
}

#[cfg(test)]
mod tests;
