//! Building the training binary (incrementally) and running it with the harness's settings.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

/// The repository: the nearest folder upwards from the current one that holds `train/train.rs`.
pub fn repo_root() -> Result<PathBuf> {
    let cwd = std::env::current_dir().context("reading the current folder")?;
    cwd.ancestors()
        .find(|d| d.join("train/train.rs").is_file() && d.join("Cargo.toml").is_file())
        .map(Path::to_path_buf)
        .with_context(|| format!("{} is not inside an autoresearch repository (no train/train.rs above it)", cwd.display()))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceChoice {
    /// CUDA if `nvidia-smi` finds a GPU, else the CPU
    Auto,
    Cpu,
    Cuda,
}

impl DeviceChoice {
    pub fn resolve(self) -> DeviceChoice {
        match self {
            DeviceChoice::Auto => {
                let gpu = Command::new("nvidia-smi").arg("-L").output().is_ok_and(|o| o.status.success() && !o.stdout.is_empty());
                if gpu { DeviceChoice::Cuda } else { DeviceChoice::Cpu }
            }
            other => other,
        }
    }
}

/// What a training run gets from the harness, through the environment.
#[derive(Clone, Debug, Default)]
pub struct RunSettings {
    pub profile: Option<String>,
    pub time_budget: Option<f64>,
    pub seed: Option<u64>,
}

pub struct Trainer {
    pub root: PathBuf,
    pub device: DeviceChoice,
}

impl Trainer {
    pub fn new(root: PathBuf, device: DeviceChoice) -> Trainer {
        Trainer { root, device: device.resolve() }
    }

    fn libtorch_link(&self) -> PathBuf {
        self.root.join(if self.device == DeviceChoice::Cuda { ".libtorch-cuda" } else { ".libtorch" })
    }

    /// Cargo's target folder for this variant: $CARGO_TARGET_DIR or `target`, with `cuda/` inside it for the
    /// CUDA build (the two variants link different libtorch builds).
    fn target_dir(&self) -> PathBuf {
        let base = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| self.root.join("target"), |d| self.root.join(d));
        if self.device == DeviceChoice::Cuda { base.join("cuda") } else { base }
    }

    pub fn binary(&self) -> PathBuf {
        self.target_dir().join("release/autoresearch-train")
    }

    /// The cargo command that builds the binary; its output is the compiler's.
    pub fn build_command(&self) -> Command {
        let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        cmd.current_dir(&self.root).args(["build", "--release", "--quiet", "-p", "autoresearch-train", "--target-dir"]);
        cmd.arg(self.target_dir());
        if self.device == DeviceChoice::Cuda {
            cmd.args(["--features", "cuda"]).env("LIBTORCH", self.libtorch_link());
        }
        cmd
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

    /// Builds (incrementally), with the compiler's messages going to the terminal.
    pub fn build(&self) -> Result<()> {
        self.ensure_libtorch()?;
        let status = self.build_command().status().context("running cargo")?;
        if !status.success() {
            bail!("building the training binary failed");
        }
        Ok(())
    }

    /// Builds (incrementally), capturing the compiler's messages: Ok(output) or Err(output) on a build error.
    pub fn build_captured(&self) -> Result<std::result::Result<String, String>> {
        self.ensure_libtorch()?;
        let out = self.build_command().arg("--message-format=short").output().context("running cargo")?;
        let text = String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
        Ok(if out.status.success() { Ok(text) } else { Err(text) })
    }

    /// The command that runs one training run.
    pub fn run_command(&self, settings: &RunSettings) -> Result<Command> {
        let mut cmd = Command::new(self.binary());
        cmd.current_dir(&self.root).stdin(Stdio::null());
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
            cmd.env("LD_LIBRARY_PATH", cuda_library_path()?);
        }
        Ok(cmd)
    }
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
