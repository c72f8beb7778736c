"""ctpo.policy_loss(backend="ext") against backend="python", for every method, aggregation, advantage shape and dtype.

The fused op (torch.ops.ctpo.policy_loss) returns the aggregated loss and the metrics; the Python backend is the
reference. float64: equal to 1e-12. float32 / bfloat16: no worse than the Python backend
against a float64 computation on the same inputs. Clip counts: identical. Every CPU row kernel of the build
(AVX-512 where compiled in, at::vec, scalar) is checked.
"""

import math
import warnings

import pytest
import torch

import ctpo
import ctpo_ext
from bench import OpCounter  # the counter that `bench.py --breakdown` prints

METHODS = list(ctpo.METHODS)
COUNTS = ("n_tokens", "n_clip_high", "n_clip_low", "n_clip_dual")


def make(B, T, seed=0, scale=0.1, holes=True, adv_shape="row", weights=False):
    """float64 inputs: variable lengths, tool-output holes, a full row, an empty row, a zero advantage."""
    g = torch.Generator().manual_seed(seed)
    logp = (-1.0 + scale * torch.randn(B, T, generator=g, dtype=torch.float64)).clamp(max=0)  # log-probs: <= 0
    old = (logp + scale * torch.randn(B, T, generator=g, dtype=torch.float64)).clamp(max=0)
    lens = torch.randint(0, T + 1, (B,), generator=g)
    mask = torch.arange(T)[None, :] < lens[:, None]
    if holes:
        mask &= torch.rand(B, T, generator=g) > 0.15
    if B > 1:
        mask[0] = True
        mask[-1] = False
    adv = torch.randn(B, generator=g, dtype=torch.float64) if adv_shape == "row" else torch.randn(B, T, generator=g, dtype=torch.float64)
    if B > 2:
        adv[1] = 0.0
    w = 2 * torch.rand(B, T, generator=g, dtype=torch.float64) if weights else None
    return logp, old, adv, mask, w


def run(backend, logp, old, adv, mask, w=None, **kw):
    lp = logp.detach().clone().requires_grad_()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback warning: the kernel must cover every preset
        loss, m = ctpo.policy_loss(lp, old, adv, mask, backend=backend, rollout_is_weights=w, **kw)
    loss.backward()
    assert m["backend"] == backend
    return loss.detach(), lp.grad, m


def check_metrics(m_p, m_e, tol):
    assert list(m_p) == list(m_e)
    for k in COUNTS:
        assert torch.equal(m_p[k], m_e[k]), (k, m_p[k], m_e[k])  # identical clip counts
    same = ("clip_frac", "clip_frac_high", "clip_frac_low", "clip_frac_dual", "ratio_q10", "ratio_q50", "ratio_q90")
    same += ("ratio_min", "ratio_max")
    for k in same:
        assert torch.equal(m_p[k], m_e[k]), (k, m_p[k], m_e[k])  # from the same counts / the same log w values
    torch.testing.assert_close(m_e["ratio_mean"], m_p["ratio_mean"], **tol)  # summation order differs
    assert torch.equal(m_p["clipped"], m_e["clipped"])


# -----------------------------------------------------------------------------
# Parity: every preset x agg x advantage shape, float64 exact


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("adv_shape", ["row", "token"])
@pytest.mark.parametrize("weights", [False, True], ids=["", "rollout_is_weights"])
def test_parity_float64_every_agg(cpu_path, method, adv_shape, weights):
    shapes = ((7, 1, 0), (5, 37, 1), (6, 333, 2), (3, 1000, 3)) if cpu_path == "auto" else ((5, 37, 1), (6, 333, 2))
    for B, T, seed in shapes:
        logp, old, adv, mask, w = make(B, T, seed=seed, adv_shape=adv_shape, weights=weights)
        for agg in ctpo.AGGS:
            l_p, g_p, m_p = run("python", logp, old, adv, mask, w, method=method, agg=agg)
            l_e, g_e, m_e = run("ext", logp, old, adv, mask, w, method=method, agg=agg)
            torch.testing.assert_close(l_e, l_p, rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(g_e, g_p, rtol=1e-12, atol=1e-15)
            assert torch.equal(g_e == 0, g_p == 0)  # clipped / masked / A = 0 tokens get exactly no gradient
            torch.testing.assert_close(m_e["log_w"], m_p["log_w"], rtol=1e-12, atol=1e-12)
            check_metrics(m_p, m_e, dict(rtol=1e-6, atol=0))


@pytest.mark.parametrize("method", METHODS)
def test_parity_long_rows_t8192_and_knob_overrides(cpu_path, method):
    logp, old, adv, mask, w = make(3, 8192, seed=4, scale=0.05, holes=False, weights=True)
    mask[1, 1000:1300] = False  # a tool-output span inside the response
    overrides = ({}, {"clip": "ratio", "eps_low": 0.1, "eps_high": 0.3, "dual_c": 2.0}, {"clip": "adaptive", "power": 0.3})
    overrides += ({"log_w_max": 0.5},)
    for knobs in overrides:
        for dt in (torch.float64, torch.float32):
            args = (logp.to(dt), old.to(dt), adv.to(dt), mask, w.to(dt))
            l_p, g_p, m_p = run("python", *args, method=method, **knobs)
            l_e, g_e, m_e = run("ext", *args, method=method, **knobs)
            tol = dict(rtol=1e-12, atol=1e-12) if dt == torch.float64 else dict(rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(l_e, l_p, **tol)
            torch.testing.assert_close(g_e, g_p, **tol)
            if dt == torch.float64 or ctpo.method_config(method, **knobs)["ratio"] in ("token", "cumulative"):
                check_metrics(m_p, m_e, dict(rtol=1e-5, atol=0))  # float32 sequence / gspo: row totals summed in another order


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_low_precision_no_worse_than_python_against_float64(cpu_path, method, dtype):
    """On the same (rounded) inputs, against a float64 computation: per token (the gradient is -A w rw where it
    passes) the kernel's error is at most the Python backend's plus one float32 ulp (both round an exp with 1-ulp
    error, so two correct results can differ by that much); the aggregated loss adds a reduction error, which
    for the kernel (float64 row sums, one final rounding) is at most half an ulp: no more than Python's float32
    reduction (measured against the exact sum of the same float32 per-token losses) plus that half ulp."""
    logp, old, adv, mask, w = make(8, 2000, seed=9, scale=0.02, weights=True)
    logp, old, w = logp.to(dtype), old.to(dtype), w.to(dtype)
    cfg = ctpo.method_config(method)
    for agg in ("token-mean", "seq-mean-token-mean", "token-sum"):
        truth = run("python", logp.double(), old.double(), adv, mask, w.double(), method=method, agg=agg)
        py = run("python", logp, old, adv.float(), mask, w, method=method, agg=agg)
        got = run("ext", logp, old, adv.float(), mask, w, method=method, agg=agg)
        err_e = (got[1].double() - truth[1]).abs().max().item()
        err_p = (py[1].double() - truth[1]).abs().max().item()
        ulp = truth[1].abs().max().item() * 2**-23  # one float32 rounding of the largest value: exp's own 1-ulp noise
        assert err_e <= err_p + ulp, (agg, err_e, err_p)
        if dtype == torch.float32 and cfg["ratio"] in ("sequence", "gspo"):
            continue  # the row total: torch sums it in float32, the kernel in float64 (more accurate, other bits)
        tok = ctpo.token_losses(logp, old, adv.float()[:, None].expand_as(logp), mask, cfg)[0]
        tok = torch.where(mask, tok * w.float(), 0.0).double()  # the per-token float32 losses, summed exactly below
        exact = ctpo.aggregate(tok, mask, agg)
        half_ulp = exact.abs().item() * 2**-24
        assert abs(got[0].double().item() - exact.item()) <= abs(py[0].double().item() - exact.item()) + half_ulp, agg
        for k in COUNTS:
            assert torch.equal(py[2][k], got[2][k]), k


def test_empty_batches_and_fully_masked(ext):
    for method in METHODS:
        for B, T in ((0, 5), (3, 0), (0, 0), (4, 6)):
            logp = torch.zeros(B, T, requires_grad=True)
            mask = torch.zeros(B, T, dtype=torch.bool)
            for agg in ctpo.AGGS:
                loss, m = ctpo.policy_loss(logp, torch.zeros(B, T), torch.ones(B), mask, method=method, agg=agg, backend="ext")
                (g,) = torch.autograd.grad(loss, logp)
                assert loss.item() == 0 and g.shape == (B, T) and not g.any()
                assert m["n_tokens"].item() == 0 and m["ratio_mean"].item() == 1 and m["ratio_q50"].item() == 1
                assert m["ratio_min"].item() == 1 and m["ratio_max"].item() == 1 and m["clipped"].shape == (B, T)


@pytest.mark.parametrize("method", METHODS)
def test_micro_batches_sum_to_the_full_batch(ext, method):
    """With the global num_tokens / num_seqs, micro-batch losses (and gradients) sum to the full-batch ones."""
    logp, old, adv, mask, w = make(6, 50, seed=21, weights=True)
    n_tok, n_seq = int(mask.sum()), int((mask.sum(-1) > 0).sum())
    for agg in ctpo.AGGS:
        kw = dict(method=method, agg=agg, num_tokens=n_tok, num_seqs=n_seq, loss_scale_factor=50)
        full, g_full, _ = run("ext", logp, old, adv, mask, w, **kw)
        lp = logp.clone().requires_grad_()
        parts = (slice(0, 2), slice(2, 6))
        total = sum(ctpo.policy_loss(lp[s], old[s], adv[s], mask[s], backend="ext", rollout_is_weights=w[s], **kw)[0] for s in parts)
        total.backward()
        torch.testing.assert_close(total.detach(), full, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(lp.grad, g_full, rtol=1e-12, atol=1e-15)


# -----------------------------------------------------------------------------
# Values exactly on a bound: not clipped (full gradient); the next float beyond: clipped (no gradient)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("method", ["grpo", "sequence", "gspo", "ctpo-fixed"])
def test_values_exactly_on_each_bound(cpu_path, method, dtype):
    """One-token rows (every ratio is then delta itself) with delta exactly on the upper bound (A > 0), the lower
    bound and the dual cap (A < 0), and one float beyond each."""
    cfg = ctpo.method_config(method)
    if cfg["clip"] == "ratio":
        knobs = dict(eps_low=0.2, eps_high=0.25, dual_c=2.0)
        lo, hi, du = ctpo.ratio_clip_bounds(**knobs)
    else:
        knobs = dict(clip_low=0.25, clip_high=0.5, clip_c=0.75)
        lo, hi, du = -0.25, 0.5, 0.75
    b = torch.tensor([hi, lo, du], dtype=dtype)  # the bounds as the compute dtype holds them
    beyond = torch.stack([torch.nextafter(b[0], b[0] + 1), torch.nextafter(b[1], b[1] - 1), torch.nextafter(b[2], b[2] + 1)])
    delta = torch.cat([b, beyond])[:, None]  # (6, 1)
    adv = torch.tensor([1.0, -1.0, -1.0, 1.0, -1.0, -1.0], dtype=dtype)
    mask = torch.ones(6, 1, dtype=torch.bool)
    old = (-delta).clamp(max=0)  # one of logp, old_logp is 0: logp - old_logp is delta bit for bit, both <= 0
    logp = delta.clamp(max=0)
    l_p, g_p, m_p = run("python", logp, old, adv, mask, method=method, agg="token-sum", **knobs)
    l_e, g_e, m_e = run("ext", logp, old, adv, mask, method=method, agg="token-sum", **knobs)
    assert (g_p[:3] != 0).all() and (g_p[3:] == 0).all()  # the reference's own semantics
    assert torch.equal(g_e == 0, g_p == 0)
    torch.testing.assert_close(g_e, g_p, rtol=1e-6 if dtype == torch.float32 else 1e-12, atol=0)
    assert [m_e[k].item() for k in COUNTS] == [6, 1, 1, 1] == [m_p[k].item() for k in COUNTS]


def test_log_w_max_edge(cpu_path):
    """log w == log_w_max passes the gradient; above it (clamped) does not, as torch.clamp."""
    delta = torch.tensor([[0.25, 0.25, 0.25]])  # cumulative: 0.25, 0.5, 0.75
    for method in ("ctpo-fixed", "sequence"):
        kw = dict(log_w_max=0.5, clip_low=2.0, clip_high=2.0, clip_c=2.0) if method == "ctpo-fixed" else dict(log_w_max=0.75, eps_high=5.0)
        l_p, g_p, m_p = run("python", delta - 1, -torch.ones(1, 3), torch.ones(1), torch.ones(1, 3, dtype=torch.bool), method=method, **kw)
        l_e, g_e, m_e = run("ext", delta - 1, -torch.ones(1, 3), torch.ones(1), torch.ones(1, 3, dtype=torch.bool), method=method, **kw)
        assert torch.equal(g_e == 0, g_p == 0) and torch.equal(m_e["log_w"], m_p["log_w"])
        torch.testing.assert_close(g_e, g_p)
    assert (g_p != 0).all()  # sequence: log w = 0.75 == log_w_max on every token


# -----------------------------------------------------------------------------
# Quantiles: exact up to 4096 positions; beyond, a strided sample whose rank error is small


def nearest_rank(x, q):
    return x.sort().values[max(1, math.ceil(q / 100 * x.numel())) - 1]


def test_quantiles_exact_up_to_4096_positions(ext):
    logp, old, adv, mask, _ = make(8, 512, seed=30, scale=0.3)
    for method in METHODS:
        _, _, m = run("ext", logp, old, adv, mask, method=method)
        lw = m["log_w"][mask]
        for q in ctpo_ext.QUANTILES:
            assert m[f"ratio_q{q}"].item() == pytest.approx(math.exp(nearest_rank(lw, q).item()), rel=1e-6)


@pytest.mark.parametrize("method", ["ctpo", "grpo"])
def test_quantiles_of_a_large_batch_within_the_stated_rank_error(ext, method):
    """256 x 4096 (2^20 positions, sample of 4096): the returned ratio's rank among all mask tokens is within
    +-3 % of q (the docstring's ~1/sqrt(4096) = 1.6 %, with margin)."""
    g = torch.Generator().manual_seed(31)
    B, T = 256, 4096
    logp = -1.0 + 0.05 * torch.randn(B, T, generator=g)
    old = logp + 0.05 * torch.randn(B, T, generator=g)
    mask = torch.arange(T)[None, :] < torch.randint(T // 2, T + 1, (B, 1), generator=g)
    _, m = ctpo.policy_loss(logp, old, torch.randn(B, generator=g), mask, method=method, backend="ext")
    w = m["log_w"][mask].exp()
    for q in ctpo_ext.QUANTILES:
        rank = (w <= m[f"ratio_q{q}"]).double().mean().item()
        assert abs(rank - q / 100) < 0.03, (q, rank)


def test_quantile_sample_spreads_over_rows_and_positions():
    """Every position up to 4096; beyond, every row's samples spread over its positions, whatever T divides."""
    for B, T in ((3, 7), (1, 1), (16, 256), (0, 5)):
        pos, valid = ctpo_ext.quantile_sample(B, T)
        assert pos[valid].tolist() == list(range(B * T))
    for B, T in ((4096, 256), (256, 4096), (1000, 4096), (2, 65536), (64, 8192)):
        pos, valid = ctpo_ext.quantile_sample(B, T)
        assert valid.all() and pos.unique().numel() == 4096 and int(pos.max()) < B * T
        rows, cols = pos // T, pos % T
        assert rows.unique().numel() == min(B, 4096)
        per_row = 4096 // min(B, 4096)
        hist = torch.histc(cols.double(), bins=min(per_row, 16), min=0, max=T)  # columns evenly covered
        assert hist.min() >= 0.5 * hist.mean(), (B, T, hist)


# -----------------------------------------------------------------------------
# Bad values: the kernel's per-row flags raise the Python backend's ValueError, naming the input


@pytest.mark.parametrize("method", METHODS)
def test_bad_values_raise_naming_the_input(ext, method):
    logp, old, adv, mask, w = make(4, 40, seed=40, weights=True)
    i, j = 2, int(mask[2].nonzero()[0])
    for name, bad in (("logp", float("nan")), ("old_logp", float("inf")), ("advantages", float("nan")), ("rollout_is_weights", -1.0)):
        args = dict(logp=logp.clone(), old_logp=old.clone(), advantages=adv[:, None].expand_as(logp).clone(), rollout_is_weights=w.clone())
        args[name][i, j] = bad
        for backend in ("python", "ext"):
            with pytest.raises(ValueError, match=name):
                ctpo.policy_loss(args["logp"], args["old_logp"], args["advantages"], mask, method=method, backend=backend,
                                 rollout_is_weights=args["rollout_is_weights"])  # fmt: skip
        args[name][~mask] = float("nan")  # ... while junk at mask=0 positions is ignored
        args[name][i, j] = -0.5 if name in ("logp", "old_logp") else 0.5  # valid again
        ctpo.policy_loss(args["logp"], args["old_logp"], args["advantages"], mask, method=method, backend="ext",
                         rollout_is_weights=args["rollout_is_weights"])  # fmt: skip
    adv_row = adv.clone()
    adv_row[i] = float("nan")  # a (B,) advantage: flagged where its row has tokens
    with pytest.raises(ValueError, match="advantages"):
        ctpo.policy_loss(logp, old, adv_row, mask, method=method, backend="ext")


def test_no_stop_gradient_is_python_only(ext, monkeypatch):
    logp, old, adv, mask, _ = make(2, 10, seed=41)
    with pytest.raises(RuntimeError, match="stop-gradient form only.*backend='python'"):
        ctpo.policy_loss(logp, old, adv, mask, backend="ext", stop_gradient=False)
    monkeypatch.setattr(ctpo_ext, "_warned", False)
    with pytest.warns(UserWarning, match="falls back to Python"):
        _, m = ctpo.policy_loss(logp, old, adv, mask, backend="auto", stop_gradient=False)
    assert m["backend"] == "python"
    for method in METHODS:  # every preset uses the kernel under auto
        assert ctpo.policy_loss(logp, old, adv, mask, method=method, backend="auto")[1]["backend"] == "ext"


# -----------------------------------------------------------------------------
# gradcheck, torch.compile


@pytest.mark.parametrize("ratio", ["token", "sequence", "gspo", "cumulative"])
@pytest.mark.parametrize("clip", ["ratio", "adaptive"])
def test_gradcheck_float64(ext, ratio, clip):
    """Finite differences see the value, and in the stop-gradient form a token's log w moves with the row's earlier
    tokens too. So the free variable x_i of row i is its last mask token: for the token and cumulative ratios no
    other token's value depends on it, and d loss / d x_i is exactly the stop-gradient gradient; for sequence and
    gspo every row has one token (H = 1). The scalar loss is checked for every aggregation: its row scales too."""
    g = torch.Generator().manual_seed(13)
    B, T = 16, 12
    base = -1.0 - 0.15 * torch.rand(B, T, generator=g, dtype=torch.float64)
    old = (base + 0.25 * torch.randn(B, T, generator=g, dtype=torch.float64)).clamp(max=0)
    mask = torch.rand(B, T, generator=g) > 0.25
    if ratio in ("sequence", "gspo"):
        mask = torch.zeros(B, T, dtype=torch.bool)
    mask[torch.arange(B), torch.randint(0, T, (B,), generator=g)] = True
    mask[-1] = False  # a row without tokens
    last = T - 1 - mask.flip(-1).int().argmax(-1)  # (B,) the last mask token of each row
    sel = torch.zeros(B, T, dtype=torch.bool)
    sel[torch.arange(B), last] = True
    adv = torch.randn(B, generator=g, dtype=torch.float64)
    w = 0.5 + torch.rand(B, T, generator=g, dtype=torch.float64)
    bounds = (math.log(0.9), math.log(1.1), math.log(1.3), 0.0) if clip == "ratio" else (-0.04, 0.06, 0.1, 0.5)
    x0 = base[sel].clone()
    clipped = None
    for agg in ctpo.AGGS:
        counts = (None, None, None) if agg != "seq-mean-token-sum-norm" else (None, 5.0, 3.0)

        def f(x, agg=agg, counts=counts):
            logp = base.masked_scatter(sel, x)
            return ctpo_ext.policy_loss(logp, old, adv, mask, w, ratio, *bounds, 20.0, 10.0, agg, *counts)[0]

        assert torch.autograd.gradcheck(f, (x0.clone().requires_grad_(),), eps=1e-7, atol=1e-7)
        clipped = ctpo_ext.policy_loss(base, old, adv, mask, w, ratio, *bounds, 20.0, 10.0, agg)[1]["clipped"]
    assert clipped[sel & mask].any() and not clipped[sel & mask].all()  # both gradient regions were exercised


# -----------------------------------------------------------------------------
# The ext path's work around the fused op: counted ops (CPU tensors), not timed


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("adv_shape", ["B", "B1", "BT"])
def test_ext_path_op_count(ext, method, adv_shape):
    """policy_loss(backend="ext"): forward <= 3 compute ops (here one: the op; metrics_dict reads the kernel's check
    word from memory on a CPU, where a GPU needs its one host sync), backward <= 2 (the seed gradient, the backward
    op); for every method and aggregation."""
    logp, old, adv, mask, _ = make(4, 50, seed=3, adv_shape="row" if adv_shape != "BT" else "token")
    adv = (adv[:, None] if adv_shape == "B1" else adv).float()
    old = old.float()
    for agg in ctpo.AGGS:
        lp = logp.float().clone().requires_grad_()
        with OpCounter() as fwd:
            loss, m = ctpo.policy_loss(lp, old, adv, mask, method=method, agg=agg, backend="ext")
        with OpCounter() as bwd:
            loss.backward()
        assert len(fwd.ops) <= 3 and "_local_scalar_dense" not in fwd.ops, fwd.ops
        assert len(bwd.ops) <= 2, bwd.ops
        assert m["backend"] == "ext" and lp.grad is not None


def test_bench_end_to_end_rows_at_a_tiny_size(ext, capsys):
    """bench.py's end-to-end table runs (--json), and its correctness columns hold for every method: python and ext
    gradients agree, the clip counts are equal, policy_loss(ext) dispatches one op forward and two backward, and the
    paired ext / bare ratio is a positive number (its value is a timing: not asserted)."""
    import bench

    rows = bench.main(["--sizes", "3x40", "--dtypes", "float32", "--repeats", "2", "--no-compile", "--e2e-only", "--json",
                       "--e2e-methods", *METHODS])  # fmt: skip
    assert [r["method"] for r in rows] == METHODS
    for r in rows:
        assert r["max_abs_diff_grad"] < 1e-6 and r["same_clip_counts"], r
        assert r["fwd_ops"] == ["policy_loss"] and len(r["bwd_ops"]) == 2, r
        assert 0 < r["ext_over_bare"] < math.inf and r["python_ms"] > 0, r
    assert capsys.readouterr().out.lstrip().startswith("[")  # --json: one JSON list on stdout


def test_metric_values_behave_as_independent_scalars(ext, tmp_path):
    """The ext backend's metric values are 0-dim tensors that share the op's small outputs' storage (made in C++,
    metrics_dict): each holds its own element, of the Python backend's dtype and device, without gradient;
    copying, pickling, saving and arithmetic see the values; an in-place change to one leaves the others alone."""
    import copy
    import pickle

    logp, old, adv, mask, _ = make(6, 40, seed=21)
    logp, old, adv = logp.float(), old.float(), adv.float()
    _, _, m_p = run("python", logp, old, adv, mask)
    _, _, m_e = run("ext", logp, old, adv, mask)
    check_metrics(m_p, m_e, dict(rtol=1e-6, atol=0))
    scalars = [k for k in m_e if isinstance(m_e[k], torch.Tensor) and m_e[k].dim() == 0]
    assert scalars == list(ctpo_ext.METRIC_KEYS)
    for k in scalars:
        assert (m_e[k].dtype, m_e[k].device, m_e[k].requires_grad) == (m_p[k].dtype, m_p[k].device, False), k
    before = {k: m_e[k].item() for k in scalars}
    for other in (copy.deepcopy(m_e), pickle.loads(pickle.dumps(m_e))):
        assert {k: other[k].item() for k in scalars} == before
    torch.save(m_e, tmp_path / "m.pt")
    assert {k: v.item() for k, v in torch.load(tmp_path / "m.pt").items() if k in scalars} == before
    assert (m_e["ratio_mean"] * 2).item() == 2 * before["ratio_mean"]
    m_e["ratio_min"].add_(1.0)  # a caller's in-place change: its own element only
    assert m_e["ratio_min"].item() == (torch.tensor(before["ratio_min"]) + 1.0).item()  # in float32
    assert all(m_e[k].item() == before[k] for k in scalars if k != "ratio_min")
    with pytest.raises(ValueError, match="metrics_dict"):
        ctpo_ext.load().metrics_dict(("a", "b"), torch.zeros(2, 2, dtype=torch.int64), 1, torch.zeros(3), 1, 0)


@pytest.mark.parametrize("method", ["ctpo", "grpo", "gspo"])
def test_torch_compile_fullgraph_policy_loss(ext, method):
    logp, old, adv, mask, w = make(4, 64, seed=12, weights=True)
    logp, old, adv, w = logp.float(), old.float(), adv.float(), w.float()

    def f(lp):
        loss, m = ctpo.policy_loss(lp, old, adv, mask, method=method, backend="ext", rollout_is_weights=w)
        return loss, m["ratio_q50"], m["n_clip_low"], m["clipped"], m["log_w"]

    lp_c = logp.clone().requires_grad_()
    with torch._inductor.config.patch(force_disable_caches=True):  # no stale code from a rebuilt extension's fake kernel
        out_c = torch.compile(f, fullgraph=True)(lp_c)
        out_c[0].backward()
    lp_e = logp.clone().requires_grad_()
    out_e = f(lp_e)
    out_e[0].backward()
    torch.testing.assert_close(out_c[0], out_e[0])
    for a, b in zip(out_c[1:], out_e[1:]):
        assert torch.equal(a, b)
    torch.testing.assert_close(lp_c.grad, lp_e.grad)


def test_cuda_arch_decision(monkeypatch):
    """A CUDA torch without a visible GPU and without TORCH_CUDA_ARCH_LIST builds CPU-only (torch's arch guess
    would raise IndexError); with the variable it builds the CUDA kernels."""
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST", raising=False)
    monkeypatch.delenv("CTPO_EXT_NO_CUDA", raising=False)
    ok, why = ctpo_ext.want_cuda("/usr/local/cuda")
    assert not ok and "TORCH_CUDA_ARCH_LIST" in why
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "9.0")
    assert ctpo_ext.want_cuda("/usr/local/cuda") == (True, "")
    assert not ctpo_ext.want_cuda(None)[0]
    monkeypatch.setenv("CTPO_EXT_NO_CUDA", "1")
    assert not ctpo_ext.want_cuda("/usr/local/cuda")[0]


def sparse_mask_inputs(B=100, T=1000):
    """(logp, old_logp, mask, g): 5 mask tokens, none at a position of the quantile sample, and the generator."""
    sampled = torch.zeros(B * T, dtype=torch.bool)
    sampled[ctpo_ext.quantile_sample(B, T)[0]] = True
    free = (~sampled).nonzero().squeeze(1)
    mask = torch.zeros(B * T, dtype=torch.bool)
    mask[free[torch.tensor([0, 1, 500, 4000, 9000])]] = True
    g = torch.Generator().manual_seed(33)
    logp = -1.0 + 0.3 * torch.randn(B, T, generator=g)
    return logp, logp + 0.3 * torch.randn(B, T, generator=g), mask.view(B, T), g


def test_quantiles_of_a_sparse_mask_the_stride_misses(ext):
    """No mask token at the sampled positions: both backends fall back to the first 4096 mask tokens."""
    B, T = 100, 1000
    logp, old, mask, g = sparse_mask_inputs(B, T)
    for method in ("grpo", "ctpo"):
        _, m_p = ctpo.policy_loss(logp, old, torch.randn(B, generator=g), mask, method=method)
        _, m_e = ctpo.policy_loss(logp, old, torch.randn(B, generator=g), mask, method=method, backend="ext")
        lw = m_e["log_w"][mask]
        for q in ctpo_ext.QUANTILES:
            assert m_e[f"ratio_q{q}"].item() == pytest.approx(math.exp(nearest_rank(lw, q).item()), rel=1e-6)
            assert torch.equal(m_p[f"ratio_q{q}"], m_e[f"ratio_q{q}"]) or method == "grpo"  # grpo: other advantages, same log w


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_cuda_policy_loss_parity(ext, method, dtype):
    if not ext.with_cuda():
        pytest.skip("extension built without CUDA kernels")
    for B, T, seed in ((3, 1, 0), (5, 333, 1), (2, 8192, 2)):
        for adv_shape in ("row", "token"):
            logp, old, adv, mask, w = make(B, T, seed=seed, adv_shape=adv_shape, weights=True)
            logp, old, w = logp.to(dtype), old.to(dtype), w.to(dtype)
            for agg in ctpo.AGGS:
                l_c, g_c, m_c = run("ext", *(x.cuda() for x in (logp, old, adv, mask, w)), method=method, agg=agg)
                l_p, g_p, m_p = run("python", logp, old, adv, mask, w, method=method, agg=agg)
                tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=2e-5, atol=1e-6)
                torch.testing.assert_close(l_c.cpu(), l_p, **tol)
                torch.testing.assert_close(g_c.cpu(), g_p, **tol)
                for k in COUNTS:
                    assert m_c[k].item() == m_p[k].item(), k
