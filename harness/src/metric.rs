//! val_bpb: validation bits per byte, independent of the vocabulary.
//!
//! Over the val batches: the sum of per-token cross-entropy (nats) over targets that decode to at least one
//! byte, divided by ln 2 × the sum of the byte lengths of all targets. The model only hands over per-token
//! losses; the weighting and the sum happen here, where the agent cannot change them.

use anyhow::{bail, ensure, Result};

use crate::dataloader::Batch;

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

/// Evaluates `steps` batches from `batches` with `per_token_loss` (one loss per target, row-major).
pub fn evaluate_bpb<I, F>(batches: I, steps: usize, token_bytes: Vec<u32>, mut per_token_loss: F) -> Result<f64>
where
    I: IntoIterator<Item = Result<Batch>>,
    F: FnMut(&Batch) -> Result<Vec<f32>>,
{
    ensure!(steps > 0, "evaluation needs at least one batch");
    let mut sum = BpbSum::new(token_bytes);
    for batch in batches.into_iter().take(steps) {
        let batch = batch?;
        let losses = per_token_loss(&batch)?;
        sum.add(&batch.targets, &losses)?;
    }
    sum.bits_per_byte()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(targets: Vec<i64>) -> Batch {
        Batch { inputs: vec![0; targets.len()], rows: 1, cols: targets.len(), targets, epoch: 1 }
    }

    #[test]
    fn hand_computed_bits_per_byte() {
        // ids 0..4 take 1, 2, 3 and 0 bytes. Targets 0, 1, 2, 3 with losses 1, 2, 3, 100 nats: the special
        // (0 bytes) is left out of the nats, so (1 + 2 + 3) / (ln 2 × (1 + 2 + 3)) = 1 / ln 2.
        let tb = vec![1, 2, 3, 0];
        let got =
            evaluate_bpb([Ok(batch(vec![0, 1, 2, 3]))], 1, tb.clone(), |_| Ok(vec![1.0, 2.0, 3.0, 100.0])).unwrap();
        assert!((got - 1.0 / std::f64::consts::LN_2).abs() < 1e-12);

        // Two batches: (ln 2 × 2 + 0) / (ln 2 × (2 + 2)) = 0.5 bit per byte; only `steps` batches count.
        let batches = vec![Ok(batch(vec![1])), Ok(batch(vec![1])), Ok(batch(vec![2]))];
        let mut losses = vec![vec![2.0 * std::f32::consts::LN_2], vec![0.0]].into_iter();
        let got = evaluate_bpb(batches, 2, tb, |_| Ok(losses.next().unwrap())).unwrap();
        assert!((got - 0.5).abs() < 1e-7, "{got}");
    }

    #[test]
    fn bad_input_is_an_error() {
        let tb = vec![1, 0];
        assert!(evaluate_bpb([Ok(batch(vec![5]))], 1, tb.clone(), |_| Ok(vec![1.0])).is_err(), "id outside vocab");
        assert!(evaluate_bpb([Ok(batch(vec![1]))], 1, tb.clone(), |_| Ok(vec![1.0])).is_err(), "no bytes");
        assert!(evaluate_bpb([Ok(batch(vec![0, 0]))], 1, tb, |_| Ok(vec![1.0])).is_err(), "loss count");
    }
}
