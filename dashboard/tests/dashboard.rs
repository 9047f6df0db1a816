//! The dashboard over fixture sessions: its HTTP surface (token, paths, a 1,000-experiment session), and the
//! page in a real headless Chromium driven through ChromeDriver (table, chart, live steps, a run's diff, two
//! sessions side by side, a higher-is-better session and one beside a val_bpb session, a frontier session's
//! tree), which leaves screenshots
//! in the test's scratch folder.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use autoresearch_dashboard::data::SessionFolder;
use autoresearch_dashboard::{serve, Server};
use autoresearch_harness::progress::{Progress, PROGRESS_FILE};
use autoresearch_report::journal::start_time;
use autoresearch_report::noise::{save_noise, NoiseEstimate};
use autoresearch_report::results::{self, Extra, Row, Status};
use serde_json::{json, Value};

fn row(run: u64, status: Status, val_bpb: f64, description: &str, reason: &str) -> Row {
    branch(run, None, status, val_bpb, description, reason)
}

/// A row of run `run` that started from run `parent`.
fn branch(run: u64, parent: Option<u64>, status: Status, val_bpb: f64, description: &str, reason: &str) -> Row {
    Row {
        commit: format!("c{run:06}"),
        val_bpb,
        memory_gb: 0.6,
        status,
        description: description.into(),
        extra: Some(Extra {
            profile: "small".into(),
            budget: 60.0,
            seconds: 75.0,
            run,
            rule: "lower".into(),
            reason: reason.into(),
            worker: None,
            parent,
        }),
    }
}

/// The progress file of run `run`'s training (seed 42) in `state_dir`, as the harness writes it, at `step`.
fn report_progress(state_dir: &Path, run: u64, step: u64) {
    let handover = state_dir.join(format!("runs/{run}/seed-42"));
    std::fs::create_dir_all(&handover).unwrap();
    let progress = Progress {
        step,
        loss: 7.0 - 0.1 * step as f64,
        fraction: step as f64 / 100.0,
        remaining_seconds: (60 - step) as f64,
        curve: (0..=step).map(|k| (k, 7.0 - 0.1 * k as f64)).collect(),
    };
    std::fs::write(handover.join(PROGRESS_FILE), serde_json::to_vec(&progress).unwrap()).unwrap();
}

/// A session folder with keeps (one gain below the noise), a discard, a crash, a rerun and a reused result;
/// run 7 is training now (the journal records this test's own process as its training), at step 5 by its
/// progress file. Run 3's
/// diff is a link to a file outside the session.
fn fixture(dir: &Path, name: &str) -> PathBuf {
    let root = dir.join(name);
    let state_dir = root.join(".autoresearch");
    std::fs::create_dir_all(state_dir.join("runs")).unwrap();
    let rows = vec![
        row(1, Status::Keep, 1.90, "baseline", "first result: the baseline"),
        row(2, Status::Discard, 1.95, "freeze the embeddings", "gain -0.050000 over best 1.900000 (run 1) ≤ 0"),
        row(3, Status::Keep, 1.80, "learning rates up", "gain 0.100000 over best 1.900000 (run 1) > 0"),
        row(4, Status::Crash, 0.0, "a panic", "panic: boom"),
        row(5, Status::Keep, 1.799, "scalar lr 0.45", "gain 0.001000 over best 1.800000 (run 3) > 0"),
        row(5, Status::Rerun, 1.801, "rerun 1/1 (seed 43) of: scalar lr 0.45", "seed 43"),
        row(
            6,
            Status::Discard,
            1.95,
            "freeze again",
            "identical to run 2 (discard, val_bpb 1.950000): its result reused",
        ),
    ];
    results::create(&root.join("results.tsv")).unwrap();
    results::append(&root.join("results.tsv"), &rows).unwrap();
    write_journal(&state_dir, Some(7), this_process_training());
    save_noise(&state_dir, &NoiseEstimate::new("small", 60.0, "c000003", vec![43, 44], vec![1.80, 1.81]).unwrap())
        .unwrap();
    for run in 1..=7 {
        let run_dir = state_dir.join("runs").join(run.to_string());
        std::fs::create_dir_all(&run_dir).unwrap();
        // What the dashboard reads of a meta.json (the loop writes more; research/tests/journal.rs checks that
        // its files read as the dashboard reads them).
        let meta = json!({"run": run, "description": format!("experiment {run}")});
        std::fs::write(run_dir.join("meta.json"), serde_json::to_vec(&meta).unwrap()).unwrap();
    }
    let run2 = state_dir.join("runs/2");
    std::fs::write(run2.join("change.diff"), "-        embedding_lr: 0.6,\n+        embedding_lr: 0.0,\n").unwrap();
    std::fs::write(run2.join("run.log"), "profile small\nval_bpb:          1.950000\n").unwrap();
    std::fs::write(dir.join("outside.txt"), "SECRET outside the session").unwrap();
    std::os::unix::fs::symlink(dir.join("outside.txt"), state_dir.join("runs/3/change.diff")).unwrap();
    report_progress(&state_dir, 7, 5);
    root
}

/// An accuracy session (higher is better): kept 0.80 (the baseline), 0.85, 0.86; discards below the best, one of
/// them below the baseline; a crash. Nothing runs.
fn accuracy_fixture(dir: &Path, name: &str) -> PathBuf {
    let root = dir.join(name);
    let state_dir = root.join(".autoresearch");
    write_journal(&state_dir, None, json!([]));
    let path = state_dir.join("state.json");
    let mut state: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    state["metric"] = json!({"name": "accuracy", "goal": "higher"});
    std::fs::write(&path, serde_json::to_vec_pretty(&state).unwrap()).unwrap();
    let rows = vec![
        row(1, Status::Keep, 0.80, "baseline", "first result: the baseline"),
        row(2, Status::Discard, 0.78, "smaller model", "gain -0.020000 over best 0.800000 (run 1) ≤ 0"),
        row(3, Status::Keep, 0.85, "wider layer", "gain 0.050000 over best 0.800000 (run 1) > 0"),
        row(4, Status::Crash, 0.0, "a typo", "exit 1"),
        row(5, Status::Keep, 0.86, "more epochs", "gain 0.010000 over best 0.850000 (run 3) > 0"),
        row(6, Status::Discard, 0.84, "dropout", "gain -0.020000 over best 0.860000 (run 5) ≤ 0"),
    ];
    let rows: Vec<Row> =
        rows.into_iter().map(|mut r| (r.extra.as_mut().unwrap().rule = "margin".into(), r).1).collect();
    results::create(&root.join("results.tsv")).unwrap();
    results::append(&root.join("results.tsv"), &rows).unwrap();
    root
}

/// A frontier session (lower is better): the baseline 1.90 (run 1); runs 2 (1.85) and 3 (1.88) kept from it;
/// run 4 discarded from 2; run 5 (1.80) kept from 3, the best; run 6 (1.83) kept from 2, the last keep but not
/// the best. Nothing runs.
fn frontier_fixture(dir: &Path, name: &str) -> PathBuf {
    let root = dir.join(name);
    let state_dir = root.join(".autoresearch");
    write_journal(&state_dir, None, json!([]));
    let path = state_dir.join("state.json");
    let mut state: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    state["search"] = json!("frontier");
    std::fs::write(&path, serde_json::to_vec_pretty(&state).unwrap()).unwrap();
    let rows = vec![
        branch(1, None, Status::Keep, 1.90, "baseline", "first result: the baseline"),
        branch(2, Some(1), Status::Keep, 1.85, "wider", "gain over its parent"),
        branch(3, Some(1), Status::Keep, 1.88, "deeper", "gain over its parent"),
        branch(4, Some(2), Status::Discard, 1.87, "wider still", "no gain over its parent"),
        branch(5, Some(3), Status::Keep, 1.80, "deeper, lr up", "gain over its parent"),
        branch(6, Some(2), Status::Keep, 1.83, "wider, lr up", "gain over its parent"),
    ];
    results::create(&root.join("results.tsv")).unwrap();
    results::append(&root.join("results.tsv"), &rows).unwrap();
    root
}

/// The journal's process records: this test's own process, as the training.
fn this_process_training() -> Value {
    let pid = std::process::id() as i32;
    json!([{"role": "training", "pgid": pid, "start_time": start_time(pid).unwrap()}])
}

/// A journal (`state.json`) in `dir` with what the dashboard reads of one: run `run` under way, `children`
/// running for it (the loop writes more; research/tests/journal.rs checks that its journals read the same).
fn write_journal(dir: &Path, run: Option<u64>, children: Value) {
    std::fs::create_dir_all(dir).unwrap();
    let journal = json!({
        "profile": "small",
        "time_budget": 60.0,
        "in_progress": run.map(|run| json!({"run": run})),
        "children": children,
    });
    std::fs::write(dir.join("state.json"), serde_json::to_vec_pretty(&journal).unwrap()).unwrap();
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder().http_status_as_error(false).build().into()
}

fn get(url: &str) -> (u16, String) {
    let mut response = agent().get(url).call().unwrap();
    (response.status().as_u16(), response.body_mut().read_to_string().unwrap())
}

fn start(sessions: &[&Path], ip: &str) -> Server {
    let sessions = sessions.iter().map(|d| SessionFolder::open(d).unwrap()).collect();
    serve(sessions, SocketAddr::new(ip.parse().unwrap(), 0)).unwrap()
}

#[test]
fn another_address_needs_the_token_on_every_request() {
    let dir = tempfile::tempdir().unwrap();
    let root = fixture(dir.path(), "night");
    let server = start(&[&root], "0.0.0.0");
    let token = server.token.clone().expect("a token where the address is not a loopback one");
    let base = format!("http://127.0.0.1:{}", server.addr.port());
    for path in ["/", "/api/overview", "/api/rows?session=0", "/api/run?session=0&run=2"] {
        assert_eq!(get(&format!("{base}{path}")).0, 401, "{path} without the token");
        assert_eq!(get(&format!("{base}{path}{}token=wrong", if path.contains('?') { "&" } else { "?" })).0, 401);
        let with = format!("{base}{path}{}token={token}", if path.contains('?') { "&" } else { "?" });
        assert_eq!(get(&with).0, 200, "{path} with the token");
    }
    let mut response = agent()
        .get(&format!("{base}/api/overview"))
        .header("Authorization", &format!("Bearer {token}"))
        .call()
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert!(response.body_mut().read_to_string().unwrap().contains("\"night\""));
    // On a loopback address there is none to give.
    let local = start(&[&root], "127.0.0.1");
    assert!(local.token.is_none());
    assert_eq!(get(&local.url()).0, 200);
}

#[test]
fn nothing_outside_the_session_can_be_read() {
    let dir = tempfile::tempdir().unwrap();
    let root = fixture(dir.path(), "night");
    let server = start(&[&root], "127.0.0.1");
    let base = format!("http://{}", server.addr);
    let (status, body) = get(&format!("{base}/api/run?session=0&run=2"));
    assert_eq!(status, 200);
    assert!(body.contains("embedding_lr: 0.0"), "{body}");
    for path in [
        "/api/run?session=0&run=../../outside.txt",
        "/api/run?session=0&run=%2Fetc%2Fpasswd",
        "/api/run?session=1&run=2",
        "/api/run?session=0&run=99",
        "/etc/passwd",
        "/../outside.txt",
        "/%2e%2e/%2e%2e/etc/passwd",
        "/api/rows?session=-1",
    ] {
        let (status, body) = get(&format!("{base}{path}"));
        assert!((400..500).contains(&status), "{path}: {status}");
        assert!(!body.contains("SECRET") && !body.contains("root:"), "{path}: {body}");
    }
    // Read-only: nothing takes a write.
    let post = agent().post(&format!("{base}/api/overview")).send("").unwrap();
    assert_eq!(post.status().as_u16(), 405);
    let (status, body) = get(&format!("{base}/api/run?session=0&run=3"));
    assert_eq!(status, 403, "a link that leads out of the session");
    assert!(body.contains("outside the session") && !body.contains("SECRET"), "{body}");
}

/// A session run by two workers: a live line for each from its own journal and its run's progress file, and the
/// worker of each row.
#[test]
fn each_worker_has_its_live_line_and_each_row_its_worker() {
    let dir = tempfile::tempdir().unwrap();
    let root = fixture(dir.path(), "workers");
    let state_dir = root.join(".autoresearch");
    let mut rows = results::read(&root.join("results.tsv")).unwrap().rows;
    for (i, r) in rows.iter_mut().enumerate() {
        r.extra.as_mut().unwrap().worker = Some(1 + i % 2);
    }
    std::fs::remove_file(root.join("results.tsv")).unwrap();
    results::create(&root.join("results.tsv")).unwrap();
    results::append(&root.join("results.tsv"), &rows).unwrap();
    // The session's own journal runs nothing; each worker's journal records this test's process as its training.
    write_journal(&state_dir, None, json!([]));
    for (k, run, step) in [(1, 7, 3), (2, 8, 9)] {
        let own = state_dir.join("workers").join(k.to_string());
        std::fs::create_dir_all(own.join("tree")).unwrap();
        write_journal(&own, Some(run), this_process_training());
        report_progress(&state_dir, run, step);
    }
    let server = start(&[&root], "127.0.0.1");
    let (status, body) = get(&format!("http://{}/api/overview", server.addr));
    assert_eq!(status, 200);
    let overview: Value = serde_json::from_str(&body).unwrap();
    let live = overview["sessions"][0]["live"].as_array().unwrap();
    let lines: Vec<(&str, u64, u64)> = live
        .iter()
        .map(|l| (l["worker"].as_str().unwrap(), l["run"].as_u64().unwrap(), l["step"].as_u64().unwrap()))
        .collect();
    assert_eq!(lines, [("worker 1", 7, 3), ("worker 2", 8, 9)]);
    let (_, body) = get(&format!("http://{}/api/rows?session=0", server.addr));
    let rows: Value = serde_json::from_str(&body).unwrap();
    let worker = rows["columns"].as_array().unwrap().iter().position(|c| c == "worker").unwrap();
    let workers: Vec<u64> = rows["rows"].as_array().unwrap().iter().map(|r| r[worker].as_u64().unwrap()).collect();
    assert_eq!(workers, [1, 2, 1, 2, 1, 2, 1]);
}

/// What the session measures comes from its state: one that does not parse is an error naming the file, not a
/// page that silently calls an accuracy val_bpb.
#[test]
fn a_state_that_does_not_parse_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let root = accuracy_fixture(dir.path(), "accuracy");
    let server = start(&[&root], "127.0.0.1");
    let (status, body) = get(&format!("{}api/overview", server.url()));
    assert_eq!(status, 200, "{body}");
    std::fs::write(root.join(".autoresearch/state.json"), r#"{"profile": "project", "time_budget": 5.0, "metric": 3}"#)
        .unwrap();
    let (status, body) = get(&format!("{}api/overview", server.url()));
    assert_eq!(status, 500);
    assert!(body.contains(".autoresearch/state.json"), "{body}");
    let (status, body) = get(&format!("{}api/rows?session=0", server.url()));
    assert!(status == 500 && body.contains(".autoresearch/state.json"), "{status} {body}");
}

#[test]
fn a_thousand_experiments_are_served_in_under_a_second() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("long");
    std::fs::create_dir_all(root.join(".autoresearch")).unwrap();
    let description = "raise the matrix learning rate a little and shorten the warmdown to a third of the budget";
    let rows: Vec<Row> = (1..=1000)
        .map(|k| {
            let status = if k % 7 == 0 {
                Status::Keep
            } else if k % 13 == 0 {
                Status::Crash
            } else {
                Status::Discard
            };
            row(k, status, 2.0 - k as f64 * 1e-4, description, "gain 0.000100 over best 1.950000 (run 999) ≤ 0")
        })
        .collect();
    results::create(&root.join("results.tsv")).unwrap();
    results::append(&root.join("results.tsv"), &rows).unwrap();
    let server = start(&[&root], "127.0.0.1");
    let base = format!("http://{}", server.addr);
    // What a browser loads, as a browser asks for it (gzip), timed and counted as it travels.
    let started = Instant::now();
    let mut bytes = 0;
    for path in ["/", "/api/overview", "/api/rows?session=0"] {
        let mut response = agent().get(&format!("{base}{path}")).header("Accept-Encoding", "gzip").call().unwrap();
        assert_eq!(response.status().as_u16(), 200, "{path}");
        bytes += response.body_mut().read_to_vec().unwrap().len();
    }
    let seconds = started.elapsed().as_secs_f64();
    eprintln!("1000 experiments: page and data in {seconds:.3} s, {bytes} bytes (gzip)");
    assert!(seconds < 1.0, "{seconds:.3} s");
    assert!(bytes < 200_000, "{bytes} bytes per page load");
    let rows: Value = serde_json::from_str(&get(&format!("{base}/api/rows?session=0")).1).unwrap();
    assert_eq!(rows["rows"].as_array().unwrap().len(), 1000);
}

/// ChromeDriver on a free port, and a headless Chromium session in it.
struct Browser {
    driver: Child,
    base: String,
    session: String,
}

impl Browser {
    fn start() -> Browser {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (Debian: apt-get install chromium chromium-driver; .ci/run installs them)");
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while agent().get(&format!("{base}/status")).call().is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        let caps = json!({"capabilities": {"alwaysMatch": {"goog:chromeOptions": {
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1500"]
        }}}});
        let reply: Value =
            agent().post(&format!("{base}/session")).send_json(&caps).unwrap().body_mut().read_json().unwrap();
        let session = reply["value"]["sessionId"].as_str().unwrap_or_else(|| panic!("no session: {reply}")).to_string();
        Browser { driver, base, session }
    }

    fn call(&self, method: &str, path: &str, body: Value) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let mut response = match method {
            "GET" => agent().get(&url).call().unwrap(),
            _ => agent().post(&url).send_json(&body).unwrap(),
        };
        let reply: Value = response.body_mut().read_json().unwrap();
        reply["value"].clone()
    }

    fn go(&self, url: &str) {
        self.call("POST", "/url", json!({ "url": url }));
    }

    fn js(&self, script: &str) -> Value {
        self.call("POST", "/execute/sync", json!({ "script": script, "args": [] }))
    }

    /// Waits until `script` returns true.
    fn wait_for(&self, script: &str, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.js(script) != json!(true) {
            assert!(Instant::now() < deadline, "the page never showed {what}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn screenshot(&self, path: &Path) {
        use base64::Engine as _;
        let png = self.call("GET", "/screenshot", Value::Null);
        let bytes = base64::engine::general_purpose::STANDARD.decode(png.as_str().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = agent().delete(&format!("{}/session/{}", self.base, self.session)).call();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

#[test]
fn the_page_in_a_real_browser() {
    let dir = tempfile::tempdir().unwrap();
    let root = fixture(dir.path(), "night");
    let server = start(&[&root], "127.0.0.1");
    let browser = Browser::start();
    browser.go(&server.url());
    browser.wait_for("return document.querySelectorAll('#rows tbody tr').length === 7", "the 7 rows");
    // The table: statuses, the change against the best at the time, the gain below the noise marked.
    let statuses =
        browser.js("return [...document.querySelectorAll('#rows tbody tr td:nth-child(3)')].map(t => t.textContent)");
    assert_eq!(statuses, json!(["discard", "rerun", "keep *", "crash", "keep", "discard", "keep"]));
    let delta = browser.js(
        "return document.querySelector('#rows tbody tr:last-child').previousElementSibling.children[4].textContent",
    );
    assert_eq!(delta, json!("-0.050000"), "1.95 after a best of 1.90 under val_bpb, lower is better: a loss");
    assert_eq!(browser.js("return document.getElementById('value-head').textContent"), json!("val_bpb"));
    // The chart: a point per row that has a value, in its status's colour, the running best and the noise band.
    let points = browser.js(
        "return [...document.querySelectorAll('#progress circle[data-status]')].map(c => c.dataset.status).join(',')",
    );
    assert_eq!(points, json!("keep,discard,keep,crash,keep,rerun"));
    assert_eq!(browser.js("return document.querySelectorAll('#progress circle:not([data-status])').length"), json!(1));
    assert_eq!(browser.js("return document.querySelectorAll('#progress polygon').length"), json!(1), "noise band");
    // Totals.
    let totals = browser.js("return document.getElementById('totals').textContent");
    assert!(
        totals.as_str().unwrap().contains("6experiments") && totals.as_str().unwrap().contains("1.799000best"),
        "{totals}"
    );
    // What runs now, then new steps in the log: the page shows them without a reload.
    browser.wait_for("return document.querySelector('#live .step')?.textContent === '5'", "step 5");
    assert!(browser
        .js("return document.getElementById('live').textContent")
        .as_str()
        .unwrap()
        .contains("experiment 7"));
    browser.js("window.notReloaded = true; return true");
    report_progress(&root.join(".autoresearch"), 7, 9);
    browser.wait_for("return document.querySelector('#live .step')?.textContent === '9'", "step 9");
    assert_eq!(browser.js("return window.notReloaded === true"), json!(true), "updated in place, not reloaded");
    // A new row appears too.
    results::append(&root.join("results.tsv"), &[row(7, Status::Keep, 1.70, "a new best", "gain 0.099 > 0")]).unwrap();
    browser.wait_for("return document.querySelectorAll('#rows tbody tr').length === 8", "the new row");
    // A row opens its diff and the end of its log.
    browser.js("document.querySelector('#rows tbody tr[data-run=\"2\"]').click(); return true");
    browser.wait_for("return !!document.getElementById('diff')", "run 2's diff");
    let diff =
        browser.js("return document.getElementById('diff').textContent + document.getElementById('log').textContent");
    assert!(diff.as_str().unwrap().contains("embedding_lr: 0.0") && diff.as_str().unwrap().contains("1.950000"));
    browser.screenshot(&PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png"));
    // On a phone's width the page fits: only the table scrolls sideways, inside its box.
    browser.call("POST", "/window/rect", json!({"width": 390, "height": 844}));
    browser.wait_for("return window.innerWidth < 500", "the narrow window");
    assert_eq!(browser.js("return document.documentElement.scrollWidth <= window.innerWidth"), json!(true));
    browser.screenshot(&PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard-phone.png"));
    browser.call("POST", "/window/rect", json!({"width": 1280, "height": 1500}));

    // Two sessions side by side: their best-so-far curves on one chart and a line each in the table.
    let other = fixture(dir.path(), "other-agent");
    let both = start(&[&root, &other], "127.0.0.1");
    browser.go(&both.url());
    browser.wait_for("return !document.getElementById('compare').hidden", "the comparison");
    browser.wait_for("return document.querySelectorAll('#compare-table tr').length === 3", "a line per session");
    assert_eq!(browser.js("return document.querySelectorAll('#compare-chart path').length"), json!(2));
    browser.js("document.getElementById('by-hours').click(); return true");
    assert_eq!(browser.js("return document.querySelectorAll('#compare-chart path').length"), json!(2));
    assert_eq!(browser.js("return document.getElementById('compare-note').hidden"), json!(true));
    browser.screenshot(&PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard-two-sessions.png"));

    // A higher-is-better session: the page names its metric, its best is the highest kept value, gains are
    // positive going up, and the running best climbs to the top.
    let accuracy = accuracy_fixture(dir.path(), "accuracy");
    let alone = start(&[&accuracy], "127.0.0.1");
    let (_, body) = get(&format!("{}api/overview", alone.url()));
    let overview: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(overview["sessions"][0]["metric"], json!({"name": "accuracy", "goal": "higher"}));
    assert_eq!(
        (overview["sessions"][0]["best"].as_f64(), overview["sessions"][0]["baseline"].as_f64()),
        (Some(0.86), Some(0.8))
    );
    browser.go(&alone.url());
    browser.wait_for("return document.querySelectorAll('#rows tbody tr').length === 6", "the accuracy session's rows");
    assert_eq!(browser.js("return document.getElementById('value-head').textContent"), json!("accuracy"));
    let totals = browser.js("return document.getElementById('totals').textContent");
    let totals = totals.as_str().unwrap();
    assert!(totals.contains("accuracyhigher is better") && totals.contains("0.860000best accuracy"), "{totals}");
    assert!(totals.contains("+0.060000 (7.50%)gain of the best over the baseline"), "{totals}");
    assert!(browser
        .js("return document.getElementById('metric-note').textContent")
        .as_str()
        .unwrap()
        .contains("accuracy: higher is better"));
    // Gains, newest row first: 0.84 after the best 0.86; 0.86 after 0.85; the crash; 0.85 after 0.80; 0.78
    // after 0.80; the baseline.
    let gains = browser.js("return [...document.querySelectorAll('#rows tbody tr')]
           .map(r => r.children[4].textContent + ' ' + r.children[4].className)");
    assert_eq!(
        gains,
        json!(["-0.020000 worse", "+0.010000 better", "– worse", "+0.050000 better", "-0.020000 worse", "– worse"])
    );
    // The running best's line: its y (down the page) never grows, and it ends at the highest kept point; the
    // crash sits on the worse edge, the bottom.
    let line = browser.js(
        "const cy = (selector) => [...document.querySelectorAll(selector)].map(c => Number(c.getAttribute('cy')));
         const ys = document.getElementById('best-line').getAttribute('d').split(/[ML]/).filter(p => p)
           .map(p => Number(p.split(' ')[1]));
         const kept = cy('#progress circle[data-status=keep]'), crash = cy('#progress circle[data-status=crash]');
         return [ys.every((y, i) => i === 0 || y <= ys[i - 1]), ys[ys.length - 1] === Math.min(...kept),
           crash[0] === Math.max(...cy('#progress circle'))]",
    );
    assert_eq!(line, json!([true, true, true]));
    browser.screenshot(&PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard-accuracy.png"));

    // A frontier session: its tree drawn (a line from each keep to its parent, the best's lineage thick), its
    // best the best node, not the last keep, and each gain over the row's parent.
    let frontier = frontier_fixture(dir.path(), "frontier");
    let tree = start(&[&frontier], "127.0.0.1");
    let (_, body) = get(&format!("{}api/overview", tree.url()));
    let overview: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(overview["sessions"][0]["search"], json!("frontier"));
    assert_eq!(overview["sessions"][0]["best_path"], json!([1, 3, 5]));
    assert_eq!(overview["sessions"][0]["best"].as_f64(), Some(1.80));
    browser.go(&tree.url());
    browser.wait_for("return document.querySelectorAll('#rows tbody tr').length === 6", "the frontier session's rows");
    assert_eq!(browser.js("return document.getElementById('tree-note').hidden"), json!(false));
    let gains =
        browser.js("return [...document.querySelectorAll('#rows tbody tr')].map(r => r.children[4].textContent)");
    // Newest first: 1.83 over run 2's 1.85; 1.80 over run 3's 1.88; 1.87 over 1.85; 1.88 and 1.85 over 1.90.
    assert_eq!(gains, json!(["+0.020000", "+0.080000", "-0.020000", "+0.020000", "+0.050000", "–"]));
    let edges = browser.js("return [document.querySelectorAll('#progress line.edge').length,
                 document.querySelectorAll('#progress line.best-path').length]");
    assert_eq!(edges, json!([4, 2]), "four keeps with a parent; two edges from the baseline to run 5");
    let best_line =
        browser.js("const ys = document.getElementById('best-line').getAttribute('d').split(/[ML]/).filter(p => p)
           .map(p => Number(p.split(' ')[1]));
         const best = [...document.querySelectorAll('#progress circle[data-status=keep]')]
           .map(c => Number(c.getAttribute('cy')));
         return ys[ys.length - 1] === Math.max(...best)");
    assert_eq!(best_line, json!(true), "the running best ends at the best node (lowest value, lowest on the page)");
    browser.screenshot(&PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard-frontier.png"));
    let greedy_note = {
        browser.go(&alone.url());
        browser.wait_for("return document.querySelectorAll('#rows tbody tr').length === 6", "the accuracy rows again");
        browser.js("return [document.getElementById('tree-note').hidden, document.querySelectorAll('#progress line.edge').length]")
    };
    assert_eq!(greedy_note, json!([true, 0]), "a greedy session draws no tree");

    // Beside a val_bpb session: said, not drawn on one chart.
    let mixed = start(&[&accuracy, &root], "127.0.0.1");
    browser.go(&mixed.url());
    browser.wait_for("return !document.getElementById('compare-note').hidden", "the different metrics");
    let note = browser.js("return document.getElementById('compare-note').textContent");
    assert!(
        note.as_str().unwrap().contains("different metrics (accuracy, higher is better; val_bpb, lower is better)"),
        "{note}"
    );
    assert_eq!(browser.js("return document.querySelectorAll('#compare-chart path').length"), json!(0));
    let metrics = browser
        .js("return [...document.querySelectorAll('#compare-table tr')].slice(1).map(r => r.children[1].textContent)");
    assert_eq!(metrics, json!(["accuracy, higher is better", "val_bpb, lower is better"]));
}
