// Fused softcap + cross-entropy, compiled at run time with NVRTC (no CUDA toolkit is needed to build).
// One block per row of logits: z = cap·tanh(x / cap); loss = logsumexp(z) − z[target]. |z| < cap, so
// exp(z − cap) neither overflows nor underflows and one pass suffices. bf16 travels as raw 16-bit words.

__device__ __forceinline__ float load(const unsigned short* p, long long i) { return __uint_as_float(((unsigned)p[i]) << 16); }
__device__ __forceinline__ float load(const float* p, long long i) { return p[i]; }

__device__ __forceinline__ void store(unsigned short* p, long long i, float v) {
  unsigned u = __float_as_uint(v);
  p[i] = (unsigned short)((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);  // round to nearest even
}
__device__ __forceinline__ void store(float* p, long long i, float v) { p[i] = v; }

// Sum over the block (blockDim.x a multiple of 32, at most 1024).
__device__ float block_sum(float v) {
  __shared__ float partial[32];
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  v = lane < blockDim.x / 32 ? partial[lane] : 0.0f;
  if (warp == 0)
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  if (threadIdx.x == 0) partial[0] = v;
  __syncthreads();
  float total = partial[0];
  __syncthreads();
  return total;
}

template <typename T>
__device__ void forward(const T* logits, const long long* targets, float* loss, float* lse, int vocab, float cap) {
  long long row = blockIdx.x;
  const T* x = logits + row * vocab;
  float s = 0.0f;
  for (int j = threadIdx.x; j < vocab; j += blockDim.x) s += expf(cap * tanhf(load(x, j) / cap) - cap);
  s = block_sum(s);
  if (threadIdx.x == 0) {
    float l = cap + logf(s);
    long long t = targets[row];
    lse[row] = l;
    loss[row] = (t < 0 || t >= vocab) ? 0.0f : l - cap * tanhf(load(x, t) / cap);
  }
}

// d loss / d x = grad · (softmax(z) − onehot(target)) · (1 − (z / cap)²); rows with target < 0 get 0.
template <typename T>
__device__ void backward(const T* logits, const long long* targets, const float* lse, const float* grad,
                         T* grad_logits, int vocab, float cap) {
  long long row = blockIdx.x;
  const T* x = logits + row * vocab;
  T* gx = grad_logits + row * vocab;
  long long t = targets[row];
  float g = t < 0 ? 0.0f : grad[row], l = lse[row];
  for (int j = threadIdx.x; j < vocab; j += blockDim.x) {
    float th = tanhf(load(x, j) / cap);
    float p = expf(cap * th - l) - (j == t ? 1.0f : 0.0f);
    store(gx, j, g * p * (1.0f - th * th));
  }
}

extern "C" __global__ void softcap_ce_forward_bf16(const unsigned short* x, const long long* t, float* loss, float* lse, int v, float cap) { forward(x, t, loss, lse, v, cap); }
extern "C" __global__ void softcap_ce_forward_f32(const float* x, const long long* t, float* loss, float* lse, int v, float cap) { forward(x, t, loss, lse, v, cap); }
extern "C" __global__ void softcap_ce_backward_bf16(const unsigned short* x, const long long* t, const float* lse, const float* g, unsigned short* gx, int v, float cap) { backward(x, t, lse, g, gx, v, cap); }
extern "C" __global__ void softcap_ce_backward_f32(const float* x, const long long* t, const float* lse, const float* g, float* gx, int v, float cap) { backward(x, t, lse, g, gx, v, cap); }
