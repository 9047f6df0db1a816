//! `autoresearch`: prepare data, train, and run the research loop.

mod bench;
mod dashboard_cmd;
mod prepare;
mod report;
mod research;
mod train_cmd;

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
    /// Build the training file, train once and evaluate (output to the terminal)
    Train(train_cmd::Args),
    /// Start a research session: branch autoresearch/<TAG>, results.tsv
    Init(research::InitArgs),
    /// One experiment: check, commit, build, train, record, keep or reset
    Run(research::RunArgs),
    /// Let an agent propose experiments, one after another, until stopped
    Loop(research::LoopArgs),
    /// Rerun the best commit with other seeds to measure how much val_bpb moves by chance
    Noise(research::NoiseArgs),
    /// Evaluate a run's saved model again, without training (after a crash in evaluation, say)
    Eval(research::EvalArgs),
    /// Write the session's kept changes as a patch series that `git am` applies onto its base
    Export(research::ExportArgs),
    /// Summarise a results.tsv: totals, keep rate, best vs baseline, kept rows, progress.png
    Report(report::Args),
    /// Serve a live, read-only web page over research sessions (progress, what runs now, every experiment)
    Dashboard(dashboard_cmd::Args),
    /// Measure the harness's throughput (tokenizer training, encoding, data loading)
    #[command(subcommand)]
    Bench(bench::Bench),
    /// Run a command in a sandbox, under a supervisor (how the harness builds the training file and runs a
    /// project's commands)
    #[command(hide = true)]
    Sandboxed {
        /// What the command may read and write (JSON)
        #[arg(long)]
        policy: String,
        #[arg(last = true, required = true)]
        command: Vec<std::ffi::OsString>,
    },
}

/// Runs `command` confined by `policy`, under a supervisor: when it ends (or is asked to stop), every process it
/// started is gone, also one that left its process group or session.
fn sandboxed(policy: &str, command: &[std::ffi::OsString]) -> anyhow::Result<()> {
    let policy = serde_json::from_str(policy).map_err(|e| anyhow::anyhow!("parsing --policy: {e}"))?;
    // Its end of the socket closes on exec: the command cannot ask anything of the supervisor.
    let _supervisor = autoresearch_harness::supervisor::supervise(Default::default())?;
    Err(autoresearch_harness::sandbox::exec_sandboxed(&policy, &command[0], &command[1..]))
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
        Command::Prepare(args) => prepare::prepare(args),
        Command::Train(args) => train_cmd::train(args),
        Command::Init(args) => research::init(args),
        Command::Run(args) => research::run_one(args),
        Command::Loop(args) => research::research_loop(args),
        Command::Noise(args) => research::noise(args),
        Command::Eval(args) => research::eval(args),
        Command::Export(args) => research::export(args),
        Command::Report(args) => report::report(args),
        Command::Dashboard(args) => dashboard_cmd::serve(args),
        Command::Bench(b) => bench::bench(b),
        Command::Sandboxed { policy, command } => sandboxed(&policy, &command),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
