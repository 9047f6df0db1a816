//! `autoresearch bench`: throughput of the harness's hot paths, printed as numbers.
//! `scripts/bench.sh` runs these beside the Python packages they are measured against.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{ensure, Result};
use autoresearch_harness::dataloader::{DataLoader, LoaderOptions};
use autoresearch_harness::profile::{cache_root, load_tokenizer, Prepared};
use autoresearch_harness::shards::{split_files, Split};
use autoresearch_harness::tokenizer::train::{train_bpe, TrainOptions};
use autoresearch_harness::tokenizer::{Tokenizer, SPECIAL_TOKENS};
use autoresearch_prepare::{split_documents, TextInput};

#[derive(clap::Subcommand)]
pub enum Bench {
    /// Train a BPE tokenizer on text; prints seconds
    Tokenizer {
        /// Text files or folders (documents are blocks separated by blank lines)
        #[arg(long, num_args = 1.., required = true, value_name = "FILE|DIR")]
        text: Vec<PathBuf>,
        /// Vocabulary size, specials included
        #[arg(long, default_value_t = 8192)]
        vocab: usize,
        /// Also save the tokenizer here (to compare it with another trainer's)
        #[arg(long, value_name = "DIR")]
        save: Option<PathBuf>,
    },
    /// Encode text with a saved tokenizer; prints MB/s and tokens/s per thread count
    Encode {
        #[arg(long, num_args = 1.., required = true, value_name = "FILE|DIR")]
        text: Vec<PathBuf>,
        /// A tokenizer folder (ranks.tiktoken, ...)
        #[arg(long, value_name = "DIR")]
        tokenizer: PathBuf,
        /// Thread counts to measure
        #[arg(long, num_args = 1.., default_values_t = [1, 2])]
        threads: Vec<usize>,
        /// Passes over the text per measurement
        #[arg(long, default_value_t = 5)]
        repeat: usize,
    },
    /// Pack batches from the prepared data (tokenization included); prints tokens/s
    Dataloader {
        /// Prepared profile to read [default: the one prepared last]
        #[arg(long)]
        profile: Option<String>,
        #[arg(long, default_value_t = 128)]
        batch: usize,
        #[arg(long, default_value_t = 2048)]
        seq: usize,
        /// Batches to time (after 2 of warm-up)
        #[arg(long, default_value_t = 20)]
        batches: usize,
    },
}

fn documents(paths: &[PathBuf]) -> Result<Vec<String>> {
    let mut docs = Vec::new();
    for input in TextInput::from_paths(paths)? {
        let text = String::from_utf8(input.bytes).map_err(|_| anyhow::anyhow!("{} is not UTF-8", input.name))?;
        docs.extend(split_documents(&text));
    }
    Ok(docs)
}

pub fn bench(bench: Bench) -> Result<()> {
    match bench {
        Bench::Tokenizer { text, vocab, save } => {
            let docs = documents(&text)?;
            let started = Instant::now();
            let opts = TrainOptions::new(vocab - SPECIAL_TOKENS.len());
            let tokens = train_bpe(docs.into_iter().map(Ok), &opts, &mut |_| {})?;
            let seconds = started.elapsed().as_secs_f64();
            println!("tokenizer_train_seconds: {seconds:.3} (vocab {vocab}, {} threads)", opts.threads);
            if let Some(dir) = save {
                Tokenizer::from_ranks(tokens, vec![])?.save(&dir)?;
            }
        }
        Bench::Encode { text, tokenizer, threads, repeat } => {
            let docs = documents(&text)?;
            let bytes: usize = docs.iter().map(String::len).sum();
            let tok = Tokenizer::load(&tokenizer)?;
            for n in threads {
                let started = Instant::now();
                let mut tokens = 0;
                for _ in 0..repeat {
                    tokens += tok.encode_batch(&docs, None, n).iter().map(Vec::len).sum::<usize>();
                }
                let s = started.elapsed().as_secs_f64();
                println!(
                    "encode_threads_{n}: {:.1} MB/s, {:.2}M tokens/s",
                    (bytes * repeat) as f64 / s / 1e6,
                    tokens as f64 / s / 1e6
                );
            }
        }
        Bench::Dataloader { profile, batch, seq, batches } => {
            let cache = cache_root()?;
            let prepared = Prepared::load(&cache, profile.as_deref())?;
            let tok = Arc::new(load_tokenizer(&cache, &prepared)?);
            let files = split_files(&prepared.data_dir, Split::Train)?;
            let opts = LoaderOptions::default();
            let threads = opts.threads;
            let mut loader = DataLoader::new(tok, files, batch, seq, opts);
            for _ in 0..2 {
                loader.next_batch()?;
            }
            let started = Instant::now();
            for _ in 0..batches {
                let b = loader.next_batch()?;
                ensure!(b.inputs.len() == batch * seq);
            }
            let s = started.elapsed().as_secs_f64();
            println!(
                "dataloader: {:.2}M tokens/s (B {batch}, T {seq}, {threads} encoder threads, profile {})",
                (batches * batch * seq) as f64 / s / 1e6,
                prepared.profile.name
            );
        }
    }
    Ok(())
}
