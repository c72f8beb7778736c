// Torch glue for the CUDA kernels (ctpo_cuda.cu): checks, layout, output allocation, the current stream,
// and the CUDA registration of the ops defined in ctpo.cpp. Built only with CUDA torch (setup.py adds it
// to a CUDAExtension; ctpo_ext.py's JIT build adds it when torch.version.cuda and nvcc are present).

#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

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

std::tuple<at::Tensor, at::Tensor, at::Tensor> token_loss_cuda(const at::Tensor& logp, const at::Tensor& old_logp, const at::Tensor& adv,
                                                               const at::Tensor& mask, double clip_low, double clip_high, double clip_c,
                                                               double power, bool geomean, double delta_max, double log_w_max) {
  check_inputs(logp, old_logp, adv, mask, clip_low, clip_high, clip_c);
  TORCH_CHECK_VALUE(logp.is_cuda(), "ctpo::token_loss (CUDA kernel): logp: expected a CUDA tensor, got ", logp.device());
  const c10::cuda::CUDAGuard guard(logp.device());
  const Prepared in = prepare_inputs(logp, old_logp, adv, mask);
  auto opts = logp.options().dtype(in.compute);
  at::Tensor loss = at::empty(logp.sizes(), opts), lw = at::empty(logp.sizes(), opts);
  at::Tensor bits = at::empty({logp.size(0), pass_bits_bytes(logp.size(1))}, logp.options().dtype(at::kByte));

  ctpo_cuda::FwdParams p{};
  p.logp = in.logp.const_data_ptr();
  p.old_logp = in.old_logp.const_data_ptr();
  p.adv = in.adv.const_data_ptr();
  p.mask = in.mask.const_data_ptr<bool>();
  p.logp_dtype = dtype_tag(in.logp.scalar_type());
  p.old_dtype = dtype_tag(in.old_logp.scalar_type());
  p.adv_dtype = dtype_tag(in.adv.scalar_type());
  p.adv_rowwise = in.adv_rowwise;
  p.B = logp.size(0);
  p.T = logp.size(1);
  p.logp_rs = in.logp.stride(0);
  p.old_rs = in.old_logp.stride(0);
  p.adv_rs = in.adv.stride(0);
  p.mask_rs = in.mask.stride(0);
  p.clip_low = clip_low;
  p.clip_high = clip_high;
  p.clip_c = clip_c;
  p.power = power;
  p.delta_max = delta_max;
  p.log_w_max = log_w_max;
  p.geomean = geomean;
  p.loss = loss.mutable_data_ptr();
  p.log_w = lw.mutable_data_ptr();
  p.pass_bits = bits.mutable_data_ptr<uint8_t>();
  p.bits_rs = bits.size(1);
  const cudaError_t err = ctpo_cuda::token_loss_forward(p, c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "ctpo::token_loss: CUDA kernel launch failed: ", cudaGetErrorString(err));
  return {loss, lw, bits};
}

at::Tensor token_loss_backward_cuda(const at::Tensor& grad_loss, const at::Tensor& loss, const at::Tensor& pass_bits,
                                    at::ScalarType grad_dtype) {
  check_backward_inputs(grad_loss, loss, pass_bits, grad_dtype);
  TORCH_CHECK_VALUE(loss.is_cuda(), "ctpo::token_loss_backward (CUDA kernel): loss: expected a CUDA tensor, got ", loss.device());
  const c10::cuda::CUDAGuard guard(loss.device());
  const at::Tensor l = loss.contiguous(), b = pass_bits.contiguous();
  const at::Tensor g = prepare_grad(grad_loss, l.scalar_type());
  at::Tensor out = at::empty(loss.sizes(), loss.options().dtype(grad_dtype));
  ctpo_cuda::BwdParams p{};
  p.grad = g.const_data_ptr();
  p.gs0 = g.stride(0);
  p.gs1 = g.size(1) <= 1 ? 0 : g.stride(1);
  p.loss = l.const_data_ptr();
  p.pass_bits = b.const_data_ptr<uint8_t>();
  p.bits_rs = b.size(1);
  p.compute = dtype_tag(l.scalar_type());
  p.out = out.mutable_data_ptr();
  p.out_dtype = dtype_tag(grad_dtype);
  p.B = loss.size(0);
  p.T = loss.size(1);
  const cudaError_t err = ctpo_cuda::token_loss_backward(p, c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "ctpo::token_loss_backward: CUDA kernel launch failed: ", cudaGetErrorString(err));
  return out;
}

}  // namespace ctpo

TORCH_LIBRARY_IMPL(ctpo, CUDA, m) {
  m.impl("token_loss", &ctpo::token_loss_cuda);
  m.impl("token_loss_backward", &ctpo::token_loss_backward_cuda);
}
