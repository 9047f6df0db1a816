//! How a session searches ([`Search`]) and the tree of its experiments, from results.tsv's `parent` column (the
//! run of the kept experiment each one started from). Greedy: every experiment starts from the session's best, so
//! the kept ones form one path, each discard a dead end off it. Frontier: an experiment starts from any kept one
//! (a node of the frontier) and is judged against it, so the kept ones branch. A node is a kept commit; its value
//! is that of its latest kept row (a re-measure of the commit replaces the one before). The session's best after
//! each row ([`running_best`]) and the best's lineage ([`best_path`]) follow the search: the report, its
//! pictures, `compare`, `export` and the dashboard all take them from here.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::metric::Goal;
use crate::results::{Row, Status};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Search {
    /// Each experiment starts from the session's best and is judged against it (the original's hill-climb).
    #[default]
    Greedy,
    /// Each experiment starts from a node of the frontier and is judged against it.
    Frontier,
}

impl Search {
    pub fn as_str(self) -> &'static str {
        match self {
            Search::Greedy => "greedy",
            Search::Frontier => "frontier",
        }
    }
}

impl std::str::FromStr for Search {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Search> {
        match s {
            "greedy" => Ok(Search::Greedy),
            "frontier" => Ok(Search::Frontier),
            _ => anyhow::bail!("unknown search {s:?}: use `greedy` or `frontier`"),
        }
    }
}

impl std::fmt::Display for Search {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The row each row started from: the first row of the run its `parent` column names (None for the baseline,
/// rows from before the column, and a parent the file does not hold).
pub fn parent_rows(rows: &[Row]) -> Vec<Option<usize>> {
    let mut first_of_run: HashMap<u64, usize> = HashMap::new();
    for (i, r) in rows.iter().enumerate() {
        if let Some(e) = &r.extra {
            first_of_run.entry(e.run).or_insert(i);
        }
    }
    rows.iter().map(|r| r.extra.as_ref().and_then(|e| e.parent).and_then(|p| first_of_run.get(&p).copied())).collect()
}

/// The row each row was judged against, whose value its gain is measured from: greedy, the last keep before it
/// (the session's best then); frontier, its parent node as it stood (the node's latest keep before the row; where
/// the row names no parent, the last keep before it). None before the first keep.
pub fn judged_against(rows: &[Row], search: Search) -> Vec<Option<usize>> {
    let parents = parent_rows(rows);
    let mut last_keep = None;
    let mut latest: HashMap<&str, usize> = HashMap::new();
    rows.iter()
        .enumerate()
        .map(|(i, r)| {
            let against = match (search, parents[i]) {
                (Search::Frontier, Some(p)) => latest.get(rows[p].commit.as_str()).copied().or(Some(p)),
                _ => last_keep,
            };
            if r.status == Status::Keep {
                last_keep = Some(i);
                latest.insert(r.commit.as_str(), i);
            }
            against
        })
        .collect()
}

/// The session's best after each row; None before the first keep. Greedy: the value of the last kept row so far
/// (each keep beat the best before it, or re-measured it, which may move it up). Frontier: the best node's value
/// by `goal`, each node at its latest kept row.
pub fn running_best(rows: &[Row], search: Search, goal: Goal) -> Vec<Option<f64>> {
    let mut nodes: HashMap<&str, f64> = HashMap::new();
    let mut best = None;
    rows.iter()
        .map(|r| {
            if r.status == Status::Keep {
                best = match search {
                    Search::Greedy => Some(r.val_bpb),
                    Search::Frontier => {
                        nodes.insert(r.commit.as_str(), r.val_bpb);
                        nodes.values().copied().reduce(|a, b| if goal.better(b, a) { b } else { a })
                    }
                };
            }
            best
        })
        .collect()
}

/// The kept experiments from the baseline to run `run` (each started from the one before), oldest first, by
/// results.tsv's parent column: a node's lineage, which the session branch holds for the best node. A row that
/// names no parent (the baseline, rows from before the column, a best kept under greedy) started from the keep
/// before it.
pub fn lineage(rows: &[Row], run: u64) -> Vec<&Row> {
    let index_of = |r: u64| {
        rows.iter().position(|row| row.status != Status::Rerun && row.extra.as_ref().is_some_and(|e| e.run == r))
    };
    let mut chain = Vec::new();
    let mut next = index_of(run);
    while let Some(i) = next {
        let row = &rows[i];
        chain.push(row);
        let run = row.extra.as_ref().map(|e| e.run);
        next = match row.extra.as_ref().and_then(|e| e.parent) {
            // A parent is an earlier run (kept before its child started): the walk ends, also in a damaged file.
            Some(p) => index_of(p).filter(|_| Some(p) < run),
            None => rows[..i].iter().rposition(|r| r.status == Status::Keep),
        };
    }
    chain.reverse();
    chain
}

/// The best node's lineage, root first, as the indexes of each node's latest kept row: from the best (greedy: the
/// last keep; frontier: the best-valued node, the earliest of equals) up through the rows each started from. A
/// keep whose row names no parent (files from before the column) started from the keep before it.
pub fn best_path(rows: &[Row], search: Search, goal: Goal) -> Vec<usize> {
    let kept: Vec<usize> = (0..rows.len()).filter(|&i| rows[i].status == Status::Keep).collect();
    // Each commit's latest kept row: the node's value.
    let latest: HashMap<&str, usize> = kept.iter().map(|&i| (rows[i].commit.as_str(), i)).collect();
    let best = match search {
        Search::Greedy => kept.last().copied(),
        Search::Frontier => kept.iter().map(|&i| latest[rows[i].commit.as_str()]).reduce(|a, b| {
            if goal.better(rows[b].val_bpb, rows[a].val_bpb) {
                b
            } else {
                a
            }
        }),
    };
    let parents = parent_rows(rows);
    // The row a node first appeared in (its experiment), which names where it started.
    let first: HashMap<&str, usize> = kept.iter().rev().map(|&i| (rows[i].commit.as_str(), i)).collect();
    let mut path = Vec::new();
    let mut at = best;
    while let Some(i) = at {
        if path.contains(&i) {
            break;
        }
        path.push(i);
        let origin = first[rows[i].commit.as_str()];
        let from = match parents[origin] {
            Some(p) => Some(p),
            None if rows[origin].extra.as_ref().is_some_and(|e| e.parent.is_some()) => None,
            // No parent column: the keep before it.
            None => kept.iter().rev().find(|&&k| k < origin && rows[k].commit != rows[origin].commit).copied(),
        };
        at = from.map(|p| latest.get(rows[p].commit.as_str()).copied().unwrap_or(p));
    }
    path.reverse();
    path
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::Extra;

    /// A row of run `run` started from run `parent`.
    fn row(run: u64, commit: &str, status: Status, value: f64, parent: Option<u64>) -> Row {
        Row {
            commit: commit.into(),
            val_bpb: value,
            memory_gb: 1.0,
            status,
            description: format!("run {run}"),
            extra: Some(Extra {
                profile: "small".into(),
                budget: 300.0,
                seconds: 10.0,
                run,
                rule: "margin".into(),
                reason: "r".into(),
                worker: None,
                parent,
            }),
        }
    }

    /// A frontier session: 1 the baseline; 2 and 3 kept from it; 4 discarded from 2; 5 kept from 3 (the best);
    /// 6 kept from 2, last but not best.
    fn branching() -> Vec<Row> {
        vec![
            row(1, "aaaaaaa", Status::Keep, 10.0, None),
            row(2, "bbbbbbb", Status::Keep, 8.0, Some(1)),
            row(3, "ccccccc", Status::Keep, 9.0, Some(1)),
            row(4, "ddddddd", Status::Discard, 8.5, Some(2)),
            row(5, "eeeeeee", Status::Keep, 7.0, Some(3)),
            row(6, "fffffff", Status::Keep, 7.5, Some(2)),
        ]
    }

    #[test]
    fn a_frontier_sessions_best_is_its_best_node_and_its_lineage_runs_through_the_parents() {
        let rows = branching();
        assert_eq!(parent_rows(&rows), [None, Some(0), Some(0), Some(1), Some(2), Some(1)]);
        let best = running_best(&rows, Search::Frontier, Goal::Lower);
        assert_eq!(best, [Some(10.0), Some(8.0), Some(8.0), Some(8.0), Some(7.0), Some(7.0)]);
        assert_eq!(best_path(&rows, Search::Frontier, Goal::Lower), [0, 2, 4]);
        // Each against its parent; read as greedy, against the keep before it.
        assert_eq!(judged_against(&rows, Search::Frontier), [None, Some(0), Some(0), Some(1), Some(2), Some(1)]);
        assert_eq!(judged_against(&rows, Search::Greedy), [None, Some(0), Some(1), Some(2), Some(2), Some(4)]);
        // Read as greedy, the last keep is the best, whatever its value.
        assert_eq!(running_best(&rows, Search::Greedy, Goal::Lower)[5], Some(7.5));
        assert_eq!(best_path(&rows, Search::Greedy, Goal::Lower), [0, 1, 5]);
        // Higher is better: the baseline is the best node, a path of one.
        assert_eq!(best_path(&rows, Search::Frontier, Goal::Higher), [0]);
    }

    #[test]
    fn a_remeasure_replaces_its_nodes_value_and_the_path_goes_through_its_latest_row() {
        let mut rows = branching();
        // Run 5 re-measured on more seeds: worse than 6 now.
        rows.push(row(7, "eeeeeee", Status::Keep, 7.8, Some(5)));
        assert_eq!(running_best(&rows, Search::Frontier, Goal::Lower)[6], Some(7.5));
        assert_eq!(best_path(&rows, Search::Frontier, Goal::Lower), [0, 1, 5]);
        // 5's node at its latest row, on the path of a child kept from it.
        rows.push(row(8, "ggggggg", Status::Keep, 7.0, Some(5)));
        assert_eq!(best_path(&rows, Search::Frontier, Goal::Lower), [0, 2, 6, 7]);
        // 8 is judged against 5's node as re-measured (row 6), not its first value.
        assert_eq!(judged_against(&rows, Search::Frontier)[7], Some(6));
    }

    #[test]
    fn rows_from_before_the_parent_column_follow_the_keeps_in_order() {
        let mut rows = branching();
        for r in &mut rows {
            r.extra.as_mut().unwrap().parent = None;
        }
        assert_eq!(parent_rows(&rows), [None; 6]);
        assert_eq!(best_path(&rows, Search::Greedy, Goal::Lower), [0, 1, 2, 4, 5]);
        let original: Vec<Row> = rows.into_iter().map(|r| Row { extra: None, ..r }).collect();
        assert_eq!(best_path(&original, Search::Greedy, Goal::Lower), [0, 1, 2, 4, 5]);
        assert_eq!(best_path(&[], Search::Frontier, Goal::Lower), Vec::<usize>::new());
    }

    #[test]
    fn a_greedy_sessions_best_is_the_last_kept_value_also_where_a_remeasure_moved_it_up() {
        let rows = [
            row(1, "aaaaaaa", Status::Crash, 0.0, None),
            row(2, "bbbbbbb", Status::Keep, 1.0, None),
            row(3, "ccccccc", Status::Discard, 0.9, Some(2)),
            row(4, "ddddddd", Status::Keep, 0.95, Some(2)),
            row(4, "ddddddd", Status::Rerun, 0.94, Some(2)),
            row(5, "eeeeeee", Status::Crash, 0.0, Some(4)),
            row(6, "ddddddd", Status::Keep, 0.97, Some(4)),
        ];
        let best = running_best(&rows, Search::Greedy, Goal::Lower);
        assert_eq!(best, [None, Some(1.0), Some(1.0), Some(0.95), Some(0.95), Some(0.95), Some(0.97)]);
        // As a frontier, the re-measure replaces the node's value too: 0.97 is still the best node's.
        assert_eq!(running_best(&rows, Search::Frontier, Goal::Lower)[6], Some(0.97));
    }

    #[test]
    fn a_lineage_follows_the_parents_and_before_the_column_the_keeps() {
        let rows = branching();
        let runs = |chain: Vec<&Row>| chain.iter().map(|r| r.extra.as_ref().unwrap().run).collect::<Vec<_>>();
        assert_eq!(runs(lineage(&rows, 5)), [1, 3, 5]);
        assert_eq!(runs(lineage(&rows, 6)), [1, 2, 6]);
        assert_eq!(runs(lineage(&rows, 9)), Vec::<u64>::new(), "no such run");
        // Runs 1 to 3 from before the parent column (3 started from 2, the keep before it), then 5 from 3.
        let mut old = branching();
        for r in &mut old[..3] {
            r.extra.as_mut().unwrap().parent = None;
        }
        assert_eq!(runs(lineage(&old, 5)), [1, 2, 3, 5]);
    }

    #[test]
    fn searches_read_and_print_their_names() {
        assert_eq!("frontier".parse::<Search>().unwrap(), Search::Frontier);
        assert_eq!(Search::default().to_string(), "greedy");
        assert!("beam".parse::<Search>().unwrap_err().to_string().contains("greedy"));
    }
}
