// Torch glue for the CUDA kernels (ctpo_cuda.cu): checks, layout, output allocation, the current stream,
// and the CUDA registration of the ops defined in ctpo.cpp. Built only with CUDA torch (setup.py adds it
// to a CUDAExtension; ctpo_ext.py's JIT build adds it when torch.version.cuda, nvcc and an architecture are there).
// Status: run and tested on an H200 (tests/test_cuda.py).

#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "ctpo_common.h"
#include "ctpo_cuda.h"

namespace ctpo {

static ctpo_cuda::DType dtype_tag(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return ctpo_cuda::DType::F32;
    case at::kDouble: return ctpo_cuda::DType::F64;
    case at::kBFloat16: return ctpo_cuda::DType::BF16;
    case at::kHalf: return ctpo_cuda::DType::F16;
    default: TORCH_CHECK_TYPE(false, "ctpo: unsupported dtype ", t);
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> policy_loss_cuda(
    const at::Tensor& logp, const at::Tensor& old_logp, const at::Tensor& adv, const at::Tensor& mask,
    const std::optional<at::Tensor>& rollout_is_weights, int64_t ratio, double lower, double upper, double dual, double power,
    double delta_max, double log_w_max) {
  check_inputs(logp, old_logp, adv, mask, rollout_is_weights, ratio, power, delta_max, log_w_max);
  TORCH_CHECK_VALUE(logp.is_cuda(), "ctpo::policy_loss (CUDA kernel): logp: expected a CUDA tensor, got ", logp.device());
  const c10::cuda::CUDAGuard guard(logp.device());
  const Prepared in = prepare_inputs(logp, old_logp, adv, mask);
  const at::Tensor rw = prepare_weights(rollout_is_weights, in.compute);
  const int64_t B = logp.size(0), T = logp.size(1);
  const int64_t sample_n = ctpo_layout::sample_slots(B, T);
  auto opts = logp.options().dtype(in.compute);
  // every element of every output is written by the kernels (row_loss, stats: each row's block; totals, q: the
  // quantile kernel): no zero fill
  at::Tensor loss = at::empty(logp.sizes(), opts), lw = at::empty(logp.sizes(), opts);
  at::Tensor clipped = at::empty(logp.sizes(), logp.options().dtype(at::kBool));
  at::Tensor bits = at::empty({B, pass_bits_bytes(T)}, logp.options().dtype(at::kByte));
  at::Tensor row_loss = at::empty({B}, logp.options().dtype(at::kDouble));
  at::Tensor stats = at::empty({ctpo_layout::kNumStats, B}, logp.options().dtype(at::kDouble));
  at::Tensor totals = at::empty({ctpo_layout::kNumStats}, logp.options().dtype(at::kDouble));
  at::Tensor q = at::empty({3}, opts);
  if (B == 0 || T == 0) {  // rows without tokens: zero sums, empty min / max
    row_loss.zero_();
    stats.zero_();
    totals.zero_();
    q.zero_();
    stats.select(0, ctpo_layout::kStatMinLogW).fill_(std::numeric_limits<double>::infinity());
    totals.select(0, ctpo_layout::kStatMinLogW).fill_(std::numeric_limits<double>::infinity());
    for (const int c : {ctpo_layout::kStatMaxLogW, ctpo_layout::kStatMaxLogp, ctpo_layout::kStatMaxOldLogp}) {
      stats.select(0, c).fill_(-std::numeric_limits<double>::infinity());
      totals.select(0, c).fill_(-std::numeric_limits<double>::infinity());
    }
    return {loss, row_loss, lw, clipped, bits, stats, totals, q};
  }
  at::Tensor sample_v = at::empty({sample_n}, opts), sample_m = at::empty({sample_n}, logp.options().dtype(at::kByte));

  ctpo_cuda::FwdParams p{};
  p.logp = in.logp.const_data_ptr();
  p.old_logp = in.old_logp.const_data_ptr();
  p.adv = in.adv.const_data_ptr();
  p.mask = in.mask.const_data_ptr<bool>();
  p.rw = rw.defined() ? rw.const_data_ptr() : nullptr;
  p.logp_dtype = dtype_tag(in.logp.scalar_type());
  p.old_dtype = dtype_tag(in.old_logp.scalar_type());
  p.adv_dtype = dtype_tag(in.adv.scalar_type());
  p.adv_rowwise = in.adv_rowwise;
  p.B = B;
  p.T = T;
  p.logp_rs = in.logp.stride(0);
  p.old_rs = in.old_logp.stride(0);
  p.adv_rs = in.adv.stride(0);
  p.mask_rs = in.mask.stride(0);
  p.rw_rs = rw.defined() ? rw.stride(0) : 0;
  p.ratio = static_cast<int>(ratio);
  p.lower = lower;
  p.upper = upper;
  p.dual = dual;
  p.power = power;
  p.delta_max = delta_max;
  p.log_w_max = log_w_max;
  p.loss = loss.mutable_data_ptr();
  p.log_w = lw.mutable_data_ptr();
  p.clipped = clipped.mutable_data_ptr<bool>();
  p.pass_bits = bits.mutable_data_ptr<uint8_t>();
  p.bits_rs = bits.size(1);
  p.row_loss = row_loss.mutable_data_ptr<double>();
  p.stats = stats.mutable_data_ptr<double>();
  p.totals = totals.mutable_data_ptr<double>();
  p.log_w_q = q.mutable_data_ptr();
  p.sample_v = sample_v.mutable_data_ptr();
  p.sample_m = sample_m.mutable_data_ptr<uint8_t>();
  p.sample_n = sample_n;
  const cudaError_t err = ctpo_cuda::policy_loss_forward(p, c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "ctpo::policy_loss: CUDA kernel launch failed: ", cudaGetErrorString(err));
  return {loss, row_loss, lw, clipped, bits, stats, totals, q};
}

at::Tensor policy_loss_backward_cuda(const std::optional<at::Tensor>& grad_loss, const std::optional<at::Tensor>& grad_row_loss,
                                     const at::Tensor& loss, const at::Tensor& pass_bits, at::ScalarType grad_dtype) {
  check_backward_inputs(grad_loss, grad_row_loss, loss, pass_bits, grad_dtype);
  TORCH_CHECK_VALUE(loss.is_cuda(), "ctpo::policy_loss_backward (CUDA kernel): loss: expected a CUDA tensor, got ", loss.device());
  const c10::cuda::CUDAGuard guard(loss.device());
  const at::Tensor l = loss.contiguous(), b = pass_bits.contiguous();
  at::Tensor out = at::empty(loss.sizes(), loss.options().dtype(grad_dtype));
  ctpo_cuda::BwdParams p{};
  at::Tensor g, gr;
  if (grad_loss.has_value() && grad_loss->defined()) {
    g = prepare_grad(*grad_loss, l.scalar_type());
    p.grad = g.const_data_ptr();
    p.gs0 = g.stride(0);
    p.gs1 = g.size(1) <= 1 ? 0 : g.stride(1);
  }
  if (grad_row_loss.has_value() && grad_row_loss->defined()) {
    gr = prepare_grad_row(*grad_row_loss, at::kDouble);
    p.grad_row = gr.const_data_ptr<double>();
    p.grs = gr.size(0) <= 1 ? 0 : gr.stride(0);
  }
  if (p.grad == nullptr && p.grad_row == nullptr) return out.zero_();
  p.loss = l.const_data_ptr();
  p.pass_bits = b.const_data_ptr<uint8_t>();
  p.bits_rs = b.size(1);
  p.compute = dtype_tag(l.scalar_type());
  p.out = out.mutable_data_ptr();
  p.out_dtype = dtype_tag(grad_dtype);
  p.B = loss.size(0);
  p.T = loss.size(1);
  const cudaError_t err = ctpo_cuda::policy_loss_backward(p, c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "ctpo::policy_loss_backward: CUDA kernel launch failed: ", cudaGetErrorString(err));
  return out;
}

}  // namespace ctpo

TORCH_LIBRARY_IMPL(ctpo, CUDA, m) {
  m.impl("policy_loss", &ctpo::policy_loss_cuda);
  m.impl("policy_loss_backward", &ctpo::policy_loss_backward_cuda);
}
