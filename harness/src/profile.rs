//! Profiles: the fixed constants of a training (sequence length, time budget, eval size, vocabulary), the
//! prepared state on disk that a training reads, and [`Training`], what the training file gets to work with.
//! Nothing the agent edits can change them.
//!
//! Cache layout (root: `$AUTORESEARCH_CACHE`, else `~/.cache/autoresearch`):
//! - `data/`: downloaded climbmix shards, shared by every profile
//! - `<profile>/prepared.json`: the profile and where its data is; `<profile>/tokenizer/`; `<profile>/data/`
//!   for shards made from local text
//! - `active`: the profile prepared last, used when none is named

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};

use crate::dataloader::{DataLoader, LoaderOptions};
use crate::progress::{Recorder, PROGRESS_FILE};
use crate::shards::{split_files, Split};
use crate::tokenizer::Tokenizer;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    pub name: String,
    /// Tokens per sequence, for training and evaluation.
    pub max_seq_len: usize,
    /// Seconds of training (start-up, evaluation and the first 11 steps excluded).
    pub time_budget: f64,
    /// Validation tokens evaluated.
    pub eval_tokens: usize,
    /// Vocabulary size, the 4 special tokens included.
    pub vocab_size: usize,
    /// Where the data comes from by default: "climbmix" (download) or "demo" (the built-in texts).
    pub default_source: String,
}

pub const PROFILE_NAMES: [&str; 2] = ["h100", "small"];

/// The seed of a training that is given none.
pub const DEFAULT_SEED: u64 = 42;

impl Profile {
    /// The training budget: the one `given` (a flag, the environment), else the profile's.
    pub fn budget(&self, given: Option<f64>) -> f64 {
        given.unwrap_or(self.time_budget)
    }

    pub fn builtin(name: &str) -> Result<Profile> {
        let p = |max_seq_len, eval_tokens, vocab_size, source: &str| Profile {
            name: name.to_string(),
            max_seq_len,
            time_budget: 300.0,
            eval_tokens,
            vocab_size,
            default_source: source.to_string(),
        };
        Ok(match name {
            // The original's constants, for one H100-class GPU.
            "h100" => p(2048, 40 * 524_288, 8192, "climbmix"),
            // For CPUs and laptops: see README ("The small profile") for how these were sized.
            "small" => p(256, 1 << 17, 2048, "demo"),
            _ => bail!("unknown profile {name:?} (known: {})", PROFILE_NAMES.join(", ")),
        })
    }
}

/// What `prepare` leaves for trainings: `<cache>/<profile>/prepared.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prepared {
    pub profile: Profile,
    pub data_dir: PathBuf,
    /// Where the data came from, in words.
    pub source: String,
    /// Files the validation documents were taken from (local texts), which the training may not read.
    #[serde(default)]
    pub val_sources: Vec<PathBuf>,
}

pub fn cache_root() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("AUTORESEARCH_CACHE").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir).join("autoresearch"));
    }
    let home = std::env::var_os("HOME").context("neither AUTORESEARCH_CACHE nor HOME is set")?;
    Ok(PathBuf::from(home).join(".cache/autoresearch"))
}

pub fn profile_dir(cache: &Path, profile: &str) -> PathBuf {
    cache.join(profile)
}

/// Where the harness remembers the device batch that fits (`device-batch.json`, see [`crate::fit`]); the
/// training reads its file's entries from its hand-over folder and reports there, and never writes here.
pub fn fit_dir(cache: &Path, profile: &str) -> PathBuf {
    profile_dir(cache, profile).join("fit")
}

pub fn tokenizer_dir(cache: &Path, profile: &str) -> PathBuf {
    profile_dir(cache, profile).join("tokenizer")
}

impl Prepared {
    /// Writes `prepared.json`; a data folder inside the cache is recorded relative to it, so that the whole
    /// cache can move (to a GPU machine, say).
    pub fn save(&self, cache: &Path) -> Result<()> {
        let dir = profile_dir(cache, &self.profile.name);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut stored = self.clone();
        if let Ok(rel) = self.data_dir.strip_prefix(cache) {
            stored.data_dir = rel.to_path_buf();
        }
        crate::fsutil::write_atomic(&dir.join("prepared.json"), serde_json::to_string_pretty(&stored)?.as_bytes())?;
        crate::fsutil::write_atomic(&cache.join("active"), self.profile.name.as_bytes())
    }

    /// The prepared profile `name`, or the one prepared last.
    pub fn load(cache: &Path, name: Option<&str>) -> Result<Prepared> {
        let name = match name {
            Some(n) => n.to_string(),
            None => {
                let active = cache.join("active");
                let text = std::fs::read_to_string(&active).with_context(|| {
                    format!("nothing is prepared in {} (run `autoresearch prepare`)", cache.display())
                })?;
                text.trim().to_string()
            }
        };
        let path = profile_dir(cache, &name).join("prepared.json");
        let bytes = std::fs::read(&path).with_context(|| {
            format!(
                "profile {name:?} is not prepared in {} (run `autoresearch prepare --profile {name}`)",
                cache.display()
            )
        })?;
        let mut prepared: Prepared =
            serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", path.display()))?;
        prepared.data_dir = cache.join(&prepared.data_dir);
        Ok(prepared)
    }
}

/// The names and sizes of the training shards: what a tokenizer records it was trained on.
pub fn training_fingerprint(data_dir: &Path) -> Result<Vec<(String, u64)>> {
    split_files(data_dir, Split::Train)?
        .iter()
        .map(|p| {
            let size = std::fs::metadata(p).with_context(|| format!("reading {}", p.display()))?.len();
            Ok((p.file_name().unwrap().to_string_lossy().into_owned(), size))
        })
        .collect()
}

/// Loads the tokenizer of a prepared profile and checks it belongs to that profile and its data.
pub fn load_tokenizer(cache: &Path, prepared: &Prepared) -> Result<Tokenizer> {
    let dir = tokenizer_dir(cache, &prepared.profile.name);
    let tok = Tokenizer::load(&dir)?;
    ensure!(
        tok.vocab_size() == prepared.profile.vocab_size,
        "the tokenizer in {} has {} tokens, but profile {} needs {} (run `autoresearch prepare --profile {}`)",
        dir.display(),
        tok.vocab_size(),
        prepared.profile.name,
        prepared.profile.vocab_size,
        prepared.profile.name
    );
    let data = training_fingerprint(&prepared.data_dir)?;
    ensure!(
        tok.info.trained_on == data,
        "the tokenizer in {} was trained on other shards than those now in {} (run `autoresearch prepare --profile {}`)",
        dir.display(),
        prepared.data_dir.display(),
        prepared.profile.name
    );
    Ok(tok)
}

/// One training (one process of the training binary, one seed), as the training file sees it: everything it gets
/// from the harness (the profile, its training data and tokenizer, the budget and seed), the clock it must stop
/// by, and where its progress goes. `train(training)` trains with it; `build(training)` builds the model for the
/// evaluation.
///
/// Set by the environment (the runner sets it): `AUTORESEARCH_CACHE`, `AUTORESEARCH_PROFILE` (else the
/// active one), `AUTORESEARCH_TIME_BUDGET` (seconds; a short budget for smoke tests, printed in the summary)
/// and `AUTORESEARCH_SEED` (default 42).
pub struct Training {
    /// The cache root (`AUTORESEARCH_CACHE`).
    pub cache: PathBuf,
    pub prepared: Prepared,
    pub tokenizer: Arc<Tokenizer>,
    pub time_budget: f64,
    pub seed: u64,
    /// When `train` must have returned: the phase's deadline less the hand-over reserve.
    end: std::time::Instant,
    /// The device batches remembered for this training file ([`crate::fit`]), and where it reports its own.
    fit_file: Option<PathBuf>,
    /// When the training's clock started (the process's start, as good as).
    start: std::time::Instant,
    /// Where the training's progress goes ([`crate::progress`]): only in the harness's training phase.
    progress: Option<std::sync::Mutex<Recorder>>,
}

fn env_number<T: std::str::FromStr>(name: &str) -> Result<Option<T>> {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => {
            v.parse().map(Some).map_err(|_| anyhow::anyhow!("{name}={v:?} is not a valid number"))
        }
        _ => Ok(None),
    }
}

impl Training {
    /// The training the environment describes, its `train` due at the budget plus the profile's allowance less the
    /// hand-over reserve from now (the training phase sets the harness's deadline instead: [`Training::ending_at`]).
    pub fn from_env() -> Result<Training> {
        let started = std::time::Instant::now();
        let cache = cache_root()?;
        let prepared = Self::prepared_from_env(&cache)?;
        let tokenizer = Arc::new(load_tokenizer(&cache, &prepared)?);
        let time_budget = prepared.profile.budget(env_number::<f64>("AUTORESEARCH_TIME_BUDGET")?);
        ensure!(time_budget > 0.0, "AUTORESEARCH_TIME_BUDGET must be positive");
        let seed = env_number::<u64>("AUTORESEARCH_SEED")?.unwrap_or(DEFAULT_SEED);
        let name = &prepared.profile.name;
        let span = time_budget + crate::handover::allowance(name) - crate::handover::handover_reserve(name);
        let end = started + std::time::Duration::from_secs_f64(span.max(0.0));
        Ok(Training {
            cache,
            prepared,
            tokenizer,
            time_budget,
            seed,
            end,
            fit_file: None,
            start: started,
            progress: None,
        })
    }

    /// The profile a training started by the harness trains on, as [`Training::from_env`] reads it (no data, no
    /// tokenizer).
    pub fn profile_from_env() -> Result<Profile> {
        Ok(Self::prepared_from_env(&cache_root()?)?.profile)
    }

    /// The profile the harness asked for (`AUTORESEARCH_PROFILE`), else the one prepared last.
    fn prepared_from_env(cache: &Path) -> Result<Prepared> {
        Prepared::load(cache, std::env::var("AUTORESEARCH_PROFILE").ok().filter(|s| !s.is_empty()).as_deref())
    }

    pub fn profile(&self) -> &Profile {
        &self.prepared.profile
    }

    /// The same training, its `train` due at `end` (the harness's deadline less the hand-over reserve), with its
    /// files in the hand-over folder `handover`: the device batches ([`crate::fit::REPORT_FILE`]) and the
    /// progress ([`PROGRESS_FILE`]).
    pub fn ending_at(self, end: std::time::Instant, handover: &Path) -> Training {
        let progress = Recorder::new(handover.join(PROGRESS_FILE), self.start, end);
        Training {
            end,
            fit_file: Some(handover.join(crate::fit::REPORT_FILE)),
            progress: Some(std::sync::Mutex::new(progress)),
            ..self
        }
    }

    /// Step `step` (0 = the first) has ended, with smoothed loss `loss`: for whoever watches (the dashboard).
    /// Cheap: the harness writes it to the progress file at most a few times a second. Outside the harness's
    /// training phase it does nothing.
    pub fn progress(&self, step: u64, loss: f64) {
        self.with_progress(|recorder| recorder.record(step, loss));
    }

    /// Writes the last progress reported, where the file does not hold it yet (fixed code, after `train`).
    pub fn flush_progress(&self) {
        self.with_progress(Recorder::flush);
    }

    fn with_progress(&self, write: impl FnOnce(&mut Recorder) -> Result<()>) {
        if let Some(recorder) = &self.progress {
            // Progress is for watching: a file that cannot be written costs the training nothing but its display.
            if let Err(e) = write(&mut recorder.lock().unwrap_or_else(|e| e.into_inner())) {
                eprintln!("progress not written: {e:#}");
            }
        }
    }

    /// Seconds until `train` must have returned (negative: past it). The one clock: warm-up, compilation and
    /// the device-batch search all count; a `train` that returns later is a crash, `over time`.
    pub fn seconds_left(&self) -> f64 {
        match self.end.checked_duration_since(std::time::Instant::now()) {
            Some(left) => left.as_secs_f64(),
            None => -std::time::Instant::now().duration_since(self.end).as_secs_f64(),
        }
    }

    /// The largest device batch up to `configured` rows whose step fits in memory (see [`crate::fit`]), said on
    /// stdout. `key` names what sets a step's memory (the device, the model's shape, the batch asked for): a
    /// training of the same file with the same key takes the earlier answer without trying (the harness keeps
    /// the answers, per training file; outside the harness nothing is remembered).
    pub fn fit_device_batch(
        &self,
        key: &str,
        configured: usize,
        try_batch: impl FnMut(usize) -> Result<()>,
    ) -> Result<usize> {
        let fit = crate::fit::fit_device_batch(self.fit_file.as_deref(), key, configured, try_batch)?;
        let too_big: Vec<String> = fit.too_big.iter().map(usize::to_string).collect();
        match (fit.remembered, too_big.is_empty()) {
            (true, _) => println!("device batch: {} rows (found earlier for this device and model)", fit.rows),
            (false, true) => println!("device batch: {} rows (a step fits)", fit.rows),
            (false, false) => println!(
                "device batch: {} rows ({} ran out of memory; gradient accumulation keeps the total batch)",
                fit.rows,
                too_big.join(" and ")
            ),
        }
        Ok(fit.rows)
    }

    /// Training batches of `b` rows at the profile's sequence length, packed ahead in background threads.
    pub fn train_loader(&self, b: usize) -> Result<DataLoader> {
        let files = split_files(&self.prepared.data_dir, Split::Train)?;
        Ok(DataLoader::new(self.tokenizer.clone(), files, b, self.profile().max_seq_len, LoaderOptions::default()))
    }
}
