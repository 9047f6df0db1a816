//! val_bpb from the model's logits, in fixed code: the validation rows (exactly the profile's eval tokens,
//! packed as for training), fed in batches that fit the device, the cross-entropy of each target taken here,
//! and the metric of [`autoresearch_harness::metric`].

use anyhow::{ensure, Result};
use autoresearch_harness::dataloader::{DataLoader, LoaderOptions};
use autoresearch_harness::fit::{is_out_of_memory, quietly};
use autoresearch_harness::metric::BpbSum;
use autoresearch_harness::profile::Training;
use autoresearch_harness::shards::{split_files, Split};
use tch::{Device, Kind, Tensor};

use crate::Model;

/// The validation rows: `rows` × `cols` inputs and their targets (the inputs shifted by one), row-major.
pub struct ValRows {
    pub inputs: Vec<i64>,
    pub targets: Vec<i64>,
    pub rows: usize,
    pub cols: usize,
}

impl ValRows {
    /// The profile's eval tokens as whole rows of its sequence length, read from the validation shard.
    pub fn load(training: &Training) -> Result<ValRows> {
        let t = training.profile().max_seq_len;
        let rows = training.profile().eval_tokens / t;
        ensure!(rows > 0, "the profile's {} eval tokens are less than one row of {t}", training.profile().eval_tokens);
        let files = split_files(&training.prepared.data_dir, Split::Val)?;
        Self::read(DataLoader::new(training.tokenizer.clone(), files, rows, t, LoaderOptions::default()))
    }

    /// The first batch of `loader`, whole.
    pub fn read(mut loader: DataLoader) -> Result<ValRows> {
        let b = loader.next_batch()?;
        Ok(ValRows { inputs: b.inputs, targets: b.targets, rows: b.rows, cols: b.cols })
    }

    /// Inputs and targets of rows `start..start + n`, as (n, cols) tensors on `device`.
    pub fn tensors(&self, start: usize, n: usize, device: Device) -> (Tensor, Tensor) {
        let range = start * self.cols..(start + n) * self.cols;
        let shape = [n as i64, self.cols as i64];
        let x = Tensor::from_slice(&self.inputs[range.clone()]).view(shape).to_device(device);
        let y = Tensor::from_slice(&self.targets[range]).view(shape).to_device(device);
        (x, y)
    }
}

/// Cross-entropy (nats) of each target, (n, t), from logits (n, t, vocab) of any float kind, in float32: the
/// log-softmax, whose row maximum is subtracted before anything else. `logsumexp − logit` would lose the answer
/// to rounding at large magnitudes: logits all shifted by 2^30 round to one value, a uniform distribution, yet
/// `2^30 + ln vocab` rounds back to 2^30 and that difference scores a loss of 0 for any target.
pub fn cross_entropy(logits: &Tensor, targets: &Tensor, vocab: usize) -> Result<Tensor> {
    let (n, t) = targets.size2()?;
    ensure!(
        logits.size() == [n, t, vocab as i64],
        "the model's logits have shape {:?}; the evaluation needs [{n}, {t}, {vocab}] (batch, sequence, vocabulary)",
        logits.size()
    );
    Ok(-logits.log_softmax(-1, Kind::Float).gather(-1, &targets.unsqueeze(-1), false).squeeze_dim(-1))
}

/// Rows per forward pass to start with: float32 logits of at most 4 GiB on a GPU (64 rows at h100: the
/// evaluation's process holds nothing but the model), 8 MiB on the CPU (measured fastest there: the passes stay
/// in cache; 4 rows at small). A pass that runs out of memory is retried with half as many.
pub fn first_batch(cols: usize, vocab: usize, device: Device) -> usize {
    let budget: usize = if device.is_cuda() { 1 << 32 } else { 1 << 23 };
    (budget / (cols * vocab * 4)).max(1)
}

/// val_bpb of `model` over `rows`.
pub fn evaluate<M: Model>(model: &M, rows: &ValRows, vocab: usize, token_bytes: Vec<u32>) -> Result<f64> {
    let device = model.device();
    let mut sum = BpbSum::new(token_bytes);
    let mut batch = first_batch(rows.cols, vocab, device);
    let mut start = 0;
    while start < rows.rows {
        let n = batch.min(rows.rows - start);
        let losses = quietly(|| {
            let (x, y) = rows.tensors(start, n, device);
            let losses = cross_entropy(&model.logits(&x), &y, vocab)?;
            Ok(Vec::<f32>::try_from(losses.flatten(0, -1).to_device(Device::Cpu))?)
        });
        match losses {
            Ok(losses) => {
                sum.add(&rows.targets[start * rows.cols..(start + n) * rows.cols], &losses)?;
                start += n;
            }
            Err(e) if n > 1 && is_out_of_memory(&format!("{e:#}")) => batch = n / 2,
            Err(e) => return Err(e),
        }
    }
    sum.bits_per_byte()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::causality;

    /// A toy model: logits from the current token (a bigram table), or, when `peek`, a bet on the next input
    /// token (which is the target everywhere but at the end of a row). It runs out of memory on batches above
    /// `max_rows`.
    struct Toy {
        table: Tensor,
        peek: bool,
        max_rows: i64,
        /// Random noise added to every logit, as a nondeterministic device might.
        noise: f64,
        /// Each call shifts the table: a model that learns from what it is fed.
        drift: bool,
    }

    impl Toy {
        fn new(vocab: i64, peek: bool, max_rows: i64) -> Toy {
            Toy { table: crate::test_tables::fixed_table(vocab, vocab, 2.0), peek, max_rows, noise: 0.0, drift: false }
        }
    }

    impl Model for Toy {
        fn logits(&self, inputs: &Tensor) -> Tensor {
            let (n, _) = inputs.size2().unwrap();
            assert!(n <= self.max_rows, "CUDA out of memory (a test's stand-in): {n} rows");
            if self.drift {
                let _ = self.table.shallow_clone().g_add_scalar_(0.01).g_mul_scalar_(1.01);
            }
            let logits = Tensor::embedding(&self.table, inputs, -1, false, false);
            let logits = &logits + logits.randn_like() * self.noise;
            if !self.peek {
                return logits;
            }
            let next = inputs.roll([-1], [1]);
            logits + next.one_hot(self.table.size()[0]).to_kind(Kind::Float) * 20.0
        }
        fn device(&self) -> Device {
            Device::Cpu
        }
        fn state(&self) -> Vec<(String, Tensor)> {
            vec![("table".into(), self.table.shallow_clone())]
        }
        fn load_state(&self, _: &[(String, Tensor)]) -> Result<()> {
            Ok(())
        }
    }

    fn rows(n: usize, t: usize, vocab: i64) -> ValRows {
        let tokens: Vec<i64> = (0..n * (t + 1)).map(|i| (i as i64 * 7 + i as i64 / 5) % vocab).collect();
        let (mut inputs, mut targets) = (Vec::new(), Vec::new());
        for row in tokens.chunks(t + 1) {
            inputs.extend_from_slice(&row[..t]);
            targets.extend_from_slice(&row[1..]);
        }
        ValRows { inputs, targets, rows: n, cols: t }
    }

    #[test]
    fn cross_entropy_is_taken_from_the_logits_by_hand() {
        // Logits (1, 1, 2) = [0, ln 3]: p(target 1) = 3/4, so the loss is ln 4 − ln 3.
        let logits = Tensor::from_slice(&[0.0f32, 3f32.ln()]).view([1, 1, 2]);
        let loss = cross_entropy(&logits, &Tensor::from_slice(&[1i64]).view([1, 1]), 2).unwrap();
        assert!((loss.double_value(&[0, 0]) - (4f64.ln() - 3f64.ln())).abs() < 1e-6);
        let err = cross_entropy(&logits, &Tensor::from_slice(&[1i64]).view([1, 1]), 3).unwrap_err();
        assert!(err.to_string().contains("the evaluation needs [1, 1, 3]"), "{err}");
    }

    #[test]
    fn logits_shifted_out_of_float32_precision_score_as_the_uniform_distribution_they_round_to() {
        // [0, ln 3] + 2^30: float32's step at 2^30 is 128, so both logits are exactly 2^30, a uniform
        // distribution over 2 tokens: ln 2 for either target, not the 0 that `logsumexp − logit` rounds to.
        let shifted = Tensor::from_slice(&[0.0f32, 3f32.ln()]).view([1, 1, 2]) + 2f64.powi(30);
        for target in [0i64, 1] {
            let loss = cross_entropy(&shifted, &Tensor::from_slice(&[target]).view([1, 1]), 2).unwrap();
            assert!((loss.double_value(&[0, 0]) - 2f64.ln()).abs() < 1e-6, "target {target}: {loss}");
        }
        // A shift that float32 can hold changes nothing: ln 4 − ln 3, as unshifted.
        let held = Tensor::from_slice(&[0.0f32, 3f32.ln()]).view([1, 1, 2]) + 1000.0;
        let loss = cross_entropy(&held, &Tensor::from_slice(&[1i64]).view([1, 1]), 2).unwrap();
        assert!((loss.double_value(&[0, 0]) - (4f64.ln() - 3f64.ln())).abs() < 1e-4);
    }

    #[test]
    fn an_out_of_memory_batch_is_halved_and_every_row_still_counts() {
        let (vocab, val) = (16, rows(37, 8, 16));
        let bytes = vec![1; vocab as usize];
        let whole = evaluate(&Toy::new(vocab, false, i64::MAX), &val, vocab as usize, bytes.clone()).unwrap();
        let halved = evaluate(&Toy::new(vocab, false, 3), &val, vocab as usize, bytes).unwrap();
        assert!((whole - halved).abs() < 1e-9, "{whole} vs {halved}");
    }

    #[test]
    fn the_causality_check_passes_a_causal_model_and_names_a_leak() {
        let (vocab, val) = (16, rows(6, 12, 16));
        for seed in ["a", "b", "c"] {
            causality::check(&Toy::new(vocab, false, 64), &val, vocab as usize, seed).unwrap().unwrap();
            let err = causality::check(&Toy::new(vocab, true, 64), &val, vocab as usize, seed).unwrap_err();
            assert!(err.to_string().starts_with("non-causal: position "), "{err}");
            assert!(err.to_string().contains("sees later tokens"), "{err}");
        }
        // A device's own noise is allowed for; a leak stands out of it.
        let noisy = |peek| Toy { noise: 1e-3, ..Toy::new(vocab, peek, 64) };
        // One model for both checks: a second one's table, drawn from libtorch's generator (which tests on other
        // threads draw from too), could differ.
        let honest_but_noisy = noisy(false);
        let probe = causality::check(&honest_but_noisy, &val, vocab as usize, "noisy").unwrap().unwrap();
        probe.check_unchanged(&honest_but_noisy, vocab as usize).unwrap();
        assert!(causality::check(&noisy(true), &val, vocab as usize, "noisy").is_err());
        // A model that changes as it is fed the validation inputs is caught after the metric.
        let drifting = Toy { drift: true, ..Toy::new(vocab, false, 64) };
        let probe = causality::check(&drifting, &val, vocab as usize, "drift").unwrap().unwrap();
        evaluate(&drifting, &val, vocab as usize, vec![1; vocab as usize]).unwrap();
        let err = probe.check_unchanged(&drifting, vocab as usize).unwrap_err();
        assert!(err.to_string().starts_with("the model changed while it was evaluated"), "{err}");
        // The leak pays: the peeking model's val_bpb is far lower than the honest one's.
        let bytes = vec![1; vocab as usize];
        let honest = evaluate(&Toy::new(vocab, false, 64), &val, vocab as usize, bytes.clone()).unwrap();
        let peeking = evaluate(&Toy::new(vocab, true, 64), &val, vocab as usize, bytes).unwrap();
        assert!(peeking < honest / 2.0, "{peeking} vs {honest}");
    }
}
