//! The tokenizer against the original's golden files: trained ranks, token_bytes and encodings.

use autoresearch_golden::Reference;
use autoresearch_harness::shards::{self, Split};
use autoresearch_harness::tokenizer::train::{train_bpe, TrainOptions};
use autoresearch_harness::tokenizer::{Tokenizer, SPECIAL_TOKENS};

fn reference_tokenizer(r: &Reference, vocab: usize) -> Tokenizer {
    let dir = r.path(&format!("tokenizer-{vocab}"));
    let ranks = std::fs::read_to_string(dir.join("ranks.tiktoken")).unwrap();
    Tokenizer::from_ranks(autoresearch_harness::tokenizer::parse_ranks(&ranks).unwrap(), vec![]).unwrap()
}

#[test]
fn trained_ranks_equal_the_reference_byte_for_byte() {
    let r = Reference::load().unwrap();
    let files = shards::split_files(&r.path("data"), Split::Train).unwrap();
    for vocab in r.vocab_sizes() {
        let opts = TrainOptions::new(vocab - SPECIAL_TOKENS.len());
        let tokens = train_bpe(shards::documents(files.clone()), &opts, &mut |_| {}).unwrap();
        let tok = Tokenizer::from_ranks(tokens, vec![]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        tok.save(dir.path()).unwrap();
        let ours = std::fs::read(dir.path().join("ranks.tiktoken")).unwrap();
        let theirs = std::fs::read(r.path(&format!("tokenizer-{vocab}/ranks.tiktoken"))).unwrap();
        assert!(ours == theirs, "ranks for vocab {vocab} differ from the reference");
        let ours = std::fs::read_to_string(dir.path().join("token_bytes.json")).unwrap();
        let theirs: Vec<u32> =
            serde_json::from_slice(&std::fs::read(r.path(&format!("tokenizer-{vocab}/token_bytes.json"))).unwrap())
                .unwrap();
        assert_eq!(serde_json::from_str::<Vec<u32>>(&ours).unwrap(), theirs, "token_bytes for vocab {vocab}");
        assert_eq!(Tokenizer::load(dir.path()).unwrap().vocab_size(), vocab);
    }
}

#[test]
fn encodings_equal_the_reference() {
    let r = Reference::load().unwrap();
    let samples = std::fs::read_to_string(r.path("encode/samples.jsonl")).unwrap();
    for vocab in r.vocab_sizes() {
        let tok = reference_tokenizer(&r, vocab);
        let key = format!("ids_{vocab}");
        let mut texts = Vec::new();
        let mut expected = Vec::new();
        for line in samples.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let text = v["text"].as_str().unwrap().to_string();
            let ids: Vec<u32> = serde_json::from_value(v[&key].clone()).unwrap();
            assert_eq!(tok.encode(&text), ids, "vocab {vocab}, text {text:?}");
            assert_eq!(tok.decode(&ids), text);
            texts.push(text);
            expected.push(ids);
        }
        assert!(texts.len() > 100);
        assert_eq!(tok.encode_batch(&texts, None, 2), expected);
        let with_bos = tok.encode_batch(&texts, Some(tok.bos_id()), 3);
        for (got, want) in with_bos.iter().zip(&expected) {
            assert_eq!(got[0], tok.bos_id());
            assert_eq!(&got[1..], &want[..]);
        }
    }
}
