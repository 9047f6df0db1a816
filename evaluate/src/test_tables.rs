//! Fixed tables for the tests' toy models. They come from a generator of their own, not libtorch's global one:
//! that one is shared by the tests' threads, and another test's draw between a seed and a draw once changed a table
//! between two evaluations that should have been equal.

use tch::Tensor;

/// A `rows` × `cols` table, the same on every call, uniform in [-scale, scale) (xorshift64).
pub(crate) fn fixed_table(rows: i64, cols: i64, scale: f32) -> Tensor {
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let values: Vec<f32> = (0..rows * cols)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect();
    Tensor::from_slice(&values).view([rows, cols])
}
