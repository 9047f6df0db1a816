//! One experiment, start to finish: check, commit, build, train, decide, record, keep or reset; and the
//! seed reruns that measure noise.

use std::path::Path;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::process::{wait_or_kill, Role};
use crate::results::{self, Extra, Row, Status};
use crate::rules::{mean_std, Decider, NoiseEstimate, Rule};
use crate::state::{Best, InProgress};
use crate::trainer::{RunSettings, Trainer};
use crate::{file_hash, now_utc, Interrupts, RunMeta, Workspace, TRAINING_FILE};
use autoresearch_harness::summary::Summary;

/// The seed of every experiment's first run (the original's).
pub const SEED: u64 = 42;
/// Lines of a failed run's log shown to the agent.
pub const TAIL_LINES: usize = 50;

#[derive(Clone)]
pub struct RunOptions {
    pub description: String,
    pub decider: Decider,
    pub timeout: Duration,
    /// Run even if an earlier run had the identical training file.
    pub force: bool,
    pub interrupts: Interrupts,
    /// Interrupt requests after which the training process is killed (`run`: 1; `loop`: 2, since the first
    /// only asks it to stop after the current experiment).
    pub abort_at: usize,
}

/// The default hard timeout: twice the budget plus two minutes (12 minutes at 300 s; the original's program.md
/// says 10).
pub fn default_timeout(budget: f64) -> Duration {
    Duration::from_secs_f64(2.0 * budget + 120.0)
}

#[derive(Debug)]
pub struct Outcome {
    pub run: u64,
    /// keep, discard, crash or reused
    pub status: String,
    pub val_bpb: Option<f64>,
    pub reason: String,
    /// The end of the log (or of the compiler's output) of a crash.
    pub log_tail: Option<String>,
    pub seconds: f64,
    /// Time outside the training processes: git, the build check, bookkeeping.
    pub harness_overhead: f64,
}

/// A training process's result.
struct Trained {
    summary: Option<Summary>,
    crash: Option<String>,
    wall: f64,
    interrupted: bool,
    log: String,
}

/// Builds the training binary, the build process recorded in the journal while it runs.
pub fn build(ws: &mut Workspace, trainer: &Trainer) -> Result<std::result::Result<String, String>> {
    let mut recorded = None;
    let result = trainer.build(&mut |cmd| {
        let (child, r) = ws.spawn(cmd, Role::Build)?;
        recorded = Some(r);
        Ok(child)
    });
    if let Some(r) = recorded {
        ws.forget(&r)?;
    }
    result
}

/// Runs the training binary once with `seed`, output into `log_path`, under the hard timeout.
fn train_once(ws: &mut Workspace, trainer: &Trainer, seed: u64, log_path: &Path, opts: &RunOptions) -> Result<Trained> {
    let settings = RunSettings {
        profile: Some(ws.state.profile.clone()),
        time_budget: Some(ws.state.time_budget),
        seed: Some(seed),
    };
    let log = std::fs::File::create(log_path).with_context(|| format!("creating {}", log_path.display()))?;
    let mut cmd = trainer.run_command(&settings)?;
    // Its own process group: Ctrl-C reaches only us, and a timeout kills everything it started.
    cmd.stdout(log.try_clone()?).stderr(log);
    let started = Instant::now();
    let (mut child, recorded) =
        ws.spawn(&mut cmd, Role::Training).with_context(|| format!("starting {}", trainer.binary().display()))?;
    let (mut timed_out, mut interrupted) = (false, false);
    let status = wait_or_kill(&mut child, || {
        timed_out = started.elapsed() > opts.timeout;
        interrupted = !timed_out && opts.interrupts.count() >= opts.abort_at;
        timed_out || interrupted
    })?;
    ws.forget(&recorded)?;
    let status = status.unwrap_or_else(|| std::os::unix::process::ExitStatusExt::from_raw(libc::SIGKILL));
    let wall = started.elapsed().as_secs_f64();
    let log = String::from_utf8_lossy(&std::fs::read(log_path)?).into_owned();
    let (summary, crash) = if timed_out {
        (None, Some(format!("timeout: killed after {:.0} s", opts.timeout.as_secs_f64())))
    } else {
        match crash_reason(status, &log) {
            Some(reason) => (None, Some(reason)),
            None => match Summary::parse(&log) {
                Ok(s) if s.val_bpb.is_finite() => (Some(s), None),
                Ok(s) => (None, Some(format!("val_bpb is {}", s.val_bpb))),
                Err(e) => (None, Some(format!("{e:#}"))),
            },
        }
    };
    Ok(Trained { summary, crash, wall, interrupted, log })
}

/// Why a finished training process counts as a crash, if it does.
fn crash_reason(status: ExitStatus, log: &str) -> Option<String> {
    use std::os::unix::process::ExitStatusExt;
    if status.success() {
        return None;
    }
    let lines: Vec<&str> = log.split(['\n', '\r']).collect();
    if lines.iter().any(|l| l.starts_with("FAIL")) {
        return Some("FAIL: the loss was NaN or above 100".into());
    }
    if log.contains("out of memory") || log.contains("CUDA error: out of memory") {
        return Some("out of memory".into());
    }
    if let Some(i) = lines.iter().position(|l| l.contains("panicked at")) {
        let message = lines.get(i + 1).map_or("", |m| m.trim());
        return Some(format!("panic: {message}"));
    }
    Some(match status.signal() {
        Some(9) => "killed (signal 9: out of memory?)".into(),
        Some(sig) => format!("killed by signal {sig}"),
        None => format!("exit code {}", status.code().unwrap_or(-1)),
    })
}

/// The last `n` lines of a log, progress lines (\r) counted as lines.
pub fn tail(log: &str, n: usize) -> String {
    let lines: Vec<&str> = log.split(['\n', '\r']).filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// What the current tree holds, before an experiment.
pub enum Check {
    /// Files other than the training file differ from the best commit (or are new).
    Refused(Vec<String>),
    /// The training file equals the best commit's and there is a result already.
    Unchanged,
    Ready,
}

pub fn check(ws: &Workspace) -> Result<Check> {
    let forbidden = ws.forbidden_changes()?;
    if !forbidden.is_empty() {
        return Ok(Check::Refused(forbidden));
    }
    if ws.state.best.is_some() && !ws.training_file_changed()? {
        return Ok(Check::Unchanged);
    }
    Ok(Check::Ready)
}

pub fn refusal_message(files: &[String]) -> String {
    format!(
        "refused: only {TRAINING_FILE} may change, but these differ from the best commit: {} \
         (the harness is fixed; undo those changes, e.g. `git checkout -- FILE`, and move new files away)",
        files.join(", ")
    )
}

/// Runs one experiment on the current tree.
pub fn run_experiment(ws: &mut Workspace, trainer: &Trainer, opts: &RunOptions) -> Result<Outcome> {
    let started = Instant::now();
    match check(ws)? {
        Check::Refused(files) => bail!(refusal_message(&files)),
        Check::Unchanged => bail!("{TRAINING_FILE} is the same as in the best commit: nothing to run"),
        Check::Ready => {}
    }
    let content = std::fs::read(ws.root.join(TRAINING_FILE)).with_context(|| format!("reading {TRAINING_FILE}"))?;
    let hash = file_hash(&content);
    let run = ws.state.next_run;
    let mut meta = RunMeta {
        run,
        description: opts.description.clone(),
        status: "running".into(),
        file_hash: hash.clone(),
        started: now_utc(),
        ..Default::default()
    };
    if !opts.force {
        if let Some(earlier) = ws
            .runs()
            .into_iter()
            .find(|m| m.file_hash == hash && ["keep", "discard", "crash"].contains(&m.status.as_str()))
        {
            return reuse(ws, opts, meta, &earlier, started);
        }
    }
    ws.state.next_run += 1;
    ws.write_meta(&meta)?;
    std::fs::write(ws.run_dir(run).join("train.rs"), &content)?;
    ws.state.in_progress = Some(InProgress { run, commit: None });
    ws.save_state()?;

    let commit = if ws.training_file_changed()? {
        ws.git.commit_file(TRAINING_FILE, &opts.description)?
    } else {
        ws.git.head()?
    };
    meta.commit = Some(commit.clone());
    ws.state.in_progress.as_mut().unwrap().commit = Some(commit.clone());
    ws.save_state()?;
    ws.write_meta(&meta)?;

    let run_log = ws.root.join("run.log");
    let mut training_wall = 0.0;
    let build = build(ws, trainer)?;
    std::fs::write(ws.run_dir(run).join("build.log"), build.as_ref().unwrap_or_else(|e| e))?;
    let mut trained = None;
    let crash = match build {
        Err(compiler) => {
            std::fs::write(&run_log, &compiler)?;
            Some(("compile error".to_string(), tail(&compiler, TAIL_LINES)))
        }
        Ok(_) => {
            eprintln!(
                "run {run}: training for {} s (profile {}, timeout {:.0} s); output in run.log",
                ws.state.time_budget,
                ws.state.profile,
                opts.timeout.as_secs_f64()
            );
            let t = train_once(ws, trainer, SEED, &run_log, opts)?;
            training_wall += t.wall;
            std::fs::copy(&run_log, ws.run_dir(run).join("run.log"))?;
            if t.interrupted {
                return interrupted(ws, meta);
            }
            let crash = t.crash.clone().map(|c| (c, tail(&t.log, TAIL_LINES)));
            trained = Some(t);
            crash
        }
    };

    let (profile, budget, rule_label) = (ws.state.profile.clone(), ws.state.time_budget, opts.decider.label.clone());
    let extra = |seconds: f64, reason: String| Extra {
        profile: profile.clone(),
        budget,
        seconds,
        run,
        rule: rule_label.clone(),
        reason,
    };
    let mut reruns = Vec::new();
    let summary = trained.as_ref().and_then(|t| t.summary.clone());
    let (status, kept_value, reason, log_tail) = match (crash, &summary) {
        (Some((why, log_tail)), _) => (Status::Crash, None, why, Some(log_tail)),
        (None, None) => unreachable!("a training run without a crash has a summary"),
        (None, Some(s)) => match ws.state.best.clone() {
            None => (Status::Keep, Some(s.val_bpb), "first result: the baseline".to_string(), None),
            Some(best) if !opts.decider.promising(s.val_bpb, best.val_bpb) => {
                (Status::Discard, None, opts.decider.verdict(s.val_bpb, best.val_bpb, best.run).1, None)
            }
            Some(best) => {
                let mut values = vec![s.val_bpb];
                let mut rerun_crash = None;
                if let Rule::Confirm { n, .. } = opts.decider.rule {
                    for k in 1..=n {
                        let seed = SEED + k as u64;
                        let t = train_once(ws, trainer, seed, &ws.run_dir(run).join(format!("rerun-{k}.log")), opts)?;
                        training_wall += t.wall;
                        if t.interrupted {
                            return interrupted(ws, meta);
                        }
                        let description = format!("rerun {k}/{n} (seed {seed}) of: {}", opts.description);
                        let (val_bpb, memory_gb, note) = match (&t.summary, &t.crash) {
                            (Some(r), _) => (r.val_bpb, r.peak_vram_mb / 1024.0, format!("seed {seed}")),
                            (None, crash) => {
                                (0.0, 0.0, format!("seed {seed} crashed: {}", crash.clone().unwrap_or_default()))
                            }
                        };
                        reruns.push(Row {
                            commit: commit.clone(),
                            val_bpb,
                            memory_gb,
                            status: Status::Rerun,
                            description,
                            extra: Some(extra(t.wall, note)),
                        });
                        match t.summary {
                            Some(r) => values.push(r.val_bpb),
                            None => {
                                rerun_crash = t.crash;
                                break;
                            }
                        }
                    }
                }
                if let Some(why) = rerun_crash {
                    (Status::Discard, None, format!("confirmation rerun crashed: {why}"), None)
                } else {
                    let value = values.iter().sum::<f64>() / values.len() as f64;
                    let spread = match mean_std(&values) {
                        Some((_, sd)) => format!("mean {value:.6} ± {sd:.6} over {} seeds; ", values.len()),
                        None => String::new(),
                    };
                    let (keep, why) = opts.decider.verdict(value, best.val_bpb, best.run);
                    (if keep { Status::Keep } else { Status::Discard }, keep.then_some(value), spread + &why, None)
                }
            }
        },
    };

    let seconds = started.elapsed().as_secs_f64();
    let mut rows = vec![Row {
        commit: commit.clone(),
        val_bpb: summary.as_ref().filter(|_| status != Status::Crash).map_or(0.0, |s| s.val_bpb),
        memory_gb: summary.as_ref().filter(|_| status != Status::Crash).map_or(0.0, |s| s.peak_vram_mb / 1024.0),
        status,
        description: opts.description.clone(),
        extra: Some(extra(seconds, reason.clone())),
    }];
    rows.extend(reruns);
    // The rows first: once they are written, recovery can always finish the rest.
    results::append(&ws.results, &rows)?;
    match kept_value {
        Some(val_bpb) => ws.state.best = Some(Best { commit: commit.clone(), val_bpb, run }),
        None => ws.set_aside(run, Some(&commit))?,
    }
    let overhead = seconds - training_wall;
    meta.status = status.to_string();
    meta.val_bpb = summary.as_ref().filter(|_| status != Status::Crash).map(|s| s.val_bpb);
    meta.reason = reason.clone();
    meta.seconds = seconds;
    meta.harness_overhead_seconds = Some(overhead);
    ws.write_meta(&meta)?;
    ws.state.in_progress = None;
    ws.save_state()?;
    Ok(Outcome {
        run,
        status: status.to_string(),
        val_bpb: meta.val_bpb,
        reason,
        log_tail,
        seconds,
        harness_overhead: overhead,
    })
}

/// An interrupted experiment: its change set aside, no row, the tree back at the best commit.
fn interrupted(ws: &mut Workspace, mut meta: RunMeta) -> Result<Outcome> {
    let commit = ws.state.in_progress.as_ref().and_then(|ip| ip.commit.clone());
    ws.set_aside(meta.run, commit.as_deref())?;
    meta.status = "interrupted".into();
    meta.reason = "interrupted (Ctrl-C or SIGTERM); the change is in change.diff".into();
    ws.write_meta(&meta)?;
    ws.state.in_progress = None;
    ws.save_state()?;
    bail!(
        "run {} interrupted: the tree is back at the best commit, the change saved in {}",
        meta.run,
        ws.run_dir(meta.run).display()
    )
}

/// An experiment whose training file is byte-identical to an earlier run's: that result stands, recorded again.
fn reuse(
    ws: &mut Workspace,
    opts: &RunOptions,
    mut meta: RunMeta,
    earlier: &RunMeta,
    started: Instant,
) -> Result<Outcome> {
    let run = meta.run;
    ws.state.next_run += 1;
    let rows = results::read(&ws.results)?.rows;
    let earlier_row = results::experiment_row(&rows, earlier.run);
    let status = if earlier.status == "crash" { Status::Crash } else { Status::Discard };
    let reason = format!(
        "identical to run {} ({}, val_bpb {}): its result reused, not run again",
        earlier.run,
        earlier.status,
        earlier.val_bpb.map_or("-".into(), |v| format!("{v:.6}"))
    );
    let row = Row {
        commit: earlier.commit.clone().unwrap_or_default(),
        val_bpb: earlier_row.as_ref().map_or(0.0, |r| r.val_bpb),
        memory_gb: earlier_row.as_ref().map_or(0.0, |r| r.memory_gb),
        status,
        description: opts.description.clone(),
        extra: Some(Extra {
            profile: ws.state.profile.clone(),
            budget: ws.state.time_budget,
            seconds: started.elapsed().as_secs_f64(),
            run,
            rule: opts.decider.label.clone(),
            reason: reason.clone(),
        }),
    };
    results::append(&ws.results, &[row])?;
    ws.set_aside(run, None)?;
    meta.status = "reused".into();
    meta.commit = earlier.commit.clone();
    meta.val_bpb = earlier.val_bpb;
    meta.reason = reason.clone();
    ws.write_meta(&meta)?;
    ws.save_state()?;
    let seconds = started.elapsed().as_secs_f64();
    Ok(Outcome {
        run,
        status: "reused".into(),
        val_bpb: earlier.val_bpb,
        reason,
        log_tail: None,
        seconds,
        harness_overhead: seconds,
    })
}

/// Reruns the best commit `k` times with seeds 43, 44, ... and stores the spread of val_bpb.
pub fn measure_noise(ws: &mut Workspace, trainer: &Trainer, k: usize, opts: &RunOptions) -> Result<NoiseEstimate> {
    if k < 2 {
        bail!("--runs {k}: a spread needs at least 2 runs");
    }
    if !ws.forbidden_changes()?.is_empty() || ws.training_file_changed()? {
        bail!("the working tree differs from the best commit: run or undo the change first");
    }
    if let Err(compiler) = build(ws, trainer)? {
        bail!("the best commit does not build:\n{}", tail(&compiler, TAIL_LINES));
    }
    let (profile, budget) = (ws.state.profile.clone(), ws.state.time_budget);
    let dir = ws.dir.join("noise").join(format!("{profile}-{budget}"));
    std::fs::create_dir_all(&dir)?;
    let (mut seeds, mut values) = (Vec::new(), Vec::new());
    for i in 1..=k {
        let seed = SEED + i as u64;
        let t = train_once(ws, trainer, seed, &dir.join(format!("seed-{seed}.log")), opts)?;
        if t.interrupted {
            bail!("interrupted");
        }
        let Some(s) = t.summary else {
            bail!(
                "the run with seed {seed} crashed ({}); see {}",
                t.crash.unwrap_or_default(),
                dir.join(format!("seed-{seed}.log")).display()
            );
        };
        eprintln!("noise: seed {seed}: val_bpb {:.6}", s.val_bpb);
        seeds.push(seed);
        values.push(s.val_bpb);
    }
    let estimate = NoiseEstimate::new(&profile, budget, &ws.git.head()?, seeds, values)?;
    crate::rules::save_noise(&ws.dir, &estimate)?;
    Ok(estimate)
}

/// One line for the terminal (and the agent) about an experiment's outcome.
pub fn describe(o: &Outcome) -> String {
    let value = o.val_bpb.map_or("-".to_string(), |v| format!("{v:.6}"));
    format!(
        "run {}: {} (val_bpb {value}): {} [{:.1} s, harness overhead {:.1} s]",
        o.run, o.status, o.reason, o.seconds, o.harness_overhead
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    #[test]
    fn crashes_are_named_from_the_exit_and_the_log() {
        let exit = |code: i32| ExitStatus::from_raw(code << 8);
        let signal = |sig: i32| ExitStatus::from_raw(sig);
        assert_eq!(crash_reason(exit(0), "anything"), None);
        assert_eq!(
            crash_reason(exit(1), "step 00012 | loss: nan\r\nFAIL: loss NaN at step 12\n").unwrap(),
            "FAIL: the loss was NaN or above 100"
        );
        assert_eq!(crash_reason(exit(101), "CUDA out of memory. Tried to allocate 2.00 GiB").unwrap(), "out of memory");
        let panic = "thread 'main' (7) panicked at train/train.rs:12:5:\nindex out of bounds\nnote: run with RUST_BACKTRACE=1\n";
        assert_eq!(crash_reason(exit(101), panic).unwrap(), "panic: index out of bounds");
        assert_eq!(crash_reason(signal(9), "").unwrap(), "killed (signal 9: out of memory?)");
        assert_eq!(crash_reason(signal(11), "").unwrap(), "killed by signal 11");
        assert_eq!(crash_reason(exit(3), "error: no data").unwrap(), "exit code 3");
    }

    #[test]
    fn tails_count_progress_lines() {
        let log = "a\nstep 1\rstep 2\rstep 3\n\nb\n";
        assert_eq!(tail(log, 2), "step 3\nb");
        assert_eq!(tail(log, 10), "a\nstep 1\nstep 2\nstep 3\nb");
    }
}
