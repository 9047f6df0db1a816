// The few libtorch calls the training file needs that tch does not wrap. Errors come back as strings.
#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>

#include <cstring>
#include <string>

#ifdef AR_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#include <cuda_runtime_api.h>
#endif

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

// float32 matrix products may use TF32 on the GPU.
void ar_set_float32_matmul_precision_high() { at::globalContext().setFloat32MatmulPrecision("high"); }

// Peak bytes allocated by the CUDA caching allocator on a device since start, or -1 without CUDA.
int64_t ar_cuda_peak_allocated_bytes(int device) {
#ifdef AR_CUDA
  try {
    auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(static_cast<c10::DeviceIndex>(device));
    return stats.allocated_bytes[static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE)].peak;
  } catch (...) {
    return -1;
  }
#else
  (void)device;
  return -1;
#endif
}

// The device's name into buf; returns 0 on success.
int ar_cuda_device_name(int device, char* buf, size_t len) {
#ifdef AR_CUDA
  cudaDeviceProp prop;
  if (cudaGetDeviceProperties(&prop, device) != cudaSuccess) return 1;
  std::strncpy(buf, prop.name, len - 1);
  buf[len - 1] = 0;
  return 0;
#else
  (void)device;
  (void)buf;
  (void)len;
  return 1;
#endif
}
}
