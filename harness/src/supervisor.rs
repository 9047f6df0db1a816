//! Every process a phase starts is gone when the phase ends, and what the phase hands over is sealed by a
//! process the agent's code never runs in. Before anything else (and before any thread exists), the training
//! binary (or `autoresearch sandboxed`, which runs a project's commands) forks: the child runs the phase,
//! sandboxed; the parent stays outside the sandbox as a child subreaper, so that every process the phase starts,
//! also one that left its process group or session (`setsid`, a double fork), stays its descendant. When the
//! child ends, or the harness asks it to stop (SIGTERM, or SIGINT from a terminal), the parent kills every
//! descendant, reaps them, writes the phase's status and exits as the child did.
//!
//! Meanwhile fixed code in the child asks, over a socket that only it holds ([`Supervisor`]): when the agent's
//! `train` has returned, [`Supervisor::end_phase_processes`]: the parent kills the processes the phase started
//! (it finds them in /proc, which the sandbox need not show the phase); once fixed code has written the
//! checkpoint, [`Supervisor::hand_over`]: the parent kills them again, seals the files (their SHA-256, which must
//! be what fixed code wrote) and notes the time against the hand-over's due; at the end,
//! [`Supervisor::report`]: how the phase ended. The status file is the parent's alone to write: the phase's report
//! is taken as its claim, and the seals and the hand-over's time as the parent's. (Fixed code in the phase shares
//! its process with the agent's code, which safe Rust keeps from the socket, but which may take the process over
//! through a soundness bug of rustc: see the README's "What is not enforced".) The sandbox keeps the phase from
//! signalling the parent (Landlock's signal scope); the child dies with the parent (parent-death signal), should
//! the parent be killed outright.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

use crate::handover::{Outcome, PhaseStatus, Sealed};
use serde::{Deserialize, Serialize};

/// The signal that asked the supervisor to stop (0: none yet).
static STOP: AtomicI32 = AtomicI32::new(0);

extern "C" fn ask_to_stop(signal: libc::c_int) {
    STOP.store(signal, Ordering::SeqCst);
}

/// Catching SIGCHLD (ignored by default) lets the child's end interrupt the supervisor's wait.
extern "C" fn child_changed(_: libc::c_int) {}

fn become_subreaper() -> Result<()> {
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        bail!("becoming a child subreaper: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// What the supervisor keeps for the harness, beyond ending the phase's processes.
#[derive(Clone, Debug, Default)]
pub struct Supervision {
    /// Where it writes the phase's [`PhaseStatus`] when the phase has ended: what the phase reported
    /// ([`Supervisor::report`]), with the seals of the hand-over (none written where the phase reported nothing
    /// and handed nothing over late).
    pub status: Option<PathBuf>,
    /// The files the phase hands over, sealed when it asks ([`Supervisor::hand_over`]).
    pub hand_over: Option<HandOver>,
}

/// Files a phase hands over (the training's checkpoint and `training.json`), and by when.
#[derive(Clone, Debug)]
pub struct HandOver {
    pub folder: PathBuf,
    pub files: Vec<String>,
    /// A hand-over sealed later is a crash, `over time`. An instant of the monotonic clock (the phase's deadline
    /// converted at its start, see [`crate::handover::instant_of`]): a step of the wall clock during the phase
    /// neither makes an honest hand-over late nor gives time to a file that sets the clock back.
    pub due: Instant,
}

/// The phase's end of the socket to its supervisor, which fixed code keeps to itself: the agent's code, given
/// none, cannot end the phase's processes, hand over or report in its name. (A supervisor of its own, from a
/// call of [`supervise`], is one more sandboxed process: it writes nothing the harness reads.)
#[derive(Debug)]
pub struct Supervisor {
    socket: std::os::fd::OwnedFd,
    next: u64,
}

/// Forks. Returns in the child, which runs the phase, with its end of the socket to the parent; the parent
/// supervises it and does not return. Both are subreapers (the setting is not inherited): the child adopts the
/// orphans of the agent's processes while it lives, so that fixed code in it can end them when the agent's code
/// returns ([`Supervisor::end_phase_processes`]: the parent kills them, for the sandboxed child need not see
/// other processes in /proc); the parent adopts whatever is left should the child die.
pub fn supervise(supervision: Supervision) -> Result<Supervisor> {
    become_subreaper()?;
    let mut socket = [-1; 2];
    // Close-on-exec: a program the phase starts does not hold the phase's end.
    if unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0, socket.as_mut_ptr()) }
        != 0
    {
        bail!("a socket to the supervisor: {}", std::io::Error::last_os_error());
    }
    let parent = unsafe { libc::getpid() };
    match unsafe { libc::fork() } {
        -1 => bail!("forking the phase: {}", std::io::Error::last_os_error()),
        0 => {
            unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
            // The parent may have died before the line above.
            if unsafe { libc::getppid() } != parent {
                std::process::exit(1);
            }
            unsafe { libc::close(socket[0]) };
            become_subreaper()?;
            // SAFETY: socketpair made the descriptor, and nothing else owns it.
            let socket = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(socket[1]) };
            Ok(Supervisor { socket, next: 0 })
        }
        child => {
            unsafe { libc::close(socket[1]) };
            supervise_child(child, socket[0], supervision)
        }
    }
}

/// A request: its id (8 bytes), its kind (1 byte), and (JSON) for [`HAND_OVER`] the seals of what fixed code
/// wrote, for [`REPORT`] a [`Report`]. The answer: the id, then how many processes were killed (4 bytes).
const REQUEST_ID: usize = 8;
const ANSWER: usize = REQUEST_ID + 4;
/// Kill the processes the phase started.
const END_PROCESSES: u8 = 0;
/// The same, and seal the hand-over (the first time).
const HAND_OVER: u8 = 1;
/// How the phase ended, as its fixed code saw it.
const REPORT: u8 = 2;
/// The longest report: its message is cut to [`REPORTED_CHARS`] characters, at most 6 bytes each in JSON.
const MAX_REPORT: usize = 64 << 10;
const REPORTED_CHARS: usize = 4096;

/// The supervisor's record of a hand-over: how late it was sealed, and the seals (or why there are none).
#[derive(Clone, Debug, PartialEq)]
pub struct Sealing {
    /// Seconds past its due (negative: early).
    pub late: f64,
    pub seals: Result<Vec<Sealed>, String>,
}

/// How the phase says it ended: its claim, which the supervisor writes with what it saw itself.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub outcome: Outcome,
    pub message: String,
}

/// Runs until the child ends or the supervisor is asked to stop; meanwhile answers the child's requests. Then
/// kills whatever the phase left and writes its status.
fn supervise_child(child: libc::pid_t, socket: libc::c_int, supervision: Supervision) -> ! {
    // Blocked but while waiting (ppoll unblocks them atomically), so that none is missed between a check and the
    // wait. No SA_RESTART: a signal ends the wait at once.
    let mut handled: libc::sigset_t = unsafe { std::mem::zeroed() };
    let mut none: libc::sigset_t = unsafe { std::mem::zeroed() };
    unsafe {
        libc::sigemptyset(&mut handled);
        libc::sigemptyset(&mut none);
    }
    let handlers = [
        (libc::SIGTERM, ask_to_stop as extern "C" fn(libc::c_int)),
        (libc::SIGINT, ask_to_stop),
        (libc::SIGCHLD, child_changed),
    ];
    for (signal, _) in handlers {
        unsafe { libc::sigaddset(&mut handled, signal) };
    }
    unsafe { libc::sigprocmask(libc::SIG_BLOCK, &handled, std::ptr::null_mut()) };
    for (signal, handler) in handlers {
        let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
        action.sa_sigaction = handler as libc::sighandler_t;
        unsafe { libc::sigaction(signal, &action, std::ptr::null_mut()) };
    }
    let mut child_status = None;
    let (mut reported, mut sealing) = (None, None);
    let mut requests = libc::pollfd { fd: socket, events: libc::POLLIN, revents: 0 };
    let mut request = vec![0u8; REQUEST_ID + 1 + MAX_REPORT + 1];
    loop {
        // A signal that came while requests kept the wait from ever blocking is still pending (blocked): taken
        // here, so that a stream of requests cannot keep the supervisor from stopping.
        let mut pending: libc::sigset_t = unsafe { std::mem::zeroed() };
        unsafe { libc::sigpending(&mut pending) };
        for signal in [libc::SIGTERM, libc::SIGINT] {
            if unsafe { libc::sigismember(&pending, signal) } == 1 {
                STOP.store(signal, Ordering::SeqCst);
            }
        }
        if STOP.load(Ordering::SeqCst) != 0 {
            break;
        }
        let mut status = 0;
        if unsafe { libc::waitpid(child, &mut status, libc::WNOHANG) } == child {
            child_status = Some(status);
            break;
        }
        if unsafe { libc::ppoll(&mut requests, 1, std::ptr::null(), &none) } == -1 {
            if std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                break;
            }
            continue;
        }
        let n = unsafe { libc::recv(socket, request.as_mut_ptr().cast(), request.len(), libc::MSG_DONTWAIT) };
        if n <= 0 {
            let again = std::io::Error::last_os_error().raw_os_error() == Some(libc::EAGAIN);
            if n == 0 || !again {
                // The child closed its end (it ran a program, or ended): wait for its end alone.
                requests.fd = -1;
            }
            continue;
        }
        let request = &request[..n as usize];
        if request.len() <= REQUEST_ID {
            continue;
        }
        let mut killed = 0u32;
        match request[REQUEST_ID] {
            END_PROCESSES | HAND_OVER => {
                // The child stays stopped while its processes are found and killed (no thread of it starts
                // another meanwhile, so the search ends) and while the files are sealed (none of it writes them).
                if let Err(status) = stop(child) {
                    child_status = Some(status);
                    break;
                }
                killed = kill_living_descendants(Some(child)) as u32;
                if let (HAND_OVER, Some(hand_over), None) = (request[REQUEST_ID], &supervision.hand_over, &sealing) {
                    sealing = Some(seal(hand_over, &request[REQUEST_ID + 1..]));
                }
                unsafe { libc::kill(child, libc::SIGCONT) };
            }
            REPORT => {
                reported = Some(serde_json::from_slice::<Report>(&request[REQUEST_ID + 1..]).map_err(|e| {
                    if request.len() > REQUEST_ID + 1 + MAX_REPORT {
                        format!("over {MAX_REPORT} bytes")
                    } else {
                        e.to_string()
                    }
                }));
            }
            _ => continue,
        }
        let mut answer = [0u8; ANSWER];
        answer[..REQUEST_ID].copy_from_slice(&request[..REQUEST_ID]);
        answer[REQUEST_ID..].copy_from_slice(&killed.to_le_bytes());
        // Never blocks, nor raises SIGPIPE should the child be gone.
        let flags = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;
        unsafe { libc::send(socket, answer.as_ptr().cast(), ANSWER, flags) };
    }
    let killed = kill_descendants();
    if killed > 0 {
        eprintln!("phase ended: {killed} process(es) it had started were still running, and were killed");
    }
    if let Some(path) = &supervision.status {
        if let Some(status) = final_status(reported, supervision.hand_over.is_some(), sealing) {
            let written = serde_json::to_vec(&status)
                .map_err(anyhow::Error::from)
                .and_then(|bytes| std::fs::write(path, bytes).map_err(|e| anyhow::anyhow!("{}: {e}", path.display())));
            if let Err(e) = written {
                eprintln!("error: writing the phase's status: {e:#}");
            }
        }
    }
    let signal = STOP.load(Ordering::SeqCst);
    match child_status {
        Some(status) if libc::WIFEXITED(status) => std::process::exit(libc::WEXITSTATUS(status)),
        Some(status) if libc::WIFSIGNALED(status) => die_by(libc::WTERMSIG(status)),
        _ if signal != 0 => die_by(signal),
        _ => std::process::exit(1),
    }
}

/// Stops the child (SIGSTOP) and waits, up to a second, to see it stopped; its status where it ended meanwhile.
/// A child that processes of its own keep continuing (SIGCONT) is not waited for longer: what follows goes on
/// regardless (the search kills them), and counts against a hand-over's due.
fn stop(child: libc::pid_t) -> std::result::Result<(), libc::c_int> {
    unsafe { libc::kill(child, libc::SIGSTOP) };
    let asked = Instant::now();
    loop {
        let mut status = 0;
        match unsafe { libc::waitpid(child, &mut status, libc::WUNTRACED | libc::WNOHANG) } {
            pid if pid == child => return if libc::WIFSTOPPED(status) { Ok(()) } else { Err(status) },
            -1 if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) => continue,
            -1 => return Ok(()),
            _ if asked.elapsed() >= Duration::from_secs(1) => return Ok(()),
            _ => std::thread::sleep(Duration::from_micros(200)),
        }
    }
}

/// Seals the hand-over's files as they are, fixed code having `written` (JSON) the seals of what it wrote, which
/// the files must hold; timed when the seals are taken.
fn seal(hand_over: &HandOver, written: &[u8]) -> Sealing {
    let seals = (|| {
        let written: Vec<Sealed> = serde_json::from_slice(written).context("the hand-over's request is malformed")?;
        let mut seals = Vec::new();
        for file in &hand_over.files {
            let seal = Sealed::of_file(&hand_over.folder, file)?;
            ensure!(
                written.contains(&seal),
                "{file} changed between its writing and its seal (by the file's code, running beside fixed code)"
            );
            seals.push(seal);
        }
        Ok(seals)
    })();
    let now = Instant::now();
    let late = match now.checked_duration_since(hand_over.due) {
        Some(past) => past.as_secs_f64(),
        None => -(hand_over.due - now).as_secs_f64(),
    };
    Sealing { late, seals: seals.map_err(|e: anyhow::Error| format!("{e:#}")) }
}

/// The phase's status from what it reported (`None`: nothing; `Err`: a report that did not parse) and, where it
/// hands files over (`hands_over`), the supervisor's `sealing` of them (`None`: never asked for). What the phase
/// reports is its own account (its error, its panic, out of memory); the seals and the hand-over's time are the
/// supervisor's. `None` where there is nothing to say: the harness then goes by the exit status.
pub fn final_status(
    reported: Option<Result<Report, String>>,
    hands_over: bool,
    sealing: Option<Sealing>,
) -> Option<PhaseStatus> {
    let status = |outcome, message: String| PhaseStatus { outcome, message, sealed: Vec::new() };
    if let Some(Sealing { late, .. }) = sealing {
        if late > 0.0 {
            return Some(status(
                Outcome::OverTime,
                format!(
                    "over time: the model was handed over {late:.1} s past its due (`train`'s end plus the time \
                     for saving it): the training's fixed code was held up, or bypassed"
                ),
            ));
        }
    }
    let reported = match reported? {
        Ok(Report { outcome, message }) => status(outcome, message),
        Err(e) => return Some(status(Outcome::Error, format!("the phase's report of its end is malformed: {e}"))),
    };
    if !hands_over || reported.outcome != Outcome::Success {
        return Some(reported);
    }
    Some(match sealing {
        None => status(
            Outcome::Error,
            "the training reported success without handing its model over: its fixed code was bypassed".into(),
        ),
        Some(Sealing { seals: Err(e), .. }) => status(Outcome::Error, format!("sealing the hand-over: {e}")),
        Some(Sealing { seals: Ok(seals), .. }) => PhaseStatus { sealed: seals, ..reported },
    })
}

/// Ends the supervisor as the child ended: by the same signal, with its default action.
fn die_by(signal: libc::c_int) -> ! {
    unsafe {
        libc::signal(signal, libc::SIG_DFL);
        let mut unblocked: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut unblocked);
        libc::sigaddset(&mut unblocked, signal);
        libc::sigprocmask(libc::SIG_UNBLOCK, &unblocked, std::ptr::null_mut());
        libc::kill(libc::getpid(), signal);
    }
    std::process::exit(128 + signal)
}

impl Supervisor {
    /// Ends every process the phase started, also one that left its process group or session, and reaps them;
    /// returns how many were running. The supervisor kills them (it reads /proc, which the sandboxed phase need
    /// not), then the phase, their subreaper, reaps them. One that a thread of the phase starts later (the
    /// agent's code can leave one running) is ended with the phase.
    pub fn end_phase_processes(&mut self) -> Result<usize> {
        let ended = self.ask(END_PROCESSES, &[])?;
        reap_the_dead();
        Ok(ended)
    }

    /// Hands over, once fixed code has `written` the files: the supervisor seals them (the first time, where
    /// they hold what was written; the time is noted against their due) and ends the phase's processes as
    /// [`Supervisor::end_phase_processes`] does; returns how many were running.
    pub fn hand_over(&mut self, written: &[Sealed]) -> Result<usize> {
        let ended = self.ask(HAND_OVER, &serde_json::to_vec(written)?)?;
        reap_the_dead();
        Ok(ended)
    }

    /// Tells the supervisor how the phase ended (the message cut to 4,096 characters), for the status file.
    pub fn report(mut self, outcome: Outcome, message: &str) -> Result<()> {
        let message = message.chars().take(REPORTED_CHARS).collect();
        self.ask(REPORT, &serde_json::to_vec(&Report { outcome, message })?)?;
        Ok(())
    }

    /// Sends the supervisor a request of `kind`; its answer, how many processes it killed.
    fn ask(&mut self, kind: u8, payload: &[u8]) -> Result<usize> {
        use std::os::fd::AsRawFd;
        let socket = self.socket.as_raw_fd();
        self.next += 1;
        let id = self.next.to_le_bytes();
        let request = [&id[..], &[kind], payload].concat();
        let failed = |what: &str| anyhow::anyhow!("{what} the supervisor: {}", std::io::Error::last_os_error());
        let interrupted = || std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR);
        while unsafe { libc::send(socket, request.as_ptr().cast(), request.len(), libc::MSG_NOSIGNAL) }
            != request.len() as isize
        {
            if !interrupted() {
                return Err(failed("asking"));
            }
        }
        let mut answer = [0u8; ANSWER];
        loop {
            let n = unsafe { libc::recv(socket, answer.as_mut_ptr().cast(), ANSWER, 0) };
            if n == ANSWER as isize && answer[..REQUEST_ID] == id {
                return Ok(u32::from_le_bytes(answer[REQUEST_ID..].try_into()?) as usize);
            }
            if n == 0 || n < 0 && !interrupted() {
                return Err(failed("hearing from"));
            }
        }
    }
}

/// Reaps this process's dead children (the supervisor answers once every process it killed has died).
fn reap_the_dead() {
    let mut status = 0;
    loop {
        match unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) } {
            -1 if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) => continue,
            pid if pid > 0 => continue,
            _ => return,
        }
    }
}

/// Kills every descendant of this process (a subreaper: the orphans of its descendants are its own) and reaps
/// them; returns how many were killed.
pub fn kill_descendants() -> usize {
    let killed = kill_living_descendants(None);
    let mut status = 0;
    // Until ECHILD: none is left.
    while unsafe { libc::waitpid(-1, &mut status, 0) } > 0 {}
    killed
}

/// Kills every living descendant of this process but `sparing` (the phase, whose own processes are killed);
/// returns how many. Repeats until none is left, so that one forked meanwhile is caught too: each round kills
/// what the last one's processes started.
fn kill_living_descendants(sparing: Option<libc::pid_t>) -> usize {
    let me = unsafe { libc::getpid() };
    let mut killed = HashSet::new();
    loop {
        let descendants: Vec<_> = descendants_of(me).into_iter().filter(|&p| Some(p) != sparing).collect();
        if descendants.is_empty() {
            return killed.len();
        }
        for &pid in &descendants {
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        killed.extend(descendants);
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// The living (not zombie) descendants of `root`, from /proc.
fn descendants_of(root: i32) -> Vec<i32> {
    let mut parents: HashMap<i32, Vec<i32>> = HashMap::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        // After the command name (in parentheses, may hold anything): state, then the parent's pid.
        let Some((_, rest)) = stat.rsplit_once(')') else { continue };
        let mut fields = rest.split_whitespace();
        let (state, ppid) = (fields.next(), fields.next().and_then(|p| p.parse::<i32>().ok()));
        if let (Some(state), Some(ppid)) = (state, ppid) {
            if state != "Z" && state != "X" {
                parents.entry(ppid).or_default().push(pid);
            }
        }
    }
    let mut out = Vec::new();
    let mut queue = vec![root];
    while let Some(p) = queue.pop() {
        for &c in parents.get(&p).map(Vec::as_slice).unwrap_or_default() {
            out.push(c);
            queue.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(outcome: Outcome, message: &str) -> PhaseStatus {
        PhaseStatus { outcome, message: message.into(), sealed: Vec::new() }
    }

    fn report(outcome: Outcome, message: &str) -> Option<Result<Report, String>> {
        Some(Ok(Report { outcome, message: message.into() }))
    }

    fn seal(file: &str) -> Sealed {
        Sealed { file: file.into(), sha256: "ab".repeat(32) }
    }

    #[test]
    fn a_seal_is_timed_when_it_is_taken() {
        let dir = tempfile::tempdir().unwrap();
        // 128 MiB take tens of milliseconds to hash at the least: the due falls while they are read.
        let bytes = vec![7u8; 128 << 20];
        let written = Sealed::write(dir.path(), "model.safetensors", &bytes).unwrap();
        let hand_over = HandOver {
            folder: dir.path().into(),
            files: vec!["model.safetensors".into()],
            due: Instant::now() + Duration::from_millis(20),
        };
        let sealing = super::seal(&hand_over, &serde_json::to_vec(&[&written]).unwrap());
        assert_eq!(sealing.seals, Ok(vec![written]));
        assert!(sealing.late > 0.0, "{sealing:?}");
        // What fixed code says it wrote is what the files must hold.
        let other = Sealed { file: "model.safetensors".into(), sha256: "00".repeat(32) };
        let forged = super::seal(&hand_over, &serde_json::to_vec(&[other]).unwrap()).seals.unwrap_err();
        assert!(forged.contains("changed between its writing and its seal"), "{forged}");
        assert!(super::seal(&hand_over, b"not json").seals.unwrap_err().contains("malformed"));
    }

    #[test]
    fn the_status_is_the_phases_claim_with_the_supervisors_seals_and_time() {
        let on_time = |seals| Some(Sealing { late: -0.4, seals });
        // A phase that hands nothing over (the evaluation): its report as it is; nothing said, nothing written.
        assert_eq!(final_status(report(Outcome::Panic, "boom"), false, None), Some(status(Outcome::Panic, "boom")));
        assert_eq!(final_status(None, false, None), None);
        assert_eq!(final_status(None, true, None), None);
        // The training: the seals are the supervisor's.
        let sealed = vec![seal("model.safetensors"), seal("training.json")];
        let done = final_status(report(Outcome::Success, ""), true, on_time(Ok(sealed.clone()))).unwrap();
        assert_eq!(done, PhaseStatus { sealed: sealed.clone(), ..status(Outcome::Success, "") });
        let unsealed = final_status(report(Outcome::Success, ""), true, None).unwrap();
        assert_eq!(unsealed.outcome, Outcome::Error);
        assert!(unsealed.message.contains("without handing its model over") && unsealed.sealed.is_empty());
        let unreadable = final_status(report(Outcome::Success, ""), true, on_time(Err("x is a link".into())));
        assert_eq!(unreadable.unwrap(), status(Outcome::Error, "sealing the hand-over: x is a link"));
        // A failure after the hand-over (the loss check), or before it, is the phase's failure, unsealed.
        let failed = final_status(report(Outcome::Error, "loss check"), true, on_time(Ok(sealed.clone())));
        assert_eq!(failed.unwrap(), status(Outcome::Error, "loss check"));
        let oom = final_status(report(Outcome::OutOfMemory, "CUDA out of memory"), true, None);
        assert_eq!(oom.unwrap(), status(Outcome::OutOfMemory, "CUDA out of memory"));
        // Late is over time, whatever the phase claims or whether it said anything at all.
        for reported in [report(Outcome::Success, ""), report(Outcome::OutOfMemory, "oom"), None] {
            let late = final_status(reported, true, Some(Sealing { late: 2.25, seals: Ok(sealed.clone()) })).unwrap();
            assert_eq!(late.outcome, Outcome::OverTime);
            assert!(
                late.message.starts_with("over time: the model was handed over 2.2 s past its due"),
                "{}",
                late.message
            );
            assert!(late.sealed.is_empty());
        }
        // A report that does not parse is an error, named, sealed or not.
        for (hands_over, sealing) in [(false, None), (true, on_time(Ok(sealed.clone())))] {
            let garbled = final_status(Some(Err("expected value".into())), hands_over, sealing).unwrap();
            assert_eq!(garbled, status(Outcome::Error, "the phase's report of its end is malformed: expected value"));
        }
    }
}
