"""Tests of the learning lab (lab_learning.py): its pieces against hand computation and independent methods, then
its claims on small settings (V = 3, H = 6, 100 steps, 8 paired seeds; float64, fixed seeds, one thread).

The claims' margins: a run is a fixed computation in float64 whose only machine dependence is round-off (about
1e-16 relative; a sampled token could flip only if a uniform fell within that of a CDF edge), and every asserted
bound is at least 5e-4 from its threshold (the measured values are in the comments), so no summation order or
thread count can flip one."""

import json
import math

import pytest
import torch

import bias_variance as bv
import lab_learning as ll

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


# -----------------------------------------------------------------------------
# The rewards, by hand


def test_local_reward_by_hand():
    F = torch.tensor([1, 2, 0])  # F(0) = 1, F(1) = 2, F(2) = 0
    x = torch.tensor([[0, 1, 2, 2], [1, 1, 0, 0], [0, 1, 2, 0], [2, 0, 1, 2]])
    # pairs (x1, x2), (x3, x4): (0,1) right, (2,2) wrong; (1,1) wrong, (0,0) wrong; both right; both right
    assert ll.local_reward(x, F).tolist() == [0.5, 0.0, 1.0, 1.0]
    # odd H: the last token is free, one pair for H = 3
    assert ll.local_reward(torch.tensor([[0, 1, 0], [0, 0, 1]]), F).tolist() == [1.0, 0.0]
    with pytest.raises(ValueError, match="H >= 2"):
        ll.local_reward(torch.tensor([[0]]), F)


def test_entangled_reward_by_hand():
    y = torch.tensor([1, 0, 2])
    x = torch.tensor([[1, 0, 2], [1, 1, 2], [0, 0, 2], [1, 0, 1]])
    # the leading run only: [1,1,2] has its third token right, but after a wrong one it earns nothing
    assert ll.entangled_reward(x, y).tolist() == [1.0, 1 / 3, 0.0, 2 / 3]


def test_make_task_rejects_an_unknown_credit():
    with pytest.raises(ValueError, match="credit: unknown 'global'"):
        ll.make_task("global", 3, 4, torch.Generator().manual_seed(0))


# -----------------------------------------------------------------------------
# The policy: exact J, the parameter rows, sampling, the gradient estimate


def test_exact_objective_by_hand():
    # V = 2, H = 2, tabular: states [] (row 0), "0" (row 1), "1" (row 2)
    probs = torch.tensor([[[1 / 4, 3 / 4], [1 / 2, 1 / 2], [4 / 5, 1 / 5]]], dtype=torch.float64)
    x_all = bv.all_sequences(2, 2)  # 00, 01, 10, 11
    # entangled, y = (1, 0): R(10) = 1, R(11) = 1/2, else 0: J = 3/4 * 4/5 + 3/4 * 1/5 * 1/2 = 0.675
    R = ll.entangled_reward(x_all, torch.tensor([1, 0])).unsqueeze(0)
    J, logP = ll.exact_objective(probs.log(), x_all, R)
    assert math.isclose(float(J), 0.675, rel_tol=1e-14)
    assert torch.allclose(logP.exp(), torch.tensor([[1 / 8, 1 / 8, 3 / 5, 3 / 20]], dtype=torch.float64), rtol=1e-14, atol=0)
    # local, F = (1, 0): 01 and 10 are right: J = 1/4 * 1/2 + 3/4 * 4/5 = 0.725
    R = ll.local_reward(x_all, torch.tensor([1, 0])).unsqueeze(0)
    assert math.isclose(float(ll.exact_objective(probs.log(), x_all, R)[0]), 0.725, rel_tol=1e-14)


@pytest.mark.parametrize("credit", ll.CREDITS)
def test_exact_objective_matches_backward_induction(credit):
    # an independent method: bias_variance.prefix_values, U[0] = E_pi[R] by backward induction on the prefix tree
    V, H = 3, 4
    g = torch.Generator().manual_seed(3)
    theta = torch.randn(bv.num_states(V, H), V, generator=g, dtype=torch.float64)
    x_all = bv.all_sequences(V, H)
    R = ll.reward(credit, x_all, ll.make_task(credit, V, H, g))
    toy = bv.Toy(V, H, theta, theta, R)
    J, _ = ll.exact_objective(torch.log_softmax(theta, -1).unsqueeze(0), x_all, R.unsqueeze(0))
    # a sum of 81 terms in [0, 1] in two orders: round-off <= 81 * 1.1e-16; a wrong term would be >= 1e-3
    assert math.isclose(float(J), float(bv.prefix_values(toy)[0]), rel_tol=0, abs_tol=1e-13)


def test_row_map_by_hand():
    # V = 2, H = 3 states in bias_variance's order: [], 0, 1, 00, 01, 10, 11
    assert ll.row_map("tabular", 2, 3).tolist() == list(range(7))
    # markov: row = position * V + last token; the empty prefix is row 0
    assert ll.row_map("markov", 2, 3).tolist() == [0, 2, 3, 4, 5, 4, 5]
    with pytest.raises(ValueError, match="policy: unknown 'mlp'"):
        ll.row_map("mlp", 2, 3)


def test_sample_is_the_inverse_cdf():
    # V = 3, H = 2; the first token from row 0 with probabilities (0.2, 0.3, 0.5), the second from a uniform row
    logp = torch.full((1, bv.num_states(3, 2), 3), math.log(1 / 3), dtype=torch.float64)
    logp[0, 0] = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64).log()
    u = torch.tensor([[[0.1, 0.1], [0.25, 0.5], [0.6, 0.9], [0.49, 0.0]]], dtype=torch.float64)
    x = ll.sample(logp, u, 2)
    assert x[0].tolist() == [[0, 0], [1, 1], [2, 2], [1, 0]]


@pytest.mark.parametrize("policy", ll.POLICIES)
def test_gradient_estimate_is_autograd(policy):
    # sum_{i,t} coef_it grad log pi(a_t|s_t) wrt the parameters, against torch.autograd
    V, H, K, N = 3, 4, 2, 5
    g = torch.Generator().manual_seed(1)
    rmap = ll.row_map(policy, V, H)
    P = int(rmap.max()) + 1
    theta = torch.randn(K, P, V, generator=g, dtype=torch.float64, requires_grad=True)
    logp = torch.log_softmax(theta[:, rmap], dim=2)
    x = ll.sample(logp.detach(), torch.rand(K, N, H, generator=g, dtype=torch.float64), H)
    coef = torch.randn(K, N, H, generator=g, dtype=torch.float64)
    (expected,) = torch.autograd.grad((coef * ll.token_logprobs(logp, x)).sum(), theta)
    got = ll.policy_gradient_estimate(logp.detach(), x, coef)
    got = got if policy == "tabular" else ll.state_to_param_grad(got, rmap, P)
    # sums of at most K * N * H = 40 terms of size < 10: round-off ~1e-14; a wrong term would be ~0.1
    assert torch.allclose(got, expected, rtol=0, atol=1e-12)


def test_t_quantile():
    # textbook values of the 0.975 quantile
    for df, q in [(1, 12.706204736), (2, 4.302652730), (4, 2.776445105), (7, 2.364624252), (30, 2.042272456)]:
        assert math.isclose(ll.t_quantile_975(df), q, rel_tol=1e-9), df
    p = ll.paired_interval([1.0, 2.0, 3.0])  # mean 2, sd 1: 2 +- 4.3027 / sqrt(3)
    assert math.isclose(p["hi"] - p["mean"], 4.302652730 / math.sqrt(3), rel_tol=1e-9)


# -----------------------------------------------------------------------------
# The claims, on small settings

SMALL = dict(N=16, steps=100, lr=1.0, seeds=list(range(8)), V=3, H=6)


def gains(credit, policy, lag, estimators=("token", "cumulative")):
    return {e: ll.gain(ll.train(credit, e, lag, policy=policy, **SMALL)) for e in estimators}


@pytest.fixture(scope="module")
def entangled_tabular():
    return gains("entangled", "tabular", 8)


@pytest.mark.parametrize("credit", ll.CREDITS)
@pytest.mark.parametrize("policy", ll.POLICIES)
def test_lag_0_every_estimator_is_the_same_run(credit, policy):
    # on-policy, delta = 0 exactly, so every ratio is exactly 1: the runs must be bit-identical
    kw = dict(SMALL, steps=30, seeds=[0, 1, 2], policy=policy)
    runs = [ll.train(credit, e, 0, **kw) for e in ll.ESTIMATORS]
    assert runs[0]["J"][:, -1].min() > runs[0]["J"][:, 0].max()  # it learns
    for run in runs[1:]:
        assert torch.equal(run["J"], runs[0]["J"])
    assert torch.equal(runs[0]["var_log_rho"], torch.zeros_like(runs[0]["var_log_rho"]))


def test_entangled_credit_cumulative_learns_faster(entangled_tabular):
    g = entangled_tabular
    p = ll.paired_interval(g["cumulative"] - g["token"])
    assert p["lo"] > 0.02, p  # measured: +0.053 [+0.039, +0.067] on a token gain of 0.38


def test_entangled_credit_shared_rows_cumulative_learns_faster():
    g = gains("entangled", "markov", 8)
    p = ll.paired_interval(g["cumulative"] - g["token"])
    assert p["lo"] > 0.02, p  # measured: +0.053 [+0.045, +0.060]


def test_local_credit_shared_rows_no_difference(entangled_tabular):
    # the transformer toys' case: a rule shared by every prefix (markov rows) and local credit
    g = gains("local", "markov", 8)
    p = ll.paired_interval(g["cumulative"] - g["token"])
    e = ll.paired_interval(entangled_tabular["cumulative"] - entangled_tabular["token"])
    assert p["lo"] < 0 < p["hi"], p  # measured: +0.0009 [-0.0006, +0.0025]
    assert p["hi"] - p["lo"] < 0.2 * e["mean"], (p, e)  # a tight interval, not a wide one that includes 0 by noise


def test_local_credit_tabular_rows_cumulative_helps_less(entangled_tabular):
    # no sharing: what a row learns pays only where the policy goes, so the prefix correction helps here too
    g = gains("local", "tabular", 8)
    p = ll.paired_interval(g["cumulative"] - g["token"])
    e = ll.paired_interval(entangled_tabular["cumulative"] - entangled_tabular["token"])
    assert p["lo"] > 0.002 and p["mean"] < 0.5 * e["mean"], (p, e)  # measured: +0.011 [+0.006, +0.017] vs +0.053


def test_the_shift_grows_with_the_lag():
    kw = dict(SMALL, steps=40, seeds=[0, 1])
    v = [float(ll.train("entangled", "token", lag, **kw)["var_log_rho"].mean()) for lag in (1, 4, 16)]
    assert 0 < v[0] < v[1] < v[2], v


# -----------------------------------------------------------------------------
# CLI


def test_cli_json(capsys):
    rows = ll.main(["--json", "--credit=entangled", "--policy=markov", "--lag=0,3", "--steps=10", "--seeds=2", "--H=4"])
    out = json.loads(capsys.readouterr().out)
    assert out == json.loads(json.dumps(rows)) and len(out) == 1
    row = out[0]
    assert (row["credit"], row["policy"], row["lag"], row["N"], row["reference"]) == ("entangled", "markov", 3, 16, "token")
    assert set(row["vs_reference"]) == {"cumulative", "sequence", "gspo"} and row["var_log_rho_H"]["token"] > 0


def test_cli_table_and_plot(capsys, tmp_path):
    path = tmp_path / "ll.png"
    ll.main(["--lag=0,2", "--steps=5", "--seeds=2", "--H=3", f"--out={path}"])
    text = capsys.readouterr().out
    assert "| entangled | markov | 16 | 1 | 2 |" in text and path.stat().st_size > 10_000


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--lag=0"], "--lag: need at least one lag > 0"),
        (["--lag=x"], "--lag: expected comma-separated integers"),
        (["--N=1"], "--N: expected distinct integers >= 2"),
        (["--lr=0"], "--lr: expected distinct finite numbers > 0"),
        (["--credit=global"], "--credit: expected distinct names from local,entangled"),
        (["--seeds=1"], "--seeds: need >= 2"),
        (["--H=12"], "responses to enumerate every step"),
    ],
)
def test_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        ll.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("lab_learning.py: error: ") and message in err and err.count("\n") == 1, err
