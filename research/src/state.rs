//! What a session keeps on disk to survive a kill, written atomically after every change: the session's
//! [`State`] (`.autoresearch/state.json`: its settings, best, next run number and, under the frontier search,
//! the frontier's nodes) and each worker's
//! [`Journal`] (`journal.json` in the worker's folder: the experiment under way, the processes and Slurm jobs
//! it started), from which a killed `run` or `loop` puts git, results.tsv and the run folders back in order.

use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use autoresearch_report::journal::read_journal;

use crate::files::{JOURNAL_FILE, STATE_FILE};
use crate::frontier::Node;
use crate::metric::Metric;
use crate::process::Recorded;
use crate::trainer::DeviceChoice;
use crate::tree::Search;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Best {
    pub commit: String,
    /// The mean over `seeds` (one seed unless a `confirm N` rule measured more).
    pub val_bpb: f64,
    pub run: u64,
    #[serde(default = "first_seed")]
    pub seeds: Vec<u64>,
}

/// The seed of every experiment's first training run (the original's, the harness's default).
pub const SEED: u64 = autoresearch_harness::profile::DEFAULT_SEED;

fn first_seed() -> Vec<u64> {
    vec![SEED]
}

fn original_rule() -> String {
    "lower".into()
}

/// An experiment under way: what recovery must finish or undo.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InProgress {
    pub run: u64,
    /// The experiment's commit, once made.
    pub commit: Option<String>,
    /// The seeds its value averages, once decided (what recovery gives the best if the row says keep).
    #[serde(default = "first_seed")]
    pub seeds: Vec<u64>,
}

/// What a session was started with; fixed for its life.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    pub tag: String,
    pub branch: String,
    /// The commit the session started from.
    pub base: String,
    /// Every run of the session uses this profile and time budget, so that their results compare.
    pub profile: String,
    pub time_budget: f64,
    pub device: DeviceChoice,
    /// The keep rule of `run` and `loop` where they are given none (`--rule`). Sessions from before there was a
    /// session rule kept by `lower`.
    #[serde(default = "original_rule")]
    pub rule: String,
    /// What the session measures: the built-in's val_bpb (lower), or a project's metric.
    #[serde(default)]
    pub metric: Metric,
    /// How experiments pick where they start (`--search`); sessions from before there was a choice are greedy.
    #[serde(default)]
    pub search: Search,
}

/// The session's state in `state.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct State {
    #[serde(flatten)]
    pub settings: Settings,
    /// Under the frontier search, the best node; else the best kept experiment.
    pub best: Option<Best>,
    pub next_run: u64,
    /// The frontier search's nodes: every kept experiment that no re-measure replaced, in the order they joined (a
    /// re-measure joins in its node's place at the end).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<Node>,
}

/// One worker's journal: what recovery must finish, undo or stop after a kill.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Journal {
    /// Where the worker's current experiment started: the best at its start (greedy; it is judged against the
    /// best) or the frontier's node (its parent, which it is judged against).
    pub best: Option<Best>,
    pub in_progress: Option<InProgress>,
    /// Process groups the harness started that are running (agent, build, training).
    #[serde(default)]
    pub children: Vec<Recorded>,
    /// Names of Slurm jobs submitted for trainings and not yet known to be over.
    #[serde(default)]
    pub slurm_jobs: Vec<String>,
}

impl Journal {
    /// The journal in the folder `own` (see [`read_journal`]: an older session's `state.json`, or none).
    pub fn load(own: &Path) -> Result<Journal> {
        read_journal(own)
    }

    pub fn save(&self, own: &Path) -> Result<()> {
        autoresearch_harness::fsutil::write_atomic(
            &own.join(JOURNAL_FILE),
            serde_json::to_string_pretty(self)?.as_bytes(),
        )
    }
}

impl State {
    pub fn load(dir: &Path) -> Result<State> {
        let path = dir.join(STATE_FILE);
        let bytes = std::fs::read(&path).with_context(|| {
            format!(
                "no research session here ({} is missing): start one with `autoresearch init <tag>`",
                path.display()
            )
        })?;
        serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", path.display()))
    }

    pub fn save(&self, dir: &Path) -> Result<()> {
        autoresearch_harness::fsutil::write_atomic(
            &dir.join(STATE_FILE),
            serde_json::to_string_pretty(self)?.as_bytes(),
        )
    }

    /// The commit experiments start from: the best kept one, or the session's base before any.
    pub fn reference_commit(&self) -> &str {
        self.best.as_ref().map_or(&self.settings.base, |b| &b.commit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_device_is_stored_by_name_and_an_unknown_one_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let state = State {
            settings: Settings {
                tag: "t".into(),
                branch: "autoresearch/t".into(),
                base: "abc".into(),
                profile: "small".into(),
                time_budget: 60.0,
                device: DeviceChoice::Cuda,
                rule: "margin".into(),
                metric: Default::default(),
                search: Search::Frontier,
            },
            best: None,
            next_run: 1,
            nodes: Vec::new(),
        };
        state.save(dir.path()).unwrap();
        let text = std::fs::read_to_string(dir.path().join("state.json")).unwrap();
        assert!(text.contains(r#""device": "cuda""#) && text.contains(r#""search": "frontier""#), "{text}");
        assert_eq!(State::load(dir.path()).unwrap(), state);
        std::fs::write(dir.path().join("state.json"), text.replace(r#""cuda""#, r#""gpu""#)).unwrap();
        let err = format!("{:#}", State::load(dir.path()).unwrap_err());
        assert!(err.contains("state.json") && err.contains("unknown variant `gpu`"), "{err}");
    }

    #[test]
    fn a_journal_is_read_from_an_older_sessions_state_file_and_saved_in_its_own() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Journal::load(dir.path()).unwrap(), Journal::default());
        let old = r#"{"tag":"t","branch":"autoresearch/t","base":"abc","profile":"small","time_budget":60.0,
            "device":"cpu","best":null,"next_run":3,"in_progress":{"run":2,"commit":"def","seeds":[42]},
            "children":[],"slurm_jobs":["autoresearch-1"]}"#;
        std::fs::write(dir.path().join("state.json"), old).unwrap();
        let journal = Journal::load(dir.path()).unwrap();
        assert_eq!(journal.in_progress.as_ref().map(|ip| ip.run), Some(2));
        assert_eq!(journal.slurm_jobs, vec!["autoresearch-1".to_string()]);
        assert_eq!(State::load(dir.path()).unwrap().next_run, 3);
        journal.save(dir.path()).unwrap();
        std::fs::write(dir.path().join("state.json"), "{}").unwrap();
        assert_eq!(Journal::load(dir.path()).unwrap(), journal, "its own file comes first");
        std::fs::write(dir.path().join("journal.json"), "[").unwrap();
        let err = format!("{:#}", Journal::load(dir.path()).unwrap_err());
        assert!(err.contains("journal.json"), "{err}");
    }
}
