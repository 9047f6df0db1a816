//! The decide step: the first seed's value against the session's best (under the frontier search: against the
//! node the experiment started from) by the keep rule; where the rule asks
//! (`confirm N`), the reruns with more seeds first; before a keep, a project's checks, or the built-in's audit.

use anyhow::Result;

use std::time::Instant;

use super::train::{evaluate_handover_of, rerun, settings, train, Journaled};
use super::{seed_list, Decision, ExperimentOptions, Started};
use crate::files::{audit_log, audit_result, handover_dir, CHECKS_LOG, RUN_LOG};
use crate::project_training::{run_checks, Checked, Place};
use crate::results::Status;
use crate::rules::{mean_std, seed_blind, Rule};
use crate::state::SEED;
use crate::trainer::{DeviceChoice, Trainer};
use crate::training::{evaluate_again, Again, Crash, TrainingFiles, EVALUATION_CRASH};
use crate::tree::Search;
use crate::Worker;

/// Trains with the first seed (or, with `handover_of`, evaluates that earlier run's hand-over once more instead)
/// and, where the rule asks, more seeds; decides. None when interrupted.
pub(super) fn train_and_decide(
    worker: &mut Worker,
    trainer: &Trainer,
    opts: &ExperimentOptions,
    exp: &mut Started,
    handover_of: Option<u64>,
) -> Result<Option<Decision>> {
    let settings = &worker.session.settings;
    let training = match (&worker.session.project.commands, handover_of) {
        (None, Some(earlier)) => {
            format!("evaluating the checkpoint of run {earlier} again (profile {}", settings.profile)
        }
        (None, None) => format!("training for {} s (profile {}", settings.time_budget, settings.profile),
        (Some(c), _) => format!("training: `{}` (stopped after {} s", c.train.command, c.train.timeout.as_secs_f64()),
    };
    worker.say(&format!(
        "run {}: {training}, timeout {:.0} s); output in {}",
        exp.run,
        opts.timeout.as_secs_f64(),
        if worker.in_repository_tree() { RUN_LOG.into() } else { worker.root.join(RUN_LOG).display().to_string() }
    ));
    let run_log = worker.root.join(RUN_LOG);
    let dir = worker.run_dir(exp.run);
    let first = match handover_of {
        Some(earlier) => evaluate_handover_of(worker, trainer, earlier, &dir, run_log.clone(), opts)?,
        None => train(worker, trainer, SEED, &dir, run_log.clone(), opts)?,
    };
    exp.training_wall += first.wall;
    std::fs::copy(&run_log, dir.join(RUN_LOG))?;
    if first.interrupted {
        return Ok(None);
    }
    let measured = match first.result {
        Err(crash) => return Ok(Some(Decision::crash(crash))),
        Ok(m) => m,
    };
    // Judged against the session's best as it is now (another worker may have kept one meanwhile), or under the
    // frontier search against the node it started from.
    let (best, what) = match worker.session.settings.search {
        Search::Greedy => (worker.session.best(), "best"),
        Search::Frontier => (worker.journal.best.clone(), "node"),
    };
    let mut decision = Decision {
        status: Status::Discard,
        value: Some(measured.value),
        memory_gb: measured.memory_gb,
        reason: String::new(),
        crash: None,
        seeds: vec![SEED],
        reruns: Vec::new(),
        against: best.as_ref().map(|b| b.run),
    };
    if let Some(b) = &best {
        if !opts.decider.promising(measured.value, b.val_bpb) {
            decision.reason = opts.decider.verdict(measured.value, b.val_bpb, b.run, what).1;
            return Ok(Some(decision));
        }
    }
    let mut values = vec![measured.value];
    if let Rule::Confirm { n, .. } = opts.decider.rule {
        let seeds: Vec<u64> = (1..=n as u64).map(|k| SEED + k).collect();
        let label = format!("of: {}", opts.description);
        let Some(reruns) = rerun(worker, trainer, opts, exp.run, &exp.commit, &label, &seeds, &mut exp.training_wall)?
        else {
            return Ok(None);
        };
        decision.reruns = reruns.rows;
        if let Some(why) = reruns.crash {
            decision.reason = format!("confirmation rerun crashed: {why}");
            return Ok(Some(decision));
        }
        values.extend(reruns.values);
        decision.seeds.extend(seeds);
        if let Some(why) = seed_blind(&decision.seeds, &values) {
            (decision.status, decision.value, decision.reason) = (Status::Crash, None, format!("confirm {n}: {why}"));
            return Ok(Some(decision));
        }
    }
    let value = values.iter().sum::<f64>() / values.len() as f64;
    let spread = match mean_std(&values) {
        Some((_, sd)) => {
            format!("mean {value:.6} ± {sd:.6} over {} seeds ({}); ", values.len(), seed_list(&decision.seeds))
        }
        None => String::new(),
    };
    decision.value = Some(value);
    (decision.status, decision.reason) = match &best {
        None => (Status::Keep, spread + "first result: the baseline"),
        Some(b) => {
            let (keep, why) = opts.decider.verdict(value, b.val_bpb, b.run, what);
            (if keep { Status::Keep } else { Status::Discard }, spread + &why)
        }
    };
    if decision.status == Status::Keep {
        let checking = Instant::now();
        let checked = match worker.session.project.commands {
            Some(_) => checks(worker, trainer, opts, exp.run),
            None => audit(worker, trainer, opts, exp.run, &decision.seeds, &values),
        };
        exp.training_wall += checking.elapsed().as_secs_f64();
        match checked? {
            Checked::Passed => {}
            Checked::Interrupted => return Ok(None),
            Checked::Failed(crash) => {
                let measured = format!("{} {value:.6}, ", worker.session.settings.metric.name);
                (decision.status, decision.value) = (Status::Crash, None);
                decision.reason = format!("{}: not kept ({measured}{})", crash.reason, decision.reason);
                decision.crash = Some(crash);
            }
        }
    }
    Ok(Some(decision))
}

/// How far an audit's val_bpb may be from the first evaluation's: the same checkpoint's, in other batches
/// (equal to 6 decimals on the CPU in every audit measured). A model that leaks only where it is not audited
/// moves it further.
const AUDIT_AGREEMENT: f64 = 1e-5;
/// How the reason of a crash in the audit begins.
const AUDIT_CRASH: &str = "audit: ";

/// Whether a crash (its reason) was the evaluation's or the audit's, after the training handed over its model.
pub(super) fn crashed_in_evaluation(reason: &str) -> bool {
    reason.starts_with(EVALUATION_CRASH) || reason.starts_with(AUDIT_CRASH)
}

/// The built-in's check before a keep, on the CPU (where the evaluation's model processes run): every training
/// that counts in the value, its checkpoint evaluated once more as an audit (enough causality probes to catch a
/// leak at 1/256 of the positions with probability 99 %, which a routine evaluation has not), whose val_bpb
/// must be the first evaluation's: so a model cannot leak where it is evaluated and behave where it is audited.
fn audit(
    worker: &mut Worker,
    trainer: &Trainer,
    opts: &ExperimentOptions,
    run: u64,
    seeds: &[u64],
    values: &[f64],
) -> Result<Checked> {
    // On CUDA the evaluation runs as measured on an H200, without model processes: no audit there yet.
    if trainer.device == DeviceChoice::Cuda {
        return Ok(Checked::Passed);
    }
    anyhow::ensure!(seeds.len() == values.len(), "{} seeds for {} values", seeds.len(), values.len());
    let dir = worker.run_dir(run);
    let name = worker.session.settings.metric.name.clone();
    for (&seed, &value) in seeds.iter().zip(values) {
        let files = TrainingFiles {
            handover: dir.join(handover_dir(seed)),
            result: dir.join(audit_result(seed)),
            log: dir.join(audit_log(seed)),
        };
        std::fs::write(&files.log, "")?;
        let settings = settings(worker, seed);
        worker.say(&format!("run {run}: audit before the keep (seed {seed}); output in {}", files.log.display()));
        let audited = match evaluate_again(trainer, &settings, &files, &mut Journaled::new(worker, opts), true)? {
            Again::Evaluated(result) => result.val_bpb,
            Again::Failed(crash) => {
                return Ok(Checked::Failed(Crash { reason: format!("{AUDIT_CRASH}{}", crash.reason), ..crash }))
            }
            Again::Interrupted => return Ok(Checked::Interrupted),
        };
        if (audited - value).abs() > AUDIT_AGREEMENT {
            let reason = format!(
                "{AUDIT_CRASH}the same checkpoint (seed {seed}) measured {name} {audited:.6} in its audit, {value:.6} \
                 before: a model whose value depends on how it is evaluated"
            );
            return Ok(Checked::Failed(Crash::with_log(reason, false, &files.log)));
        }
        worker.say(&format!("run {run}: audit passed: {name} {audited:.6} again"));
    }
    Ok(Checked::Passed)
}

/// A project's checks on the tree as its first training left it, before a keep (passed where there are none).
fn checks(worker: &mut Worker, trainer: &Trainer, opts: &ExperimentOptions, run: u64) -> Result<Checked> {
    let session = worker.session.clone();
    let Some(commands) = session.project.commands.as_ref().filter(|c| !c.checks.is_empty()) else {
        return Ok(Checked::Passed);
    };
    let dir = worker.run_dir(run);
    let (tree, output) = (worker.root.clone(), dir.join(handover_dir(SEED)));
    let place = Place { tree: &tree, repository: &session.root, output: &output, seed: SEED };
    worker.say(&format!("run {run}: checks before the keep: {}", commands.checks.len()));
    run_checks(commands, trainer, &place, &dir.join(CHECKS_LOG), &mut Journaled::new(worker, opts))
}
