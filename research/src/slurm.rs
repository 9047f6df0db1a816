//! The Slurm backend: each training is a Slurm job. The job is allocated with `salloc --no-shell` (one task,
//! one GPU where the session trains on CUDA, a time limit that follows the training's timeout), each phase of
//! the training runs in it as a step (`srun --jobid`), and the job is cancelled when the training ends. The
//! repository and the cache must be on a filesystem the nodes share; the steps see the submitting user's
//! environment and working folder.
//!
//! Jobs are named uniquely and the names go into the loop's journal before they are submitted, so that a loop
//! started after a kill cancels what its predecessor left (pending or running). A controller that does not
//! answer is waited for: the experiment under way stays in the journal and goes on when it is back.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// How trainings are submitted.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SlurmOptions {
    pub partition: Option<String>,
    pub account: Option<String>,
    /// CPUs per job (`--cpus-per-task`), where given.
    pub cpus: Option<usize>,
    /// One GPU per job (`--gres=gpu:1`).
    pub gpu: bool,
    /// More `salloc` options, as given.
    pub args: Vec<String>,
}

/// Where trainings run.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum Backend {
    /// Processes on this machine.
    #[default]
    Local,
    Slurm(SlurmOptions),
}

/// Seconds between tries while the controller does not answer.
pub const CONTROLLER_RETRY: Duration = Duration::from_secs(2);

/// An allocated job.
#[derive(Clone, Debug, PartialEq)]
pub struct Job {
    pub id: String,
    pub name: String,
}

/// The `salloc` command that allocates a job named `name` for `limit`.
pub fn allocate_command(opts: &SlurmOptions, name: &str, limit: Duration) -> Command {
    let mut cmd = Command::new("salloc");
    // Slurm's limits are in minutes (rounded up here), and the training's own timeout comes first.
    let minutes = (limit.as_secs_f64() / 60.0).ceil().max(1.0) as u64 + 1;
    cmd.args(["--no-shell", "--ntasks=1", "--nodes=1", &format!("--job-name={name}"), &format!("--time={minutes}")]);
    if opts.gpu {
        cmd.arg("--gres=gpu:1");
    }
    if let Some(c) = opts.cpus {
        cmd.arg(format!("--cpus-per-task={c}"));
    }
    if let Some(p) = &opts.partition {
        cmd.arg(format!("--partition={p}"));
    }
    if let Some(a) = &opts.account {
        cmd.arg(format!("--account={a}"));
    }
    cmd.args(&opts.args);
    cmd
}

/// The job id in salloc's output ("salloc: Granted job allocation 123").
pub fn granted_job(output: &str) -> Option<String> {
    output.lines().find_map(|l| {
        let id = l.split("Granted job allocation").nth(1)?.trim();
        (!id.is_empty() && id.chars().all(|c| c.is_ascii_digit())).then(|| id.to_string())
    })
}

/// Whether Slurm's words say the controller could not be reached (rather than refusing the request).
pub fn controller_unreachable(output: &str) -> bool {
    let text = output.to_lowercase();
    ["unable to contact slurm controller", "connection refused", "socket timed out", "zero bytes were transmitted"]
        .iter()
        .any(|s| text.contains(s))
}

/// `cmd` as a step of `job`: the same program, arguments, environment and folder, run by `srun`.
pub fn step_command(job: &Job, cmd: &Command) -> Command {
    let mut srun = Command::new("srun");
    srun.args([&format!("--jobid={}", job.id), "--ntasks=1", "--nodes=1", "--quiet", "--kill-on-bad-exit=1"])
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => srun.env(k, v),
            None => srun.env_remove(k),
        };
    }
    if let Some(dir) = cmd.get_current_dir() {
        srun.current_dir(dir);
    }
    srun
}

/// A job's state and reason from `scontrol show job` (None where Slurm no longer knows it).
pub fn job_state(job: &Job) -> Option<(String, String)> {
    let out = Command::new("scontrol").args(["show", "job", "--oneliner", &job.id]).output().ok()?;
    parse_job_state(&String::from_utf8_lossy(&out.stdout))
}

pub fn parse_job_state(text: &str) -> Option<(String, String)> {
    let field = |name: &str| text.split_whitespace().find_map(|w| w.strip_prefix(name)).map(str::to_string);
    Some((field("JobState=")?, field("Reason=").unwrap_or_default()))
}

/// Why a step failed, where the job's state says more than the exit status: a job cancelled, timed out, whose
/// node failed or that was preempted. None while the job still runs (then the training itself failed).
pub fn job_failure(state: &str, reason: &str) -> Option<String> {
    if matches!(state, "RUNNING" | "COMPLETING" | "CONFIGURING" | "PENDING" | "COMPLETED") {
        return None;
    }
    let why = if reason.is_empty() || reason == "None" { String::new() } else { format!(" ({reason})") };
    Some(format!("slurm job {state}{why}"))
}

/// Cancels the jobs of these names (pending or running); Err where the controller cannot be reached.
pub fn cancel(names: &[String]) -> Result<()> {
    if names.is_empty() {
        return Ok(());
    }
    let out = Command::new("scancel")
        .arg(format!("--name={}", names.join(",")))
        .output()
        .context("running scancel (is Slurm's client installed here?)")?;
    if !out.status.success() {
        bail!("scancel failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Waits until no job of these names is left in the queue (at most `patience`).
pub fn wait_gone(names: &[String], patience: Duration) {
    let deadline = Instant::now() + patience;
    while Instant::now() < deadline {
        let out = Command::new("squeue").args(["-h", "-o", "%i", &format!("--name={}", names.join(","))]).output();
        match out {
            Ok(o) if o.status.success() && String::from_utf8_lossy(&o.stdout).trim().is_empty() => return,
            _ => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn salloc_asks_for_one_task_a_gpu_and_the_timeout_in_minutes() {
        let opts = SlurmOptions {
            partition: Some("gpu".into()),
            account: Some("lab".into()),
            cpus: Some(8),
            gpu: true,
            args: vec!["--qos=high".into()],
        };
        let cmd = allocate_command(&opts, "ar-1", Duration::from_secs(720));
        let args: Vec<String> = cmd.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
        assert_eq!(
            args,
            [
                "--no-shell",
                "--ntasks=1",
                "--nodes=1",
                "--job-name=ar-1",
                "--time=13",
                "--gres=gpu:1",
                "--cpus-per-task=8",
                "--partition=gpu",
                "--account=lab",
                "--qos=high"
            ]
        );
    }

    #[test]
    fn slurms_words_are_read() {
        let out = "salloc: Pending job allocation 17\nsalloc: job 17 queued and waiting for resources\n\
                   salloc: job 17 has been allocated resources\nsalloc: Granted job allocation 17\n";
        assert_eq!(granted_job(out).as_deref(), Some("17"));
        assert_eq!(granted_job("salloc: error: invalid partition"), None);
        assert!(controller_unreachable(
            "salloc: error: Job submit/allocate failed: Unable to contact slurm controller (connect failure)"
        ));
        assert!(!controller_unreachable("salloc: error: Invalid partition name specified"));
        let line = "JobId=17 JobName=ar-1 UserId=root(0) JobState=CANCELLED Reason=None Dependency=(null)";
        assert_eq!(parse_job_state(line), Some(("CANCELLED".into(), "None".into())));
        assert_eq!(job_failure("CANCELLED", "None").as_deref(), Some("slurm job CANCELLED"));
        assert_eq!(job_failure("NODE_FAIL", "NodeDown").as_deref(), Some("slurm job NODE_FAIL (NodeDown)"));
        assert_eq!(job_failure("RUNNING", "None"), None);
    }

    #[test]
    fn a_step_runs_the_same_command_in_the_job() {
        let mut cmd = Command::new("/bin/train");
        cmd.args(["train", "--handover", "/x"]).env("AUTORESEARCH_SEED", "43").current_dir("/repo");
        let job = Job { id: "17".into(), name: "ar-1".into() };
        let step = step_command(&job, &cmd);
        let args: Vec<String> = step.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
        assert_eq!(args[0], "--jobid=17");
        assert_eq!(&args[5..], ["/bin/train", "train", "--handover", "/x"]);
        assert_eq!(step.get_current_dir(), Some(std::path::Path::new("/repo")));
        assert!(step.get_envs().any(|(k, v)| k == "AUTORESEARCH_SEED" && v == Some("43".as_ref())));
    }
}
