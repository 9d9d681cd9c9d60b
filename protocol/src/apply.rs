//! Applying changes to an `AutoCommit`: the one place every crate does it.
//!
//! Automerge 0.12's batch apply records a patch for every inserted
//! character even when the document's patch log is inactive (the guard the
//! local-transaction path has is missing there), and `AutoCommit` keeps that
//! log for the document's lifetime: a 2 KB file applied from one change held
//! about 0.5 MB, a 10,000-file workspace loaded from uncompacted records
//! 5.4 GB, and every `clone` copied it. Clearing the log after each apply
//! keeps a document the size of its operations. Nothing here uses the log:
//! diffs are computed between explicit heads.

use automerge::{AutoCommit, AutomergeError, Change};

/// Applies `changes` to `am` and drops the patches Automerge logged for them.
pub fn apply_changes(
    am: &mut AutoCommit,
    changes: impl IntoIterator<Item = Change> + Clone,
) -> Result<(), AutomergeError> {
    #[allow(clippy::disallowed_methods)] // the one call, wrapped
    let applied = am.apply_changes(changes);
    am.reset_diff_cursor();
    applied
}

/// Drops the patches Automerge logged while receiving a sync message (which
/// may carry changes).
pub fn forget_patches(am: &mut AutoCommit) {
    am.reset_diff_cursor();
}

#[cfg(test)]
mod tests {
    use automerge::transaction::Transactable;
    use automerge::{ObjType, ROOT, ReadDoc};

    use super::*;

    /// A document built from a change holds about what one built by loading
    /// a saved copy holds, not a patch per character. Measured by the size
    /// of a clone's debug form, which includes the patch log.
    #[test]
    fn an_applied_change_leaves_no_patch_log_behind() {
        let mut source = AutoCommit::new();
        let text = source
            .put_object(ROOT, "text", ObjType::Text)
            .expect("text");
        source
            .splice_text(&text, 0, 0, &"x = 1\n".repeat(400))
            .expect("splice");
        source.commit();
        let change = source.get_last_local_change().expect("change");

        let mut plain = AutoCommit::new();
        #[allow(clippy::disallowed_methods)] // what the wrapper fixes
        plain.apply_changes([change.clone()]).expect("apply");
        let mut fixed = AutoCommit::new();
        apply_changes(&mut fixed, [change]).expect("apply");

        assert_eq!(fixed.text(&text).expect("text"), "x = 1\n".repeat(400));
        let logged = format!("{plain:?}").len();
        let kept = format!("{fixed:?}").len();
        assert!(
            kept * 2 < logged,
            "the applied document still carries its patches: {kept} vs {logged} bytes of state"
        );
    }
}
