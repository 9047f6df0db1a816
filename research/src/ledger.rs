//! What the workers of one session share: the session's state (best, run numbers) and results.tsv, written by
//! one worker at a time; the repository's working tree, where each worker's training file is built in turn
//! and which follows the session branch; and what each worker is trying now, for the others' prompts.
//!
//! The workers are threads of one coordinating process, which holds the session's lock; each has its own
//! worktree, journal and run folders, so that a killed coordinator is put right worker by worker.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use anyhow::Result;

use crate::git::Git;
use crate::state::{Best, State};
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
            let tree = format!("{commit}^{{tree}}");
            self.git.run(&["commit-tree", &tree, "-p", &head, "-p", commit, "-m", message])?.trim().to_string()
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

    /// Gives back a claim that ran no experiment.
    pub fn release(&self) {
        self.started.fetch_sub(1, Ordering::SeqCst);
    }
}
