//! Fixed tables for the tests' toy models. They come from a generator of their own, not libtorch's global one:
//! that one is shared by the tests' threads, and another test's draw between a seed and a draw once changed a table
//! between two evaluations that should have been equal.

use tch::Tensor;

use crate::causality::Draw;

/// A `rows` × `cols` table, the same on every call, uniform in [-scale, scale).
pub(crate) fn fixed_table(rows: i64, cols: i64, scale: f32) -> Tensor {
    const STEPS: usize = 1 << 24;
    let mut draw = Draw::new("a test's fixed table");
    let values: Vec<f32> =
        (0..rows * cols).map(|_| (draw.below(STEPS) as f32 / STEPS as f32 * 2.0 - 1.0) * scale).collect();
    Tensor::from_slice(&values).view([rows, cols])
}
