//! `autoresearch report A.tsv B.tsv ...`: several sessions side by side (say two agents, or two versions of
//! program.md, on the same profile): experiments, keep rates, bests, experiments per hour, and their best-so-far
//! curves against experiment number and against hours (drawn by [`Comparison::plot`] with the `plot` feature), so
//! that one can tell which setup researches better.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use serde::Serialize;

use crate::report;
use crate::results::{self, Row};

/// The session's best after an experiment.
#[derive(Clone, Debug, Serialize)]
pub struct BestSoFar {
    /// 1-based, counting every experiment (crashes too, confirmation reruns not).
    pub experiment: usize,
    /// Hours since the session's first experiment began (None for the original's files, which have no times).
    pub hours: Option<f64>,
    pub val_bpb: f64,
}

/// One session's totals and its best over time, as `compare` sets them side by side.
#[derive(Debug, Serialize)]
pub struct SessionTotals {
    pub file: String,
    pub experiments: usize,
    pub kept: usize,
    pub keep_rate: Option<f64>,
    pub baseline: Option<f64>,
    pub best: Option<f64>,
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

/// One session's line of the comparison, from its results file.
pub fn session(path: &Path) -> Result<SessionTotals> {
    let file = results::read(path)?;
    let rows = file.rows.clone();
    let r = report::build_from(path, file, Vec::new());
    let running = results::running_best(&rows);
    let experiments: Vec<(usize, &Row)> = report::experiments(&rows).collect();
    let timed = experiments.iter().all(|(_, r)| r.extra.is_some());
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
    Ok(SessionTotals {
        file: path.display().to_string(),
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
    })
}

impl Comparison {
    pub fn to_text(&self) -> String {
        let value = |v: Option<f64>, width: usize, digits: usize| match v {
            Some(v) => format!("{v:>width$.digits$}"),
            None => format!("{:>width$}", "-"),
        };
        let mut t = format!("{} sessions\n\n", self.sessions.len());
        t.push_str("  experiments  kept  keep rate  baseline    best        improvement  hours  exp/hour  file\n");
        for s in &self.sessions {
            let rate = s.keep_rate.map(|r| format!("{:.1}%", 100.0 * r));
            let gain = match (s.improvement, s.improvement_percent) {
                (Some(g), Some(p)) => format!("{g:.6} ({p:.2}%)"),
                _ => "-".into(),
            };
            let _ = writeln!(
                t,
                "  {:>11}  {:>4}  {:>9}  {}  {}  {gain:>18}  {}  {}  {}",
                s.experiments,
                s.kept,
                rate.as_deref().unwrap_or("-"),
                value(s.baseline, 8, 6),
                value(s.best, 8, 6),
                value(s.hours, 5, 2),
                value(s.experiments_per_hour, 8, 1),
                s.file
            );
        }
        let leader = self.sessions.iter().filter_map(|s| Some((s.best?, &s.file))).min_by(|a, b| a.0.total_cmp(&b.0));
        if let Some((best, file)) = leader {
            let _ = writeln!(t, "\nlowest val_bpb: {best:.6} ({file})");
        }
        t
    }

    pub fn to_json(&self) -> Result<String> {
        Ok(serde_json::to_string_pretty(self)?)
    }
}
