//! libtorch pieces that the training file needs and tch does not wrap, part of the fixed harness:
//! - [`attention`]: causal sliding-window attention in one call; the backend is picked here (FlashAttention-2
//!   for windows on CUDA, SDPA otherwise, with the window masks cached);
//! - [`softcap`] and [`softcap_cross_entropy`]: softcapped logits, and their loss (a fused CUDA kernel where it
//!   loads, elsewhere the cross-entropy of [`softcap`]'s logits);
//! - bf16 [`autocast`], TF32, and facts about the CUDA device.

use std::collections::BTreeMap;
use std::ffi::{c_char, CStr};
use std::sync::Mutex;

use tch::{Device, Kind, Reduction, Tensor};
use torch_sys::C_tensor;

extern "C" {
    fn ar_flash_attention(
        q: *const C_tensor,
        k: *const C_tensor,
        v: *const C_tensor,
        window_left: i64,
        err: *mut *mut c_char,
    ) -> *mut C_tensor;
    fn ar_set_autocast_bf16();
    fn ar_autocast_enter(enabled: bool) -> bool;
    fn ar_autocast_exit(previous: bool);
    fn ar_set_float32_matmul_precision_high();
    fn ar_softcap_cross_entropy(
        logits: *const C_tensor,
        targets: *const C_tensor,
        cap: f64,
        err: *mut *mut c_char,
    ) -> *mut C_tensor;
    fn ar_fused_kernels_available(device: i32, err: *mut *mut c_char) -> bool;
    fn ar_cuda_peak_allocated_bytes(device: i32) -> i64;
    fn ar_cuda_device_name(device: i32, buf: *mut c_char, len: i32) -> i32;
}

/// Causal self-attention where query i sees keys i − `window` ..= i (a window ≥ T is plain causal attention).
/// q, k, v: (B, T, H, D); the result has the same layout. On CUDA a window shorter than T runs on
/// FlashAttention-2 and a full one on SDPA's causal kernel (faster there); on the CPU, SDPA with the window's
/// mask, built once per (window, T, device).
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, window: i64) -> Tensor {
    let t = q.size()[1];
    if q.device().is_cuda() && window < t {
        return flash_attention(q, k, v, window).expect("flash attention");
    }
    let mask = (window < t).then(|| window_mask(window, t, q.device()));
    let (q, k, v) = (q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2));
    Tensor::scaled_dot_product_attention(&q, &k, &v, mask.as_ref(), 0.0, mask.is_none(), None, false).transpose(1, 2)
}

/// True where query i may see key j: i − window ≤ j ≤ i; (T, T), cached.
fn window_mask(window: i64, t: i64, device: Device) -> Tensor {
    /// (window, T, device) and its mask.
    type Cached = ((i64, i64, Device), Tensor);
    static MASKS: Mutex<Vec<Cached>> = Mutex::new(Vec::new());
    let mut masks = MASKS.lock().unwrap();
    if let Some((_, m)) = masks.iter().find(|(key, _)| *key == (window, t, device)) {
        return m.shallow_clone();
    }
    let i = Tensor::arange(t, (Kind::Int64, device)).unsqueeze(1);
    let j = Tensor::arange(t, (Kind::Int64, device)).unsqueeze(0);
    let mask = j.le_tensor(&i).logical_and(&j.ge_tensor(&(i - window)));
    masks.push(((window, t, device), mask.shallow_clone()));
    mask
}

/// `cap`·tanh(`logits` / `cap`) in float32: logits squashed into (−cap, cap).
pub fn softcap(logits: &Tensor, cap: f64) -> Tensor {
    (logits.to_kind(Kind::Float) / cap).tanh() * cap
}

/// Per-row cross-entropy of [`softcap`]`(logits, cap)` against `targets` (rows with a negative target count 0).
/// logits: (rows, vocab); targets: (rows,) int64; returns (rows,) float32. On CUDA one fused kernel each way
/// where NVRTC can build it (checked once per device; a warning and plain ops if not), so that no float32 copy
/// of the logits is made; elsewhere the cross-entropy of [`softcap`]'s logits.
pub fn softcap_cross_entropy(logits: &Tensor, targets: &Tensor, cap: f64) -> Tensor {
    if let Device::Cuda(index) = logits.device() {
        static AVAILABLE: Mutex<BTreeMap<usize, bool>> = Mutex::new(BTreeMap::new());
        let fused = *AVAILABLE.lock().unwrap().entry(index).or_insert_with(|| {
            fused_kernels_available(index)
                .map_err(|e| eprintln!("warning: fused loss kernel unavailable, using plain ops: {e}"))
                .is_ok()
        });
        if fused {
            return fused_softcap_cross_entropy(logits, targets, cap).expect("fused loss");
        }
    }
    softcap(logits, cap).cross_entropy_loss(targets, None::<Tensor>, Reduction::None, -1, 0.0)
}

/// Causal attention where query i sees keys i − `window_left` ..= i, with FlashAttention-2.
/// q, k, v: (B, T, H, D), bf16 or fp16, on a CUDA device; the result has the same layout.
pub fn flash_attention(q: &Tensor, k: &Tensor, v: &Tensor, window_left: i64) -> anyhow::Result<Tensor> {
    tensor_result("flash attention", |err| unsafe {
        ar_flash_attention(q.as_ptr(), k.as_ptr(), v.as_ptr(), window_left, err)
    })
}

/// [`softcap_cross_entropy`] fused into one CUDA kernel each way instead of a chain of passes over float32
/// copies of the logits.
/// logits: (rows, vocab), bf16 or float32, on CUDA; targets: (rows,) int64. Returns (rows,) float32.
pub fn fused_softcap_cross_entropy(logits: &Tensor, targets: &Tensor, cap: f64) -> anyhow::Result<Tensor> {
    tensor_result("softcap cross-entropy", |err| unsafe {
        ar_softcap_cross_entropy(logits.as_ptr(), targets.as_ptr(), cap, err)
    })
}

/// Whether the fused kernels compile and load on CUDA device `index` (NVRTC and the driver are found at
/// run time); the reason if not.
pub fn fused_kernels_available(index: usize) -> Result<(), String> {
    let mut err: *mut c_char = std::ptr::null_mut();
    if unsafe { ar_fused_kernels_available(index as i32, &mut err) } {
        Ok(())
    } else {
        Err(take_message(err))
    }
}

/// A tensor from a shim call that returns null and sets `err` on failure.
fn tensor_result(what: &str, call: impl FnOnce(*mut *mut c_char) -> *mut C_tensor) -> anyhow::Result<Tensor> {
    let mut err: *mut c_char = std::ptr::null_mut();
    let out = call(&mut err);
    if out.is_null() {
        anyhow::bail!("{what}: {}", take_message(err));
    }
    // SAFETY: a non-null result is a new tensor that we now own.
    Ok(unsafe { Tensor::from_ptr(out) })
}

/// The shim's malloc'd error message, freed.
fn take_message(err: *mut c_char) -> String {
    // SAFETY: err is a C string from strdup.
    let msg = unsafe { CStr::from_ptr(err) }.to_string_lossy().into_owned();
    unsafe { libc_free(err) };
    msg
}

extern "C" {
    #[link_name = "free"]
    fn libc_free(p: *mut c_char);
}

/// Makes CUDA autocast compute in bf16, as the original does; its default is fp16.
pub fn use_bf16_autocast() {
    unsafe { ar_set_autocast_bf16() }
}

/// Runs `f` with CUDA autocast on (or off): matrix products in the autocast dtype (see
/// [`use_bf16_autocast`]), precision-sensitive ops in float32. Does nothing on the CPU.
/// (tch's own `autocast` goes through calls that libtorch 2.11 deprecates with a warning per use.)
pub fn autocast<T>(enabled: bool, f: impl FnOnce() -> T) -> T {
    struct Exit(bool);
    impl Drop for Exit {
        fn drop(&mut self) {
            unsafe { ar_autocast_exit(self.0) }
        }
    }
    let _exit = Exit(unsafe { ar_autocast_enter(enabled) });
    f()
}

/// Lets float32 matrix products use TF32 on the GPU.
pub fn allow_tf32() {
    unsafe { ar_set_float32_matmul_precision_high() }
}

/// Peak memory allocated on CUDA device `index` so far, in MiB (None without CUDA).
pub fn cuda_peak_memory_mb(index: usize) -> Option<f64> {
    let bytes = unsafe { ar_cuda_peak_allocated_bytes(index as i32) };
    (bytes >= 0).then(|| bytes as f64 / 1024.0 / 1024.0)
}

/// The name of CUDA device `index` (None without CUDA).
pub fn cuda_device_name(index: usize) -> Option<String> {
    let mut buf = [0 as c_char; 256];
    let rc = unsafe { ar_cuda_device_name(index as i32, buf.as_mut_ptr(), buf.len() as i32) };
    (rc == 0).then(|| unsafe { CStr::from_ptr(buf.as_ptr()) }.to_string_lossy().into_owned())
}
