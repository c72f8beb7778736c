// Input checks and layout preparation shared by the CPU op (ctpo.cpp) and the CUDA glue (ctpo_cuda_glue.cpp).
#pragma once

#include <ATen/ATen.h>
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
                         const std::optional<at::Tensor>& rw, int64_t ratio, double power, double delta_max, double log_w_max) {
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
  TORCH_CHECK_VALUE(adv.sizes() == logp.sizes(), "ctpo::policy_loss: adv: expected shape ", logp.sizes(),
                    " like logp (expand a (B,) tensor with adv[:, None].expand_as(logp)), got ", adv.sizes());
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
  // an expanded (stride-0) row broadcast is read once per row, never materialised
  p.adv_rowwise = adv.size(1) <= 1 || adv.stride(1) == 0;
  p.adv = adv;
  if (!p.adv_rowwise && (adv.scalar_type() != p.compute || adv.stride(1) != 1)) p.adv = adv.to(p.compute).contiguous();
  return p;
}

// rollout weights in the compute dtype with unit stride along T (undefined when absent)
inline at::Tensor prepare_weights(const std::optional<at::Tensor>& rw, at::ScalarType compute) {
  if (!rw.has_value()) return at::Tensor();
  at::Tensor w = rw->scalar_type() == compute ? *rw : rw->to(compute);
  return rows_unit_stride(w);
}

// pass_bits row length in bytes: one bit per token, whole 32-bit words (CPU writes 16-bit, CUDA 32-bit words)
inline int64_t pass_bits_bytes(int64_t T) {
  return 4 * ((T + 31) / 32);
}

inline void check_backward_inputs(const std::optional<at::Tensor>& grad_loss, const std::optional<at::Tensor>& grad_row_loss,
                                  const at::Tensor& loss, const at::Tensor& pass_bits, at::ScalarType grad_dtype) {
  TORCH_CHECK_VALUE(loss.dim() == 2, "ctpo::policy_loss_backward: loss: expected shape (B, T), got ", loss.sizes());
  TORCH_CHECK_TYPE(loss.scalar_type() == at::kFloat || loss.scalar_type() == at::kDouble,
                   "ctpo::policy_loss_backward: loss: expected float32/float64, got ", loss.scalar_type());
  TORCH_CHECK_TYPE(pass_bits.scalar_type() == at::kByte, "ctpo::policy_loss_backward: pass_bits: expected uint8, got ",
                   pass_bits.scalar_type());
  TORCH_CHECK_VALUE(pass_bits.dim() == 2 && pass_bits.size(0) == loss.size(0) && pass_bits.size(1) == pass_bits_bytes(loss.size(1)),
                    "ctpo::policy_loss_backward: pass_bits: expected shape (", loss.size(0), ", ", pass_bits_bytes(loss.size(1)),
                    "), got ", pass_bits.sizes());
  TORCH_CHECK_VALUE(pass_bits.device() == loss.device(), "ctpo::policy_loss_backward: pass_bits: expected device ", loss.device(),
                    ", got ", pass_bits.device());
  if (grad_loss.has_value() && grad_loss->defined()) {
    TORCH_CHECK_VALUE(grad_loss->sizes() == loss.sizes(), "ctpo::policy_loss_backward: grad_loss: expected shape ", loss.sizes(),
                      ", got ", grad_loss->sizes());
    TORCH_CHECK_VALUE(grad_loss->device() == loss.device(), "ctpo::policy_loss_backward: grad_loss: expected device ", loss.device(),
                      ", got ", grad_loss->device());
    TORCH_CHECK_TYPE(is_float_dtype(grad_loss->scalar_type()), "ctpo::policy_loss_backward: grad_loss: expected a floating dtype, got ",
                     grad_loss->scalar_type());
  }
  if (grad_row_loss.has_value() && grad_row_loss->defined()) {
    TORCH_CHECK_VALUE(grad_row_loss->dim() == 1 && grad_row_loss->size(0) == loss.size(0),
                      "ctpo::policy_loss_backward: grad_row_loss: expected shape (", loss.size(0), ",), got ", grad_row_loss->sizes());
    TORCH_CHECK_VALUE(grad_row_loss->device() == loss.device(), "ctpo::policy_loss_backward: grad_row_loss: expected device ",
                      loss.device(), ", got ", grad_row_loss->device());
    TORCH_CHECK_TYPE(is_float_dtype(grad_row_loss->scalar_type()),
                     "ctpo::policy_loss_backward: grad_row_loss: expected a floating dtype, got ", grad_row_loss->scalar_type());
  }
  TORCH_CHECK_TYPE(is_float_dtype(grad_dtype), "ctpo::policy_loss_backward: grad_dtype: expected a floating dtype, got ", grad_dtype);
}

// grad_loss in the compute dtype with a unit or zero stride along T (broadcasts stay unmaterialised)
inline at::Tensor prepare_grad(const at::Tensor& grad_loss, at::ScalarType compute) {
  at::Tensor g = grad_loss.scalar_type() == compute ? grad_loss : grad_loss.to(compute);
  if (!(g.size(1) <= 1 || g.stride(1) == 0 || g.stride(1) == 1)) g = g.contiguous();
  return g;
}

// grad_row_loss in the compute dtype (a broadcast scalar keeps its zero stride)
inline at::Tensor prepare_grad_row(const at::Tensor& grad_row, at::ScalarType compute) {
  return grad_row.scalar_type() == compute ? grad_row : grad_row.to(compute);
}

}  // namespace ctpo
