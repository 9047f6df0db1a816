//! `autoresearch train`: build the training file and run it once, output to the terminal.

use anyhow::{bail, Result};
use autoresearch_research::trainer::{repo_root, DeviceChoice, Trainer, TrainingSettings};

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Device {
    /// CUDA if `nvidia-smi` finds a GPU, else the CPU
    Auto,
    Cpu,
    Cuda,
}

impl Device {
    pub fn choice(self) -> DeviceChoice {
        match self {
            Device::Auto => DeviceChoice::Auto,
            Device::Cpu => DeviceChoice::Cpu,
            Device::Cuda => DeviceChoice::Cuda,
        }
    }

    pub fn parse_name(name: &str) -> DeviceChoice {
        match name {
            "cpu" => DeviceChoice::Cpu,
            "cuda" => DeviceChoice::Cuda,
            _ => DeviceChoice::Auto,
        }
    }
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
    #[arg(long, value_enum, default_value_t = Device::Auto)]
    device: Device,
}

pub fn run(args: Args) -> Result<()> {
    if let Some(b) = args.time_budget {
        if !b.is_finite() || b <= 0.0 {
            bail!("--time-budget must be positive, not {b}");
        }
    }
    let trainer = Trainer::new(repo_root()?, args.device.choice());
    if let Err(compiler) = trainer.build(&mut |cmd| Ok(cmd.spawn()?), &mut |line| eprintln!("{line}"))? {
        eprint!("{compiler}");
        bail!("building the training file failed");
    }
    let settings = TrainingSettings { profile: args.profile, time_budget: args.time_budget, seed: args.seed };
    let status = trainer.training_command(&settings)?.status()?;
    if !status.success() {
        bail!("training failed ({status})");
    }
    Ok(())
}
