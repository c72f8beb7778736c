// CTPO fused token loss: the cumulative ratio + position-adaptive clip step, one pass over memory.
//
// ctpo::token_loss(logp, old_logp, adv, mask, clip_low, clip_high, clip_c, power, geomean,
//                  delta_max, log_w_max) -> (loss, log_w, pass_bits)
// ctpo::token_loss_backward(grad_loss, loss, pass_bits, grad_dtype) -> grad_logp
//
// Per row, in one pass (ctpo.token_losses is the reference, semantics bit for bit where it can be):
//   delta_t = clamp(logp_t - old_logp_t, -delta_max, delta_max)   (compute dtype C; the clamp guards
//             the value only: d delta_t / d logp_t stays 1, as in the reference)
//   S_t     = sum_{t' <= t, m} delta_t'       accumulated in float64, rounded to C (as torch.cumsum)
//   n_t     = 1-indexed response position (masked tokens do not advance it)
//   log_w   = min(where(m, S_t [/ n_t for geomean], 0), log_w_max)
//   bounds  = clip * C(t^p), t^p in float64 then rounded to C, product in C (as adaptive_clip_bounds)
//   loss    = -A * exp(sel), sel = log_w, or the bound it is clipped to (high: A>0 and log_w > hi;
//             low: A<0 and log_w < lo; dual: A<0 and log_w > c); one exp per element
//   d loss_t / d logp_t (stop-gradient form) is -A * rho_t, which is loss_t itself, for the tokens that
//             pass the gradient (response tokens, not clipped, log_w <= log_w_max as torch.clamp), and
//             exactly 0 for all others. The forward writes that as one bit per token (pass_bits, (B, NB)
//             uint8 with NB = 4 * ceil(T / 32), bit j of a row at byte j / 8, bit j % 8): the backward is
//             grad_logp = pass ? grad * loss : 0. Bytes moved per token, fwd + bwd: inputs 9 (float32),
//             loss + log_w 8, bits 1/8; backward: loss 4 + bits 1/8 in, grad 4 out.
// C = float32 for float16/bfloat16/float32 inputs, float64 for float64 inputs.
//
// Three CPU row kernels, one chosen per build: a hand-written AVX-512 one (CPU_CAPABILITY_AVX512), a
// portable at::vec one (AVX2 builds), a scalar one (no SIMD capability; also float64). All three give the
// same bits for log_w and the clip decisions; tests check each against the reference.
// Build: see ctpo_ext.py / setup.py. Needs -fopenmp (else at::parallel_for runs serially) and the
// CPU_CAPABILITY defines (else at::vec compiles to its scalar emulation).

#include <ATen/EmptyTensor.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
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
#include <map>
#include <memory>
#include <mutex>
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
  double clip_low, clip_high, clip_c, power, delta_max, log_w_max;
  bool geomean;
};

// ---------------------------------------------------------------------------------------------
// Per-position table s[t] = C(t^p) for t = 0..T (t = 0 is read for masked lanes only and is given
// t = 1's value, as t.clamp(min=1)). t^p is computed in float64 with the same special cases as
// torch.pow(Tensor, Scalar) (sqrt, rsqrt, reciprocal, square, cube), then rounded to C: bit-identical
// to ctpo.adaptive_clip_bounds. It depends only on (p, T): the last table is kept and reused.

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
// Scalar row kernel: the reference semantics written out per element, float64 accumulation in order
// (exactly torch.cumsum's). Used for float64 inputs, for builds without a SIMD capability, and by the
// tests (g_cpu_path = 1) as a cross-check of the vector kernels.

template <typename C>
static inline C clamp_like_torch(C x, C lo, C hi) {  // min(max(x, lo), hi), NaN propagates
  return x < lo ? lo : (x > hi ? hi : x);
}

template <typename IL, typename IO, typename C>
static void row_scalar(const IL* lp, const IO* ol, const bool* m, const C* At, C A_row, int64_t T, const C* s_tab,
                       const Knobs& k, C* loss, C* lwo, uint8_t* bits) {
  const C dm = static_cast<C>(k.delta_max), ndm = -dm, lwm = static_cast<C>(k.log_w_max);
  const C clo = static_cast<C>(-k.clip_low), chi = static_cast<C>(k.clip_high), cc = static_cast<C>(k.clip_c);
  double S = 0.0;
  int64_t n = 0;
  unsigned byte = 0;
  for (int64_t j = 0; j < T; ++j) {
    const C d = static_cast<C>(lp[j]) - static_cast<C>(ol[j]);
    const C dc = clamp_like_torch(d, ndm, dm);
    const bool mj = m[j];
    C lwpre = C(0);
    if (mj) {
      S += static_cast<double>(dc);
      ++n;
      const C Sc = static_cast<C>(S);
      lwpre = k.geomean ? Sc / static_cast<C>(n) : Sc;
    }
    const C lw = lwpre > lwm ? lwm : lwpre;  // torch.clamp(max=): NaN stays NaN
    const bool glw = lwpre <= lwm;
    const C A = At ? At[j] : A_row;
    const C s = s_tab[n];
    const C lo = clo * s, hi = chi * s, c = cc * s;
    const bool high = A > C(0) && lw > hi;
    const bool low = A < C(0) && lw < lo;
    const bool dual = A < C(0) && lw > c;
    C sel = lw;
    if (high) sel = hi;
    if (low) sel = lo;
    if (dual) sel = c;
    const C l = (-A) * std::exp(sel);
    loss[j] = mj ? l : C(0);
    lwo[j] = lw;
    byte |= static_cast<unsigned>(mj && !(high || low || dual) && glw) << (j & 7);
    if ((j & 7) == 7 || j == T - 1) {
      bits[j >> 3] = static_cast<uint8_t>(byte);
      byte = 0;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// AVX-512 row kernel (float32 compute; float32 / bfloat16 / float16 inputs). 16 tokens per step:
//   - mask bytes -> a k-mask; an all-masked block only stores constants and skips the math;
//   - the masked deltas are widened to two 8 x float64 vectors, scanned in-register (3 shift-adds
//     each) and offset by a broadcast float64 carry: the loop-carried chain is one add per block;
//   - t^p comes from the table with one unaligned load when the block is all response tokens (t is
//     then contiguous), a gather otherwise; the bounds are one multiply each;
//   - the clip decision is k-mask logic and blends in log space; one exp (Sleef, as torch.exp) per token;
//   - the tail uses masked loads/stores, so there is no scalar epilogue.
// MODE: 0 per-token advantages, 1 row advantage > 0, 2 row advantage < 0, 3 row advantage 0 or NaN.

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
  __m512 dm, ndm, lwm, clo, chi, cc, zero, lw_masked;
  bool geomean;
};

// One block of 16 tokens with at least one response token. FULL: all 16 are response tokens (the common
// case), so the masking disappears and t is contiguous (one unaligned table load instead of a gather).
template <typename IL, typename IO, int MODE, bool TAIL, bool FULL>
static inline void block_math(const IL* lp, const IO* ol, __mmask16 mk, const float* At, __m512 negA, __mmask16 tail,
                              const float* s_tab, const RowConsts& K, __m512d& carry, int64_t& n, float* loss, float* lwo,
                              uint8_t* bits) {
  const __m512 lpv = TAIL ? load16<IL>(lp, tail) : load16<IL>(lp);
  const __m512 olv = TAIL ? load16<IO>(ol, tail) : load16<IO>(ol);
  const __m512 d = _mm512_sub_ps(lpv, olv);
  __m512 dz = _mm512_min_ps(K.dm, _mm512_max_ps(K.ndm, d));  // clamp; NaN in d propagates (second operand)
  if (!FULL) dz = _mm512_maskz_mov_ps(mk, dz);
  // prefix sum in float64: two in-register scans of 8, offset by the broadcast carry (one add per block on
  // the loop-carried chain)
  __m512d a = _mm512_cvtps_pd(_mm512_castps512_ps256(dz));
  __m512d b = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(dz), 1)));
  a = scan8_pd(a);
  b = _mm512_add_pd(scan8_pd(b), bcast_last_pd(a));
  const __m512d oa = _mm512_add_pd(a, carry), ob = _mm512_add_pd(b, carry);
  carry = _mm512_add_pd(carry, bcast_last_pd(b));
  const __m512 S = _mm512_insertf32x8(_mm512_castps256_ps512(_mm512_cvtpd_ps(oa)), _mm512_cvtpd_ps(ob), 1);
  // position t and the t^p table
  __m512 s, v = S;
  if (FULL) {
    s = _mm512_loadu_ps(s_tab + n + 1);
    if (K.geomean) {
      const __m512i ti = _mm512_add_epi32(_mm512_set1_epi32(static_cast<int>(n)),
                                          _mm512_setr_epi32(1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16));
      v = _mm512_div_ps(S, _mm512_cvtepi32_ps(ti));
    }
    n += 16;
  } else {
    const __m512i ti = _mm512_add_epi32(count_prefix(mk), _mm512_set1_epi32(static_cast<int>(n)));
    s = _mm512_i32gather_ps(ti, s_tab, 4);
    if (K.geomean) v = _mm512_div_ps(S, _mm512_cvtepi32_ps(ti));
    v = _mm512_maskz_mov_ps(mk, v);
    n += _mm_popcnt_u32(static_cast<unsigned>(mk));
  }
  const __m512 lw = _mm512_min_ps(K.lwm, v);  // NaN propagates (second operand)
  const __mmask16 glw = _mm512_cmp_ps_mask(v, K.lwm, _CMP_LE_OQ);
  __m512 sel = lw;
  __mmask16 clip = 0;
  if constexpr (MODE == 1) {
    const __m512 hi = _mm512_mul_ps(K.chi, s);
    clip = _mm512_cmp_ps_mask(lw, hi, _CMP_GT_OQ);
    sel = _mm512_mask_mov_ps(sel, clip, hi);
  } else if constexpr (MODE == 2) {
    const __m512 lo = _mm512_mul_ps(K.clo, s), c = _mm512_mul_ps(K.cc, s);
    const __mmask16 low = _mm512_cmp_ps_mask(lw, lo, _CMP_LT_OQ);
    const __mmask16 dual = _mm512_cmp_ps_mask(lw, c, _CMP_GT_OQ);
    sel = _mm512_mask_mov_ps(sel, low, lo);
    sel = _mm512_mask_mov_ps(sel, dual, c);
    clip = low | dual;
  } else if constexpr (MODE == 0) {
    const __m512 A = TAIL ? _mm512_maskz_loadu_ps(tail, At) : _mm512_loadu_ps(At);
    negA = _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(A), _mm512_set1_epi32(static_cast<int>(0x80000000u))));
    const __mmask16 pos = _mm512_cmp_ps_mask(A, K.zero, _CMP_GT_OQ), neg = _mm512_cmp_ps_mask(A, K.zero, _CMP_LT_OQ);
    const __m512 hi = _mm512_mul_ps(K.chi, s), lo = _mm512_mul_ps(K.clo, s), c = _mm512_mul_ps(K.cc, s);
    const __mmask16 high = pos & _mm512_cmp_ps_mask(lw, hi, _CMP_GT_OQ);
    const __mmask16 low = neg & _mm512_cmp_ps_mask(lw, lo, _CMP_LT_OQ);
    const __mmask16 dual = neg & _mm512_cmp_ps_mask(lw, c, _CMP_GT_OQ);
    sel = _mm512_mask_mov_ps(sel, high, hi);
    sel = _mm512_mask_mov_ps(sel, low, lo);
    sel = _mm512_mask_mov_ps(sel, dual, c);
    clip = high | low | dual;
  }
  __m512 l = _mm512_mul_ps(negA, exp16(sel));  // -A * exp(log rho or the bound it is clipped to)
  const __mmask16 pass = static_cast<__mmask16>(~clip) & glw & mk;
  if (!FULL) l = _mm512_maskz_mov_ps(mk, l);
  if (TAIL) {
    _mm512_mask_storeu_ps(loss, tail, l);
    _mm512_mask_storeu_ps(lwo, tail, lw);
  } else {
    _mm512_storeu_ps(loss, l);
    _mm512_storeu_ps(lwo, lw);
  }
  std::memcpy(bits, &pass, 2);
}

template <typename IL, typename IO, int MODE, bool TAIL>
static inline void block_avx512(const IL* lp, const IO* ol, const bool* m, const float* At, __m512 negA_row, __mmask16 tail,
                                const float* s_tab, const RowConsts& K, __m512d& carry, int64_t& n, float* loss, float* lwo,
                                uint8_t* bits) {
  const __m128i mb = TAIL ? _mm_maskz_loadu_epi8(tail, m) : _mm_loadu_si128(reinterpret_cast<const __m128i*>(m));
  const __mmask16 mk = _mm_test_epi8_mask(mb, mb);
  if (mk == 0) {  // padding / tool output: nothing advances, constant outputs
    if (TAIL) {
      _mm512_mask_storeu_ps(loss, tail, K.zero);
      _mm512_mask_storeu_ps(lwo, tail, K.lw_masked);
    } else {
      _mm512_storeu_ps(loss, K.zero);
      _mm512_storeu_ps(lwo, K.lw_masked);
    }
    bits[0] = bits[1] = 0;
  } else if (!TAIL && mk == 0xFFFF) {
    block_math<IL, IO, MODE, false, true>(lp, ol, mk, At, negA_row, tail, s_tab, K, carry, n, loss, lwo, bits);
  } else {
    block_math<IL, IO, MODE, TAIL, false>(lp, ol, mk, At, negA_row, tail, s_tab, K, carry, n, loss, lwo, bits);
  }
}

template <typename IL, typename IO, int MODE>
static void row_avx512(const IL* lp, const IO* ol, const bool* m, const float* At, float A_row, int64_t T, const float* s_tab,
                       const RowConsts& K, float* loss, float* lwo, uint8_t* bits) {
  const __m512 negA_row = _mm512_set1_ps(-A_row);
  __m512d carry = _mm512_setzero_pd();
  int64_t n = 0;
  int64_t j = 0;
  for (; j + 16 <= T; j += 16) {
    block_avx512<IL, IO, MODE, false>(lp + j, ol + j, m + j, MODE == 0 ? At + j : nullptr, negA_row, 0xFFFF, s_tab, K, carry, n,
                                      loss + j, lwo + j, bits + j / 8);
  }
  if (j < T) {
    const __mmask16 tail = static_cast<__mmask16>((1u << (T - j)) - 1u);
    block_avx512<IL, IO, MODE, true>(lp + j, ol + j, m + j, MODE == 0 ? At + j : nullptr, negA_row, tail, s_tab, K, carry, n,
                                     loss + j, lwo + j, bits + j / 8);
  }
}

#endif  // CTPO_HAVE_AVX512

// ---------------------------------------------------------------------------------------------
// Portable vector row kernel (at::vec::Vectorized<float>, W = 8 lanes with AVX2, 16 with AVX-512, an
// emulated 8 otherwise): the same single pass as the AVX-512 kernel, written with at::vec's compares,
// blends and Sleef exp. Only the in-register float64 prefix scan is per-ISA (scan_block below). AVX2
// builds run it; AVX-512 builds keep it for the tests; builds without a SIMD capability run the scalar
// kernel (at::vec's emulated vectors are slower than plain loops there).

using VecF = at::vec::Vectorized<float>;
constexpr int kW = VecF::size();
#if defined(CPU_CAPABILITY_AVX2)
constexpr bool kVecIsDefault = true;
#else
constexpr bool kVecIsDefault = false;  // AVX-512 has its own kernel; without SIMD the emulated vectors lose to scalar code
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

template <typename IL, typename IO, int MODE>
static void row_vec(const IL* lp, const IO* ol, const bool* m, const float* At, float A_row, int64_t T, const float* s_tab,
                    const Knobs& k, float* loss, float* lwo, uint8_t* bits) {
  const VecF zero(0.0f), dm(static_cast<float>(k.delta_max)), ndm(-static_cast<float>(k.delta_max)), lwm(static_cast<float>(k.log_w_max));
  const VecF clo(static_cast<float>(-k.clip_low)), chi(static_cast<float>(k.clip_high)), cc(static_cast<float>(k.clip_c));
  const VecF all_set = zero == zero;
  const float lwm_f = static_cast<float>(k.log_w_max);
  const VecF lw_masked(0.0f > lwm_f ? lwm_f : 0.0f);
  const VecF negA_row(-A_row);
  float iota_f[kW];
  for (int q = 0; q < kW; ++q) iota_f[q] = static_cast<float>(q + 1);
  const VecF iota = VecF::loadu(iota_f);
  VecCarry carry;
  int64_t n = 0;
  uint64_t word = 0;  // pass bits, flushed 8 bytes at a time (kW divides 64)
  int used = 0;
  for (int64_t j = 0; j < T; j += kW) {
    const int64_t cnt = std::min<int64_t>(kW, T - j);
    const int kind = mask_kind(m + j, cnt);
    uint64_t pass_bits = 0;
    if (kind == 0) {  // padding / tool output: nothing advances
      zero.store(loss + j, static_cast<int>(cnt));
      lw_masked.store(lwo + j, static_cast<int>(cnt));
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
      const VecF d = load_as_float(lp + j, cnt) - load_as_float(ol + j, cnt);
      VecF dc = select(d < ndm, ndm, d);  // torch.clamp: NaN propagates
      dc = select(dc > dm, dm, dc);
      const VecF S = scan_block(dc & mk, carry);
      const VecF lwpre = (k.geomean ? S / tf : S) & mk;
      const VecF lw = select(lwpre > lwm, lwm, lwpre);  // clamp(max=): NaN stays
      const VecF glw = lwpre <= lwm;
      VecF sel = lw, clip = zero, negA = negA_row;
      if constexpr (MODE == 1) {
        const VecF hi = chi * s;
        clip = lw > hi;
        sel = select(clip, hi, sel);
      } else if constexpr (MODE == 2) {
        const VecF lo = clo * s, c = cc * s;
        const VecF low = lw < lo, dual = lw > c;
        sel = select(low, lo, sel);
        sel = select(dual, c, sel);
        clip = low | dual;
      } else if constexpr (MODE == 0) {
        const VecF A = cnt == kW ? VecF::loadu(At + j) : VecF::loadu(At + j, static_cast<int>(cnt));
        negA = A.neg();
        const VecF hi = chi * s, lo = clo * s, c = cc * s;
        const VecF high = (A > zero) & (lw > hi), low = (A < zero) & (lw < lo), dual = (A < zero) & (lw > c);
        sel = select(high, hi, sel);
        sel = select(low, lo, sel);
        sel = select(dual, c, sel);
        clip = high | low | dual;
      }
      const VecF l = (negA * sel.exp()) & mk;
      const VecF pass = VecF::blendv(glw & mk, zero, clip);  // all-ones where the gradient passes
      if (cnt == kW) {
        l.store(loss + j);
        lw.store(lwo + j);
      } else {
        l.store(loss + j, static_cast<int>(cnt));
        lw.store(lwo + j, static_cast<int>(cnt));
      }
      pass_bits = static_cast<uint64_t>(~pass.zero_mask()) & ((uint64_t{2} << (cnt - 1)) - 1);
    }
    word |= pass_bits << used;
    used += kW;
    if (used == 64 || j + kW >= T) {
      const int64_t first = (j + kW - used) / 8, nbytes = std::min<int64_t>(used / 8, (T + 7) / 8 - first);
      std::memcpy(bits + first, &word, static_cast<size_t>(nbytes));
      word = 0;
      used = 0;
    }
  }
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

template <typename IL, typename IO, typename C>
static void forward_impl(const at::Tensor& lp_t, const at::Tensor& ol_t, const at::Tensor& adv_t, bool adv_rowwise,
                         const at::Tensor& m_t, const Knobs& k, at::Tensor& loss_t, at::Tensor& lw_t, at::Tensor& bits_t) {
  const int64_t B = lp_t.size(0), T = lp_t.size(1);
  if (B == 0 || T == 0) return;
  const auto tab = scale_table(k.power, T);
  const C* s_tab = tab->get(static_cast<C*>(nullptr));
  const IL* lp = lp_t.const_data_ptr<IL>();
  const IO* ol = ol_t.const_data_ptr<IO>();
  const bool* m = m_t.const_data_ptr<bool>();
  const int64_t lps = lp_t.stride(0), ols = ol_t.stride(0), ms = m_t.stride(0);
  const C* At = adv_rowwise ? nullptr : adv_t.const_data_ptr<C>();
  const int64_t As = adv_t.stride(0);
  C* loss = loss_t.mutable_data_ptr<C>();
  C* lwo = lw_t.mutable_data_ptr<C>();
  uint8_t* bits = bits_t.mutable_data_ptr<uint8_t>();
  const int64_t NB = bits_t.size(1), written = (T + 7) / 8;
  const int path = g_cpu_path.load(std::memory_order_relaxed);
#if CTPO_HAVE_AVX512
  RowConsts K;
  if constexpr (std::is_same_v<C, float>) {
    K.dm = _mm512_set1_ps(static_cast<float>(k.delta_max));
    K.ndm = _mm512_set1_ps(-static_cast<float>(k.delta_max));
    K.lwm = _mm512_set1_ps(static_cast<float>(k.log_w_max));
    K.clo = _mm512_set1_ps(static_cast<float>(-k.clip_low));
    K.chi = _mm512_set1_ps(static_cast<float>(k.clip_high));
    K.cc = _mm512_set1_ps(static_cast<float>(k.clip_c));
    K.zero = _mm512_setzero_ps();
    const float lwm = static_cast<float>(k.log_w_max);
    K.lw_masked = _mm512_set1_ps(0.0f > lwm ? lwm : 0.0f);
    K.geomean = k.geomean;
  }
#endif
  const int64_t grain = std::max<int64_t>(1, 32768 / T);
  at::parallel_for(0, B, grain, [&](int64_t b0, int64_t b1) {
    for (int64_t i = b0; i < b1; ++i) {
      const IL* lpr = lp + i * lps;
      const IO* olr = ol + i * ols;
      const bool* mr = m + i * ms;
      const C* Ar = At ? At + i * As : nullptr;
      const C A_row = adv_rowwise ? static_cast<C>(read_as_double(adv_t, i * As)) : C(0);
      C* lr = loss + i * T;
      C* wr = lwo + i * T;
      uint8_t* br = bits + i * NB;
      std::memset(br + written, 0, static_cast<size_t>(NB - written));  // pad bytes: deterministic zeros
      if constexpr (std::is_same_v<C, float> && !std::is_same_v<IL, double> && !std::is_same_v<IO, double>) {
#if CTPO_HAVE_AVX512
        if (path == 0) {
          if (!adv_rowwise) row_avx512<IL, IO, 0>(lpr, olr, mr, Ar, 0.0f, T, s_tab, K, lr, wr, br);
          else if (A_row > 0) row_avx512<IL, IO, 1>(lpr, olr, mr, nullptr, A_row, T, s_tab, K, lr, wr, br);
          else if (A_row < 0) row_avx512<IL, IO, 2>(lpr, olr, mr, nullptr, A_row, T, s_tab, K, lr, wr, br);
          else row_avx512<IL, IO, 3>(lpr, olr, mr, nullptr, A_row, T, s_tab, K, lr, wr, br);
          continue;
        }
#endif
        if (path == 2 || (path == 0 && kVecIsDefault)) {
          if (!adv_rowwise) row_vec<IL, IO, 0>(lpr, olr, mr, Ar, 0.0f, T, s_tab, k, lr, wr, br);
          else if (A_row > 0) row_vec<IL, IO, 1>(lpr, olr, mr, nullptr, A_row, T, s_tab, k, lr, wr, br);
          else if (A_row < 0) row_vec<IL, IO, 2>(lpr, olr, mr, nullptr, A_row, T, s_tab, k, lr, wr, br);
          else row_vec<IL, IO, 3>(lpr, olr, mr, nullptr, A_row, T, s_tab, k, lr, wr, br);
          continue;
        }
      }
      row_scalar<IL, IO, C>(lpr, olr, mr, Ar, A_row, T, s_tab, k, lr, wr, br);
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> token_loss_cpu(const at::Tensor& logp, const at::Tensor& old_logp, const at::Tensor& adv,
                                                              const at::Tensor& mask, double clip_low, double clip_high, double clip_c,
                                                              double power, bool geomean, double delta_max, double log_w_max) {
  check_inputs(logp, old_logp, adv, mask, clip_low, clip_high, clip_c);
  TORCH_CHECK_VALUE(logp.device().is_cpu(), "ctpo::token_loss (CPU kernel): logp: expected a CPU tensor, got ", logp.device());
  const Knobs k{clip_low, clip_high, clip_c, power, delta_max, log_w_max, geomean};
  const Prepared in = prepare_inputs(logp, old_logp, adv, mask);
  const at::ScalarType Lt = logp.scalar_type();
  at::Tensor loss = new_output(logp.sizes(), in.compute), lw = new_output(logp.sizes(), in.compute),
             bits = new_output({logp.size(0), pass_bits_bytes(logp.size(1))}, at::kByte);
  const bool same = in.old_logp.scalar_type() == Lt;
  const auto& [lp, ol, a, m] = std::tie(in.logp, in.old_logp, in.adv, in.mask);
  switch (Lt) {
    case at::kFloat: forward_impl<float, float, float>(lp, ol, a, in.adv_rowwise, m, k, loss, lw, bits); break;
    case at::kDouble: forward_impl<double, double, double>(lp, ol, a, in.adv_rowwise, m, k, loss, lw, bits); break;
    case at::kBFloat16:
      if (same) forward_impl<BFloat16, BFloat16, float>(lp, ol, a, in.adv_rowwise, m, k, loss, lw, bits);
      else forward_impl<BFloat16, float, float>(lp, ol, a, in.adv_rowwise, m, k, loss, lw, bits);
      break;
    case at::kHalf:
      if (same) forward_impl<Half, Half, float>(lp, ol, a, in.adv_rowwise, m, k, loss, lw, bits);
      else forward_impl<Half, float, float>(lp, ol, a, in.adv_rowwise, m, k, loss, lw, bits);
      break;
    default: TORCH_CHECK(false, "unreachable");
  }
  return {loss, lw, bits};
}

// ---------------------------------------------------------------------------------------------
// The backward op: grad_logp = pass ? grad_loss * loss : 0 (exactly 0, as torch.where, even where grad_loss
// is inf or NaN), in logp's dtype. grad_loss is often a broadcast scalar (from .sum() / .mean()) or a
// per-row broadcast (from a per-sequence mean): both are read in place, never materialised.

template <typename O, typename C>
static void backward_rows_scalar(const C* g, int64_t gs0, int64_t gs1, const C* loss, const uint8_t* bits, int64_t NB, O* out,
                                 int64_t T, int64_t b0, int64_t b1) {
  for (int64_t i = b0; i < b1; ++i) {
    const C* gr = g + i * gs0;
    const C* lr = loss + i * T;
    const uint8_t* br = bits + i * NB;
    O* orow = out + i * T;
    for (int64_t j = 0; j < T; ++j) {
      const bool pass = (br[j >> 3] >> (j & 7)) & 1;
      orow[j] = static_cast<O>(pass ? gr[j * gs1] * lr[j] : C(0));
    }
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
static void backward_rows_avx512(const float* g, int64_t gs0, int64_t gs1, const float* loss, const uint8_t* bits, int64_t NB, O* out,
                                 int64_t T, int64_t b0, int64_t b1) {
  for (int64_t i = b0; i < b1; ++i) {
    const float* gr = g + i * gs0;
    const float* lr = loss + i * T;
    const uint8_t* br = bits + i * NB;
    O* orow = out + i * T;
    const __m512 gb = _mm512_set1_ps(gr[0]);
    for (int64_t j = 0; j < T; j += 16) {
      const bool tail = j + 16 > T;
      const __mmask16 tk = tail ? static_cast<__mmask16>((1u << (T - j)) - 1u) : static_cast<__mmask16>(0xFFFF);
      uint16_t pb;
      std::memcpy(&pb, br + j / 8, 2);
      const __mmask16 pass = static_cast<__mmask16>(pb) & tk;
      const __m512 l = tail ? _mm512_maskz_loadu_ps(tk, lr + j) : _mm512_loadu_ps(lr + j);
      const __m512 gv = gs1 == 0 ? gb : (tail ? _mm512_maskz_loadu_ps(tk, gr + j) : _mm512_loadu_ps(gr + j));
      store16<O>(orow + j, _mm512_maskz_mul_ps(pass, gv, l), tk, tail);
    }
  }
}
#endif

template <typename O, typename C>
static void backward_impl(const at::Tensor& g_t, const at::Tensor& loss_t, const at::Tensor& bits_t, at::Tensor& out_t) {
  const int64_t B = loss_t.size(0), T = loss_t.size(1);
  if (B == 0 || T == 0) return;
  const C* g = g_t.const_data_ptr<C>();
  const int64_t gs0 = g_t.stride(0), gs1 = T <= 1 ? 0 : g_t.stride(1);
  const C* loss = loss_t.const_data_ptr<C>();
  const uint8_t* bits = bits_t.const_data_ptr<uint8_t>();
  const int64_t NB = bits_t.size(1);
  O* out = out_t.mutable_data_ptr<O>();
  const int path = g_cpu_path.load(std::memory_order_relaxed);
  (void)path;
  at::parallel_for(0, B, std::max<int64_t>(1, 65536 / T), [&](int64_t b0, int64_t b1) {
#if CTPO_HAVE_AVX512
    if constexpr (std::is_same_v<C, float>) {
      if (path == 0) return backward_rows_avx512<O>(g, gs0, gs1, loss, bits, NB, out, T, b0, b1);
    }
#endif
    backward_rows_scalar<O, C>(g, gs0, gs1, loss, bits, NB, out, T, b0, b1);
  });
}

at::Tensor token_loss_backward_cpu(const at::Tensor& grad_loss, const at::Tensor& loss, const at::Tensor& pass_bits,
                                   at::ScalarType grad_dtype) {
  check_backward_inputs(grad_loss, loss, pass_bits, grad_dtype);
  TORCH_CHECK_VALUE(loss.device().is_cpu(), "ctpo::token_loss_backward (CPU kernel): loss: expected a CPU tensor, got ", loss.device());
  const at::ScalarType Ct = loss.scalar_type();
  const at::Tensor l = loss.contiguous(), b = pass_bits.contiguous();
  const at::Tensor g = prepare_grad(grad_loss, Ct);
  at::Tensor out = new_output(loss.sizes(), grad_dtype);
  if (Ct == at::kDouble) {
    switch (grad_dtype) {
      case at::kDouble: backward_impl<double, double>(g, l, b, out); break;
      case at::kFloat: backward_impl<float, double>(g, l, b, out); break;
      case at::kBFloat16: backward_impl<BFloat16, double>(g, l, b, out); break;
      case at::kHalf: backward_impl<Half, double>(g, l, b, out); break;
      default: TORCH_CHECK(false, "unreachable");
    }
  } else {
    switch (grad_dtype) {
      case at::kDouble: backward_impl<double, float>(g, l, b, out); break;
      case at::kFloat: backward_impl<float, float>(g, l, b, out); break;
      case at::kBFloat16: backward_impl<BFloat16, float>(g, l, b, out); break;
      case at::kHalf: backward_impl<Half, float>(g, l, b, out); break;
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
  m.def(
      "token_loss(Tensor logp, Tensor old_logp, Tensor adv, Tensor mask, float clip_low, float clip_high, float clip_c, "
      "float power, bool geomean, float delta_max, float log_w_max) -> (Tensor loss, Tensor log_w, Tensor pass_bits)");
  m.def("token_loss_backward(Tensor grad_loss, Tensor loss, Tensor pass_bits, ScalarType grad_dtype) -> Tensor");
}

TORCH_LIBRARY_IMPL(ctpo, CPU, m) {
  m.impl("token_loss", &ctpo::token_loss_cpu);
  m.impl("token_loss_backward", &ctpo::token_loss_backward_cpu);
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
  mod.doc() = "CTPO fused token loss: importing this module registers torch.ops.ctpo.token_loss / token_loss_backward";
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
