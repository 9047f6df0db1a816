//! The fixed half of the training binary. The agent's file provides `train` (a trained [`Model`]) and `build`
//! (the same model, untrained); this crate runs them in the phases described in
//! [`autoresearch_harness::handover`]: training in the sandbox, then the evaluation, which feeds the validation
//! inputs to the model's [`Model::logits`], checks that the model is causal and that it does not change while it
//! is evaluated, and computes the cross-entropy and val_bpb itself ([`evaluation`]). On the CPU the agent's code
//! runs in a model process of its own ([`model_process`]) and the causality probes are mixed into the metric's
//! calls ([`probes`]); on CUDA it runs in the evaluation's process, with the check of [`causality`] (the model
//! process is not measured on a GPU yet). The agent's code never sees validation targets. Before the model is
//! handed over, fixed code checks that the training's loss is the cross-entropy of the logits the evaluation
//! will take ([`loss_check`]; on the CPU, where it is measured).

//!
//! Both phases run under a [`supervisor`] (every process they start ends with them) and report how they ended to
//! it; it writes the status file the harness named ([`PhaseStatus`]). The training phase keeps the harness's
//! clock: the agent's `train` is given the deadline less the hand-over reserve, and one that returns later is a
//! crash; the supervisor seals the checkpoint and holds its hand-over to a due of its own.

pub mod causality;
pub mod evaluation;
pub mod loss_check;
pub mod model_process;
pub mod probes;
#[cfg(test)]
mod test_tables;
/// In the harness: the CLI's `sandboxed` (a project's commands) runs under it too.
pub use autoresearch_harness::supervisor;

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use autoresearch_harness::device::peak_rss_mb;
use autoresearch_harness::fit::{is_out_of_memory, panic_message};
use autoresearch_harness::handover::{
    allowance, check_device, handover_reserve, instant_of, sealing_due, sealing_time, EvalResult, Outcome, Phase,
    PhaseArgs, Sealed, TrainingReport, TrainingStats, AUDIT, CHECKPOINT, DEVICE_ENV, TRAINING_STATS,
};
use autoresearch_harness::profile::Training;
use autoresearch_harness::sandbox::Policy;
use tch::{Device, Kind, Tensor};

/// A trained language model, as the harness sees it.
pub trait Model {
    /// The final logits (batch, sequence, vocabulary) for token ids (batch, sequence), after any softcap: the
    /// evaluation takes their cross-entropy. Causal: the logits at a position depend on no later token.
    fn logits(&self, inputs: &Tensor) -> Tensor;
    /// The device the model runs on; inputs are put there.
    fn device(&self) -> Device;
    /// Every tensor the trained model needs, by name: what the checkpoint holds. On the CPU the evaluation checks
    /// that it is still the checkpoint, tensor for tensor, once loaded and after the last call: a cache the model
    /// fills as it evaluates belongs outside it.
    fn state(&self) -> Vec<(String, Tensor)>;
    /// Copies a checkpoint's tensors into a model from `build`.
    fn load_state(&self, tensors: &[(String, Tensor)]) -> Result<()>;
}

/// A model as the training phase hands it over: with the loss it was trained with, which fixed code compares
/// with the cross-entropy of [`Model::logits`] before the checkpoint is saved ([`loss_check`]).
pub trait Trainable: Model {
    /// The cross-entropy of each target (batch, sequence), computed as the training computes it (its softcap,
    /// its kernels, its autocast). Auxiliary terms of the training's objective (a z-loss, say) are not part of
    /// it.
    fn per_token_loss(&self, inputs: &Tensor, targets: &Tensor) -> Tensor;
}

/// What `train` returns: the model, and its account of the training for the summary.
pub struct Trained<M> {
    pub model: M,
    pub report: TrainingReport,
}

/// The training binary's main: runs the phase the harness asked for under a [`supervisor`], reports how it
/// ended (for the status file), and exits non-zero with the error.
pub fn main<M: Trainable>(train: fn(&Training) -> Result<Trained<M>>, build: fn(&Training) -> Result<M>) {
    let fail = |e: anyhow::Error| -> ! {
        eprintln!("error: {e:#}");
        std::process::exit(1)
    };
    let args = PhaseArgs::parse(std::env::args().skip(1)).unwrap_or_else(|e| fail(e));
    // Converted to the monotonic clock once, for the supervisor and the training alike.
    let deadline = args.deadline.map(instant_of);
    // First of all, before any thread exists (fork copies only the calling thread). The model process needs no
    // supervisor of its own: it is a child of the evaluation, whose supervisor ends what it leaves.
    // Kept here, in fixed code's own frame: the agent's code never holds it.
    let mut supervisor = (args.phase != Phase::Model).then(|| {
        let supervision = supervision(&args, deadline).unwrap_or_else(|e| fail(e));
        supervisor::supervise(supervision).unwrap_or_else(|e| fail(e))
    });
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match args.phase {
        Phase::Train => training_phase(&args, deadline, train, supervisor.as_mut().expect("supervised")),
        Phase::Evaluate => evaluation_phase(&args, build),
        Phase::Model => model_process::serve(&args, build),
    }));
    let (outcome, message) = phase_end(result);
    // The supervisor writes it to the status file, which is outside the sandbox.
    if let Some(supervisor) = supervisor {
        if let Err(e) = supervisor.report(outcome, &message) {
            fail(e.context("reporting the phase's end to its supervisor"));
        }
    }
    if outcome != Outcome::Success {
        if outcome != Outcome::Panic {
            eprintln!("error: {message}");
        }
        std::process::exit(1);
    }
}

/// What the phase's supervisor keeps: the status file, and for the training its hand-over, due the profile's
/// [`sealing_time`] after `train`'s end. The profile is read here, before the fork, by fixed code alone.
fn supervision(args: &PhaseArgs, deadline: Option<Instant>) -> Result<supervisor::Supervision> {
    let hand_over = if args.phase == Phase::Train {
        let deadline = deadline.context("the training phase needs --deadline")?;
        let profile = Training::profile_from_env()?.name;
        Some(supervisor::HandOver {
            folder: args.handover.clone(),
            files: vec![CHECKPOINT.to_string(), TRAINING_STATS.to_string()],
            due: sealing_due(deadline, &profile),
        })
    } else {
        None
    };
    Ok(supervisor::Supervision { status: args.status.clone(), hand_over })
}

/// Stopped by fixed code for time: the agent's `train` returned past its end, or its code in the evaluation took
/// longer than its allowance.
#[derive(Debug)]
pub(crate) struct OverTime(pub(crate) String);

impl std::fmt::Display for OverTime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for OverTime {}

/// How a phase ended, classified by its own error or panic (never by what it printed), and its message.
fn phase_end(result: std::thread::Result<Result<()>>) -> (Outcome, String) {
    match result {
        Ok(Ok(())) => (Outcome::Success, String::new()),
        Ok(Err(e)) if e.downcast_ref::<OverTime>().is_some() => (Outcome::OverTime, format!("{e:#}")),
        Ok(Err(e)) => {
            let message = format!("{e:#}");
            (if is_out_of_memory(&message) { Outcome::OutOfMemory } else { Outcome::Error }, message)
        }
        Err(payload) => {
            let message = panic_message(payload.as_ref());
            (if is_out_of_memory(&message) { Outcome::OutOfMemory } else { Outcome::Panic }, message)
        }
    }
}

/// The training phase: the agent's `train` on the harness's clock, then the hand-over.
fn training_phase<M: Trainable>(
    args: &PhaseArgs,
    deadline: Option<Instant>,
    train: fn(&Training) -> Result<Trained<M>>,
    supervisor: &mut supervisor::Supervisor,
) -> Result<()> {
    // First of all, before any thread exists: a thread started earlier would stay outside the sandbox.
    println!("{}", args.sandbox.apply()?);
    require_device()?;
    let deadline = deadline.context("the training phase needs --deadline")?;
    let training = Training::from_env()?;
    let (budget, profile) = (training.time_budget, training.profile().name.clone());
    let reserve = handover_reserve(&profile);
    let training = training.ending_at(deadline - Duration::from_secs_f64(reserve), &args.handover);
    println!(
        "clock: {:.1} s until `train` must return (budget {budget} s + allowance {} s for start-up, less {reserve} s \
         for the hand-over, from the phase's start), then {} s to save the model",
        training.seconds_left(),
        allowance(&profile),
        sealing_time(&profile)
    );
    println!("cores: {}", cores());
    let trained = train(&training)?;
    // The agent's `state` and `device` run on `train`'s clock too: work there is no time from the hand-over's.
    // So does the copy of the weights, taken at once: what a thread the agent's code started (it runs on until
    // the process ends) or the check below (which runs the agent's code again) does to them after the clock is
    // read does not reach the checkpoint. On CUDA the move to the CPU is the copy.
    let state = trained.model.state();
    let device = trained.model.device();
    let cpu: Vec<(String, Tensor)> = state
        .iter()
        .map(|(n, t)| {
            let moved = t.detach().to_device(Device::Cpu).contiguous();
            (n.clone(), if device == Device::Cpu { moved.copy() } else { moved })
        })
        .collect();
    let late = -training.seconds_left();
    training.flush_progress();
    let lingering = supervisor.end_phase_processes()?;
    if lingering > 0 {
        println!("{lingering} process(es) the training started were still running when `train` returned: killed");
    }
    if late > 0.0 {
        return Err(OverTime(format!(
            "over time: `train` (and the model's `state`) returned {late:.1} s past its end (budget {budget} s + \
             allowance {} s, less {reserve} s for the hand-over)",
            allowance(&profile)
        ))
        .into());
    }
    // Before the check, which reads training data of its own.
    let peak_memory_mb = match device {
        Device::Cuda(i) => autoresearch_ops::cuda_peak_memory_mb(i),
        _ => peak_rss_mb(),
    };
    let num_params = cpu.iter().map(|(_, t)| t.numel() as u64).sum();
    let stats = TrainingStats {
        report: trained.report,
        num_params,
        peak_memory_mb: peak_memory_mb.unwrap_or(0.0),
        device: device_name(device),
    };
    let written = [
        Sealed::write(&args.handover, CHECKPOINT, &checkpoint_bytes(&cpu)?)?,
        Sealed::write(&args.handover, TRAINING_STATS, &serde_json::to_vec_pretty(&stats)?)?,
    ];
    // The supervisor, outside this process, seals both files once it has checked they hold what was written here
    // (the harness checks them again once every thread and process of the phase is gone), holds the hand-over
    // to its due, and kills what the agent's code started since `train` returned.
    supervisor.hand_over(&written)?;
    println!("model handed over: {} tensors, {:.2}M parameters", cpu.len(), num_params as f64 / 1e6);
    // On the CPU only: on CUDA (the fused loss against float32 logits under autocast) the check's tolerance and
    // its memory at h100 have not been measured on a GPU yet.
    if device == Device::Cpu {
        let checking = Instant::now();
        let worst = loss_check::check_on_training_rows(&trained.model, &training)?;
        println!(
            "loss check: the training's loss is the cross-entropy of the evaluated logits on {} training rows \
             (largest difference {worst:.1e} nats; {:.2} s)",
            loss_check::ROWS,
            checking.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

/// The tensors as a safetensors file.
fn checkpoint_bytes(tensors: &[(String, Tensor)]) -> Result<Vec<u8>> {
    use safetensors::tensor::{Dtype, TensorView};
    let mut data = Vec::with_capacity(tensors.len());
    for (name, tensor) in tensors {
        let dtype = match tensor.kind() {
            Kind::Float => Dtype::F32,
            Kind::BFloat16 => Dtype::BF16,
            Kind::Half => Dtype::F16,
            Kind::Double => Dtype::F64,
            Kind::Int64 => Dtype::I64,
            Kind::Int => Dtype::I32,
            Kind::Int16 => Dtype::I16,
            Kind::Int8 => Dtype::I8,
            Kind::Uint8 => Dtype::U8,
            Kind::Bool => Dtype::BOOL,
            other => bail!("the model's tensor {name} is of kind {other:?}, which a checkpoint cannot hold"),
        };
        let numel = tensor.numel();
        let mut bytes = vec![0u8; numel * tensor.kind().elt_size_in_bytes()];
        tensor.f_copy_data_u8(&mut bytes, numel).with_context(|| format!("copying the model's tensor {name}"))?;
        let shape: Vec<usize> = tensor.size().iter().map(|&d| d as usize).collect();
        data.push((name.as_str(), dtype, shape, bytes));
    }
    let views = data
        .iter()
        .map(|(name, dtype, shape, bytes)| Ok((*name, TensorView::new(*dtype, shape.clone(), bytes)?)))
        .collect::<Result<Vec<_>>>()?;
    Ok(safetensors::serialize(views, None)?)
}

/// The cores this process may run on (its CPU affinity), for the log: a worker's share.
fn cores() -> String {
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    if unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) } != 0 {
        return "unknown".into();
    }
    let cores: Vec<String> = (0..libc::CPU_SETSIZE as usize)
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .map(|c| c.to_string())
        .collect();
    cores.join(",")
}

/// The GPU, where the harness asked for it (and the sandbox did not take it away).
fn require_device() -> Result<()> {
    let asked = std::env::var(DEVICE_ENV).ok();
    check_device(asked.as_deref(), tch::Cuda::is_available())
}

fn evaluation_phase<M: Model>(args: &PhaseArgs, build: fn(&Training) -> Result<M>) -> Result<()> {
    let started = Instant::now();
    // The nonce, then what kind of evaluation: on stdin, where the agent's code (which can read this process's
    // command line and environment) cannot see them.
    let (mut nonce, mut kind) = (String::new(), String::new());
    let mut stdin = std::io::stdin().lock();
    stdin.read_line(&mut nonce).context("reading the nonce from stdin")?;
    stdin.read_line(&mut kind).context("reading the evaluation's kind from stdin")?;
    let nonce = nonce.trim().to_string();
    ensure!(!nonce.is_empty(), "no nonce on stdin: the evaluation is started by the harness");
    let audit = match kind.trim() {
        "" => false,
        AUDIT => true,
        other => bail!("unknown kind of evaluation {other:?} on stdin (known: {AUDIT})"),
    };
    let training = Training::from_env()?;
    // The validation rows are read before the sandbox shuts the data away, and before any of the agent's code.
    let rows = evaluation::ValRows::load(&training)?;
    let read = started.elapsed().as_secs_f64();
    let result_path = args.result.as_ref().expect("parse checks that evaluate has --result");
    let mut result_file =
        std::fs::File::create(result_path).with_context(|| format!("creating {}", result_path.display()))?;
    println!("{}", args.sandbox.apply()?);
    require_device()?;
    let on_cuda = std::env::var(DEVICE_ENV).is_ok_and(|d| d == "cuda");
    let (val_bpb, device, timing) = if on_cuda {
        // The model processes and the audit's probes have not run on a GPU yet.
        ensure!(!audit, "an audit runs on the CPU only");
        evaluate_in_process(&training, &rows, &nonce, build, &args.handover, started)?
    } else {
        let probing = if audit { probes::Probing::audit(rows.rows) } else { probes::Probing::routine(rows.rows) };
        evaluate_in_model_process(&training, &rows, &nonce, args, started, probing)?
    };
    if !val_bpb.is_finite() {
        bail!("val_bpb is {val_bpb}");
    }
    let result = EvalResult {
        nonce: nonce.clone(),
        val_bpb,
        eval_tokens: (rows.rows * rows.cols) as u64,
        profile: training.profile().name.clone(),
        time_budget: training.time_budget,
        seed: training.seed,
        device,
        seconds: started.elapsed().as_secs_f64(),
    };
    result_file.write_all(&serde_json::to_vec_pretty(&result)?)?;
    println!(
        "{} {} tokens in {:.1} s (validation rows read {read:.1} s, {timing}): val_bpb {val_bpb:.6}",
        if audit { "audited" } else { "evaluated" },
        result.eval_tokens,
        result.seconds,
    );
    Ok(())
}

/// The model process reads its checkpoint, its binary and the [`system_reads`], nothing else, and lists no
/// folder: no file's access time (which a later process can see with `stat`) tells the next experiment's training
/// or the audit what it was fed, nor does a folder's listing (these system files keep no access time), and its
/// parent's command line (an audit's names its result file) is not its to read.
///
/// [`system_reads`]: autoresearch_harness::sandbox::system_reads
fn model_reads(handover: &Path) -> Result<Vec<PathBuf>> {
    Ok(vec![handover.join(CHECKPOINT), std::env::current_exe().context("the binary's own path")?])
}

/// On the CPU: the agent's code in model processes of its own (one per side of the plan, each fresh from the
/// checkpoint), sandboxed further (nothing writable); the metric's calls and the causality probes `probing` asks
/// for mixed ([`probes`]). val_bpb, the device, and the timing for the log.
fn evaluate_in_model_process(
    training: &Training,
    rows: &evaluation::ValRows,
    nonce: &str,
    args: &PhaseArgs,
    started: Instant,
    probing: probes::Probing,
) -> Result<(f64, String, String)> {
    let at_start = started.elapsed().as_secs_f64();
    let vocab = training.profile().vocab_size;
    let model_args = PhaseArgs {
        phase: Phase::Model,
        handover: args.handover.clone(),
        result: None,
        status: None,
        deadline: None,
        sandbox: Policy {
            only_read: Some(model_reads(&args.handover)?),
            system_reads: true,
            deny_read: Vec::new(),
            read: Vec::new(),
            no_listing: true,
            write: Vec::new(),
            // What it maps is this evaluation's binary and libraries, which the evaluation loaded before its
            // sandbox (whose filter, inherited, refuses the mincore that loading asks with); its checkpoint the
            // training wrote, and no later process reads.
            load_mapped_files: false,
            ..args.sandbox.clone()
        },
    };
    let allowance = Duration::from_secs_f64(allowance(&training.profile().name));
    let start = || model_process::ModelProcess::start(&model_args, vocab, allowance);
    // The plan's sides, one model process each, one after the other (each has ended before the next starts, so
    // they share no time in which to talk): side 0's now.
    let first = start()?;
    println!("model process: {}", first.sandbox);
    let mut model = Some((0, first));
    let device = device_name(Device::Cpu);
    // This process only takes cross-entropies between the model process's answers: one thread, so that idle
    // worker threads here do not spin on the cores the model process computes on.
    tch::set_num_threads(1);
    let loaded = started.elapsed().as_secs_f64();
    let batch = evaluation::first_batch(rows.cols, vocab, Device::Cpu);
    let plan = probes::Plan::new(rows, vocab, batch, nonce, probing)?;
    let evaluated = probes::evaluate(&plan, rows, vocab, training.tokenizer.token_bytes(), |side, x| {
        if model.as_ref().map(|m| m.0) != Some(side) {
            if let Some((_, done)) = model.take() {
                done.finish()?;
            }
            model = Some((side, start()?));
        }
        model.as_mut().context("no model process")?.1.logits(x)
    })?;
    if let Some((_, done)) = model {
        done.finish()?;
    }
    let escape = probes::escape_bound(plan.altered, probes::AUDIT_FRACTION);
    let timing = format!(
        "first model process started and model loaded {:.1} s, metric with causality probes on {} model processes \
         {:.1} s: {} calls, {} altered copies and {} repeats of rows mixed in; a leak at 1/{:.0} of the positions or \
         rows escapes them with probability at most {:.3}",
        loaded - at_start,
        plan.sides,
        started.elapsed().as_secs_f64() - loaded,
        evaluated.calls,
        plan.altered,
        plan.repeats,
        1.0 / probes::AUDIT_FRACTION,
        escape
    );
    Ok((evaluated.val_bpb, device, timing))
}

/// On CUDA, as measured on an H200: the agent's code in this process, the causality check of [`causality`]
/// before the metric and the model's unchanged logits after it.
fn evaluate_in_process<M: Model>(
    training: &Training,
    rows: &evaluation::ValRows,
    nonce: &str,
    build: fn(&Training) -> Result<M>,
    handover: &Path,
    started: Instant,
) -> Result<(f64, String, String)> {
    let at_start = started.elapsed().as_secs_f64();
    let model = build(training)?;
    load_checkpoint(&model, &handover.join(CHECKPOINT))?;
    let loaded = started.elapsed().as_secs_f64();
    let vocab = training.profile().vocab_size;
    tch::no_grad(|| {
        let probe = causality::check(&model, rows, vocab, nonce)?;
        let checked = started.elapsed().as_secs_f64();
        let val_bpb = evaluation::evaluate(&model, rows, vocab, training.tokenizer.token_bytes())?;
        if let Some(probe) = probe {
            probe.check_unchanged(&model, vocab)?;
        }
        let timing = format!(
            "model loaded {:.1} s, causality checked {:.1} s, metric {:.1} s",
            loaded - at_start,
            checked - loaded,
            started.elapsed().as_secs_f64() - checked
        );
        Ok((val_bpb, device_name(model.device()), timing))
    })
}

pub(crate) fn load_checkpoint<M: Model>(model: &M, path: &Path) -> Result<()> {
    let tensors =
        Tensor::read_safetensors(path).with_context(|| format!("reading the checkpoint {}", path.display()))?;
    model.load_state(&tensors).with_context(|| format!("loading {} into the model from `build`", path.display()))
}

/// The device in words, as the summary gives it.
pub fn device_name(device: Device) -> String {
    match device {
        Device::Cuda(i) => autoresearch_ops::cuda_device_name(i).unwrap_or_else(|| "CUDA".into()),
        _ => format!("cpu ({} threads)", tch::get_num_threads()),
    }
}
