//! The research loop: a session on a git branch, one experiment at a time (check, commit, build, train,
//! decide, record, keep or reset), its journal and recovery, the keep rules and the agent driver.
//!
//! [`Workspace`] is an open session; [`run`] runs one experiment; [`agent`] drives a coding agent through many;
//! [`rules`] decides what is kept; results.tsv's format, the session's file names, the noise estimates and the
//! summaries (`report`, `compare`) are the `autoresearch-report` crate's;
//! [`trainer`] builds the training binary and [`training`] runs it (train, then evaluate); [`state`] is the
//! journal; [`git`] wraps the git calls.
//!
//! On disk, in the repository: `results.tsv` (one row per experiment) and `.autoresearch/` (both ignored by
//! git): `state.json`, `runs/<n>/` (meta.json, the training file as run, its log, build log, the evaluation's
//! `result-<seed>.json`, the diff of every discarded or crashed change, and `seed-42/`, the hand-over folder
//! whose checkpoint is kept for kept runs and crashed evaluations), `noise.json`, `notes.md` (the agents'), `leftovers/` (unrun changes set
//! aside), `stash/` (a change waiting while the best is re-measured), a lock file.

pub mod agent;
pub mod git;
pub mod ledger;
pub mod process;
pub mod rules;
pub mod run;
pub mod slurm;
pub mod state;
pub mod trainer;
pub mod training;
pub mod workers;

// results.tsv's format, the session's file names and the summaries, which the dashboard reads without the loop;
// named here so that the loop's modules say `crate::results`, `crate::files`, `crate::report`.
use autoresearch_report::{files, report, results};

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use git::Git;
use ledger::Ledger;
use results::Status;
use state::{Best, State};
use trainer::DeviceChoice;

use files::*;
pub use files::{RESULTS_FILE, STATE_DIR, TRAINING_FILE};

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
    pub harness_overhead_seconds: Option<f64>,
    /// Of the overhead, the build's seconds (a worker's wait for the repository's tree included).
    #[serde(default)]
    pub build_seconds: Option<f64>,
}

pub fn file_hash(bytes: &[u8]) -> String {
    format!("{:016x}", autoresearch_harness::fsutil::fnv1a(autoresearch_harness::fsutil::FNV_START, bytes))
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

/// A repository with a research session, locked against a second `run` or `loop`; or one worker of a session
/// run by several (see [`ledger`]), which makes its experiments in a worktree of its own.
pub struct Workspace {
    /// The tree experiments are made in: the repository, or the worker's worktree.
    pub root: PathBuf,
    pub git: Git,
    /// The session's folder, `.autoresearch` in the repository: run folders, notes, noise.
    pub dir: PathBuf,
    /// This loop's own files: its journal (state.json), prompt, agent log, stash and leftovers. The session's
    /// folder for a lone loop, `workers/<k>/` in it for worker k.
    pub own: PathBuf,
    pub results: PathBuf,
    /// A lone loop's: the session's state. A worker's: its journal, whose `best` is the best its current
    /// experiment started from (the session's best is the ledger's).
    pub state: State,
    /// The worker's number (from 1) and the session's shared ledger, for a worker.
    pub worker: Option<usize>,
    pub ledger: Option<Arc<Ledger>>,
    _lock: Option<File>,
}

/// Starts a session: branch `autoresearch/<tag>` from HEAD, the results.tsv header, the state.
pub fn init(
    root: &Path,
    tag: &str,
    profile: &str,
    time_budget: f64,
    device: DeviceChoice,
    rule: &str,
) -> Result<State> {
    if tag.is_empty() || !tag.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
        bail!("tag {tag:?}: use letters, digits, '-', '_' and '.'");
    }
    let git = Git::new(root);
    let branch = format!("autoresearch/{tag}");
    if git.ok(&["rev-parse", "--verify", "--quiet", &format!("refs/heads/{branch}")])? {
        bail!("branch {branch} exists already: pick another tag");
    }
    let dirty: Vec<String> = git.run(&["diff", "--name-only", "HEAD", "--"])?.lines().map(str::to_string).collect();
    if !dirty.is_empty() {
        bail!("uncommitted changes to tracked files ({}): commit or stash them first", dirty.join(", "));
    }
    let dir = root.join(STATE_DIR);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let lock = lock(&dir)?;
    if let Ok(old) = State::load(&dir) {
        // What a killed command of that session left running stops first; then its files move aside, whole.
        let workers = worker_journals(&dir);
        for c in old.children.iter().chain(workers.iter().flat_map(|(_, w)| &w.children)) {
            c.kill_if_ours();
        }
        let archive = dir.join(ARCHIVE_DIR).join(&old.tag);
        std::fs::create_dir_all(&archive)?;
        let names = [STATE_FILE, RUNS_DIR, NOISE_FILE, PROMPT_FILE, AGENT_LOG, NOTES_FILE, LEFTOVERS_DIR, WORKERS_DIR];
        for name in names {
            if dir.join(name).exists() {
                std::fs::rename(dir.join(name), archive.join(name))?;
            }
        }
        if !workers.is_empty() {
            // Their worktrees moved with them: git forgets them (their branches stay).
            git.run(&["worktree", "prune"])?;
        }
        if root.join(RESULTS_FILE).exists() {
            std::fs::rename(root.join(RESULTS_FILE), archive.join(RESULTS_FILE))?;
        }
        eprintln!("session {} archived in {}", old.tag, archive.display());
    }
    git.run(&["checkout", "--quiet", "-b", &branch])?;
    let state = State {
        tag: tag.to_string(),
        branch,
        base: git.head()?,
        profile: profile.to_string(),
        time_budget,
        device,
        rule: rule.to_string(),
        best: None,
        next_run: 1,
        in_progress: None,
        children: Vec::new(),
        slurm_jobs: Vec::new(),
    };
    results::create(&root.join(RESULTS_FILE))?;
    state.save(&dir)?;
    drop(lock);
    Ok(state)
}

/// The journals of a session's workers, by number (none for a session run by one loop).
pub fn worker_journals(dir: &Path) -> Vec<(usize, State)> {
    let mut found: Vec<(usize, State)> = std::fs::read_dir(dir.join(WORKERS_DIR))
        .map(|entries| {
            entries
                .filter_map(|e| {
                    let e = e.ok()?;
                    let k = e.file_name().to_str()?.parse().ok()?;
                    Some((k, State::load(&e.path()).ok()?))
                })
                .collect()
        })
        .unwrap_or_default();
    found.sort_by_key(|(k, _)| *k);
    found
}

fn lock(dir: &Path) -> Result<File> {
    let path = dir.join("lock");
    let file = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    if file.try_lock().is_err() {
        bail!(
            "another `autoresearch run`, `loop` or `noise` is working in this repository ({} is locked)",
            path.display()
        );
    }
    Ok(file)
}

impl Workspace {
    /// Opens the session of the repository at `root` and puts right whatever a killed run left behind.
    pub fn open(root: &Path) -> Result<Workspace> {
        let dir = root.join(STATE_DIR);
        let state = State::load(&dir)?;
        let lock = lock(&dir)?;
        let mut ws = Workspace {
            root: root.to_path_buf(),
            git: Git::new(root),
            results: root.join(RESULTS_FILE),
            own: dir.clone(),
            dir,
            state,
            worker: None,
            ledger: None,
            _lock: Some(lock),
        };
        let branch = ws.git.branch()?;
        if branch != ws.state.branch {
            bail!(
                "on branch {branch}, but the session {} works on {}: `git checkout {}`",
                ws.state.tag,
                ws.state.branch,
                ws.state.branch
            );
        }
        if !ws.results.exists() {
            results::create(&ws.results)?;
        }
        if let Some(msg) = ws.recover()? {
            eprintln!("{msg}");
        }
        Ok(ws)
    }

    /// Opens worker `k`'s side of a session run by several: its worktree (made on first use, on branch
    /// `<session branch>-w<k>`, at the session's best) and its journal, and puts right what a killed
    /// coordinator left of its experiment.
    pub fn worker(ledger: &Arc<Ledger>, k: usize) -> Result<Workspace> {
        let session = ledger.state();
        let own = ledger.dir.join(WORKERS_DIR).join(k.to_string());
        let tree = own.join(WORKER_TREE);
        let start = session.reference_commit().to_string();
        if !tree.join(".git").exists() {
            std::fs::create_dir_all(&own).with_context(|| format!("creating {}", own.display()))?;
            let git = Git::new(&ledger.root);
            git.run(&["worktree", "prune"])?;
            let branch = format!("{}-w{k}", session.branch);
            git.run(&["worktree", "add", "--quiet", "-B", &branch, &tree.display().to_string(), &start])?;
        }
        let mut state = State::load(&own).unwrap_or_else(|_| State {
            in_progress: None,
            children: Vec::new(),
            slurm_jobs: Vec::new(),
            ..session.clone()
        });
        if state.in_progress.is_none() {
            state.best = session.best.clone();
        }
        drop(session);
        let mut ws = Workspace {
            git: Git::new(&tree),
            root: tree,
            dir: ledger.dir.clone(),
            own,
            results: ledger.results.clone(),
            state,
            worker: Some(k),
            ledger: Some(ledger.clone()),
            _lock: None,
        };
        ws.save_state()?;
        if let Some(msg) = ws.recover()? {
            ws.say(&msg);
        }
        Ok(ws)
    }

    pub fn save_state(&self) -> Result<()> {
        self.state.save(&self.own)
    }

    /// A message on stderr, each line headed by the worker's number where there are several.
    pub fn say(&self, text: &str) {
        say(self.worker, text)
    }

    /// The session's state as it is now: the ledger's for a worker, else this loop's own.
    pub fn session(&self) -> SessionState<'_> {
        match &self.ledger {
            Some(l) => SessionState::Shared(l.state()),
            None => SessionState::Own(&self.state),
        }
    }

    /// The session's best now (for a worker, possibly newer than the one its experiment started from).
    pub fn best_now(&self) -> Option<Best> {
        self.session().best.clone()
    }

    /// Takes the next run number.
    pub fn take_run(&mut self) -> Result<u64> {
        match &self.ledger {
            Some(l) => l.take_run(),
            None => {
                self.state.next_run += 1;
                Ok(self.state.next_run - 1)
            }
        }
    }

    /// Puts the new best in place: for a worker, in the ledger (unless it is there already), with the session
    /// branch advanced to it; the best this loop's next experiment starts from too.
    pub fn apply_keep(&mut self, best: Best, message: &str) -> Result<()> {
        let best = match &self.ledger {
            Some(l) => l.keep(&mut l.state(), best, message)?,
            None => best,
        };
        self.state.best = Some(best);
        Ok(())
    }

    pub fn run_dir(&self, run: u64) -> PathBuf {
        self.dir.join(RUNS_DIR).join(run.to_string())
    }

    pub fn read_meta(&self, run: u64) -> Option<RunMeta> {
        serde_json::from_slice(&std::fs::read(self.run_dir(run).join(META_FILE)).ok()?).ok()
    }

    pub fn write_meta(&self, meta: &RunMeta) -> Result<()> {
        let dir = self.run_dir(meta.run);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        autoresearch_harness::fsutil::write_atomic(&dir.join(META_FILE), serde_json::to_string_pretty(meta)?.as_bytes())
    }

    /// Saves the change from the reference commit (committed or not) and any new files into `run`'s folder,
    /// then puts the working tree back to the reference commit.
    pub fn set_aside(&self, run: u64, commit: Option<&str>) -> Result<()> {
        self.set_aside_to(&self.run_dir(run), commit)
    }

    /// [`Workspace::set_aside`] into any folder.
    pub fn set_aside_to(&self, dir: &Path, commit: Option<&str>) -> Result<()> {
        let reference = self.state.reference_commit().to_string();
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
            let to = dir.join("untracked").join(&file);
            std::fs::create_dir_all(to.parent().unwrap())?;
            std::fs::rename(self.root.join(&file), &to)
                .with_context(|| format!("moving {file} into {}", dir.display()))?;
        }
        self.git.reset_hard(&reference)
    }

    /// Starts `cmd` in a process group of its own, recorded in the journal until [`Workspace::forget`].
    pub fn spawn(
        &mut self,
        cmd: &mut std::process::Command,
        role: process::Role,
    ) -> Result<(std::process::Child, process::Recorded)> {
        let (child, recorded) = process::spawn(cmd, role)?;
        self.state.children.push(recorded.clone());
        self.save_state()?;
        Ok((child, recorded))
    }

    /// Takes a finished process group out of the journal.
    pub fn forget(&mut self, recorded: &process::Recorded) -> Result<()> {
        self.state.children.retain(|c| c != recorded);
        self.save_state()
    }

    /// Puts right what a killed process left: first stops the processes it started (an agent that went on
    /// would change the tree under us) and sets aside the tree a stopped agent was editing, then finishes or
    /// undoes the experiment under way. Returns what it did.
    pub fn recover(&mut self) -> Result<Option<String>> {
        results::repair(&self.results)?;
        let mut msgs = Vec::new();
        let children = std::mem::take(&mut self.state.children);
        for c in &children {
            c.kill_if_ours();
        }
        if !children.is_empty() {
            self.save_state()?;
            let roles: Vec<String> =
                children.iter().map(|c| format!("{:?} (group {})", c.role, c.pgid).to_lowercase()).collect();
            msgs.push(format!("recovered: stopped what the last process left running: {}", roles.join(", ")));
        }
        if !self.state.slurm_jobs.is_empty() {
            let jobs = self.state.slurm_jobs.join(", ");
            match slurm::cancel(&self.state.slurm_jobs) {
                Ok(()) => {
                    self.state.slurm_jobs.clear();
                    self.save_state()?;
                    msgs.push(format!("recovered: cancelled the Slurm jobs the last process left: {jobs}"));
                }
                // They stay in the journal, to be cancelled by the next start.
                Err(e) => msgs.push(format!("could not cancel the Slurm jobs the last process left ({jobs}): {e:#}")),
            }
        }
        if let Some(ip) = self.state.in_progress.clone() {
            msgs.push(self.finish_or_undo(&ip)?);
        } else if children.iter().any(|c| c.role == process::Role::Agent) {
            if let Some(dir) = self.set_aside_leftovers()? {
                msgs.push(format!(
                    "recovered: the stopped agent's unfinished change is set aside in {}",
                    dir.display()
                ));
            }
        }
        if self.unstash()? {
            msgs.push(format!(
                "recovered: the change to {TRAINING_FILE} that waited while the best was re-measured is back in the tree"
            ));
        }
        Ok((!msgs.is_empty()).then(|| msgs.join("\n")))
    }

    /// Finishes an experiment whose row was written, or undoes one whose row was not; says which.
    fn finish_or_undo(&mut self, ip: &state::InProgress) -> Result<String> {
        let rows = results::read(&self.results)?.rows;
        let recorded = results::experiment_row(&rows, ip.run);
        let mut meta = self.read_meta(ip.run).unwrap_or(RunMeta { run: ip.run, ..Default::default() });
        let msg = match recorded {
            Some(row) => {
                // The row was written: finish what followed it.
                if row.status == Status::Keep {
                    let commit = ip.commit.clone().unwrap_or_else(|| self.state.reference_commit().to_string());
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
                    &self.state.reference_commit()[..7]
                )
            }
        };
        self.write_meta(&meta)?;
        self.state.in_progress = None;
        self.save_state()?;
        Ok(msg)
    }

    fn stash_path(&self) -> PathBuf {
        self.own.join("stash").join("train.rs")
    }

    /// Puts the uncommitted training file aside (in `.autoresearch/stash`, where recovery finds it) and the best
    /// commit's in its place.
    pub fn stash(&self) -> Result<()> {
        let content =
            std::fs::read(self.root.join(TRAINING_FILE)).with_context(|| format!("reading {TRAINING_FILE}"))?;
        std::fs::create_dir_all(self.stash_path().parent().unwrap())?;
        autoresearch_harness::fsutil::write_atomic(&self.stash_path(), &content)?;
        self.git.run(&["checkout", self.state.reference_commit(), "--", TRAINING_FILE])?;
        Ok(())
    }

    /// Brings a stashed training file back into the tree; whether there was one.
    pub fn unstash(&self) -> Result<bool> {
        let path = self.stash_path();
        let Ok(content) = std::fs::read(&path) else { return Ok(false) };
        autoresearch_harness::fsutil::write_atomic(&self.root.join(TRAINING_FILE), &content)?;
        std::fs::remove_file(&path)?;
        Ok(true)
    }

    /// Puts aside whatever the tree holds beyond the best commit (a change left by a stopped loop or agent),
    /// into `.autoresearch/leftovers/<time>`; returns that folder if there was anything.
    pub fn set_aside_leftovers(&self) -> Result<Option<PathBuf>> {
        if !self.training_file_changed()? && self.forbidden_changes()?.is_empty() {
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

    /// Files other than the training file that differ from the reference commit, new ones included.
    pub fn forbidden_changes(&self) -> Result<Vec<String>> {
        Ok(self.git.changed_files(self.state.reference_commit())?.into_iter().filter(|f| f != TRAINING_FILE).collect())
    }

    pub fn training_file_changed(&self) -> Result<bool> {
        Ok(!self.git.ok(&["diff", "--quiet", self.state.reference_commit(), "--", TRAINING_FILE])?)
    }

    /// The run folders, oldest first.
    pub fn runs(&self) -> Vec<RunMeta> {
        let next = self.session().next_run;
        (1..next).filter_map(|n| self.read_meta(n)).collect()
    }
}

/// The session's state, read where it lives.
pub enum SessionState<'a> {
    Own(&'a State),
    Shared(MutexGuard<'a, State>),
}

impl std::ops::Deref for SessionState<'_> {
    type Target = State;
    fn deref(&self) -> &State {
        match self {
            SessionState::Own(s) => s,
            SessionState::Shared(g) => g,
        }
    }
}

/// A message on stderr, each line headed by the number of the worker saying it, if any.
pub fn say(worker: Option<usize>, text: &str) {
    for line in text.lines() {
        match worker {
            Some(k) => eprintln!("worker {k}: {line}"),
            None => eprintln!("{line}"),
        }
    }
}

/// A mutex whose holder panicked still guards consistent data here (every change is saved whole).
fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
