//! Documents that sleep: a file's Automerge document in memory costs about
//! fifty times its saved size (a 2 KB file: ~23 KB resident, ~0.4 KB
//! saved), so a workspace of 10,000 files would hold hundreds of MB for
//! documents nobody is touching. [`Am`] holds a document either awake (an
//! [`AutoCommit`]) or asleep (its saved bytes and heads), wakes it on first
//! use — through `Deref`, so code reads it as it reads any document — and
//! [`Am::sleep`] puts it back. The workspace keeps the most recently used
//! file documents awake ([`super::Workspace::rest`]).
//!
//! What lists and digests need of every file (heads, size, kind, who wrote
//! it last) is kept beside the sleeping bytes, so they wake nothing.

use std::cell::{Cell, OnceCell, RefCell};
use std::ops::{Deref, DerefMut};

use automerge::transaction::Transactable;
use automerge::{ActorId, AutoCommit, ChangeHash};

thread_local! {
    /// Uses so far on this thread: a document's last use is its place in
    /// the least-recently-used order.
    static CLOCK: Cell<u64> = const { Cell::new(0) };
}

fn tick() -> u64 {
    CLOCK.with(|c| {
        let t = c.get() + 1;
        c.set(t);
        t
    })
}

/// What a file listing shows of a document, kept while it sleeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts {
    pub text: bool,
    pub size_bytes: u64,
    pub chars: Option<u64>,
    pub updated_by: String,
    pub updated_at: u64,
}

#[derive(Debug, Clone)]
struct Asleep {
    bytes: Vec<u8>,
    heads: Vec<ChangeHash>,
    actor: ActorId,
}

/// An Automerge document, awake or asleep.
#[derive(Debug, Clone)]
pub struct Am {
    awake: OnceCell<AutoCommit>,
    /// The saved document while it is unchanged since it slept.
    asleep: Option<Asleep>,
    used: Cell<u64>,
    facts: RefCell<Option<Facts>>,
}

impl Am {
    pub fn new(am: AutoCommit) -> Self {
        Self {
            awake: OnceCell::from(am),
            asleep: None,
            used: Cell::new(tick()),
            facts: RefCell::new(None),
        }
    }

    /// Whether the document is in memory as a document.
    pub fn is_awake(&self) -> bool {
        self.awake.get().is_some()
    }

    /// When it was last used (a tick of this thread's clock).
    pub fn last_used(&self) -> u64 {
        self.used.get()
    }

    /// Its heads, without waking it.
    pub fn heads(&mut self) -> Vec<ChangeHash> {
        match (self.awake.get_mut(), &self.asleep) {
            (Some(am), _) => am.get_heads(),
            (None, Some(a)) => a.heads.clone(),
            (None, None) => Vec::new(),
        }
    }

    /// Its facts, computed (waking it) only when unknown.
    pub fn facts(&self, compute: impl FnOnce(&AutoCommit) -> Facts) -> Facts {
        if let Some(f) = self.facts.borrow().as_ref() {
            return f.clone();
        }
        let f = compute(self);
        *self.facts.borrow_mut() = Some(f.clone());
        f
    }

    /// Puts the document to sleep: its saved bytes stay, the document goes.
    /// Not while it has uncommitted operations (false then).
    pub fn sleep(&mut self) -> bool {
        let Some(am) = self.awake.get_mut() else {
            return true;
        };
        if am.pending_ops() > 0 {
            return false;
        }
        if self.asleep.is_none() {
            self.asleep = Some(Asleep {
                bytes: am.save(),
                heads: am.get_heads(),
                actor: am.get_actor().clone(),
            });
        }
        self.awake = OnceCell::new();
        true
    }

    fn wake(&self) -> &AutoCommit {
        self.used.set(tick());
        self.awake.get_or_init(|| {
            let Some(a) = &self.asleep else {
                return AutoCommit::new();
            };
            match AutoCommit::load(&a.bytes) {
                Ok(mut am) => {
                    am.set_actor(a.actor.clone());
                    am
                }
                // Bytes this node saved itself a moment ago: never expected.
                Err(e) => {
                    tracing::error!(error = %e, "a sleeping document did not load; it is empty until restart");
                    AutoCommit::new()
                }
            }
        })
    }
}

impl Deref for Am {
    type Target = AutoCommit;

    fn deref(&self) -> &AutoCommit {
        self.wake()
    }
}

impl DerefMut for Am {
    fn deref_mut(&mut self) -> &mut AutoCommit {
        self.wake();
        // It may change: what was kept of it is stale.
        self.asleep = None;
        *self.facts.get_mut() = None;
        match self.awake.get_mut() {
            Some(am) => am,
            None => unreachable!("woken just above"),
        }
    }
}

#[cfg(test)]
mod tests {
    use automerge::{ObjType, ROOT, ReadDoc};

    use super::*;

    #[test]
    fn a_sleeping_document_wakes_as_it_was_and_changes_make_it_new() {
        let mut raw = AutoCommit::new();
        raw.set_actor(ActorId::from(vec![7u8; 16]));
        let t = raw.put_object(ROOT, "text", ObjType::Text).expect("text");
        raw.splice_text(&t, 0, 0, "hello").expect("splice");
        raw.commit();
        let heads = raw.get_heads();
        let mut am = Am::new(raw);
        let facts = |am: &AutoCommit| Facts {
            text: true,
            size_bytes: am.length(
                am.get(ROOT, "text")
                    .ok()
                    .flatten()
                    .map(|(_, id)| id)
                    .expect("text"),
            ) as u64,
            chars: None,
            updated_by: String::new(),
            updated_at: 0,
        };
        assert_eq!(am.facts(facts).size_bytes, 5);
        assert!(am.sleep());
        assert!(!am.is_awake());
        assert_eq!(am.heads(), heads, "heads without waking");
        assert_eq!(am.facts(|_| unreachable!("kept")).size_bytes, 5);
        assert!(!am.is_awake());
        // Read: wakes, same text, same actor; sleeping again is free.
        let t = am
            .get(ROOT, "text")
            .ok()
            .flatten()
            .map(|(_, id)| id)
            .expect("text");
        assert_eq!(am.text(&t).expect("text"), "hello");
        assert_eq!(am.get_actor(), &ActorId::from(vec![7u8; 16]));
        assert!(am.sleep());
        // A change: the new state is what sleeps next.
        am.splice_text(&t, 5, 0, "!").expect("splice");
        assert!(!am.sleep(), "not with uncommitted operations");
        am.commit();
        assert!(am.sleep());
        assert_eq!(am.text(&t).expect("text"), "hello!");
        assert_ne!(am.heads(), heads);
        assert_eq!(am.facts(facts).size_bytes, 6, "recomputed after the change");
    }
}
