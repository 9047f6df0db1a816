//! `autoresearch prepare`'s tools, which only the CLI links (the training binary never does): the climbmix
//! [`download`] (HTTP with TLS), shards made from local text, the tokenizer's training, and the record of the
//! prepared profile ([`prepare`]), with progress bars. Each step is skipped when its result is already there and
//! current. What the training reads back (the profile, shards, tokenizer) is the harness's.

pub mod download;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use autoresearch_harness::fsutil::{fnv1a, write_atomic, FNV_START};
use autoresearch_harness::profile::{profile_dir, tokenizer_dir, training_fingerprint, Prepared, Profile};
use autoresearch_harness::shards::{self, shard_name, split_files, Shard, Split, VAL_SHARD};
use autoresearch_harness::tokenizer::train::{train_bpe, Progress, TrainOptions};
use autoresearch_harness::tokenizer::{Tokenizer, SPECIAL_TOKENS};
use indicatif::{ProgressBar, ProgressStyle};

use crate::download::{download_shards, shard_indices, DownloadOptions};

pub enum Source {
    /// climbmix from HuggingFace (or a mirror): training shards 0..n (-1: all) and the validation shard.
    Climbmix { num_shards: i64, download: DownloadOptions },
    /// Plain text; documents are blocks separated by blank lines.
    Texts(Vec<TextInput>),
    /// A folder of shards in the climbmix layout, used where it is.
    Parquet(PathBuf),
}

/// A text and the name to give it in messages (a file path, or a built-in text's name).
pub struct TextInput {
    pub name: String,
    pub bytes: Vec<u8>,
    /// The file it was read from: the training's sandbox keeps it unreadable, since validation documents are
    /// among its own.
    pub path: Option<PathBuf>,
}

impl TextInput {
    /// Reads files, and the `.txt` files of folders (recursively, in path order).
    pub fn from_paths(paths: &[PathBuf]) -> Result<Vec<TextInput>> {
        let mut files = Vec::new();
        for p in paths {
            if p.is_dir() {
                let before = files.len();
                collect_txt(p, &mut files)?;
                ensure!(files.len() > before, "no .txt files in {}", p.display());
            } else {
                files.push(p.clone());
            }
        }
        files
            .into_iter()
            .map(|f| {
                let bytes = std::fs::read(&f).with_context(|| format!("reading {}", f.display()))?;
                Ok(TextInput { name: f.display().to_string(), bytes, path: std::fs::canonicalize(&f).ok() })
            })
            .collect()
    }
}

fn collect_txt(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()
        .with_context(|| format!("reading {}", dir.display()))?;
    entries.sort();
    for p in entries {
        if p.is_dir() {
            collect_txt(&p, out)?;
        } else if p.extension().is_some_and(|e| e == "txt") {
            out.push(p);
        }
    }
    Ok(())
}

/// Documents of a text: blocks of lines separated by blank (empty or whitespace-only) lines.
pub fn split_documents(text: &str) -> Vec<String> {
    let mut docs = Vec::new();
    let mut current: Vec<&str> = Vec::new();
    for line in text.lines().chain([""]) {
        if line.trim().is_empty() {
            if !current.is_empty() {
                docs.push(current.join("\n"));
                current.clear();
            }
        } else {
            current.push(line);
        }
    }
    docs
}

/// A small, fixed pseudo-random generator (SplitMix64), so that shuffles are the same everywhere.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// Seed of the document shuffle for local text.
pub const SHUFFLE_SEED: u64 = 42;
/// Text per training shard made from local text.
const SHARD_TEXT_BYTES: usize = 64 << 20;

/// Turns texts into shards in `dir`: shuffled documents, 10 % to the validation shard, the rest in order into
/// training shards. The folder is built beside `dir` and swapped in whole; unchanged input is not redone.
pub fn write_text_shards(dir: &Path, inputs: &[TextInput]) -> Result<bool> {
    ensure!(!inputs.is_empty(), "no text given");
    // A hash of the inputs, to recognise ones already turned into shards.
    let mut key = FNV_START;
    for i in inputs {
        key = fnv1a(fnv1a(key, i.name.as_bytes()), &i.bytes);
    }
    let stamp = format!("{key:016x}");
    let stamp_path = dir.join("SOURCE");
    if std::fs::read_to_string(&stamp_path).is_ok_and(|s| s == stamp) {
        return Ok(false);
    }
    let mut docs = Vec::new();
    for input in inputs {
        let text = std::str::from_utf8(&input.bytes).map_err(|e| {
            anyhow::anyhow!("{} is not UTF-8 text: invalid byte at offset {}", input.name, e.valid_up_to())
        })?;
        docs.extend(split_documents(text));
    }
    ensure!(docs.len() >= 2, "the text has {} document(s); it needs at least 2 (one for validation)", docs.len());
    let mut rng = SplitMix64(SHUFFLE_SEED);
    for i in (1..docs.len()).rev() {
        docs.swap(i, (rng.next() % (i as u64 + 1)) as usize);
    }
    let n_val = (docs.len() / 10).max(1);
    let partial = dir.with_extension("partial");
    let _ = std::fs::remove_dir_all(&partial);
    std::fs::create_dir_all(&partial).with_context(|| format!("creating {}", partial.display()))?;
    shards::write_shard(&partial.join(shard_name(VAL_SHARD)), &docs[..n_val])?;
    let (mut start, mut size, mut index) = (n_val, 0, 0);
    for i in n_val..docs.len() {
        size += docs[i].len();
        if size >= SHARD_TEXT_BYTES || i + 1 == docs.len() {
            shards::write_shard(&partial.join(shard_name(index)), &docs[start..=i])?;
            (start, size, index) = (i + 1, 0, index + 1);
        }
    }
    write_atomic(&partial.join("SOURCE"), stamp.as_bytes())?;
    let old = dir.with_extension("old");
    let _ = std::fs::remove_dir_all(&old);
    if dir.exists() {
        std::fs::rename(dir, &old).with_context(|| format!("moving {} aside", dir.display()))?;
    }
    std::fs::rename(&partial, dir).with_context(|| format!("renaming {} to {}", partial.display(), dir.display()))?;
    let _ = std::fs::remove_dir_all(&old);
    Ok(true)
}

/// Checks that a folder holds readable shards of both splits.
pub fn check_parquet_dir(dir: &Path) -> Result<()> {
    for split in [Split::Train, Split::Val] {
        for f in split_files(dir, split)? {
            Shard::open(&f)?;
        }
    }
    Ok(())
}

fn bar(len: u64, template: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(ProgressStyle::with_template(template).expect("a valid template").progress_chars("=> "));
    bar
}

/// Trains the profile's tokenizer on the training shards, unless an up-to-date one is there.
pub fn prepare_tokenizer(cache: &Path, profile: &Profile, data_dir: &Path) -> Result<Tokenizer> {
    let dir = tokenizer_dir(cache, &profile.name);
    let fingerprint = training_fingerprint(data_dir)?;
    if let Ok(tok) = Tokenizer::load(&dir) {
        if tok.vocab_size() == profile.vocab_size && tok.info.trained_on == fingerprint {
            eprintln!("tokenizer: up to date in {}", dir.display());
            return Ok(tok);
        }
    }
    let started = Instant::now();
    let n_ranks = profile.vocab_size.checked_sub(SPECIAL_TOKENS.len()).filter(|&n| n >= 256);
    let Some(n_ranks) = n_ranks else {
        bail!("vocab size {} is too small: 256 bytes + {} specials at least", profile.vocab_size, SPECIAL_TOKENS.len());
    };
    let opts = TrainOptions::new(n_ranks);
    let counting = bar(0, "tokenizer: counting {spinner} {msg}");
    let merging = bar((n_ranks - 256) as u64, "tokenizer: merging [{bar:30}] {pos}/{len} ({elapsed})");
    let docs = shards::documents(split_files(data_dir, Split::Train)?);
    let tokens = train_bpe(docs, &opts, &mut |p| match p {
        Progress::Counted { chars, docs } => {
            counting.set_message(format!("{:.1}M characters, {docs} documents", chars as f64 / 1e6))
        }
        Progress::Merged { merges, .. } => {
            counting.finish();
            merging.set_position(merges as u64)
        }
    })
    .with_context(|| format!("training a {}-token tokenizer on {}", profile.vocab_size, data_dir.display()))?;
    merging.finish();
    let tok = Tokenizer::from_ranks(tokens, fingerprint)?;
    let partial = dir.with_extension("partial");
    let _ = std::fs::remove_dir_all(&partial);
    tok.save(&partial)?;
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&partial, &dir).with_context(|| format!("renaming {} to {}", partial.display(), dir.display()))?;
    eprintln!(
        "tokenizer: {} tokens trained in {:.1}s, saved in {}",
        tok.vocab_size(),
        started.elapsed().as_secs_f64(),
        dir.display()
    );
    Ok(tok)
}

/// Prepares `profile` from `source` under the cache root.
pub fn prepare(cache: &Path, profile: &Profile, source: Source) -> Result<Prepared> {
    let mut val_sources = Vec::new();
    let (data_dir, described) = match source {
        Source::Climbmix { num_shards, download } => {
            let dir = cache.join("data");
            let indices = shard_indices(num_shards)?;
            let progress = bar(0, "data: [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} {msg}");
            download_shards(&dir, &indices, &download, &progress)?;
            progress.finish_and_clear();
            eprintln!("data: {} shards in {}", indices.len(), dir.display());
            (dir, format!("climbmix from {} ({} training shards + validation)", download.base_url, indices.len() - 1))
        }
        Source::Texts(inputs) => {
            let dir = profile_dir(cache, &profile.name).join("data");
            let names: Vec<&str> = inputs.iter().map(|i| i.name.as_str()).collect();
            let described = format!("text: {}", names.join(", "));
            let written = write_text_shards(&dir, &inputs)?;
            eprintln!("data: {} {}", if written { "shards written to" } else { "up to date in" }, dir.display());
            val_sources = inputs.iter().filter_map(|i| i.path.clone()).collect();
            (dir, described)
        }
        Source::Parquet(dir) => {
            let dir = std::fs::canonicalize(&dir).with_context(|| format!("no folder {}", dir.display()))?;
            check_parquet_dir(&dir)?;
            eprintln!("data: using the shards in {}", dir.display());
            (dir.clone(), format!("parquet: {}", dir.display()))
        }
    };
    prepare_tokenizer(cache, profile, &data_dir)?;
    let prepared = Prepared { profile: profile.clone(), data_dir, source: described, val_sources };
    prepared.save(cache)?;
    Ok(prepared)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_are_blocks_between_blank_lines() {
        let text = "First line\nsecond line\n\n  \n\nNext doc\r\n\r\nLast\n";
        assert_eq!(split_documents(text), ["First line\nsecond line", "Next doc", "Last"]);
        assert!(split_documents("\n \n").is_empty());
    }

    #[test]
    fn text_shards_hold_every_document_once() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let text: String = (0..50).map(|i| format!("doc {i}\nline two\n\n")).collect();
        let inputs = vec![TextInput { name: "t.txt".into(), bytes: text.into_bytes(), path: None }];
        assert!(write_text_shards(&data, &inputs).unwrap());
        let read = |split| -> Vec<String> {
            split_files(&data, split)
                .unwrap()
                .iter()
                .flat_map(|f| {
                    let s = Shard::open(f).unwrap();
                    (0..s.num_row_groups()).flat_map(|g| s.row_group(g).unwrap()).collect::<Vec<_>>()
                })
                .collect()
        };
        let (train, val) = (read(Split::Train), read(Split::Val));
        assert_eq!(val.len(), 5);
        let mut all: Vec<String> = train.into_iter().chain(val).collect();
        all.sort();
        let mut want: Vec<String> = (0..50).map(|i| format!("doc {i}\nline two")).collect();
        want.sort();
        assert_eq!(all, want);
        assert!(!write_text_shards(&data, &inputs).unwrap(), "unchanged input is not redone");
    }

    #[test]
    fn bad_text_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let bad = vec![TextInput { name: "bad.txt".into(), bytes: b"ok\n\n\xff\xfe".to_vec(), path: None }];
        let err = write_text_shards(&dir.path().join("d"), &bad).unwrap_err().to_string();
        assert!(err.contains("bad.txt") && err.contains("offset 4"), "{err}");
        let one = vec![TextInput { name: "one.txt".into(), bytes: b"just one".to_vec(), path: None }];
        assert!(write_text_shards(&dir.path().join("d"), &one).is_err());
        assert!(!dir.path().join("d").exists());
    }
}
