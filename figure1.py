"""
The paper's Figure 1 on the toy, from the per-position sums that train_tiny.py logs in metrics.jsonl
(position_sums below, called on every mini-batch; plot_run draws a run's train.png).

Top: the std of the cumulative log-ratio log rho_t against the response position t, per bin of
positions, with the fit std = sigma * sqrt(t) (weighted least squares, weights sqrt(count), no
intercept, as in the paper) and its R^2. Bottom: the clip rate against t of a fixed ratio window
[0.5, 5] and of CTPO's adaptive window [-0.025 sqrt(t), 0.05 sqrt(t)] in log space, both evaluated on
the same tokens; a token counts as clipped when (A > 0 and log rho above the window) or (A < 0 and
log rho below it).

    python figure1.py --run=out-tiny                            # -> out-figure1/figure1.png
    python figure1.py --run=out-tiny out-grpo --steps=100:400   # several runs, a step range
    python figure1.py --run=out-long --bin=8 --json             # the numbers as JSON (no plot)
    python figure1.py --run=out-tiny --out=assets/figure1.png   # regenerate the README's figure

Binning: the paper bins positions by 50 over up to 8000 tokens (160 bins). --bin=0 (the default)
chooses max(1, T // 16) positions per bin, T the last well-populated position, so a run gets at least
16 bins: 1 (no binning) on the 17-21 token default toy, 8 on the ~130 token config/long.py. The
statistics pool every token of every mini-batch of every selected step, on-policy ones included.

Definitions (bin b holds positions t_lo..t_hi; N_b tokens):
    t_b     = mean position of the bin's tokens (count-weighted)
    std_b   = std of log rho over the bin's N_b tokens, ddof = 1
    sigma   = argmin sum_b w_b (std_b - sigma sqrt(t_b))^2 = sum w std sqrt(t) / sum w t,  w_b = sqrt(N_b)
    R^2     = 1 - sum w (std - sigma sqrt(t))^2 / sum w (std - mean_w(std))^2   (weighted, centred;
              None with fewer than 2 bins)
    var fit = the same bins, var_b = std_b^2 = a + s^2 t_b (weighted least squares, with an intercept): a random
              walk whose first steps may be larger (a > 0) than the rest; printed beside the paper's fit, not
              instead of it. The per-bin std of delta_t says directly whether the steps are of equal size.
"""

import argparse
import json
import math
import os
import sys


class UsageError(ValueError):
    """Bad arguments or a run folder that does not hold what they ask for: one line, exit status 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line on stderr, the same style as every script here; exit status 2
        message = message[len("argument ") :] if message.startswith("argument ") else message  # '--H: ...' as elsewhere
        self.exit(2, f"{self.prog}: error: {message}\n")


# -----------------------------------------------------------------------------
# logging (train_tiny.py calls this on every mini-batch)

POS_KEYS = ("n", "sum", "sumsq", "clip_adaptive", "clip_fixed", "clip_method", "dsum", "dsumsq")


def position_sums(logp, old_logp, mask, adv, clipped_by_method, fixed_window, width):
    """The paper's Figure 1, logged: (8, width) float64 sums per response position t (index t - 1) of POS_KEYS: token
    count; sum, sum of squares of log rho_t (any method, value only); tokens clipped by the CTPO sqrt(t) window, the
    fixed window, the method's own loss (the paper's way: A > 0 and above, or A < 0 and below); sums of delta_t."""
    import torch  # here, not at the top: plotting needs no torch

    import ctpo

    delta = (logp.float() - old_logp.float()).clamp(-20, 20)
    log_rho = ctpo.cumulative_ratio(delta, mask).clamp(max=10.0)  # (B, T)
    t = ctpo.response_position(mask)
    A = adv[:, None].expand_as(log_rho).to(log_rho.dtype)
    lo, hi, dual = ctpo.adaptive_clip_bounds(t)  # the CTPO defaults: [-0.025 sqrt(t), 0.05 sqrt(t)]
    high_a, low_a, _ = ctpo.clip_flags(log_rho, A, lo, hi, dual)
    high_f, low_f, _ = ctpo.clip_flags(log_rho, A, math.log(fixed_window[0]), math.log(fixed_window[1]), math.inf)
    values = (torch.ones_like(log_rho), log_rho, log_rho**2, high_a | low_a, high_f | low_f, clipped_by_method, delta, delta**2)
    idx = (t - 1).clamp(min=0)[mask]
    out = torch.zeros(len(POS_KEYS), width, dtype=torch.float64, device=logp.device)
    for k, v in enumerate(values):
        out[k].index_add_(0, idx, v[mask].double())
    return out


# -----------------------------------------------------------------------------
# reading a run


def load_positions(run_dir, steps=None):
    """Pool the per-position sums of a run over a step range (inclusive). Returns ({key: list indexed by t - 1}, (first, last) step)."""
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        raise UsageError(f"--run: {run_dir!r} has no metrics.jsonl (expected an out_dir of train_tiny.py)")
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    rows = [r for r in rows if "pos" in r and (steps is None or steps[0] <= r["step"] <= steps[1])]
    if not rows:
        span = "" if steps is None else f" in steps {steps[0]}:{steps[1]}"
        raise UsageError(f"--run: {path} has no RL step with per-position data{span}")
    width = max(len(r["pos"]["n"]) for r in rows)
    tot = {k: [0.0] * width for k in rows[0]["pos"]}
    for r in rows:
        for k, v in r["pos"].items():
            for i, x in enumerate(v):
                tot[k][i] += x
    return tot, (rows[0]["step"], rows[-1]["step"])


# -----------------------------------------------------------------------------
# binning and the sqrt(t) fit


def auto_bin(tot, min_frac=0.01):
    """max(1, T // 16), T the last position holding at least min_frac of the largest position count."""
    top = max(tot["n"], default=0)
    T = max((i + 1 for i, c in enumerate(tot["n"]) if c >= max(2, min_frac * top)), default=1)
    return max(1, T // 16)


def bin_positions(tot, bin, min_frac=0.01):
    """Pool positions t = 1..W into bins of `bin` positions. Returns a list of dicts, one per bin that holds at
    least max(2, min_frac * the largest bin count) tokens: t_lo, t_hi, t (mean position of its tokens), n,
    std (log rho, ddof = 1) and delta_std (the per-token delta_t; None for runs logged before it), and the
    clip rates clip_fixed, clip_adaptive, clip_method (fractions of the bin's tokens)."""
    if bin < 1:
        raise ValueError(f"bin: need >= 1 positions per bin, got {bin}")
    W = len(tot["n"])
    pooled = []
    for lo in range(0, W, bin):
        idx = range(lo, min(W, lo + bin))
        s = {k: sum(tot[k][i] for i in idx) for k in tot}
        s["tsum"] = sum((i + 1) * tot["n"][i] for i in idx)
        pooled.append((lo + 1, idx[-1] + 1, s))
    top = max((s["n"] for _, _, s in pooled), default=0)

    def std(total, sq, n):  # ddof = 1, from sums (float64; the sums are of O(1) values)
        mean = total / n
        return math.sqrt(max(0.0, (sq - n * mean * mean) / (n - 1)))

    out = []
    for t_lo, t_hi, s in pooled:
        n = s["n"]
        if n < max(2, min_frac * top):
            continue
        out.append(
            {
                "t_lo": t_lo,
                "t_hi": t_hi,
                "t": s["tsum"] / n,
                "n": n,
                "std": std(s["sum"], s["sumsq"], n),
                "delta_std": std(s["dsum"], s["dsumsq"], n) if "dsum" in s else None,
                "clip_fixed": s["clip_fixed"] / n,
                "clip_adaptive": s["clip_adaptive"] / n,
                "clip_method": s["clip_method"] / n,
            }
        )
    return out


def fit_sqrt(t, std, n):
    """Weighted least squares std = sigma * sqrt(t), weights sqrt(n), no intercept. Returns (sigma, R^2);
    R^2 is weighted and centred (None with fewer than 2 points or when every std is the same)."""
    if not t:
        raise ValueError("fit_sqrt: no bins to fit")
    w = [math.sqrt(c) for c in n]  # minimise sum w (std - sigma sqrt t)^2  =>  sigma = sum w std sqrt t / sum w t
    sigma = sum(wi * s * math.sqrt(ti) for wi, s, ti in zip(w, std, t)) / sum(wi * ti for wi, ti in zip(w, t))
    mean = sum(wi * s for wi, s in zip(w, std)) / sum(w)
    ss_res = sum(wi * (s - sigma * math.sqrt(ti)) ** 2 for wi, s, ti in zip(w, std, t))
    ss_tot = sum(wi * (s - mean) ** 2 for wi, s in zip(w, std))
    r2 = 1.0 - ss_res / ss_tot if len(t) >= 2 and ss_tot > 0 else None
    return sigma, r2


def fit_var(t, std, n):
    """Weighted least squares var = a + s^2 t (a random walk whose first steps may differ from the rest: a is their
    excess variance), weights sqrt(n), on var_b = std_b^2. Returns (a, s, R^2 of var, weighted and centred); s is
    None when the slope is negative, R^2 None with fewer than 3 points."""
    if len(t) < 3:
        return None, None, None
    w, v = [math.sqrt(c) for c in n], [x * x for x in std]
    W = sum(w)
    mt, mv = sum(wi * ti for wi, ti in zip(w, t)) / W, sum(wi * vi for wi, vi in zip(w, v)) / W
    stt = sum(wi * (ti - mt) ** 2 for wi, ti in zip(w, t))
    slope = sum(wi * (ti - mt) * (vi - mv) for wi, ti, vi in zip(w, t, v)) / stt
    a = mv - slope * mt
    ss_res = sum(wi * (vi - a - slope * ti) ** 2 for wi, ti, vi in zip(w, t, v))
    ss_tot = sum(wi * (vi - mv) ** 2 for wi, vi in zip(w, v))
    return a, (math.sqrt(slope) if slope >= 0 else None), (1.0 - ss_res / ss_tot if ss_tot > 0 else None)


def figure_stats(tot, bin=0, min_frac=0.01):
    """The binned statistics and the fits: {"bin", "sigma", "r2", "var_fit", "bins": [...]}; bin 0 chooses auto_bin.
    sigma and r2 are the paper's fit (fit_sqrt); var_fit = {"a", "s", "r2"} the fit with an intercept (fit_var)."""
    bin = bin or auto_bin(tot, min_frac)
    bins = bin_positions(tot, bin, min_frac)
    if not bins:
        raise UsageError("no bin holds 2 or more tokens; lower --min_frac or select more steps")
    t, std, n = [b["t"] for b in bins], [b["std"] for b in bins], [b["n"] for b in bins]
    sigma, r2 = fit_sqrt(t, std, n)
    a, s, r2v = fit_var(t, std, n)
    return {"bin": bin, "sigma": sigma, "r2": r2, "var_fit": {"a": a, "s": s, "r2": r2v}, "bins": bins}


def to_json(run, method, steps, st):
    keys = ("t_lo", "t_hi", "t", "n", "std", "delta_std")
    clip = {name: [b[f"clip_{name}"] for b in st["bins"]] for name in ("fixed", "adaptive", "method")}
    return {"run": run, "method": method, "steps": list(steps), "bin": st["bin"], "sigma": st["sigma"], "r2": st["r2"],
            "var_fit": st["var_fit"], "bins": [{k: b[k] for k in keys} for b in st["bins"]], "clip_rate": clip}  # fmt: skip


# -----------------------------------------------------------------------------
# the figure


def plot(results, path, fixed_window):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(2, 1, figsize=(6.4, 6.4), sharex=True)
    lo, hi = fixed_window
    for k, (_run, method, (s0, s1), st) in enumerate(results):
        c, bins = f"C{k}", st["bins"]
        t = [b["t"] for b in bins]
        r2 = "n/a" if st["r2"] is None else f"{st['r2']:.3f}"
        a1.plot(t, [b["std"] for b in bins], "o", color=c, ms=4, label=f"{method}: std of log rho_t (steps {s0}-{s1}, bin {st['bin']})")
        fit_t = [max(t) * x / 200 for x in range(1, 201)]
        a1.plot(fit_t, [st["sigma"] * math.sqrt(x) for x in fit_t], "-", color=c, lw=1.2,
                label=f"fit sigma*sqrt(t): sigma = {st['sigma']:.4f}, R^2 = {r2}")  # fmt: skip
        if all(b["delta_std"] is not None for b in bins):
            a1.plot(
                t, [b["delta_std"] for b in bins], "x--", color=c, ms=4, lw=0.8, alpha=0.7, label=f"{method}: std of the per-token delta_t"
            )
        ls = "-" if k == 0 else ":"
        for key, marker, color, window in (("clip_fixed", "s", "C3", f"the fixed window [{lo}, {hi}]"),
                                           ("clip_adaptive", "o", "C0", "CTPO's sqrt(t) window")):  # fmt: skip
            label = f"{method} run's log rho_t, counted in {window}"
            a2.plot(t, [100 * b[key] for b in bins], ls, marker=marker, ms=3, color=color, label=label)
    a1.set_ylabel("std of log rho_t (and of delta_t)")
    a1.set_title("Figure 1 on the toy: cumulative log-ratio spread and clipping vs position", fontsize=10)
    a1.legend(fontsize=7.5, loc="upper left")
    a1.grid(alpha=0.3)
    a2.set_xlabel("response position t (bin mean)")
    a2.set_ylabel("clip rate (% of the tokens at t)")
    a2.legend(fontsize=7.5, loc="best")
    a2.grid(alpha=0.3)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_run(rows, path, title):
    """The training curves of one run (its metrics.jsonl rows): train_tiny.py writes them as out_dir/train.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rl, ev = [r for r in rows if "reward" in r], [r for r in rows if "acc" in r]
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(6, 5.5), sharex=True)
    a1.plot([r["step"] for r in rl], [r["reward"] for r in rl], lw=1, alpha=0.6, label="rollout (train prompts)")
    a1.plot([r["step"] for r in ev], [r["eval_reward"] for r in ev], "o-", ms=3, label="held-out, sampled")
    a2.plot([r["step"] for r in ev], [100 * r["acc"] for r in ev], "o-", ms=3, color="C2")
    a1.set(ylabel="mean reward", title=title)
    a2.set(ylabel="held-out exact match, greedy (%)", xlabel="RL step (0 = after the warm start)")
    a1.legend(loc="lower right", fontsize=8)
    for ax in (a1, a2):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def print_table(run, method, steps, st):
    r2 = "n/a" if st["r2"] is None else f"{st['r2']:.4f}"
    print(f"{run} ({method}): steps {steps[0]}-{steps[1]}, bin {st['bin']}, sigma = {st['sigma']:.4f}, R^2 = {r2}")
    vf = st["var_fit"]
    if vf["r2"] is not None:  # the same bins, var(log rho_t) = a + s^2 t: a random walk whose first steps differ
        s = "n/a (negative slope)" if vf["s"] is None else f"{vf['s']:.4f}"
        print(f"  with an intercept, var = a + s^2 t: a = {vf['a']:.3g}, s = {s}, R^2 (of var) = {vf['r2']:.4f}")
    for b in st["bins"]:
        dstd = f" delta std={b['delta_std']:.4f}" if b["delta_std"] is not None else ""
        clip = f"clip fixed={100 * b['clip_fixed']:5.2f}% adaptive={100 * b['clip_adaptive']:5.2f}% method={100 * b['clip_method']:5.2f}%"
        print(f"  t={b['t_lo']:4d}-{b['t_hi']:<4d} (mean {b['t']:7.2f}) n={b['n']:9.0f} std={b['std']:.4f}{dstd} {clip}")


def main(argv=None):
    ap = Parser(prog="figure1.py", description=__doc__.split("\n\n")[0].strip(), formatter_class=argparse.RawDescriptionHelpFormatter,
                epilog="\n\n".join(__doc__.split("\n\n")[1:]))  # fmt: skip
    ap.add_argument("--run", nargs="+", default=["out-tiny"], metavar="DIR", help="train_tiny.py out_dir(s) (default: out-tiny)")
    ap.add_argument("--steps", default=None, metavar="A:B", help="RL step range, inclusive (default: every step)")
    ap.add_argument("--bin", type=int, default=0, metavar="N", help="positions per bin; 0: max(1, T // 16), see below (default: 0)")
    ap.add_argument(
        "--min_frac", type=float, default=0.01, help="skip bins holding fewer tokens than this fraction of the largest bin (default: 0.01)"
    )
    ap.add_argument(
        "--json", action="store_true", help="print the numbers as JSON (one object per run; a list for several) and plot nothing"
    )
    ap.add_argument("--out", default="out-figure1/figure1.png", metavar="PATH", help="the PNG (default: out-figure1/figure1.png)")
    args = ap.parse_args(argv)
    steps = None
    if args.steps is not None:
        try:
            steps = tuple(int(x) for x in args.steps.split(":"))
            assert len(steps) == 2 and steps[0] <= steps[1]
        except (ValueError, AssertionError):
            ap.error(f"--steps: expected A:B with integers A <= B, got {args.steps!r}")
    if args.bin < 0:
        ap.error(f"--bin: need >= 0 (0: automatic), got {args.bin}")
    if not 0 <= args.min_frac < 1:
        ap.error(f"--min_frac: need a value in [0, 1), got {args.min_frac}")

    results, fixed_window = [], (0.5, 5.0)
    try:
        for run in args.run:
            tot, span = load_positions(run, steps)
            summary = os.path.join(run, "summary.json")
            method = run
            if os.path.exists(summary):
                with open(summary) as f:
                    done = json.load(f)
                method, fixed_window = done["method"], tuple(done["config"].get("fixed_window", fixed_window))
            results.append((run, method, span, figure_stats(tot, args.bin, args.min_frac)))
    except UsageError as e:
        ap.error(str(e))
    if args.json:
        out = [to_json(*r) for r in results]
        print(json.dumps(out[0] if len(out) == 1 else out, indent=2))
        return out
    for r in results:
        print_table(*r)
    plot(results, args.out, fixed_window)
    print(f"wrote {args.out}")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
