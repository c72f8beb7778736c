// Torch glue for the CUDA kernels (ctpo_cuda.cu): checks, layout, output allocation, the current stream,
// and the CUDA registration of the ops defined in ctpo.cpp. Built only with CUDA torch (setup.py adds it
// to a CUDAExtension; ctpo_ext.py's JIT build adds it when torch.version.cuda, nvcc and an architecture are there).
// Status: run and tested on an H200 (tests/test_cuda.py).

#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

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

// the CPU op (ctpo.cpp), for an empty batch: nothing for the kernels to do, outputs of the same shapes
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> policy_loss_cpu(
    const at::Tensor& logp, const at::Tensor& old_logp, const at::Tensor& adv, const at::Tensor& mask,
    const std::optional<at::Tensor>& rollout_is_weights, c10::ArrayRef<double> config);

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> policy_loss_cuda(
    const at::Tensor& logp, const at::Tensor& old_logp, const at::Tensor& adv, const at::Tensor& mask,
    const std::optional<at::Tensor>& rollout_is_weights, c10::ArrayRef<double> config) {
  const OpConfig c = unpack_config(config);
  check_inputs(logp, old_logp, adv, mask, rollout_is_weights, c.ratio, c.power, c.delta_max, c.log_w_max, c.agg);
  TORCH_CHECK_VALUE(logp.is_cuda(), "ctpo::policy_loss (CUDA kernel): logp: expected a CUDA tensor, got ", logp.device());
  const c10::cuda::CUDAGuard guard(logp.device());
  const int64_t B = logp.size(0), T = logp.size(1);
  if (B == 0 || T == 0) {  // rows without tokens: the CPU op's outputs, moved (rare; a copy, no kernel)
    const auto cpu = [](const std::optional<at::Tensor>& x) { return x.has_value() ? std::optional<at::Tensor>(x->cpu()) : x; };
    auto out = policy_loss_cpu(logp.cpu(), old_logp.cpu(), adv.cpu(), mask.cpu(), cpu(rollout_is_weights), config);
    const auto d = logp.device();
    return {std::get<0>(out).to(d), std::get<1>(out).to(d), std::get<2>(out).to(d), std::get<3>(out).to(d), std::get<4>(out).to(d),
            std::get<5>(out).to(d), std::get<6>(out).to(d)};
  }
  const Prepared in = prepare_inputs(logp, old_logp, adv, mask);
  const at::Tensor rw = prepare_weights(rollout_is_weights, in.compute);
  const int64_t sample_n = ctpo_layout::sample_slots(B, T);
  auto opts = logp.options().dtype(in.compute);
  // every element of every output is written by the kernels: no zero fill
  at::Tensor lw = at::empty(logp.sizes(), opts), grad = at::empty(logp.sizes(), opts);
  at::Tensor clipped = at::empty(logp.sizes(), logp.options().dtype(at::kBool));
  at::Tensor loss = at::empty({}, opts), row_scale = at::empty({B}, opts);
  at::Tensor counts = at::empty({ctpo_layout::kNumCounts}, logp.options().dtype(at::kLong));
  at::Tensor metrics = at::empty({ctpo_layout::kNumMetrics}, logp.options().dtype(at::kFloat));
  at::Tensor row_loss = at::empty({B}, logp.options().dtype(at::kDouble));
  at::Tensor stats = at::empty({ctpo_layout::kNumStats, B}, logp.options().dtype(at::kDouble));
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
  p.ratio = static_cast<int>(c.ratio);
  p.lower = c.lower;
  p.upper = c.upper;
  p.dual = c.dual;
  p.power = c.power;
  p.delta_max = c.delta_max;
  p.log_w_max = c.log_w_max;
  p.agg = agg_args(c, T);
  p.log_w = lw.mutable_data_ptr();
  p.grad = grad.mutable_data_ptr();
  p.clipped = clipped.mutable_data_ptr<bool>();
  p.loss = loss.mutable_data_ptr();
  p.counts = reinterpret_cast<long long*>(counts.mutable_data_ptr<int64_t>());
  p.metrics = metrics.mutable_data_ptr<float>();
  p.row_scale = row_scale.mutable_data_ptr();
  p.row_loss = row_loss.mutable_data_ptr<double>();
  p.stats = stats.mutable_data_ptr<double>();
  p.sample_v = sample_v.mutable_data_ptr();
  p.sample_m = sample_m.mutable_data_ptr<uint8_t>();
  p.sample_n = sample_n;
  const cudaError_t err = ctpo_cuda::policy_loss_forward(p, c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "ctpo::policy_loss: CUDA kernel launch failed: ", cudaGetErrorString(err));
  return {loss, counts, metrics, lw, clipped, grad, row_scale};
}

at::Tensor policy_loss_backward_cuda(const at::Tensor& grad_loss, const at::Tensor& grad, const at::Tensor& row_scale,
                                     at::ScalarType grad_dtype) {
  check_backward_inputs(grad_loss, grad, row_scale, grad_dtype);
  TORCH_CHECK_VALUE(grad.is_cuda(), "ctpo::policy_loss_backward (CUDA kernel): grad: expected a CUDA tensor, got ", grad.device());
  const c10::cuda::CUDAGuard guard(grad.device());
  const at::Tensor gr = grad.contiguous(), sc = row_scale.contiguous();
  const at::Tensor g = grad_loss.reshape({}).to(grad.scalar_type());  // on the device: no sync
  at::Tensor out = at::empty(grad.sizes(), grad.options().dtype(grad_dtype));
  ctpo_cuda::BwdParams p{};
  p.grad_loss = g.const_data_ptr();
  p.grad = gr.const_data_ptr();
  p.row_scale = sc.const_data_ptr();
  p.compute = dtype_tag(gr.scalar_type());
  p.out = out.mutable_data_ptr();
  p.out_dtype = dtype_tag(grad_dtype);
  p.B = grad.size(0);
  p.T = grad.size(1);
  const cudaError_t err = ctpo_cuda::policy_loss_backward(p, c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "ctpo::policy_loss_backward: CUDA kernel launch failed: ", cudaGetErrorString(err));
  return out;
}

}  // namespace ctpo

TORCH_LIBRARY_IMPL(ctpo, CUDA, m) {
  m.impl("policy_loss", &ctpo::policy_loss_cuda);
  m.impl("policy_loss_backward", &ctpo::policy_loss_backward_cuda);
}
