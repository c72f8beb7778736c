"""The CUDA kernels (csrc/ctpo_cuda.cu) against the CPU op and the Python reference. Skipped without a GPU.

The CPU op is checked against the Python reference by tests/test_ext.py and tests/test_ext_policy_loss.py on every
machine; here the same inputs go through the CUDA op and every output is compared with the CPU op's:
float64 to 1e-12 (the float64 prefix sums are added in another order: a tree scan on the GPU, a running sum on
the CPU); float32 compute (float32 / bfloat16 / float16 inputs) to a few float32 ulps (expf on the GPU and Sleef
on the CPU each have <= 2 ulp error), and clip decisions, counts, masks and the gradient's zero pattern exactly.
Then ctpo.policy_loss(backend="ext") on CUDA against backend="python" on CUDA and on the CPU for every method and
aggregation, float64 gradcheck and opcheck on CUDA tensors, junk in the padding, rows far longer than one tile,
the quantile sample's fallback, the bad-value flags, and torch.compile.

    TORCH_CUDA_ARCH_LIST=9.0 python -m pytest -q tests/test_cuda.py     # on a machine with a GPU and nvcc
"""

import math

import pytest
import torch
from test_ext_policy_loss import make, sparse_mask_inputs  # the CPU tests' inputs, on the GPU too

import ctpo
import ctpo_ext

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

METHODS = list(ctpo.METHODS)
DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]
OUT_NAMES = ("loss", "counts", "metrics", "log_w", "clipped", "grad", "row_scale")
# (B, T): one token, a short odd batch, a row of 8 tiles, rows much longer than a tile (8 x 256 tokens), many rows
SHAPES = ((1, 1), (3, 1), (5, 333), (2, 8192), (3, 40000), (300, 65))


@pytest.fixture(scope="module")
def cuda_ext(ext):
    if not ext.with_cuda():
        pytest.fail("a GPU is visible but the extension was built without CUDA kernels (set TORCH_CUDA_ARCH_LIST / CUDA_HOME)")
    return ext


def op_inputs(B, T, dtype, seed, adv_shape, weights):
    logp, old, adv, mask, w = make(B, T, seed=seed, adv_shape=adv_shape, weights=weights)
    logp, old = logp.to(dtype), old.to(dtype)
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    adv = adv.to(compute)
    adv2 = adv[:, None].expand(B, T) if adv_shape == "row" else adv  # a (B,) advantage reaches the op expanded
    return logp, old, adv2, mask, (w.to(dtype) if w is not None else None)


def assert_ops_agree(out_c, out_g, mask, compute):
    """Every output of the CUDA op (out_g) against the CPU op's (out_c) on the same inputs."""
    c = dict(zip(OUT_NAMES, out_c))
    g = dict(zip(OUT_NAMES, (x.cpu() for x in out_g)))
    for name in OUT_NAMES:
        assert g[name].dtype == c[name].dtype and g[name].shape == c[name].shape, name
    f64 = compute == torch.float64
    # log w: equal but for a rare 1-ulp flip where the float64 prefix sums, added in another order, round differently;
    # the gradient: exp(log w) with <= 2 ulp error on each side, times the same factors: <= 4 float32 ulps apart
    close = dict(rtol=1e-12, atol=1e-12) if f64 else dict(rtol=2.5e-7, atol=1e-7)
    torch.testing.assert_close(g["log_w"], c["log_w"], **close)
    ulps = 1e-12 if f64 else 8 * 2.0**-24  # float32: 4 ulps (2^-24 is half an ulp's relative size)
    torch.testing.assert_close(g["grad"], c["grad"], rtol=ulps, atol=1e-12 if f64 else 1e-30)
    assert torch.equal(g["grad"] == 0, c["grad"] == 0) and torch.equal(g["clipped"], c["clipped"])
    assert torch.equal(g["counts"], c["counts"])  # token and clip counts, value checks: exactly
    torch.testing.assert_close(g["row_scale"], c["row_scale"], **close)
    # the loss: a sum of terms each within its bound, so within the sum of the bounds (accumulated in float64)
    scale = (c["grad"].double().abs() * c["row_scale"].double()[:, None]).sum().item()
    assert abs(g["loss"].item() - c["loss"].item()) <= ulps * scale + 1e-12 + abs(c["loss"].item()) * ulps
    torch.testing.assert_close(g["metrics"], c["metrics"], rtol=1e-6, atol=1e-7)  # expf / Sleef, float64 vs tree sums
    assert not torch.isnan(g["grad"]).any() and not torch.isnan(g["log_w"]).any()
    assert (g["grad"][~mask] == 0).all()  # padding: exactly 0


# -----------------------------------------------------------------------------
# The op: CUDA == CPU, every ratio, clip family, dtype, advantage shape, weights, shape


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("ratio", list(ctpo_ext.RATIO_CODES))
def test_op_cuda_equals_cpu(cuda_ext, dtype, ratio):
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    windows = ((-0.025, 0.05, 0.05, 0.5), (math.log(0.8), math.log(1.28), math.log(3.0), 0.0), (-0.1, 0.1, 0.2, -0.5))
    for k, (B, T) in enumerate(SHAPES):
        for adv_shape, weights in (("row", False), ("token", True)):
            logp, old, adv2, mask, w = op_inputs(B, T, dtype, seed=k, adv_shape=adv_shape, weights=weights)
            for lower, upper, dual, power in windows:
                agg = (k + len(ratio)) % 5  # every aggregation across the shapes
                counts = (None, None, None) if k % 2 else (float(B * T), float(B), float(T + 3))
                args = (ctpo_ext.op_config(ratio, lower, upper, dual, power, 20.0, 10.0, agg, *counts),)
                out_c = torch.ops.ctpo.policy_loss(logp, old, adv2, mask, w, *args)
                cu = [x.cuda() if x is not None else None for x in (logp, old, adv2, mask, w)]
                if adv_shape == "row":
                    cu[2] = adv2[:, 0].cuda()[:, None].expand(B, T)  # a stride-0 view on the GPU too
                out_g = torch.ops.ctpo.policy_loss(*cu, *args)
                assert all(x.is_cuda for x in out_g)
                assert_ops_agree(out_c, out_g, mask, compute)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_op_backward_cuda_equals_cpu(cuda_ext, dtype):
    """The backward op for every output dtype and a seed gradient other than 1, with the CPU op's inputs."""
    logp, old, adv2, mask, w = op_inputs(5, 333, dtype, seed=9, adv_shape="token", weights=True)
    args = (ctpo_ext.op_config(3, -0.025, 0.05, 0.05, 0.5, 20.0, 10.0, 2),)
    out_c = torch.ops.ctpo.policy_loss(logp, old, adv2, mask, w, *args)
    out_g = torch.ops.ctpo.policy_loss(*(x.cuda() for x in (logp, old, adv2, mask, w)), *args)
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    for out_dtype in DTYPES:
        for seed in (1.0, -0.75, float("inf")):
            g = torch.tensor(seed, dtype=compute)
            ref = torch.ops.ctpo.policy_loss_backward(g, out_c[5], out_c[6], out_dtype)
            got = torch.ops.ctpo.policy_loss_backward(g.cuda(), out_g[5], out_g[6], out_dtype).cpu()
            assert got.dtype == out_dtype and torch.equal(got == 0, ref == 0)  # no 0 * inf where nothing passes
            torch.testing.assert_close(got, ref, rtol=1e-12 if compute == torch.float64 else 1e-6, atol=0, equal_nan=True)


def test_junk_in_the_padding_changes_nothing(cuda_ext):
    """-inf / NaN / huge values at mask = 0 positions reach no output and no gradient, on the GPU too."""
    for method in METHODS:
        logp, old, adv, mask, w = make(4, 700, seed=21, adv_shape="token", weights=True)
        clean = run("ext", *(x.cuda() for x in (logp, old, adv, mask, w)), method=method)
        junk = [x.clone() for x in (logp, old, adv, w)]
        for x, v in zip(junk, (float("-inf"), float("nan"), float("nan"), float("inf"))):
            x[~mask] = v
        dirty = run("ext", *(x.cuda() for x in (junk[0], junk[1], junk[2], mask, junk[3])), method=method)
        assert torch.equal(clean[0], dirty[0]) and torch.equal(clean[1], dirty[1]), method
        assert torch.isfinite(dirty[1]).all()


def test_zero_advantage_never_overflows(cuda_ext):
    """A = 0 with a log ratio whose exp overflows gives exactly 0 loss and gradient (no 0 * inf)."""
    B, T = 3, 50
    logp = torch.zeros(B, T, device="cuda")
    old = torch.full((B, T), -80.0, device="cuda")  # delta = 80: clamped to delta_max = 20, summed over t
    mask = torch.ones(B, T, dtype=torch.bool, device="cuda")
    adv = torch.tensor([0.0, 0.0, 0.0], device="cuda")
    for method in METHODS:
        lp = logp.clone().requires_grad_()
        loss, _ = ctpo.policy_loss(lp, old, adv, mask, method=method, backend="ext", log_w_max=1e4)
        loss.backward()
        assert loss.item() == 0.0 and torch.equal(lp.grad, torch.zeros_like(lp)), method


# -----------------------------------------------------------------------------
# ctpo.policy_loss(backend="ext") on CUDA: every method x agg, against the CPU and the Python backend


def run(backend, logp, old, adv, mask, w=None, **kw):
    lp = logp.detach().clone().requires_grad_()
    loss, m = ctpo.policy_loss(lp, old, adv, mask, backend=backend, rollout_is_weights=w, **kw)
    loss.backward()
    assert m["backend"] == backend
    return loss.detach(), lp.grad, m


def abs_scale(logp, old, adv, mask, w, method, agg):
    """The aggregate (agg) of |per-token loss|, in float64 on the CPU: the scale of a loss's rounding error."""
    cfg = ctpo.method_config(method)
    a = adv if adv.dim() == 2 else adv[:, None].expand_as(logp)
    tok = ctpo.token_losses(logp.double(), old.double(), a.double(), mask, cfg)[0].abs()
    if w is not None:
        tok = tok * w.double()
    return ctpo.aggregate(torch.where(mask, tok, 0.0), mask, agg).item()


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
def test_policy_loss_cuda_every_agg(cuda_ext, method, dtype):
    for B, T, seed in ((3, 1, 0), (6, 333, 1), (2, 8192, 2)):
        for adv_shape, weights in (("row", False), ("token", True)):
            logp, old, adv, mask, w = make(B, T, seed=seed, adv_shape=adv_shape, weights=weights)
            logp, old = logp.to(dtype), old.to(dtype)
            w = w.to(dtype) if w is not None else None
            adv = adv.to(torch.float64 if dtype == torch.float64 else torch.float32)
            cu = [x.cuda() if x is not None else None for x in (logp, old, adv, mask, w)]
            for agg in ctpo.AGGS:
                l_g, g_g, m_g = run("ext", *cu, method=method, agg=agg)
                l_c, g_c, m_c = run("ext", logp, old, adv, mask, w, method=method, agg=agg)
                l_p, g_p, m_p = run("python", *cu, method=method, agg=agg)  # the reference, on the GPU
                assert l_g.is_cuda and g_g.is_cuda and g_g.dtype == dtype
                # the aggregate of per-token losses that differ by <= 4 ulps (float32): within 4 ulps of the same
                # aggregate of |loss|; the float32 Python backend adds its own float32 reduction error
                # (float64: the row sums are added in another order, whose rounding differs by ~1e-16 x sqrt(T) of the
                # sum of |terms|; 1e-12 of it is far above that and far below any real difference)
                scale = abs_scale(logp, old, adv, mask, w, method, agg)
                bound = 1e-12 * scale if dtype == torch.float64 else 8 * 2.0**-23 * scale
                assert abs(l_g.item() - l_c.item()) <= bound + 1e-30, (agg, l_g.item(), l_c.item(), scale)
                tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=2e-6, atol=1e-7)
                torch.testing.assert_close(g_g.cpu(), g_c, **(tol if dtype != torch.bfloat16 else {}))
                assert torch.equal(g_g.cpu() == 0, g_c == 0)
                assert abs(l_g.item() - l_p.item()) <= (1e-12 if dtype == torch.float64 else 1e-5) * scale, (agg, l_g.item(), l_p.item())
                tol_p = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=2e-5, atol=1e-6)
                torch.testing.assert_close(g_g.double(), g_p.double(), **(tol_p if dtype != torch.bfloat16 else dict(rtol=1e-2, atol=1e-5)))
                assert list(m_g) == list(m_c)
                for k in ("n_tokens", "n_clip_high", "n_clip_low", "n_clip_dual", "clipped"):
                    assert torch.equal(m_g[k].cpu(), m_c[k]), k
                    assert torch.equal(m_g[k], m_p[k]), k
                for k in m_c:
                    if isinstance(m_c[k], torch.Tensor) and m_c[k].is_floating_point():
                        torch.testing.assert_close(m_g[k].cpu(), m_c[k], rtol=1e-5, atol=1e-6, msg=lambda s, k=k: f"{k}: {s}")


def test_micro_batches_sum_to_the_full_batch_on_cuda(cuda_ext):
    """loss_scale_factor / token-sum: a batch split into micro-batches gives the same gradient on the GPU."""
    logp, old, adv, mask, _ = make(8, 300, seed=30)
    cu = [x.cuda() for x in (logp, old, adv, mask)]
    for method in METHODS:
        full = run("ext", *cu, method=method, agg="token-sum")[1]
        parts = torch.cat([run("ext", *(x[i : i + 2] for x in cu), method=method, agg="token-sum")[1] for i in range(0, 8, 2)])
        torch.testing.assert_close(parts, full, rtol=1e-12, atol=1e-15)


def test_bad_values_raise_naming_the_input_on_cuda(cuda_ext):
    logp, old, adv, mask, w = make(4, 40, seed=40, weights=True)
    i, j = 2, int(mask[2].nonzero()[0])
    for name, bad in (("logp", float("nan")), ("old_logp", float("inf")), ("advantages", float("nan")), ("rollout_is_weights", -1.0)):
        args = dict(logp=logp.clone(), old_logp=old.clone(), advantages=adv[:, None].expand_as(logp).clone(), rollout_is_weights=w.clone())
        args[name][i, j] = bad
        cu = {k: v.cuda() for k, v in args.items()}
        for method in METHODS:
            with pytest.raises(ValueError, match=name):
                ctpo.policy_loss(cu["logp"], cu["old_logp"], cu["advantages"], mask.cuda(), method=method, backend="ext",
                                 rollout_is_weights=cu["rollout_is_weights"])  # fmt: skip


def test_quantile_fallback_of_a_sparse_mask_on_cuda(cuda_ext):
    """No mask token at the sampled positions: the GPU takes the first mask tokens in flat order, as the CPU."""
    B, T = 100, 1000
    logp, old, mask, g = sparse_mask_inputs(B, T)
    adv = torch.randn(B, generator=g)
    for ratio in range(5):
        args = (None, ctpo_ext.op_config(ratio, -0.025, 0.05, 0.05, 0.5, 20.0, 10.0, 0))
        out_c = torch.ops.ctpo.policy_loss(logp, old, adv, mask, *args)
        out_g = torch.ops.ctpo.policy_loss(logp.cuda(), old.cuda(), adv.cuda(), mask.cuda(), *args)
        assert_ops_agree(out_c, out_g, mask, torch.float32)
        assert torch.unique(out_g[2][7:10]).numel() > 1  # the quantiles come from the fallback tokens, not ones


def test_many_rows_exact_quantile_sample(cuda_ext):
    """B * T <= 4096: the quantiles are exact nearest-rank ones of every mask token's log w."""
    logp, old, adv, mask, _ = make(16, 256, seed=50, scale=0.3)
    out = torch.ops.ctpo.policy_loss(
        logp.cuda(), old.cuda(), adv.cuda(), mask.cuda(), None, ctpo_ext.op_config(3, -0.025, 0.05, 0.05, 0.5, 20.0, 10.0, 0)
    )
    lw = out[3].cpu()[mask].sort().values
    for k, q in enumerate(ctpo_ext.QUANTILES):
        want = math.exp(float(lw[max(1, math.ceil(q / 100 * lw.numel())) - 1].float()))
        assert out[2][7 + k].item() == pytest.approx(want, rel=1e-6)


# -----------------------------------------------------------------------------
# gradcheck, opcheck, torch.compile on CUDA


@pytest.mark.parametrize("ratio", ["token", "sequence", "gspo", "cumulative"])
def test_gradcheck_float64_cuda(cuda_ext, ratio):
    """As tests/test_ext_policy_loss.py's gradcheck: each row's last mask token is its free variable (sequence / gspo:
    one-token rows), so the scalar loss's derivative is exactly the stop-gradient one, for every aggregation."""
    g = torch.Generator().manual_seed(13)
    B, T = 16, 12
    base = -1.0 - 0.15 * torch.rand(B, T, generator=g, dtype=torch.float64)
    old = (base + 0.25 * torch.randn(B, T, generator=g, dtype=torch.float64)).clamp(max=0)
    mask = torch.rand(B, T, generator=g) > 0.25 if ratio in ("token", "cumulative") else torch.zeros(B, T, dtype=torch.bool)
    mask[torch.arange(B), torch.randint(0, T, (B,), generator=g)] = True
    last = T - 1 - mask.flip(-1).int().argmax(-1)
    sel = torch.zeros(B, T, dtype=torch.bool)
    sel[torch.arange(B), last] = True
    adv = torch.randn(B, generator=g, dtype=torch.float64)
    w = 0.5 + torch.rand(B, T, generator=g, dtype=torch.float64)
    base, old, mask, sel, adv, w = (x.cuda() for x in (base, old, mask, sel, adv, w))
    for bounds in ((math.log(0.9), math.log(1.1), math.log(1.3), 0.0), (-0.04, 0.06, 0.1, 0.5)):
        for agg in ctpo.AGGS:

            def f(x, bounds=bounds, agg=agg):
                return ctpo_ext.policy_loss(base.masked_scatter(sel, x), old, adv, mask, w, ratio, *bounds, 20.0, 10.0, agg)[0]

            assert torch.autograd.gradcheck(f, (base[sel].clone().requires_grad_(),), eps=1e-7, atol=1e-7)


def test_opcheck_cuda(cuda_ext):
    logp, old, adv, mask, w = make(3, 40, seed=11, weights=True)
    logp, old, adv, mask, w = (x.cuda() for x in (logp, old, adv, mask, w))
    for ratio in range(5):
        for lp, ol, a, rw in (
            (logp.float(), old.float(), adv.float(), None),
            (logp, old, torch.randn(3, 40, dtype=torch.float64, device="cuda"), w),
            (logp.bfloat16(), old.float(), adv.float()[:, None].expand(3, 40), w.float()),
        ):
            args = (
                lp.clone().requires_grad_(),
                ol,
                a,
                mask,
                rw,
                ctpo_ext.op_config(ratio, -0.1, 0.1, 0.2, 0.5, 20.0, 10.0, ratio, None, 2.0),
            )
            torch.library.opcheck(torch.ops.ctpo.policy_loss.default, args)
    out = torch.ops.ctpo.policy_loss(
        logp.float(), old.float(), adv.float(), mask, None, ctpo_ext.op_config(3, -0.1, 0.1, 0.2, 0.5, 20.0, 10.0, 0)
    )
    for dt in (torch.float32, torch.bfloat16, torch.float64):
        torch.library.opcheck(torch.ops.ctpo.policy_loss_backward.default, (torch.tensor(0.5, device="cuda"), out[5], out[6], dt))


@pytest.mark.parametrize("method", ["ctpo", "grpo", "gspo"])
def test_torch_compile_fullgraph_on_cuda(cuda_ext, method):
    logp, old, adv, mask, _ = make(4, 300, seed=12)
    logp, old, adv, mask = (x.float().cuda() if x.is_floating_point() else x.cuda() for x in (logp, old, adv, mask))

    def f(lp):
        loss, m = ctpo.policy_loss(lp, old, adv, mask, method=method, backend="ext")
        return loss, m["log_w"]

    lp_c = logp.clone().requires_grad_()
    with torch._inductor.config.patch(force_disable_caches=True):  # no stale code from a rebuilt extension's fake kernel
        val_c, lw_c = torch.compile(f, fullgraph=True)(lp_c)
        val_c.backward()
    lp_e = logp.clone().requires_grad_()
    val_e, lw_e = f(lp_e)
    val_e.backward()
    torch.testing.assert_close(val_c, val_e)
    assert torch.equal(lw_c, lw_e)
    torch.testing.assert_close(lp_c.grad, lp_e.grad)


def test_non_contiguous_and_non_default_stream(cuda_ext):
    """Row slices, a transposed-then-sliced advantage, and a side stream: the same results as contiguous inputs."""
    logp, old, adv, mask, w = make(6, 500, seed=60, adv_shape="token", weights=True)
    big = [torch.cat([x, x], dim=1).cuda() for x in (logp, old, adv, mask, w)]
    sliced = [x[:, :500] for x in big]  # row stride 1000
    assert not sliced[0].is_contiguous()
    adv_t = adv.t().contiguous().cuda().t()  # column-major: stride (1, 6)
    args = (ctpo_ext.op_config(3, -0.025, 0.05, 0.05, 0.5, 20.0, 10.0, 0),)
    ref = torch.ops.ctpo.policy_loss(*(x.cuda() for x in (logp, old, adv, mask, w)), *args)
    got = torch.ops.ctpo.policy_loss(sliced[0], sliced[1], adv_t, sliced[3], sliced[4], *args)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        side = torch.ops.ctpo.policy_loss(*sliced, *args)
    torch.cuda.current_stream().wait_stream(s)
    for a, b, c in zip(ref, got, side):
        assert torch.equal(a, b) and torch.equal(a, c)
