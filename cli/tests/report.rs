//! `autoresearch report` on a hand-written results.tsv: golden text and JSON, the picture, bad rows.

use std::path::Path;
use std::process::Command;

fn data(name: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(name)).unwrap()
}

/// Runs `autoresearch report ARGS` in a folder holding `results` as results.tsv: (stdout, stderr, folder).
fn report(results: &str, args: &[&str]) -> (String, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("results.tsv"), results).unwrap();
    let (stdout, stderr) = report_in(dir.path(), args);
    (stdout, stderr, dir)
}

/// Runs `autoresearch report ARGS` in `dir`: (stdout, stderr).
fn report_in(dir: &Path, args: &[&str]) -> (String, String) {
    let out =
        Command::new(env!("CARGO_BIN_EXE_autoresearch")).arg("report").args(args).current_dir(dir).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    (String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap())
}

#[test]
fn text_and_json_equal_the_golden_files() {
    let (text, _, _) = report(&data("results.tsv"), &["--no-plot"]);
    assert_eq!(text, data("report.txt"));
    let (json, _, _) = report(&data("results.tsv"), &["--json", "--no-plot"]);
    assert_eq!(json, data("report.json"));
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["totals"]["crash"], 3);
    assert_eq!(v["best"]["commit"], "f8a9b0c");
}

#[test]
fn the_picture_is_written_at_its_size() {
    let (_, stderr, dir) = report(&data("results.tsv"), &[]);
    let png = std::fs::read(dir.path().join("progress.png")).unwrap();
    assert!(stderr.contains("progress.png"));
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let width = u32::from_be_bytes(png[16..20].try_into().unwrap());
    let height = u32::from_be_bytes(png[20..24].try_into().unwrap());
    assert_eq!((width, height), autoresearch_report::plot::PLOT_SIZE);
    assert!(png.len() > 20_000, "a picture with content, not a blank page: {} bytes", png.len());
}

#[test]
fn bad_rows_are_named_and_skipped_and_the_original_format_reads() {
    let original = "commit\tval_bpb\tmemory_gb\tstatus\tdescription\n\
                    a1b2c3d\t0.997900\t44.0\tkeep\tbaseline\n\
                    b2c3d4e\t0.993000\t44.0\tkeep\tbetter\n\
                    c3d4e5f\tfast\t44.0\tdiscard\tnot a number\n\
                    d4e5f6a\t0.990000\t44.0\tkept\tunknown status\n\
                    e5f6a7b\t0.995000\t44.0\n\
                    f6a7b8c\t0.000000\t0.0\tcrash\tOOM\n";
    let (text, stderr, dir) = report(original, &["--plot", "p.png"]);
    assert!(text.contains("results.tsv: 3 rows"), "{text}");
    assert!(text.contains("skipped line 4: val_bpb \"fast\" is not a number"), "{text}");
    assert!(text.contains("skipped line 5: unknown status \"kept\""), "{text}");
    assert!(text.contains("skipped line 6: 3 columns, expected 5, 11, 12 or 13"), "{text}");
    assert!(stderr.contains("line 4") && stderr.contains("(skipped)"));
    assert!(text.contains("improvement: 0.004900 (0.49%)"), "{text}");
    assert!(dir.path().join("p.png").metadata().unwrap().len() > 0);
}

#[test]
fn kept_gains_below_the_measured_noise_are_marked_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("results.tsv"), data("results.tsv")).unwrap();
    std::fs::create_dir(dir.path().join(".autoresearch")).unwrap();
    // σ = 0.0013, so 2σ = 0.0026: of the six kept gains, 0.0024 and 0.0012 are below it, 0.0026 is not.
    let noise = r#"{"h100/300": {"profile": "h100", "budget": 300.0, "commit": "a1b2c3d", "seeds": [43, 44, 45],
        "values": [0.9987, 1.0, 1.0013], "mean": 1.0, "std": 0.0013}}"#;
    std::fs::write(dir.path().join(".autoresearch/noise.json"), noise).unwrap();
    let run = |args: &[&str]| report_in(dir.path(), args).0;
    let text = run(&["--no-plot"]);
    assert!(text.contains("kept gains below the noise (2σ): 2 of 6"), "{text}");
    assert!(text.contains("  0.002400*  0.990800  e5f6a7b  window pattern SSL"), "{text}");
    assert!(text.contains("  0.001200*  0.984100  f2a3b4c"), "{text}");
    assert!(text.contains("  0.002600   0.977300  f8a9b0c"), "{text}");
    let json: serde_json::Value = serde_json::from_str(&run(&["--json", "--no-plot"])).unwrap();
    assert_eq!(json["gains_below_noise"], 2);
    let marked: Vec<&str> = json["top_improvements"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|g| g["below_noise"] == true)
        .map(|g| g["commit"].as_str().unwrap())
        .collect();
    assert_eq!(marked, ["e5f6a7b", "f2a3b4c"]);
    run(&[]);
    assert!(dir.path().join("progress.png").metadata().unwrap().len() > 20_000);
}

#[test]
fn several_sessions_are_compared_side_by_side() {
    let dir = tempfile::tempdir().unwrap();
    let full = data("results.tsv");
    // The second session: the first ten experiments of the first.
    let short: String = full.lines().take(11).map(|l| format!("{l}\n")).collect();
    std::fs::create_dir_all(dir.path().join("a")).unwrap();
    std::fs::create_dir_all(dir.path().join("b")).unwrap();
    std::fs::write(dir.path().join("a/results.tsv"), &full).unwrap();
    std::fs::write(dir.path().join("b/results.tsv"), &short).unwrap();
    let (text, stderr) = report_in(dir.path(), &["a/results.tsv", "b/results.tsv"]);
    assert!(text.starts_with("2 sessions"), "{text}");
    assert!(text.contains("20     7      41.2%  0.997900  0.977300    0.020600 (2.06%)"), "{text}");
    assert!(text.contains("10     4      50.0%  0.997900  0.985300    0.012600 (1.26%)"), "{text}");
    assert!(text.contains("lowest val_bpb: 0.977300 (a/results.tsv)"), "{text}");
    assert!(stderr.contains("comparison.png"));
    assert!(dir.path().join("comparison.png").metadata().unwrap().len() > 20_000);

    let (json, _) = report_in(dir.path(), &["a/results.tsv", "b/results.tsv", "--json", "--no-plot"]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let sessions = v["sessions"].as_array().unwrap();
    assert_eq!((sessions[0]["experiments"].as_u64(), sessions[1]["experiments"].as_u64()), (Some(20), Some(10)));
    let hours: f64 =
        full.lines().skip(1).map(|l| l.split('\t').nth(7).unwrap().parse::<f64>().unwrap()).sum::<f64>() / 3600.0;
    assert!((sessions[0]["hours"].as_f64().unwrap() - hours).abs() < 1e-9);
    assert!((sessions[0]["experiments_per_hour"].as_f64().unwrap() - 20.0 / hours).abs() < 1e-9);
    let curve: Vec<f64> =
        sessions[0]["best_so_far"].as_array().unwrap().iter().map(|b| b["val_bpb"].as_f64().unwrap()).collect();
    assert_eq!(curve.len(), 20);
    assert!(curve.windows(2).all(|w| w[1] <= w[0]), "the best so far never rises: {curve:?}");
    assert_eq!(*curve.last().unwrap(), 0.9773);
}

#[test]
fn a_session_run_by_workers_has_a_lane_each_and_its_hours_are_the_longest_lane() {
    let head = "commit\tval_bpb\tmemory_gb\tstatus\tdescription\tprofile\tbudget\tseconds\trun\trule\treason\tworker\n";
    let row = |c: &str, v: f64, st: &str, secs: f64, run: u32, w: usize| {
        format!("{c}\t{v:.6}\t1.0\t{st}\td{run}\tsmall\t60\t{secs}\t{run}\tlower\tr\t{w}\n")
    };
    let results = [
        head.to_string(),
        row("a000001", 1.000000, "keep", 900.0, 1, 1),
        row("a000002", 0.990000, "keep", 1800.0, 2, 2),
        row("a000003", 0.995000, "discard", 1800.0, 3, 1),
        row("a000004", 0.000000, "crash", 900.0, 4, 2),
        row("a000005", 0.980000, "keep", 900.0, 5, 1),
    ]
    .concat();
    let (text, _, dir) = report(&results, &["--no-plot"]);
    assert!(text.contains("workers:\n  worker  experiments  kept  crashed  hours  exp/hour\n"), "{text}");
    assert!(text.contains("       1            3     2        0   1.00       3.0\n"), "{text}");
    assert!(text.contains("       2            2     1        1   0.75       2.7\n"), "{text}");
    let (json, _, _) = report(&results, &["--json", "--no-plot"]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["workers"][1]["crashed"], 1);
    // Side by side with a lone session: the workers' session took as long as its longest lane (1 h, not the
    // 1.75 h its experiments add up to).
    let lone = [head.to_string(), row("b000001", 1.0, "keep", 1800.0, 1, 1).replace("\t1\n", "\t-\n")].concat();
    std::fs::write(dir.path().join("lone.tsv"), lone).unwrap();
    let (text, _) = report_in(dir.path(), &["results.tsv", "lone.tsv", "--json", "--no-plot"]);
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["sessions"][0]["hours"], 1.0);
    assert_eq!(v["sessions"][0]["experiments_per_hour"], 5.0);
    assert_eq!(v["sessions"][1]["hours"], 0.5);
}
