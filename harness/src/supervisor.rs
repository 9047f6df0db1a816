//! Every process a phase starts is gone when the phase ends. Before anything else (and before any thread
//! exists), the training binary (or `autoresearch sandboxed`, which runs a project's commands) forks: the child
//! runs the phase, sandboxed; the parent stays outside the sandbox as a child subreaper, so that every process the
//! phase starts, also one that left its process group or session (`setsid`, a double fork), stays its
//! descendant. When the child ends, or the harness asks it to stop (SIGTERM, or SIGINT from a terminal), the
//! parent kills every descendant, reaps them, and exits as the child did. Before that, the child may ask the
//! parent (over a socket) to kill the processes it started, when the agent's code returns: the parent, outside
//! the sandbox, finds them in /proc, which the sandbox need not show the phase. The sandbox keeps the phase from
//! signalling the parent (Landlock's signal scope); the child dies with the parent (parent-death signal), should
//! the parent be killed outright.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};

use anyhow::{bail, ensure, Result};

/// The signal that asked the supervisor to stop (0: none yet).
static STOP: AtomicI32 = AtomicI32::new(0);

/// In the supervised phase: its end of the socket to the supervisor (-1: not supervised).
static SUPERVISOR: AtomicI32 = AtomicI32::new(-1);

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

/// Forks. Returns in the child, which runs the phase; the parent supervises it and does not return. Both are
/// subreapers (the setting is not inherited): the child adopts the orphans of the agent's processes while it
/// lives, so that fixed code in it can end them when the agent's code returns ([`end_phase_processes`]: the
/// parent kills them, for the sandboxed child need not see other processes in /proc); the parent adopts whatever
/// is left should the child die.
pub fn supervise() -> Result<()> {
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
            SUPERVISOR.store(socket[1], Ordering::SeqCst);
            become_subreaper()
        }
        child => {
            unsafe { libc::close(socket[1]) };
            supervise_child(child, socket[0])
        }
    }
}

/// Runs until the child ends or the supervisor is asked to stop; meanwhile ends the processes the child started
/// whenever the child asks (a request of 8 bytes on `socket`, answered by the same 8 and how many, 4 bytes).
fn supervise_child(child: libc::pid_t, socket: libc::c_int) -> ! {
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
    let mut requests = libc::pollfd { fd: socket, events: libc::POLLIN, revents: 0 };
    while STOP.load(Ordering::SeqCst) == 0 {
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
        let mut request = [0u8; REQUEST];
        let n = unsafe { libc::recv(socket, request.as_mut_ptr().cast(), REQUEST, libc::MSG_DONTWAIT) };
        if n <= 0 {
            let again = std::io::Error::last_os_error().raw_os_error() == Some(libc::EAGAIN);
            if n == 0 || !again {
                // The child closed its end (it ran a program, or ended): wait for its end alone.
                requests.fd = -1;
            }
            continue;
        }
        // The child stays stopped while its processes are found and killed: no thread of it starts another
        // meanwhile, so the search ends.
        unsafe { libc::kill(child, libc::SIGSTOP) };
        if unsafe { libc::waitpid(child, &mut status, libc::WUNTRACED) } == child && !libc::WIFSTOPPED(status) {
            child_status = Some(status);
            break;
        }
        let killed = kill_living_descendants(Some(child)) as u32;
        unsafe { libc::kill(child, libc::SIGCONT) };
        let mut answer = [0u8; ANSWER];
        answer[..REQUEST].copy_from_slice(&request);
        answer[REQUEST..].copy_from_slice(&killed.to_le_bytes());
        // Never blocks, nor raises SIGPIPE should the child be gone.
        let flags = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;
        unsafe { libc::send(socket, answer.as_ptr().cast(), ANSWER, flags) };
    }
    let killed = kill_descendants();
    if killed > 0 {
        eprintln!("phase ended: {killed} process(es) it had started were still running, and were killed");
    }
    let signal = STOP.load(Ordering::SeqCst);
    match child_status {
        Some(status) if libc::WIFEXITED(status) => std::process::exit(libc::WEXITSTATUS(status)),
        Some(status) if libc::WIFSIGNALED(status) => die_by(libc::WTERMSIG(status)),
        _ if signal != 0 => die_by(signal),
        _ => std::process::exit(1),
    }
}

/// A request's size (its number) and its answer's (the number, then how many processes were killed).
const REQUEST: usize = 8;
const ANSWER: usize = REQUEST + 4;

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

/// In the supervised phase: ends every process it started, also one that left its process group or session,
/// and reaps them; returns how many were running. The supervisor kills them (it reads /proc, which the sandboxed
/// phase need not), then the phase, their subreaper, reaps them. One that a thread of the phase starts later (the
/// agent's code can leave one running) is ended with the phase.
pub fn end_phase_processes() -> Result<usize> {
    let socket = SUPERVISOR.load(Ordering::SeqCst);
    ensure!(socket >= 0, "ending the phase's processes: the phase was not started under a supervisor");
    let ended = ask_supervisor(socket)?;
    reap_the_dead();
    Ok(ended)
}

/// Has the supervisor kill every process the phase started; returns how many it killed.
fn ask_supervisor(socket: libc::c_int) -> Result<usize> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let request = NEXT.fetch_add(1, Ordering::SeqCst).to_le_bytes();
    let failed = |what: &str| anyhow::anyhow!("{what} the supervisor: {}", std::io::Error::last_os_error());
    let interrupted = || std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR);
    while unsafe { libc::send(socket, request.as_ptr().cast(), REQUEST, libc::MSG_NOSIGNAL) } != REQUEST as isize {
        if !interrupted() {
            return Err(failed("asking"));
        }
    }
    let mut answer = [0u8; ANSWER];
    loop {
        let n = unsafe { libc::recv(socket, answer.as_mut_ptr().cast(), ANSWER, 0) };
        if n == ANSWER as isize && answer[..REQUEST] == request {
            return Ok(u32::from_le_bytes(answer[REQUEST..].try_into()?) as usize);
        }
        if n == 0 || n < 0 && !interrupted() {
            return Err(failed("hearing from"));
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
