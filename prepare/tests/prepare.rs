//! Preparing profiles, and the errors that bad data and stale state give.

use std::path::Path;

use autoresearch_harness::profile::{load_tokenizer, tokenizer_dir, Prepared, Profile};
use autoresearch_harness::shards::{shard_name, Shard};
use autoresearch_prepare::{check_parquet_dir, prepare, write_text_shards, Source, TextInput};

fn small_text_profile(vocab: usize) -> Profile {
    Profile { vocab_size: vocab, ..Profile::builtin("small").unwrap() }
}

fn demo_inputs() -> Vec<TextInput> {
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/demo");
    TextInput::from_paths(&[demo]).unwrap()
}

#[test]
fn prepared_state_loads_and_stale_tokenizers_are_refused() {
    let cache = tempfile::tempdir().unwrap();
    let profile = small_text_profile(300);
    let prepared = prepare(cache.path(), &profile, Source::Texts(demo_inputs())).unwrap();
    assert_eq!(Prepared::load(cache.path(), None).unwrap(), prepared, "the active profile");
    assert_eq!(load_tokenizer(cache.path(), &prepared).unwrap().vocab_size(), 300);

    // More data than the tokenizer was trained on: mismatched.
    let extra = prepared.data_dir.join(shard_name(7));
    std::fs::copy(prepared.data_dir.join(shard_name(0)), &extra).unwrap();
    let msg = format!("{:#}", load_tokenizer(cache.path(), &prepared).err().unwrap());
    assert!(msg.contains("trained on other shards"), "{msg}");
    std::fs::remove_file(extra).unwrap();

    // A profile that wants another vocabulary than the tokenizer has.
    let other = Prepared { profile: small_text_profile(512), ..prepared.clone() };
    let msg = format!("{:#}", load_tokenizer(cache.path(), &other).err().unwrap());
    assert!(msg.contains("has 300 tokens") && msg.contains("needs 512"), "{msg}");

    // A missing tokenizer names its folder.
    std::fs::remove_file(tokenizer_dir(cache.path(), "small").join("ranks.tiktoken")).unwrap();
    let msg = format!("{:#}", load_tokenizer(cache.path(), &prepared).err().unwrap());
    assert!(msg.contains("no tokenizer at") && msg.contains("tokenizer"), "{msg}");

    // Preparing again repairs it.
    prepare(cache.path(), &profile, Source::Texts(demo_inputs())).unwrap();
    load_tokenizer(cache.path(), &prepared).unwrap();
}

#[test]
fn a_vocabulary_larger_than_the_data_gives_is_refused_and_nothing_is_kept() {
    let cache = tempfile::tempdir().unwrap();
    let text =
        TextInput { name: "tiny.txt".into(), bytes: b"one small doc\n\nanother small doc\n".to_vec(), path: None };
    let err = prepare(cache.path(), &small_text_profile(8192), Source::Texts(vec![text])).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("8192") && msg.contains("fewer than"), "{msg}");
    assert!(!tokenizer_dir(cache.path(), "small").exists());
    assert!(Prepared::load(cache.path(), Some("small")).is_err());
}

#[test]
fn bad_parquet_folders_are_refused_by_name() {
    let good = tempfile::tempdir().unwrap();
    let good = good.path().join("data");
    write_text_shards(&good, &demo_inputs()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let msg = format!("{:#}", check_parquet_dir(dir.path()).unwrap_err());
    assert!(msg.contains("no training shards") && msg.contains(&dir.path().display().to_string()), "{msg}");

    std::fs::copy(good.join(shard_name(0)), dir.path().join(shard_name(0))).unwrap();
    let msg = format!("{:#}", check_parquet_dir(dir.path()).unwrap_err());
    assert!(msg.contains("no validation shard shard_06542.parquet"), "{msg}");

    // Truncated: the footer is gone.
    let val = dir.path().join(shard_name(6542));
    let bytes = std::fs::read(good.join(shard_name(6542))).unwrap();
    std::fs::write(&val, &bytes[..bytes.len() / 2]).unwrap();
    let msg = format!("{:#}", check_parquet_dir(dir.path()).unwrap_err());
    assert!(msg.contains("shard_06542.parquet is not a readable parquet file"), "{msg}");

    // Not parquet at all.
    std::fs::write(&val, "just some text").unwrap();
    assert!(format!("{:#}", Shard::open(&val).err().unwrap()).contains("shard_06542.parquet"));
}

#[test]
fn a_shard_without_a_text_column_is_refused() {
    use parquet::data_type::{ByteArray, ByteArrayType};
    use parquet::file::writer::SerializedFileWriter;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(shard_name(0));
    let schema = std::sync::Arc::new(
        parquet::schema::parser::parse_message_type("message schema { optional binary content (STRING); }").unwrap(),
    );
    let mut w = SerializedFileWriter::new(std::fs::File::create(&path).unwrap(), schema, Default::default()).unwrap();
    let mut rg = w.next_row_group().unwrap();
    let mut col = rg.next_column().unwrap().unwrap();
    col.typed::<ByteArrayType>().write_batch(&[ByteArray::from("hello")], Some(&[1]), None).unwrap();
    col.close().unwrap();
    rg.close().unwrap();
    w.close().unwrap();
    let msg = format!("{:#}", Shard::open(&path).err().unwrap());
    assert!(msg.contains("shard_00000.parquet has no `text` column (its columns: content)"), "{msg}");
}
