//! A worker of a session: a git tree where it makes one experiment at a time, and its journal. Worker 0 works
//! in the repository's own tree (its journal in `.autoresearch/`): `run`, `eval`, and a pool of one (`loop`,
//! `noise`).
//! A pool of several gives worker k ≥ 1 a worktree of its own (`.autoresearch/workers/<k>/tree`, on branch
//! `<session branch>-w<k>`) and its journal beside it; each worker's tree starts every experiment from the
//! session's best, or under the frontier search from the node the session chooses for it (a loop under that
//! search always runs its workers in worktrees, so that the repository's tree stays on the best).
//!
//! The journal names the experiment under way and the processes and Slurm jobs the worker started, so that
//! [`Worker::recover`] can put right what a killed one left.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};

use crate::files::*;
use crate::git::Git;
use crate::process::{self, Recorded, Role};
use crate::project::{Snapshot, SNAPSHOT_DIR};
use crate::results::{self, Status};
use crate::session::Session;
use crate::state::{Best, InProgress, Journal};
use crate::tree::Search;
use crate::{now_utc, slurm, RunMeta};

pub struct Worker {
    pub session: Arc<Session>,
    /// 0 for the repository's own tree, else its number in a pool of several.
    pub number: usize,
    /// The tree its experiments are made in: the repository, or its worktree.
    pub root: PathBuf,
    pub git: Git,
    /// Its own files: journal, prompt, agent log, stash, leftovers (and a binary of its own in a worktree).
    pub own: PathBuf,
    pub journal: Journal,
}

impl Worker {
    /// Worker 0, in the repository's tree; what a killed one left is put right.
    pub fn in_repository(session: &Arc<Session>) -> Result<Worker> {
        let own = session.dir.clone();
        let journal = Journal::load(&own)?;
        Worker::start(session, 0, session.root.clone(), own, journal)
    }

    /// Worker `k` (from 1) of a pool of several, in its worktree (made on first use, at the session's best);
    /// what a killed one left is put right.
    pub fn in_worktree(session: &Arc<Session>, k: usize) -> Result<Worker> {
        let own = session.dir.join(WORKERS_DIR).join(k.to_string());
        let tree = own.join(WORKER_TREE);
        if !tree.join(".git").exists() {
            std::fs::create_dir_all(&own).with_context(|| format!("creating {}", own.display()))?;
            session.git.exec(&["worktree", "prune"])?;
            let branch = format!("{}-w{k}", session.settings.branch);
            let start = session.state().reference_commit().to_string();
            session.git.exec(&["worktree", "add", "--quiet", "-B", &branch, &tree.display().to_string(), &start])?;
        }
        let journal = Journal::load(&own)?;
        Worker::start(session, k, tree, own, journal)
    }

    fn start(session: &Arc<Session>, number: usize, root: PathBuf, own: PathBuf, journal: Journal) -> Result<Worker> {
        let mut w = Worker { session: session.clone(), number, git: Git::new(&root), root, own, journal };
        if w.journal.in_progress.is_none() {
            // What the tree's files are measured against: under the frontier search a worktree rests on the node
            // its last experiment started from (or joined), which need not be the best.
            w.journal.best = match session.settings.search {
                Search::Frontier => session.node_at(&w.git.head()?).or_else(|| session.best()),
                Search::Greedy => session.best(),
            };
        }
        w.save_journal()?;
        if let Some(msg) = w.recover()? {
            w.say(&msg);
        }
        Ok(w)
    }

    pub fn save_journal(&self) -> Result<()> {
        self.journal.save(&self.own)
    }

    /// A message on stderr, each line headed by the worker's number in a pool of several.
    pub fn say(&self, text: &str) {
        say_as(self.number, text)
    }

    /// The worker's number as results.tsv records it: none for the repository's tree.
    pub fn label(&self) -> Option<usize> {
        (self.number > 0).then_some(self.number)
    }

    /// Whether its tree is the repository's own (else a worktree, built in the repository's tree in turn).
    pub fn in_repository_tree(&self) -> bool {
        self.number == 0
    }

    /// The commit its experiment starts from: the best when it started, or the session's base before any.
    pub fn reference_commit(&self) -> &str {
        self.journal.best.as_ref().map_or(&self.session.settings.base, |b| &b.commit)
    }

    /// Starts the next experiment from the session's best as it is now (another worker may have kept one), or
    /// under the frontier search from the node the session chooses.
    pub fn start_next(&mut self) -> Result<()> {
        let best = match self.session.settings.search {
            Search::Greedy => self.session.best(),
            Search::Frontier => self.session.start_node(self.number)?,
        };
        if let Some(b) = &best {
            if self.git.head()? != b.commit {
                self.git.reset_hard(&b.commit)?;
            }
        }
        self.journal.best = best;
        self.save_journal()
    }

    /// Puts the new best in place: in the session (unless it is there already), with the session branch
    /// advanced to it (under the frontier search: a node of the frontier, kept against the node the experiment
    /// started from); the best this worker's next experiment starts from too.
    pub fn apply_keep(&mut self, best: Best, message: &str) -> Result<()> {
        let parent = self.journal.best.as_ref().map(|b| b.run);
        let best = self.session.keep(&mut self.session.state(), best, parent, message)?;
        self.journal.best = Some(best);
        Ok(())
    }

    pub fn run_dir(&self, run: u64) -> PathBuf {
        self.session.run_dir(run)
    }

    /// Saves the change from the reference commit (committed or not) and any new files into `run`'s folder,
    /// then puts the working tree back to the reference commit.
    pub fn set_aside(&self, run: u64, commit: Option<&str>) -> Result<()> {
        self.set_aside_to(&self.run_dir(run), commit)
    }

    /// [`Worker::set_aside`] into any folder.
    pub fn set_aside_to(&self, dir: &Path, commit: Option<&str>) -> Result<()> {
        let reference = self.reference_commit().to_string();
        std::fs::create_dir_all(dir)?;
        let mut diff = match commit.filter(|c| *c != reference) {
            Some(c) => self.git.diff(&reference, Some(c))?,
            None => String::new(),
        };
        diff += &self.git.diff(commit.unwrap_or(&reference), None)?;
        if !diff.is_empty() {
            autoresearch_harness::fsutil::write_atomic(&dir.join(CHANGE_FILE), diff.as_bytes())?;
        }
        for file in self.git.untracked()? {
            let to = dir.join(UNTRACKED_DIR).join(&file);
            std::fs::create_dir_all(to.parent().unwrap())?;
            std::fs::rename(self.root.join(&file), &to)
                .with_context(|| format!("moving {file} into {}", dir.display()))?;
        }
        self.git.reset_hard(&reference)
    }

    /// Starts `cmd` in a process group of its own, recorded in the journal until [`Worker::forget`].
    pub fn spawn(&mut self, cmd: &mut std::process::Command, role: Role) -> Result<(std::process::Child, Recorded)> {
        let (child, recorded) = process::spawn(cmd, role)?;
        self.journal.children.push(recorded.clone());
        self.save_journal()?;
        Ok((child, recorded))
    }

    /// Takes a finished process group out of the journal.
    pub fn forget(&mut self, recorded: &Recorded) -> Result<()> {
        self.journal.children.retain(|c| c != recorded);
        self.save_journal()
    }

    /// Puts right what a killed process left: first stops the processes it started (an agent that went on
    /// would change the tree under us) and sets aside the tree a stopped agent was editing, then finishes or
    /// undoes the experiment under way. Returns what it did.
    pub fn recover(&mut self) -> Result<Option<String>> {
        let mut msgs = Vec::new();
        let children = std::mem::take(&mut self.journal.children);
        for c in &children {
            c.kill_if_ours();
        }
        if !children.is_empty() {
            self.save_journal()?;
            let roles: Vec<String> =
                children.iter().map(|c| format!("{:?} (group {})", c.role, c.pgid).to_lowercase()).collect();
            msgs.push(format!("recovered: stopped what the last process left running: {}", roles.join(", ")));
        }
        if !self.journal.slurm_jobs.is_empty() {
            let jobs = self.journal.slurm_jobs.join(", ");
            match slurm::cancel(&self.journal.slurm_jobs) {
                Ok(()) => {
                    self.journal.slurm_jobs.clear();
                    self.save_journal()?;
                    msgs.push(format!("recovered: cancelled the Slurm jobs the last process left: {jobs}"));
                }
                // They stay in the journal, to be cancelled by the next start.
                Err(e) => msgs.push(format!("could not cancel the Slurm jobs the last process left ({jobs}): {e:#}")),
            }
        }
        if let Some(ip) = self.journal.in_progress.clone() {
            msgs.push(self.finish_or_undo(&ip)?);
        } else if children.iter().any(|c| c.role == Role::Agent) {
            if let Some(dir) = self.set_aside_leftovers()? {
                msgs.push(format!(
                    "recovered: the stopped agent's unfinished change is set aside in {}",
                    dir.display()
                ));
            }
        }
        if self.unstash()? {
            msgs.push(
                "recovered: the change that waited while the best was re-measured is back in the tree".to_string(),
            );
        }
        Ok((!msgs.is_empty()).then(|| msgs.join("\n")))
    }

    /// Finishes an experiment whose row was written, or undoes one whose row was not; says which.
    fn finish_or_undo(&mut self, ip: &InProgress) -> Result<String> {
        let rows = results::read(&self.session.results)?.rows;
        let recorded = results::experiment_row(&rows, ip.run);
        let mut meta = self.session.read_meta(ip.run).unwrap_or(RunMeta { run: ip.run, ..Default::default() });
        let msg = match recorded {
            Some(row) => {
                // The row was written: finish what followed it.
                if row.status == Status::Keep {
                    let commit = ip.commit.clone().unwrap_or_else(|| self.reference_commit().to_string());
                    let best = Best { commit, val_bpb: row.val_bpb, run: ip.run, seeds: ip.seeds.clone() };
                    let message = format!("keep run {}: {}", ip.run, row.description);
                    self.apply_keep(best, &message)?;
                } else {
                    self.set_aside(ip.run, ip.commit.as_deref())?;
                }
                meta.status = row.status;
                format!(
                    "recovered: run {} was recorded ({}) before the last process stopped; finished it",
                    ip.run, row.status
                )
            }
            None => {
                self.set_aside(ip.run, ip.commit.as_deref())?;
                meta.status = Status::Interrupted;
                meta.reason =
                    "the process running it was stopped before it finished; its change is in change.diff".into();
                format!(
                    "recovered: run {} was interrupted; its change is saved in {} and the tree is back at {}",
                    ip.run,
                    self.run_dir(ip.run).display(),
                    &self.reference_commit()[..7]
                )
            }
        };
        self.session.write_meta(&meta)?;
        self.journal.in_progress = None;
        self.save_journal()?;
        Ok(msg)
    }

    fn stash_dir(&self) -> PathBuf {
        self.own.join(STASH_DIR)
    }

    /// Puts the uncommitted editable files aside (in the worker's `stash/`, where recovery finds them) and the
    /// best commit's in their place.
    pub fn stash(&self) -> Result<()> {
        let editable = &self.session.project.editable;
        Snapshot::take(editable, &self.git)?.save(&self.stash_dir())?;
        let at_best: Vec<String> = self
            .git
            .exec(&["ls-tree", "-r", "--name-only", self.reference_commit()])?
            .lines()
            .filter(|f| editable.matches(f))
            .map(str::to_string)
            .collect();
        for f in editable.files(&self.git)? {
            if !at_best.contains(&f) {
                std::fs::remove_file(self.root.join(&f)).with_context(|| format!("removing {f}"))?;
            }
        }
        let mut checkout = vec!["checkout", self.reference_commit(), "--"];
        checkout.extend(at_best.iter().map(String::as_str));
        self.git.exec(&checkout)?;
        Ok(())
    }

    /// Brings stashed editable files back into the tree; whether there were any.
    pub fn unstash(&self) -> Result<bool> {
        let dir = self.stash_dir();
        // A stash from before projects: the training file alone.
        let single = dir.join(RUN_TRAINING_FILE);
        if let Ok(content) = std::fs::read(&single) {
            autoresearch_harness::fsutil::write_atomic(&self.root.join(TRAINING_FILE), &content)?;
            std::fs::remove_file(&single)?;
            return Ok(true);
        }
        let Some(snapshot) = Snapshot::load(&dir)? else { return Ok(false) };
        snapshot.restore(&self.session.project.editable, &self.git)?;
        std::fs::remove_dir_all(dir.join(SNAPSHOT_DIR))?;
        Ok(true)
    }

    /// Puts aside whatever the tree holds beyond the best commit (a change left by a stopped loop or agent),
    /// into the worker's `leftovers/<time>`; returns that folder if there was anything.
    pub fn set_aside_leftovers(&self) -> Result<Option<PathBuf>> {
        let (editable, forbidden) = self.changes()?;
        if editable.is_empty() && forbidden.is_empty() {
            return Ok(None);
        }
        // One folder each, also for two in the same second.
        let stamp = now_utc().replace(':', "");
        let dir = (0..)
            .map(|k| self.own.join(LEFTOVERS_DIR).join(if k == 0 { stamp.clone() } else { format!("{stamp}-{k}") }))
            .find(|d| !d.exists())
            .unwrap();
        self.set_aside_to(&dir, None)?;
        Ok(Some(dir))
    }

    /// The files that differ from the reference commit (new and removed ones included): the editable ones, and
    /// the others, which no experiment may change.
    pub fn changes(&self) -> Result<(Vec<String>, Vec<String>)> {
        self.session.project.changes(&self.git, self.reference_commit())
    }

    /// Files other than the editable ones that differ from the reference commit, new ones included.
    pub fn forbidden_changes(&self) -> Result<Vec<String>> {
        Ok(self.changes()?.1)
    }

    pub fn editable_changed(&self) -> Result<bool> {
        Ok(!self.changes()?.0.is_empty())
    }
}

/// A message on stderr from worker `number`, each line headed by the number in a pool of several.
pub fn say_as(number: usize, text: &str) {
    for line in text.lines() {
        eprintln!("{}", heading(number, line));
    }
}

/// A line from worker `number`: headed by the number in a pool of several (worker 0 works alone).
pub fn heading(number: usize, line: &str) -> String {
    match number {
        0 => line.to_string(),
        k => format!("worker {k}: {line}"),
    }
}
