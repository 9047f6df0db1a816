// The few libtorch calls the training file needs that tch does not wrap. Errors come back as strings.
#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>

#include <c10/core/CachingDeviceAllocator.h>
#include <dlfcn.h>

#include <cstring>

namespace {
char* copy_message(const char* what) { return strdup(what); }
}  // namespace

extern "C" {

// FlashAttention-2 (libtorch's, with autograd) on (B, T, H, D) bf16/fp16 CUDA tensors: causal, query i sees
// keys i - window_left .. i. Returns a new tensor, or null with *err set (free it with free()).
at::Tensor* ar_flash_attention(const at::Tensor* q, const at::Tensor* k, const at::Tensor* v, int64_t window_left,
                               char** err) {
  try {
    auto out = at::_flash_attention_forward(*q, *k, *v, std::nullopt, std::nullopt, q->size(1), k->size(1),
                                            /*dropout_p=*/0.0, /*is_causal=*/true, /*return_debug_mask=*/false,
                                            /*scale=*/std::nullopt, window_left, /*window_size_right=*/0);
    return new at::Tensor(std::get<0>(out));
  } catch (const std::exception& e) {
    *err = copy_message(e.what());
    return nullptr;
  }
}

// CUDA autocast computes in bf16 (its default is fp16).
void ar_set_autocast_bf16() { at::autocast::set_autocast_dtype(at::kCUDA, at::kBFloat16); }

// Enters a CUDA autocast region; returns whether autocast was on before.
bool ar_autocast_enter(bool enabled) {
  bool previous = at::autocast::is_autocast_enabled(at::kCUDA);
  at::autocast::set_autocast_enabled(at::kCUDA, enabled);
  at::autocast::increment_nesting();
  return previous;
}

// Leaves it: the outermost exit drops the cache of bf16 weight copies.
void ar_autocast_exit(bool previous) {
  if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
  at::autocast::set_autocast_enabled(at::kCUDA, previous);
}

// float32 matrix products may use TF32 on the GPU.
void ar_set_float32_matmul_precision_high() { at::globalContext().setFloat32MatmulPrecision("high"); }

// Peak bytes allocated by the CUDA caching allocator on a device since start, or -1 without CUDA.
// Through c10's device-allocator interface, so that no CUDA header is needed to build this.
int64_t ar_cuda_peak_allocated_bytes(int device) {
  try {
    auto stats = c10::getDeviceAllocator(c10::DeviceType::CUDA)->getDeviceStats(static_cast<c10::DeviceIndex>(device));
    return stats.allocated_bytes[static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE)].peak;
  } catch (...) {
    return -1;
  }
}

// The device's name into buf, from the CUDA driver (looked up at run time); returns 0 on success.
int ar_cuda_device_name(int device, char* buf, int len) {
  void* driver = dlopen("libcuda.so.1", RTLD_LAZY | RTLD_LOCAL);
  if (!driver) return 1;
  using Init = int (*)(unsigned int);
  using GetName = int (*)(char*, int, int);
  auto init = reinterpret_cast<Init>(dlsym(driver, "cuInit"));
  auto get_name = reinterpret_cast<GetName>(dlsym(driver, "cuDeviceGetName"));
  int rc = (init && get_name && init(0) == 0 && get_name(buf, len, device) == 0) ? 0 : 1;
  dlclose(driver);
  return rc;
}
}
