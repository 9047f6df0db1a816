//! `autoresearch`: prepare data, train, and run the research loop.

mod bench;
mod prepare;
mod train_cmd;
mod trainer;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "autoresearch", version, about = "Autonomous ML research on one GPU", long_about = None)]
struct Cli {
    /// Where prepared data, tokenizers and downloads live [default: ~/.cache/autoresearch]
    #[arg(long, global = true, env = "AUTORESEARCH_CACHE", value_name = "DIR")]
    cache_dir: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Get data and train the tokenizer for a profile (once, before training)
    Prepare(prepare::Args),
    /// Build the training file and run it once (output to the terminal)
    Train(train_cmd::Args),
    /// Measure the harness's throughput (tokenizer training, encoding, data loading)
    #[command(subcommand)]
    Bench(bench::Bench),
}

fn main() -> ExitCode {
    // A file-size limit then fails a write with an error we report, instead of killing the process.
    // SAFETY: setting a signal's disposition to "ignore" at start-up, before any thread exists.
    unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
    let cli = Cli::parse();
    if let Some(dir) = &cli.cache_dir {
        // The harness and the training process read the cache root from the environment.
        std::env::set_var("AUTORESEARCH_CACHE", dir);
    }
    let result = match cli.command {
        Command::Prepare(args) => prepare::run(args),
        Command::Train(args) => train_cmd::run(args),
        Command::Bench(b) => bench::run(b),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
