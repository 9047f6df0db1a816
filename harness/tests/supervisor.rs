//! The supervisor's clean-up: a process that left its session (setsid), orphaned, comes to the subreaper and is
//! killed with the rest. (A test binary of its own: the clean-up reaps every child of the process.)

use std::process::Command;

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').map(|(_, rest)| rest.trim_start().to_string()))
        .is_some_and(|rest| !rest.starts_with('Z'))
}

#[test]
fn a_process_that_left_its_session_is_killed_with_the_rest() {
    assert_eq!(unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) }, 0);
    // The shell starts a sleep in a session of its own, says its pid and exits: the sleep is an orphan.
    let out = Command::new("sh").args(["-c", "setsid sleep 300 >/dev/null 2>&1 & echo $!"]).output().unwrap();
    let pid: i32 = String::from_utf8(out.stdout).unwrap().trim().parse().unwrap();
    assert!(alive(pid), "the orphan runs");
    let killed = autoresearch_harness::supervisor::kill_descendants();
    assert!(killed >= 1, "{killed}");
    assert!(!alive(pid), "the orphan is gone");
    assert_eq!(autoresearch_harness::supervisor::kill_descendants(), 0, "nothing is left");
}
