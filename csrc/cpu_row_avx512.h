// The hand-written AVX-512 row kernel (forward) and backward loop: the fast path of AVX-512 builds.
// Included by csrc/ctpo.cpp (one translation unit), after its CPU_CAPABILITY setup (CTPO_HAVE_AVX512).
#pragma once

#include "cpu_row_scalar.h"

namespace ctpo {

#if CTPO_HAVE_AVX512
using namespace ctpo_layout;
#endif

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

#endif  // CTPO_HAVE_AVX512

}  // namespace ctpo
