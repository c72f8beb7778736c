// CUDA kernels of the fused CTPO token loss. Torch-free (cub + CUDA headers only): raw pointers and a
// launcher per op, so `nvcc -c csrc/ctpo_cuda.cu` compile-checks it on a machine without a GPU or CUDA torch.
// Semantics: see csrc/ctpo.cpp (the CPU kernel) and ctpo.token_losses (the reference).
//
// Forward: one block of 256 threads per row. A tile is 8 x 256 tokens loaded striped (each of the 8
// loads is one contiguous, coalesced 256-token span, all 8 issued before any use); each span is scanned
// with cub::BlockScan over (float64 partial sum, response count) pairs, with a running carry (the
// block-prefix callback) across spans and tiles, so any T works in one pass. Every token then forms its
// position-adaptive bounds (t^p in float64, rounded to the compute dtype), picks its log-space value
// (log rho or the bound it is clipped to), takes one exp, and writes loss and log rho; a warp ballot packs
// the 32 "gradient passes" bits of each warp into one word of pass_bits. Backward: a grid-stride
// elementwise grad * loss where the bit is set (else exactly 0), broadcasts read in place.

#include <cub/block/block_scan.cuh>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "ctpo_cuda.h"

namespace ctpo_cuda {
namespace {

constexpr int kBlock = 256;
constexpr int kItems = 8;

__device__ __forceinline__ float widen(float x) { return x; }
__device__ __forceinline__ double widen(double x) { return x; }
__device__ __forceinline__ float widen(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float widen(__half x) { return __half2float(x); }

template <typename O>
__device__ __forceinline__ O narrow(double x);
template <>
__device__ __forceinline__ double narrow<double>(double x) { return x; }
template <>
__device__ __forceinline__ float narrow<float>(double x) { return static_cast<float>(x); }
template <typename O>
__device__ __forceinline__ O narrow(float x);
template <>
__device__ __forceinline__ float narrow<float>(float x) { return x; }
template <>
__device__ __forceinline__ double narrow<double>(float x) { return static_cast<double>(x); }
template <>
__device__ __forceinline__ __nv_bfloat16 narrow<__nv_bfloat16>(float x) { return __float2bfloat16(x); }
template <>
__device__ __forceinline__ __half narrow<__half>(float x) { return __float2half(x); }
template <>
__device__ __forceinline__ __nv_bfloat16 narrow<__nv_bfloat16>(double x) { return __float2bfloat16(static_cast<float>(x)); }
template <>
__device__ __forceinline__ __half narrow<__half>(double x) { return __float2half(static_cast<float>(x)); }

__device__ __forceinline__ float exp_c(float x) { return expf(x); }
__device__ __forceinline__ double exp_c(double x) { return exp(x); }

__device__ __forceinline__ double read_any(const void* p, DType dt, int64_t off) {
  switch (dt) {
    case DType::F32: return static_cast<const float*>(p)[off];
    case DType::F64: return static_cast<const double*>(p)[off];
    case DType::BF16: return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[off]);
    default: return __half2float(static_cast<const __half*>(p)[off]);
  }
}

// t^p in float64 with the special cases torch.pow(Tensor, Scalar) takes (bit-identical bounds)
__device__ __forceinline__ double pow_like_torch(double t, double p) {
  if (p == 0.0) return 1.0;
  if (p == 1.0) return t;
  if (p == 0.5) return sqrt(t);
  if (p == -0.5) return 1.0 / sqrt(t);
  if (p == -1.0) return 1.0 / t;
  if (p == 2.0) return t * t;
  if (p == 3.0) return t * t * t;
  if (p == -2.0) return 1.0 / (t * t);
  return pow(t, p);
}

struct Prefix {
  double s;  // masked delta sum, float64 (as torch.cumsum accumulates on CPU)
  long long n;  // response tokens so far
};

struct PrefixSum {
  __device__ __forceinline__ Prefix operator()(const Prefix& a, const Prefix& b) const { return {a.s + b.s, a.n + b.n}; }
};

struct Carry {  // cub block-prefix callback: returns the prefix for this span, keeps the running total
  Prefix total;
  __device__ __forceinline__ Prefix operator()(Prefix aggregate) {
    const Prefix old = total;
    total = PrefixSum()(total, aggregate);
    return old;
  }
};

template <typename IL, typename IO, typename C>
__global__ void __launch_bounds__(kBlock) token_loss_fwd_kernel(const FwdParams p) {
  using Scan = cub::BlockScan<Prefix, kBlock>;
  __shared__ typename Scan::TempStorage scan_storage;

  const int64_t row = blockIdx.x;
  const int64_t T = p.T;
  const IL* lp = static_cast<const IL*>(p.logp) + row * p.logp_rs;
  const IO* ol = static_cast<const IO*>(p.old_logp) + row * p.old_rs;
  const bool* mk = p.mask + row * p.mask_rs;
  const C* At = p.adv_rowwise ? nullptr : static_cast<const C*>(p.adv) + row * p.adv_rs;
  const C A_row = p.adv_rowwise ? static_cast<C>(read_any(p.adv, p.adv_dtype, row * p.adv_rs)) : C(0);
  C* loss = static_cast<C*>(p.loss) + row * T;
  C* lwo = static_cast<C*>(p.log_w) + row * T;
  unsigned* bits = reinterpret_cast<unsigned*>(p.pass_bits + row * p.bits_rs);

  const C dm = static_cast<C>(p.delta_max), ndm = -dm, lwm = static_cast<C>(p.log_w_max);
  const C clo = static_cast<C>(-p.clip_low), chi = static_cast<C>(p.clip_high), cc = static_cast<C>(p.clip_c);
  Carry carry{{0.0, 0}};

  for (int64_t base = 0; base < T; base += int64_t{kBlock} * kItems) {
    C d[kItems];
    bool m[kItems];
    C A[kItems];
#pragma unroll
    for (int k = 0; k < kItems; ++k) {  // striped: each k is one coalesced span of kBlock tokens
      const int64_t j = base + int64_t{k} * kBlock + threadIdx.x;
      m[k] = false;
      d[k] = C(0);
      A[k] = A_row;
      if (j < T) {
        m[k] = mk[j];
        d[k] = static_cast<C>(widen(lp[j])) - static_cast<C>(widen(ol[j]));
        if (At != nullptr) A[k] = At[j];
      }
    }
#pragma unroll
    for (int k = 0; k < kItems; ++k) {
      const int64_t j = base + int64_t{k} * kBlock + threadIdx.x;
      const C x = d[k];
      const C dc = x < ndm ? ndm : (x > dm ? dm : x);  // torch.clamp: NaN propagates
      const Prefix in{m[k] ? static_cast<double>(dc) : 0.0, m[k] ? 1 : 0};
      Prefix inc;
      Scan(scan_storage).InclusiveScan(in, inc, PrefixSum(), carry);
      __syncthreads();  // scan_storage is reused by the next span
      C lwpre = C(0);
      if (m[k]) {
        const C S = static_cast<C>(inc.s);
        lwpre = p.geomean ? S / static_cast<C>(inc.n) : S;
      }
      const C lw = lwpre > lwm ? lwm : lwpre;  // clamp(max=): NaN stays
      const bool glw = lwpre <= lwm;
      const C s = static_cast<C>(pow_like_torch(static_cast<double>(inc.n > 0 ? inc.n : 1), p.power));
      const C lo = clo * s, hi = chi * s, c = cc * s;
      const C a = A[k];
      const bool high = a > C(0) && lw > hi;
      const bool low = a < C(0) && lw < lo;
      const bool dual = a < C(0) && lw > c;
      C sel = lw;
      if (high) sel = hi;
      if (low) sel = lo;
      if (dual) sel = c;
      const C l = (-a) * exp_c(sel);
      const bool pass = j < T && m[k] && !(high || low || dual) && glw;
      const unsigned word = __ballot_sync(0xffffffffu, pass);  // the whole warp is here: no early exit above
      const int64_t warp_start = base + int64_t{k} * kBlock + (threadIdx.x & ~31u);
      if ((threadIdx.x & 31u) == 0 && warp_start < T) bits[warp_start / 32] = word;
      if (j < T) {
        loss[j] = m[k] ? l : C(0);
        lwo[j] = lw;
      }
    }
  }
}

template <typename C, typename O>
__global__ void token_loss_bwd_kernel(const BwdParams p) {
  const C* g = static_cast<const C*>(p.grad);
  const C* loss = static_cast<const C*>(p.loss);
  O* out = static_cast<O*>(p.out);
  const int64_t N = p.B * p.T;
  for (int64_t idx = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; idx < N; idx += int64_t{gridDim.x} * blockDim.x) {
    const int64_t i = idx / p.T, j = idx - i * p.T;
    const bool pass = (p.pass_bits[i * p.bits_rs + (j >> 3)] >> (j & 7)) & 1;
    const C v = pass ? g[i * p.gs0 + j * p.gs1] * loss[idx] : C(0);  // as torch.where: never 0 * inf
    out[idx] = narrow<O>(v);
  }
}

template <typename IL, typename IO, typename C>
cudaError_t launch_fwd(const FwdParams& p, cudaStream_t stream) {
  token_loss_fwd_kernel<IL, IO, C><<<static_cast<unsigned>(p.B), kBlock, 0, stream>>>(p);
  return cudaGetLastError();
}

template <typename C, typename O>
cudaError_t launch_bwd(const BwdParams& p, cudaStream_t stream) {
  const int64_t N = p.B * p.T;
  const int threads = 256;
  const int64_t blocks = (N + threads - 1) / threads;
  const unsigned grid = static_cast<unsigned>(blocks < 65536 ? blocks : 65536);
  token_loss_bwd_kernel<C, O><<<grid, threads, 0, stream>>>(p);
  return cudaGetLastError();
}

template <typename C>
cudaError_t dispatch_bwd(const BwdParams& p, cudaStream_t stream) {
  switch (p.out_dtype) {
    case DType::F32: return launch_bwd<C, float>(p, stream);
    case DType::F64: return launch_bwd<C, double>(p, stream);
    case DType::BF16: return launch_bwd<C, __nv_bfloat16>(p, stream);
    case DType::F16: return launch_bwd<C, __half>(p, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace

cudaError_t token_loss_forward(const FwdParams& p, cudaStream_t stream) {
  if (p.B == 0 || p.T == 0) return cudaSuccess;
  if (p.B > 2147483647LL) return cudaErrorInvalidValue;
  const bool same = p.old_dtype == p.logp_dtype;
  switch (p.logp_dtype) {
    case DType::F32: return same ? launch_fwd<float, float, float>(p, stream) : cudaErrorInvalidValue;
    case DType::F64: return same ? launch_fwd<double, double, double>(p, stream) : cudaErrorInvalidValue;
    case DType::BF16:
      return same ? launch_fwd<__nv_bfloat16, __nv_bfloat16, float>(p, stream) : launch_fwd<__nv_bfloat16, float, float>(p, stream);
    case DType::F16: return same ? launch_fwd<__half, __half, float>(p, stream) : launch_fwd<__half, float, float>(p, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t token_loss_backward(const BwdParams& p, cudaStream_t stream) {
  if (p.B == 0 || p.T == 0) return cudaSuccess;
  return p.compute == DType::F64 ? dispatch_bwd<double>(p, stream) : dispatch_bwd<float>(p, stream);
}

}  // namespace ctpo_cuda
