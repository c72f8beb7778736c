// The reference: the scalar row kernel, what every fast variant is compared against (tests/test_ext.py runs
// each against ctpo.token_losses). Also the shared pieces: the knobs, the t^p table, a row's inputs / outputs /
// statistics.
// Included by csrc/ctpo.cpp (one translation unit), after its CPU_CAPABILITY setup (CTPO_HAVE_AVX512).
#pragma once

#include "ctpo_common.h"

namespace ctpo {

using c10::BFloat16;
using c10::Half;

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

}  // namespace ctpo
