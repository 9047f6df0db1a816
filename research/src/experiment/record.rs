//! The record step: the rows first (once they are there, recovery can always finish the rest), then the keep
//! (the session's best and branch move) or the reset (the change set aside in the run's folder).

use std::path::Path;

use anyhow::{bail, Context, Result};

use super::decide::crashed_in_evaluation;
use super::{Decision, ExperimentOptions, Outcome, Started};
use crate::files::{handover_dir, is_handover_dir};
use crate::results::{self, Extra, Row, Status};
use crate::state::{Best, SEED};
use crate::training::remove_handover;
use crate::tree::Search;
use crate::{RunMeta, Worker};

/// Our columns of a row of `run`, which started from the worker's reference commit (the kept run it names).
pub(super) fn extra(worker: &Worker, opts: &ExperimentOptions, run: u64, seconds: f64, reason: String) -> Extra {
    Extra {
        profile: worker.session.settings.profile.clone(),
        budget: worker.session.settings.time_budget,
        seconds,
        run,
        rule: opts.decider.label.clone(),
        reason,
        worker: worker.label(),
        parent: worker.journal.best.as_ref().map(|b| b.run),
    }
}

/// Writes the experiment's rows (first: once they are there, recovery can always finish the rest), then keeps
/// its commit as the best (under the frontier search: a node) or sets the change aside. The worker holds the
/// session's state meanwhile, and under the greedy search a keep judged against a best that another worker has
/// since replaced is judged again against the new one.
pub(super) fn record(
    worker: &mut Worker,
    opts: &ExperimentOptions,
    exp: Started,
    mut decision: Decision,
) -> Result<Outcome> {
    let Started { run, commit, mut meta, started, training_wall, build_wall, build_waited } = exp;
    let seconds = started.elapsed().as_secs_f64();
    let session = worker.session.clone();
    let mut shared = session.state();
    let greedy = session.settings.search == Search::Greedy;
    if let (true, Some(now), Some(value), Status::Keep) = (greedy, shared.best.clone(), decision.value, decision.status)
    {
        if decision.against != Some(now.run) {
            let (keep, why) = opts.decider.verdict(value, now.val_bpb, now.run, "best");
            if !keep {
                decision.status = Status::Discard;
                decision.reason = format!("{}; meanwhile run {} was kept: {why}", decision.reason, now.run);
            }
        }
    }
    let mut rows = vec![Row {
        commit: commit.clone(),
        val_bpb: decision.value.unwrap_or(0.0),
        memory_gb: decision.memory_gb,
        status: decision.status,
        description: opts.description.clone(),
        extra: Some(extra(worker, opts, run, seconds, decision.reason.clone())),
    }];
    rows.extend(decision.reruns);
    worker.journal.in_progress.as_mut().unwrap().seeds = decision.seeds.clone();
    worker.save_journal()?;
    results::append(&worker.session.results, &rows)?;
    match (decision.status, decision.value) {
        (Status::Keep, Some(val_bpb)) => {
            let best = Best { commit: commit.clone(), val_bpb, run, seeds: decision.seeds };
            let parent = worker.journal.best.as_ref().map(|b| b.run);
            let best = session.keep(&mut shared, best, parent, &format!("keep run {run}: {}", opts.description))?;
            worker.journal.best = Some(best);
            drop(shared);
        }
        _ => {
            drop(shared);
            worker.set_aside(run, Some(&commit))?
        }
    }
    session.done(worker.number);
    // The checkpoint of a crashed evaluation or audit stays, for `autoresearch eval [--audit]` and for the identical
    // file's retry (which evaluates it again).
    let crashed_in_evaluation = decision.crash.as_ref().is_some_and(|c| crashed_in_evaluation(&c.reason));
    prune_checkpoints(&worker.run_dir(run), decision.status == Status::Keep || crashed_in_evaluation)?;
    let overhead = seconds - training_wall - build_waited;
    meta.status = decision.status;
    meta.val_bpb = decision.value;
    meta.reason = decision.reason.clone();
    meta.retryable = decision.crash.as_ref().is_some_and(|c| c.retryable);
    meta.seconds = seconds;
    meta.harness_overhead_seconds = Some(overhead);
    meta.build_seconds = Some(build_wall);
    meta.build_wait_seconds = Some(build_waited);
    worker.session.write_meta(&meta)?;
    worker.journal.in_progress = None;
    worker.save_journal()?;
    Ok(Outcome {
        run,
        status: decision.status,
        val_bpb: decision.value,
        reason: decision.reason,
        log_tail: decision.crash.map(|c| c.log_tail),
        seconds,
        harness_overhead: overhead,
    })
}

/// An interrupted experiment: its change set aside, no row, the tree back at the best commit.
pub(super) fn interrupted(worker: &mut Worker, mut meta: RunMeta) -> Result<Outcome> {
    worker.session.done(worker.number);
    let commit = worker.journal.in_progress.as_ref().and_then(|ip| ip.commit.clone());
    worker.set_aside(meta.run, commit.as_deref())?;
    meta.status = Status::Interrupted;
    meta.reason = "interrupted (Ctrl-C or SIGTERM); the change is in change.diff".into();
    worker.session.write_meta(&meta)?;
    worker.journal.in_progress = None;
    worker.save_journal()?;
    bail!(
        "run {} interrupted: the tree is back at the best commit, the change saved in {}",
        meta.run,
        worker.run_dir(meta.run).display()
    )
}

/// Checkpoints take room (about 200 MB at the h100 profile): a run keeps its first seed's when it was kept or
/// its evaluation or audit crashed (for `autoresearch eval` and the identical file's retry); the others go, with
/// the harness's records of them.
fn prune_checkpoints(dir: &Path, keep_first: bool) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Ok(()) };
    for entry in entries {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if !is_handover_dir(name) || !path.is_dir() {
            continue;
        }
        if keep_first && name == handover_dir(SEED) {
            keep_only_harness_files(&path)?;
        } else {
            remove_handover(&path)?;
        }
    }
    Ok(())
}

/// What fixed code writes to a hand-over folder: the rest is the training's own, and goes. A later training
/// cannot read a kept folder's files, but it can list their names and learn their sizes (a red team carried a
/// model's weights to the next experiments in the names of empty files).
const HARNESS_FILES: [&str; 4] = [
    autoresearch_harness::handover::CHECKPOINT,
    autoresearch_harness::handover::TRAINING_STATS,
    autoresearch_harness::progress::PROGRESS_FILE,
    autoresearch_harness::fit::REPORT_FILE,
];

fn keep_only_harness_files(dir: &Path) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry?;
        let (kind, path) = (entry.file_type()?, entry.path());
        let ours = entry.file_name().to_str().is_some_and(|n| HARNESS_FILES.contains(&n));
        if ours && kind.is_file() {
            continue;
        }
        let removed = if kind.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
        removed.with_context(|| format!("removing {}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_checkpoint_folder_holds_only_the_harness_files() {
        let run = tempfile::tempdir().unwrap();
        let (kept, other) = (run.path().join(handover_dir(SEED)), run.path().join(handover_dir(SEED + 1)));
        for dir in [&kept, &other] {
            std::fs::create_dir_all(dir.join("tmp/deeper")).unwrap();
            for name in HARNESS_FILES {
                std::fs::write(dir.join(name), name).unwrap();
            }
            for junk in ["3f80bf00", "weights.bin", ".hidden"] {
                std::fs::write(dir.join(junk), "").unwrap();
            }
            std::os::unix::fs::symlink(dir.join(HARNESS_FILES[0]), dir.join("link")).unwrap();
        }
        prune_checkpoints(run.path(), true).unwrap();
        assert!(!other.exists(), "another seed's folder goes");
        let mut left: Vec<String> =
            std::fs::read_dir(&kept).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        left.sort();
        let mut expected: Vec<String> = HARNESS_FILES.iter().map(|n| n.to_string()).collect();
        expected.sort();
        assert_eq!(left, expected);
        assert_eq!(std::fs::read_to_string(kept.join(HARNESS_FILES[0])).unwrap(), HARNESS_FILES[0]);
    }
}
