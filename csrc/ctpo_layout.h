// The op's conventions shared by the CPU kernel (ctpo.cpp), the CUDA kernel (ctpo_cuda.cu) and ctpo_ext.py:
// ratio codes and the columns of the per-row `stats` output. Torch-free and CUDA-free.
#pragma once

namespace ctpo_layout {

// `ratio` argument of ctpo::policy_loss (ctpo_ext.RATIO_CODES)
enum Ratio : int { kToken = 0, kSequence = 1, kGspo = 2, kCumulative = 3, kCumulativeGeomean = 4 };

// rows of `stats` (kNumStats, B) float64, one column per sequence, and entries of `totals` (kNumStats,), the
// batch's (ctpo_ext.STATS)
enum Stat : int {
  kStatTokens = 0,  // mask tokens
  kStatHigh = 1,  // clipped high (A > 0, log w above the upper bound)
  kStatLow = 2,  // clipped low (A < 0, below the lower bound)
  kStatDual = 3,  // dual-clipped (A < 0, above the dual cap)
  kStatClipped = 4,  // any of the three (low and dual can coincide)
  kStatSumW = 5,  // sum of exp(log w) over mask tokens
  kStatMinLogW = 6,  // min of log w over mask tokens (+inf without any); totals: the min over rows
  kStatMaxLogW = 7,  // max (-inf without any); totals: the max over rows
  kStatBadLogp = 8,  // 1 if logp is NaN or inf at a mask=1 position of the row, else 0
  kStatBadOldLogp = 9,  // same for old_logp
  kStatBadAdv = 10,  // same for the advantages
  kStatBadWeights = 11,  // 1 if a rollout weight is NaN, inf or negative at a mask=1 position
  kStatMaxLogp = 12,  // max of logp over mask tokens (-inf without any; NaN ignored); totals: the max over rows
  kStatMaxOldLogp = 13,  // same for old_logp
  kNumStats = 14
};

// The quantiles' sample (ctpo.quantile_sample is the same rule in Python): with N = B * T <= kQuantileSample every
// position; else kQuantileSample positions k = 0, 1, ...: row i_k = floor(k * B / kQuantileSample), column
// j_k = floor(frac(k * phi) * T) (a Weyl sequence in 32-bit fixed point: ((k * kWeyl) mod 2^32) * T >> 32), which
// spreads every row's samples over all positions whatever T divides. If the sample holds no mask token (a sparse
// mask), the first kFallbackSample mask tokens in flat order.
constexpr int kQuantileSample = 4096;
constexpr unsigned long long kWeyl = 0x9E3779B9ull;  // 2^32 / golden ratio
constexpr int kFallbackSample = 4096;

#if defined(__CUDACC__)
#define CTPO_HD __host__ __device__
#else
#define CTPO_HD
#endif

// slots of the quantile sample: min(B * T, kQuantileSample)
CTPO_HD inline long long sample_slots(long long B, long long T) {
  return B * T <= kQuantileSample ? B * T : kQuantileSample;
}
// row i's slots are [*first, *last); slot k of that row samples column sample_column(k, ...)
CTPO_HD inline void row_slots(long long i, long long B, long long T, long long* first, long long* last) {
  if (B * T <= kQuantileSample) {
    *first = i * T;
    *last = (i + 1) * T;
  } else {  // floor(k * B / K) == i  <=>  ceil(i K / B) <= k < ceil((i + 1) K / B)
    *first = (i * kQuantileSample + B - 1) / B;
    *last = ((i + 1) * kQuantileSample + B - 1) / B;
  }
}
CTPO_HD inline long long sample_column(long long k, long long i, long long B, long long T) {
  if (B * T <= kQuantileSample) return k - i * T;
  return static_cast<long long>((((static_cast<unsigned long long>(k) * kWeyl) & 0xFFFFFFFFull) * static_cast<unsigned long long>(T)) >> 32);
}

}  // namespace ctpo_layout
