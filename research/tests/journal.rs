//! What the loop writes, a watcher reads: the session's state, the workers' journals (worker 0's in the session's
//! folder, a pool's in `workers/<k>/`) and a run's meta.json, saved with the loop's own types, read back through
//! `autoresearch_report::journal`, the read-only view the dashboard uses without linking the loop. A field
//! renamed or moved on one side fails here.

use std::path::Path;

use autoresearch_report::journal::{journals, run_description, Journal, ProcessRecord, Settings, Underway};
use autoresearch_report::results::Status;
use autoresearch_research::process::{start_time, Recorded, Role};
use autoresearch_research::state::{self, Best, InProgress, State};
use autoresearch_research::trainer::DeviceChoice;
use autoresearch_research::RunMeta;

fn best() -> Option<Best> {
    Some(Best { commit: "c000005".into(), val_bpb: 1.799, run: 5, seeds: vec![42, 43] })
}

fn session_state() -> State {
    State {
        settings: state::Settings {
            tag: "night".into(),
            branch: "autoresearch/night".into(),
            base: "0000000".into(),
            profile: "small".into(),
            time_budget: 60.0,
            device: DeviceChoice::Cpu,
            rule: "margin".into(),
            metric: Default::default(),
            search: Default::default(),
        },
        best: best(),
        next_run: 9,
        nodes: Vec::new(),
    }
}

fn journal(run: Option<u64>, children: Vec<Recorded>) -> state::Journal {
    state::Journal {
        best: best(),
        in_progress: run.map(|run| InProgress { run, commit: Some("c000007".into()), seeds: vec![42] }),
        children,
        slurm_jobs: vec!["autoresearch-7".into()],
    }
}

fn write_meta(state_dir: &Path, meta: &RunMeta) {
    let dir = state_dir.join("runs").join(meta.run.to_string());
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("meta.json"), serde_json::to_string_pretty(meta).unwrap()).unwrap();
}

#[test]
fn the_loops_journals_and_run_folders_read_as_the_dashboard_reads_them() {
    let dir = tempfile::tempdir().unwrap();
    let state_dir = dir.path().join(".autoresearch");
    std::fs::create_dir_all(&state_dir).unwrap();
    let pid = std::process::id() as i32;
    let me = Recorded { role: Role::Evaluation, pgid: pid, start_time: start_time(pid).unwrap() };
    let stranger = Recorded { role: Role::Agent, pgid: pid, start_time: me.start_time + 1 };
    session_state().save(&state_dir).unwrap();
    assert_eq!(
        Settings::load(&state_dir).unwrap(),
        Settings { profile: "small".into(), time_budget: 60.0, metric: Default::default(), search: Default::default() }
    );
    journal(Some(7), vec![stranger.clone(), me.clone()]).save(&state_dir).unwrap();
    let worker = state_dir.join("workers/2");
    std::fs::create_dir_all(&worker).unwrap();
    journal(Some(8), vec![me.clone()]).save(&worker).unwrap();
    std::fs::create_dir_all(state_dir.join("workers/1")).unwrap();
    journal(None, Vec::new()).save(&state_dir.join("workers/1")).unwrap();

    let seen = Journal::load(&state_dir).unwrap();
    let record = |r: &Recorded| ProcessRecord { role: r.role, pgid: r.pgid, start_time: r.start_time };
    assert_eq!(
        seen,
        Journal { in_progress: Some(Underway { run: 7 }), children: vec![record(&stranger), record(&me)] }
    );
    let running: Vec<bool> = seen.children.iter().map(ProcessRecord::is_running).collect();
    assert_eq!(running, [false, true], "the stranger's start time is not this process's");

    let workers: Vec<(usize, Option<u64>, usize)> =
        journals(&state_dir).into_iter().map(|(k, j)| (k, j.in_progress.map(|ip| ip.run), j.children.len())).collect();
    assert_eq!(workers, [(0, Some(7), 2), (1, None, 0), (2, Some(8), 1)]);

    let meta = RunMeta {
        run: 7,
        description: "learning rates up".into(),
        commit: Some("c000007".into()),
        status: Status::Running,
        file_hash: "0123456789abcdef".into(),
        started: "2026-11-30T12:00:00Z".into(),
        ..Default::default()
    };
    write_meta(&state_dir, &meta);
    assert_eq!(run_description(&state_dir, 7).as_deref(), Some("learning rates up"));
    assert_eq!(run_description(&state_dir, 6), None, "no such run");
}
