//! `autoresearch eval`: a saved checkpoint evaluated (or audited) again, without training.

use anyhow::{bail, Context, Result};
use autoresearch_harness::handover::{EvalResult, CHECKPOINT};

use super::train::{settings, Journaled};
use super::{build, ExperimentOptions};
use crate::files::{handover_dir, EVAL_LOG, EVAL_RESULT, RUN_TRAINING_FILE};
use crate::project::SNAPSHOT_DIR;
use crate::state::SEED;
use crate::trainer::Trainer;
use crate::training::{evaluate_again, tail, Again, TrainingFiles, TAIL_LINES};
use crate::{Worker, TRAINING_FILE};

/// Evaluates the checkpoint of run `run` (else of the latest run that has one) again, without training: for
/// an evaluation that crashed, say; with `audit`, as before a keep. The training file is built as that run had
/// it (the tree's own is put aside meanwhile and comes back after). Neither the session nor results.tsv changes;
/// the result and log go to the run's folder.
pub fn evaluate_run(
    worker: &mut Worker,
    trainer: &Trainer,
    run: Option<u64>,
    opts: &ExperimentOptions,
    audit: bool,
) -> Result<(u64, EvalResult)> {
    if worker.session.project.commands.is_some() {
        bail!(
            "`eval` evaluates a checkpoint of the built-in training again; a project's runs keep none (its \
             evaluation command ran with each of them)"
        );
    }
    let has_checkpoint =
        |worker: &Worker, run: u64| worker.run_dir(run).join(handover_dir(SEED)).join(CHECKPOINT).is_file();
    let run = match run {
        Some(run) => run,
        None => match worker.session.runs().iter().rev().find(|m| has_checkpoint(worker, m.run)) {
            Some(m) => m.run,
            None => bail!("no run has a checkpoint (they are kept for kept runs and crashed evaluations)"),
        },
    };
    let dir = worker.run_dir(run);
    // Runs from before projects kept the training file beside their other files.
    let as_run = std::fs::read(dir.join(SNAPSHOT_DIR).join(TRAINING_FILE))
        .or_else(|_| std::fs::read(dir.join(RUN_TRAINING_FILE)))
        .with_context(|| format!("no run {run} in {}", dir.display()))?;
    let current = std::fs::read(worker.root.join(TRAINING_FILE)).with_context(|| format!("reading {TRAINING_FILE}"))?;
    let swap = as_run != current;
    if swap {
        worker.stash()?;
        autoresearch_harness::fsutil::write_atomic(&worker.root.join(TRAINING_FILE), &as_run)?;
    }
    let result = (|| {
        if let Err(compiler) = build(worker, trainer)?.output {
            bail!("run {run}'s training file does not build any more:\n{}", tail(&compiler, TAIL_LINES));
        }
        let settings = settings(worker, SEED);
        let files = TrainingFiles {
            handover: dir.join(handover_dir(SEED)),
            result: dir.join(EVAL_RESULT),
            log: dir.join(EVAL_LOG),
        };
        match evaluate_again(trainer, &settings, &files, &mut Journaled::new(worker, opts), audit)? {
            Again::Evaluated(result) => Ok(result),
            Again::Failed(crash) => bail!("the evaluation failed: {}\n{}", crash.reason, crash.log_tail),
            Again::Interrupted => bail!("the evaluation was interrupted"),
        }
    })();
    if swap {
        worker.git.exec(&["checkout", worker.reference_commit(), "--", TRAINING_FILE])?;
        worker.unstash()?;
    }
    result.map(|r| (run, r))
}
