// CUDA kernels of the fused policy loss. Torch-free (cub + CUDA headers only): raw pointers and a launcher per op,
// so `nvcc -c csrc/ctpo_cuda.cu` compile-checks it on a machine without a GPU or CUDA torch.
// Semantics: see csrc/ctpo.cpp (the CPU kernel: every output and knob) and ctpo.token_losses (the reference).
// Status: run and tested on an H200 (tests/test_cuda.py; tools/gpu_check.sh runs the GPU checks).
//
// Forward: one block of 256 threads per row. sequence / gspo first reduce the row's masked clamped deltas
// (float64) and count. A tile is 8 x 256 tokens loaded striped (each of the 8 loads is one contiguous, coalesced
// 256-token span, all issued before any use); each span is scanned with cub::BlockScan over (float64 partial
// sum, response count) pairs, with a running carry (the block-prefix callback) across spans and tiles, so any T
// works in one pass. Every token then forms its bounds (t^p in float64, rounded to the compute dtype), picks its
// log-space value (log w or the bound it is clipped to, 0 for A = 0), takes one exp, and writes loss, log w and
// the clipped flag and its gradient before the aggregation's row scale (the loss where the gradient passes, else 0).
// Each thread keeps the row statistics (counts, float64 sums, min / max, bad-value flags), reduced once per row
// with cub::BlockReduce; then the row writes its slots of the quantile sample. A second kernel (one block)
// adds up the batch totals, radix-sorts the sample (<= 4096 values) and
// picks the nearest-rank quantiles. Backward: a grid-stride
// elementwise (grad + grad_row) * loss where the bit is set (else exactly 0), broadcasts read in place.

#include <cub/block/block_radix_sort.cuh>
#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "ctpo_cuda.h"

namespace ctpo_cuda {
namespace {

using namespace ctpo_layout;

constexpr int kBlock = 256;
constexpr int kItems = 8;
constexpr int kSortItems = 16;  // kBlock * kSortItems = 4096 = the largest quantile sample
static_assert(kBlock * kSortItems >= kFallbackSample, "the quantile sort must hold the fallback sample");
static_assert(kBlock * kSortItems == kMaxKernelSample, "ctpo_cuda.h's kMaxKernelSample is what the quantile kernel sorts");

__device__ __forceinline__ float widen(float x) { return x; }
__device__ __forceinline__ double widen(double x) { return x; }
__device__ __forceinline__ float widen(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float widen(__half x) { return __half2float(x); }

template <typename O>
__device__ __forceinline__ O narrow(double x);
template <>
__device__ __forceinline__ double narrow<double>(double x) { return x; }
template <>
__device__ __forceinline__ float narrow<float>(double x) { return static_cast<float>(x); }
template <>
__device__ __forceinline__ __nv_bfloat16 narrow<__nv_bfloat16>(double x) { return __float2bfloat16(static_cast<float>(x)); }
template <>
__device__ __forceinline__ __half narrow<__half>(double x) { return __float2half(static_cast<float>(x)); }
template <typename O>
__device__ __forceinline__ O narrow(float x);
template <>
__device__ __forceinline__ float narrow<float>(float x) { return x; }
template <>
__device__ __forceinline__ double narrow<double>(float x) { return static_cast<double>(x); }
template <>
__device__ __forceinline__ __nv_bfloat16 narrow<__nv_bfloat16>(float x) { return __float2bfloat16(x); }
template <>
__device__ __forceinline__ __half narrow<__half>(float x) { return __float2half(x); }

__device__ __forceinline__ float exp_c(float x) { return expf(x); }
__device__ __forceinline__ double exp_c(double x) { return exp(x); }
__device__ __forceinline__ bool finite_c(float x) { return isfinite(x); }
__device__ __forceinline__ bool finite_c(double x) { return isfinite(x); }

__device__ __forceinline__ double read_any(const void* p, DType dt, int64_t off) {
  switch (dt) {
    case DType::F32: return static_cast<const float*>(p)[off];
    case DType::F64: return static_cast<const double*>(p)[off];
    case DType::BF16: return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[off]);
    default: return __half2float(static_cast<const __half*>(p)[off]);
  }
}

// t^p in float64 with the special cases torch.pow(Tensor, Scalar) takes (bit-identical bounds)
__device__ __forceinline__ double pow_like_torch(double t, double p) {
  if (p == 0.0) return 1.0;
  if (p == 1.0) return t;
  if (p == 0.5) return sqrt(t);
  if (p == -0.5) return 1.0 / sqrt(t);
  if (p == -1.0) return 1.0 / t;
  if (p == 2.0) return t * t;
  if (p == 3.0) return t * t * t;
  if (p == -2.0) return 1.0 / (t * t);
  return pow(t, p);
}

template <typename C>
__device__ __forceinline__ C clamp_like_torch(C x, C lo, C hi) {  // min(max(x, lo), hi), NaN propagates
  return x < lo ? lo : (x > hi ? hi : x);
}

struct Prefix {
  double s;  // masked delta sum, float64 (as torch.cumsum accumulates on CPU)
  long long n;  // response tokens so far
};

struct PrefixSum {
  __device__ __forceinline__ Prefix operator()(const Prefix& a, const Prefix& b) const { return {a.s + b.s, a.n + b.n}; }
};

struct Carry {  // cub block-prefix callback: returns the prefix for this span, keeps the running total
  Prefix total;
  __device__ __forceinline__ Prefix operator()(Prefix aggregate) {
    const Prefix old = total;
    total = PrefixSum()(total, aggregate);
    return old;
  }
};

struct RowAcc {  // the per-row statistics, per thread, then block-reduced
  double sum_w, loss, mn, mx, max_lp, max_ol;
  long long n, nh, nl, nd, nc;
  unsigned flags;  // bit 0 logp / old_logp difference non-finite, 1 adv non-finite, 2 bad weight
};

struct RowAccSum {
  __device__ __forceinline__ RowAcc operator()(const RowAcc& a, const RowAcc& b) const {
    return {a.sum_w + b.sum_w, a.loss + b.loss, a.mn < b.mn ? a.mn : b.mn, a.mx > b.mx ? a.mx : b.mx,
            a.max_lp > b.max_lp ? a.max_lp : b.max_lp, a.max_ol > b.max_ol ? a.max_ol : b.max_ol, a.n + b.n, a.nh + b.nh,
            a.nl + b.nl, a.nd + b.nd, a.nc + b.nc, a.flags | b.flags};
  }
};

template <typename IL, typename IO, typename C>
__global__ void __launch_bounds__(kBlock) policy_loss_fwd_kernel(const FwdParams p) {
  using Scan = cub::BlockScan<Prefix, kBlock>;
  using ReduceAcc = cub::BlockReduce<RowAcc, kBlock>;
  using ReducePrefix = cub::BlockReduce<Prefix, kBlock>;
  __shared__ typename Scan::TempStorage scan_storage;
  __shared__ typename ReduceAcc::TempStorage acc_storage;
  __shared__ typename ReducePrefix::TempStorage total_storage;
  __shared__ double s_row_v;
  __shared__ unsigned s_flags;

  const int64_t row = blockIdx.x;
  const int64_t T = p.T;
  const IL* lp = static_cast<const IL*>(p.logp) + row * p.logp_rs;
  const IO* ol = static_cast<const IO*>(p.old_logp) + row * p.old_rs;
  const bool* mk = p.mask + row * p.mask_rs;
  const C* At = p.adv_rowwise ? nullptr : static_cast<const C*>(p.adv) + row * p.adv_rs;
  const C A_row = p.adv_rowwise ? static_cast<C>(read_any(p.adv, p.adv_dtype, row * p.adv_rs)) : C(0);
  const C* rw = p.rw ? static_cast<const C*>(p.rw) + row * p.rw_rs : nullptr;
  C* grad = static_cast<C*>(p.grad) + row * T;
  C* lwo = static_cast<C*>(p.log_w) + row * T;
  bool* clipped = p.clipped + row * T;

  const C dm = static_cast<C>(p.delta_max), ndm = -dm, lwm = static_cast<C>(p.log_w_max);
  const C clo = static_cast<C>(p.lower), chi = static_cast<C>(p.upper), cc = static_cast<C>(p.dual);
  const C inf = static_cast<C>(INFINITY);

  // sequence / gspo: the row's log ratio first (the row is then in L2 for the main pass)
  C row_v = C(0);
  if (p.ratio == kSequence || p.ratio == kGspo) {
    Prefix part{0.0, 0};
    for (int64_t j = threadIdx.x; j < T; j += kBlock) {
      if (!mk[j]) continue;
      part.s += static_cast<double>(clamp_like_torch(static_cast<C>(widen(lp[j])) - static_cast<C>(widen(ol[j])), ndm, dm));
      part.n += 1;
    }
    const Prefix tot = ReducePrefix(total_storage).Reduce(part, PrefixSum());
    if (threadIdx.x == 0) {
      C v = static_cast<C>(tot.s);
      if (p.ratio == kGspo) v = v / static_cast<C>(tot.n > 0 ? tot.n : 1);
      s_row_v = static_cast<double>(v);
    }
    __syncthreads();
    row_v = static_cast<C>(s_row_v);
  }

  RowAcc acc{0.0, 0.0, INFINITY, -INFINITY, -INFINITY, -INFINITY, 0, 0, 0, 0, 0, 0u};
  Carry carry{{0.0, 0}};
  for (int64_t base = 0; base < T; base += int64_t{kBlock} * kItems) {
    C d[kItems];
    bool m[kItems];
    C A[kItems];
    C r[kItems];
#pragma unroll
    for (int k = 0; k < kItems; ++k) {  // striped: each k is one coalesced span of kBlock tokens
      const int64_t j = base + int64_t{k} * kBlock + threadIdx.x;
      m[k] = false;
      d[k] = C(0);
      A[k] = A_row;
      r[k] = C(1);
      if (j < T) {
        m[k] = mk[j];
        const auto a = widen(lp[j]), b = widen(ol[j]);
        d[k] = static_cast<C>(a) - static_cast<C>(b);
        if (m[k]) {  // the largest log-probs (NaN compares false: ignored, flagged below)
          acc.max_lp = static_cast<double>(a) > acc.max_lp ? static_cast<double>(a) : acc.max_lp;
          acc.max_ol = static_cast<double>(b) > acc.max_ol ? static_cast<double>(b) : acc.max_ol;
        }
        if (At != nullptr) A[k] = At[j];
        if (rw != nullptr) r[k] = rw[j];
      }
    }
#pragma unroll
    for (int k = 0; k < kItems; ++k) {
      const int64_t j = base + int64_t{k} * kBlock + threadIdx.x;
      const C dc = clamp_like_torch(d[k], ndm, dm);
      const Prefix in{m[k] ? static_cast<double>(dc) : 0.0, m[k] ? 1 : 0};
      Prefix inc;
      Scan(scan_storage).InclusiveScan(in, inc, PrefixSum(), carry);
      __syncthreads();  // scan_storage is reused by the next span
      C v = C(0);
      if (m[k]) {
        switch (p.ratio) {
          case kToken: v = dc; break;
          case kSequence:
          case kGspo: v = row_v; break;
          case kCumulative: v = static_cast<C>(inc.s); break;
          default: v = static_cast<C>(inc.s) / static_cast<C>(inc.n);
        }
      }
      const C lw = v > lwm ? lwm : v;  // clamp(max=): NaN stays
      const bool glw = v <= lwm;
      const C s = static_cast<C>(pow_like_torch(static_cast<double>(inc.n > 0 ? inc.n : 1), p.power));
      const C lo = clo * s, hi = chi * s, c = cc * s;
      const C a = A[k];
      const bool high = a > C(0) && lw > hi;
      const bool low = a < C(0) && lw < lo;
      const bool dual = a < C(0) && lw > c;
      C sel = lw;
      if (dual) sel = c;
      if (low) sel = lo;
      if (high) sel = hi;
      if (a == C(0)) sel = C(0);  // no signal: never 0 * exp(overflow)
      const C l = m[k] ? (-a) * exp_c(sel) * r[k] : C(0);
      const bool clip = m[k] && (high || low || dual);
      const bool pass = j < T && m[k] && !(high || low || dual) && glw && a != C(0);
      if (j < T) {
        grad[j] = pass ? l : C(0);  // exactly 0 where no gradient passes
        lwo[j] = lw;
        clipped[j] = clip;
      }
      if (m[k]) {
        acc.n += 1;
        acc.nh += high;
        acc.nl += low;
        acc.nd += dual;
        acc.nc += clip;
        acc.sum_w += static_cast<double>(exp_c(lw));
        acc.loss += static_cast<double>(l);
        acc.mn = static_cast<double>(lw) < acc.mn ? static_cast<double>(lw) : acc.mn;
        acc.mx = static_cast<double>(lw) > acc.mx ? static_cast<double>(lw) : acc.mx;
        if (!finite_c(d[k])) acc.flags |= 1u;
        if (!finite_c(a)) acc.flags |= 2u;
        if (!(r[k] >= C(0) && r[k] < inf)) acc.flags |= 4u;
      }
    }
  }
  const RowAcc tot = ReduceAcc(acc_storage).Reduce(acc, RowAccSum());
  if (threadIdx.x == 0) s_flags = tot.flags;
  __syncthreads();  // also makes this row's log_w visible to every thread of the block (the sample below)
  double* st = p.stats + row;  // statistic c of this row at st[c * B]
  const int64_t B = p.B;
  if (threadIdx.x == 0) {
    st[kStatTokens * B] = static_cast<double>(tot.n);
    st[kStatHigh * B] = static_cast<double>(tot.nh);
    st[kStatLow * B] = static_cast<double>(tot.nl);
    st[kStatDual * B] = static_cast<double>(tot.nd);
    st[kStatClipped * B] = static_cast<double>(tot.nc);
    st[kStatSumW * B] = tot.sum_w;
    st[kStatMinLogW * B] = tot.mn;
    st[kStatMaxLogW * B] = tot.mx;
    st[kStatMaxLogp * B] = tot.max_lp;
    st[kStatMaxOldLogp * B] = tot.max_ol;
    st[kStatBadAdv * B] = (tot.flags & 2u) ? 1.0 : 0.0;
    st[kStatBadWeights * B] = (tot.flags & 4u) ? 1.0 : 0.0;
    st[kStatBadLogp * B] = st[kStatBadOldLogp * B] = 0.0;
    p.row_loss[row] = tot.loss;
  }
  if (s_flags & 1u) {  // some logp - old_logp is not finite: name the input(s), as ctpo.check_finite does
    unsigned f = 0;
    for (int64_t j = threadIdx.x; j < T; j += kBlock) {
      if (!mk[j]) continue;
      if (!isfinite(static_cast<double>(widen(lp[j])))) f |= 1u;
      if (!isfinite(static_cast<double>(widen(ol[j])))) f |= 2u;
    }
    const int bad_lp = __syncthreads_or(static_cast<int>(f & 1u));
    const int bad_ol = __syncthreads_or(static_cast<int>(f & 2u));
    if (threadIdx.x == 0) {
      st[kStatBadLogp * B] = bad_lp ? 1.0 : 0.0;
      st[kStatBadOldLogp * B] = bad_ol ? 1.0 : 0.0;
    }
  }
  // this row's slots of the quantile sample (ctpo_layout.h)
  long long q0, q1;
  row_slots(row, B, T, &q0, &q1);
  for (int64_t q = q0 + threadIdx.x; q < q1; q += kBlock) {
    const int64_t j = sample_column(q, row, B, T);
    static_cast<C*>(p.sample_v)[q] = lwo[j];
    p.sample_m[q] = mk[j] ? 1 : 0;
  }
}

struct Totals {  // the batch totals of the kNumStats per-row statistics
  double v[kNumStats];
};

__device__ __forceinline__ bool is_max_stat(int c) { return c == kStatMaxLogW || c == kStatMaxLogp || c == kStatMaxOldLogp; }

struct TotalsOp {  // min for min_log_w, max for the maxima, sum for the rest
  __device__ __forceinline__ Totals operator()(const Totals& a, const Totals& b) const {
    Totals r;
#pragma unroll
    for (int c = 0; c < kNumStats; ++c) {
      if (c == kStatMinLogW) r.v[c] = a.v[c] < b.v[c] ? a.v[c] : b.v[c];
      else if (is_max_stat(c)) r.v[c] = a.v[c] > b.v[c] ? a.v[c] : b.v[c];
      else r.v[c] = a.v[c] + b.v[c];
    }
    return r;
  }
};

// one block: the batch totals of the per-row statistics (thread k folds rows k, k + 256, ... in order, then a
// fixed reduction tree: deterministic), and the nearest-rank quantiles (k = max(1, ceil(q / 100 * n))) of the
// sampled mask tokens' log w; the first kFallbackSample mask tokens in flat order where the sample holds none;
// 0 without tokens. The sample has at most kQuantileSample = kBlock * kSortItems slots (ctpo_layout.h).
template <typename C>
__global__ void __launch_bounds__(kBlock) quantile_kernel(const FwdParams p) {
  using Sort = cub::BlockRadixSort<C, kBlock, kSortItems>;
  using Count = cub::BlockReduce<int, kBlock>;
  using Scan = cub::BlockScan<int, kBlock>;
  __shared__ union {  // the sort's storage and the values are never live at once (48 KiB of shared memory)
    typename Sort::TempStorage sort;
    C vals[kBlock * kSortItems];
  } sm;
  __shared__ typename Count::TempStorage count_storage;
  __shared__ typename Scan::TempStorage scan_storage;
  __shared__ typename cub::BlockReduce<Totals, kBlock>::TempStorage totals_storage;
  __shared__ int s_n;
  __shared__ double s_tot[kNumStats], s_q[3], s_d[2];
  __shared__ typename cub::BlockReduce<double, kBlock>::TempStorage sum_storage;
  C* vals = sm.vals;
  Totals part;
#pragma unroll
  for (int c = 0; c < kNumStats; ++c) part.v[c] = c == kStatMinLogW ? INFINITY : (is_max_stat(c) ? -INFINITY : 0.0);
  for (int64_t i = threadIdx.x; i < p.B; i += kBlock) {
    Totals row;
#pragma unroll
    for (int c = 0; c < kNumStats; ++c) row.v[c] = p.stats[c * p.B + i];
    part = TotalsOp()(part, row);
  }
  const Totals all = cub::BlockReduce<Totals, kBlock>(totals_storage).Reduce(part, TotalsOp());
  if (threadIdx.x == 0) {  // the reduction's result is valid in thread 0 only
#pragma unroll
    for (int c = 0; c < kNumStats; ++c) s_tot[c] = all.v[c];
  }
  // rows with tokens, and the loss sum (row sums weighted as the aggregation wants)
  double part_seqs = 0.0, part_sum = 0.0;
  for (int64_t i = threadIdx.x; i < p.B; i += kBlock) {
    const double n_i = p.stats[kStatTokens * p.B + i];
    part_seqs += n_i > 0 ? 1.0 : 0.0;
    part_sum += p.agg.agg == kSeqMeanTokenMean ? p.row_loss[i] * row_weight(p.agg.agg, n_i) : p.row_loss[i];
  }
  const double n_seqs = cub::BlockReduce<double, kBlock>(sum_storage).Sum(part_seqs);
  __syncthreads();  // sum_storage is reused
  const double loss_sum = cub::BlockReduce<double, kBlock>(sum_storage).Sum(part_sum);
  __syncthreads();
  const C* sv = static_cast<const C*>(p.sample_v);
  const C nan = static_cast<C>(NAN);  // sorts after every number: the invalid slots go last
  int mine = 0;
  for (int64_t i = threadIdx.x; i < kBlock * kSortItems; i += kBlock) {
    const bool ok = i < p.sample_n && p.sample_m[i] && !isnan(sv[i]);
    vals[i] = ok ? sv[i] : nan;
    mine += ok;
  }
  const int n_valid = Count(count_storage).Sum(mine);
  if (threadIdx.x == 0) s_n = n_valid;
  __syncthreads();
  if (s_n == 0) {  // the strided sample missed every mask token: compact the first ones in flat order
    const C* lw = static_cast<const C*>(p.log_w);
    int taken = 0;  // block-uniform
    for (int64_t base = 0; base < p.B * p.T && taken < kFallbackSample; base += kBlock) {
      const int64_t idx = base + threadIdx.x;
      const int64_t i = idx / (p.T > 0 ? p.T : 1), j = idx - i * p.T;
      const bool ok = idx < p.B * p.T && p.mask[i * p.mask_rs + j] && !isnan(lw[idx]);
      int rank, total;
      Scan(scan_storage).ExclusiveSum(ok ? 1 : 0, rank, total);
      __syncthreads();
      if (ok && taken + rank < kFallbackSample) vals[taken + rank] = lw[idx];
      taken += total;
    }
    __syncthreads();
    if (threadIdx.x == 0) s_n = taken < kFallbackSample ? taken : kFallbackSample;
    __syncthreads();
  }
  const int n = s_n;
  C keys[kSortItems];
#pragma unroll
  for (int k = 0; k < kSortItems; ++k) keys[k] = vals[threadIdx.x * kSortItems + k];  // blocked arrangement
  __syncthreads();
  Sort(sm.sort).Sort(keys);
  __syncthreads();
#pragma unroll
  for (int k = 0; k < kSortItems; ++k) vals[threadIdx.x * kSortItems + k] = keys[k];
  __syncthreads();
  if (threadIdx.x < 3) {
    const long long q = threadIdx.x == 0 ? 10 : (threadIdx.x == 1 ? 50 : 90);
    double out = 0.0;  // no tokens: the on-policy log w
    if (n > 0) {
      long long kth = (q * n + 99) / 100;  // ceil(q n / 100), in integers
      kth = kth < 1 ? 1 : kth;
      out = static_cast<double>(vals[kth - 1]);
    }
    s_q[threadIdx.x] = out;
  }
  __syncthreads();
  // the loss, the counts, the metrics (ctpo_layout.h: the CPU op's arithmetic), then every row's gradient scale
  if (threadIdx.x == 0) {
    agg_denominators(p.agg, s_tot[kStatTokens], n_seqs, &s_d[0], &s_d[1]);
    *static_cast<C*>(p.loss) = static_cast<C>(loss_sum / s_d[0] / s_d[1]);
    finish_metrics(s_tot, s_q, p.counts, p.metrics);
  }
  __syncthreads();
  for (int64_t i = threadIdx.x; i < p.B; i += kBlock)
    static_cast<C*>(p.row_scale)[i] = static_cast<C>(row_weight(p.agg.agg, p.stats[kStatTokens * p.B + i]) / s_d[0] / s_d[1]);
}

template <typename C, typename O>
__global__ void policy_loss_bwd_kernel(const BwdParams p) {
  const C* grad = static_cast<const C*>(p.grad);
  const C* scale = static_cast<const C*>(p.row_scale);
  const C g = *static_cast<const C*>(p.grad_loss);
  O* out = static_cast<O*>(p.out);
  const int64_t N = p.B * p.T;
  for (int64_t idx = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; idx < N; idx += int64_t{gridDim.x} * blockDim.x) {
    const int64_t i = idx / p.T;
    const C x = grad[idx];
    out[idx] = narrow<O>(x != C(0) ? (g * scale[i]) * x : C(0));  // as torch.where: never 0 * inf
  }
}

template <typename IL, typename IO, typename C>
cudaError_t launch_fwd(const FwdParams& p, cudaStream_t stream) {
  policy_loss_fwd_kernel<IL, IO, C><<<static_cast<unsigned>(p.B), kBlock, 0, stream>>>(p);
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  quantile_kernel<C><<<1, kBlock, 0, stream>>>(p);
  return cudaGetLastError();
}

template <typename C, typename O>
cudaError_t launch_bwd(const BwdParams& p, cudaStream_t stream) {
  const int64_t N = p.B * p.T;
  const int threads = 256;
  const int64_t blocks = (N + threads - 1) / threads;
  const unsigned grid = static_cast<unsigned>(blocks < 65536 ? blocks : 65536);
  policy_loss_bwd_kernel<C, O><<<grid, threads, 0, stream>>>(p);
  return cudaGetLastError();
}

template <typename C>
cudaError_t dispatch_bwd(const BwdParams& p, cudaStream_t stream) {
  switch (p.out_dtype) {
    case DType::F32: return launch_bwd<C, float>(p, stream);
    case DType::F64: return launch_bwd<C, double>(p, stream);
    case DType::BF16: return launch_bwd<C, __nv_bfloat16>(p, stream);
    case DType::F16: return launch_bwd<C, __half>(p, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace

cudaError_t policy_loss_forward(const FwdParams& p, cudaStream_t stream) {
  if (p.B == 0 || p.T == 0) return cudaSuccess;  // the glue fills the outputs of an empty batch
  if (p.B > 2147483647LL) return cudaErrorInvalidValue;
  const bool same = p.old_dtype == p.logp_dtype;
  switch (p.logp_dtype) {
    case DType::F32: return same ? launch_fwd<float, float, float>(p, stream) : cudaErrorInvalidValue;
    case DType::F64: return same ? launch_fwd<double, double, double>(p, stream) : cudaErrorInvalidValue;
    case DType::BF16:
      return same ? launch_fwd<__nv_bfloat16, __nv_bfloat16, float>(p, stream) : launch_fwd<__nv_bfloat16, float, float>(p, stream);
    case DType::F16: return same ? launch_fwd<__half, __half, float>(p, stream) : launch_fwd<__half, float, float>(p, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t policy_loss_backward(const BwdParams& p, cudaStream_t stream) {
  if (p.B == 0 || p.T == 0) return cudaSuccess;
  return p.compute == DType::F64 ? dispatch_bwd<double>(p, stream) : dispatch_bwd<float>(p, stream);
}

}  // namespace ctpo_cuda
