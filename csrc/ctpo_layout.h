// The op's conventions shared by the CPU kernel (ctpo.cpp), the CUDA kernel (ctpo_cuda.cu) and ctpo_ext.py:
// ratio and aggregation codes, the per-row statistics, the quantile sample, and the finishing arithmetic (loss
// denominators, metrics, value checks) that both devices run after the rows. Torch-free and CUDA-free.
#pragma once

#include <math.h>

namespace ctpo_layout {

// `ratio` argument of ctpo::policy_loss (ctpo_ext.RATIO_CODES)
enum Ratio : int { kToken = 0, kSequence = 1, kGspo = 2, kCumulative = 3, kCumulativeGeomean = 4 };

// the per-row statistics (kNumStats, B) float64 the row kernels write (one column per sequence), and their batch
// totals (kNumStats,)
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


// `agg` argument of ctpo::policy_loss: ctpo.AGGS, in order (verl's loss_agg_mode names)
enum Agg : int { kTokenMean = 0, kTokenSum = 1, kSeqMeanTokenMean = 2, kSeqMeanTokenSum = 3, kSeqMeanTokenSumNorm = 4 };

// the op's `config` argument (kNumConfig,) float: its scalars in one list (ctpo_ext.CONFIG); a count that is NaN
// is not given (the batch's own)
enum Config : int {
  kCfgRatio = 0, kCfgLower, kCfgUpper, kCfgDual, kCfgPower, kCfgDeltaMax, kCfgLogWMax, kCfgAgg, kCfgNumTokens, kCfgNumSeqs,
  kCfgLossScaleFactor, kNumConfig
};

// the op's `counts` output (kNumCounts,) int64 and `metrics` output (kNumMetrics,) float32 (ctpo_ext.COUNTS / METRICS)
enum Count : int { kCountTokens = 0, kCountHigh, kCountLow, kCountDual, kCountCheck, kNumCounts };
enum Metric : int {
  kFracHigh = 0,
  kFracLow,
  kFracDual,
  kFrac,
  kRatioMean,
  kRatioMin,
  kRatioMax,
  kRatioQ10,
  kRatioQ50,
  kRatioQ90,
  kMaxLogp,  // the largest logp / old_logp at a mask=1 position (for the error message)
  kMaxOldLogp,
  kNumMetrics
};
// bits of counts[kCountCheck], the inputs' value checks (0: all good)
enum Check : int { kBadLogp = 1, kBadOldLogp = 2, kBadAdv = 4, kBadWeights = 8, kLogpAbove = 16, kOldLogpAbove = 32 };
constexpr double kLogpMargin = 0.01;  // ctpo.LOGP_MARGIN: a log-prob above it is not one

struct AggArgs {
  int agg;
  double num_tokens, num_seqs, loss_scale_factor;  // < 0: not given (the batch's own count, T)
  long long T;
};

CTPO_HD inline double at_least_one(double x) {  // an empty batch gives loss 0, not 0 / 0
  return x > 1.0 ? x : 1.0;
}

// loss = (sum_i row_weight_i * sum_t loss_it) / d1 / d2: the denominators of `agg` (ctpo.aggregate), given the
// batch's mask tokens and rows with at least one
CTPO_HD inline void agg_denominators(const AggArgs& a, double n_tokens, double n_seqs, double* d1, double* d2) {
  *d2 = 1.0;
  if (a.agg == kTokenMean) {
    *d1 = at_least_one(a.num_tokens >= 0 ? a.num_tokens : n_tokens);
  } else if (a.agg == kTokenSum) {
    *d1 = 1.0;
  } else {
    *d1 = at_least_one(a.num_seqs >= 0 ? a.num_seqs : n_seqs);
    if (a.agg == kSeqMeanTokenSumNorm) *d2 = at_least_one(a.loss_scale_factor >= 0 ? a.loss_scale_factor : static_cast<double>(a.T));
  }
}
CTPO_HD inline double row_weight(int agg, double n_i) {
  return agg == kSeqMeanTokenMean ? 1.0 / at_least_one(n_i) : 1.0;
}

// exp of a log w as the metrics report it: rounded to float32, exp in float64, rounded to float32 (ctpo.loss_metrics
// does the same: the two backends' float32 exp implementations differ in the last bit, float64's rounded do not)
CTPO_HD inline float exp_metric(double x) {
  return static_cast<float>(exp(static_cast<double>(static_cast<float>(x))));
}

// counts, the value-check bits and the float32 metrics from the batch totals and the log w quantiles q (3,): what
// ctpo.loss_metrics computes per token. Without tokens every ratio is the on-policy 1 (never NaN or inf).
CTPO_HD inline void finish_metrics(const double* tot, const double* q, long long* counts, float* metrics) {
  const double n = tot[kStatTokens];
  counts[kCountTokens] = static_cast<long long>(n);
  counts[kCountHigh] = static_cast<long long>(tot[kStatHigh]);
  counts[kCountLow] = static_cast<long long>(tot[kStatLow]);
  counts[kCountDual] = static_cast<long long>(tot[kStatDual]);
  long long check = 0;
  if (tot[kStatBadLogp] != 0) check |= kBadLogp;
  if (tot[kStatBadOldLogp] != 0) check |= kBadOldLogp;
  if (tot[kStatBadAdv] != 0) check |= kBadAdv;
  if (tot[kStatBadWeights] != 0) check |= kBadWeights;
  if (tot[kStatMaxLogp] > kLogpMargin) check |= kLogpAbove;
  if (tot[kStatMaxOldLogp] > kLogpMargin) check |= kOldLogpAbove;
  counts[kCountCheck] = check;
  const float nf = static_cast<float>(at_least_one(n));
  metrics[kFracHigh] = static_cast<float>(tot[kStatHigh]) / nf;
  metrics[kFracLow] = static_cast<float>(tot[kStatLow]) / nf;
  metrics[kFracDual] = static_cast<float>(tot[kStatDual]) / nf;
  metrics[kFrac] = static_cast<float>(tot[kStatClipped]) / nf;
  const bool empty = n == 0;
  metrics[kRatioMean] = empty ? 1.0f : static_cast<float>(tot[kStatSumW]) / nf;
  metrics[kRatioMin] = empty ? 1.0f : exp_metric(tot[kStatMinLogW]);  // exp is monotone: exp of the extremes
  metrics[kRatioMax] = empty ? 1.0f : exp_metric(tot[kStatMaxLogW]);
  for (int k = 0; k < 3; ++k) metrics[kRatioQ10 + k] = empty ? 1.0f : exp_metric(q[k]);
  metrics[kMaxLogp] = static_cast<float>(tot[kStatMaxLogp]);
  metrics[kMaxOldLogp] = static_cast<float>(tot[kStatMaxOldLogp]);
}

}  // namespace ctpo_layout
