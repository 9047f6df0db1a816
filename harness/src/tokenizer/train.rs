//! BPE training: count the pre-split pieces of the training text, then repeatedly merge the most frequent
//! adjacent pair (the smallest pair of ids among equals) into a new token.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::mpsc;

use anyhow::{bail, Result};
use rustc_hash::FxHashMap;

use super::split;

pub struct TrainOptions {
    /// Ranks to produce: single bytes plus merges (the vocabulary without its specials).
    pub n_ranks: usize,
    /// Each document is cut to its first this many characters.
    pub doc_cap_chars: usize,
    /// Stop reading once this many characters have been counted (the document that crosses it is kept).
    pub max_chars: u64,
    pub threads: usize,
}

impl TrainOptions {
    /// The original's settings for a vocabulary of `n_ranks` ranks.
    pub fn new(n_ranks: usize) -> Self {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        TrainOptions { n_ranks, doc_cap_chars: 10_000, max_chars: 1_000_000_000, threads }
    }
}

/// What training has done so far, for progress reports.
pub enum Progress {
    Counted { chars: u64, docs: u64 },
    Merged { merges: usize, of: usize },
}

/// Trains on `docs` (in order) and returns the ranked tokens: the 256 bytes, then one per merge.
pub fn train_bpe<I>(docs: I, opts: &TrainOptions, progress: &mut dyn FnMut(Progress)) -> Result<Vec<Vec<u8>>>
where
    I: Iterator<Item = Result<String>>,
{
    if opts.n_ranks < 256 {
        bail!("a vocabulary needs at least 256 ranks for the single bytes, not {}", opts.n_ranks);
    }
    let counts = count_pieces(docs, opts, progress)?;
    merge(counts, opts.n_ranks, progress)
}

type PieceCounts = FxHashMap<Box<str>, u64>;

/// Counts every piece of every (capped) document, spread over worker threads.
fn count_pieces<I>(docs: I, opts: &TrainOptions, progress: &mut dyn FnMut(Progress)) -> Result<PieceCounts>
where
    I: Iterator<Item = Result<String>>,
{
    const CHUNK_CHARS: usize = 4 << 20;
    let workers = opts.threads.max(1);
    std::thread::scope(|s| {
        let (chunk_tx, chunk_rx) = mpsc::sync_channel::<Vec<String>>(workers * 2);
        let chunk_rx = std::sync::Arc::new(std::sync::Mutex::new(chunk_rx));
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                let rx = chunk_rx.clone();
                s.spawn(move || {
                    let mut counts = PieceCounts::default();
                    loop {
                        let chunk = match rx.lock().unwrap().recv() {
                            Ok(c) => c,
                            Err(_) => return counts,
                        };
                        for doc in &chunk {
                            for piece in split::pieces(doc) {
                                match counts.get_mut(piece) {
                                    Some(c) => *c += 1,
                                    None => {
                                        counts.insert(piece.into(), 1);
                                    }
                                }
                            }
                        }
                    }
                })
            })
            .collect();

        let (mut chars, mut docs_seen) = (0u64, 0u64);
        let mut chunk = Vec::new();
        let mut chunk_chars = 0;
        let mut result = Ok(());
        for doc in docs {
            let mut doc = match doc {
                Ok(d) => d,
                Err(e) => {
                    result = Err(e);
                    break;
                }
            };
            let n = match doc.char_indices().nth(opts.doc_cap_chars) {
                Some((cut, _)) => {
                    doc.truncate(cut);
                    opts.doc_cap_chars
                }
                None => doc.chars().count(),
            };
            chars += n as u64;
            docs_seen += 1;
            chunk_chars += doc.len();
            chunk.push(doc);
            if chunk_chars >= CHUNK_CHARS {
                chunk_tx.send(std::mem::take(&mut chunk)).expect("counting threads stopped");
                chunk_chars = 0;
                progress(Progress::Counted { chars, docs: docs_seen });
            }
            if chars > opts.max_chars {
                break;
            }
        }
        if !chunk.is_empty() {
            chunk_tx.send(chunk).expect("counting threads stopped");
        }
        drop(chunk_tx);
        progress(Progress::Counted { chars, docs: docs_seen });
        let mut total = PieceCounts::default();
        for h in handles {
            for (piece, c) in h.join().expect("counting thread panicked") {
                *total.entry(piece).or_default() += c;
            }
        }
        result.map(|_| total)
    })
}

type Pair = (u32, u32);

fn merge(counts: PieceCounts, n_ranks: usize, progress: &mut dyn FnMut(Progress)) -> Result<Vec<Vec<u8>>> {
    let mut words: Vec<Vec<u32>> = Vec::with_capacity(counts.len());
    let mut freq: Vec<i64> = Vec::with_capacity(counts.len());
    // Sorted so that the order of the work (never the result) is the same from run to run.
    let mut counts: Vec<_> = counts.into_iter().collect();
    counts.sort_unstable();
    for (piece, c) in counts {
        if piece.len() >= 2 {
            words.push(piece.bytes().map(u32::from).collect());
            freq.push(c as i64);
        }
    }

    let mut pair_count: FxHashMap<Pair, i64> = FxHashMap::default();
    let mut occurs_in: FxHashMap<Pair, Vec<u32>> = FxHashMap::default();
    for (w, word) in words.iter().enumerate() {
        for p in word.windows(2) {
            let pair = (p[0], p[1]);
            *pair_count.entry(pair).or_default() += freq[w];
            let list = occurs_in.entry(pair).or_default();
            if list.last() != Some(&(w as u32)) {
                list.push(w as u32);
            }
        }
    }
    // Max-heap on count, then on the smallest pair; entries go stale as counts fall and are re-checked.
    let mut heap: BinaryHeap<(i64, Reverse<Pair>)> = pair_count.iter().map(|(&p, &c)| (c, Reverse(p))).collect();

    let mut tokens: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
    let n_merges = n_ranks - 256;
    let mut new_pairs: FxHashMap<Pair, Vec<u32>> = FxHashMap::default();
    while tokens.len() < n_ranks {
        let Some((count, Reverse(pair))) = heap.pop() else {
            bail!(
                "the training text gives only {} ranks, fewer than the {} this vocabulary needs: \
                 use a smaller vocabulary or more text",
                tokens.len(),
                n_ranks
            );
        };
        let current = pair_count.get(&pair).copied().unwrap_or(0);
        if current != count {
            if current > 0 {
                heap.push((current, Reverse(pair)));
            }
            continue;
        }
        let new_id = tokens.len() as u32;
        let mut merged = tokens[pair.0 as usize].clone();
        merged.extend_from_slice(&tokens[pair.1 as usize]);
        tokens.push(merged);

        let mut change = |p: Pair, delta: i64| *pair_count.entry(p).or_default() += delta;
        for w in occurs_in.remove(&pair).unwrap_or_default() {
            let c = freq[w as usize];
            let word = &mut words[w as usize];
            let mut out = Vec::with_capacity(word.len());
            let mut i = 0;
            while i < word.len() {
                if i + 1 < word.len() && word[i] == pair.0 && word[i + 1] == pair.1 {
                    if let Some(&x) = out.last() {
                        change((x, pair.0), -c);
                        change((x, new_id), c);
                        note(&mut new_pairs, (x, new_id), w);
                    }
                    change(pair, -c);
                    if let Some(&y) = word.get(i + 2) {
                        change((pair.1, y), -c);
                        change((new_id, y), c);
                        note(&mut new_pairs, (new_id, y), w);
                    }
                    out.push(new_id);
                    i += 2;
                } else {
                    out.push(word[i]);
                    i += 1;
                }
            }
            *word = out;
        }
        for (p, ws) in new_pairs.drain() {
            let c = pair_count[&p];
            if c > 0 {
                heap.push((c, Reverse(p)));
                occurs_in.insert(p, ws);
            }
        }
        let done = tokens.len() - 256;
        if done.is_multiple_of(256) || done == n_merges {
            progress(Progress::Merged { merges: done, of: n_merges });
        }
    }
    Ok(tokens)
}

fn note(new_pairs: &mut FxHashMap<Pair, Vec<u32>>, pair: Pair, word: u32) {
    let list = new_pairs.entry(pair).or_default();
    if list.last() != Some(&word) {
        list.push(word);
    }
}
