//! Downloading climbmix shards: parallel workers, retries with exponential back-off, resume of partial
//! files, and a parquet check before a file gets its final name.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use autoresearch_harness::fsutil::tmp_path;
use autoresearch_harness::shards::{shard_name, Shard, VAL_SHARD};
use indicatif::ProgressBar;

pub const DEFAULT_BASE_URL: &str = "https://huggingface.co/datasets/karpathy/climbmix-400b-shuffle/resolve/main";
/// Overrides the base URL (a mirror); `--base-url` overrides this.
pub const BASE_URL_ENV: &str = "AUTORESEARCH_BASE_URL";

#[derive(Clone, Debug)]
pub struct DownloadOptions {
    pub base_url: String,
    pub workers: usize,
    pub attempts: u32,
    /// Wait before retry n is `backoff × 2^n` (the original: 1 s, so 2, 4, 8, 16 s).
    pub backoff: Duration,
}

impl Default for DownloadOptions {
    fn default() -> Self {
        DownloadOptions { base_url: DEFAULT_BASE_URL.into(), workers: 8, attempts: 5, backoff: Duration::from_secs(1) }
    }
}

/// The shard indices to fetch: training shards 0..n (n = -1: all) and the validation shard.
pub fn shard_indices(num_shards: i64) -> Result<Vec<usize>> {
    let n = match num_shards {
        -1 => VAL_SHARD,
        n if n >= 1 && n as usize <= VAL_SHARD => n as usize,
        n => bail!("--num-shards {n}: give 1..={VAL_SHARD} training shards, or -1 for all"),
    };
    Ok((0..n).chain([VAL_SHARD]).collect())
}

/// Fetches the shards into `dir`, skipping those already there; fails with every file that could not be had.
pub fn download_shards(dir: &Path, indices: &[usize], opts: &DownloadOptions, bar: &ProgressBar) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let todo: Vec<usize> = indices.iter().copied().filter(|&i| !dir.join(shard_name(i)).exists()).collect();
    bar.set_message(format!("{} of {} shards to fetch", todo.len(), indices.len()));
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(Duration::from_secs(30)))
        .timeout_recv_response(Some(Duration::from_secs(60)))
        .timeout_per_read(Some(Duration::from_secs(60)))
        .build()
        .into();
    let next = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    let failures = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..opts.workers.clamp(1, todo.len().max(1)) {
            s.spawn(|| {
                while let Some(&index) = todo.get(next.fetch_add(1, Ordering::SeqCst)) {
                    let fetched = fetch_shard(&agent, dir, index, opts, bar);
                    let n = done.fetch_add(1, Ordering::SeqCst) + 1;
                    bar.set_message(format!("{n}/{} shards", todo.len()));
                    if let Err(e) = fetched {
                        bar.suspend(|| eprintln!("{e:#}"));
                        failures.lock().unwrap().push(format!("{e:#}"));
                    }
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap();
    if !failures.is_empty() {
        bail!("{} of {} shards could not be downloaded:\n  {}", failures.len(), todo.len(), failures.join("\n  "));
    }
    Ok(())
}

/// Why one try failed, and whether another try can help.
enum TryError {
    Retry(anyhow::Error),
    Fatal(anyhow::Error),
}

fn fetch_shard(agent: &ureq::Agent, dir: &Path, index: usize, opts: &DownloadOptions, bar: &ProgressBar) -> Result<()> {
    let name = shard_name(index);
    let url = format!("{}/{name}", opts.base_url.trim_end_matches('/'));
    let path = dir.join(&name);
    let tmp = tmp_path(&path);
    let mut last = anyhow!("no attempt made");
    for attempt in 1..=opts.attempts.max(1) {
        match try_fetch(agent, &url, &tmp, bar) {
            Ok(()) => {
                if let Err(e) = Shard::open(&tmp) {
                    // Complete by its length but not parquet: start over from nothing.
                    let _ = std::fs::remove_file(&tmp);
                    last = e.context(format!("{url} did not give a parquet file"));
                } else {
                    return std::fs::rename(&tmp, &path)
                        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()));
                }
            }
            Err(TryError::Fatal(e)) => return Err(e),
            Err(TryError::Retry(e)) => last = e,
        }
        if attempt < opts.attempts {
            bar.suspend(|| eprintln!("{name}: attempt {attempt}/{} failed ({last:#}); retrying", opts.attempts));
            std::thread::sleep(opts.backoff * 2u32.pow(attempt));
        }
    }
    Err(last.context(format!("{name}: giving up after {} attempts", opts.attempts)))
}

/// One request: resumes `tmp` from its length where the server honours ranges, else starts over.
fn try_fetch(agent: &ureq::Agent, url: &str, tmp: &PathBuf, bar: &ProgressBar) -> Result<(), TryError> {
    let have = std::fs::metadata(tmp).map(|m| m.len()).unwrap_or(0);
    let mut request = agent.get(url);
    if have > 0 {
        request = request.header("Range", format!("bytes={have}-"));
    }
    let mut response = request.call().map_err(|e| TryError::Retry(anyhow!("{url}: {e}")))?;
    let status = response.status().as_u16();
    let append = match status {
        200 => false,
        206 => true,
        // The partial file is not a prefix the server can continue: drop it and start over.
        416 => {
            let _ = std::fs::remove_file(tmp);
            return Err(TryError::Retry(anyhow!("{url}: partial file {} not resumable", tmp.display())));
        }
        404 | 410 => return Err(TryError::Fatal(anyhow!("{url}: not found (HTTP {status})"))),
        s => return Err(TryError::Retry(anyhow!("{url}: HTTP {s}"))),
    };
    let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    let body_len = header("content-length").and_then(|v| v.parse::<u64>().ok());
    if append {
        // `Content-Range: bytes START-END/TOTAL` must continue exactly where the partial file ends.
        let start =
            header("content-range").and_then(|v| v.strip_prefix("bytes ")?.split('-').next()?.parse::<u64>().ok());
        if start != Some(have) {
            let _ = std::fs::remove_file(tmp);
            return Err(TryError::Retry(anyhow!("{url}: the server resumed at {start:?}, not at byte {have}")));
        }
    }
    let offset = if append { have } else { 0 };
    if let Some(len) = body_len {
        bar.inc_length(len);
    }
    let local = |e: std::io::Error| TryError::Fatal(anyhow!("writing {}: {e}", tmp.display()));
    let mut file = if append {
        OpenOptions::new().append(true).open(tmp).map_err(local)?
    } else {
        File::create(tmp).map_err(local)?
    };
    let mut reader = response.body_mut().with_config().limit(u64::MAX).reader();
    let mut buf = vec![0u8; 1 << 16];
    let mut got = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => return Err(TryError::Retry(anyhow!("{url}: connection lost after {} bytes: {e}", offset + got))),
        };
        file.write_all(&buf[..n]).map_err(local)?;
        got += n as u64;
        bar.inc(n as u64);
    }
    file.sync_all().map_err(local)?;
    if let Some(len) = body_len {
        if got != len {
            return Err(TryError::Retry(anyhow!("{url}: got {got} of {len} bytes")));
        }
    }
    Ok(())
}
