//! `autoresearch export`: a session's kept changes as a patch series that `git am` applies onto the session's
//! base (`state.json`'s `base`), one patch per kept experiment in the order they were kept (under the frontier
//! search, per kept experiment of the best node's lineage), each message holding
//! the experiment's description, its gain, the noise where measured, its run, the keep rule and its commit.
//!
//! Each patch goes from the kept state before it to its own (the kept commits' trees), not from its commit's
//! parent: a worker's kept commit may have grown from an older best, and the session branch then holds it
//! through a merge commit whose tree is its file (see [`crate::session::Session::keep`]); the series is linear
//! all the same. A keep row whose files equal the kept state before it (a re-measure of the best, or a baseline
//! of the base's own file) is no patch, but its value is the one later gains are measured from
//! ([`crate::tree::running_best`]). `git format-patch` writes the series from commits made for it with
//! `git commit-tree` (no branch moves), each dated when its run started.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::files::{result_file, EXPORT_DIR, META_FILE, RESULTS_FILE, RUNS_DIR, STATE_DIR, STATE_FILE};
use crate::git::Git;
use crate::metric::Metric;
use crate::results::{self, Row, Status};
use crate::rules::{mean_std, noise_for, NoiseEstimate};
use crate::state::{Settings, State};
use crate::tree::{self, lineage, Search};
use crate::RunMeta;

/// A keep row, with the session's best before it.
#[derive(Clone, Debug, PartialEq)]
pub struct Kept {
    pub row: Row,
    /// The running best before the row (None for the first keep) and the run of the keep that set it.
    pub before: Option<(f64, Option<u64>)>,
}

impl Kept {
    pub fn run(&self) -> Option<u64> {
        self.row.extra.as_ref().map(|e| e.run)
    }

    fn label(&self) -> String {
        self.run().map_or_else(|| format!("commit {}", self.row.commit), |r| format!("run {r}"))
    }
}

/// The keep rows of `rows` in the order they were kept, each with the best before it: the last keep before it
/// (greedy's best then; in a frontier session's lineage, its parent).
pub fn kept(rows: &[Row]) -> Vec<Kept> {
    let before = tree::judged_against(rows, Search::Greedy);
    rows.iter()
        .enumerate()
        .filter(|(_, r)| r.status == Status::Keep)
        .map(|(i, row)| Kept {
            row: row.clone(),
            before: before[i].map(|k| (rows[k].val_bpb, rows[k].extra.as_ref().map(|e| e.run))),
        })
        .collect()
}

/// The gain line: the value before and after, the difference, and the difference in sd where one is known.
pub fn gain_text(
    metric: &Metric,
    search: Search,
    before: Option<(f64, Option<u64>)>,
    after: f64,
    sd: Option<f64>,
) -> String {
    let name = &metric.name;
    let Some((before, run)) = before else {
        return format!("{name} {after:.6}: the session's first result, nothing before it to compare with");
    };
    let diff = after - before;
    let against = match (run, search) {
        (None, _) => String::new(),
        (Some(r), Search::Greedy) => format!(" (the best after run {r})"),
        (Some(r), Search::Frontier) => format!(" (its parent, run {r})"),
    };
    let gain = metric.goal.gain(after, before);
    let in_sd = sd.filter(|&s| s > 0.0).map_or_else(String::new, |s| format!(", {:.1} sd", gain / s));
    format!("{name} {before:.6}{against} → {after:.6}: {diff:+.6}{in_sd} ({})", metric.goal.phrase())
}

/// The noise line: this change's own spread where it ran with several seeds (`seeds`: value by seed), the
/// session's measured spread (noise.json) where there is one, or that none was measured; and the sd to read
/// the gain in (this change's own first).
pub fn noise_text(seeds: &[(u64, f64)], session: Option<&NoiseEstimate>, settings: &Settings) -> (String, Option<f64>) {
    let values: Vec<f64> = seeds.iter().map(|(_, v)| *v).collect();
    let own = mean_std(&values).map(|(_, sd)| {
        let list = seeds.iter().map(|(s, _)| s.to_string()).collect::<Vec<_>>().join(", ");
        (format!("± {sd:.6} (sd over {} seeds of this change: {list})", seeds.len()), sd)
    });
    let shared = session.map(|n| {
        let list = n.seeds.iter().map(u64::to_string).collect::<Vec<_>>().join(", ");
        let commit: String = n.commit.chars().take(7).collect();
        let what = format!(
            "± {:.6} (the session's seed-to-seed sd over {} seeds ({list}) of commit {commit}, noise.json)",
            n.std,
            n.values.len()
        );
        (what, n.std)
    });
    let one_seed = match seeds.len() {
        1 => "this change itself ran with one seed".to_string(),
        _ => "no per-seed results of this change in its run folder".to_string(),
    };
    match (own, shared) {
        (Some((own, sd)), Some((shared, _))) => (format!("noise: {own}; {shared}"), Some(sd)),
        (Some((own, sd)), None) => (format!("noise: {own}"), Some(sd)),
        (None, Some((shared, sd))) => (format!("noise: {shared}; {one_seed}"), Some(sd)),
        (None, None) => (
            format!(
                "noise: not measured ({one_seed}, and noise.json has no spread for profile {} at {} s)",
                settings.profile, settings.time_budget
            ),
            None,
        ),
    }
}

/// Where a kept commit stands in the session's history, for its patch's message.
pub struct History<'a> {
    /// The kept commit (full hash).
    pub commit: &'a str,
    /// The merge commit that brought it onto the session branch, where it did not fast-forward.
    pub merge: Option<&'a str>,
    /// The kept state before it, where its commit did not grow from that: that state's run (None: the base).
    pub not_grown_from: Option<Option<u64>>,
}

/// The patch's message: the description as its subject; the gain, noise, run, rule and commit in its body.
pub fn message(
    kept: &Kept,
    seeds: &[(u64, f64)],
    noise: Option<&NoiseEstimate>,
    settings: &Settings,
    history: &History,
) -> String {
    let row = &kept.row;
    let (noise, sd) = noise_text(seeds, noise, settings);
    let mut lines =
        vec![format!("gain: {}", gain_text(&settings.metric, settings.search, kept.before, row.val_bpb, sd)), noise];
    let session = format!("session {}, profile {}, {} s per run", settings.tag, settings.profile, settings.time_budget);
    match &row.extra {
        Some(e) => {
            let worker = e.worker.map_or_else(String::new, |k| format!(" (worker {k})"));
            lines.push(format!("run: {}{worker} of {session}; its files: {STATE_DIR}/{RUNS_DIR}/{}/", e.run, e.run));
            lines.push(format!("keep rule: {}: {}", e.rule, e.reason));
        }
        None => lines.push(format!("run: not recorded (results.tsv in the original's five columns), {session}")),
    }
    let merge = history.merge.map_or_else(String::new, |m| format!(", brought onto it by merge {m}"));
    lines.push(format!("kept as: commit {} on branch {}{merge}", history.commit, settings.branch));
    if let Some(previous) = history.not_grown_from {
        let previous = previous.map_or_else(|| "the session's base".to_string(), |r| format!("run {r}'s kept state"));
        lines.push(format!(
            "note: this commit did not grow from {previous}, the kept state before it: this patch goes from that \
             state to this one's, so it may also take back parts of the patches before it"
        ));
    }
    let subject = if row.description.trim().is_empty() { "(no description)" } else { row.description.trim() };
    format!("{subject}\n\n{}\n", lines.join("\n"))
}

/// What an export wrote.
pub struct Exported {
    pub dir: PathBuf,
    /// The session's base, onto which the series applies.
    pub base: String,
    /// The patch files, in order.
    pub patches: Vec<PathBuf>,
    /// One line per keep row: its patch, or why it has none.
    pub lines: Vec<String>,
    /// The patch files of an earlier export that were removed first (`force`).
    pub replaced: Vec<PathBuf>,
}

/// Writes the kept changes of the session at `root` as a patch series into `out` (default
/// `.autoresearch/export/<tag>/`); a folder that holds patches already is refused unless `force`.
pub fn export(root: &Path, out: Option<&Path>, force: bool) -> Result<Exported> {
    let dir = root.join(STATE_DIR);
    let state = State::load(&dir)?;
    let settings = &state.settings;
    let results_path = root.join(RESULTS_FILE);
    let file = results::read(&results_path)?;
    if let Some((line, why)) = file.bad.first() {
        bail!(
            "{} line {line}: {why}: fix or remove that row first (a keep there would be missing from the series)",
            results_path.display()
        );
    }
    let git = Git::new(root);
    let base = git.exec(&["rev-parse", "--verify", "--quiet", &format!("{}^{{commit}}", settings.base)]).map_or_else(
        |_| bail!("{}: the session's base {} is not in git any more", dir.join(STATE_FILE).display(), settings.base),
        |c| Ok(c.trim().to_string()),
    )?;
    let noise = noise_for(&dir, &settings.profile, settings.time_budget)?;
    let merges = merges(&git, &base, &settings.branch)?;
    let tree = |commit: &str| -> Result<String> {
        Ok(git.exec(&["rev-parse", &format!("{commit}^{{tree}}")])?.trim().to_string())
    };
    // The kept state so far: its commit and the run that brought its files (None: the base's).
    let (mut previous, mut previous_run) = (base.clone(), None);
    let mut tip = base.clone();
    // One line per keep row, with the number of its patch where it has one.
    let mut lines: Vec<(Option<usize>, String)> = Vec::new();
    let mut count = 0;
    // Under the frontier search the series is the best node's lineage (the session branch), not every keep.
    let rows = match (settings.search, &state.best) {
        (Search::Frontier, Some(best)) => lineage(&file.rows, best.run).into_iter().cloned().collect(),
        _ => file.rows.clone(),
    };
    for kept in kept(&rows) {
        let meta = kept.run().and_then(|run| read_meta(&dir, run));
        let commit = resolve(&git, &kept, meta.as_ref(), &results_path)?;
        let description = &kept.row.description;
        if tree(&commit)? == tree(&previous)? {
            let line = format!(
                "{}: {description}: no change to export (the same files as the kept state before it); its \
                 {} {:.6} is what later gains are measured from",
                kept.label(),
                settings.metric.name,
                kept.row.val_bpb
            );
            lines.push((None, line));
        } else {
            let grew = git.ok(&["merge-base", "--is-ancestor", &previous, &commit])?;
            let history = History {
                commit: &commit,
                merge: merges.get(&commit).map(String::as_str),
                not_grown_from: (!grew).then_some(previous_run),
            };
            let seeds = kept.run().map(|run| seed_values(&dir, run)).unwrap_or_default();
            let text = message(&kept, &seeds, noise.as_ref(), settings, &history);
            let date = meta.as_ref().map(|m| m.started.as_str()).filter(|d| !d.is_empty());
            tip = git.commit_tree(&tree(&commit)?, &tip, &text, date)?;
            let gain = gain_text(&settings.metric, settings.search, kept.before, kept.row.val_bpb, None);
            lines.push((Some(count), format!("{}: {description}: {gain}", kept.label())));
            count += 1;
            (previous, previous_run) = (commit, kept.run());
        }
    }
    if count == 0 {
        bail!("{}: no kept experiment besides the baseline: nothing to export", results_path.display());
    }
    let out = match out {
        Some(out) if out.is_relative() => std::env::current_dir()?.join(out),
        Some(out) => out.to_path_buf(),
        None => dir.join(EXPORT_DIR).join(&settings.tag),
    };
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let earlier = patch_files(&out)?;
    if !earlier.is_empty() && !force {
        bail!(
            "{} holds {} patch files already ({}, ...): give --force to replace them, or --out another folder",
            out.display(),
            earlier.len(),
            earlier[0].display()
        );
    }
    for path in &earlier {
        std::fs::remove_file(path).with_context(|| format!("removing {}", path.display()))?;
    }
    let out_text = out.to_str().with_context(|| format!("{}: not a UTF-8 path", out.display()))?;
    let range = format!("{base}..{tip}");
    let written = git.exec(&[
        "format-patch",
        "--zero-commit",
        "--numbered",
        "--no-signature",
        "--output-directory",
        out_text,
        &range,
    ])?;
    let patches: Vec<PathBuf> = written.lines().map(PathBuf::from).collect();
    if patches.len() != count {
        bail!("git format-patch wrote {} patches for {count} kept changes: {written}", patches.len());
    }
    let lines = lines
        .into_iter()
        .map(|(k, line)| match k {
            Some(k) => format!("{}: {line}", patches[k].display()),
            None => line,
        })
        .collect();
    Ok(Exported { dir: out, base, patches, lines, replaced: earlier })
}

fn read_meta(dir: &Path, run: u64) -> Option<RunMeta> {
    serde_json::from_slice(&std::fs::read(dir.join(RUNS_DIR).join(run.to_string()).join(META_FILE)).ok()?).ok()
}

/// The kept commit's full hash: its run folder's where that agrees with the row, else the row's; an error
/// naming results.tsv where git does not have it.
fn resolve(git: &Git, kept: &Kept, meta: Option<&RunMeta>, results_path: &Path) -> Result<String> {
    let short = &kept.row.commit;
    let candidate = meta.and_then(|m| m.commit.as_deref()).filter(|c| c.starts_with(short.as_str())).unwrap_or(short);
    match git.exec(&["rev-parse", "--verify", "--quiet", &format!("{candidate}^{{commit}}")]) {
        Ok(full) => Ok(full.trim().to_string()),
        Err(_) => bail!(
            "{}: the keep row of {} ({}) names commit {short}, which git no longer has (a deleted branch, a \
             rewritten history?): nothing exported",
            results_path.display(),
            kept.label(),
            kept.row.description
        ),
    }
}

/// The session branch's merge commits by the kept commit each brought onto it (its second parent).
fn merges(git: &Git, base: &str, branch: &str) -> Result<HashMap<String, String>> {
    if !git.ok(&["rev-parse", "--verify", "--quiet", &format!("refs/heads/{branch}")])? {
        return Ok(HashMap::new());
    }
    let text = git.exec(&["rev-list", "--merges", "--parents", &format!("{base}..{branch}")])?;
    Ok(text
        .lines()
        .filter_map(|line| {
            let hashes: Vec<&str> = line.split_whitespace().collect();
            Some((hashes.get(2)?.to_string(), hashes[0].to_string()))
        })
        .collect())
}

/// The value of each training of `run`, by seed, from its folder's results (`result-<seed>.json`).
fn seed_values(dir: &Path, run: u64) -> Vec<(u64, f64)> {
    let folder = dir.join(RUNS_DIR).join(run.to_string());
    let Ok(entries) = std::fs::read_dir(&folder) else { return Vec::new() };
    let mut values: Vec<(u64, f64)> = entries
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            let seed: u64 = name.strip_prefix("result-")?.strip_suffix(".json")?.parse().ok()?;
            let result: autoresearch_harness::handover::EvalResult =
                serde_json::from_slice(&std::fs::read(folder.join(result_file(seed))).ok()?).ok()?;
            Some((seed, result.val_bpb))
        })
        .collect();
    values.sort_by_key(|(seed, _)| *seed);
    values
}

/// The `.patch` files in `dir`.
fn patch_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "patch") && p.is_file())
        .collect();
    found.sort();
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::Extra;
    use crate::trainer::DeviceChoice;

    fn row(run: u64, status: Status, val_bpb: f64, description: &str) -> Row {
        Row {
            commit: format!("c{run:06}"),
            val_bpb,
            memory_gb: 1.0,
            status,
            description: description.into(),
            extra: Some(Extra {
                profile: "small".into(),
                budget: 60.0,
                seconds: 70.0,
                run,
                rule: "confirm 2, 2σ = 0.002400 (σ from 3 seeds)".into(),
                reason: "gain ... > margin".into(),
                worker: Some(2),
                parent: None,
            }),
        }
    }

    fn settings() -> Settings {
        Settings {
            tag: "t".into(),
            branch: "autoresearch/t".into(),
            base: "b".repeat(40),
            profile: "small".into(),
            time_budget: 60.0,
            device: DeviceChoice::Cpu,
            rule: "margin".into(),
            metric: Default::default(),
            search: Default::default(),
        }
    }

    #[test]
    fn each_keep_is_measured_from_the_best_before_it_a_remeasure_included() {
        let rows = [
            row(1, Status::Keep, 1.0, "baseline"),
            row(2, Status::Discard, 1.1, "worse"),
            row(3, Status::Keep, 0.95, "better"),
            row(4, Status::Keep, 0.96, "re-measure of the best (run 3) over seeds 42, 43, 44: better"),
            row(4, Status::Rerun, 0.97, "rerun 1/2 (seed 43) of the best"),
            row(5, Status::Crash, 0.0, "boom"),
            row(6, Status::Keep, 0.93, "best yet"),
        ];
        let kept = kept(&rows);
        let summary: Vec<_> = kept.iter().map(|k| (k.run(), k.before)).collect();
        assert_eq!(
            summary,
            [
                (Some(1), None),
                (Some(3), Some((1.0, Some(1)))),
                (Some(4), Some((0.95, Some(3)))),
                (Some(6), Some((0.96, Some(4))))
            ]
        );
        assert_eq!(
            gain_text(&Metric::default(), Search::Greedy, kept[3].before, 0.93, Some(0.01)),
            "val_bpb 0.960000 (the best after run 4) → 0.930000: -0.030000, 3.0 sd (lower is better)"
        );
        assert_eq!(
            gain_text(&Metric::default(), Search::Greedy, None, 0.93, None),
            "val_bpb 0.930000: the session's first result, nothing before it to compare with"
        );
        assert_eq!(
            gain_text(&Metric::default(), Search::Frontier, kept[3].before, 0.93, None),
            "val_bpb 0.960000 (its parent, run 4) → 0.930000: -0.030000 (lower is better)"
        );
        // Where higher is better, a rise is the gain the sd counts.
        let accuracy = Metric { name: "accuracy".into(), goal: crate::metric::Goal::Higher };
        assert_eq!(
            gain_text(&accuracy, Search::Greedy, Some((0.90, None)), 0.93, Some(0.01)),
            "accuracy 0.900000 → 0.930000: +0.030000, 3.0 sd (higher is better)"
        );
    }

    #[test]
    fn the_noise_is_this_changes_own_spread_else_the_sessions_else_none_and_says_which() {
        let s = settings();
        let own = [(42, 0.93), (43, 0.94), (44, 0.95)];
        let session = NoiseEstimate::new("small", 60.0, &"a".repeat(40), vec![43, 44], vec![1.0, 1.002]).unwrap();
        let (text, sd) = noise_text(&own, Some(&session), &s);
        assert_eq!(
            text,
            "noise: ± 0.010000 (sd over 3 seeds of this change: 42, 43, 44); ± 0.001414 (the session's seed-to-seed \
             sd over 2 seeds (43, 44) of commit aaaaaaa, noise.json)"
        );
        assert!((sd.unwrap() - 0.01).abs() < 1e-12, "this change's own spread first");
        let (text, sd) = noise_text(&own[..1], Some(&session), &s);
        assert!(text.ends_with("noise.json); this change itself ran with one seed"), "{text}");
        assert_eq!(sd, Some(session.std), "else the session's");
        let (text, sd) = noise_text(&own[..1], None, &s);
        assert_eq!(
            text,
            "noise: not measured (this change itself ran with one seed, and noise.json has no spread for profile \
             small at 60 s)"
        );
        assert_eq!(sd, None);
    }

    #[test]
    fn a_message_holds_the_description_gain_noise_run_rule_and_commit() {
        let rows = [row(1, Status::Keep, 1.0, "baseline"), row(3, Status::Keep, 0.95, "learning rates up tenfold")];
        let kept = kept(&rows);
        let commit = "c".repeat(40);
        let history = History { commit: &commit, merge: Some("m1"), not_grown_from: Some(Some(1)) };
        let text = message(&kept[1], &[(42, 0.95)], None, &settings(), &history);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "learning rates up tenfold");
        assert_eq!(lines[1], "");
        assert_eq!(lines[2], "gain: val_bpb 1.000000 (the best after run 1) → 0.950000: -0.050000 (lower is better)");
        assert!(lines[3].starts_with("noise: not measured (this change itself ran with one seed"), "{text}");
        assert_eq!(
            lines[4],
            "run: 3 (worker 2) of session t, profile small, 60 s per run; its files: .autoresearch/runs/3/"
        );
        assert_eq!(lines[5], "keep rule: confirm 2, 2σ = 0.002400 (σ from 3 seeds): gain ... > margin");
        assert_eq!(lines[6], format!("kept as: commit {commit} on branch autoresearch/t, brought onto it by merge m1"));
        assert!(lines[7].starts_with("note: this commit did not grow from run 1's kept state"), "{text}");
    }
}
