//! The train step: one training per seed (train, then evaluate: [`crate::training`], or a project's commands:
//! [`crate::project_training`]) on the experiment's backend,
//! each process journaled while it runs; confirmation reruns offered to the whole pool.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::record::extra;
use super::ExperimentOptions;
use crate::backend::{Acquired, Placement};
use crate::files::rerun_log;
use crate::process::{Recorded, Role};
use crate::project_training::{train_project, Place};
use crate::results::{Row, Status};
use crate::session::RerunTask;
use crate::state::SEED;
use crate::trainer::{Trainer, TrainingSettings};
use crate::training::{evaluate_handed_over, train_and_evaluate, Begun, Processes, TrainingFiles, TrainingOutcome};
use crate::Worker;

/// The journal records each process of a training while it runs, and what the backend took for it; an
/// interrupt stops it.
pub(super) struct Journaled<'a> {
    worker: &'a mut Worker,
    opts: &'a ExperimentOptions,
    running: Option<Recorded>,
    placement: Option<Box<dyn Placement>>,
}

impl<'a> Journaled<'a> {
    pub(super) fn new(worker: &'a mut Worker, opts: &'a ExperimentOptions) -> Journaled<'a> {
        Journaled { worker, opts, running: None, placement: None }
    }
}

impl Processes for Journaled<'_> {
    fn begin(&mut self, limit: Duration) -> Result<Begun> {
        let opts = self.opts;
        let interrupted = || opts.interrupts.count() >= opts.abort_at;
        Ok(match opts.backend.acquire(self.worker, &interrupted, limit)? {
            Acquired::Ready(placement) => {
                self.placement = Some(placement);
                Begun::Ready
            }
            Acquired::Interrupted => Begun::Interrupted,
            Acquired::Failed(why) => Begun::Failed(why),
        })
    }

    fn wrap(&mut self, cmd: Command) -> Command {
        match &self.placement {
            Some(p) => p.wrap(cmd),
            None => cmd,
        }
    }

    fn failure(&mut self) -> Option<String> {
        self.placement.as_ref()?.failure()
    }

    fn finish(&mut self) -> Result<()> {
        match self.placement.take() {
            Some(p) => p.release(self.worker),
            None => Ok(()),
        }
    }

    fn start(&mut self, cmd: &mut Command, role: Role) -> Result<Child> {
        let (child, recorded) = self.worker.spawn(cmd, role).context("starting the training binary")?;
        self.running = Some(recorded);
        Ok(child)
    }

    fn ended(&mut self, _: &Child) -> Result<()> {
        match self.running.take() {
            Some(r) => self.worker.forget(&r),
            None => Ok(()),
        }
    }

    fn interrupted(&self) -> bool {
        self.opts.interrupts.count() >= self.opts.abort_at
    }
}

/// Trains once with `seed` (and evaluates), its files in `dir` and its output in `log`, under the hard timeout.
pub fn train(
    worker: &mut Worker,
    trainer: &Trainer,
    seed: u64,
    dir: &Path,
    log: PathBuf,
    opts: &ExperimentOptions,
) -> Result<TrainingOutcome> {
    let session = worker.session.clone();
    let files = TrainingFiles::in_folder(dir, seed, log);
    if let Some(commands) = &session.project.commands {
        let tree = worker.root.clone();
        let place = Place { tree: &tree, repository: &session.root, output: &files.handover, seed };
        let procs = &mut Journaled::new(worker, opts);
        return train_project(commands, &session.settings.metric, trainer, &place, &files, opts.timeout, procs);
    }
    train_and_evaluate(trainer, &settings(worker, seed), &files, opts.timeout, &mut Journaled::new(worker, opts))
}

/// The session's settings for a training with `seed`.
pub(super) fn settings(worker: &Worker, seed: u64) -> TrainingSettings {
    let session = &worker.session.settings;
    TrainingSettings {
        profile: Some(session.profile.clone()),
        time_budget: Some(session.time_budget),
        seed: Some(seed),
    }
}

/// In place of the first seed's training, for a retry after run `earlier`'s evaluation failed: the hand-over that
/// run kept, evaluated once more ([`evaluate_handed_over`]), its files in `dir` and its output in `log`.
pub(super) fn evaluate_handover_of(
    worker: &mut Worker,
    trainer: &Trainer,
    earlier: u64,
    dir: &Path,
    log: PathBuf,
    opts: &ExperimentOptions,
) -> Result<TrainingOutcome> {
    let kept = TrainingFiles::in_folder(&worker.run_dir(earlier), SEED, PathBuf::new());
    let files = TrainingFiles::in_folder(dir, SEED, log);
    let settings = settings(worker, SEED);
    evaluate_handed_over(trainer, &settings, &kept, &files, opts.timeout, &mut Journaled::new(worker, opts))
}

/// Reruns with other seeds: their rows, their values, and the first crash (which ends them).
pub(super) struct Reruns {
    pub rows: Vec<Row>,
    pub values: Vec<f64>,
    pub crash: Option<String>,
}

/// Trains the current tree with each of `seeds`, logs in the run's folder; None when interrupted. The reruns are
/// offered to the whole pool (see [`crate::session::Session::offer`]), so that idle workers train them at the
/// same time, and this worker trains what is left itself; the first crash withdraws those not yet taken.
#[allow(clippy::too_many_arguments)]
pub(super) fn rerun(
    worker: &mut Worker,
    trainer: &Trainer,
    opts: &ExperimentOptions,
    run: u64,
    commit: &str,
    label: &str,
    seeds: &[u64],
    training_wall: &mut f64,
) -> Result<Option<Reruns>> {
    let dir = worker.run_dir(run);
    let session = worker.session.clone();
    let started = Instant::now();
    let slots = session.offer(worker.number, run, seeds, &dir, &trainer.binary());
    // Work the queue (these reruns, or another worker's) until every one of these has its result.
    while let Some((_, waiting)) = slots.iter().find(|(_, s)| !s.is_filled()) {
        match session.take_rerun(worker.number) {
            Some(task) => train_rerun(worker, trainer, task, opts),
            None => waiting.wait(Duration::from_millis(50)),
        }
    }
    *training_wall += started.elapsed().as_secs_f64();
    let mut trained = Vec::new();
    for (seed, slot) in slots {
        match slot.take().expect("filled") {
            Ok(Some((by, t))) => trained.push((seed, by, t)),
            Ok(None) => {}
            Err(e) => bail!("the confirmation rerun with seed {seed} failed: {e}"),
        }
    }
    if trained.iter().any(|(_, _, t)| t.interrupted) {
        return Ok(None);
    }
    let mut out = Reruns { rows: Vec::new(), values: Vec::new(), crash: None };
    for (k, (seed, by, t)) in trained.into_iter().enumerate() {
        let helper = if by == worker.number { String::new() } else { format!(" (trained by worker {by})") };
        let (val_bpb, memory_gb, note) = match &t.result {
            Ok(m) => (m.value, m.memory_gb, format!("seed {seed}{helper}")),
            Err(c) => (0.0, 0.0, format!("seed {seed}{helper} crashed: {}", c.reason)),
        };
        out.rows.push(Row {
            commit: commit.to_string(),
            val_bpb,
            memory_gb,
            status: Status::Rerun,
            description: format!("rerun {}/{} (seed {seed}) {label}", k + 1, seeds.len()),
            extra: Some(extra(worker, opts, run, t.wall, note)),
        });
        match t.result {
            Ok(m) => out.values.push(m.value),
            Err(c) => {
                out.crash.get_or_insert(c.reason);
            }
        }
    }
    Ok(Some(out))
}

/// Trains a confirmation rerun that a worker offered (see [`rerun`]) with the candidate's binary, and hands the
/// result back; one that crashed or was interrupted withdraws the run's other reruns not yet taken.
pub fn train_rerun(worker: &mut Worker, trainer: &Trainer, task: RerunTask, opts: &ExperimentOptions) {
    if task.owner != worker.number {
        worker.say(&format!("training seed {} of run {} for worker {}", task.seed, task.run, task.owner));
    }
    let candidate = Trainer { prebuilt: Some(task.binary.clone()), ..trainer.clone() };
    let log = task.dir.join(rerun_log(task.seed));
    let result = train(worker, &candidate, task.seed, &task.dir, log, opts);
    if !matches!(&result, Ok(t) if !t.interrupted && t.result.is_ok()) {
        worker.session.withdraw_reruns(task.run);
    }
    task.finish(result.map(|t| Some((worker.number, t))).map_err(|e| format!("{e:#}")));
}
