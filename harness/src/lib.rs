//! The fixed harness of autoresearch: everything the agent may not change.
//!
//! Data ([`download`], [`shards`]), the [`tokenizer`], the [`dataloader`], the [`metric`], the run
//! [`profile`] and the [`summary`] block. No ML framework: the training crate brings its own.

pub mod fsutil;
pub mod shards;
pub mod tokenizer;
pub mod reference;
