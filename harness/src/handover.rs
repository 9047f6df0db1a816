//! How the harness runs the training binary, and what passes between them. The binary runs twice per
//! training, as two processes (three on the CPU):
//!
//! 1. `train`: sandboxed (see [`crate::sandbox`]: the validation data and earlier experiments' files unreadable,
//!    writes only to the hand-over folder, no network), the agent's code trains a model; fixed code saves it to
//!    the hand-over folder as a safetensors checkpoint, with [`TrainingStats`]. One clock: the harness gives the
//!    phase a deadline (its start + the budget + the profile's [`allowance`]) and stops it there; the agent's
//!    `train` must return [`handover_reserve`] seconds before it, so that the checkpoint is saved in time (sealed
//!    within [`sealing_time`]).
//! 2. `evaluate`: fixed code reads the validation rows first, then sandboxes itself (no data readable, no
//!    writes), has the agent's code build the model and loads the checkpoint into it, checks that it is causal,
//!    and computes val_bpb from its logits. The result goes to a file the harness named and the binary opened
//!    before the agent's code ran, with a nonce the harness gave on stdin: [`EvalResult`]. Before a keep the
//!    harness runs it once more on the same checkpoint as an [`AUDIT`] (on the CPU), with many more causality
//!    probes. On the CPU the agent's code does not run in this process: it starts
//! 3. `model`, a child of its own that sandboxes itself further (nothing writable), builds the model, loads the
//!    checkpoint and answers each batch of inputs the evaluation sends with their logits. It never holds a
//!    target, the nonce or the result file.
//!
//! Fixed code supervises each phase (a subreaper outside the sandbox, [`crate::supervisor`]): when the phase
//! ends, every process it started is gone, and the supervisor writes how the phase ended in a status file
//! ([`PhaseStatus`]) that the harness named: crashes are classified by the phase's own error, not by the log; the
//! training's hand-over is sealed and timed by the supervisor. The summary block is then printed by the harness,
//! from these and its own clock.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::sandbox::Policy;

/// The checkpoint in the hand-over folder.
pub const CHECKPOINT: &str = "model.safetensors";
/// The training's own account of itself in the hand-over folder.
pub const TRAINING_STATS: &str = "training.json";
/// The temporary folder ($TMPDIR) of both phases, inside the hand-over folder.
pub const TMP: &str = "tmp";
/// Set to `cuda` where the harness built the binary for the GPU: both phases then stop if they cannot reach
/// it, instead of running on the CPU.
pub const DEVICE_ENV: &str = "AUTORESEARCH_DEVICE";

/// Whether a phase may go on: where the harness asked for CUDA (`asked`, from [`DEVICE_ENV`]) and the process
/// cannot use it, an error that says what to try.
pub fn check_device(asked: Option<&str>, cuda_available: bool) -> Result<()> {
    if asked == Some("cuda") && !cuda_available {
        bail!(
            "the harness asked for the GPU, but this process cannot use it (CUDA's own warning above says why); \
             where the sandbox is the cause on this machine, AUTORESEARCH_SANDBOX=off turns it off"
        );
    }
    Ok(())
}

/// Seconds past the budget that the training phase has, for start-up (loading libtorch, the data and the
/// tokenizer, building the model, the device-batch search) and the checkpoint: fixed per profile, the same for
/// every training file and budget. `h100`: 40 s (CUDA's start-up, its kernels compiled at run time; the
/// deadline at 300 s stays where it was measured on an H200); `small` (and any other): 10 s. The phase's
/// deadline is its start plus the budget plus this; a phase still running then is stopped and is a crash.
pub fn allowance(profile: &str) -> f64 {
    match profile {
        "h100" => 40.0,
        _ => 10.0,
    }
}

/// The second line on the evaluation's stdin (after the nonce) that makes it an audit: the same evaluation with
/// as many altered copies as it takes to catch a leak at 1/256 of the positions with probability 99 %. On its
/// stdin, so that the agent's code cannot tell an audit by the command line or the environment.
pub const AUDIT: &str = "audit";
/// An audit holds about 3.3 times an evaluation's rows at `small` (1,177 altered copies beside 512 rows): its
/// phase has this many times [`evaluation_limit`].
pub const AUDIT_LIMIT_FACTOR: f64 = 4.0;

/// Seconds the evaluation phase has from its start, fixed per profile: `h100` 120 s (its evaluation took 15 s on
/// an H200), `small` (and any other) 180 s (10 s on 2 cores; over 50 s where other work loads them 3 times over).
/// A phase still running then is stopped and is a crash. On the CPU the agent's code in it has a tighter clock of
/// its own: see `allowance`'s use in the evaluation's model process.
pub fn evaluation_limit(profile: &str) -> f64 {
    match profile {
        "h100" => 120.0,
        _ => 180.0,
    }
}

/// Seconds before the deadline by which the agent's `train` must have returned, kept for fixed code to save
/// the checkpoint (within [`sealing_time`]), check the loss and end the process: `h100` 10 s (about 200 MB of
/// weights), others 3 s. A `train` that returns later is a crash, `over time`: no file gains steps by cutting
/// into it.
pub fn handover_reserve(profile: &str) -> f64 {
    match profile {
        "h100" => 10.0,
        _ => 3.0,
    }
}

/// Seconds after `train`'s end (the deadline less [`handover_reserve`]) by which fixed code must have written
/// the checkpoint and `training.json` and had the phase's supervisor seal them: `h100` 5 s, others 1.5 s (the
/// default file's take milliseconds at small). The supervisor, outside the phase's process, enforces it: a file
/// that took its own process over and ignored `train`'s clock could train on into the reserve, at most this
/// long, less the saving itself. A hand-over sealed later is a crash, `over time`.
pub fn sealing_time(profile: &str) -> f64 {
    match profile {
        "h100" => 5.0,
        _ => 1.5,
    }
}

/// The instant of a time given in seconds since the Unix epoch. A deadline crosses processes (and, under Slurm,
/// machines) as wall-clock time; each process converts it to its monotonic clock once, at its start, so that a
/// step of the wall clock later on (NTP, a resumed virtual machine, root's `date -s`) moves no deadline.
pub fn instant_of(unix_seconds: f64) -> Instant {
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs_f64();
    let ahead = unix_seconds - now;
    let (now, delta) = (Instant::now(), Duration::from_secs_f64(ahead.abs().min(1e9)));
    if ahead >= 0.0 {
        now + delta
    } else {
        now.checked_sub(delta).unwrap_or(now)
    }
}

/// When the hand-over of a training phase with deadline `deadline` must be sealed by: [`sealing_time`] after
/// `train`'s end, which is [`handover_reserve`] before the deadline.
pub fn sealing_due(deadline: Instant, profile: &str) -> Instant {
    deadline - Duration::from_secs_f64(handover_reserve(profile)) + Duration::from_secs_f64(sealing_time(profile))
}

/// How a phase ended: the status file's content, written by the phase's supervisor (outside the sandbox) from
/// what the phase's fixed code reported and what it sealed itself.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PhaseStatus {
    pub outcome: Outcome,
    /// The error or panic message (empty where the phase succeeded).
    pub message: String,
    /// The files the phase handed over, with what they held when the supervisor sealed them: the harness checks,
    /// when the phase's processes are gone, that they still hold it ([`check_sealed`]).
    #[serde(default)]
    pub sealed: Vec<Sealed>,
}

/// A file in the hand-over folder and the SHA-256 of what it held when it was sealed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sealed {
    pub file: String,
    pub sha256: String,
}

impl Sealed {
    /// Writes `bytes` to `file` in `folder`; their seal.
    pub fn write(folder: &Path, file: &str, bytes: &[u8]) -> Result<Sealed> {
        let path = folder.join(file);
        std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
        Ok(Sealed { file: file.to_string(), sha256: crate::fsutil::sha256_hex(bytes) })
    }

    /// The seal of `file` in `folder`, of what it holds now.
    pub fn of_file(folder: &Path, file: &str) -> Result<Sealed> {
        Ok(Sealed { file: file.to_string(), sha256: sha256_of_regular_file(&folder.join(file))? })
    }
}

/// The SHA-256 (hex) of a regular file, read in pieces. Not through a symbolic link, nor from a FIFO or a
/// device: the phase's code writes the folder, and could otherwise have the harness read `/dev/zero` without
/// end, or wait on a FIFO forever.
pub fn sha256_of_regular_file(path: &Path) -> Result<String> {
    use sha2::Digest;
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .with_context(|| format!("opening {} (a regular file, not a link)", path.display()))?;
    let kind = file.metadata().with_context(|| format!("reading {}'s metadata", path.display()))?.file_type();
    if !kind.is_file() {
        bail!("{} is not a regular file ({kind:?})", path.display());
    }
    let (mut hash, mut buffer) = (sha2::Sha256::new(), vec![0u8; 1 << 20]);
    loop {
        let n = file.read(&mut buffer).with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            return Ok(crate::fsutil::hex(&hash.finalize()));
        }
        hash.update(&buffer[..n]);
    }
}

/// That each of `files` in the hand-over folder `folder` is sealed and still holds what it held then: a thread
/// or process the agent's code left running could otherwise replace the checkpoint, after it was sealed, with
/// weights trained past the clock.
pub fn check_sealed(folder: &Path, sealed: &[Sealed], files: &[&str]) -> Result<()> {
    for file in files {
        let Some(seal) = sealed.iter().find(|s| s.file == *file) else {
            bail!("the training's hand-over sealed no {file}");
        };
        if sha256_of_regular_file(&folder.join(file))? != seal.sha256 {
            bail!(
                "{file} changed after it was handed over and sealed (by the file's code, left running after \
                 `train` returned: a thread, a process, the model's `Drop`)"
            );
        }
    }
    Ok(())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Success,
    /// The phase's own error: an error its code returned.
    Error,
    /// A panic, with its message.
    Panic,
    /// The error or panic was the accelerator (or the host) running out of memory, as libtorch reports it: may
    /// not be the file's fault.
    OutOfMemory,
    /// The agent's `train` returned past its end (the deadline less the hand-over reserve), or the hand-over
    /// was sealed past its due ([`sealing_due`]).
    OverTime,
}

impl PhaseStatus {
    /// The crash's reason for results.tsv and whether the identical file may be tried once more (None: success).
    pub fn crash(&self) -> Option<(String, bool)> {
        let first_line = |m: &str| m.lines().next().unwrap_or_default().chars().take(300).collect::<String>();
        Some(match self.outcome {
            Outcome::Success => return None,
            Outcome::Error => (first_line(&self.message), false),
            Outcome::Panic => (format!("panic: {}", first_line(&self.message)), false),
            Outcome::OutOfMemory => (format!("out of memory: {}", first_line(&self.message)), true),
            Outcome::OverTime => (first_line(&self.message), true),
        })
    }
}

/// What a training says about itself, for the summary (informational: val_bpb does not depend on it).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainingReport {
    pub steps: u64,
    /// Tokens trained on, in all steps.
    pub tokens: u64,
    /// Seconds and tokens of the timed steps (after warm-up), for MFU.
    pub timed_seconds: f64,
    pub timed_tokens: u64,
    pub flops_per_token: f64,
    pub depth: u64,
}

/// The training's report and what fixed code measured of it, in the hand-over folder.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainingStats {
    #[serde(flatten)]
    pub report: TrainingReport,
    pub num_params: u64,
    pub peak_memory_mb: f64,
    pub device: String,
}

/// What the evaluation reports to the harness.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalResult {
    /// The nonce the harness gave on stdin: the result is the evaluation's, not written by anything else.
    pub nonce: String,
    pub val_bpb: f64,
    /// Target tokens evaluated.
    pub eval_tokens: u64,
    pub profile: String,
    pub time_budget: f64,
    pub seed: u64,
    pub device: String,
    pub seconds: f64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Train,
    Evaluate,
    /// The evaluation's model process (started by `evaluate`, not by the harness).
    Model,
}

/// The arguments of one phase of the training binary.
#[derive(Clone, Debug, PartialEq)]
pub struct PhaseArgs {
    pub phase: Phase,
    pub handover: PathBuf,
    /// Where the evaluation writes its [`EvalResult`].
    pub result: Option<PathBuf>,
    /// Where the phase's supervisor writes its [`PhaseStatus`] (a folder the sandbox does not let it write).
    pub status: Option<PathBuf>,
    /// The phase's deadline, in seconds since the Unix epoch (the harness's clock: the harness stops the phase
    /// then).
    pub deadline: Option<f64>,
    pub sandbox: Policy,
}

impl PhaseArgs {
    pub fn to_args(&self) -> Result<Vec<String>> {
        let phase = match self.phase {
            Phase::Train => "train",
            Phase::Evaluate => "evaluate",
            Phase::Model => "model",
        };
        let mut args = vec![phase.to_string(), "--handover".into(), path_arg(&self.handover)?];
        if let Some(r) = &self.result {
            args.extend(["--result".into(), path_arg(r)?]);
        }
        if let Some(s) = &self.status {
            args.extend(["--status".into(), path_arg(s)?]);
        }
        if let Some(d) = self.deadline {
            args.extend(["--deadline".into(), d.to_string()]);
        }
        args.extend(["--sandbox".into(), serde_json::to_string(&self.sandbox)?]);
        Ok(args)
    }

    pub fn parse(args: impl IntoIterator<Item = String>) -> Result<PhaseArgs> {
        const USAGE: &str = "the training binary is run by the harness (`autoresearch train`, `run` or `loop`): \
                             usage: autoresearch-train train|evaluate|model --handover DIR [--result FILE] \
                             [--status FILE] [--deadline UNIX-SECONDS] --sandbox JSON";
        let mut args = args.into_iter();
        let phase = match args.next().as_deref() {
            Some("train") => Phase::Train,
            Some("evaluate") => Phase::Evaluate,
            Some("model") => Phase::Model,
            _ => bail!(USAGE),
        };
        let (mut handover, mut result, mut status, mut deadline, mut sandbox) = (None, None, None, None, None);
        while let Some(flag) = args.next() {
            let value = args.next().with_context(|| format!("{flag} needs a value; {USAGE}"))?;
            match flag.as_str() {
                "--handover" => handover = Some(PathBuf::from(value)),
                "--result" => result = Some(PathBuf::from(value)),
                "--status" => status = Some(PathBuf::from(value)),
                "--deadline" => {
                    let d: f64 = value.parse().with_context(|| format!("--deadline {value:?} is not a number"))?;
                    deadline = Some(d)
                }
                "--sandbox" => sandbox = Some(serde_json::from_str(&value).context("parsing --sandbox")?),
                _ => bail!("unknown argument {flag:?}; {USAGE}"),
            }
        }
        let parsed = PhaseArgs {
            phase,
            handover: handover.context(USAGE)?,
            result,
            status,
            deadline,
            sandbox: sandbox.context(USAGE)?,
        };
        if phase == Phase::Evaluate && parsed.result.is_none() {
            bail!("evaluate needs --result; {USAGE}");
        }
        Ok(parsed)
    }
}

fn path_arg(p: &Path) -> Result<String> {
    p.to_str().map(str::to_string).with_context(|| format!("{} is not UTF-8", p.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wall_clock_time_becomes_an_instant_of_the_monotonic_clock() {
        let unix = |ahead: f64| SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs_f64() + ahead;
        let (before, future, past) = (Instant::now(), instant_of(unix(30.0)), instant_of(unix(-30.0)));
        let off = |i: Instant, expected: f64| {
            let seconds = if i >= before { (i - before).as_secs_f64() } else { -(before - i).as_secs_f64() };
            (seconds - expected).abs()
        };
        assert!(off(future, 30.0) < 0.5 && off(past, -30.0) < 0.5);
    }

    #[test]
    fn a_phase_asked_to_use_the_gpu_stops_where_it_cannot() {
        assert!(check_device(Some("cuda"), true).is_ok());
        assert!(check_device(None, false).is_ok());
        let err = check_device(Some("cuda"), false).unwrap_err().to_string();
        assert!(err.contains("cannot use it") && err.contains("AUTORESEARCH_SANDBOX=off"), "{err}");
    }

    #[test]
    fn phase_arguments_round_trip_and_bad_ones_are_named() {
        let args = PhaseArgs {
            phase: Phase::Evaluate,
            handover: "/r/runs/3/seed-42".into(),
            result: Some("/r/runs/3/result-42.json".into()),
            status: Some("/r/runs/3/status-42.json".into()),
            deadline: Some(1_700_000_000.25),
            sandbox: Policy {
                deny_read: vec!["/c/data".into()],
                write: vec!["/r/runs/3/seed-42/tmp".into()],
                ..Policy::default()
            },
        };
        assert_eq!(PhaseArgs::parse(args.to_args().unwrap()).unwrap(), args);
        let model = PhaseArgs { phase: Phase::Model, result: None, ..args.clone() };
        assert_eq!(PhaseArgs::parse(model.to_args().unwrap()).unwrap(), model);
        let err = |a: &[&str]| PhaseArgs::parse(a.iter().map(|s| s.to_string())).unwrap_err().to_string();
        assert!(err(&[]).contains("run by the harness"));
        assert!(err(&["train", "--handover"]).contains("--handover needs a value"));
        assert!(err(&["train", "--handover", "d", "--bogus", "x"]).contains("\"--bogus\""));
        assert!(err(&["evaluate", "--handover", "d", "--sandbox", "{}"]).contains("--result"));
        assert!(err(&["train", "--handover", "d", "--deadline", "soon"]).contains("\"soon\" is not a number"));
    }

    #[test]
    fn a_sealed_file_must_still_hold_what_it_held() {
        let dir = tempfile::tempdir().unwrap();
        let seal = Sealed::write(dir.path(), "model.safetensors", b"weights").unwrap();
        // The SHA-256 of "weights", as `sha256sum` gives it; the same read back.
        assert_eq!(seal.sha256, "9a129038d9a00aed0cf6a7ea059ca50a813449061ab87848cf1a13eafdf33b2c");
        assert_eq!(Sealed::of_file(dir.path(), "model.safetensors").unwrap(), seal);
        let sealed = [seal];
        check_sealed(dir.path(), &sealed, &["model.safetensors"]).unwrap();
        let missing = check_sealed(dir.path(), &sealed, &["model.safetensors", "training.json"]).unwrap_err();
        assert!(missing.to_string().contains("sealed no training.json"), "{missing}");
        std::fs::write(dir.path().join("model.safetensors"), b"better weights").unwrap();
        let changed = check_sealed(dir.path(), &sealed, &["model.safetensors"]).unwrap_err();
        assert!(changed.to_string().contains("model.safetensors changed after"), "{changed}");
        std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
        assert!(check_sealed(dir.path(), &sealed, &["model.safetensors"]).is_err());
    }

    #[test]
    fn a_seal_reads_a_regular_file_alone_never_a_link_a_fifo_or_a_device() {
        let dir = tempfile::tempdir().unwrap();
        // A link to a device that never ends, and a FIFO no one writes (opening it would wait forever).
        std::os::unix::fs::symlink("/dev/zero", dir.path().join("link")).unwrap();
        let fifo = std::ffi::CString::new(dir.path().join("fifo").to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        let link = Sealed::of_file(dir.path(), "link").unwrap_err();
        assert!(format!("{link:#}").contains("not a link"), "{link:#}");
        let fifo = Sealed::of_file(dir.path(), "fifo").unwrap_err();
        assert!(fifo.to_string().contains("is not a regular file"), "{fifo}");
        let device = sha256_of_regular_file(Path::new("/dev/zero")).unwrap_err();
        assert!(device.to_string().contains("is not a regular file"), "{device}");
        // Read in pieces: a file over the buffer's 1 MiB, as `sha256sum` hashes 3 MiB of zeros.
        std::fs::write(dir.path().join("zeros"), vec![0u8; 3 << 20]).unwrap();
        assert_eq!(
            Sealed::of_file(dir.path(), "zeros").unwrap().sha256,
            "bbd05cf6097ac9b1f89ea29d2542c1b7b67ee46848393895f5a9e43fa1f621e5"
        );
    }

    #[test]
    fn the_clock_is_the_profiles_and_crashes_are_classified_by_the_phases_error() {
        assert_eq!((allowance("h100"), handover_reserve("h100")), (40.0, 10.0));
        assert_eq!((allowance("small"), handover_reserve("small")), (10.0, 3.0));
        // The seal is due 1.5 s after `train`'s end at small (3 s before the deadline), 5 s at h100 (10 s before).
        let deadline = Instant::now() + Duration::from_secs(1000);
        let before = |due: Instant| (deadline - due).as_secs_f64();
        assert_eq!((before(sealing_due(deadline, "small")), before(sealing_due(deadline, "h100"))), (1.5, 5.0));
        let status = |outcome, message: &str| PhaseStatus { outcome, message: message.into(), sealed: Vec::new() };
        assert_eq!(status(Outcome::Success, "").crash(), None);
        assert_eq!(status(Outcome::Panic, "boom\nmore").crash(), Some(("panic: boom".into(), false)));
        // Words in an error are only its message: the class decides whether it is tried again.
        assert_eq!(
            status(Outcome::Error, "CUDA out of memory, says the file").crash(),
            Some(("CUDA out of memory, says the file".into(), false))
        );
        assert!(status(Outcome::OutOfMemory, "CUDA out of memory.").crash().unwrap().1);
        assert_eq!(status(Outcome::OverTime, "over time: x").crash(), Some(("over time: x".into(), true)));
    }
}
