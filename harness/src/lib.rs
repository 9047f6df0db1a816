//! The fixed harness of autoresearch: everything the agent may not change.
//!
//! Data ([`download`], [`shards`], [`prepare`]), the [`tokenizer`], the [`dataloader`], the [`metric`], the
//! run [`profile`], the [`summary`] block and the [`device`] tables. No ML framework: the training crate
//! brings its own.

pub mod dataloader;
pub mod device;
pub mod download;
pub mod experiment;
pub mod fsutil;
pub mod metric;
pub mod prepare;
pub mod profile;
pub mod reference;
pub mod shards;
pub mod summary;
pub mod tokenizer;
