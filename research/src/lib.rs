//! The research loop: a session on a git branch, its workers making experiments one at a time each (check,
//! build, train, decide, record: keep or reset), their journals and recovery, the keep rules, the agent driver.
//!
//! # Words
//! - A **session** ([`session`]): one research effort on the branch `autoresearch/<tag>`: its settings (profile,
//!   budget, device, rule, the metric), its best, results.tsv, the run folders, locked against a second command.
//! - An **experiment** ([`experiment`]): one change to the editable files (the training file), numbered (its
//!   *run* number: its row in results.tsv, its folder `.autoresearch/runs/<n>`), taken through the steps check →
//!   build → train → decide → record. A change that `loop` refuses before it runs has a folder and no row (`run` refuses with an error).
//! - A **training** ([`training`]): one process of the training binary with one seed (train, then evaluate), or
//!   a project's training and evaluation commands; an experiment has one, or more where its keep rule asks.
//! - A **worker** ([`worker`]): a git tree where experiments are made one at a time, with its journal. `run`,
//!   `eval` and a pool of one use worker 0, the repository's own tree; a pool of N > 1 ([`pool`]) gives each
//!   worker a worktree. `loop` and `noise` always run a pool: of one by default.
//! - A **backend** ([`backend`]): where a training's processes run: this machine, or a Slurm job each.
//! - A **project** ([`project`]): what is researched: the built-in GPT (`train/train.rs`, val_bpb, lower is
//!   better), or the user's own, described by `autoresearch.toml` (editable files, commands, metric and its goal,
//!   checks, held-out paths); [`project_training`] runs such a project's commands for one training.
//!
//! [`agent`] drives a coding agent through one worker's experiments; [`rules`] decides what is kept;
//! [`frontier`] chooses where an experiment starts under the frontier search;
//! [`export`] writes the kept changes as a patch series for `git am`;
//! [`trainer`] builds the training binary; [`state`] holds the session's state and the workers' journals;
//! [`noise`] measures the seed-to-seed spread; [`git`] wraps the git calls. results.tsv's format, the session's
//! file names, the noise estimates and the summaries (`report`, `compare`) are the `autoresearch-report` crate's.

pub mod agent;
pub mod backend;
pub mod experiment;
pub mod export;
pub mod frontier;
pub mod git;
pub mod noise;
pub mod pool;
pub mod process;
pub mod project;
pub mod project_training;
pub mod rules;
pub mod session;
pub mod slurm;
pub mod state;
pub mod trainer;
pub mod training;
pub mod worker;

// results.tsv's format, the session's file names and the summaries, which the dashboard reads without the loop;
// named here so that the loop's modules say `crate::results`, `crate::files`, `crate::report`, `crate::tree`.
use autoresearch_report::{files, metric, report, results, tree};

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use results::Status;

pub use files::{RESULTS_FILE, STATE_DIR, TRAINING_FILE};
pub use session::Session;
pub use worker::Worker;

/// Interrupt requests (Ctrl-C, SIGTERM) counted by the caller's signal handler.
#[derive(Clone, Default)]
pub struct Interrupts(pub Arc<AtomicUsize>);

impl Interrupts {
    pub fn count(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

/// What a run folder's meta.json records.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RunMeta {
    pub run: u64,
    pub description: String,
    pub commit: Option<String>,
    pub status: Status,
    pub val_bpb: Option<f64>,
    pub reason: String,
    /// A crash whose cause may lie outside the training file (a timeout under load, a kill, memory taken by
    /// another process): the identical file may be run once more instead of reusing the crash.
    #[serde(default)]
    pub retryable: bool,
    /// FNV-1a of the training file as run, to recognise an identical file.
    pub file_hash: String,
    pub started: String,
    pub seconds: f64,
    /// The time outside the training processes, less [`RunMeta::build_wait_seconds`].
    pub harness_overhead_seconds: Option<f64>,
    /// Of the overhead, the build's seconds.
    #[serde(default)]
    pub build_seconds: Option<f64>,
    /// The time spent waiting for other builds before this one: another session's in the same target folder, or
    /// another worker's in the repository's tree.
    #[serde(default)]
    pub build_wait_seconds: Option<f64>,
}

/// A training file's identity (its SHA-256): runs of one file share it, and no crafted file can take another's
/// (its reused result, its built binary).
pub fn file_hash(bytes: &[u8]) -> String {
    autoresearch_harness::fsutil::sha256_hex(bytes)
}

pub fn now_utc() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86400, secs % 86400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// A mutex whose holder panicked still guards consistent data here (every change is saved whole).
fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
