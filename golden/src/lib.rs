//! Test support: the golden files produced by the original system, which the parity tests reproduce.
//!
//! The folder is `$AUTORESEARCH_REFERENCE`, by default the repository's `tests/golden` (its README says how it
//! was made). Every configuration value comes from its `meta.json`, so the same tests run on another golden set.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

pub struct Reference {
    pub dir: PathBuf,
    pub meta: serde_json::Value,
}

impl Reference {
    pub fn load() -> Result<Self> {
        let dir = match std::env::var_os("AUTORESEARCH_REFERENCE") {
            Some(d) => PathBuf::from(d),
            None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/golden"),
        };
        let meta_path = dir.join("meta.json");
        let meta = serde_json::from_slice(&std::fs::read(&meta_path).with_context(|| {
            format!("reading {} (set AUTORESEARCH_REFERENCE to the golden-file folder)", meta_path.display())
        })?)
        .with_context(|| format!("parsing {}", meta_path.display()))?;
        Ok(Reference { dir, meta })
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    /// A value of meta.json by its path of keys, e.g. `get(&["dataloader", "B"])`.
    pub fn get(&self, keys: &[&str]) -> &serde_json::Value {
        keys.iter().fold(&self.meta, |v, k| &v[*k])
    }

    pub fn usize(&self, keys: &[&str]) -> usize {
        self.get(keys).as_u64().unwrap_or_else(|| panic!("meta.json has no integer at {keys:?}")) as usize
    }

    pub fn f64(&self, keys: &[&str]) -> f64 {
        self.get(keys).as_f64().unwrap_or_else(|| panic!("meta.json has no number at {keys:?}"))
    }

    /// The vocabulary sizes of the reference tokenizers (`tokenizer-N` folders).
    pub fn vocab_sizes(&self) -> Vec<usize> {
        let map = self.get(&["tokenizers"]).as_object().expect("meta.json: tokenizers");
        map.values().map(|v| v.as_u64().expect("a vocab size") as usize).collect()
    }
}
