//! Parquet shards in the climbmix layout: one string column `text`, 1024 rows per row group, zstd.
//! Validation is the shard numbered [`VAL_SHARD`]; every other shard is training data.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use anyhow::{bail, ensure, Context, Result};
use parquet::basic::{Compression, ZstdLevel};
use parquet::column::reader::ColumnReader;
use parquet::data_type::{ByteArray, ByteArrayType};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;

/// The last shard of climbmix, pinned as the validation split.
pub const VAL_SHARD: usize = 6542;
/// Rows per row group in a shard.
pub const ROWS_PER_GROUP: usize = 1024;

pub fn shard_name(index: usize) -> String {
    format!("shard_{index:05}.parquet")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    Train,
    Val,
}

/// The shard files of a split, in file-name order.
pub fn split_files(dir: &Path, split: Split) -> Result<Vec<PathBuf>> {
    let val_name = shard_name(VAL_SHARD);
    let mut all = Vec::new();
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("no data at {} (run `autoresearch prepare`)", dir.display()))?;
    for entry in entries {
        let path = entry.with_context(|| format!("listing {}", dir.display()))?.path();
        if path.extension().is_some_and(|e| e == "parquet") {
            all.push(path);
        }
    }
    all.sort();
    let (val, train): (Vec<_>, Vec<_>) =
        all.into_iter().partition(|p| p.file_name().is_some_and(|n| n == val_name.as_str()));
    let files = match split {
        Split::Train => train,
        Split::Val => val,
    };
    if files.is_empty() {
        match split {
            Split::Train => bail!("no training shards (*.parquet other than {val_name}) in {}", dir.display()),
            Split::Val => bail!("no validation shard {val_name} in {}", dir.display()),
        }
    }
    Ok(files)
}

/// An open shard, read one row group at a time.
pub struct Shard {
    path: PathBuf,
    reader: SerializedFileReader<File>,
    column: usize,
}

impl Shard {
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let reader = SerializedFileReader::new(file)
            .with_context(|| format!("{} is not a readable parquet file", path.display()))?;
        let schema = reader.metadata().file_metadata().schema_descr();
        let names: Vec<String> = schema.columns().iter().map(|c| c.name().to_string()).collect();
        let Some(column) = names.iter().position(|n| n == "text") else {
            bail!("{} has no `text` column (its columns: {})", path.display(), names.join(", "));
        };
        let physical = schema.column(column).physical_type();
        ensure!(
            physical == parquet::basic::Type::BYTE_ARRAY,
            "{}: column `text` holds {physical}, not strings",
            path.display()
        );
        Ok(Shard { path: path.to_path_buf(), reader, column })
    }

    pub fn num_row_groups(&self) -> usize {
        self.reader.num_row_groups()
    }

    /// The texts of one row group, in order.
    pub fn row_group(&self, index: usize) -> Result<Vec<String>> {
        let ctx = || format!("{} row group {index}", self.path.display());
        let group = self.reader.get_row_group(index).with_context(ctx)?;
        let rows = group.metadata().num_rows() as usize;
        let ColumnReader::ByteArrayColumnReader(mut col) = group.get_column_reader(self.column).with_context(ctx)?
        else {
            bail!("{}: column `text` is not a byte array", ctx());
        };
        let (mut values, mut defs) = (Vec::with_capacity(rows), Vec::with_capacity(rows));
        let mut read = 0;
        while read < rows {
            let (records, _, _) =
                col.read_records(rows - read, Some(&mut defs), None, &mut values).with_context(ctx)?;
            if records == 0 {
                break;
            }
            read += records;
        }
        ensure!(read == rows, "{}: {read} of {rows} rows readable", ctx());
        let max_def = self.reader.metadata().file_metadata().schema_descr().column(self.column).max_def_level();
        if max_def > 0 {
            if let Some(row) = defs.iter().position(|&d| d < max_def) {
                bail!("{}: row {row} has no text (null)", ctx());
            }
        }
        values
            .into_iter()
            .enumerate()
            .map(|(row, v)| {
                String::from_utf8(v.data().to_vec())
                    .map_err(|e| anyhow::anyhow!("{}: row {row} is not UTF-8 ({e})", ctx()))
            })
            .collect()
    }
}

/// A batch of documents as read, with the epoch it belongs to (1 on the first pass over the files).
pub struct DocBatch {
    pub docs: Vec<String>,
    pub epoch: u64,
}

/// Reads `files` in order in a background thread, in batches of `batch_docs` documents (never spanning
/// row groups); with `repeat`, starts over with epoch + 1 forever. The channel holds `queue` batches.
pub fn spawn_reader(
    files: Vec<PathBuf>,
    repeat: bool,
    batch_docs: usize,
    queue: usize,
) -> mpsc::Receiver<Result<DocBatch>> {
    let (tx, rx) = mpsc::sync_channel(queue);
    std::thread::Builder::new()
        .name("shard-reader".into())
        .spawn(move || {
            let mut epoch = 1;
            loop {
                for path in &files {
                    let shard = match Shard::open(path) {
                        Ok(s) => s,
                        Err(e) => return drop(tx.send(Err(e))),
                    };
                    for g in 0..shard.num_row_groups() {
                        let texts = match shard.row_group(g) {
                            Ok(t) => t,
                            Err(e) => return drop(tx.send(Err(e))),
                        };
                        let mut texts = texts.into_iter().peekable();
                        while texts.peek().is_some() {
                            let docs: Vec<String> = texts.by_ref().take(batch_docs).collect();
                            if tx.send(Ok(DocBatch { docs, epoch })).is_err() {
                                return; // the consumer is gone
                            }
                        }
                    }
                }
                if !repeat {
                    return;
                }
                epoch += 1;
            }
        })
        .expect("spawning the shard reader");
    rx
}

/// Every document of `files`, in order, read in a background thread.
pub fn documents(files: Vec<PathBuf>) -> impl Iterator<Item = Result<String>> {
    spawn_reader(files, false, ROWS_PER_GROUP, 4).into_iter().flat_map(
        |batch| -> Box<dyn Iterator<Item = Result<String>>> {
            match batch {
                Ok(b) => Box::new(b.docs.into_iter().map(Ok)),
                Err(e) => Box::new(std::iter::once(Err(e))),
            }
        },
    )
}

/// Writes documents as a shard in the climbmix layout (no dictionary, no statistics), atomically.
pub fn write_shard(path: &Path, docs: &[String]) -> Result<()> {
    let schema = std::sync::Arc::new(parse_message_type("message schema { optional binary text (STRING); }")?);
    let props = std::sync::Arc::new(
        WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::try_new(3)?))
            .set_dictionary_enabled(false)
            .set_statistics_enabled(EnabledStatistics::None)
            .set_max_row_group_row_count(Some(ROWS_PER_GROUP))
            .build(),
    );
    crate::fsutil::write_atomic_with(path, |file| {
        let mut writer = SerializedFileWriter::new(file, schema, props)?;
        for group in docs.chunks(ROWS_PER_GROUP) {
            let mut rg = writer.next_row_group()?;
            let mut col = rg.next_column()?.expect("one column");
            let values: Vec<ByteArray> = group.iter().map(|d| ByteArray::from(d.as_bytes().to_vec())).collect();
            col.typed::<ByteArrayType>().write_batch(&values, Some(&vec![1; values.len()]), None)?;
            col.close()?;
            rg.close()?;
        }
        writer.close()?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_shards_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(shard_name(3));
        let docs: Vec<String> = (0..2500).map(|i| format!("document {i} ünïcode")).collect();
        write_shard(&path, &docs).unwrap();
        let shard = Shard::open(&path).unwrap();
        assert_eq!(shard.num_row_groups(), 3);
        let back: Vec<String> = (0..3).flat_map(|g| shard.row_group(g).unwrap()).collect();
        assert_eq!(back, docs);
        assert!(!crate::fsutil::tmp_path(&path).exists());
    }
}
