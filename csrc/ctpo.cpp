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


// the reference row kernel first, then the fast variants and the output memory, each in a file of its own
#include "cpu_row_scalar.h"
#include "cpu_row_avx512.h"
#include "cpu_row_vec.h"
#include "cpu_pool.h"

namespace ctpo {

using c10::BFloat16;
using c10::Half;

// Which CPU row kernel runs: 0 automatic (AVX-512 builds: the AVX-512 one; AVX2: the at::vec one; else the
// scalar one), 1 the scalar one, 2 the at::vec one. Tests switch it to check every kernel against the reference.
static std::atomic<int> g_cpu_path{0};


using namespace ctpo_layout;

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
    const std::optional<at::Tensor>& rollout_is_weights, c10::ArrayRef<double> config) {
  const OpConfig c = unpack_config(config);
  check_inputs(logp, old_logp, adv, mask, rollout_is_weights, c.ratio, c.power, c.delta_max, c.log_w_max, c.agg);
  TORCH_CHECK_VALUE(logp.device().is_cpu(), "ctpo::policy_loss (CPU kernel): logp: expected a CPU tensor, got ", logp.device());
  const Knobs k{static_cast<int>(c.ratio), c.lower, c.upper, c.dual, c.power, c.delta_max, c.log_w_max};
  const AggArgs a = agg_args(c, logp.size(1));
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
  // config: the scalars, in this order (ctpo_layout.h Config; one list: see OpConfig in ctpo_common.h): ratio code
  // (ctpo_layout.h Ratio), the window on log w at response position t, [lower t^power, upper t^power] with dual cap
  // dual t^power, delta_max, log_w_max, agg code (ctpo.AGGS order), num_tokens, num_seqs, loss_scale_factor (NaN:
  // the batch's own: mask tokens, rows with tokens, T).
  // loss: the scalar loss (float32, float64 for float64 logp); counts (5,) int64: mask tokens, clipped high / low /
  // dual, and the value-check bits (ctpo_layout.h Check); metrics (12,) float32 (ctpo_layout.h Metric); log_w,
  // clipped (B, T); grad (B, T) and row_scale (B,): what the backward needs, d loss / d logp[i, t] = row_scale[i] * grad[i, t].
  m.def(
      "policy_loss(Tensor logp, Tensor old_logp, Tensor adv, Tensor mask, Tensor? rollout_is_weights, float[] config) -> (Tensor loss, "
      "Tensor counts, Tensor metrics, Tensor log_w, Tensor clipped, Tensor grad, Tensor row_scale)");
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

// The metrics dict: keys[i] -> a 0-dim tensor sharing the storage of element i of the op's small `counts` output
// (i < n_counts), then of its `metrics` output (n_metrics of them); or None when the kernel found bad input values
// (counts[check], its check word, is nonzero: read here, on a GPU the call's one host sync) and the caller raises
// what it found. Made here without the dispatcher or an autograd view record (the op's outputs are never written
// to): from Python, t.unbind() costs ~0.7 us a value, which at small sizes was most of policy_loss's time around the
// op. ctpo_ext.policy_loss uses unbind() while torch.compile traces.
static py::object metrics_dict(const py::tuple& keys, const at::Tensor& counts, int64_t n_counts, const at::Tensor& metrics,
                               int64_t n_metrics, int64_t check) {
  TORCH_CHECK_VALUE(static_cast<int64_t>(keys.size()) == n_counts + n_metrics, "metrics_dict: expected one key per value");
  TORCH_CHECK_VALUE(counts.scalar_type() == at::kLong && counts.dim() == 1 && check >= 0 && check < counts.numel(),
                    "metrics_dict: expected the op's int64 counts output and the index of its check word");
  const int64_t bad = counts.is_cpu() ? counts.const_data_ptr<int64_t>()[check] : counts.select(0, check).item<int64_t>();
  if (bad != 0) return py::none();
  py::dict out;
  size_t k = 0;
  for (const auto& [t, n] : {std::pair<const at::Tensor&, int64_t>{counts, n_counts}, {metrics, n_metrics}}) {
    TORCH_CHECK_VALUE(t.dim() == 1 && t.is_contiguous() && n <= t.numel(), "metrics_dict: expected 1-D outputs of the op");
    for (int64_t i = 0; i < n; ++i) {
      auto impl = c10::make_intrusive<c10::TensorImpl>(c10::Storage(t.storage()), t.key_set(), t.dtype());
      impl->set_sizes_contiguous({});
      impl->set_storage_offset(t.storage_offset() + i);
      out[keys[k++]] = py::cast(at::Tensor(std::move(impl)));
    }
  }
  return std::move(out);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, mod) {
  mod.doc() = "CTPO fused policy loss: importing this module registers torch.ops.ctpo.policy_loss / policy_loss_backward";
  mod.def("metrics_dict", &metrics_dict, "the metrics dict: keys -> 0-dim tensors, the elements of the op's counts and metrics outputs; None if the check word is set");
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
