//! How a session searches ([`Search`]): `greedy`, the original's hill-climb (every experiment starts from the
//! session's best and is judged against the best), or `frontier`: the session keeps a tree of its experiments,
//! every kept one a [`Node`] of the frontier, each experiment starts from a node [`choose`]n by a rule that
//! balances the node's value against how often it was tried, and is judged against that node (its parent).
//!
//! The rule is UCB1 on the values scaled to the frontier's range: a node scores
//! `closeness + C·sqrt(ln(1 + T) / (1 + tries))`, where `closeness` is 1 for the best node and 0 for the worst
//! (`1 − gap/widest gap`, the gap being how far its value is behind the best's), `tries` the times a worker started
//! from it (an agent call each, also one that ended in no experiment), `T` those from any node, and `C` = [`EXPLORATION`]. A node no other worker is starting from
//! comes first: two workers share a node only when every node is taken.

use serde::{Deserialize, Serialize};

use crate::metric::Goal;
use crate::state::Best;

/// The weight of the visit term against the value term (which spans 0 to 1).
pub const EXPLORATION: f64 = 0.5;

/// A kept experiment of a frontier session: where later experiments may start.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Node {
    #[serde(flatten)]
    pub at: Best,
    /// The node it started from (None for the baseline).
    pub parent: Option<u64>,
    /// Times a worker started from it so far (agent calls, also those that ended in no experiment).
    pub tries: u64,
}

/// The node (an index into `nodes`) the next experiment starts from, by the rule above; `taken` are the runs of
/// the nodes other workers are starting from now. None only for no nodes.
pub fn choose(nodes: &[Node], taken: &[u64], goal: Goal) -> Option<usize> {
    let best = nodes.iter().map(|n| n.at.val_bpb).reduce(|a, b| if goal.better(b, a) { b } else { a })?;
    let widest = nodes.iter().map(|n| goal.gain(best, n.at.val_bpb)).fold(0.0, f64::max);
    let total: u64 = nodes.iter().map(|n| n.tries).sum();
    let score = |n: &Node| {
        let closeness = if widest > 0.0 { 1.0 - goal.gain(best, n.at.val_bpb) / widest } else { 1.0 };
        closeness + EXPLORATION * ((1.0 + total as f64).ln() / (1.0 + n.tries as f64)).sqrt()
    };
    let free: Vec<usize> = (0..nodes.len()).filter(|&i| !taken.contains(&nodes[i].at.run)).collect();
    let candidates = if free.is_empty() { (0..nodes.len()).collect() } else { free };
    candidates.into_iter().max_by(|&i, &j| {
        let (a, b) = (&nodes[i], &nodes[j]);
        score(a)
            .total_cmp(&score(b))
            // Ties: the better value, then the older node.
            .then_with(|| goal.gain(a.at.val_bpb, b.at.val_bpb).total_cmp(&0.0))
            .then_with(|| b.at.run.cmp(&a.at.run))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(run: u64, value: f64, tries: u64) -> Node {
        Node { at: Best { commit: format!("c{run}"), val_bpb: value, run, seeds: vec![42] }, parent: None, tries }
    }

    #[test]
    fn an_untried_node_comes_before_the_best_tried_often_and_the_best_before_an_equally_tried_worse_one() {
        let nodes = [node(1, 10.0, 10), node(4, 9.0, 10), node(7, 9.5, 0)];
        assert_eq!(choose(&nodes, &[], Goal::Lower), Some(2), "run 7 was never tried");
        let nodes = [node(1, 10.0, 3), node(4, 9.0, 3), node(7, 9.5, 3)];
        assert_eq!(choose(&nodes, &[], Goal::Lower), Some(1), "the same tries: the best value");
        // Where higher is better, the same rule the other way round.
        assert_eq!(choose(&nodes, &[], Goal::Higher), Some(0));
        assert_eq!(choose(&[], &[], Goal::Lower), None);
    }

    #[test]
    fn the_best_is_tried_most_and_a_worse_node_gets_its_turn_as_the_best_is_tried_more() {
        // The best, one halfway along the frontier's range, and the worst.
        let mut nodes = [node(1, 1.0, 0), node(2, 0.0, 0), node(3, 0.5, 0)];
        let mut picks = Vec::new();
        for _ in 0..40 {
            let i = choose(&nodes, &[], Goal::Lower).unwrap();
            nodes[i].tries += 1;
            picks.push(nodes[i].at.run);
        }
        let count = |run: u64| picks.iter().filter(|&&r| r == run).count();
        assert_eq!(picks[0], 2, "the best first: {picks:?}");
        assert!(count(2) > count(3) && count(3) >= 1 && count(3) >= count(1), "{picks:?}");
    }

    #[test]
    fn a_node_another_worker_starts_from_is_skipped_while_another_is_free() {
        let nodes = [node(1, 10.0, 0), node(4, 9.0, 0), node(7, 9.5, 0)];
        assert_eq!(choose(&nodes, &[4], Goal::Lower), Some(2));
        assert_eq!(choose(&nodes, &[4, 7], Goal::Lower), Some(0));
        assert_eq!(choose(&nodes, &[1, 4, 7], Goal::Lower), Some(1), "all taken: the best again");
        assert_eq!(choose(&nodes[..1], &[1], Goal::Lower), Some(0), "one node: shared");
    }
}
