// CTPO fused policy loss: every ratio of the family, both clip families, the metrics' partial sums, one pass.
//
// ctpo::policy_loss(logp, old_logp, adv, mask, rollout_is_weights?, ratio, lower, upper, dual, power,
//                   delta_max, log_w_max)
//     -> (loss, row_loss, log_w, clipped, pass_bits, stats, totals, log_w_q)
// ctpo::policy_loss_backward(grad_loss?, grad_row_loss?, loss, pass_bits, grad_dtype) -> grad_logp
//
// Per row (ctpo.token_losses + ctpo.loss_metrics are the reference; the same bits where it can be):
//   delta_t = clamp(logp_t - old_logp_t, -delta_max, delta_max)   (compute dtype C; the clamp guards the value
//             only: d delta_t / d logp_t stays 1)
//   v_t     = by `ratio`: 0 token: delta_t; 1 sequence: D = sum_{mask} delta (the whole row, float64, rounded to
//             C); 2 gspo: D / H (H = response tokens of the row); 3 cumulative: S_t = sum_{t' <= t, mask}
//             delta_t' (float64 running sum, rounded to C: torch.cumsum's bits); 4 cumulative-geomean: S_t / t
//   log_w   = min(where(mask, v_t, 0), log_w_max)
//   bounds  = (lower, upper, dual) * C(t^p), t = 1-indexed response position, t^p in float64 rounded to C. The PPO
//             ratio window is power = 0 with (log(1 - eps_low), log1p(eps_high), log(dual_c)); CTPO's window is
//             (-clip_low, clip_high, clip_c) with its power.
//   clip    = high: A > 0 and log_w > upper; low: A < 0 and log_w < lower; dual: A < 0 and log_w > dual
//   sel     = high ? upper : low ? lower : dual ? dual : log_w, and 0 where A == 0 (no signal: never 0 * exp(big))
//   loss    = where(mask, -A * exp(sel) * rw, 0)      (rw = rollout_is_weights, or 1)
//   d loss_t / d logp_t (stop-gradient form) = loss_t for the tokens that pass the gradient (mask, not clipped,
//             log_w <= log_w_max as torch.clamp, A != 0), exactly 0 for all others: one bit per token in
//             pass_bits ((B, NB) uint8, NB = 4 * ceil(T / 32), bit j at byte j / 8, bit j % 8).
// Outputs: loss (B, T) C; row_loss (B,) float64 = sum_t loss (accumulated in float64 and kept: the aggregation
//   then rounds once, to the loss's dtype), differentiable like loss;
//   log_w (B, T) C; clipped (B, T) bool = mask & (high | low | dual); stats (14, B) float64 per-row partials
//   (ctpo_layout.h: token count, clip counts by direction, sum of exp(log_w), min / max of log_w, 0/1 flags
//   for a non-finite logp / old_logp / adv or a non-finite or negative rollout weight at a mask=1 position,
//   and the largest logp / old_logp at a mask=1 position; one contiguous row per statistic); totals (14,)
//   float64: the same over the batch (sums; min of the mins, max of the maxes), reduced in row order after the
//   rows (deterministic, independent of the threads); log_w_q (3,) C: nearest-rank 10/50/90 % quantiles
//   (k = max(1, ceil(q n / 100))) of log_w over the mask tokens of the quantile sample (ctpo_layout.h: every
//   position up to 4096 positions, else 4096 positions spread by a Weyl sequence; if that sample holds none,
//   the first 4096 mask tokens in flat order; 0 if there are none).
// C = float32 for float16/bfloat16/float32 logp, float64 for float64 logp.
//
// CPU row kernels: a hand-written AVX-512 one (float32 compute, CPU_CAPABILITY_AVX512 builds), a portable at::vec
// one (AVX2 builds) and a scalar one (float64, and builds without a SIMD capability). All give the same log_w bits
// and clip decisions for the token and cumulative ratios; for sequence / gspo the AVX-512 kernel sums the row
// total in another float64 order (a last-bit difference at most).
// Build: see ctpo_ext.py / setup.py. Needs -fopenmp (else at::parallel_for runs serially) and the
// CPU_CAPABILITY defines.

#include <ATen/EmptyTensor.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/core/CPUAllocator.h>
#include <c10/core/impl/alloc_cpu.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/extension.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "ctpo_common.h"

#if defined(CPU_CAPABILITY_AVX512)
#include <immintrin.h>
#include <sleef.h>
#define CTPO_HAVE_AVX512 1
#else
#define CTPO_HAVE_AVX512 0
#if defined(CPU_CAPABILITY_AVX2)
#include <immintrin.h>
#endif
#endif

namespace ctpo {

using c10::BFloat16;
using c10::Half;

// Which CPU row kernel runs: 0 automatic (AVX-512 builds: the AVX-512 one; AVX2: the at::vec one; else the
// scalar one), 1 the scalar one, 2 the at::vec one. Tests switch it to check every kernel against the reference.
static std::atomic<int> g_cpu_path{0};

struct Knobs {
  int ratio;
  double lower, upper, dual, power, delta_max, log_w_max;
};

// ---------------------------------------------------------------------------------------------
// Per-position table s[t] = C(t^p) for t = 0..T (t = 0 is read for masked lanes only and is given t = 1's
// value, as t.clamp(min=1)). t^p is computed in float64 with the same special cases as
// torch.pow(Tensor, Scalar) (sqrt, rsqrt, reciprocal, square, cube), then rounded to C: bit-identical to
// ctpo.adaptive_clip_bounds. It depends only on (p, T): the last table is kept and reused.

static double pow_like_torch(double t, double p) {
  if (p == 0.0) return 1.0;
  if (p == 1.0) return t;
  if (p == 0.5) return std::sqrt(t);
  if (p == -0.5) return 1.0 / std::sqrt(t);
  if (p == -1.0) return 1.0 / t;
  if (p == 2.0) return t * t;
  if (p == 3.0) return t * t * t;
  if (p == -2.0) return 1.0 / (t * t);
  return std::pow(t, p);
}

struct ScaleTable {
  double power;
  int64_t len;  // valid entries: t = 0 .. len-1
  std::vector<double> sd;  // float64 table (float64 compute)
  std::vector<float> sf;  // float32 table; both padded by 16 so a 16-wide load never reads past the end
  const float* get(float*) const { return sf.data(); }
  const double* get(double*) const { return sd.data(); }
};

static std::shared_ptr<const ScaleTable> scale_table(double power, int64_t T) {
  static std::mutex mu;
  static std::shared_ptr<const ScaleTable> last;
  {
    std::lock_guard<std::mutex> g(mu);
    if (last && last->power == power && last->len >= T + 1) return last;
  }
  auto tab = std::make_shared<ScaleTable>();
  tab->power = power;
  tab->len = std::max<int64_t>(T + 1, 64);
  tab->sd.assign(tab->len + 16, 0.0);
  tab->sf.assign(tab->len + 16, 0.0f);
  double* sd = tab->sd.data();
  float* sf = tab->sf.data();
  const int64_t len = tab->len;
  at::parallel_for(1, len, 4096, [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) {
      sd[t] = pow_like_torch(static_cast<double>(t), power);
      sf[t] = static_cast<float>(sd[t]);
    }
  });
  sd[0] = sd[1];
  sf[0] = sf[1];
  std::shared_ptr<const ScaleTable> out = tab;
  std::lock_guard<std::mutex> g(mu);
  last = out;
  return out;
}

// ---------------------------------------------------------------------------------------------
// Output memory. A fresh (B, T) tensor from the default CPU allocator is fresh pages more often than not
// (glibc returns large blocks to the OS on free), and first-touch page faults plus the kernel's zeroing
// cost about 0.15 ns/byte here: as much as the whole fused kernel. The op's outputs (loss, log_w, bits,
// grad) therefore come from a small best-fit cache of blocks that were already faulted in. The tensors
// are ordinary (resizable) tensors; a freed block returns to the cache, up to CTPO_EXT_POOL_MB
// (default 256; 0 turns the cache off), beyond which it goes back to the system.

class PooledCPUAllocator final : public c10::Allocator {
 public:
  static PooledCPUAllocator& get() {
    static auto* instance = new PooledCPUAllocator();  // leaked on purpose: tensors may outlive static destruction
    return *instance;
  }
  bool enabled() const { return cap_ > 0; }
  c10::DataPtr allocate(size_t n) override {
    const size_t total = round_up(n + kHeader);
    char* base = static_cast<char*>(take(total));
    if (base == nullptr) {
      base = static_cast<char*>(c10::alloc_cpu(total));
      *reinterpret_cast<size_t*>(base) = total;
    }
    return {base + kHeader, base, &PooledCPUAllocator::release, c10::Device(c10::DeviceType::CPU)};
  }
  void copy_data(void* dest, const void* src, std::size_t count) const override { default_copy_data(dest, src, count); }
  size_t cached_bytes() {
    std::lock_guard<std::mutex> g(mu_);
    return cached_;
  }
  void clear() {
    std::lock_guard<std::mutex> g(mu_);
    for (auto& [size, base] : free_) c10::free_cpu(base);
    free_.clear();
    cached_ = 0;
  }

 private:
  static constexpr size_t kHeader = 64;  // keeps the 64-byte alignment of c10::alloc_cpu; holds the block size
  static size_t round_up(size_t n) { return (n + 4095) / 4096 * 4096; }
  PooledCPUAllocator() {
    const char* env = std::getenv("CTPO_EXT_POOL_MB");
    cap_ = (env != nullptr ? static_cast<size_t>(std::max(0L, std::atol(env))) : size_t{256}) << 20;
  }
  void* take(size_t total) {  // best fit among cached blocks no more than twice the size
    std::lock_guard<std::mutex> g(mu_);
    auto it = free_.lower_bound(total);
    if (it == free_.end() || it->first > 2 * total) return nullptr;
    void* base = it->second;
    cached_ -= it->first;
    free_.erase(it);
    return base;
  }
  static void release(void* base) { get().give_back(base); }
  void give_back(void* base) {
    const size_t total = *static_cast<size_t*>(base);
    {
      std::lock_guard<std::mutex> g(mu_);
      if (cached_ + total <= cap_) {
        free_.emplace(total, base);
        cached_ += total;
        return;
      }
    }
    c10::free_cpu(base);
  }
  std::mutex mu_;
  std::multimap<size_t, void*> free_;
  size_t cached_ = 0;
  size_t cap_ = 0;
};

static at::Tensor new_output(at::IntArrayRef sizes, at::ScalarType dtype) {
  auto& pool = PooledCPUAllocator::get();
  if (!pool.enabled()) return at::empty(sizes, at::TensorOptions().dtype(dtype).device(at::kCPU));
  return at::detail::empty_generic(sizes, &pool, c10::DispatchKeySet(c10::DispatchKey::CPU), dtype, std::nullopt);
}

// ---------------------------------------------------------------------------------------------
// Per-row outputs and statistics

template <typename C>
struct RowIO {
  const void* lp;  // IL
  const void* ol;  // IO
  const bool* m;
  const C* At;  // per-token advantages, or nullptr: A_row for the whole row
  C A_row;
  const C* rw;  // rollout weights (compute dtype, unit stride) or nullptr
  C* grad;  // d loss_t / d logp_t before the aggregation's row scale: loss_t where the gradient passes, else 0
  C* lwo;
  bool* clipped;
  double* st;  // kNumStats doubles
  double loss_sum;
};

using namespace ctpo_layout;

template <typename C>
static inline bool finite(C x) {
  return std::isfinite(x);
}

// the precise finiteness flags for logp and old_logp of one row (the kernels test their difference first)
template <typename IL, typename IO>
static void flag_inputs_row(const IL* lp, const IO* ol, const bool* m, int64_t T, double* st) {
  bool blp = false, bol = false;
  for (int64_t j = 0; j < T; ++j) {
    if (!m[j]) continue;
    blp = blp || !std::isfinite(static_cast<double>(lp[j]));
    bol = bol || !std::isfinite(static_cast<double>(ol[j]));
  }
  st[kStatBadLogp] = blp ? 1.0 : 0.0;
  st[kStatBadOldLogp] = bol ? 1.0 : 0.0;
}

// Every row kernel ends the same way: its counts, sum of w and log w extremes into the row's stats (ctpo_layout.h),
// and the bad-value flags; which of logp / old_logp was not finite is found by a second pass over that row only
// (flag_inputs_row), never over a good one.
template <typename IL, typename IO>
static inline void write_row_stats(double* st, int64_t n, int64_t nh, int64_t nl, int64_t nd, int64_t nc, double sum_w, double mn,
                                   double mx, double max_lp, double max_ol, bool bad_d, bool bad_a, bool bad_r, const IL* lp, const IO* ol,
                                   const bool* m, int64_t T) {
  st[kStatTokens] = static_cast<double>(n);
  st[kStatHigh] = static_cast<double>(nh);
  st[kStatLow] = static_cast<double>(nl);
  st[kStatDual] = static_cast<double>(nd);
  st[kStatClipped] = static_cast<double>(nc);
  st[kStatSumW] = sum_w;
  st[kStatMinLogW] = mn;
  st[kStatMaxLogW] = mx;
  st[kStatBadLogp] = st[kStatBadOldLogp] = 0.0;
  if (bad_d) flag_inputs_row<IL, IO>(lp, ol, m, T, st);
  st[kStatBadAdv] = bad_a ? 1.0 : 0.0;
  st[kStatBadWeights] = bad_r ? 1.0 : 0.0;
  st[kStatMaxLogp] = max_lp;
  st[kStatMaxOldLogp] = max_ol;
}

// ---------------------------------------------------------------------------------------------
// Scalar row kernel: the reference semantics written out per element, float64 accumulation in order
// (exactly torch.cumsum's). Used for float64 inputs, for builds without AVX-512, and by the tests
// (g_cpu_path = 1) as a cross-check of the vector kernel.

template <typename C>
static inline C clamp_like_torch(C x, C lo, C hi) {  // min(max(x, lo), hi), NaN propagates
  return x < lo ? lo : (x > hi ? hi : x);
}

template <typename IL, typename IO, typename C>
static void row_scalar(RowIO<C>& r, int64_t T, const C* s_tab, const Knobs& k) {
  const IL* lp = static_cast<const IL*>(r.lp);
  const IO* ol = static_cast<const IO*>(r.ol);
  const bool* m = r.m;
  const C dm = static_cast<C>(k.delta_max), ndm = -dm, lwm = static_cast<C>(k.log_w_max);
  const C clo = static_cast<C>(k.lower), chi = static_cast<C>(k.upper), cc = static_cast<C>(k.dual);
  const C inf = std::numeric_limits<C>::infinity();
  C row_v = C(0);  // sequence / gspo: the row's log ratio, on every token
  if (k.ratio == kSequence || k.ratio == kGspo) {
    double tot = 0.0;
    int64_t cnt = 0;
    for (int64_t j = 0; j < T; ++j) {
      if (!m[j]) continue;
      tot += static_cast<double>(clamp_like_torch(static_cast<C>(lp[j]) - static_cast<C>(ol[j]), ndm, dm));
      ++cnt;
    }
    row_v = static_cast<C>(tot);
    if (k.ratio == kGspo) row_v = row_v / static_cast<C>(std::max<int64_t>(cnt, 1));
  }
  double S = 0.0, sum_w = 0.0, lsum = 0.0;
  int64_t n = 0, nh = 0, nl = 0, nd = 0, nc = 0;
  C mn = inf, mx = -inf;
  double max_lp = -std::numeric_limits<double>::infinity(), max_ol = max_lp;
  bool bad_d = false, bad_a = false, bad_r = false;
  for (int64_t j = 0; j < T; ++j) {
    const C d = static_cast<C>(lp[j]) - static_cast<C>(ol[j]);
    const C dc = clamp_like_torch(d, ndm, dm);
    const bool mj = m[j];
    C v = C(0);
    if (mj) {
      ++n;
      bad_d = bad_d || !finite(d);
      switch (k.ratio) {
        case kToken: v = dc; break;
        case kSequence:
        case kGspo: v = row_v; break;
        case kCumulative:
          S += static_cast<double>(dc);
          v = static_cast<C>(S);
          break;
        default:
          S += static_cast<double>(dc);
          v = static_cast<C>(S) / static_cast<C>(n);
      }
    }
    const C lw = v > lwm ? lwm : v;  // torch.clamp(max=): NaN stays NaN
    const bool glw = v <= lwm;
    const C A = r.At ? r.At[j] : r.A_row;
    const C s = s_tab[n];
    const C lo = clo * s, hi = chi * s, c = cc * s;
    const bool high = A > C(0) && lw > hi;
    const bool low = A < C(0) && lw < lo;
    const bool dual = A < C(0) && lw > c;
    C sel = lw;
    if (dual) sel = c;
    if (low) sel = lo;
    if (high) sel = hi;
    if (A == C(0)) sel = C(0);
    C l = (-A) * std::exp(sel);
    if (r.rw) {
      const C w8 = r.rw[j];
      l = l * w8;
      bad_r = bad_r || (mj && !(w8 >= C(0) && w8 < inf));
    }
    l = mj ? l : C(0);
    r.lwo[j] = lw;
    const bool clip = mj && (high || low || dual);
    r.clipped[j] = clip;
    const bool pass = mj && !(high || low || dual) && glw && A != C(0);
    r.grad[j] = pass ? l : C(0);  // exactly 0 where no gradient passes (as torch.where)
    if (mj) {
      nh += high;
      nl += low;
      nd += dual;
      nc += clip;
      sum_w += static_cast<double>(std::exp(lw));
      lsum += static_cast<double>(l);
      mn = lw < mn ? lw : mn;
      mx = lw > mx ? lw : mx;
      bad_a = bad_a || !finite(A);
      const double xl = static_cast<double>(lp[j]), xo = static_cast<double>(ol[j]);
      max_lp = xl > max_lp ? xl : max_lp;  // NaN compares false: ignored (flagged as bad above)
      max_ol = xo > max_ol ? xo : max_ol;
    }
  }
  write_row_stats<IL, IO>(r.st, n, nh, nl, nd, nc, sum_w, static_cast<double>(mn), static_cast<double>(mx), max_lp, max_ol, bad_d, bad_a,
                          bad_r, lp, ol, m, T);
  r.loss_sum = lsum;
}

// ---------------------------------------------------------------------------------------------
// AVX-512 row kernel (float32 compute; float32 / bfloat16 / float16 inputs). 16 tokens per step:
//   - mask bytes -> a k-mask; an all-masked block only stores constants and skips the math;
//   - cumulative: the masked deltas are widened to two 8 x float64 vectors, scanned in-register (3 shift-adds
//     each) and offset by a broadcast float64 carry (one add per block on the loop-carried chain);
//     sequence / gspo: a first pass sums the row (it is then in L1/L2), the second uses the constant;
//   - t^p comes from the table with one unaligned load when the block is all response tokens (t is then
//     contiguous), a gather otherwise (skipped for a constant window, power = 0); bounds are one multiply each;
//   - the clip decision is k-mask logic and blends in log space; one exp (Sleef, as torch.exp) per token, a
//     second one only in blocks where some token is clipped (the metrics want exp(log w) itself);
//   - the statistics are register accumulators (float64 sums, k-mask popcounts, min / max), reduced per row;
//   - the tail uses masked loads/stores, so there is no scalar epilogue.
// MODE: 0 per-token advantages, 1 row advantage > 0, 2 row advantage < 0, 3 row advantage 0 (or NaN).
// RATIO: 0 token, 1 a row constant (sequence, gspo), 2 cumulative (geomean: a runtime flag).

#if CTPO_HAVE_AVX512

template <typename T>
static inline __m512 load16(const T* p);
template <typename T>
static inline __m512 load16(const T* p, __mmask16 k);

template <>
inline __m512 load16<float>(const float* p) {
  return _mm512_loadu_ps(p);
}
template <>
inline __m512 load16<float>(const float* p, __mmask16 k) {
  return _mm512_maskz_loadu_ps(k, p);
}
template <>
inline __m512 load16<BFloat16>(const BFloat16* p) {
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
template <>
inline __m512 load16<BFloat16>(const BFloat16* p, __mmask16 k) {
  const __m256i h = _mm256_maskz_loadu_epi16(k, p);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
template <>
inline __m512 load16<Half>(const Half* p) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
template <>
inline __m512 load16<Half>(const Half* p, __mmask16 k) {
  return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(k, p));
}

#define CTPO_SHL_PD(x, k) _mm512_castsi512_pd(_mm512_alignr_epi64(_mm512_castpd_si512(x), _mm512_setzero_si512(), 8 - (k)))
#define CTPO_SHL_EPI32(x, k) _mm512_alignr_epi32((x), _mm512_setzero_si512(), 16 - (k))

static inline __m512d scan8_pd(__m512d x) {  // inclusive prefix sum of 8 doubles
  x = _mm512_add_pd(x, CTPO_SHL_PD(x, 1));
  x = _mm512_add_pd(x, CTPO_SHL_PD(x, 2));
  x = _mm512_add_pd(x, CTPO_SHL_PD(x, 4));
  return x;
}

static inline __m512d bcast_last_pd(__m512d x) {
  return _mm512_permutexvar_pd(_mm512_set1_epi64(7), x);
}

static inline __m512i count_prefix(__mmask16 mk) {  // lane i: number of set bits of mk in lanes 0..i
  __m512i c = _mm512_maskz_set1_epi32(mk, 1);
  c = _mm512_add_epi32(c, CTPO_SHL_EPI32(c, 1));
  c = _mm512_add_epi32(c, CTPO_SHL_EPI32(c, 2));
  c = _mm512_add_epi32(c, CTPO_SHL_EPI32(c, 4));
  c = _mm512_add_epi32(c, CTPO_SHL_EPI32(c, 8));
  return c;
}

// exp, inlined: the algorithm of Sleef_expf16_u10 (what Vectorized<float>::exp calls) written out, so that
// the hot loop has no function call (every zmm register is caller-saved: a call spills the loop's
// constants). Bit-identical to Sleef_expf16_u10 on all 2^32 inputs (checked exhaustively; tests check a sample).
static inline __m512 exp16(__m512 d) {
  const __m512 q = _mm512_roundscale_ps(_mm512_mul_ps(d, _mm512_set1_ps(1.442695040888963407359924681001892137426645954152985934135449406931f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 s = _mm512_fmadd_ps(q, _mm512_set1_ps(-0.693145751953125f), d);
  s = _mm512_fmadd_ps(q, _mm512_set1_ps(-1.428606765330187045e-06f), s);
  __m512 u = _mm512_set1_ps(0.000198527617612853646278381f);
  u = _mm512_fmadd_ps(u, s, _mm512_set1_ps(0.00139304355252534151077271f));
  u = _mm512_fmadd_ps(u, s, _mm512_set1_ps(0.00833336077630519866943359f));
  u = _mm512_fmadd_ps(u, s, _mm512_set1_ps(0.0416664853692054748535156f));
  u = _mm512_fmadd_ps(u, s, _mm512_set1_ps(0.166666671633720397949219f));
  u = _mm512_fmadd_ps(u, s, _mm512_set1_ps(0.5f));
  u = _mm512_add_ps(_mm512_set1_ps(1.0f), _mm512_fmadd_ps(_mm512_mul_ps(s, s), u, s));
  u = _mm512_scalef_ps(u, q);  // u * 2^q with one rounding, as Sleef's two-step ldexp
  u = _mm512_maskz_mov_ps(static_cast<__mmask16>(~_mm512_cmp_ps_mask(d, _mm512_set1_ps(-104.0f), _CMP_LT_OQ)), u);
  return _mm512_mask_mov_ps(u, _mm512_cmp_ps_mask(_mm512_set1_ps(100.0f), d, _CMP_LT_OQ), _mm512_set1_ps(INFINITY));
}

// testing hook: how many of `count` consecutive float bit patterns from `first` give a different exp16
// than Sleef_expf16_u10 (NaN vs NaN counts as equal)
static int64_t exp16_mismatches(uint32_t first, int64_t count, int64_t stride) {
  int64_t bad = 0;
  for (int64_t i = 0; i < count; i += 16) {
    alignas(64) uint32_t bits[16];
    for (int k = 0; k < 16; ++k) bits[k] = first + static_cast<uint32_t>((i + k) * stride);
    __m512 x;
    std::memcpy(&x, bits, 64);
    const __m512 a = exp16(x), r = Sleef_expf16_u10(x);
    const __mmask16 same_bits = _mm512_cmpeq_epi32_mask(_mm512_castps_si512(a), _mm512_castps_si512(r));
    const __mmask16 both_nan = _mm512_cmp_ps_mask(a, a, _CMP_UNORD_Q) & _mm512_cmp_ps_mask(r, r, _CMP_UNORD_Q);
    bad += _mm_popcnt_u32(static_cast<uint16_t>(~(same_bits | both_nan)));
  }
  return bad;
}

struct RowConsts {
  __m512 dm, ndm, lwm, clo, chi, cc, zero, lw_masked, pinf, ninf;
  bool geomean, const_window;
};

struct RowAcc {
  __m512d carry, sw0, sw1, sl0, sl1;  // scan carry; sums of exp(log w) and of the loss, float64
  __m512 vmin, vmax;  // log w over mask lanes
  __m512 vmax_lp, vmax_ol;  // logp, old_logp over mask lanes (NaN ignored)
  int64_t n, nh, nl, nd, nc;
  __mmask16 bad_d, bad_a, bad_r;
};

static inline void acc_pd(__m512d& a0, __m512d& a1, __m512 x) {
  a0 = _mm512_add_pd(a0, _mm512_cvtps_pd(_mm512_castps512_ps256(x)));
  a1 = _mm512_add_pd(a1, _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(x), 1))));
}

// One block of 16 tokens with at least one response token. FULL: all 16 are response tokens (the common
// case), so the masking disappears and t is contiguous (one unaligned table load instead of a gather).
template <typename IL, typename IO, int MODE, int RATIO, bool TAIL, bool FULL>
static inline __attribute__((always_inline)) void block_math(const IL* lp, const IO* ol, __mmask16 mk, const float* At, const float* rw,
                                                             __m512 negA, __mmask16 tail, __m512 row_v, const float* s_tab,
                                                             const RowConsts& K, RowAcc& acc, float* grad, float* lwo, bool* clipped) {
  const __m512 lpv = TAIL ? load16<IL>(lp, tail) : load16<IL>(lp);
  const __m512 olv = TAIL ? load16<IO>(ol, tail) : load16<IO>(ol);
  const __m512 d = _mm512_sub_ps(lpv, olv);
  acc.bad_d |= _mm512_mask_fpclass_ps_mask(mk, d, 0x99);  // NaN or +-inf
  acc.vmax_lp = _mm512_mask_max_ps(acc.vmax_lp, mk, lpv, acc.vmax_lp);  // a NaN lane keeps the second operand
  acc.vmax_ol = _mm512_mask_max_ps(acc.vmax_ol, mk, olv, acc.vmax_ol);
  __m512 v;
  if constexpr (RATIO == 1) {
    v = row_v;
  } else {
    v = _mm512_min_ps(K.dm, _mm512_max_ps(K.ndm, d));  // clamp; NaN in d propagates (second operand)
    if (!FULL) v = _mm512_maskz_mov_ps(mk, v);
  }
  __m512i ti;
  if constexpr (RATIO == 2) {
    // prefix sum in float64: two in-register scans of 8, offset by the broadcast carry
    __m512d a = _mm512_cvtps_pd(_mm512_castps512_ps256(v));
    __m512d b = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
    a = scan8_pd(a);
    b = _mm512_add_pd(scan8_pd(b), bcast_last_pd(a));
    const __m512d oa = _mm512_add_pd(a, acc.carry), ob = _mm512_add_pd(b, acc.carry);
    acc.carry = _mm512_add_pd(acc.carry, bcast_last_pd(b));
    v = _mm512_insertf32x8(_mm512_castps256_ps512(_mm512_cvtpd_ps(oa)), _mm512_cvtpd_ps(ob), 1);
  }
  // position t and the t^p table
  __m512 s = _mm512_set1_ps(1.0f);
  if (FULL) {
    if (!K.const_window) s = _mm512_loadu_ps(s_tab + acc.n + 1);
    if (RATIO == 2 && K.geomean) {
      ti = _mm512_add_epi32(_mm512_set1_epi32(static_cast<int>(acc.n)), _mm512_setr_epi32(1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16));
      v = _mm512_div_ps(v, _mm512_cvtepi32_ps(ti));
    }
    acc.n += 16;
  } else {
    ti = _mm512_add_epi32(count_prefix(mk), _mm512_set1_epi32(static_cast<int>(acc.n)));
    if (!K.const_window) s = _mm512_i32gather_ps(ti, s_tab, 4);
    if (RATIO == 2 && K.geomean) v = _mm512_div_ps(v, _mm512_cvtepi32_ps(ti));
    v = _mm512_maskz_mov_ps(mk, v);
    acc.n += _mm_popcnt_u32(static_cast<unsigned>(mk));
  }
  const __m512 lw = _mm512_min_ps(K.lwm, v);  // NaN propagates (second operand)
  const __mmask16 glw = _mm512_cmp_ps_mask(v, K.lwm, _CMP_LE_OQ);
  __m512 sel = lw;
  __mmask16 high = 0, low = 0, dual = 0, zeroA = 0;
  if constexpr (MODE == 1) {
    const __m512 hi = _mm512_mul_ps(K.chi, s);
    high = _mm512_mask_cmp_ps_mask(mk, lw, hi, _CMP_GT_OQ);
    sel = _mm512_mask_mov_ps(sel, high, hi);
  } else if constexpr (MODE == 2) {
    const __m512 lo = _mm512_mul_ps(K.clo, s), c = _mm512_mul_ps(K.cc, s);
    low = _mm512_mask_cmp_ps_mask(mk, lw, lo, _CMP_LT_OQ);
    dual = _mm512_mask_cmp_ps_mask(mk, lw, c, _CMP_GT_OQ);
    sel = _mm512_mask_mov_ps(sel, dual, c);
    sel = _mm512_mask_mov_ps(sel, low, lo);
  } else if constexpr (MODE == 3) {
    zeroA = mk;  // A == 0 (a NaN row advantage is flagged by the caller)
    sel = K.zero;
  } else {
    const __m512 A = TAIL ? _mm512_maskz_loadu_ps(tail, At) : _mm512_loadu_ps(At);
    acc.bad_a |= _mm512_mask_fpclass_ps_mask(mk, A, 0x99);
    negA = _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(A), _mm512_set1_epi32(static_cast<int>(0x80000000u))));
    const __mmask16 pos = _mm512_mask_cmp_ps_mask(mk, A, K.zero, _CMP_GT_OQ), neg = _mm512_mask_cmp_ps_mask(mk, A, K.zero, _CMP_LT_OQ);
    zeroA = _mm512_mask_cmp_ps_mask(mk, A, K.zero, _CMP_EQ_OQ);
    const __m512 hi = _mm512_mul_ps(K.chi, s), lo = _mm512_mul_ps(K.clo, s), c = _mm512_mul_ps(K.cc, s);
    high = pos & _mm512_cmp_ps_mask(lw, hi, _CMP_GT_OQ);
    low = neg & _mm512_cmp_ps_mask(lw, lo, _CMP_LT_OQ);
    dual = neg & _mm512_cmp_ps_mask(lw, c, _CMP_GT_OQ);
    sel = _mm512_mask_mov_ps(sel, dual, c);
    sel = _mm512_mask_mov_ps(sel, low, lo);
    sel = _mm512_mask_mov_ps(sel, high, hi);
    sel = _mm512_mask_mov_ps(sel, zeroA, K.zero);
  }
  const __mmask16 clip = high | low | dual;
  const __m512 e = exp16(sel);
  __m512 l = _mm512_mul_ps(negA, e);  // -A * exp(log w or the bound it is clipped to)
  const __m512 w = (clip | zeroA) ? exp16(lw) : e;  // exp(log w) for the metrics
  if (rw != nullptr) {
    const __m512 r = TAIL ? _mm512_maskz_loadu_ps(tail, rw) : _mm512_loadu_ps(rw);
    l = _mm512_mul_ps(l, r);
    const __mmask16 ok = _mm512_cmp_ps_mask(r, K.zero, _CMP_GE_OQ) & _mm512_cmp_ps_mask(r, K.pinf, _CMP_LT_OQ);
    acc.bad_r |= mk & static_cast<__mmask16>(~ok);
  }
  const __mmask16 pass = static_cast<__mmask16>(~(clip | zeroA)) & glw & mk;
  if (!FULL) l = _mm512_maskz_mov_ps(mk, l);
  const __m128i cl = _mm_maskz_mov_epi8(clip, _mm_set1_epi8(1));
  const __m512 g = _mm512_maskz_mov_ps(pass, l);  // exactly 0 where no gradient passes
  if (TAIL) {
    _mm512_mask_storeu_ps(grad, tail, g);
    _mm512_mask_storeu_ps(lwo, tail, lw);
    _mm_mask_storeu_epi8(clipped, tail, cl);
  } else {
    _mm512_storeu_ps(grad, g);
    _mm512_storeu_ps(lwo, lw);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(clipped), cl);
  }
  // statistics
  acc.nh += _mm_popcnt_u32(high);
  acc.nl += _mm_popcnt_u32(low);
  acc.nd += _mm_popcnt_u32(dual);
  acc.nc += _mm_popcnt_u32(clip);
  acc_pd(acc.sw0, acc.sw1, FULL ? w : _mm512_maskz_mov_ps(mk, w));
  acc_pd(acc.sl0, acc.sl1, l);
  acc.vmin = _mm512_mask_min_ps(acc.vmin, mk, lw, acc.vmin);
  acc.vmax = _mm512_mask_max_ps(acc.vmax, mk, lw, acc.vmax);
}

template <typename IL, typename IO, int MODE, int RATIO, bool TAIL>
static inline __attribute__((always_inline)) void block_avx512(const IL* lp, const IO* ol, const bool* m, const float* At, const float* rw,
                                                               __m512 negA_row, __mmask16 tail, __m512 row_v, const float* s_tab,
                                                               const RowConsts& K, RowAcc& acc, float* grad, float* lwo, bool* clipped) {
  const __m128i mb = TAIL ? _mm_maskz_loadu_epi8(tail, m) : _mm_loadu_si128(reinterpret_cast<const __m128i*>(m));
  const __mmask16 mk = _mm_test_epi8_mask(mb, mb);
  if (mk == 0) {  // padding / tool output: nothing advances, constant outputs
    if (TAIL) {
      _mm512_mask_storeu_ps(grad, tail, K.zero);
      _mm512_mask_storeu_ps(lwo, tail, K.lw_masked);
      _mm_mask_storeu_epi8(clipped, tail, _mm_setzero_si128());
    } else {
      _mm512_storeu_ps(grad, K.zero);
      _mm512_storeu_ps(lwo, K.lw_masked);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(clipped), _mm_setzero_si128());
    }
  } else if (!TAIL && mk == 0xFFFF) {
    block_math<IL, IO, MODE, RATIO, false, true>(lp, ol, mk, At, rw, negA_row, tail, row_v, s_tab, K, acc, grad, lwo, clipped);
  } else {
    block_math<IL, IO, MODE, RATIO, TAIL, false>(lp, ol, mk, At, rw, negA_row, tail, row_v, s_tab, K, acc, grad, lwo, clipped);
  }
}

// sequence / gspo: sum of the clamped masked deltas of the row (float64 lanes) and its token count
template <typename IL, typename IO>
static float row_total_avx512(const IL* lp, const IO* ol, const bool* m, int64_t T, const RowConsts& K, bool gspo) {
  __m512d s0 = _mm512_setzero_pd(), s1 = _mm512_setzero_pd();
  int64_t cnt = 0;
  for (int64_t j = 0; j < T; j += 16) {
    const bool tail_blk = j + 16 > T;
    const __mmask16 tail = tail_blk ? static_cast<__mmask16>((1u << (T - j)) - 1u) : static_cast<__mmask16>(0xFFFF);
    const __m128i mb = tail_blk ? _mm_maskz_loadu_epi8(tail, m + j) : _mm_loadu_si128(reinterpret_cast<const __m128i*>(m + j));
    const __mmask16 mk = _mm_test_epi8_mask(mb, mb);
    if (mk == 0) continue;
    const __m512 d = _mm512_sub_ps(load16<IL>(lp + j, mk), load16<IO>(ol + j, mk));
    acc_pd(s0, s1, _mm512_maskz_mov_ps(mk, _mm512_min_ps(K.dm, _mm512_max_ps(K.ndm, d))));
    cnt += _mm_popcnt_u32(mk);
  }
  const float tot = static_cast<float>(_mm512_reduce_add_pd(_mm512_add_pd(s0, s1)));
  return gspo ? tot / static_cast<float>(std::max<int64_t>(cnt, 1)) : tot;
}

template <typename IL, typename IO, int MODE, int RATIO>
static void row_avx512(RowIO<float>& r, int64_t T, const float* s_tab, const RowConsts& K, float row_v_s) {
  const IL* lp = static_cast<const IL*>(r.lp);
  const IO* ol = static_cast<const IO*>(r.ol);
  const __m512 negA_row = _mm512_set1_ps(-r.A_row), row_v = _mm512_set1_ps(row_v_s);
  RowAcc acc;
  acc.carry = acc.sw0 = acc.sw1 = acc.sl0 = acc.sl1 = _mm512_setzero_pd();
  acc.vmin = K.pinf;
  acc.vmax = acc.vmax_lp = acc.vmax_ol = K.ninf;
  acc.n = acc.nh = acc.nl = acc.nd = acc.nc = 0;
  acc.bad_d = acc.bad_a = acc.bad_r = 0;
  int64_t j = 0;
  for (; j + 16 <= T; j += 16) {
    block_avx512<IL, IO, MODE, RATIO, false>(lp + j, ol + j, r.m + j, MODE == 0 ? r.At + j : nullptr, r.rw ? r.rw + j : nullptr, negA_row,
                                             0xFFFF, row_v, s_tab, K, acc, r.grad + j, r.lwo + j, r.clipped + j);
  }
  if (j < T) {
    const __mmask16 tail = static_cast<__mmask16>((1u << (T - j)) - 1u);
    block_avx512<IL, IO, MODE, RATIO, true>(lp + j, ol + j, r.m + j, MODE == 0 ? r.At + j : nullptr, r.rw ? r.rw + j : nullptr, negA_row,
                                            tail, row_v, s_tab, K, acc, r.grad + j, r.lwo + j, r.clipped + j);
  }
  write_row_stats<IL, IO>(r.st, acc.n, acc.nh, acc.nl, acc.nd, acc.nc, _mm512_reduce_add_pd(_mm512_add_pd(acc.sw0, acc.sw1)),
                         static_cast<double>(_mm512_reduce_min_ps(acc.vmin)), static_cast<double>(_mm512_reduce_max_ps(acc.vmax)),
                         static_cast<double>(_mm512_reduce_max_ps(acc.vmax_lp)), static_cast<double>(_mm512_reduce_max_ps(acc.vmax_ol)),
                         acc.bad_d, acc.bad_a || (MODE != 0 && acc.n > 0 && !std::isfinite(r.A_row)), acc.bad_r, lp, ol, r.m, T);
  r.loss_sum = _mm512_reduce_add_pd(_mm512_add_pd(acc.sl0, acc.sl1));
}

template <typename IL, typename IO, int MODE>
static void row_avx512_ratio(RowIO<float>& r, int64_t T, const float* s_tab, const RowConsts& K, int ratio) {
  switch (ratio) {
    case kToken: return row_avx512<IL, IO, MODE, 0>(r, T, s_tab, K, 0.0f);
    case kSequence:
    case kGspo: {
      const float v = row_total_avx512<IL, IO>(static_cast<const IL*>(r.lp), static_cast<const IO*>(r.ol), r.m, T, K, ratio == kGspo);
      return row_avx512<IL, IO, MODE, 1>(r, T, s_tab, K, v);
    }
    default: return row_avx512<IL, IO, MODE, 2>(r, T, s_tab, K, 0.0f);
  }
}

template <typename IL, typename IO>
static void row_avx512_any(RowIO<float>& r, int64_t T, const float* s_tab, const RowConsts& K, int ratio, bool adv_rowwise) {
  if (!adv_rowwise) row_avx512_ratio<IL, IO, 0>(r, T, s_tab, K, ratio);
  else if (r.A_row > 0) row_avx512_ratio<IL, IO, 1>(r, T, s_tab, K, ratio);
  else if (r.A_row < 0) row_avx512_ratio<IL, IO, 2>(r, T, s_tab, K, ratio);
  else row_avx512_ratio<IL, IO, 3>(r, T, s_tab, K, ratio);
}

static RowConsts row_consts(const Knobs& k) {
  RowConsts K;
  K.dm = _mm512_set1_ps(static_cast<float>(k.delta_max));
  K.ndm = _mm512_set1_ps(-static_cast<float>(k.delta_max));
  K.lwm = _mm512_set1_ps(static_cast<float>(k.log_w_max));
  K.clo = _mm512_set1_ps(static_cast<float>(k.lower));
  K.chi = _mm512_set1_ps(static_cast<float>(k.upper));
  K.cc = _mm512_set1_ps(static_cast<float>(k.dual));
  K.zero = _mm512_setzero_ps();
  K.pinf = _mm512_set1_ps(INFINITY);
  K.ninf = _mm512_set1_ps(-INFINITY);
  const float lwm = static_cast<float>(k.log_w_max);
  K.lw_masked = _mm512_set1_ps(0.0f > lwm ? lwm : 0.0f);
  K.geomean = k.ratio == kCumulativeGeomean;
  K.const_window = k.power == 0.0;
  return K;
}

#endif  // CTPO_HAVE_AVX512

// ---------------------------------------------------------------------------------------------
// Portable vector row kernel (at::vec::Vectorized<float>, W = 8 lanes with AVX2, 16 with AVX-512): the same
// single pass as the AVX-512 kernel, written with at::vec's compares, blends and Sleef exp; only the in-register
// float64 prefix scan is per-ISA (scan_block). AVX2 builds run it; AVX-512 builds keep it for the tests
// (set_cpu_kernel("vec")); builds without a SIMD capability run the scalar kernel (at::vec's emulated vectors
// are slower than plain loops there).

using VecF = at::vec::Vectorized<float>;
constexpr int kW = VecF::size();
#if defined(CPU_CAPABILITY_AVX2)
constexpr bool kVecIsDefault = true;
#else
constexpr bool kVecIsDefault = false;
#endif

#if CTPO_HAVE_AVX512
struct VecCarry {
  __m512d c = _mm512_setzero_pd();
};
static inline VecF scan_block(VecF x, VecCarry& carry) {  // carry + inclusive prefix sums, float64, rounded
  const __m512 v = x;
  __m512d a = scan8_pd(_mm512_cvtps_pd(_mm512_castps512_ps256(v)));
  __m512d b = scan8_pd(_mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1))));
  b = _mm512_add_pd(b, bcast_last_pd(a));
  const __m512d oa = _mm512_add_pd(a, carry.c), ob = _mm512_add_pd(b, carry.c);
  carry.c = _mm512_add_pd(carry.c, bcast_last_pd(b));
  return _mm512_insertf32x8(_mm512_castps256_ps512(_mm512_cvtpd_ps(oa)), _mm512_cvtpd_ps(ob), 1);
}
#elif defined(CPU_CAPABILITY_AVX2)
struct VecCarry {
  __m256d c = _mm256_setzero_pd();
};
static inline __m256d scan4_pd(__m256d v) {
  const __m256d zero = _mm256_setzero_pd();
  v = _mm256_add_pd(v, _mm256_blend_pd(_mm256_permute4x64_pd(v, 0x90), zero, 0x1));  // + [0, v0, v1, v2]
  return _mm256_add_pd(v, _mm256_permute2f128_pd(v, v, 0x08));  // + [0, 0, v0, v1]
}
static inline VecF scan_block(VecF x, VecCarry& carry) {
  const __m256 v = x;
  const __m256d a = scan4_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(v)));
  __m256d b = scan4_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)));
  b = _mm256_add_pd(b, _mm256_permute4x64_pd(a, 0xFF));
  const __m256d oa = _mm256_add_pd(a, carry.c), ob = _mm256_add_pd(b, carry.c);
  carry.c = _mm256_add_pd(carry.c, _mm256_permute4x64_pd(b, 0xFF));
  return _mm256_set_m128(_mm256_cvtpd_ps(ob), _mm256_cvtpd_ps(oa));
}
#else
struct VecCarry {
  double c = 0.0;
};
static inline VecF scan_block(VecF x, VecCarry& carry) {  // no SIMD shuffles to lean on: sequential, exact
  float v[kW];
  x.store(v);
  for (int k = 0; k < kW; ++k) {
    carry.c += static_cast<double>(v[k]);
    v[k] = static_cast<float>(carry.c);
  }
  return VecF::loadu(v);
}
#endif

template <typename T>
static inline VecF load_as_float(const T* p, int64_t count) {
  if constexpr (std::is_same_v<T, float>) {
    return count == kW ? VecF::loadu(p) : VecF::loadu(p, count);
  } else {
    float v[kW] = {};
    for (int64_t k = 0; k < count; ++k) v[k] = static_cast<float>(p[k]);
    return VecF::loadu(v);
  }
}

static inline VecF select(const VecF& cond, const VecF& if_true, const VecF& if_false) {
  return VecF::blendv(if_false, if_true, cond);
}

static inline unsigned lanes_set(const VecF& m, int64_t cnt) {  // bit q: lane q of a compare mask is set (q < cnt)
  return static_cast<unsigned>(~m.zero_mask()) & static_cast<unsigned>((uint64_t{1} << cnt) - 1);
}

// how the kW mask bytes at m look: 0 none set, 1 all set, 2 mixed (bool tensors hold 0 / 1 bytes)
static inline int mask_kind(const bool* m, int64_t cnt) {
  if (cnt == kW) {
    uint64_t w[kW / 8];
    std::memcpy(w, m, kW);
    bool none = true, all = true;
    for (int q = 0; q < kW / 8; ++q) {
      none = none && w[q] == 0;
      all = all && w[q] == 0x0101010101010101ULL;
    }
    return none ? 0 : (all ? 1 : 2);
  }
  bool none = true;
  for (int64_t q = 0; q < cnt; ++q) none = none && !m[q];
  return none ? 0 : 2;
}

template <typename IL, typename IO>
static void row_vec(RowIO<float>& r, int64_t T, const float* s_tab, const Knobs& k) {
  const IL* lp = static_cast<const IL*>(r.lp);
  const IO* ol = static_cast<const IO*>(r.ol);
  const bool* m = r.m;
  const float inf_f = std::numeric_limits<float>::infinity();
  const VecF zero(0.0f), one(1.0f), pinf(inf_f), ninf(-inf_f), dm(static_cast<float>(k.delta_max)), ndm(-static_cast<float>(k.delta_max));
  const VecF lwm(static_cast<float>(k.log_w_max)), clo(static_cast<float>(k.lower)), chi(static_cast<float>(k.upper)),
      cc(static_cast<float>(k.dual));
  const VecF all_set = zero == zero;
  const float lwm_f = static_cast<float>(k.log_w_max);
  const VecF lw_masked(0.0f > lwm_f ? lwm_f : 0.0f);
  const VecF negA_row(-r.A_row), A_row(r.A_row);
  const bool geomean = k.ratio == kCumulativeGeomean, cumulative = k.ratio == kCumulative || geomean;
  const bool rowconst = k.ratio == kSequence || k.ratio == kGspo;
  float row_v = 0.0f;
  if (rowconst) {  // the row's log ratio first (float64, in order, as the scalar kernel)
    double tot = 0.0;
    int64_t c = 0;
    for (int64_t j = 0; j < T; ++j) {
      if (!m[j]) continue;
      tot += static_cast<double>(clamp_like_torch(static_cast<float>(lp[j]) - static_cast<float>(ol[j]), -static_cast<float>(k.delta_max),
                                                  static_cast<float>(k.delta_max)));
      ++c;
    }
    row_v = static_cast<float>(tot);
    if (k.ratio == kGspo) row_v = row_v / static_cast<float>(std::max<int64_t>(c, 1));
  }
  const VecF row_vv(row_v);
  float iota_f[kW];
  for (int q = 0; q < kW; ++q) iota_f[q] = static_cast<float>(q + 1);
  const VecF iota = VecF::loadu(iota_f);
  VecCarry carry;
  int64_t n = 0, nh = 0, nl = 0, nd = 0, nc = 0;
  double sum_w = 0.0, lsum = 0.0;
  VecF vmin = pinf, vmax = ninf, vmax_lp = ninf, vmax_ol = ninf;
  bool bad_d = false, bad_a = false, bad_r = false;
  for (int64_t j = 0; j < T; j += kW) {
    const int64_t cnt = std::min<int64_t>(kW, T - j);
    const int ci = static_cast<int>(cnt);
    const int kind = mask_kind(m + j, cnt);
    if (kind == 0) {  // padding / tool output: nothing advances
      zero.store(r.grad + j, ci);
      lw_masked.store(r.lwo + j, ci);
      std::memset(r.clipped + j, 0, static_cast<size_t>(cnt));
    } else {
      VecF mk = all_set, s, tf;
      if (kind == 1) {  // all response tokens: t is contiguous
        s = VecF::loadu(s_tab + n + 1);
        tf = VecF(static_cast<float>(n)) + iota;
        n += kW;
      } else {
        float mf[kW] = {}, tv[kW] = {}, sv[kW] = {};
        for (int64_t q = 0; q < cnt; ++q) {
          n += m[j + q];
          mf[q] = m[j + q] ? 1.0f : 0.0f;
          tv[q] = static_cast<float>(n);
          sv[q] = s_tab[n];
        }
        mk = VecF::loadu(mf) != zero;
        s = VecF::loadu(sv);
        tf = VecF::loadu(tv);
      }
      const VecF lpv = load_as_float(lp + j, cnt), olv = load_as_float(ol + j, cnt);
      const VecF d = lpv - olv;
      vmax_lp = select(mk & (lpv > vmax_lp), lpv, vmax_lp);  // NaN compares false: ignored
      vmax_ol = select(mk & (olv > vmax_ol), olv, vmax_ol);
      bad_d = bad_d || lanes_set(VecF::blendv(mk, zero, (d - d) == zero), cnt) != 0;  // d - d is NaN for inf / NaN
      VecF dc = select(d < ndm, ndm, d);  // torch.clamp: NaN propagates
      dc = select(dc > dm, dm, dc);
      VecF v;
      if (cumulative) {
        v = scan_block(dc & mk, carry);
        if (geomean) v = v / tf;
      } else {
        v = rowconst ? row_vv : dc;
      }
      v = v & mk;
      const VecF lw = select(v > lwm, lwm, v);  // clamp(max=): NaN stays
      const VecF glw = v <= lwm;
      VecF A = A_row, negA = negA_row;
      if (r.At != nullptr) {
        A = ci == kW ? VecF::loadu(r.At + j) : VecF::loadu(r.At + j, ci);
        negA = A.neg();
        bad_a = bad_a || lanes_set(VecF::blendv(mk, zero, (A - A) == zero), cnt) != 0;
      }
      const VecF hi = chi * s, lo = clo * s, c = cc * s;
      const VecF high = (A > zero) & (lw > hi) & mk, low = (A < zero) & (lw < lo) & mk, dual = (A < zero) & (lw > c) & mk;
      const VecF zeroA = (A == zero) & mk;
      VecF sel = select(dual, c, lw);
      sel = select(low, lo, sel);
      sel = select(high, hi, sel);
      sel = select(zeroA, zero, sel);
      const VecF clip = high | low | dual;
      const VecF e = sel.exp();
      const unsigned clip_bits = lanes_set(clip, cnt), zero_bits = lanes_set(zeroA, cnt);
      const VecF w = (clip_bits | zero_bits) ? lw.exp() : e;
      VecF l = negA * e;
      if (r.rw != nullptr) {
        const VecF rr = ci == kW ? VecF::loadu(r.rw + j) : VecF::loadu(r.rw + j, ci);
        l = l * rr;
        bad_r = bad_r || lanes_set(VecF::blendv(mk, zero, (rr >= zero) & (rr < pinf)), cnt) != 0;
      }
      l = l & mk;
      const VecF pass = VecF::blendv(VecF::blendv(glw & mk, zero, clip), zero, zeroA);  // all-ones where the gradient passes
      const VecF g = l & pass;  // exactly 0 where no gradient passes
      if (ci == kW) {
        g.store(r.grad + j);
        lw.store(r.lwo + j);
      } else {
        g.store(r.grad + j, ci);
        lw.store(r.lwo + j, ci);
      }
      for (int q = 0; q < ci; ++q) r.clipped[j + q] = (clip_bits >> q) & 1u;
      nh += __builtin_popcount(lanes_set(high, cnt));
      nl += __builtin_popcount(lanes_set(low, cnt));
      nd += __builtin_popcount(lanes_set(dual, cnt));
      nc += __builtin_popcount(clip_bits);
      float wv[kW], lv[kW];
      (w & mk).store(wv);
      l.store(lv);
      for (int q = 0; q < ci; ++q) {
        sum_w += static_cast<double>(wv[q]);
        lsum += static_cast<double>(lv[q]);
      }
      vmin = select(mk, at::vec::minimum(vmin, lw), vmin);
      vmax = select(mk, at::vec::maximum(vmax, lw), vmax);
    }
  }
  float mnv[kW], mxv[kW];
  vmin.store(mnv);
  vmax.store(mxv);
  float mlv[kW], mov[kW];
  vmax_lp.store(mlv);
  vmax_ol.store(mov);
  float mn = inf_f, mx = -inf_f, ml = -inf_f, mo = -inf_f;
  for (int q = 0; q < kW; ++q) {
    mn = mnv[q] < mn ? mnv[q] : mn;
    mx = mxv[q] > mx ? mxv[q] : mx;
    ml = mlv[q] > ml ? mlv[q] : ml;
    mo = mov[q] > mo ? mov[q] : mo;
  }
  write_row_stats<IL, IO>(r.st, n, nh, nl, nd, nc, sum_w, static_cast<double>(mn), static_cast<double>(mx), static_cast<double>(ml),
                         static_cast<double>(mo), bad_d,
                         bad_a || (r.At == nullptr && n > 0 && !std::isfinite(r.A_row)), bad_r, lp, ol, m, T);
  r.loss_sum = lsum;
}

// ---------------------------------------------------------------------------------------------
// The forward op

template <typename T>
static double read_scalar(const void* p) {
  return static_cast<double>(*static_cast<const T*>(p));
}

static double read_as_double(const at::Tensor& x, int64_t offset_elems) {
  const char* base = static_cast<const char*>(x.const_data_ptr()) + offset_elems * x.element_size();
  switch (x.scalar_type()) {
    case at::kFloat: return read_scalar<float>(base);
    case at::kDouble: return read_scalar<double>(base);
    case at::kBFloat16: return read_scalar<BFloat16>(base);
    case at::kHalf: return read_scalar<Half>(base);
    default: TORCH_CHECK(false, "unreachable");
  }
}

// nearest-rank quantiles (k = max(1, ceil(q n / 100)), as ctpo.log_w_quantiles) of the sampled mask tokens' log w
template <typename C>
static void quantiles(std::vector<C>& vals, double* out) {
  const int64_t qs[3] = {10, 50, 90};
  for (int i = 0; i < 3; ++i) {
    if (vals.empty()) {
      out[i] = 0.0;  // no tokens: the on-policy log w
      continue;
    }
    const auto n = static_cast<int64_t>(vals.size());
    const int64_t kth = std::max<int64_t>(1, (qs[i] * n + 99) / 100);  // ceil(q n / 100), in integers
    std::nth_element(vals.begin(), vals.begin() + (kth - 1), vals.end());
    out[i] = static_cast<double>(vals[kth - 1]);
  }
}

struct Outputs {
  at::Tensor loss, counts, metrics, log_w, clipped, grad, row_scale;
};

// the batch totals of the (kNumStats, B) per-row statistics, in row order (deterministic, whatever the threads)
static void reduce_totals(const double* st, int64_t B, double* tot) {
  for (int c = 0; c < kNumStats; ++c) {
    const double* x = st + c * B;
    const bool is_max = c == kStatMaxLogW || c == kStatMaxLogp || c == kStatMaxOldLogp;
    double v = c == kStatMinLogW ? std::numeric_limits<double>::infinity() : (is_max ? -std::numeric_limits<double>::infinity() : 0.0);
    for (int64_t i = 0; i < B; ++i) {
      if (c == kStatMinLogW) v = x[i] < v ? x[i] : v;
      else if (is_max) v = x[i] > v ? x[i] : v;
      else v += x[i];
    }
    tot[c] = v;
  }
}

// After the rows: the loss (float64 row sums, aggregated in float64, rounded once), each row's gradient scale,
// the counts, the value checks and the metrics (ctpo_layout.h: the same arithmetic as the CUDA op's).
template <typename C>
static void finish(const std::vector<double>& stats, const std::vector<double>& row_loss, const double* q, const AggArgs& a, int64_t B,
                   Outputs& o) {
  double tot[kNumStats];
  reduce_totals(stats.data(), B, tot);
  double n_seqs = 0.0;
  for (int64_t i = 0; i < B; ++i) n_seqs += stats[kStatTokens * B + i] > 0 ? 1.0 : 0.0;
  double d1, d2;
  agg_denominators(a, tot[kStatTokens], n_seqs, &d1, &d2);
  double sum = 0.0;
  C* scale = o.row_scale.mutable_data_ptr<C>();
  for (int64_t i = 0; i < B; ++i) {
    const double w = row_weight(a.agg, stats[kStatTokens * B + i]);
    sum += a.agg == kSeqMeanTokenMean ? row_loss[i] * w : row_loss[i];
    scale[i] = static_cast<C>(w / d1 / d2);
  }
  *o.loss.mutable_data_ptr<C>() = static_cast<C>(sum / d1 / d2);
  finish_metrics(tot, q, reinterpret_cast<long long*>(o.counts.mutable_data_ptr<int64_t>()), o.metrics.mutable_data_ptr<float>());
}

template <typename IL, typename IO, typename C>
static void forward_impl(const Prepared& in, const at::Tensor& rw_t, const Knobs& k, const AggArgs& a, Outputs& o) {
  const int64_t B = in.logp.size(0), T = in.logp.size(1);
  std::vector<double> stats(static_cast<size_t>(kNumStats * B)), row_loss(static_cast<size_t>(B));
  double q[3] = {0.0, 0.0, 0.0};
  if (B == 0 || T == 0) {  // rows without tokens: zero sums, empty min / max
    for (int64_t i = 0; i < B; ++i) {
      for (int c = 0; c < kNumStats; ++c) stats[c * B + i] = 0.0;
      stats[kStatMinLogW * B + i] = std::numeric_limits<double>::infinity();
      for (const int c : {kStatMaxLogW, kStatMaxLogp, kStatMaxOldLogp}) stats[c * B + i] = -std::numeric_limits<double>::infinity();
    }
    return finish<C>(stats, row_loss, q, a, B, o);
  }
  const auto tab = scale_table(k.power, T);
  const C* s_tab = tab->get(static_cast<C*>(nullptr));
  const IL* lp = in.logp.const_data_ptr<IL>();
  const IO* ol = in.old_logp.const_data_ptr<IO>();
  const bool* m = in.mask.const_data_ptr<bool>();
  const int64_t lps = in.logp.stride(0), ols = in.old_logp.stride(0), ms = in.mask.stride(0);
  const C* At = in.adv_rowwise ? nullptr : in.adv.const_data_ptr<C>();
  const int64_t As = in.adv.stride(0);
  const C* rw = rw_t.defined() ? rw_t.const_data_ptr<C>() : nullptr;
  const int64_t rws = rw_t.defined() ? rw_t.stride(0) : 0;
  C* grad = o.grad.mutable_data_ptr<C>();
  C* lwo = o.log_w.mutable_data_ptr<C>();
  bool* clipped = o.clipped.mutable_data_ptr<bool>();
  // the quantile sample (ctpo_layout.h; each row writes its own slots)
  const int64_t S = sample_slots(B, T);
  std::vector<C> sample_v(static_cast<size_t>(S));
  std::vector<uint8_t> sample_m(static_cast<size_t>(S));
  const int path = g_cpu_path.load(std::memory_order_relaxed);
  (void)path;
#if CTPO_HAVE_AVX512
  const RowConsts K = row_consts(k);
#endif
  const int64_t grain = std::max<int64_t>(1, 32768 / T);
  at::parallel_for(0, B, grain, [&](int64_t b0, int64_t b1) {
    for (int64_t i = b0; i < b1; ++i) {
      RowIO<C> r;
      r.lp = lp + i * lps;
      r.ol = ol + i * ols;
      r.m = m + i * ms;
      r.At = At ? At + i * As : nullptr;
      r.A_row = in.adv_rowwise ? static_cast<C>(read_as_double(in.adv, i * As)) : C(0);
      r.rw = rw ? rw + i * rws : nullptr;
      r.grad = grad + i * T;
      r.lwo = lwo + i * T;
      r.clipped = clipped + i * T;
      double st_row[kNumStats];
      r.st = st_row;
      r.loss_sum = 0.0;
      bool done = false;
      if constexpr (std::is_same_v<C, float> && !std::is_same_v<IL, double> && !std::is_same_v<IO, double>) {
#if CTPO_HAVE_AVX512
        if (path == 0) {
          row_avx512_any<IL, IO>(r, T, s_tab, K, k.ratio, in.adv_rowwise);
          done = true;
        }
#endif
        if (!done && (path == 2 || (path == 0 && kVecIsDefault))) {
          row_vec<IL, IO>(r, T, s_tab, k);
          done = true;
        }
      }
      if (!done) row_scalar<IL, IO, C>(r, T, s_tab, k);
      row_loss[i] = r.loss_sum;
      for (int c = 0; c < kNumStats; ++c) stats[c * B + i] = st_row[c];
      long long q0, q1;
      row_slots(i, B, T, &q0, &q1);
      for (int64_t s = q0; s < q1; ++s) {
        const int64_t j = sample_column(s, i, B, T);
        sample_v[s] = r.lwo[j];
        sample_m[s] = r.m[j];
      }
    }
  });
  // quantiles of log w: the sampled mask tokens; where the sample caught none (a sparse mask), the first
  // kFallbackSample mask tokens in flat order
  std::vector<C> vals;
  vals.reserve(static_cast<size_t>(S));
  for (int64_t s = 0; s < S; ++s)
    if (sample_m[s] && !std::isnan(sample_v[s])) vals.push_back(sample_v[s]);
  if (vals.empty()) {
    for (int64_t i = 0; i < B && static_cast<int64_t>(vals.size()) < kFallbackSample; ++i)
      for (int64_t j = 0; j < T && static_cast<int64_t>(vals.size()) < kFallbackSample; ++j)
        if (m[i * ms + j] && !std::isnan(lwo[i * T + j])) vals.push_back(lwo[i * T + j]);
  }
  quantiles<C>(vals, q);
  finish<C>(stats, row_loss, q, a, B, o);
}

// ctpo::policy_loss on CPU tensors (the schema below says what each argument and output is)
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> policy_loss_cpu(
    const at::Tensor& logp, const at::Tensor& old_logp, const at::Tensor& adv, const at::Tensor& mask,
    const std::optional<at::Tensor>& rollout_is_weights, int64_t ratio, double lower, double upper, double dual, double power,
    double delta_max, double log_w_max, int64_t agg, std::optional<double> num_tokens, std::optional<double> num_seqs,
    std::optional<double> loss_scale_factor) {
  check_inputs(logp, old_logp, adv, mask, rollout_is_weights, ratio, power, delta_max, log_w_max, agg);
  TORCH_CHECK_VALUE(logp.device().is_cpu(), "ctpo::policy_loss (CPU kernel): logp: expected a CPU tensor, got ", logp.device());
  const Knobs k{static_cast<int>(ratio), lower, upper, dual, power, delta_max, log_w_max};
  const AggArgs a = agg_args(agg, num_tokens, num_seqs, loss_scale_factor, logp.size(1));
  const Prepared in = prepare_inputs(logp, old_logp, adv, mask);
  const at::Tensor rw = prepare_weights(rollout_is_weights, in.compute);
  const at::ScalarType Lt = logp.scalar_type();
  const int64_t B = logp.size(0);
  Outputs o;
  o.loss = at::empty({}, at::TensorOptions().dtype(in.compute));
  o.counts = at::empty({kNumCounts}, at::TensorOptions().dtype(at::kLong));
  o.metrics = at::empty({kNumMetrics}, at::TensorOptions().dtype(at::kFloat));
  o.log_w = new_output(logp.sizes(), in.compute);
  o.clipped = new_output(logp.sizes(), at::kBool);
  o.grad = new_output(logp.sizes(), in.compute);
  o.row_scale = at::empty({B}, at::TensorOptions().dtype(in.compute));
  const bool same = in.old_logp.scalar_type() == Lt;
  switch (Lt) {
    case at::kFloat: forward_impl<float, float, float>(in, rw, k, a, o); break;
    case at::kDouble: forward_impl<double, double, double>(in, rw, k, a, o); break;
    case at::kBFloat16:
      if (same) forward_impl<BFloat16, BFloat16, float>(in, rw, k, a, o);
      else forward_impl<BFloat16, float, float>(in, rw, k, a, o);
      break;
    case at::kHalf:
      if (same) forward_impl<Half, Half, float>(in, rw, k, a, o);
      else forward_impl<Half, float, float>(in, rw, k, a, o);
      break;
    default: TORCH_CHECK(false, "unreachable");
  }
  return {o.loss, o.counts, o.metrics, o.log_w, o.clipped, o.grad, o.row_scale};
}

// ---------------------------------------------------------------------------------------------
// The backward op: grad_logp[i, t] = grad_loss * row_scale[i] * grad[i, t] where grad[i, t] != 0, else exactly 0
// (as torch.where: also where the incoming gradient is inf or NaN), in logp's dtype. One pass.

template <typename O, typename C>
static void backward_rows_scalar(C g, const C* scale, const C* grad, O* out, int64_t T, int64_t b0, int64_t b1) {
  for (int64_t i = b0; i < b1; ++i) {
    const C s = g * scale[i];
    for (int64_t j = i * T; j < (i + 1) * T; ++j) out[j] = static_cast<O>(grad[j] != C(0) ? s * grad[j] : C(0));
  }
}

#if CTPO_HAVE_AVX512
template <typename O>
static inline void store16(O* out, __m512 v, __mmask16 k, bool tail) {
  if constexpr (std::is_same_v<O, float>) {
    if (tail) _mm512_mask_storeu_ps(out, k, v);
    else _mm512_storeu_ps(out, v);
  } else if constexpr (std::is_same_v<O, double>) {
    const __m512d lo = _mm512_cvtps_pd(_mm512_castps512_ps256(v));
    const __m512d hi = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
    _mm512_mask_storeu_pd(out, static_cast<__mmask8>(k & 0xFF), lo);
    _mm512_mask_storeu_pd(out + 8, static_cast<__mmask8>(k >> 8), hi);
  } else {
    __m256i h;
    if constexpr (std::is_same_v<O, BFloat16>) h = at::vec::cvtfp32_bf16(v);  // round to nearest even, as c10
    else h = _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    _mm256_mask_storeu_epi16(out, k, h);
  }
}

template <typename O>
static void backward_rows_avx512(float g, const float* scale, const float* grad, O* out, int64_t T, int64_t b0, int64_t b1) {
  for (int64_t i = b0; i < b1; ++i) {
    const __m512 s = _mm512_set1_ps(g * scale[i]);
    const float* gr = grad + i * T;
    O* orow = out + i * T;
    for (int64_t j = 0; j < T; j += 16) {
      const bool tail = j + 16 > T;
      const __mmask16 tk = tail ? static_cast<__mmask16>((1u << (T - j)) - 1u) : static_cast<__mmask16>(0xFFFF);
      const __m512 x = tail ? _mm512_maskz_loadu_ps(tk, gr + j) : _mm512_loadu_ps(gr + j);
      const __mmask16 nz = _mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_NEQ_UQ);
      store16<O>(orow + j, _mm512_maskz_mul_ps(nz, s, x), tk, tail);
    }
  }
}
#endif

template <typename O, typename C>
static void backward_impl(C g, const at::Tensor& grad_t, const at::Tensor& scale_t, at::Tensor& out_t) {
  const int64_t B = grad_t.size(0), T = grad_t.size(1);
  if (B == 0 || T == 0) return;
  const C* grad = grad_t.const_data_ptr<C>();
  const C* scale = scale_t.const_data_ptr<C>();
  O* out = out_t.mutable_data_ptr<O>();
  const int path = g_cpu_path.load(std::memory_order_relaxed);
  (void)path;
  at::parallel_for(0, B, std::max<int64_t>(1, 65536 / T), [&](int64_t b0, int64_t b1) {
#if CTPO_HAVE_AVX512
    if constexpr (std::is_same_v<C, float>) {
      if (path == 0) return backward_rows_avx512<O>(g, scale, grad, out, T, b0, b1);
    }
#endif
    backward_rows_scalar<O, C>(g, scale, grad, out, T, b0, b1);
  });
}

at::Tensor policy_loss_backward_cpu(const at::Tensor& grad_loss, const at::Tensor& grad, const at::Tensor& row_scale,
                                    at::ScalarType grad_dtype) {
  check_backward_inputs(grad_loss, grad, row_scale, grad_dtype);
  TORCH_CHECK_VALUE(grad.device().is_cpu(), "ctpo::policy_loss_backward (CPU kernel): grad: expected a CPU tensor, got ", grad.device());
  const at::Tensor gr = grad.contiguous(), sc = row_scale.contiguous();
  at::Tensor out = new_output(grad.sizes(), grad_dtype);
  if (grad.scalar_type() == at::kDouble) {
    const double g = grad_loss.item<double>();
    switch (grad_dtype) {
      case at::kDouble: backward_impl<double, double>(g, gr, sc, out); break;
      case at::kFloat: backward_impl<float, double>(g, gr, sc, out); break;
      case at::kBFloat16: backward_impl<BFloat16, double>(g, gr, sc, out); break;
      case at::kHalf: backward_impl<Half, double>(g, gr, sc, out); break;
      default: TORCH_CHECK(false, "unreachable");
    }
  } else {
    const float g = grad_loss.to(at::kFloat).item<float>();
    switch (grad_dtype) {
      case at::kDouble: backward_impl<double, float>(g, gr, sc, out); break;
      case at::kFloat: backward_impl<float, float>(g, gr, sc, out); break;
      case at::kBFloat16: backward_impl<BFloat16, float>(g, gr, sc, out); break;
      case at::kHalf: backward_impl<Half, float>(g, gr, sc, out); break;
      default: TORCH_CHECK(false, "unreachable");
    }
  }
  return out;
}

}  // namespace ctpo

// ---------------------------------------------------------------------------------------------
// Registration (pytorch/extension-cpp style). The fake (meta) kernels and the autograd formula are
// registered in Python (ctpo_ext.py), so the op works under torch.compile.

TORCH_LIBRARY(ctpo, m) {
  m.set_python_module("ctpo_ext");
  // loss: the scalar loss (float32, float64 for float64 logp), aggregated by `agg` (ctpo.AGGS order); counts (5,)
  // int64: mask tokens, clipped high / low / dual, and the value-check bits (ctpo_layout.h Check); metrics (12,)
  // float32 (ctpo_layout.h Metric); log_w, clipped (B, T); grad (B, T) and row_scale (B,): what the backward
  // needs, d loss / d logp[i, t] = row_scale[i] * grad[i, t]. num_tokens / num_seqs / loss_scale_factor: None
  // for the batch's own (mask tokens, rows with tokens, T).
  m.def(
      "policy_loss(Tensor logp, Tensor old_logp, Tensor adv, Tensor mask, Tensor? rollout_is_weights, int ratio, float lower, "
      "float upper, float dual, float power, float delta_max, float log_w_max, int agg, float? num_tokens, float? num_seqs, "
      "float? loss_scale_factor) -> (Tensor loss, Tensor counts, Tensor metrics, Tensor log_w, Tensor clipped, Tensor grad, "
      "Tensor row_scale)");
  m.def("policy_loss_backward(Tensor grad_loss, Tensor grad, Tensor row_scale, ScalarType grad_dtype) -> Tensor");
}

TORCH_LIBRARY_IMPL(ctpo, CPU, m) {
  m.impl("policy_loss", &ctpo::policy_loss_cpu);
  m.impl("policy_loss_backward", &ctpo::policy_loss_backward_cpu);
}

static std::string compiled_cpu_path() {
#if CTPO_HAVE_AVX512
  return "avx512";
#elif defined(CPU_CAPABILITY_AVX2)
  return "vec (at::vec, AVX2)";
#else
  return "scalar (no SIMD capability)";
#endif
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, mod) {
  mod.doc() = "CTPO fused policy loss: importing this module registers torch.ops.ctpo.policy_loss / policy_loss_backward";
  mod.def("compiled_cpu_path", &compiled_cpu_path, "the CPU row kernel this build uses by default: avx512, vec or scalar");
  mod.def(
      "set_cpu_kernel",
      [](const std::string& name) {
        TORCH_CHECK_VALUE(name == "auto" || name == "scalar" || name == "vec", "set_cpu_kernel: name: auto, scalar or vec, got ", name);
        ctpo::g_cpu_path.store(name == "auto" ? 0 : (name == "scalar" ? 1 : 2));
      },
      "testing: which CPU row kernel runs: auto (avx512 / vec / scalar, by build), scalar, or vec (at::vec)");
  mod.def("_exp16_mismatches", [](int64_t first, int64_t count, int64_t stride) -> int64_t {
#if CTPO_HAVE_AVX512
    return ctpo::exp16_mismatches(static_cast<uint32_t>(first), count, stride);
#else
    (void)first, (void)count, (void)stride;
    return -1;
#endif
  }, "testing: mismatches of the inlined AVX-512 exp against Sleef_expf16_u10 (-1 without AVX-512)");
  mod.def("pool_cached_bytes", []() { return ctpo::PooledCPUAllocator::get().cached_bytes(); },
          "bytes of freed output blocks kept for reuse (CTPO_EXT_POOL_MB caps it; 0 disables)");
  mod.def("pool_clear", []() { ctpo::PooledCPUAllocator::get().clear(); }, "return the cached output blocks to the system");
  mod.def("with_cuda", []() {
#ifdef CTPO_WITH_CUDA
    return true;
#else
    return false;
#endif
  });
}
