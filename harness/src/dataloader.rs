//! BOS-aligned best-fit packing, without padding, in background threads.
//!
//! Documents are read in order and encoded with BOS in front. Each row of a batch holds T + 1 tokens: before
//! each placement the buffer is topped up to `buffer_size` documents, then the largest buffered document that
//! fits the space left is placed whole (the first among equals); if none fits, the shortest (the first among
//! equals) is cropped to fill the row exactly and its rest is dropped. inputs = row[..T], targets = row[1..].
//!
//! Pipeline: a reader thread (parquet) -> encoder threads -> a packing thread -> a bounded queue of batches,
//! so that the consumer only waits if the whole pipeline is slower than it.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{mpsc, Arc, Mutex};

use anyhow::{anyhow, Result};

use crate::shards::{spawn_reader, DocBatch};
use crate::tokenizer::Tokenizer;

/// One batch: `rows` × `cols` token ids, row-major, as i64 (what embedding and loss functions take).
pub struct Batch {
    pub inputs: Vec<i64>,
    pub targets: Vec<i64>,
    pub rows: usize,
    pub cols: usize,
    /// The pass over the data that the last document placed came from (1 = first).
    pub epoch: u64,
}

#[derive(Clone, Debug)]
pub struct LoaderOptions {
    /// Documents kept buffered to choose from.
    pub buffer_size: usize,
    /// Documents read and encoded together.
    pub tokenizer_batch: usize,
    /// Encoder threads.
    pub threads: usize,
    /// Finished batches kept ready ahead of the consumer.
    pub prefetch: usize,
}

impl Default for LoaderOptions {
    fn default() -> Self {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        LoaderOptions { buffer_size: 1000, tokenizer_batch: 128, threads, prefetch: 4 }
    }
}

pub struct DataLoader {
    batches: mpsc::Receiver<Result<Batch>>,
}

impl DataLoader {
    /// Batches of `b` rows by `t` tokens packed from `files`, read in order, repeated forever.
    pub fn new(tokenizer: Arc<Tokenizer>, files: Vec<PathBuf>, b: usize, t: usize, opts: LoaderOptions) -> Self {
        let docs = spawn_reader(files, true, opts.tokenizer_batch, opts.threads * 2 + 2);
        let encoded = spawn_encoders(tokenizer.clone(), docs, opts.threads);
        let (tx, batches) = mpsc::sync_channel(opts.prefetch.max(1));
        std::thread::Builder::new()
            .name("packer".into())
            .spawn(move || {
                let mut packer = Packer::new(encoded.into_iter(), opts.buffer_size);
                loop {
                    let batch = packer.next_batch(b, t);
                    let failed = batch.is_err();
                    if tx.send(batch).is_err() || failed {
                        return;
                    }
                }
            })
            .expect("spawning the packer");
        DataLoader { batches }
    }

    pub fn next_batch(&mut self) -> Result<Batch> {
        self.batches.recv().map_err(|_| anyhow!("the data loader stopped"))?
    }
}

impl Iterator for DataLoader {
    type Item = Result<Batch>;
    fn next(&mut self) -> Option<Result<Batch>> {
        Some(self.next_batch())
    }
}

type Encoded = Result<(Vec<Vec<u32>>, u64)>;

/// Encoder threads that take document batches in order and hand them on, still in order.
fn spawn_encoders(
    tok: Arc<Tokenizer>,
    docs: mpsc::Receiver<Result<DocBatch>>,
    threads: usize,
) -> mpsc::Receiver<Encoded> {
    let threads = threads.max(1);
    let (tx, rx) = mpsc::sync_channel::<Encoded>(threads * 2);
    // Sequence numbers are handed out under the same lock as the batches, and a reorder step restores order.
    let source = Arc::new(Mutex::new((docs, 0u64)));
    let (done_tx, done_rx) = mpsc::sync_channel::<(u64, Encoded)>(threads * 2);
    for i in 0..threads {
        let (source, done_tx, tok) = (source.clone(), done_tx.clone(), tok.clone());
        std::thread::Builder::new()
            .name(format!("encoder-{i}"))
            .spawn(move || {
                let mut encoder = tok.encoder();
                let bos = tok.bos_id();
                loop {
                    let (seq, batch) = {
                        let mut s = source.lock().unwrap();
                        let Ok(batch) = s.0.recv() else { return };
                        s.1 += 1;
                        (s.1 - 1, batch)
                    };
                    let out =
                        batch.map(|b| (b.docs.iter().map(|d| encoder.encode_doc(d, Some(bos))).collect(), b.epoch));
                    if done_tx.send((seq, out)).is_err() {
                        return;
                    }
                }
            })
            .expect("spawning an encoder");
    }
    drop(done_tx);
    std::thread::Builder::new()
        .name("reorder".into())
        .spawn(move || {
            let mut pending = HashMap::new();
            let mut next = 0u64;
            for (seq, item) in done_rx {
                pending.insert(seq, item);
                while let Some(item) = pending.remove(&next) {
                    if tx.send(item).is_err() {
                        return;
                    }
                    next += 1;
                }
            }
        })
        .expect("spawning the reorder thread");
    rx
}

/// The best-fit packing itself, over encoded documents arriving in order.
pub struct Packer<I> {
    source: I,
    /// Buffered documents keyed by (length, arrival number): range queries find best fits in O(log n).
    buffer: BTreeMap<(usize, u64), Vec<u32>>,
    arrivals: u64,
    buffer_size: usize,
    epoch: u64,
}

impl<I: Iterator<Item = Encoded>> Packer<I> {
    pub fn new(source: I, buffer_size: usize) -> Self {
        Packer { source, buffer: BTreeMap::new(), arrivals: 0, buffer_size, epoch: 1 }
    }

    fn top_up(&mut self) -> Result<()> {
        while self.buffer.len() < self.buffer_size {
            let (docs, epoch) = self.source.next().ok_or_else(|| anyhow!("the document reader stopped"))??;
            self.epoch = epoch;
            for doc in docs {
                self.buffer.insert((doc.len(), self.arrivals), doc);
                self.arrivals += 1;
            }
        }
        Ok(())
    }

    /// Takes the largest document of at most `room` tokens, the earliest among equals.
    fn take_best_fit(&mut self, room: usize) -> Option<Vec<u32>> {
        let (&(len, _), _) = self.buffer.range(..=(room, u64::MAX)).next_back()?;
        let (&key, _) = self.buffer.range((len, 0)..).next().expect("a document of this length");
        self.buffer.remove(&key)
    }

    fn take_shortest(&mut self) -> Vec<u32> {
        self.buffer.pop_first().expect("a topped-up buffer").1
    }

    pub fn next_batch(&mut self, b: usize, t: usize) -> Result<Batch> {
        let width = t + 1;
        let mut row = Vec::with_capacity(width);
        let (mut inputs, mut targets) = (Vec::with_capacity(b * t), Vec::with_capacity(b * t));
        for _ in 0..b {
            row.clear();
            while row.len() < width {
                self.top_up()?;
                let room = width - row.len();
                match self.take_best_fit(room) {
                    Some(doc) => row.extend_from_slice(&doc),
                    None => row.extend_from_slice(&self.take_shortest()[..room]),
                }
            }
            inputs.extend(row[..t].iter().map(|&x| x as i64));
            targets.extend(row[1..].iter().map(|&x| x as i64));
        }
        Ok(Batch { inputs, targets, rows: b, cols: t, epoch: self.epoch })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packer(docs: Vec<Vec<u32>>, buffer: usize) -> Packer<impl Iterator<Item = Encoded>> {
        let batches: Vec<Encoded> = docs.chunks(2).map(|c| Ok((c.to_vec(), 1))).collect();
        Packer::new(batches.into_iter().chain(std::iter::repeat_with(|| Ok((vec![vec![9; 50]], 2)))), buffer)
    }

    #[test]
    fn places_the_largest_fitting_document_first_among_equals() {
        // Row width 8 (T = 7). Buffer of 4: [3a, 5, 3b, 2]. Best fit for 8 is 5, then 3a (first of equals).
        let docs = vec![vec![1, 1, 1], vec![2; 5], vec![3, 3, 3], vec![4, 4]];
        let mut p = packer(docs, 4);
        let batch = p.next_batch(1, 7).unwrap();
        assert_eq!(batch.inputs, vec![2, 2, 2, 2, 2, 1, 1]);
        assert_eq!(batch.targets, vec![2, 2, 2, 2, 1, 1, 1]);
    }

    #[test]
    fn crops_the_shortest_when_nothing_fits() {
        // Width 4: nothing of [6, 5] fits, so the shortest (5) is cropped to 4 tokens.
        let docs = vec![vec![1; 6], vec![2, 3, 4, 5, 6]];
        let mut p = packer(docs, 2);
        let batch = p.next_batch(1, 3).unwrap();
        assert_eq!(batch.inputs, vec![2, 3, 4]);
        assert_eq!(batch.targets, vec![3, 4, 5]);
    }
}
