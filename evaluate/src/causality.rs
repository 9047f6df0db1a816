//! The causality check: a language model that sees later tokens predicts them for free, and its val_bpb
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
fn tolerance(scale: f64, noise: f64) -> f64 {
    1e-4 * scale + 1e-6 + 4.0 * noise
}

/// A small generator (xorshift64*), seeded from the nonce so that the positions checked cannot be foreseen.
struct Draw(u64);

impl Draw {
    fn new(seed: &str) -> Draw {
        Draw(autoresearch_harness::fsutil::fnv1a(autoresearch_harness::fsutil::FNV_START, seed.as_bytes()) | 1)
    }

    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % n
    }
}

/// Ok if the model is causal on the rows checked; else the error names the first position that sees later
/// tokens.
pub fn check<M: Model>(model: &M, rows: &ValRows, vocab: usize, seed: &str) -> Result<()> {
    let (n, t) = (rows.rows, rows.cols);
    if t < 2 {
        return Ok(());
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
    let rows_in_batch = 3 * k as i64;
    let batch = Tensor::from_slice(&[original.clone(), altered, original].concat()).view([rows_in_batch, t as i64]);
    let logits = model.logits(&batch.to_device(model.device()));
    if logits.size() != [rows_in_batch, t as i64, vocab as i64] {
        bail!(
            "the model's logits have shape {:?}; the evaluation needs [{rows_in_batch}, {t}, {vocab}]",
            logits.size()
        );
    }
    let logits = logits.to_kind(Kind::Double).to_device(Device::Cpu);
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
    Ok(())
}
