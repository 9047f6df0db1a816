//! One experiment, start to finish, in steps, each in a file of its own: [`check`] (only the training file
//! changed; an identical file reuses its result) → [`build`] → [`train`] (one training per seed, on the backend
//! [`ExperimentOptions::backend`]) → [`decide`] (the keep rule against the best, with the reruns it asks for) → [`record`]
//! (the rows, then keep or reset). [`remeasure`] is the re-measure of the best a rule may need first;
//! [`reevaluate`] evaluates a saved checkpoint again (`autoresearch eval`).
//!
//! The experiment's number and commit go into the worker's journal before anything that recovery would have
//! to finish or undo.

mod build;
mod check;
mod decide;
mod record;
mod reevaluate;
mod remeasure;
mod train;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::backend::Backend;
use crate::files::{BUILD_LOG, RUN_LOG};
use crate::project::Snapshot;
use crate::results::{Row, Status};
use crate::rules::Decider;
use crate::state::InProgress;
use crate::trainer::Trainer;
use crate::training::{tail, Crash, TAIL_LINES};
use crate::{now_utc, Interrupts, RunMeta, Worker};

pub use build::build;
pub use check::{check, Check};
pub use reevaluate::evaluate_run;
pub use remeasure::remeasure_if_needed;
pub use train::{train, train_rerun};

#[derive(Clone)]
pub struct ExperimentOptions {
    pub description: String,
    pub decider: Decider,
    /// Hard limit per training.
    pub timeout: Duration,
    /// Run even if an earlier run had the identical training file.
    pub force: bool,
    pub interrupts: Interrupts,
    /// Interrupt requests after which a training is killed (`run`: 1; `loop`: 2, since the first only asks it
    /// to stop after the current experiment).
    pub abort_at: usize,
    /// Where trainings run.
    pub backend: Arc<dyn Backend>,
}

/// The default hard timeout: twice the budget plus two minutes (12 minutes at 300 s; the original's program.md
/// says 10), and at least the phases' own limits (the budget, the start-up allowance and the evaluation's limit)
/// plus a minute, so that on a loaded machine an evaluation within its limit is not cut short by this one (at
/// small, 20 s: 270 s rather than 160 s).
pub fn default_timeout(budget: f64, profile: &str) -> Duration {
    use autoresearch_harness::handover::{allowance, evaluation_limit};
    let phases = budget + allowance(profile) + evaluation_limit(profile) + 60.0;
    Duration::from_secs_f64((2.0 * budget + 120.0).max(phases))
}

#[derive(Debug)]
pub struct Outcome {
    pub run: u64,
    /// keep, discard, crash or reused
    pub status: Status,
    pub val_bpb: Option<f64>,
    pub reason: String,
    /// The end of the log (or of the compiler's output) of a crash.
    pub log_tail: Option<String>,
    pub seconds: f64,
    /// Time outside the training processes: git, the build check, bookkeeping.
    pub harness_overhead: f64,
}

/// An experiment under way: its number, commit and folder's record.
pub(crate) struct Started {
    run: u64,
    commit: String,
    meta: RunMeta,
    started: Instant,
    /// Seconds spent in training processes.
    training_wall: f64,
    /// Seconds spent building.
    build_wall: f64,
    /// Seconds spent waiting for other builds first (see [`crate::trainer::Built::waited`]).
    build_waited: f64,
}

impl Started {
    /// An experiment that has spent no time yet in a build or a training.
    fn new(run: u64, commit: String, meta: RunMeta, started: Instant) -> Started {
        Started { run, commit, meta, started, training_wall: 0.0, build_wall: 0.0, build_waited: 0.0 }
    }
}

/// What the experiment came to, before it is recorded.
pub(crate) struct Decision {
    status: Status,
    /// The value that decided (a mean under `confirm N`); None for a crash.
    value: Option<f64>,
    memory_gb: f64,
    reason: String,
    crash: Option<Crash>,
    /// The seeds `value` averages.
    seeds: Vec<u64>,
    reruns: Vec<Row>,
    /// The run of the best it was judged against.
    against: Option<u64>,
}

impl Decision {
    /// What failed before there was a value, with the reruns it trained; no crash of the experiment's own file.
    fn failed(reason: String, reruns: Vec<Row>) -> Decision {
        Decision {
            status: Status::Crash,
            value: None,
            memory_gb: 0.0,
            reason,
            crash: None,
            seeds: Vec::new(),
            reruns,
            against: None,
        }
    }

    fn crash(crash: Crash) -> Decision {
        Decision {
            status: Status::Crash,
            value: None,
            memory_gb: 0.0,
            reason: crash.reason.clone(),
            crash: Some(crash),
            seeds: Vec::new(),
            reruns: Vec::new(),
            against: None,
        }
    }
}

/// Runs one experiment on the worker's tree as it is, step by step.
pub fn run_experiment(worker: &mut Worker, trainer: &Trainer, opts: &ExperimentOptions) -> Result<Outcome> {
    let started = Instant::now();
    // Check.
    let snapshot = match check(worker)? {
        Check::Refused(why) => bail!(why),
        Check::Unchanged => {
            bail!("{} are the same as in the best commit: nothing to run", worker.session.project.editable.describe())
        }
        Check::Ready(snapshot) => snapshot,
    };
    let hash = snapshot.hash();
    // A retry names the run it retries; after a crash in its evaluation, its hand-over is evaluated again.
    let (retry_of, handover_of) = match if opts.force { None } else { check::earlier_run(worker, &hash) } {
        Some(check::Earlier::Reuse(earlier)) => {
            // Its row names the rule as it stands (with the spread measured so far).
            let settings = &worker.session.settings;
            let decider = opts.decider.resolved(&worker.session.dir, &settings.profile, settings.time_budget)?;
            let opts = &ExperimentOptions { decider, ..opts.clone() };
            return check::reuse(worker, opts, &earlier, hash, started);
        }
        Some(check::Earlier::Retry(earlier)) => {
            worker.say(&format!(
                "run {} crashed with this exact file ({}), which may not be the file's fault: trying it once more",
                earlier.run, earlier.reason
            ));
            (Some(earlier), None)
        }
        Some(check::Earlier::EvaluateAgain(earlier)) => {
            worker.say(&format!(
                "run {} crashed with this exact file ({}), which may not be the file's fault: evaluating the \
                 checkpoint its training handed over once more, without training again",
                earlier.run, earlier.reason
            ));
            let run = earlier.run;
            (Some(earlier), Some(run))
        }
        None => (None, None),
    };
    // A re-measure is a run of its own: this one's time starts after it.
    let started = if remeasure_if_needed(worker, trainer, opts)? { Instant::now() } else { started };
    let settings = &worker.session.settings;
    let decider = opts.decider.resolved(&worker.session.dir, &settings.profile, settings.time_budget)?;
    if decider.awaiting_noise && worker.session.best().is_some() {
        bail!(
            "the margin rule has no seed-to-seed spread to compare with: run `autoresearch noise`, or give --min-delta"
        );
    }
    let opts = &ExperimentOptions { decider, ..opts.clone() };
    let mut exp = begin(worker, opts, &snapshot, hash, started)?;
    // Build.
    let building = Instant::now();
    let built = build(worker, trainer)?;
    exp.build_waited = built.waited.as_secs_f64();
    exp.build_wall = building.elapsed().as_secs_f64() - exp.build_waited;
    let mut decision = match built.output {
        Err(compiler) => {
            std::fs::write(worker.run_dir(exp.run).join(BUILD_LOG), &compiler)?;
            std::fs::write(worker.root.join(RUN_LOG), &compiler)?;
            Decision::crash(Crash {
                reason: if worker.session.project.commands.is_some() { "setup failed" } else { "compile error" }.into(),
                retryable: false,
                log_tail: tail(&compiler, TAIL_LINES),
            })
        }
        Ok(output) => {
            std::fs::write(worker.run_dir(exp.run).join(BUILD_LOG), output)?;
            // Train, decide.
            match decide::train_and_decide(worker, trainer, opts, &mut exp, handover_of)? {
                Some(decision) => decision,
                None => return record::interrupted(worker, exp.meta),
            }
        }
    };
    if let Some(earlier) = retry_of {
        let how = if handover_of.is_some() { "its checkpoint evaluated again, not trained: " } else { "" };
        decision.reason =
            format!("retry of run {} (crashed: {}): {how}{}", earlier.run, earlier.reason, decision.reason);
    }
    // Record.
    record::record(worker, opts, exp, decision)
}

/// Takes the next run number, records it in the journal and commits the editable files.
fn begin(
    worker: &mut Worker,
    opts: &ExperimentOptions,
    snapshot: &Snapshot,
    hash: String,
    started: Instant,
) -> Result<Started> {
    let run = worker.session.take_run()?;
    worker.session.announce(worker.number, run, &opts.description);
    let mut meta = RunMeta {
        run,
        description: opts.description.clone(),
        status: Status::Running,
        file_hash: hash,
        started: now_utc(),
        ..Default::default()
    };
    worker.session.write_meta(&meta)?;
    snapshot.save(&worker.run_dir(run))?;
    worker.journal.in_progress = Some(InProgress { run, commit: None, seeds: Vec::new() });
    worker.save_journal()?;
    let (changed, _) = worker.changes()?;
    let commit =
        if !changed.is_empty() { worker.git.commit_files(&changed, &opts.description)? } else { worker.git.head()? };
    meta.commit = Some(commit.clone());
    worker.journal.in_progress.as_mut().unwrap().commit = Some(commit.clone());
    worker.save_journal()?;
    worker.session.write_meta(&meta)?;
    Ok(Started::new(run, commit, meta, started))
}

fn seed_list(seeds: &[u64]) -> String {
    seeds.iter().map(u64::to_string).collect::<Vec<_>>().join(", ")
}

/// One line for the terminal (and the agent) about an experiment's outcome; `metric` names its value.
pub fn describe(o: &Outcome, metric: &str) -> String {
    let value = o.val_bpb.map_or("-".to_string(), |v| format!("{v:.6}"));
    format!(
        "run {}: {} ({metric} {value}): {} [{:.1} s, harness overhead {:.1} s]",
        o.run, o.status, o.reason, o.seconds, o.harness_overhead
    )
}

#[cfg(test)]
mod tests {
    use super::default_timeout;

    #[test]
    fn the_default_timeout_covers_the_phases_own_limits() {
        // small at 20 s: the budget, the allowance (10 s), the evaluation's limit (180 s) and a minute, over
        // twice the budget plus two minutes (160 s).
        assert_eq!(default_timeout(20.0, "small").as_secs_f64(), 270.0);
        // h100 at 300 s: twice the budget plus two minutes, over 300 + 40 + 120 + 60.
        assert_eq!(default_timeout(300.0, "h100").as_secs_f64(), 720.0);
    }
}
