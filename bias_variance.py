"""
Estimator lab: the exact bias and variance of the four importance ratios, by enumeration.

Reference: "Rethinking Importance Sampling in LLM Policy Optimization: A Cumulative Token
Perspective", Zhang et al., arXiv 2605.07331 (2026). The paper makes two claims about the weight w_t
on the token-level gradient term grad log pi(a_t|s_t) * A_t when data comes from a behaviour policy mu:
  1. the cumulative ratio rho_t = prod_{t'<=t} r_t' makes each term unbiased, for any advantage that is
     a function of the prefix and the current token (A(s_t, a_t));
  2. its variance is strictly below that of the full sequence ratio prod_{t'<=H} r_t' (law of total
     variance: full = rho_t * eps_t with E_mu[eps_t | prefix] = 1).
Both are statements about expectations, so on a toy where all V^H sequences can be listed we can
check them exactly: every expectation below is a weighted sum over all sequences, in float64.

The toy. A tabular autoregressive policy: one row of logits theta[s] for every state s = prefix of
length 0..H-1 (the tabular "softmax policy" of RL textbooks, on the tree of prefixes), and a behaviour
policy mu with logits theta + kappa * noise; kappa is the off-policyness knob. A binary reward R(x) on
each full sequence x (the paper's setting: one outcome reward per response).

The estimators, each a vector in parameter space (dimension = number of states * V):

    g_w(x) = sum_t w_t(x) * A_t(x) * grad_theta log pi(a_t|s_t),      x ~ mu

with w_t from ctpo.py's ratio functions: token r_t, cumulative rho_t, sequence prod_{t<=H} r_t, gspo
(prod r)^(1/H). Two advantage formulations:
    prefix:  A_t = Q^pi(s_t, a_t) - V^pi(s_t), the true advantage of pi (by backward induction).
             A function of the prefix and the current token: the setting of the paper's theorem.
    outcome: A_t = R(x) on every token (GRPO-style broadcast, here without a baseline). A_t now
             depends on the suffix, which the cumulative ratio does not correct: only the full
             sequence ratio is unbiased.
Both formulations target the same vector, the policy gradient grad J = E_pi[sum_t A_t grad log pi]
(with J = E_pi[R]); we check it against autograd.

Run:  python bias_variance.py                    table + plot (out-lab/bias_variance.png)
      python bias_variance.py --json             the same numbers as JSON (no plot)
      python bias_variance.py --mc 100000        plus a Monte Carlo cross-check (sampling from mu)
      python bias_variance.py --out assets/bias_variance.png   regenerate the README's figure
"""

import argparse
import json
import math
import os
import sys
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ctpo import cumulative_ratio, gspo_ratio, sequence_ratio, token_ratio

DTYPE = torch.float64  # exact sums: the unbiased estimators must show a bias at round-off level
ESTIMATORS = ("token", "cumulative", "sequence", "gspo")
FORMULATIONS = ("prefix", "outcome")
DEFAULT_KAPPAS = (0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)

# -----------------------------------------------------------------------------
# The toy: a tabular autoregressive policy over all V^H sequences
#
# A prefix of length k is stored by its base-V code (x_1 most significant); its state row in the
# table is offset(k) + code with offset(k) = V^0 + ... + V^(k-1). Since the next state is the prefix
# plus the token (deterministic transitions), the probability of a sequence is the product of the
# per-token probabilities, and the cumulative ratio is exactly the ratio of prefix probabilities.


@dataclass
class Toy:
    V: int  # vocabulary
    H: int  # horizon (response length)
    theta: torch.Tensor  # (S, V) logits of pi: the parameters we differentiate
    mu_logits: torch.Tensor  # (S, V) logits of the behaviour policy mu
    reward: torch.Tensor  # (V^H,) R(x) of every full sequence, by code

    @property
    def S(self):
        return self.theta.shape[0]


def num_states(V, H):
    return sum(V**k for k in range(H))  # prefixes of length 0 .. H-1


def state_offset(V, k):
    return num_states(V, k)  # rows of all shorter prefixes come first


def make_toy(V=3, H=5, kappa=0.5, seed=0, stationary=False):
    """pi with N(0, 1) logits, mu = pi + kappa * N(0, 1) noise, binary reward table; all from `seed`.

    theta, noise and reward are drawn in the same order whatever kappa is, so a kappa sweep moves mu
    along one fixed direction away from pi. stationary=True gives every state the same logits (for pi
    and mu): the per-token ratios are then i.i.d. under mu, the case of the paper's closed form.
    """
    if V < 2 or H < 1:
        raise ValueError(f"need V >= 2 and H >= 1, got V={V}, H={H}")
    g = torch.Generator().manual_seed(seed)
    S, rows = num_states(V, H), 1 if stationary else num_states(V, H)
    theta = torch.randn(rows, V, generator=g, dtype=DTYPE).expand(S, V).clone()
    noise = torch.randn(rows, V, generator=g, dtype=DTYPE).expand(S, V).clone()
    reward = torch.randint(0, 2, (V**H,), generator=g).to(DTYPE)
    return Toy(V, H, theta, theta + kappa * noise, reward)


def all_sequences(V, H):
    """Every response, (V^H, H) long; row i is the base-V digits of i (so row i has code i)."""
    code = torch.arange(V**H)
    return torch.stack([(code // V ** (H - 1 - i)) % V for i in range(H)], dim=1)


def prefix_codes(x, V):
    """(n, H+1) codes of the prefixes of length 0..H of each sequence; column H is the sequence's own code."""
    codes = [torch.zeros(x.shape[0], dtype=torch.long)]
    for i in range(x.shape[1]):
        codes.append(codes[-1] * V + x[:, i])
    return torch.stack(codes, dim=1)


def state_index(x, V):
    """(n, H) table row of s_t = (a_1 .. a_{t-1}), the state in which token a_t was chosen."""
    H = x.shape[1]
    offsets = torch.tensor([state_offset(V, k) for k in range(H)])
    return offsets + prefix_codes(x, V)[:, :H]


def table_logprobs(logits, x, states):
    """log p(a_t | s_t) of the sequences x under a table of logits: (n, H)."""
    return F.log_softmax(logits, dim=-1)[states].gather(2, x.unsqueeze(2)).squeeze(2)


def sample_mu(toy, n, generator):
    """n responses drawn token by token from mu (the Monte Carlo check must not reuse the enumeration)."""
    x = torch.zeros(n, toy.H, dtype=torch.long)
    code = torch.zeros(n, dtype=torch.long)
    for i in range(toy.H):
        probs = F.softmax(toy.mu_logits[state_offset(toy.V, i) + code], dim=-1)  # (n, V)
        x[:, i] = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        code = code * toy.V + x[:, i]
    return x


# -----------------------------------------------------------------------------
# Advantages: the true advantage of pi (prefix) or the broadcast outcome reward (outcome)


def prefix_values(toy):
    """U[k] = E_pi[R | prefix of length k], a (V^k,) table by code, for k = 0..H (U[H] = R).

    Backward induction on the prefix tree: U[k](p) = sum_a pi(a|p) U[k+1](p + a). Then
    Q^pi(s_t, a_t) = U[t](x_<=t) and V^pi(s_t) = U[t-1](x_<t): the reward comes only at the end.
    """
    V, H = toy.V, toy.H
    pi = F.softmax(toy.theta, dim=-1)
    U = [None] * H + [toy.reward]
    for k in reversed(range(H)):
        rows = pi[state_offset(V, k) : state_offset(V, k) + V**k]  # (V^k, V) pi(.|p) for every prefix p of length k
        U[k] = (rows * U[k + 1].view(V**k, V)).sum(dim=-1)  # U[k+1] at code p*V + a
    return U


def advantages(toy, x, formulation, U):
    """A_t for every token of the sequences x: (n, H)."""
    codes = prefix_codes(x, toy.V)  # (n, H+1)
    if formulation == "outcome":
        return toy.reward[codes[:, -1]].unsqueeze(1).expand(-1, toy.H)  # one R(x) broadcast to all tokens
    if formulation == "prefix":
        q = torch.stack([U[i + 1][codes[:, i + 1]] for i in range(toy.H)], dim=1)  # Q^pi(s_t, a_t)
        v = torch.stack([U[i][codes[:, i]] for i in range(toy.H)], dim=1)  # V^pi(s_t)
        return q - v
    raise ValueError(f"formulation: unknown {formulation!r}; expected one of {FORMULATIONS}")


# -----------------------------------------------------------------------------
# The estimators: per-token terms w_t * A_t * grad log pi(a_t|s_t), with ctpo.py's ratios


def log_weights(delta):
    """log w_t of the four estimators, from ctpo.py (all tokens are response tokens: mask all True).

    The stop-gradient forms there have the ratio as their value; delta carries no graph here.
    """
    mask = torch.ones_like(delta, dtype=torch.bool)
    return {
        "token": token_ratio(delta, mask),
        "cumulative": cumulative_ratio(delta, mask),
        "sequence": sequence_ratio(delta, mask),
        "gspo": gspo_ratio(delta, mask),
    }


def gradient_terms(toy, x, formulation, U):
    """The per-position terms of every estimator, and the states they live on.

    Returns (terms, weights, states): terms[name] is (n, H, V), the vector w_t A_t grad log pi(a_t|s_t),
    which is nonzero only on the row theta[s_t]: for a softmax row, d log pi(a|s) / d theta[s] =
    onehot(a) - pi(.|s). The extra entry "on-policy" (w = 1) gives the truth when averaged under pi.
    """
    states = state_index(x, toy.V)  # (n, H)
    pi = F.softmax(toy.theta, dim=-1)
    score = F.one_hot(x, toy.V).to(DTYPE) - pi[states]  # (n, H, V)
    delta = table_logprobs(toy.theta, x, states) - table_logprobs(toy.mu_logits, x, states)  # (n, H)
    weights = {name: lw.exp() for name, lw in log_weights(delta).items()}
    weights["on-policy"] = torch.ones_like(delta)
    A = advantages(toy, x, formulation, U)
    terms = {name: (w * A).unsqueeze(-1) * score for name, w in weights.items()}
    return terms, weights, states


def dense(terms, states, S):
    """Place each term on its state's row: (n, S * V), a vector in parameter space.

    terms (n, V) with states (n,): one position t; terms (n, H, V) with states (n, H): the sum over t.
    Assignment (not accumulation) is enough: the states of one sequence are prefixes of different
    lengths, so no two of its terms share a row.
    """
    n, V = terms.shape[0], terms.shape[-1]
    out = torch.zeros(n, S, V, dtype=DTYPE)
    out[torch.arange(n).view(-1, *[1] * (states.dim() - 1)), states] = terms
    return out.view(n, S * V)


# -----------------------------------------------------------------------------
# Exact moments: weighted sums over all V^H sequences


def sequence_probs(toy, x, states):
    """(P_pi(x), P_mu(x)): products of the per-token probabilities."""
    return tuple(table_logprobs(logits, x, states).sum(dim=1).exp() for logits in (toy.theta, toy.mu_logits))


def exact_moments(toy, formulation):
    """The truth grad J and, per estimator, its exact mean, bias and variance under mu.

    bias = E_mu[g] - grad J; variance = trace of the covariance = E_mu ||g - E_mu g||^2 (the total
    variance). position_variance[t-1] = E_mu ||g_t - E_mu g_t||^2 of the t-th term g_t = w_t A_t grad log pi
    alone; weight_variance[t-1] = Var_mu(w_t). Computed in the direct two-pass form (no E[X^2] - E[X]^2).
    """
    x = all_sequences(toy.V, toy.H)
    U = prefix_values(toy)
    terms, weights, states = gradient_terms(toy, x, formulation, U)
    p_pi, p_mu = sequence_probs(toy, x, states)
    truth = p_pi @ dense(terms["on-policy"], states, toy.S)
    out = {}
    for name in ESTIMATORS:
        g = torch.zeros(x.shape[0], toy.S * toy.V, dtype=DTYPE)
        position_variance = []
        for t in range(toy.H):
            g_t = dense(terms[name][:, t], states[:, t], toy.S)  # (N, D)
            position_variance.append(float(p_mu @ (g_t - p_mu @ g_t).pow(2).sum(dim=1)))
            g += g_t
        mean = p_mu @ g
        w = weights[name]
        out[name] = {
            "bias": float((mean - truth).norm()),
            "rel_bias": float((mean - truth).norm() / truth.norm()),
            "variance": float(p_mu @ (g - mean).pow(2).sum(dim=1)),
            "position_variance": position_variance,
            "weight_variance": (p_mu @ (w - p_mu @ w).pow(2)).tolist(),
            "mean": mean,
        }
    return {"truth": truth, "estimators": out}


def lab(toy):
    """Exact moments for both formulations: {formulation: exact_moments(...)}."""
    return {f: exact_moments(toy, f) for f in FORMULATIONS}


def policy_gradient_autograd(toy):
    """grad J by autograd, J(theta) = sum_x P_pi(x) R(x): an independent check of the truth."""
    theta = toy.theta.clone().requires_grad_(True)
    x = all_sequences(toy.V, toy.H)
    J = table_logprobs(theta, x, state_index(x, toy.V)).sum(dim=1).exp() @ toy.reward
    (grad,) = torch.autograd.grad(J, theta)
    return grad.reshape(-1)


def chi2_per_token(toy):
    """chi^2(pi(.|s) || mu(.|s)) = sum_a pi^2 / mu - 1 at the state s_t mu visits, averaged under mu and over t.

    A yardstick for kappa: the paper's closed form Var(rho_t) = (1 + d)^t - 1 uses this d (i.i.d. ratios).
    """
    x = all_sequences(toy.V, toy.H)
    states = state_index(x, toy.V)
    _, p_mu = sequence_probs(toy, x, states)
    pi, mu = F.softmax(toy.theta, dim=-1), F.softmax(toy.mu_logits, dim=-1)
    chi2 = (pi.pow(2) / mu).sum(dim=-1) - 1  # (S,)
    return float((p_mu @ chi2[states]).mean())


# -----------------------------------------------------------------------------
# Monte Carlo: sample from mu and compare the empirical estimates with the exact ones


def projection_directions(truth, k, seed):
    """k unit vectors: the truth's direction and k - 1 fixed random ones.

    We test projections rather than all coordinates: k z-scores per estimator keep the multiple-
    comparison count small (8 estimator-formulations * 8 directions = 64 tests: at |z| < 4 a correct
    implementation fails with probability < 64 * 6.3e-5 = 0.4%, and the seeds are fixed).
    """
    g = torch.Generator().manual_seed(seed)
    u = torch.cat([truth.unsqueeze(0), torch.randn(k - 1, truth.numel(), generator=g, dtype=DTYPE)])
    return u / u.norm(dim=1, keepdim=True)


def monte_carlo(toy, exact, n, seed=0, k=8, chunk=4096):
    """Empirical mean, relative bias and total variance of every estimator from n samples of mu, plus the
    largest |z| of the empirical mean against the exact mean along k fixed directions.

    z = (u . mean_mc - u . mean_exact) / se, se = sample std of u . g(x) / sqrt(n).
    """
    g = torch.Generator().manual_seed(seed)
    x_all = sample_mu(toy, n, g)
    U = prefix_values(toy)
    D = toy.S * toy.V
    out = {}
    for f in FORMULATIONS:
        truth = exact[f]["truth"]
        dirs = projection_directions(truth, k, seed + 1)  # (k, D)
        acc = {name: {"sum": torch.zeros(D, dtype=DTYPE), "sumsq": torch.zeros(D, dtype=DTYPE), "proj": []} for name in ESTIMATORS}
        for lo in range(0, n, chunk):  # chunks: n * D dense vectors would not fit for large n
            x = x_all[lo : lo + chunk]
            terms, _, states = gradient_terms(toy, x, f, U)
            for name in ESTIMATORS:
                gx = dense(terms[name], states, toy.S)  # (m, D)
                a = acc[name]
                a["sum"] += gx.sum(dim=0)
                a["sumsq"] += gx.pow(2).sum(dim=0)
                a["proj"].append(gx @ dirs.T)
        out[f] = {}
        for name in ESTIMATORS:
            a = acc[name]
            mean = a["sum"] / n
            proj = torch.cat(a["proj"])  # (n, k)
            se = proj.std(dim=0) / math.sqrt(n)
            z = (proj.mean(dim=0) - dirs @ exact[f]["estimators"][name]["mean"]) / se
            out[f][name] = {
                "rel_bias": float((mean - truth).norm() / truth.norm()),
                "variance": float(((a["sumsq"] - n * mean.pow(2)) / (n - 1)).sum()),
                "max_abs_z": float(z.abs().max()),
            }
    return out


# -----------------------------------------------------------------------------
# Reports: table, JSON, plot


def to_json(results):
    return {
        f: {name: {k: results[f]["estimators"][name][k] for k in ("bias", "rel_bias", "variance")} for name in ESTIMATORS}
        for f in FORMULATIONS
    }


def format_table(toy, kappa, results):
    lines = [
        f"V={toy.V} H={toy.H} ({toy.V**toy.H} sequences, {toy.S} states, {toy.S * toy.V} parameters), kappa={kappa}; "
        f"mean per-token chi^2(pi||mu) = {chi2_per_token(toy):.3f}",
        f"|grad J| = {results['prefix']['truth'].norm():.6f}; |truth(prefix) - truth(outcome)| = "
        f"{(results['prefix']['truth'] - results['outcome']['truth']).norm():.1e}; "
        f"|truth - autograd dJ/dtheta| = {(results['prefix']['truth'] - policy_gradient_autograd(toy)).norm():.1e}",
        "",
        "| formulation | estimator  |  bias norm | rel. bias | total variance |",
        "|-------------|------------|-----------:|----------:|---------------:|",
    ]
    for f in FORMULATIONS:
        for name in ESTIMATORS:
            r = results[f]["estimators"][name]
            lines.append(f"| {f:<11} | {name:<10} | {r['bias']:10.3e} | {r['rel_bias']:9.2e} | {r['variance']:14.6f} |")
    lines += ["", "position-wise variance of the term w_t A_t grad log pi(a_t|s_t) (prefix):", ""]
    lines += ["| t | cumulative | sequence | ratio cum/seq | Var(rho_t) | Var(prod_H r) |", "|--:|---:|---:|---:|---:|---:|"]
    cum, seq = results["prefix"]["estimators"]["cumulative"], results["prefix"]["estimators"]["sequence"]
    for t in range(toy.H):
        vc, vs = cum["position_variance"][t], seq["position_variance"][t]
        lines.append(
            f"| {t + 1} | {vc:.6f} | {vs:.6f} | {vc / vs:.4f} | {cum['weight_variance'][t]:.4f} | {seq['weight_variance'][t]:.4f} |"
        )
    return "\n".join(lines)


def format_monte_carlo(results, ladder, mcs):
    """The MC relative bias converges to the exact one; for an unbiased estimator it is pure sampling noise,
    of size sqrt(Var / n) / |grad J| (E ||mean_n - E g||^2 = Var / n exactly), shown as the noise column."""
    n = ladder[-1]
    lines = [
        f"Monte Carlo (samples from mu) against the exact values; noise = sqrt(variance / n) / |grad J| and max|z| at n={n}",
        "(z: the MC mean minus the exact mean, in standard errors, along 8 fixed unit directions):",
        "",
        "| formulation | estimator | rel. bias exact | "
        + " | ".join(f"MC n={m}" for m in ladder)
        + " | noise | variance exact | MC variance | max abs z |",
        "|---|---|---:|" + "---:|" * len(ladder) + "---:|---:|---:|---:|",
    ]
    for f in FORMULATIONS:
        norm = float(results[f]["truth"].norm())
        for name in ESTIMATORS:
            r = results[f]["estimators"][name]
            mc = [m[f][name] for m in mcs]
            row = f"| {f} | {name} | {r['rel_bias']:.2e} | " + " | ".join(f"{m['rel_bias']:.2e}" for m in mc)
            noise = math.sqrt(r["variance"] / n) / norm
            lines.append(row + f" | {noise:.2e} | {r['variance']:.5f} | {mc[-1]['variance']:.5f} | {mc[-1]['max_abs_z']:.2f} |")
    return "\n".join(lines)


def sweep(V, H, seed, kappas):
    return [lab(make_toy(V, H, kappa, seed)) for kappa in kappas]


def plot(path, V, H, seed, kappas, kappa_default):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = sweep(V, H, seed, kappas)
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    t = list(range(1, H + 1))

    ax = axes[0]  # variance ratio against position: 1 at t = H, where rho_H is the sequence ratio
    shown = [k for k in (0.2, 0.5, 1.0, 2.0) if k in kappas] or list(kappas[:4])
    for kappa in shown:
        e = runs[kappas.index(kappa)]["prefix"]["estimators"]
        ratio = [c / s for c, s in zip(e["cumulative"]["position_variance"], e["sequence"]["position_variance"])]
        ax.plot(t, ratio, "o-", label=f"kappa={kappa}")
    e = runs[kappas.index(kappa_default)]["prefix"]["estimators"]
    wr = [c / s for c, s in zip(e["cumulative"]["weight_variance"], e["sequence"]["weight_variance"])]
    ax.plot(t, wr, "k:", marker="x", label=f"Var(rho_t)/Var(prod_H r), kappa={kappa_default}")
    ax.plot(t, [i / H for i in t], color="gray", lw=0.8, ls="--", label="t/H (paper, near on-policy)")
    ax.set(xlabel="position t", ylabel="variance ratio cumulative / sequence", title="per-position term, prefix advantage", ylim=(0, 1.45))
    ax.set_xticks(t)
    ax.legend(fontsize=7, ncol=2, loc="upper left")

    ax = axes[1]  # total variance ratio against off-policyness
    for f, ls in zip(FORMULATIONS, ("-", "--")):
        ratio = [r[f]["estimators"]["cumulative"]["variance"] / r[f]["estimators"]["sequence"]["variance"] for r in runs]
        ax.plot(kappas, ratio, "o" + ls, label=f"{f} advantage")
    ax.axhline(1.0, color="gray", lw=0.8, ls=":", label="1: as variable as the sequence ratio")  # outcome can exceed it
    ax.set(
        xlabel="off-policyness kappa (mu logits = pi logits + kappa * noise)",
        ylabel="total variance cumulative / sequence",
        title="total variance ratio",
        xscale="log",
        ylim=(0, 1.1),
    )
    ax.legend(fontsize=8)

    ax = axes[2]  # relative bias against off-policyness: the round-off floor means "exactly unbiased"
    # each estimator its own marker, drawn large to small: the unbiased ones share the round-off floor and would hide
    for name, color, marker, size in zip(ESTIMATORS, ("C0", "C1", "C2", "C3"), ("o", "D", "s", "^"), (5, 9, 6, 4)):
        for f, ls in zip(FORMULATIONS, ("-", "--")):
            rb = [max(r[f]["estimators"][name]["rel_bias"], 1e-17) for r in runs]
            fill = dict(mfc="none") if f == "outcome" or name == "cumulative" else {}
            ax.plot(kappas, rb, ls, marker=marker, ms=size, color=color, label=f"{name}, {f}", **fill)
    ax.set(
        xlabel="off-policyness kappa",
        ylabel="relative bias |E_mu g - grad J| / |grad J|",
        title="relative bias (1e-16: round-off)",
        xscale="log",
        yscale="log",
        ylim=(1e-17, 1e2),
    )
    ax.legend(fontsize=7, ncol=2)

    fig.suptitle(f"CTPO estimator lab: exact moments over all {V}^{H} sequences (seed {seed})", fontsize=11)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


# -----------------------------------------------------------------------------
# CLI


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line on stderr, the same style as every script here; exit status 2
        message = message[len("argument ") :] if message.startswith("argument ") else message  # '--H: ...' as elsewhere
        self.exit(2, f"{self.prog}: error: {message}\n")


def main(argv=None):
    p = Parser(prog="bias_variance.py", description=__doc__.split("\n\n")[0].strip(), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--V", type=int, default=3, help="vocabulary size, >= 2 (default: 3)")
    p.add_argument("--H", type=int, default=5, help="horizon (response length), >= 1; V^H sequences are enumerated (default: 5)")
    p.add_argument("--kappa", type=float, default=0.5, help="off-policyness: mu logits = pi logits + kappa * noise (default: 0.5)")
    p.add_argument("--seed", type=int, default=0, help="draws pi, the noise and the rewards (default: 0)")
    p.add_argument("--json", action="store_true", help="print the numbers as JSON only (no plot)")
    p.add_argument("--mc", type=int, default=0, metavar="N", help="Monte Carlo check with up to N samples from mu (JSON: monte_carlo)")
    p.add_argument("--out", "--plot", dest="out", default="out-lab/bias_variance.png", metavar="PATH",
                   help="the plot ('' to skip; --plot is the old name) (default: out-lab/bias_variance.png)")  # fmt: skip
    args = p.parse_args(argv)
    if args.V < 2:
        p.error(f"--V: need >= 2 tokens, got {args.V}")
    if args.H < 1:
        p.error(f"--H: need a horizon >= 1, got {args.H}")
    if not math.isfinite(args.kappa):
        p.error(f"--kappa: need a finite number, got {args.kappa}")
    if args.V**args.H * num_states(args.V, args.H) * args.V > 5e7:
        p.error(f"--V={args.V}, --H={args.H}: too many sequences to enumerate densely; keep V^H to a few thousand")
    if args.mc == 1 or args.mc < 0:
        p.error(f"--mc: need N >= 2 samples for a standard error (0 = off), got {args.mc}")

    toy = make_toy(args.V, args.H, args.kappa, args.seed)
    results = lab(toy)
    ladder = [n for n in (1_000, 10_000, 100_000, 1_000_000) if n < args.mc] + [args.mc] if args.mc else []
    mcs = [monte_carlo(toy, results, n, seed=args.seed) for n in ladder]
    if args.json:
        out = to_json(results)
        if mcs:
            out["monte_carlo"] = {"n": ladder[-1], **mcs[-1]}
        print(json.dumps(out, indent=2))
        return out
    print(format_table(toy, args.kappa, results))
    if mcs:
        print("\n" + format_monte_carlo(results, ladder, mcs))
    if args.out:
        kappas = sorted(set(DEFAULT_KAPPAS) | {args.kappa})
        plot(args.out, args.V, args.H, args.seed, kappas, args.kappa)
        print(f"\nplot: {args.out}")
    return results


if __name__ == "__main__":
    torch.set_num_threads(1)  # tensors of a few thousand entries: threads cost more than they save
    main(sys.argv[1:])
