//! The watch checker: every watcher sees every revision of its prefix, in order, with no gap and
//! no duplicate, across reconnects.
//!
//! The workload writes unique values to a few keys under one prefix, one key per request (so
//! one event per revision), and records each write's outcome and, when acknowledged, its
//! revision. Watchers follow the prefix from a start revision; when a stream breaks they
//! reconnect (often to another member) from the revision after the last one they were sent,
//! and at the end they ask for progress until it reaches the final revision. Ground truth then
//! comes from three places that must all agree: acknowledged writes (their revisions), the
//! final read of every key (value and mod revision), and the other watchers.
//!
//! Anomalies, per watcher:
//! - `out_of_order`: an event at or below the previous one's revision (a duplicate or a
//!   reordering), or below where the watcher (re)started;
//! - `phantom`: an event whose value no write carried, or a write that definitely failed, or at
//!   a revision other than the one the write was acknowledged at;
//! - `gap`: an acknowledged write, a final value, or an event another watcher saw, at a revision
//!   this watcher covered, that it never received;
//! - `disagreement`: two watchers saw different events at the same revision;
//! - `behind`: a watcher that never reached the final revision (its coverage is then only what
//!   it claims, and it is reported).

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// How a write ended for the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WatchWriteOutcome {
    /// Acknowledged at this revision.
    Ok { revision: i64 },
    /// Definitely not applied.
    Fail,
    /// May or may not have been applied.
    Unknown,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchWrite {
    pub key: String,
    /// Unique across the history.
    pub value: u64,
    pub outcome: WatchWriteOutcome,
}

/// One event a watcher received.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeenEvent {
    pub revision: i64,
    pub key: String,
    pub value: u64,
}

/// One connection of a watcher: where it asked to start and what it received.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segment {
    pub endpoint: String,
    /// The start revision it asked for.
    pub from: i64,
    pub events: Vec<SeenEvent>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatcherLog {
    pub id: usize,
    /// The first revision it asked for.
    pub start: i64,
    pub segments: Vec<Segment>,
    /// The revision up to which it was sent everything, by its last progress notification (or
    /// its last event); `None` if it learned nothing.
    pub covered_through: Option<i64>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchHistory {
    pub writes: Vec<WatchWrite>,
    pub watchers: Vec<WatcherLog>,
    /// Final read of every key: value and mod revision.
    pub finals: BTreeMap<String, (u64, i64)>,
    /// The store's revision at the final read; every watcher should reach it.
    pub final_revision: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchAnomaly {
    pub watcher: usize,
    pub kind: String,
    pub detail: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchReport {
    pub events_seen: usize,
    pub reconnects: usize,
    pub anomalies: Vec<WatchAnomaly>,
    /// Acknowledged writes that some watcher covering them did not see (a subset of gaps).
    pub lost_acked: usize,
}

impl WatchReport {
    pub fn valid(&self) -> bool {
        self.anomalies.is_empty()
    }
}

impl fmt::Display for WatchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "watch: {} events seen, {} reconnects, {} anomalies ({} acknowledged writes missed)",
            self.events_seen,
            self.reconnects,
            self.anomalies.len(),
            self.lost_acked
        )?;
        for a in self.anomalies.iter().take(super::set::MAX_LISTED) {
            writeln!(f, "  watcher {}: {}: {}", a.watcher, a.kind, a.detail)?;
        }
        if self.anomalies.len() > super::set::MAX_LISTED {
            writeln!(f, "  ... {} more", self.anomalies.len() - super::set::MAX_LISTED)?;
        }
        Ok(())
    }
}

/// Checks a watch history (see the module docs).
pub fn check_watch(h: &WatchHistory) -> WatchReport {
    let mut r = WatchReport::default();
    let anomaly = |r: &mut WatchReport, watcher: usize, kind: &str, detail: String| {
        r.anomalies.push(WatchAnomaly { watcher, kind: kind.to_string(), detail });
    };
    let writes: BTreeMap<u64, &WatchWrite> = h.writes.iter().map(|w| (w.value, w)).collect();

    // What must be seen at each revision, from acknowledged writes and final values.
    let mut truth: BTreeMap<i64, (String, u64, &'static str)> = BTreeMap::new();
    for w in &h.writes {
        if let WatchWriteOutcome::Ok { revision } = w.outcome {
            truth.insert(revision, (w.key.clone(), w.value, "acknowledged write"));
        }
    }
    for (key, &(value, rev)) in &h.finals {
        truth.entry(rev).or_insert((key.clone(), value, "final value"));
    }

    // Every event any watcher saw, by revision (first seen wins; disagreements reported).
    let mut seen_anywhere: BTreeMap<i64, (String, u64, usize)> = BTreeMap::new();
    let mut per_watcher: Vec<BTreeMap<i64, (String, u64)>> = Vec::new();
    for w in &h.watchers {
        r.reconnects += w.segments.len().saturating_sub(1);
        let mut mine = BTreeMap::new();
        let mut last: Option<i64> = None;
        for s in &w.segments {
            for e in &s.events {
                r.events_seen += 1;
                if e.revision < s.from || e.revision < w.start {
                    anomaly(
                        &mut r,
                        w.id,
                        "out_of_order",
                        format!("event at {} before the segment's start {} ({})", e.revision, s.from, s.endpoint),
                    );
                }
                if let Some(l) = last {
                    if e.revision <= l {
                        let what = if e.revision == l { "duplicate" } else { "reordered" };
                        anomaly(&mut r, w.id, "out_of_order", format!("{what}: event at {} after {l}", e.revision));
                    }
                }
                last = Some(last.map_or(e.revision, |l| l.max(e.revision)));
                match writes.get(&e.value) {
                    None => anomaly(
                        &mut r,
                        w.id,
                        "phantom",
                        format!("value {} at {} was never written", e.value, e.revision),
                    ),
                    Some(wr) if wr.key != e.key => anomaly(
                        &mut r,
                        w.id,
                        "phantom",
                        format!("value {} was written to {} but seen on {}", e.value, wr.key, e.key),
                    ),
                    Some(wr) => match wr.outcome {
                        WatchWriteOutcome::Fail => anomaly(
                            &mut r,
                            w.id,
                            "phantom",
                            format!("value {} at {} comes from a write that failed", e.value, e.revision),
                        ),
                        WatchWriteOutcome::Ok { revision } if revision != e.revision => anomaly(
                            &mut r,
                            w.id,
                            "phantom",
                            format!("value {} seen at {} but acknowledged at {revision}", e.value, e.revision),
                        ),
                        _ => {}
                    },
                }
                match seen_anywhere.get(&e.revision) {
                    Some((k, v, other)) if (k, v) != (&e.key, &e.value) => anomaly(
                        &mut r,
                        w.id,
                        "disagreement",
                        format!("at {}: {}={} here, {}={} at watcher {other}", e.revision, e.key, e.value, k, v),
                    ),
                    Some(_) => {}
                    None => {
                        seen_anywhere.insert(e.revision, (e.key.clone(), e.value, w.id));
                    }
                }
                mine.insert(e.revision, (e.key.clone(), e.value));
            }
        }
        per_watcher.push(mine);
    }

    // Gaps: within what each watcher covered, everything the truth or another watcher has.
    for (w, mine) in h.watchers.iter().zip(&per_watcher) {
        let through = match w.covered_through {
            Some(t) => t,
            None => {
                anomaly(&mut r, w.id, "behind", "never learned any revision".into());
                continue;
            }
        };
        if through < h.final_revision {
            anomaly(
                &mut r,
                w.id,
                "behind",
                format!("covered up to {through}, the final revision is {}", h.final_revision),
            );
        }
        for (&rev, (key, value, why)) in truth.range(w.start..=through) {
            match mine.get(&rev) {
                Some((k, v)) if (k, v) == (key, value) => {}
                Some((k, v)) => {
                    anomaly(&mut r, w.id, "disagreement", format!("at {rev}: saw {k}={v}, the {why} is {key}={value}"))
                }
                None => {
                    if why == &"acknowledged write" {
                        r.lost_acked += 1;
                    }
                    anomaly(&mut r, w.id, "gap", format!("missed the {why} {key}={value} at {rev}"));
                }
            }
        }
        for (&rev, (key, value, other)) in seen_anywhere.range(w.start..=through) {
            if !mine.contains_key(&rev) && !truth.contains_key(&rev) {
                anomaly(&mut r, w.id, "gap", format!("missed {key}={value} at {rev}, which watcher {other} saw"));
            }
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(key: &str, value: u64, rev: Option<i64>) -> WatchWrite {
        WatchWrite {
            key: key.into(),
            value,
            outcome: rev.map_or(WatchWriteOutcome::Unknown, |revision| WatchWriteOutcome::Ok { revision }),
        }
    }

    fn ev(revision: i64, key: &str, value: u64) -> SeenEvent {
        SeenEvent { revision, key: key.into(), value }
    }

    fn watcher(id: usize, start: i64, segments: Vec<(i64, Vec<SeenEvent>)>, through: i64) -> WatcherLog {
        WatcherLog {
            id,
            start,
            segments: segments
                .into_iter()
                .map(|(from, events)| Segment { endpoint: "e".into(), from, events })
                .collect(),
            covered_through: Some(through),
        }
    }

    /// Three writes at 2, 3, 4 (the one at 3 unknown to its client) and final state.
    fn base() -> WatchHistory {
        WatchHistory {
            writes: vec![write("a", 10, Some(2)), write("b", 11, None), write("a", 12, Some(4))],
            watchers: vec![],
            finals: [("a".to_string(), (12, 4)), ("b".to_string(), (11, 3))].into(),
            final_revision: 4,
        }
    }

    fn kinds(r: &WatchReport) -> Vec<String> {
        r.anomalies.iter().map(|a| a.kind.clone()).collect()
    }

    #[test]
    fn a_complete_history_across_a_reconnect_is_valid() {
        let mut h = base();
        h.watchers = vec![
            watcher(0, 2, vec![(2, vec![ev(2, "a", 10), ev(3, "b", 11)]), (4, vec![ev(4, "a", 12)])], 4),
            watcher(1, 3, vec![(3, vec![ev(3, "b", 11), ev(4, "a", 12)])], 4),
        ];
        let r = check_watch(&h);
        assert!(r.valid(), "{r}");
        assert_eq!((r.events_seen, r.reconnects), (5, 1));
    }

    #[test]
    fn a_missed_acknowledged_write_is_a_gap() {
        let mut h = base();
        h.watchers = vec![watcher(0, 2, vec![(2, vec![ev(3, "b", 11), ev(4, "a", 12)])], 4)];
        let r = check_watch(&h);
        assert_eq!(kinds(&r), vec!["gap"]);
        assert_eq!(r.lost_acked, 1);
    }

    #[test]
    fn a_revision_skipped_on_reconnect_is_a_gap() {
        // Resumed at 4 after seeing only 2: the unknown-outcome write at 3 is a final value.
        let mut h = base();
        h.watchers = vec![watcher(0, 2, vec![(2, vec![ev(2, "a", 10)]), (4, vec![ev(4, "a", 12)])], 4)];
        assert_eq!(kinds(&check_watch(&h)), vec!["gap"]);
    }

    #[test]
    fn an_event_only_another_watcher_saw_is_a_gap() {
        let mut h = base();
        h.writes.push(write("c", 13, None));
        h.final_revision = 5;
        h.finals.insert("c".into(), (13, 5));
        h.finals.insert("a".into(), (12, 4));
        // Without the final value for c, only the other watcher proves the event happened.
        h.finals.remove("c");
        h.watchers = vec![
            watcher(0, 2, vec![(2, vec![ev(2, "a", 10), ev(3, "b", 11), ev(4, "a", 12), ev(5, "c", 13)])], 5),
            watcher(1, 2, vec![(2, vec![ev(2, "a", 10), ev(3, "b", 11), ev(4, "a", 12)])], 5),
        ];
        let r = check_watch(&h);
        assert_eq!(kinds(&r), vec!["gap"]);
        assert_eq!(r.anomalies[0].watcher, 1);
    }

    #[test]
    fn duplicates_and_reordering_are_caught() {
        let mut h = base();
        h.watchers = vec![watcher(
            0,
            2,
            vec![(2, vec![ev(2, "a", 10), ev(3, "b", 11)]), (3, vec![ev(3, "b", 11), ev(4, "a", 12)])],
            4,
        )];
        assert_eq!(kinds(&check_watch(&h)), vec!["out_of_order"]);
        h.watchers = vec![watcher(0, 2, vec![(2, vec![ev(2, "a", 10), ev(4, "a", 12), ev(3, "b", 11)])], 4)];
        assert_eq!(kinds(&check_watch(&h)), vec!["out_of_order"]);
        // Before the requested start.
        h.watchers = vec![watcher(0, 3, vec![(3, vec![ev(2, "a", 10), ev(3, "b", 11), ev(4, "a", 12)])], 4)];
        assert_eq!(kinds(&check_watch(&h)), vec!["out_of_order"]);
    }

    #[test]
    fn phantoms_are_caught() {
        let mut h = base();
        h.writes.push(WatchWrite { key: "c".into(), value: 99, outcome: WatchWriteOutcome::Fail });
        for bad in [ev(3, "b", 77), ev(3, "c", 11), ev(3, "c", 99)] {
            h.watchers = vec![watcher(0, 2, vec![(2, vec![ev(2, "a", 10), bad.clone(), ev(4, "a", 12)])], 4)];
            let k = kinds(&check_watch(&h));
            assert!(k.contains(&"phantom".to_string()), "{bad:?}: {k:?}");
        }
        // An acknowledged value at the wrong revision.
        h.watchers = vec![watcher(0, 2, vec![(2, vec![ev(3, "a", 10), ev(4, "a", 12)])], 4)];
        assert!(kinds(&check_watch(&h)).contains(&"phantom".to_string()));
    }

    #[test]
    fn disagreeing_watchers_and_a_watcher_left_behind_are_caught() {
        let mut h = base();
        h.writes.push(write("b", 14, None));
        h.watchers = vec![
            watcher(0, 2, vec![(2, vec![ev(2, "a", 10), ev(3, "b", 11), ev(4, "a", 12)])], 4),
            watcher(1, 2, vec![(2, vec![ev(2, "a", 10), ev(3, "b", 14), ev(4, "a", 12)])], 4),
        ];
        assert!(kinds(&check_watch(&h)).contains(&"disagreement".to_string()));
        h.watchers = vec![watcher(0, 2, vec![(2, vec![ev(2, "a", 10), ev(3, "b", 11)])], 3)];
        assert_eq!(kinds(&check_watch(&h)), vec!["behind"]);
    }
}
