//! The re-measure of the best that a keep rule may need before an experiment: the best's commit trained with
//! the seeds it lacks (`confirm N`), or the baseline's spread for `margin`; a run of its own. Under the frontier
//! search it is the node the experiment starts from that is re-measured, and the re-measure takes its place.

use std::time::Instant;

use anyhow::{bail, Result};

use super::record::{interrupted, record};
use super::train::rerun;
use super::{build, describe, seed_list, Decision, ExperimentOptions, Started};
use crate::results::{self, Row, Status};
use crate::rules::{noise_for, NoiseEstimate, Rule, BASELINE_SEEDS};
use crate::state::{Best, InProgress, SEED};
use crate::trainer::Trainer;
use crate::training::{tail, TAIL_LINES};
use crate::tree::Search;
use crate::{now_utc, RunMeta, Worker};

/// The re-measure of the best that the rule may need before the next experiment (see [`remeasure_best`]);
/// whether it ran. Under `margin` with no spread measured, that is the best (the baseline, in a new session)
/// trained on [`BASELINE_SEEDS`] seeds, whose spread is then the session's noise estimate.
pub fn remeasure_if_needed(worker: &mut Worker, trainer: &Trainer, opts: &ExperimentOptions) -> Result<bool> {
    match opts.decider.rule {
        Rule::Confirm { n, .. } => remeasure_best(worker, trainer, opts, n),
        Rule::Margin { .. }
            if opts.decider.awaiting_noise
                && noise_for(
                    &worker.session.dir,
                    &worker.session.settings.profile,
                    worker.session.settings.time_budget,
                )?
                .is_none()
                && worker.session.best().is_some() =>
        {
            worker.say(&format!(
                "the margin rule needs the seed-to-seed spread, and this session has none yet: measuring it on the \
                 best with {BASELINE_SEEDS} seeds"
            ));
            remeasure_best(worker, trainer, opts, BASELINE_SEEDS - 1)
        }
        _ => Ok(false),
    }
}

/// Under `confirm N` a candidate's value is a mean over seeds 42 … 42+N; a best measured on fewer seeds (under
/// another rule) is first trained with the missing ones, so that the two means compare like with like. The
/// re-measure is a run of its own: a keep row of the best's commit with the mean over all its seeds, which
/// becomes the best. A change waiting in the tree is put aside meanwhile and comes back after. Whether it ran.
fn remeasure_best(worker: &mut Worker, trainer: &Trainer, opts: &ExperimentOptions, n: usize) -> Result<bool> {
    // Under the frontier search the node the experiment starts from (it is judged against that), as the frontier
    // holds it now: another worker may have re-measured it since.
    let (best, what) = match worker.session.settings.search {
        Search::Greedy => (worker.session.best(), "the best"),
        Search::Frontier => {
            let start = worker.journal.best.as_ref().map(|b| worker.session.node_at(&b.commit).unwrap_or(b.clone()));
            (start, "the node")
        }
    };
    let Some(best) = best else { return Ok(false) };
    if worker.session.settings.search == Search::Frontier {
        worker.journal.best = Some(best.clone());
    }
    let wanted: Vec<u64> = (0..=n as u64).map(|k| SEED + k).collect();
    let missing: Vec<u64> = wanted.iter().copied().filter(|s| !best.seeds.contains(s)).collect();
    if missing.is_empty() {
        return Ok(false);
    }
    let started = Instant::now();
    let rows = results::read(&worker.session.results)?.rows;
    let best_row = results::experiment_row(&rows, best.run).cloned();
    let description = format!(
        "re-measure of {what} (run {}) over seeds {}: {}",
        best.run,
        seed_list(&wanted),
        best_row.as_ref().map_or("", |r| r.description.as_str())
    );
    let opts = ExperimentOptions { description: description.clone(), ..opts.clone() };
    let why = if opts.decider.awaiting_noise {
        format!("the margin rule takes the spread of {} over seeds", worker.session.settings.metric.name)
    } else {
        format!("`confirm {n}` compares means over seeds {}", seed_list(&wanted))
    };
    worker.say(&format!(
        "the best (run {}) was measured with seed(s) {}; {why}: training it with {} first",
        best.run,
        seed_list(&best.seeds),
        seed_list(&missing)
    ));
    let run = worker.session.take_run()?;
    let meta = RunMeta {
        run,
        description: description.clone(),
        commit: Some(best.commit.clone()),
        status: Status::Running,
        started: now_utc(),
        ..Default::default()
    };
    worker.session.write_meta(&meta)?;
    worker.journal.in_progress = Some(InProgress { run, commit: Some(best.commit.clone()), seeds: Vec::new() });
    worker.save_journal()?;
    worker.stash()?;
    if let Err(compiler) = build(worker, trainer)?.output {
        worker.unstash()?;
        bail!("the best commit does not build any more:\n{}", tail(&compiler, TAIL_LINES));
    }
    let mut exp = Started::new(run, best.commit.clone(), meta, started);
    let Some(reruns) =
        rerun(worker, trainer, &opts, run, &best.commit, "of the best", &missing, &mut exp.training_wall)?
    else {
        let result = interrupted(worker, exp.meta);
        worker.unstash()?;
        return result.map(|_| true);
    };
    let memory_gb = best_row.as_ref().map_or(0.0, |r| r.memory_gb);
    let (decision, refused) = match reruns.crash {
        // The best stays as it was; the candidate is then compared with it as it is (under `margin` there is
        // nothing to compare with yet: the session stops, and says why).
        Some(why) => {
            let refused = opts
                .decider
                .awaiting_noise
                .then(|| format!("training the best with seeds {} crashed: {why}", seed_list(&missing)));
            (Decision::failed(format!("re-measure crashed: {why}"), reruns.rows), refused)
        }
        None if opts.decider.awaiting_noise => {
            margin_spread(worker, &opts, &best, &wanted, &missing, reruns.values, reruns.rows, memory_gb)?
        }
        None => {
            let what = format!("the best's value for `confirm {n}`");
            (remeasured(&best, &wanted, &reruns.values, memory_gb, reruns.rows, &what), None)
        }
    };
    let outcome = record(worker, &opts, exp, decision)?;
    worker.unstash()?;
    worker.say(&describe(&outcome, &worker.session.settings.metric.name));
    if let Some(why) = refused {
        bail!(
            "the margin rule needs the seed-to-seed spread, and measuring it on the best failed: {why}. Give \
             --min-delta, or --rule lower"
        );
    }
    Ok(true)
}

/// The re-measure's decision under `margin`: the spread over the best's seed and the reruns' becomes the
/// session's noise estimate and the best's value their mean; where it cannot be had, a crash row and why the
/// session cannot go on.
#[allow(clippy::too_many_arguments)]
fn margin_spread(
    worker: &Worker,
    opts: &ExperimentOptions,
    best: &Best,
    wanted: &[u64],
    missing: &[u64],
    rerun_values: Vec<f64>,
    rerun_rows: Vec<Row>,
    memory_gb: f64,
) -> Result<(Decision, Option<String>)> {
    // The spread needs each seed's value: the best's own where it is one seed's, and the reruns'.
    let (mut seeds, mut values) = match best.seeds.len() {
        1 => (best.seeds.clone(), vec![best.val_bpb]),
        _ => (Vec::new(), Vec::new()),
    };
    seeds.extend(missing);
    values.extend(&rerun_values);
    let settings = &worker.session.settings;
    let estimate = match values.len() {
        // A best kept as a mean over seeds (under `confirm N`) holds no single seed's value.
        0 | 1 => Err(anyhow::anyhow!(
            "the best (run {}) is a mean over seeds {}, not each seed's value: measure the spread with \
             `autoresearch noise`",
            best.run,
            seed_list(&best.seeds)
        )),
        _ => NoiseEstimate::new(&settings.profile, settings.time_budget, &best.commit, seeds, values),
    };
    Ok(match estimate {
        Ok(noise) => {
            crate::rules::save_noise(&worker.session.dir, &noise)?;
            worker.say(&format!(
                "noise: {} {:.6} ± {:.6} over seeds {}; the margin is {}σ of it",
                worker.session.settings.metric.name,
                noise.mean,
                noise.std,
                seed_list(&noise.seeds),
                opts.decider.z()
            ));
            let what = "the baseline's spread for `margin`";
            (remeasured(best, wanted, &rerun_values, memory_gb, rerun_rows, what), None)
        }
        Err(e) => {
            let decision = Decision::failed(format!("re-measure for the margin rule: {e:#}"), rerun_rows);
            (decision, Some(format!("{e:#}")))
        }
    })
}

/// The keep decision of a re-measure: the best's commit with the mean over all of `wanted`, its earlier value and
/// `rerun_values` (the seeds it lacked) weighted by their counts.
fn remeasured(
    best: &Best,
    wanted: &[u64],
    rerun_values: &[f64],
    memory_gb: f64,
    reruns: Vec<Row>,
    what: &str,
) -> Decision {
    let k = best.seeds.len() as f64;
    let value = (best.val_bpb * k + rerun_values.iter().sum::<f64>()) / (k + rerun_values.len() as f64);
    let reason = format!(
        "mean {value:.6} over seeds {} (earlier: {:.6} over {}); {what}",
        seed_list(wanted),
        best.val_bpb,
        seed_list(&best.seeds)
    );
    Decision {
        status: Status::Keep,
        value: Some(value),
        memory_gb,
        reason,
        crash: None,
        seeds: wanted.to_vec(),
        reruns,
        against: Some(best.run),
    }
}
