//! One training of a project of the user's own ([`crate::project`]): its training command, then its evaluation
//! command where it has one, each run by `sh -c` in the worker's tree, sandboxed, journaled and stopped at its
//! limit; the metric read from the evaluation's output (else the training's). Its checks run before a keep
//! ([`run_checks`]). Every command gets `AUTORESEARCH_SEED`, `AUTORESEARCH_OUTPUT` (the training's own folder,
//! the only one it may write besides `sandbox.writable`), a private `TMPDIR` and, where set,
//! `AUTORESEARCH_TIME_BUDGET`.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use autoresearch_harness::handover::TMP;
use autoresearch_harness::sandbox::Policy;

use crate::metric::Metric;
use crate::process::{CappedOutput, Role, LOG_LIMIT};
use crate::project::{read_metric, Commands, Step};
use crate::trainer::{pin_to_cpus, DeviceChoice, Trainer};
use crate::training::{
    append, device_writes, finishing, fresh_files, run_phase, session_files, Attempt, Crash, Ended, Measured,
    Processes, TrainingFiles, TrainingOutcome, OUTPUT_PATIENCE,
};

/// Where a project's command runs: the worker's tree, the session's repository (whose session files, results.tsv
/// and `.autoresearch/`, no command reads), the training's output folder, and its seed.
pub struct Place<'a> {
    pub tree: &'a Path,
    pub repository: &'a Path,
    pub output: &'a Path,
    pub seed: u64,
}

impl Place<'_> {
    fn tmp(&self) -> PathBuf {
        self.output.join(TMP)
    }
}

/// What each kind of command may read and write.
enum Access {
    /// The training: not the held-out paths; writes its output folder and `sandbox.writable`.
    Training,
    /// The evaluation: reads the held-out paths and the output folder; writes only its temporary folder.
    Evaluation,
    /// A check: as the evaluation, but not the held-out paths.
    Check,
}

/// What the loop keeps in the repository, which no command reads: [`session_files`], but where the worker's tree
/// is a worktree inside the session's folder, everything there but the way to that tree. For worker 1's tree
/// `.autoresearch/workers/1/tree`: every entry of `.autoresearch` but `workers`, of `workers` but `1`, of `1` but
/// `tree`. What is created there later (a run folder, another worker's) is unreadable too: the sandbox grants
/// only what existed when it was made.
fn unreadable_session_files(repository: &Path, tree: &Path) -> Vec<PathBuf> {
    let state = repository.join(crate::STATE_DIR);
    let Ok(inside) = tree.strip_prefix(&state) else { return session_files(repository) };
    let mut deny: Vec<PathBuf> = session_files(repository).into_iter().filter(|p| *p != state).collect();
    let mut folder = state;
    for part in inside.components() {
        let entries = std::fs::read_dir(&folder).into_iter().flatten().flatten();
        deny.extend(entries.map(|e| e.path()).filter(|p| p.file_name() != Some(part.as_os_str())));
        folder = folder.join(part);
    }
    deny
}

/// What no command of a project reads: the session's files, and git's folder (every version of every file,
/// held-out data and other workers' changes included).
fn unreadable(commands: &Commands, repository: &Path, tree: &Path) -> Vec<PathBuf> {
    let mut deny = unreadable_session_files(repository, tree);
    deny.push(commands.git_dir.clone());
    deny
}

/// The held-out paths as the worker's tree and the repository hold them (one folder for worker 0).
fn held_out(commands: &Commands, repository: &Path, tree: &Path) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = commands.held_out.iter().flat_map(|p| [tree.join(p), repository.join(p)]).collect();
    paths.sort();
    paths.dedup();
    paths
}

fn policy_for(commands: &Commands, trainer: &Trainer, place: &Place, access: Access) -> Policy {
    let mut deny_read = unreadable(commands, place.repository, place.tree);
    if !matches!(access, Access::Evaluation) {
        deny_read.extend(held_out(commands, place.repository, place.tree));
    }
    let cuda = trainer.device == DeviceChoice::Cuda;
    if !cuda {
        // Files left there by an earlier training would be read back.
        deny_read.push(PathBuf::from("/dev/shm"));
    }
    let mut write = device_writes(cuda);
    match access {
        Access::Training => {
            write.push(place.output.to_path_buf());
            write.extend(commands.writable.iter().map(|p| place.tree.join(p)));
        }
        Access::Evaluation | Access::Check => write.push(place.tmp()),
    }
    Policy {
        deny_read,
        // The output folder lies beneath the session's, which is otherwise unreadable.
        read: vec![place.output.to_path_buf()],
        write,
        allow_network: commands.network,
        unix_sockets_only: !commands.network && !cuda,
        // A project's commands may change files' modes and times (a build, a package manager): not refused.
        keep_metadata: false,
        ..Policy::cpu_confinement(!cuda)
    }
    .unless_turned_off()
}

/// The command that runs `step` confined by `policy` (through the trainer's launcher, where it has one), in the
/// worker's tree, with the harness's settings in its environment.
fn command(commands: &Commands, trainer: &Trainer, place: &Place, step: &Step, policy: &Policy) -> Result<Command> {
    let mut cmd = shell(trainer, policy, &step.command)?;
    cmd.current_dir(place.tree)
        .env("AUTORESEARCH_SEED", place.seed.to_string())
        .env("AUTORESEARCH_OUTPUT", place.output)
        .env("TMPDIR", place.tmp());
    if let Some(b) = commands.budget {
        cmd.env("AUTORESEARCH_TIME_BUDGET", b.to_string());
    }
    cmd.envs(trainer.env.iter().map(|(k, v)| (k, v)));
    pin_to_cpus(&mut cmd, &trainer.cpus);
    Ok(cmd)
}

/// `sh -c line`, confined by `policy` and supervised (a project's commands never run without the launcher).
fn shell(trainer: &Trainer, policy: &Policy, line: &str) -> Result<Command> {
    if trainer.launcher.is_none() {
        bail!("a project's commands run through `autoresearch sandboxed`, and this trainer has no launcher");
    }
    let mut cmd = trainer.confined(Some(policy), "sh")?;
    cmd.args(["-c", line]);
    Ok(cmd)
}

/// Why a command that ended with `status` failed, if it did, and whether the cause may lie outside the files.
fn exit_failure(status: ExitStatus) -> Option<(String, bool)> {
    use std::os::unix::process::ExitStatusExt;
    if status.success() {
        return None;
    }
    Some(match status.signal() {
        Some(9) => ("killed (signal 9: out of memory?)".into(), true),
        Some(15) => ("killed by signal 15".into(), true),
        Some(sig) => (format!("killed by signal {sig}"), false),
        None => (format!("exit code {}", status.code().unwrap_or(-1)), false),
    })
}

/// Runs `step` to its end or its limit, its output appended to `log` after a heading line: how it ended, and its
/// seconds. `deadline` is the hard timeout of the whole training.
fn run_step(
    procs: &mut dyn Processes,
    cmd: Command,
    step: &Step,
    role: Role,
    log: &Path,
    deadline: (Instant, String),
) -> Result<(Ended, f64)> {
    append(log, &format!("=== {}: {}\n", step.name, step.command))?;
    let over = format!("over time: the {} was stopped at its limit of {} s", step.name, step.timeout.as_secs_f64());
    run_phase(procs, cmd, role, log, None, Some((step.timeout, over)), deadline)
}

/// Trains once (and evaluates) with the seed in `place`, in `files` (its hand-over folder is the output
/// folder): the metric, or why it crashed. `timeout` bounds the whole.
pub fn train_project(
    commands: &Commands,
    metric: &Metric,
    trainer: &Trainer,
    place: &Place,
    files: &TrainingFiles,
    timeout: Duration,
    procs: &mut dyn Processes,
) -> Result<TrainingOutcome> {
    finishing(procs, |procs| train_begun(commands, metric, trainer, place, files, timeout, procs))
}

fn train_begun(
    commands: &Commands,
    metric: &Metric,
    trainer: &Trainer,
    place: &Place,
    files: &TrainingFiles,
    timeout: Duration,
    procs: &mut dyn Processes,
) -> Result<TrainingOutcome> {
    let attempt = Attempt::new(&files.log);
    let started = attempt.started();
    let _temporary = fresh_files(files)?;
    let deadline = (
        started + timeout,
        format!(
            "timeout: the training and its evaluation were stopped after {:.0} s, the limit of the whole (--timeout)",
            timeout.as_secs_f64()
        ),
    );
    if let Some(outcome) = attempt.begin(procs, timeout)? {
        return Ok(outcome);
    }
    // How a step's end ends the training, if it does: interrupted, over time, or failed (where the place it ran
    // knows why, that; else its exit status).
    let stopped = |procs: &mut dyn Processes, ended: Ended, what: &str| -> Option<TrainingOutcome> {
        let (reason, retryable, interrupted) = match ended {
            Ended::Interrupted => ("interrupted".to_string(), true, true),
            Ended::OverTime(why) => (why, true, false),
            Ended::Exited(status) => {
                let (why, retryable) = procs.failure().map(|why| (why, true)).or_else(|| exit_failure(status))?;
                (format!("the {what} failed: {why}"), retryable, false)
            }
        };
        Some(attempt.done(Err(attempt.crash(reason, retryable)), interrupted))
    };

    let policy = policy_for(commands, trainer, place, Access::Training);
    let cmd = command(commands, trainer, place, &commands.train, &policy)?;
    let (ended, training_seconds) =
        run_step(procs, cmd, &commands.train, Role::Training, &files.log, deadline.clone())?;
    if let Some(outcome) = stopped(procs, ended, "training") {
        return Ok(outcome);
    }
    let (output, source, evaluation_seconds) = match &commands.evaluate {
        None => {
            let log = String::from_utf8_lossy(&std::fs::read(&files.log).unwrap_or_default()).into_owned();
            (log, format!("the training (`{}`)", commands.train.command), 0.0)
        }
        Some(evaluate) => {
            let policy = policy_for(commands, trainer, place, Access::Evaluation);
            // A fresh temporary folder: what the training left in its own is not the evaluation's.
            let _ = std::fs::remove_dir_all(place.tmp());
            std::fs::create_dir_all(place.tmp())?;
            let cmd = command(commands, trainer, place, evaluate, &policy)?;
            // The metric is read from the evaluation's own output: the log from here on.
            let training_bytes = std::fs::metadata(&files.log).map_or(0, |m| m.len() as usize);
            let (ended, seconds) = run_step(procs, cmd, evaluate, Role::Evaluation, &files.log, deadline)?;
            if let Some(outcome) = stopped(procs, ended, "evaluation") {
                return Ok(outcome);
            }
            let all = std::fs::read(&files.log).unwrap_or_default();
            let own = String::from_utf8_lossy(all.get(training_bytes..).unwrap_or_default()).into_owned();
            (own, format!("the evaluation (`{}`)", evaluate.command), seconds)
        }
    };
    let value = match read_metric(&output, &metric.name, &source) {
        Ok(v) => v,
        Err(why) => return Ok(attempt.done(Err(attempt.crash(why, false)), false)),
    };
    append(
        &files.log,
        &format!(
            "---\n{}: {value}\ntraining_seconds: {training_seconds:.1}\nevaluation_seconds: {evaluation_seconds:.1}\n\
             total_seconds: {:.1}\nseed: {}\n",
            metric.name,
            started.elapsed().as_secs_f64(),
            place.seed
        ),
    )?;
    Ok(attempt.done(Ok(Measured { value, memory_gb: 0.0 }), false))
}

/// How a project's checks went.
pub enum Checked {
    Passed,
    /// The first that failed, and why.
    Failed(Crash),
    Interrupted,
}

/// Runs the project's checks on the tree as trained (its output folder in `place`), one after the other, their
/// output in `log`. Each runs sandboxed as an evaluation without the held-out paths, journaled through `procs`,
/// stopped at its own limit (the whole training's has passed).
pub fn run_checks(
    commands: &Commands,
    trainer: &Trainer,
    place: &Place,
    log: &Path,
    procs: &mut dyn Processes,
) -> Result<Checked> {
    std::fs::write(log, "")?;
    let failed = |reason: String, retryable: bool| Ok(Checked::Failed(Crash::with_log(reason, retryable, log)));
    let no_deadline = (Instant::now() + Duration::from_secs(365 * 24 * 3600), String::new());
    for check in &commands.checks {
        std::fs::create_dir_all(place.tmp())?;
        let policy = policy_for(commands, trainer, place, Access::Check);
        let cmd = command(commands, trainer, place, check, &policy)?;
        let (ended, _) = run_step(procs, cmd, check, Role::Check, log, no_deadline.clone())?;
        let _ = std::fs::remove_dir_all(place.tmp());
        match ended {
            Ended::Interrupted => return Ok(Checked::Interrupted),
            // As a training over time: it may be the machine's load, so the identical files get one retry.
            Ended::OverTime(why) => return failed(format!("check `{}` did not finish: {why}", check.name), true),
            Ended::Exited(status) => {
                if let Some((why, retryable)) = exit_failure(status) {
                    return failed(format!("check `{}` failed: {why}", check.name), retryable);
                }
            }
        }
    }
    Ok(Checked::Passed)
}

/// Runs the project's setup in the worker's tree `tree` (sandboxed as the built-in's build is: the held-out paths
/// and the session's files unreadable, writes and network open), started by `spawn`, its output in `log`:
/// Ok(output), or Err(output with why) where it failed or ran past its limit.
pub fn run_setup(
    commands: &Commands,
    setup: &Step,
    trainer: &Trainer,
    tree: &Path,
    repository: &Path,
    log: &Path,
    spawn: &mut dyn FnMut(&mut Command) -> Result<std::process::Child>,
) -> Result<std::result::Result<String, String>> {
    let mut deny_read = unreadable(commands, repository, tree);
    deny_read.extend(held_out(commands, repository, tree));
    let policy = Policy { deny_read, write: vec![PathBuf::from("/")], allow_network: true, ..Policy::default() }
        .unless_turned_off();
    let mut cmd = shell(trainer, &policy, &setup.command)?;
    std::fs::write(log, "").with_context(|| format!("creating {}", log.display()))?;
    let output = CappedOutput::attach(&mut cmd, log, LOG_LIMIT)?;
    cmd.current_dir(tree).stdin(std::process::Stdio::null());
    cmd.envs(trainer.env.iter().map(|(k, v)| (k, v)));
    let started = Instant::now();
    let mut child = spawn(&mut cmd)?;
    drop(cmd);
    let status = crate::process::wait_or_kill(&mut child, || started.elapsed() > setup.timeout)?;
    output.finish(OUTPUT_PATIENCE);
    let output = String::from_utf8_lossy(&std::fs::read(log).unwrap_or_default()).into_owned();
    Ok(match status {
        Some(status) => match exit_failure(status) {
            None => Ok(output),
            Some((why, _)) => Err(format!("{output}\nthe setup command failed: {why}\n")),
        },
        None => {
            Err(format!("{output}\nthe setup command was stopped at its limit of {} s\n", setup.timeout.as_secs_f64()))
        }
    })
}
