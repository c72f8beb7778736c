"""Tests of the estimator lab (bias_variance.py): the paper's two claims, checked exactly by enumeration."""

import json
import math

import pytest
import torch

import bias_variance as bv

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


# (V, H, kappa, seed): the CLI default first, then a longer binary-vocabulary toy and a short wide one
CONFIGS = [(3, 5, 0.5, 0), (2, 6, 1.0, 1), (4, 3, 0.3, 2)]


@pytest.fixture(scope="module", params=CONFIGS, ids=lambda c: "V{}-H{}-k{}-s{}".format(*c))
def case(request):
    V, H, kappa, seed = request.param
    toy = bv.make_toy(V, H, kappa, seed)
    return toy, bv.lab(toy)


@pytest.fixture(scope="module")
def default_case():
    toy = bv.make_toy(3, 5, 0.5, 0)
    return toy, bv.lab(toy)


# -----------------------------------------------------------------------------
# The toy and the truth


def test_enumeration_is_a_distribution():
    toy = bv.make_toy(3, 4, 0.7, 0)
    x = bv.all_sequences(3, 4)
    assert torch.equal(bv.prefix_codes(x, 3)[:, -1], torch.arange(81))  # row i has code i
    states = bv.state_index(x, 3)
    assert states.min() == 0 and states.max() == toy.S - 1 and len(states.unique()) == toy.S  # every state is visited
    p_pi, p_mu = bv.sequence_probs(toy, x, states)
    assert math.isclose(float(p_pi.sum()), 1.0, abs_tol=1e-14) and math.isclose(float(p_mu.sum()), 1.0, abs_tol=1e-14)


def test_truth_is_the_policy_gradient(case):
    toy, res = case
    grad = bv.policy_gradient_autograd(toy)
    # both formulations estimate grad J: Q - V and R differ by a baseline and by a zero-mean suffix term.
    # atol 1e-12: the float64 round-off of a sum over V^H <= 243 sequences of terms of size <= 1 is at most
    # 243 * 1.1e-16 = 2.7e-14 in any summation order (measured: 1e-16); a wrong term would be >= 1e-4.
    assert torch.allclose(res["prefix"]["truth"], grad, rtol=0, atol=1e-12)
    assert torch.allclose(res["outcome"]["truth"], grad, rtol=0, atol=1e-12)
    assert grad.norm() > 1e-2  # not a degenerate toy


def test_weights_are_the_ratios_of_sequence_probabilities():
    toy = bv.make_toy(3, 4, 0.7, 0)
    x = bv.all_sequences(3, 4)
    _, w, states = bv.gradient_terms(toy, x, "prefix", bv.prefix_values(toy))
    p_pi, p_mu = bv.sequence_probs(toy, x, states)
    assert torch.allclose(w["sequence"], (p_pi / p_mu)[:, None].expand(-1, 4), rtol=1e-12)
    assert torch.allclose(w["cumulative"][:, -1], w["sequence"][:, -1], rtol=1e-12)  # rho_H is the sequence ratio
    assert torch.allclose(w["gspo"], w["sequence"].pow(1 / 4), rtol=1e-12)
    assert torch.allclose(w["cumulative"], w["token"].cumprod(dim=1), rtol=1e-12)


# -----------------------------------------------------------------------------
# Claim 1: unbiasedness (prefix advantage), and what it does not cover (outcome)


def test_prefix_cumulative_and_sequence_are_unbiased(case):
    _, res = case
    e = res["prefix"]["estimators"]
    assert e["cumulative"]["rel_bias"] < 1e-10
    assert e["sequence"]["rel_bias"] < 1e-10


def test_prefix_token_and_gspo_are_biased(case):
    _, res = case
    e = res["prefix"]["estimators"]
    assert e["token"]["rel_bias"] > 1e-3
    assert e["gspo"]["rel_bias"] > 1e-3


def test_outcome_only_sequence_is_unbiased(case):
    _, res = case
    e = res["outcome"]["estimators"]
    assert e["sequence"]["rel_bias"] < 1e-10
    for name in ("token", "cumulative", "gspo"):  # the theorem's assumption fails: A_t depends on the suffix
        assert e[name]["rel_bias"] > 1e-3, name


def test_on_policy_every_estimator_is_exact():
    res = bv.lab(bv.make_toy(3, 4, 0.0, 0))
    for f in bv.FORMULATIONS:
        e = res[f]["estimators"]
        for name in bv.ESTIMATORS:
            assert e[name]["rel_bias"] < 1e-12
            assert math.isclose(e[name]["variance"], e["token"]["variance"], rel_tol=1e-12)


# -----------------------------------------------------------------------------
# Claim 2: variance


def test_prefix_cumulative_variance_below_sequence(case):
    toy, res = case
    cum, seq = res["prefix"]["estimators"]["cumulative"], res["prefix"]["estimators"]["sequence"]
    assert cum["variance"] < seq["variance"]
    for t in range(toy.H - 1):  # strictly below before the end ...
        assert cum["position_variance"][t] < seq["position_variance"][t], t
    # ... and equal at t = H, where rho_H is the full sequence ratio
    assert math.isclose(cum["position_variance"][-1], seq["position_variance"][-1], rel_tol=1e-12)
    # tabular states of different lengths are different rows: the per-position terms are orthogonal
    assert math.isclose(sum(cum["position_variance"]), cum["variance"], rel_tol=1e-10)


def test_iid_ratios_match_the_paper_closed_form():
    # same logits in every state: the per-token ratios are i.i.d. under mu, Var(rho_t) = (1 + d)^t - 1
    toy = bv.make_toy(3, 5, 0.8, 4, stationary=True)
    pi, mu = torch.softmax(toy.theta[0], -1), torch.softmax(toy.mu_logits[0], -1)
    d = float((pi.pow(2) / mu).sum() - 1)  # chi^2(pi || mu)
    var = bv.exact_moments(toy, "prefix")["estimators"]["cumulative"]["weight_variance"]
    for t in range(1, toy.H + 1):
        assert math.isclose(var[t - 1], (1 + d) ** t - 1, rel_tol=1e-10)


# -----------------------------------------------------------------------------
# Monte Carlo: an independent method (autoregressive sampling from mu, plain averages)


@pytest.fixture(scope="module")
def mc(default_case):
    toy, res = default_case
    return bv.monte_carlo(toy, res, 20_000, seed=0)


def test_monte_carlo_means_within_4_standard_errors(mc):
    for f in bv.FORMULATIONS:
        for name in bv.ESTIMATORS:
            assert mc[f][name]["max_abs_z"] < 4, (f, name, mc[f][name])


def test_monte_carlo_variance_close_to_exact(default_case, mc):
    _, res = default_case
    for f in bv.FORMULATIONS:
        for name in bv.ESTIMATORS:
            assert math.isclose(mc[f][name]["variance"], res[f]["estimators"][name]["variance"], rel_tol=0.15), (f, name)


def test_monte_carlo_detects_a_bias(default_case):
    # power check: claim every estimator is unbiased (exact mean := truth); the z-test must reject the biased ones
    toy, res = default_case
    fake = {f: {"truth": res[f]["truth"], "estimators": {n: {"mean": res[f]["truth"]} for n in bv.ESTIMATORS}} for f in bv.FORMULATIONS}
    out = bv.monte_carlo(toy, fake, 20_000, seed=0)
    assert out["prefix"]["token"]["max_abs_z"] > 4 and out["prefix"]["gspo"]["max_abs_z"] > 4
    assert out["outcome"]["cumulative"]["max_abs_z"] > 4
    assert out["prefix"]["cumulative"]["max_abs_z"] < 4


# -----------------------------------------------------------------------------
# CLI


def test_cli_json(capsys, default_case):
    _, res = default_case
    bv.main(["--json"])
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"prefix", "outcome"}
    for f in bv.FORMULATIONS:
        assert set(out[f]) == set(bv.ESTIMATORS)
        for name in bv.ESTIMATORS:
            assert set(out[f][name]) == {"bias", "rel_bias", "variance"}
            assert out[f][name]["variance"] == res[f]["estimators"][name]["variance"]


def test_cli_table_and_plot(capsys, tmp_path):
    path = tmp_path / "bv.png"
    bv.main(["--H", "4", "--plot", str(path)])
    text = capsys.readouterr().out
    assert "| prefix      | cumulative |" in text and path.stat().st_size > 10_000
