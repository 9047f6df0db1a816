//! `autoresearch loop`: a pool of workers, one by default. One worker works in the repository's own tree (under
//! the frontier search, in a worktree); a pool of N > 1 gives each its own git worktree. Each worker makes one
//! experiment at a time, judged against the session's one best (under the frontier search, against the node it
//! started from) and recorded in its one results.tsv (see [`crate::session`]).
//!
//! The pool first puts right what a killed one left (each worker's experiment is finished or undone, its
//! processes or jobs stopped), runs the baseline if there is none yet (and the re-measure its rule may need:
//! the baseline's seeds for `margin`, the best's for `confirm N`, trained by all workers at once for the built-in
//! training; a project's by the worker whose tree holds the commit), then runs the workers' loops side by side.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::agent::{worker_loop, LoopOptions, LoopReport};
use crate::backend::WorkerSetup;
use crate::experiment::{describe, remeasure_if_needed, run_experiment, train_rerun, ExperimentOptions};
use crate::files::WORKER_BIN;
use crate::results::Status;
use crate::session::{journals, Session};
use crate::trainer::Trainer;
use crate::tree::Search;
use crate::worker::heading;
use crate::Worker;

/// The pool's workers with their trainers: worker 0 in the repository's tree for one setup (unless
/// `worktree_for_one`), else one in a worktree per setup (each with a binary of its own), every one put right
/// first, and before them the repository tree's worker and the worktrees of a killed pool that this start does
/// not use.
pub fn workers(
    session: &Arc<Session>,
    template: &Trainer,
    setups: &[WorkerSetup],
    worktree_for_one: bool,
) -> Result<Vec<(Worker, Trainer)>> {
    let with_setup =
        |trainer: Trainer, setup: &WorkerSetup| Trainer { env: setup.env.clone(), cpus: setup.cpus.clone(), ..trainer };
    let here = Worker::in_repository(session)?;
    let alone = setups.len() == 1 && !worktree_for_one;
    let in_worktrees = if alone { 0 } else { setups.len() };
    for (k, _) in journals(&session.dir).into_iter().filter(|(k, _)| *k > in_worktrees) {
        Worker::in_worktree(session, k)?;
    }
    if let ([setup], true) = (setups, alone) {
        return Ok(vec![(here, with_setup(template.clone(), setup))]);
    }
    if let Some(dir) = here.set_aside_leftovers()? {
        here.say(&format!("an unrun change in the repository's tree was set aside in {}", dir.display()));
    }
    setups
        .iter()
        .enumerate()
        .map(|(i, setup)| {
            let worker = Worker::in_worktree(session, i + 1)?;
            let installed = Some(worker.own.join(WORKER_BIN).join("autoresearch-train"));
            Ok((worker, with_setup(Trainer { installed, ..template.clone() }, setup)))
        })
        .collect()
}

/// Runs the session with one worker per setup until each stops; the reports added up.
pub fn run_pool(
    session: &Arc<Session>,
    template: &Trainer,
    opts: &LoopOptions,
    setups: &[WorkerSetup],
    say: &(dyn Fn(&str) + Sync),
) -> Result<LoopReport> {
    // Under the frontier search even one worker has a worktree: its experiments start from any node, and the
    // repository's tree stays on the best (the session branch).
    let mut workers = workers(session, template, setups, session.settings.search == Search::Frontier)?;
    // What the built-in training file needs of a GPU; a project's commands are its own.
    if opts.experiment.backend.is_local() && session.project.commands.is_none() {
        for (_, trainer) in &workers {
            trainer.check_gpu()?;
        }
    }
    let mut total = LoopReport::default();
    let (first, first_trainer) = workers.first_mut().context("no workers")?;
    if let Some(dir) = first.set_aside_leftovers()? {
        first.say(&format!("an unrun change was set aside in {}", dir.display()));
    }
    if session.best().is_none() {
        // Every worker starts from the best: the unchanged file is measured first, once.
        if session.claim(opts.max_experiments) {
            let baseline = ExperimentOptions { description: "baseline".into(), ..opts.experiment.clone() };
            let outcome = run_experiment(first, first_trainer, &baseline)?;
            say(&heading(first.number, &describe(&outcome, &session.settings.metric.name)));
            total.experiments += 1;
            total.kept += usize::from(outcome.status == Status::Keep);
            total.crashes += usize::from(outcome.status == Status::Crash);
            if session.best().is_none() {
                total.stop_reason =
                    format!("the unchanged training file gave no result (run {}): {}", outcome.run, outcome.reason);
                return Ok(total);
            }
        }
    }
    remeasure_side_by_side(session, &mut workers, &opts.experiment)?;
    if setups.len() > 1 {
        let labels: Vec<String> =
            setups.iter().enumerate().map(|(i, s)| format!("worker {}: {}", i + 1, s.label)).collect();
        say(&format!("{} workers ({})", setups.len(), labels.join("; ")));
    }
    let interrupts = opts.experiment.interrupts.clone();
    let results: Vec<(usize, Result<LoopReport>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = workers
            .iter_mut()
            .map(|(worker, trainer)| {
                let interrupts = interrupts.clone();
                scope.spawn(move || {
                    let k = worker.number;
                    let result = worker_loop(worker, trainer, opts, &mut |line| say(&heading(k, line)));
                    session.leave_node(k);
                    if result.is_err() {
                        // The others stop after their current experiment, as after a first Ctrl-C.
                        interrupts.0.fetch_add(1, Ordering::SeqCst);
                    }
                    (k, result)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("a worker thread panicked")).collect()
    });
    let mut first_error = None;
    let mut reasons = Vec::new();
    for (k, result) in results {
        match result {
            Ok(r) => {
                total.experiments += r.experiments;
                total.kept += r.kept;
                total.crashes += r.crashes;
                total.refused += r.refused;
                reasons.push(heading(k, &r.stop_reason));
            }
            Err(e) if k == 0 => first_error = Some(e),
            Err(e) => {
                reasons.push(format!("worker {k}: error"));
                first_error.get_or_insert(e.context(format!("worker {k}")));
            }
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    total.stop_reason = reasons.join("; ");
    Ok(total)
}

/// The re-measure the rule may need before the workers start (the baseline's seeds for `margin`, the best's for
/// `confirm N`), its seeds trained by every worker at once: the first offers them, the others take them from the
/// session until it has all its results.
fn remeasure_side_by_side(
    session: &Session,
    workers: &mut [(Worker, Trainer)],
    opts: &ExperimentOptions,
) -> Result<()> {
    let ((first, first_trainer), others) = workers.split_first_mut().context("no workers")?;
    let remeasuring = AtomicBool::new(true);
    std::thread::scope(|scope| {
        for (worker, trainer) in others {
            let remeasuring = &remeasuring;
            scope.spawn(move || {
                while remeasuring.load(Ordering::SeqCst) {
                    match session.take_rerun(worker.number) {
                        Some(task) => train_rerun(worker, trainer, task, opts),
                        None => std::thread::sleep(Duration::from_millis(50)),
                    }
                }
            });
        }
        let result = remeasure_if_needed(first, first_trainer, opts);
        remeasuring.store(false, Ordering::SeqCst);
        result.map(drop)
    })
}
