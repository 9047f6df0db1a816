//! The causality check of the evaluation on CUDA (on the CPU, [`crate::probes`] checks instead, measured there
//! but not yet on a GPU): a language model that sees later tokens predicts them for free, and its val_bpb
//! collapses. On a few validation rows, the logits before a position p must not change when the tokens from p
//! on are replaced (by another row's, so that the input still looks like text); p is drawn at random. The same
//! batch holds each row twice, unchanged: the difference between those two is the device's own noise (zero
//! where its kernels are deterministic), which the tolerance allows for.

use anyhow::{bail, Result};
use tch::{Device, Kind, Tensor};

use crate::evaluation::ValRows;
use crate::Model;

/// Rows checked.
const ROWS: usize = 4;

/// The largest change of a logit that counts as the same, for logits up to `scale` in size and a device that
/// gave `noise` between two copies of one row: a few times that noise, plus rounding.
pub(crate) fn tolerance(scale: f64, noise: f64) -> f64 {
    1e-4 * scale + 1e-6 + 4.0 * noise
}

/// A small generator (xorshift64*), seeded from the nonce so that the positions checked cannot be foreseen.
pub(crate) struct Draw(u64);

impl Draw {
    pub(crate) fn new(seed: &str) -> Draw {
        Draw(autoresearch_harness::fsutil::fnv1a(autoresearch_harness::fsutil::FNV_START, seed.as_bytes()) | 1)
    }

    pub(crate) fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % n
    }
}

/// The rows checked and the model's logits for them, kept to check after the metric that the model still gives
/// the same: a model that changes while it is evaluated (one that trains on the validation inputs it is fed)
/// would be measured on what it learnt from them.
#[derive(Debug)]
pub struct Probe {
    batch: Tensor,
    /// Rows checked; the batch holds them as given, then altered from `cut[j]` on, then as given again.
    k: usize,
    cut: Vec<usize>,
    /// (3k, t, vocab), float64 on the CPU.
    logits: Tensor,
}

/// Ok (with the probe) if the model is causal on the rows checked; else the error names the first position
/// that sees later tokens.
pub fn check<M: Model>(model: &M, rows: &ValRows, vocab: usize, seed: &str) -> Result<Option<Probe>> {
    let (n, t) = (rows.rows, rows.cols);
    if t < 2 {
        return Ok(None);
    }
    let mut draw = Draw::new(seed);
    let k = ROWS.min(n);
    let (mut original, mut altered, mut cut) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..k {
        let r = draw.below(n);
        let p = 1 + draw.below(t - 1);
        let row = &rows.inputs[r * t..(r + 1) * t];
        let other = (r + 1 + draw.below(n.max(2) - 1)) % n;
        let mut changed = row.to_vec();
        for (i, x) in changed.iter_mut().enumerate().skip(p) {
            let replacement = rows.inputs[other * t + i];
            // Where the other row has the same token, any other token will do.
            *x = if replacement != row[i] { replacement } else { (row[i] + 1) % vocab as i64 };
        }
        original.extend_from_slice(row);
        altered.extend(changed);
        cut.push(p);
    }
    let batch = Tensor::from_slice(&[original.clone(), altered, original].concat()).view([3 * k as i64, t as i64]);
    let logits = probe_logits(model, &batch, vocab)?;
    for (j, &p) in cut.iter().enumerate() {
        let before = logits.get(j as i64).narrow(0, 0, p as i64);
        let after = logits.get((k + j) as i64).narrow(0, 0, p as i64);
        let again = logits.get((2 * k + j) as i64).narrow(0, 0, p as i64);
        let scale = before.abs().max().double_value(&[]);
        let noise = (&before - &again).abs().max().double_value(&[]);
        let changes = Vec::<f64>::try_from((&before - &after).abs().amax([-1], false))?;
        if let Some(q) = changes.iter().position(|&c| c.is_nan() || c > tolerance(scale, noise)) {
            bail!(
                "non-causal: position {q} sees later tokens (its logits changed by {:.3} when the tokens from \
                 position {p} on were replaced)",
                changes[q]
            );
        }
    }
    Ok(Some(Probe { batch, k, cut, logits }))
}

/// The model's logits for a probe batch, shape-checked, as float64 on the CPU.
fn probe_logits<M: Model>(model: &M, batch: &Tensor, vocab: usize) -> Result<Tensor> {
    let (rows, t) = batch.size2()?;
    let logits = model.logits(&batch.to_device(model.device()));
    if logits.size() != [rows, t, vocab as i64] {
        bail!("the model's logits have shape {:?}; the evaluation needs [{rows}, {t}, {vocab}]", logits.size());
    }
    Ok(logits.to_kind(Kind::Double).to_device(Device::Cpu))
}

impl Probe {
    /// Ok if the model gives the probe's rows the logits it gave them before the metric.
    pub fn check_unchanged<M: Model>(&self, model: &M, vocab: usize) -> Result<()> {
        let now = probe_logits(model, &self.batch, vocab)?;
        for j in 0..self.k {
            let first = self.logits.get(j as i64);
            let again = self.logits.get((2 * self.k + j) as i64).narrow(0, 0, self.cut[j] as i64);
            let noise = (&first.narrow(0, 0, self.cut[j] as i64) - &again).abs().max().double_value(&[]);
            let change = (&first - now.get(j as i64)).abs().max().double_value(&[]);
            let scale = first.abs().max().double_value(&[]);
            // Ten times the causality check's allowance for rounding: two calls may take other kernels' paths.
            if change.is_nan() || change > tolerance(10.0 * scale, noise) {
                bail!(
                    "the model changed while it was evaluated: its logits for the same rows moved by {change:.3} \
                     between before and after the metric"
                );
            }
        }
        Ok(())
    }
}
