//! The research commands: `init`, `run`, `loop`, `noise`, `eval`, `export`.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use autoresearch_harness::profile::{cache_root, Prepared};
use autoresearch_report::files::WORKER_BIN;
use autoresearch_report::noise::noise_for;
use autoresearch_report::tree::Search;
use autoresearch_research::agent::LoopOptions;
use autoresearch_research::backend::{Backend, Local};
use autoresearch_research::experiment::{describe, evaluate_run, run_experiment, ExperimentOptions};
use autoresearch_research::noise::measure_noise;
use autoresearch_research::pool::run_pool;
use autoresearch_research::project::{
    project_root, Project, PROGRAM_TEMPLATE, PROJECT_FILE, PROJECT_PROFILE, TEMPLATE as PROJECT_TEMPLATE,
};
use autoresearch_research::rules::{Decider, Rule, DEFAULT_RULE};
use autoresearch_research::slurm::{Slurm, SlurmOptions};
use autoresearch_research::trainer::DeviceChoice;
use autoresearch_research::trainer::Trainer;
use autoresearch_research::training::build_policy;
use autoresearch_research::{session, Interrupts, Session, Worker, RESULTS_FILE};

use crate::train_cmd::device_parser;

#[derive(clap::Args)]
pub struct InitArgs {
    /// Names the session and its branch, autoresearch/<TAG>
    #[arg(required_unless_present = "project")]
    tag: Option<String>,
    /// Make this git repository a project of your own: write a commented autoresearch.toml (and a program.md
    /// where there is none) to edit and commit before `autoresearch init TAG`
    #[arg(long, conflicts_with_all = ["tag", "profile", "time_budget"])]
    project: bool,
    /// Prepared profile every run of the session uses [default: the one prepared last]
    #[arg(long)]
    profile: Option<String>,
    /// Seconds of training per run [default: the profile's budget]
    #[arg(long, value_name = "SECONDS")]
    time_budget: Option<f64>,
    /// Where to train (auto: CUDA if `nvidia-smi` finds a GPU, else the CPU)
    #[arg(long, default_value = "auto", value_parser = device_parser())]
    device: DeviceChoice,
    /// The session's keep rule, for `run` and `loop` without --rule: margin (a gain beyond z·σ of the
    /// seed-to-seed noise, which the session measures on the baseline with 3 seeds), lower (the original: any
    /// improvement) or "confirm N"
    #[arg(long, default_value = DEFAULT_RULE, value_name = "RULE")]
    rule: String,
    /// How `loop` searches, where it is given no --search: greedy (every experiment starts from the best and is
    /// judged against it) or frontier (from a node of the session's tree of kept experiments, judged against it)
    #[arg(long, default_value = "greedy", value_name = "SEARCH")]
    search: Search,
}

/// How keep decisions are made (recorded in every row).
#[derive(clap::Args, Clone)]
pub struct RuleArgs {
    /// lower (any improvement), margin (beat the best by more than z·σ) or "confirm N" (rerun an improvement
    /// with N other seeds; keep if the mean beats the best by the margin) [default: the session's, from `init`]
    #[arg(long, value_name = "RULE")]
    rule: Option<String>,
    /// z of the margin z·σ (σ from `autoresearch noise`, or measured by the session on its baseline)
    #[arg(long, default_value_t = 2.0)]
    z: f64,
    /// The margin itself, instead of z·σ
    #[arg(long, value_name = "VAL_BPB")]
    min_delta: Option<f64>,
    /// Hard limit per training run [default: 2 × budget + 120 s, at least budget + start-up allowance +
    /// evaluation limit + 60 s; a project's: its training's and evaluation's timeouts + 60 s]
    #[arg(long, value_name = "SECONDS")]
    timeout: Option<f64>,
}

/// Where trainings run.
#[derive(clap::Args, Clone, Default)]
pub struct BackendArgs {
    /// local: processes on this machine; slurm: each training a Slurm job (the repository and the cache on a
    /// filesystem the nodes share)
    #[arg(long, value_enum, default_value_t = BackendKind::Local)]
    backend: BackendKind,
    /// The jobs' partition
    #[arg(long, value_name = "NAME")]
    slurm_partition: Option<String>,
    /// The account the jobs are charged to
    #[arg(long, value_name = "NAME")]
    slurm_account: Option<String>,
    /// CPUs per job (the training's thread count on the CPU) [default: 1 on the CPU, Slurm's with a GPU]
    #[arg(long, value_name = "N")]
    slurm_cpus: Option<usize>,
    /// Another option for salloc, e.g. --slurm-arg=--qos=high (repeatable)
    #[arg(long = "slurm-arg", value_name = "ARG", allow_hyphen_values = true)]
    slurm_args: Vec<String>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq)]
enum BackendKind {
    #[default]
    Local,
    Slurm,
}

impl BackendArgs {
    fn backend(&self, device: DeviceChoice) -> Result<Arc<dyn Backend>> {
        let slurm_flags = self.slurm_partition.is_some()
            || self.slurm_account.is_some()
            || self.slurm_cpus.is_some()
            || !self.slurm_args.is_empty();
        Ok(match self.backend {
            BackendKind::Local if slurm_flags => bail!("the --slurm-* options need --backend slurm"),
            BackendKind::Local => Arc::new(Local),
            BackendKind::Slurm => {
                let gpu = device == DeviceChoice::Cuda;
                Arc::new(Slurm(SlurmOptions {
                    partition: self.slurm_partition.clone(),
                    account: self.slurm_account.clone(),
                    cpus: self.slurm_cpus.or((!gpu).then_some(1)),
                    gpu,
                    args: self.slurm_args.clone(),
                }))
            }
        })
    }
}

#[derive(clap::Args)]
pub struct RunArgs {
    /// What this experiment changes (the commit message and the results row)
    #[arg(short = 'm', long = "message", value_name = "DESCRIPTION")]
    message: String,
    /// Run even if an earlier run had this exact training file
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    rule: RuleArgs,
    #[command(flatten)]
    backend: BackendArgs,
}

#[derive(clap::Args)]
pub struct LoopArgs {
    /// The agent's command, run with `sh -c` in the repository; `{prompt}` is replaced by the prompt file's
    /// path (else the path is appended). It edits train/train.rs and writes a one-line description to the
    /// file the prompt names ($AUTORESEARCH_DESCRIPTION).
    #[arg(long, value_name = "CMD")]
    agent: String,
    /// Stop after this many experiments
    #[arg(long, value_name = "N")]
    max_experiments: Option<usize>,
    /// Stop starting experiments after this many hours
    #[arg(long, value_name = "H")]
    max_hours: Option<f64>,
    /// Seconds an agent call may take before it is stopped
    #[arg(long, default_value_t = 1800.0, value_name = "SECONDS")]
    agent_timeout: f64,
    /// Compile errors sent back to the agent per experiment before it counts as a crash
    #[arg(long, default_value_t = 2, value_name = "N")]
    max_fixes: usize,
    /// The agent's instructions [default: program.md in the repository]
    #[arg(long, value_name = "FILE")]
    program: Option<PathBuf>,
    /// Agents at once, each in its own git worktree with one GPU (or its share of the CPU's cores); one
    /// results.tsv and one best for all
    #[arg(long, default_value_t = 1, value_name = "N")]
    workers: usize,
    /// The GPUs the workers use, one each [default: every visible GPU]
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    gpus: Option<Vec<String>>,
    /// greedy: every experiment starts from the session's best and is judged against it; frontier: from a node
    /// of the session's tree of kept experiments (chosen by value and tries, one per worker), judged against
    /// that node. The session keeps it for later loops [default: the session's, from `init`]
    #[arg(long, value_name = "SEARCH")]
    search: Option<Search>,
    #[command(flatten)]
    rule: RuleArgs,
    #[command(flatten)]
    backend: BackendArgs,
}

#[derive(clap::Args)]
pub struct EvalArgs {
    /// The run whose checkpoint to evaluate [default: the latest run that has one]
    run: Option<u64>,
    /// Audit it, as before a keep: 1,177 altered copies in the causality check (on the CPU)
    #[arg(long)]
    audit: bool,
}

#[derive(clap::Args)]
pub struct ExportArgs {
    /// The folder for the patches [default: .autoresearch/export/<TAG>]
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Replace the patch files an earlier export left in that folder
    #[arg(long)]
    force: bool,
}

#[derive(clap::Args)]
pub struct NoiseArgs {
    /// Reruns of the best commit, with seeds 43, 44, ...
    #[arg(long, default_value_t = 5, value_name = "K")]
    runs: usize,
    /// Hard limit per training run [default: 2 × budget + 120 s, at least budget + start-up allowance +
    /// evaluation limit + 60 s; a project's: its training's and evaluation's timeouts + 60 s]
    #[arg(long, value_name = "SECONDS")]
    timeout: Option<f64>,
    /// Trainings at once, as `loop --workers` runs them
    #[arg(long, default_value_t = 1, value_name = "N")]
    workers: usize,
    /// The GPUs the workers use, one each [default: every visible GPU]
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    gpus: Option<Vec<String>>,
    #[command(flatten)]
    backend: BackendArgs,
}

/// Ctrl-C and SIGTERM, counted; the training and agent processes run in their own process groups and do not
/// see them.
fn interrupts(first_message: &'static str) -> Result<Interrupts> {
    let interrupts = Interrupts::default();
    let count = interrupts.0.clone();
    let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM])?;
    std::thread::spawn(move || {
        for _ in signals.forever() {
            if count.fetch_add(1, Ordering::SeqCst) == 0 {
                eprintln!("\n{first_message}");
            }
        }
    });
    Ok(interrupts)
}

fn options(
    session: &Session,
    args: &RuleArgs,
    description: String,
    interrupts: Interrupts,
    abort_at: usize,
) -> Result<ExperimentOptions> {
    let settings = &session.settings;
    let rule = Rule::parse(args.rule.as_deref().unwrap_or(&settings.rule), args.z)?;
    let noise = noise_for(&session.dir, &settings.profile, settings.time_budget)?;
    let decider = Decider::new(rule, settings.metric.goal, noise.as_ref(), args.min_delta)?;
    let timeout = match args.timeout {
        Some(t) if t > 0.0 => Duration::from_secs_f64(t),
        Some(t) => bail!("--timeout must be positive, not {t}"),
        None => session.project.default_timeout(settings.time_budget, &settings.profile),
    };
    Ok(ExperimentOptions {
        description,
        decider,
        timeout,
        force: false,
        interrupts,
        abort_at,
        backend: Arc::new(Local),
    })
}

/// The session's trainer and where its trainings run; on this machine's GPU (the local backend), the GPU is
/// checked first.
fn trainer(session: &Session, backend: &BackendArgs) -> Result<(Trainer, Arc<dyn Backend>)> {
    let mut trainer = Trainer::new(session.root.clone(), session.settings.device);
    let backend = backend.backend(trainer.device)?;
    trainer.launcher = Some(std::env::current_exe()?);
    if session.project.commands.is_some() {
        // A project's commands each get their own policy.
        return Ok((trainer, backend));
    }
    if backend.is_local() {
        trainer.check_gpu()?;
    }
    let prepared = Prepared::load(&cache_root()?, Some(&session.settings.profile))?;
    trainer.build_policy = Some(build_policy(&prepared, &trainer));
    // The session's own binary: another session may build into the same CARGO_TARGET_DIR.
    trainer.installed = Some(session.dir.join(WORKER_BIN).join("autoresearch-train"));
    Ok((trainer, backend))
}

pub fn init(args: InitArgs) -> Result<()> {
    if args.project {
        return init_project();
    }
    let tag = args.tag.as_deref().expect("clap requires a tag without --project");
    let root = project_root()?;
    Rule::parse(&args.rule, 2.0)?;
    let project = Project::load(&root)?;
    let (profile, budget) = match &project.commands {
        Some(_) if args.profile.is_some() || args.time_budget.is_some() => {
            bail!("--profile and --time-budget are the built-in training's: a project sets its own in {PROJECT_FILE}")
        }
        // A project's runs compare by its training's limit; the noise estimates are kept under it.
        Some(c) => (PROJECT_PROFILE.to_string(), c.budget.unwrap_or(c.train.timeout.as_secs_f64())),
        None => {
            let prepared = Prepared::load(&cache_root()?, args.profile.as_deref())?;
            let budget = prepared.profile.budget(args.time_budget);
            if !budget.is_finite() || budget <= 0.0 {
                bail!("--time-budget must be positive, not {budget}");
            }
            (prepared.profile.name, budget)
        }
    };
    let state = session::init(&root, tag, &profile, budget, args.device, &args.rule, args.search)?;
    let settings = &state.settings;
    let what = match &project.commands {
        Some(c) => format!(
            "{} ({}), training `{}` stopped after {} s",
            settings.metric.name,
            settings.metric.goal.phrase(),
            c.train.command,
            c.train.timeout.as_secs_f64()
        ),
        None => format!("profile {}, {} s per run", settings.profile, settings.time_budget),
    };
    println!(
        "session {} on branch {}: {what}, keep rule {}, search {}, results in {}",
        settings.tag,
        settings.branch,
        settings.rule,
        settings.search,
        root.join(RESULTS_FILE).display()
    );
    println!("next: `autoresearch run -m baseline` (or `autoresearch loop --agent CMD`)");
    Ok(())
}

/// `init --project`: a commented autoresearch.toml (and a program.md) at the top of the current git repository.
fn init_project() -> Result<()> {
    let cwd = std::env::current_dir()?;
    let top = std::process::Command::new("git").args(["rev-parse", "--show-toplevel"]).current_dir(&cwd).output();
    let root = match top {
        Ok(out) if out.status.success() => PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()),
        _ => bail!("{} is not in a git repository: `git init` first (the loop commits each experiment)", cwd.display()),
    };
    let file = root.join(PROJECT_FILE);
    if file.exists() {
        bail!("{} exists already: edit it (or remove it to start again)", file.display());
    }
    std::fs::write(&file, PROJECT_TEMPLATE).with_context(|| format!("writing {}", file.display()))?;
    println!("wrote {} (every field explained in it)", file.display());
    let program = root.join("program.md");
    if !program.exists() {
        std::fs::write(&program, PROGRAM_TEMPLATE).with_context(|| format!("writing {}", program.display()))?;
        println!("wrote {} (the agent's instructions: say what the project is and what to try)", program.display());
    }
    println!(
        "next: edit {PROJECT_FILE} (editable files, commands, metric), commit it, then `autoresearch init TAG` and \
         `autoresearch run -m baseline`"
    );
    Ok(())
}

/// The session's best, in a line.
fn say_best(session: &Session) {
    if let Some(best) = session.best() {
        let name = &session.settings.metric.name;
        println!("best: {name} {:.6} (commit {}, run {})", best.val_bpb, &best.commit[..7], best.run);
    }
}

pub fn run_one(args: RunArgs) -> Result<()> {
    let session = Session::open(&project_root()?)?;
    let mut worker = Worker::in_repository(&session)?;
    let interrupts = interrupts("interrupted: stopping the run (the change will be set aside)")?;
    let mut opts = options(&session, &args.rule, args.message.trim().to_string(), interrupts, 1)?;
    if opts.description.is_empty() {
        bail!("-m: describe the change");
    }
    opts.force = args.force;
    let (trainer, backend) = trainer(&session, &args.backend)?;
    opts.backend = backend;
    let outcome = run_experiment(&mut worker, &trainer, &opts)?;
    println!("{}", describe(&outcome, &session.settings.metric.name));
    if let Some(t) = &outcome.log_tail {
        println!("--- the last {} lines of the log ---\n{t}", t.lines().count());
    }
    say_best(&session);
    Ok(())
}

pub fn research_loop(args: LoopArgs) -> Result<()> {
    let root = project_root()?;
    let session = Session::open_to_search(&root, args.search)?;
    // What a killed command left in the repository's tree is put right first, whatever fails after.
    Worker::in_repository(&session)?;
    let interrupts = interrupts("stopping after the current step (Ctrl-C again to abort it now)")?;
    let program_path = args.program.clone().unwrap_or_else(|| root.join(&session.project.program));
    let program =
        std::fs::read_to_string(&program_path).with_context(|| format!("reading {}", program_path.display()))?;
    let mut opts = LoopOptions {
        agent: args.agent.clone(),
        agent_timeout: Duration::from_secs_f64(args.agent_timeout.max(1.0)),
        max_experiments: args.max_experiments,
        max_hours: args.max_hours,
        max_fixes: args.max_fixes,
        program,
        experiment: options(&session, &args.rule, String::new(), interrupts, 2)?,
        workers: args.workers,
    };
    let (trainer, backend) = trainer(&session, &args.backend)?;
    opts.experiment.backend = backend;
    eprintln!(
        "loop: agent `{}`, rule {}, search {}, {} ({}), profile {}, {} s per run",
        opts.agent,
        opts.experiment.decider.label,
        session.settings.search,
        session.settings.metric.name,
        session.settings.metric.goal.phrase(),
        session.settings.profile,
        session.settings.time_budget
    );
    let setups = opts.experiment.backend.setups(args.workers, args.gpus.as_deref(), trainer.device)?;
    let report = run_pool(&session, &trainer, &opts, &setups, &|line: &str| println!("{line}"))?;
    println!(
        "loop stopped ({}): {} experiments, {} kept, {} crashed, {} refused",
        report.stop_reason, report.experiments, report.kept, report.crashes, report.refused
    );
    say_best(&session);
    Ok(())
}

pub fn noise(args: NoiseArgs) -> Result<()> {
    let session = Session::open(&project_root()?)?;
    // What a killed command left in the repository's tree is put right first, whatever fails after.
    Worker::in_repository(&session)?;
    let interrupts = interrupts("interrupted: stopping")?;
    let rule = RuleArgs { rule: Some("lower".into()), z: 2.0, min_delta: None, timeout: args.timeout };
    let mut opts = options(&session, &rule, "noise".into(), interrupts, 1)?;
    let (trainer, backend) = trainer(&session, &args.backend)?;
    opts.backend = backend;
    let setups = opts.backend.setups(args.workers, args.gpus.as_deref(), trainer.device)?;
    let estimate = measure_noise(&session, &trainer, args.runs, &opts, &setups)?;
    println!(
        "noise for profile {} at {} s: {} {:.6} ± {:.6} (mean ± sd of {} seeds, commit {})",
        estimate.profile,
        estimate.budget,
        session.settings.metric.name,
        estimate.mean,
        estimate.std,
        estimate.values.len(),
        &estimate.commit[..7]
    );
    Ok(())
}

pub fn eval(args: EvalArgs) -> Result<()> {
    let session = Session::open(&project_root()?)?;
    let mut worker = Worker::in_repository(&session)?;
    let interrupts = interrupts("interrupted: stopping")?;
    let rule = RuleArgs { rule: Some("lower".into()), z: 2.0, min_delta: None, timeout: None };
    let opts = options(&session, &rule, "eval".into(), interrupts, 1)?;
    let (trainer, _) = trainer(&session, &BackendArgs::default())?;
    if args.audit && trainer.device == DeviceChoice::Cuda {
        bail!("an audit runs on the CPU only: the evaluation's model processes have not run on a GPU yet");
    }
    let (run, result) = evaluate_run(&mut worker, &trainer, args.run, &opts, args.audit)?;
    let recorded = session.read_meta(run).map_or("-".to_string(), |m| match m.val_bpb {
        Some(v) => format!("{} {v:.6}", m.status),
        None => format!("{}: {}", m.status, m.reason),
    });
    println!(
        "run {run}: val_bpb {:.6} ({} eval tokens{} in {:.1} s on {}; recorded: {recorded})",
        result.val_bpb,
        result.eval_tokens,
        if args.audit { ", audited" } else { "" },
        result.seconds,
        result.device
    );
    Ok(())
}

pub fn export(args: ExportArgs) -> Result<()> {
    let exported = autoresearch_research::export::export(&project_root()?, args.out.as_deref(), args.force)?;
    for path in &exported.replaced {
        println!("replaced (an earlier export's): {}", path.display());
    }
    for line in &exported.lines {
        println!("{line}");
    }
    println!(
        "{} patches in {}; to carry them over, on a checkout of the session's base ({}): `git am {}/*.patch`",
        exported.patches.len(),
        exported.dir.display(),
        &exported.base[..7],
        exported.dir.display()
    );
    Ok(())
}
