//! A supervised phase, sandboxed so that it cannot see other processes in /proc, ends the processes it started
//! (also one that left its session) through its supervisor, as the training does when `train` returns. The test
//! process forks (before any thread exists, hence no test harness): the supervisor exits as the phase did, so a
//! failed assertion in the phase fails the test.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use autoresearch_harness::sandbox::{Policy, PROGRAM_READS};
use autoresearch_harness::supervisor;

fn running(pid: i32) -> bool {
    unsafe { libc::kill(pid, 0) == 0 }
}

fn main() {
    supervisor::supervise().expect("supervising");
    // /dev/null for the children's standard streams, as a training gets it.
    let reads = PROGRAM_READS.iter().chain(&["/dev/null"]).map(Into::into).collect();
    let policy =
        Policy { only_read: Some(reads), system_reads: true, write: vec!["/dev/null".into()], ..Policy::default() };
    println!("{}", policy.apply().expect("applying the sandbox"));
    let listing = std::fs::read_dir("/proc").map(drop);
    assert_eq!(listing.unwrap_err().kind(), std::io::ErrorKind::PermissionDenied, "the phase cannot list /proc");
    assert!(std::fs::read("/proc/self/stat").is_ok(), "the phase reads its own /proc folder");

    // The shell starts a sleep in a session of its own, says its pid and exits: the sleep is an orphan.
    let out = Command::new("sh").args(["-c", "setsid sleep 120 >/dev/null 2>&1 & echo $!"]).output().unwrap();
    let pid: i32 = String::from_utf8(out.stdout).unwrap().trim().parse().unwrap();
    assert!(running(pid), "the orphan runs");
    let ended = supervisor::end_phase_processes().expect("ending the phase's processes");
    assert_eq!(ended, 1, "the orphan was the one process left");
    // Reaped (it was the phase's, as its subreaper): no zombie either.
    assert!(!running(pid), "the orphan is gone");
    assert_eq!(supervisor::end_phase_processes().unwrap(), 0, "nothing is left");

    // Threads that go on starting processes (for 20 s) does not keep the supervisor searching: the phase is
    // stopped meanwhile. What they start later ends with the phase.
    let spawning = Instant::now();
    for _ in 0..4 {
        std::thread::spawn(move || {
            while spawning.elapsed() < Duration::from_secs(20) {
                let _ = Command::new("sleep").arg("120").stdin(Stdio::null()).spawn();
            }
        });
    }
    std::thread::sleep(Duration::from_millis(200));
    let asked = Instant::now();
    let ended = supervisor::end_phase_processes().unwrap();
    assert!(ended >= 1, "{ended}");
    assert!(asked.elapsed() < Duration::from_secs(5), "the search took {:?}", asked.elapsed());
    println!("test supervised_phase ... ok");
    // The supervisor kills what the threads started since.
    std::process::exit(0);
}
