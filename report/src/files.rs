//! The names of the session's files and folders, in one place. The session's folder (`.autoresearch/`):
//!
//! ```text
//! state.json            the session's state: settings, best, next run number
//! journal.json          the journal of the worker in the repository's own tree
//! noise.json            seed-to-seed spreads measured for this session
//! prompt.md, agent.log  the agent's prompt and output; notes.md its notes
//! runs/<run>/           one experiment: meta.json, build.log, run.log, change.diff, and per training
//!                       seed-<seed>/ (its hand-over folder: checkpoint, stats) and result-<seed>.json
//! workers/<k>/          worker k's journal, prompt, binary and worktree (tree/), in a pool of several
//! leftovers/, archive/  changes set aside; earlier sessions' files
//! export/<tag>/         `export`'s patch series
//! ```
//!
//! Beside it in the repository: `results.tsv` (the ledger of rows) and `run.log` (the last training's log).

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

/// The hand-over folder of the training with `seed`, in its experiment's folder.
pub fn handover_dir(seed: u64) -> String {
    format!("seed-{seed}")
}

/// Whether a folder's name is a training's hand-over folder.
pub fn is_handover_dir(name: &str) -> bool {
    name.strip_prefix("seed-").is_some_and(|seed| seed.parse::<u64>().is_ok())
}

/// The evaluation's result of the training with `seed`.
pub fn result_file(seed: u64) -> String {
    format!("result-{seed}.json")
}

/// The log of an extra training with `seed` (noise, confirmation).
pub fn seed_log(seed: u64) -> String {
    format!("seed-{seed}.log")
}
