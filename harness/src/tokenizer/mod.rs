//! Byte-level BPE tokenizer, tiktoken-compatible: training ([`train`]), encoding, and the files it lives in.
//!
//! On disk a tokenizer is a folder with `ranks.tiktoken` (one `base64(bytes) rank` line per rank, the format
//! tiktoken loads), `token_bytes.json` (the metric's byte count of every id, specials last as 0) and
//! `tokenizer.json` (vocabulary size, specials, pattern and the data it was trained on).

pub mod split;
pub mod train;

use std::collections::BinaryHeap;
use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use base64::Engine as _;
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

pub use split::SPLIT_PATTERN;

/// The special tokens after the ranks; the first is BOS.
pub const SPECIAL_TOKENS: [&str; 4] = ["<|reserved_0|>", "<|reserved_1|>", "<|reserved_2|>", "<|reserved_3|>"];

/// What `tokenizer.json` records beside the ranks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenizerInfo {
    pub vocab_size: usize,
    pub specials: Vec<String>,
    pub pattern: String,
    /// The training shards (file name and size in bytes), so that a tokenizer is never used with other data.
    pub trained_on: Vec<(String, u64)>,
}

pub struct Tokenizer {
    /// Bytes of each ranked token; the id is the index.
    tokens: Vec<Vec<u8>>,
    encoder: FxHashMap<Vec<u8>, u32>,
    /// (left, right) -> the token whose bytes are left's followed by right's, for every such pair.
    merges: FxHashMap<(u32, u32), u32>,
    byte_ids: [u32; 256],
    pub info: TokenizerInfo,
}

impl Tokenizer {
    /// Builds a tokenizer from its ranked tokens (index = rank = id), with [`SPECIAL_TOKENS`] after them.
    pub fn from_ranks(tokens: Vec<Vec<u8>>, trained_on: Vec<(String, u64)>) -> Result<Self> {
        let mut encoder = FxHashMap::default();
        for (id, bytes) in tokens.iter().enumerate() {
            ensure!(!bytes.is_empty(), "rank {id} is an empty token");
            if encoder.insert(bytes.clone(), id as u32).is_some() {
                bail!("rank {id} repeats an earlier token");
            }
        }
        let mut byte_ids = [0u32; 256];
        for b in 0..=255u8 {
            byte_ids[b as usize] =
                *encoder.get(&[b][..]).with_context(|| format!("no rank for the single byte {b}"))?;
        }
        let mut merges = FxHashMap::default();
        for (id, bytes) in tokens.iter().enumerate() {
            for cut in 1..bytes.len() {
                if let (Some(&l), Some(&r)) = (encoder.get(&bytes[..cut]), encoder.get(&bytes[cut..])) {
                    merges.insert((l, r), id as u32);
                }
            }
        }
        let info = TokenizerInfo {
            vocab_size: tokens.len() + SPECIAL_TOKENS.len(),
            specials: SPECIAL_TOKENS.iter().map(|s| s.to_string()).collect(),
            pattern: SPLIT_PATTERN.to_string(),
            trained_on,
        };
        Ok(Tokenizer { tokens, encoder, merges, byte_ids, info })
    }

    pub fn vocab_size(&self) -> usize {
        self.info.vocab_size
    }

    pub fn n_ranks(&self) -> usize {
        self.tokens.len()
    }

    pub fn bos_id(&self) -> u32 {
        self.tokens.len() as u32
    }

    /// The bytes of a ranked token (None for specials and ids out of range).
    pub fn token(&self, id: u32) -> Option<&[u8]> {
        self.tokens.get(id as usize).map(Vec::as_slice)
    }

    /// For every id: the UTF-8 length of decoding it alone with invalid bytes replaced by U+FFFD; 0 for specials.
    pub fn token_bytes(&self) -> Vec<u32> {
        let mut out: Vec<u32> = self.tokens.iter().map(|t| String::from_utf8_lossy(t).len() as u32).collect();
        out.resize(self.vocab_size(), 0);
        out
    }

    /// Decodes ids (specials by name) to text, replacing invalid UTF-8.
    pub fn decode(&self, ids: &[u32]) -> String {
        let mut bytes = Vec::new();
        for &id in ids {
            match self.token(id) {
                Some(t) => bytes.extend_from_slice(t),
                None => bytes.extend_from_slice(
                    SPECIAL_TOKENS.get(id as usize - self.tokens.len()).map_or("\u{fffd}", |s| s).as_bytes(),
                ),
            }
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Encodes text without recognising special tokens (tiktoken's `encode_ordinary`).
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut out = Vec::new();
        Encoder::new(self).encode_into(text, &mut out);
        out
    }

    /// Encodes many texts on `threads` threads, each optionally starting with `prepend` (BOS).
    pub fn encode_batch<S: AsRef<str> + Sync>(
        &self,
        texts: &[S],
        prepend: Option<u32>,
        threads: usize,
    ) -> Vec<Vec<u32>> {
        let encode_all = |chunk: &[S]| {
            let mut enc = self.encoder();
            chunk.iter().map(|t| enc.encode_doc(t.as_ref(), prepend)).collect::<Vec<_>>()
        };
        let threads = threads.clamp(1, texts.len().max(1));
        if threads == 1 {
            return encode_all(texts);
        }
        let chunk = texts.len().div_ceil(threads);
        std::thread::scope(|s| {
            let handles: Vec<_> = texts.chunks(chunk).map(|c| s.spawn(move || encode_all(c))).collect();
            handles.into_iter().flat_map(|h| h.join().expect("encoder thread panicked")).collect()
        })
    }

    /// An encoder with its own cache, for one thread's many documents.
    pub fn encoder(&self) -> Encoder<'_> {
        Encoder::new(self)
    }

    /// Applies BPE to one piece: merge the adjacent pair of lowest rank, leftmost first, until none is left.
    fn bpe(&self, piece: &[u8], out: &mut Vec<u32>) {
        if let Some(&id) = self.encoder.get(piece) {
            out.push(id);
            return;
        }
        if piece.len() > 64 {
            self.bpe_long(piece, out)
        } else {
            self.bpe_short(piece, out)
        }
    }

    /// The merges done directly, quadratic in the length: fastest for the short pieces of ordinary text.
    fn bpe_short(&self, piece: &[u8], out: &mut Vec<u32>) {
        let mut parts: Vec<u32> = piece.iter().map(|&b| self.byte_ids[b as usize]).collect();
        loop {
            let mut best = (u32::MAX, 0);
            for i in 0..parts.len() - 1 {
                if let Some(&m) = self.merges.get(&(parts[i], parts[i + 1])) {
                    if m < best.0 {
                        best = (m, i);
                    }
                }
            }
            if best.0 == u32::MAX {
                break;
            }
            parts[best.1] = best.0;
            parts.remove(best.1 + 1);
        }
        out.extend_from_slice(&parts);
    }

    /// The same merges in O(n log n) with a heap, for long pieces (a long run of spaces, say).
    fn bpe_long(&self, piece: &[u8], out: &mut Vec<u32>) {
        const NONE: usize = usize::MAX;
        let n = piece.len();
        let mut tok: Vec<u32> = piece.iter().map(|&b| self.byte_ids[b as usize]).collect();
        let mut next: Vec<usize> = (1..=n).map(|i| if i < n { i } else { NONE }).collect();
        let mut prev: Vec<usize> = (0..n).map(|i| if i > 0 { i - 1 } else { NONE }).collect();
        let mut alive = vec![true; n];
        // Min-heap on (rank, left position): the lowest rank, leftmost first.
        let mut heap = BinaryHeap::new();
        let push = |heap: &mut BinaryHeap<_>, tok: &[u32], l: usize, r: usize| {
            if let Some(&m) = self.merges.get(&(tok[l], tok[r])) {
                heap.push(std::cmp::Reverse((m, l, r)));
            }
        };
        for i in 0..n - 1 {
            push(&mut heap, &tok, i, i + 1);
        }
        while let Some(std::cmp::Reverse((m, l, r))) = heap.pop() {
            // Skip entries made stale by an earlier merge.
            if !alive[l] || !alive[r] || next[l] != r || self.merges.get(&(tok[l], tok[r])) != Some(&m) {
                continue;
            }
            tok[l] = m;
            alive[r] = false;
            next[l] = next[r];
            if next[r] != NONE {
                prev[next[r]] = l;
                push(&mut heap, &tok, l, next[l]);
            }
            if prev[l] != NONE {
                push(&mut heap, &tok, prev[l], l);
            }
        }
        let mut i = 0;
        while i != NONE {
            out.push(tok[i]);
            i = next[i];
        }
    }

    /// Reads a tokenizer folder written by [`Tokenizer::save`].
    pub fn load(dir: &Path) -> Result<Self> {
        let ranks_path = dir.join("ranks.tiktoken");
        let info_path = dir.join("tokenizer.json");
        let ranks = std::fs::read_to_string(&ranks_path)
            .with_context(|| format!("no tokenizer at {} (run `autoresearch prepare`)", dir.display()))?;
        let tokens = parse_ranks(&ranks).with_context(|| format!("reading {}", ranks_path.display()))?;
        let info: TokenizerInfo = serde_json::from_slice(
            &std::fs::read(&info_path).with_context(|| format!("reading {}", info_path.display()))?,
        )
        .with_context(|| format!("parsing {}", info_path.display()))?;
        let tok = Tokenizer::from_ranks(tokens, info.trained_on.clone())
            .with_context(|| format!("reading {}", ranks_path.display()))?;
        ensure!(
            tok.info == info,
            "{} does not match {}: {} ranks + {} specials, but it says vocab {} with {:?}",
            info_path.display(),
            ranks_path.display(),
            tok.n_ranks(),
            SPECIAL_TOKENS.len(),
            info.vocab_size,
            info.specials
        );
        let bytes_path = dir.join("token_bytes.json");
        let stored: Vec<u32> = serde_json::from_slice(
            &std::fs::read(&bytes_path).with_context(|| format!("reading {}", bytes_path.display()))?,
        )
        .with_context(|| format!("parsing {}", bytes_path.display()))?;
        ensure!(stored == tok.token_bytes(), "{} does not match {}", bytes_path.display(), ranks_path.display());
        Ok(tok)
    }

    /// Writes the tokenizer folder; each file appears complete or not at all.
    pub fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let b64 = base64::engine::general_purpose::STANDARD;
        let ranks: String = self.tokens.iter().enumerate().map(|(i, t)| format!("{} {i}\n", b64.encode(t))).collect();
        crate::fsutil::write_atomic(&dir.join("ranks.tiktoken"), ranks.as_bytes())?;
        crate::fsutil::write_atomic(&dir.join("token_bytes.json"), format_token_bytes(&self.token_bytes()).as_bytes())?;
        crate::fsutil::write_atomic(&dir.join("tokenizer.json"), serde_json::to_string_pretty(&self.info)?.as_bytes())
    }
}

/// token_bytes.json as the original writes it: one JSON list on one line.
fn format_token_bytes(v: &[u32]) -> String {
    let items: Vec<String> = v.iter().map(u32::to_string).collect();
    format!("[{}]", items.join(", "))
}

/// Parses `ranks.tiktoken`; ranks must run 0, 1, 2, ... in order.
pub fn parse_ranks(text: &str) -> Result<Vec<Vec<u8>>> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut tokens = Vec::new();
    for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.is_empty()) {
        let (token, rank) = line.split_once(' ').with_context(|| format!("line {}: expected `base64 rank`", n + 1))?;
        let rank: usize = rank.trim().parse().with_context(|| format!("line {}: bad rank {rank:?}", n + 1))?;
        ensure!(rank == tokens.len(), "line {}: rank {rank} out of order (expected {})", n + 1, tokens.len());
        tokens.push(b64.decode(token).with_context(|| format!("line {}: bad base64", n + 1))?);
    }
    Ok(tokens)
}

/// Encodes with a cache of recent pieces: most words repeat, and a lookup is far cheaper than BPE.
/// One per thread; [`Tokenizer::encoder`] makes one.
pub struct Encoder<'a> {
    tok: &'a Tokenizer,
    cache: FxHashMap<Box<str>, Vec<u32>>,
}

impl<'a> Encoder<'a> {
    const CACHE_LIMIT: usize = 1 << 16;

    fn new(tok: &'a Tokenizer) -> Self {
        Encoder { tok, cache: FxHashMap::default() }
    }

    /// Encodes one document, optionally after `prepend` (BOS).
    pub fn encode_doc(&mut self, text: &str, prepend: Option<u32>) -> Vec<u32> {
        let mut ids = Vec::with_capacity(text.len() / 3 + 1);
        ids.extend(prepend);
        self.encode_into(text, &mut ids);
        ids
    }

    fn encode_into(&mut self, text: &str, out: &mut Vec<u32>) {
        for piece in split::pieces(text) {
            if let Some(ids) = self.cache.get(piece) {
                out.extend_from_slice(ids);
                continue;
            }
            let start = out.len();
            self.tok.bpe(piece.as_bytes(), out);
            if piece.len() <= 32 {
                if self.cache.len() >= Self::CACHE_LIMIT {
                    self.cache.clear();
                }
                self.cache.insert(piece.into(), out[start..].to_vec());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn tokenizer() -> &'static Tokenizer {
        static TOK: std::sync::OnceLock<Tokenizer> = std::sync::OnceLock::new();
        // Trained here on the demo corpus, so that many merges apply to the test's pieces.
        TOK.get_or_init(|| {
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/demo/tinyshakespeare.txt");
            let text = std::fs::read_to_string(&path).unwrap();
            let docs = text.split("\n\n").map(|doc| Ok(doc.to_string()));
            let ranks = train::train_bpe(docs, &train::TrainOptions::new(508), &mut |_| {}).unwrap();
            Tokenizer::from_ranks(ranks, vec![]).unwrap()
        })
    }

    proptest! {
        #[test]
        fn heap_merges_equal_direct_merges(piece in prop::collection::vec(prop::sample::select(b" eatnhs\n".to_vec()), 2..300)) {
            let tok = tokenizer();
            let (mut short, mut long) = (Vec::new(), Vec::new());
            tok.bpe_short(&piece, &mut short);
            tok.bpe_long(&piece, &mut long);
            prop_assert_eq!(short, long);
        }
    }

    #[test]
    fn token_bytes_count_replacement_characters() {
        let tok = Tokenizer::from_ranks((0..=255u8).map(|b| vec![b]).chain([vec![0xe2, 0x82, 0xac]]).collect(), vec![])
            .unwrap();
        let tb = tok.token_bytes();
        assert_eq!(tb.len(), 257 + SPECIAL_TOKENS.len());
        assert_eq!(tb[b'a' as usize], 1);
        assert_eq!(tb[0x80], 3, "a lone continuation byte decodes to U+FFFD, 3 bytes");
        assert_eq!(tb[256], 3, "the euro sign");
        assert_eq!(&tb[257..], &[0, 0, 0, 0]);
    }

    #[test]
    fn ranks_files_with_errors_are_refused() {
        assert!(parse_ranks("AA== 0\nAQ== 2\n").unwrap_err().to_string().contains("out of order"));
        assert!(parse_ranks("AA==0\n").unwrap_err().to_string().contains("line 1"));
        assert!(parse_ranks("!!! 0\n").unwrap_err().to_string().contains("base64"));
        assert!(Tokenizer::from_ranks(vec![vec![1]], vec![]).is_err(), "the single bytes are required");
    }
}
