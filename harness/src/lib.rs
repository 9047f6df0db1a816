//! The fixed harness of autoresearch: the contract the training file works against, which the agent may not
//! change.
//!
//! Data ([`download`], [`shards`], [`prepare`]), the [`tokenizer`], the [`dataloader`], the [`metric`], the
//! run [`profile`], the [`summary`] block, the [`device`] tables, the device batch [`fit`], the training's
//! [`progress`] file, how the training binary is run and hands its model over ([`handover`]), and the
//! [`sandbox`] the agent's code runs in. No ML framework: the training crate brings its own. The research loop
//! that drives experiments lives in `autoresearch-research`.

pub mod dataloader;
pub mod device;
pub mod download;
pub mod fit;
pub mod fsutil;
pub mod handover;
pub mod metric;
pub mod prepare;
pub mod profile;
pub mod progress;
pub mod sandbox;
pub mod shards;
pub mod summary;
pub mod tokenizer;
