//! One worker's loop in `autoresearch loop`: an agent proposes, the harness disposes. Each iteration gives the
//! agent a prompt (program.md and the session's state), lets it edit the editable files, sends compile errors
//! back for a few fixes, then runs the experiment exactly as `autoresearch run` does.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::experiment::{build, check, describe, run_experiment, train_rerun};
use crate::experiment::{Check, ExperimentOptions};
use crate::metric::Goal;
use crate::process::{wait_or_kill, Role};
use crate::results::{self, Row, Status};
use crate::state::Best;
use crate::trainer::Trainer;
use crate::training::{tail, TAIL_LINES};
use crate::tree::Search;
use crate::{now_utc, RunMeta, Worker};

pub struct LoopOptions {
    /// The agent's command line, run by `sh -c`; `{prompt}` becomes the prompt file's path (else the path
    /// is appended).
    pub agent: String,
    pub agent_timeout: Duration,
    pub max_experiments: Option<usize>,
    pub max_hours: Option<f64>,
    /// Compile errors sent back to the agent per experiment before it counts as a crash.
    pub max_fixes: usize,
    /// program.md's text.
    pub program: String,
    pub experiment: ExperimentOptions,
    /// Workers in the pool (the prompt speaks of the others where there are any).
    pub workers: usize,
}

#[derive(Debug, Default)]
pub struct LoopReport {
    pub experiments: usize,
    pub kept: usize,
    pub crashes: usize,
    pub refused: usize,
    pub stop_reason: String,
}

/// The notes agents keep across calls, in the session's folder (outside the training file's guard).
pub use crate::files::NOTES_FILE;
/// The end of the notes that goes into a prompt, in bytes.
const NOTES_IN_PROMPT: usize = 8000;

/// Agent calls in a row that change nothing before the loop gives up.
const MAX_IDLE_CALLS: usize = 3;

/// Runs `worker`'s experiments until a limit, a signal or an idle agent stops it.
pub fn worker_loop(
    worker: &mut Worker,
    trainer: &Trainer,
    opts: &LoopOptions,
    on_outcome: &mut dyn FnMut(&str),
) -> Result<LoopReport> {
    let started = Instant::now();
    let mut report = LoopReport::default();
    let mut feedback: Option<String> = None;
    let mut idle = 0;
    let prompt_path = worker.own.join(crate::files::PROMPT_FILE);
    let description_path = worker.own.join(crate::files::DESCRIPTION_FILE);
    set_aside_leftovers(worker)?;
    // The experiments of all workers count against --max-experiments together: each claims one before it
    // starts, and gives it back if nothing ran.
    let session = worker.session.clone();
    let mut claimed = false;
    loop {
        if std::mem::take(&mut claimed) {
            session.release();
        }
        // Between its experiments a worker first trains the confirmation reruns other workers offered.
        while let Some(task) = session.take_rerun(worker.number) {
            train_rerun(worker, trainer, task, &opts.experiment);
        }
        let all_taken = !session.claim(opts.max_experiments);
        claimed = !all_taken;
        let stop = if opts.experiment.interrupts.count() > 0 {
            Some("stopped by a signal".to_string())
        } else if all_taken {
            Some(format!("reached --max-experiments {}", opts.max_experiments.unwrap_or_default()))
        } else if opts.max_hours.is_some_and(|h| started.elapsed().as_secs_f64() > h * 3600.0) {
            Some("reached --max-hours".to_string())
        } else if idle >= MAX_IDLE_CALLS {
            Some(format!("the agent changed nothing {MAX_IDLE_CALLS} times in a row"))
        } else {
            None
        };
        if let Some(reason) = stop {
            if std::mem::take(&mut claimed) {
                session.release();
            }
            report.stop_reason = reason;
            return Ok(report);
        }
        worker.start_next()?;

        let _ = std::fs::remove_file(&description_path);
        let prompt = build_prompt(worker, opts, &description_path, feedback.take().as_deref(), None)?;
        autoresearch_harness::fsutil::write_atomic(&prompt_path, prompt.as_bytes())?;
        call_agent(worker, opts, &prompt_path, &description_path)?;
        if opts.experiment.interrupts.count() > 0 {
            set_aside_leftovers(worker)?;
            continue;
        }
        let verdict = ready_to_run(worker, trainer, opts, &prompt_path, &description_path, on_outcome)?;
        if let Err(problem) = verdict {
            if worker.changes()? != (Vec::new(), Vec::new()) {
                record_refusal(worker, &problem)?;
                report.refused += 1;
                idle = 0;
            } else {
                idle += 1;
            }
            on_outcome(&problem);
            feedback = Some(problem);
            continue;
        }
        idle = 0;
        let description = read_description(&description_path);

        let run_opts = ExperimentOptions { description, ..opts.experiment.clone() };
        let outcome = match run_experiment(worker, trainer, &run_opts) {
            Ok(o) => o,
            Err(e) if opts.experiment.interrupts.count() > 0 => {
                on_outcome(&format!("{e:#}"));
                continue;
            }
            Err(e) => return Err(e),
        };
        claimed = false;
        report.experiments += 1;
        match outcome.status {
            Status::Keep => report.kept += 1,
            Status::Crash => report.crashes += 1,
            _ => {}
        }
        on_outcome(&describe(&outcome, &worker.session.settings.metric.name));
        feedback = outcome.log_tail.as_ref().map(|t| {
            format!(
                "The last experiment (run {}) crashed: {}. The end of its log:\n```\n{t}\n```",
                outcome.run, outcome.reason
            )
        });
    }
}

/// Whether the agent's change can run: Err(why not) for a refused change or none, and a change that does not
/// compile goes back to the agent up to `max_fixes` times first (a compile error after that is the experiment's
/// crash).
fn ready_to_run(
    worker: &mut Worker,
    trainer: &Trainer,
    opts: &LoopOptions,
    prompt_path: &Path,
    description_path: &Path,
    on_outcome: &mut dyn FnMut(&str),
) -> Result<std::result::Result<(), String>> {
    let mut fixes = 0;
    loop {
        match check(worker)? {
            Check::Refused(why) => return Ok(Err(why)),
            Check::Unchanged => {
                let editable = worker.session.project.editable.describe();
                return Ok(Err(format!("you did not change {editable}; nothing was run")));
            }
            Check::Ready(_) => {}
        }
        match build(worker, trainer)?.output {
            Err(compiler) if fixes < opts.max_fixes => {
                fixes += 1;
                let what = if worker.session.project.commands.is_some() { "the setup failed" } else { "compile error" };
                on_outcome(&format!("{what}; asking the agent to fix it ({fixes}/{})", opts.max_fixes));
                let errors = tail(&compiler, TAIL_LINES);
                let prompt = build_prompt(worker, opts, description_path, None, Some(&errors))?;
                autoresearch_harness::fsutil::write_atomic(prompt_path, prompt.as_bytes())?;
                call_agent(worker, opts, prompt_path, description_path)?;
            }
            _ => return Ok(Ok(())),
        }
    }
}

fn set_aside_leftovers(worker: &Worker) -> Result<()> {
    if let Some(dir) = worker.set_aside_leftovers()? {
        worker.say(&format!("an unrun change was set aside in {}", dir.display()));
    }
    Ok(())
}

/// A refused change: its own run folder (no row, nothing ran), then the tree back at the best commit.
fn record_refusal(worker: &mut Worker, problem: &str) -> Result<()> {
    let run = worker.session.take_run()?;
    worker.set_aside(run, None)?;
    worker.session.write_meta(&RunMeta {
        run,
        status: Status::Refused,
        reason: problem.to_string(),
        started: now_utc(),
        ..Default::default()
    })?;
    worker.save_journal()
}

fn read_description(path: &Path) -> String {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| t.lines().map(str::trim).find(|l| !l.is_empty()).map(str::to_string))
        .unwrap_or_else(|| "(no description given)".to_string())
}

fn shell_quote(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', "'\\''"))
}

fn call_agent(worker: &mut Worker, opts: &LoopOptions, prompt: &Path, description: &Path) -> Result<()> {
    let line = if opts.agent.contains("{prompt}") {
        opts.agent.replace("{prompt}", &shell_quote(prompt))
    } else {
        format!("{} {}", opts.agent, shell_quote(prompt))
    };
    let log_path = worker.own.join(crate::files::AGENT_LOG);
    let mut log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path)?;
    use std::io::Write;
    writeln!(log, "\n=== {}: {line}", now_utc())?;
    let mut cmd = std::process::Command::new("sh");
    cmd.arg("-c")
        .arg(&line)
        .current_dir(&worker.root)
        .env("AUTORESEARCH_PROMPT", prompt)
        .env("AUTORESEARCH_DESCRIPTION", description)
        .env("AUTORESEARCH_NOTES", worker.session.dir.join(NOTES_FILE))
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log.try_clone()?);
    let (mut child, recorded) =
        worker.spawn(&mut cmd, Role::Agent).with_context(|| format!("starting the agent: {line}"))?;
    let started = Instant::now();
    let status = wait_or_kill(&mut child, || {
        started.elapsed() > opts.agent_timeout || opts.experiment.interrupts.count() >= opts.experiment.abort_at
    })?;
    worker.forget(&recorded)?;
    match status {
        Some(status) if !status.success() => writeln!(log, "=== the agent exited with {status}")?,
        Some(_) => {}
        None => writeln!(log, "=== the agent was stopped (timeout or interrupt)")?,
    }
    Ok(())
}

/// Every experiment of the session, one line each, oldest first, with its change against the best at the time
/// (under the frontier search: against the node it started from, which it names), so that an agent called
/// afresh for each experiment does not repeat what was tried.
fn history(rows: &[Row], search: Search) -> String {
    let mut best: Option<f64> = None;
    let mut out = String::new();
    for (_, r) in crate::report::experiments(rows) {
        let parent = r.extra.as_ref().and_then(|e| e.parent);
        let run = match r.extra.as_ref() {
            Some(e) => {
                let from = match (search, parent) {
                    (Search::Frontier, Some(p)) => format!(", from run {p}"),
                    _ => String::new(),
                };
                match e.worker {
                    Some(w) => format!("{} (worker {w}{from})", e.run),
                    None if from.is_empty() => e.run.to_string(),
                    None => format!("{} ({})", e.run, &from[2..]),
                }
            }
            None => "-".to_string(),
        };
        let against = match search {
            Search::Greedy => best,
            Search::Frontier => parent.and_then(|p| results::experiment_row(rows, p)).map(|p| p.val_bpb),
        };
        let result = match r.status {
            Status::Crash => {
                let reason = r.extra.as_ref().map_or("", |e| e.reason.as_str());
                format!("crash ({})", reason.chars().take(100).collect::<String>())
            }
            _ => match against {
                Some(b) => format!("{} {:.6} ({:+.6})", r.status, r.val_bpb, r.val_bpb - b),
                None => format!("{} {:.6}", r.status, r.val_bpb),
            },
        };
        if r.status == Status::Keep {
            best = Some(r.val_bpb);
        }
        out += &format!("- run {run}: {result}: {}\n", r.description);
    }
    out
}

/// The agent's prompt: program.md, then the session's state in plain words.
fn build_prompt(
    worker: &Worker,
    opts: &LoopOptions,
    description: &Path,
    feedback: Option<&str>,
    compile_errors: Option<&str>,
) -> Result<String> {
    let rows = results::read(&worker.session.results)?.rows;
    let settings = &worker.session.settings;
    let project = &worker.session.project;
    let metric = &settings.metric;
    let editable = project.editable.describe();
    let mut p = opts.program.clone();
    p += "\n\n---\n\n# Current state (written by `autoresearch loop`)\n\n";
    p += &format!("- Repository: {} (branch {}). Edit only {editable}. ", worker.root.display(), settings.branch);
    p += &match &project.commands {
        None => format!("Profile {}, time budget {} s.\n", settings.profile, settings.time_budget),
        Some(c) => format!(
            "The metric is `{}` ({}); the training is stopped after {} s.\n",
            metric.name,
            metric.goal.phrase(),
            c.train.timeout.as_secs_f64()
        ),
    };
    let described = |best: &Best| {
        let what = results::experiment_row(&rows, best.run);
        format!(
            "{} {:.6}, commit {}, run {}: {}",
            metric.name,
            best.val_bpb,
            &best.commit[..7.min(best.commit.len())],
            best.run,
            what.map_or("", |r| r.description.as_str())
        )
    };
    match (&worker.journal.best, settings.search) {
        (Some(best), Search::Greedy) => p += &format!("- Best so far: {}\n", described(best)),
        (Some(start), Search::Frontier) => {
            p += &format!(
                "- Search: frontier. Your change starts from the node {} and is kept if it beats that node (by the \
                 keep rule below); a kept change becomes a node others may start from.\n",
                described(start)
            );
            p += "- Its lineage, the kept changes from the baseline to it:\n";
            for (i, row) in crate::tree::lineage(&rows, start.run).iter().enumerate() {
                let run = row.extra.as_ref().map_or(0, |e| e.run);
                p += &format!("  {}. run {run}: {} ({} {:.6})\n", i + 1, row.description, metric.name, row.val_bpb);
            }
            if let Some(best) = worker.session.best() {
                p += &format!("- The session's best node: {}\n", described(&best));
            }
        }
        (None, _) => p += "- No result yet.\n",
    }
    let decider = opts.experiment.decider.resolved(&worker.session.dir, &settings.profile, settings.time_budget)?;
    p += &format!("- Keep rule: {}.\n", decider.label);
    if let Some(k) = worker.label().filter(|_| opts.workers > 1) {
        let start = match settings.search {
            Search::Greedy => "the best at its start",
            Search::Frontier => "a node of the frontier",
        };
        p += &format!(
            "- You are worker {k}; other workers run experiments at the same time, each from {start}. Pick an idea \
             that differs from theirs.\n"
        );
        let others = worker.session.others(k);
        if !others.is_empty() {
            p += "\nThe other workers are trying right now:\n\n";
            for (w, run, description) in others {
                p += &format!("- worker {w}, run {run}: {description}\n");
            }
        }
    }
    let history = history(&rows, settings.search);
    if !history.is_empty() {
        let better = match metric.goal {
            Goal::Lower => "negative",
            Goal::Higher => "positive",
        };
        p += &format!(
            "\nEvery experiment so far, oldest first ({}, and its change against {}: {better} is better):\n\n",
            metric.name,
            match settings.search {
                Search::Greedy => "the best at the time",
                Search::Frontier => "the node it started from",
            }
        );
        p += &history;
    }
    let notes_path = worker.session.dir.join(NOTES_FILE);
    let notes = std::fs::read_to_string(&notes_path).unwrap_or_default();
    p += &format!(
        "\nNotes kept across calls in `{}` (yours to append to: hypotheses, what worked, what to try next):\n",
        notes_path.display()
    );
    if notes.trim().is_empty() {
        p += "(none yet)\n";
    } else {
        let start = notes.len().saturating_sub(NOTES_IN_PROMPT);
        let start = (start..notes.len()).find(|&i| notes.is_char_boundary(i)).unwrap_or(notes.len());
        let cut = if start > 0 { "(earlier notes cut)\n" } else { "" };
        p += &format!("```\n{cut}{}\n```\n", notes[start..].trim_end());
    }
    if let Some(errors) = compile_errors {
        p += &format!(
            "\n**Your change does not build.** Fix {editable} (keep the idea if you can). The {} says:\n\n```\n{errors}\n```\n",
            if project.commands.is_some() { "setup command" } else { "compiler" }
        );
    } else if let Some(f) = feedback {
        p += &format!("\n{f}\n");
    }
    p += &format!(
        "\nNow make one change to {editable}, write a one-line description of it to `{}`, and stop. \
         The harness commits, builds, runs and records it.\n",
        description.display()
    );
    Ok(p)
}
