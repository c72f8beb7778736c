// Input checks and layout preparation shared by the CPU op (ctpo.cpp) and the CUDA glue (ctpo_cuda_glue.cpp).
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <utility>

namespace ctpo {

inline bool is_float_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kBFloat16 || t == at::kHalf;
}

// ValueError / TypeError naming the argument, as ctpo.check_inputs does
inline void check_inputs(const at::Tensor& logp, const at::Tensor& old_logp, const at::Tensor& adv, const at::Tensor& mask,
                         double clip_low, double clip_high, double clip_c) {
  TORCH_CHECK_VALUE(logp.dim() == 2, "ctpo::token_loss: logp: expected shape (B, T), got ", logp.sizes());
  TORCH_CHECK_TYPE(is_float_dtype(logp.scalar_type()),
                   "ctpo::token_loss: logp: expected float16/bfloat16/float32/float64, got ", logp.scalar_type());
  TORCH_CHECK_TYPE(is_float_dtype(old_logp.scalar_type()),
                   "ctpo::token_loss: old_logp: expected float16/bfloat16/float32/float64, got ", old_logp.scalar_type());
  TORCH_CHECK_TYPE(is_float_dtype(adv.scalar_type()),
                   "ctpo::token_loss: adv: expected float16/bfloat16/float32/float64, got ", adv.scalar_type());
  TORCH_CHECK_TYPE(mask.scalar_type() == at::kBool, "ctpo::token_loss: mask: expected a bool tensor, got ", mask.scalar_type());
  TORCH_CHECK_VALUE(old_logp.sizes() == logp.sizes(), "ctpo::token_loss: old_logp: expected shape ", logp.sizes(), " like logp, got ",
                    old_logp.sizes());
  TORCH_CHECK_VALUE(adv.sizes() == logp.sizes(), "ctpo::token_loss: adv: expected shape ", logp.sizes(),
                    " like logp (expand a (B,) tensor with adv[:, None].expand_as(logp)), got ", adv.sizes());
  TORCH_CHECK_VALUE(mask.sizes() == logp.sizes(), "ctpo::token_loss: mask: expected shape ", logp.sizes(), " like logp, got ",
                    mask.sizes());
  TORCH_CHECK_VALUE(old_logp.device() == logp.device(), "ctpo::token_loss: old_logp: expected device ", logp.device(),
                    " like logp, got ", old_logp.device());
  TORCH_CHECK_VALUE(adv.device() == logp.device(), "ctpo::token_loss: adv: expected device ", logp.device(), " like logp, got ",
                    adv.device());
  TORCH_CHECK_VALUE(mask.device() == logp.device(), "ctpo::token_loss: mask: expected device ", logp.device(), " like logp, got ",
                    mask.device());
  TORCH_CHECK_VALUE(logp.size(1) < (int64_t{1} << 31) - 64, "ctpo::token_loss: logp: T = ", logp.size(1), " is too long");
  TORCH_CHECK_VALUE(clip_low >= 0 && clip_high >= 0 && clip_c > 0,
                    "ctpo::token_loss: clip_low, clip_high, clip_c: need clip_low >= 0, clip_high >= 0, clip_c > 0; got ", clip_low,
                    ", ", clip_high, ", ", clip_c);
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

// pass_bits row length in bytes: one bit per token, whole 32-bit words (CPU writes 16-bit, CUDA 32-bit words)
inline int64_t pass_bits_bytes(int64_t T) {
  return 4 * ((T + 31) / 32);
}

inline void check_backward_inputs(const at::Tensor& grad_loss, const at::Tensor& loss, const at::Tensor& pass_bits,
                                  at::ScalarType grad_dtype) {
  TORCH_CHECK_VALUE(loss.dim() == 2, "ctpo::token_loss_backward: loss: expected shape (B, T), got ", loss.sizes());
  TORCH_CHECK_TYPE(loss.scalar_type() == at::kFloat || loss.scalar_type() == at::kDouble,
                   "ctpo::token_loss_backward: loss: expected float32/float64, got ", loss.scalar_type());
  TORCH_CHECK_TYPE(pass_bits.scalar_type() == at::kByte, "ctpo::token_loss_backward: pass_bits: expected uint8, got ",
                   pass_bits.scalar_type());
  TORCH_CHECK_VALUE(pass_bits.dim() == 2 && pass_bits.size(0) == loss.size(0) && pass_bits.size(1) == pass_bits_bytes(loss.size(1)),
                    "ctpo::token_loss_backward: pass_bits: expected shape (", loss.size(0), ", ", pass_bits_bytes(loss.size(1)),
                    "), got ", pass_bits.sizes());
  TORCH_CHECK_VALUE(grad_loss.sizes() == loss.sizes(), "ctpo::token_loss_backward: grad_loss: expected shape ", loss.sizes(), ", got ",
                    grad_loss.sizes());
  TORCH_CHECK_VALUE(grad_loss.device() == loss.device() && pass_bits.device() == loss.device(),
                    "ctpo::token_loss_backward: grad_loss, pass_bits: expected device ", loss.device(), ", got ", grad_loss.device(),
                    ", ", pass_bits.device());
  TORCH_CHECK_TYPE(is_float_dtype(grad_loss.scalar_type()), "ctpo::token_loss_backward: grad_loss: expected a floating dtype, got ",
                   grad_loss.scalar_type());
  TORCH_CHECK_TYPE(is_float_dtype(grad_dtype), "ctpo::token_loss_backward: grad_dtype: expected a floating dtype, got ", grad_dtype);
}

// grad_loss in the compute dtype with a unit or zero stride along T (broadcasts stay unmaterialised)
inline at::Tensor prepare_grad(const at::Tensor& grad_loss, at::ScalarType compute) {
  at::Tensor g = grad_loss.scalar_type() == compute ? grad_loss : grad_loss.to(compute);
  if (!(g.size(1) <= 1 || g.stride(1) == 0 || g.stride(1) == 1)) g = g.contiguous();
  return g;
}

}  // namespace ctpo
