"""
The paper's Figure 1 on the toy, from the per-position sums that train_tiny.py logs in metrics.jsonl.

Top: the std of the cumulative log-ratio log rho_t against the response position t, with the fit
std ~ sigma * sqrt(t) (weighted least squares, weights sqrt(count), no intercept, as in the paper).
Bottom: the clip rate against t of a fixed ratio window [0.5, 5] and of CTPO's adaptive window
[-0.025 sqrt(t), 0.05 sqrt(t)] in log space, both evaluated on the same tokens; a token counts as
clipped when (A > 0 and log rho above the window) or (A < 0 and log rho below it).

    python figure1.py --run=out-tiny --out=assets/figure1.png                # all RL steps
    python figure1.py --run=out-tiny out-grpo --steps=100:400                # several runs, a step range

The toy's responses are 17-21 tokens, so there are ~20 positions and no binning (the paper bins by
50 over 8000); the statistics pool every mini-batch of every selected step, on-policy ones included.
"""

import argparse
import json
import math
import os


def load_positions(run_dir, steps=None):
    """Pool the per-position sums of a run over a step range. Returns dict of lists indexed by t - 1."""
    rows = [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"))]
    rows = [r for r in rows if "pos" in r and (steps is None or steps[0] <= r["step"] <= steps[1])]
    if not rows:
        raise SystemExit(f"figure1.py: no per-position data in {run_dir}/metrics.jsonl for steps {steps}")
    width = max(len(r["pos"]["n"]) for r in rows)
    tot = {k: [0.0] * width for k in rows[0]["pos"]}
    for r in rows:
        for k, v in r["pos"].items():
            for i, x in enumerate(v):
                tot[k][i] += x
    return tot, (rows[0]["step"], rows[-1]["step"])


def position_stats(tot, min_frac=0.01):
    """std of log rho_t (ddof=1), clip rates, and the fitted sigma, for the positions that hold at least
    min_frac of the tokens of the most populated one (the rare overlong responses would be noise)."""
    t, std, n, clip_a, clip_f, clip_m, dstd = [], [], [], [], [], [], []
    for i, cnt in enumerate(tot["n"]):
        if cnt < max(2, min_frac * max(tot["n"])):
            continue
        mean = tot["sum"][i] / cnt
        var = max(0.0, (tot["sumsq"][i] - cnt * mean * mean) / (cnt - 1))
        t.append(i + 1)
        std.append(math.sqrt(var))
        n.append(cnt)
        clip_a.append(tot["clip_adaptive"][i] / cnt)
        clip_f.append(tot["clip_fixed"][i] / cnt)
        clip_m.append(tot["clip_method"][i] / cnt)
        if "dsum" in tot:  # the per-token delta_t (logged since the first version of this figure)
            dmean = tot["dsum"][i] / cnt
            dstd.append(math.sqrt(max(0.0, (tot["dsumsq"][i] - cnt * dmean * dmean) / (cnt - 1))))
    w = [math.sqrt(c) for c in n]  # minimise sum w (std - sigma sqrt(t))^2  =>  sigma = sum w std sqrt(t) / sum w t
    sigma = sum(wi * s * math.sqrt(ti) for wi, s, ti in zip(w, std, t)) / sum(wi * ti for wi, ti in zip(w, t))
    return dict(t=t, std=std, n=n, clip_adaptive=clip_a, clip_fixed=clip_f, clip_method=clip_m, delta_std=dstd, sigma=sigma)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", nargs="+", default=["out-tiny"], help="train_tiny.py out_dir(s)")
    ap.add_argument("--steps", default=None, help="RL step range a:b (inclusive); default all")
    ap.add_argument("--min_frac", type=float, default=0.01, help="skip positions with fewer tokens than this fraction of the largest count")
    ap.add_argument("--out", default="figure1.png")
    args = ap.parse_args()
    steps = tuple(int(x) for x in args.steps.split(":")) if args.steps else None

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(2, 1, figsize=(6.2, 6.2), sharex=True)
    for k, run in enumerate(args.run):
        tot, (s0, s1) = load_positions(run, steps)
        st = position_stats(tot, args.min_frac)
        method = json.load(open(os.path.join(run, "summary.json")))["method"] if os.path.exists(os.path.join(run, "summary.json")) else run
        c = f"C{k}"
        a1.plot(st["t"], st["std"], "o", color=c, ms=4, label=f"{method}: std of log rho_t (steps {s0}-{s1})")
        fit_t = [x / 10 for x in range(10, 10 * max(st["t"]) + 1)]
        a1.plot(
            fit_t, [st["sigma"] * math.sqrt(x) for x in fit_t], "-", color=c, lw=1.2, label=f"fit sigma*sqrt(t), sigma = {st['sigma']:.3f}"
        )
        if st["delta_std"]:
            a1.plot(st["t"], st["delta_std"], "x--", color=c, ms=4, lw=0.8, alpha=0.7, label=f"{method}: std of the per-token delta_t")
        ls = "-" if k == 0 else ":"
        a2.plot(st["t"], [100 * x for x in st["clip_fixed"]], ls, marker="s", ms=3, color="C3", label=f"{method}: fixed window [0.5, 5]")
        a2.plot(
            st["t"], [100 * x for x in st["clip_adaptive"]], ls, marker="o", ms=3, color="C0", label=f"{method}: adaptive sqrt(t) window"
        )
        print(f"{run}: steps {s0}-{s1}, sigma = {st['sigma']:.4f}")
        for i in range(len(st["t"])):
            dstd = f" delta std={st['delta_std'][i]:.4f}" if st["delta_std"] else ""
            print(f"  t={st['t'][i]:2d} n={st['n'][i]:8.0f} std={st['std'][i]:.4f}{dstd} clip fixed={100 * st['clip_fixed'][i]:5.2f}% "
                  f"adaptive={100 * st['clip_adaptive'][i]:5.2f}% method={100 * st['clip_method'][i]:5.2f}%")  # fmt: skip
    a1.set_ylabel("std of log rho_t")
    a1.set_title("Figure 1 on the toy: cumulative log-ratio spread and clipping vs position", fontsize=10)
    a1.legend(fontsize=7.5, loc="upper left")
    a1.grid(alpha=0.3)
    a2.set_xlabel("response position t")
    a2.set_ylabel("clip rate (%)")
    a2.legend(fontsize=7.5, loc="upper left")
    a2.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(args.out, dpi=90)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
