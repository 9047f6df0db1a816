//! `autoresearch report A.tsv B.tsv ...`: several sessions side by side (say two agents, or two versions of
//! program.md, on the same profile): experiments, keep rates, bests, experiments per hour, and their best-so-far
//! curves against experiment number and against hours (drawn by [`Comparison::plot`] with the `plot` feature), so
//! that one can tell which setup researches better. Each session is judged by its own metric's goal; sessions that
//! measure different metrics are shown side by side but not ranked against each other.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use serde::Serialize;

use crate::journal::{metric_of, search_of};
use crate::metric::{Goal, Metric};
use crate::report;
use crate::results::{self, ResultsFile, Row};
use crate::tree::{self, Search};

/// The session's best after an experiment.
#[derive(Clone, Debug, Serialize)]
pub struct BestSoFar {
    /// 1-based, counting every experiment (crashes too, confirmation reruns not).
    pub experiment: usize,
    /// Hours since the session's first experiment began (None for the original's files, which have no times).
    pub hours: Option<f64>,
    /// The session's metric's value (results.tsv's `val_bpb` column).
    pub val_bpb: f64,
}

/// One session's totals and its best over time, as `compare` sets them side by side.
#[derive(Debug, Serialize)]
pub struct SessionTotals {
    pub file: String,
    /// What the values are and which way is better.
    pub metric: Metric,
    pub experiments: usize,
    pub kept: usize,
    pub keep_rate: Option<f64>,
    pub baseline: Option<f64>,
    pub best: Option<f64>,
    /// The best's gain over the baseline by the metric's goal (positive when better), as `report` computes it.
    pub improvement: Option<f64>,
    pub improvement_percent: Option<f64>,
    /// The experiments' wall time added up.
    pub hours: Option<f64>,
    pub experiments_per_hour: Option<f64>,
    pub best_so_far: Vec<BestSoFar>,
}

#[derive(Debug, Serialize)]
pub struct Comparison {
    pub sessions: Vec<SessionTotals>,
}

pub fn compare(paths: &[PathBuf]) -> Result<Comparison> {
    if paths.len() < 2 {
        bail!("a comparison needs at least two results files");
    }
    let sessions = paths.iter().map(|p| session(p)).collect::<Result<_>>()?;
    Ok(Comparison { sessions })
}

/// One session's line of the comparison, from its results file and the metric of the session it belongs to.
pub fn session(path: &Path) -> Result<SessionTotals> {
    Ok(totals(path, results::read(path)?, metric_of(path)?, search_of(path)?))
}

/// [`session`] from a file already read (or none yet: no rows) and its session's metric and search.
pub fn totals(path: &Path, file: ResultsFile, metric: Metric, search: Search) -> SessionTotals {
    let rows = file.rows.clone();
    let goal = metric.goal;
    let r = report::build_from(path, file, Vec::new(), metric, search);
    let running = tree::running_best(&rows, search, goal);
    let experiments: Vec<(usize, &Row)> = report::experiments(&rows).collect();
    let timed = !experiments.is_empty() && experiments.iter().all(|(_, r)| r.extra.is_some());
    let (mut seconds, mut best_so_far) = (0.0, Vec::new());
    // Where workers ran side by side, an experiment ends at its worker's time so far (rows are written as
    // experiments end, so the latest of those is the session's clock).
    let mut lane_seconds = std::collections::BTreeMap::new();
    for (i, &(index, row)) in experiments.iter().enumerate() {
        let took = row.extra.as_ref().map_or(0.0, |e| e.seconds);
        match row.extra.as_ref().and_then(|e| e.worker) {
            Some(w) => {
                let lane = lane_seconds.entry(w).or_insert(0.0);
                *lane += took;
                seconds = f64::max(seconds, *lane);
            }
            None => seconds += took,
        }
        if let Some(val_bpb) = running[index] {
            best_so_far.push(BestSoFar { experiment: i + 1, hours: timed.then_some(seconds / 3600.0), val_bpb });
        }
    }
    let hours = timed.then_some(seconds / 3600.0);
    SessionTotals {
        file: path.display().to_string(),
        metric: r.metric,
        experiments: experiments.len(),
        kept: r.totals["keep"],
        keep_rate: r.keep_rate,
        baseline: r.baseline.map(|p| p.val_bpb),
        best: r.best.map(|p| p.val_bpb),
        improvement: r.improvement,
        improvement_percent: r.improvement_percent,
        experiments_per_hour: hours.filter(|h| *h > 0.0).map(|h| experiments.len() as f64 / h),
        hours,
        best_so_far,
    }
}

impl Comparison {
    pub fn to_text(&self) -> String {
        let value = |v: Option<f64>, width: usize, digits: usize| match v {
            Some(v) => format!("{v:>width$.digits$}"),
            None => format!("{:>width$}", "-"),
        };
        let mut t = format!("{} sessions\n\n", self.sessions.len());
        t.push_str(
            "  experiments  kept  keep rate  baseline    best        improvement  hours  exp/hour  metric  file\n",
        );
        for s in &self.sessions {
            let rate = s.keep_rate.map(|r| format!("{:.1}%", 100.0 * r));
            let gain = match (s.improvement, s.improvement_percent) {
                (Some(g), Some(p)) => format!("{g:.6} ({p:.2}%)"),
                _ => "-".into(),
            };
            let _ = writeln!(
                t,
                "  {:>11}  {:>4}  {:>9}  {}  {}  {gain:>18}  {}  {}  {} ({})  {}",
                s.experiments,
                s.kept,
                rate.as_deref().unwrap_or("-"),
                value(s.baseline, 8, 6),
                value(s.best, 8, 6),
                value(s.hours, 5, 2),
                value(s.experiments_per_hour, 8, 1),
                s.metric.name,
                s.metric.goal,
                s.file
            );
        }
        let metrics = self.metrics();
        if metrics.len() > 1 {
            let named: Vec<String> = metrics.iter().map(|m| format!("{}, {}", m.name, m.goal.phrase())).collect();
            let _ = writeln!(
                t,
                "\nthe sessions measure different metrics ({}): not ranked against each other",
                named.join("; ")
            );
        }
        // The leader among the sessions of each metric (where two or more share it).
        for metric in metrics {
            let alike: Vec<&SessionTotals> = self.sessions.iter().filter(|s| &s.metric == metric).collect();
            let leader = alike.iter().filter_map(|s| Some((s.best?, &s.file))).reduce(|a, b| {
                if metric.goal.better(b.0, a.0) {
                    b
                } else {
                    a
                }
            });
            if let (Some((best, file)), true) = (leader, alike.len() > 1) {
                let most = match metric.goal {
                    Goal::Lower => "lowest",
                    Goal::Higher => "highest",
                };
                let _ = writeln!(t, "\n{most} {}: {best:.6} ({file})", metric.name);
            }
        }
        t
    }

    /// The metrics the sessions measure, each once, in the sessions' order.
    pub fn metrics(&self) -> Vec<&Metric> {
        let mut metrics: Vec<&Metric> = Vec::new();
        for s in &self.sessions {
            if !metrics.contains(&&s.metric) {
                metrics.push(&s.metric);
            }
        }
        metrics
    }

    pub fn to_json(&self) -> Result<String> {
        Ok(serde_json::to_string_pretty(self)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::Status;

    fn file(values: &[(Status, f64)]) -> ResultsFile {
        ResultsFile { rows: crate::results::numbered_rows(values, 360.0), bad: Vec::new() }
    }

    fn accuracy() -> Metric {
        Metric { name: "accuracy".into(), goal: Goal::Higher }
    }

    #[test]
    fn higher_is_better_sessions_are_led_by_the_highest() {
        let a = totals(
            Path::new("a.tsv"),
            file(&[(Status::Keep, 0.80), (Status::Discard, 0.70), (Status::Keep, 0.90)]),
            accuracy(),
            Search::Greedy,
        );
        let b =
            totals(Path::new("b.tsv"), file(&[(Status::Keep, 0.85), (Status::Keep, 0.88)]), accuracy(), Search::Greedy);
        assert!((a.improvement.unwrap() - 0.10).abs() < 1e-12 && (b.improvement.unwrap() - 0.03).abs() < 1e-12);
        let curve: Vec<f64> = a.best_so_far.iter().map(|p| p.val_bpb).collect();
        assert_eq!(curve, [0.80, 0.80, 0.90], "the best so far climbs");
        assert_eq!(a.hours, Some(0.3));
        let text = Comparison { sessions: vec![a, b] }.to_text();
        assert!(text.contains("\nhighest accuracy: 0.900000 (a.tsv)\n"), "{text}");
        assert!(text.contains("  0.100000 (12.50%)") && text.contains("accuracy (higher)  a.tsv"), "{text}");
        assert!(!text.contains("lowest") && !text.contains("different metrics"), "{text}");
    }

    #[test]
    fn sessions_of_different_metrics_are_not_ranked_against_each_other() {
        let accuracy_session = totals(Path::new("acc.tsv"), file(&[(Status::Keep, 0.80)]), accuracy(), Search::Greedy);
        let bpb = |name: &str, best: f64| {
            totals(
                Path::new(name),
                file(&[(Status::Keep, 1.0), (Status::Keep, best)]),
                Metric::default(),
                Search::Greedy,
            )
        };
        let comparison = Comparison { sessions: vec![accuracy_session, bpb("x.tsv", 0.95), bpb("y.tsv", 0.97)] };
        assert_eq!(comparison.metrics(), [&accuracy(), &Metric::default()]);
        let text = comparison.to_text();
        assert!(
            text.contains(
                "the sessions measure different metrics (accuracy, higher is better; val_bpb, lower is better): \
                 not ranked against each other"
            ),
            "{text}"
        );
        // The two val_bpb sessions are still ranked between themselves; the lone accuracy one is not ranked.
        assert!(text.contains("\nlowest val_bpb: 0.950000 (x.tsv)\n") && !text.contains("highest"), "{text}");
        let empty = totals(
            Path::new("none.tsv"),
            ResultsFile { rows: Vec::new(), bad: Vec::new() },
            accuracy(),
            Search::Greedy,
        );
        assert_eq!((empty.experiments, empty.best, empty.hours), (0, None, None));
    }
}
