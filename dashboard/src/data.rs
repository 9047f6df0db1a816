//! What the page shows, read from a session's files on each request: results.tsv, the journal
//! (`.autoresearch/state.json`), the noise estimate, the run folders and the running training's log. Nothing
//! here writes.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use autoresearch_research::compare;
use autoresearch_research::files::{BUILD_LOG, CHANGE_FILE, META_FILE, RUNS_DIR, RUN_LOG, WORKERS_DIR, WORKER_TREE};
use autoresearch_research::process::{alive, start_time, Role};
use autoresearch_research::report;
use autoresearch_research::results::{self, Status};
use autoresearch_research::rules::{load_noise, noise_for};
use autoresearch_research::state::State;
use autoresearch_research::{worker_journals, RunMeta, RESULTS_FILE, STATE_DIR};
use serde::Serialize;

/// A session folder: the repository a session runs in (results.tsv and `.autoresearch/`).
#[derive(Clone, Debug)]
pub struct Session {
    pub name: String,
    /// Canonical: files served must lie beneath it.
    pub root: PathBuf,
}

impl Session {
    pub fn open(dir: &Path) -> Result<Session> {
        let root = dir.canonicalize().with_context(|| format!("no folder {}", dir.display()))?;
        if !root.join(RESULTS_FILE).is_file() && !root.join(STATE_DIR).is_dir() {
            bail!("{} holds no research session (no {RESULTS_FILE}, no {STATE_DIR}/)", dir.display());
        }
        let name = root.file_name().map_or_else(|| root.display().to_string(), |n| n.to_string_lossy().into_owned());
        Ok(Session { name, root })
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
    /// Mean and standard deviation of val_bpb over seeds, where `noise` measured them.
    pub noise: Option<(f64, f64)>,
    /// Experiments, keep rate, best against baseline, experiments per hour, best-so-far: as `report` compares
    /// sessions (absent before the first row).
    #[serde(flatten)]
    pub totals: Option<compare::Session>,
    pub live: Vec<Live>,
}

/// What runs now.
#[derive(Serialize)]
pub struct Live {
    /// The worker, where there are several (one loop has none).
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

pub fn overview(sessions: &[Session]) -> Result<Overview> {
    Ok(Overview { sessions: sessions.iter().map(view).collect::<Result<_>>()? })
}

fn view(s: &Session) -> Result<SessionView> {
    let results = s.root.join(RESULTS_FILE);
    let state = State::load(&s.state_dir()).ok();
    let noise = match &state {
        Some(st) => noise_for(&s.state_dir(), &st.profile, st.time_budget)?,
        None => None,
    };
    let (rows, crashed, totals) = if results.is_file() {
        let file = results::read(&results)?;
        let crashed = file.rows.iter().filter(|r| r.status == Status::Crash).count();
        (file.rows.len(), crashed, Some(compare::session(&results)?))
    } else {
        (0, 0, None)
    };
    Ok(SessionView {
        name: s.name.clone(),
        rows,
        profile: state.as_ref().map(|st| st.profile.clone()),
        budget: state.as_ref().map(|st| st.time_budget),
        crashed,
        noise: noise.map(|n| (n.mean, n.std)),
        totals,
        live: state.map(|st| live(s, &st)).unwrap_or_default(),
    })
}

/// What the journals record as running now: the lone loop's, or each worker's (a journal left by a killed
/// loop lists dead processes, which are not shown).
fn live(s: &Session, st: &State) -> Vec<Live> {
    let lone = live_one(s, st, None, &s.root.join(RUN_LOG));
    let workers = worker_journals(&s.state_dir()).into_iter().filter_map(|(k, journal)| {
        let log = s.state_dir().join(WORKERS_DIR).join(k.to_string()).join(WORKER_TREE).join(RUN_LOG);
        live_one(s, &journal, Some(k), &log)
    });
    lone.into_iter().chain(workers).collect()
}

fn live_one(s: &Session, st: &State, worker: Option<usize>, log: &Path) -> Option<Live> {
    let child = st.children.iter().rfind(|c| alive(c.pgid) && start_time(c.pgid) == Some(c.start_time))?;
    let run = st.in_progress.as_ref().map(|ip| ip.run);
    let meta: Option<RunMeta> = run.and_then(|r| {
        let bytes = std::fs::read(s.state_dir().join(RUNS_DIR).join(r.to_string()).join(META_FILE)).ok()?;
        serde_json::from_slice(&bytes).ok()
    });
    let phase = match child.role {
        Role::Agent => "agent",
        Role::Build => "build",
        Role::Training => "training",
        Role::Evaluation => "evaluation",
    };
    let mut live = Live {
        worker: worker.map(|k| format!("worker {k}")),
        run,
        description: meta.map(|m| m.description).unwrap_or_default(),
        phase: phase.into(),
        step: None,
        progress_percent: None,
        remaining_seconds: None,
        loss: Vec::new(),
    };
    if matches!(child.role, Role::Training | Role::Evaluation) {
        if let Some(log) = s.inside(log).and_then(|p| std::fs::read(p).ok()) {
            read_progress(&String::from_utf8_lossy(&log), &mut live);
        }
    }
    Some(live)
}

/// Step lines of a training log: `step 00012 (4.5%) | loss: 6.123456 | ... | remaining: 287s`.
fn read_progress(log: &str, live: &mut Live) {
    /// Points of the loss curve sent at most.
    const POINTS: usize = 200;
    let mut all = Vec::new();
    for line in log.split(['\r', '\n']).filter(|l| l.starts_with("step ")) {
        let field = |name: &str| line.split(" | ").find_map(|f| f.trim().strip_prefix(name)).map(str::trim);
        let Some(step) = line[5..].split_whitespace().next().and_then(|s| s.parse::<u64>().ok()) else { continue };
        let Some(loss) = field("loss:").and_then(|l| l.parse::<f64>().ok()) else { continue };
        live.progress_percent =
            line.split_once('(').and_then(|(_, rest)| rest.split_once("%)")).and_then(|(p, _)| p.parse().ok());
        live.remaining_seconds = field("remaining:").and_then(|r| r.trim_end_matches('s').parse().ok());
        live.step = Some(step);
        all.push((step, loss));
    }
    let stride = all.len().div_ceil(POINTS).max(1);
    let last = all.last().copied();
    live.loss = all.into_iter().step_by(stride).collect();
    if let Some(last) = last.filter(|l| live.loss.last() != Some(l)) {
        live.loss.push(last);
    }
}

/// The rows from `from` on, as arrays in the order of [`ROW_COLUMNS`].
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
    "delta",
    "memory_gb",
    "seconds",
    "rule",
    "reason",
    "description",
    "worker",
    "below_noise",
    "commit",
];

pub fn rows(s: &Session, from: usize) -> Result<Rows> {
    let path = s.root.join(RESULTS_FILE);
    if !path.is_file() {
        return Ok(Rows { from, columns: ROW_COLUMNS, rows: Vec::new() });
    }
    let file = results::read(&path)?;
    let noise: Vec<_> = load_noise(&s.state_dir())?.into_values().collect();
    let all = file.rows.clone();
    let below: Vec<String> = report::build_from(&path, file, noise)
        .top_improvements
        .into_iter()
        .filter(|g| g.below_noise)
        .map(|g| g.commit)
        .collect();
    let running = results::running_best(&all);
    let mut out = Vec::new();
    for (i, r) in all.iter().enumerate() {
        let best_before = i.checked_sub(1).and_then(|j| running[j]);
        let delta = best_before.filter(|_| r.status != Status::Crash).map(|b| r.val_bpb - b);
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
            delta.map(|d| round(d, 6)),
            round(r.memory_gb, 1),
            e.map(|e| round(e.seconds, 0)),
            e.map(|e| e.rule.as_str()),
            e.map(|e| e.reason.as_str()),
            r.description,
            e.and_then(|e| e.worker),
            r.status == Status::Keep && below.contains(&r.commit),
            r.commit,
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
pub fn run_files(s: &Session, run: u64) -> Result<Option<RunFiles>> {
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
    Ok(Some(RunFiles {
        run,
        diff: read(CHANGE_FILE)?,
        log_tail: log.map(|l| autoresearch_research::training::tail(&l, LOG_LINES)),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_lines_give_the_step_the_progress_and_the_loss_curve() {
        let log = "profile small\r\nstep 00000 (0.0%) | loss: 7.600000 | lrm: 1.00 | dt: 90ms | tok/sec: 9000 | \
                   mfu: n/a | epoch: 1 | remaining: 60s    \rstep 00001 (1.5%) | loss: 7.400000 | lrm: 1.00 | \
                   dt: 90ms | tok/sec: 9000 | mfu: n/a | epoch: 1 | remaining: 59s    ";
        let mut live = Live {
            worker: None,
            run: None,
            description: String::new(),
            phase: "training".into(),
            step: None,
            progress_percent: None,
            remaining_seconds: None,
            loss: Vec::new(),
        };
        read_progress(log, &mut live);
        assert_eq!((live.step, live.progress_percent, live.remaining_seconds), (Some(1), Some(1.5), Some(59.0)));
        assert_eq!(live.loss, vec![(0, 7.6), (1, 7.4)]);
        let long: String = (0..1000).map(|k| format!("\rstep {k:05} (1.0%) | loss: 5.0 | remaining: 1s")).collect();
        read_progress(&long, &mut live);
        assert!(live.loss.len() <= 201 && live.loss.last() == Some(&(999, 5.0)), "{}", live.loss.len());
    }
}
