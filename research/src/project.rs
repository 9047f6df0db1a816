//! What the loop researches: the built-in GPT (`train/train.rs`, built and trained by the harness), or a project
//! of the user's own, described by `autoresearch.toml` at the root of its git repository: the files the agent may
//! edit, the commands that set up, train, evaluate and check, the metric and which way is better, and what the
//! training may not read. [`TEMPLATE`] is the commented file `autoresearch init --project` writes.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use serde::Deserialize;

use crate::git::Git;
use crate::metric::{Goal, Metric};
use crate::TRAINING_FILE;

/// The project file, at the root of a project's repository.
pub const PROJECT_FILE: &str = "autoresearch.toml";

/// The profile name a project's session records (its noise estimates are kept under it).
pub const PROJECT_PROFILE: &str = "project";

/// What the loop researches.
#[derive(Clone, Debug)]
pub struct Project {
    pub editable: Editable,
    pub metric: Metric,
    /// The agent's instructions: relative to the root, or absolute.
    pub program: PathBuf,
    /// A project's commands; None for the built-in GPT.
    pub commands: Option<Commands>,
    /// How many bytes the editable files, compressed, may grow by over the session's start ([`growth_refusal`]).
    pub growth_limit: u64,
}

/// How many bytes the editable files, compressed, may grow by over the session's start where the project says
/// nothing (`editable_growth_kib`): room for a long rewrite in code (16 KiB of deflate is some 50 KiB of Rust or
/// Python), none for a model's weights pasted into the source, which would carry training from outside the budget.
pub const DEFAULT_GROWTH_LIMIT: u64 = 16 << 10;

/// A project's commands, each run by `sh -c` in the project's folder (a worker's worktree of it).
#[derive(Clone, Debug)]
pub struct Commands {
    pub setup: Option<Step>,
    pub train: Step,
    /// Seconds the training should take, given to it as `AUTORESEARCH_TIME_BUDGET`.
    pub budget: Option<f64>,
    /// The fixed evaluation that prints the metric; None: the training's own output holds it.
    pub evaluate: Option<Step>,
    pub checks: Vec<Step>,
    /// Paths the training and the checks may not read: relative to a worker's tree, or absolute.
    pub held_out: Vec<PathBuf>,
    pub network: bool,
    /// Paths the training may write besides its output folder: relative to a worker's tree, or absolute.
    pub writable: Vec<PathBuf>,
    /// The repository's git folder (the one its worktrees share): no command reads it, since every version of
    /// every file is there, held-out data and other workers' changes included.
    pub git_dir: PathBuf,
}

/// One command and the time it may take.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    pub name: String,
    pub command: String,
    pub timeout: Duration,
}

/// The files the agent may change: globs relative to the root.
#[derive(Clone, Debug)]
pub struct Editable {
    globs: Vec<String>,
    set: GlobSet,
}

impl Editable {
    pub fn new(globs: &[String]) -> Result<Editable> {
        let mut set = GlobSetBuilder::new();
        for g in globs {
            // `*` stays within a folder, as in a shell; `**` crosses them.
            let glob =
                GlobBuilder::new(g).literal_separator(true).build().with_context(|| format!("editable glob {g:?}"))?;
            set.add(glob);
        }
        Ok(Editable { globs: globs.to_vec(), set: set.build()? })
    }

    pub fn matches(&self, path: &str) -> bool {
        self.set.is_match(path)
    }

    /// The globs, for messages: `train/train.rs`, or `a.py`, `lib/*.py`.
    pub fn describe(&self) -> String {
        self.globs.iter().map(|g| format!("`{g}`")).collect::<Vec<_>>().join(", ")
    }

    /// The editable files in the tree of `git` (tracked, or new and not ignored), sorted.
    pub fn files(&self, git: &Git) -> Result<Vec<String>> {
        let listed = git.exec(&["ls-files", "--cached", "--others", "--exclude-standard"])?;
        let mut files: Vec<String> =
            listed.lines().filter(|f| self.matches(f) && git.root.join(f).is_file()).map(str::to_string).collect();
        files.sort();
        files.dedup();
        Ok(files)
    }
}

/// Why the editable files of `now` cannot run, where they hold more than `project` allows: compressed (deflate),
/// more than its [`Project::growth_limit`] over what they were at the session's start (`base`, in `git`). What
/// the files hold bounds what an agent could paste into them: weights it trained outside the budget, or those of
/// a kept run's checkpoint (red team 11 kept a file that started from them).
pub fn growth_refusal(project: &Project, git: &Git, base: &str, now: &Snapshot) -> Result<Option<String>> {
    let before = Snapshot::at_commit(&project.editable, git, base)?.compressed_size();
    let after = now.compressed_size();
    if after <= before + project.growth_limit {
        return Ok(None);
    }
    Ok(Some(format!(
        "refused: the editable files ({}) hold {after} bytes compressed (deflate), {before} at the session's start \
         ({}): they may grow by {} bytes ({} KiB) at most, and are {} bytes over. Weights pasted into the source \
         would carry training from outside the budget; write the change as code{}",
        project.editable.describe(),
        &base[..7.min(base.len())],
        project.growth_limit,
        project.growth_limit / 1024,
        after - before - project.growth_limit,
        if project.commands.is_some() { " (the project's `editable_growth_kib` sets the limit)" } else { "" }
    )))
}

/// One editable file: its path in the tree, its content and its permission bits.
#[derive(Clone, Debug, PartialEq)]
pub struct EditedFile {
    pub path: String,
    pub content: Vec<u8>,
    pub mode: u32,
}

/// The editable files at one moment.
#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot(pub Vec<EditedFile>);

/// Where a run folder (or the stash) keeps a snapshot's files, beneath their paths.
pub const SNAPSHOT_DIR: &str = "edited";

fn mode(path: &Path) -> Result<u32> {
    use std::os::unix::fs::PermissionsExt;
    Ok(std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?.permissions().mode() & 0o7777)
}

fn write_with_mode(path: &Path, content: &[u8], mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    autoresearch_harness::fsutil::write_atomic(path, content)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", path.display()))
}

impl Snapshot {
    /// The editable files as the commit `commit` holds them (its blobs: not a submodule), with their modes.
    pub fn at_commit(editable: &Editable, git: &Git, commit: &str) -> Result<Snapshot> {
        let listed = git.exec(&["ls-tree", "-r", "-z", commit])?;
        let mut files = Vec::new();
        // Each entry: "<mode> <type> <object>\t<path>".
        for entry in listed.split('\0').filter(|e| !e.is_empty()) {
            let Some((meta, path)) = entry.split_once('\t') else { continue };
            let fields: Vec<&str> = meta.split(' ').collect();
            let (Some(mode), Some(&"blob"), Some(object)) = (fields.first(), fields.get(1), fields.get(2)) else {
                continue;
            };
            if editable.matches(path) {
                let content = git.exec_bytes(&["cat-file", "blob", object])?;
                let mode = u32::from_str_radix(mode, 8).with_context(|| format!("the mode of {path} at {commit}"))?;
                files.push(EditedFile { path: path.to_string(), content, mode: mode & 0o7777 });
            }
        }
        Ok(Snapshot(files))
    }

    /// The files' paths and contents compressed with deflate, in bytes: about what they hold.
    pub fn compressed_size(&self) -> u64 {
        use std::io::Write;
        let mut encoder = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        for f in &self.0 {
            encoder.write_all(f.path.as_bytes()).and_then(|_| encoder.write_all(&f.content)).expect("into memory");
        }
        encoder.finish().expect("into memory").len() as u64
    }

    pub fn take(editable: &Editable, git: &Git) -> Result<Snapshot> {
        let mut files = Vec::new();
        for path in editable.files(git)? {
            let full = git.root.join(&path);
            let content = std::fs::read(&full).with_context(|| format!("reading {path}"))?;
            files.push(EditedFile { mode: mode(&full)?, path, content });
        }
        Ok(Snapshot(files))
    }

    /// Recognises an identical set of files: the hash of their paths and contents; the built-in's training file
    /// alone, of its content, as sessions before projects recorded it.
    pub fn hash(&self) -> String {
        match self.0.as_slice() {
            [only] if only.path == TRAINING_FILE => crate::file_hash(&only.content),
            files => {
                let mut bytes = Vec::new();
                for f in files {
                    bytes.extend(f.path.as_bytes());
                    bytes.push(0);
                    bytes.extend((f.content.len() as u64).to_le_bytes());
                    bytes.extend(&f.content);
                }
                crate::file_hash(&bytes)
            }
        }
    }

    /// Writes the files beneath `dir/edited/`, whole or not at all (into a temporary folder, then renamed): a
    /// stash that recovery restores is never half written.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let base = dir.join(SNAPSHOT_DIR);
        let fresh = dir.join(format!("{SNAPSHOT_DIR}.tmp"));
        for old in [&fresh, &base] {
            if old.exists() {
                std::fs::remove_dir_all(old).with_context(|| format!("removing {}", old.display()))?;
            }
        }
        for f in &self.0 {
            let to = fresh.join(&f.path);
            std::fs::create_dir_all(to.parent().expect("beneath the folder"))?;
            write_with_mode(&to, &f.content, f.mode)?;
        }
        std::fs::create_dir_all(&fresh)?;
        std::fs::rename(&fresh, &base).with_context(|| format!("renaming {} to {}", fresh.display(), base.display()))
    }

    /// What [`Snapshot::save`] wrote in `dir`; None where nothing was.
    pub fn load(dir: &Path) -> Result<Option<Snapshot>> {
        let base = dir.join(SNAPSHOT_DIR);
        if !base.is_dir() {
            return Ok(None);
        }
        let mut files = Vec::new();
        let mut folders = vec![base.clone()];
        while let Some(folder) = folders.pop() {
            for entry in std::fs::read_dir(&folder).with_context(|| format!("reading {}", folder.display()))? {
                let full = entry?.path();
                if full.is_dir() {
                    folders.push(full);
                } else {
                    let path = full.strip_prefix(&base).expect("beneath base").to_string_lossy().into_owned();
                    let content = std::fs::read(&full).with_context(|| format!("reading {}", full.display()))?;
                    files.push(EditedFile { path, content, mode: mode(&full)? });
                }
            }
        }
        files.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(Some(Snapshot(files)))
    }

    /// Makes the tree's editable files these (content and mode): each written, and an editable file the
    /// snapshot lacks removed.
    pub fn restore(&self, editable: &Editable, git: &Git) -> Result<()> {
        for f in editable.files(git)? {
            if !self.0.iter().any(|s| s.path == f) {
                std::fs::remove_file(git.root.join(&f)).with_context(|| format!("removing {f}"))?;
            }
        }
        for f in &self.0 {
            let to = git.root.join(&f.path);
            std::fs::create_dir_all(to.parent().unwrap_or(&git.root))?;
            write_with_mode(&to, &f.content, f.mode)?;
        }
        Ok(())
    }
}

/// The repository the research commands work in: the nearest folder upwards from the current one that holds an
/// `autoresearch.toml` or the built-in's `train/train.rs`.
pub fn project_root() -> Result<PathBuf> {
    let cwd = std::env::current_dir().context("reading the current folder")?;
    cwd.ancestors()
        .find(|d| d.join(PROJECT_FILE).is_file() || (d.join(TRAINING_FILE).is_file() && d.join("Cargo.toml").is_file()))
        .map(Path::to_path_buf)
        .with_context(|| {
            format!(
                "{} is in no project: no {PROJECT_FILE} (see `autoresearch init --project`) nor an autoresearch \
                 repository's {TRAINING_FILE} above it",
                cwd.display()
            )
        })
}

impl Project {
    /// The built-in GPT: `train/train.rs`, val_bpb, lower is better, the repository's program.md.
    pub fn builtin() -> Project {
        Project {
            editable: Editable::new(&[TRAINING_FILE.to_string()]).expect("a plain path"),
            metric: Metric::default(),
            program: PathBuf::from("program.md"),
            commands: None,
            growth_limit: DEFAULT_GROWTH_LIMIT,
        }
    }

    /// The project at `root`: its `autoresearch.toml`, checked against the tree; else the built-in GPT.
    pub fn load(root: &Path) -> Result<Project> {
        let path = root.join(PROJECT_FILE);
        if !path.is_file() {
            return Ok(Project::builtin());
        }
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        Project::parse(&text, root).with_context(|| format!("{}", path.display()))
    }

    /// The project as the commit `commit` describes it (a session's, from its base: an edit of the file in the tree
    /// is a change like any other, never a new project).
    pub fn at_commit(root: &Path, commit: &str) -> Result<Project> {
        let git = Git::new(root);
        if !git.ok(&["cat-file", "-e", &format!("{commit}:{PROJECT_FILE}")])? {
            return Ok(Project::builtin());
        }
        let text = git.exec(&["show", &format!("{commit}:{PROJECT_FILE}")])?;
        Project::parse(&text, root).with_context(|| format!("{PROJECT_FILE} at {}", &commit[..7.min(commit.len())]))
    }

    /// Parses a project file's text and checks it against the tree at `root`, which must be the top of its git
    /// repository (git names changed files from there).
    pub fn parse(text: &str, root: &Path) -> Result<Project> {
        let file: ProjectFile = toml::from_str(text)?;
        let top = Git::new(root)
            .exec(&["rev-parse", "--show-toplevel"])
            .context("the project must be in a git repository")?;
        let same = |a: &Path, b: &Path| a.canonicalize().ok().zip(b.canonicalize().ok()).is_some_and(|(a, b)| a == b);
        if !same(Path::new(top.trim()), root) {
            bail!(
                "{PROJECT_FILE} must be at the top of its git repository ({}), not in {}: make the project a \
                 repository of its own (`git init` there)",
                top.trim(),
                root.display()
            );
        }
        file.check(root)
    }

    /// The hard limit of one training where the command line gives none: the built-in's
    /// ([`crate::experiment::default_timeout`]); a project's steps' own limits, plus a minute.
    pub fn default_timeout(&self, budget: f64, profile: &str) -> Duration {
        match &self.commands {
            None => crate::experiment::default_timeout(budget, profile),
            Some(c) => {
                c.train.timeout + c.evaluate.as_ref().map_or(Duration::ZERO, |e| e.timeout) + Duration::from_secs(60)
            }
        }
    }

    /// The editable files that differ from `commit` in the tree of `git` (changed, new or removed), and the other
    /// changed files, which no experiment may have.
    pub fn changes(&self, git: &Git, commit: &str) -> Result<(Vec<String>, Vec<String>)> {
        Ok(git.changed_files(commit)?.into_iter().partition(|f| self.editable.matches(f)))
    }
}

/// Finds the metric in a command's output: exactly one line `name: value` (the original's summary lines) or
/// `METRIC name=value`, with a finite number. Err says why not, naming `source`.
pub fn read_metric(output: &str, name: &str, source: &str) -> std::result::Result<f64, String> {
    let mut found = Vec::new();
    // Lines that name the metric with something else than a number after it, for the error.
    let mut unreadable = Vec::new();
    for (n, line) in output.lines().enumerate() {
        let line = line.trim();
        let value = if let Some(rest) = line.strip_prefix("METRIC ") {
            rest.trim().strip_prefix(name).and_then(|r| r.trim_start().strip_prefix('='))
        } else {
            line.strip_prefix(name).and_then(|r| r.strip_prefix(':'))
        };
        if let Some(value) = value {
            match value.trim().parse::<f64>() {
                Ok(v) => found.push((n + 1, v)),
                Err(_) => unreadable.push(format!("line {}: `{line}`", n + 1)),
            }
        }
    }
    match found.as_slice() {
        [] if !unreadable.is_empty() => Err(format!(
            "the metric `{name}` never appeared with a number in the output of {source} ({} has no number after \
             the name)",
            unreadable.join(", ")
        )),
        [] => Err(format!(
            "the metric `{name}` never appeared in the output of {source} (expected a line `{name}: VALUE` or \
             `METRIC {name}=VALUE`)"
        )),
        [(_, v)] if !v.is_finite() => Err(format!("the metric `{name}` is {v} in the output of {source}")),
        [(_, v)] => Ok(*v),
        lines => Err(format!(
            "the metric `{name}` appeared {} times in the output of {source} (lines {}): it must appear once",
            lines.len(),
            lines.iter().map(|(n, _)| n.to_string()).collect::<Vec<_>>().join(", ")
        )),
    }
}

/// The project file as written; every field is checked in [`ProjectFile::check`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProjectFile {
    editable: Vec<String>,
    editable_growth_kib: Option<u64>,
    program: Option<String>,
    setup: Option<StepFile>,
    train: TrainFile,
    metric: MetricFile,
    #[serde(default)]
    check: Vec<CheckFile>,
    #[serde(default)]
    sandbox: SandboxFile,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StepFile {
    command: String,
    timeout: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TrainFile {
    command: String,
    timeout: f64,
    budget: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MetricFile {
    name: String,
    goal: Goal,
    command: Option<String>,
    timeout: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckFile {
    name: String,
    command: String,
    timeout: Option<f64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct SandboxFile {
    #[serde(default)]
    held_out: Vec<String>,
    #[serde(default)]
    network: bool,
    #[serde(default)]
    writable: Vec<String>,
}

/// Default time limits of the steps that have one.
const SETUP_TIMEOUT: f64 = 600.0;
const EVALUATE_TIMEOUT: f64 = 600.0;
const CHECK_TIMEOUT: f64 = 600.0;

/// A path as written, `~/` standing for the home folder.
fn home(path: &str) -> Result<PathBuf> {
    match path.strip_prefix("~/") {
        Some(rest) => {
            Ok(PathBuf::from(std::env::var_os("HOME").context("`~` in a path, but HOME is not set")?).join(rest))
        }
        None => Ok(PathBuf::from(path)),
    }
}

fn seconds(field: &str, value: f64) -> Result<Duration> {
    if !value.is_finite() || value <= 0.0 {
        bail!("`{field}` must be a positive number of seconds, not {value}");
    }
    Ok(Duration::from_secs_f64(value))
}

fn command(field: &str, text: String) -> Result<String> {
    if text.trim().is_empty() {
        bail!("`{field}` is empty");
    }
    Ok(text)
}

impl ProjectFile {
    fn check(self, root: &Path) -> Result<Project> {
        if self.editable.is_empty() {
            bail!("`editable` lists no files: name the files the agent may change");
        }
        let editable = Editable::new(&self.editable).context("`editable`")?;
        let git = Git::new(root);
        let git_dir = PathBuf::from(git.exec(&["rev-parse", "--path-format=absolute", "--git-common-dir"])?.trim());
        let listed = git.exec(&["ls-files", "--cached", "--others", "--exclude-standard"])?;
        for glob in &self.editable {
            let one = Editable::new(std::slice::from_ref(glob))?;
            if !listed.lines().any(|f| one.matches(f)) {
                bail!("`editable`: {glob:?} matches no file in {}", root.display());
            }
        }
        if editable.matches(PROJECT_FILE) {
            bail!("`editable` matches {PROJECT_FILE} itself: the project file is the harness's, not the agent's");
        }
        let name = self.metric.name.trim().to_string();
        if name.is_empty() || name.contains(|c: char| c.is_whitespace() || c == '=' || c == ':') {
            bail!("`metric.name` {:?} must be one word, without spaces, `=` or `:`", self.metric.name);
        }
        let inside = |field: &str, p: &str| -> Result<PathBuf> {
            let path = root.join(home(p)?);
            if !path.exists() {
                bail!("`{field}`: {p:?} does not exist (in {})", root.display());
            }
            Ok(path)
        };
        // Relative paths stay relative: each worker's tree has its own copy.
        let mut held_out = Vec::new();
        for p in &self.sandbox.held_out {
            let path = inside("sandbox.held_out", p)?;
            if path.strip_prefix(root).is_ok_and(|rel| editable.matches(&rel.to_string_lossy())) {
                bail!("`sandbox.held_out`: {p:?} is editable too");
            }
            held_out.push(home(p)?);
        }
        let writable = self.sandbox.writable.iter().map(|p| home(p)).collect::<Result<Vec<_>>>()?;
        let step = |name: &str, field: &str, text: String, timeout: Option<f64>, default: f64| -> Result<Step> {
            Ok(Step {
                name: name.to_string(),
                command: command(&format!("{field}.command"), text)?,
                timeout: seconds(&format!("{field}.timeout"), timeout.unwrap_or(default))?,
            })
        };
        let setup = self.setup.map(|s| step("setup", "setup", s.command, s.timeout, SETUP_TIMEOUT)).transpose()?;
        let train = step("training", "train", self.train.command, Some(self.train.timeout), 0.0)?;
        if let Some(b) = self.train.budget {
            seconds("train.budget", b)?;
        }
        let evaluate = match self.metric.command {
            Some(c) => Some(step("evaluation", "metric", c, self.metric.timeout, EVALUATE_TIMEOUT)?),
            None if self.metric.timeout.is_some() => {
                bail!("`metric.timeout` is set but `metric.command` is not: the timeout is the evaluation command's")
            }
            None => None,
        };
        // The metric's own command runs fixed code: a file it names that the agent may edit would let the agent
        // print the number (a check likewise: pass itself). Names in the command line, as far as they show.
        let runs_editable = |field: &str, line: &str| -> Result<()> {
            let words = line.split(|c: char| c.is_whitespace() || "'\";&|()<>=".contains(c));
            match words.map(|w| w.trim_start_matches("./")).find(|w| !w.is_empty() && editable.matches(w)) {
                Some(file) => bail!(
                    "`{field}` runs {file}, which is editable: the agent could change what it prints; take it out of \
                     `editable`"
                ),
                None => Ok(()),
            }
        };
        if let Some(e) = &evaluate {
            runs_editable("metric.command", &e.command)?;
        }
        let mut checks = Vec::new();
        for c in self.check {
            runs_editable("check.command", &c.command)?;
            if c.name.trim().is_empty() {
                bail!("`check.name` is empty");
            }
            if checks.iter().any(|s: &Step| s.name == c.name) {
                bail!("two checks are named {:?}", c.name);
            }
            checks.push(step(&c.name, "check", c.command, c.timeout, CHECK_TIMEOUT)?);
        }
        let program = inside("program", &self.program.unwrap_or_else(|| "program.md".into()))?;
        Ok(Project {
            editable,
            metric: Metric { name, goal: self.metric.goal },
            program,
            commands: Some(Commands {
                setup,
                train,
                budget: self.train.budget,
                evaluate,
                checks,
                held_out,
                network: self.sandbox.network,
                writable,
                git_dir,
            }),
            growth_limit: self.editable_growth_kib.map_or(DEFAULT_GROWTH_LIMIT, |kib| kib.saturating_mul(1024)),
        })
    }
}

/// The project file `autoresearch init --project` writes, every field explained.
pub const TEMPLATE: &str = r#"# autoresearch.toml: what `autoresearch` researches in this repository.
# The loop lets an agent change the `editable` files, runs `train` (and `metric.command`), reads the metric, and
# keeps the change if the metric got better, else resets it. Paths are relative to this file's folder, which must
# be the top of a git repository; the session reads this file from the commit it started at (a change to it
# takes a new session). Every command runs with `sh -c` in that folder (a worker's worktree of it, which holds the
# tracked files only). The training, the evaluation and the checks get AUTORESEARCH_SEED (use it for all
# randomness), AUTORESEARCH_OUTPUT (a fresh folder: the training writes its model there; the evaluation and the
# checks read it there), TMPDIR (private, removed after) and, where set, AUTORESEARCH_TIME_BUDGET.

# The files the agent may change (globs: `*` within a folder, `**` across folders). Any other change is refused.
editable = ["train.py"]
# Optional: how many KiB the editable files, compressed (deflate), may grow by over the session's start; a change
# past it is refused (weights pasted into the source would carry training from outside the budget).
# editable_growth_kib = 16

# The agent's instructions (`autoresearch loop` builds its prompt from them).
program = "program.md"

# Optional: a build or setup run before each experiment's training; a failure is a crash with its output (in
# `loop`, sent back to the agent to fix first). What it writes in the project's folder must be ignored by git
# (.gitignore), or the next experiment is refused as a change outside `editable`.
# [setup]
# command = "python3 -c 'import ast; ast.parse(open(\"train.py\").read())'"
# timeout = 600

[train]
# The training (or the benchmark). It may write only AUTORESEARCH_OUTPUT, TMPDIR and `sandbox.writable`.
command = "python3 train.py"
# Seconds after which the harness stops it and every process it started: the experiment is a crash.
timeout = 600
# Optional: the seconds it should train, given to it as AUTORESEARCH_TIME_BUDGET.
# budget = 300

[metric]
# The metric, as the output prints it: a line `val_loss: 1.2345` or `METRIC val_loss=1.2345`, exactly once.
name = "val_loss"
# "lower" or "higher" is better.
goal = "lower"
# Preferred: a fixed evaluation run after the training, from whose output the metric is read (a file it names
# may not be editable: the agent's code could print the number). Without it the metric is read from the
# training's own output, which the agent's code writes.
command = "python3 evaluate.py"
timeout = 600

# Optional, any number: commands that must succeed before a change is kept (tests, a correctness check).
# [[check]]
# name = "tests"
# command = "python3 -m unittest"
# timeout = 600

[sandbox]
# Paths the training, the setup and the checks may not read (held-out data); the evaluation may. Enforced with
# Landlock where the kernel has it (the log says where it does not).
held_out = []
# Whether the training, the evaluation and the checks may use the network (the setup always may: a build may
# fetch).
network = false
# Paths the training may write besides its output folder (e.g. a package manager's cache; `~/` is the home
# folder, other relative paths are in the project's folder).
writable = []
"#;

/// The program.md `autoresearch init --project` writes where the project has none.
pub const PROGRAM_TEMPLATE: &str = "# Instructions for the research agent

You are improving this project, one experiment at a time. Each time you are called:

1. Read the current state at the end of this prompt: the best result, every experiment so far, your notes.
2. Make **one** change, to the editable files only (autoresearch.toml lists them; any other change is refused).
3. Write a one-line description of the change to the file the prompt names, and stop.

The harness then runs the training and the evaluation, reads the metric, and keeps your change only if the metric
got better; otherwise the files are reset to the best version. Prefer simple changes; a change that makes the
code much more complicated for a tiny gain is not worth it. Do not try to change how the metric is measured.
";

#[cfg(test)]
mod tests {
    use super::*;

    /// A git repository with `files` committed.
    fn repo(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let git = Git::new(dir.path());
        git.exec(&["init", "--quiet"]).unwrap();
        for (path, content) in files {
            let p = dir.path().join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, content).unwrap();
        }
        git.exec(&["add", "-A"]).unwrap();
        dir
    }

    const GOOD: &str = r#"
editable = ["train.py", "lib/*.py"]
[train]
command = "python3 train.py"
timeout = 60
budget = 5
[metric]
name = "val_loss"
goal = "lower"
command = "python3 evaluate.py"
[[check]]
name = "tests"
command = "python3 -m unittest"
timeout = 30
[sandbox]
held_out = ["data/val.txt"]
"#;

    #[test]
    fn a_project_file_is_read_and_checked_against_the_tree() {
        let dir = repo(&[
            ("train.py", ""),
            ("lib/a.py", ""),
            ("lib/deep/b.py", ""),
            ("data/val.txt", "x"),
            ("program.md", ""),
        ]);
        let p = Project::parse(GOOD, dir.path()).unwrap();
        assert!(p.editable.matches("train.py") && p.editable.matches("lib/a.py"));
        assert!(!p.editable.matches("lib/deep/b.py"), "`*` stays within a folder");
        assert!(!p.editable.matches("evaluate.py"));
        assert_eq!(p.metric, Metric { name: "val_loss".into(), goal: Goal::Lower });
        let c = p.commands.unwrap();
        assert_eq!(c.train.timeout, Duration::from_secs(60));
        assert_eq!(c.budget, Some(5.0));
        assert_eq!(c.evaluate.unwrap().timeout, Duration::from_secs_f64(EVALUATE_TIMEOUT));
        assert_eq!(c.checks[0].name, "tests");
        assert_eq!(c.held_out, vec![PathBuf::from("data/val.txt")]);
        assert!(!c.network);
        // The template is a valid project file for a tree that has its files.
        let dir = repo(&[("train.py", ""), ("program.md", "")]);
        let t = Project::parse(TEMPLATE, dir.path()).unwrap();
        assert_eq!(t.metric.name, "val_loss");
    }

    #[test]
    fn editable_files_may_grow_by_code_but_not_by_weights() {
        // The built-in's training file at the session's start; a file of pseudo-random bytes stands for weights.
        let code = "fn step(x: f64) -> f64 {\n    let y = x * 0.5 + 1.0;\n    y.tanh()\n}\n";
        let dir = repo(&[(TRAINING_FILE, &code.repeat(200))]);
        let git = Git::new(dir.path());
        git.exec(&["-c", "user.name=t", "-c", "user.email=t@localhost", "commit", "--quiet", "-m", "base"]).unwrap();
        let base = git.head().unwrap();
        let project = Project::builtin();
        let with = |extra: &str| {
            std::fs::write(dir.path().join(TRAINING_FILE), format!("{}{extra}", code.repeat(200))).unwrap();
            growth_refusal(&project, &git, &base, &Snapshot::take(&project.editable, &git).unwrap()).unwrap()
        };
        // 41 KiB more of code (distinct lines, as a long rewrite has): it compresses below the limit.
        let more_code: String = (0..1200).map(|i| format!("    let w{i} = step(w{} * {i}.0);\n", i / 2)).collect();
        assert!(more_code.len() > 40 << 10);
        assert_eq!(with(&more_code), None);
        // 32 KiB of weights in hex: 8 bytes of a linear congruential generator each.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let weights: String = (0..4096)
            .map(|_| {
                state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
                format!("{state:016x}")
            })
            .collect();
        let why = with(&format!("const WARM: &str = \"{weights}\";\n")).expect("refused");
        assert!(why.starts_with("refused: the editable files (`train/train.rs`) hold "), "{why}");
        assert!(why.contains(&format!("may grow by {DEFAULT_GROWTH_LIMIT} bytes (16 KiB) at most")), "{why}");
        // A project sets its own limit.
        let dir = repo(&[("train.py", ""), ("lib/a.py", ""), ("data/val.txt", "x"), ("program.md", "")]);
        let p = Project::parse(&format!("editable_growth_kib = 64\n{GOOD}"), dir.path()).unwrap();
        assert_eq!(p.growth_limit, 64 << 10);
        assert_eq!(Project::parse(GOOD, dir.path()).unwrap().growth_limit, DEFAULT_GROWTH_LIMIT);
    }

    #[test]
    fn a_bad_project_file_names_the_field() {
        let dir = repo(&[("train.py", ""), ("lib/a.py", ""), ("data/val.txt", "x"), ("program.md", "")]);
        let error = |text: &str| format!("{:#}", Project::parse(text, dir.path()).unwrap_err());
        let e = error(&GOOD.replace("budget = 5", "budget = 5\nepochs = 3"));
        assert!(e.contains("unknown field `epochs`"), "{e}");
        let e = error(&GOOD.replace("name = \"val_loss\"\n", ""));
        assert!(e.contains("missing field `name`"), "{e}");
        let e = error(&GOOD.replace("goal = \"lower\"", "goal = \"smaller\""));
        assert!(e.contains("smaller") && e.contains("lower"), "{e}");
        let e = error(&GOOD.replace("\"lib/*.py\"", "\"src/*.py\""));
        assert!(e.contains("\"src/*.py\" matches no file"), "{e}");
        let e = error(&GOOD.replace("timeout = 60", "timeout = -1"));
        assert!(e.contains("`train.timeout` must be a positive number"), "{e}");
        let e = error(&GOOD.replace("data/val.txt", "data/test.txt"));
        assert!(e.contains("`sandbox.held_out`: \"data/test.txt\" does not exist"), "{e}");
        let e = error(&GOOD.replace("\"val_loss\"", "\"val loss\""));
        assert!(e.contains("`metric.name`"), "{e}");
        let e = error(&GOOD.replace("[\"train.py\", \"lib/*.py\"]", "[\"*\"]"));
        assert!(e.contains("matches autoresearch.toml itself"), "{e}");
        let e = error(&GOOD.replace("command = \"python3 evaluate.py\"", "timeout = 9"));
        assert!(e.contains("`metric.timeout` is set but `metric.command` is not"), "{e}");
        let e = error("editable = [\"train.py\"]\n[metric]\nname = \"x\"\ngoal = \"lower\"\n");
        assert!(e.contains("missing field `train`"), "{e}");
        let e = error(&GOOD.replace("[\"train.py\", \"lib/*.py\"]", "[\"*.py\"]").replace("evaluate.py", "train.py"));
        assert!(e.contains("`metric.command` runs train.py, which is editable"), "{e}");
        let e = error(&format!("program = \"notes.md\"\n{GOOD}"));
        assert!(e.contains("`program`: \"notes.md\" does not exist"), "{e}");
    }

    #[test]
    fn the_metric_is_read_from_exactly_one_line_of_either_form() {
        let src = "the evaluation (`python3 evaluate.py`)";
        let summary = "---\nval_bpb:          0.997900\ntraining_seconds: 300.1\n";
        assert_eq!(read_metric(summary, "val_bpb", src), Ok(0.9979));
        assert_eq!(read_metric("step 3\nMETRIC seconds=0.25\n", "seconds", src), Ok(0.25));
        // Other metrics, prefixes of the name and non-numbers do not count.
        assert_eq!(
            read_metric("val_bpb_ema: 1.0\nval_bpb: best so far\nMETRIC val_bpb=2.5\n", "val_bpb", src),
            Ok(2.5)
        );
        let e = read_metric("loss: 1.0\n", "val_bpb", src).unwrap_err();
        assert!(e.contains("never appeared in the output of the evaluation (`python3 evaluate.py`)"), "{e}");
        let e = read_metric("val_bpb: 1.0\nx\nMETRIC val_bpb=0.9\n", "val_bpb", src).unwrap_err();
        assert!(e.contains("appeared 2 times") && e.contains("lines 1, 3"), "{e}");
        let e = read_metric("accuracy: NaN\n", "accuracy", src).unwrap_err();
        assert!(e.contains("is NaN"), "{e}");
    }

    #[test]
    fn a_snapshot_hashes_saves_and_restores_the_editable_files() {
        let dir = repo(&[("train.py", "a"), ("lib/a.py", "b"), ("other.py", "c")]);
        let git = Git::new(dir.path());
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path().join("lib/a.py"), std::fs::Permissions::from_mode(0o755)).unwrap();
        let editable = Editable::new(&["train.py".into(), "lib/*.py".into()]).unwrap();
        let before = Snapshot::take(&editable, &git).unwrap();
        assert_eq!(before.0.iter().map(|f| f.path.as_str()).collect::<Vec<_>>(), ["lib/a.py", "train.py"]);
        let saved = dir.path().join("saved");
        before.save(&saved).unwrap();
        std::fs::write(dir.path().join("lib/new.py"), "n").unwrap();
        std::fs::write(dir.path().join("train.py"), "changed").unwrap();
        let after = Snapshot::take(&editable, &git).unwrap();
        assert_ne!(after.hash(), before.hash());
        let loaded = Snapshot::load(&saved).unwrap().unwrap();
        assert_eq!(loaded, before);
        loaded.restore(&editable, &git).unwrap();
        assert_eq!(Snapshot::take(&editable, &git).unwrap(), before, "the new file removed, the changed one back");
        assert_eq!(before.0[0].mode, 0o755, "an executable stays executable");
        assert_eq!(std::fs::read_to_string(dir.path().join("other.py")).unwrap(), "c");
        // The built-in's training file hashes as before projects: its content's hash; another file's path counts.
        let one = |path: &str| Snapshot(vec![EditedFile { path: path.into(), content: b"x".to_vec(), mode: 0o644 }]);
        assert_eq!(one(TRAINING_FILE).hash(), crate::file_hash(b"x"));
        assert_ne!(one("a.py").hash(), one("b.py").hash(), "a renamed file is a change");
    }
}
