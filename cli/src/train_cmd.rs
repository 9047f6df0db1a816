//! `autoresearch train`: build the training file and run it once, output to the terminal.

use anyhow::{bail, Result};

use crate::trainer::{repo_root, DeviceChoice, RunSettings, Trainer};

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
    #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
    device: DeviceChoice,
}

pub fn run(args: Args) -> Result<()> {
    if let Some(b) = args.time_budget {
        if !(b > 0.0) {
            bail!("--time-budget must be positive, not {b}");
        }
    }
    let trainer = Trainer::new(repo_root()?, args.device);
    trainer.build()?;
    let settings = RunSettings { profile: args.profile, time_budget: args.time_budget, seed: args.seed };
    let status = trainer.run_command(&settings)?.status()?;
    if !status.success() {
        bail!("training failed ({status})");
    }
    Ok(())
}
