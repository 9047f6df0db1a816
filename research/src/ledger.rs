//! What the workers of one session share: the session's state (best, run numbers) and results.tsv, written by
//! one worker at a time; the repository's working tree, where each worker's training file is built in turn
//! and which follows the session branch; and what each worker is trying now, for the others' prompts.
//!
//! The workers are threads of one coordinating process, which holds the session's lock; each has its own
//! worktree, journal and run folders, so that a killed coordinator is put right worker by worker.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::Result;

use crate::git::Git;
use crate::state::{Best, State};
use crate::training::Trained;
use crate::{locked, RESULTS_FILE, TRAINING_FILE};

pub struct Ledger {
    /// The repository, on the session branch.
    pub root: PathBuf,
    pub dir: PathBuf,
    pub results: PathBuf,
    git: Git,
    state: Mutex<State>,
    /// worker → (run, description) of the experiment it is running.
    running: Mutex<BTreeMap<usize, (u64, String)>>,
    /// The repository's working tree: a build copies a worker's training file in and puts the best's back.
    tree: Mutex<()>,
    /// Experiments started, against `--max-experiments`.
    started: AtomicUsize,
    /// Confirmation reruns waiting for a worker.
    reruns: Mutex<VecDeque<RerunTask>>,
}

/// A confirmation rerun (`confirm N`) offered to every worker: the candidate's binary trained with one more
/// seed, by whichever worker is free first (the candidate's own among them).
pub struct RerunTask {
    /// The worker whose candidate it confirms, and its run.
    pub owner: usize,
    pub run: u64,
    pub seed: u64,
    /// The run's folder (the training's files and log go there) and the candidate's binary.
    pub dir: PathBuf,
    pub binary: PathBuf,
    slot: Arc<Slot>,
}

/// Where a rerun's result waits for the worker that offered it: (the worker that trained it, the training), or
/// what went wrong.
#[derive(Default)]
pub struct Slot {
    result: Mutex<Option<Result<(usize, Trained), String>>>,
    filled: Condvar,
}

impl Slot {
    pub fn is_filled(&self) -> bool {
        locked(&self.result).is_some()
    }

    /// Waits up to `patience` for the result.
    pub fn wait(&self, patience: Duration) {
        let guard = locked(&self.result);
        if guard.is_none() {
            let _ = self.filled.wait_timeout(guard, patience);
        }
    }

    pub fn take(&self) -> Option<Result<(usize, Trained), String>> {
        locked(&self.result).take()
    }
}

impl RerunTask {
    /// Hands the result to the worker that offered the rerun.
    pub fn finish(self, result: Result<(usize, Trained), String>) {
        *locked(&self.slot.result) = Some(result);
        self.slot.filled.notify_all();
    }
}

impl Ledger {
    /// The ledger of the session `ws` opened (its lock stays with `ws`).
    pub fn new(ws: &crate::Workspace) -> Ledger {
        Ledger {
            root: ws.root.clone(),
            dir: ws.dir.clone(),
            results: ws.root.join(RESULTS_FILE),
            git: Git::new(&ws.root),
            state: Mutex::new(ws.state.clone()),
            running: Mutex::new(BTreeMap::new()),
            tree: Mutex::new(()),
            started: AtomicUsize::new(0),
            reruns: Mutex::new(VecDeque::new()),
        }
    }

    pub fn state(&self) -> MutexGuard<'_, State> {
        locked(&self.state)
    }

    pub fn take_run(&self) -> Result<u64> {
        let mut state = self.state();
        let run = state.next_run;
        state.next_run += 1;
        state.save(&self.dir)?;
        Ok(run)
    }

    /// Makes `best` the session's best in `state` (the ledger's, held), unless it is already; the session
    /// branch (and the repository's tree) moves to it: fast-forward where it grew from the branch's head, else a
    /// merge commit whose tree is the kept file's exactly (the branch keeps every earlier best in its history).
    /// Returns the best as recorded.
    pub fn keep(&self, state: &mut State, best: Best, message: &str) -> Result<Best> {
        if let Some(b) = state.best.as_ref().filter(|b| b.run == best.run) {
            return Ok(b.clone());
        }
        let commit = self.advance(&best.commit, message)?;
        let best = Best { commit, ..best };
        state.best = Some(best.clone());
        state.save(&self.dir)?;
        Ok(best)
    }

    fn advance(&self, commit: &str, message: &str) -> Result<String> {
        let _tree = locked(&self.tree);
        let head = self.git.head()?;
        let new = if self.git.ok(&["merge-base", "--is-ancestor", &head, commit])? {
            commit.to_string()
        } else {
            self.git.merge_taking(&head, commit, message)?
        };
        self.git.reset_hard(&new)?;
        Ok(new)
    }

    /// Runs `build` with `file` (a worker's training file) in the repository's tree, which holds the session
    /// branch's file again afterwards.
    pub fn build_in_tree<T>(&self, file: &[u8], build: impl FnOnce() -> Result<T>) -> Result<T> {
        let _tree = locked(&self.tree);
        let path = self.root.join(TRAINING_FILE);
        autoresearch_harness::fsutil::write_atomic(&path, file)?;
        let result = build();
        self.git.run(&["checkout", "HEAD", "--", TRAINING_FILE])?;
        result
    }

    pub fn announce(&self, worker: usize, run: u64, description: &str) {
        locked(&self.running).insert(worker, (run, description.to_string()));
    }

    pub fn done(&self, worker: usize) {
        locked(&self.running).remove(&worker);
    }

    /// What the other workers are running now: (worker, run, description).
    pub fn others(&self, worker: usize) -> Vec<(usize, u64, String)> {
        locked(&self.running).iter().filter(|(w, _)| **w != worker).map(|(w, (r, d))| (*w, *r, d.clone())).collect()
    }

    /// Claims one experiment of at most `max`; false when they are all taken.
    pub fn claim(&self, max: Option<usize>) -> bool {
        self.started
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| max.is_none_or(|m| n < m).then_some(n + 1))
            .is_ok()
    }

    /// Offers worker `owner`'s reruns of `run` (one per seed, of `binary`, files in `dir`): the slots their results
    /// will be in, by seed.
    pub fn offer(&self, owner: usize, run: u64, seeds: &[u64], dir: &Path, binary: &Path) -> Vec<(u64, Arc<Slot>)> {
        let mut queue = locked(&self.reruns);
        seeds
            .iter()
            .map(|&seed| {
                let slot = Arc::new(Slot::default());
                let task = RerunTask {
                    owner,
                    run,
                    seed,
                    dir: dir.to_path_buf(),
                    binary: binary.to_path_buf(),
                    slot: slot.clone(),
                };
                queue.push_back(task);
                (seed, slot)
            })
            .collect()
    }

    /// The oldest rerun that no worker has taken yet.
    pub fn take_rerun(&self) -> Option<RerunTask> {
        locked(&self.reruns).pop_front()
    }

    /// Gives back a claim that ran no experiment.
    pub fn release(&self) {
        self.started.fetch_sub(1, Ordering::SeqCst);
    }
}
