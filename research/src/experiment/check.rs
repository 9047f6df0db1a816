//! The check step: the tree may differ from the best commit in the editable files alone (the built-in's training
//! file, or a project's `editable`), which may not hold much more than at the session's start; editable files
//! identical to an earlier run's reuse that result (or, after a crash that may not be the files' fault, are run
//! once more).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;

use super::decide::crashed_in_evaluation;
use super::record::extra;
use super::{ExperimentOptions, Outcome};
use crate::project::{growth_refusal, Snapshot};
use crate::results::{self, Row, Status};
use crate::state::SEED;
use crate::training::{HandedOver, TrainingFiles};
use crate::{now_utc, RunMeta, Worker};

/// What the current tree holds, before an experiment.
pub enum Check {
    /// Files other than the editable ones differ from the best commit (or are new), or the editable files grew
    /// past the project's limit: why.
    Refused(String),
    /// The training file equals the best commit's and there is a result already.
    Unchanged,
    /// The editable files as checked: what the experiment commits, hashes and runs.
    Ready(Snapshot),
}

pub fn check(worker: &Worker) -> Result<Check> {
    let (editable, forbidden) = worker.changes()?;
    if !forbidden.is_empty() {
        return Ok(Check::Refused(refusal_message(worker, &forbidden)));
    }
    if worker.journal.best.is_some() && editable.is_empty() {
        return Ok(Check::Unchanged);
    }
    let project = &worker.session.project;
    let now = Snapshot::take(&project.editable, &worker.git)?;
    if let Some(why) = growth_refusal(project, &worker.git, &worker.session.settings.base, &now)? {
        return Ok(Check::Refused(why));
    }
    Ok(Check::Ready(now))
}

fn refusal_message(worker: &Worker, files: &[String]) -> String {
    format!(
        "refused: only {} may change, but these differ from the best commit: {} \
         (the harness is fixed; undo those changes, e.g. `git checkout -- FILE`, and move new files away)",
        worker.session.project.editable.describe(),
        files.join(", ")
    )
}

/// What an earlier run with the identical training file means for this one.
pub(super) enum Earlier {
    /// Its result stands for this one.
    Reuse(RunMeta),
    /// It crashed in a way that may not be the file's fault, for the first time: run the file once more.
    Retry(RunMeta),
    /// So it crashed, in its evaluation (or the audit), and its training's hand-over is kept: evaluate that once
    /// more rather than train again, or a model that made its evaluation fail (when its loss looked poor, say)
    /// would earn a second training.
    EvaluateAgain(RunMeta),
}

/// The latest earlier run with this exact training file and a result, if there is one.
pub(super) fn earlier_run(worker: &Worker, hash: &str) -> Option<Earlier> {
    let same: Vec<RunMeta> = worker
        .session
        .runs()
        .into_iter()
        .filter(|m| m.file_hash == hash && matches!(m.status, Status::Keep | Status::Discard | Status::Crash))
        .collect();
    let crashes = same.iter().filter(|m| m.status == Status::Crash).count();
    let last = same.last()?.clone();
    // A crash from outside the file earns one retry: after two crashes the file is not run again.
    if last.status != Status::Crash || !last.retryable || crashes >= 2 {
        return Some(Earlier::Reuse(last));
    }
    let handover = TrainingFiles::in_folder(&worker.run_dir(last.run), SEED, PathBuf::new());
    Some(if crashed_in_evaluation(&last.reason) && HandedOver::kept(&handover).is_some() {
        Earlier::EvaluateAgain(last)
    } else {
        Earlier::Retry(last)
    })
}

/// An experiment whose training file is byte-identical to an earlier run's: that result stands, recorded again.
pub(super) fn reuse(
    worker: &mut Worker,
    opts: &ExperimentOptions,
    earlier: &RunMeta,
    hash: String,
    started: Instant,
) -> Result<Outcome> {
    let run = worker.session.take_run()?;
    let rows = results::read(&worker.session.results)?.rows;
    let earlier_row = results::experiment_row(&rows, earlier.run);
    let status = if earlier.status == Status::Crash { Status::Crash } else { Status::Discard };
    let reason = format!(
        "identical to run {} ({}, {} {}): its result reused, not run again",
        earlier.run,
        earlier.status,
        worker.session.settings.metric.name,
        earlier.val_bpb.map_or("-".into(), |v| format!("{v:.6}"))
    );
    let row = Row {
        commit: earlier.commit.clone().unwrap_or_default(),
        val_bpb: earlier_row.as_ref().map_or(0.0, |r| r.val_bpb),
        memory_gb: earlier_row.as_ref().map_or(0.0, |r| r.memory_gb),
        status,
        description: opts.description.clone(),
        extra: Some(extra(worker, opts, run, started.elapsed().as_secs_f64(), reason.clone())),
    };
    results::append(&worker.session.results, &[row])?;
    worker.set_aside(run, None)?;
    worker.session.write_meta(&RunMeta {
        run,
        description: opts.description.clone(),
        commit: earlier.commit.clone(),
        status: Status::Reused,
        val_bpb: earlier.val_bpb,
        reason: reason.clone(),
        file_hash: hash,
        started: now_utc(),
        ..Default::default()
    })?;
    worker.save_journal()?;
    let seconds = started.elapsed().as_secs_f64();
    Ok(Outcome {
        run,
        status: Status::Reused,
        val_bpb: earlier.val_bpb,
        reason,
        log_tail: None,
        seconds,
        harness_overhead: seconds,
    })
}
