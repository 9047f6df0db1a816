//! The Slurm backend: each training is a Slurm job. The job is allocated with `salloc --no-shell` (one task,
//! one GPU where the session trains on CUDA, a time limit that follows the training's timeout), each phase of
//! the training runs in it as a step (`srun --jobid`), and the job is cancelled when the training ends. The
//! repository and the cache must be on a filesystem the nodes share; the steps see the submitting user's
//! environment and working folder.
//!
//! Jobs are named uniquely and the names go into the worker's journal before they are submitted, so that the next
//! command after a kill (`loop`, `run`, `noise`) cancels what its predecessor left (pending or running). A controller that does not
//! answer is waited for: the experiment under way stays in the journal and goes on when it is back.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::backend::{Acquired, Backend, Placement, WorkerSetup};
use crate::process::{wait_or_kill, Role};
use crate::trainer::DeviceChoice;
use crate::Worker;

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

/// The backend: each training a job.
pub struct Slurm(pub SlurmOptions);

impl Backend for Slurm {
    /// Allocates the training's job: its name in the journal first; while the controller does not answer,
    /// tries again.
    fn acquire(&self, worker: &mut Worker, interrupted: &dyn Fn() -> bool, limit: Duration) -> Result<Acquired> {
        let name = format!("autoresearch-{}", autoresearch_harness::fsutil::nonce()?.get(..12).unwrap_or_default());
        worker.journal.slurm_jobs.push(name.clone());
        worker.save_journal()?;
        let mut waiting = false;
        loop {
            let submitted = Instant::now();
            let mut cmd = allocate_command(&self.0, &name, limit);
            cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
            let (mut child, recorded) = worker.spawn(&mut cmd, Role::Training).context("running salloc")?;
            let status = wait_or_kill(&mut child, interrupted)?;
            worker.forget(&recorded)?;
            let mut text = String::new();
            if let Some(mut out) = child.stdout.take() {
                let _ = out.read_to_string(&mut text);
            }
            if let Some(mut err) = child.stderr.take() {
                let _ = err.read_to_string(&mut text);
            }
            if status.is_none() {
                let _ = cancel(std::slice::from_ref(&name));
                return Ok(Acquired::Interrupted);
            }
            if let Some(id) = granted_job(&text) {
                if waiting {
                    worker.say("slurm: the controller answers again; the experiment goes on");
                }
                worker.say(&format!(
                    "slurm: job {id} started {:.2} s after it was submitted",
                    submitted.elapsed().as_secs_f64()
                ));
                return Ok(Acquired::Ready(Box::new(Job { id, name })));
            }
            if controller_unreachable(&text) {
                if !waiting {
                    waiting = true;
                    let said = text.lines().last().unwrap_or_default().trim().to_string();
                    worker.say(&format!(
                        "slurm: the controller does not answer ({said}): waiting for it (nothing is lost; the \
                         experiment stays in the journal)"
                    ));
                }
                let until = Instant::now() + CONTROLLER_RETRY;
                while Instant::now() < until && !interrupted() {
                    std::thread::sleep(Duration::from_millis(50));
                }
                continue;
            }
            let _ = cancel(std::slice::from_ref(&name));
            worker.journal.slurm_jobs.retain(|n| n != &name);
            worker.save_journal()?;
            let error = text.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("no output").trim();
            return Ok(Acquired::Failed(format!("slurm: no job: {error}")));
        }
    }

    fn setups(&self, n: usize, gpus: Option<&[String]>, _: DeviceChoice) -> Result<Vec<WorkerSetup>> {
        if gpus.is_some() {
            bail!("--gpus is for the local backend: Slurm gives each job its GPU");
        }
        slurm_setups(n, &self.0)
    }

    fn is_local(&self) -> bool {
        false
    }
}

impl Placement for Job {
    fn wrap(&self, cmd: Command) -> Command {
        step_command(self, &cmd)
    }

    fn failure(&self) -> Option<String> {
        let (state, reason) = job_state(self)?;
        job_failure(&state, &reason).map(|why| format!("{why}, job {}", self.id))
    }

    fn release(self: Box<Self>, worker: &mut Worker) -> Result<()> {
        match cancel(std::slice::from_ref(&self.name)) {
            Ok(()) => {
                worker.journal.slurm_jobs.retain(|n| n != &self.name);
                worker.save_journal()
            }
            // It stays in the journal: the next start cancels it.
            Err(e) => {
                worker.say(&format!("slurm: could not cancel job {} ({e:#}); the next start will", self.id));
                Ok(())
            }
        }
    }
}

/// `n` workers whose trainings are Slurm jobs: each job has its GPU from Slurm, or on the CPU its CPUs as the
/// training's thread count.
pub fn slurm_setups(n: usize, opts: &SlurmOptions) -> Result<Vec<WorkerSetup>> {
    if n == 0 {
        bail!("--workers must be at least 1");
    }
    let setup = match (opts.gpu, opts.cpus) {
        (true, _) => WorkerSetup { env: Vec::new(), cpus: Vec::new(), label: "Slurm jobs, 1 GPU".into() },
        (false, cpus) => {
            let threads = cpus.unwrap_or(1);
            WorkerSetup {
                env: vec![("OMP_NUM_THREADS".into(), threads.to_string())],
                cpus: Vec::new(),
                label: format!("Slurm jobs, {threads} CPU{}", if threads == 1 { "" } else { "s" }),
            }
        }
    };
    Ok(vec![setup; n])
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
