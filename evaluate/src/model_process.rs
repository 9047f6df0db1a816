//! The evaluation's model process (on the CPU): the agent's code (`build`, loading the checkpoint, `logits`)
//! runs in a child of the evaluation, the training binary's `model` phase, and answers each batch of input
//! tokens with its logits. The evaluation (fixed code) keeps the targets, the nonce and the result file, and
//! takes the cross-entropy and every check itself: whatever the child sends is at most a model's logits.
//!
//! The child sandboxes itself further than the evaluation before any of the agent's code runs (no thread of its
//! own runs yet: Landlock restricts the thread that applies it and what it starts): it reads its checkpoint, its
//! binary and a few system files, lists no folder (no validation data, no file whose access time a later process
//! could see, not its parent's `/proc`), changes no file's metadata, and writes nothing (so not `/proc/self/mem`,
//! `/dev/shm`, a temporary folder or the log),
//! and, as a process in a Landlock domain of its own, it cannot trace its parent or open the parent's
//! `/proc/<pid>/mem`. Its stdout leads to `/dev/null`; its stderr is read here and dropped but for the last
//! [`SHOWN`] characters when it fails (the error, for the log): what the agent's code prints carries no
//! validation text into the log, beyond that tail of a failure.
//!
//! The agent's code runs on the evaluation's clock: the model process must be loaded and have answered the first
//! call within the profile's start-up allowance (the one the training gets), and each later call within the
//! allowance again; else it is ended and the evaluation fails `over time`. So `build` and loading cannot train for
//! long on what the checkpoint carries; training between calls changes the logits that the probes compare across
//! calls ([`crate::probes`]); and the model's `state` must be the checkpoint once loaded and after the last call
//! (`holds_the_checkpoint`), so that a model that trains its own tensors in the allowance is caught.
//!
//! Nothing the child does is trusted: `unsafe` is forbidden in the training file, but a soundness bug of rustc
//! (rust-lang/rust#25860) lets safe code transmute, so the agent's code can take the whole process over, and
//! write, on any descriptor, answers of its own. The evaluation therefore enforces the protocol from outside: each
//! answer is due whole by its deadline (red team 9 began its answers in time and sent them a byte at a time while
//! it trained on past the clock), the first by the start-up's end, and the parts of a call split after an
//! out-of-memory answer all by the call's own deadline, however often it is split. The answers go
//! over a Unix socket rather than a pipe, which even safe Rust could open again through `/proc/self/fd` (red team
//! 8 did so).
//!
//! The protocol, little-endian: the child first sends its sandbox line (u32 length, text) once the model is
//! loaded; then, per request (u32 rows, u32 columns, rows × columns i64 tokens), either 0u8 and the logits
//! (rows × columns × vocabulary f32), or 1u8 and an error (u32 length, text), or 2u8 and an error that was the
//! machine running out of memory (the evaluation then halves its call). The evaluation closes the child's stdin
//! when it is done.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::process::{Child, ChildStderr, ChildStdin, Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use autoresearch_harness::fit::{is_out_of_memory, quietly};
use autoresearch_harness::handover::{PhaseArgs, CHECKPOINT};
use autoresearch_harness::profile::Training;
use tch::{Device, Kind, Tensor};

use crate::Model;

/// Characters of a failed model process's stderr (and of an error it sends) shown in the log.
pub const SHOWN: usize = 200;

/// The `model` phase: builds the model, loads the checkpoint and answers requests on stdin until it closes.
pub fn serve<M: Model>(args: &PhaseArgs, build: fn(&Training) -> Result<M>) -> Result<()> {
    // The answers go out on a copy of stdout; stdout itself then leads to /dev/null, so that what the agent's
    // code prints neither mixes into the answers nor reaches the log.
    let answers = std::io::stdout().as_fd().try_clone_to_owned().context("duplicating stdout")?;
    // Where it is not a socket (the phase run by hand), this fails and changes nothing.
    set_socket_buffer(answers.as_raw_fd(), libc::SO_SNDBUF);
    let mut answers = BufWriter::with_capacity(1 << 20, File::from(answers));
    let null = std::fs::OpenOptions::new().write(true).open("/dev/null").context("opening /dev/null")?;
    // SAFETY: both descriptors are open; dup2 only replaces descriptor 1 (stdout, flushed: nothing written yet).
    if unsafe { libc::dup2(null.as_raw_fd(), 1) } < 0 {
        bail!("pointing stdout at /dev/null: {}", std::io::Error::last_os_error());
    }
    // The profile and tokenizer are read first, by fixed code: the sandbox then grants the checkpoint alone.
    let training = Training::from_env()?;
    let sandbox = args.sandbox.apply()?;
    let model = build(&training)?;
    let checkpoint = args.handover.join(CHECKPOINT);
    crate::load_checkpoint(&model, &checkpoint)?;
    // Read again rather than kept from the load: `load_state` holds the tensors it is given, and could train them
    // in place as its own.
    let handed_over = Tensor::read_safetensors(&checkpoint).context("reading the checkpoint again")?;
    holds_the_checkpoint(&model, &handed_over, "once loaded")?;
    send_text(&mut answers, &sandbox)?;
    answers.flush()?;
    let vocab = training.profile().vocab_size as i64;
    let mut requests = BufReader::new(std::io::stdin().lock());
    // One buffer for every answer, of the same size each time: no fresh pages to fault in per call.
    let mut bytes = Vec::new();
    while let Some((rows, cols, tokens)) = read_request(&mut requests)? {
        let x = Tensor::from_slice(&tokens).view([rows, cols]).to_device(model.device());
        let logits = quietly(|| {
            let logits = tch::no_grad(|| model.logits(&x));
            ensure!(
                logits.size() == [rows, cols, vocab],
                "the model's logits have shape {:?}; the evaluation needs [{rows}, {cols}, {vocab}] (batch, \
                 sequence, vocabulary)",
                logits.size()
            );
            Ok(logits.to_kind(Kind::Float).to_device(Device::Cpu).contiguous())
        });
        match logits {
            Ok(logits) => {
                bytes.resize(logits.numel() * 4, 0);
                logits.copy_data_u8(&mut bytes, logits.numel());
                answers.write_all(&[0])?;
                answers.write_all(&bytes)?;
            }
            Err(e) => {
                // Out of memory is decided here, from the whole message (libtorch's ends in stack frames that the
                // evaluation does not see): the evaluation then halves its call.
                let message = format!("{e:#}");
                answers.write_all(&[if is_out_of_memory(&message) { 2 } else { 1 }])?;
                send_text(&mut answers, &message)?;
            }
        }
        answers.flush()?;
    }
    holds_the_checkpoint(&model, &handed_over, "after the last call")
}

/// The model's `state` is the checkpoint, tensor for tensor: the model evaluated is the one the training handed
/// over. Red team 14 handed its optimizer state and a few rows over in the checkpoint and took optimizer steps in
/// `load_state`, before the first call: every side of the evaluation then had the same better model, which no
/// probe could tell from an honest one (kept, 0.28 below the baseline). A model that trains is caught here where
/// its `state` shows it; one that keeps a copy to show is not (see README, "What is not enforced").
fn holds_the_checkpoint<M: Model>(model: &M, checkpoint: &[(String, Tensor)], when: &str) -> Result<()> {
    let state: std::collections::HashMap<String, Tensor> = model.state().into_iter().collect();
    for (name, saved) in checkpoint {
        let now = state
            .get(name)
            .with_context(|| format!("the model's state {when} has no tensor `{name}`, which the checkpoint holds"))?;
        // Equal element for element, a NaN where the checkpoint has one included.
        let same = now.size() == saved.size()
            && now.kind() == saved.kind()
            && tch::no_grad(|| {
                let now = now.to_device(Device::Cpu);
                let nan = now.isnan().logical_and(&saved.isnan());
                now.eq_tensor(saved).logical_or(&nan).all().int64_value(&[]) == 1
            });
        ensure!(same, "the model's state {when} is not the checkpoint: `{name}` differs (changed in the evaluation)");
    }
    Ok(())
}

/// Asks for a socket buffer (`option`: sending or receiving) of 1 MiB, where the system allows it.
fn set_socket_buffer(socket: libc::c_int, option: libc::c_int) {
    let size: libc::c_int = 1 << 20;
    // SAFETY: setsockopt with an int of the size given; on a descriptor that is not an open socket it only fails.
    let _ = unsafe {
        libc::setsockopt(
            socket,
            libc::SOL_SOCKET,
            option,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
}

fn send_text(out: &mut impl Write, text: &str) -> Result<()> {
    out.write_all(&(text.len() as u32).to_le_bytes())?;
    out.write_all(text.as_bytes())?;
    Ok(())
}

fn read_u32(input: &mut impl Read) -> std::io::Result<u32> {
    let mut b = [0u8; 4];
    input.read_exact(&mut b)?;
    Ok(u32::from_le_bytes(b))
}

/// A text of the child, its last `cap` characters, control characters but newlines made spaces.
fn read_text(input: &mut impl Read, cap: usize) -> Result<String> {
    let len = read_u32(input)? as usize;
    let mut bytes = vec![0u8; len.min(1 << 16)];
    input.read_exact(&mut bytes)?;
    ensure!(len <= 1 << 16, "the model process sent a text of {len} bytes");
    Ok(shown(&String::from_utf8_lossy(&bytes), cap))
}

fn shown(text: &str, cap: usize) -> String {
    let chars: Vec<char> = text.trim().chars().map(|c| if c.is_control() && c != '\n' { ' ' } else { c }).collect();
    chars[chars.len().saturating_sub(cap)..].iter().collect()
}

/// The next request, or None where the evaluation closed stdin.
fn read_request(input: &mut impl Read) -> Result<Option<(i64, i64, Vec<i64>)>> {
    let rows = match read_u32(input) {
        Ok(r) => r as i64,
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let cols = read_u32(input)? as i64;
    let mut bytes = vec![0u8; (rows * cols * 8) as usize];
    input.read_exact(&mut bytes)?;
    Ok(Some((rows, cols, bytes.chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap())).collect())))
}

/// The evaluation's side: the running model process.
pub struct ModelProcess {
    child: Child,
    /// None once closed.
    requests: Option<BufWriter<ChildStdin>>,
    answers: BufReader<DueStream>,
    stderr: Option<JoinHandle<String>>,
    vocab: i64,
    /// Where answers are read to, reused.
    buffer: Vec<u8>,
    /// The child's sandbox line, for the log.
    pub sandbox: String,
    /// The time it has for its start-up and first answer, and for each answer after.
    allowance: Duration,
    /// When the next answer is due, where that is not an allowance after its call, and how many rows are still
    /// owed by then: the first answer's (due by the start-up's end), and the parts of a call answered "out of
    /// memory" (due when the call was, all of them). None once they came.
    carried_due: Option<(Instant, i64)>,
}

impl ModelProcess {
    /// Starts this binary's `model` phase with `args`, and waits until it has loaded the model: its start-up and
    /// first answer must come within `allowance`, each later answer within `allowance` of its call.
    pub fn start(args: &PhaseArgs, vocab: usize, allowance: Duration) -> Result<ModelProcess> {
        let started = Instant::now();
        let exe = std::env::current_exe().context("finding the training binary")?;
        let (ours, theirs) = UnixStream::pair().context("a socket for the model process's answers")?;
        let mut child = Command::new(exe)
            .args(args.to_args()?)
            .stdin(Stdio::piped())
            .stdout(Stdio::from(OwnedFd::from(theirs)))
            .stderr(Stdio::piped())
            .spawn()
            .context("starting the model process")?;
        // An answer is megabytes: buffers of 1 MiB (Linux's ceiling for a pipe; a socket's where the system allows
        // it) rather than 64 KiB or 208 KiB spare most of the switches between the two processes, slow where other
        // processes share the cores. One left at its size is only slower.
        if let Some(requests) = &child.stdin {
            // SAFETY: fcntl on a descriptor this process holds open.
            let _ = unsafe { libc::fcntl(requests.as_raw_fd(), libc::F_SETPIPE_SZ, 1 << 20) };
        }
        set_socket_buffer(ours.as_raw_fd(), libc::SO_RCVBUF);
        let stderr = read_its_tail(child.stderr.take().expect("piped"));
        let mut process = ModelProcess {
            requests: Some(BufWriter::with_capacity(1 << 20, child.stdin.take().expect("piped"))),
            answers: BufReader::with_capacity(1 << 20, DueStream { stream: ours, due: started + allowance }),
            child,
            stderr: Some(stderr),
            vocab: vocab as i64,
            buffer: Vec::new(),
            sandbox: String::new(),
            allowance,
            carried_due: Some((started + allowance, 0)),
        };
        let what = "its `build` and loading";
        // Sent before any validation input, so it cannot carry one: shown whole, up to a long line.
        process.sandbox = match read_text(&mut process.answers, 4096) {
            Ok(line) => line,
            Err(e) => return Err(process.failed(e, what)),
        };
        Ok(process)
    }

    /// The logits (rows, t, vocab) for token ids (rows, t), float32 on the CPU; an error the model's call
    /// raised (out of memory, say) is an error here too, and the process goes on.
    pub fn logits(&mut self, inputs: &Tensor) -> Result<Tensor> {
        let (rows, cols) = inputs.size2()?;
        let tokens = Vec::<i64>::try_from(inputs.flatten(0, -1))?;
        let requests = self.requests.as_mut().context("the model process was closed")?;
        let sent = (|| -> std::io::Result<()> {
            requests.write_all(&(rows as u32).to_le_bytes())?;
            requests.write_all(&(cols as u32).to_le_bytes())?;
            for t in &tokens {
                requests.write_all(&t.to_le_bytes())?;
            }
            requests.flush()
        })();
        if sent.is_err() {
            return Err(self.failure());
        }
        // An answer is due an allowance after its call; the first by the start-up's end. An out-of-memory answer
        // earns no time: the parts its call is split into are all due when it was, however often it is split.
        let (due, owed) = self.carried_due.unwrap_or_else(|| (Instant::now() + self.allowance, 0));
        self.answers.get_mut().due = due;
        let what = "a call of its `logits`";
        let mut status = [0u8];
        if let Err(e) = self.answers.read_exact(&mut status) {
            return Err(self.failed(e, what));
        }
        match status[0] {
            0 => {
                self.buffer.resize((rows * cols * self.vocab * 4) as usize, 0);
                if let Err(e) = self.answers.read_exact(&mut self.buffer) {
                    return Err(self.failed(e, what));
                }
                self.carried_due = Some((due, owed - rows)).filter(|&(_, owed)| owed > 0);
                Ok(Tensor::from_data_size(&self.buffer, &[rows, cols, self.vocab], Kind::Float))
            }
            1 => match read_text(&mut self.answers, SHOWN) {
                Ok(error) => bail!("{error}"),
                Err(e) => Err(self.failed(e, what)),
            },
            2 => match read_text(&mut self.answers, SHOWN) {
                Ok(error) => {
                    // The call's rows are owed by its due (a part of a call already owed owes nothing more).
                    self.carried_due = Some((due, owed.max(rows)));
                    bail!("out of memory in the model process: {error}")
                }
                Err(e) => Err(self.failed(e, what)),
            },
            other => bail!("the model process sent a malformed answer (status {other})"),
        }
    }

    /// Closes the requests and waits for the child to end, after its last state check, on the start-up
    /// allowance's clock like every answer.
    pub fn finish(mut self) -> Result<()> {
        drop(self.requests.take());
        let allowance = self.allowance;
        if !within(allowance, || !matches!(self.child.try_wait(), Ok(None))) {
            return Err(self.over_time("its end"));
        }
        if !self.child.wait()?.success() {
            let why = self.failure();
            bail!("at its end, {why}");
        }
        Ok(())
    }

    /// Ends the child, which did not answer in time.
    fn over_time(&mut self, what: &str) -> anyhow::Error {
        let _ = self.child.kill();
        let _ = self.child.wait();
        crate::OverTime(format!(
            "over time: the model process took longer than {:.0} s for {what} (the profile's start-up allowance; \
             the agent's code in the evaluation runs on its clock)",
            self.allowance.as_secs_f64()
        ))
        .into()
    }

    /// Why reading an answer failed with `error`: its deadline passed, or the child stopped answering.
    fn failed(&mut self, error: impl Into<anyhow::Error>, what: &str) -> anyhow::Error {
        let error = error.into();
        let timed_out =
            error.downcast_ref::<std::io::Error>().is_some_and(|e| e.kind() == std::io::ErrorKind::TimedOut);
        if timed_out {
            self.over_time(what)
        } else {
            self.failure()
        }
    }

    /// Why the child stopped answering: its exit and the end of its stderr.
    fn failure(&mut self) -> anyhow::Error {
        use std::os::unix::process::ExitStatusExt;
        // It may be ending on its own error (up to a second is given), or still live, waiting for a request after
        // a garbled answer: then it is ended here, and its end is not mistaken for the kernel's OOM killer. A
        // process it started could hold its stderr open; that tail is then not waited for (the phase's
        // supervisor ends it).
        let ended_here = !within(Duration::from_secs(1), || !matches!(self.child.try_wait(), Ok(None)));
        if ended_here {
            let _ = self.child.kill();
        }
        let status = self.child.wait();
        let stderr = self
            .stderr
            .take()
            .filter(|h| within(Duration::from_secs(1), || h.is_finished()))
            .map(|h| h.join().unwrap_or_default());
        let stderr = stderr.unwrap_or_default();
        let lines: Vec<&str> = stderr.lines().collect();
        // Its own error line where it wrote one, else a panic's message, else the whole tail.
        let said = if let Some(e) = lines.iter().rev().find_map(|l| l.strip_prefix("error: ")) {
            e.to_string()
        } else if let Some(i) = lines.iter().position(|l| l.contains("panicked at")) {
            format!("panic: {}", lines.get(i + 1).map_or("", |m| m.trim()))
        } else {
            stderr.clone()
        };
        let how = match status {
            Ok(_) if ended_here => "it stopped answering and was ended".to_string(),
            Ok(s) if s.signal() == Some(9) => "killed (signal 9: out of memory?)".to_string(),
            Ok(s) => s.to_string(),
            Err(e) => format!("not waited for: {e}"),
        };
        anyhow::anyhow!("the model process failed ({how}): {}", shown(&said, SHOWN))
    }
}

/// The model process's answers, read by a deadline: a read waits at most until `due`, and fails `TimedOut` where
/// nothing came by then, so that an answer must have come whole by its deadline (not merely begun: a process that
/// sends a byte at a time would otherwise hold the evaluation for as long as it liked).
struct DueStream {
    stream: UnixStream,
    due: Instant,
}

impl Read for DueStream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let mut fd = libc::pollfd { fd: self.stream.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        loop {
            let left = self.due.saturating_duration_since(Instant::now());
            // SAFETY: one pollfd, for a descriptor this process holds open. What has come is read even past the
            // deadline (this process may be the slow one); a wait ends at it.
            let ready = unsafe { libc::poll(&mut fd, 1, left.as_millis().min(i32::MAX as u128) as i32) };
            if ready > 0 {
                return self.stream.read(buf);
            }
            if ready < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
                return Err(std::io::Error::last_os_error());
            }
            if ready == 0 && Instant::now() >= self.due {
                return Err(std::io::ErrorKind::TimedOut.into());
            }
        }
    }
}

/// Reads `stderr` to its end on a thread of its own, so that the child never blocks on a full pipe; only the tail
/// is kept.
fn read_its_tail(mut stderr: ChildStderr) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let (mut tail, mut buf) = (Vec::new(), [0u8; 8192]);
        while let Ok(n) = stderr.read(&mut buf) {
            if n == 0 {
                break;
            }
            tail.extend_from_slice(&buf[..n]);
            let excess = tail.len().saturating_sub(4 * SHOWN);
            tail.drain(..excess);
        }
        String::from_utf8_lossy(&tail).into_owned()
    })
}

/// Whether `done` holds within `limit` (asked every 10 ms).
fn within(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let waited = Instant::now();
    while !done() {
        if waited.elapsed() >= limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

impl Drop for ModelProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_must_come_whole_by_its_deadline_not_merely_begin() {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        // A byte every 50 ms: each read would get something in time, the whole never.
        let trickle = std::thread::spawn(move || {
            for _ in 0..40 {
                if theirs.write_all(&[7]).is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        let started = Instant::now();
        let mut answers = BufReader::new(DueStream { stream: ours, due: started + Duration::from_millis(300) });
        let mut answer = [0u8; 20];
        let error = answers.read_exact(&mut answer).unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::TimedOut);
        assert!(started.elapsed() < Duration::from_secs(1), "{:?}", started.elapsed());
        // What came in time is read; a deadline far off lets the rest come.
        answers.get_mut().due = Instant::now() + Duration::from_secs(10);
        let mut rest = [0u8; 2];
        answers.read_exact(&mut rest).unwrap();
        assert_eq!(rest, [7, 7]);
        drop(answers);
        trickle.join().unwrap();
    }

    /// A model process around `script`, run by `sh`, with `allowance` (its answers are not read here).
    fn around(script: &str, allowance: Duration) -> ModelProcess {
        let mut child =
            Command::new("sh").args(["-c", script]).stdin(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        ModelProcess {
            requests: Some(BufWriter::new(child.stdin.take().unwrap())),
            answers: BufReader::new(DueStream { stream: UnixStream::pair().unwrap().0, due: Instant::now() }),
            stderr: Some(read_its_tail(child.stderr.take().unwrap())),
            child,
            vocab: 1,
            buffer: Vec::new(),
            sandbox: String::new(),
            allowance,
            carried_due: None,
        }
    }

    #[test]
    fn its_end_is_on_the_allowances_clock_and_a_failed_last_check_says_why() {
        around("cat > /dev/null", Duration::from_secs(10)).finish().unwrap();
        // One whose last check fails says why.
        let check = "cat > /dev/null; echo 'error: the state is not the checkpoint' >&2; exit 1";
        let error = around(check, Duration::from_secs(10)).finish().unwrap_err().to_string();
        assert_eq!(error, "at its end, the model process failed (exit status: 1): the state is not the checkpoint");
        let started = Instant::now();
        // After its last request, a model process that does not end (computing on, say) is ended at the allowance.
        let error = around("cat > /dev/null; exec sleep 60", Duration::from_millis(300)).finish().unwrap_err();
        assert!(error.is::<crate::OverTime>(), "{error:#}");
        assert!(error.to_string().contains("for its end"), "{error:#}");
        assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    }
}
