// Torch-free interface of the CUDA kernels (ctpo_cuda.cu): raw pointers, strides, dtype tags and a stream.
// Included by the kernel file (nvcc) and by the torch glue (ctpo_cuda_glue.cpp, built only with CUDA torch).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "ctpo_layout.h"

namespace ctpo_cuda {

enum class DType : int { F32 = 0, F64 = 1, BF16 = 2, F16 = 3 };

struct FwdParams {
  // inputs, (B, T) with unit stride along T and the given row strides (in elements)
  const void* logp;      // logp_dtype
  const void* old_logp;  // old_dtype: equal to logp_dtype, or the compute dtype
  const void* adv;       // adv_rowwise: one value per row at adv + i * adv_rs (adv_dtype, any float);
                         // else (B, T) in the compute dtype
  const bool* mask;
  const void* rw;        // rollout weights (B, T) in the compute dtype, row stride rw_rs; or nullptr
  DType logp_dtype, old_dtype, adv_dtype;
  bool adv_rowwise;
  int64_t B, T;
  int64_t logp_rs, old_rs, adv_rs, mask_rs, rw_rs;
  // knobs (csrc/ctpo.cpp's header says what each means)
  int ratio;  // ctpo_layout::Ratio
  double lower, upper, dual, power, delta_max, log_w_max;
  ctpo_layout::AggArgs agg;
  // outputs: log_w, grad contiguous (B, T) in the compute dtype (float64 if logp is float64, else float32); grad is
  // d loss_t / d logp_t before the row scale (the loss where the gradient passes, else 0); clipped (B, T) bool;
  // loss (0-dim, compute dtype), counts (kNumCounts,) int64, metrics (kNumMetrics,) float32, row_scale (B,)
  // compute dtype: written by the finishing kernel
  void* log_w;
  void* grad;
  bool* clipped;
  void* loss;
  long long* counts;
  float* metrics;
  void* row_scale;
  // scratch: row_loss (B,) float64, stats (kNumStats, B) float64; the quantile sample, sample_n =
  // ctpo_layout::sample_slots(B, T) <= kMaxKernelSample slots
  double* row_loss;
  double* stats;
  void* sample_v;  // compute dtype
  unsigned char* sample_m;
  int64_t sample_n;
};

struct BwdParams {
  const void* grad_loss;  // one value, compute dtype (on the device: no sync)
  const void* grad;  // contiguous (B, T), compute dtype
  const void* row_scale;  // (B,), compute dtype
  DType compute;  // F32 or F64
  void* out;  // contiguous (B, T), out_dtype: grad_loss * row_scale[i] * grad where grad != 0, else 0
  DType out_dtype;
  int64_t B, T;
};
// the largest quantile sample the quantile kernel sorts (one block of 256 threads x 16 keys): every sample
constexpr int64_t kMaxKernelSample = 4096;
static_assert(ctpo_layout::kQuantileSample <= kMaxKernelSample, "the quantile kernel sorts the whole sample");

// Launch on `stream`; return the launch status (cudaGetLastError after the launch).
cudaError_t policy_loss_forward(const FwdParams& p, cudaStream_t stream);
cudaError_t policy_loss_backward(const BwdParams& p, cudaStream_t stream);

}  // namespace ctpo_cuda
