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
  kNumStats = 12
};

// the quantiles' fallback sample (no mask token at the strided positions): the first this many mask tokens
constexpr int kFallbackSample = 4096;

}  // namespace ctpo_layout
