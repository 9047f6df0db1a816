//! `noise.json`: the seed-to-seed spread of val_bpb measured for a session, one estimate per profile and budget
//! (by `autoresearch noise`, or by a session's baseline under `margin`). The keep rules decide by it; `report`
//! marks the gains smaller than 2σ of it.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// Seed-to-seed spread of val_bpb for one profile and budget.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NoiseEstimate {
    pub profile: String,
    pub budget: f64,
    pub commit: String,
    pub seeds: Vec<u64>,
    pub values: Vec<f64>,
    pub mean: f64,
    pub std: f64,
}

impl NoiseEstimate {
    /// The spread of `values` (one per seed); an error where they are all the same (see [`seed_blind`]).
    pub fn new(profile: &str, budget: f64, commit: &str, seeds: Vec<u64>, values: Vec<f64>) -> Result<NoiseEstimate> {
        let (mean, std) = mean_std(&values).context("a noise estimate needs at least 2 runs")?;
        if let Some(why) = seed_blind(&seeds, &values) {
            bail!("{why}");
        }
        Ok(NoiseEstimate { profile: profile.into(), budget, commit: commit.into(), seeds, values, mean, std })
    }
}

/// Mean and sample standard deviation (n − 1); None for fewer than 2 values.
pub fn mean_std(values: &[f64]) -> Option<(f64, f64)> {
    if values.len() < 2 {
        return None;
    }
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
    Some((mean, var.sqrt()))
}

/// Why `values` (the metric with each of `seeds`) cannot measure a spread, if they cannot: two or more, all the
/// same. A training that ignores its seed would make σ = 0, and `margin` as credulous as `lower`.
pub fn seed_blind(seeds: &[u64], values: &[f64]) -> Option<String> {
    let first = *values.first()?;
    (values.len() >= 2 && values.iter().all(|v| v.to_bits() == first.to_bits())).then(|| {
        let seeds = seeds.iter().map(u64::to_string).collect::<Vec<_>>().join(", ");
        format!(
            "the metric is {first:.6} with every seed ({seeds}): the training ignores its seed (a project's: \
             AUTORESEARCH_SEED), so the seed-to-seed spread cannot be measured"
        )
    })
}

fn noise_key(profile: &str, budget: f64) -> String {
    format!("{profile}/{budget}")
}

pub fn load_noise(dir: &Path) -> Result<BTreeMap<String, NoiseEstimate>> {
    let path = dir.join(crate::files::NOISE_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", path.display())),
        Err(_) => Ok(BTreeMap::new()),
    }
}

pub fn noise_for(dir: &Path, profile: &str, budget: f64) -> Result<Option<NoiseEstimate>> {
    Ok(load_noise(dir)?.remove(&noise_key(profile, budget)))
}

pub fn save_noise(dir: &Path, estimate: &NoiseEstimate) -> Result<()> {
    let mut all = load_noise(dir)?;
    all.insert(noise_key(&estimate.profile, estimate.budget), estimate.clone());
    autoresearch_harness::fsutil::write_atomic(
        &dir.join(crate::files::NOISE_FILE),
        serde_json::to_string_pretty(&all)?.as_bytes(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_the_same_for_every_seed_are_refused() {
        let why = seed_blind(&[42, 43, 44], &[1.25, 1.25, 1.25]).unwrap();
        assert!(
            why.contains("the metric is 1.250000 with every seed (42, 43, 44)") && why.contains("ignores its seed")
        );
        let err = NoiseEstimate::new("small", 10.0, "abc", vec![43, 44], vec![0.5, 0.5]).unwrap_err().to_string();
        assert!(err.contains("ignores its seed"), "{err}");
        assert!(seed_blind(&[42, 43], &[1.25, 1.25 + 1e-12]).is_none(), "any difference is a spread");
        assert!(seed_blind(&[42], &[1.25]).is_none(), "one value says nothing");
        assert!(seed_blind(&[], &[]).is_none());
    }
}
