//! A session: the repository on its branch `autoresearch/<tag>`, its state (settings, best, run numbers), its
//! results.tsv and run folders, locked against a second command. Every experiment is made by a
//! [`Worker`](crate::worker::Worker) of the session; what the workers share lives here, each change written by
//! one worker at a time: the best (and the branch, which follows it), the run numbers, the rows, the
//! repository's tree (where a worker in a worktree of its own builds), what each worker is trying now (for the
//! others' prompts), the experiments claimed against `--max-experiments`, the confirmation reruns offered
//! to whichever worker is free, and under the frontier search ([`crate::frontier`]) the nodes and which worker
//! starts from which.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{File, TryLockError};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::files::*;
use crate::frontier::{choose, Node};
use crate::git::Git;
use crate::process::holders;
use crate::project::{Project, PROJECT_FILE};
use crate::results;
use crate::state::{Best, Journal, Settings, State};
use crate::trainer::DeviceChoice;
use crate::training::TrainingOutcome;
use crate::tree::Search;
use crate::{locked, RunMeta};

pub struct Session {
    /// The repository, on the session branch.
    pub root: PathBuf,
    pub git: Git,
    /// The session's folder, `.autoresearch` in the repository: run folders, journals, notes, noise.
    pub dir: PathBuf,
    pub results: PathBuf,
    pub settings: Settings,
    /// What the session researches: the built-in GPT, or the project its `autoresearch.toml` describes.
    pub project: Project,
    state: Mutex<State>,
    /// worker → (run, description) of the experiment it is running.
    running: Mutex<BTreeMap<usize, (u64, String)>>,
    /// Under the frontier search, worker → the run of the node it starts its experiments from now.
    starts: Mutex<BTreeMap<usize, u64>>,
    /// The repository's working tree: a build copies a worker's training file in and puts the best's back.
    tree: Mutex<()>,
    /// Experiments started, against `--max-experiments`.
    started: AtomicUsize,
    /// Confirmation reruns waiting for a worker.
    reruns: Mutex<VecDeque<RerunTask>>,
    _lock: File,
}

/// Starts a session: branch `autoresearch/<tag>` from HEAD, the results.tsv header, the state.
pub fn init(
    root: &Path,
    tag: &str,
    profile: &str,
    time_budget: f64,
    device: DeviceChoice,
    rule: &str,
    search: Search,
) -> Result<State> {
    if tag.is_empty() || !tag.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
        bail!("tag {tag:?}: use letters, digits, '-', '_' and '.'");
    }
    let git = Git::new(root);
    let branch = format!("autoresearch/{tag}");
    if git.ok(&["rev-parse", "--verify", "--quiet", &format!("refs/heads/{branch}")])? {
        bail!("branch {branch} exists already: pick another tag");
    }
    let dirty: Vec<String> = git.exec(&["diff", "--name-only", "HEAD", "--"])?.lines().map(str::to_string).collect();
    if !dirty.is_empty() {
        bail!("uncommitted changes to tracked files ({}): commit or stash them first", dirty.join(", "));
    }
    let project = Project::load(root)?;
    if project.commands.is_some() && !git.ok(&["ls-files", "--error-unmatch", PROJECT_FILE])? {
        bail!("{PROJECT_FILE} is not committed: commit it (and the files it names) first");
    }
    exclude_session_files(&git)?;
    let dir = root.join(STATE_DIR);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let lock = lock(&dir)?;
    if let Ok(old) = State::load(&dir) {
        // What a killed command of that session left running stops first; then its files move aside, whole.
        let journals = journals(&dir);
        for c in journals.iter().flat_map(|(_, j)| &j.children) {
            c.kill_if_ours();
        }
        let archive = dir.join(ARCHIVE_DIR).join(&old.settings.tag);
        std::fs::create_dir_all(&archive)?;
        let names = [
            STATE_FILE,
            JOURNAL_FILE,
            RUNS_DIR,
            NOISE_FILE,
            PROMPT_FILE,
            AGENT_LOG,
            NOTES_FILE,
            LEFTOVERS_DIR,
            STASH_DIR,
            NOISE_DIR,
            WORKERS_DIR,
        ];
        for name in names {
            if dir.join(name).exists() {
                std::fs::rename(dir.join(name), archive.join(name))?;
            }
        }
        if journals.iter().any(|(k, _)| *k > 0) {
            // Their worktrees moved with them: git forgets them (their branches stay).
            git.exec(&["worktree", "prune"])?;
        }
        if root.join(RESULTS_FILE).exists() {
            std::fs::rename(root.join(RESULTS_FILE), archive.join(RESULTS_FILE))?;
        }
        eprintln!("session {} archived in {}", old.settings.tag, archive.display());
    }
    git.exec(&["checkout", "--quiet", "-b", &branch])?;
    let state = State {
        settings: Settings {
            tag: tag.to_string(),
            branch,
            base: git.head()?,
            profile: profile.to_string(),
            time_budget,
            device,
            rule: rule.to_string(),
            metric: project.metric,
            search,
        },
        best: None,
        next_run: 1,
        nodes: Vec::new(),
    };
    results::create(&root.join(RESULTS_FILE))?;
    state.save(&dir)?;
    drop(lock);
    Ok(state)
}

/// The files the loop (and `report`) writes in the repository are no change of an experiment's: git ignores them
/// in this repository and its worktrees (its own `info/exclude`), whatever the project's .gitignore says.
fn exclude_session_files(git: &Git) -> Result<()> {
    let common = git.exec(&["rev-parse", "--git-common-dir"])?;
    let path = git.root.join(common.trim()).join("info/exclude");
    let existing = std::fs::read_to_string(&path).unwrap_or_default();
    let missing: Vec<String> = [STATE_DIR, RESULTS_FILE, RUN_LOG, PROGRESS_PLOT, COMPARISON_PLOT]
        .iter()
        .map(|name| format!("/{name}"))
        .filter(|line| !existing.lines().any(|l| l.trim().trim_end_matches('/') == line))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    std::fs::create_dir_all(path.parent().expect("in info/"))?;
    let mut text = existing;
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text += "# written by the research loop (autoresearch init)\n";
    missing.iter().for_each(|l| text += &format!("{l}\n"));
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
}

/// The journals in a session's folder by worker: 0, the repository's own tree's, then each worker's of a pool
/// of several.
pub fn journals(dir: &Path) -> Vec<(usize, Journal)> {
    autoresearch_report::journal::read_journals(dir)
}

/// How long a command waits for the session's lock before it refuses: a command killed a moment ago may still
/// be exiting, or a child it was starting may hold the lock a little longer (between fork and exec the child
/// holds every descriptor).
const LOCK_WAIT: Duration = Duration::from_secs(3);

fn lock(dir: &Path) -> Result<File> {
    let path = dir.join(LOCK_FILE);
    let file = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(TryLockError::WouldBlock) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Err(TryLockError::WouldBlock) => {
                let held: Vec<_> =
                    holders(&path).into_iter().map(|(pid, cmd)| format!("; open in pid {pid}: {cmd}")).collect();
                bail!(
                    "another `autoresearch run`, `loop` or `noise` is working in this repository ({} is locked{})",
                    path.display(),
                    held.concat()
                );
            }
            Err(TryLockError::Error(e)) => return Err(e).with_context(|| format!("locking {}", path.display())),
        }
    }
}

impl Session {
    /// Opens the session of the repository at `root`, locked for as long as it is open.
    pub fn open(root: &Path) -> Result<Arc<Session>> {
        Session::open_to_search(root, None)
    }

    /// [`Session::open`], the session's search changed to `search` where one is given (it stays so).
    pub fn open_to_search(root: &Path, search: Option<Search>) -> Result<Arc<Session>> {
        let dir = root.join(STATE_DIR);
        let mut state = State::load(&dir)?;
        let lock = lock(&dir)?;
        let git = Git::new(root);
        let branch = git.branch()?;
        if branch != state.settings.branch {
            bail!(
                "on branch {branch}, but the session {} works on {}: `git checkout {}`",
                state.settings.tag,
                state.settings.branch,
                state.settings.branch
            );
        }
        let results = root.join(RESULTS_FILE);
        if !results.exists() {
            results::create(&results)?;
        }
        results::repair(&results)?;
        let project = Project::at_commit(root, &state.settings.base)?;
        // Only a session that opens switches its search.
        if let Some(search) = search.filter(|s| *s != state.settings.search) {
            state.settings.search = search;
            state.save(&dir)?;
        }
        Ok(Arc::new(Session {
            root: root.to_path_buf(),
            git,
            results,
            project,
            settings: state.settings.clone(),
            state: Mutex::new(state),
            dir,
            running: Mutex::new(BTreeMap::new()),
            starts: Mutex::new(BTreeMap::new()),
            tree: Mutex::new(()),
            started: AtomicUsize::new(0),
            reruns: Mutex::new(VecDeque::new()),
            _lock: lock,
        }))
    }

    pub fn state(&self) -> MutexGuard<'_, State> {
        locked(&self.state)
    }

    /// The session's best now.
    pub fn best(&self) -> Option<Best> {
        self.state().best.clone()
    }

    /// Takes the next run number.
    pub fn take_run(&self) -> Result<u64> {
        let mut state = self.state();
        let run = state.next_run;
        state.next_run += 1;
        state.save(&self.dir)?;
        Ok(run)
    }

    /// Makes `best` the session's best in `state` (the session's, held), unless it is already; the session
    /// branch (and the repository's tree) moves to it: fast-forward where it grew from the branch's head, else a
    /// merge commit whose tree is the kept file's exactly (the branch keeps every earlier best in its history).
    /// Under the frontier search, `best` (kept against `parent`) joins the frontier instead (see
    /// [`Session::join`]). Returns the best (or node) as recorded.
    pub fn keep(&self, state: &mut State, best: Best, parent: Option<u64>, message: &str) -> Result<Best> {
        if self.settings.search == Search::Frontier {
            return self.join(state, best, parent);
        }
        if let Some(b) = state.best.as_ref().filter(|b| b.run == best.run) {
            return Ok(b.clone());
        }
        let commit = self.advance(&best.commit, message)?;
        let best = Best { commit, ..best };
        state.best = Some(best.clone());
        state.save(&self.dir)?;
        Ok(best)
    }

    /// A kept experiment joins the frontier (once: recovery may offer it again), a git ref keeping its commit;
    /// a re-measure of its parent (the same commit) takes the parent's place. The best node is the session's
    /// best, and the session branch is reset to it: the branch holds the best node's lineage.
    fn join(&self, state: &mut State, at: Best, parent: Option<u64>) -> Result<Best> {
        self.seed_frontier(state)?;
        if let Some(node) = state.nodes.iter().find(|n| n.at.run == at.run) {
            return Ok(node.at.clone());
        }
        self.git.exec(&["update-ref", &self.node_ref(at.run), &at.commit])?;
        // A re-measure: the node of the same commit, whichever of its runs the worker started from.
        let remeasured = state.nodes.iter().position(|n| n.at.commit == at.commit);
        let (parent, tries) = match remeasured {
            Some(i) => {
                let old = state.nodes.remove(i);
                // Workers starting from the node start from its re-measure: it stays taken.
                for start in locked(&self.starts).values_mut().filter(|r| **r == old.at.run) {
                    *start = at.run;
                }
                (old.parent, old.tries)
            }
            None => (parent, 0),
        };
        state.nodes.push(Node { at: at.clone(), parent, tries });
        let goal = self.settings.metric.goal;
        let best = state
            .nodes
            .iter()
            .map(|n| &n.at)
            .reduce(|a, b| if goal.better(b.val_bpb, a.val_bpb) { b } else { a })
            .cloned();
        if let Some(b) = best.as_ref().filter(|b| state.best.as_ref() != Some(b)) {
            let _tree = locked(&self.tree);
            if self.git.head()? != b.commit {
                self.git.reset_hard(&b.commit)?;
            }
        }
        state.best = best;
        state.save(&self.dir)?;
        Ok(at)
    }

    /// A best kept while the session searched greedily (before it searched the frontier, or between two
    /// frontier loops) joins the frontier, with a ref for its commit.
    fn seed_frontier(&self, state: &mut State) -> Result<()> {
        if let Some(best) = state.best.clone().filter(|b| !state.nodes.iter().any(|n| n.at.commit == b.commit)) {
            self.git.exec(&["update-ref", &self.node_ref(best.run), &best.commit])?;
            state.nodes.push(Node { at: best, parent: None, tries: 0 });
        }
        Ok(())
    }

    /// The frontier's node whose commit is `commit`, if there is one.
    pub fn node_at(&self, commit: &str) -> Option<Best> {
        self.state().nodes.iter().find(|n| n.at.commit == commit).map(|n| n.at.clone())
    }

    /// The git ref that keeps a node's commit while the session branch holds another node's lineage.
    fn node_ref(&self, run: u64) -> String {
        format!("refs/autoresearch-nodes/{}/{run}", self.settings.tag)
    }

    /// Under the frontier search, the node worker `worker` starts its next experiment from ([`choose`]: one no
    /// other worker starts from while there is one), its tries counted; None before the baseline.
    pub fn start_node(&self, worker: usize) -> Result<Option<Best>> {
        let mut state = self.state();
        self.seed_frontier(&mut state)?;
        let mut starts = locked(&self.starts);
        let taken: Vec<u64> = starts.iter().filter(|(w, _)| **w != worker).map(|(_, run)| *run).collect();
        let Some(i) = choose(&state.nodes, &taken, self.settings.metric.goal) else { return Ok(None) };
        state.nodes[i].tries += 1;
        state.save(&self.dir)?;
        starts.insert(worker, state.nodes[i].at.run);
        Ok(Some(state.nodes[i].at.clone()))
    }

    /// Worker `worker` starts from no node any more (it stopped).
    pub fn leave_node(&self, worker: usize) {
        locked(&self.starts).remove(&worker);
    }

    fn advance(&self, commit: &str, message: &str) -> Result<String> {
        let _tree = locked(&self.tree);
        let head = self.git.head()?;
        let new = if self.git.ok(&["merge-base", "--is-ancestor", &head, commit])? {
            commit.to_string()
        } else {
            self.git.merge_taking(&head, commit, message)?
        };
        // The repository's tree follows the branch (worker 0's is there already: its uncommitted edits stay).
        if head != new {
            self.git.reset_hard(&new)?;
        }
        Ok(new)
    }

    /// Runs `build` with `file` (a worker's training file) in the repository's tree, which holds the session
    /// branch's file again afterwards.
    pub fn build_in_tree<T>(&self, file: &[u8], build: impl FnOnce() -> Result<T>) -> Result<T> {
        let _tree = locked(&self.tree);
        let path = self.root.join(TRAINING_FILE);
        autoresearch_harness::fsutil::write_atomic(&path, file)?;
        let result = build();
        self.git.exec(&["checkout", "HEAD", "--", TRAINING_FILE])?;
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

    /// The oldest rerun that no worker has taken yet and worker `taker` may train: a project's training runs in
    /// the tree of the worker that trains it, which holds the candidate only where it is the candidate's own.
    pub fn take_rerun(&self, taker: usize) -> Option<RerunTask> {
        let mut queue = locked(&self.reruns);
        let i = queue.iter().position(|t| self.project.commands.is_none() || t.owner == taker)?;
        queue.remove(i)
    }

    /// Withdraws the reruns of `run` that no worker has taken yet (an earlier seed of it crashed); their slots
    /// say so.
    pub fn withdraw_reruns(&self, run: u64) {
        let mut queue = locked(&self.reruns);
        let (withdrawn, kept): (VecDeque<RerunTask>, VecDeque<RerunTask>) =
            std::mem::take(&mut *queue).into_iter().partition(|t| t.run == run);
        *queue = kept;
        drop(queue);
        for task in withdrawn {
            task.finish(Ok(None));
        }
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

    /// The run folders, oldest first.
    pub fn runs(&self) -> Vec<RunMeta> {
        let next = self.state().next_run;
        (1..next).filter_map(|n| self.read_meta(n)).collect()
    }
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

/// What a rerun came to: (the worker that trained it, the training); None where it was withdrawn untrained.
pub type RerunResult = std::result::Result<Option<(usize, TrainingOutcome)>, String>;

/// Where a rerun's result waits for the worker that offered it.
#[derive(Default)]
pub struct Slot {
    result: Mutex<Option<RerunResult>>,
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

    pub fn take(&self) -> Option<RerunResult> {
        locked(&self.result).take()
    }
}

impl RerunTask {
    /// Hands the result to the worker that offered the rerun.
    pub fn finish(self, result: RerunResult) {
        *locked(&self.slot.result) = Some(result);
        self.slot.filled.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    use std::process::{Child, Command};

    /// A `sleep seconds` that holds `dir`'s session lock through a descriptor it inherited, as a child that a
    /// killed command was starting would: this process lets go of its own.
    fn held_by_a_child(dir: &Path, seconds: &str) -> Child {
        let file = File::create(dir.join(LOCK_FILE)).unwrap();
        file.try_lock().unwrap();
        let fd = file.as_raw_fd();
        let mut cmd = Command::new("sleep");
        cmd.arg(seconds);
        // Close-on-exec cleared in the child's table only (fcntl is async-signal-safe, between fork and exec).
        unsafe {
            cmd.pre_exec(move || match libc::fcntl(fd, libc::F_SETFD, 0) {
                -1 => Err(std::io::Error::last_os_error()),
                _ => Ok(()),
            })
        };
        cmd.spawn().unwrap()
    }

    #[test]
    fn a_held_lock_is_refused_with_who_holds_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut child = held_by_a_child(dir.path(), "30");
        let started = Instant::now();
        let error = format!("{:#}", lock(dir.path()).unwrap_err());
        assert!(started.elapsed() >= LOCK_WAIT);
        assert!(error.contains("is working in this repository"), "{error}");
        assert!(error.contains(&format!("open in pid {}: sleep 30", child.id())), "{error}");
        child.kill().unwrap();
        child.wait().unwrap();
        lock(dir.path()).unwrap();
    }

    #[test]
    fn a_lock_let_go_within_the_wait_is_taken() {
        let dir = tempfile::tempdir().unwrap();
        let mut child = held_by_a_child(dir.path(), "1");
        let started = Instant::now();
        let _lock = lock(dir.path()).unwrap();
        assert!(child.try_wait().unwrap().is_some(), "taken while the child held it");
        assert!(started.elapsed() < LOCK_WAIT);
    }
}
