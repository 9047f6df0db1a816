//! The research session's state in `.autoresearch/state.json`, written atomically after every change, so that
//! a killed `run` or `loop` leaves enough behind to put git, results.tsv and the run folders back in order.

use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::process::Recorded;
use crate::trainer::DeviceChoice;

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

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct State {
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
    pub best: Option<Best>,
    pub next_run: u64,
    pub in_progress: Option<InProgress>,
    /// Process groups the harness started that are running (agent, build, training).
    #[serde(default)]
    pub children: Vec<Recorded>,
    /// Names of Slurm jobs submitted for trainings and not yet known to be over.
    #[serde(default)]
    pub slurm_jobs: Vec<String>,
}

impl State {
    pub fn load(dir: &Path) -> Result<State> {
        let path = dir.join(crate::files::STATE_FILE);
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
            &dir.join(crate::files::STATE_FILE),
            serde_json::to_string_pretty(self)?.as_bytes(),
        )
    }

    /// The commit experiments start from: the best kept one, or the session's base before any.
    pub fn reference_commit(&self) -> &str {
        self.best.as_ref().map_or(&self.base, |b| &b.commit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_device_is_stored_by_name_and_an_unknown_one_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let state = State {
            tag: "t".into(),
            branch: "autoresearch/t".into(),
            base: "abc".into(),
            profile: "small".into(),
            time_budget: 60.0,
            device: DeviceChoice::Cuda,
            rule: "margin".into(),
            best: None,
            next_run: 1,
            in_progress: None,
            children: Vec::new(),
            slurm_jobs: Vec::new(),
        };
        state.save(dir.path()).unwrap();
        let text = std::fs::read_to_string(dir.path().join("state.json")).unwrap();
        assert!(text.contains(r#""device": "cuda""#), "{text}");
        assert_eq!(State::load(dir.path()).unwrap(), state);
        std::fs::write(dir.path().join("state.json"), text.replace(r#""cuda""#, r#""gpu""#)).unwrap();
        let err = format!("{:#}", State::load(dir.path()).unwrap_err());
        assert!(err.contains("state.json") && err.contains("unknown variant `gpu`"), "{err}");
    }
}
