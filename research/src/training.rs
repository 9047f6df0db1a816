//! One training: the training binary's two phases (see [`autoresearch_harness::handover`]), timed and checked
//! here. The training phase runs sandboxed and is stopped at its deadline (its start + the budget + the
//! profile's allowance); the evaluation phase reports through a result file with a nonce, and the summary block
//! is composed here, from that result, the training's account of itself and this clock. A crash is classified
//! by the status file the phase's supervisor wrote, else by how the process ended; never by its log. The
//! hand-over folder's temporary files are removed on every outcome, and the device batch the training reports is
//! kept here for the next training of the same binary ([`autoresearch_harness::fit`]).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use autoresearch_harness::device::peak_bf16_flops;
use autoresearch_harness::fit;
use autoresearch_harness::fsutil::nonce;
use autoresearch_harness::handover::{
    allowance, check_sealed, evaluation_limit, EvalResult, Phase, PhaseArgs, PhaseStatus, Sealed, TrainingStats, AUDIT,
    AUDIT_LIMIT_FACTOR, CHECKPOINT, TMP, TRAINING_STATS,
};
use autoresearch_harness::profile::{cache_root, fit_dir, profile_dir, tokenizer_dir, Prepared};
use autoresearch_harness::sandbox::{Policy, PROGRAM_READS};
use autoresearch_harness::shards::{split_files, Split};
use autoresearch_harness::summary::Summary;

use crate::process::{wait_or_kill, CappedOutput, Role, LOG_LIMIT};

/// How long a phase's output may go on after the phase ended (a process its supervisor has not ended yet).
pub(crate) const OUTPUT_PATIENCE: Duration = Duration::from_secs(5);
use crate::trainer::{binary_identity, cargo_target, DeviceChoice, Trainer, TrainingSettings, LIBTORCH_LINKS};
/// The end of a log, as crash reasons and the dashboard show it.
pub use autoresearch_report::journal::tail;

/// Lines of a failed training's log shown to the agent.
pub const TAIL_LINES: usize = 50;

/// Why a training failed.
#[derive(Clone, Debug, PartialEq)]
pub struct Crash {
    pub reason: String,
    /// The cause may lie outside the training file (timeout under load, a kill, memory taken by another
    /// process): the identical file may be tried once more.
    pub retryable: bool,
    pub log_tail: String,
}

impl Crash {
    /// A crash with the end of the log at `log`.
    pub fn with_log(reason: String, retryable: bool, log: &Path) -> Crash {
        let text = String::from_utf8_lossy(&std::fs::read(log).unwrap_or_default()).into_owned();
        Crash { reason, retryable, log_tail: tail(&text, TAIL_LINES) }
    }
}

/// What a training measured.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Measured {
    /// The metric's value (the built-in's val_bpb).
    pub value: f64,
    /// Peak GPU memory (0 where not known).
    pub memory_gb: f64,
}

/// One training's result.
pub struct TrainingOutcome {
    pub result: std::result::Result<Measured, Crash>,
    /// Seconds in the training's processes: the training binary's two phases, or a project's training and
    /// evaluation commands.
    pub wall: f64,
    pub interrupted: bool,
}

/// How the caller starts processes (recorded in its journal, say), where they run (here, or in a Slurm job)
/// and when it wants them stopped.
pub trait Processes {
    /// Before a training's first phase: where trainings run elsewhere, their resources are taken here (a job
    /// allocated), for at most `limit`.
    fn begin(&mut self, _limit: Duration) -> Result<Begun> {
        Ok(Begun::Ready)
    }
    /// A phase's command as it is run (in the job, say).
    fn wrap(&mut self, cmd: Command) -> Command {
        cmd
    }
    fn start(&mut self, cmd: &mut Command, role: Role) -> Result<Child>;
    /// `child` has ended (or was killed).
    fn ended(&mut self, child: &Child) -> Result<()>;
    /// Why a phase that failed failed, where the place it ran knows better than its exit status (a job that
    /// was cancelled or lost its node).
    fn failure(&mut self) -> Option<String> {
        None
    }
    /// After the training: what `begin` took is given back.
    fn finish(&mut self) -> Result<()> {
        Ok(())
    }
    /// Whether an interrupt asks to stop the training now.
    fn interrupted(&self) -> bool;
}

/// How taking a training's resources went.
pub enum Begun {
    Ready,
    Interrupted,
    /// They cannot be had (the reason): the training is a crash.
    Failed(String),
}

/// Where one training keeps its files: the hand-over folder (the only place its training phase may write;
/// the checkpoint stays there), the evaluation's result file and the log.
#[derive(Clone, Debug)]
pub struct TrainingFiles {
    pub handover: PathBuf,
    pub result: PathBuf,
    pub log: PathBuf,
}

impl TrainingFiles {
    /// The files of the training with `seed` in a folder: `seed-<seed>/` (hand-over), `result-<seed>.json`.
    pub fn in_folder(dir: &Path, seed: u64, log: PathBuf) -> TrainingFiles {
        TrainingFiles {
            handover: dir.join(crate::files::handover_dir(seed)),
            result: dir.join(crate::files::result_file(seed)),
            log,
        }
    }

    /// Where a phase's supervisor writes how it ended: beside the result, where the sandbox does not let it write.
    pub fn status(&self) -> PathBuf {
        self.result.with_extension("status.json")
    }

    /// The harness's record of what the training phase handed over ([`HandedOver`]): beside the hand-over folder,
    /// where no phase writes (`seed-42.handed-over.json`).
    pub fn handed_over(&self) -> PathBuf {
        record_of(&self.handover)
    }
}

/// The harness's record of the hand-over folder `handover` ([`HandedOver`]), beside it.
fn record_of(handover: &Path) -> PathBuf {
    handover.with_extension("handed-over.json")
}

/// Removes a hand-over folder and the harness's record of it, where they are.
pub fn remove_handover(handover: &Path) -> Result<()> {
    if handover.exists() {
        std::fs::remove_dir_all(handover).with_context(|| format!("removing {}", handover.display()))?;
    }
    let record = record_of(handover);
    if record.exists() {
        std::fs::remove_file(&record).with_context(|| format!("removing {}", record.display()))?;
    }
    Ok(())
}

/// What a training phase handed over, as the harness checked it once the phase's processes were gone: the seals
/// of its checkpoint and `training.json`, and its seconds on the harness's clock. A retry after a failed evaluation
/// evaluates that hand-over again ([`evaluate_handed_over`]).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct HandedOver {
    pub training_seconds: f64,
    pub sealed: Vec<Sealed>,
}

impl HandedOver {
    /// The files a training hands over, which the record seals.
    const FILES: [&str; 2] = [CHECKPOINT, TRAINING_STATS];

    /// The record of the training whose files are `files`, where it is kept with what it seals (after a crash in
    /// its evaluation, say); None where any of them is missing.
    pub fn kept(files: &TrainingFiles) -> Option<HandedOver> {
        let all_there = HandedOver::FILES.iter().all(|f| files.handover.join(f).is_file());
        all_there.then(|| read_json(&files.handed_over()).ok()).flatten()
    }

    /// What the training with the files `earlier` handed over, put in `files.handover` (linked where the file
    /// system allows, else copied) and checked against its seals: that training's record and stats, or why they
    /// cannot be had (a crash's reason).
    fn take_over(
        earlier: &TrainingFiles,
        files: &TrainingFiles,
    ) -> std::result::Result<(HandedOver, TrainingStats), String> {
        let from = earlier.handover.display();
        let record =
            HandedOver::kept(earlier).ok_or_else(|| format!("no training kept in {from} to evaluate again"))?;
        for file in HandedOver::FILES {
            let (source, target) = (earlier.handover.join(file), files.handover.join(file));
            std::fs::hard_link(&source, &target)
                .or_else(|_| std::fs::copy(&source, &target).map(drop))
                .map_err(|e| format!("copying {} to {}: {e}", source.display(), target.display()))?;
        }
        check_sealed(&files.handover, &record.sealed, &HandedOver::FILES)
            .map_err(|e| format!("the training kept in {from} no longer holds what it handed over: {e:#}"))?;
        let stats = read_json(&files.handover.join(TRAINING_STATS)).map_err(|e| format!("{e:#}"))?;
        Ok((record, stats))
    }
}

/// A training's files made afresh: an empty hand-over folder with its temporary folder, no result, an empty log.
/// The temporary folder goes when what this returns is dropped.
pub(crate) fn fresh_files(files: &TrainingFiles) -> Result<TemporaryFiles> {
    if files.handover.exists() {
        std::fs::remove_dir_all(&files.handover).with_context(|| format!("removing {}", files.handover.display()))?;
    }
    std::fs::create_dir_all(files.handover.join(TMP))
        .with_context(|| format!("creating {}", files.handover.display()))?;
    let temporary = TemporaryFiles(files.handover.join(TMP));
    let _ = std::fs::remove_file(&files.result);
    let _ = std::fs::remove_file(files.handed_over());
    std::fs::write(&files.log, "").with_context(|| format!("creating {}", files.log.display()))?;
    Ok(temporary)
}

/// Removes the hand-over folder's temporary files when dropped: on every outcome.
pub(crate) struct TemporaryFiles(pub PathBuf);

impl Drop for TemporaryFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What the sandboxes allow, from the prepared profile and where this training keeps its files.
pub struct Sandboxes {
    pub training: Policy,
    pub evaluation: Policy,
}

/// The validation data and what it was made from: the validation shard, and the text files a profile was
/// prepared from (`--text`, or the demo corpus's files).
pub fn validation_sources(prepared: &Prepared) -> Vec<PathBuf> {
    let mut paths = split_files(&prepared.data_dir, Split::Val).unwrap_or_default();
    paths.extend(prepared.val_sources.iter().cloned());
    paths.retain(|p| p.exists());
    paths
}

/// The sandbox of `trainer`'s build: it reads only what a build needs ([`build_reads`]), save what no phase may
/// read (`include_bytes!` would compile in the validation data, or an earlier experiment's checkpoint), and of
/// the target folder only the variant's `release` folder (the target folder holds other builds, and the tests'
/// sessions with their copies of the data); writes anywhere, the network open (cargo may fetch crates).
pub fn build_policy(prepared: &Prepared, trainer: &Trainer) -> Policy {
    let mut deny_read = unreadable(prepared, &trainer.root);
    deny_read.extend([cargo_target(&trainer.root), PathBuf::from("/dev/shm")]);
    Policy {
        only_read: Some(build_reads(&trainer.root, &deny_read)),
        deny_read,
        read: vec![trainer.release_dir()],
        write: vec![PathBuf::from("/")],
        allow_network: true,
        ..Policy::default()
    }
    .unless_turned_off()
}

/// The system's folders a build reads: its programs, libraries, headers and settings (and name resolution's in
/// /run), the device nodes and /proc and /sys that compilers read. Nothing in /home, /root, /tmp, /srv, /mnt or
/// /var but the tools' homes and the PATH's folders ([`build_reads`]): no other checkout of this repository or
/// copy of the data is read from there.
const BUILD_SYSTEM_READS: [&str; 15] = [
    "/usr",
    "/bin",
    "/sbin",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/etc",
    "/opt",
    "/nix",
    "/run/systemd/resolve",
    "/run/current-system",
    "/dev",
    "/proc",
    "/sys",
];

/// What the build of the repository `root` reads at all (those that exist, each once): the system's folders
/// ([`BUILD_SYSTEM_READS`]), the folders on the PATH, cargo's and rustup's homes (and where their entries lead),
/// cargo's settings in the folders above the repository, libtorch (where its links in the repository lead, the
/// CUDA libraries beside it, where the environment names it) and the repository's [`source_files`] but those
/// `denied`.
pub(crate) fn build_reads(root: &Path, denied: &[PathBuf]) -> Vec<PathBuf> {
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let env_or_home = |var: &str, default: &str| {
        std::env::var_os(var)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| home.as_ref().map(|h| h.join(default)))
    };
    let mut reads: Vec<PathBuf> = BUILD_SYSTEM_READS.iter().map(PathBuf::from).collect();
    if let Some(path) = std::env::var_os("PATH") {
        reads.extend(std::env::split_paths(&path).filter(|p| p.is_absolute()));
    }
    // Cargo's and rustup's homes, and where their entries lead (a home whose registry links to a shared one), but
    // where cargo's git checkouts lead (the lock file has no git sources; the home itself is read whole, since
    // cargo writes its cache's files there as it goes).
    for tool_home in [env_or_home("CARGO_HOME", ".cargo"), env_or_home("RUSTUP_HOME", ".rustup")].into_iter().flatten()
    {
        let entries = std::fs::read_dir(&tool_home).into_iter().flatten().flatten().filter(|e| e.file_name() != "git");
        reads.extend(entries.filter_map(|e| e.path().canonicalize().ok()).collect::<Vec<_>>());
        reads.push(tool_home);
    }
    reads.extend(root.ancestors().skip(1).map(|a| a.join(".cargo")));
    // libtorch where the repository's links lead, with the CUDA libraries beside it that its libraries name
    // (ops/build.rs puts them on the rpath; a linker that checks a library's own dependencies opens them).
    for libtorch in LIBTORCH_LINKS.iter().filter_map(|l| root.join(l).canonicalize().ok()) {
        reads.push(libtorch.join("../nvidia"));
        reads.push(libtorch);
    }
    reads.extend(
        ["LIBTORCH", "LIBTORCH_INCLUDE", "LIBTORCH_LIB"].iter().filter_map(std::env::var_os).map(PathBuf::from),
    );
    // Not the default target folder either, where the build's is elsewhere (older builds' generated sources).
    let skip: Vec<_> = denied.iter().cloned().chain([root.join("target")]).collect();
    reads.extend(source_files(root, &skip));
    let mut seen = std::collections::HashSet::new();
    reads.retain(|p| p.exists() && seen.insert(p.canonicalize().unwrap_or_else(|_| p.clone())));
    reads
}

/// The kinds of files a build compiles: Rust sources, manifests (cargo's settings and the lock file among them),
/// C, C++ and CUDA sources and headers.
const SOURCE_KINDS: [&str; 10] = ["rs", "toml", "lock", "c", "cc", "cpp", "h", "hpp", "cu", "cuh"];

/// The repository's source files ([`SOURCE_KINDS`]) beneath `root`, but not beneath `skip`, nor through a link:
/// no data, fixture or document of any other kind (the golden set's shards and batches are made from the demo
/// corpus), so a copy of the validation data kept in the repository is not compiled in. Listed when the session
/// starts: the training file is one of them, and a file added later is not read.
pub(crate) fn source_files(root: &Path, skip: &[PathBuf]) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut folders = vec![root.to_path_buf()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).into_iter().flatten().flatten() {
            let (path, Ok(kind)) = (entry.path(), entry.file_type()) else { continue };
            if skip.iter().any(|s| path.starts_with(s)) {
                continue;
            }
            if kind.is_dir() {
                folders.push(path);
            } else if kind.is_file() && path.extension().is_some_and(|e| SOURCE_KINDS.iter().any(|k| e == *k)) {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// What a training on the CPU reads at all, besides its binary and its hand-over folder (the policy's `read`):
/// its profile's prepared.json, tokenizer and training data (the validation shard among them stays unreadable),
/// the name of the active profile, the [`PROGRAM_READS`] (for a child process it starts) and the [`CPU_DEVICES`]
/// (a child's standard input from /dev/null, say); with them (the policy's `system_reads`) what libtorch reads of
/// the system ([`system_reads`]: of /proc, a few files of its own folder; its supervisor, outside the sandbox,
/// finds the processes it started). No other file on the machine: not another copy of the validation text
/// (another checkout's demo corpus, another profile's data in the cache, a test session's), nor what other
/// processes show in /proc (what a concurrent experiment's model process, say, writes over its command line).
///
/// [`system_reads`]: autoresearch_harness::sandbox::system_reads
pub fn training_reads(prepared: &Prepared, cache: &Path) -> Vec<PathBuf> {
    let name = &prepared.profile.name;
    let mut reads = vec![
        profile_dir(cache, name).join("prepared.json"),
        tokenizer_dir(cache, name),
        prepared.data_dir.clone(),
        cache.join("active"),
    ];
    reads.extend(PROGRAM_READS.iter().chain(&CPU_DEVICES).map(PathBuf::from));
    reads
}

/// Device nodes a training on the CPU may write, one by one: not /dev/shm, nor anything else that outlives it.
/// Not /dev/tty: a process that reached the user's terminal could type into it.
pub const CPU_DEVICES: [&str; 5] = ["/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom"];

/// What no phase may read: the validation data, and what earlier experiments left in the repository `root` (the
/// session's folder with its runs, checkpoints, logs and workers' trees; results.tsv; the last log); and the
/// repository's own copies of the demo corpus, whose validation text a profile prepared from it holds: its
/// `data/demo` and its git objects.
pub fn unreadable(prepared: &Prepared, root: &Path) -> Vec<PathBuf> {
    let mut deny = validation_sources(prepared);
    deny.extend(session_files(root));
    deny.extend([root.join(DEMO_DIR), root.join(".git")]);
    deny
}

/// The demo corpus in a checkout of this repository.
const DEMO_DIR: &str = "data/demo";

/// The device nodes (and on CUDA, what CUDA writes) a phase may write.
pub fn device_writes(cuda: bool) -> Vec<PathBuf> {
    if cuda {
        // CUDA needs the GPUs' device nodes, and does not start without writes beneath /proc or /sys (measured
        // on an H200: cudaGetDeviceCount fails with error 304 when only /dev and a temporary folder are
        // writable, and works with /proc and /sys added); its kernel cache is ~/.nv. Kept as measured: no GPU
        // has run a narrower policy yet. Writing there reaches neither the data nor results.tsv: Landlock keeps
        // a sandboxed process from other processes' memory and file links in /proc (not from their status,
        // command line or environment), and /proc/self/root resolves to paths the rules judge as any other.
        let mut d = vec![PathBuf::from("/dev"), PathBuf::from("/proc"), PathBuf::from("/sys")];
        d.extend(std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".nv")).filter(|p| p.is_dir()));
        d
    } else {
        CPU_DEVICES.iter().map(PathBuf::from).filter(|p| p.exists()).collect()
    }
}

/// What the loop writes in the repository `root`: the session's folder (runs, checkpoints, logs, workers' trees),
/// results.tsv and the last log. No phase reads them.
pub fn session_files(root: &Path) -> Vec<PathBuf> {
    [crate::STATE_DIR, crate::RESULTS_FILE, crate::files::RUN_LOG].iter().map(|p| root.join(p)).collect()
}

/// The phases' sandboxes for a training of the profile `prepared` (in the cache `cache`) in the repository `root`.
/// On the CPU the training reads only [`training_reads`]; on CUDA it reads all but what [`unreadable`] names, as
/// measured on a GPU.
pub fn sandboxes(
    prepared: &Prepared,
    cache: &Path,
    root: &Path,
    cuda: bool,
    files: &TrainingFiles,
    binary: &Path,
) -> Sandboxes {
    let mut devices = device_writes(cuda);
    let mut deny = unreadable(prepared, root);
    if !cuda {
        // Files left there by an earlier training would be read back; and the target folder holds the test
        // sessions' trees and older builds of this program (which held the demo corpus), while the phases need
        // only their binary there (read below). On CUDA the policy stays as measured on a GPU.
        deny.push(PathBuf::from("/dev/shm"));
        deny.push(cargo_target(root));
    }
    let mut training_writes = vec![files.handover.clone()];
    training_writes.append(&mut devices.clone());
    let mut evaluation_writes = vec![files.handover.join(TMP)];
    evaluation_writes.append(&mut devices);
    let mut evaluation_deny = deny.clone();
    evaluation_deny.push(prepared.data_dir.clone());
    // The phases' own binary (the evaluation starts it again as the model process): a worker's (or `noise`'s)
    // lives beneath .autoresearch, the others beneath the target folder, both otherwise unreadable.
    let read = vec![files.handover.clone(), binary.to_path_buf()];
    Sandboxes {
        training: Policy {
            only_read: (!cuda).then(|| training_reads(prepared, cache)),
            system_reads: true,
            deny_read: deny,
            read: read.clone(),
            write: training_writes,
            ..Policy::cpu_confinement(!cuda)
        }
        .unless_turned_off(),
        evaluation: Policy {
            deny_read: evaluation_deny,
            read,
            write: evaluation_writes,
            ..Policy::cpu_confinement(!cuda)
        }
        .unless_turned_off(),
    }
}

/// Why a finished phase counts as a crash, if it does, and whether the cause may lie outside the file: the
/// status its supervisor wrote, else (a process that died before it reported) how the process ended.
pub fn crash_reason(status: ExitStatus, phase: Option<&PhaseStatus>) -> Option<(String, bool)> {
    use std::os::unix::process::ExitStatusExt;
    if status.success() {
        // Fixed code reports the phase's end last: a process that ended well without a status was ended by the
        // agent's code (`std::process::exit(0)` skips the checks that follow `train`).
        return match phase {
            Some(p) => p.crash(),
            None => Some(("the phase exited without reporting its end (ended by the file's code)".into(), false)),
        };
    }
    if let Some(crash) = phase.and_then(PhaseStatus::crash) {
        return Some(crash);
    }
    Some(match status.signal() {
        Some(9) => ("killed (signal 9: out of memory?)".into(), true),
        Some(15) => ("killed by signal 15".into(), true),
        Some(sig) => (format!("killed by signal {sig}"), false),
        None => (format!("exit code {} (the phase wrote no status)", status.code().unwrap_or(-1)), false),
    })
}

/// The status a phase's supervisor wrote (none where it wrote none or it does not parse).
fn read_status(path: &Path) -> Option<PhaseStatus> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

/// How one phase ended.
pub(crate) enum Ended {
    Exited(ExitStatus),
    /// Stopped by us: a phase past its limit, or the whole training past the hard timeout.
    OverTime(String),
    Interrupted,
}

/// Runs one phase to its end, its output appended to the log; `limit` is its time from its start, `deadline`
/// the hard timeout of the whole training.
pub(crate) fn run_phase(
    procs: &mut dyn Processes,
    cmd: Command,
    role: Role,
    log: &Path,
    stdin: Option<&str>,
    limit: Option<(Duration, String)>,
    deadline: (Instant, String),
) -> Result<(Ended, f64)> {
    let mut cmd = procs.wrap(cmd);
    let output = CappedOutput::attach(&mut cmd, log, LOG_LIMIT)?;
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
    let started = Instant::now();
    let mut child = procs.start(&mut cmd, role)?;
    // Our copy of the output pipe's writing end goes: the output ends when the phase's processes are gone.
    drop(cmd);
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // A phase that dies at once closes the pipe; its exit status tells why.
        let _ = pipe.write_all(text.as_bytes());
    }
    let mut stopped = None;
    let status = wait_or_kill(&mut child, || {
        if procs.interrupted() {
            stopped = Some(Ended::Interrupted);
        } else if let Some((limit, why)) = limit.as_ref().filter(|(l, _)| started.elapsed() > *l) {
            stopped = Some(Ended::OverTime(format!("{why} (stopped after {:.0} s)", limit.as_secs_f64())));
        } else if Instant::now() > deadline.0 {
            stopped = Some(Ended::OverTime(deadline.1.clone()));
        }
        stopped.is_some()
    });
    output.finish(OUTPUT_PATIENCE);
    procs.ended(&child)?;
    let wall = started.elapsed().as_secs_f64();
    Ok(match status? {
        Some(status) => (Ended::Exited(status), wall),
        None => (stopped.expect("killed only when asked to stop"), wall),
    })
}

/// Trains once with `settings` (its seed set) and evaluates: the summary, or why it crashed. `timeout` bounds
/// the whole; the training phase alone is stopped at the budget plus [`allowance`].
pub fn train_and_evaluate(
    trainer: &Trainer,
    settings: &TrainingSettings,
    files: &TrainingFiles,
    timeout: Duration,
    procs: &mut dyn Processes,
) -> Result<TrainingOutcome> {
    finishing(procs, |procs| train_and_evaluate_begun(trainer, settings, files, timeout, procs))
}

/// Runs `train`, then gives back what the backend took for it ([`Processes::finish`]) whatever came of it.
pub(crate) fn finishing(
    procs: &mut dyn Processes,
    train: impl FnOnce(&mut dyn Processes) -> Result<TrainingOutcome>,
) -> Result<TrainingOutcome> {
    let trained = train(procs);
    let finished = procs.finish();
    let trained = trained?;
    finished?;
    Ok(trained)
}

/// One training under way: its start and log, from which its crashes and its outcome are made.
pub(crate) struct Attempt<'a> {
    started: Instant,
    log: &'a Path,
}

impl<'a> Attempt<'a> {
    pub(crate) fn new(log: &'a Path) -> Attempt<'a> {
        Attempt { started: Instant::now(), log }
    }

    pub(crate) fn started(&self) -> Instant {
        self.started
    }

    /// The hard timeout of the whole training, `timeout` from its start, with what a phase stopped there says.
    fn deadline(&self, timeout: Duration) -> (Instant, String) {
        (self.started + timeout, format!("timeout: killed after {:.0} s", timeout.as_secs_f64()))
    }

    /// A crash with the end of the log.
    pub(crate) fn crash(&self, reason: String, retryable: bool) -> Crash {
        Crash::with_log(reason, retryable, self.log)
    }

    pub(crate) fn done(&self, result: std::result::Result<Measured, Crash>, interrupted: bool) -> TrainingOutcome {
        TrainingOutcome { result, wall: self.started.elapsed().as_secs_f64(), interrupted }
    }

    /// Takes the training's resources from the backend, for at most `timeout`: None when they are there, else
    /// the outcome (interrupted, or a crash with why they cannot be had).
    pub(crate) fn begin(&self, procs: &mut dyn Processes, timeout: Duration) -> Result<Option<TrainingOutcome>> {
        Ok(match procs.begin(timeout)? {
            Begun::Ready => None,
            Begun::Interrupted => Some(self.done(Err(self.crash("interrupted".into(), true)), true)),
            Begun::Failed(why) => Some(self.done(Err(self.crash(why, false)), false)),
        })
    }
}

fn train_and_evaluate_begun(
    trainer: &Trainer,
    settings: &TrainingSettings,
    files: &TrainingFiles,
    timeout: Duration,
    procs: &mut dyn Processes,
) -> Result<TrainingOutcome> {
    let attempt = Attempt::new(&files.log);
    let cache = cache_root()?;
    let prepared = Prepared::load(&cache, settings.profile.as_deref())?;
    let budget = prepared.profile.budget(settings.time_budget);
    let _temporary = fresh_files(files)?;
    let cuda = trainer.device == DeviceChoice::Cuda;
    let sandboxes = sandboxes(&prepared, &cache, &trainer.root, cuda, files, &trainer.binary());
    // The device batches remembered for this binary: the training reads them, and reports its own, there.
    let fit_cache = fit_dir(&cache, &prepared.profile.name).join(fit::CACHE_FILE);
    let binary = binary_identity(&trainer.binary())?;
    let report = files.handover.join(fit::REPORT_FILE);
    std::fs::write(&report, serde_json::to_vec(&fit::remembered(&fit_cache, &binary))?)
        .with_context(|| format!("writing {}", report.display()))?;
    let deadline = attempt.deadline(timeout);
    let crash = |reason: String, retryable: bool| attempt.crash(reason, retryable);
    let done = |result, interrupted| Ok(attempt.done(result, interrupted));
    if let Some(outcome) = attempt.begin(procs, timeout)? {
        return Ok(outcome);
    }
    // Where the place a phase ran says it failed (a cancelled job, a lost node: srun may even exit 0 then), that
    // is the crash's reason, and not the file's fault; else the phase's status file and its exit status say.
    let failed = |procs: &mut dyn Processes, status| phase_failure(procs, status, files);
    let allowance = allowance(&prepared.profile.name);
    let limit = budget + allowance;
    let unix_now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs_f64();
    let args = PhaseArgs {
        phase: Phase::Train,
        handover: files.handover.clone(),
        result: None,
        status: Some(files.status()),
        deadline: Some(unix_now + limit),
        sandbox: sandboxes.training,
    };
    let over = format!(
        "over time: the training phase was stopped at its deadline, the budget of {budget} s plus the allowance of \
         {allowance} s"
    );
    let _ = std::fs::remove_file(files.status());
    let cmd = trainer.phase_command(settings, &args)?;
    let (ended, training_wall) = run_phase(
        procs,
        cmd,
        Role::Training,
        &files.log,
        None,
        Some((Duration::from_secs_f64(limit), over)),
        deadline.clone(),
    )?;
    match ended {
        Ended::Interrupted => return done(Err(crash("interrupted".into(), true)), true),
        Ended::OverTime(why) => return done(Err(crash(why, true)), false),
        Ended::Exited(status) => {
            if let Some((reason, retryable)) = failed(procs, status) {
                return done(Err(crash(reason, retryable)), false);
            }
        }
    }
    // Every process of the phase is gone: what it handed over must be what its fixed code wrote.
    let sealed = read_status(&files.status()).map(|s| s.sealed).unwrap_or_default();
    if let Err(e) = check_sealed(&files.handover, &sealed, &[CHECKPOINT, TRAINING_STATS]) {
        return done(Err(crash(format!("{e:#}"), false)), false);
    }
    let stats: TrainingStats = match read_json(&files.handover.join(TRAINING_STATS)) {
        Ok(s) => s,
        Err(e) => return done(Err(crash(format!("no model handed over: {e:#}"), false)), false),
    };
    let record = HandedOver { training_seconds: training_wall, sealed };
    std::fs::write(files.handed_over(), serde_json::to_vec(&record)?)
        .with_context(|| format!("writing {}", files.handed_over().display()))?;
    match std::fs::read(&report).map_err(anyhow::Error::from).and_then(|r| fit::keep(&fit_cache, &binary, &r)) {
        Ok(_) => {}
        Err(e) => append(&files.log, &format!("device batch not remembered: {}: {e:#}\n", report.display()))?,
    }
    let trained = Trained { stats, training_seconds: training_wall };
    let evaluation = Evaluation { trainer, settings, files, sandbox: &sandboxes.evaluation, prepared: &prepared };
    evaluate_trained(&evaluation, procs, deadline, &trained, &attempt)
}

/// How the reason of a crash in the evaluation, after the training handed over, begins.
pub const EVALUATION_CRASH: &str = "evaluation: ";

/// A training that handed over its model: its stats and its seconds on the harness's clock.
struct Trained {
    stats: TrainingStats,
    training_seconds: f64,
}

/// What an evaluation phase of a training is run with: the binary, the training's settings and files, the phase's
/// sandbox and the prepared profile.
struct Evaluation<'a> {
    trainer: &'a Trainer,
    settings: &'a TrainingSettings,
    files: &'a TrainingFiles,
    sandbox: &'a Policy,
    prepared: &'a Prepared,
}

/// Evaluates what a training handed over (once more after a failure that may not be the model's fault) and writes
/// the summary to the log.
fn evaluate_trained(
    evaluation: &Evaluation,
    procs: &mut dyn Processes,
    deadline: (Instant, String),
    trained: &Trained,
    attempt: &Attempt,
) -> Result<TrainingOutcome> {
    let Evaluation { settings, files, prepared, .. } = *evaluation;
    // Every crash from here on is the evaluation's, and says so: a retry of the identical file evaluates this
    // hand-over again rather than training again (see `HandedOver`).
    let crash = |reason: String, retryable: bool| attempt.crash(format!("{EVALUATION_CRASH}{reason}"), retryable);
    let done = |result, interrupted| Ok(attempt.done(result, interrupted));
    let budget = prepared.profile.budget(settings.time_budget);
    let seed = settings.seed.unwrap_or(crate::state::SEED);
    let mut tries = 0;
    let (result, eval_wall) = loop {
        tries += 1;
        let (ended, wall, nonce) = evaluation_phase(evaluation, procs, deadline.clone(), false)?;
        let failure = match ended {
            Ended::Interrupted => return done(Err(attempt.crash("interrupted".into(), true)), true),
            Ended::OverTime(why) => return done(Err(crash(why, true)), false),
            Ended::Exited(status) => phase_failure(procs, status, files),
        };
        match failure {
            Some((reason, true)) if tries == 1 => {
                append(&files.log, &format!("\nthe evaluation failed ({reason}): evaluating the checkpoint again\n"))?;
            }
            Some((reason, retryable)) => return done(Err(crash(reason, retryable)), false),
            None => break (read_result(&files.result, &nonce), wall),
        }
    };
    let result = match result.and_then(|r| check_result(r, prepared, budget, seed)) {
        Ok(r) => r,
        Err(e) => return done(Err(crash(format!("{e:#}"), false)), false),
    };
    let training = trained.training_seconds;
    let summary = summarise(&trained.stats, result, training, training + eval_wall, budget, seed);
    append(&files.log, &format!("\n{summary}\n"))?;
    done(Ok(Measured { value: summary.val_bpb, memory_gb: summary.peak_vram_mb / 1024.0 }), false)
}

/// For a retry of a training whose evaluation failed in a way that may not be the model's fault: what that
/// training handed over (kept with its files `earlier`, see [`HandedOver::kept`]) taken over into `files.handover`
/// and evaluated as after a training, its summary with that training's stats and seconds. Nothing is trained: a model
/// that makes its own evaluation fail (stalling when its loss looks poor, say) gets the same checkpoint measured
/// again, not a second training.
pub fn evaluate_handed_over(
    trainer: &Trainer,
    settings: &TrainingSettings,
    earlier: &TrainingFiles,
    files: &TrainingFiles,
    timeout: Duration,
    procs: &mut dyn Processes,
) -> Result<TrainingOutcome> {
    finishing(procs, |procs| {
        let attempt = Attempt::new(&files.log);
        let cache = cache_root()?;
        let prepared = Prepared::load(&cache, settings.profile.as_deref())?;
        let _temporary = fresh_files(files)?;
        append(
            &files.log,
            &format!(
                "not trained again: the checkpoint the training in {} handed over, evaluated again\n",
                earlier.handover.display()
            ),
        )?;
        let (record, stats) = match HandedOver::take_over(earlier, files) {
            Ok(taken) => taken,
            Err(why) => return Ok(attempt.done(Err(attempt.crash(why, false)), false)),
        };
        // Where the trainings run (a Slurm job, say), this runs too: for at most two evaluations.
        let evaluations = Duration::from_secs_f64(2.0 * evaluation_phase_limit(&prepared.profile.name, false));
        if let Some(outcome) = attempt.begin(procs, evaluations.min(timeout))? {
            return Ok(outcome);
        }
        let cuda = trainer.device == DeviceChoice::Cuda;
        let sandboxes = sandboxes(&prepared, &cache, &trainer.root, cuda, files, &trainer.binary());
        let deadline = attempt.deadline(timeout);
        let trained = Trained { stats, training_seconds: record.training_seconds };
        let evaluation = Evaluation { trainer, settings, files, sandbox: &sandboxes.evaluation, prepared: &prepared };
        evaluate_trained(&evaluation, procs, deadline, &trained, &attempt)
    })
}

/// The summary block of a training: the evaluation's result, the training's account of itself and this clock.
fn summarise(
    stats: &TrainingStats,
    result: EvalResult,
    training_seconds: f64,
    total_seconds: f64,
    budget: f64,
    seed: u64,
) -> Summary {
    let report = &stats.report;
    let mfu_percent = peak_bf16_flops(&stats.device)
        .filter(|_| report.timed_seconds > 0.0)
        .map(|peak| 100.0 * report.flops_per_token * report.timed_tokens as f64 / report.timed_seconds / peak);
    Summary {
        val_bpb: result.val_bpb,
        training_seconds,
        total_seconds,
        peak_vram_mb: stats.peak_memory_mb,
        mfu_percent,
        total_tokens_m: report.tokens as f64 / 1e6,
        num_steps: report.steps,
        num_params_m: stats.num_params as f64 / 1e6,
        depth: report.depth,
        profile: result.profile,
        time_budget: budget,
        device: result.device,
        seed,
    }
}

/// Why a phase that exited with `status` failed, and whether the identical file may be tried again (None: it did
/// not). Where the place it ran says it failed (a cancelled job, a lost node: srun may even exit 0 then), that is
/// the reason, and not the file's fault; else the phase's status file and its exit status say.
fn phase_failure(procs: &mut dyn Processes, status: ExitStatus, files: &TrainingFiles) -> Option<(String, bool)> {
    match procs.failure() {
        Some(why) => Some((why, true)),
        None => crash_reason(status, read_status(&files.status()).as_ref()),
    }
}

/// Seconds the evaluation phase has: the profile's [`evaluation_limit`], an audit [`AUDIT_LIMIT_FACTOR`] times it.
fn evaluation_phase_limit(profile: &str, audit: bool) -> f64 {
    evaluation_limit(profile) * if audit { AUDIT_LIMIT_FACTOR } else { 1.0 }
}

/// Runs the evaluation phase once on the checkpoint in `files.handover`, with a fresh nonce on its stdin (and
/// [`AUDIT`] after it for an audit) and a fresh temporary folder, removed after it, stopped at the profile's
/// [`evaluation_limit`] (an audit at [`AUDIT_LIMIT_FACTOR`] times it): how it ended, its seconds, and the nonce its
/// result must carry.
fn evaluation_phase(
    evaluation: &Evaluation,
    procs: &mut dyn Processes,
    deadline: (Instant, String),
    audit: bool,
) -> Result<(Ended, f64, String)> {
    let Evaluation { trainer, settings, files, sandbox, prepared } = *evaluation;
    let nonce = nonce()?;
    let args = PhaseArgs {
        phase: Phase::Evaluate,
        handover: files.handover.clone(),
        result: Some(files.result.clone()),
        status: Some(files.status()),
        deadline: None,
        sandbox: sandbox.clone(),
    };
    let _ = std::fs::remove_file(&files.result);
    let _ = std::fs::remove_file(files.status());
    let tmp = files.handover.join(TMP);
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let cmd = trainer.phase_command(settings, &args)?;
    let limit = evaluation_phase_limit(&prepared.profile.name, audit);
    let input = if audit { format!("{nonce}\n{AUDIT}\n") } else { format!("{nonce}\n") };
    let over = format!("over time: the evaluation phase was stopped at its limit of {limit} s");
    let limit = Some((Duration::from_secs_f64(limit), over));
    let (ended, wall) = run_phase(procs, cmd, Role::Evaluation, &files.log, Some(&input), limit, deadline)?;
    // Where the agent's code could write during the evaluation (on CUDA), what it was fed does not outlive it,
    // not even when the evaluation failed.
    let _ = std::fs::remove_dir_all(&tmp);
    Ok((ended, wall, nonce))
}

pub(crate) fn append(path: &Path, text: &str) -> Result<()> {
    let mut f = std::fs::OpenOptions::new().append(true).open(path)?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", path.display()))
}

fn read_result(path: &Path, nonce: &str) -> Result<EvalResult> {
    let result: EvalResult = read_json(path)?;
    if result.nonce != nonce {
        bail!("{} does not carry this evaluation's nonce: not written by the evaluation", path.display());
    }
    Ok(result)
}

/// The result must be of this session's profile, budget and seed, over all of the profile's eval tokens.
fn check_result(r: EvalResult, prepared: &Prepared, budget: f64, seed: u64) -> Result<EvalResult> {
    let p = &prepared.profile;
    let tokens = (p.eval_tokens / p.max_seq_len * p.max_seq_len) as u64;
    if r.profile != p.name || r.time_budget != budget || r.seed != seed || r.eval_tokens != tokens {
        bail!(
            "the result is for profile {}, budget {} s, seed {}, {} eval tokens; this training is profile {}, \
             budget {budget} s, seed {seed}, {tokens} eval tokens",
            r.profile,
            r.time_budget,
            r.seed,
            r.eval_tokens,
            p.name
        );
    }
    Ok(r)
}

/// How evaluating a saved checkpoint again ended.
pub enum Again {
    Evaluated(EvalResult),
    /// The evaluation failed or its result does not hold: why, as a training's crash.
    Failed(Crash),
    Interrupted,
}

/// Evaluates the checkpoint a training left in `files.handover` again, without training (for `autoresearch
/// eval`), or audits it (before a keep).
pub fn evaluate_again(
    trainer: &Trainer,
    settings: &TrainingSettings,
    files: &TrainingFiles,
    procs: &mut dyn Processes,
    audit: bool,
) -> Result<Again> {
    let cache = cache_root()?;
    let prepared = Prepared::load(&cache, settings.profile.as_deref())?;
    let checkpoint = files.handover.join(CHECKPOINT);
    if !checkpoint.is_file() {
        bail!("no checkpoint at {} (kept for kept runs and crashed evaluations)", checkpoint.display());
    }
    let failed = |reason: String, retryable: bool| Again::Failed(Crash::with_log(reason, retryable, &files.log));
    // Where the trainings run (a Slurm job, say), the evaluation runs too.
    match procs.begin(Duration::from_secs_f64(evaluation_phase_limit(&prepared.profile.name, audit)))? {
        Begun::Ready => {}
        Begun::Interrupted => return Ok(Again::Interrupted),
        Begun::Failed(why) => return Ok(failed(why, true)),
    }
    let again = (|| -> Result<Again> {
        let _temporary = TemporaryFiles(files.handover.join(TMP));
        let cuda = trainer.device == DeviceChoice::Cuda;
        let sandboxes = sandboxes(&prepared, &cache, &trainer.root, cuda, files, &trainer.binary());
        let deadline = (Instant::now() + Duration::from_secs(24 * 3600), String::new());
        let evaluation = Evaluation { trainer, settings, files, sandbox: &sandboxes.evaluation, prepared: &prepared };
        let (ended, _, nonce) = evaluation_phase(&evaluation, procs, deadline, audit)?;
        match ended {
            Ended::Exited(status) => {
                if let Some((reason, retryable)) = phase_failure(procs, status, files) {
                    return Ok(failed(reason, retryable));
                }
            }
            Ended::OverTime(why) => return Ok(failed(why, true)),
            Ended::Interrupted => return Ok(Again::Interrupted),
        }
        let budget = prepared.profile.budget(settings.time_budget);
        let seed = settings.seed.unwrap_or(crate::state::SEED);
        Ok(match read_result(&files.result, &nonce).and_then(|r| check_result(r, &prepared, budget, seed)) {
            Ok(result) => Again::Evaluated(result),
            Err(e) => failed(format!("{e:#}"), false),
        })
    })();
    let finished = procs.finish();
    let again = again?;
    finished?;
    Ok(again)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    #[test]
    fn crashes_are_named_from_the_phases_status_and_the_exit() {
        use autoresearch_harness::handover::Outcome;
        let exit = |code: i32| ExitStatus::from_raw(code << 8);
        let signal = |sig: i32| ExitStatus::from_raw(sig);
        let status =
            |outcome, message: &str| Some(PhaseStatus { outcome, message: message.into(), sealed: Vec::new() });
        assert_eq!(crash_reason(exit(0), status(Outcome::Success, "").as_ref()), None);
        let (why, retryable) = crash_reason(exit(0), None).unwrap();
        assert!(why.starts_with("the phase exited without reporting its end") && !retryable, "{why}");
        let oom = status(Outcome::OutOfMemory, "CUDA out of memory. Tried to allocate 2.00 GiB");
        assert!(crash_reason(exit(1), oom.as_ref()).unwrap().1);
        let error = status(Outcome::Error, "non-causal: position 3 sees later tokens");
        assert_eq!(
            crash_reason(exit(1), error.as_ref()),
            Some(("non-causal: position 3 sees later tokens".into(), false))
        );
        // The status, not the log: "out of memory" printed by the agent's code is not read.
        let panic = status(Outcome::Panic, "boom");
        assert_eq!(crash_reason(exit(1), panic.as_ref()), Some(("panic: boom".into(), false)));
        assert_eq!(crash_reason(signal(9), None), Some(("killed (signal 9: out of memory?)".into(), true)));
        assert_eq!(crash_reason(signal(11), None), Some(("killed by signal 11".into(), false)));
        assert_eq!(crash_reason(exit(3), None), Some(("exit code 3 (the phase wrote no status)".into(), false)));
    }

    fn prepared(dir: &Path) -> Prepared {
        Prepared {
            profile: autoresearch_harness::profile::Profile::builtin("small").unwrap(),
            data_dir: dir.into(),
            source: "test".into(),
            val_sources: Vec::new(),
        }
    }

    #[test]
    fn no_phase_reads_what_earlier_experiments_left_and_the_cpu_gets_device_nodes_one_by_one() {
        let dir = tempfile::tempdir().unwrap();
        let (repo, cache) = (dir.path().join("repo"), dir.path().join("cache"));
        let files = TrainingFiles::in_folder(&repo.join(".autoresearch/runs/3"), 42, dir.path().join("l"));
        // A worker's binary, beneath the otherwise unreadable .autoresearch.
        let binary = repo.join(".autoresearch/workers/1/bin/autoresearch-train");
        let prepared = Prepared { data_dir: cache.join("small/data"), ..prepared(dir.path()) };
        let cpu = sandboxes(&prepared, &cache, &repo, false, &files, &binary);
        // The demo corpus's copies in the repository too (its files and its git objects).
        for p in [".autoresearch", "results.tsv", "run.log", "data/demo", ".git"] {
            assert!(cpu.training.deny_read.contains(&repo.join(p)), "{p}");
            assert!(cpu.evaluation.deny_read.contains(&repo.join(p)), "{p}");
        }
        assert!(cpu.training.deny_read.contains(&PathBuf::from("/dev/shm")));
        assert!(cpu.training.deny_read.contains(&crate::trainer::cargo_target(&repo)));
        // On the CPU the training reads its profile's files and nothing else of the cache or the machine.
        let reads = cpu.training.only_read.as_ref().expect("a training on the CPU reads a list");
        for p in [cache.join("small/prepared.json"), cache.join("small/tokenizer"), cache.join("small/data")] {
            assert!(reads.contains(&p), "{}", p.display());
        }
        let elsewhere = |r: &PathBuf| r == &cache || r == &repo || r == Path::new("/usr") || r == Path::new("/tmp");
        assert!(!reads.iter().any(|r| elsewhere(r)
            || r.starts_with("/usr/share")
            || r.starts_with(dir.path()) && !r.starts_with(cache.join("small")) && r != &cache.join("active")));
        // Of /proc and /sys, what the sandbox finds for libtorch where it is applied (its own /proc folder): not
        // what other processes show there (the supervisor finds the training's children).
        assert!(!reads.iter().any(|r| r.starts_with("/proc") || r.starts_with("/sys")));
        assert!(cpu.training.system_reads);
        assert_eq!(
            cpu.evaluation.only_read, None,
            "the evaluation runs no agent code on the CPU (its model process does)"
        );
        assert_eq!(cpu.training.read, vec![files.handover.clone(), binary.clone()], "its hand-over folder, its binary");
        assert_eq!(cpu.evaluation.read, vec![files.handover.clone(), binary.clone()], "and the binary it runs again");
        assert!(cpu.training.write.contains(&files.handover) && cpu.training.write.contains(&"/dev/null".into()));
        assert!(!cpu.training.write.iter().any(|w| w == Path::new("/dev") || w.starts_with("/proc")));
        assert!(!cpu.training.allow_network && !cpu.evaluation.allow_network);
        assert!(cpu.training.unix_sockets_only && cpu.evaluation.unix_sockets_only, "UDP closed too");
        assert!(cpu.training.keep_metadata && cpu.evaluation.keep_metadata, "no message in a file's metadata");
        assert!(cpu.training.no_kernel_objects && cpu.evaluation.no_kernel_objects, "nor in the user's keyring");
        assert!(cpu.training.file_capabilities_only && cpu.evaluation.file_capabilities_only, "no root's clock");
        assert!(cpu.training.others_untouched && cpu.evaluation.others_untouched, "no other worker demoted");
        // CUDA keeps the policy measured on an H200.
        let cuda = sandboxes(&prepared, &cache, &repo, true, &files, &binary);
        for p in ["/dev", "/proc", "/sys"] {
            assert!(cuda.training.write.contains(&PathBuf::from(p)), "{p}");
        }
        assert_eq!(cuda.training.only_read, None);
        assert!(files.status().ends_with("runs/3/result-42.status.json"));
        assert!(files.handed_over().ends_with("runs/3/seed-42.handed-over.json"));

        // Nor can the build compile them in (`include_bytes!`). Of the repository it reads its sources: no data or
        // fixture (the golden set is made from the demo corpus), nothing in .git or the target folder; and where
        // its libtorch link leads, with the CUDA libraries beside it.
        let sources = ["Cargo.toml", "Cargo.lock", "train/train.rs", "ops/src/shim.cpp"];
        let others = ["tests/golden/data/shard_06542.parquet", "tests/golden/meta.json", ".git/config.toml"];
        let others = others.into_iter().chain(["target/tmp/research/x/train/train.rs", "README.md", "data/demo/a.rs"]);
        for f in sources.into_iter().chain(others.clone()) {
            std::fs::create_dir_all(repo.join(f).parent().unwrap()).unwrap();
            std::fs::write(repo.join(f), "").unwrap();
        }
        let libtorch = dir.path().join("wheel/torch");
        std::fs::create_dir_all(&libtorch).unwrap();
        std::fs::create_dir_all(dir.path().join("wheel/nvidia")).unwrap();
        std::os::unix::fs::symlink(&libtorch, repo.join(".libtorch")).unwrap();
        let trainer = Trainer::new(repo.clone(), DeviceChoice::Cpu);
        let build = build_policy(&prepared, &trainer);
        let denied = unreadable(&prepared, &repo);
        assert_eq!(build.deny_read[..denied.len()], denied);
        let target = crate::trainer::cargo_target(&repo);
        assert!(build.deny_read.contains(&repo.join(".autoresearch")) && build.deny_read.contains(&target));
        assert!(build.deny_read.contains(&PathBuf::from("/dev/shm")));
        assert_eq!(build.read, vec![target.join("release")]);
        let reads = build.only_read.as_ref().expect("the build reads a list");
        let in_repo: Vec<_> = reads.iter().filter_map(|p| p.strip_prefix(&repo).ok()?.to_str()).collect();
        assert_eq!(in_repo, ["Cargo.lock", "Cargo.toml", "ops/src/shim.cpp", "train/train.rs"]);
        let wheel = dir.path().join("wheel").canonicalize().unwrap();
        assert!(reads.contains(&wheel.join("torch")) && reads.iter().any(|p| p.ends_with("torch/../nvidia")));
        assert!(reads.contains(&PathBuf::from("/usr")));
        assert!(!reads.iter().any(|r| r == Path::new("/") || r == Path::new("/tmp") || r == Path::new("/home")));
    }

    #[test]
    fn a_result_must_carry_the_nonce_and_match_the_training() {
        let dir = tempfile::tempdir().unwrap();
        let prepared = prepared(dir.path());
        let result = EvalResult {
            nonce: "n1".into(),
            val_bpb: 1.5,
            eval_tokens: 1 << 17,
            profile: "small".into(),
            time_budget: 60.0,
            seed: 42,
            device: "cpu".into(),
            seconds: 1.0,
        };
        let path = dir.path().join("result.json");
        std::fs::write(&path, serde_json::to_vec(&result).unwrap()).unwrap();
        assert!(read_result(&path, "n2").unwrap_err().to_string().contains("nonce"));
        let read = read_result(&path, "n1").unwrap();
        assert_eq!(check_result(read.clone(), &prepared, 60.0, 42).unwrap(), result);
        for bad in [
            EvalResult { seed: 43, ..result.clone() },
            EvalResult { time_budget: 600.0, ..result.clone() },
            EvalResult { eval_tokens: 1000, ..result.clone() },
        ] {
            assert!(check_result(bad, &prepared, 60.0, 42).unwrap_err().to_string().contains("this training is"));
        }
    }

    #[test]
    fn a_retry_takes_over_only_a_kept_hand_over_that_still_holds_what_it_sealed() {
        let dir = tempfile::tempdir().unwrap();
        let earlier = TrainingFiles::in_folder(&dir.path().join("runs/3"), 42, PathBuf::new());
        let files = TrainingFiles::in_folder(&dir.path().join("runs/4"), 42, PathBuf::new());
        std::fs::create_dir_all(&earlier.handover).unwrap();
        std::fs::create_dir_all(&files.handover).unwrap();
        let stats = TrainingStats { num_params: 7, ..Default::default() };
        let sealed = vec![
            Sealed::write(&earlier.handover, CHECKPOINT, b"weights").unwrap(),
            Sealed::write(&earlier.handover, TRAINING_STATS, &serde_json::to_vec(&stats).unwrap()).unwrap(),
        ];
        // No record beside it (a session from before records, or a project's training): nothing to take over.
        assert!(HandedOver::kept(&earlier).is_none());
        let why = HandedOver::take_over(&earlier, &files).unwrap_err();
        assert!(why.starts_with("no training kept in ") && why.ends_with("runs/3/seed-42 to evaluate again"), "{why}");
        let record = HandedOver { training_seconds: 12.5, sealed };
        std::fs::write(earlier.handed_over(), serde_json::to_vec(&record).unwrap()).unwrap();
        let (taken, taken_stats) = HandedOver::take_over(&earlier, &files).unwrap();
        assert_eq!((taken.training_seconds, taken_stats), (12.5, stats));
        assert_eq!(std::fs::read(files.handover.join(CHECKPOINT)).unwrap(), b"weights");

        // Its stats gone: not kept. Its checkpoint changed since it was sealed: refused, saying so.
        remove_handover(&files.handover).unwrap();
        std::fs::create_dir_all(&files.handover).unwrap();
        std::fs::rename(earlier.handover.join(TRAINING_STATS), dir.path().join("stats")).unwrap();
        assert!(HandedOver::kept(&earlier).is_none());
        std::fs::rename(dir.path().join("stats"), earlier.handover.join(TRAINING_STATS)).unwrap();
        std::fs::remove_file(earlier.handover.join(CHECKPOINT)).unwrap();
        std::fs::write(earlier.handover.join(CHECKPOINT), b"weightz").unwrap();
        let why = HandedOver::take_over(&earlier, &files).unwrap_err();
        assert!(why.contains("no longer holds what it handed over: model.safetensors changed"), "{why}");

        // A folder removed goes with its record.
        remove_handover(&earlier.handover).unwrap();
        assert!(!earlier.handover.exists() && !earlier.handed_over().exists());
    }
}
