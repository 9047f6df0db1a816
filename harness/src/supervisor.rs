//! Every process a phase starts is gone when the phase ends. Before anything else (and before any thread
//! exists), the training binary (or `autoresearch sandboxed`, which runs a project's commands) forks: the child runs the phase, sandboxed; the parent stays outside the
//! sandbox as a child subreaper, so that every process the phase starts, also one that left its process group or
//! session (`setsid`, a double fork), stays its descendant. When the child ends, or the harness asks it to stop
//! (SIGTERM, or SIGINT from a terminal), the parent kills every descendant, reaps them, and exits as the child
//! did. The sandbox keeps the phase from signalling the parent (Landlock's signal scope); the child dies with
//! the parent (parent-death signal), should the parent be killed outright.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI32, Ordering};

use anyhow::{bail, Result};

/// The signal that asked the supervisor to stop (0: none yet).
static STOP: AtomicI32 = AtomicI32::new(0);

extern "C" fn ask_to_stop(signal: libc::c_int) {
    STOP.store(signal, Ordering::SeqCst);
}

fn become_subreaper() -> Result<()> {
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        bail!("becoming a child subreaper: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// Forks. Returns in the child, which runs the phase; the parent supervises it and does not return. Both are
/// subreapers (the setting is not inherited): the child adopts the orphans of the agent's processes while it
/// lives, so that fixed code in it can end them when the agent's code returns ([`kill_descendants`]); the
/// parent adopts whatever is left should the child die.
pub fn supervise() -> Result<()> {
    become_subreaper()?;
    let parent = unsafe { libc::getpid() };
    match unsafe { libc::fork() } {
        -1 => bail!("forking the phase: {}", std::io::Error::last_os_error()),
        0 => {
            unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
            // The parent may have died before the line above.
            if unsafe { libc::getppid() } != parent {
                std::process::exit(1);
            }
            become_subreaper()
        }
        child => supervise_child(child),
    }
}

fn supervise_child(child: libc::pid_t) -> ! {
    for signal in [libc::SIGTERM, libc::SIGINT] {
        // No SA_RESTART: a signal interrupts waitpid, so that the stop request is seen at once.
        let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
        action.sa_sigaction = ask_to_stop as extern "C" fn(libc::c_int) as libc::sighandler_t;
        unsafe { libc::sigaction(signal, &action, std::ptr::null_mut()) };
    }
    let mut child_status = None;
    while child_status.is_none() && STOP.load(Ordering::SeqCst) == 0 {
        let mut status = 0;
        let pid = unsafe { libc::waitpid(-1, &mut status, 0) };
        if pid == child {
            child_status = Some(status);
        } else if pid == -1 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            break;
        }
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

/// Ends the supervisor as the child ended: by the same signal, with its default action.
fn die_by(signal: libc::c_int) -> ! {
    unsafe {
        libc::signal(signal, libc::SIG_DFL);
        libc::kill(libc::getpid(), signal);
    }
    std::process::exit(128 + signal)
}

/// Kills every descendant of this process (a subreaper: the orphans of its descendants are its own) and reaps
/// them; returns how many were killed. Repeats until none is left, so that one forked meanwhile is caught too.
pub fn kill_descendants() -> usize {
    let me = unsafe { libc::getpid() };
    let mut killed = std::collections::HashSet::new();
    loop {
        let descendants = descendants_of(me);
        let fresh: Vec<i32> = descendants.iter().copied().filter(|p| !killed.contains(p)).collect();
        for &pid in &descendants {
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        killed.extend(fresh.iter().copied());
        // Reap what has died; the children of killed processes come to us as they die.
        loop {
            let mut status = 0;
            if unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) } <= 0 {
                break;
            }
        }
        if descendants.is_empty() {
            let mut status = 0;
            // Block until the last ones are reaped; ECHILD when none is left.
            while unsafe { libc::waitpid(-1, &mut status, 0) } > 0 {}
            return killed.len();
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
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
