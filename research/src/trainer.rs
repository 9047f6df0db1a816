//! Building the training binary (incrementally) and the commands that run it with the harness's settings.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use autoresearch_harness::handover::{PhaseArgs, DEVICE_ENV, TMP};
use autoresearch_harness::sandbox::Policy;

use crate::TRAINING_FILE;
use serde::{Deserialize, Serialize};

/// The repository: the nearest folder upwards from the current one that holds `train/train.rs`.
pub fn repo_root() -> Result<PathBuf> {
    let cwd = std::env::current_dir().context("reading the current folder")?;
    cwd.ancestors()
        .find(|d| d.join("train/train.rs").is_file() && d.join("Cargo.toml").is_file())
        .map(Path::to_path_buf)
        .with_context(|| {
            format!("{} is not inside an autoresearch repository (no train/train.rs above it)", cwd.display())
        })
}

/// A build that takes longer than this shows cargo's progress.
pub const LONG_BUILD: Duration = Duration::from_secs(10);

/// Which training binary this is, for the device batches kept per binary: its file's identity (device, inode,
/// size, modification time), which every build changes and no training can set (it writes no binary; on the CPU
/// it changes no file's times). Cheaper than hashing the ~100 MB binary, and the same for every rerun of one
/// build.
pub fn binary_identity(path: &Path) -> Result<String> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(format!("{}:{}:{}:{}.{:09}", m.dev(), m.ino(), m.size(), m.mtime(), m.mtime_nsec()))
}

/// The lock file, in the target folder, that a build holds until its binary is copied out.
const BUILD_LOCK: &str = "autoresearch-train.lock";

/// A build's outcome: cargo's output, Err on a build error; and the time spent waiting for other builds first
/// (another session's in the same target folder, or, see [`crate::experiment::build`], another worker's in the
/// repository's tree), which is neither building nor the harness's own time.
pub struct Built {
    pub output: std::result::Result<String, String>,
    pub waited: Duration,
}

/// Where trainings run, as the user chose it: the one device type of the command line, the session's state
/// (`"auto"`, `"cpu"` or `"cuda"` in state.json) and the trainer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    /// CUDA if `nvidia-smi` finds a GPU, else the CPU
    Auto,
    Cpu,
    Cuda,
}

impl std::str::FromStr for DeviceChoice {
    type Err = anyhow::Error;

    fn from_str(name: &str) -> Result<DeviceChoice> {
        match name {
            "auto" => Ok(DeviceChoice::Auto),
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" => Ok(DeviceChoice::Cuda),
            _ => bail!("unknown device {name:?} (known: {})", DeviceChoice::NAMES.join(", ")),
        }
    }
}

impl DeviceChoice {
    pub const NAMES: [&'static str; 3] = ["auto", "cpu", "cuda"];

    pub fn resolve(self) -> DeviceChoice {
        match self {
            DeviceChoice::Auto => {
                let gpu = Command::new("nvidia-smi")
                    .arg("-L")
                    .output()
                    .is_ok_and(|o| o.status.success() && !o.stdout.is_empty());
                if gpu {
                    DeviceChoice::Cuda
                } else {
                    DeviceChoice::Cpu
                }
            }
            other => other,
        }
    }
}

/// What a training run gets from the harness, through the environment.
#[derive(Clone, Debug, Default)]
pub struct TrainingSettings {
    pub profile: Option<String>,
    pub time_budget: Option<f64>,
    pub seed: Option<u64>,
}

/// Cargo's target folder for the checkout `root`: $CARGO_TARGET_DIR (relative to it, or absolute) or `target`.
pub fn cargo_target(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), |d| root.join(d))
}

/// Where scripts/libtorch.sh links libtorch in a checkout: the CPU build's, and the CUDA build's.
pub const LIBTORCH_LINKS: [&str; 2] = [".libtorch", ".libtorch-cuda"];

#[derive(Clone)]
pub struct Trainer {
    pub root: PathBuf,
    pub device: DeviceChoice,
    /// The cargo that builds the training file: $CARGO (set when we run under cargo) or `cargo`.
    pub cargo: PathBuf,
    /// A training binary built elsewhere, run instead of building one.
    pub prebuilt: Option<PathBuf>,
    /// Where a successful build's binary is copied and run from (a session's or a worker's own copy: the next
    /// build in the target folder may be another worker's, or another session's where CARGO_TARGET_DIR is shared).
    pub installed: Option<PathBuf>,
    /// Set in the environment of both phases (a worker's GPU or thread count).
    pub env: Vec<(String, String)>,
    /// The cores both phases are pinned to (a worker's share; empty: not pinned). A process may widen its own
    /// affinity again: this keeps honest trainings apart, it does not confine one.
    pub cpus: Vec<usize>,
    /// The program that runs a command confined by a policy, under a supervisor (`autoresearch sandboxed`): the
    /// build, and a project's commands, run through it where it is set.
    pub launcher: Option<PathBuf>,
    /// The build's policy (`training::build_policy`): it reads the repository's sources and the toolchain, not
    /// the validation data, so that the training file cannot compile it in with `include_bytes!` (None: the build
    /// is not confined).
    pub build_policy: Option<Policy>,
}

impl Trainer {
    pub fn new(root: PathBuf, device: DeviceChoice) -> Trainer {
        let cargo = std::env::var_os("CARGO").map_or_else(|| PathBuf::from("cargo"), PathBuf::from);
        Trainer {
            root,
            device: device.resolve(),
            cargo,
            prebuilt: None,
            installed: None,
            env: Vec::new(),
            cpus: Vec::new(),
            launcher: None,
            build_policy: None,
        }
    }

    /// A command that runs `program`, confined by `policy` through the launcher where there is one (else
    /// unconfined).
    pub fn confined(&self, policy: Option<&Policy>, program: impl AsRef<std::ffi::OsStr>) -> Result<Command> {
        Ok(match (&self.launcher, policy) {
            (Some(launcher), Some(policy)) => {
                let mut cmd = Command::new(launcher);
                cmd.args(["sandboxed", "--policy", &serde_json::to_string(policy)?, "--"]).arg(program);
                cmd
            }
            _ => Command::new(program),
        })
    }

    /// On CUDA: refuses a GPU older than the training file needs (see
    /// [`autoresearch_harness::device::check_gpu`]), before anything is built or run. The GPU is the first visible
    /// one, as `nvidia-smi` lists it; where it cannot say (no `nvidia-smi`, an old driver), nothing is refused.
    pub fn check_gpu(&self) -> Result<()> {
        use autoresearch_harness::device::{check_gpu, parse_gpus};
        if self.device != DeviceChoice::Cuda {
            return Ok(());
        }
        let Ok(out) =
            Command::new("nvidia-smi").args(["--query-gpu=name,compute_cap", "--format=csv,noheader"]).output()
        else {
            return Ok(());
        };
        let gpus = parse_gpus(&String::from_utf8_lossy(&out.stdout));
        let visible = self.env.iter().find(|(k, _)| k == "CUDA_VISIBLE_DEVICES").map(|(_, v)| v.clone());
        let first_visible = visible
            .or_else(|| std::env::var("CUDA_VISIBLE_DEVICES").ok())
            .and_then(|v| v.split(',').next().and_then(|i| i.trim().parse::<usize>().ok()))
            .unwrap_or(0);
        match gpus.get(first_visible) {
            Some(gpu) => check_gpu(gpu),
            None => Ok(()),
        }
    }

    fn libtorch_link(&self) -> PathBuf {
        self.root.join(LIBTORCH_LINKS[(self.device == DeviceChoice::Cuda) as usize])
    }

    /// Cargo's target folder for this variant: $CARGO_TARGET_DIR or `target`, with `cuda/` inside it for the
    /// CUDA build (the two variants link different libtorch builds).
    fn target_dir(&self) -> PathBuf {
        let base = cargo_target(&self.root);
        if self.device == DeviceChoice::Cuda {
            base.join("cuda")
        } else {
            base
        }
    }

    /// Where cargo builds this variant's release binary and what goes into it: all the build reads of the
    /// target folder.
    pub fn release_dir(&self) -> PathBuf {
        self.target_dir().join("release")
    }

    /// The binary cargo builds.
    fn built(&self) -> PathBuf {
        self.release_dir().join("autoresearch-train")
    }

    /// Where the binary cargo built from this tree says which training file it was built from (written after
    /// each build): one per tree, since sessions may share a target folder, where cargo keeps each tree's build.
    fn built_from(&self) -> PathBuf {
        let tree = autoresearch_harness::fsutil::sha256_hex(self.root.as_os_str().as_encoded_bytes());
        self.release_dir().join(format!("autoresearch-train.built-from.{}", &tree[..16]))
    }

    /// Makes cargo build the training file as it is: where its content is not what the binary was built from,
    /// its modification time is set to now. Cargo judges freshness by modification times alone, so a changed
    /// file set back to its old time (a red team did so) would otherwise run as the earlier binary while the
    /// session recorded the new file. Returns what the binary will have been built from: this tree's file,
    /// by its SHA-256.
    fn touch_a_changed_training_file(&self) -> Result<String> {
        let path = self.root.join(TRAINING_FILE);
        let hash = autoresearch_harness::handover::sha256_of_regular_file(&path)?;
        let source = format!("{}\n{hash}\n", path.display());
        if std::fs::read_to_string(self.built_from()).ok().as_deref() != Some(source.as_str()) {
            let _ = std::fs::remove_file(self.built_from());
            // Read-only will do (a file's owner may set its times): a training file may be read-only.
            let file = std::fs::File::open(&path);
            file.and_then(|f| f.set_modified(std::time::SystemTime::now()))
                .with_context(|| format!("setting {}'s modification time", path.display()))?;
        }
        Ok(source)
    }

    /// What the release folder's training library and binary were last built from, whichever tree built them.
    fn last_built_from(&self) -> PathBuf {
        self.release_dir().join("autoresearch-train.last-built-from")
    }

    /// Removes what earlier versions of the training file were compiled into (the training crate's library and
    /// binary, in the release folder and its `deps`), before a build of another file. The build reads the release
    /// folder, where its dependencies' compiled forms lie: a file could otherwise `include_bytes!` the last build's
    /// library and copy out, at compile time, what earlier versions had compiled in, each adding as much as the
    /// growth limit allows (red team 13 carried three random 10 KiB chunks through three experiments so).
    fn remove_earlier_builds(&self) -> Result<()> {
        let release = self.release_dir();
        let uplifted = ["libtrain.rlib", "libtrain.d", "autoresearch-train", "autoresearch-train.d"];
        let doomed = uplifted.iter().map(|name| release.join(name));
        let deps = std::fs::read_dir(release.join("deps")).into_iter().flatten().flatten().filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let ours = ["libtrain-", "train-", "autoresearch_train-"].iter().any(|p| name.starts_with(p));
            ours.then(|| entry.path())
        });
        for path in doomed.chain(deps) {
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(e).with_context(|| format!("removing an earlier build's {}", path.display()));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The binary the phases run.
    pub fn binary(&self) -> PathBuf {
        self.prebuilt.clone().or_else(|| self.installed.clone()).unwrap_or_else(|| self.built())
    }

    /// An exclusive lock on the target folder's training binary, waited for (and said so through `show`), and
    /// how long that wait was.
    fn lock_target(&self, show: &mut dyn FnMut(&str)) -> Result<(std::fs::File, Duration)> {
        let dir = self.target_dir();
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join(BUILD_LOCK);
        let file = std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        let waiting = Instant::now();
        if file.try_lock().is_err() {
            show(&format!(
                "waiting for another build in {} (another session shares this target folder)",
                dir.display()
            ));
            file.lock().with_context(|| format!("locking {}", path.display()))?;
        }
        Ok((file, waiting.elapsed()))
    }

    /// The cargo command that builds the binary; its output is the compiler's.
    pub fn build_command(&self) -> Result<Command> {
        let mut cmd = self.confined(self.build_policy.as_ref(), &self.cargo)?;
        cmd.current_dir(&self.root).args(["build", "--release", "--message-format=short", "-p", "autoresearch-train"]);
        cmd.arg("--target-dir").arg(self.target_dir());
        // The compiler's temporary files where the sandboxed build reads (not /tmp, where other copies of the
        // data may lie).
        let tmp = self.release_dir().join("build-tmp");
        std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        cmd.env("TMPDIR", tmp);
        // No compiler wrapper (sccache, say): its server, started outside the sandbox, would read for rustc what
        // the sandbox denies (an empty value overrides cargo's settings).
        cmd.env("RUSTC_WRAPPER", "").env("RUSTC_WORKSPACE_WRAPPER", "");
        if self.device == DeviceChoice::Cuda {
            cmd.args(["--features", "cuda"]).env("LIBTORCH", self.libtorch_link());
        }
        Ok(cmd)
    }

    /// Fetches libtorch with scripts/libtorch.sh if this checkout has none yet.
    pub fn ensure_libtorch(&self) -> Result<()> {
        if self.libtorch_link().join("lib").is_dir() {
            return Ok(());
        }
        eprintln!("libtorch is not set up here yet: running scripts/libtorch.sh (once; about 500 MB from PyPI)");
        let mut cmd = Command::new(self.root.join("scripts/libtorch.sh"));
        if self.device == DeviceChoice::Cuda {
            cmd.arg("--cuda");
        }
        let status = cmd.status().context("running scripts/libtorch.sh")?;
        if !status.success() {
            bail!("scripts/libtorch.sh failed ({status})");
        }
        Ok(())
    }

    /// Builds (incrementally), started by `spawn`, capturing cargo's output (see [`Built`]). A long build (the first, or one past [`LONG_BUILD`]) says so through `show` and shows
    /// cargo's progress there as it goes; a quick incremental build stays quiet.
    pub fn build(
        &self,
        spawn: &mut dyn FnMut(&mut Command) -> Result<Child>,
        show: &mut dyn FnMut(&str),
    ) -> Result<Built> {
        use std::io::{BufRead, BufReader, Read};
        use std::sync::mpsc::{channel, RecvTimeoutError};
        self.ensure_libtorch()?;
        // Held from cargo's start until the binary is copied out: a build of another session that shares the
        // target folder cannot replace the binary in between.
        let (_target, waited) = self.lock_target(show)?;
        let source = self.touch_a_changed_training_file()?;
        // The dependencies' compiled forms: libtorch's bindings take minutes the first time.
        let first = !self.release_dir().join("deps").is_dir();
        if std::fs::read_to_string(self.last_built_from()).ok().as_deref() != Some(source.as_str()) {
            let _ = std::fs::remove_file(self.last_built_from());
            self.remove_earlier_builds()?;
        }
        let mut cmd = self.build_command()?;
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = spawn(&mut cmd).context("running cargo")?;
        let (stdout, stderr) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
        let stdout = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = BufReader::new(stdout).read_to_string(&mut text);
            text
        });
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(std::io::Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let started = Instant::now();
        let (mut text, mut shown) = (String::new(), false);
        loop {
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(line) => {
                    if shown {
                        show(&format!("  {line}"));
                    }
                    text += &line;
                    text.push('\n');
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            if !shown && (first || started.elapsed() > LONG_BUILD) {
                shown = true;
                let why =
                    if first { "first build: libtorch's bindings compile once, a few minutes" } else { "a long build" };
                show(&format!("building the training file ({why}); cargo's progress:"));
                text.lines().for_each(|l| show(&format!("  {l}")));
            }
        }
        let status = child.wait().context("waiting for cargo")?;
        text += &stdout.join().unwrap_or_default();
        if shown {
            let done = if status.success() { "done" } else { "failed" };
            show(&format!("build {done} after {:.0} s", started.elapsed().as_secs_f64()));
        }
        if !status.success() {
            return Ok(Built { output: Err(text), waited });
        }
        std::fs::write(self.built_from(), &source).context("recording what the binary was built from")?;
        std::fs::write(self.last_built_from(), &source).context("recording what the binary was built from")?;
        if let Some(to) = &self.installed {
            // Copied only where cargo made a new binary: the copy's identity keys the device batches remembered
            // for it, so a build that changed nothing keeps them.
            let (from, stamp) = (binary_identity(&self.built())?, to.with_extension("from"));
            if !to.exists() || std::fs::read_to_string(&stamp).ok().as_deref() != Some(from.as_str()) {
                let tmp = to.with_extension("tmp");
                std::fs::create_dir_all(to.parent().unwrap_or(Path::new(".")))?;
                std::fs::copy(self.built(), &tmp)
                    .with_context(|| format!("copying the binary to {}", tmp.display()))?;
                std::fs::rename(&tmp, to)?;
                std::fs::write(&stamp, from).with_context(|| format!("writing {}", stamp.display()))?;
            }
        }
        Ok(Built { output: Ok(text), waited })
    }

    /// The command that runs one phase of a training (see [`autoresearch_harness::handover`]), with the
    /// harness's settings in its environment and its temporary files in the hand-over folder.
    pub fn phase_command(&self, settings: &TrainingSettings, args: &PhaseArgs) -> Result<Command> {
        let mut cmd = Command::new(self.binary());
        cmd.current_dir(&self.root).args(args.to_args()?).env("TMPDIR", args.handover.join(TMP));
        if let Some(p) = &settings.profile {
            cmd.env("AUTORESEARCH_PROFILE", p);
        }
        if let Some(b) = settings.time_budget {
            cmd.env("AUTORESEARCH_TIME_BUDGET", b.to_string());
        }
        if let Some(s) = settings.seed {
            cmd.env("AUTORESEARCH_SEED", s.to_string());
        }
        if self.device == DeviceChoice::Cuda {
            cmd.env("LD_LIBRARY_PATH", cuda_library_path()?).env(DEVICE_ENV, "cuda");
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        pin_to_cpus(&mut cmd, &self.cpus);
        Ok(cmd)
    }
}

/// Pins the process `cmd` starts to `cpus` (none: not pinned).
pub fn pin_to_cpus(cmd: &mut Command, cpus: &[usize]) {
    if cpus.is_empty() {
        return;
    }
    let cpus = cpus.to_vec();
    use std::os::unix::process::CommandExt;
    // In the child between fork and exec: sched_setaffinity is async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            for &c in &cpus {
                libc::CPU_SET(c, &mut set);
            }
            if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    };
}

/// Where libtorch's CUDA build and its CUDA libraries live on this machine: $AUTORESEARCH_TORCH_LIB, else the
/// `torch/lib` of the python3 PyTorch 2.11 install (which brings cuBLAS, cuDNN and the rest), with the
/// `nvidia/cu13/lib` beside it, where NVRTC is (the fused kernels are compiled with it at start-up).
fn cuda_library_path() -> Result<String> {
    let mut dirs = match std::env::var("AUTORESEARCH_TORCH_LIB") {
        Ok(dir) if !dir.is_empty() => vec![dir],
        _ => {
            let out = Command::new("python3")
                .args(["-c", "import os, torch; print(torch.__version__); print(os.path.dirname(torch.__file__))"])
                .output();
            let text = out.ok().filter(|o| o.status.success()).map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
            let Some(text) = text else {
                bail!("CUDA training needs PyTorch 2.11's libraries: `pip install torch==2.11.0`, or set AUTORESEARCH_TORCH_LIB to a torch/lib folder");
            };
            let mut lines = text.lines();
            let version = lines.next().unwrap_or_default();
            if !version.starts_with("2.11.") {
                bail!("python3 has torch {version}, but the training binary needs 2.11 (set AUTORESEARCH_TORCH_LIB)");
            }
            let torch = PathBuf::from(lines.next().unwrap_or_default());
            let nvidia = torch.join("../nvidia/cu13/lib");
            let mut dirs = vec![torch.join("lib").display().to_string()];
            if nvidia.is_dir() {
                dirs.push(nvidia.display().to_string());
            }
            dirs
        }
    };
    if let Ok(existing) = std::env::var("LD_LIBRARY_PATH") {
        dirs.extend(existing.split(':').filter(|d| !d.is_empty()).map(str::to_string));
    }
    Ok(dirs.join(":"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A trainer over a folder with a stand-in for libtorch and a `cargo` script that prints `progress` and
    /// exits with `code`.
    fn trainer(dir: &Path, progress: &str, code: i32) -> Trainer {
        std::fs::create_dir_all(dir.join(".libtorch/lib")).unwrap();
        std::fs::create_dir_all(dir.join("train")).unwrap();
        std::fs::write(dir.join(TRAINING_FILE), "// the training file\n").unwrap();
        let script = dir.join("cargo.sh");
        std::fs::write(&script, format!("#!/bin/sh\nprintf '{progress}' >&2\necho out\nexit {code}\n")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        Trainer {
            root: dir.to_path_buf(),
            device: DeviceChoice::Cpu,
            cargo: script,
            prebuilt: None,
            installed: None,
            env: Vec::new(),
            cpus: Vec::new(),
            launcher: None,
            build_policy: None,
        }
    }

    fn build(t: &Trainer) -> (std::result::Result<String, String>, Vec<String>) {
        let mut shown = Vec::new();
        let built = t.build(&mut |cmd| Ok(cmd.spawn()?), &mut |l| shown.push(l.to_string())).unwrap();
        (built.output, shown)
    }

    #[test]
    fn the_first_build_shows_its_progress_and_an_incremental_one_stays_quiet() {
        let dir = tempfile::tempdir().unwrap();
        let t = trainer(dir.path(), "   Compiling torch-sys v0.24.0\n   Compiling autoresearch-train v0.1.0\n", 0);
        let (result, shown) = build(&t);
        assert_eq!(result.unwrap(), "   Compiling torch-sys v0.24.0\n   Compiling autoresearch-train v0.1.0\nout\n");
        assert!(shown[0].starts_with("building the training file (first build"), "{shown:?}");
        assert!(shown.iter().any(|l| l.contains("Compiling torch-sys")), "{shown:?}");
        assert!(shown.last().unwrap().starts_with("build done after"), "{shown:?}");

        std::fs::create_dir_all(t.release_dir().join("deps")).unwrap();
        let (result, shown) = build(&t);
        assert!(result.is_ok());
        assert!(shown.is_empty(), "an incremental build says nothing: {shown:?}");
    }

    #[test]
    fn a_build_of_another_file_finds_no_earlier_build_of_the_training_crate() {
        let dir = tempfile::tempdir().unwrap();
        let t = trainer(dir.path(), "", 0);
        let release = t.release_dir();
        let ours = ["libtrain.rlib", "autoresearch-train", "deps/libtrain-1a2b.rlib", "deps/autoresearch_train-1a2b"];
        let theirs = ["deps/libautoresearch_harness-3c4d.rlib", "deps/libtch-5e6f.rlib", "libtrainer.rlib"];
        let plant = || {
            for f in ours.iter().chain(&theirs) {
                std::fs::create_dir_all(release.join(f).parent().unwrap()).unwrap();
                std::fs::write(release.join(f), "compiled").unwrap();
            }
        };
        let left = || ours.iter().filter(|f| release.join(f).exists()).count();
        plant();
        assert!(build(&t).0.is_ok());
        assert_eq!(left(), 0, "the training crate's earlier builds are gone");
        assert!(theirs.iter().all(|f| release.join(f).exists()), "its dependencies' stay");
        // The same file again: what the last build made of it stays (cargo finds it fresh).
        plant();
        assert!(build(&t).0.is_ok());
        assert_eq!(left(), ours.len());
        // Another file, built by another tree sharing the folder, or changed here: gone again.
        std::fs::write(dir.path().join(TRAINING_FILE), "fn changed() {}\n").unwrap();
        assert!(build(&t).0.is_ok());
        assert_eq!(left(), 0);
    }

    #[test]
    fn sessions_sharing_a_target_folder_each_run_the_binary_they_built() {
        let dir = tempfile::tempdir().unwrap();
        let shared = dir.path().join("shared-target");
        let sessions: Vec<Trainer> = ["one", "two"]
            .iter()
            .map(|name| {
                let root = dir.path().join(name);
                // A cargo that writes this session's binary into the shared folder, then takes a while to exit.
                let mut t = trainer(&root, "", 0);
                let script = "#!/bin/sh\nwhile [ $# -gt 0 ]; do [ \"$1\" = --target-dir ] && target=$2; shift; done\n\
                    mkdir -p \"$target/release\"\necho NAME > \"$target/release/autoresearch-train\"\nsleep 0.5\n";
                std::fs::write(&t.cargo, script.replace("NAME", name)).unwrap();
                std::os::unix::fs::symlink(&shared, root.join("target")).unwrap();
                t.installed = Some(root.join(".autoresearch/bin/autoresearch-train"));
                t
            })
            .collect();
        std::fs::create_dir_all(&shared).unwrap();
        let start = std::sync::Barrier::new(2);
        std::thread::scope(|scope| {
            for t in &sessions {
                let start = &start;
                scope.spawn(move || {
                    start.wait();
                    assert!(build(t).0.is_ok());
                });
            }
        });
        for (t, name) in sessions.iter().zip(["one", "two"]) {
            assert_eq!(std::fs::read_to_string(t.binary()).unwrap(), format!("{name}\n"));
        }
    }

    #[test]
    fn a_changed_training_file_is_built_whatever_its_modification_time() {
        let dir = tempfile::tempdir().unwrap();
        let t = trainer(dir.path(), "", 0);
        // A cargo that says the training file's modification time (seconds), as it would judge freshness by it.
        std::fs::write(&t.cargo, "#!/bin/sh\nstat -c %Y train/train.rs\n").unwrap();
        let file = dir.path().join(TRAINING_FILE);
        let set_back = || {
            let old = std::time::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
            std::fs::OpenOptions::new().write(true).open(&file).unwrap().set_modified(old).unwrap();
        };
        set_back();
        // Nothing says what the binary was built from: built as the file is now.
        assert_ne!(build(&t).0.unwrap(), "1000000000\n");
        // The same file, its time set back: cargo may judge by its time, the binary is the file's.
        set_back();
        assert_eq!(build(&t).0.unwrap(), "1000000000\n");
        // Another file set back to the old time, as a red team did: cargo sees a change.
        std::fs::write(&file, "// another training file\n").unwrap();
        set_back();
        assert_ne!(build(&t).0.unwrap(), "1000000000\n");
        // A failed build records nothing: the next builds the file again.
        set_back();
        std::fs::write(&file, "// a third\n").unwrap();
        set_back();
        let cargo = std::fs::read_to_string(&t.cargo).unwrap();
        std::fs::write(&t.cargo, format!("{cargo}exit 101\n")).unwrap();
        assert!(build(&t).0.is_err());
        set_back();
        std::fs::write(&t.cargo, cargo).unwrap();
        assert_ne!(build(&t).0.unwrap(), "1000000000\n");
    }

    #[test]
    fn a_failed_build_returns_the_compilers_output() {
        let dir = tempfile::tempdir().unwrap();
        let t = trainer(dir.path(), "error[E0308]: mismatched types\n", 101);
        let (result, shown) = build(&t);
        assert!(result.unwrap_err().contains("mismatched types"));
        assert!(shown.last().unwrap().starts_with("build failed after"), "{shown:?}");
    }
}
