//! What the page shows, read from a session's files on each request: results.tsv, the session's state (its
//! profile, budget and metric: the values are the metric's, each gain by its goal, positive when better) and its
//! workers' journals (`.autoresearch/state.json`, `journal.json`), the noise estimate, the run folders (each
//! through `autoresearch-report`, not the research loop) and the running training's progress file
//! ([`autoresearch_harness::progress`]). Nothing here writes.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use autoresearch_harness::progress::{Progress, PROGRESS_FILE};
use autoresearch_report::compare;
use autoresearch_report::files::{
    is_handover_dir, BUILD_LOG, CHANGE_FILE, RESULTS_FILE, RUNS_DIR, RUN_LOG, STATE_DIR, STATE_FILE,
};
use autoresearch_report::journal::{journals, metric_of, run_description, search_of, tail, Journal, Role, Settings};
use autoresearch_report::noise::{load_noise, noise_for};
use autoresearch_report::report;
use autoresearch_report::results::{self, Status};
use autoresearch_report::tree::{self, Search};
use serde::Serialize;

/// A session folder: the repository a session runs in (results.tsv and `.autoresearch/`).
#[derive(Clone, Debug)]
pub struct SessionFolder {
    pub name: String,
    /// Canonical: files served must lie beneath it.
    pub root: PathBuf,
}

impl SessionFolder {
    pub fn open(dir: &Path) -> Result<SessionFolder> {
        let root = dir.canonicalize().with_context(|| format!("no folder {}", dir.display()))?;
        if !root.join(RESULTS_FILE).is_file() && !root.join(STATE_DIR).is_dir() {
            bail!("{} holds no research session (no {RESULTS_FILE}, no {STATE_DIR}/)", dir.display());
        }
        let name = root.file_name().map_or_else(|| root.display().to_string(), |n| n.to_string_lossy().into_owned());
        Ok(SessionFolder { name, root })
    }

    fn state_dir(&self) -> PathBuf {
        self.root.join(STATE_DIR)
    }

    /// A file of the session, if it lies beneath the session folder once links are followed.
    fn inside(&self, path: &Path) -> Option<PathBuf> {
        let real = path.canonicalize().ok()?;
        real.starts_with(&self.root).then_some(real)
    }
}

#[derive(Serialize)]
pub struct Overview {
    pub sessions: Vec<SessionView>,
}

#[derive(Serialize)]
pub struct SessionView {
    pub name: String,
    /// Rows in results.tsv (reruns included): the page fetches rows past what it has.
    pub rows: usize,
    pub profile: Option<String>,
    pub budget: Option<f64>,
    pub crashed: usize,
    /// Mean and standard deviation of the metric over seeds, where `noise` measured them.
    pub noise: Option<(f64, f64)>,
    /// How the session searches; a frontier session's chart draws its tree.
    pub search: Search,
    /// The best's lineage, root first, by row number.
    pub best_path: Vec<usize>,
    /// The metric (name and goal), experiments, keep rate, best against baseline, experiments per hour,
    /// best-so-far: as `report` compares sessions (no experiments before the first row).
    #[serde(flatten)]
    pub totals: compare::SessionTotals,
    pub live: Vec<Live>,
}

/// What runs now.
#[derive(Serialize)]
pub struct Live {
    /// The worker, in a pool of several (worker 0, alone in the repository's tree, has none).
    pub worker: Option<String>,
    pub run: Option<u64>,
    pub description: String,
    /// agent, build, training or evaluation.
    pub phase: String,
    pub step: Option<u64>,
    pub progress_percent: Option<f64>,
    pub remaining_seconds: Option<f64>,
    /// (step, smoothed loss) of the training so far.
    pub loss: Vec<(u64, f64)>,
}

pub fn overview(sessions: &[SessionFolder]) -> Result<Overview> {
    Ok(Overview { sessions: sessions.iter().map(view).collect::<Result<_>>()? })
}

fn view(s: &SessionFolder) -> Result<SessionView> {
    let results = s.root.join(RESULTS_FILE);
    // None before the session's state is written; one that does not parse is an error naming it.
    let settings = if s.state_dir().join(STATE_FILE).is_file() { Some(Settings::load(&s.state_dir())?) } else { None };
    let noise = match &settings {
        Some(st) => noise_for(&s.state_dir(), &st.profile, st.time_budget)?,
        None => None,
    };
    let file = if results.is_file() {
        results::read(&results)?
    } else {
        results::ResultsFile { rows: Vec::new(), bad: Vec::new() }
    };
    let (rows, crashed) = (file.rows.len(), file.rows.iter().filter(|r| r.status == Status::Crash).count());
    let metric = settings.as_ref().map(|st| st.metric.clone()).unwrap_or_default();
    let search = settings.as_ref().map(|st| st.search).unwrap_or_default();
    let best_path = tree::best_path(&file.rows, search, metric.goal).iter().map(|i| i + 1).collect();
    let totals = compare::totals(&results, file, metric, search);
    Ok(SessionView {
        name: s.name.clone(),
        rows,
        profile: settings.as_ref().map(|st| st.profile.clone()),
        budget: settings.as_ref().map(|st| st.time_budget),
        crashed,
        noise: noise.map(|n| (n.mean, n.std)),
        search,
        best_path,
        totals,
        live: if settings.is_some() { live(s) } else { Vec::new() },
    })
}

/// What the workers' journals record as running now: the repository tree's worker's, and each of a pool of
/// several (a journal left by a killed loop lists dead processes, which are not shown).
fn live(s: &SessionFolder) -> Vec<Live> {
    journals(&s.state_dir())
        .into_iter()
        .filter_map(|(k, journal)| live_one(s, &journal, (k > 0).then_some(k)))
        .collect()
}

fn live_one(s: &SessionFolder, st: &Journal, worker: Option<usize>) -> Option<Live> {
    let child = st.children.iter().rfind(|c| c.is_running())?;
    let run = st.in_progress.as_ref().map(|ip| ip.run);
    let mut live = Live {
        worker: worker.map(|k| format!("worker {k}")),
        run,
        description: run.and_then(|r| run_description(&s.state_dir(), r)).unwrap_or_default(),
        phase: child.role.as_str().into(),
        step: None,
        progress_percent: None,
        remaining_seconds: None,
        loss: Vec::new(),
    };
    if let (Role::Training | Role::Evaluation, Some(run)) = (child.role, run) {
        if let Some(progress) = training_progress(s, &s.state_dir().join(RUNS_DIR).join(run.to_string())) {
            live.step = Some(progress.step);
            live.progress_percent = Some(100.0 * progress.fraction);
            live.remaining_seconds = Some(progress.remaining_seconds);
            live.loss = progress.curve;
        }
    }
    Some(live)
}

/// The progress of the run's latest training: the progress file in its newest hand-over folder (`seed-<seed>/`,
/// one per training of the run), if that lies inside the session. A training that has not reported a step yet
/// has none, rather than the previous seed's.
fn training_progress(s: &SessionFolder, run_dir: &Path) -> Option<Progress> {
    let newest = std::fs::read_dir(run_dir)
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_str().is_some_and(is_handover_dir))
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .max()?;
    Progress::read(&s.inside(&newest.1.join(PROGRESS_FILE))?)
}

/// The rows from `from` on, as arrays in the order of [`ROW_COLUMNS`]: `val_bpb` is the metric's value (results.tsv's
/// column), `gain` the row's over what it was judged against (greedy: the best before it; frontier: the node it
/// started from) by the metric's goal (positive when better), `best` the session's best after it, `parent` the
/// row it started from.
#[derive(Serialize)]
pub struct Rows {
    pub from: usize,
    pub columns: &'static [&'static str],
    pub rows: Vec<serde_json::Value>,
}

pub const ROW_COLUMNS: &[&str] = &[
    "row",
    "run",
    "status",
    "val_bpb",
    "gain",
    "memory_gb",
    "seconds",
    "rule",
    "reason",
    "description",
    "worker",
    "below_noise",
    "commit",
    "best",
    "parent",
];

pub fn rows(s: &SessionFolder, from: usize) -> Result<Rows> {
    let path = s.root.join(RESULTS_FILE);
    if !path.is_file() {
        return Ok(Rows { from, columns: ROW_COLUMNS, rows: Vec::new() });
    }
    let file = results::read(&path)?;
    let noise: Vec<_> = load_noise(&s.state_dir())?.into_values().collect();
    let metric = metric_of(&path)?;
    let search = search_of(&path)?;
    let goal = metric.goal;
    let all = file.rows.clone();
    let below: Vec<String> = report::build_from(&path, file, noise, metric, search)
        .top_improvements
        .into_iter()
        .filter(|g| g.below_noise)
        .map(|g| g.commit)
        .collect();
    let running = tree::running_best(&all, search, goal);
    let against = tree::judged_against(&all, search);
    let parents = tree::parent_rows(&all);
    let mut out = Vec::new();
    for (i, r) in all.iter().enumerate() {
        let gain = against[i].filter(|_| r.status != Status::Crash).map(|p| goal.gain(r.val_bpb, all[p].val_bpb));
        if i < from {
            continue;
        }
        let e = r.extra.as_ref();
        // Rounded to what is shown, which keeps a 1,000-row session's JSON small.
        let round = |v: f64, digits: i32| (v * 10f64.powi(digits)).round() / 10f64.powi(digits);
        out.push(serde_json::json!([
            i + 1,
            e.map(|e| e.run),
            r.status.as_str(),
            (r.status != Status::Crash).then_some(round(r.val_bpb, 6)),
            gain.map(|d| round(d, 6)),
            round(r.memory_gb, 1),
            e.map(|e| round(e.seconds, 0)),
            e.map(|e| e.rule.as_str()),
            e.map(|e| e.reason.as_str()),
            r.description,
            e.and_then(|e| e.worker),
            r.status == Status::Keep && below.contains(&r.commit),
            r.commit,
            running[i].map(|b| round(b, 6)),
            parents[i].map(|p| p + 1),
        ]));
    }
    Ok(Rows { from, columns: ROW_COLUMNS, rows: out })
}

/// A run's change and the end of its log.
#[derive(Serialize)]
pub struct RunFiles {
    pub run: u64,
    pub diff: Option<String>,
    pub log_tail: Option<String>,
}

/// Lines of a run's log shown.
const LOG_LINES: usize = 60;

/// The files of run `run` (None: no such run), each only if it lies inside the session folder: a link that
/// leads out is an error.
pub fn run_files(s: &SessionFolder, run: u64) -> Result<Option<RunFiles>> {
    let dir = s.state_dir().join(RUNS_DIR).join(run.to_string());
    if !dir.is_dir() {
        return Ok(None);
    }
    let read = |name: &str| -> Result<Option<String>> {
        let path = dir.join(name);
        if std::fs::symlink_metadata(&path).is_err() {
            return Ok(None);
        }
        let Some(real) = s.inside(&path) else { bail!("{name} of run {run} lies outside the session") };
        Ok(Some(String::from_utf8_lossy(&std::fs::read(real)?).into_owned()))
    };
    let log = match read(RUN_LOG)? {
        Some(log) => Some(log),
        None => read(BUILD_LOG)?,
    };
    Ok(Some(RunFiles { run, diff: read(CHANGE_FILE)?, log_tail: log.map(|l| tail(&l, LOG_LINES)) }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_training_of_the_run_gives_its_progress() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("s");
        std::fs::create_dir_all(root.join(".autoresearch/runs/3/seed-42")).unwrap();
        let s = SessionFolder::open(&root).unwrap();
        let run = s.state_dir().join("runs/3");
        let progress = |step| Progress {
            step,
            loss: 5.0,
            fraction: 0.5,
            remaining_seconds: 30.0,
            curve: vec![(0, 7.0), (step, 5.0)],
        };
        std::fs::write(run.join("seed-42").join(PROGRESS_FILE), serde_json::to_vec(&progress(9)).unwrap()).unwrap();
        assert_eq!(training_progress(&s, &run), Some(progress(9)));
        // The next seed's training started (its folder is newer) and has not reported a step yet.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::create_dir_all(run.join("seed-43")).unwrap();
        assert_eq!(training_progress(&s, &run), None);
        std::fs::write(run.join("seed-43").join(PROGRESS_FILE), serde_json::to_vec(&progress(2)).unwrap()).unwrap();
        assert_eq!(training_progress(&s, &run), Some(progress(2)));
        // A progress file that is a link out of the session is not read.
        std::fs::remove_file(run.join("seed-43").join(PROGRESS_FILE)).unwrap();
        let outside = dir.path().join("elsewhere.json");
        std::fs::write(&outside, serde_json::to_vec(&progress(7)).unwrap()).unwrap();
        std::os::unix::fs::symlink(&outside, run.join("seed-43").join(PROGRESS_FILE)).unwrap();
        assert_eq!(training_progress(&s, &run), None);
    }
}
