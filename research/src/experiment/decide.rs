//! The decide step: the first seed's value against the session's best by the keep rule; where the rule asks
//! (`confirm N`), the reruns with more seeds first.

use anyhow::Result;

use super::train::{rerun, train};
use super::{seed_list, Decision, ExperimentOptions, Started};
use crate::files::RUN_LOG;
use crate::results::Status;
use crate::rules::{mean_std, seed_blind, Rule};
use crate::state::SEED;
use crate::trainer::Trainer;
use crate::Worker;

/// Trains with the first seed and, where the rule asks, more; decides. None when interrupted.
pub(super) fn train_and_decide(
    worker: &mut Worker,
    trainer: &Trainer,
    opts: &ExperimentOptions,
    exp: &mut Started,
) -> Result<Option<Decision>> {
    worker.say(&format!(
        "run {}: training for {} s (profile {}, timeout {:.0} s); output in {}",
        exp.run,
        worker.session.settings.time_budget,
        worker.session.settings.profile,
        opts.timeout.as_secs_f64(),
        if worker.in_repository_tree() { RUN_LOG.into() } else { worker.root.join(RUN_LOG).display().to_string() }
    ));
    let run_log = worker.root.join(RUN_LOG);
    let dir = worker.run_dir(exp.run);
    let first = train(worker, trainer, SEED, &dir, run_log.clone(), opts)?;
    exp.training_wall += first.wall;
    std::fs::copy(&run_log, dir.join(RUN_LOG))?;
    if first.interrupted {
        return Ok(None);
    }
    let summary = match first.result {
        Err(crash) => return Ok(Some(Decision::crash(crash))),
        Ok(s) => s,
    };
    // Judged against the session's best as it is now (another worker may have kept one meanwhile).
    let best = worker.session.best();
    let mut decision = Decision {
        status: Status::Discard,
        value: Some(summary.val_bpb),
        memory_gb: summary.peak_vram_mb / 1024.0,
        reason: String::new(),
        crash: None,
        seeds: vec![SEED],
        reruns: Vec::new(),
        against: best.as_ref().map(|b| b.run),
    };
    if let Some(b) = &best {
        if !opts.decider.promising(summary.val_bpb, b.val_bpb) {
            decision.reason = opts.decider.verdict(summary.val_bpb, b.val_bpb, b.run).1;
            return Ok(Some(decision));
        }
    }
    let mut values = vec![summary.val_bpb];
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
            let (keep, why) = opts.decider.verdict(value, b.val_bpb, b.run);
            (if keep { Status::Keep } else { Status::Discard }, spread + &why)
        }
    };
    Ok(Some(decision))
}
