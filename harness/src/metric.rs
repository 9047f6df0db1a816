//! val_bpb: validation bits per byte, independent of the vocabulary.
//!
//! Over the val batches: the sum of per-token cross-entropy (nats) over targets that decode to at least one
//! byte, divided by ln 2 × the sum of the byte lengths of all targets. The evaluation (fixed code) hands over
//! per-token losses; the weighting and the sum happen here.

use anyhow::{bail, ensure, Result};

/// Running sums of the metric.
pub struct BpbSum {
    token_bytes: Vec<u32>,
    nats: f64,
    bytes: u64,
}

impl BpbSum {
    pub fn new(token_bytes: Vec<u32>) -> Self {
        BpbSum { token_bytes, nats: 0.0, bytes: 0 }
    }

    /// Adds one batch: its target ids and the model's loss (nats) for each.
    pub fn add(&mut self, targets: &[i64], losses: &[f32]) -> Result<()> {
        ensure!(targets.len() == losses.len(), "{} losses for {} targets", losses.len(), targets.len());
        for (&t, &loss) in targets.iter().zip(losses) {
            let Some(&nb) = self.token_bytes.get(t as usize) else {
                bail!("target id {t} is outside the vocabulary of {}", self.token_bytes.len());
            };
            if nb > 0 {
                self.nats += loss as f64;
                self.bytes += nb as u64;
            }
        }
        Ok(())
    }

    pub fn bits_per_byte(&self) -> Result<f64> {
        ensure!(self.bytes > 0, "no validation bytes were evaluated");
        Ok(self.nats / (std::f64::consts::LN_2 * self.bytes as f64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bpb(tb: &[u32], batches: &[(Vec<i64>, Vec<f32>)]) -> Result<f64> {
        let mut sum = BpbSum::new(tb.to_vec());
        for (targets, losses) in batches {
            sum.add(targets, losses)?;
        }
        sum.bits_per_byte()
    }

    #[test]
    fn hand_computed_bits_per_byte() {
        // ids 0..4 take 1, 2, 3 and 0 bytes. Targets 0, 1, 2, 3 with losses 1, 2, 3, 100 nats: the special
        // (0 bytes) is left out of the nats, so (1 + 2 + 3) / (ln 2 × (1 + 2 + 3)) = 1 / ln 2.
        let tb = [1, 2, 3, 0];
        let got = bpb(&tb, &[(vec![0, 1, 2, 3], vec![1.0, 2.0, 3.0, 100.0])]).unwrap();
        assert!((got - 1.0 / std::f64::consts::LN_2).abs() < 1e-12);
        // Two batches: (ln 2 × 2 + 0) / (ln 2 × (2 + 2)) = 0.5 bit per byte.
        let got = bpb(&tb, &[(vec![1], vec![2.0 * std::f32::consts::LN_2]), (vec![1], vec![0.0])]).unwrap();
        assert!((got - 0.5).abs() < 1e-7, "{got}");
    }

    #[test]
    fn bad_input_is_an_error() {
        let tb = [1, 0];
        assert!(bpb(&tb, &[(vec![5], vec![1.0])]).is_err(), "id outside vocab");
        assert!(bpb(&tb, &[(vec![1], vec![1.0])]).is_err(), "no bytes");
        assert!(bpb(&tb, &[(vec![0, 0], vec![1.0])]).is_err(), "loss count");
    }
}
