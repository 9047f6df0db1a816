//! One experiment, start to finish, in steps: check → build → train → decide → record (then keep or reset);
//! the re-measure of the best that a `confirm N` rule may need first; and the seed reruns that measure noise.
//!
//! Words: a *run* is one numbered experiment (its row in results.tsv, its folder `.autoresearch/runs/<n>`); a
//! *training* is one process of the training binary with one seed, of which a run has one or more.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::files::{handover_dir, is_handover_dir, seed_log, BUILD_LOG, RUN_LOG};
use crate::ledger::RerunTask;
use crate::process::{wait_or_kill, Recorded, Role};
use crate::results::{self, Extra, Row, Status};
use crate::rules::{mean_std, noise_for, seed_blind, Decider, NoiseEstimate, Rule, BASELINE_SEEDS};
use crate::slurm::{self, Backend, Job, SlurmOptions};
pub use crate::state::SEED;
use crate::state::{Best, InProgress};
use crate::trainer::{Trainer, TrainingSettings};
use crate::training::{evaluate_again, train_and_evaluate, Begun, Processes, Trained, TrainingFiles};
use crate::training::{tail, Crash, TAIL_LINES};
use crate::{file_hash, now_utc, Interrupts, RunMeta, Workspace, TRAINING_FILE};
use autoresearch_harness::handover::{EvalResult, CHECKPOINT};

#[derive(Clone)]
pub struct ExperimentOptions {
    pub description: String,
    pub decider: Decider,
    /// Hard limit per training.
    pub timeout: Duration,
    /// Run even if an earlier run had the identical training file.
    pub force: bool,
    pub interrupts: Interrupts,
    /// Interrupt requests after which a training is killed (`run`: 1; `loop`: 2, since the first only asks it
    /// to stop after the current experiment).
    pub abort_at: usize,
    /// Where trainings run.
    pub backend: Backend,
}

/// The default hard timeout: twice the budget plus two minutes (12 minutes at 300 s; the original's program.md
/// says 10).
pub fn default_timeout(budget: f64) -> Duration {
    Duration::from_secs_f64(2.0 * budget + 120.0)
}

#[derive(Debug)]
pub struct Outcome {
    pub run: u64,
    /// keep, discard, crash or reused
    pub status: Status,
    pub val_bpb: Option<f64>,
    pub reason: String,
    /// The end of the log (or of the compiler's output) of a crash.
    pub log_tail: Option<String>,
    pub seconds: f64,
    /// Time outside the training processes: git, the build check, bookkeeping.
    pub harness_overhead: f64,
}

/// Builds the training binary, the build process recorded in the journal while it runs. A worker's file is
/// built in the repository's tree, one worker at a time (see [`crate::ledger`]), into the worker's own binary.
pub fn build(ws: &mut Workspace, trainer: &Trainer) -> Result<std::result::Result<String, String>> {
    let mut recorded = None;
    let ledger = ws.ledger.clone();
    let worker = ws.worker;
    let mut build = |ws: &mut Workspace| {
        trainer.build(
            &mut |cmd| {
                let (child, r) = ws.spawn(cmd, Role::Build)?;
                recorded = Some(r);
                Ok(child)
            },
            &mut |line| crate::say(worker, line),
        )
    };
    let result = match &ledger {
        Some(l) => {
            let file =
                std::fs::read(ws.root.join(TRAINING_FILE)).with_context(|| format!("reading {TRAINING_FILE}"))?;
            let binary = trainer.installed.as_ref().context("a worker's trainer has a binary of its own")?;
            // The worker's binary says what it was built from: the experiment's build after the loop's check of
            // the same file is then no second compilation (the repository's tree held another file meanwhile).
            let source = binary.with_extension("source");
            let hash = file_hash(&file);
            let built = std::fs::read_to_string(&source).ok().filter(|_| binary.exists());
            match built.as_deref().and_then(|b| b.strip_prefix(&format!("{hash}\n"))) {
                Some(output) => Ok(Ok(output.to_string())),
                None => {
                    let _ = std::fs::remove_file(&source);
                    let result = l.build_in_tree(&file, || build(ws));
                    if let Ok(Ok(output)) = &result {
                        autoresearch_harness::fsutil::write_atomic(&source, format!("{hash}\n{output}").as_bytes())?;
                    }
                    result
                }
            }
        }
        None => build(ws),
    };
    if let Some(r) = recorded {
        ws.forget(&r)?;
    }
    result
}

/// The journal records each process of a training while it runs (and the Slurm job it runs in); an interrupt
/// stops it.
struct Journaled<'a> {
    ws: &'a mut Workspace,
    opts: &'a ExperimentOptions,
    running: Option<Recorded>,
    job: Option<Job>,
}

impl<'a> Journaled<'a> {
    fn new(ws: &'a mut Workspace, opts: &'a ExperimentOptions) -> Journaled<'a> {
        Journaled { ws, opts, running: None, job: None }
    }

    /// Allocates the training's job: its name in the journal first; while the controller does not answer,
    /// tries again.
    fn allocate(&mut self, slurm: &SlurmOptions, limit: Duration) -> Result<Begun> {
        let name = format!("autoresearch-{}", crate::training::nonce()?.get(..12).unwrap_or_default());
        self.ws.state.slurm_jobs.push(name.clone());
        self.ws.save_state()?;
        let mut waiting = false;
        loop {
            let submitted = Instant::now();
            let mut cmd = slurm::allocate_command(slurm, &name, limit);
            cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
            let (mut child, recorded) = self.ws.spawn(&mut cmd, Role::Training).context("running salloc")?;
            let opts = self.opts;
            let status = wait_or_kill(&mut child, || opts.interrupts.count() >= opts.abort_at)?;
            self.ws.forget(&recorded)?;
            let mut text = String::new();
            if let Some(mut out) = child.stdout.take() {
                let _ = out.read_to_string(&mut text);
            }
            if let Some(mut err) = child.stderr.take() {
                let _ = err.read_to_string(&mut text);
            }
            if status.is_none() {
                let _ = slurm::cancel(std::slice::from_ref(&name));
                return Ok(Begun::Interrupted);
            }
            if let Some(id) = slurm::granted_job(&text) {
                if waiting {
                    self.ws.say("slurm: the controller answers again; the experiment goes on");
                }
                self.ws.say(&format!(
                    "slurm: job {id} started {:.2} s after it was submitted",
                    submitted.elapsed().as_secs_f64()
                ));
                self.job = Some(Job { id, name });
                return Ok(Begun::Ready);
            }
            if slurm::controller_unreachable(&text) {
                if !waiting {
                    waiting = true;
                    let said = text.lines().last().unwrap_or_default().trim().to_string();
                    self.ws.say(&format!(
                        "slurm: the controller does not answer ({said}): waiting for it (nothing is lost; the \
                         experiment stays in the journal)"
                    ));
                }
                let until = Instant::now() + slurm::CONTROLLER_RETRY;
                while Instant::now() < until && self.opts.interrupts.count() < self.opts.abort_at {
                    std::thread::sleep(Duration::from_millis(50));
                }
                continue;
            }
            let _ = slurm::cancel(std::slice::from_ref(&name));
            self.ws.state.slurm_jobs.retain(|n| n != &name);
            self.ws.save_state()?;
            let error = text.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("no output").trim();
            return Ok(Begun::Failed(format!("slurm: no job: {error}")));
        }
    }
}

impl Processes for Journaled<'_> {
    fn begin(&mut self, limit: Duration) -> Result<Begun> {
        match &self.opts.backend {
            Backend::Local => Ok(Begun::Ready),
            Backend::Slurm(slurm) => {
                let slurm = slurm.clone();
                self.allocate(&slurm, limit)
            }
        }
    }

    fn wrap(&mut self, cmd: Command) -> Command {
        match &self.job {
            Some(job) => slurm::step_command(job, &cmd),
            None => cmd,
        }
    }

    fn failure(&mut self) -> Option<String> {
        let job = self.job.as_ref()?;
        let (state, reason) = slurm::job_state(job)?;
        slurm::job_failure(&state, &reason).map(|why| format!("{why}, job {}", job.id))
    }

    fn finish(&mut self) -> Result<()> {
        let Some(job) = self.job.take() else { return Ok(()) };
        match slurm::cancel(std::slice::from_ref(&job.name)) {
            Ok(()) => {
                self.ws.state.slurm_jobs.retain(|n| n != &job.name);
                self.ws.save_state()
            }
            // It stays in the journal: the next start cancels it.
            Err(e) => {
                self.ws.say(&format!("slurm: could not cancel job {} ({e:#}); the next start will", job.id));
                Ok(())
            }
        }
    }

    fn start(&mut self, cmd: &mut Command, role: Role) -> Result<Child> {
        let (child, recorded) = self.ws.spawn(cmd, role).context("starting the training binary")?;
        self.running = Some(recorded);
        Ok(child)
    }

    fn ended(&mut self, _: &Child) -> Result<()> {
        match self.running.take() {
            Some(r) => self.ws.forget(&r),
            None => Ok(()),
        }
    }

    fn interrupted(&self) -> bool {
        self.opts.interrupts.count() >= self.opts.abort_at
    }
}

/// Trains once with `seed` (and evaluates), its files in `dir` and its output in `log`, under the hard timeout.
fn train(
    ws: &mut Workspace,
    trainer: &Trainer,
    seed: u64,
    dir: &Path,
    log: PathBuf,
    opts: &ExperimentOptions,
) -> Result<Trained> {
    let settings = TrainingSettings {
        profile: Some(ws.state.profile.clone()),
        time_budget: Some(ws.state.time_budget),
        seed: Some(seed),
    };
    let files = TrainingFiles::in_folder(dir, seed, log);
    train_and_evaluate(trainer, &settings, &files, opts.timeout, &mut Journaled::new(ws, opts))
}

/// Checkpoints take room (about 200 MB at the h100 profile): a run keeps its first seed's when it was kept or
/// its evaluation crashed (for `autoresearch eval`); the others go.
fn prune_checkpoints(dir: &Path, keep_first: bool) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Ok(()) };
    for entry in entries {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if is_handover_dir(name) && path.is_dir() && !(keep_first && name == handover_dir(SEED)) {
            std::fs::remove_dir_all(&path).with_context(|| format!("removing {}", path.display()))?;
        }
    }
    Ok(())
}

/// What the current tree holds, before an experiment.
pub enum Check {
    /// Files other than the training file differ from the best commit (or are new).
    Refused(Vec<String>),
    /// The training file equals the best commit's and there is a result already.
    Unchanged,
    Ready,
}

pub fn check(ws: &Workspace) -> Result<Check> {
    let forbidden = ws.forbidden_changes()?;
    if !forbidden.is_empty() {
        return Ok(Check::Refused(forbidden));
    }
    if ws.state.best.is_some() && !ws.training_file_changed()? {
        return Ok(Check::Unchanged);
    }
    Ok(Check::Ready)
}

pub fn refusal_message(files: &[String]) -> String {
    format!(
        "refused: only {TRAINING_FILE} may change, but these differ from the best commit: {} \
         (the harness is fixed; undo those changes, e.g. `git checkout -- FILE`, and move new files away)",
        files.join(", ")
    )
}

/// An experiment under way: its number, commit and folder's record.
struct Started {
    run: u64,
    commit: String,
    meta: RunMeta,
    started: Instant,
    /// Seconds spent in training processes.
    training_wall: f64,
    /// Seconds spent building (for a worker, waiting for the repository's tree included).
    build_wall: f64,
}

/// What the experiment came to, before it is recorded.
struct Decision {
    status: Status,
    /// The value that decided (a mean under `confirm N`); None for a crash.
    value: Option<f64>,
    memory_gb: f64,
    reason: String,
    crash: Option<Crash>,
    /// The seeds `value` averages.
    seeds: Vec<u64>,
    reruns: Vec<Row>,
    /// The run of the best it was judged against.
    against: Option<u64>,
}

impl Decision {
    fn crash(crash: Crash) -> Decision {
        Decision {
            status: Status::Crash,
            value: None,
            memory_gb: 0.0,
            reason: crash.reason.clone(),
            crash: Some(crash),
            seeds: Vec::new(),
            reruns: Vec::new(),
            against: None,
        }
    }
}

/// Runs one experiment on the current tree.
pub fn run_experiment(ws: &mut Workspace, trainer: &Trainer, opts: &ExperimentOptions) -> Result<Outcome> {
    let started = Instant::now();
    match check(ws)? {
        Check::Refused(files) => bail!(refusal_message(&files)),
        Check::Unchanged => bail!("{TRAINING_FILE} is the same as in the best commit: nothing to run"),
        Check::Ready => {}
    }
    let content = std::fs::read(ws.root.join(TRAINING_FILE)).with_context(|| format!("reading {TRAINING_FILE}"))?;
    let hash = file_hash(&content);
    let retry_of = match if opts.force { None } else { earlier_run(ws, &hash) } {
        Some(Earlier::Reuse(earlier)) => return reuse(ws, opts, &earlier, hash, started),
        Some(Earlier::Retry(earlier)) => {
            ws.say(&format!(
                "run {} crashed with this exact file ({}), which may not be the file's fault: trying it once more",
                earlier.run, earlier.reason
            ));
            Some(earlier)
        }
        None => None,
    };
    // A re-measure is a run of its own: this one's time starts after it.
    let started = if remeasure_if_needed(ws, trainer, opts)? { Instant::now() } else { started };
    let decider = opts.decider.resolved(&ws.dir, &ws.state.profile, ws.state.time_budget)?;
    if decider.awaiting_noise && ws.best_now().is_some() {
        bail!(
            "the margin rule has no seed-to-seed spread to compare with: run `autoresearch noise`, or give --min-delta"
        );
    }
    let opts = &ExperimentOptions { decider, ..opts.clone() };
    let mut exp = begin(ws, opts, &content, hash, started)?;
    let building = Instant::now();
    let built = build(ws, trainer)?;
    exp.build_wall = building.elapsed().as_secs_f64();
    let mut decision = match built {
        Err(compiler) => {
            std::fs::write(ws.run_dir(exp.run).join(BUILD_LOG), &compiler)?;
            std::fs::write(ws.root.join(RUN_LOG), &compiler)?;
            Decision::crash(Crash {
                reason: "compile error".into(),
                retryable: false,
                log_tail: tail(&compiler, TAIL_LINES),
            })
        }
        Ok(output) => {
            std::fs::write(ws.run_dir(exp.run).join(BUILD_LOG), output)?;
            match train_and_decide(ws, trainer, opts, &mut exp)? {
                Some(decision) => decision,
                None => return interrupted(ws, exp.meta),
            }
        }
    };
    if let Some(earlier) = retry_of {
        decision.reason = format!("retry of run {} (crashed: {}): {}", earlier.run, earlier.reason, decision.reason);
    }
    record(ws, opts, exp, decision)
}

/// What an earlier run with the identical training file means for this one.
enum Earlier {
    /// Its result stands for this one.
    Reuse(RunMeta),
    /// It crashed in a way that may not be the file's fault, for the first time: run the file once more.
    Retry(RunMeta),
}

/// The latest earlier run with this exact training file and a result, if there is one.
fn earlier_run(ws: &Workspace, hash: &str) -> Option<Earlier> {
    let same: Vec<RunMeta> = ws
        .runs()
        .into_iter()
        .filter(|m| m.file_hash == hash && matches!(m.status, Status::Keep | Status::Discard | Status::Crash))
        .collect();
    let crashes = same.iter().filter(|m| m.status == Status::Crash).count();
    let last = same.last()?.clone();
    // A crash from outside the file earns one retry: after two crashes the file is not run again.
    Some(if last.status == Status::Crash && last.retryable && crashes < 2 {
        Earlier::Retry(last)
    } else {
        Earlier::Reuse(last)
    })
}

/// Takes the next run number, records it in the journal and commits the training file.
fn begin(
    ws: &mut Workspace,
    opts: &ExperimentOptions,
    content: &[u8],
    hash: String,
    started: Instant,
) -> Result<Started> {
    let run = ws.take_run()?;
    if let (Some(l), Some(k)) = (&ws.ledger, ws.worker) {
        l.announce(k, run, &opts.description);
    }
    let mut meta = RunMeta {
        run,
        description: opts.description.clone(),
        status: Status::Running,
        file_hash: hash,
        started: now_utc(),
        ..Default::default()
    };
    ws.write_meta(&meta)?;
    std::fs::write(ws.run_dir(run).join("train.rs"), content)?;
    ws.state.in_progress = Some(InProgress { run, commit: None, seeds: Vec::new() });
    ws.save_state()?;
    let commit = if ws.training_file_changed()? {
        ws.git.commit_file(TRAINING_FILE, &opts.description)?
    } else {
        ws.git.head()?
    };
    meta.commit = Some(commit.clone());
    ws.state.in_progress.as_mut().unwrap().commit = Some(commit.clone());
    ws.save_state()?;
    ws.write_meta(&meta)?;
    Ok(Started { run, commit, meta, started, training_wall: 0.0, build_wall: 0.0 })
}

/// Trains with the first seed and, where the rule asks, more; decides. None when interrupted.
fn train_and_decide(
    ws: &mut Workspace,
    trainer: &Trainer,
    opts: &ExperimentOptions,
    exp: &mut Started,
) -> Result<Option<Decision>> {
    ws.say(&format!(
        "run {}: training for {} s (profile {}, timeout {:.0} s); output in {}",
        exp.run,
        ws.state.time_budget,
        ws.state.profile,
        opts.timeout.as_secs_f64(),
        if ws.worker.is_some() { ws.root.join(RUN_LOG).display().to_string() } else { RUN_LOG.into() }
    ));
    let run_log = ws.root.join(RUN_LOG);
    let first = train(ws, trainer, SEED, &ws.run_dir(exp.run), run_log.clone(), opts)?;
    exp.training_wall += first.wall;
    std::fs::copy(&run_log, ws.run_dir(exp.run).join(RUN_LOG))?;
    if first.interrupted {
        return Ok(None);
    }
    let summary = match first.result {
        Err(crash) => return Ok(Some(Decision::crash(crash))),
        Ok(s) => s,
    };
    // Judged against the session's best as it is now (another worker may have kept one meanwhile).
    let best = ws.best_now();
    let mut decision = Decision {
        status: Status::Discard,
        value: Some(summary.val_bpb),
        memory_gb: summary.peak_vram_mb / 1024.0,
        reason: String::new(),
        crash: None,
        seeds: vec![SEED],
        reruns: Vec::new(),
        against: best.as_ref().map(|b| b.run),
    };
    if let Some(b) = &best {
        if !opts.decider.promising(summary.val_bpb, b.val_bpb) {
            decision.reason = opts.decider.verdict(summary.val_bpb, b.val_bpb, b.run).1;
            return Ok(Some(decision));
        }
    }
    let mut values = vec![summary.val_bpb];
    if let Rule::Confirm { n, .. } = opts.decider.rule {
        let seeds: Vec<u64> = (1..=n as u64).map(|k| SEED + k).collect();
        let label = format!("of: {}", opts.description);
        let Some(reruns) = rerun(ws, trainer, opts, exp.run, &exp.commit, &label, &seeds, &mut exp.training_wall)?
        else {
            return Ok(None);
        };
        decision.reruns = reruns.rows;
        if let Some(why) = reruns.crash {
            decision.reason = format!("confirmation rerun crashed: {why}");
            return Ok(Some(decision));
        }
        values.extend(reruns.values);
        decision.seeds.extend(seeds);
        if let Some(why) = seed_blind(&decision.seeds, &values) {
            (decision.status, decision.value, decision.reason) = (Status::Crash, None, format!("confirm {n}: {why}"));
            return Ok(Some(decision));
        }
    }
    let value = values.iter().sum::<f64>() / values.len() as f64;
    let spread = match mean_std(&values) {
        Some((_, sd)) => {
            format!("mean {value:.6} ± {sd:.6} over {} seeds ({}); ", values.len(), seed_list(&decision.seeds))
        }
        None => String::new(),
    };
    decision.value = Some(value);
    (decision.status, decision.reason) = match &best {
        None => (Status::Keep, spread + "first result: the baseline"),
        Some(b) => {
            let (keep, why) = opts.decider.verdict(value, b.val_bpb, b.run);
            (if keep { Status::Keep } else { Status::Discard }, spread + &why)
        }
    };
    Ok(Some(decision))
}

fn seed_list(seeds: &[u64]) -> String {
    seeds.iter().map(u64::to_string).collect::<Vec<_>>().join(", ")
}

/// Reruns with other seeds: their rows, their values, and the first crash (which ends them).
struct Reruns {
    rows: Vec<Row>,
    values: Vec<f64>,
    crash: Option<String>,
}

/// Trains the current tree with each of `seeds`, logs in the run's folder; None when interrupted. A lone loop
/// trains them one after another and stops at the first crash; a worker offers them to every worker (see
/// [`crate::ledger::Ledger::offer`]), so that idle workers train them at the same time, and trains what is left itself.
#[allow(clippy::too_many_arguments)]
fn rerun(
    ws: &mut Workspace,
    trainer: &Trainer,
    opts: &ExperimentOptions,
    run: u64,
    commit: &str,
    label: &str,
    seeds: &[u64],
    training_wall: &mut f64,
) -> Result<Option<Reruns>> {
    let dir = ws.run_dir(run);
    let mut trained = Vec::new();
    match (ws.ledger.clone(), ws.worker) {
        (Some(l), Some(me)) => {
            let started = Instant::now();
            let slots = l.offer(me, run, seeds, &dir, &trainer.binary());
            // Work the queue (these reruns, or another worker's) until every one of these has its result.
            while let Some((_, waiting)) = slots.iter().find(|(_, s)| !s.is_filled()) {
                match l.take_rerun() {
                    Some(task) => train_rerun(ws, trainer, task, opts),
                    None => waiting.wait(Duration::from_millis(50)),
                }
            }
            *training_wall += started.elapsed().as_secs_f64();
            for (seed, slot) in slots {
                match slot.take().expect("filled") {
                    Ok((by, t)) => trained.push((seed, by, t)),
                    Err(e) => bail!("the confirmation rerun with seed {seed} failed: {e}"),
                }
            }
        }
        _ => {
            for &seed in seeds {
                let t = train(ws, trainer, seed, &dir, dir.join(format!("rerun-{seed}.log")), opts)?;
                *training_wall += t.wall;
                let stop = t.interrupted || t.result.is_err();
                trained.push((seed, ws.worker.unwrap_or(0), t));
                if stop {
                    break;
                }
            }
        }
    }
    if trained.iter().any(|(_, _, t)| t.interrupted) {
        return Ok(None);
    }
    let mut out = Reruns { rows: Vec::new(), values: Vec::new(), crash: None };
    for (k, (seed, by, t)) in trained.into_iter().enumerate() {
        let helper = match ws.worker {
            Some(me) if me != by => format!(" (trained by worker {by})"),
            _ => String::new(),
        };
        let (val_bpb, memory_gb, note) = match &t.result {
            Ok(s) => (s.val_bpb, s.peak_vram_mb / 1024.0, format!("seed {seed}{helper}")),
            Err(c) => (0.0, 0.0, format!("seed {seed}{helper} crashed: {}", c.reason)),
        };
        out.rows.push(Row {
            commit: commit.to_string(),
            val_bpb,
            memory_gb,
            status: Status::Rerun,
            description: format!("rerun {}/{} (seed {seed}) {label}", k + 1, seeds.len()),
            extra: Some(extra(ws, opts, run, t.wall, note)),
        });
        match t.result {
            Ok(s) => out.values.push(s.val_bpb),
            Err(c) => {
                out.crash.get_or_insert(c.reason);
            }
        }
    }
    Ok(Some(out))
}

/// Trains a confirmation rerun that a worker offered (see [`rerun`]) with the candidate's binary, and hands the
/// result back.
pub fn train_rerun(ws: &mut Workspace, trainer: &Trainer, task: RerunTask, opts: &ExperimentOptions) {
    let me = ws.worker.unwrap_or(0);
    if task.owner != me {
        ws.say(&format!("training seed {} of run {} for worker {}", task.seed, task.run, task.owner));
    }
    let candidate = Trainer { prebuilt: Some(task.binary.clone()), ..trainer.clone() };
    let log = task.dir.join(format!("rerun-{}.log", task.seed));
    let result = train(ws, &candidate, task.seed, &task.dir, log, opts).map(|t| (me, t));
    task.finish(result.map_err(|e| format!("{e:#}")));
}

/// Our columns of a row of `run`.
fn extra(ws: &Workspace, opts: &ExperimentOptions, run: u64, seconds: f64, reason: String) -> Extra {
    Extra {
        profile: ws.state.profile.clone(),
        budget: ws.state.time_budget,
        seconds,
        run,
        rule: opts.decider.label.clone(),
        reason,
        worker: ws.worker,
    }
}

/// Writes the experiment's rows (first: once they are there, recovery can always finish the rest), then keeps
/// its commit as the best or sets the change aside. A worker holds the ledger meanwhile, and a keep judged
/// against a best that another worker has since replaced is judged again against the new one.
fn record(ws: &mut Workspace, opts: &ExperimentOptions, exp: Started, mut decision: Decision) -> Result<Outcome> {
    let Started { run, commit, mut meta, started, training_wall, build_wall } = exp;
    let seconds = started.elapsed().as_secs_f64();
    let ledger = ws.ledger.clone();
    let mut shared = ledger.as_deref().map(crate::ledger::Ledger::state);
    if let (Some(now), Some(value), Status::Keep) =
        (shared.as_ref().and_then(|s| s.best.clone()), decision.value, decision.status)
    {
        if decision.against != Some(now.run) {
            let (keep, why) = opts.decider.verdict(value, now.val_bpb, now.run);
            if !keep {
                decision.status = Status::Discard;
                decision.reason = format!("{}; meanwhile run {} was kept: {why}", decision.reason, now.run);
            }
        }
    }
    let mut rows = vec![Row {
        commit: commit.clone(),
        val_bpb: decision.value.unwrap_or(0.0),
        memory_gb: decision.memory_gb,
        status: decision.status,
        description: opts.description.clone(),
        extra: Some(extra(ws, opts, run, seconds, decision.reason.clone())),
    }];
    rows.extend(decision.reruns);
    ws.state.in_progress.as_mut().unwrap().seeds = decision.seeds.clone();
    ws.save_state()?;
    results::append(&ws.results, &rows)?;
    match (decision.status, decision.value) {
        (Status::Keep, Some(val_bpb)) => {
            let best = Best { commit: commit.clone(), val_bpb, run, seeds: decision.seeds };
            let best = match (&ledger, shared.as_deref_mut()) {
                (Some(l), Some(state)) => l.keep(state, best, &format!("keep run {run}: {}", opts.description))?,
                _ => best,
            };
            ws.state.best = Some(best);
            drop(shared);
        }
        _ => {
            drop(shared);
            ws.set_aside(run, Some(&commit))?
        }
    }
    if let (Some(l), Some(k)) = (&ws.ledger, ws.worker) {
        l.done(k);
    }
    let crashed_in_evaluation = decision.crash.as_ref().is_some_and(|c| c.reason.starts_with("evaluation: "));
    prune_checkpoints(&ws.run_dir(run), decision.status == Status::Keep || crashed_in_evaluation)?;
    let overhead = seconds - training_wall;
    meta.status = decision.status;
    meta.val_bpb = decision.value;
    meta.reason = decision.reason.clone();
    meta.retryable = decision.crash.as_ref().is_some_and(|c| c.retryable);
    meta.seconds = seconds;
    meta.harness_overhead_seconds = Some(overhead);
    meta.build_seconds = Some(build_wall);
    ws.write_meta(&meta)?;
    ws.state.in_progress = None;
    ws.save_state()?;
    Ok(Outcome {
        run,
        status: decision.status,
        val_bpb: decision.value,
        reason: decision.reason,
        log_tail: decision.crash.map(|c| c.log_tail),
        seconds,
        harness_overhead: overhead,
    })
}

/// The re-measure of the best that the rule may need before the next experiment (see [`remeasure_best`]);
/// whether it ran. Under `margin` with no spread measured, that is the best (the baseline, in a new session)
/// trained on [`BASELINE_SEEDS`] seeds, whose spread is then the session's noise estimate.
pub fn remeasure_if_needed(ws: &mut Workspace, trainer: &Trainer, opts: &ExperimentOptions) -> Result<bool> {
    match opts.decider.rule {
        Rule::Confirm { n, .. } => remeasure_best(ws, trainer, opts, n),
        Rule::Margin { .. }
            if opts.decider.awaiting_noise
                && noise_for(&ws.dir, &ws.state.profile, ws.state.time_budget)?.is_none()
                && ws.best_now().is_some() =>
        {
            ws.say(&format!(
                "the margin rule needs the seed-to-seed spread, and this session has none yet: measuring it on the \
                 best with {BASELINE_SEEDS} seeds"
            ));
            remeasure_best(ws, trainer, opts, BASELINE_SEEDS - 1)
        }
        _ => Ok(false),
    }
}

/// Under `confirm N` a candidate's value is a mean over seeds 42 … 42+N; a best measured on fewer seeds (under
/// another rule) is first trained with the missing ones, so that the two means compare like with like. The
/// re-measure is a run of its own: a keep row of the best's commit with the mean over all its seeds, which
/// becomes the best. A change waiting in the tree is put aside meanwhile and comes back after. Whether it ran.
fn remeasure_best(ws: &mut Workspace, trainer: &Trainer, opts: &ExperimentOptions, n: usize) -> Result<bool> {
    let Some(best) = ws.best_now() else { return Ok(false) };
    let wanted: Vec<u64> = (0..=n as u64).map(|k| SEED + k).collect();
    let missing: Vec<u64> = wanted.iter().copied().filter(|s| !best.seeds.contains(s)).collect();
    if missing.is_empty() {
        return Ok(false);
    }
    let started = Instant::now();
    let rows = results::read(&ws.results)?.rows;
    let best_row = results::experiment_row(&rows, best.run).cloned();
    let description = format!(
        "re-measure of the best (run {}) over seeds {}: {}",
        best.run,
        seed_list(&wanted),
        best_row.as_ref().map_or("", |r| r.description.as_str())
    );
    let opts = ExperimentOptions { description: description.clone(), ..opts.clone() };
    let why = if opts.decider.awaiting_noise {
        "the margin rule takes the spread of val_bpb over seeds".to_string()
    } else {
        format!("`confirm {n}` compares means over seeds {}", seed_list(&wanted))
    };
    ws.say(&format!(
        "the best (run {}) was measured with seed(s) {}; {why}: training it with {} first",
        best.run,
        seed_list(&best.seeds),
        seed_list(&missing)
    ));
    let run = ws.take_run()?;
    let meta = RunMeta {
        run,
        description: description.clone(),
        commit: Some(best.commit.clone()),
        status: Status::Running,
        started: now_utc(),
        ..Default::default()
    };
    ws.write_meta(&meta)?;
    ws.state.in_progress = Some(InProgress { run, commit: Some(best.commit.clone()), seeds: Vec::new() });
    ws.save_state()?;
    ws.stash()?;
    if let Err(compiler) = build(ws, trainer)? {
        ws.unstash()?;
        bail!("the best commit does not build any more:\n{}", tail(&compiler, TAIL_LINES));
    }
    let mut exp = Started { run, commit: best.commit.clone(), meta, started, training_wall: 0.0, build_wall: 0.0 };
    let Some(reruns) = rerun(ws, trainer, &opts, run, &best.commit, "of the best", &missing, &mut exp.training_wall)?
    else {
        let result = interrupted(ws, exp.meta);
        ws.unstash()?;
        return result.map(|_| true);
    };
    let memory_gb = best_row.as_ref().map_or(0.0, |r| r.memory_gb);
    let mut refused = None;
    let decision = match reruns.crash {
        // The best stays as it was; the candidate is then compared with it as it is (under `margin` there is
        // nothing to compare with yet: the session stops, and says why).
        Some(why) => {
            if opts.decider.awaiting_noise {
                refused = Some(format!("training the best with seeds {} crashed: {why}", seed_list(&missing)));
            }
            Decision {
                status: Status::Crash,
                value: None,
                memory_gb: 0.0,
                reason: format!("re-measure crashed: {why}"),
                crash: None,
                seeds: Vec::new(),
                reruns: reruns.rows,
                against: None,
            }
        }
        None if opts.decider.awaiting_noise => {
            // The spread needs each seed's value: the best's own where it is one seed's, and the reruns'.
            let (mut seeds, mut values) = match best.seeds.len() {
                1 => (best.seeds.clone(), vec![best.val_bpb]),
                _ => (Vec::new(), Vec::new()),
            };
            seeds.extend(&missing);
            values.extend(&reruns.values);
            let estimate = match values.len() {
                // A best kept as a mean over seeds (under `confirm N`) holds no single seed's value.
                0 | 1 => Err(anyhow::anyhow!(
                    "the best (run {}) is a mean over seeds {}, not each seed's value: measure the spread with \
                     `autoresearch noise`",
                    best.run,
                    seed_list(&best.seeds)
                )),
                _ => NoiseEstimate::new(&ws.state.profile, ws.state.time_budget, &best.commit, seeds, values),
            };
            match estimate {
                Ok(noise) => {
                    crate::rules::save_noise(&ws.dir, &noise)?;
                    ws.say(&format!(
                        "noise: val_bpb {:.6} ± {:.6} over seeds {}; the margin is {}σ of it",
                        noise.mean,
                        noise.std,
                        seed_list(&noise.seeds),
                        opts.decider.z()
                    ));
                    remeasured(
                        &best,
                        &wanted,
                        &reruns.values,
                        memory_gb,
                        reruns.rows,
                        "the baseline's spread for `margin`",
                    )
                }
                Err(e) => {
                    refused = Some(format!("{e:#}"));
                    Decision {
                        status: Status::Crash,
                        value: None,
                        memory_gb: 0.0,
                        reason: format!("re-measure for the margin rule: {e:#}"),
                        crash: None,
                        seeds: Vec::new(),
                        reruns: reruns.rows,
                        against: None,
                    }
                }
            }
        }
        None => remeasured(
            &best,
            &wanted,
            &reruns.values,
            memory_gb,
            reruns.rows,
            &format!("the best's value for `confirm {n}`"),
        ),
    };
    let outcome = record(ws, &opts, exp, decision)?;
    ws.unstash()?;
    ws.say(&describe(&outcome));
    if let Some(why) = refused {
        bail!(
            "the margin rule needs the seed-to-seed spread, and measuring it on the best failed: {why}. Give \
             --min-delta, or --rule lower"
        );
    }
    Ok(true)
}

/// The keep decision of a re-measure: the best's commit with the mean over all of `wanted`, its earlier value and
/// `rerun_values` (the seeds it lacked) weighted by their counts.
fn remeasured(
    best: &Best,
    wanted: &[u64],
    rerun_values: &[f64],
    memory_gb: f64,
    reruns: Vec<Row>,
    what: &str,
) -> Decision {
    let k = best.seeds.len() as f64;
    let value = (best.val_bpb * k + rerun_values.iter().sum::<f64>()) / (k + rerun_values.len() as f64);
    let reason = format!(
        "mean {value:.6} over seeds {} (earlier: {:.6} over {}); {what}",
        seed_list(wanted),
        best.val_bpb,
        seed_list(&best.seeds)
    );
    Decision {
        status: Status::Keep,
        value: Some(value),
        memory_gb,
        reason,
        crash: None,
        seeds: wanted.to_vec(),
        reruns,
        against: Some(best.run),
    }
}

/// An interrupted experiment: its change set aside, no row, the tree back at the best commit.
fn interrupted(ws: &mut Workspace, mut meta: RunMeta) -> Result<Outcome> {
    if let (Some(l), Some(k)) = (&ws.ledger, ws.worker) {
        l.done(k);
    }
    let commit = ws.state.in_progress.as_ref().and_then(|ip| ip.commit.clone());
    ws.set_aside(meta.run, commit.as_deref())?;
    meta.status = Status::Interrupted;
    meta.reason = "interrupted (Ctrl-C or SIGTERM); the change is in change.diff".into();
    ws.write_meta(&meta)?;
    ws.state.in_progress = None;
    ws.save_state()?;
    bail!(
        "run {} interrupted: the tree is back at the best commit, the change saved in {}",
        meta.run,
        ws.run_dir(meta.run).display()
    )
}

/// An experiment whose training file is byte-identical to an earlier run's: that result stands, recorded again.
fn reuse(
    ws: &mut Workspace,
    opts: &ExperimentOptions,
    earlier: &RunMeta,
    hash: String,
    started: Instant,
) -> Result<Outcome> {
    let run = ws.take_run()?;
    let rows = results::read(&ws.results)?.rows;
    let earlier_row = results::experiment_row(&rows, earlier.run);
    let status = if earlier.status == Status::Crash { Status::Crash } else { Status::Discard };
    let reason = format!(
        "identical to run {} ({}, val_bpb {}): its result reused, not run again",
        earlier.run,
        earlier.status,
        earlier.val_bpb.map_or("-".into(), |v| format!("{v:.6}"))
    );
    let row = Row {
        commit: earlier.commit.clone().unwrap_or_default(),
        val_bpb: earlier_row.as_ref().map_or(0.0, |r| r.val_bpb),
        memory_gb: earlier_row.as_ref().map_or(0.0, |r| r.memory_gb),
        status,
        description: opts.description.clone(),
        extra: Some(extra(ws, opts, run, started.elapsed().as_secs_f64(), reason.clone())),
    };
    results::append(&ws.results, &[row])?;
    ws.set_aside(run, None)?;
    ws.write_meta(&RunMeta {
        run,
        description: opts.description.clone(),
        commit: earlier.commit.clone(),
        status: Status::Reused,
        val_bpb: earlier.val_bpb,
        reason: reason.clone(),
        file_hash: hash,
        started: now_utc(),
        ..Default::default()
    })?;
    ws.save_state()?;
    let seconds = started.elapsed().as_secs_f64();
    Ok(Outcome {
        run,
        status: Status::Reused,
        val_bpb: earlier.val_bpb,
        reason,
        log_tail: None,
        seconds,
        harness_overhead: seconds,
    })
}

/// Trains the best commit `k` times with seeds 43, 44, ... and stores the spread of val_bpb.
pub fn measure_noise(
    ws: &mut Workspace,
    trainer: &Trainer,
    k: usize,
    opts: &ExperimentOptions,
) -> Result<NoiseEstimate> {
    let dir = prepare_noise(ws, trainer, k)?;
    let seeds: Vec<u64> = (1..=k as u64).map(|i| SEED + i).collect();
    let values = seeds.iter().map(|&seed| noise_training(ws, trainer, seed, &dir, opts)).collect::<Result<_>>()?;
    let commit = ws.git.head()?;
    save_noise_estimate(ws, &commit, seeds, values)
}

/// What `noise` needs before it trains `k` times: the tree at the best commit, built. The folder its trainings
/// keep their logs in.
pub fn prepare_noise(ws: &mut Workspace, trainer: &Trainer, k: usize) -> Result<PathBuf> {
    if k < 2 {
        bail!("--runs {k}: a spread needs at least 2 runs");
    }
    if !ws.forbidden_changes()?.is_empty() || ws.training_file_changed()? {
        bail!("the working tree differs from the best commit: run or undo the change first");
    }
    if let Err(compiler) = build(ws, trainer)? {
        bail!("the best commit does not build:\n{}", tail(&compiler, TAIL_LINES));
    }
    let dir = ws.dir.join("noise").join(format!("{}-{}", ws.state.profile, ws.state.time_budget));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// One of `noise`'s trainings, with `seed`: its val_bpb.
pub fn noise_training(
    ws: &mut Workspace,
    trainer: &Trainer,
    seed: u64,
    dir: &Path,
    opts: &ExperimentOptions,
) -> Result<f64> {
    let log = dir.join(seed_log(seed));
    let t = train(ws, trainer, seed, dir, log.clone(), opts)?;
    let handover = dir.join(handover_dir(seed));
    if handover.exists() {
        std::fs::remove_dir_all(&handover).with_context(|| format!("removing {}", handover.display()))?;
    }
    if t.interrupted {
        bail!("interrupted");
    }
    match t.result {
        Ok(s) => {
            ws.say(&format!("noise: seed {seed}: val_bpb {:.6}", s.val_bpb));
            Ok(s.val_bpb)
        }
        Err(c) => bail!("the training with seed {seed} crashed ({}); see {}", c.reason, log.display()),
    }
}

/// Stores the spread of `values` (of `seeds`, at `commit`) for the session's profile and budget.
pub fn save_noise_estimate(ws: &Workspace, commit: &str, seeds: Vec<u64>, values: Vec<f64>) -> Result<NoiseEstimate> {
    let estimate = NoiseEstimate::new(&ws.state.profile, ws.state.time_budget, commit, seeds, values)?;
    crate::rules::save_noise(&ws.dir, &estimate)?;
    Ok(estimate)
}

/// One line for the terminal (and the agent) about an experiment's outcome.
pub fn describe(o: &Outcome) -> String {
    let value = o.val_bpb.map_or("-".to_string(), |v| format!("{v:.6}"));
    format!(
        "run {}: {} (val_bpb {value}): {} [{:.1} s, harness overhead {:.1} s]",
        o.run, o.status, o.reason, o.seconds, o.harness_overhead
    )
}

/// Evaluates the checkpoint of run `run` (else of the latest run that has one) again, without training: for
/// an evaluation that crashed, say. The training file is built as that run had it (the tree's own is put aside
/// meanwhile and comes back after). The ledger is not changed; the result and log go to the run's folder.
pub fn evaluate_run(
    ws: &mut Workspace,
    trainer: &Trainer,
    run: Option<u64>,
    opts: &ExperimentOptions,
) -> Result<(u64, EvalResult)> {
    let has_checkpoint = |ws: &Workspace, run: u64| ws.run_dir(run).join(handover_dir(SEED)).join(CHECKPOINT).is_file();
    let run = match run {
        Some(run) => run,
        None => match ws.runs().iter().rev().find(|m| has_checkpoint(ws, m.run)) {
            Some(m) => m.run,
            None => bail!("no run has a checkpoint (they are kept for kept runs and crashed evaluations)"),
        },
    };
    let dir = ws.run_dir(run);
    let as_run = std::fs::read(dir.join("train.rs")).with_context(|| format!("no run {run} in {}", dir.display()))?;
    let current = std::fs::read(ws.root.join(TRAINING_FILE)).with_context(|| format!("reading {TRAINING_FILE}"))?;
    let swap = as_run != current;
    if swap {
        ws.stash()?;
        autoresearch_harness::fsutil::write_atomic(&ws.root.join(TRAINING_FILE), &as_run)?;
    }
    let result = (|| {
        if let Err(compiler) = build(ws, trainer)? {
            bail!("run {run}'s training file does not build any more:\n{}", tail(&compiler, TAIL_LINES));
        }
        let settings = TrainingSettings {
            profile: Some(ws.state.profile.clone()),
            time_budget: Some(ws.state.time_budget),
            seed: Some(SEED),
        };
        let files = TrainingFiles {
            handover: dir.join(handover_dir(SEED)),
            result: dir.join("eval-result.json"),
            log: dir.join("eval.log"),
        };
        evaluate_again(trainer, &settings, &files, &mut Journaled::new(ws, opts))
    })();
    if swap {
        ws.git.run(&["checkout", ws.state.reference_commit(), "--", TRAINING_FILE])?;
        ws.unstash()?;
    }
    result.map(|r| (run, r))
}
