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

/// Starts `cmd` as the leader of a new process group and records it.
pub fn spawn(cmd: &mut Command, role: Role) -> Result<(Child, Recorded)> {
    use std::os::unix::process::CommandExt;
    let child = cmd.process_group(0).spawn()?;
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
