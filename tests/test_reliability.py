"""Faults found by trying peers' bug reports, each tested for its whole kind: every method x agg x
backend x dtype where it applies. The values are computed independently (by hand, or in float64 with the
standard library)."""

import math
import os
import re
import statistics
import warnings

import pytest
import torch

import ctpo
import ctpo_ext

METHODS = list(ctpo.METHODS)
HAVE_EXT = ctpo_ext.available()


def backends():
    return ["python", "auto"] + (["ext"] if HAVE_EXT else [])


def call(*args, backend="python", **kw):
    """policy_loss, where backend="ext" on a method the kernel does not cover skips that combination
    (the kernel's coverage is tested in test_ext.py); "auto" falls back to Python with a warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return ctpo.policy_loss(*args, backend=backend, **kw)
        except RuntimeError as e:
            if backend == "ext" and "covers" in str(e):
                pytest.skip(f"no kernel for this method yet: {e}")
            raise


# -----------------------------------------------------------------------------
# 1. Equal rewards give exactly zero advantages (never a rounding residue divided by its own std)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("scale", [True, False])
def test_equal_rewards_give_exactly_zero(dtype, scale):
    values = [8.1, 0.1, -3.3, 1e6 + 0.1, 1e-30, 0.0, 1.0, 2.0 / 3.0, -1e-3, 123456.789]
    for G in (1, 2, 3, 5, 7, 8, 16, 17, 64):
        for v in values:
            adv = ctpo.group_advantages(torch.full((3 * G,), v, dtype=dtype), G, scale=scale)
            assert adv.dtype == dtype and torch.equal(adv, torch.zeros_like(adv)), (v, G, adv[:4])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ordinary_groups_give_the_z_score(dtype):
    adv = ctpo.group_advantages(torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=dtype), 4)
    torch.testing.assert_close(adv, torch.tensor([-0.5, -0.5, -0.5, 1.5], dtype=dtype))
    # a batch mixing an equal group, a 0/1 group and a random group, against the standard library (float64)
    g = torch.Generator().manual_seed(0)
    groups = [[8.1] * 6, [0, 1, 1, 0, 0, 1], torch.randn(6, generator=g, dtype=torch.float64).tolist()]
    rewards = torch.tensor([x for grp in groups for x in grp], dtype=dtype)
    got = ctpo.group_advantages(rewards, 6)
    for i, grp in enumerate(groups):
        grp = [float(x) for x in rewards[6 * i : 6 * i + 6]]
        mu, sd = statistics.fmean(grp), statistics.stdev(grp)
        want = [0.0] * 6 if len(set(grp)) == 1 else [(x - mu) / sd for x in grp]
        tol = 1e-12 if dtype == torch.float64 else 1e-6
        assert got[6 * i : 6 * i + 6].tolist() == pytest.approx(want, abs=tol)
    # Dr. GRPO: centred, not scaled
    torch.testing.assert_close(
        ctpo.group_advantages(torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=dtype), 4, scale=False),
        torch.tensor([-0.25, -0.25, -0.25, 0.75], dtype=dtype),
    )


# -----------------------------------------------------------------------------
# 2. Empty batches: loss 0, a gradient of the input's shape, on-policy metrics


@pytest.mark.parametrize("shape", [(0, 4), (3, 0), (0, 0), "all-masked"])
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("agg", ctpo.AGGS)
@pytest.mark.parametrize("backend", backends())
def test_empty_batches(shape, method, agg, backend):
    mask_value = shape != "all-masked"
    shape = (2, 3) if shape == "all-masked" else shape
    logp = torch.zeros(shape, requires_grad=True)
    mask = torch.full(shape, mask_value, dtype=torch.bool)
    for adv in (torch.ones(shape[0]), torch.ones(shape)):
        loss, m = call(logp, torch.zeros(shape), adv, mask, method=method, agg=agg, backend=backend)
        loss.backward()
        assert loss.item() == 0.0 and logp.grad.shape == logp.shape and not logp.grad.any()
        assert int(m["n_tokens"]) == 0
        for k in ("ratio_mean", "ratio_min", "ratio_max", "ratio_q10", "ratio_q50", "ratio_q90"):
            assert float(m[k]) == 1.0, k
        for k in ("clip_frac", "clip_frac_high", "clip_frac_low", "clip_frac_dual"):
            assert float(m[k]) == 0.0, k
        logp.grad = None


# -----------------------------------------------------------------------------
# 3. No input but logp receives a gradient


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("adv_shape", ["B", "BT"])
def test_only_logp_gets_a_gradient(method, backend, adv_shape):
    g = torch.Generator().manual_seed(0)
    B, T = 3, 7
    logp = (-torch.rand(B, T, generator=g)).requires_grad_(True)
    old = (logp.detach() + 0.05 * torch.randn(B, T, generator=g)).clamp(max=0).requires_grad_(True)
    adv = torch.tensor([1.0, -0.5, 0.0]) if adv_shape == "B" else torch.randn(B, T, generator=g)
    adv.requires_grad_(True)
    ref = (logp.detach() - 0.1).requires_grad_(True)
    w = torch.rand(B, T, generator=g).requires_grad_(True)
    mask = torch.rand(B, T, generator=g) > 0.2
    for kw in ({}, dict(ref_logp=ref, beta=0.1), dict(rollout_is_weights=w), dict(ref_logp=ref, beta=0.1, rollout_is_weights=w)):
        loss, _ = call(logp, old, adv, mask, method=method, backend=backend, **kw)
        loss.backward()
        assert logp.grad is not None and logp.grad.abs().sum() > 0
        for name, x in (("old_logp", old), ("advantages", adv), ("ref_logp", ref), ("rollout_is_weights", w)):
            assert x.grad is None, name
        logp.grad = None


# -----------------------------------------------------------------------------
# 4. A finite loss has a finite gradient, and a clipped token's gradient is exactly 0


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_no_nan_gradient_through_an_unused_branch(method, backend, dtype):
    for log_w_max in (10.0, 50.0, 100.0, 1e4, math.inf):
        for old_value, A in ((-20.0, 1.0), (-20.0, -1.0), (20.0, 1.0), (20.0, -1.0)):
            # delta = -old_value, with both log-probs <= 0
            logp = torch.full((1, 5), min(-old_value, 0.0), dtype=dtype, requires_grad=True)
            old = torch.full((1, 5), min(old_value, 0.0), dtype=dtype)
            mask = torch.ones(1, 5, dtype=torch.bool)
            loss, m = call(logp, old, torch.tensor([A], dtype=dtype), mask, method=method, backend=backend, log_w_max=log_w_max)
            loss.backward()
            grad = logp.grad.float()
            if not torch.isfinite(loss):  # only an unclipped weight beyond the dtype's range may overflow
                continue
            assert torch.isfinite(grad).all(), (log_w_max, old_value, A, grad)
            assert (grad[m["clipped"]] == 0).all()


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_zero_advantage_is_exactly_zero_even_where_w_overflows(method, backend, dtype):
    for log_w_max in (10.0, 100.0, 1e4, math.inf):
        logp = torch.zeros(2, 5, dtype=dtype, requires_grad=True)
        old = torch.full((2, 5), -20.0, dtype=dtype)  # delta = 20 per token: log w up to 100 (and 2000 for sequence)
        loss, m = call(logp, old, torch.tensor([0.0, 0.0], dtype=dtype), torch.ones(2, 5, dtype=torch.bool), method=method, backend=backend,
                       log_w_max=log_w_max)  # fmt: skip
        loss.backward()
        assert loss.item() == 0 and not logp.grad.float().any(), (log_w_max, logp.grad)


@pytest.mark.parametrize("backend", backends())
def test_finite_loss_has_finite_gradient_for_random_extreme_knobs(backend):
    g = torch.Generator().manual_seed(0)
    choice = lambda xs: xs[int(torch.randint(len(xs), (1,), generator=g))]  # noqa: E731
    for _ in range(60):
        method = choice(METHODS)
        knobs = dict(log_w_max=choice([0.0, 1.0, 10.0, 88.0, 100.0, 1e3, math.inf]), delta_max=choice([1e-3, 1.0, 20.0, 1e3, math.inf]))
        if ctpo.METHODS[method]["clip"] == "ratio":
            knobs.update(
                eps_low=choice([0.0, 0.2, 0.999]), eps_high=choice([0.0, 0.2, 10.0, math.inf]), dual_c=choice([1.001, 3.0, math.inf])
            )
        else:
            knobs.update(power=choice([-2.0, -0.5, 0.0, 0.5, 1.0, 3.0]), clip_high=choice([0.0, 0.05, 10.0]))
        B, T = 3, 9
        scale = choice([0.1, 5.0, 40.0])
        logp = (scale * torch.randn(B, T, generator=g) - 8 * scale).requires_grad_(True)  # log-probs: <= 0
        old = scale * torch.randn(B, T, generator=g) - 8 * scale
        adv = torch.randn(B, generator=g).round()  # some exactly 0
        mask = torch.rand(B, T, generator=g) > 0.3
        loss, m = call(logp, old, adv, mask, method=method, backend=backend, **knobs)
        loss.backward()
        if torch.isfinite(loss):
            assert torch.isfinite(logp.grad).all(), (method, knobs)
            assert (logp.grad[m["clipped"]] == 0).all()
            assert (logp.grad[~mask] == 0).all()


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("backend", backends())
def test_padding_may_hold_anything(method, backend):
    # trainers fill padding with -inf log-probs or NaN: nothing of it may reach the loss or the gradient
    g = torch.Generator().manual_seed(1)
    B, T = 3, 6
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 0, 1, 1, 0, 0], [0, 0, 0, 0, 0, 0]], dtype=torch.bool)
    base = -torch.rand(B, T, generator=g, dtype=torch.float64)
    old = base + 0.1 * torch.randn(B, T, generator=g, dtype=torch.float64)
    adv = torch.randn(B, T, generator=g, dtype=torch.float64)
    clean = call(base.clone().requires_grad_(True), old, adv, mask, method=method, backend=backend)[0]
    for junk in (-math.inf, math.inf, math.nan):
        logp = torch.where(mask, base, junk).requires_grad_(True)
        loss, m = call(
            logp, torch.where(mask, old, junk), torch.where(mask, adv, junk), mask, method=method, backend=backend,
            ref_logp=torch.where(mask, base, junk), beta=0.1, rollout_is_weights=torch.where(mask, 1.0, junk).double(),
        )  # fmt: skip
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(logp.grad).all() and (logp.grad[~mask] == 0).all(), junk
        kl_free = call(logp.detach(), torch.where(mask, old, junk), torch.where(mask, adv, junk), mask, method=method, backend=backend)
        assert kl_free[0].item() == pytest.approx(clean.item(), abs=1e-12)
        assert all(torch.isfinite(v.float()).all() for k, v in m.items() if torch.is_tensor(v) and k != "log_w")


# -----------------------------------------------------------------------------
# Knobs that make no sense are errors naming the knob, before any work, on both backends

BAD_KNOBS = [
    ("ctpo", dict(delta_max=-1.0), ValueError, "delta_max"),
    ("ctpo", dict(delta_max=0.0), ValueError, "delta_max"),
    ("ctpo", dict(delta_max=math.nan), ValueError, "delta_max"),
    ("grpo", dict(delta_max=math.nan), ValueError, "delta_max"),
    ("ctpo", dict(log_w_max=math.nan), ValueError, "log_w_max"),
    ("gspo", dict(log_w_max=-1.0), ValueError, "log_w_max"),
    ("ctpo", dict(power=math.nan), ValueError, "power"),
    ("ctpo", dict(power=math.inf), ValueError, "power"),
    ("ctpo", dict(clip_low=math.nan), ValueError, "clip_low"),
    ("ctpo", dict(clip_high=-0.1), ValueError, "clip_high"),
    ("ctpo", dict(clip_c=0.0), ValueError, "clip_c"),
    ("grpo", dict(eps_low=1.0), ValueError, "eps_low"),
    ("grpo", dict(eps_high=math.nan), ValueError, "eps_high"),
    ("grpo", dict(dual_c=math.nan), ValueError, "dual_c"),
    ("sequence", dict(dual_c=1.0), ValueError, "dual_c"),
    ("ctpo", dict(geomean="yes"), TypeError, "geomean"),
    ("ctpo", dict(stop_gradient=1), TypeError, "stop_gradient"),
    ("ctpo", dict(delta_max="20"), TypeError, "delta_max"),
    ("ctpo", dict(clip="ratio", eps_low=math.nan), ValueError, "eps_low"),
]


@pytest.mark.parametrize("method, knobs, exc, name", BAD_KNOBS)
@pytest.mark.parametrize("backend", ["python", "ext"])
def test_bad_knobs_are_errors_naming_the_knob(method, knobs, exc, name, backend):
    logp = torch.zeros(2, 3, requires_grad=True)
    with pytest.raises(exc, match=name):
        ctpo.policy_loss(logp, torch.zeros(2, 3), torch.ones(2), torch.ones(2, 3), method=method, backend=backend, **knobs)
    with pytest.raises(exc, match=name):
        ctpo.method_config(method, **knobs)


@pytest.mark.parametrize(
    "kw, name",
    [
        (dict(beta=math.nan), "beta"),
        (dict(beta=-1.0), "beta"),
        (dict(beta=0.1), "ref_logp"),
        (dict(beta=0.1, ref_logp=torch.zeros(2, 4)), "ref_logp"),
        (dict(beta=0.1, ref_logp=torch.full((2, 3), math.nan)), "ref_logp"),
        (dict(rollout_is_weights=torch.zeros(3)), "rollout_is_weights"),
        (dict(rollout_is_weights=-torch.ones(2, 3)), "rollout_is_weights"),
        (dict(rollout_is_weights=torch.full((2, 3), math.inf)), "rollout_is_weights"),
        (dict(agg="token_mean"), "agg"),
        (dict(agg="seq-mean-token-sum-norm", loss_scale_factor=math.nan), "loss_scale_factor"),
        (dict(num_tokens=-1), "num_tokens"),
    ],
)
def test_bad_optional_inputs_are_errors(kw, name):
    with pytest.raises(ValueError, match=name):
        ctpo.policy_loss(torch.zeros(2, 3, requires_grad=True), torch.zeros(2, 3), torch.ones(2), torch.ones(2, 3), **kw)


@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("name", ["num_tokens", "num_seqs", "loss_scale_factor"])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -1.0])
def test_bad_count_tensors_are_errors(backend, name, bad):
    """A count given as a tensor (a global count summed over ranks) is checked like a number: a NaN, inf or negative
    count is a ValueError naming it, not a NaN loss or a silent clamp to 1 (on a CPU tensor: eagerly)."""
    agg = {"num_tokens": "token-mean", "num_seqs": "seq-mean-token-sum", "loss_scale_factor": "seq-mean-token-sum-norm"}[name]
    args = (torch.zeros(2, 3, requires_grad=True), torch.zeros(2, 3), torch.ones(2), torch.ones(2, 3))
    with pytest.raises(ValueError, match=name):
        ctpo.policy_loss(*args, agg=agg, backend=backend, **{name: torch.tensor(bad)})
    with pytest.raises(ValueError, match=name):
        ctpo.policy_loss(*args, agg=agg, backend=backend, **{name: torch.tensor([6.0, 6.0])})
    loss, _ = ctpo.policy_loss(*args, agg=agg, backend=backend, **{name: torch.tensor(6.0)})
    assert torch.isfinite(loss)


@pytest.mark.parametrize("backend", backends())
def test_ref_logp_must_be_log_probs(backend):
    """ref_logp (the KL term's reference log-probs) gets the same log-prob check as logp and old_logp."""
    logp = torch.full((2, 3), -1.0, requires_grad=True)
    with pytest.raises(ValueError, match="ref_logp: expected log-probabilities"):
        ctpo.policy_loss(logp, logp.detach(), torch.ones(2), torch.ones(2, 3), ref_logp=torch.full((2, 3), 0.5), beta=0.1, backend=backend)
    ref = torch.full((2, 3), -1.0)
    loss, m = ctpo.policy_loss(logp, logp.detach(), torch.ones(2), torch.ones(2, 3), ref_logp=ref, beta=0.1, backend=backend)
    assert float(m["kl"]) == 0.0  # equal policies: k3 is exactly 0


# -----------------------------------------------------------------------------
# rollout_is_weights and the aggregation modes verl has


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("backend", backends())
def test_rollout_is_weights_multiply_each_token(method, backend):
    g = torch.Generator().manual_seed(2)
    B, T = 4, 9
    logp = (-torch.rand(B, T, generator=g, dtype=torch.float64)).requires_grad_(True)
    old = (logp.detach() + 0.2 * torch.randn(B, T, generator=g, dtype=torch.float64)).clamp(max=0)
    adv = torch.randn(B, generator=g, dtype=torch.float64)
    mask = torch.rand(B, T, generator=g) > 0.25
    w = 2 * torch.rand(B, T, generator=g, dtype=torch.float64)
    for agg in ctpo.AGGS:
        loss, _ = call(logp, old, adv, mask, method=method, agg=agg, backend=backend, rollout_is_weights=w)
        (grad,) = torch.autograd.grad(loss, logp)
        # independent: per-token losses of the Python reference, weighted, then each agg by hand
        cfg = ctpo.method_config(method)
        lp = logp.detach().clone().requires_grad_(True)
        tok = ctpo.token_losses(lp, old, adv[:, None].expand(B, T), mask, cfg)[0] * w
        n_i = mask.sum(-1).double()
        rows = tok.sum(-1)
        S = int((n_i > 0).sum())
        want = {
            "token-mean": rows.sum() / n_i.sum(),
            "token-sum": rows.sum(),
            "seq-mean-token-mean": (rows / n_i.clamp(min=1)).sum() / S,
            "seq-mean-token-sum": rows.sum() / S,
            "seq-mean-token-sum-norm": rows.sum() / S / T,
        }[agg]
        (want_grad,) = torch.autograd.grad(want, lp)
        assert loss.item() == pytest.approx(want.item(), rel=1e-6, abs=1e-9), agg
        torch.testing.assert_close(grad, want_grad, rtol=1e-6, atol=1e-9)


def test_new_aggregation_modes_by_hand():
    loss_tok = torch.tensor([[1.0, 2.0, 3.0, 0.0], [4.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)
    assert ctpo.aggregate(loss_tok, mask, "token-sum").item() == 10.0
    assert ctpo.aggregate(loss_tok, mask, "seq-mean-token-sum-norm").item() == pytest.approx(10 / 2 / 4)
    assert ctpo.aggregate(loss_tok, mask, "seq-mean-token-sum-norm", loss_scale_factor=100).item() == pytest.approx(10 / 2 / 100)
    assert ctpo.aggregate(loss_tok, mask, "seq-mean-token-sum-norm", num_seqs=8, loss_scale_factor=5).item() == pytest.approx(10 / 8 / 5)


# -----------------------------------------------------------------------------
# torch.compile in a fresh process: B and T change at every call (RL batches do), no recompile per new shape,
# equal to eager. ext: fullgraph=True, also before anything loaded the extension; python: graph breaks at the
# value checks only. Dynamo's tracing is where these faults were (a traced lock, math.gcd / math.isfinite on a
# symbolic size or knob), so every method x agg runs through Dynamo + AOTAutograd (backend "aot_eager", seconds);
# Inductor compiles one method per backend.

COMPILE_SCRIPT = r"""
import sys, torch, torch._dynamo.testing
import ctpo
backend, compiler, dynamic = sys.argv[1], sys.argv[2], {"none": None, "true": True}[sys.argv[3]]
methods = sys.argv[4].split(",")
SHAPES = ((3, 5), (4, 7), (2, 9), (5, 11))  # every call a new B and T

def inputs(B, T, seed):
    g = torch.Generator().manual_seed(seed)
    logp = (-1.0 + 0.3 * torch.randn(B, T, generator=g)).clamp(max=0)
    old = (logp + 0.3 * torch.randn(B, T, generator=g)).clamp(max=0)
    mask = torch.rand(B, T, generator=g) > 0.2
    mask[0] = True
    w = torch.rand(B, T, generator=g)
    return logp, old, torch.randn(B, generator=g), mask, w

def run(fn, logp, *rest):
    lp = logp.clone().requires_grad_()
    loss, m = fn(lp, *rest)
    loss.backward()
    return loss.detach(), lp.grad, {k: v for k, v in m.items() if torch.is_tensor(v)}

for i, method in enumerate(methods):
    agg = ctpo.AGGS[i % len(ctpo.AGGS)]
    kw = dict(method=method, agg=agg, backend=backend, num_seqs=4 if agg == "seq-mean-token-sum" else None)
    def f(lp, old, adv, mask, w):
        return ctpo.policy_loss(lp, old, adv, mask, rollout_is_weights=w, **kw)
    torch._dynamo.reset()  # each method on its own (they share f's code object and its recompile limit)
    counter = torch._dynamo.testing.CompileCounterWithBackend(compiler)
    cf = torch.compile(f, backend=counter, fullgraph=backend == "ext", dynamic=dynamic)
    frames = []
    for k, (B, T) in enumerate(SHAPES):
        x = inputs(B, T, 100 * i + k)
        got, want = run(cf, *x), run(f, *x)
        frames.append(counter.frame_count)
        torch.testing.assert_close(got[0], want[0], rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(got[1], want[1], rtol=1e-6, atol=1e-7)
        assert list(got[2]) == list(want[2]), (method, got[2].keys())
        for name in want[2]:
            torch.testing.assert_close(got[2][name], want[2][name], rtol=1e-6, atol=1e-7, msg=lambda s: f"{method} {name}: {s}")
    # the first shape compiles a static graph, the second a dynamic one; no new shape after that recompiles
    assert frames[1] == frames[-1], (method, frames)
    print(method, agg, "frames", frames)
print("ok")
"""


def run_compile_script(backend, compiler, dynamic, methods):
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": root, "OMP_NUM_THREADS": "1"}
    args = [sys.executable, "-c", COMPILE_SCRIPT, backend, compiler, dynamic, ",".join(methods)]
    r = subprocess.run(args, cwd=root, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stdout[-3000:] + r.stderr[-6000:]


@pytest.mark.parametrize("backend", ["ext", "python"])
@pytest.mark.parametrize("dynamic", ["none", "true"])
def test_compile_with_changing_shapes_every_method_fresh_process(backend, dynamic):
    if backend == "ext" and not HAVE_EXT:
        pytest.skip("extension unavailable")
    run_compile_script(backend, "aot_eager", dynamic, METHODS)


@pytest.mark.parametrize("backend", ["ext", "python"])
def test_compile_inductor_with_changing_shapes_fresh_process(backend):
    if backend == "ext" and not HAVE_EXT:
        pytest.skip("extension unavailable")
    run_compile_script(backend, "inductor", "none", ["ctpo"])


# -----------------------------------------------------------------------------
# Inputs as TRL and verl pass them: (B, 1) advantages are one advantage per row


def small_batch(B=4, T=9, seed=5, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    logp = (-0.5 - 0.3 * torch.rand(B, T, generator=g, dtype=dtype)).to(dtype)
    old = (logp + 0.1 * torch.randn(B, T, generator=g, dtype=dtype)).clamp(max=0)
    mask = torch.rand(B, T, generator=g) > 0.2
    mask[-1] = False
    return logp, old, torch.randn(B, generator=g, dtype=dtype), mask


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("backend", backends())
def test_advantages_of_shape_b1_are_one_per_row(method, backend):
    logp, old, adv, mask = small_batch()
    for agg in ctpo.AGGS:
        got, want = [], []
        for a, out in ((adv[:, None], got), (adv, want)):
            lp = logp.clone().requires_grad_()
            loss, m = call(lp, old, a, mask, method=method, agg=agg, backend=backend)
            loss.backward()
            out += [loss.detach(), lp.grad] + [v for v in m.values() if torch.is_tensor(v)]
        for x, y in zip(got, want):
            assert torch.equal(x, y), (agg, x, y)
    for bad in ((4, 2), (1, 4), (4, 1, 1), (3, 1)):
        with pytest.raises(ValueError, match=r"advantages: expected shape \(4,\), \(4, 1\) or \(4, 9\)"):
            call(logp, old, torch.zeros(bad, dtype=logp.dtype), mask, method=method, backend=backend)


# -----------------------------------------------------------------------------
# Probabilities or logits passed as log-probabilities are an error naming the input and its largest value


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_probabilities_or_logits_are_not_log_probs(method, backend, dtype):
    logp, old, adv, mask = small_batch(dtype=dtype)
    i, j = 1, int(mask[1].nonzero()[0])
    for name in ("logp", "old_logp"):
        for x in ((logp if name == "logp" else old).exp(), 3.0 + torch.zeros_like(logp)):  # probabilities, logits
            args = dict(logp=logp, old_logp=old)
            args[name] = x
            largest = x.float()[mask].max().item()
            with pytest.raises(ValueError, match=rf"{name}: expected log-probabilities .* largest value of {largest:.6g}"):
                call(args["logp"], args["old_logp"], adv, mask, method=method, backend=backend)
        # one value above the margin at one mask=1 position is enough; at a mask=0 position it is ignored
        args = dict(logp=logp.clone(), old_logp=old.clone())
        args[name][i, j] = 0.5
        with pytest.raises(ValueError, match=rf"{name}: .* largest value of 0.5\b"):
            call(args["logp"], args["old_logp"], adv, mask, method=method, backend=backend)
        args[name][i, j] = 1e-7 if name == "logp" else 0.004  # a rounding residue above 0: accepted
        args[name][~mask] = 5.0  # junk padding: allowed, as before
        loss, _ = call(args["logp"], args["old_logp"], adv, mask, method=method, backend=backend)
        assert torch.isfinite(loss)


# -----------------------------------------------------------------------------
# A shape error names only the wrong input


@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("name", ["old_logp", "mask", "advantages", "rollout_is_weights", "ref_logp"])
def test_shape_error_names_only_the_wrong_input(backend, name):
    logp, old, adv, mask = small_batch()
    args = dict(old_logp=old, mask=mask, advantages=adv, rollout_is_weights=torch.ones_like(logp), ref_logp=logp)
    args[name] = args[name][:, :-1] if args[name].dim() == 2 else args[name][:-1]
    others = [n for n in ("old_logp", "mask", "advantages", "rollout_is_weights", "ref_logp") if n != name]  # logp: the reference
    with pytest.raises(ValueError) as e:
        call(logp, args["old_logp"], args["advantages"], args["mask"], backend=backend, beta=0.1,
             ref_logp=args["ref_logp"], rollout_is_weights=args["rollout_is_weights"])  # fmt: skip
    msg = str(e.value)
    assert msg.startswith(f"{name}: expected"), msg
    assert not any(re.search(rf"(?<![a-z_]){n}\b", msg) for n in others), msg
