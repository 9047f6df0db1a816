//! `autoresearch prepare`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use autoresearch_harness::profile::{cache_root, Profile};
use autoresearch_prepare::download::{DownloadOptions, BASE_URL_ENV, DEFAULT_BASE_URL};
use autoresearch_prepare::{Source, TextInput};

/// The built-in demo corpus (see data/demo/SOURCES.md), the offline default of the `small` profile: read from the
/// checkout this program was built from, not compiled in, so that it is in no binary a training can read. Its
/// files are the profile's validation sources: no phase may read them (nor the session's own `data/demo`).
const DEMO_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../data/demo");
const DEMO_FILES: [&str; 2] = ["tinyshakespeare.txt", "tinystories_val.txt"];

fn demo_texts() -> Result<Vec<TextInput>> {
    DEMO_FILES
        .iter()
        .map(|name| {
            let path = std::path::Path::new(DEMO_DIR).join(name);
            let bytes = std::fs::read(&path).with_context(|| {
                format!(
                    "reading the demo corpus's {} (it stays in the checkout this program was built from; prepare \
                     other text with --text FILE...)",
                    path.display()
                )
            })?;
            let path = std::fs::canonicalize(&path).with_context(|| format!("resolving {}", path.display()))?;
            Ok(TextInput { name: format!("demo:{name}"), bytes, path: Some(path) })
        })
        .collect()
}

#[derive(clap::Args)]
pub struct Args {
    /// Profile to prepare: h100 (the original's constants) or small (CPUs and laptops)
    #[arg(long, default_value = "h100")]
    profile: String,

    /// Plain-text files or folders of .txt files to use instead of the default data
    /// (documents are blocks separated by blank lines)
    #[arg(long, num_args = 1.., value_name = "FILE|DIR", conflicts_with_all = ["parquet", "demo", "download"])]
    text: Vec<PathBuf>,

    /// A folder of parquet shards in the climbmix layout to use where it is
    #[arg(long, value_name = "DIR", conflicts_with_all = ["demo", "download"])]
    parquet: Option<PathBuf>,

    /// Use the built-in demo corpus (the default for the small profile)
    #[arg(long, conflicts_with = "download")]
    demo: bool,

    /// Download climbmix (the default for the h100 profile)
    #[arg(long)]
    download: bool,

    /// Training shards to download (-1: all 6542); the validation shard comes too
    #[arg(long, default_value_t = 10, allow_negative_numbers = true, value_name = "N")]
    num_shards: i64,

    /// Parallel downloads
    #[arg(long, default_value_t = 8, value_name = "N")]
    download_workers: usize,

    /// Where the shards are downloaded from (a mirror: BASE/shard_00000.parquet ...)
    #[arg(long, env = BASE_URL_ENV, default_value = DEFAULT_BASE_URL, value_name = "URL")]
    base_url: String,
}

pub fn prepare(args: Args) -> Result<()> {
    let started = Instant::now();
    let profile = Profile::builtin(&args.profile)?;
    let cache = cache_root()?;
    let use_demo = args.demo || (profile.default_source == "demo" && !args.download);
    let source = if !args.text.is_empty() {
        Source::Texts(TextInput::from_paths(&args.text)?)
    } else if let Some(dir) = args.parquet {
        Source::Parquet(dir)
    } else if use_demo {
        Source::Texts(demo_texts()?)
    } else {
        let download = DownloadOptions {
            base_url: args.base_url,
            workers: args.download_workers.max(1),
            attempts: 5,
            backoff: Duration::from_secs(1),
        };
        Source::Climbmix { num_shards: args.num_shards, download }
    };
    let prepared = autoresearch_prepare::prepare(&cache, &profile, source)?;
    let p = &prepared.profile;
    println!(
        "prepared profile {} in {:.1}s: {} | seq {} | vocab {} | budget {}s | eval {} tokens | data {}",
        p.name,
        started.elapsed().as_secs_f64(),
        prepared.source,
        p.max_seq_len,
        p.vocab_size,
        p.time_budget,
        p.eval_tokens,
        prepared.data_dir.display()
    );
    Ok(())
}
