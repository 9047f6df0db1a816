//! `autoresearch train`: build the training file and run it once (train, then evaluate), output to the
//! terminal, the summary last.

use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Result};
use autoresearch_harness::profile::{cache_root, Prepared};
use autoresearch_research::experiment::default_timeout;
use autoresearch_research::process::Role;
use autoresearch_research::trainer::{repo_root, DeviceChoice, Trainer, TrainingSettings};
use autoresearch_research::training::{build_policy, train_and_evaluate, Processes, TrainingFiles};

/// `--device`: one of [`DeviceChoice::NAMES`] (auto: CUDA if `nvidia-smi` finds a GPU, else the CPU).
pub fn device_parser() -> impl clap::builder::TypedValueParser<Value = DeviceChoice> {
    use clap::builder::TypedValueParser as _;
    clap::builder::PossibleValuesParser::new(DeviceChoice::NAMES)
        .map(|name| name.parse::<DeviceChoice>().expect("one of the possible values"))
}

#[derive(clap::Args)]
pub struct Args {
    /// Prepared profile to train on [default: the one prepared last]
    #[arg(long)]
    profile: Option<String>,

    /// Seconds of training instead of the profile's budget (for smoke tests; the summary records it)
    #[arg(long, value_name = "SECONDS")]
    time_budget: Option<f64>,

    /// Random seed [default: 42]
    #[arg(long)]
    seed: Option<u64>,

    /// Where to train
    #[arg(long, default_value = "auto", value_parser = device_parser())]
    device: DeviceChoice,

    /// Run this training binary, built elsewhere, instead of building one (a GPU machine without Rust)
    #[arg(long, value_name = "FILE")]
    binary: Option<PathBuf>,
}

/// Processes of a training run from the terminal: Ctrl-C reaches them as it reaches us.
struct Terminal;

impl Processes for Terminal {
    fn start(&mut self, cmd: &mut Command, _: Role) -> Result<Child> {
        Ok(cmd.spawn()?)
    }
    fn ended(&mut self, _: &Child) -> Result<()> {
        Ok(())
    }
    fn interrupted(&self) -> bool {
        false
    }
}

/// Copies what is appended to `log` to stdout until `done`.
fn follow(log: PathBuf, done: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        use std::io::{Read, Seek, SeekFrom, Write};
        let mut offset = 0;
        let mut buf = Vec::new();
        loop {
            let finished = done.load(Ordering::SeqCst);
            if let Ok(mut f) = std::fs::File::open(&log) {
                buf.clear();
                if f.seek(SeekFrom::Start(offset)).and_then(|_| f.read_to_end(&mut buf)).is_ok() {
                    offset += buf.len() as u64;
                    let mut out = std::io::stdout().lock();
                    let _ = out.write_all(&buf).and_then(|_| out.flush());
                }
            }
            if finished {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    })
}

pub fn train(args: Args) -> Result<()> {
    if let Some(b) = args.time_budget {
        if !b.is_finite() || b <= 0.0 {
            bail!("--time-budget must be positive, not {b}");
        }
    }
    let mut trainer = Trainer::new(repo_root()?, args.device);
    trainer.check_gpu()?;
    let prepared = Prepared::load(&cache_root()?, args.profile.as_deref())?;
    trainer.launcher = Some(std::env::current_exe()?);
    trainer.build_policy = Some(build_policy(&prepared, &trainer));
    let folder = tempfile::Builder::new().prefix("autoresearch-train-").tempdir()?;
    // Its own copy of the binary: a session sharing the target folder may build another one meanwhile.
    trainer.installed = Some(folder.path().join("autoresearch-train"));
    match args.binary {
        Some(binary) => trainer.prebuilt = Some(binary),
        None => {
            if let Err(compiler) = trainer.build(&mut |cmd| Ok(cmd.spawn()?), &mut |line| eprintln!("{line}"))?.output {
                eprint!("{compiler}");
                bail!("building the training file failed");
            }
        }
    }
    let settings = TrainingSettings { profile: args.profile, time_budget: args.time_budget, seed: args.seed };
    let seed = settings.seed.unwrap_or(autoresearch_research::state::SEED);
    let files = TrainingFiles::in_folder(folder.path(), seed, folder.path().join("train.log"));
    let done = Arc::new(AtomicBool::new(false));
    let follower = follow(files.log.clone(), done.clone());
    let timeout = default_timeout(prepared.profile.budget(settings.time_budget), &prepared.profile.name);
    let trained = train_and_evaluate(&trainer, &settings, &files, timeout, &mut Terminal);
    done.store(true, Ordering::SeqCst);
    let _ = follower.join();
    if let Err(crash) = trained?.result {
        bail!("training failed: {}", crash.reason);
    }
    Ok(())
}
