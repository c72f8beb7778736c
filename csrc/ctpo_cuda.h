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
  // outputs: loss, log_w contiguous (B, T) in the compute dtype (float64 if logp is float64, else float32);
  // clipped (B, T) bool; pass_bits (B, bits_rs) bytes, bits_rs = 4 * ceil(T / 32): bit j of a row (byte j / 8,
  // bit j % 8) says whether d loss_j / d logp_j = loss_j (else 0); row_loss (B,) float64; stats (kNumStats, B)
  // float64; totals (kNumStats,) float64; log_w_q (3,) compute dtype
  void* loss;
  void* log_w;
  bool* clipped;
  unsigned char* pass_bits;
  int64_t bits_rs;
  double* row_loss;
  double* stats;
  double* totals;
  void* log_w_q;
  // scratch: the quantile sample, sample_n = ctpo_layout::sample_slots(B, T) <= kMaxKernelSample slots
  void* sample_v;  // compute dtype
  unsigned char* sample_m;
  int64_t sample_n;
};

struct BwdParams {
  const void* grad;  // (B, T) in the compute dtype, strides gs0, gs1 (either may be 0: broadcasts); or nullptr
  int64_t gs0, gs1;
  const double* grad_row;  // (B,) float64, stride grs (0: a broadcast scalar); or nullptr
  int64_t grs;
  const void* loss;  // contiguous (B, T), compute dtype
  const unsigned char* pass_bits;  // (B, bits_rs)
  int64_t bits_rs;
  DType compute;  // F32 or F64
  void* out;  // contiguous (B, T), out_dtype: (grad + grad_row) * loss where the bit is set, else 0
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
