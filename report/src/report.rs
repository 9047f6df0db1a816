//! `autoresearch report`: what a results.tsv says, as text and JSON (its picture is [`crate::plot`]'s). Reads ours
//! and the original's five-column files; malformed rows are listed with their line numbers and skipped.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::Result;
use serde::Serialize;

use crate::noise::NoiseEstimate;
use crate::results::{self, Row, Status};

#[derive(Clone, Debug, Serialize)]
pub struct Point {
    /// 1-based position among the file's rows.
    pub row: usize,
    pub commit: String,
    pub val_bpb: f64,
    pub description: String,
    /// The keep rule that decided the row, as recorded (the original's rows name none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Gain {
    pub commit: String,
    pub description: String,
    pub val_bpb: f64,
    pub previous: f64,
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
    pub rows: usize,
    pub skipped: Vec<Skipped>,
    /// Rows by status, every status listed.
    pub totals: BTreeMap<String, usize>,
    /// keeps / (keeps + discards)
    pub keep_rate: Option<f64>,
    /// The first row with a result.
    pub baseline: Option<Point>,
    /// The last kept row: the session's best (each keep beat the one before, or re-measured it).
    pub best: Option<Point>,
    pub improvement: Option<f64>,
    pub improvement_percent: Option<f64>,
    pub kept: Vec<Point>,
    /// Each keep's gain over the keep before it, largest first (a re-measure of the same commit is no gain).
    pub top_improvements: Vec<Gain>,
    /// How many of those gains are smaller than 2σ of the measured noise (None where no noise applies).
    pub gains_below_noise: Option<usize>,
    /// Seed-to-seed spread measured by `autoresearch noise`, where the file has one beside it.
    pub noise: Vec<NoiseEstimate>,
    /// One lane per worker, for a session run by several (empty otherwise).
    pub workers: Vec<Lane>,
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

/// A kept experiment and what it gained over the keep before it.
pub(crate) struct KeptGain<'a> {
    pub(crate) row: &'a Row,
    /// The value of the keep before it; None for the first keep and for a re-measure of the same commit
    /// (no improvement either way).
    previous: Option<f64>,
    /// 2σ of the noise that applies to it.
    noise_2sigma: Option<f64>,
}

impl KeptGain<'_> {
    fn gain(&self) -> Option<f64> {
        self.previous.map(|p| p - self.row.val_bpb)
    }

    /// The gain is smaller than 2σ of the measured noise: it may be luck.
    pub(crate) fn below_noise(&self) -> bool {
        self.gain().zip(self.noise_2sigma).is_some_and(|(g, n)| g < n)
    }
}

/// The kept experiments in order, each with its gain over the keep before it.
pub(crate) fn kept_gains<'a>(rows: &'a [Row], noise: &[NoiseEstimate]) -> Vec<KeptGain<'a>> {
    let mut previous: Option<&Row> = None;
    experiments(rows)
        .filter(|(_, r)| r.status == Status::Keep)
        .map(|(_, row)| {
            let before = previous.replace(row).filter(|p| p.commit != row.commit);
            KeptGain {
                row,
                previous: before.map(|p| p.val_bpb),
                noise_2sigma: noise_of(noise, row).map(|n| 2.0 * n.std),
            }
        })
        .collect()
}

/// The rows that are experiments of their own (not confirmation reruns), with their index.
pub fn experiments(rows: &[Row]) -> impl Iterator<Item = (usize, &Row)> {
    rows.iter().enumerate().filter(|(_, r)| r.status != Status::Rerun)
}

pub fn build(path: &Path, noise: Vec<NoiseEstimate>) -> Result<Report> {
    Ok(build_from(path, results::read(path)?, noise))
}

/// [`build`] from a file already read.
pub fn build_from(path: &Path, file: results::ResultsFile, noise: Vec<NoiseEstimate>) -> Report {
    let rows = &file.rows;
    let point = |i: usize, r: &Row| Point {
        row: i + 1,
        commit: r.commit.clone(),
        val_bpb: r.val_bpb,
        description: r.description.clone(),
        rule: r.extra.as_ref().map(|e| e.rule.clone()),
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
    let best = kept.last().cloned();
    let (improvement, improvement_percent) = match (&baseline, &best) {
        (Some(b), Some(k)) => (Some(b.val_bpb - k.val_bpb), Some(100.0 * (b.val_bpb - k.val_bpb) / b.val_bpb)),
        _ => (None, None),
    };
    let mut top_improvements: Vec<Gain> = kept_gains(rows, &noise)
        .into_iter()
        .filter_map(|k| {
            Some(Gain {
                commit: k.row.commit.clone(),
                description: k.row.description.clone(),
                val_bpb: k.row.val_bpb,
                previous: k.previous?,
                gain: k.gain()?,
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
        rows: rows.len(),
        skipped: file.bad.into_iter().map(|(line, reason)| Skipped { line, reason }).collect(),
        totals,
        keep_rate: (keeps + discards > 0).then(|| keeps as f64 / (keeps + discards) as f64),
        baseline,
        best,
        improvement,
        improvement_percent,
        kept,
        top_improvements,
        gains_below_noise,
        noise,
        workers: lanes(rows),
    }
}

impl Report {
    pub fn to_text(&self) -> String {
        let mut t = String::new();
        let _ = writeln!(t, "{}: {} rows", self.file, self.rows);
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
            let _ = writeln!(
                t,
                "improvement: {:.6} ({:.2}%)",
                self.improvement.unwrap_or(0.0),
                self.improvement_percent.unwrap_or(0.0)
            );
        }
        for n in &self.noise {
            let _ = writeln!(
                t,
                "noise ({} at {} s): val_bpb {:.6} ± {:.6} over {} seeds",
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
            let width = rules.iter().flatten().map(|r| r.chars().count()).max();
            match width {
                Some(w) => {
                    let _ = writeln!(t, "\nkept, in order:\n  row  commit   val_bpb   {:<w$}  description", "rule");
                }
                None => t.push_str("\nkept, in order:\n  row  commit   val_bpb   description\n"),
            }
            for (k, rule) in self.kept.iter().zip(&rules) {
                let rule = width.map_or(String::new(), |w| format!("{:<w$}  ", rule.unwrap_or("-")));
                let _ = writeln!(t, "  {:>3}  {:<7}  {:.6}  {rule}{}", k.row, k.commit, k.val_bpb, k.description);
            }
        }
        if !self.top_improvements.is_empty() {
            t.push_str("\ntop improvements (* = smaller than 2σ of the noise: may be luck):\n");
            t.push_str("  gain       val_bpb   commit   description\n");
            for g in &self.top_improvements {
                let mark = if g.below_noise { '*' } else { ' ' };
                let _ = writeln!(t, "  {:.6}{mark}  {:.6}  {:<7}  {}", g.gain, g.val_bpb, g.commit, g.description);
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
