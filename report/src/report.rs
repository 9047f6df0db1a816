//! `autoresearch report`: what a results.tsv says, as text and JSON (its picture is [`crate::plot`]'s). Reads ours
//! and the original's five-column files; malformed rows are listed with their line numbers and skipped. The values
//! are the session's metric's (results.tsv names the column `val_bpb` whatever it is), and every gain is by its
//! goal, positive when better: the metric and the noise come from the session folder the file belongs to
//! ([`session_dir_of`]); a file without one is the original's, val_bpb, lower is better. So does the search: a
//! frontier session's best is its best node, each keep's gain is over the node it started from, and the report
//! draws the best's lineage and what was tried from each node ([`crate::tree`]).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::Result;
use serde::Serialize;

use crate::journal::{metric_of, search_of, session_dir_of};
use crate::metric::{Goal, Metric};
use crate::noise::{load_noise, NoiseEstimate};
use crate::results::{self, Row, Status};
use crate::tree::{self, Search};

#[derive(Clone, Debug, Serialize)]
pub struct Point {
    /// 1-based position among the file's rows.
    pub row: usize,
    pub commit: String,
    /// The metric's value (results.tsv's `val_bpb` column, whatever the metric).
    pub val_bpb: f64,
    pub description: String,
    /// The keep rule that decided the row, as recorded (the original's rows name none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// Its run, and the run it started from (the rows name them since the `parent` column).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent: Option<u64>,
}

#[derive(Debug, Serialize)]
pub struct Gain {
    pub commit: String,
    pub description: String,
    pub val_bpb: f64,
    pub previous: f64,
    /// Over `previous`, by the metric's goal: positive when better.
    pub gain: f64,
    /// 2σ of the seed-to-seed spread for the row's profile and budget, where `noise` measured it.
    pub noise_2sigma: Option<f64>,
    /// The gain is smaller than 2σ: it may be luck.
    pub below_noise: bool,
}

#[derive(Debug, Serialize)]
pub struct Skipped {
    pub line: usize,
    pub reason: String,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub file: String,
    /// What the values are, and which way is better.
    pub metric: Metric,
    /// How the session searched: greedy, or from a frontier of kept nodes (left out of the JSON for greedy).
    #[serde(skip_serializing_if = "is_greedy")]
    pub search: Search,
    pub rows: usize,
    pub skipped: Vec<Skipped>,
    /// Rows by status, every status listed.
    pub totals: BTreeMap<String, usize>,
    /// keeps / (keeps + discards)
    pub keep_rate: Option<f64>,
    /// The first row with a result.
    pub baseline: Option<Point>,
    /// The session's best: greedy, the last kept row (each keep beat the one before, or re-measured it);
    /// frontier, the best node (at its latest kept row).
    pub best: Option<Point>,
    /// Frontier sessions (empty for greedy ones, whose tree is one path: the kept rows): the best's lineage, root
    /// first, each row the one after it started from; and what was tried from each node.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub best_path: Vec<Point>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<NodeTries>,
    /// The best's gain over the baseline, by the metric's goal (positive when better), and that in % of the
    /// baseline's size (None where the baseline is 0).
    pub improvement: Option<f64>,
    pub improvement_percent: Option<f64>,
    pub kept: Vec<Point>,
    /// Each keep's gain over what it was judged against (greedy: the keep before it; frontier: the node it started
    /// from), largest first (a re-measure of the same commit is no gain).
    pub top_improvements: Vec<Gain>,
    /// How many of those gains are smaller than 2σ of the measured noise (None where no noise applies).
    pub gains_below_noise: Option<usize>,
    /// Seed-to-seed spread measured by `autoresearch noise`, where the file has one beside it.
    pub noise: Vec<NoiseEstimate>,
    /// One lane per worker, for a session run by several (empty otherwise).
    pub workers: Vec<Lane>,
}

fn is_greedy(search: &Search) -> bool {
    *search == Search::Greedy
}

/// A node of a frontier session: its kept row and the experiments started from it.
#[derive(Debug, Serialize)]
pub struct NodeTries {
    pub row: usize,
    pub run: Option<u64>,
    pub val_bpb: f64,
    /// Experiments started from it, and how many of them were kept (became nodes).
    pub tried: usize,
    pub kept: usize,
    pub on_best_path: bool,
}

/// What one worker of a session did.
#[derive(Debug, Serialize)]
pub struct Lane {
    pub worker: usize,
    pub experiments: usize,
    pub kept: usize,
    pub crashed: usize,
    /// Its experiments' wall time added up (a worker runs one at a time).
    pub hours: f64,
    pub experiments_per_hour: Option<f64>,
}

/// The lanes of the workers that ran `rows`' experiments, by worker number (none where no row names one).
pub fn lanes(rows: &[Row]) -> Vec<Lane> {
    let mut lanes: BTreeMap<usize, Lane> = BTreeMap::new();
    for (_, r) in experiments(rows) {
        let Some(e) = r.extra.as_ref() else { continue };
        let Some(worker) = e.worker else { continue };
        let lane = lanes.entry(worker).or_insert(Lane {
            worker,
            experiments: 0,
            kept: 0,
            crashed: 0,
            hours: 0.0,
            experiments_per_hour: None,
        });
        lane.experiments += 1;
        lane.kept += usize::from(r.status == Status::Keep);
        lane.crashed += usize::from(r.status == Status::Crash);
        lane.hours += e.seconds / 3600.0;
    }
    for lane in lanes.values_mut() {
        lane.experiments_per_hour = (lane.hours > 0.0).then(|| lane.experiments as f64 / lane.hours);
    }
    lanes.into_values().collect()
}

/// The noise estimate that applies to a row: the one of its profile and budget; for the original's rows,
/// which name neither, the only estimate if there is just one.
fn noise_of<'a>(noise: &'a [NoiseEstimate], row: &Row) -> Option<&'a NoiseEstimate> {
    match &row.extra {
        Some(e) => noise.iter().find(|n| n.profile == e.profile && n.budget == e.budget),
        None => noise.first().filter(|_| noise.len() == 1),
    }
}

/// A kept experiment and what it gained over what it was judged against.
pub(crate) struct KeptGain<'a> {
    pub(crate) row: &'a Row,
    /// The value it was judged against (greedy: the keep before it; frontier: its parent node's, as it stood);
    /// None for the first keep and for a re-measure of the same commit (no improvement either way).
    previous: Option<f64>,
    /// Its gain over `previous` by the metric's goal, positive when better.
    gain: Option<f64>,
    /// 2σ of the noise that applies to it.
    noise_2sigma: Option<f64>,
}

impl KeptGain<'_> {
    /// The gain is smaller than 2σ of the measured noise: it may be luck.
    pub(crate) fn below_noise(&self) -> bool {
        self.gain.zip(self.noise_2sigma).is_some_and(|(g, n)| g < n)
    }
}

/// The kept experiments in order, each with its gain (by `goal`) over what it was judged against.
pub(crate) fn kept_gains<'a>(
    rows: &'a [Row],
    noise: &[NoiseEstimate],
    goal: Goal,
    search: Search,
) -> Vec<KeptGain<'a>> {
    let against = tree::judged_against(rows, search);
    experiments(rows)
        .filter(|(_, r)| r.status == Status::Keep)
        .map(|(i, row)| {
            let judged_against = against[i].map(|p| &rows[p]);
            let before = judged_against.filter(|p| p.commit != row.commit).map(|p| p.val_bpb);
            KeptGain {
                row,
                previous: before,
                gain: before.map(|p| goal.gain(row.val_bpb, p)),
                noise_2sigma: noise_of(noise, row).map(|n| 2.0 * n.std),
            }
        })
        .collect()
}

/// The rows that are experiments of their own (not confirmation reruns), with their index.
pub fn experiments(rows: &[Row]) -> impl Iterator<Item = (usize, &Row)> {
    rows.iter().enumerate().filter(|(_, r)| r.status != Status::Rerun)
}

/// The report of the results file at `path`, with the noise estimates and the metric of the session it belongs to.
pub fn build(path: &Path) -> Result<Report> {
    let noise = match session_dir_of(path) {
        Some(dir) => load_noise(&dir)?.into_values().collect(),
        None => Vec::new(),
    };
    Ok(build_from(path, results::read(path)?, noise, metric_of(path)?, search_of(path)?))
}

/// [`build`] from a file already read, with its session's noise estimates, metric and search.
pub fn build_from(
    path: &Path,
    file: results::ResultsFile,
    noise: Vec<NoiseEstimate>,
    metric: Metric,
    search: Search,
) -> Report {
    let rows = &file.rows;
    let point = |i: usize, r: &Row| Point {
        row: i + 1,
        commit: r.commit.clone(),
        val_bpb: r.val_bpb,
        description: r.description.clone(),
        rule: r.extra.as_ref().map(|e| e.rule.clone()),
        run: r.extra.as_ref().map(|e| e.run),
        parent: r.extra.as_ref().and_then(|e| e.parent),
    };
    let mut totals: BTreeMap<String, usize> =
        ["keep", "discard", "crash", "rerun"].iter().map(|s| (s.to_string(), 0)).collect();
    for r in rows {
        *totals.entry(r.status.to_string()).or_default() += 1;
    }
    let (keeps, discards) = (totals["keep"], totals["discard"]);
    let baseline = experiments(rows).find(|(_, r)| r.status != Status::Crash).map(|(i, r)| point(i, r));
    let kept: Vec<Point> =
        experiments(rows).filter(|(_, r)| r.status == Status::Keep).map(|(i, r)| point(i, r)).collect();
    let path_rows = tree::best_path(rows, search, metric.goal);
    let best = path_rows.last().map(|&i| point(i, &rows[i]));
    let (best_path, nodes) = match search {
        Search::Greedy => (Vec::new(), Vec::new()),
        Search::Frontier => (path_rows.iter().map(|&i| point(i, &rows[i])).collect(), node_tries(rows, &path_rows)),
    };
    let improvement = baseline.as_ref().zip(best.as_ref()).map(|(b, k)| metric.goal.gain(k.val_bpb, b.val_bpb));
    let improvement_percent = improvement
        .zip(baseline.as_ref())
        .filter(|(_, b)| b.val_bpb != 0.0)
        .map(|(gain, b)| 100.0 * gain / b.val_bpb.abs());
    let mut top_improvements: Vec<Gain> = kept_gains(rows, &noise, metric.goal, search)
        .into_iter()
        .filter_map(|k| {
            Some(Gain {
                commit: k.row.commit.clone(),
                description: k.row.description.clone(),
                val_bpb: k.row.val_bpb,
                previous: k.previous?,
                gain: k.gain?,
                noise_2sigma: k.noise_2sigma,
                below_noise: k.below_noise(),
            })
        })
        .collect();
    let gains_below_noise = top_improvements
        .iter()
        .any(|g| g.noise_2sigma.is_some())
        .then(|| top_improvements.iter().filter(|g| g.below_noise).count());
    top_improvements.sort_by(|a, b| b.gain.total_cmp(&a.gain));
    Report {
        file: path.display().to_string(),
        metric,
        search,
        rows: rows.len(),
        skipped: file.bad.into_iter().map(|(line, reason)| Skipped { line, reason }).collect(),
        totals,
        keep_rate: (keeps + discards > 0).then(|| keeps as f64 / (keeps + discards) as f64),
        baseline,
        best,
        best_path,
        nodes,
        improvement,
        improvement_percent,
        kept,
        top_improvements,
        gains_below_noise,
        noise,
        workers: lanes(rows),
    }
}

/// Each node (a kept commit, listed at its first row; a re-measure is the same node, whose latest kept row gives
/// the node's run and value) with what was started from it.
fn node_tries(rows: &[Row], best_path: &[usize]) -> Vec<NodeTries> {
    let parents = tree::parent_rows(rows);
    let latest = |commit: &str| rows.iter().rev().find(|r| r.status == Status::Keep && r.commit == commit);
    let on_path: Vec<&str> = best_path.iter().map(|&i| rows[i].commit.as_str()).collect();
    let mut nodes: Vec<NodeTries> = Vec::new();
    let mut seen: Vec<&str> = Vec::new();
    for (i, r) in experiments(rows).filter(|(_, r)| r.status == Status::Keep) {
        if seen.contains(&r.commit.as_str()) {
            continue;
        }
        seen.push(&r.commit);
        let children: Vec<&Row> = experiments(rows)
            .filter(|(j, _)| parents[*j].is_some_and(|p| rows[p].commit == r.commit))
            .map(|(_, c)| c)
            .collect();
        let now = latest(&r.commit).unwrap_or(r);
        nodes.push(NodeTries {
            row: i + 1,
            run: now.extra.as_ref().map(|e| e.run),
            val_bpb: now.val_bpb,
            tried: children.len(),
            kept: children.iter().filter(|c| c.status == Status::Keep && c.commit != r.commit).count(),
            on_best_path: on_path.contains(&r.commit.as_str()),
        });
    }
    nodes
}

/// A column of values shown with 6 decimals, headed by a name `least` characters long: as wide as the wider.
fn column_width(values: impl Iterator<Item = f64>, least: usize) -> usize {
    values.map(|v| format!("{v:.6}").chars().count()).fold(least, usize::max)
}

impl Report {
    pub fn to_text(&self) -> String {
        let name = &self.metric.name;
        let mut t = String::new();
        let _ = writeln!(t, "{}: {} rows", self.file, self.rows);
        let _ = writeln!(t, "metric: {name} ({})", self.metric.goal.phrase());
        if self.search == Search::Frontier {
            t.push_str("search: frontier (each experiment starts from a kept node and is judged against it)\n");
        }
        for s in &self.skipped {
            let _ = writeln!(t, "  skipped line {}: {}", s.line, s.reason);
        }
        let _ = writeln!(t, "\nstatus   rows");
        for (status, n) in &self.totals {
            let _ = writeln!(t, "{status:<8} {n:>4}");
        }
        match self.keep_rate {
            Some(rate) => {
                let _ = writeln!(
                    t,
                    "keep rate: {:.1}% ({} of {})",
                    100.0 * rate,
                    self.totals["keep"],
                    self.totals["keep"] + self.totals["discard"]
                );
            }
            None => t.push_str("keep rate: -\n"),
        }
        if let (Some(b), Some(k)) = (&self.baseline, &self.best) {
            let _ = writeln!(t, "\nbaseline: {:.6}  {}  {}", b.val_bpb, b.commit, b.description);
            let _ = writeln!(t, "best:     {:.6}  {}  {}", k.val_bpb, k.commit, k.description);
            let percent = self.improvement_percent.map_or("-".into(), |p| format!("{p:.2}%"));
            let _ = writeln!(t, "improvement: {:.6} ({percent})", self.improvement.unwrap_or(0.0));
        }
        for n in &self.noise {
            let _ = writeln!(
                t,
                "noise ({} at {} s): {name} {:.6} ± {:.6} over {} seeds",
                n.profile,
                n.budget,
                n.mean,
                n.std,
                n.values.len()
            );
        }
        if !self.kept.is_empty() {
            // The rule that kept each, where the rows say (its margin's numbers; the σ's origin left out).
            let rules: Vec<Option<&str>> =
                self.kept.iter().map(|k| k.rule.as_deref().map(|r| r.split(" (").next().unwrap_or(r))).collect();
            let rule_width = rules.iter().flatten().map(|r| r.chars().count()).max();
            let vw = column_width(self.kept.iter().map(|k| k.val_bpb), name.chars().count());
            let rule_head = rule_width.map_or(String::new(), |w| format!("{:<w$}  ", "rule"));
            let _ = writeln!(t, "\nkept, in order:\n  row  commit   {name:<vw$}  {rule_head}description");
            for (k, rule) in self.kept.iter().zip(&rules) {
                let rule = rule_width.map_or(String::new(), |w| format!("{:<w$}  ", rule.unwrap_or("-")));
                let _ = writeln!(t, "  {:>3}  {:<7}  {:>vw$.6}  {rule}{}", k.row, k.commit, k.val_bpb, k.description);
            }
        }
        if self.search == Search::Frontier && !self.best_path.is_empty() {
            let vw = column_width(self.best_path.iter().map(|k| k.val_bpb), name.chars().count());
            let _ = writeln!(t, "\nthe best's lineage, root first:\n  row  run  commit   {name:<vw$}  description");
            for k in &self.best_path {
                let run = k.run.map_or("-".into(), |r| r.to_string());
                let _ =
                    writeln!(t, "  {:>3}  {run:>3}  {:<7}  {:>vw$.6}  {}", k.row, k.commit, k.val_bpb, k.description);
            }
            let vw = column_width(self.nodes.iter().map(|n| n.val_bpb), name.chars().count());
            let _ = writeln!(t, "\nnodes (* = on the best's lineage):\n  row  run  {name:<vw$}  tried  kept");
            for n in &self.nodes {
                let run = n.run.map_or("-".into(), |r| r.to_string());
                let mark = if n.on_best_path { '*' } else { ' ' };
                let _ =
                    writeln!(t, "  {:>3}  {run:>3}  {:>vw$.6}{mark} {:>5}  {:>4}", n.row, n.val_bpb, n.tried, n.kept);
            }
        }
        if !self.top_improvements.is_empty() {
            let gw = column_width(self.top_improvements.iter().map(|g| g.gain), "gain".len());
            let vw = column_width(self.top_improvements.iter().map(|g| g.val_bpb), name.chars().count());
            t.push_str("\ntop improvements (* = smaller than 2σ of the noise: may be luck):\n");
            let _ = writeln!(t, "  {:<gw$}   {name:<vw$}  commit   description", "gain");
            for g in &self.top_improvements {
                let mark = if g.below_noise { '*' } else { ' ' };
                let _ =
                    writeln!(t, "  {:>gw$.6}{mark}  {:>vw$.6}  {:<7}  {}", g.gain, g.val_bpb, g.commit, g.description);
            }
            if let Some(n) = self.gains_below_noise {
                let _ = writeln!(t, "kept gains below the noise (2σ): {n} of {}", self.top_improvements.len());
            }
        }
        if !self.workers.is_empty() {
            t.push_str("\nworkers:\n  worker  experiments  kept  crashed  hours  exp/hour\n");
            for l in &self.workers {
                let rate = l.experiments_per_hour.map_or("-".to_string(), |r| format!("{r:.1}"));
                let _ = writeln!(
                    t,
                    "  {:>6}  {:>11}  {:>4}  {:>7}  {:>5.2}  {rate:>8}",
                    l.worker, l.experiments, l.kept, l.crashed, l.hours
                );
            }
        }
        t
    }

    pub fn to_json(&self) -> Result<String> {
        Ok(serde_json::to_string_pretty(self)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::Extra;

    fn row(run: u64, status: Status, value: f64) -> Row {
        Row {
            commit: format!("c{run:06}"),
            val_bpb: value,
            memory_gb: 0.1,
            status,
            description: format!("experiment {run}"),
            extra: Some(Extra {
                profile: "project".into(),
                budget: 5.0,
                seconds: 10.0,
                run,
                rule: "margin 2σ".into(),
                reason: "r".into(),
                worker: None,
                parent: None,
            }),
        }
    }

    /// An accuracy session: kept 0.80 (baseline), 0.85, 0.86; a discard worse and a discard better than the
    /// baseline, a crash, a confirmation rerun.
    fn accuracy_rows() -> Vec<Row> {
        vec![
            row(1, Status::Keep, 0.80),
            row(2, Status::Discard, 0.78),
            row(3, Status::Keep, 0.85),
            row(4, Status::Crash, 0.0),
            row(5, Status::Keep, 0.86),
            row(5, Status::Rerun, 0.855),
            row(6, Status::Discard, 0.84),
        ]
    }

    fn accuracy() -> Metric {
        Metric { name: "accuracy".into(), goal: Goal::Higher }
    }

    /// σ = 0.01 for the rows' profile and budget: 2σ = 0.02.
    fn noise() -> Vec<NoiseEstimate> {
        vec![NoiseEstimate::new(
            "project",
            5.0,
            "c000001",
            vec![43, 44],
            vec![0.8 - 0.005 * 2f64.sqrt(), 0.8 + 0.005 * 2f64.sqrt()],
        )
        .unwrap()]
    }

    fn report(rows: Vec<Row>, noise: Vec<NoiseEstimate>, metric: Metric) -> Report {
        build_from(
            Path::new("results.tsv"),
            results::ResultsFile { rows, bad: Vec::new() },
            noise,
            metric,
            Search::Greedy,
        )
    }

    #[test]
    fn a_frontier_session_reports_its_best_node_its_lineage_and_gains_over_parents() {
        // Accuracy: 1 the baseline 0.80; 2 discarded and 3 kept from it (0.85); 4 crashed and 5 kept from 3 (0.86,
        // the best); 6 discarded and 7 kept from the baseline (0.83: the last keep, not the best).
        let parents = [None, Some(1), Some(1), Some(3), Some(3), Some(3), Some(1)];
        let mut rows: Vec<Row> = accuracy_rows()
            .into_iter()
            .zip(parents)
            .map(|(mut r, p)| {
                r.extra.as_mut().unwrap().parent = p;
                r
            })
            .collect();
        let mut last = row(7, Status::Keep, 0.83);
        last.extra.as_mut().unwrap().parent = Some(1);
        rows.push(last);
        let r = build_from(
            Path::new("results.tsv"),
            results::ResultsFile { rows: rows.clone(), bad: Vec::new() },
            noise(),
            accuracy(),
            Search::Frontier,
        );
        assert_eq!(r.best.as_ref().map(|b| (b.row, b.val_bpb)), Some((5, 0.86)));
        assert_eq!(r.best_path.iter().map(|p| p.row).collect::<Vec<_>>(), [1, 3, 5]);
        // 0.83 over its parent, the baseline: +0.03 (over the best before it, 0.86, it would be a loss).
        let gain = r.top_improvements.iter().find(|g| g.commit == "c000007").unwrap();
        assert!((gain.gain - 0.03).abs() < 1e-12 && gain.previous == 0.80, "{gain:?}");
        let tried: Vec<(usize, usize, usize, bool)> =
            r.nodes.iter().map(|n| (n.row, n.tried, n.kept, n.on_best_path)).collect();
        // From the baseline: 2, 3, 6 and 7 (two kept); from 3: the crash and 5 (the rerun is no experiment).
        assert_eq!(tried, [(1, 4, 2, true), (3, 2, 1, true), (5, 0, 0, true), (8, 0, 0, false)]);
        let text = r.to_text();
        assert!(text.contains("search: frontier"), "{text}");
        assert!(text.contains("the best's lineage, root first:\n  row  run  commit   accuracy  description\n    1    1  c000001  0.800000"), "{text}");
        // Read as greedy, the last keep is the best.
        let greedy = report(rows, noise(), accuracy());
        assert_eq!((greedy.best.unwrap().row, greedy.nodes.len()), (8, 0));
    }

    #[test]
    fn a_higher_is_better_session_gains_by_going_up() {
        let r = report(accuracy_rows(), noise(), accuracy());
        assert!((r.noise[0].std - 0.01).abs() < 1e-12);
        assert_eq!((r.baseline.as_ref().unwrap().row, r.best.as_ref().unwrap().row), (1, 5));
        // 0.86 over 0.80: +0.06, 7.5 % of the baseline.
        assert!((r.improvement.unwrap() - 0.06).abs() < 1e-12, "{:?}", r.improvement);
        assert!((r.improvement_percent.unwrap() - 7.5).abs() < 1e-9, "{:?}", r.improvement_percent);
        // Each keep over the keep before it, largest first: 0.85 − 0.80 = 0.05 (above 2σ = 0.02), then
        // 0.86 − 0.85 = 0.01 (below it).
        let gains: Vec<(&str, f64, f64, bool)> =
            r.top_improvements.iter().map(|g| (g.commit.as_str(), g.gain, g.previous, g.below_noise)).collect();
        assert_eq!(gains.len(), 2);
        assert!(gains[0].0 == "c000003" && (gains[0].1 - 0.05).abs() < 1e-12 && gains[0].2 == 0.80 && !gains[0].3);
        assert!(gains[1].0 == "c000005" && (gains[1].1 - 0.01).abs() < 1e-12 && gains[1].2 == 0.85 && gains[1].3);
        assert_eq!(r.gains_below_noise, Some(1));

        let text = r.to_text();
        for line in [
            "results.tsv: 7 rows\nmetric: accuracy (higher is better)\n",
            "baseline: 0.800000  c000001  experiment 1\nbest:     0.860000  c000005  experiment 5\n",
            "improvement: 0.060000 (7.50%)\n",
            "noise (project at 5 s): accuracy 0.800000 ± 0.010000 over 2 seeds\n",
            "  row  commit   accuracy  rule       description\n    1  c000001  0.800000  margin 2σ  experiment 1\n",
            "  gain       accuracy  commit   description\n",
            "  0.050000   0.850000  c000003  experiment 3\n  0.010000*  0.860000  c000005  experiment 5\n",
            "kept gains below the noise (2σ): 1 of 2\n",
        ] {
            assert!(text.contains(line), "{line:?} in\n{text}");
        }
        let json: serde_json::Value = serde_json::from_str(&r.to_json().unwrap()).unwrap();
        assert_eq!(json["metric"], serde_json::json!({"name": "accuracy", "goal": "higher"}));
        assert_eq!(json["best"]["val_bpb"], 0.86);
    }

    #[test]
    fn the_same_rows_under_lower_is_better_are_losses() {
        // Had the loop kept them under val_bpb (it would not have), each keep would be a step the wrong way.
        let r = report(accuracy_rows(), noise(), Metric::default());
        assert!((r.improvement.unwrap() + 0.06).abs() < 1e-12);
        assert!((r.improvement_percent.unwrap() + 7.5).abs() < 1e-9);
        assert!(r.top_improvements.iter().all(|g| g.gain < 0.0 && g.below_noise));
        assert!(r.to_text().contains("metric: val_bpb (lower is better)\n"));
    }

    #[test]
    fn wide_values_and_a_zero_baseline_keep_the_columns_and_say_no_percent() {
        let metric = Metric { name: "render_ms".into(), goal: Goal::Lower };
        let rows = vec![row(1, Status::Keep, 0.0), row(2, Status::Keep, 1234.5), row(3, Status::Keep, 1000.25)];
        let r = report(rows, Vec::new(), metric);
        assert_eq!(r.improvement_percent, None, "no % of a baseline of 0");
        let text = r.to_text();
        assert!(text.contains("improvement: -1000.250000 (-)\n"), "{text}");
        assert!(text.contains("  row  commit   render_ms    rule       description\n"), "{text}");
        assert!(text.contains("    3  c000003  1000.250000  margin 2σ  experiment 3\n"), "{text}");
        assert!(text.contains("  gain           render_ms    commit"), "{text}");
        assert!(text.contains("   234.250000   1000.250000  c000003"), "{text}");
        assert!(text.contains("  -1234.500000   1234.500000  c000002"), "{text}");
    }

    #[test]
    fn a_report_reads_the_metric_and_noise_of_the_session_beside_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("results.tsv");
        results::create(&path).unwrap();
        results::append(&path, &accuracy_rows()).unwrap();
        let r = build(&path).unwrap();
        assert_eq!((r.metric.clone(), r.noise.len()), (Metric::default(), 0), "no session folder: the original's");
        let state_dir = dir.path().join(".autoresearch");
        std::fs::create_dir(&state_dir).unwrap();
        let state = r#"{"profile": "project", "time_budget": 5.0, "metric": {"name": "accuracy", "goal": "higher"}}"#;
        std::fs::write(state_dir.join("state.json"), state).unwrap();
        crate::noise::save_noise(&state_dir, &noise()[0]).unwrap();
        let r = build(&path).unwrap();
        assert_eq!(r.metric, accuracy());
        assert_eq!((r.gains_below_noise, r.top_improvements[0].commit.as_str()), (Some(1), "c000003"));
        std::fs::write(state_dir.join("state.json"), "{").unwrap();
        let err = format!("{:#}", build(&path).unwrap_err());
        assert!(err.contains("state.json"), "{err}");
    }
}
