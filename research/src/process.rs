//! Child processes (the agent, the build, training) run in process groups of their own and are recorded in the
//! journal while they run, so that after a `kill -9` of the harness the next command can stop them before it
//! does anything else: an orphaned agent that wakes up later would edit the next experiment's file.

use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

// The roles and the /proc checks are the journal's vocabulary, which the dashboard reads too: they live with the
// journal's read-only view in autoresearch-report.
pub use autoresearch_report::journal::{alive, start_time, Role};

/// A process group started by the harness.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Recorded {
    pub role: Role,
    /// The group's id: the pid of its first process.
    pub pgid: i32,
    /// That process's start time (clock ticks after boot), to tell it from a later process given the same pid.
    pub start_time: u64,
}

/// Starts `cmd` as the leader of a new process group and records it. Everything but the agent also gets a
/// session of its own, so that it has no controlling terminal: the code it runs cannot open /dev/tty and type
/// into the user's terminal (TIOCSTI), which would run a command outside every sandbox.
pub fn spawn(cmd: &mut Command, role: Role) -> Result<(Child, Recorded)> {
    use std::os::unix::process::CommandExt;
    if role == Role::Agent {
        cmd.process_group(0);
    } else {
        // In the child between fork and exec: setsid is async-signal-safe; it makes a new group too.
        unsafe {
            cmd.pre_exec(|| match libc::setsid() {
                -1 => Err(std::io::Error::last_os_error()),
                _ => Ok(()),
            })
        };
    }
    let child = cmd.spawn()?;
    let pgid = child.id() as i32;
    // A process that already exited has no start time; 0 then marks a group that cannot be ours later.
    let recorded = Recorded { role, pgid, start_time: start_time(pgid).unwrap_or(0) };
    Ok((child, recorded))
}

impl Recorded {
    /// Kills the group if it is still ours. The leader may have exited while others of its group live on: the
    /// kernel does not hand out a pid that is still some group's id, so a group whose leader is gone is still
    /// ours; a leader with another start time is a stranger that got the pid, and is left alone.
    pub fn kill_if_ours(&self) {
        match start_time(self.pgid) {
            Some(t) if t != self.start_time => return,
            _ => {}
        }
        unsafe { libc::kill(-self.pgid, libc::SIGKILL) };
        // Give the kernel a moment to take the leader down, so that callers see it gone.
        let deadline = Instant::now() + Duration::from_secs(2);
        while alive(self.pgid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// The most a child's output adds to its log ([`CappedOutput`]): a training that prints without end would fill
/// the disk, and with it results.tsv's and the journal's next writes.
pub const LOG_LIMIT: u64 = 64 << 20;

/// A child's output (stdout and stderr together) appended to a log through a pipe, at most `limit` bytes of it;
/// what comes after is read and dropped (the child never blocks), and the log says how much.
pub struct CappedOutput {
    done: std::sync::mpsc::Receiver<()>,
}

impl CappedOutput {
    /// Points `cmd`'s output at a pipe whose other end a thread copies into `log`. The caller drops `cmd` once
    /// it has started (it holds the pipe's writing end until then).
    pub fn attach(cmd: &mut Command, log: &std::path::Path, limit: u64) -> Result<CappedOutput> {
        use std::io::{Read, Write};
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        let (mut reader, writer) = std::io::pipe().context("making a pipe for a child's output")?;
        cmd.stdout(writer.try_clone()?).stderr(writer);
        let (tx, done) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let (mut kept, mut dropped) = (0u64, 0u64);
            let mut buf = vec![0u8; 64 << 10];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let take = (n as u64).min(limit - kept) as usize;
                if take > 0 && file.write_all(&buf[..take]).is_err() {
                    break;
                }
                kept += take as u64;
                dropped += (n - take) as u64;
            }
            if dropped > 0 {
                let _ = writeln!(file, "\n[the output was cut at {limit} bytes: {dropped} more bytes not kept]");
            }
            let _ = tx.send(());
        });
        Ok(CappedOutput { done })
    }

    /// Waits until the output has ended (every process that held the pipe is gone), at most `patience`: a
    /// process that outlived the child and still holds it is not waited for.
    pub fn finish(self, patience: Duration) {
        let _ = self.done.recv_timeout(patience);
    }
}

/// How long a stopped child has to end what it started (the training binary's supervisor kills every
/// process of its phase, also those that left the group) before its group is killed.
pub const GRACE: Duration = Duration::from_secs(2);

/// Waits for `child`, polling `stop` every 50 ms. When `stop` says so: asks the child to stop (SIGTERM), gives
/// it [`GRACE`] to end its own processes, then kills its whole group; returns None.
pub fn wait_or_kill(child: &mut Child, mut stop: impl FnMut() -> bool) -> Result<Option<ExitStatus>> {
    loop {
        if let Some(status) = child.try_wait().context("waiting for a child process")? {
            return Ok(Some(status));
        }
        if stop() {
            let pid = child.id() as i32;
            unsafe { libc::kill(pid, libc::SIGTERM) };
            let deadline = Instant::now() + GRACE;
            while child.try_wait()?.is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            unsafe { libc::kill(-pid, libc::SIGKILL) };
            child.wait()?;
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The other processes that have `path` open, as pid and command line, as far as /proc shows this user: for the
/// error that refuses a lock, those that may hold it.
pub fn holders(path: &std::path::Path) -> Vec<(i32, String)> {
    use std::os::unix::fs::MetadataExt;
    let Ok(file) = std::fs::metadata(path) else { return Vec::new() };
    let Ok(procs) = std::fs::read_dir("/proc") else { return Vec::new() };
    let me = std::process::id() as i32;
    let mut found = Vec::new();
    for entry in procs.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else { continue };
        // stat follows the descriptor's link to what it has open (it opens nothing itself).
        let has_it = |fd: std::fs::DirEntry| {
            std::fs::metadata(fd.path()).is_ok_and(|m| m.dev() == file.dev() && m.ino() == file.ino())
        };
        if pid != me && fds.flatten().any(has_it) {
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            let words: Vec<_> =
                cmdline.split(|&b| b == 0).filter(|w| !w.is_empty()).map(String::from_utf8_lossy).collect();
            found.push((pid, words.join(" ")));
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_group_is_killed_only_while_it_is_ours() {
        let (mut child, recorded) = spawn(Command::new("sleep").arg("30"), Role::Agent).unwrap();
        assert!(recorded.start_time > 0);
        assert_eq!(start_time(recorded.pgid), Some(recorded.start_time));
        // The same pid with another start time: a stranger, left alone.
        Recorded { start_time: recorded.start_time + 1, ..recorded.clone() }.kill_if_ours();
        assert!(child.try_wait().unwrap().is_none(), "a process that is not ours was killed");
        recorded.kill_if_ours();
        assert!(child.wait().unwrap().code().is_none(), "killed by a signal");
    }

    /// The session a process is in, from /proc.
    fn session(pid: i32) -> i32 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let rest = stat.rsplit_once(')').unwrap().1;
        rest.split_whitespace().nth(3).unwrap().parse().unwrap()
    }

    #[test]
    fn what_is_not_the_agent_has_a_session_and_no_terminal_of_its_own() {
        let (mut child, recorded) = spawn(Command::new("sleep").arg("30"), Role::Training).unwrap();
        assert_eq!(session(recorded.pgid), recorded.pgid, "the leader of its own session");
        assert_ne!(session(recorded.pgid), session(std::process::id() as i32));
        recorded.kill_if_ours();
        child.wait().unwrap();
        let out =
            spawn(Command::new("sh").args(["-c", ": > /dev/tty"]).stderr(std::process::Stdio::piped()), Role::Check)
                .unwrap()
                .0
                .wait_with_output()
                .unwrap();
        assert!(!out.status.success(), "no controlling terminal to open");
    }

    #[test]
    fn a_child_s_output_is_cut_at_the_limit_and_the_log_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        std::fs::write(&log, "before\n").unwrap();
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "head -c 3000000 /dev/zero; echo done >&2"]);
        let output = CappedOutput::attach(&mut cmd, &log, 1 << 20).unwrap();
        let mut child = cmd.spawn().unwrap();
        drop(cmd);
        assert!(child.wait().unwrap().success(), "the child is never blocked by the cut");
        output.finish(Duration::from_secs(10));
        let text = std::fs::read(&log).unwrap();
        assert!(text.starts_with(b"before\n"), "appended");
        let marker =
            format!("[the output was cut at {} bytes: {} more bytes not kept]\n", 1 << 20, 3_000_005 - (1 << 20));
        assert!(text.ends_with(marker.as_bytes()), "{:?}", String::from_utf8_lossy(&text[text.len() - 100..]));
        assert_eq!(text.len(), 7 + (1 << 20) + 1 + marker.len());
    }

    #[test]
    fn a_stop_request_kills_the_whole_group() {
        let (mut child, recorded) =
            spawn(Command::new("sh").args(["-c", "sleep 30 & sleep 30"]), Role::Training).unwrap();
        let mut calls = 0;
        assert!(wait_or_kill(&mut child, || {
            calls += 1;
            calls > 2
        })
        .unwrap()
        .is_none());
        let members = || {
            std::fs::read_dir("/proc")
                .unwrap()
                .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
                .filter(|&pid| alive(pid) && unsafe { libc::getpgid(pid) } == recorded.pgid)
                .count()
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while members() > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(members(), 0, "every process of the group is gone");
    }
}
