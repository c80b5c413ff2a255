//! The in-sync replica set, as a partition's leader counts it.
//!
//! Kafka's rule (`replica.lag.time.max.ms`): a follower is in sync while, within the last
//! `lag`, it has caught up with where the leader was. The leader samples its commit index
//! as time goes by; a follower is in sync if its matched log reaches the commit index the
//! leader had `lag` ago, and the leader has heard from it within `lag` (an idle partition's
//! dead follower matches the commit forever, but stops answering heartbeats).
//!
//! A new leader has no history: for its first `lag` it keeps the in-sync set the previous
//! leader announced (the voters, for a new partition) and adds any follower that reaches
//! the commit index it started with. Acks are not decided here; a produce with acks=all
//! waits for the Raft majority whatever this set says. The set is what clients and
//! operators see (Metadata, under-replicated partitions), so it must not flap.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use chronik_metastore::types::NodeId;

/// What the leader knows of its group at one tick.
pub struct LeaderView<'a> {
    pub me: NodeId,
    pub term: u64,
    pub commit: Option<u64>,
    pub voters: &'a [NodeId],
    /// The in-sync set announced last (by this leader or the one before it).
    pub announced: &'a [NodeId],
}

#[derive(Default)]
pub struct InSync {
    term: u64,
    /// The commit index from each time it changed, oldest first, reaching back to `lag`.
    commits: VecDeque<(Instant, Option<u64>)>,
    current: Vec<NodeId>,
}

impl InSync {
    /// Recounts the set at `now` and returns it, sorted.
    pub fn update(
        &mut self,
        now: Instant,
        lag: Duration,
        view: &LeaderView<'_>,
        matched: impl Fn(NodeId) -> Option<u64>,
        heard_since: impl Fn(NodeId) -> Option<Duration>,
    ) -> Vec<NodeId> {
        if self.term != view.term || self.commits.is_empty() {
            self.term = view.term;
            self.commits.clear();
            self.commits.push_back((now, view.commit));
        } else if self.commits.back().is_some_and(|(_, c)| *c != view.commit) {
            self.commits.push_back((now, view.commit));
        }
        let horizon = now.checked_sub(lag);
        while self.commits.len() >= 2 && horizon.is_some_and(|h| self.commits[1].0 <= h) {
            self.commits.pop_front();
        }
        let (first_seen, oldest) = self.commits[0];
        // The commit index `lag` ago; None while this leadership is younger than that.
        let threshold = horizon.filter(|h| first_seen <= *h).map(|_| oldest);
        let prior = if view.announced.is_empty() {
            view.voters
        } else {
            view.announced
        };
        let mut isr: Vec<NodeId> = view
            .voters
            .iter()
            .copied()
            .filter(|&f| {
                if f == view.me {
                    return true;
                }
                let heard = heard_since(f).is_some_and(|ago| ago < lag);
                match threshold {
                    Some(t) => heard && matched(f) >= t,
                    None => prior.contains(&f) || (heard && matched(f) >= oldest),
                }
            })
            .collect();
        isr.sort_unstable();
        self.current = isr.clone();
        isr
    }

    /// The set counted last; empty before the first count.
    pub fn current(&self) -> &[NodeId] {
        &self.current
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LAG: Duration = Duration::from_secs(10);

    fn view<'a>(
        term: u64,
        commit: u64,
        voters: &'a [NodeId],
        announced: &'a [NodeId],
    ) -> LeaderView<'a> {
        LeaderView {
            me: 1,
            term,
            commit: Some(commit),
            voters,
            announced,
        }
    }

    #[test]
    fn a_follower_behind_the_commit_of_lag_ago_leaves_and_comes_back() {
        let mut isr = InSync::default();
        let t0 = Instant::now();
        let voters = [1, 2, 3];
        let alive = |_| Some(Duration::from_millis(50));
        // 3 stops at 100 while the leader commits on.
        let matched = |f| if f == 3 { Some(100) } else { Some(10_000) };
        for (secs, commit) in [(0, 100), (5, 200), (11, 300)] {
            let at = t0 + Duration::from_secs(secs);
            let got = isr.update(at, LAG, &view(7, commit, &voters, &[]), matched, alive);
            assert_eq!(got, vec![1, 2, 3], "at {secs} s, within the first lag");
        }
        // 16 s: the commit index 10 s ago was 200 (since 5 s), which 3 has not reached.
        let at = t0 + Duration::from_secs(16);
        assert_eq!(
            isr.update(at, LAG, &view(7, 300, &voters, &[]), matched, alive),
            vec![1, 2]
        );
        let caught_up = |_| Some(300);
        assert_eq!(
            isr.update(at, LAG, &view(7, 300, &voters, &[]), caught_up, alive),
            vec![1, 2, 3]
        );
    }

    #[test]
    fn a_silent_follower_of_an_idle_partition_leaves_after_lag() {
        let mut isr = InSync::default();
        let t0 = Instant::now();
        let voters = [1, 2, 3];
        let matched = |_| Some(100);
        let heard = |f| {
            Some(if f == 3 {
                Duration::from_secs(20)
            } else {
                Duration::ZERO
            })
        };
        let early = isr.update(t0, LAG, &view(7, 100, &voters, &[1, 2, 3]), matched, heard);
        assert_eq!(early, vec![1, 2, 3], "a new leader keeps the announced set");
        let later = t0 + Duration::from_secs(12);
        assert_eq!(
            isr.update(
                later,
                LAG,
                &view(7, 100, &voters, &[1, 2, 3]),
                matched,
                heard
            ),
            vec![1, 2]
        );
    }

    #[test]
    fn a_new_term_starts_over_from_the_announced_set() {
        let mut isr = InSync::default();
        let t0 = Instant::now();
        let voters = [1, 2, 3];
        let silent = |f| (f != 3).then_some(Duration::ZERO);
        let matched = |_| Some(500);
        let at = t0 + Duration::from_secs(30);
        isr.update(t0, LAG, &view(7, 500, &voters, &[]), matched, silent);
        assert_eq!(
            isr.update(at, LAG, &view(7, 500, &voters, &[]), matched, silent),
            vec![1, 2]
        );
        // A new leadership: 3 was announced out, and has not caught up with anything.
        let none = |_| None;
        assert_eq!(
            isr.update(at, LAG, &view(8, 600, &voters, &[1, 2]), none, silent),
            vec![1, 2]
        );
        // A learner is never in sync, however caught up: only voters count.
        assert_eq!(
            isr.update(
                at,
                LAG,
                &view(8, 600, &[1, 2], &[1, 2]),
                |_| Some(600),
                silent
            ),
            vec![1, 2]
        );
    }
}
