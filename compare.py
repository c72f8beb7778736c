"""
Method comparison on the toy: train_tiny.py for each method and seed, then a table and a plot.

    python compare.py                                           # grpo gspo ctpo ctpo-fixed x seeds 1 2 3
    python compare.py --methods=grpo,ctpo --seeds=1,2 --out_dir=out-cmp --rl_steps=200   # extra keys go to train_tiny

Runs are sequential (each uses every core) in out_dir/<method>-s<seed>/; a run that already has its
summary.json and the same configuration is reused, so an interrupted comparison continues where it
stopped (pass --rerun=True to redo them all). Writes out_dir/compare.md (mean +- std over seeds), compare.json and compare.png (held-out
accuracy and rollout reward against the RL step, mean +- std over seeds).
"""

import json
import math
import os
import subprocess
import sys
import time

import train_tiny

HERE = os.path.dirname(os.path.abspath(__file__))


def parse(argv):
    opts = {"methods": "grpo,gspo,ctpo,ctpo-fixed", "seeds": "1,2,3", "out_dir": "out-compare", "rerun": "False"}
    extra = []
    for arg in argv:
        if not arg.startswith("--") or "=" not in arg:
            raise SystemExit(f"compare.py: error: expected --key=value, got {arg!r}")
        key, val = arg[2:].split("=", 1)
        if key in opts:
            opts[key] = val
        elif key in ("out_dir", "method", "seed", "overwrite", "resume"):
            raise SystemExit(f"compare.py: error: --{key} is set per run by compare.py")
        else:
            extra.append(arg)  # forwarded to train_tiny.py, which checks it
    methods = [m for m in opts["methods"].split(",") if m]
    seeds = [int(s) for s in opts["seeds"].split(",") if s]
    return methods, seeds, opts["out_dir"], opts["rerun"] == "True", extra


def mean_std(xs):
    m = sum(xs) / len(xs)
    s = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
    return m, s


def up_to_date(run_dir, config):
    """A finished run whose config equals the one this comparison asks for (I/O keys aside)."""
    path = os.path.join(run_dir, "summary.json")
    if not os.path.exists(path):
        return False
    with open(path) as f:
        done = json.load(f)["config"]
    skip = {"out_dir", "overwrite", "resume", "n_mistakes", "backend", "device"}
    # a key the run does not know yet was added later with its default value: it ran with that default
    return all(json.dumps(done.get(k, train_tiny.DEFAULTS[k])) == json.dumps(v) for k, v in config.items() if k not in skip)


def main(argv):
    methods, seeds, out_dir, rerun, extra = parse(argv)
    try:  # check every run's arguments before spending minutes on the first one
        configs = {(m, s): vars(train_tiny.parse_config([f"--method={m}", f"--seed={s}", *extra])) for m in methods for s in seeds}
    except train_tiny.ConfigError as e:
        raise SystemExit(f"compare.py: error: {e}") from None
    os.makedirs(out_dir, exist_ok=True)
    runs = {}
    for method in methods:
        for seed in seeds:
            run_dir = os.path.join(out_dir, f"{method}-s{seed}")
            if rerun or not up_to_date(run_dir, configs[(method, seed)]):
                cmd = [
                    sys.executable,
                    os.path.join(HERE, "train_tiny.py"),
                    f"--method={method}",
                    f"--seed={seed}",
                    f"--out_dir={run_dir}",
                    "--overwrite=True",
                ]
                t0 = time.time()
                print(f"== {method} seed {seed}: {' '.join(cmd[1:] + extra)}", flush=True)
                with open(os.path.join(out_dir, f"{method}-s{seed}.log"), "w") as log:
                    r = subprocess.run(cmd + extra, stdout=log, stderr=subprocess.STDOUT)
                if r.returncode:
                    raise SystemExit(f"compare.py: {method} seed {seed} failed (exit {r.returncode}); see {log.name}")
                print(f"   done in {time.time() - t0:.0f}s", flush=True)
            with open(os.path.join(run_dir, "summary.json")) as f:
                summary = json.load(f)
            with open(os.path.join(run_dir, "metrics.jsonl")) as f:
                rows = [json.loads(line) for line in f]
            runs[(method, seed)] = (summary, rows)

    # ---- table
    table = []
    for method in methods:
        ss = [runs[(method, s)][0] for s in seeds]
        col = lambda k, scale=1.0: mean_std([scale * s[k] for s in ss])  # noqa: B023
        table.append(
            {
                "method": method,
                "seeds": seeds,
                "accuracy_before": col("accuracy_before", 100),
                "accuracy_after": col("accuracy_after", 100),
                "gain": mean_std([100 * (s["accuracy_after"] - s["accuracy_before"]) for s in ss]),
                "reward_after": col("reward_after"),
                "train_reward_last10": col("train_reward_last10"),
                "clip_frac": col("clip_frac", 100),
                "wall_seconds": col("wall_seconds"),
            }
        )
    pm = lambda ms, fmt: f"{ms[0]:{fmt}} +- {ms[1]:{fmt}}"
    head = ["method", "held-out acc before (%)", "held-out acc after (%)", "gain (points)", "reward after (held-out, sampled)"]
    head += ["rollout reward, last 10 steps", "clip frac (%)", "wall time (s)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in table:
        cells = [r["method"], pm(r["accuracy_before"], ".1f"), pm(r["accuracy_after"], ".1f"), pm(r["gain"], ".1f")]
        cells += [
            pm(r["reward_after"], ".3f"),
            pm(r["train_reward_last10"], ".3f"),
            pm(r["clip_frac"], ".1f"),
            pm(r["wall_seconds"], ".0f"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    note = f"mean +- std over seeds {seeds}; extra train_tiny.py arguments: {' '.join(extra) or '(defaults)'}"
    md = "\n".join(lines) + f"\n\n{note}\n"
    with open(os.path.join(out_dir, "compare.md"), "w") as f:
        f.write(md)
    with open(os.path.join(out_dir, "compare.json"), "w") as f:
        json.dump({"table": table, "extra_args": extra, "runs": {f"{m}-s{s}": runs[(m, s)][0] for m, s in runs}}, f, indent=2)
    print(md)

    # ---- curves, mean +- std over seeds
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(2, 1, figsize=(6.5, 6.2), sharex=True)
    for k, method in enumerate(methods):
        for ax, key, scale in ((a1, "acc", 100.0), (a2, "reward", 1.0)):
            per_seed = [{r["step"]: scale * r[key] for r in runs[(method, s)][1] if key in r} for s in seeds]
            steps = sorted(set.intersection(*(set(d) for d in per_seed)))
            if key == "reward":  # smooth the noisy per-step rollout reward over 10 steps
                per_seed = [{st: sum(d.get(x, d[st]) for x in range(st - 9, st + 1)) / 10 for st in steps} for d in per_seed]
            ms = [mean_std([d[st] for d in per_seed]) for st in steps]
            ax.plot(steps, [m for m, _ in ms], color=f"C{k}", label=method, lw=1.4)
            ax.fill_between(steps, [m - s for m, s in ms], [m + s for m, s in ms], color=f"C{k}", alpha=0.15)
    a1.set_ylabel("held-out exact match, greedy (%)")
    a1.set_title(f"sort toy: mean +- std over seeds {seeds}", fontsize=10)
    a1.legend(fontsize=8, loc="upper left")
    a1.grid(alpha=0.3)
    a2.set_ylabel("rollout reward (10-step mean)")
    a2.set_xlabel("RL step")
    a2.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "compare.png"), dpi=90)
    print(f"wrote {out_dir}/compare.md, compare.json, compare.png")


if __name__ == "__main__":
    main(sys.argv[1:])
