//! Best-fit packing against the original's first batches, train and val.

use std::sync::Arc;

use autoresearch_golden::Reference;
use autoresearch_harness::dataloader::{DataLoader, LoaderOptions};
use autoresearch_harness::shards::{split_files, Split};
use autoresearch_harness::tokenizer::{parse_ranks, Tokenizer};
use safetensors::SafeTensors;

fn int64s(st: &SafeTensors, name: &str) -> (Vec<usize>, Vec<i64>) {
    let t = st.tensor(name).unwrap_or_else(|_| panic!("no tensor {name}"));
    assert_eq!(t.dtype(), safetensors::Dtype::I64, "{name}");
    let data = t.data().chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap())).collect();
    (t.shape().to_vec(), data)
}

#[test]
fn packed_batches_equal_the_reference() {
    let r = Reference::load().unwrap();
    let (b, t) = (r.usize(&["dataloader", "B"]), r.usize(&["dataloader", "T"]));
    let n_batches = r.usize(&["dataloader", "batches_per_split"]);
    let vocab = r.usize(&["model", "vocab_size"]);
    let ranks = std::fs::read_to_string(r.path(&format!("tokenizer-{vocab}/ranks.tiktoken"))).unwrap();
    let tok = Arc::new(Tokenizer::from_ranks(parse_ranks(&ranks).unwrap(), vec![]).unwrap());
    let opts = LoaderOptions {
        buffer_size: r.usize(&["dataloader", "buffer_size"]),
        tokenizer_batch: r.usize(&["dataloader", "tokenizer_batch_size"]),
        threads: 3,
        prefetch: 2,
    };
    let bytes = std::fs::read(r.path(&format!("dataloader/batches_B{b}_T{t}.safetensors"))).unwrap();
    let golden = SafeTensors::deserialize(&bytes).unwrap();
    for (split, name) in [(Split::Train, "train"), (Split::Val, "val")] {
        let files = split_files(&r.path("data"), split).unwrap();
        let mut loader = DataLoader::new(tok.clone(), files, b, t, opts.clone());
        for k in 0..n_batches {
            let batch = loader.next_batch().unwrap();
            let (shape, inputs) = int64s(&golden, &format!("{name}.{k}.inputs"));
            let (_, targets) = int64s(&golden, &format!("{name}.{k}.targets"));
            assert_eq!(shape, vec![b, t]);
            assert_eq!(batch.inputs, inputs, "{name} batch {k} inputs");
            assert_eq!(batch.targets, targets, "{name} batch {k} targets");
        }
    }
}
