//! The fixed harness of autoresearch: the contract the training file works against, which the agent may not
//! change, and all of it is linked into the training binary.
//!
//! The [`profile`] (and what the training gets to work with), the data's [`shards`], the [`tokenizer`], the
//! [`dataloader`], the [`metric`], the [`summary`] block, the [`device`] tables, the device batch [`fit`], the
//! training's [`progress`] file, how the training binary is run and hands its model over ([`handover`]), the
//! [`sandbox`] the agent's code runs in (the pages of the files it maps first made [`resident`]), the
//! [`supervisor`] that ends every process a phase started, and [`fsutil`]. No ML framework: the training crate
//! brings its own; and no network or terminal tools: making the data (download, tokenizer training's driver,
//! progress bars) is `autoresearch-prepare`'s, which only the CLI links. The research loop lives in `autoresearch-research`.

pub mod dataloader;
pub mod device;
pub mod fit;
pub mod fsutil;
pub mod handover;
pub mod metric;
pub mod profile;
pub mod progress;
pub mod resident;
pub mod sandbox;
pub mod shards;
pub mod summary;
pub mod supervisor;
pub mod tokenizer;
