//! results.tsv: one row per experiment, appended whole. The original's five columns come first, so its tools
//! still read the file; ours follow.

use std::fmt;
use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context, Result};

/// The original's columns.
pub const ORIGINAL_COLUMNS: [&str; 5] = ["commit", "val_bpb", "memory_gb", "status", "description"];
/// Ours after them: the profile and time budget (runs are only comparable within one), the experiment's wall
/// time, its run folder, the keep rule with the reason for the decision, the worker that ran it (`-` where one
/// loop or `run` did), and the run of the kept experiment whose commit it started from (`-` for the baseline).
/// Files written before the last two columns have eleven or twelve and still read.
pub const EXTRA_COLUMNS: [&str; 8] = ["profile", "budget", "seconds", "run", "rule", "reason", "worker", "parent"];

/// What became of an experiment: the first four appear in results.tsv rows, the rest only in run folders.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Status {
    Keep,
    Discard,
    Crash,
    /// A confirmation rerun of a candidate with another seed (the `confirm N` rule).
    Rerun,
    /// Under way (or stopped by a kill before recovery saw it).
    #[default]
    Running,
    /// A change to files other than the training file: not run, no row.
    Refused,
    /// Stopped by Ctrl-C, SIGTERM or a kill before its row was written: no row.
    Interrupted,
    /// A training file identical to an earlier run's: that result recorded again.
    Reused,
}

impl Status {
    const ALL: [Status; 8] = [
        Status::Keep,
        Status::Discard,
        Status::Crash,
        Status::Rerun,
        Status::Running,
        Status::Refused,
        Status::Interrupted,
        Status::Reused,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Keep => "keep",
            Status::Discard => "discard",
            Status::Crash => "crash",
            Status::Rerun => "rerun",
            Status::Running => "running",
            Status::Refused => "refused",
            Status::Interrupted => "interrupted",
            Status::Reused => "reused",
        }
    }

    /// A status of a results.tsv row.
    pub fn parse(s: &str) -> Option<Status> {
        Self::parse_any(s).filter(|st| st.is_row_status())
    }

    fn parse_any(s: &str) -> Option<Status> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }

    pub fn is_row_status(self) -> bool {
        matches!(self, Status::Keep | Status::Discard | Status::Crash | Status::Rerun)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for Status {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for Status {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Status, D::Error> {
        let text = String::deserialize(d)?;
        Status::parse_any(&text).ok_or_else(|| serde::de::Error::custom(format!("unknown status {text:?}")))
    }
}

/// Our columns of a row (absent in the original's five-column files).
#[derive(Clone, Debug, PartialEq)]
pub struct Extra {
    pub profile: String,
    pub budget: f64,
    pub seconds: f64,
    pub run: u64,
    pub rule: String,
    pub reason: String,
    /// The worker (1, 2, ...) of a session run by several.
    pub worker: Option<usize>,
    /// The run whose commit the experiment started from: the tree of a session's experiments (None for the
    /// baseline, and in files from before this column).
    pub parent: Option<u64>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    /// 7-character commit hash.
    pub commit: String,
    /// 0 for a crash.
    pub val_bpb: f64,
    /// Peak memory in GB (0 for a crash).
    pub memory_gb: f64,
    pub status: Status,
    pub description: String,
    pub extra: Option<Extra>,
}

/// Tabs and line breaks would break the row: they become spaces.
fn clean(s: &str) -> String {
    s.chars().map(|c| if c == '\t' || c == '\n' || c == '\r' { ' ' } else { c }).collect::<String>().trim().to_string()
}

impl Row {
    pub fn to_line(&self) -> String {
        let mut cols = vec![
            self.commit.chars().take(7).collect::<String>(),
            format!("{:.6}", self.val_bpb),
            format!("{:.1}", self.memory_gb),
            self.status.to_string(),
            clean(&self.description),
        ];
        if let Some(e) = &self.extra {
            cols.extend([
                clean(&e.profile),
                format!("{}", e.budget),
                format!("{:.1}", e.seconds),
                e.run.to_string(),
                clean(&e.rule),
                clean(&e.reason),
                e.worker.map_or("-".to_string(), |w| w.to_string()),
                e.parent.map_or("-".to_string(), |p| p.to_string()),
            ]);
        }
        cols.join("\t")
    }

    /// Parses a row of five (the original), eleven (ours before the worker column), twelve (before the parent
    /// column) or thirteen columns.
    pub fn parse(line: &str) -> Result<Row> {
        let cols: Vec<&str> = line.split('\t').collect();
        let ours = ORIGINAL_COLUMNS.len() + EXTRA_COLUMNS.len();
        if ![ORIGINAL_COLUMNS.len(), ours - 2, ours - 1, ours].contains(&cols.len()) {
            bail!("{} columns, expected {}, {}, {} or {ours}", cols.len(), ORIGINAL_COLUMNS.len(), ours - 2, ours - 1);
        }
        let optional = |i: usize, name: &str| -> Result<Option<u64>> {
            match cols.get(i).map(|v| v.trim()) {
                None | Some("-") => Ok(None),
                Some(v) => Ok(Some(v.parse().map_err(|_| anyhow::anyhow!("{name} {v:?} is not a whole number"))?)),
            }
        };
        let number = |name: &str, v: &str| -> Result<f64> {
            let x: f64 = v.trim().parse().map_err(|_| anyhow::anyhow!("{name} {v:?} is not a number"))?;
            if !x.is_finite() {
                bail!("{name} {v:?} is not a finite number");
            }
            Ok(x)
        };
        let status = Status::parse(cols[3].trim()).with_context(|| format!("unknown status {:?}", cols[3]))?;
        let extra = if cols.len() > 5 {
            Some(Extra {
                profile: cols[5].to_string(),
                budget: number("budget", cols[6])?,
                seconds: number("seconds", cols[7])?,
                run: cols[8].trim().parse().map_err(|_| anyhow::anyhow!("run {:?} is not a whole number", cols[8]))?,
                rule: cols[9].to_string(),
                reason: cols[10].to_string(),
                worker: optional(11, "worker")?.map(|w| w as usize),
                parent: optional(12, "parent")?,
            })
        } else {
            None
        };
        Ok(Row {
            commit: cols[0].trim().to_string(),
            val_bpb: number("val_bpb", cols[1])?,
            memory_gb: number("memory_gb", cols[2])?,
            status,
            description: cols[4].to_string(),
            extra,
        })
    }
}

/// The row of run `run` itself (not one of its confirmation reruns).
pub fn experiment_row(rows: &[Row], run: u64) -> Option<&Row> {
    rows.iter().find(|r| r.status != Status::Rerun && r.extra.as_ref().is_some_and(|e| e.run == run))
}

pub fn header() -> String {
    ORIGINAL_COLUMNS.iter().chain(EXTRA_COLUMNS.iter()).copied().collect::<Vec<_>>().join("\t")
}

/// A results file read leniently: good rows, and the bad ones by line number with the reason.
pub struct ResultsFile {
    pub rows: Vec<Row>,
    pub bad: Vec<(usize, String)>,
}

pub fn read(path: &Path) -> Result<ResultsFile> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = ResultsFile { rows: Vec::new(), bad: Vec::new() };
    for (i, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() || (i == 0 && line.starts_with("commit\t")) {
            continue;
        }
        match Row::parse(line) {
            Ok(row) => out.rows.push(row),
            Err(e) => out.bad.push((i + 1, format!("{e:#}"))),
        }
    }
    Ok(out)
}

/// Creates the file with its header, unless it exists.
pub fn create(path: &Path) -> Result<()> {
    if !path.exists() {
        autoresearch_harness::fsutil::write_atomic(path, format!("{}\n", header()).as_bytes())?;
    }
    Ok(())
}

/// Appends rows in one write, after cutting off a torn last line that a killed writer may have left.
pub fn append(path: &Path, rows: &[Row]) -> Result<()> {
    repair(path)?;
    let text: String = rows.iter().map(|r| r.to_line() + "\n").collect();
    let mut f =
        std::fs::OpenOptions::new().append(true).open(path).with_context(|| format!("opening {}", path.display()))?;
    f.write_all(text.as_bytes()).and_then(|_| f.sync_all()).with_context(|| format!("writing {}", path.display()))
}

/// Cuts the file back to its last complete line.
pub fn repair(path: &Path) -> Result<()> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    if bytes.is_empty() || bytes.ends_with(b"\n") {
        return Ok(());
    }
    let keep = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let f = std::fs::OpenOptions::new().write(true).open(path)?;
    f.set_len(keep as u64).and_then(|_| f.sync_all()).with_context(|| format!("repairing {}", path.display()))
}

/// Rows for tests of the summaries: one per (status, value), run k in the k-th, each `seconds` long.
#[cfg(test)]
pub(crate) fn numbered_rows(values: &[(Status, f64)], seconds: f64) -> Vec<Row> {
    values
        .iter()
        .enumerate()
        .map(|(i, &(status, val_bpb))| Row {
            commit: format!("c{i:06}"),
            val_bpb,
            memory_gb: 0.1,
            status,
            description: format!("experiment {}", i + 1),
            extra: Some(Extra {
                profile: "project".into(),
                budget: 5.0,
                seconds,
                run: i as u64 + 1,
                rule: "higher".into(),
                reason: "r".into(),
                worker: None,
                parent: None,
            }),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row() -> Row {
        Row {
            commit: "a1b2c3d4e5".into(),
            val_bpb: 0.9979,
            memory_gb: 44.0,
            status: Status::Keep,
            description: "baseline\twith a tab".into(),
            extra: Some(Extra {
                profile: "h100".into(),
                budget: 300.0,
                seconds: 325.9,
                run: 1,
                rule: "lower".into(),
                reason: "first result".into(),
                worker: Some(2),
                parent: Some(7),
            }),
        }
    }

    #[test]
    fn rows_round_trip_in_the_original_layout_first() {
        let line = row().to_line();
        assert_eq!(
            line,
            "a1b2c3d\t0.997900\t44.0\tkeep\tbaseline with a tab\th100\t300\t325.9\t1\tlower\tfirst result\t2\t7"
        );
        let back = Row::parse(&line).unwrap();
        assert_eq!(back.description, "baseline with a tab");
        assert_eq!(back.extra, row().extra);
        let original = Row::parse("a1b2c3d\t0.000000\t0.0\tcrash\tOOM").unwrap();
        assert_eq!((original.status, original.extra), (Status::Crash, None));
        let before_workers =
            Row::parse("a1b2c3d\t1.000000\t1.0\tdiscard\tx\tsmall\t60\t70.0\t3\tlower\tworse").unwrap();
        assert_eq!(before_workers.extra.unwrap().worker, None);
        let before_parents =
            Row::parse("a1b2c3d\t1.000000\t1.0\tdiscard\tx\tsmall\t60\t70.0\t3\tlower\tworse\t2").unwrap();
        assert_eq!(before_parents.extra.map(|e| (e.worker, e.parent)), Some((Some(2), None)));
        let baseline = Row::parse(&line.replace("\t2\t7", "\t-\t-")).unwrap();
        assert_eq!(baseline.extra.map(|e| (e.worker, e.parent)), Some((None, None)));
        assert!(Row::parse(&line.replace("\t7", "\tx")).unwrap_err().to_string().contains("parent \"x\""));
        assert!(Row::parse(&(line + "\t")).unwrap_err().to_string().contains("14 columns"));
    }

    #[test]
    fn bad_rows_are_named_and_torn_lines_cut() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("results.tsv");
        create(&path).unwrap();
        append(&path, &[row()]).unwrap();
        let mut f = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"abc\t1.0\t2.0\tmaybe\tx\nhalf a ro").unwrap();
        let read1 = read(&path).unwrap();
        assert_eq!(read1.rows.len(), 1);
        assert_eq!(read1.bad.len(), 2);
        assert!(read1.bad[0].1.contains("unknown status") && read1.bad[0].0 == 3);
        append(&path, &[row()]).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains("half a ro") && text.ends_with('\n'));
        assert_eq!(read(&path).unwrap().rows.len(), 2);
    }
}
