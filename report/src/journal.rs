//! A session's files as a watcher (the dashboard, `report`) reads them, read only: the session's profile, budget
//! and metric from `state.json` (and which session folder a results.tsv belongs to), what each worker's journal
//! says runs now (worker 0's `journal.json` in the session's folder,
//! each of a pool's in `workers/<k>/`), a run's description from its `meta.json`, the end of a log, and whether
//! a process group a journal records is still the one it recorded. The loop (`autoresearch-research`) writes these files with its own fuller types, and its
//! tests (`research/tests/journal.rs`) check that what it writes reads here.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::files::{JOURNAL_FILE, META_FILE, RUNS_DIR, STATE_DIR, STATE_FILE, WORKERS_DIR};
use crate::metric::Metric;
use crate::tree::Search;

/// What a process group started by the loop does; recorded in the journal while it runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Agent,
    Build,
    Training,
    Evaluation,
    /// A project's check before a keep.
    Check,
}

impl Role {
    /// Its name in the journal.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Agent => "agent",
            Role::Build => "build",
            Role::Training => "training",
            Role::Evaluation => "evaluation",
            Role::Check => "check",
        }
    }
}

/// The part of the session's state (`state.json`) a watcher reads.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct Settings {
    /// Every experiment of the session uses this profile and time budget.
    pub profile: String,
    pub time_budget: f64,
    /// What the session measures (sessions from before projects: val_bpb, lower).
    #[serde(default)]
    pub metric: Metric,
    /// How its experiments pick where they start (sessions from before there was a choice: greedy).
    #[serde(default)]
    pub search: Search,
}

impl Settings {
    /// The settings of the session whose folder is `state_dir`.
    pub fn load(state_dir: &Path) -> Result<Settings> {
        let path = state_dir.join(STATE_FILE);
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", path.display()))
    }
}

/// The session folder a results file belongs to: `.autoresearch/` beside it, or, for an archived session
/// (`.autoresearch/archive/<tag>/`, where results.tsv lies beside the session's state.json), the file's own
/// folder; None for a results file with neither (the original's).
pub fn session_dir_of(results: &Path) -> Option<PathBuf> {
    let dir = results.parent().unwrap_or(Path::new(""));
    let beside = dir.join(STATE_DIR);
    if beside.is_dir() {
        return Some(beside);
    }
    dir.join(STATE_FILE).is_file().then(|| dir.to_path_buf())
}

/// What the session of a results file measures, from its state.json; val_bpb (lower is better) for a results
/// file without a session's state (the original's). A state.json that does not parse is an error naming it.
pub fn metric_of(results: &Path) -> Result<Metric> {
    Ok(settings_of(results)?.map(|s| s.metric).unwrap_or_default())
}

/// The settings of the session a results file belongs to (None for a file with no session: the original's).
fn settings_of(results: &Path) -> Result<Option<Settings>> {
    match session_dir_of(results) {
        Some(dir) if dir.join(STATE_FILE).is_file() => Ok(Some(Settings::load(&dir)?)),
        _ => Ok(None),
    }
}

/// How the session a results file belongs to searches; greedy for a file with no session (the original's).
pub fn search_of(results: &Path) -> Result<Search> {
    Ok(settings_of(results)?.map(|s| s.search).unwrap_or_default())
}

/// The part of a worker's journal a watcher reads.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct Journal {
    /// The experiment under way.
    pub in_progress: Option<Underway>,
    /// Process groups the loop started that are running, as far as the journal knows (a killed loop leaves its
    /// dead ones listed).
    #[serde(default)]
    pub children: Vec<ProcessRecord>,
}

/// The experiment under way, by its run number.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct Underway {
    pub run: u64,
}

/// A process group the journal records.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct ProcessRecord {
    pub role: Role,
    /// The group's id: the pid of its first process.
    pub pgid: i32,
    /// That process's start time, to tell it from a later process given the same pid.
    pub start_time: u64,
}

impl ProcessRecord {
    /// Whether the recorded process still runs (alive, and not a later process given the same pid).
    pub fn is_running(&self) -> bool {
        alive(self.pgid) && start_time(self.pgid) == Some(self.start_time)
    }
}

impl Journal {
    pub fn load(own: &Path) -> Result<Journal> {
        read_journal(own)
    }
}

/// The journal in a worker's folder `own` (the session's folder for worker 0), read as `T` (the loop's full
/// journal, or this view); a session from before journals had a file of their own kept worker 0's in
/// `state.json` (the same fields); none at all is an empty journal.
pub fn read_journal<T: DeserializeOwned + Default>(own: &Path) -> Result<T> {
    for name in [JOURNAL_FILE, STATE_FILE] {
        let path = own.join(name);
        if let Ok(bytes) = std::fs::read(&path) {
            return serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", path.display()));
        }
    }
    Ok(T::default())
}

/// The journals of a session's workers (in `state_dir`), by number: 0 (the repository's tree) first, then each
/// of a pool of several; none for a worker whose journal cannot be read.
pub fn read_journals<T: DeserializeOwned + Default>(state_dir: &Path) -> Vec<(usize, T)> {
    let mut found: Vec<(usize, T)> = std::fs::read_dir(state_dir.join(WORKERS_DIR))
        .map(|entries| {
            entries
                .filter_map(|e| {
                    let e = e.ok()?;
                    let k = e.file_name().to_str()?.parse().ok()?;
                    Some((k, read_journal(&e.path()).ok()?))
                })
                .collect()
        })
        .unwrap_or_default();
    found.sort_by_key(|(k, _)| *k);
    if let Ok(own) = read_journal(state_dir) {
        found.insert(0, (0, own));
    }
    found
}

/// [`read_journals`] as this view reads them.
pub fn journals(state_dir: &Path) -> Vec<(usize, Journal)> {
    read_journals(state_dir)
}

/// Run `run`'s description from its `meta.json` in `state_dir` (None where there is none or it does not parse).
pub fn run_description(state_dir: &Path, run: u64) -> Option<String> {
    #[derive(Deserialize)]
    struct Meta {
        description: String,
    }
    let bytes = std::fs::read(state_dir.join(RUNS_DIR).join(run.to_string()).join(META_FILE)).ok()?;
    serde_json::from_slice::<Meta>(&bytes).ok().map(|m| m.description)
}

/// The last `n` lines of a log, progress lines (\r) counted as lines.
pub fn tail(log: &str, n: usize) -> String {
    let lines: Vec<&str> = log.split(['\n', '\r']).filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The fields of /proc/PID/stat after the command name (which is in parentheses and may hold anything),
/// None if there is no such process: state is the first, starttime (field 22 of proc(5)) the 20th.
fn stat_fields(pid: i32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(stat.rsplit_once(')')?.1.to_string())
}

/// A process's start time from /proc, None if there is no such process.
pub fn start_time(pid: i32) -> Option<u64> {
    stat_fields(pid)?.split_whitespace().nth(19)?.parse().ok()
}

/// Whether a process exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    stat_fields(pid).is_some_and(|fields| !fields.trim_start().starts_with('Z'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tails_count_progress_lines() {
        let log = "a\nstep 1\rstep 2\rstep 3\n\nb\n";
        assert_eq!(tail(log, 2), "step 3\nb");
        assert_eq!(tail(log, 10), "a\nstep 1\nstep 2\nstep 3\nb");
    }

    #[test]
    fn a_recorded_process_runs_while_it_is_the_one_recorded() {
        let pid = std::process::id() as i32;
        let me = ProcessRecord { role: Role::Training, pgid: pid, start_time: start_time(pid).unwrap() };
        assert!(me.is_running());
        // The same pid with another start time: a later process that got the pid.
        assert!(!ProcessRecord { start_time: me.start_time + 1, ..me.clone() }.is_running());
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let gone = child.id() as i32;
        child.wait().unwrap();
        assert!(!alive(gone) && start_time(gone).is_none());
    }

    #[test]
    fn a_state_or_journal_that_does_not_parse_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let err = format!("{:#}", Settings::load(dir.path()).unwrap_err());
        assert!(err.contains("state.json"), "{err}");
        assert_eq!(Journal::load(dir.path()).unwrap(), Journal::default(), "no journal yet: nothing runs");
        std::fs::write(dir.path().join("state.json"), r#"{"profile": "small"}"#).unwrap();
        let err = format!("{:#}", Settings::load(dir.path()).unwrap_err());
        assert!(err.contains("state.json") && err.contains("time_budget"), "{err}");
        std::fs::write(dir.path().join("journal.json"), r#"{"children": 3}"#).unwrap();
        let err = format!("{:#}", Journal::load(dir.path()).unwrap_err());
        assert!(err.contains("journal.json"), "{err}");
    }

    #[test]
    fn a_results_file_finds_its_session_and_metric_beside_it_or_in_its_archive_folder() {
        let dir = tempfile::tempdir().unwrap();
        let results = dir.path().join("results.tsv");
        assert_eq!(session_dir_of(&results), None);
        assert_eq!(metric_of(&results).unwrap(), Metric::default(), "the original's file: val_bpb, lower");
        let state_dir = dir.path().join(".autoresearch");
        std::fs::create_dir(&state_dir).unwrap();
        assert_eq!(session_dir_of(&results), Some(state_dir.clone()));
        assert_eq!(metric_of(&results).unwrap(), Metric::default(), "a session folder without its state yet");
        let accuracy =
            r#"{"profile": "project", "time_budget": 5.0, "metric": {"name": "accuracy", "goal": "higher"}}"#;
        std::fs::write(state_dir.join("state.json"), accuracy).unwrap();
        let higher = Metric { name: "accuracy".into(), goal: crate::metric::Goal::Higher };
        assert_eq!(metric_of(&results).unwrap(), higher);
        // A session from before projects: no metric in its state.
        std::fs::write(state_dir.join("state.json"), r#"{"profile": "small", "time_budget": 60.0}"#).unwrap();
        assert_eq!(metric_of(&results).unwrap(), Metric::default());
        std::fs::write(state_dir.join("state.json"), r#"{"profile": "small", "time_budget": 60.0, "metric": 3}"#)
            .unwrap();
        let err = format!("{:#}", metric_of(&results).unwrap_err());
        assert!(err.contains(".autoresearch/state.json"), "{err}");
        // An archived session: results.tsv beside its state.json.
        let archived = state_dir.join("archive/night");
        std::fs::create_dir_all(&archived).unwrap();
        std::fs::write(archived.join("state.json"), accuracy).unwrap();
        assert_eq!(session_dir_of(&archived.join("results.tsv")), Some(archived.clone()));
        assert_eq!(metric_of(&archived.join("results.tsv")).unwrap(), higher);
    }
}
