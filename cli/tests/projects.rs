//! Projects of the user's own (`autoresearch.toml`) end to end, with the real `autoresearch` binary and the
//! examples in `examples/`: each copied into a repository of its own, driven by hand (`run`) and by a scripted
//! agent (`loop`, one worker and two); then what a project can get wrong (its metric, its checks, its commands,
//! its project file) and a `kill -9` mid-training; last, the frontier search (`--search frontier`) on a project
//! whose score its training script states. python3's standard library is all the examples need.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use autoresearch_report::metric::Goal;
use autoresearch_report::results::{self, Row, Status};
use autoresearch_research::process::{alive, Role};
use autoresearch_research::state::{InProgress, Journal, State};
use autoresearch_research::RunMeta;

#[path = "support/cluster.rs"]
mod cluster;
use cluster::Cluster;

const MAIN_REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

struct Project {
    repo: PathBuf,
    agent_state: PathBuf,
    /// More environment for every command (a Slurm cluster's SLURM_CONF).
    env: Vec<(String, String)>,
}

fn git(repo: &Path, args: &[&str]) -> String {
    let out = Command::new("git").current_dir(repo).args(args).output().unwrap();
    assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

impl Project {
    /// A repository of its own in the test's scratch folder holding `files`, committed.
    fn new(name: &str, files: &[(String, Vec<u8>)]) -> Project {
        let scratch = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("projects");
        let repo = scratch.join(name);
        let agent_state = scratch.join(format!("{name}-agent"));
        for dir in [&repo, &agent_state] {
            let _ = std::fs::remove_dir_all(dir);
            std::fs::create_dir_all(dir).unwrap();
        }
        for (path, content) in files {
            let to = repo.join(path);
            std::fs::create_dir_all(to.parent().unwrap()).unwrap();
            std::fs::write(to, content).unwrap();
        }
        git(&repo, &["init", "--quiet", "--initial-branch=main"]);
        git(&repo, &["add", "-A"]);
        git(&repo, &["-c", "user.name=test", "-c", "user.email=test@localhost", "commit", "--quiet", "-m", "start"]);
        Project { repo, agent_state, env: Vec::new() }
    }

    /// The example `examples/<example>` as the repository of a project (its tracked files).
    fn example(name: &str, example: &str) -> Project {
        let folder = format!("examples/{example}/");
        let files: Vec<(String, Vec<u8>)> = git(Path::new(MAIN_REPO), &["ls-files", &folder])
            .lines()
            .map(|f| (f[folder.len()..].to_string(), std::fs::read(Path::new(MAIN_REPO).join(f)).unwrap()))
            .collect();
        assert!(files.iter().any(|(f, _)| f == "autoresearch.toml"), "{example} has a project file");
        Project::new(name, &files)
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_autoresearch"));
        cmd.args(args).current_dir(&self.repo).env("AGENT_STATE", &self.agent_state).stdin(Stdio::null());
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    fn run(&self, args: &[&str]) -> Output {
        let out = self.cmd(args).output().unwrap();
        eprintln!(
            "$ autoresearch {}\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Runs a command that must succeed: its stdout and stderr.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "autoresearch {args:?} failed: {text}");
        text
    }

    /// Runs a command that must fail: its stderr.
    fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(!out.status.success(), "autoresearch {args:?} succeeded");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// Replaces `from` by `to` in `file`; the text must be there (an edit that did nothing would test nothing).
    fn edit(&self, file: &str, from: &str, to: &str) {
        let path = self.repo.join(file);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(from), "{file} has no {from:?}: it changed shape, update this test");
        std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
    }

    fn write(&self, file: &str, text: &str) {
        std::fs::write(self.repo.join(file), text).unwrap();
    }

    /// The scripted agent (`cli/tests/data/project-agent.sh`) with worker `k`'s steps (0: a loop of one):
    /// (description, shell command that edits the tree).
    fn agent(&self, k: usize, steps: &[(&str, &str)]) -> String {
        let suffix = if k == 0 { String::new() } else { format!("-{k}") };
        let lines: String = steps.iter().map(|(d, c)| format!("{d}\t{c}\n")).collect();
        std::fs::write(self.agent_state.join(format!("steps{suffix}")), lines).unwrap();
        let _ = std::fs::remove_file(self.agent_state.join(format!("count{suffix}")));
        format!("bash {}/tests/data/project-agent.sh", env!("CARGO_MANIFEST_DIR"))
    }

    fn rows(&self) -> Vec<Row> {
        let file = results::read(&self.repo.join("results.tsv")).unwrap();
        assert!(file.bad.is_empty(), "malformed rows: {:?}", file.bad);
        file.rows
    }

    /// The experiments' rows (not the reruns), in order.
    fn experiments(&self) -> Vec<Row> {
        let rows = self.rows();
        rows.into_iter().filter(|r| r.status != Status::Rerun).collect()
    }

    fn last(&self) -> Row {
        self.experiments().pop().expect("a row")
    }

    fn state(&self) -> State {
        State::load(&self.repo.join(".autoresearch")).unwrap()
    }

    fn meta(&self, run: u64) -> RunMeta {
        let path = self.repo.join(format!(".autoresearch/runs/{run}/meta.json"));
        serde_json::from_slice(&std::fs::read(&path).unwrap_or_else(|_| panic!("no {}", path.display()))).unwrap()
    }

    fn run_file(&self, run: u64, file: &str) -> String {
        std::fs::read_to_string(self.repo.join(format!(".autoresearch/runs/{run}/{file}"))).unwrap_or_default()
    }

    /// A clean tree at the best commit, nothing under way.
    fn assert_consistent(&self) {
        assert_eq!(git(&self.repo, &["status", "--porcelain"]), "", "a clean working tree");
        let head = git(&self.repo, &["rev-parse", "HEAD"]).trim().to_string();
        assert_eq!(head, self.state().best.unwrap().commit, "HEAD is the best commit");
        assert!(Journal::load(&self.repo.join(".autoresearch")).unwrap().in_progress.is_none());
    }
}

fn reason(row: &Row) -> &str {
    &row.extra.as_ref().unwrap().reason
}

fn run_of(row: &Row) -> u64 {
    row.extra.as_ref().unwrap().run
}

const GOOD_LR: (&str, &str) = ("LEARNING_RATE = 0.2 ", "LEARNING_RATE = 2.0 ");

/// The small Python training project by hand: a baseline (its noise measured on 3 seeds), a gain kept, a loss
/// discarded, a setup that fails, an edit outside `editable` refused, a training that reads the held-out
/// data; then `export`, and a loop of two workers with a scripted agent.
#[test]
fn a_python_training_project_by_hand_and_by_a_loop_of_two() {
    let p = Project::example("python-train", "python-train");
    let exists = p.fails(&["init", "--project"]);
    assert!(exists.contains("autoresearch.toml exists already"), "{exists}");
    let init = p.ok(&["init", "p1"]);
    assert!(init.contains("val_loss (lower is better)"), "{init}");
    assert_eq!(p.state().settings.metric.name, "val_loss");

    p.ok(&["run", "-m", "baseline"]);
    assert_eq!(p.rows()[0].status, Status::Keep);
    // The evaluation is fixed code, reads the held-out data and prints the metric; the log says so.
    let log = p.run_file(1, "run.log");
    assert!(log.contains("=== evaluation: python3 evaluate.py") && log.contains("val_loss:"), "{log}");
    assert!(log.contains("data/val.txt") && log.contains("unreadable"), "the training's sandbox: {log}");

    p.edit("train.py", GOOD_LR.0, GOOD_LR.1);
    p.ok(&["run", "-m", "learning rate 2.0"]);
    // Before the first comparison, the margin rule's noise is measured on the baseline.
    let rows = p.rows();
    assert!(rows.iter().any(|r| reason(r).contains("the baseline's spread for `margin`")), "{rows:?}");
    let baseline = rows.iter().rev().find(|r| r.status == Status::Keep && r.description.contains("baseline"));
    let baseline = baseline.unwrap().clone();
    let kept = p.last();
    assert_eq!(kept.status, Status::Keep, "{kept:?}");
    assert!(kept.val_bpb < baseline.val_bpb - 0.3, "{kept:?}");
    assert!(p.run_file(run_of(&kept), "edited/train.py").contains(GOOD_LR.1), "the run's copy of the edited file");
    p.assert_consistent();

    p.edit("train.py", "STEPS = 300 ", "STEPS = 3 ");
    p.ok(&["run", "-m", "three steps"]);
    assert_eq!(p.last().status, Status::Discard, "{:?}", p.last());
    p.assert_consistent();

    p.edit("train.py", "STEPS = 300 ", "STEPS = = 300 ");
    p.ok(&["run", "-m", "a typo"]);
    let typo = p.last();
    assert_eq!((typo.status, reason(&typo)), (Status::Crash, "setup failed"), "{typo:?}");
    assert!(p.run_file(run_of(&typo), "build.log").contains("SyntaxError"));

    p.edit("evaluate.py", "import", "import sys\nimport");
    p.edit("train.py", "STEPS = 300 ", "STEPS = 301 ");
    let refused = p.fails(&["run", "-m", "touch the evaluation"]);
    assert!(refused.contains("only `train.py` may change") && refused.contains("evaluate.py"), "{refused}");
    git(&p.repo, &["checkout", "--", "evaluate.py"]);

    p.edit("train.py", "with open(\"data/train.txt\") as f:", "with open(\"data/val.txt\") as f:");
    p.ok(&["run", "-m", "train on the validation text"]);
    let peek = p.last();
    assert_eq!((peek.status, reason(&peek)), (Status::Crash, "the training failed: exit code 1"), "{peek:?}");
    assert!(p.run_file(run_of(&peek), "run.log").contains("Permission denied"));
    p.assert_consistent();
    // Nor what it was made from (the generator, with its seed, would make it again), nor git's copy of it; nor can
    // it leave state for the next training in the user's keyring.
    let keyring = format!(
        "import ctypes\nif ctypes.CDLL(None, use_errno=True).syscall({}, b\"user\", b\"state\", b\"0.125\", 5, -4) == -1: \
         raise OSError(ctypes.get_errno(), \"add_key\")",
        libc::SYS_add_key
    );
    for (attack, read) in [
        ("run the generator", "open(\"data/generate.py\").read()"),
        ("read git's copy", "__import__(\"subprocess\").check_output([\"git\", \"show\", \"HEAD:data/val.txt\"])"),
        ("keep state in the user's keyring", keyring.as_str()),
    ] {
        p.edit("train.py", "started = time.monotonic()", &format!("started = time.monotonic()\n{read}"));
        p.ok(&["run", "-m", attack]);
        let row = p.last();
        assert_eq!((row.status, reason(&row)), (Status::Crash, "the training failed: exit code 1"), "{row:?}");
        if read == keyring {
            let log = p.run_file(run_of(&row), "run.log");
            assert!(log.contains("PermissionError: [Errno 13] add_key"), "refused by the sandbox: {log}");
        }
        p.assert_consistent();
    }

    let export = p.ok(&["export"]);
    assert!(export.contains("1 patches"), "{export}");
    let dir = p.repo.join(".autoresearch/export/p1");
    let patch = std::fs::read_dir(&dir).unwrap().next().unwrap().unwrap().path();
    let text = std::fs::read_to_string(patch).unwrap();
    assert!(text.contains("learning rate 2.0") && text.contains("val_loss") && text.contains("lower is better"));

    // A loop of two workers, each in its worktree, from the best: one raises the context, one trains longer.
    let agent = p.agent(1, &[("two characters of context", "sed -i 's/^CONTEXT = 1 /CONTEXT = 2 /' train.py")]);
    p.agent(2, &[("twice the steps", "sed -i 's/^STEPS = 300 /STEPS = 600 /' train.py")]);
    let before = p.experiments().len();
    p.ok(&["loop", "--agent", &agent, "--workers", "2", "--max-experiments", "2"]);
    let rows = p.experiments();
    assert_eq!(rows.len(), before + 2, "{rows:?}");
    let workers: Vec<Option<usize>> = rows[before..].iter().map(|r| r.extra.as_ref().unwrap().worker).collect();
    assert!(workers.contains(&Some(1)) && workers.contains(&Some(2)), "{workers:?}");
    assert!(rows[before..].iter().any(|r| r.status == Status::Keep), "a longer context is a clear gain: {rows:?}");
    let prompt = std::fs::read_to_string(p.agent_state.join("prompt-1-1.md")).unwrap();
    for text in ["character-level", "Edit only `train.py`", "The metric is `val_loss` (lower is better)"] {
        assert!(prompt.contains(text), "the prompt has {text:?}: {prompt}");
    }
    p.assert_consistent();
}

/// A benchmark whose time is the metric, with a correctness check before every keep (a faster module that
/// counts wrong is not kept); an accuracy, where higher is better; the Python original's layout, whose
/// training prints its own summary block.
#[test]
fn a_checked_benchmark_an_accuracy_and_the_originals_layout() {
    let perf = Project::example("perf", "perf");
    // `lower`: any gain goes on to the check (the margin would need the benchmark's noise first).
    perf.ok(&["init", "perf", "--rule", "lower"]);
    perf.ok(&["run", "-m", "baseline"]);
    let baseline = perf.last().val_bpb;
    perf.edit("fast.py", "return insertion_sort(list(counts.items()))", "return list(counts.items())");
    perf.ok(&["run", "-m", "skip the sort"]);
    let wrong = perf.last();
    assert_eq!(wrong.status, Status::Crash, "{wrong:?}");
    assert!(reason(&wrong).starts_with("check `correctness` failed: exit code 1: not kept (seconds "), "{wrong:?}");
    assert!(perf.run_file(run_of(&wrong), "checks.log").contains("FAILED"));
    perf.edit(
        "fast.py",
        "return insertion_sort(list(counts.items()))",
        "return sorted(counts.items(), key=by_count_then_word)",
    );
    perf.ok(&["run", "-m", "sorted() instead of an insertion sort"]);
    let fast = perf.last();
    assert_eq!(fast.status, Status::Keep, "{fast:?}");
    assert!(fast.val_bpb < baseline / 2.0, "{fast:?} against {baseline}");
    perf.assert_consistent();

    let acc = Project::example("accuracy", "accuracy");
    acc.ok(&["init", "acc"]);
    assert_eq!(acc.state().settings.metric.goal, Goal::Higher);
    acc.ok(&["run", "-m", "baseline"]);
    let baseline = acc.state().best.unwrap().val_bpb;
    acc.edit("train.py", "LEARNING_RATE = 0.0003 ", "LEARNING_RATE = 0.00001 ");
    acc.ok(&["run", "-m", "a tiny learning rate"]);
    let worse = acc.last();
    assert!(worse.status == Status::Discard && worse.val_bpb < baseline, "{worse:?}");
    acc.edit("train.py", "STANDARDIZE = False ", "STANDARDIZE = True ");
    acc.ok(&["run", "-m", "standardize the features", "--rule", "confirm 1"]);
    let better = acc.last();
    assert!(better.status == Status::Keep && better.val_bpb > baseline + 0.1, "{better:?}");
    assert!(reason(&better).contains("over 2 seeds (42, 43)"), "confirmed with a second seed: {better:?}");
    assert!(reason(&better).contains("gain 0."), "a rise is a positive gain: {better:?}");
    acc.assert_consistent();

    let original = Project::example("original", "original");
    original.ok(&["init", "orig"]);
    original.ok(&["run", "-m", "baseline"]);
    original.edit("train.py", "MATRIX_LR = 0.01 ", "MATRIX_LR = 0.04 ");
    original.ok(&["run", "-m", "matrix lr 0.04"]);
    assert_eq!(original.last().status, Status::Keep, "{:?}", original.last());
    let log = original.run_file(run_of(&original.last()), "run.log");
    assert!(log.contains("training_seconds:") && !log.contains("=== evaluation"), "read from the summary: {log}");
    original.assert_consistent();
}

/// A project whose editable files are several (`lib/*.sh`), under the default `margin`: the agent adds a file
/// (kept), removes one (discarded: it comes back), renames one (a change, though the content is the same); the
/// baseline's re-measure puts the change aside meanwhile and back after, an executable file staying executable.
#[test]
fn a_project_of_several_editable_files() {
    let run_sh = "score=10\nfor f in lib/*.sh; do . \"./$f\"; done\n\
                  awk -v s=\"$score\" -v seed=\"$AUTORESEARCH_SEED\" 'BEGIN { print \"score: \" s + seed / 10000 }'\n";
    let p = Project::new(
        "several",
        &[
            ("autoresearch.toml".into(), SEVERAL_PROJECT.as_bytes().to_vec()),
            ("run.sh".into(), run_sh.as_bytes().to_vec()),
            ("lib/a.sh".into(), b"score=$((score - 1))\n".to_vec()),
            ("lib/b.sh".into(), b"score=$((score - 2))\n".to_vec()),
            ("program.md".into(), b"Lower the score.\n".to_vec()),
        ],
    );
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p.repo.join("lib/a.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    git(&p.repo, &["-c", "user.name=test", "-c", "user.email=test@localhost", "commit", "--quiet", "-am", "exec"]);
    p.ok(&["init", "several"]);
    let agent = p.agent(
        0,
        &[
            ("a third file", "echo 'score=$((score - 3))' > lib/c.sh"),
            ("drop b", "rm lib/b.sh"),
            ("rename a", "git mv lib/a.sh lib/d.sh"),
        ],
    );
    // The loop measures the baseline itself first, then calls the agent.
    p.ok(&["loop", "--agent", &agent, "--max-experiments", "4"]);
    let rows = p.experiments();
    let status = |d: &str| rows.iter().find(|r| r.description == d).map(|r| r.status);
    assert_eq!(status("baseline"), Some(Status::Keep), "{rows:?}");
    assert_eq!(status("a third file"), Some(Status::Keep), "{rows:?}");
    assert_eq!(status("drop b"), Some(Status::Discard), "{rows:?}");
    assert_eq!(status("rename a"), Some(Status::Discard), "a renamed file is run, not reused: {rows:?}");
    let files = git(&p.repo, &["ls-files", "-s", "lib"]);
    assert!(files.contains("100755") && files.contains("lib/a.sh"), "{files}");
    assert!(files.contains("lib/b.sh") && files.contains("lib/c.sh") && !files.contains("lib/d.sh"), "{files}");
    let kept = rows.iter().find(|r| r.description == "a third file").unwrap();
    assert!(p.run_file(run_of(kept), "edited/lib/c.sh").contains("score - 3"));
    p.assert_consistent();
}

const SEVERAL_PROJECT: &str = r#"
editable = ["lib/*.sh"]
[train]
command = "sh run.sh"
timeout = 30
[metric]
name = "score"
goal = "lower"
"#;

const SCORE_PROJECT: &str = r#"
editable = ["train.sh"]
[train]
command = "sh train.sh"
timeout = 5
[metric]
name = "score"
goal = "lower"
[[check]]
name = "quick"
command = "sh check.sh"
timeout = 2
"#;

/// What a project's commands can get wrong, each a crash row with its reason and nothing lost; a project
/// file that is wrong, an error naming the file and the field.
#[test]
fn bad_metrics_checks_and_commands_are_crashes_with_their_reason() {
    let files = |train: &str| {
        vec![
            ("autoresearch.toml".to_string(), SCORE_PROJECT.as_bytes().to_vec()),
            ("train.sh".to_string(), train.as_bytes().to_vec()),
            // The check hangs where the training script asks it to.
            ("check.sh".to_string(), b"grep -q HANG train.sh && sleep 60\nexit 0\n".to_vec()),
            ("program.md".to_string(), b"Lower the score.\n".to_vec()),
        ]
    };
    let p = Project::new("bad", &files("echo score: 1.0\n"));
    p.ok(&["init", "bad", "--rule", "lower"]);
    p.ok(&["run", "-m", "baseline"]);
    // A project that ignores its seed has no measurable noise: `noise` refuses it.
    let blind = p.fails(&["noise", "--runs", "2"]);
    assert!(blind.contains("metric is 1.000000 with every seed") && blind.contains("AUTORESEARCH_SEED"), "{blind}");
    let cases: [(&str, &str); 5] = [
        ("echo nothing\n", "the metric `score` never appeared in the output of the training (`sh train.sh`)"),
        ("echo score: 0.5; echo METRIC score=0.4\n", "the metric `score` appeared 2 times"),
        ("echo score: nan\n", "the metric `score` is NaN"),
        ("sleep 30\n", "over time: the training was stopped at its limit of 5 s"),
        ("# HANG\necho score: 0.5\n", "check `quick` did not finish"),
    ];
    for (script, why) in cases {
        p.write("train.sh", script);
        p.ok(&["run", "-m", script.lines().next().unwrap()]);
        let row = p.last();
        assert_eq!(row.status, Status::Crash, "{script}: {row:?}");
        assert!(reason(&row).contains(why), "{script}: {:?} lacks {why:?}", reason(&row));
        p.assert_consistent();
    }
    // A training that leaves a process behind, one that left its session: gone when the training ends.
    p.write("train.sh", "setsid sleep 4321 >/dev/null 2>&1 &\necho score: 0.5\n");
    p.ok(&["run", "-m", "leave a sleeper"]);
    assert_eq!(p.last().status, Status::Keep, "{:?}", p.last());
    assert!(p.run_file(run_of(&p.last()), "run.log").contains("were still running, and were killed"));
    let sleepers = Command::new("pgrep").args(["-f", "sleep 4321"]).output().unwrap();
    assert!(sleepers.stdout.is_empty(), "the sleeper is gone");
    // The network is closed: a training cannot reach a server on this machine.
    let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = server.local_addr().unwrap().port();
    p.write(
        "train.sh",
        &format!(
            "python3 -c \"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=2)\" && echo \
             score: 0.1 || echo score: 0.9\n"
        ),
    );
    p.ok(&["run", "-m", "phone home"]);
    assert_eq!(p.last().val_bpb, 0.9, "the connection failed: {:?}", p.last());
    let log = p.run_file(run_of(&p.last()), "run.log");
    assert!(log.contains("PermissionError") || log.contains("Operation not permitted"), "refused, not lost: {log}");
    // Git's folder holds every version of every file: unreadable.
    p.write("train.sh", "cat .git/HEAD >/dev/null && echo score: 0.1 || echo score: 0.8\n");
    p.ok(&["run", "-m", "read git"]);
    assert_eq!(p.last().val_bpb, 0.8, "{:?}", p.last());

    // `init --project` in a folder that is no git repository; then in one: the files it writes, and a session
    // refused until they are committed.
    // (In the system's temporary folder: the test's scratch folder may lie inside this repository.)
    let bare = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_autoresearch")).args(["init", "--project"]).current_dir(&bare).output();
    let stderr = String::from_utf8_lossy(&out.as_ref().unwrap().stderr).into_owned();
    assert!(stderr.contains("is not in a git repository"), "{stderr}");
    let fresh = Project::new("fresh", &[("train.py".into(), b"print('val_loss: 1.0')\n".to_vec())]);
    let wrote = fresh.ok(&["init", "--project"]);
    assert!(wrote.contains("autoresearch.toml") && fresh.repo.join("program.md").is_file(), "{wrote}");
    fresh.write("evaluate.py", "print('val_loss: 1.0')\n");
    let uncommitted = fresh.fails(&["init", "t"]);
    assert!(uncommitted.contains("autoresearch.toml is not committed"), "{uncommitted}");

    // Project files that are wrong: named, with the field.
    let wrong = [
        (SCORE_PROJECT.replace("timeout = 5", "timeout = 5\nepochs = 3"), "unknown field `epochs`"),
        (SCORE_PROJECT.replace("[\"train.sh\"]", "[\"src/*.py\"]"), "`editable`: \"src/*.py\" matches no file"),
        (SCORE_PROJECT.replace("goal = \"lower\"", "goal = \"down\""), "unknown variant `down`"),
        (SCORE_PROJECT.replace("name = \"score\"\n", ""), "missing field `name`"),
    ];
    for (k, (text, why)) in wrong.iter().enumerate() {
        let mut bad = files("echo score: 1.0\n");
        bad[0].1 = text.as_bytes().to_vec();
        let q = Project::new(&format!("bad-file-{k}"), &bad);
        let error = q.fails(&["init", "t"]);
        assert!(error.contains("autoresearch.toml") && error.contains(why), "{error}");
    }
}

/// `kill -9` of `run` while a project's training runs, and while its check runs: each time the next command
/// stops what it left (the whole process group) and puts the tree back, the run recorded as interrupted.
#[test]
fn kill_9_during_a_projects_training_or_check_is_put_right() {
    let p = Project::new(
        "kill",
        &[
            (
                "autoresearch.toml".into(),
                SCORE_PROJECT
                    .replace("timeout = 5", "timeout = 60")
                    .replace("timeout = 2", "timeout = 60")
                    .into_bytes(),
            ),
            ("train.sh".into(), b"echo score: 1.0\n".to_vec()),
            // The check hangs where the training script asks it to.
            ("check.sh".into(), b"grep -q SLOWCHECK train.sh && sleep 300\nexit 0\n".to_vec()),
            ("program.md".into(), b"Lower the score.\n".to_vec()),
        ],
    );
    p.ok(&["init", "k", "--rule", "lower"]);
    p.ok(&["run", "-m", "baseline"]);
    let cases = [
        (Role::Training, "sleep 300\necho score: 0.5\n", "training"),
        (Role::Check, "# SLOWCHECK\necho score: 0.5\n", "check"),
    ];
    for (k, (role, script, named)) in cases.into_iter().enumerate() {
        p.write("train.sh", script);
        let mut run = p.cmd(&["run", "-m", named]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        let child = loop {
            assert!(Instant::now() < deadline, "no {role:?} was ever recorded");
            let journal = Journal::load(&p.repo.join(".autoresearch")).unwrap_or_default();
            if let Some(c) = journal.children.iter().find(|c| c.role == role) {
                break c.clone();
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        run.kill().unwrap();
        run.wait().unwrap();
        assert!(alive(child.pgid), "the {named} outlives a killed harness");
        let interrupted = p.state().next_run - 1;
        // The next command puts things right before its agent edits anything.
        let score = format!("0.{}", 7 - k);
        let agent = p.agent(0, &[(&score, &format!("echo 'echo score: {score}' > train.sh"))]);
        let next = p.ok(&["loop", "--agent", &agent, "--max-experiments", "1"]);
        assert!(next.contains(&format!("recovered: stopped what the last process left running: {named}")), "{next}");
        assert!(!alive(child.pgid), "the killed run's {named} is gone");
        assert_eq!(p.meta(interrupted).status, Status::Interrupted);
        assert_eq!(p.last().status, Status::Keep, "{:?}", p.last());
        p.assert_consistent();
    }
}

/// A project on the Slurm backend, against a real single-node cluster: each training (and its evaluation) a step
/// of a job of its own, for a baseline by hand and a loop of two workers.
#[test]
fn a_project_on_slurm() {
    let cluster = Cluster::start();
    let mut p = Project::example("slurm", "python-train");
    p.env.push(("SLURM_CONF".into(), cluster.conf.clone()));
    p.ok(&["init", "s", "--rule", "lower"]);
    p.ok(&["run", "-m", "baseline", "--backend", "slurm"]);
    assert_eq!(p.last().status, Status::Keep, "{:?}", p.last());
    let agent = p.agent(1, &[("learning rate 2.0", "sed -i 's/^LEARNING_RATE = 0.2 /LEARNING_RATE = 2.0 /' train.py")]);
    p.agent(2, &[("three steps", "sed -i 's/^STEPS = 300 /STEPS = 3 /' train.py")]);
    let out = p.ok(&["loop", "--backend", "slurm", "--agent", &agent, "--workers", "2", "--max-experiments", "2"]);
    assert!(out.contains("worker 1: Slurm jobs"), "{out}");
    let rows = p.experiments();
    let status = |d: &str| rows.iter().find(|r| r.description == d).map(|r| r.status);
    assert_eq!((status("learning rate 2.0"), status("three steps")), (Some(Status::Keep), Some(Status::Discard)));
    assert!(cluster.queue().is_empty(), "every job is gone: {:?}", cluster.queue());
    p.assert_consistent();
}

const TREE_PROJECT: &str = r#"
editable = ["train.sh"]
[train]
command = "sh train.sh"
timeout = 60
[metric]
name = "score"
goal = "lower"
"#;

/// A project whose score is what train.sh says (plus the seed in the fourth decimal: `confirm N` sees a spread).
fn tree_project(name: &str) -> Project {
    Project::new(
        name,
        &[
            ("autoresearch.toml".into(), TREE_PROJECT.as_bytes().to_vec()),
            ("train.sh".into(), score_script(10).into_bytes()),
            ("program.md".into(), b"Lower the score.\n".to_vec()),
        ],
    )
}

fn score_script(score: u32) -> String {
    format!("echo score: {score}.00$AUTORESEARCH_SEED\n")
}

/// An agent step that makes train.sh say `score`, once `wait_for` (a description) has its row in results.tsv.
fn score_step(score: u32, wait_for: Option<&str>) -> String {
    let write = format!("printf '%s\\n' '{}' > train.sh", score_script(score).trim_end());
    match wait_for {
        // The worker's tree is .autoresearch/workers/<k>/tree in the repository; 10 s at most.
        Some(d) => format!(
            "for i in $(seq 500); do grep -q '\t{d}\t' ../../../../results.tsv && break; sleep 0.02; done; {write}"
        ),
        None => write,
    }
}

impl Project {
    fn row(&self, description: &str) -> Row {
        let rows = self.experiments();
        rows.iter()
            .find(|r| r.description == description)
            .unwrap_or_else(|| panic!("no {description}: {rows:?}"))
            .clone()
    }

    /// The frontier is the kept experiments (a re-measure in place of the node it re-measured), each with its
    /// row's parent and a git ref; the best is the best node; the session branch is the best node's lineage,
    /// and no worker has an experiment under way.
    fn assert_consistent_tree(&self) {
        self.assert_consistent();
        let state = self.state();
        let rows = self.experiments();
        let kept: Vec<&Row> = rows.iter().filter(|r| r.status == Status::Keep).collect();
        let remeasured: Vec<u64> = kept
            .iter()
            .filter_map(|r| {
                let parent = r.extra.as_ref().unwrap().parent?;
                let row = kept.iter().find(|k| run_of(k) == parent)?;
                (row.commit == r.commit).then_some(parent)
            })
            .collect();
        let mut nodes: Vec<(u64, Option<u64>)> = state.nodes.iter().map(|n| (n.at.run, n.parent)).collect();
        nodes.sort();
        let mut expected: Vec<(u64, Option<u64>)> = kept
            .iter()
            .filter(|r| !remeasured.contains(&run_of(r)))
            .map(|r| {
                // A re-measure's node takes the parent of the node it re-measured.
                let mut parent = r.extra.as_ref().unwrap().parent;
                while let Some(p) = parent.filter(|p| remeasured.contains(p)) {
                    parent = kept.iter().find(|k| run_of(k) == p).unwrap().extra.as_ref().unwrap().parent;
                }
                (run_of(r), parent)
            })
            .collect();
        expected.sort();
        assert_eq!(nodes, expected, "the nodes are the kept experiments: {rows:?}");
        let best = state.nodes.iter().min_by(|a, b| a.at.val_bpb.total_cmp(&b.at.val_bpb)).unwrap();
        assert_eq!(state.best.as_ref(), Some(&best.at), "the best node is the session's best");
        let refs =
            git(&self.repo, &["for-each-ref", "--format=%(refname:short) %(objectname)", "refs/autoresearch-nodes"]);
        for n in &state.nodes {
            assert!(refs.contains(&format!("/{} {}", n.at.run, n.at.commit)), "node {} has its ref: {refs}", n.at.run);
        }
        let mut node = Some(best);
        while let Some(n) = node {
            let ancestor = Command::new("git")
                .current_dir(&self.repo)
                .args(["merge-base", "--is-ancestor", &n.at.commit, "HEAD"])
                .status()
                .unwrap();
            assert!(ancestor.success(), "the branch holds node {} of the best's lineage", n.at.run);
            node = n.parent.and_then(|p| state.nodes.iter().find(|m| m.at.run == p));
        }
        for (k, journal) in autoresearch_report::journal::read_journals::<Journal>(&self.repo.join(".autoresearch")) {
            assert!(journal.in_progress.is_none(), "worker {k} has nothing under way");
        }
    }
}

/// `--search frontier` with two workers: both start from the baseline (the only node); one keeps 5, then the
/// other's 8 is judged against the baseline it started from (10), not the best (5), and joins the frontier; next
/// each starts from a node of its own, the prompt naming the node, its lineage and the best; the session branch
/// ends as the best node's lineage.
#[test]
fn a_frontier_search_of_two_workers_judges_each_experiment_against_the_node_it_started_from() {
    let p = tree_project("frontier-two");
    p.ok(&["init", "f2", "--rule", "lower"]);
    let agent = p.agent(1, &[("score 5", &score_step(5, None)), ("score 4", &score_step(4, Some("score 8")))]);
    p.agent(2, &[("score 8", &score_step(8, Some("score 5"))), ("score 6", &score_step(6, None))]);
    let out = p.ok(&["loop", "--agent", &agent, "--workers", "2", "--max-experiments", "5", "--search", "frontier"]);
    assert!(out.contains("search frontier"), "{out}");
    let parent = |r: &Row| r.extra.as_ref().unwrap().parent;
    let (baseline, five, eight) = (p.row("baseline"), p.row("score 5"), p.row("score 8"));
    assert_eq!((baseline.status, parent(&baseline)), (Status::Keep, None));
    assert_eq!((five.status, parent(&five)), (Status::Keep, Some(1)), "{five:?}");
    assert_eq!((eight.status, parent(&eight)), (Status::Keep, Some(1)), "{eight:?}");
    assert!(reason(&eight).contains("over node 10.004200 (run 1)"), "judged against its parent: {eight:?}");
    let rows = p.experiments();
    let index = |d: &str| rows.iter().position(|r| r.description == d).unwrap();
    assert!(index("score 5") < index("score 8"), "5 was the best when 8 was kept: {rows:?}");
    // The second round: worker 1 from its node (5), worker 2 from another (8, or the baseline).
    let (four, six) = (p.row("score 4"), p.row("score 6"));
    assert_eq!(parent(&four), Some(run_of(&five)), "{four:?}");
    assert_ne!(parent(&six), parent(&four), "two workers, two nodes: {six:?}");
    assert_eq!((four.status, six.status), (Status::Keep, Status::Keep), "{rows:?}");
    let prompt = std::fs::read_to_string(p.agent_state.join("prompt-1-2.md")).unwrap();
    let lineage = format!(
        "starts from the node score 5.004200, commit {}, run {}: score 5 and is kept if it beats that node",
        five.commit,
        run_of(&five)
    );
    let second = format!("  2. run {}: score 5 (score 5.004200)\n", run_of(&five));
    let best = format!("- The session's best node: score 5.004200, commit {}, run {}", five.commit, run_of(&five));
    for text in
        [&lineage, "  1. run 1: baseline (score 10.004200)\n", &second, &best, "each from a node of the frontier"]
    {
        assert!(prompt.contains(text), "the prompt has {text:?}: {prompt}");
    }
    let state = p.state();
    assert_eq!(state.best.as_ref().unwrap().run, run_of(&four));
    let branch = git(&p.repo, &["log", "--format=%s", "HEAD"]);
    assert_eq!(branch, "score 4\nscore 5\nstart\n", "the branch is the best node's lineage");
    p.assert_consistent_tree();
    // `export`: the best node's lineage, not every keep.
    let export = p.ok(&["export"]);
    assert!(export.contains("2 patches") && export.contains("score 5") && export.contains("score 4"), "{export}");
    assert!(!export.contains("score 8") && !export.contains("score 6"), "{export}");
    // `report`: the best node (not the last keep), its lineage, and what was tried from each node.
    let report = p.ok(&["report"]);
    let lineage = report.split("the best's lineage, root first:\n").nth(1).unwrap_or_default();
    let lineage: Vec<&str> = lineage.lines().skip(1).take_while(|l| !l.is_empty()).collect();
    assert_eq!(lineage.len(), 3, "baseline, score 5, score 4: {report}");
    assert!(lineage[0].ends_with("baseline") && lineage[2].ends_with("score 4"), "{report}");
    assert!(report.contains("search: frontier") && report.contains("best:     4.004200"), "{report}");
    // A later loop: a worker's tree rests on the node its last experiment joined, not on the best; that is no
    // change of its own to set aside.
    let agent = p.agent(1, &[("score 3", &score_step(3, None))]);
    p.agent(2, &[("score 9", &score_step(9, None))]);
    let out = p.ok(&["loop", "--agent", &agent, "--workers", "2", "--max-experiments", "2"]);
    assert!(!out.contains("set aside"), "{out}");
    assert_eq!(p.row("score 3").status, Status::Keep, "{out}");
    p.assert_consistent_tree();
}

/// `--search frontier` stored by `init` with one worker (in a worktree: the repository's tree stays on the best):
/// a discard is judged against its node; a kill -9 mid-training leaves a tree the next loop puts right; `confirm
/// 1` on a later loop re-measures the node an experiment starts from, which the re-measure then replaces.
#[test]
fn a_frontier_search_of_one_worker_survives_a_kill_9_and_re_measures_a_node() {
    let p = tree_project("frontier-one");
    p.ok(&["init", "f1", "--rule", "lower", "--search", "frontier"]);
    assert_eq!(p.state().settings.search, autoresearch_report::tree::Search::Frontier);
    let agent = p.agent(1, &[("score 5", &score_step(5, None)), ("score 7", &score_step(7, None))]);
    p.ok(&["loop", "--agent", &agent, "--max-experiments", "3"]);
    let (five, seven) = (p.row("score 5"), p.row("score 7"));
    assert_eq!((five.status, five.extra.as_ref().unwrap().parent), (Status::Keep, Some(1)));
    assert_eq!((seven.status, seven.extra.as_ref().unwrap().parent), (Status::Discard, Some(run_of(&five))));
    assert_eq!(seven.extra.as_ref().unwrap().worker, Some(1), "one worker, in a worktree of its own");
    let prompt = std::fs::read_to_string(p.agent_state.join("prompt-1-2.md")).unwrap();
    assert!(prompt.contains("  2. run 2: score 5 (score 5.004200)") && !prompt.contains("You are worker"), "{prompt}");
    p.assert_consistent_tree();

    // kill -9 while the next experiment trains: the next loop stops the training and sets the change aside.
    let slow = "printf 'sleep 300\\necho score: 1\\n' > train.sh";
    let agent = p.agent(1, &[("slow", slow)]);
    let mut child = p
        .cmd(&["loop", "--agent", &agent, "--max-experiments", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let journal_dir = p.repo.join(".autoresearch/workers/1");
    let deadline = Instant::now() + Duration::from_secs(60);
    let training = loop {
        assert!(Instant::now() < deadline, "no training was ever recorded");
        let journal = Journal::load(&journal_dir).unwrap_or_default();
        if let Some(c) = journal.children.iter().find(|c| c.role == Role::Training) {
            break (c.clone(), journal.in_progress.unwrap().run);
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    child.kill().unwrap();
    child.wait().unwrap();
    // Then `confirm 1`: the node it starts from was measured with one seed, and is re-measured first.
    let agent = p.agent(1, &[("score 3", &score_step(3, None))]);
    let out = p.ok(&["loop", "--agent", &agent, "--max-experiments", "1", "--rule", "confirm 1"]);
    assert!(out.contains("recovered: stopped what the last process left running: training"), "{out}");
    assert!(!alive(training.0.pgid), "the killed loop's training is gone");
    assert_eq!(p.meta(training.1).status, Status::Interrupted);
    assert!(p.experiments().iter().all(|r| r.description != "slow"), "no row for an interrupted run");
    let remeasure =
        p.experiments().into_iter().find(|r| r.description.starts_with("re-measure")).expect("a re-measure");
    assert_eq!(remeasure.extra.as_ref().unwrap().parent, Some(run_of(&five)), "{remeasure:?}");
    assert_eq!(remeasure.commit, five.commit);
    let three = p.row("score 3");
    assert_eq!((three.status, three.extra.as_ref().unwrap().parent), (Status::Keep, Some(run_of(&remeasure))));
    assert!(reason(&three).contains("over 2 seeds (42, 43)"), "{three:?}");
    let state = p.state();
    assert!(state.nodes.iter().all(|n| n.at.run != run_of(&five)), "the re-measure replaced its node");
    assert_eq!(state.nodes.iter().find(|n| n.at.run == run_of(&remeasure)).unwrap().at.seeds, [42, 43]);
    p.assert_consistent_tree();

    // A kill -9 just after "score 3"'s row was written, before it joined the frontier: what that process left
    // (the node missing, the branch on the best before, the worker's journal naming the experiment and its node).
    let mut before = state.clone();
    let node = before.nodes.pop().unwrap();
    assert_eq!(node.at.run, run_of(&three));
    let parent = before.nodes.iter().find(|n| Some(n.at.run) == node.parent).unwrap().at.clone();
    before.best = Some(parent.clone());
    before.save(&p.repo.join(".autoresearch")).unwrap();
    git(&p.repo, &["reset", "--quiet", "--hard", &parent.commit]);
    let journal = Journal {
        best: Some(parent),
        in_progress: Some(InProgress { run: node.at.run, commit: Some(node.at.commit.clone()), seeds: vec![42, 43] }),
        ..Default::default()
    };
    journal.save(&journal_dir).unwrap();
    let out = p.ok(&["loop", "--agent", "false", "--max-experiments", "0"]);
    let finished = format!("recovered: run {} was recorded (keep) before the last process stopped", node.at.run);
    assert!(out.contains(&finished), "{out}");
    assert_eq!(p.state().nodes, state.nodes, "the node joined once, as it would have");
    assert_eq!(p.state().best, state.best);
    p.assert_consistent_tree();
}
