// The portable at::vec row kernel: the fast path of AVX2 builds.
// Included by csrc/ctpo.cpp (one translation unit), after its CPU_CAPABILITY setup (CTPO_HAVE_AVX512).
#pragma once

#include "cpu_row_scalar.h"

namespace ctpo {

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

}  // namespace ctpo
