//! `autoresearch noise`: the best commit trained with seeds 43, 44, ... by a pool of workers (of one by default),
//! and the spread of val_bpb stored for the `margin` rule.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Result};

use crate::backend::WorkerSetup;
use crate::experiment::{build, train, ExperimentOptions};
use crate::files::{handover_dir, seed_log, NOISE_DIR};
use crate::rules::NoiseEstimate;
use crate::session::Session;
use crate::state::SEED;
use crate::trainer::Trainer;
use crate::training::{remove_handover, tail, TAIL_LINES};
use crate::Worker;

/// Trains the best commit `k` times with seeds 43, 44, ... on a pool of one worker per setup (built once, into
/// the session's noise folder) and stores the spread of val_bpb.
pub fn measure_noise(
    session: &Arc<Session>,
    template: &Trainer,
    k: usize,
    opts: &ExperimentOptions,
    setups: &[WorkerSetup],
) -> Result<NoiseEstimate> {
    let binary = session.dir.join(NOISE_DIR).join("autoresearch-train");
    let mut here = Worker::in_repository(session)?;
    let dir = prepare_noise(&mut here, &Trainer { installed: Some(binary.clone()), ..template.clone() }, k)?;
    let commit = here.git.head()?;
    drop(here);
    let template = Trainer { prebuilt: Some(binary), ..template.clone() };
    let mut workers = crate::pool::workers(session, &template, setups, false)?;
    // A worker's worktree is where its last experiment started (an older best, or another node of the frontier):
    // a project's training runs in the tree, so each is put on the commit measured.
    for (worker, _) in workers.iter_mut().filter(|(w, _)| !w.in_repository_tree()) {
        worker.git.reset_hard(&commit)?;
        worker.journal.best = session.best();
        worker.save_journal()?;
    }
    let seeds: Mutex<Vec<u64>> = Mutex::new((1..=k as u64).rev().map(|i| SEED + i).collect());
    let results: Vec<Result<Vec<(u64, f64)>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = workers
            .iter_mut()
            .map(|(worker, trainer)| {
                let (dir, seeds) = (&dir, &seeds);
                scope.spawn(move || {
                    let mut done = Vec::new();
                    loop {
                        // Taken in a statement of its own: the lock is not held while the seed trains.
                        let next = crate::locked(seeds).pop();
                        let Some(seed) = next else { break };
                        match noise_training(worker, trainer, seed, dir, opts) {
                            Ok(value) => done.push((seed, value)),
                            Err(e) => {
                                // The others stop after their current training.
                                crate::locked(seeds).clear();
                                return Err(e);
                            }
                        }
                    }
                    Ok(done)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("a worker thread panicked")).collect()
    });
    let mut all = Vec::new();
    for r in results {
        all.extend(r?);
    }
    all.sort_by_key(|(seed, _)| *seed);
    let (seeds, values) = all.into_iter().unzip();
    save_noise_estimate(session, &commit, seeds, values)
}

/// What `noise` needs before it trains `k` times: the tree at the best commit, built. The folder its trainings
/// keep their logs in.
fn prepare_noise(worker: &mut Worker, trainer: &Trainer, k: usize) -> Result<PathBuf> {
    if k < 2 {
        bail!("--runs {k}: a spread needs at least 2 runs");
    }
    if worker.changes()? != (Vec::new(), Vec::new()) {
        bail!("the working tree differs from the best commit: run or undo the change first");
    }
    if let Err(compiler) = build(worker, trainer)?.output {
        bail!("the best commit does not build:\n{}", tail(&compiler, TAIL_LINES));
    }
    let settings = &worker.session.settings;
    let dir = worker.session.dir.join(NOISE_DIR).join(format!("{}-{}", settings.profile, settings.time_budget));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// One of `noise`'s trainings, with `seed`: its val_bpb.
fn noise_training(
    worker: &mut Worker,
    trainer: &Trainer,
    seed: u64,
    dir: &Path,
    opts: &ExperimentOptions,
) -> Result<f64> {
    let log = dir.join(seed_log(seed));
    let t = train(worker, trainer, seed, dir, log.clone(), opts)?;
    remove_handover(&dir.join(handover_dir(seed)))?;
    if t.interrupted {
        bail!("interrupted");
    }
    match t.result {
        Ok(m) => {
            worker.say(&format!("noise: seed {seed}: {} {:.6}", worker.session.settings.metric.name, m.value));
            Ok(m.value)
        }
        Err(c) => bail!("the training with seed {seed} crashed ({}); see {}", c.reason, log.display()),
    }
}

/// Stores the spread of `values` (of `seeds`, at `commit`) for the session's profile and budget.
fn save_noise_estimate(session: &Session, commit: &str, seeds: Vec<u64>, values: Vec<f64>) -> Result<NoiseEstimate> {
    let estimate = NoiseEstimate::new(&session.settings.profile, session.settings.time_budget, commit, seeds, values)?;
    crate::rules::save_noise(&session.dir, &estimate)?;
    Ok(estimate)
}
