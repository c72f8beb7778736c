"""The fused extension (csrc/, ctpo_ext.py) against the Python reference ctpo.token_losses.

The first test to need it JIT-builds the extension (~30 s, once per fresh clone; CTPO_EXT_DIR sets where).
Every CPU row kernel of the build is checked against the reference: the AVX-512 one (where compiled in), the
portable at::vec one and the scalar one (switched with ctpo_ext.load().set_cpu_kernel(...)). This file tests the cumulative family through
ctpo.policy_loss(backend="ext", agg="token-sum") (whose gradient is the per-token loss where it passes) and the op's plumbing;
tests/test_ext_policy_loss.py tests every method and aggregation end to end.
"""

import os
import shutil
import subprocess
import sys
import warnings

import pytest
import torch

import ctpo
import ctpo_ext

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CUDA = torch.cuda.is_available()


def cfg_for(geomean, power, **kw):
    return ctpo.method_config("ctpo-geomean" if geomean else "ctpo", power=power, **kw)


def make(B, T, dtype=torch.float32, seed=0, holes=True, full_rows=(), empty_rows=(), scale=0.05, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    logp = -1.0 + scale * torch.randn(B, T, generator=g, dtype=torch.float64)  # log-probs: <= 0 (scale << 1)
    old = logp + scale * torch.randn(B, T, generator=g, dtype=torch.float64)
    lens = torch.randint(0, T + 1, (B,), generator=g)
    mask = torch.arange(T)[None, :] < lens[:, None]
    if holes:
        mask &= torch.rand(B, T, generator=g) > 0.15
    for i in full_rows:
        mask[i] = True
    for i in empty_rows:
        mask[i] = False
    adv = torch.randn(B, generator=g, dtype=torch.float64)
    if B > 2:
        adv[1] = 0.0
    return [x.to(device) for x in (logp.to(dtype), old.to(dtype), adv.float(), mask)]


def reference(logp, old, adv2, mask, cfg):
    """(the summed loss, log w, d sum / d logp) of ctpo.token_losses; the sum exact (float64) over the per-token losses."""
    lp = logp.detach().clone().requires_grad_()
    loss, log_w, _, _ = ctpo.token_losses(lp, old, adv2, mask, cfg)
    (g,) = torch.autograd.grad(loss.sum(), lp)
    return loss.detach().double().sum().to(loss.dtype), log_w.detach(), g


def extension(logp, old, adv2, mask, cfg):
    """The same from the fused op: policy_loss(backend="ext", agg="token-sum") with the same knobs."""
    lp = logp.detach().clone().requires_grad_()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss, m = ctpo.policy_loss(lp, old, adv2, mask, backend="ext", agg="token-sum", **cfg)
    (g,) = torch.autograd.grad(loss, lp)
    return loss.detach(), m["log_w"], g


def assert_parity(ref, got, exact_log_w=True):
    (l_r, w_r, g_r), (l_e, w_e, g_e) = ref, got
    assert l_e.dtype == l_r.dtype and w_e.dtype == w_r.dtype and g_e.dtype == g_r.dtype
    tol = dict(rtol=1e-12, atol=1e-12) if l_r.dtype == torch.float64 else dict(rtol=2e-6, atol=2e-6)
    if exact_log_w:
        assert torch.equal(w_e, w_r), (w_e - w_r).abs().max()  # the clip decisions and the metrics depend on it
    else:
        torch.testing.assert_close(w_e, w_r, **tol)
    torch.testing.assert_close(l_e, l_r, **tol)
    torch.testing.assert_close(g_e.double(), g_r.double(), **tol)
    assert torch.equal(g_e == 0, g_r == 0)  # clipped / masked tokens get exactly no gradient


# -----------------------------------------------------------------------------
# Parity with the Python reference


@pytest.mark.parametrize("geomean", [False, True], ids=["cumprod", "geomean"])
@pytest.mark.parametrize("power", [0.0, 0.5, -0.5])
@pytest.mark.parametrize("adv_shape", ["row", "token"])
def test_parity_every_mode(cpu_path, geomean, power, adv_shape):
    cfg = cfg_for(geomean, power)
    for B, T, seed in ((7, 1, 0), (5, 37, 1), (6, 333, 2), (3, 1000, 3)):
        logp, old, adv, mask = make(B, T, seed=seed, full_rows=(0,), empty_rows=(B - 1,), scale=0.1)
        adv2 = adv[:, None].expand(B, T) if adv_shape == "row" else torch.randn(B, T, generator=torch.Generator().manual_seed(seed))
        assert_parity(reference(logp, old, adv2, mask, cfg), extension(logp, old, adv2, mask, cfg))


@pytest.mark.parametrize("method", ["ctpo", "ctpo-fixed", "ctpo-geomean"])
def test_parity_long_rows_t8192(cpu_path, method):
    cfg = ctpo.method_config(method)
    logp, old, adv, mask = make(3, 8192, seed=4, holes=False, full_rows=(0,))
    mask[1, 1000:1300] = False  # a tool-output span inside the response
    adv2 = adv[:, None].expand_as(logp)
    assert_parity(reference(logp, old, adv2, mask, cfg), extension(logp, old, adv2, mask, cfg))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_parity_other_dtypes(cpu_path, dtype):
    cfg = ctpo.method_config("ctpo")
    logp, old, adv, mask = make(4, 300, dtype=dtype, seed=5)
    adv2 = adv[:, None].expand_as(logp)
    assert_parity(reference(logp, old, adv2, mask, cfg), extension(logp, old, adv2, mask, cfg))
    # old_logp in another dtype than logp (e.g. float32 behaviour log-probs with bfloat16 logp)
    old2 = old.float() if dtype != torch.float32 else old.double()
    assert_parity(reference(logp, old2, adv2, mask, cfg), extension(logp, old2, adv2, mask, cfg))


def test_clamps_and_extremes(cpu_path):
    """delta beyond +-delta_max (value clamped, gradient kept), log rho above log_w_max (gradient 0), NaN/inf
    at masked positions (ignored), all-masked rows, zero advantages."""
    cfg = ctpo.method_config("ctpo", log_w_max=3.0)
    logp, old, adv, mask = make(4, 200, seed=6, full_rows=(0, 2), empty_rows=(3,))
    old[0, :3] = logp[0, :3] - 30.0  # delta clamped to 20, then log rho clamped at 3
    logp[2, 10] = old[2, 10] - 25.0  # delta clamped to -20
    logp[1, ~mask[1]] = float("nan")
    old[3, :] = float("inf")
    adv2 = adv[:, None].expand_as(logp).clone()
    adv2[1, ~mask[1]] = float("nan")
    ref, got = reference(logp, old, adv2, mask, cfg), extension(logp, old, adv2, mask, cfg)
    assert_parity(ref, got)
    assert torch.isfinite(got[0]) and torch.isfinite(got[2]).all()


def test_values_exactly_on_a_bound(cpu_path):
    """Dyadic deltas make log rho land exactly on a bound: such a token is not clipped (full gradient), one
    step beyond is. Likewise log rho == log_w_max passes the gradient, above it does not."""
    logp = torch.full((4, 4), -1.0)
    d = torch.tensor(
        [
            [0.5, 0.0, 0.25, -0.25],  # A > 0: S = 0.5 (on hi), 0.5, 0.75 (above: clipped), 0.5
            [-0.25, 0.0, -0.25, 0.25],  # A < 0: S = -0.25 (on lo), -0.25, -0.5 (below: clipped), -0.25
            [0.75, 0.0, 0.25, -0.25],  # A < 0: S = 0.75 (on the dual cap), 0.75, 1.0 (above: clipped), 0.75
            [0.5, 0.5, 0.5, 0.5],  # A = 0: never clipped, zero loss and gradient
        ]
    )
    mask = torch.ones(4, 4, dtype=torch.bool)
    adv2 = torch.tensor([1.0, -1.0, -2.0, 0.0])[:, None].expand(4, 4)
    cfg = ctpo.method_config("ctpo-fixed", clip_low=0.25, clip_high=0.5, clip_c=0.75)
    ref, got = reference(logp, logp - d, adv2, mask, cfg), extension(logp, logp - d, adv2, mask, cfg)
    assert_parity(ref, got)
    nonzero = got[2] != 0
    assert nonzero[:3].tolist() == [[True, True, False, True]] * 3 and not nonzero[3].any()
    # log_w_max = 0.5 inside a wide window: S = 0.5 passes the gradient, S = 0.75 (log_w clamped to 0.5) does not
    cfg = ctpo.method_config("ctpo-fixed", clip_low=2.0, clip_high=2.0, clip_c=2.0, log_w_max=0.5)
    ref, got = reference(logp, logp - d, adv2, mask, cfg), extension(logp, logp - d, adv2, mask, cfg)
    assert_parity(ref, got)
    assert (got[2][0] != 0).tolist() == [True, True, False, True] and got[1][0, 2] == 0.5


def test_non_contiguous_inputs(cpu_path):
    cfg = ctpo.method_config("ctpo")
    B, T = 5, 129
    logp, old, adv, mask = make(B, T, seed=7)
    big = torch.randn(B, T + 11)
    big[:, 3 : 3 + T] = logp
    lp_slice = big[:, 3 : 3 + T]  # row stride T + 11
    old_t = old.t().contiguous().t()  # column-major
    mask_step = torch.zeros(B, 2 * T, dtype=torch.bool)
    mask_step[:, ::2] = mask
    mask_step = mask_step[:, ::2]  # stride 2 along T
    adv_tok = torch.randn(T, B).t()  # per-token, transposed
    for lp_, old_, adv_, mask_ in ((lp_slice, old_t, adv[:, None].expand(B, T), mask_step), (logp, old, adv_tok, mask)):
        assert_parity(reference(lp_, old_, adv_, mask_, cfg), extension(lp_, old_, adv_, mask_, cfg))


def test_empty_shapes(ext):
    for B, T in ((0, 5), (3, 0)):
        logp = torch.zeros(B, T, requires_grad=True)
        loss, m = ctpo.policy_loss(logp, torch.zeros(B, T), torch.zeros(B, T), torch.ones(B, T, dtype=torch.bool), backend="ext")
        assert loss.shape == () and loss.item() == 0 and m["log_w"].shape == (B, T)
        loss.backward()
        assert logp.grad.shape == (B, T)


def test_inlined_exp_matches_sleef(ext):
    """The AVX-512 kernel inlines Sleef's expf (what torch's Vectorized<float>::exp calls): bit-identical on a
    spread of all 2^32 float bit patterns (exhaustively checked once: 0 mismatches)."""
    if ext.compiled_cpu_path() != "avx512":
        pytest.skip("no AVX-512 kernel in this build")
    assert ext._exp16_mismatches(0, 2**32 // 251, 251) == 0
    assert ext._exp16_mismatches(0xC2D00000, 2**20, 1) == 0  # around -104, where Sleef flushes to 0
    assert ext._exp16_mismatches(0x42B00000, 2**20, 1) == 0  # around 88, where exp overflows


def test_output_cache_gives_ordinary_tensors(ext):
    logp, old, adv, mask = make(3, 50, seed=17)
    ext.pool_clear()
    log_w = ctpo.policy_loss(logp, old, adv, mask, backend="ext")[1]["log_w"]
    ref = log_w.clone()
    log_w.resize_(10, 100)  # a resizable storage like any other tensor's
    del log_w
    if ext.pool_cached_bytes() == 0:
        pytest.skip("output cache disabled (CTPO_EXT_POOL_MB=0)")
    again = ctpo.policy_loss(logp, old, adv, mask, backend="ext")[1]["log_w"]  # reuses a cached block
    assert torch.equal(again, ref)
    ext.pool_clear()
    assert ext.pool_cached_bytes() == 0


# -----------------------------------------------------------------------------
# Accuracy in low precision, gradcheck, opcheck, torch.compile


def test_bf16_error_vs_float64_truth_no_worse_than_python_float32(ext):
    cfg = ctpo.method_config("ctpo")
    logp, old, adv, mask = make(8, 2000, dtype=torch.bfloat16, seed=9, scale=0.02)
    adv2 = adv[:, None].expand_as(logp)
    truth = reference(logp.double(), old.double(), adv2.double(), mask, cfg)  # float64 on the same bf16 inputs
    py = reference(logp, old, adv2, mask, cfg)  # the Python backend computes in float32
    got = extension(logp, old, adv2, mask, cfg)
    err_ext = (got[1].double() - truth[1]).abs().max().item()  # log w
    err_py = (py[1].double() - truth[1]).abs().max().item()
    assert err_ext <= err_py * 1.001 + 1e-7, (err_ext, err_py)
    err_ext = (got[2].double() - truth[2]).abs().max().item()  # bf16 gradients: both round the same float32 values
    err_py = (py[2].double() - truth[2]).abs().max().item()
    assert err_ext <= err_py * 1.001 + 1e-7, (err_ext, err_py)


def test_opcheck(ext):
    """The op's schema, fake kernel, autograd registration and dispatch agree (torch.library.opcheck), for every
    ratio, aggregation, dtype, advantage shape, given / default counts and weights."""
    logp, old, adv, mask = make(3, 40, seed=11)
    rw = torch.rand(3, 40)
    for ratio in range(5):
        for agg, counts in ((ratio % 5, (None, None, None)), ((ratio + 2) % 5, (7.0, 2.0, 64.0))):
            for lp, ol, a, w in (
                (logp, old, adv, None),
                (logp.double(), old.double(), torch.randn(3, 40, dtype=torch.float64), rw.double()),
                (logp.bfloat16(), old.float(), adv[:, None].expand_as(logp), rw),
            ):
                args = (
                    lp.clone().requires_grad_(),
                    ol,
                    a,
                    mask,
                    w,
                    ctpo_ext.op_config(ratio, -0.1, 0.1, 0.2, 0.5, 20.0, 10.0, agg, *counts),
                )
                torch.library.opcheck(torch.ops.ctpo.policy_loss.default, args)
    out = torch.ops.ctpo.policy_loss(logp, old, adv, mask, None, ctpo_ext.op_config(3, -0.1, 0.1, 0.2, 0.5, 20.0, 10.0, 0))
    for dt in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
        torch.library.opcheck(torch.ops.ctpo.policy_loss_backward.default, (torch.tensor(0.5), out[5], out[6], dt))


# -----------------------------------------------------------------------------
# ctpo.policy_loss with backend="ext" / "auto"


@pytest.mark.parametrize("method", ["ctpo", "ctpo-fixed", "ctpo-geomean"])
@pytest.mark.parametrize("agg", ctpo.AGGS)
def test_policy_loss_backends_agree(ext, method, agg):
    logp, old, adv, mask = make(6, 300, seed=13, full_rows=(0,), empty_rows=(5,), scale=0.1)
    out = {}
    for backend in ("python", "ext"):
        lp = logp.clone().requires_grad_()
        loss, metrics = ctpo.policy_loss(lp, old, adv, mask, method=method, agg=agg, backend=backend)
        loss.backward()
        out[backend] = (loss.detach(), lp.grad, metrics)
    (l_p, g_p, m_p), (l_e, g_e, m_e) = out["python"], out["ext"]
    assert m_p["backend"] == "python" and m_e["backend"] == "ext"
    torch.testing.assert_close(l_e, l_p, rtol=2e-6, atol=1e-7)
    torch.testing.assert_close(g_e, g_p, rtol=2e-6, atol=1e-8)
    assert list(m_p.keys()) == list(m_e.keys())
    for k in m_p:
        if isinstance(m_p[k], torch.Tensor):
            assert m_p[k].dtype == m_e[k].dtype and m_p[k].shape == m_e[k].shape, k
            if m_p[k].is_floating_point() and k != "log_w":  # the kernel sums exp(log w) in float64, Python in float32
                torch.testing.assert_close(m_e[k], m_p[k], rtol=2e-6, atol=0, msg=k)
            else:
                assert torch.equal(m_p[k], m_e[k]), k  # identical: same log rho bits, same clip flags and counts


def test_geomean_by_ratio_name_uses_the_kernel(ext):
    logp, old, adv, mask = make(4, 50, seed=15, scale=0.1)
    by_name = ctpo.policy_loss(logp, old, adv, mask, method="ctpo", ratio="cumulative-geomean", power=-0.5, backend="ext")
    by_preset = ctpo.policy_loss(logp, old, adv, mask, method="ctpo-geomean", backend="python")
    assert by_name[1]["backend"] == "ext"
    torch.testing.assert_close(by_name[0], by_preset[0], rtol=2e-6, atol=1e-7)


def test_backend_auto_uses_the_extension(ext):
    logp, old, adv, mask = make(2, 10, seed=14)
    _, metrics = ctpo.policy_loss(logp, old, adv, mask, backend="auto")
    assert metrics["backend"] == "ext"


def test_failed_build_falls_back_with_one_warning(monkeypatch):
    def broken(verbose):
        raise OSError("simulated: no C++ compiler")

    monkeypatch.setattr(ctpo_ext, "_module", None)
    monkeypatch.setattr(ctpo_ext, "_error", None)
    monkeypatch.setattr(ctpo_ext, "_jit_build", broken)
    monkeypatch.setattr(ctpo_ext, "AOT_NAME", "_ctpo_ext_not_installed")
    monkeypatch.setattr(ctpo_ext, "_warned", False)
    with pytest.raises(RuntimeError, match="pip install --no-build-isolation -e"):
        ctpo_ext.load()
    logp, old, adv, mask = make(2, 10, seed=15)
    with pytest.raises(RuntimeError, match="backend='ext'.*pip install"):
        ctpo.policy_loss(logp, old, adv, mask, backend="ext")
    with pytest.warns(UserWarning, match="falls back to Python"):
        _, m = ctpo.policy_loss(logp, old, adv, mask, backend="auto")
    assert m["backend"] == "python"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # only one warning per process
        ctpo.policy_loss(logp, old, adv, mask, backend="auto")


def test_missing_compiler_says_how_to_build(tmp_path):
    env = dict(os.environ, CXX="no-such-compiler-ctpo", CTPO_EXT_JIT="1", CTPO_EXT_DIR=str(tmp_path))
    code = "import ctpo_ext\ntry:\n    ctpo_ext.load()\nexcept RuntimeError as e:\n    print(e)\nelse:\n    print('loaded')"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120).stdout
    assert "no C++ compiler" in out and "pip install --no-build-isolation -e ." in out, out


# -----------------------------------------------------------------------------
# Errors


def test_cpp_errors_reach_python_cpu_and_cuda(ext):
    """A check inside the C++ op itself (a bad ratio code, past the Python wrapper's checks) raises ValueError in
    Python, on the CPU and (with a GPU) on CUDA tensors. Run in a subprocess: on one GPU image an extension built
    with its compiler wrapper died on any C++ exception (docs/kernel.md); that must fail this test, not kill pytest."""
    devices = ["cpu"] + (["cuda"] if CUDA and ext.with_cuda() else [])
    code = (
        "import sys, torch, ctpo_ext\n"
        "ctpo_ext.load()\n"
        "for dev in sys.argv[1:]:\n"
        "    x = torch.zeros(2, 3, device=dev)\n"
        "    m = torch.ones(2, 3, dtype=torch.bool, device=dev)\n"
        "    try:\n"
        "        torch.ops.ctpo.policy_loss(x, x, x, m, None, ctpo_ext.op_config(9, -0.1, 0.1, 0.2, 0.5, 20.0, 10.0, 0))\n"
        "    except ValueError as e:\n"
        "        assert 'ratio' in str(e), e\n"
        "        print('raised on', dev)\n"
    )
    r = subprocess.run([sys.executable, "-c", code, *devices], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, (r.returncode, r.stderr[-2000:])
    assert [line for line in r.stdout.splitlines() if line.startswith("raised on")] == [f"raised on {d}" for d in devices], r.stdout


def test_errors_name_the_argument(ext):
    """ctpo.policy_loss checks types, shapes, devices and knobs once, for both backends (tests/test_reliability.py);
    the op itself keeps its own contract: ValueError / TypeError from C++, naming the argument."""
    logp, old, adv, mask = make(2, 8, seed=16)
    op = torch.ops.ctpo.policy_loss
    rest, cfg = (3, -0.1, 0.1, 0.2, 0.5, 20.0, 10.0, 0, None, None, None), ctpo_ext.op_config
    with pytest.raises(ValueError, match="mask"):
        op(logp, old, adv, mask[:, :4], None, cfg(*rest))
    with pytest.raises(TypeError, match="logp"):
        op(logp.long(), old, adv, mask, None, cfg(*rest))
    with pytest.raises(ValueError, match="adv"):
        op(logp, old, adv[:1], mask, None, cfg(*rest))
    with pytest.raises(ValueError, match="rollout_is_weights"):
        op(logp, old, adv, mask, torch.ones(2, 4), cfg(*rest))
    with pytest.raises(ValueError, match="ratio"):
        op(logp, old, adv, mask, None, cfg(5, *rest[1:]))
    with pytest.raises(ValueError, match="power"):
        op(logp, old, adv, mask, None, cfg(3, -0.1, 0.1, 0.2, float("inf"), *rest[5:]))
    with pytest.raises(ValueError, match="agg"):
        op(logp, old, adv, mask, None, cfg(*rest[:7], 5))
    with pytest.raises(ValueError, match="num_tokens"):
        op(logp, old, adv, mask, None, cfg(*rest[:8], -1.0))
    with pytest.raises(ValueError, match="config"):
        op(logp, old, adv, mask, None, cfg(*rest)[:8])
    with pytest.raises(ValueError, match="agg"):
        op(logp, old, adv, mask, None, cfg(*rest[:7], 0.5))  # a code must be a whole number
    out = op(logp, old, adv, mask, None, cfg(*rest))
    bwd = torch.ops.ctpo.policy_loss_backward
    with pytest.raises(ValueError, match="grad_loss"):
        bwd(torch.ones(3), out[5], out[6], torch.float32)
    with pytest.raises(ValueError, match="row_scale"):
        bwd(torch.ones(()), out[5], out[6][:1], torch.float32)
    with pytest.raises(TypeError, match="grad"):
        bwd(torch.ones(()), out[5].half(), out[6], torch.float32)


def test_unsupported_device_is_a_clear_error(ext):
    x = torch.zeros(2, 3, device="meta")
    assert ctpo_ext.supports(torch.zeros(1)) and not ctpo_ext.supports(x)
    with pytest.raises(RuntimeError, match="backend='ext': the extension was built without a kernel for meta tensors"):
        ctpo.policy_loss(x, x, torch.zeros(2, device="meta"), torch.ones(2, 3, dtype=torch.bool, device="meta"), backend="ext")


# -----------------------------------------------------------------------------
# CUDA: parity on a GPU (skipped without one), and a compile check of the torch-free kernel with nvcc


@pytest.mark.skipif(not CUDA, reason="no CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("method", ["ctpo", "ctpo-fixed", "ctpo-geomean"])
def test_cuda_parity(ext, dtype, method):
    if not ext.with_cuda():
        pytest.skip("extension built without CUDA kernels")
    cfg = ctpo.method_config(method)
    for B, T, seed in ((3, 1, 0), (5, 333, 1), (2, 8192, 2)):
        logp, old, adv, mask = make(B, T, dtype=dtype, seed=seed, device="cuda", full_rows=(0,), empty_rows=(B - 1,))
        for adv2 in (adv[:, None].expand_as(logp), torch.randn(B, T, device="cuda")):
            ref = reference(logp.cpu(), old.cpu(), adv2.cpu(), mask.cpu(), cfg)
            got = [x.cpu() for x in extension(logp, old, adv2, mask, cfg)]
            assert_parity(ref, got, exact_log_w=False)


@pytest.mark.skipif(not CUDA, reason="no CUDA device")
def test_cuda_compile_and_policy_loss(ext):
    if not ext.with_cuda():
        pytest.skip("extension built without CUDA kernels")
    logp, old, adv, mask = make(4, 500, seed=3, device="cuda")
    lp = logp.clone().requires_grad_()
    loss, m = ctpo.policy_loss(lp, old, adv, mask, backend="ext")
    loss.backward()
    assert m["backend"] == "ext" and torch.isfinite(lp.grad).all()
    f = torch.compile(lambda x: ctpo.policy_loss(x, old, adv, mask, backend="ext")[0], fullgraph=True)
    with torch._inductor.config.patch(force_disable_caches=True):
        torch.testing.assert_close(f(logp), ctpo.policy_loss(logp, old, adv, mask, backend="ext")[0])


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not found")
def test_cuda_kernel_compiles_with_nvcc(tmp_path):
    src = os.path.join(ROOT, "csrc", "ctpo_cuda.cu")
    cmd = ["nvcc", "-c", src, "-o", str(tmp_path / "ctpo_cuda.o"), "-std=c++17", "-O1", "-Xcompiler", "-Wall"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-4000:]
    assert "warning" not in res.stderr.lower(), res.stderr[-4000:]
