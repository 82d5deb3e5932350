//! Auto compaction (etcd's `--auto-compaction-mode` and `--auto-compaction-retention`): the
//! leader compacts the history on a schedule, through the log like any Compact request.
//!
//! - `periodic` with a retention `R`: every member samples the revision every `min(R, 1h)/10`;
//!   every `min(R, 1h)` the leader compacts to the revision it saw `R` ago. So with `R = 72h`
//!   the history kept is 72 hours, trimmed hourly; with `R = 30m`, trimmed every 30 minutes.
//! - `revision` with a retention `N`: every 5 minutes the leader compacts to `current - N`.
//!
//! A bare number is hours in periodic mode, as in etcd. Retention 0 switches it off.
//! What a compaction gives up is removed in the background (see `cairn_state`'s store).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_proto::etcdserverpb as pb;

use crate::kv::Kv;
use crate::router::Router;

/// etcd's revision-mode interval.
const REVISION_INTERVAL: Duration = Duration::from_secs(300);
/// etcd's longest periodic interval.
const PERIODIC_INTERVAL_MAX: Duration = Duration::from_secs(3600);

/// What to keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AutoCompaction {
    Off,
    /// Keep this much time of history.
    Periodic(Duration),
    /// Keep this many revisions.
    Revision(i64),
}

impl AutoCompaction {
    /// Parses the two flags as etcd reads them.
    pub fn parse(mode: &str, retention: &str) -> Result<AutoCompaction, String> {
        let retention = retention.trim();
        match mode {
            "periodic" => {
                let d = match retention.parse::<u64>() {
                    Ok(hours) => Duration::from_secs(hours.saturating_mul(3600)),
                    Err(_) => humantime::parse_duration(retention).map_err(|e| {
                        format!("--auto-compaction-retention {retention:?} is not a duration (like 1h, 30m, 5s): {e}")
                    })?,
                };
                Ok(if d.is_zero() { AutoCompaction::Off } else { AutoCompaction::Periodic(d) })
            }
            "revision" => {
                let n =
                    retention.parse::<i64>().ok().filter(|n| *n >= 0).ok_or_else(|| {
                        format!("--auto-compaction-retention {retention:?} is not a number of revisions")
                    })?;
                Ok(if n == 0 { AutoCompaction::Off } else { AutoCompaction::Revision(n) })
            }
            other => Err(format!("unknown --auto-compaction-mode {other:?} (periodic or revision)")),
        }
    }

    /// How often the leader compacts, and how often revisions are sampled.
    fn intervals(&self) -> Option<(Duration, Duration)> {
        match *self {
            AutoCompaction::Off => None,
            AutoCompaction::Periodic(r) => {
                let every = r.min(PERIODIC_INTERVAL_MAX);
                Some((every, (every / 10).max(Duration::from_millis(10))))
            }
            AutoCompaction::Revision(_) => Some((REVISION_INTERVAL, REVISION_INTERVAL)),
        }
    }
}

/// Revisions seen over time, for the periodic mode.
#[derive(Default)]
struct Samples {
    seen: VecDeque<(Instant, i64)>,
}

impl Samples {
    fn add(&mut self, at: Instant, rev: i64, keep: Duration) {
        self.seen.push_back((at, rev));
        // Keep one sample at least `keep` old: the one a compaction needs.
        while self.seen.len() > 1 && self.seen[1].0 + keep <= at {
            self.seen.pop_front();
        }
    }

    /// The newest revision seen at least `age` before `now`.
    fn at_least(&self, age: Duration, now: Instant) -> Option<i64> {
        self.seen.iter().rev().find(|(t, _)| *t + age <= now).map(|(_, r)| *r)
    }
}

/// The revision to compact to now, if any.
fn target(policy: AutoCompaction, samples: &Samples, now: Instant, current: i64) -> Option<i64> {
    match policy {
        AutoCompaction::Off => None,
        AutoCompaction::Periodic(r) => samples.at_least(r, now),
        AutoCompaction::Revision(n) => Some(current - n).filter(|r| *r > 0),
    }
}

/// Runs the policy for as long as the member runs. Every member samples; only the leader
/// proposes.
pub async fn run(router: Arc<Router>, policy: AutoCompaction) {
    let Some((every, sample_every)) = policy.intervals() else {
        return;
    };
    tracing::info!(?policy, ?every, "auto compaction on");
    let kv = Kv::new(router.clone());
    let mut samples = Samples::default();
    let mut next = Instant::now() + every;
    let mut tick = tokio::time::interval(sample_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = Instant::now();
        let store = router.store();
        let current = store.current_revision();
        if let AutoCompaction::Periodic(r) = policy {
            samples.add(now, current, r);
        }
        if now < next {
            continue;
        }
        next = now + every;
        if !router.is_leader() {
            continue;
        }
        let Some(rev) = target(policy, &samples, now, current) else {
            continue;
        };
        if rev <= store.compact_revision() {
            continue;
        }
        tracing::info!(revision = rev, "auto compaction: compacting");
        match kv.compact(pb::CompactionRequest { revision: rev, physical: false }).await {
            Ok(_) => tracing::info!(revision = rev, "auto compaction: compacted"),
            Err(e) => {
                tracing::warn!(revision = rev, error = %e, "auto compaction failed; retrying at the next interval")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_parse_as_etcd_reads_them() {
        let p = AutoCompaction::parse;
        assert_eq!(p("periodic", "0"), Ok(AutoCompaction::Off));
        assert_eq!(p("periodic", "1"), Ok(AutoCompaction::Periodic(Duration::from_secs(3600))));
        assert_eq!(p("periodic", "30m"), Ok(AutoCompaction::Periodic(Duration::from_secs(1800))));
        assert_eq!(p("periodic", "5s"), Ok(AutoCompaction::Periodic(Duration::from_secs(5))));
        assert_eq!(p("revision", "1000"), Ok(AutoCompaction::Revision(1000)));
        assert_eq!(p("revision", "0"), Ok(AutoCompaction::Off));
        assert!(p("revision", "1h").unwrap_err().contains("not a number of revisions"));
        assert!(p("periodic", "soon").unwrap_err().contains("not a duration"));
        assert!(p("weekly", "1").is_err());
    }

    #[test]
    fn intervals_follow_etcd() {
        let hours = |h: u64| AutoCompaction::Periodic(Duration::from_secs(h * 3600));
        assert_eq!(hours(72).intervals().unwrap().0, Duration::from_secs(3600), "72h: hourly");
        assert_eq!(
            AutoCompaction::Periodic(Duration::from_secs(1800)).intervals().unwrap(),
            (Duration::from_secs(1800), Duration::from_secs(180))
        );
        assert_eq!(AutoCompaction::Revision(10).intervals().unwrap().0, Duration::from_secs(300));
        assert_eq!(AutoCompaction::Off.intervals(), None);
    }

    #[test]
    fn periodic_compacts_to_what_was_current_a_retention_ago() {
        let t0 = Instant::now();
        let r = Duration::from_secs(10);
        let policy = AutoCompaction::Periodic(r);
        let mut s = Samples::default();
        for i in 0..=30u64 {
            s.add(t0 + Duration::from_secs(i), 100 + i as i64 * 10, r);
            let now = t0 + Duration::from_secs(i);
            let want = (i >= 10).then(|| 100 + (i as i64 - 10) * 10);
            assert_eq!(target(policy, &s, now, 0), want, "at {i}s");
        }
        assert!(s.seen.len() <= 12, "samples are trimmed: {}", s.seen.len());
        assert_eq!(target(AutoCompaction::Revision(50), &s, t0, 120), Some(70));
        assert_eq!(target(AutoCompaction::Revision(500), &s, t0, 120), None);
    }
}
