//! The names of the session's files and folders, in one place. The session's folder (`.autoresearch/`):
//!
//! ```text
//! state.json            the session's state: settings, best, next run number; lock
//! journal.json          the journal of worker 0, in the repository's own tree
//! noise.json, noise/    seed-to-seed spreads measured for this session; `noise`'s binary and logs
//! prompt.md, agent.log  worker 0's prompt to the agent and the agent's output; description.txt its answer;
//!                       notes.md the notes all agents share; stash/ a change waiting while the best is re-measured
//! runs/<run>/           one experiment: meta.json, train.rs as run, build.log, run.log, change.diff (and
//!                       untracked/), and per training seed-<seed>/ (its hand-over folder: checkpoint, stats)
//!                       with seed-<seed>.handed-over.json (the harness's record of a built-in training's:
//!                       seals, seconds),
//!                       result-<seed>.json, rerun-<seed>.log; eval.log and eval-result.json from `eval`
//! workers/<k>/          in a pool of several, worker k's journal, prompt, stash, binary (bin/) and worktree (tree/)
//! leftovers/, archive/  changes set aside; earlier sessions' files
//! export/<tag>/         `export`'s patch series
//! ```
//!
//! Beside it in the repository: `results.tsv` (one row per experiment) and `run.log` (the last training's log).

/// The one file the agent may change.
pub const TRAINING_FILE: &str = "train/train.rs";
pub const RESULTS_FILE: &str = "results.tsv";
pub const STATE_DIR: &str = ".autoresearch";
pub const STATE_FILE: &str = "state.json";
pub const JOURNAL_FILE: &str = "journal.json";
pub const NOISE_FILE: &str = "noise.json";
pub const PROMPT_FILE: &str = "prompt.md";
pub const AGENT_LOG: &str = "agent.log";
pub const NOTES_FILE: &str = "notes.md";
pub const RUNS_DIR: &str = "runs";
pub const WORKERS_DIR: &str = "workers";
pub const LEFTOVERS_DIR: &str = "leftovers";
pub const ARCHIVE_DIR: &str = "archive";
/// `export`'s patch series, a folder per session tag.
pub const EXPORT_DIR: &str = "export";
/// A training's log: the last one's in the repository (a worker's in its tree), each experiment's in its folder.
pub const RUN_LOG: &str = "run.log";
pub const BUILD_LOG: &str = "build.log";
pub const META_FILE: &str = "meta.json";
pub const CHANGE_FILE: &str = "change.diff";
/// A worker's worktree, in its folder.
pub const WORKER_TREE: &str = "tree";
/// A worker's own binary, in its folder.
pub const WORKER_BIN: &str = "bin";
/// Where the agent writes its one-line description, in the worker's folder.
pub const DESCRIPTION_FILE: &str = "description.txt";
/// A change waiting while the best is re-measured, in the worker's folder.
pub const STASH_DIR: &str = "stash";
/// The lock a command holds on the session's folder.
pub const LOCK_FILE: &str = "lock";
/// `noise`'s binary and logs, in the session's folder.
pub const NOISE_DIR: &str = "noise";
/// `report`'s pictures: progress.png beside the results file, comparison.png where `report` compares several.
pub const PROGRESS_PLOT: &str = "progress.png";
pub const COMPARISON_PLOT: &str = "comparison.png";
/// A project's setup output, in a worker's folder (the run's copy is its build.log).
pub const SETUP_LOG: &str = "setup.log";
/// A project's checks' output, in the run's folder.
pub const CHECKS_LOG: &str = "checks.log";
/// The training file as an experiment ran it, in its folder, in sessions from before projects (now the editable
/// files are beneath `edited/`).
pub const RUN_TRAINING_FILE: &str = "train.rs";
/// New files a set-aside change held, in its folder.
pub const UNTRACKED_DIR: &str = "untracked";
/// `eval`'s log and result, in the run's folder.
pub const EVAL_LOG: &str = "eval.log";
pub const EVAL_RESULT: &str = "eval-result.json";

/// The hand-over folder of the training with `seed`, in its experiment's folder.
pub fn handover_dir(seed: u64) -> String {
    format!("seed-{seed}")
}

/// Whether a folder's name is a training's hand-over folder.
pub fn is_handover_dir(name: &str) -> bool {
    name.strip_prefix("seed-").is_some_and(|seed| seed.parse::<u64>().is_ok())
}

/// The log and the result of the audit before a keep of the training with `seed`, in the run's folder.
pub fn audit_log(seed: u64) -> String {
    format!("audit-{seed}.log")
}

pub fn audit_result(seed: u64) -> String {
    format!("audit-{seed}.json")
}

/// The evaluation's result of the training with `seed`.
pub fn result_file(seed: u64) -> String {
    format!("result-{seed}.json")
}

/// The log of one of `noise`'s trainings, with `seed`.
pub fn seed_log(seed: u64) -> String {
    format!("seed-{seed}.log")
}

/// The log of a confirmation rerun with `seed`, in its experiment's folder.
pub fn rerun_log(seed: u64) -> String {
    format!("rerun-{seed}.log")
}
