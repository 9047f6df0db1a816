//! A supervised phase, sandboxed so that it cannot see other processes in /proc, as the training runs: it ends
//! the processes it started (also one that left its session) through its supervisor when `train` returns, hands
//! its files over to be sealed, and reports how it ended; the supervisor writes the status file. The test process
//! forks (before any thread exists, hence no test harness) a process that runs each phase under a supervisor, and
//! reads the status file when it has ended: a failed assertion in the phase fails the phase's exit, and so the
//! test.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use autoresearch_harness::handover::{check_sealed, instant_of, Outcome, PhaseStatus, Sealed};
use autoresearch_harness::sandbox::{Policy, PROGRAM_READS};
use autoresearch_harness::supervisor::{self, HandOver, Supervision, Supervisor};

const FILE: &str = "model.safetensors";

fn running(pid: i32) -> bool {
    unsafe { libc::kill(pid, 0) == 0 }
}

fn unix_now() -> f64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs_f64()
}

/// Runs `phase` in a forked process under a supervisor whose hand-over of `FILE` in `folder` is due `due_in`
/// seconds from now; the status the supervisor wrote (None: none), once the phase has ended with exit code 0.
fn supervised(folder: &Path, due_in: f64, phase: fn(&Path, Supervisor)) -> Option<PhaseStatus> {
    let status = folder.join("status.json");
    let _ = std::fs::remove_file(&status);
    match unsafe { libc::fork() } {
        0 => {
            let hand_over =
                HandOver { folder: folder.into(), files: vec![FILE.into()], due: instant_of(unix_now() + due_in) };
            let supervisor =
                supervisor::supervise(Supervision { status: Some(status.clone()), hand_over: Some(hand_over) })
                    .expect("supervising");
            // /dev/null for the children's standard streams, as a training gets it; the folder to hand over in.
            let reads = PROGRAM_READS.iter().chain(&["/dev/null"]).map(Into::into).chain([folder.into()]).collect();
            let write = vec!["/dev/null".into(), folder.into()];
            let policy = Policy { only_read: Some(reads), system_reads: true, write, ..Policy::default() };
            println!("{}", policy.apply().expect("applying the sandbox"));
            phase(folder, supervisor);
            std::process::exit(0);
        }
        -1 => panic!("fork: {}", std::io::Error::last_os_error()),
        pid => {
            // A supervisor that hangs (on a phase it cannot see stopped, say) fails the test, not blocks it.
            let (mut exit, started) = (0, Instant::now());
            while unsafe { libc::waitpid(pid, &mut exit, libc::WNOHANG) } != pid {
                if started.elapsed() > Duration::from_secs(60) {
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                    panic!("the supervised phase hung");
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            assert!(libc::WIFEXITED(exit) && libc::WEXITSTATUS(exit) == 0, "the phase failed ({exit:#x})");
            std::fs::read(&status).ok().map(|bytes| serde_json::from_slice(&bytes).expect("the status parses"))
        }
    }
}

/// As the training does once `train` has returned: ends its processes, writes, hands over, reports; then the
/// agent's code left running (a thread, a `Drop`) rewrites the file.
fn training(folder: &Path, mut supervisor: Supervisor) {
    let listing = std::fs::read_dir("/proc").map(drop);
    assert_eq!(listing.unwrap_err().kind(), std::io::ErrorKind::PermissionDenied, "the phase cannot list /proc");
    assert!(std::fs::read("/proc/self/stat").is_ok(), "the phase reads its own /proc folder");

    // The shell starts a sleep in a session of its own, says its pid and exits: the sleep is an orphan.
    let out = Command::new("sh").args(["-c", "setsid sleep 120 >/dev/null 2>&1 & echo $!"]).output().unwrap();
    let pid: i32 = String::from_utf8(out.stdout).unwrap().trim().parse().unwrap();
    assert!(running(pid), "the orphan runs");
    let ended = supervisor.end_phase_processes().expect("ending the phase's processes");
    assert_eq!(ended, 1, "the orphan was the one process left");
    // Reaped (it was the phase's, as its subreaper): no zombie either.
    assert!(!running(pid), "the orphan is gone");
    assert_eq!(supervisor.end_phase_processes().unwrap(), 0, "nothing is left");

    // Threads that go on starting processes (for 20 s) do not keep the supervisor searching: the phase is
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
    let written = Sealed::write(folder, FILE, b"weights").unwrap();
    let asked = Instant::now();
    let ended = supervisor.hand_over(&[written]).unwrap();
    assert!(ended >= 1, "{ended}");
    assert!(asked.elapsed() < Duration::from_secs(5), "the search took {:?}", asked.elapsed());
    // A second hand-over seals nothing new: the first seal stands.
    let rewritten = Sealed::write(folder, FILE, b"better weights").unwrap();
    supervisor.hand_over(std::slice::from_ref(&rewritten)).unwrap();
    supervisor.report(Outcome::Success, "").unwrap();
}

fn late(folder: &Path, mut supervisor: Supervisor) {
    let written = Sealed::write(folder, FILE, b"weights").unwrap();
    supervisor.hand_over(&[written]).unwrap();
    supervisor.report(Outcome::Success, "").unwrap();
}

/// A process of the phase's keeps continuing it (SIGCONT), so that the supervisor may never see it stopped: the
/// hand-over goes on regardless (the time that took counts against its due: see the supervisor's unit tests).
fn continued(folder: &Path, mut supervisor: Supervisor) {
    use std::io::BufRead;
    let mut spinner = Command::new("sh")
        .args(["-c", "echo spinning; while kill -CONT $PPID; do :; done"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(spinner.stdout.take().unwrap()).read_line(&mut line).unwrap();
    assert_eq!(line, "spinning\n");
    let written = Sealed::write(folder, FILE, b"weights").unwrap();
    let asked = Instant::now();
    assert!(supervisor.hand_over(&[written]).unwrap() >= 1, "the process was killed");
    assert!(asked.elapsed() < Duration::from_secs(5), "the hand-over took {:?}", asked.elapsed());
    // Killed and reaped already (this process is its subreaper): nothing is left to wait for.
    let _ = spinner.wait();
    supervisor.report(Outcome::Success, "").unwrap();
}

/// The agent's code, running beside fixed code, replaces the file between its writing and its seal.
fn replaced_before_the_seal(folder: &Path, mut supervisor: Supervisor) {
    let written = Sealed::write(folder, FILE, b"weights").unwrap();
    std::fs::write(folder.join(FILE), b"better weights").unwrap();
    supervisor.hand_over(&[written]).unwrap();
    supervisor.report(Outcome::Success, "").unwrap();
}

fn never_hands_over(_: &Path, supervisor: Supervisor) {
    supervisor.report(Outcome::Success, "").unwrap();
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path();

    let status = supervised(folder, 60.0, training).expect("a status");
    assert_eq!(status.outcome, Outcome::Success, "{status:?}");
    assert_eq!(status.sealed.len(), 1);
    // The seal holds the first hand-over's bytes, the SHA-256 of "weights" (as `sha256sum` gives it): the file
    // rewritten since is caught.
    assert_eq!(status.sealed[0].sha256, "9a129038d9a00aed0cf6a7ea059ca50a813449061ab87848cf1a13eafdf33b2c");
    let changed = check_sealed(folder, &status.sealed, &[FILE]).unwrap_err();
    assert!(changed.to_string().contains("changed after it was handed over"), "{changed}");

    let status = supervised(folder, -1.0, late).expect("a status");
    assert_eq!(status.outcome, Outcome::OverTime, "{status:?}");
    assert!(status.message.contains("past its due"), "{}", status.message);

    // Sealed, in time or (where the supervisor never saw the phase stopped and waited its second) late.
    let status = supervised(folder, 0.5, continued).expect("a status");
    assert!(matches!(status.outcome, Outcome::Success | Outcome::OverTime), "{status:?}");

    let status = supervised(folder, 60.0, replaced_before_the_seal).expect("a status");
    assert_eq!(status.outcome, Outcome::Error, "{status:?}");
    assert!(status.message.contains("changed between its writing and its seal"), "{}", status.message);

    let status = supervised(folder, 60.0, never_hands_over).expect("a status");
    assert_eq!(status.outcome, Outcome::Error, "{status:?}");
    assert!(status.message.contains("without handing its model over"), "{}", status.message);

    println!("test supervised_phase ... ok");
}
