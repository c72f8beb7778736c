// Input checks and layout preparation shared by the CPU op (ctpo.cpp) and the CUDA glue (ctpo_cuda_glue.cpp).
#pragma once

#include <ATen/ATen.h>
#include <c10/util/ArrayRef.h>
#include <c10/util/Exception.h>

#include <cmath>

#include <optional>
#include <utility>

#include "ctpo_layout.h"

namespace ctpo {

inline bool is_float_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kBFloat16 || t == at::kHalf;
}

// ValueError / TypeError naming the argument, as ctpo.check_inputs does
inline void check_inputs(const at::Tensor& logp, const at::Tensor& old_logp, const at::Tensor& adv, const at::Tensor& mask,
                         const std::optional<at::Tensor>& rw, int64_t ratio, double power, double delta_max, double log_w_max,
                         int64_t agg) {
  TORCH_CHECK_VALUE(logp.dim() == 2, "ctpo::policy_loss: logp: expected shape (B, T), got ", logp.sizes());
  TORCH_CHECK_TYPE(is_float_dtype(logp.scalar_type()),
                   "ctpo::policy_loss: logp: expected float16/bfloat16/float32/float64, got ", logp.scalar_type());
  TORCH_CHECK_TYPE(is_float_dtype(old_logp.scalar_type()),
                   "ctpo::policy_loss: old_logp: expected float16/bfloat16/float32/float64, got ", old_logp.scalar_type());
  TORCH_CHECK_TYPE(is_float_dtype(adv.scalar_type()),
                   "ctpo::policy_loss: adv: expected float16/bfloat16/float32/float64, got ", adv.scalar_type());
  TORCH_CHECK_TYPE(mask.scalar_type() == at::kBool, "ctpo::policy_loss: mask: expected a bool tensor, got ", mask.scalar_type());
  TORCH_CHECK_VALUE(old_logp.sizes() == logp.sizes(), "ctpo::policy_loss: old_logp: expected shape ", logp.sizes(), " like logp, got ",
                    old_logp.sizes());
  TORCH_CHECK_VALUE(adv.sizes() == logp.sizes() || (adv.dim() == 1 && adv.size(0) == logp.size(0)), "ctpo::policy_loss: adv: expected shape ",
                    logp.sizes(), " like logp, or (", logp.size(0), ",), got ", adv.sizes());
  TORCH_CHECK_VALUE(mask.sizes() == logp.sizes(), "ctpo::policy_loss: mask: expected shape ", logp.sizes(), " like logp, got ",
                    mask.sizes());
  TORCH_CHECK_VALUE(old_logp.device() == logp.device(), "ctpo::policy_loss: old_logp: expected device ", logp.device(),
                    " like logp, got ", old_logp.device());
  TORCH_CHECK_VALUE(adv.device() == logp.device(), "ctpo::policy_loss: adv: expected device ", logp.device(), " like logp, got ",
                    adv.device());
  TORCH_CHECK_VALUE(mask.device() == logp.device(), "ctpo::policy_loss: mask: expected device ", logp.device(), " like logp, got ",
                    mask.device());
  if (rw.has_value()) {
    TORCH_CHECK_TYPE(is_float_dtype(rw->scalar_type()), "ctpo::policy_loss: rollout_is_weights: expected a floating dtype, got ",
                     rw->scalar_type());
    TORCH_CHECK_VALUE(rw->sizes() == logp.sizes() && rw->device() == logp.device(), "ctpo::policy_loss: rollout_is_weights: expected shape ",
                      logp.sizes(), " on ", logp.device(), " like logp, got ", rw->sizes(), " on ", rw->device());
  }
  TORCH_CHECK_VALUE(logp.size(1) < (int64_t{1} << 31) - 64, "ctpo::policy_loss: logp: T = ", logp.size(1), " is too long");
  TORCH_CHECK_VALUE(ratio >= ctpo_layout::kToken && ratio <= ctpo_layout::kCumulativeGeomean,
                    "ctpo::policy_loss: ratio: expected 0 token, 1 sequence, 2 gspo, 3 cumulative, 4 cumulative-geomean; got ", ratio);
  TORCH_CHECK_VALUE(std::isfinite(power), "ctpo::policy_loss: power: expected a finite number, got ", power);
  TORCH_CHECK_VALUE(delta_max > 0, "ctpo::policy_loss: delta_max: expected > 0, got ", delta_max);
  TORCH_CHECK_VALUE(log_w_max >= 0, "ctpo::policy_loss: log_w_max: expected >= 0, got ", log_w_max);
  TORCH_CHECK_VALUE(agg >= ctpo_layout::kTokenMean && agg <= ctpo_layout::kSeqMeanTokenSumNorm,
                    "ctpo::policy_loss: agg: expected 0 token-mean, 1 token-sum, 2 seq-mean-token-mean, 3 seq-mean-token-sum, "
                    "4 seq-mean-token-sum-norm; got ", agg);
}

// The op's scalar arguments, unpacked from its `config` list. The schema takes them as one float[] because
// torch.library's Python autograd wrapper re-reads the whole schema once per argument on every call: O(n^2) in the
// arity, about 70 us for 16 separate arguments, more than the kernel at 16x1024.
struct OpConfig {
  int64_t ratio, agg;
  double lower, upper, dual, power, delta_max, log_w_max;
  std::optional<double> num_tokens, num_seqs, loss_scale_factor;
};

inline OpConfig unpack_config(c10::ArrayRef<double> c) {
  using namespace ctpo_layout;
  TORCH_CHECK_VALUE(c.size() == kNumConfig, "ctpo::policy_loss: config: expected ", int(kNumConfig),
                    " numbers (ratio, lower, upper, dual, power, delta_max, log_w_max, agg, num_tokens, num_seqs, loss_scale_factor), got ",
                    c.size());
  const auto code = [&](int i, const char* name) {
    TORCH_CHECK_VALUE(c[i] == std::floor(c[i]) && std::abs(c[i]) < 1e9, "ctpo::policy_loss: ", name, ": expected a whole code, got ", c[i]);
    return static_cast<int64_t>(c[i]);
  };
  const auto count = [&](int i) { return std::isnan(c[i]) ? std::nullopt : std::optional<double>(c[i]); };
  return {code(kCfgRatio, "ratio"), code(kCfgAgg, "agg"), c[kCfgLower], c[kCfgUpper], c[kCfgDual], c[kCfgPower], c[kCfgDeltaMax], c[kCfgLogWMax],
          count(kCfgNumTokens), count(kCfgNumSeqs), count(kCfgLossScaleFactor)};
}

// the aggregation's arguments; a count that is not given is the batch's own (-1)
inline ctpo_layout::AggArgs agg_args(const OpConfig& c, int64_t T) {
  for (const auto& [name, v] : {std::pair<const char*, std::optional<double>>{"num_tokens", c.num_tokens}, {"num_seqs", c.num_seqs},
                                {"loss_scale_factor", c.loss_scale_factor}}) {
    TORCH_CHECK_VALUE(!v.has_value() || (*v >= 0 && std::isfinite(*v)), "ctpo::policy_loss: ", name, ": expected a finite count >= 0, got ",
                      *v);
  }
  return {static_cast<int>(c.agg), c.num_tokens.value_or(-1.0), c.num_seqs.value_or(-1.0), c.loss_scale_factor.value_or(-1.0), T};
}

// A row-major view whose last dimension is unit-stride (any row stride): no copy for row slices.
inline at::Tensor rows_unit_stride(const at::Tensor& x) {
  if (x.size(1) <= 1 || x.stride(1) == 1) return x;
  return x.contiguous();
}

struct Prepared {
  at::Tensor logp, old_logp, adv, mask;
  at::ScalarType compute;  // float64 for float64 logp, else float32 (as torch.promote_types(logp, float32))
  bool adv_rowwise;  // adv is a per-row broadcast: read one value per row at adv[i, 0]
};

inline Prepared prepare_inputs(const at::Tensor& logp, const at::Tensor& old_logp, const at::Tensor& adv, const at::Tensor& mask) {
  Prepared p;
  const at::ScalarType Lt = logp.scalar_type();
  p.compute = Lt == at::kDouble ? at::kDouble : at::kFloat;
  p.logp = rows_unit_stride(logp);
  // old_logp is read as logp's dtype or as the compute dtype; anything else is converted once (exactly
  // what the reference's old_logp.to(compute dtype) does)
  p.old_logp = old_logp;
  if (old_logp.scalar_type() != Lt && old_logp.scalar_type() != p.compute) p.old_logp = old_logp.to(p.compute);
  p.old_logp = rows_unit_stride(p.old_logp);
  p.mask = rows_unit_stride(mask);
  // a (B,) tensor or an expanded (stride-0) row broadcast is read once per row, never materialised
  p.adv = adv.dim() == 1 ? adv.unsqueeze(1) : adv;
  p.adv_rowwise = p.adv.size(1) <= 1 || p.adv.stride(1) == 0;
  if (!p.adv_rowwise && (adv.scalar_type() != p.compute || adv.stride(1) != 1)) p.adv = adv.to(p.compute).contiguous();
  return p;
}

// rollout weights in the compute dtype with unit stride along T (undefined when absent)
inline at::Tensor prepare_weights(const std::optional<at::Tensor>& rw, at::ScalarType compute) {
  if (!rw.has_value()) return at::Tensor();
  at::Tensor w = rw->scalar_type() == compute ? *rw : rw->to(compute);
  return rows_unit_stride(w);
}

inline void check_backward_inputs(const at::Tensor& grad_loss, const at::Tensor& grad, const at::Tensor& row_scale,
                                  at::ScalarType grad_dtype) {
  TORCH_CHECK_VALUE(grad.dim() == 2, "ctpo::policy_loss_backward: grad: expected shape (B, T), got ", grad.sizes());
  TORCH_CHECK_TYPE(grad.scalar_type() == at::kFloat || grad.scalar_type() == at::kDouble,
                   "ctpo::policy_loss_backward: grad: expected float32/float64, got ", grad.scalar_type());
  TORCH_CHECK_VALUE(grad_loss.numel() == 1 && grad_loss.device() == grad.device() && is_float_dtype(grad_loss.scalar_type()),
                    "ctpo::policy_loss_backward: grad_loss: expected one float on ", grad.device(), ", got ", grad_loss.sizes(), " ",
                    grad_loss.scalar_type(), " on ", grad_loss.device());
  TORCH_CHECK_VALUE(row_scale.dim() == 1 && row_scale.size(0) == grad.size(0) && row_scale.scalar_type() == grad.scalar_type() &&
                        row_scale.device() == grad.device(),
                    "ctpo::policy_loss_backward: row_scale: expected shape (", grad.size(0), ",) ", grad.scalar_type(), " on ",
                    grad.device(), ", got ", row_scale.sizes(), " ", row_scale.scalar_type(), " on ", row_scale.device());
  TORCH_CHECK_TYPE(is_float_dtype(grad_dtype), "ctpo::policy_loss_backward: grad_dtype: expected a floating dtype, got ", grad_dtype);
}

}  // namespace ctpo
