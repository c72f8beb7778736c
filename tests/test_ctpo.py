"""Tests of ctpo.py against independent computation: a scalar re-derivation of the paper's loss in
plain Python floats, literal hand-computed numbers, float64 gradcheck, limits, and invariances."""

import math

import pytest
import torch

import ctpo

# -----------------------------------------------------------------------------
# An independent scalar reference: the loss exactly as written in the paper notes (max/min form),
# one token at a time, in Python floats. Shares no code with ctpo.py.

RATIO_CLIP = dict(lo=math.log(0.8), hi=math.log(1.2), c=math.log(3.0))
PRESETS = {  # method: (ratio, clip family, extra)
    "grpo": ("token", "ratio", {}),
    "gspo": ("gspo", "ratio", {}),
    "sequence": ("sequence", "ratio", {}),
    "ctpo": ("cumulative", "adaptive", dict(cl=0.025, ch=0.05, cc=0.05, p=0.5)),
    "ctpo-fixed": ("cumulative", "adaptive", dict(cl=0.025, ch=0.05, cc=0.05, p=0.0)),
    "ctpo-geomean": ("geomean", "adaptive", dict(cl=0.025, ch=0.05, cc=0.05, p=-0.5)),
}


def ref_row(d, m, A, method, **kw):
    """Per-token (loss, d loss / d logp) of one row; d: deltas, m: 0/1 mask, A: per-token advantages."""
    ratio, clip, extra = PRESETS[method]
    extra = {**extra, **kw}
    d = [max(-20.0, min(20.0, x)) for x in d]
    H = sum(m)
    total = sum(x for x, mm in zip(d, m) if mm)
    n, S, out = 0, 0.0, []
    for x, mm, a in zip(d, m, A):
        if not mm:
            out.append((0.0, 0.0))
            continue
        n += 1
        S += x
        logw = {"token": x, "cumulative": S, "geomean": S / n, "sequence": total, "gspo": total / H}[ratio]
        capped, logw = logw > 10.0, min(logw, 10.0)  # overflow guard: log rho <= 10, no gradient above
        if clip == "ratio":
            lo, hi, c = RATIO_CLIP["lo"], RATIO_CLIP["hi"], RATIO_CLIP["c"]
            if ratio == "gspo":  # the GSPO paper's window [1 - 3e-4, 1 + 4e-4]
                lo, hi = math.log(1 - 3e-4), math.log(1 + 4e-4)
        else:
            s = float(n) ** extra["p"]
            lo, hi, c = -extra["cl"] * s, extra["ch"] * s, extra["cc"] * s
        w = math.exp(logw)
        loss = max(-a * w, -a * math.exp(min(max(logw, lo), hi)))
        if a < 0:
            loss = min(loss, -a * math.exp(c))
        clipped = capped or (a > 0 and logw > hi) or (a < 0 and logw < lo) or (a < 0 and logw > c)
        out.append((loss, 0.0 if clipped else -a * w))
    return out


def ref_loss(delta, mask, adv, method, **kw):
    """Token-mean loss and its gradient w.r.t. logp, from ref_row. Tensors in, floats out."""
    B, T = delta.shape
    adv = adv[:, None].expand(B, T) if adv.dim() == 1 else adv
    rows = [ref_row(delta[i].tolist(), mask[i].int().tolist(), adv[i].tolist(), method, **kw) for i in range(B)]
    N = max(int(mask.sum()), 1)
    loss = sum(l for row in rows for l, _ in row) / N
    grad = torch.tensor([[g / N for _, g in row] for row in rows], dtype=torch.float64)
    return loss, grad


def run(delta, mask, adv, method, exact=False, **kw):
    # log-probs are <= 0. exact=True: one of logp, old_logp is 0 and the other +-delta, so that logp - old_logp is
    # delta bit for bit
    old = torch.randn(delta.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) - 6
    old = (-delta).clamp(max=0) if exact else old
    logp = (delta.clamp(max=0) if exact else old + delta).requires_grad_(True)
    loss, metrics = ctpo.policy_loss(logp, old, adv, mask, method=method, **kw)
    loss.backward()
    return loss.item(), logp.grad, metrics


# a (4, 6) batch with a hole inside a response, an all-masked row, A < 0, a T=1-like short row
DELTA = torch.tensor(
    [
        [0.01, -0.02, 0.03, 0.5, -0.04, 0.02],
        [0.3, 0.1, -0.2, 0.1, 0.05, -0.6],
        [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],
        [-0.01, 0.9, 0.0, 0.0, 0.0, 0.0],
    ],
    dtype=torch.float64,
)
MASK = torch.tensor([[1, 1, 0, 1, 1, 0], [1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0]], dtype=torch.bool)
ADV = torch.tensor([1.0, -1.5, 2.0, -0.5], dtype=torch.float64)


@pytest.mark.parametrize("method", list(PRESETS))
@pytest.mark.parametrize("adv_shape", ["row", "token"])
def test_matches_scalar_reference(method, adv_shape):
    adv = ADV if adv_shape == "row" else ADV[:, None] * torch.linspace(1.0, -1.0, 6, dtype=torch.float64)
    loss, grad, _ = run(DELTA, MASK, adv, method)
    ref, ref_grad = ref_loss(DELTA, MASK, adv, method)
    assert loss == pytest.approx(ref, abs=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=0, atol=1e-12)
    assert torch.all(grad[~MASK] == 0)  # the hole, the padding and the all-masked row get nothing


def test_hand_computed_ctpo_numbers():
    # One response, 4 tokens, hole at index 2. t = 1, 2, -, 3. sqrt(t) = 1, 1.41421, -, 1.73205.
    # A = +1: window upper = 0.05 sqrt(t) = 0.05, 0.070711, -, 0.086603.
    # log rho = 0.04, 0.04 + 0.02 = 0.06, -, 0.06 + 0.05 = 0.11 (> 0.0866: clipped high).
    d = torch.tensor([[0.04, 0.02, 7.0, 0.05]], dtype=torch.float64)
    m = torch.tensor([[1, 1, 0, 1]])
    loss, grad, met = run(d, m, torch.tensor([1.0], dtype=torch.float64), "ctpo")
    e = math.exp
    assert loss == pytest.approx(-(e(0.04) + e(0.06) + e(0.05 * math.sqrt(3))) / 3, abs=1e-12)
    torch.testing.assert_close(grad, torch.tensor([[-e(0.04) / 3, -e(0.06) / 3, 0.0, 0.0]], dtype=torch.float64), rtol=0, atol=1e-12)
    assert met["clip_frac_high"].item() == pytest.approx(1 / 3) and met["clip_frac_low"].item() == 0
    assert ctpo.response_position(m).tolist() == [[1, 2, 2, 3]]

    # A = -1: lower = -0.025 sqrt(t); dual cap = 0.05 sqrt(t). log rho = -0.03 (< -0.025: clipped low),
    # then -0.03 + 0.02 = -0.01 (inside), then -0.01 + 0.2 = 0.19 (> 0.0866: dual-clipped, loss = e^0.0866).
    d = torch.tensor([[-0.03, 0.02, 0.0, 0.2]], dtype=torch.float64)
    loss, grad, met = run(d, m, torch.tensor([-1.0], dtype=torch.float64), "ctpo")
    assert loss == pytest.approx((e(-0.025) + e(-0.01) + e(0.05 * math.sqrt(3))) / 3, abs=1e-12)
    torch.testing.assert_close(grad, torch.tensor([[0.0, e(-0.01) / 3, 0.0, 0.0]], dtype=torch.float64), rtol=0, atol=1e-12)
    assert met["clip_frac_low"].item() == pytest.approx(1 / 3) and met["clip_frac_dual"].item() == pytest.approx(1 / 3)
    assert met["clip_frac_high"].item() == 0


def test_T_equals_one_every_method_is_ppo():
    # With one token all ratios are r_1; GRPO's window [0.8, 1.2] and CTPO's [e^-0.025, e^0.05] at t = 1.
    d = torch.tensor([[0.1], [0.1], [-0.1]], dtype=torch.float64)
    m = torch.ones(3, 1, dtype=torch.bool)
    adv = torch.tensor([1.0, -1.0, -1.0], dtype=torch.float64)
    e = math.exp
    _, grad, _ = run(d, m, adv, "grpo")
    torch.testing.assert_close(grad[:, 0], torch.tensor([-e(0.1), e(0.1), e(-0.1)], dtype=torch.float64) / 3)
    loss, grad, _ = run(d, m, adv, "ctpo")  # A>0: clipped high; A<0, rho above the dual cap; A<0 below lower
    assert loss == pytest.approx((-e(0.05) + e(0.05) + e(-0.025)) / 3, abs=1e-12)
    assert torch.all(grad == 0)
    for same, like, kw in (
        ("gspo", "grpo", dict(eps_low=0.2, eps_high=0.2)),  # GSPO's own window is narrower
        ("sequence", "grpo", {}),
        ("ctpo-fixed", "ctpo", {}),
        ("ctpo-geomean", "ctpo", {}),
    ):
        assert run(d, m, adv, same, **kw)[0] == pytest.approx(run(d, m, adv, like)[0], abs=1e-15)


def test_token_exactly_on_bound_is_not_clipped():
    # p = 0 makes the bounds exact binary floats: upper = 0.5, lower = -0.25, dual = 0.5.
    kw = dict(clip_low=0.25, clip_high=0.5, clip_c=0.5)
    m = torch.ones(1, 1, dtype=torch.bool)
    for d, a in ((0.5, 1.0), (-0.25, -1.0), (0.5, -1.0)):
        loss, grad, met = run(torch.tensor([[d]], dtype=torch.float64), m, torch.tensor([a], dtype=torch.float64), "ctpo-fixed", True, **kw)
        assert loss == pytest.approx(-a * math.exp(d), abs=1e-15)
        assert grad.item() == pytest.approx(-a * math.exp(d), abs=1e-15)  # full gradient, not half
        assert met["clip_frac"].item() == 0
    # the PPO window: log(1 + 0.2) is where the ratio window ends
    up = math.log1p(0.2)
    loss, grad, met = run(torch.tensor([[up]], dtype=torch.float64), m, torch.tensor([1.0], dtype=torch.float64), "grpo", True)
    assert grad.item() == pytest.approx(-1.2, abs=1e-14) and met["clip_frac"].item() == 0
    loss, grad, met = run(torch.tensor([[up + 1e-9]], dtype=torch.float64), m, torch.tensor([1.0], dtype=torch.float64), "grpo", True)
    assert grad.item() == 0 and met["clip_frac_high"].item() == 1


def test_ratio_functions_by_name():
    delta = torch.tensor([[0.1, 0.2, 0.3, 0.4]], dtype=torch.float64)
    mask = torch.tensor([[True, True, False, True]])
    want = {
        "token": [0.1, 0.2, 0.0, 0.4],
        "sequence": [0.7, 0.7, 0.0, 0.7],
        "gspo": [0.7 / 3, 0.7 / 3, 0.0, 0.7 / 3],
        "cumulative": [0.1, 0.3, 0.0, 0.7],
        "cumulative-geomean": [0.1, 0.15, 0.0, 0.7 / 3],
    }
    for name, fn in ctpo.RATIOS.items():
        torch.testing.assert_close(fn(delta, mask), torch.tensor([want[name]], dtype=torch.float64))


def test_weight_statistics():
    # token ratio, weights exactly 1..10 (one token masked out): nearest-rank quantiles
    delta = torch.log(torch.arange(1, 12, dtype=torch.float64))[None]  # (1, 11)
    mask = torch.ones(1, 11, dtype=torch.bool)
    mask[0, 10] = False
    _, _, met = run(delta, mask, torch.ones(1, dtype=torch.float64), "grpo", True)
    got = [met[k].item() for k in ("ratio_mean", "ratio_min", "ratio_max", "ratio_q10", "ratio_q50", "ratio_q90")]
    assert got == pytest.approx([5.5, 1.0, 10.0, 1.0, 5.0, 9.0], rel=1e-6)


def test_weight_quantiles_of_a_large_batch_come_from_a_subsample():
    g = torch.Generator().manual_seed(0)
    delta = 0.3 * torch.randn(40, 2048, generator=g)  # 81,920 tokens: beyond the 2^16 exact limit
    mask = torch.rand(40, 2048, generator=g) > 0.2
    _, met = ctpo.policy_loss(delta - 5, torch.full_like(delta, -5.0), torch.ones(40), mask, method="grpo")
    w = delta[mask].exp()
    for q in (10, 50, 90):
        assert met[f"ratio_q{q}"].item() == pytest.approx(torch.quantile(w, q / 100).item(), rel=0.02)
    assert met["ratio_max"].item() == pytest.approx(w.max().item()) and met["ratio_min"].item() == pytest.approx(w.min().item())


def test_all_masked_batch_is_zero_not_nan():
    d = torch.randn(2, 5, dtype=torch.float64)
    for method in PRESETS:
        loss, grad, met = run(d, torch.zeros(2, 5, dtype=torch.bool), torch.ones(2, dtype=torch.float64), method)
        assert loss == 0.0 and torch.all(grad == 0)
        assert met["clip_frac"].item() == 0 and met["ratio_mean"].item() == 1.0


# -----------------------------------------------------------------------------
# float64 gradcheck: finite differences see the value of the loss, so they check the form whose
# gradient is the derivative of the value (stop_gradient=False); the stop-gradient form is checked
# against the scalar reference above. For the token ratio the two forms coincide.


@pytest.mark.parametrize("method", list(PRESETS))
@pytest.mark.parametrize("agg", ctpo.AGGS)
def test_gradcheck(method, agg):
    g = torch.Generator().manual_seed(0)
    old = torch.randn(3, 7, dtype=torch.float64, generator=g) - 6
    logp = (old + 0.05 * torch.randn(3, 7, dtype=torch.float64, generator=g)).requires_grad_(True)
    mask = torch.rand(3, 7, generator=g) > 0.25
    adv = torch.randn(3, dtype=torch.float64, generator=g)
    f = lambda x: ctpo.policy_loss(x, old, adv, mask, method=method, agg=agg, stop_gradient=False)[0]
    assert torch.autograd.gradcheck(f, (logp,), eps=1e-7, atol=1e-8)
    # for the token ratio the stop-gradient form is the plain function
    f_sg = lambda x: ctpo.policy_loss(x, old, adv, mask, method=method, agg=agg, ratio="token")[0]
    assert torch.autograd.gradcheck(f_sg, (logp,), eps=1e-7, atol=1e-8)


def test_stop_gradient_changes_only_the_gradient():
    g = torch.Generator().manual_seed(3)
    old = torch.randn(2, 9, dtype=torch.float64, generator=g) - 6
    delta = 0.02 * torch.randn(2, 9, dtype=torch.float64, generator=g)
    mask, adv = torch.ones(2, 9, dtype=torch.bool), torch.tensor([1.0, -1.0], dtype=torch.float64)
    out = []
    for sg in (True, False):
        logp = (old + delta).requires_grad_(True)
        loss, _ = ctpo.policy_loss(logp, old, adv, mask, method="ctpo", clip_low=9.0, clip_high=9.0, clip_c=9.0, stop_gradient=sg)
        loss.backward()
        out.append((loss.item(), logp.grad))
    assert out[0][0] == pytest.approx(out[1][0], abs=1e-14)
    # sg: -A rho_t / N. no-sg: token t' also collects the weights of every later token: -A sum_{t>=t'} rho_t / N
    rho = delta.cumsum(-1).exp()
    torch.testing.assert_close(out[0][1], -adv[:, None] * rho / 18)
    torch.testing.assert_close(out[1][1], -adv[:, None] * rho.flip(-1).cumsum(-1).flip(-1) / 18)


# -----------------------------------------------------------------------------
# Limits


@pytest.mark.parametrize("method", list(PRESETS))
def test_on_policy_limit_is_policy_gradient(method):
    g = torch.Generator().manual_seed(0)
    mask = torch.rand(4, 10, generator=g) > 0.3
    adv = torch.randn(4, dtype=torch.float64, generator=g)
    loss, grad, met = run(torch.zeros(4, 10, dtype=torch.float64), mask, adv, method)
    N = mask.sum().item()
    assert loss == pytest.approx(-(adv[:, None] * mask).sum().item() / N, abs=1e-12)
    torch.testing.assert_close(grad, torch.where(mask, -adv[:, None] / N, 0.0))
    assert met["clip_frac"].item() == 0 and met["ratio_min"].item() == met["ratio_max"].item() == 1.0


@pytest.mark.parametrize("method", ["ctpo", "ctpo-fixed"])
def test_huge_window_means_no_clipping(method):
    g = torch.Generator().manual_seed(0)
    delta = 0.3 * torch.randn(3, 50, dtype=torch.float64, generator=g)
    mask = torch.ones(3, 50, dtype=torch.bool)
    adv = torch.tensor([1.0, -1.0, 0.5], dtype=torch.float64)
    loss, grad, met = run(delta, mask, adv, method, clip_low=1e6, clip_high=1e6, clip_c=1e6)
    rho = delta.cumsum(-1).clamp(max=10).exp()  # unclipped prefix products
    assert loss == pytest.approx((-adv[:, None] * rho).mean().item(), rel=1e-12)
    torch.testing.assert_close(grad, torch.where(delta.cumsum(-1) < 10, -adv[:, None] * rho / 150, 0.0))
    assert met["clip_frac"].item() == 0


def test_presets_and_overrides():
    cfg = ctpo.method_config("ctpo")
    assert (cfg["clip_low"], cfg["clip_high"], cfg["clip_c"], cfg["power"]) == (0.025, 0.05, 0.05, 0.5)
    assert (cfg["delta_max"], cfg["log_w_max"], cfg["stop_gradient"]) == (20.0, 10.0, True)
    assert ctpo.method_config("ctpo-fixed")["power"] == 0.0
    assert ctpo.method_config("ctpo-geomean")["geomean"] is True
    assert ctpo.method_config("grpo", eps_high=0.28)["eps_high"] == 0.28


# -----------------------------------------------------------------------------
# Aggregation: micro-batches with the global count give the full-batch gradient


@pytest.mark.parametrize("agg", ctpo.AGGS)
@pytest.mark.parametrize("method", ["ctpo", "grpo", "gspo"])
def test_microbatch_invariance(agg, method):
    g = torch.Generator().manual_seed(0)
    B, T = 8, 12
    old = torch.randn(B, T, dtype=torch.float64, generator=g) - 6
    logp0 = old + 0.1 * torch.randn(B, T, dtype=torch.float64, generator=g)
    lengths = torch.tensor([12, 3, 0, 7, 1, 12, 5, 9])
    mask = torch.arange(T)[None, :] < lengths[:, None]
    adv = torch.randn(B, dtype=torch.float64, generator=g)

    logp = logp0.clone().requires_grad_(True)
    full, _ = ctpo.policy_loss(logp, old, adv, mask, method=method, agg=agg)
    full.backward()
    g_full = logp.grad.clone()

    num_tokens, num_seqs = int(mask.sum()), int((mask.sum(-1) > 0).sum())
    logp = logp0.clone().requires_grad_(True)
    total = 0.0
    for idx in (slice(0, 3), slice(3, 4), slice(4, 8)):  # uneven micro-batches
        counts = dict(num_tokens=num_tokens, num_seqs=num_seqs)
        loss, _ = ctpo.policy_loss(logp[idx], old[idx], adv[idx], mask[idx], method=method, agg=agg, **counts)
        loss.backward()
        total += loss.item()
    assert total == pytest.approx(full.item(), abs=1e-12)
    torch.testing.assert_close(logp.grad, g_full, rtol=0, atol=1e-14)


def test_aggregation_modes_by_hand():
    loss_tok = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [0, 0, 0]], dtype=torch.bool)
    assert ctpo.aggregate(loss_tok, mask, "token-mean").item() == pytest.approx(10 / 4)
    assert ctpo.aggregate(loss_tok, mask, "seq-mean-token-mean").item() == pytest.approx((6 / 3 + 4 / 1) / 2)
    assert ctpo.aggregate(loss_tok, mask, "seq-mean-token-sum").item() == pytest.approx(10 / 2)
    assert ctpo.aggregate(loss_tok, mask, "token-mean", num_tokens=8).item() == pytest.approx(10 / 8)


# -----------------------------------------------------------------------------
# Robustness: no NaN/inf for extreme log-ratios and long responses


@pytest.mark.parametrize("method", list(PRESETS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_extreme_inputs_stay_finite(method, dtype):
    g = torch.Generator().manual_seed(0)
    B, T = 4, 8192
    old = (-60 - 5 * torch.rand(B, T, generator=g)).to(dtype)  # log-probs stay <= 0 after + delta
    delta = 50 * (2 * torch.rand(B, T, generator=g) - 1)  # |delta| up to 50
    delta[1] = 50.0  # a row whose prefix sum reaches 409600
    delta[2] = -50.0
    logp = (old.float() + delta).to(dtype).requires_grad_(True)
    mask = torch.rand(B, T, generator=g) > 0.1
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0])
    for sg in (True, False):
        loss, met = ctpo.policy_loss(logp, old, adv, mask, method=method, stop_gradient=sg)
        (grad,) = torch.autograd.grad(loss, logp)
        assert torch.isfinite(loss) and torch.isfinite(grad.float()).all()
        assert all(torch.isfinite(v.float()).all() for v in met.values() if torch.is_tensor(v))


def test_bfloat16_inputs_are_computed_in_float32():
    g = torch.Generator().manual_seed(0)
    old = torch.randn(4, 300, generator=g) - 6
    logp = old + 0.01 * torch.randn(4, 300, generator=g)
    mask, adv = torch.ones(4, 300, dtype=torch.bool), torch.randn(4, generator=g)
    loss16, _ = ctpo.policy_loss(logp.bfloat16(), old.bfloat16(), adv, mask)
    loss32, _ = ctpo.policy_loss(logp.bfloat16().float(), old.bfloat16().float(), adv, mask)
    assert loss16.dtype == torch.float32 and loss16.item() == loss32.item()


# -----------------------------------------------------------------------------
# Clear errors


def _ok():
    return torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2), torch.ones(2, 3, dtype=torch.bool)


@pytest.mark.parametrize(
    "change, exc, name",
    [
        (lambda a: (a[0][:, :2], *a[1:]), ValueError, "old_logp"),
        (lambda a: (a[0], a[1][:1], *a[2:]), ValueError, "old_logp"),
        (lambda a: (a[0][0], a[1][0], a[2], a[3][0]), ValueError, "logp"),
        (lambda a: (*a[:2], torch.zeros(3), a[3]), ValueError, "advantages"),
        (lambda a: (a[0].long(), *a[1:]), TypeError, "logp"),
        (lambda a: (a[0], a[1].int(), *a[2:]), TypeError, "old_logp"),
        (lambda a: (*a[:2], torch.zeros(2, dtype=torch.long), a[3]), TypeError, "advantages"),
        (lambda a: (*a[:3], torch.full((2, 3), 2)), ValueError, "mask"),
        (lambda a: (a[0], a[1].to("meta"), *a[2:]), ValueError, "old_logp"),
        (lambda a: (*a[:2], a[2].to("meta"), a[3]), ValueError, "advantages"),
        (lambda a: (a[0], [0.0], *a[2:]), TypeError, "old_logp"),
        (lambda a: (torch.full((2, 3), float("nan")), *a[1:]), ValueError, "logp"),
    ],
)
def test_bad_inputs_name_the_argument(change, exc, name):
    with pytest.raises(exc, match=name):
        ctpo.policy_loss(*change(_ok()))


@pytest.mark.parametrize("backend", ["python", "ext"])
@pytest.mark.parametrize("name", ["logp", "old_logp", "advantages", "ref_logp", "rollout_is_weights"])
def test_float8_inputs_are_type_errors_naming_the_argument(name, backend):
    # float8 is a floating dtype to torch, but neither backend computes with it: a TypeError naming the input
    args = dict(zip(("logp", "old_logp", "advantages", "mask"), _ok()), ref_logp=torch.zeros(2, 3), beta=0.1,
                rollout_is_weights=torch.ones(2, 3))  # fmt: skip
    args[name] = args[name].to(torch.float8_e4m3fn)
    with pytest.raises(TypeError, match=rf"{name}: expected a floating dtype \(float16/bfloat16/float32/float64\)"):
        ctpo.policy_loss(**args, backend=backend)


@pytest.mark.parametrize("backend", ["python", "ext"])
@pytest.mark.parametrize("kw, name", [({"method": ["ctpo"]}, "method"), ({"ratio": ["token"]}, "ratio"), ({"clip": {}}, "clip")])
def test_unhashable_names_are_errors_naming_the_argument(kw, name, backend):
    # a list or dict where a name is expected: the same ValueError as an unknown name, not a bare "unhashable type"
    with pytest.raises(ValueError, match=name):
        ctpo.policy_loss(*_ok(), backend=backend, **kw)
    with pytest.raises(ValueError, match=name):  # a second call: the method-config cache must not change the answer
        ctpo.policy_loss(*_ok(), backend=backend, **kw)


def test_bad_names_are_errors():
    args = _ok()
    with pytest.raises(ValueError, match="method"):
        ctpo.policy_loss(*args, method="ppo2")
    with pytest.raises(ValueError, match="agg"):
        ctpo.policy_loss(*args, agg="mean")
    with pytest.raises(ValueError, match="backend"):
        ctpo.policy_loss(*args, backend="triton")
    with pytest.raises(TypeError, match="clip_hgh"):
        ctpo.policy_loss(*args, clip_hgh=0.1)
    with pytest.raises(ValueError, match="clip_c"):
        ctpo.policy_loss(*args, clip_c=-1.0)


def test_ext_backend_on_a_form_without_kernel_says_why():
    # every method has a kernel; the no-stop-gradient teaching form does not
    with pytest.raises(RuntimeError, match="stop-gradient form only"):
        ctpo.policy_loss(*_ok(), method="grpo", backend="ext", stop_gradient=False)


# -----------------------------------------------------------------------------
# Model, sampling, log-probs, advantages


def _model(seed=0, **kw):
    torch.manual_seed(seed)
    cfg = ctpo.GPTConfig(vocab_size=12, block_size=48, n_layer=2, n_head=2, n_embd=32, **kw)
    return ctpo.GPT(cfg).eval()


def test_kv_cache_sampling_logprobs_match_full_forward():
    model = _model()
    prompts = torch.randint(0, 10, (16, 7), generator=torch.Generator().manual_seed(0))
    ro = ctpo.sample(model, prompts, 40, eos_id=10, pad_id=11, temperature=0.9, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        recomputed = ctpo.token_logprobs(model, prompts, ro.responses, ro.mask, temperature=0.9)
    assert ro.mask.any(dim=1).all() and (ro.mask.sum(1) > 5).any()
    assert (recomputed - ro.logp).abs().max().item() <= 1e-5
    # after the first EOS: masked and padded; the EOS itself is in the mask
    for row, m in zip(ro.responses, ro.mask):
        n = int(m.sum())
        assert m[:n].all() and not m[n:].any()
        if n < ro.responses.size(1):
            assert row[n - 1] == 10 and (row[n:] == 11).all()


def test_token_logprobs_alignment_against_prefix_by_prefix_forward():
    model = _model(1)
    g = torch.Generator().manual_seed(0)
    prompts = torch.randint(0, 10, (3, 4), generator=g)
    responses = torch.randint(0, 11, (3, 5), generator=g)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 1, 0]], dtype=torch.bool)
    with torch.no_grad():
        lp = ctpo.token_logprobs(model, prompts, responses, mask)
        for t in range(5):  # score token t from the logits of the prefix prompt + responses[:t]
            prefix = torch.cat([prompts, responses[:, :t]], dim=1)
            want = torch.log_softmax(model(prefix)[:, -1], -1).gather(1, responses[:, t : t + 1]).squeeze(1)
            torch.testing.assert_close(lp[:, t], torch.where(mask[:, t], want, 0.0), atol=1e-5, rtol=0)


def test_pad_equal_to_eos_keeps_eos_in_the_loss():
    model = _model(2)
    eos = pad = 10
    prompts = torch.randint(0, 10, (32, 5), generator=torch.Generator().manual_seed(0))
    ro = ctpo.sample(model, prompts, 12, eos_id=eos, pad_id=pad, generator=torch.Generator().manual_seed(0))
    ended = (ro.responses == eos).any(1)
    assert ended.any()
    for row, m, lp in zip(ro.responses, ro.mask, ro.logp):
        hits = (row == eos).nonzero()
        if len(hits):
            first = int(hits[0])
            assert m[first] and lp[first] < 0  # the EOS is scored
            assert not m[first + 1 :].any() and (lp[first + 1 :] == 0).all()  # the pad copies are not


def test_sampling_is_reproducible_and_top_k_restricts():
    model = _model(3)
    prompts = torch.randint(0, 10, (8, 5), generator=torch.Generator().manual_seed(0))
    a = ctpo.sample(model, prompts, 10, 10, 11, generator=torch.Generator().manual_seed(5))
    b = ctpo.sample(model, prompts, 10, 10, 11, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a.responses, b.responses)
    greedy = ctpo.sample(model, prompts, 10, 10, 11, top_k=1, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        logits = model(torch.cat([prompts, greedy.responses], 1))[:, prompts.size(1) - 1 : -1]
    assert torch.equal(torch.where(greedy.mask, logits.argmax(-1), 11), greedy.responses)


def test_group_advantages():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.5, 0.5, 0.5, 0.5])
    a = ctpo.group_advantages(r, 4)
    s = math.sqrt(1 / 3)  # unbiased std of [1, 0, 0, 1]
    torch.testing.assert_close(a, torch.tensor([0.5 / s, -0.5 / s, -0.5 / s, 0.5 / s, 0, 0, 0, 0]))
    torch.testing.assert_close(ctpo.group_advantages(r, 4, scale=False), torch.tensor([0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0]))
    assert torch.isfinite(ctpo.group_advantages(torch.ones(6), 3)).all()
    with pytest.raises(ValueError, match="rewards"):
        ctpo.group_advantages(torch.ones(7), 4)


def test_kl_penalty_k3():
    g = torch.Generator().manual_seed(0)
    old = torch.randn(2, 5, generator=g) - 6
    ref = old + 0.3 * torch.randn(2, 5, generator=g)
    mask, adv = torch.ones(2, 5, dtype=torch.bool), torch.zeros(2)
    loss, met = ctpo.policy_loss(old, old, adv, mask, ref_logp=ref, beta=0.1)
    d = ref - old
    assert loss.item() == pytest.approx(0.1 * (d.exp() - d - 1).mean().item(), rel=1e-6)
    assert met["kl"].item() >= 0
