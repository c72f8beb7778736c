"""
Learning lab: where the cumulative ratio's prefix correction changes what a policy learns.

bias_variance.py measures one gradient step exactly. This script runs the same tabular policy (one row of
logits per prefix, V = 3, H = 8: 6561 responses, 3280 states) through whole training runs, with the
rollouts sampled by a policy `lag` updates old, and asks how much faster or slower each importance ratio
learns. Everything that can be exact is: the objective J(theta) = sum_x P_theta(x) R(x) is computed at
every step by enumerating all V^H responses, and so is the shift Var_mu(log rho_H) between the sampling
policy mu and the policy pi being updated. Only the rollouts are sampled.

One training step k (plain SGD, float64, no clipping):
    mu = theta_{max(k - lag, 0)}                     the policy that sampled the batch (old_logp)
    x_1..x_N ~ mu                                    N responses, token by token
    A_i = R(x_i) - mean_j R(x_j)                     one outcome advantage per response (GRPO, no std)
    theta_{k+1} = theta_k + lr * (1/N) sum_i sum_t w_t(x_i) A_i grad log pi(a_t|s_t)
with w_t from ctpo.py's ratio functions (via bias_variance.log_weights): token r_t, cumulative rho_t,
sequence prod_{t<=H} r_t, gspo (prod r)^(1/H); delta_t = log pi - log mu. The raw ratios, unclipped: the
question is what the correction itself does, and a clip window would mix in a second effect (see
docs/lab.md for where the shift sits against CTPO's window).

Two credit structures (R in [0, 1]; the target is drawn from the seed):
    local      a reward per adjacent pair, like train_tiny.py's pairs task: pair k = (x_{2k-1}, x_{2k}) is
               right when x_{2k} = F(x_{2k-1}), F a fixed map of the V tokens; R = pairs right / (H // 2).
               What a token should be depends on the token before it, not on the rest of the prefix.
    entangled  credit only along one target response y: R = (length of the leading run x_1..x_k = y_1..y_k) / H.
               Token t earns its credit only if every token before it was right: learning at a state pays
               only if the policy reaches that exact state.

Two parameterizations of the same policy over the prefix tree: tabular (one row per prefix) and markov (one row
per (position, previous token), shared by all prefixes that end the same way: a rule applied whatever came before).

Pairing: seed s fixes the task, the initial policy and the stream of uniforms that drives sampling (inverse
CDF, N * H uniforms per step whatever the policy), so every estimator, lag and batch size sees the same
random numbers. At lag 0 every ratio is exactly 1 (delta = 0 in float64) and the estimators' runs are
bit-identical.

Run:  python lab_learning.py                     the map: table on stdout, curves in out-lab/lab_learning.png
      python lab_learning.py --credit=entangled --lr=3 --lag=8,32,64 --out=''   larger shifts
      python lab_learning.py --lag=8 --N=256,4096 --out=''                        batch sizes
      python lab_learning.py --json              the same numbers as JSON (no plot)
"""

import argparse
import json
import math
import os
import sys

import torch
import torch.nn.functional as F

from bias_variance import Parser, all_sequences, log_weights, num_states, state_index, state_offset

DTYPE = torch.float64
ESTIMATORS = ("token", "cumulative", "sequence", "gspo")
CREDITS = ("local", "entangled")
POLICIES = ("tabular", "markov")

# -----------------------------------------------------------------------------
# The tasks: reward functions of whole responses


def local_reward(x, F_map):
    """R(x) = (number of pairs k with x_{2k} = F(x_{2k-1})) / (H // 2): x (n, H) long, F_map (V,) long -> (n,) float64.

    Pairs do not overlap (as in the pairs task: a free token, then its value); for odd H the last token is free.
    """
    n_pairs = x.shape[1] // 2
    if n_pairs < 1:
        raise ValueError(f"local credit needs H >= 2, got H={x.shape[1]}")
    first, second = x[:, 0 : 2 * n_pairs : 2], x[:, 1 : 2 * n_pairs : 2]  # (n, H // 2)
    return (second == F_map[first]).sum(dim=1).to(DTYPE) / n_pairs


def entangled_reward(x, y):
    """R(x) = (length of the leading run where x_t = y_t) / H: x (n, H) long, y (H,) long -> (n,) float64."""
    return (x == y).long().cumprod(dim=1).sum(dim=1).to(DTYPE) / x.shape[1]


def make_task(credit, V, H, generator):
    """The target of one seed: F (V,) for local credit, y (H,) for entangled credit."""
    if credit == "local":
        return torch.randint(0, V, (V,), generator=generator)
    if credit == "entangled":
        return torch.randint(0, V, (H,), generator=generator)
    raise ValueError(f"credit: unknown {credit!r}; expected one of {CREDITS}")


def reward(credit, x, target):
    return local_reward(x, target) if credit == "local" else entangled_reward(x, target)


# -----------------------------------------------------------------------------
# The tabular policy, K runs at once: logits (K, S, V), one row per prefix (bias_variance.py's layout)


def token_logprobs(logp_table, x):
    """log p(a_t | s_t) under K tables of log-probs: logp_table (K, S, V), x (K, n, H) or (n, H) -> (K, n, H)."""
    K, S, V = logp_table.shape
    flat = state_index(x.reshape(-1, x.shape[-1]), V).view_as(x) * V + x  # (K, n, H) or (n, H): row s_t, column a_t
    if x.dim() == 2:  # the same responses for every run
        return logp_table.reshape(K, S * V)[:, flat]
    return logp_table.reshape(K, S * V).gather(1, flat.view(K, -1)).view_as(x)


def exact_objective(logp_table, x_all, R_all):
    """J = sum_x P(x) R(x) by enumeration, and log P(x) of every response: (K,), (K, V^H).

    x_all (V^H, H) every response; R_all (K, V^H) the reward of each under each run's task.
    """
    logP = token_logprobs(logp_table, x_all).sum(dim=2)  # (K, V^H)
    return (logP.exp() * R_all).sum(dim=1), logP


def sample(logp_table, u, H):
    """Responses drawn token by token by inverse CDF: u (K, N, H) uniforms in [0, 1) -> x (K, N, H) long.

    a_t = the number of cumulative probabilities <= u_t (the last one, 1 up to rounding, is never compared):
    the same u gives the same tokens under the same policy, and nearby tokens under a nearby one.
    """
    K, N = u.shape[0], u.shape[1]
    V = logp_table.shape[2]
    x = torch.zeros(K, N, H, dtype=torch.long)
    code = torch.zeros(K, N, dtype=torch.long)
    for i in range(H):
        rows = state_offset(V, i) + code  # (K, N)
        cdf = logp_table.gather(1, rows.unsqueeze(2).expand(-1, -1, V)).exp().cumsum(dim=2)  # (K, N, V)
        x[:, :, i] = (u[:, :, i : i + 1] >= cdf[:, :, : V - 1]).sum(dim=2)
        code = code * V + x[:, :, i]
    return x


def policy_gradient_estimate(logp_table, x, coef):
    """(1/N) sum_i sum_t coef_it grad log pi(a_t|s_t), coef already divided by N: -> (K, S, V).

    For a softmax row, d log pi(a|s) / d theta[s] = onehot(a) - pi(.|s). The per-(state, token) sums are a
    weighted bincount: one sequential pass, so the result does not depend on the thread count.
    """
    K, S, V = logp_table.shape
    states = state_index(x.reshape(-1, x.shape[-1]), V).view_as(x)  # (K, N, H)
    idx = (torch.arange(K).view(K, 1, 1) * S + states) * V + x  # (K, N, H) flat (run, state, token)
    C = torch.bincount(idx.reshape(-1), weights=coef.reshape(-1), minlength=K * S * V).view(K, S, V)
    return C - C.sum(dim=2, keepdim=True) * logp_table.exp()


# -----------------------------------------------------------------------------
# Training runs. Two parameterizations of the same policy over the prefix tree:
#   tabular  one row of logits per prefix (bias_variance.py's toy): nothing learned at one prefix carries to another
#   markov   one row per (position, previous token), shared by every prefix that ends the same way: like a network
#            that has learned to look at the last token, what is learned at one prefix carries to all of them


def row_map(policy, V, H):
    """(S,) the parameter row of every state (prefix): the identity for tabular, t * V + last token for markov."""
    S = num_states(V, H)
    if policy == "tabular":
        return torch.arange(S)
    if policy == "markov":
        rows = [torch.zeros(1, dtype=torch.long)]  # the empty prefix: row 0
        for k in range(1, H):
            rows.append(k * V + torch.arange(V**k) % V)  # prefix code c of length k ends with token c % V
        return torch.cat(rows)
    raise ValueError(f"policy: unknown {policy!r}; expected one of {POLICIES}")


def state_to_param_grad(grad, rmap, P):
    """The chain rule through shared rows: grad (K, S, V) per state -> (K, P, V), the sum over the states of each row.

    A weighted bincount, one sequential pass: the result does not depend on the thread count."""
    K, S, V = grad.shape
    idx = (torch.arange(K).view(K, 1, 1) * P + rmap.view(1, S, 1)) * V + torch.arange(V)  # (K, S, V) flat (run, row, token)
    return torch.bincount(idx.reshape(-1), weights=grad.reshape(-1), minlength=K * P * V).view(K, P, V)


def init_runs(credit, V, H, seeds, init_std, P):
    """Per seed: the task, theta_0 (P, V) and the sampling generator, in that order from torch.Generator(seed)."""
    targets, thetas, gens = [], [], []
    for seed in seeds:
        g = torch.Generator().manual_seed(seed)
        targets.append(make_task(credit, V, H, g))
        thetas.append(init_std * torch.randn(P, V, generator=g, dtype=DTYPE))
        gens.append(g)
    return targets, torch.stack(thetas), gens


def train(credit, estimator, lag, N, steps, lr, seeds, V=3, H=8, policy="tabular", init_std=0.0):
    """Runs one estimator on every seed at once. Returns a dict of per-seed histories:

    J (K, steps + 1) the exact objective at theta_0 .. theta_steps; var_log_rho (K, steps) Var_mu(log rho_H),
    exact, at each step (0 at lag 0 and at step 0); batch_reward (K, steps) the mean reward of each batch.
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator: unknown {estimator!r}; expected one of {ESTIMATORS}")
    if lag < 0 or N < 2 or steps < 1:
        raise ValueError(f"need lag >= 0, N >= 2 and steps >= 1, got lag={lag}, N={N}, steps={steps}")
    rmap = row_map(policy, V, H)
    P = int(rmap.max()) + 1
    targets, theta, gens = init_runs(credit, V, H, seeds, init_std, P)
    K = len(seeds)
    x_all = all_sequences(V, H)
    R_all = torch.stack([reward(credit, x_all, t) for t in targets])  # (K, V^H)
    history = []  # log-prob tables of theta_{k-lag} .. theta_k, with log P(x) of every response
    J, var_log_rho, batch_reward = [], [], []
    for k in range(steps + 1):
        logp = F.log_softmax(theta[:, rmap], dim=2)  # (K, S, V) every state's row
        j, logP = exact_objective(logp, x_all, R_all)
        J.append(j)
        if k == steps:
            break
        history = (history + [(logp, logP)])[-(lag + 1) :]
        logp_mu, logP_mu = history[0]
        # the exact shift: Var_mu(log P_pi(x) - log P_mu(x)) = Var_mu(log rho_H), two-pass
        p_mu, d = logP_mu.exp(), logP - logP_mu
        m = (p_mu * d).sum(dim=1, keepdim=True)
        var_log_rho.append((p_mu * (d - m).pow(2)).sum(dim=1))
        u = torch.stack([torch.rand(N, H, generator=g, dtype=DTYPE) for g in gens])  # (K, N, H)
        x = sample(logp_mu, u, H)
        R = torch.stack([reward(credit, x[i], targets[i]) for i in range(K)])  # (K, N)
        batch_reward.append(R.mean(dim=1))
        A = R - R.mean(dim=1, keepdim=True)  # (K, N)
        delta = (token_logprobs(logp, x) - token_logprobs(logp_mu, x)).view(K * N, H)  # exactly 0 at lag 0
        w = log_weights(delta)[estimator].exp().view(K, N, H)
        if not torch.isfinite(w).all():
            raise FloatingPointError(f"{estimator}: a ratio overflowed at step {k} (lag={lag}, lr={lr}): the shift is too large")
        grad = policy_gradient_estimate(logp, x, w * A.unsqueeze(2) / N)  # (K, S, V) per state
        theta = theta + lr * (grad if policy == "tabular" else state_to_param_grad(grad, rmap, P))
    return {"J": torch.stack(J, dim=1), "var_log_rho": torch.stack(var_log_rho, dim=1), "batch_reward": torch.stack(batch_reward, dim=1)}


# -----------------------------------------------------------------------------
# Statistics: the paired 95% interval over seeds (Student t, exact for integer degrees of freedom)


def t_cdf_two_sided(t, df):
    """P(|T| <= t) for Student's t with an integer df >= 1 (Abramowitz & Stegun 26.7.3 and 26.7.4, finite sums)."""
    theta = math.atan(t / math.sqrt(df))
    c2, s = math.cos(theta) ** 2, math.sin(theta)
    if df % 2 == 1:  # (2/pi) (theta + sin cos (1 + 2/3 cos^2 + 2*4/(3*5) cos^4 + ...)), df - 1 terms after theta
        term, total = 1.0, 1.0 if df > 1 else 0.0
        for k in range(1, (df - 1) // 2):
            term *= 2 * k / (2 * k + 1) * c2
            total += term
        return 2 / math.pi * (theta + s * math.cos(theta) * total)
    term, total = 1.0, 1.0  # sin (1 + 1/2 cos^2 + 1*3/(2*4) cos^4 + ...)
    for k in range(1, df // 2):
        term *= (2 * k - 1) / (2 * k) * c2
        total += term
    return s * total


def t_quantile_975(df):
    """The 0.975 quantile of Student's t with an integer df >= 1, by bisection to 1e-12."""
    if not (isinstance(df, int) and df >= 1):
        raise ValueError(f"df: expected an int >= 1, got {df!r}")
    lo, hi = 0.0, 1.0
    while t_cdf_two_sided(hi, df) < 0.95:
        hi *= 2
    while hi - lo > 1e-12 * hi:
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if t_cdf_two_sided(mid, df) < 0.95 else (lo, mid)
    return (lo + hi) / 2


def paired_interval(diffs):
    """Mean of per-seed differences and its 95% t interval: {"mean", "lo", "hi", "n"} (lo = hi = mean for n = 1)."""
    d = [float(v) for v in diffs]
    n = len(d)
    mean = sum(d) / n
    if n < 2:
        return {"mean": mean, "lo": mean, "hi": mean, "n": n}
    sd = math.sqrt(sum((v - mean) ** 2 for v in d) / (n - 1))
    half = t_quantile_975(n - 1) * sd / math.sqrt(n)
    return {"mean": mean, "lo": mean - half, "hi": mean + half, "n": n}


def gain(run):
    """Per seed: the exact J averaged over theta_1 .. theta_steps, minus J(theta_0) (K,): learning speed."""
    return run["J"][:, 1:].mean(dim=1) - run["J"][:, 0]


# -----------------------------------------------------------------------------
# The sweep: every setting of the swept axes, every estimator on the same seeds, and the lag-0 baseline


def sweep(credits, policies, lags, Ns, lrs, estimators, steps, seeds, V, H, init_std, log=None):
    """Returns (rows, curves). rows: one dict per (credit, policy, N, lr, lag > 0) with the paired intervals;
    curves[(credit, policy, N, lr, lag)][estimator] = mean over seeds of J_k - J_0, k = 0 .. steps ("lag 0": the baseline).
    """
    rows, curves = [], {}
    for credit in credits:
        for policy in policies:
            for N in Ns:
                for lr in lrs:
                    kw = dict(steps=steps, lr=lr, seeds=seeds, V=V, H=H, policy=policy, init_std=init_std)
                    base = train(credit, "token", 0, N, **kw)  # at lag 0 every estimator gives this same run
                    g0 = gain(base)
                    for lag in lags:
                        key = (credit, policy, N, lr, lag)
                        if lag == 0:
                            curves[key] = {"lag 0": (base["J"] - base["J"][:, :1]).mean(dim=0)}
                            continue
                        runs = {e: train(credit, e, lag, N, **kw) for e in estimators}
                        g = {e: gain(r) for e, r in runs.items()}
                        curves[key] = {e: (r["J"] - r["J"][:, :1]).mean(dim=0) for e, r in runs.items()}
                        curves[key]["lag 0"] = (base["J"] - base["J"][:, :1]).mean(dim=0)
                        ref = "token" if "token" in g else estimators[0]
                        row = dict(credit=credit, policy=policy, N=N, lr=lr, lag=lag, reference=ref)
                        row["var_log_rho_H"] = {e: float(r["var_log_rho"].mean()) for e, r in runs.items()}
                        row["gain_lag0"] = float(g0.mean())
                        row["gain"] = {e: float(v.mean()) for e, v in g.items()}
                        row["lag_cost"] = paired_interval(g0 - g[ref])
                        row["vs_reference"] = {e: paired_interval(g[e] - g[ref]) for e in estimators if e != ref}
                        rows.append(row)
                        if log:
                            log(format_row(row, estimators))
    return rows, curves


def fmt(p):
    return f"{p['mean']:+.4f} [{p['lo']:+.4f}, {p['hi']:+.4f}]"


def table_header(estimators):
    ref = "token" if "token" in estimators else estimators[0]
    others = [e for e in estimators if e != ref]
    shift = f"Var(log rho_H): {ref} / cumulative run" if "cumulative" in estimators and ref != "cumulative" else "Var(log rho_H)"
    cols = ["credit", "policy", "N", "lr", "lag", shift, "gain, lag 0", f"gain, {ref}", f"lag cost: lag 0 - {ref}"]
    cols += [f"{e} - {ref}" for e in others]
    return "| " + " | ".join(cols) + " |\n|" + "---|" * 5 + "---:|" * (len(cols) - 5)


def format_row(row, estimators):
    ref = row["reference"]
    cells = [row["credit"], row["policy"], str(row["N"]), f"{row['lr']:g}", str(row["lag"])]
    shift = f"{row['var_log_rho_H'][ref]:.4f}"
    if "cumulative" in row["var_log_rho_H"] and ref != "cumulative":
        shift += f" / {row['var_log_rho_H']['cumulative']:.4f}"
    cells += [shift, f"{row['gain_lag0']:.4f}", f"{row['gain'][ref]:.4f}", fmt(row["lag_cost"])]
    cells += [fmt(row["vs_reference"][e]) for e in estimators if e != ref]
    return "| " + " | ".join(cells) + " |"


# -----------------------------------------------------------------------------
# The plot: learning curves at one lag per (credit, policy), and the map of the paired differences


def plot(path, rows, curves, args, estimators):
    """One row per credit structure: the learning curves of each policy at one lag, then one map panel (the paired
    difference to the token ratio against the shift, over every lag; cumulative on the first row, then sequence)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lags = [lag for lag in args.lag if lag > 0]
    plot_lag = 8 if 8 in lags else lags[-1]
    N, lr = args.N[0], args.lr[0]
    others = [e for e in estimators if e != "token"] if "token" in estimators else []
    nrows, ncols = len(args.credit), len(args.policy) + (1 if others else 0)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 3.9 * nrows), squeeze=False)
    colors = {"token": "C0", "cumulative": "C1", "sequence": "C2", "gspo": "C3"}
    for i, credit in enumerate(args.credit):
        for j, policy in enumerate(args.policy):
            ax = axes[i][j]
            c = curves[(credit, policy, N, lr, plot_lag)]
            steps = range(len(c["lag 0"]))
            ax.plot(steps, c["lag 0"].tolist(), color="k", ls="--", lw=1, label="lag 0 (on-policy: all equal)")
            for e in estimators:
                ax.plot(steps, c[e].tolist(), color=colors[e], lw=1.2, label=f"{e}, lag {plot_lag}")
            spread = max(float((c[a] - c[b]).abs().max()) for a in estimators for b in estimators)  # lines drawn on top of each other
            note = f"\n(lag {plot_lag}: the {len(estimators)} estimators at most {spread:.3f} apart)"
            ax.set(title=f"{credit} credit, {policy} policy{note}", xlabel="SGD step k")
            ax.set_ylabel("J(theta_k) - J(theta_0) (exact, seed mean)")
            ax.legend(fontsize=7, loc="lower right")
    markers = {"tabular": "o", "markov": "s"}
    for i in range(nrows):
        if i >= len(others):
            if others:
                axes[i][-1].remove()
            continue
        e, ax = others[i], axes[i][-1]
        for k, credit in enumerate(args.credit):
            for policy in args.policy:
                sel = [r for r in rows if (r["credit"], r["policy"], r["N"], r["lr"]) == (credit, policy, N, lr)]
                xs = [r["var_log_rho_H"]["token"] for r in sel]
                ps = [r["vs_reference"][e] for r in sel]
                err = [[p["mean"] - p["lo"] for p in ps], [p["hi"] - p["mean"] for p in ps]]
                ax.errorbar(xs, [p["mean"] for p in ps], yerr=err, marker=markers.get(policy, "o"), color=f"C{4 + k}",
                            ls="-" if policy == "tabular" else ":", capsize=3, label=f"{credit}, {policy}")  # fmt: skip
                for x, r, p in zip(xs, sel, ps) if (credit, policy) == (args.credit[-1], args.policy[0]) else ():  # one series: the lags
                    ax.annotate(f"lag {r['lag']}", (x, p["mean"]), fontsize=8, xytext=(-6, 8), textcoords="offset points", ha="right")
        ax.axhline(0, color="gray", lw=0.8)
        ax.set(xscale="log", xlabel="shift Var(log rho_H) under mu (exact, token runs)", ylabel="gain difference (mean J over training)")
        ax.set_title(f"{e} - token, paired 95% interval ({args.seeds} seeds)", fontsize=10)
        ax.legend(fontsize=7, loc="upper left")
    fig.suptitle(f"Learning from a sampler `lag` updates old: V={args.V}, H={args.H}, N={N}, lr={lr:g}, raw ratios", fontsize=11)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


# -----------------------------------------------------------------------------
# CLI


def int_list(name, lo):
    def parse(text):
        try:
            vals = [int(v) for v in text.split(",")]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
        if any(v < lo for v in vals) or len(set(vals)) != len(vals):
            raise argparse.ArgumentTypeError(f"expected distinct integers >= {lo}, got {text!r}")
        return vals

    parse.__name__ = name
    return parse


def float_list(text):
    try:
        vals = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not all(math.isfinite(v) and v > 0 for v in vals) or len(set(vals)) != len(vals):
        raise argparse.ArgumentTypeError(f"expected distinct finite numbers > 0, got {text!r}")
    return vals


def choice_list(choices):
    def parse(text):
        vals = text.split(",")
        if not vals or any(v not in choices for v in vals) or len(set(vals)) != len(vals):
            raise argparse.ArgumentTypeError(f"expected distinct names from {','.join(choices)}, got {text!r}")
        return vals

    return parse


def args_seeds(args):
    return list(range(args.seeds))


def main(argv=None):
    p = Parser(prog="lab_learning.py", description=__doc__.split("\n\n")[0].strip(), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--credit", type=choice_list(CREDITS), default=list(CREDITS), help="credit structures, comma-separated (default: local,entangled)"
    )
    p.add_argument("--policy", type=choice_list(POLICIES), default=list(POLICIES), help="parameterizations (default: tabular,markov)")
    p.add_argument(
        "--lag",
        type=int_list("lag", 0),
        default=[0, 2, 8, 32],
        help="updates between the sampling policy and the updated one (default: 0,2,8,32)",
    )
    p.add_argument("--N", type=int_list("N", 2), default=[16], help="responses per batch, >= 2 (default: 16)")
    p.add_argument("--lr", type=float_list, default=[1.0], help="SGD learning rate(s) (default: 1.0)")
    p.add_argument(
        "--estimators",
        type=choice_list(ESTIMATORS),
        default=list(ESTIMATORS),
        help="ratios to run; differences are to token when it runs (default: token,cumulative,sequence,gspo)",
    )
    p.add_argument("--steps", type=int, default=200, help="SGD steps per run, >= 1 (default: 200)")
    p.add_argument("--seeds", type=int, default=8, help="seeds 0 .. SEEDS-1, each one task, theta_0 and sampling stream, >= 2 (default: 8)")
    p.add_argument("--V", type=int, default=3, help="vocabulary, >= 2 (default: 3)")
    p.add_argument("--H", type=int, default=8, help="response length, >= 2; V^H responses are enumerated every step (default: 8)")
    p.add_argument("--init_std", type=float, default=0.0, help="theta_0 = init_std * N(0, 1); 0: the uniform policy (default: 0.0)")
    p.add_argument("--json", action="store_true", help="print the rows as JSON only (no plot)")
    p.add_argument(
        "--out", default="out-lab/lab_learning.png", metavar="PATH", help="the plot ('' to skip) (default: out-lab/lab_learning.png)"
    )
    args = p.parse_args(argv)
    if args.steps < 1:
        p.error(f"--steps: need >= 1, got {args.steps}")
    if args.seeds < 2:
        p.error(f"--seeds: need >= 2 for a paired interval, got {args.seeds}")
    if args.V < 2 or args.H < 2:
        p.error(f"--V, --H: need V >= 2 and H >= 2, got V={args.V}, H={args.H}")
    if args.V**args.H > 60_000:
        p.error(f"--V={args.V}, --H={args.H}: {args.V**args.H} responses to enumerate every step; keep V^H <= 60000")
    if not (math.isfinite(args.init_std) and args.init_std >= 0):
        p.error(f"--init_std: need a finite number >= 0, got {args.init_std}")
    if not any(lag > 0 for lag in args.lag):
        p.error("--lag: need at least one lag > 0 (lag 0 is the baseline, always run)")
    seeds = args_seeds(args)
    log = None if args.json else print
    if not args.json:
        print(
            f"V={args.V} H={args.H} ({args.V**args.H} responses enumerated), steps={args.steps}, seeds 0-{args.seeds - 1} paired, "
            f"raw ratios (no clipping); gain = exact J averaged over theta_1..theta_steps minus J(theta_0); "
            f"intervals: mean [95% t interval] of per-seed differences\n"
        )
        print(table_header(args.estimators))
    rows, curves = sweep(
        args.credit, args.policy, args.lag, args.N, args.lr, args.estimators, args.steps, seeds, args.V, args.H, args.init_std, log
    )
    if args.json:
        print(json.dumps(rows, indent=1))
        return rows
    if args.out:
        plot(args.out, rows, curves, args, args.estimators)
        print(f"\nplot: {args.out}")
    return rows


if __name__ == "__main__":
    torch.set_num_threads(1)  # small tensors on a shared machine; the results do not depend on it
    main(sys.argv[1:])
