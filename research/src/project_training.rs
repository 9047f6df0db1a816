//! One training of a project of the user's own ([`crate::project`]): its training command, then its evaluation
//! command where it has one, each run by `sh -c` in the worker's tree, sandboxed, journaled and stopped at its
//! limit; the metric read from the evaluation's output (else the training's). Its checks run before a keep
//! ([`run_checks`]). Every command gets `AUTORESEARCH_SEED`, `AUTORESEARCH_OUTPUT` (the training's own folder,
//! the only one it may write besides `sandbox.writable`), a private `TMPDIR` and, where set,
//! `AUTORESEARCH_TIME_BUDGET`.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use anyhow::Result;
use autoresearch_harness::handover::TMP;
use autoresearch_harness::sandbox::Policy;

use crate::metric::Metric;
use crate::process::Role;
use crate::project::{read_metric, Commands, Step};
use crate::trainer::{pin_to_cpus, DeviceChoice, Trainer};
use crate::training::{
    append, device_writes, fresh_files, run_phase, session_files, tail, Begun, Crash, Ended, Measured, Processes,
    TrainingFiles, TrainingOutcome, TAIL_LINES,
};

/// Where a project's command runs: the worker's tree, the session's repository (whose files no command reads),
/// the training's output folder, and its seed.
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
/// is a worktree inside the session's folder, everything there but the way to that tree.
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

fn policy_for(commands: &Commands, trainer: &Trainer, place: &Place, access: Access) -> Policy {
    let mut deny_read = unreadable_session_files(place.repository, place.tree);
    if !matches!(access, Access::Evaluation) {
        for p in &commands.held_out {
            deny_read.push(place.tree.join(p));
            deny_read.push(place.repository.join(p));
        }
        deny_read.sort();
        deny_read.dedup();
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
        no_inet_sockets: !commands.network && !cuda,
        ..Policy::default()
    }
    .unless_turned_off()
}

/// The command that runs `step` sandboxed by `policy` (through the launcher the trainer has, where it has one),
/// in the worker's tree, with the harness's settings in its environment.
fn command(commands: &Commands, trainer: &Trainer, place: &Place, step: &Step, policy: &Policy) -> Result<Command> {
    let mut cmd = match &trainer.build_sandbox {
        Some((launcher, _)) => {
            let mut cmd = Command::new(launcher);
            cmd.args(["sandboxed", "--policy", &serde_json::to_string(policy)?, "--", "sh", "-c", &step.command]);
            cmd
        }
        None => {
            let mut cmd = Command::new("sh");
            cmd.args(["-c", &step.command]);
            cmd
        }
    };
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

/// Why a command that ended with `status` failed, if it did, and whether the cause may lie outside the files.
fn failure(status: ExitStatus) -> Option<(String, bool)> {
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
    let trained = train_begun(commands, metric, trainer, place, files, timeout, procs);
    let finished = procs.finish();
    let trained = trained?;
    finished?;
    Ok(trained)
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
    let started = Instant::now();
    let _temporary = fresh_files(files)?;
    let deadline = (started + timeout, format!("timeout: killed after {:.0} s", timeout.as_secs_f64()));
    let read_log = || String::from_utf8_lossy(&std::fs::read(&files.log).unwrap_or_default()).into_owned();
    let crash = |reason: String, retryable: bool| Crash { reason, retryable, log_tail: tail(&read_log(), TAIL_LINES) };
    let done = |result, interrupted| Ok(TrainingOutcome { result, wall: started.elapsed().as_secs_f64(), interrupted });
    match procs.begin(timeout)? {
        Begun::Ready => {}
        Begun::Interrupted => return done(Err(crash("interrupted".into(), true)), true),
        Begun::Failed(why) => return done(Err(crash(why, false)), false),
    }
    let failed = |procs: &mut dyn Processes, status| match procs.failure() {
        Some(why) => Some((why, true)),
        None => failure(status),
    };

    let policy = policy_for(commands, trainer, place, Access::Training);
    let cmd = command(commands, trainer, place, &commands.train, &policy)?;
    let (ended, training_seconds) =
        run_step(procs, cmd, &commands.train, Role::Training, &files.log, deadline.clone())?;
    match ended {
        Ended::Interrupted => return done(Err(crash("interrupted".into(), true)), true),
        Ended::OverTime(why) => return done(Err(crash(why, true)), false),
        Ended::Exited(status) => {
            if let Some((why, retryable)) = failed(procs, status) {
                return done(Err(crash(format!("the training failed: {why}"), retryable)), false);
            }
        }
    }
    let training_output = read_log();
    let (output, source, evaluation_seconds) = match &commands.evaluate {
        None => (training_output, format!("the training (`{}`)", commands.train.command), 0.0),
        Some(evaluate) => {
            let policy = policy_for(commands, trainer, place, Access::Evaluation);
            std::fs::create_dir_all(place.tmp())?;
            let cmd = command(commands, trainer, place, evaluate, &policy)?;
            let (ended, seconds) = run_step(procs, cmd, evaluate, Role::Evaluation, &files.log, deadline)?;
            match ended {
                Ended::Interrupted => return done(Err(crash("interrupted".into(), true)), true),
                Ended::OverTime(why) => return done(Err(crash(why, true)), false),
                Ended::Exited(status) => {
                    if let Some((why, retryable)) = failed(procs, status) {
                        return done(Err(crash(format!("the evaluation failed: {why}"), retryable)), false);
                    }
                }
            }
            let all = read_log();
            let own = all.get(training_output.len()..).unwrap_or_default().to_string();
            (own, format!("the evaluation (`{}`)", evaluate.command), seconds)
        }
    };
    let value = match read_metric(&output, &metric.name, &source) {
        Ok(v) => v,
        Err(why) => return done(Err(crash(why, false)), false),
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
    done(Ok(Measured { value, memory_gb: 0.0 }), false)
}

/// Runs the project's checks on the tree as trained (its output folder in `place`), one after the other, their
/// output in `log`: None when all pass, else why the first that failed did. Each runs sandboxed as an evaluation
/// without the held-out paths, journaled through `procs`, stopped at its limit.
pub fn run_checks(
    commands: &Commands,
    trainer: &Trainer,
    place: &Place,
    log: &Path,
    procs: &mut dyn Processes,
) -> Result<Option<Crash>> {
    std::fs::write(log, "")?;
    let crash = |reason: String, retryable: bool| {
        let text = String::from_utf8_lossy(&std::fs::read(log).unwrap_or_default()).into_owned();
        Ok(Some(Crash { reason, retryable, log_tail: tail(&text, TAIL_LINES) }))
    };
    let no_deadline = (Instant::now() + Duration::from_secs(365 * 24 * 3600), String::new());
    for check in &commands.checks {
        std::fs::create_dir_all(place.tmp())?;
        let policy = policy_for(commands, trainer, place, Access::Check);
        let cmd = command(commands, trainer, place, check, &policy)?;
        let (ended, _) = run_step(procs, cmd, check, Role::Check, log, no_deadline.clone())?;
        let _ = std::fs::remove_dir_all(place.tmp());
        match ended {
            Ended::Interrupted => return crash("interrupted".into(), true),
            Ended::OverTime(why) => return crash(format!("check `{}` did not finish: {why}", check.name), false),
            Ended::Exited(status) => {
                if let Some((why, retryable)) = failure(status) {
                    return crash(format!("check `{}` failed: {why}", check.name), retryable);
                }
            }
        }
    }
    Ok(None)
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
    let mut deny_read = unreadable_session_files(repository, tree);
    for p in &commands.held_out {
        deny_read.push(tree.join(p));
        deny_read.push(repository.join(p));
    }
    let policy = Policy { deny_read, write: vec![PathBuf::from("/")], allow_network: true, ..Policy::default() }
        .unless_turned_off();
    let mut cmd = match &trainer.build_sandbox {
        Some((launcher, _)) => {
            let mut cmd = Command::new(launcher);
            cmd.args(["sandboxed", "--policy", &serde_json::to_string(&policy)?, "--", "sh", "-c", &setup.command]);
            cmd
        }
        None => {
            let mut cmd = Command::new("sh");
            cmd.args(["-c", &setup.command]);
            cmd
        }
    };
    let file = std::fs::File::create(log)?;
    cmd.current_dir(tree).stdin(std::process::Stdio::null()).stdout(file.try_clone()?).stderr(file);
    cmd.envs(trainer.env.iter().map(|(k, v)| (k, v)));
    let started = Instant::now();
    let mut child = spawn(&mut cmd)?;
    let status = crate::process::wait_or_kill(&mut child, || started.elapsed() > setup.timeout)?;
    let output = String::from_utf8_lossy(&std::fs::read(log).unwrap_or_default()).into_owned();
    Ok(match status {
        Some(status) => match failure(status) {
            None => Ok(output),
            Some((why, _)) => Err(format!("{output}\nthe setup command failed: {why}\n")),
        },
        None => {
            Err(format!("{output}\nthe setup command was stopped at its limit of {} s\n", setup.timeout.as_secs_f64()))
        }
    })
}
