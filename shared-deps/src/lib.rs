//! No code. This crate's dependencies give the third-party crates that both the CLI (`autoresearch`) and the
//! training binary (`autoresearch-train`) use one set of features in both builds, so that building one after the
//! other compiles each of them once (see Cargo.toml for why, and tests/same_features.rs for the check).
