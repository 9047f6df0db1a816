//! Shared by the reference and CUDA tests.

use autoresearch_golden::Reference;
use tch::{Kind, Tensor};
use train::GptConfig;

/// The golden files' model configuration, from meta.json.
pub fn config(r: &Reference) -> GptConfig {
    let m = |k: &str| r.usize(&["model", k]) as i64;
    GptConfig {
        sequence_len: m("sequence_len"),
        vocab_size: m("vocab_size"),
        n_layer: m("n_layer"),
        n_head: m("n_head"),
        n_kv_head: m("n_kv_head"),
        n_embd: m("n_embd"),
        window_pattern: r.get(&["model", "window_pattern"]).as_str().unwrap().to_string(),
    }
}

/// ‖a − b‖ / ‖b‖.
pub fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
    let (a, b) = (a.to_kind(Kind::Double), b.to_kind(Kind::Double));
    (&a - &b).norm().double_value(&[]) / b.norm().double_value(&[])
}
