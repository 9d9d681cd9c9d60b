//! Refusals of strangers, tallied instead of audited one by one.
//!
//! Anyone who can reach the API port — any web page, with a no-cors request
//! — can make it refuse requests, thousands a second; anyone who can reach
//! the libp2p port can open sessions with bad tokens. Auditing each would let
//! them flush the log of what members did. So a refused API request without a
//! principal (counted by the API) and a refused session of a peer that is no
//! member of the workspace (counted by the store) are only counted here, per
//! minute, source (the page's `Origin` or `local`; `peer` for the network)
//! and reason, and each minute's tallies go to their own table with its own
//! cap (`audit::MAX_REFUSAL_ROWS`). The number of distinct (source, reason)
//! pairs a minute is bounded too: the rest are counted under one `other`.

use std::collections::BTreeMap;
use std::sync::Mutex;

use xencode_protocol::api::RefusalCount;

/// Distinct (source, reason) pairs tallied per minute before the rest are
/// folded into `other`.
const MAX_KEYS: usize = 32;
/// Longest source kept (an `Origin` header is the client's to choose).
const MAX_SOURCE_CHARS: usize = 100;
const MINUTE_MS: u64 = 60_000;

#[derive(Debug, Default)]
struct Window {
    minute: u64,
    counts: BTreeMap<(String, String), u64>,
}

/// The current minute's tallies.
#[derive(Debug, Default)]
pub struct Refusals {
    window: Mutex<Window>,
}

impl Refusals {
    /// Counts one refusal at `now_ms`; returns the tallies of a finished
    /// minute, to be written, if this refusal began a new one.
    pub fn count(&self, now_ms: u64, source: &str, reason: &str) -> Vec<RefusalCount> {
        let Ok(mut w) = self.window.lock() else {
            return Vec::new();
        };
        let minute = now_ms - now_ms % MINUTE_MS;
        let done = if w.minute != minute {
            let old = std::mem::replace(
                &mut *w,
                Window {
                    minute,
                    counts: BTreeMap::new(),
                },
            );
            tallies(old)
        } else {
            Vec::new()
        };
        let mut source: String = source.chars().take(MAX_SOURCE_CHARS).collect();
        if source.is_empty() {
            source = "local".into();
        }
        let mut key = (source, reason.to_owned());
        if !w.counts.contains_key(&key) && w.counts.len() >= MAX_KEYS - 1 {
            key = ("other".into(), "other".into());
        }
        *w.counts.entry(key).or_default() += 1;
        done
    }

    /// Everything tallied so far, finished minute or not (before the log is
    /// read, so it shows what happened up to now).
    pub fn take(&self) -> Vec<RefusalCount> {
        self.window
            .lock()
            .map(|mut w| tallies(std::mem::take(&mut *w)))
            .unwrap_or_default()
    }
}

fn tallies(w: Window) -> Vec<RefusalCount> {
    w.counts
        .into_iter()
        .map(|((source, reason), count)| RefusalCount {
            minute: w.minute,
            source,
            reason,
            count,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_becomes_a_few_tallies_a_minute() {
        let r = Refusals::default();
        let mut written = Vec::new();
        for i in 0..100_000u64 {
            // 1,000 distinct origins over three minutes.
            let source = format!("http://evil{}.example", i % 1000);
            written.extend(r.count(i * 2, &source, "unauthorized"));
        }
        written.extend(r.take());
        let minutes: std::collections::BTreeSet<u64> = written.iter().map(|t| t.minute).collect();
        assert_eq!(minutes.len(), 4, "{minutes:?}");
        assert!(written.len() <= 4 * MAX_KEYS, "{}", written.len());
        assert_eq!(written.iter().map(|t| t.count).sum::<u64>(), 100_000);
        assert!(written.iter().any(|t| t.source == "other"));
        assert!(r.take().is_empty());
    }
}
