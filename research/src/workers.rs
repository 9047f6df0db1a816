//! `autoresearch loop --workers N`: N agents at once, each in its own git worktree, one experiment at a time
//! each, all judged against the session's one best and recorded in its one results.tsv (see [`crate::ledger`]).
//!
//! The coordinator puts right what a killed one left (each worker's experiment is finished or undone, its
//! processes or jobs stopped), runs the baseline if there is none yet (and the re-measure its rule may need:
//! the baseline's seeds for `margin`, the best's for `confirm N`, trained by all workers at once), then runs the
//! workers' loops side by side.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::agent::{research_loop, LoopOptions, LoopReport};
use crate::ledger::Ledger;
use crate::rules::NoiseEstimate;
use crate::run::{
    describe, noise_training, prepare_noise, remeasure_if_needed, run_experiment, save_noise_estimate, train_rerun,
    ExperimentOptions, SEED,
};
use crate::slurm::SlurmOptions;
use crate::trainer::Trainer;
use crate::{worker_journals, Workspace};

/// What one worker gets: its environment (its GPU, or its share of the CPU's threads) and, on the CPU, the
/// cores its trainings are pinned to.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkerSetup {
    pub env: Vec<(String, String)>,
    /// CPU affinity of its training phases (empty: not pinned).
    pub cpus: Vec<usize>,
    /// In words, for the log: "GPU 3", "2 threads (cores 0-1)".
    pub label: String,
}

/// The cores this process may run on (its CPU affinity), in order.
pub fn allowed_cpus() -> Vec<usize> {
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    if unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) } != 0 {
        return (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect();
    }
    (0..libc::CPU_SETSIZE as usize).filter(|&c| unsafe { libc::CPU_ISSET(c, &set) }).collect()
}

/// One worker per GPU in `gpus`; or, on the CPU, `n` workers that split `cores` (the core ids): each gets its
/// own cores (its trainings pinned to them) and as many threads. Fewer cores than workers: shared, round robin.
pub fn local_setups(n: usize, gpus: Option<&[String]>, cores: &[usize]) -> Result<Vec<WorkerSetup>> {
    if n == 0 {
        anyhow::bail!("--workers must be at least 1");
    }
    Ok(match gpus {
        Some(gpus) => {
            if gpus.len() < n {
                anyhow::bail!(
                    "{n} workers need {n} GPUs (one each), but {} {} available: {}",
                    gpus.len(),
                    if gpus.len() == 1 { "is" } else { "are" },
                    gpus.join(",")
                );
            }
            gpus[..n]
                .iter()
                .map(|g| WorkerSetup {
                    env: vec![("CUDA_VISIBLE_DEVICES".into(), g.clone())],
                    cpus: Vec::new(),
                    label: format!("GPU {g}"),
                })
                .collect()
        }
        None => {
            let threads = (cores.len() / n).max(1);
            (0..n)
                .map(|i| {
                    let cpus: Vec<usize> = if cores.len() >= n {
                        cores[i * threads..(i + 1) * threads].to_vec()
                    } else {
                        cores.get(i % cores.len().max(1)).copied().into_iter().collect()
                    };
                    let env = vec![("OMP_NUM_THREADS".into(), threads.to_string())];
                    let ids: Vec<String> = cpus.iter().map(usize::to_string).collect();
                    let label = format!(
                        "{threads} thread{} (core{} {})",
                        if threads == 1 { "" } else { "s" },
                        if cpus.len() == 1 { "" } else { "s" },
                        ids.join(",")
                    );
                    WorkerSetup { env, cpus, label }
                })
                .collect()
        }
    })
}

/// `n` workers whose trainings are Slurm jobs: each job has its GPU from Slurm, or on the CPU its CPUs as the
/// training's thread count.
pub fn slurm_setups(n: usize, opts: &SlurmOptions) -> Result<Vec<WorkerSetup>> {
    if n == 0 {
        anyhow::bail!("--workers must be at least 1");
    }
    let setup = match (opts.gpu, opts.cpus) {
        (true, _) => WorkerSetup { env: Vec::new(), cpus: Vec::new(), label: "Slurm jobs, 1 GPU".into() },
        (false, cpus) => {
            let threads = cpus.unwrap_or(1);
            WorkerSetup {
                env: vec![("OMP_NUM_THREADS".into(), threads.to_string())],
                cpus: Vec::new(),
                label: format!("Slurm jobs, {threads} CPU{}", if threads == 1 { "" } else { "s" }),
            }
        }
    };
    Ok(vec![setup; n])
}

/// Runs the session with one worker per setup until each stops; the reports added up.
pub fn run_workers(
    session: Workspace,
    template: &Trainer,
    opts: &LoopOptions,
    setups: &[WorkerSetup],
    say: &(dyn Fn(&str) + Sync),
) -> Result<LoopReport> {
    if let Some(dir) = session.set_aside_leftovers()? {
        say(&format!("an unrun change in the repository's tree was set aside in {}", dir.display()));
    }
    session.save_state()?;
    let ledger = Arc::new(Ledger::new(&session));
    // A killed coordinator may have left experiments under way, also with workers this start does not use.
    for (k, _) in worker_journals(&session.dir).into_iter().filter(|(k, _)| *k > setups.len()) {
        Workspace::worker(&ledger, k)?;
    }
    let mut workers = Vec::new();
    for (i, setup) in setups.iter().enumerate() {
        let ws = Workspace::worker(&ledger, i + 1)?;
        let trainer = Trainer {
            installed: Some(ws.own.join("bin").join("autoresearch-train")),
            env: setup.env.clone(),
            cpus: setup.cpus.clone(),
            ..template.clone()
        };
        if opts.run.backend == crate::slurm::Backend::Local {
            trainer.check_gpu()?;
        }
        workers.push((ws, trainer));
    }
    let mut total = LoopReport::default();
    let (first, first_trainer) = workers.first_mut().context("no workers")?;
    if ledger.state().best.is_none() {
        // Every worker starts from the best: the unchanged file is measured first, once.
        if ledger.claim(opts.max_experiments) {
            let baseline = ExperimentOptions { description: "baseline".into(), ..opts.run.clone() };
            let outcome = run_experiment(first, first_trainer, &baseline)?;
            say(&format!("worker 1: {}", describe(&outcome)));
            total.experiments += 1;
            total.kept += usize::from(outcome.status == crate::results::Status::Keep);
            total.crashes += usize::from(outcome.status == crate::results::Status::Crash);
            if ledger.state().best.is_none() {
                total.stop_reason =
                    format!("the unchanged training file gave no result (run {}): {}", outcome.run, outcome.reason);
                return Ok(total);
            }
        }
    }
    remeasure_side_by_side(&ledger, &mut workers, &opts.run)?;
    let labels: Vec<String> =
        setups.iter().enumerate().map(|(i, s)| format!("worker {}: {}", i + 1, s.label)).collect();
    say(&format!("{} workers ({})", setups.len(), labels.join("; ")));
    let interrupts = opts.run.interrupts.clone();
    let results: Vec<(usize, Result<LoopReport>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = workers
            .iter_mut()
            .enumerate()
            .map(|(i, (ws, trainer))| {
                let interrupts = interrupts.clone();
                scope.spawn(move || {
                    let k = i + 1;
                    let result = research_loop(ws, trainer, opts, &mut |line| say(&format!("worker {k}: {line}")));
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
                reasons.push(format!("worker {k}: {}", r.stop_reason));
            }
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
/// ledger until it has all its results.
fn remeasure_side_by_side(
    ledger: &Ledger,
    workers: &mut [(Workspace, Trainer)],
    opts: &ExperimentOptions,
) -> Result<()> {
    let ((first, first_trainer), others) = workers.split_first_mut().context("no workers")?;
    let remeasuring = AtomicBool::new(true);
    std::thread::scope(|scope| {
        for (ws, trainer) in others {
            let remeasuring = &remeasuring;
            scope.spawn(move || {
                while remeasuring.load(Ordering::SeqCst) {
                    match ledger.take_rerun() {
                        Some(task) => train_rerun(ws, trainer, task, opts),
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

/// `noise --workers N`: the best commit, built once, trained with seeds 43, 44, ... on N workers at once; the
/// spread stored as `noise` stores it.
pub fn measure_noise_workers(
    mut session: Workspace,
    template: &Trainer,
    k: usize,
    opts: &ExperimentOptions,
    setups: &[WorkerSetup],
) -> Result<NoiseEstimate> {
    let binary = session.dir.join("noise").join("autoresearch-train");
    let builder = Trainer { installed: Some(binary.clone()), ..template.clone() };
    let dir = prepare_noise(&mut session, &builder, k)?;
    let commit = session.git.head()?;
    let ledger = Arc::new(Ledger::new(&session));
    let mut workers = Vec::new();
    for (i, setup) in setups.iter().enumerate() {
        let ws = Workspace::worker(&ledger, i + 1)?;
        let trainer = Trainer {
            prebuilt: Some(binary.clone()),
            env: setup.env.clone(),
            cpus: setup.cpus.clone(),
            ..template.clone()
        };
        workers.push((ws, trainer));
    }
    let seeds: Mutex<Vec<u64>> = Mutex::new((1..=k as u64).rev().map(|i| SEED + i).collect());
    let results: Vec<Result<Vec<(u64, f64)>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = workers
            .iter_mut()
            .map(|(ws, trainer)| {
                let (dir, seeds) = (&dir, &seeds);
                scope.spawn(move || {
                    let mut done = Vec::new();
                    loop {
                        // Taken in a statement of its own: the lock is not held while the seed trains.
                        let next = crate::locked(seeds).pop();
                        let Some(seed) = next else { break };
                        match noise_training(ws, trainer, seed, dir, opts) {
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
    save_noise_estimate(&session, &commit, seeds, values)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_get_a_gpu_each_or_split_the_cores() {
        let gpus: Vec<String> = ["0", "1", "2"].map(String::from).to_vec();
        let cores = |n: usize| (0..n).collect::<Vec<usize>>();
        let s = local_setups(2, Some(&gpus), &cores(16)).unwrap();
        assert_eq!(s[1].env, vec![("CUDA_VISIBLE_DEVICES".to_string(), "1".to_string())]);
        assert_eq!((s[0].label.as_str(), s[0].cpus.len()), ("GPU 0", 0));
        let err = local_setups(4, Some(&gpus), &cores(16)).unwrap_err().to_string();
        assert!(err.contains("4 workers need 4 GPUs (one each), but 3 are available: 0,1,2"), "{err}");
        let s = local_setups(2, None, &cores(2)).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].env, vec![("OMP_NUM_THREADS".to_string(), "1".to_string())]);
        assert_eq!((s[0].cpus.clone(), s[1].cpus.clone()), (vec![0], vec![1]), "a core each");
        let s = local_setups(3, None, &[2, 3, 5, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19]).unwrap();
        assert_eq!(
            (s[2].label.as_str(), &s[2].cpus[..]),
            ("5 threads (cores 14,15,16,17,18)", &[14, 15, 16, 17, 18][..])
        );
        assert_eq!(local_setups(4, None, &cores(2)).unwrap()[3].label, "1 thread (core 1)");
        assert!(local_setups(0, None, &cores(2)).is_err());
        assert!(!allowed_cpus().is_empty());
    }
}
