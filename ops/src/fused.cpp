// Fused CUDA kernels for the training file, compiled at run time with NVRTC and launched through the CUDA
// driver API, both loaded with dlopen: building needs no CUDA toolkit, and a CPU-only machine never loads them.
// Each kernel is wrapped in an autograd function, so tch code calls it like any other op.
#include <ATen/ATen.h>
#include <torch/csrc/autograd/custom_function.h>
#include <dlfcn.h>

#include <map>
#include <mutex>
#include <stdexcept>
#include <string>

namespace {

const char* kSource =
#include "softcap_ce.cu.inc"
    ;

using CUresult = int;
using nvrtcResult = int;

struct Api {
  CUresult (*cuInit)(unsigned);
  CUresult (*cuCtxGetCurrent)(void**);
  CUresult (*cuCtxSetCurrent)(void*);
  CUresult (*cuDevicePrimaryCtxRetain)(void**, int);
  CUresult (*cuDeviceGetAttribute)(int*, int, int);
  CUresult (*cuModuleLoadData)(void**, const void*);
  CUresult (*cuModuleGetFunction)(void**, void*, const char*);
  CUresult (*cuLaunchKernel)(void*, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, void*, void**, void**);
  CUresult (*cuGetErrorString)(CUresult, const char**);
  nvrtcResult (*nvrtcCreateProgram)(void**, const char*, const char*, int, const char* const*, const char* const*);
  nvrtcResult (*nvrtcCompileProgram)(void*, int, const char* const*);
  nvrtcResult (*nvrtcGetProgramLogSize)(void*, size_t*);
  nvrtcResult (*nvrtcGetProgramLog)(void*, char*);
  nvrtcResult (*nvrtcGetPTXSize)(void*, size_t*);
  nvrtcResult (*nvrtcGetPTX)(void*, char*);
  nvrtcResult (*nvrtcDestroyProgram)(void**);
};

template <typename F>
void bind(void* lib, const char* name, F& f) {
  f = reinterpret_cast<F>(dlsym(lib, name));
  if (!f) throw std::runtime_error(std::string("missing symbol ") + name);
}

const Api& api() {
  static Api a = [] {
    Api a{};
    void* cuda = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!cuda) throw std::runtime_error("cannot load the CUDA driver (libcuda.so.1)");
    void* nvrtc = dlopen("libnvrtc.so.13", RTLD_NOW | RTLD_LOCAL);
    if (!nvrtc) nvrtc = dlopen("libnvrtc.so", RTLD_NOW | RTLD_LOCAL);
    if (!nvrtc) throw std::runtime_error("cannot load NVRTC (libnvrtc.so.13): put PyTorch's nvidia/cu13/lib on LD_LIBRARY_PATH");
    bind(cuda, "cuInit", a.cuInit);
    bind(cuda, "cuCtxGetCurrent", a.cuCtxGetCurrent);
    bind(cuda, "cuCtxSetCurrent", a.cuCtxSetCurrent);
    bind(cuda, "cuDevicePrimaryCtxRetain", a.cuDevicePrimaryCtxRetain);
    bind(cuda, "cuDeviceGetAttribute", a.cuDeviceGetAttribute);
    bind(cuda, "cuModuleLoadData", a.cuModuleLoadData);
    bind(cuda, "cuModuleGetFunction", a.cuModuleGetFunction);
    bind(cuda, "cuLaunchKernel", a.cuLaunchKernel);
    bind(cuda, "cuGetErrorString", a.cuGetErrorString);
    bind(nvrtc, "nvrtcCreateProgram", a.nvrtcCreateProgram);
    bind(nvrtc, "nvrtcCompileProgram", a.nvrtcCompileProgram);
    bind(nvrtc, "nvrtcGetProgramLogSize", a.nvrtcGetProgramLogSize);
    bind(nvrtc, "nvrtcGetProgramLog", a.nvrtcGetProgramLog);
    bind(nvrtc, "nvrtcGetPTXSize", a.nvrtcGetPTXSize);
    bind(nvrtc, "nvrtcGetPTX", a.nvrtcGetPTX);
    bind(nvrtc, "nvrtcDestroyProgram", a.nvrtcDestroyProgram);
    if (a.cuInit(0) != 0) throw std::runtime_error("cuInit failed");
    return a;
  }();
  return a;
}

void check(CUresult rc, const char* what) {
  if (rc == 0) return;
  const char* msg = "unknown error";
  api().cuGetErrorString(rc, &msg);
  throw std::runtime_error(std::string(what) + ": " + msg);
}

// The kernel `name` in the current context of `device`, compiling and loading the module on first use.
void* kernel(int device, const char* name) {
  static std::mutex mutex;
  static std::map<std::pair<void*, std::string>, void*> functions;
  const Api& a = api();
  void* ctx = nullptr;
  check(a.cuCtxGetCurrent(&ctx), "cuCtxGetCurrent");
  if (!ctx) {
    check(a.cuDevicePrimaryCtxRetain(&ctx, device), "cuDevicePrimaryCtxRetain");
    check(a.cuCtxSetCurrent(ctx), "cuCtxSetCurrent");
  }
  std::lock_guard<std::mutex> lock(mutex);
  auto key = std::make_pair(ctx, std::string(name));
  auto found = functions.find(key);
  if (found != functions.end()) return found->second;

  int major = 0, minor = 0;
  check(a.cuDeviceGetAttribute(&major, 75, device), "compute capability");
  check(a.cuDeviceGetAttribute(&minor, 76, device), "compute capability");
  std::string arch = "--gpu-architecture=compute_" + std::to_string(major * 10 + minor);
  const char* options[] = {arch.c_str(), "-std=c++17"};
  void* program = nullptr;
  if (a.nvrtcCreateProgram(&program, kSource, "fused.cu", 0, nullptr, nullptr) != 0) throw std::runtime_error("nvrtcCreateProgram failed");
  nvrtcResult rc = a.nvrtcCompileProgram(program, 2, options);
  size_t size = 0;
  if (rc != 0) {
    a.nvrtcGetProgramLogSize(program, &size);
    std::string log(size, '\0');
    a.nvrtcGetProgramLog(program, log.data());
    a.nvrtcDestroyProgram(&program);
    throw std::runtime_error("NVRTC could not compile the fused kernels: " + log);
  }
  a.nvrtcGetPTXSize(program, &size);
  std::string ptx(size, '\0');
  a.nvrtcGetPTX(program, ptx.data());
  a.nvrtcDestroyProgram(&program);
  void* module = nullptr;
  check(a.cuModuleLoadData(&module, ptx.data()), "cuModuleLoadData");
  for (const char* k : {"softcap_ce_forward_bf16", "softcap_ce_forward_f32", "softcap_ce_backward_bf16", "softcap_ce_backward_f32"}) {
    void* f = nullptr;
    check(a.cuModuleGetFunction(&f, module, k), k);
    functions[std::make_pair(ctx, std::string(k))] = f;
  }
  return functions.at(key);
}

// Launches on the legacy default stream, which is PyTorch's default (current) stream.
void launch(const at::Tensor& like, const char* name, unsigned rows, void** args) {
  check(api().cuLaunchKernel(kernel(like.device().index(), name), rows, 1, 1, 256, 1, 1, 0, nullptr, args, nullptr), name);
}

std::string suffix(const at::Tensor& t) { return t.scalar_type() == at::kBFloat16 ? "_bf16" : "_f32"; }

struct SoftcapCrossEntropy : public torch::autograd::Function<SoftcapCrossEntropy> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& logits_in, const at::Tensor& targets_in, double cap) {
    TORCH_CHECK(logits_in.is_cuda() && logits_in.dim() == 2, "softcap_cross_entropy: logits must be (rows, vocab) on CUDA");
    TORCH_CHECK(logits_in.scalar_type() == at::kBFloat16 || logits_in.scalar_type() == at::kFloat, "softcap_cross_entropy: logits must be bf16 or float32");
    auto logits = logits_in.contiguous();
    auto targets = targets_in.to(at::kLong).contiguous();
    TORCH_CHECK(targets.numel() == logits.size(0), "softcap_cross_entropy: one target per row");
    auto loss = at::empty({logits.size(0)}, logits.options().dtype(at::kFloat));
    auto lse = at::empty_like(loss);
    void *x = logits.data_ptr(), *t = targets.data_ptr(), *l = loss.data_ptr(), *s = lse.data_ptr();
    int vocab = static_cast<int>(logits.size(1));
    float c = static_cast<float>(cap);
    void* args[] = {&x, &t, &l, &s, &vocab, &c};
    if (logits.size(0) > 0) launch(logits, ("softcap_ce_forward" + suffix(logits)).c_str(), logits.size(0), args);
    ctx->save_for_backward({logits, targets, lse});
    ctx->saved_data["cap"] = cap;
    return loss;
  }

  static torch::autograd::tensor_list backward(torch::autograd::AutogradContext* ctx, torch::autograd::tensor_list grads) {
    auto saved = ctx->get_saved_variables();
    const auto& logits = saved[0];
    auto grad = grads[0].to(at::kFloat).contiguous();
    auto grad_logits = at::empty_like(logits);
    void *x = logits.data_ptr(), *t = saved[1].data_ptr(), *s = saved[2].data_ptr(), *g = grad.data_ptr(), *gx = grad_logits.data_ptr();
    int vocab = static_cast<int>(logits.size(1));
    float c = static_cast<float>(ctx->saved_data["cap"].toDouble());
    void* args[] = {&x, &t, &s, &g, &gx, &vocab, &c};
    if (logits.size(0) > 0) launch(logits, ("softcap_ce_backward" + suffix(logits)).c_str(), logits.size(0), args);
    return {grad_logits, at::Tensor(), at::Tensor()};
  }
};

}  // namespace

extern "C" {

// Per-row loss of cross-entropy on softcapped logits: cap·tanh(logits / cap), targets < 0 ignored (loss 0).
at::Tensor* ar_softcap_cross_entropy(const at::Tensor* logits, const at::Tensor* targets, double cap, char** err) {
  try {
    return new at::Tensor(SoftcapCrossEntropy::apply(*logits, *targets, cap));
  } catch (const std::exception& e) {
    *err = strdup(e.what());
    return nullptr;
  }
}

// Whether the fused kernels can be compiled and loaded on CUDA device `device`; the reason in *err if not.
bool ar_fused_kernels_available(int device, char** err) {
  try {
    kernel(device, "softcap_ce_forward_bf16");
    return true;
  } catch (const std::exception& e) {
    *err = strdup(e.what());
    return false;
  }
}
}
