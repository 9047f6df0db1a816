//! The largest device batch that fits the accelerator's memory. The training file tries a step at its
//! configured batch; where that runs out of memory, the batch is halved (and the gradient accumulation doubled
//! by the caller, so the total batch and the recipe stay the same) until a step fits. The answer is remembered
//! per key (the device and whatever sets the memory a step takes), so that the next training of the same file
//! (a rerun with another seed, a retry) starts at once.
//!
//! The training only reports: it reads its file's answers from a report file in its hand-over folder and writes
//! its own there. The harness keeps them in the cache (`<cache>/<profile>/fit/device-batches.json`), per
//! training binary, and writes them there only after a training that handed over its model, and only answers
//! that pass [`validate`]: no training can plant an answer that another binary would take. Keys are kept as a
//! digest ([`key_digest`]), and few: the next training of the same binary reads the report, so it must carry
//! a device batch and next to nothing else (a red team carried 256 KB of a model's weights to the next training
//! in keys of its choice; now at most [`MAX_KEYS`] × (64 + 17) bits).

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use anyhow::{bail, ensure, Context, Result};

/// Device batches by key digest: what a training reads and reports.
pub type Answers = BTreeMap<String, usize>;

/// The most answers a training may report (the default file reports one per device and model shape).
pub const MAX_KEYS: usize = 8;
/// The largest device batch an answer may hold.
pub const MAX_ROWS: usize = 1 << 16;

/// A key as answers hold it: the first 64 bits of its SHA-256, in hex.
pub fn key_digest(key: &str) -> String {
    use sha2::Digest;
    crate::fsutil::hex(&sha2::Sha256::digest(key.as_bytes())[..8])
}

/// The harness's cache file in a profile's fit folder: [`Answers`] by training file.
pub const CACHE_FILE: &str = "device-batches.json";
/// The training's report file in its hand-over folder.
pub const REPORT_FILE: &str = "fit.json";

/// What the search found.
#[derive(Debug, PartialEq)]
pub struct Fit {
    pub rows: usize,
    /// Batches tried that ran out of memory, largest first.
    pub too_big: Vec<usize>,
    /// Taken from the cache, without trying.
    pub remembered: bool,
}

/// A caught panic's message (its payload's text).
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "a panic without a message".into())
}

/// Whether an error message is an accelerator (or the host) running out of memory.
pub fn is_out_of_memory(message: &str) -> bool {
    message.contains("out of memory") || message.contains("can't allocate memory")
}

/// Starting at `configured` rows, halves the batch while `try_batch(rows)` runs out of memory, staying a
/// divisor of `configured` (a panic with an out-of-memory message counts as running out; any other error or
/// panic is returned as it is). The answer is taken from and added to `report_file` under `key` (none: nothing
/// remembered).
pub fn fit_device_batch(
    report_file: Option<&Path>,
    key: &str,
    configured: usize,
    mut try_batch: impl FnMut(usize) -> Result<()>,
) -> Result<Fit> {
    let mut cache: Answers = match report_file.map(std::fs::read) {
        Some(Ok(bytes)) => serde_json::from_slice(&bytes)
            .with_context(|| format!("parsing {}", report_file.unwrap_or(Path::new("")).display()))?,
        _ => BTreeMap::new(),
    };
    let key = key_digest(key);
    if let Some(&rows) = cache.get(&key) {
        return Ok(Fit { rows, too_big: Vec::new(), remembered: true });
    }
    let mut rows = configured;
    let mut too_big = Vec::new();
    loop {
        match quietly(|| try_batch(rows)) {
            Ok(()) => break,
            Err(e) if is_out_of_memory(&format!("{e:#}")) => {
                too_big.push(rows);
                if !rows.is_multiple_of(2) {
                    bail!("a step of {rows} rows does not fit in memory, and {rows} cannot be halved: {e:#}");
                }
                rows /= 2;
            }
            Err(e) => return Err(e),
        }
    }
    if let Some(file) = report_file {
        cache.insert(key, rows);
        crate::fsutil::write_atomic(file, serde_json::to_string_pretty(&cache)?.as_bytes())?;
    }
    Ok(Fit { rows, too_big, remembered: false })
}

/// A training's report, as the harness accepts it: at most [`MAX_KEYS`] keys, each a [`key_digest`] (16 hex
/// digits), each 1 to [`MAX_ROWS`] rows.
pub fn validate(bytes: &[u8]) -> Result<Answers> {
    let answers: Answers = serde_json::from_slice(bytes).context("not a map of keys to rows")?;
    ensure!(answers.len() <= MAX_KEYS, "{} keys (at most {MAX_KEYS})", answers.len());
    for (key, &rows) in &answers {
        let digest = key.len() == 16 && key.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        ensure!(digest, "the key {:?} is not a key's digest (16 hex digits)", key.chars().take(40).collect::<String>());
        ensure!((1..=MAX_ROWS).contains(&rows), "{rows} rows for {key} (1 to {MAX_ROWS})");
    }
    Ok(answers)
}

/// The answers the harness keeps for the training binary `binary` in `cache_file` (none where it has none, or
/// the file cannot be read).
pub fn remembered(cache_file: &Path, binary: &str) -> Answers {
    let all: BTreeMap<String, Answers> =
        std::fs::read(cache_file).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
    all.get(binary).cloned().unwrap_or_default()
}

/// Keeps a training's report (validated) as the answers for the training binary `binary` in `cache_file`, in
/// place of its earlier ones. Returns what was kept.
pub fn keep(cache_file: &Path, binary: &str, report: &[u8]) -> Result<Answers> {
    let answers = validate(report)?;
    let mut all: BTreeMap<String, Answers> =
        std::fs::read(cache_file).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
    all.insert(binary.to_string(), answers.clone());
    if let Some(dir) = cache_file.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    crate::fsutil::write_atomic(cache_file, serde_json::to_string_pretty(&all)?.as_bytes())?;
    Ok(answers)
}

/// Runs `f`, turning a panic into an error with its message; the panic is not printed (an out-of-memory
/// panic of a trial step is expected).
pub fn quietly<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let result = catch_unwind(AssertUnwindSafe(f));
    std::panic::set_hook(hook);
    match result {
        Ok(r) => r,
        Err(payload) => {
            let message = panic_message(payload.as_ref());
            bail!("{message}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A device where a step of more than `limit` rows runs out of memory, the way tch reports it: a panic.
    fn device(limit: usize, tried: &mut Vec<usize>) -> impl FnMut(usize) -> Result<()> + '_ {
        move |rows| {
            tried.push(rows);
            if rows > limit {
                panic!("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 23.65 GiB total capacity)");
            }
            Ok(())
        }
    }

    #[test]
    fn the_batch_halves_until_a_step_fits_and_the_answer_is_remembered() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("device-batch.json");
        let mut tried = Vec::new();
        let fit = fit_device_batch(Some(&cache), "RTX 4090 | depth 8", 128, device(40, &mut tried)).unwrap();
        assert_eq!(fit, Fit { rows: 32, too_big: vec![128, 64], remembered: false });
        assert_eq!(tried, [128, 64, 32]);

        // The same key again: no step is tried.
        let mut tried = Vec::new();
        let fit = fit_device_batch(Some(&cache), "RTX 4090 | depth 8", 128, device(40, &mut tried)).unwrap();
        assert_eq!(fit, Fit { rows: 32, too_big: vec![], remembered: true });
        assert!(tried.is_empty());

        // Something that matters changed (another key): searched again; both answers kept.
        let mut tried = Vec::new();
        let fit = fit_device_batch(Some(&cache), "RTX 4090 | depth 12", 128, device(20, &mut tried)).unwrap();
        assert_eq!(fit.rows, 16);
        let saved: BTreeMap<String, usize> = serde_json::from_slice(&std::fs::read(&cache).unwrap()).unwrap();
        assert_eq!(saved.len(), 2);
        // Under the keys' digests, as the harness accepts them: the first 8 bytes of SHA-256("RTX 4090 | depth 8"),
        // as `sha256sum` gives it.
        assert_eq!(saved.get("09903b885ec5a741"), Some(&32), "{saved:?}");
        assert_eq!(validate(&std::fs::read(&cache).unwrap()).unwrap(), saved);

        // A batch that fits at once is tried once.
        let mut tried = Vec::new();
        assert_eq!(fit_device_batch(Some(&cache), "H100 | depth 8", 128, device(1000, &mut tried)).unwrap().rows, 128);
        assert_eq!(tried, [128]);
    }

    #[test]
    fn other_failures_are_not_taken_for_memory() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("device-batch.json");
        let err = fit_device_batch(Some(&cache), "k", 64, |_| panic!("index out of bounds")).unwrap_err();
        assert_eq!(format!("{err:#}"), "index out of bounds");
        let err = fit_device_batch(Some(&cache), "k", 64, |_| bail!("shape mismatch")).unwrap_err();
        assert_eq!(format!("{err:#}"), "shape mismatch");
        assert!(!cache.exists(), "nothing remembered from a failure");

        let mut tried = Vec::new();
        let err = fit_device_batch(Some(&cache), "k", 6, device(2, &mut tried)).unwrap_err();
        assert!(format!("{err:#}").contains("3 rows does not fit in memory, and 3 cannot be halved"), "{err:#}");
        assert_eq!(tried, [6, 3]);
    }

    #[test]
    fn the_harness_keeps_valid_reports_per_training_binary() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("fit").join(CACHE_FILE);
        assert!(remembered(&cache, "aaa").is_empty());
        let kept = keep(&cache, "aaa", br#"{"0123456789abcdef": 8}"#).unwrap();
        assert_eq!(kept, Answers::from([("0123456789abcdef".to_string(), 8)]));
        assert_eq!(remembered(&cache, "aaa"), kept);
        assert!(remembered(&cache, "bbb").is_empty(), "another file does not take it");
        let bad = [
            &br#"{"0123456789abcdef": 0}"#[..],
            br#"{"0123456789abcdef": 65537}"#,
            br#"{"cpu | depth 2": 8}"#,
            br#"{"0123456789ABCDEF": 8}"#,
            br#"{"0123456789abcdef0": 8}"#,
            br#"[1]"#,
            b"not json",
        ];
        for bad in bad {
            assert!(keep(&cache, "bbb", bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        let err = validate(br#"{"cpu | depth 2": 8}"#).unwrap_err().to_string();
        assert!(err.contains(r#"the key "cpu | depth 2" is not a key's digest"#), "{err}");
        let many: Answers = (0..9).map(|i| (format!("{i:016x}"), 1)).collect();
        assert!(validate(&serde_json::to_vec(&many).unwrap()).unwrap_err().to_string().contains("9 keys (at most 8)"));
        assert_eq!(remembered(&cache, "aaa"), kept, "a refused report changes nothing");
        // Without a report file nothing is remembered.
        let mut tried = Vec::new();
        assert_eq!(fit_device_batch(None, "k", 8, device(4, &mut tried)).unwrap().rows, 4);
        let mut tried = Vec::new();
        assert!(!fit_device_batch(None, "k", 8, device(4, &mut tried)).unwrap().remembered);
    }

    #[test]
    fn out_of_memory_messages() {
        assert!(is_out_of_memory("CUDA out of memory. Tried to allocate 20.00 MiB"));
        assert!(is_out_of_memory("[enforce fail at alloc_cpu.cpp:117] err == 0. DefaultCPUAllocator: can't allocate memory: you tried to allocate 8 bytes"));
        assert!(!is_out_of_memory("index out of bounds"));
    }
}
