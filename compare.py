"""
Method comparison on the toy: train_tiny.py for each method and seed, then tables, paired intervals and a plot.

    python compare.py                                          # grpo gspo ctpo ctpo-fixed x seeds 1 2 3, out-compare/
    python compare.py --methods=grpo,ctpo --seeds=1,2 --rl_steps=200      # other --key=value go to train_tiny.py
    python compare.py config/long.py --seeds=1,2,3,4,5 --out_dir=out-compare-long   # a train_tiny.py config file
    python compare.py --methods=grpo,ctpo --num_minibatches=1,4,16        # a sweep: a train_tiny.py key given a list
    python compare.py config/automaton.py --methods=grpo,ctpo,ctpo:ratio=token --rollout_lag=0,2,8   # arms (docs/lag.md)

Arms: a method may carry overrides of its knobs, method:knob=value:... (ctpo.method_config's names; they go
to --loss_kwargs, over any --loss_kwargs given): ctpo:ratio=token is the token ratio inside CTPO's sqrt(t)
window, which separates CTPO's correction (the cumulative ratio) from its window.

Pairing: runs with the same seed share the warm start (the same model init, data and warm-start steps:
train_tiny.py is deterministic on a given machine), so a method's effect is measured by the paired
difference reference - method over seeds: its mean and a 95% interval mean +- t(0.975, n - 1) * sd / sqrt(n)
(Student t, sd with ddof = 1; the t quantile is computed exactly from the regularised incomplete beta
function, no scipy). The differences are of the gains during RL (after - before: held-out greedy exact
match in points, held-out sampled reward, and the held-out reward averaged over the evaluations after step 0:
learning speed, which still separates two methods that both end at the reward's ceiling), equal to the
differences of the final values when the warm starts match, which compare.json records (paired_warm_start).

Sweep: one train_tiny.py key may be given a comma-separated list (e.g. --num_minibatches=1,4,16, the
staleness: optimizer steps per rollout, 16 in the paper); every method x seed then runs at every value,
and the tables and intervals are per value, with one more table: what the swept key does to each method,
paired by seed (its gains at the first value minus at each other one; e.g. what --rollout_lag=0,8 costs).

Runs are sequential (each uses every core) in out_dir/<method>-s<seed>/ (with a sweep:
<method>-<key><value>-s<seed>/); a run that already has its summary.json and the same configuration is
reused, so an interrupted comparison continues where it stopped (--rerun=True redoes them all). Writes
out_dir/compare.md (the tables), compare.json (the same numbers and every run's summary) and compare.png
(no sweep: curves, mean +- std over seeds, and the paired intervals; a sweep: gains and paired intervals
against the swept value).
"""

import ast
import json
import math
import os
import subprocess
import sys
import time

import configurator
import ctpo
import train_tiny
from configurator import ConfigError

HERE = os.path.dirname(os.path.abspath(__file__))
USAGE = "usage: python compare.py [config/NAME.py] [--key=value ...]   (compare.py's keys, and any train_tiny.py key)"

# -----------------------------------------------------------------------------
# compare.py's own keys (configurator.py, as train_tiny.py's); every other --key=value goes to train_tiny.py
methods = "grpo,gspo,ctpo,ctpo-fixed"  # comma-separated methods to run (grpo, gspo, sequence, ctpo, ctpo-fixed, ctpo-geomean), or arms:
#                                        method:knob=value:... (e.g. ctpo:ratio=token, the knobs of ctpo.method_config)
seeds = "1,2,3"  # comma-separated integer seeds; runs of one seed share the warm start and are paired
reference = ""  # the paired differences are reference - method for every other method ('': ctpo if run, else the first)
out_dir = "out-compare"  # the runs, compare.md, compare.json, compare.png
rerun = False  # True: redo every run, even those whose summary.json has the same configuration
# -----------------------------------------------------------------------------
KEYS = {k: globals()[k] for k in ("methods", "seeds", "reference", "out_dir", "rerun")}
PER_RUN = ("method", "seed", "overwrite", "resume")  # train_tiny.py keys that compare.py sets itself
# the paired metrics: (name, summary keys after/before, scale, label)
GAINS = (
    ("acc_gain", "accuracy_after", "accuracy_before", 100.0, "held-out acc gain (points)"),
    ("reward_gain", "reward_after", "reward_before", 1.0, "held-out reward gain"),
    # learning speed: the held-out reward averaged over the evaluations after step 0 (the area under the curve, per
    # evaluation), minus before; still separates methods whose final rewards both reach the ceiling
    ("curve_gain", "reward_curve_mean", "reward_before", 1.0, "mean held-out reward over the evaluations, gain"),
)


def reward_curve_mean(curve):
    """Mean of the held-out rewards a run's metrics.jsonl logged after step 0 (None if it logged none)."""
    evals = [r["eval_reward"] for r in curve if r.get("eval_reward") is not None and r["step"] > 0]
    return sum(evals) / len(evals) if evals else None


def log_rho_var(curve):
    """Var(log rho_H) over a run's RL steps, from figure1.py's per-position sums in metrics.jsonl, at H = the last
    response position (1-indexed) that at least half the sampled responses reach; the sampler-to-policy shift that the
    lab (docs/lab.md) maps against. Returns (variance, H), or (None, None) when no step logged a token."""
    tot = {}
    for row in curve:
        for k in ("n", "sum", "sumsq"):
            for t, x in enumerate(row.get("pos", {}).get(k, [])):
                tot.setdefault(k, {}).setdefault(t, 0.0)
                tot[k][t] += x
    n = tot.get("n", {})
    if not n or n.get(0, 0.0) == 0:
        return None, None
    h = max(t for t, c in n.items() if c >= n[0] / 2)
    return tot["sumsq"][h] / n[h] - (tot["sum"][h] / n[h]) ** 2, h + 1


def arm_knobs(arm):
    """'ctpo:ratio=token:clip_low=0.05' -> {'ratio': 'token', 'clip_low': 0.05}: a value is a Python literal, or else a string."""
    knobs = {}
    for item in arm.split(":")[1:]:
        knob, eq, text = item.partition("=")
        if not knob or not eq:
            raise ValueError(f"expected method:knob=value:..., got {item!r} in {arm!r}")
        try:
            knobs[knob] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            knobs[knob] = text
    return knobs


def arm_args(arm, base_loss_kwargs):
    """train_tiny.py arguments of an arm: its method, and its knobs over the loss_kwargs given (if it has any)."""
    knobs = arm_knobs(arm)
    return [f"--method={arm.split(':')[0]}"] + ([f"--loss_kwargs={ {**base_loss_kwargs, **knobs}!r}"] if knobs else [])


class CompareError(ConfigError):
    """A usage error of compare.py's own: printed as one line, 'compare.py: error: ...', exit status 2."""


# -----------------------------------------------------------------------------
# arguments


def help_text():
    lines = [USAGE, "", __doc__.strip(), "", "compare.py's keys (--key=default  # what it does):", *configurator.help_lines(__file__, KEYS)]
    lines += ["", "Every other --key=value is a train_tiny.py key, forwarded to each run (python train_tiny.py --help lists them);"]
    lines += [f"{', '.join('--' + k for k in PER_RUN)} are set per run by compare.py."]
    return "\n".join(lines)


def parse(argv):
    """Returns (opts, config_files, extra, sweep): compare.py's options, train_tiny.py config files and
    --key=value arguments to forward, and the sweep (key, [value strings]) or None."""
    opts, extra, sweep = dict(KEYS), [], None
    files, pairs = configurator.split_argv(argv)
    tt_keys = ", ".join(k for k in train_tiny.CONFIG_KEYS if k not in PER_RUN and k not in KEYS)
    for key, val in pairs:
        if key in KEYS:
            opts[key] = configurator.from_text(key, val, KEYS[key])
        elif key in ("method", "seed"):
            raise CompareError(f"--{key} is set per run by compare.py; use --{key}s=a,b,... to choose the {key}s")
        elif key in PER_RUN:
            raise CompareError(f"--{key} is set per run by compare.py (finished runs are reused; --rerun=True redoes them)")
        elif key in train_tiny.DEFAULTS:
            default = train_tiny.DEFAULTS[key]
            if "," in val and isinstance(default, (bool, int, float, str)):  # a list for a scalar key: the sweep axis
                if sweep is not None:
                    raise CompareError(f"--{key}: only one key may be swept, and --{sweep[0]} already is")
                values = val.split(",")
                if "" in values or len(set(values)) != len(values):
                    raise CompareError(f"--{key}: expected distinct comma-separated values, got {val!r}")
                sweep = (key, values)
            else:
                extra.append(f"--{key}={val}")
        else:
            raise CompareError(f"unknown key {key!r}; compare.py's keys: {', '.join(KEYS)}; train_tiny.py's keys: {tt_keys}")
    methods = [m for m in opts["methods"].split(",") if m]
    bad = [m for m in methods if m.split(":")[0] not in ctpo.METHODS]
    if not methods or bad or len(set(methods)) != len(methods):
        raise CompareError(f"--methods: expected distinct comma-separated names from {sorted(ctpo.METHODS)}, got {opts['methods']!r}")
    for arm in methods:
        try:
            ctpo.method_config(arm.split(":")[0], **arm_knobs(arm))
        except (TypeError, ValueError) as e:
            raise CompareError(f"--methods: {arm!r}: {e}") from None
    try:
        seeds = [int(s) for s in opts["seeds"].split(",")]
    except ValueError:
        raise CompareError(f"--seeds: expected comma-separated integers, e.g. --seeds=1,2,3, got {opts['seeds']!r}") from None
    if len(set(seeds)) != len(seeds):
        raise CompareError(f"--seeds: expected distinct seeds, got {opts['seeds']!r}")
    reference = opts["reference"] or ("ctpo" if "ctpo" in methods else methods[0])
    if reference not in methods:
        raise CompareError(f"--reference: expected one of the methods run ({', '.join(methods)}), got {reference!r}")
    if opts["out_dir"] == "":
        raise CompareError("--out_dir: must not be empty")
    opts.update(methods=methods, seeds=seeds, reference=reference)
    return opts, files, extra, sweep


# -----------------------------------------------------------------------------
# statistics: mean +- std, and the paired 95% interval with an exact Student t quantile


def mean_std(xs):
    m = sum(xs) / len(xs)
    s = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
    return m, s


def betainc(a, b, x):
    """Regularised incomplete beta I_x(a, b), by its continued fraction (Lentz; Numerical Recipes' betacf)."""
    if x <= 0.0 or x >= 1.0:
        return 0.0 if x <= 0.0 else 1.0
    if x > (a + 1) / (a + b + 2):  # the fraction converges fast on this side only: use the symmetry
        return 1.0 - betainc(b, a, 1.0 - x)
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)) / a
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    f = d
    for m in range(1, 10_000):
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)), -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            f *= c * d
        if abs(c * d - 1.0) < 1e-16:
            break
    return front * f


def t_cdf(x, df):
    """P(T <= x) for Student's t with df degrees of freedom."""
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + x * x))  # P(T > |x|)
    return 1.0 - tail if x >= 0 else tail


def t_quantile(p, df):
    """The p-quantile of Student's t (0 < p < 1), by bisection on t_cdf to about 1e-12."""
    if not 0.0 < p < 1.0 or df <= 0:
        raise ValueError(f"t_quantile: need 0 < p < 1 and df > 0, got p={p}, df={df}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if t_cdf(mid, df) < p else (lo, mid)
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


def paired_interval(diffs, level=0.95):
    """Mean of the paired differences and its `level` interval (Student t, n - 1 degrees of freedom).
    Returns {"n", "mean", "sd", "lo", "hi"}; lo and hi are None for n < 2."""
    n = len(diffs)
    mean, sd = mean_std(diffs)
    if n < 2:
        return {"n": n, "mean": mean, "sd": None, "lo": None, "hi": None}
    half = t_quantile(0.5 + level / 2, n - 1) * sd / math.sqrt(n)
    return {"n": n, "mean": mean, "sd": sd, "lo": mean - half, "hi": mean + half}


# -----------------------------------------------------------------------------
# the analysis: runs {(method, seed, value): summary} -> table rows and paired differences


def analyse(summaries, methods, seeds, reference, values=(None,)):
    """summaries[(method, seed, value)] is a run's summary.json (value: the sweep value, None without a sweep).
    Returns (table, paired): per (value, method) the mean +- std over seeds of the headline numbers; per
    (value, other method) the paired interval of reference - method for each gain in GAINS."""
    return analyse_table(summaries, methods, seeds, values), [
        paired_entry(summaries, (reference, v), (m, v), seeds, f"{reference} - {m}") for v in values for m in methods if m != reference
    ]


def sweep_cost(summaries, methods, seeds, values):
    """The swept key's own effect, per method, paired by seed (every value of a seed shares its warm start): the gains
    at the first value minus at each other value (e.g. what rollout_lag = 8 costs each method against 0)."""
    return [paired_entry(summaries, (m, values[0]), (m, v), seeds, f"{m}: at {values[0]} - here") for v in values[1:] for m in methods]


def paired_entry(summaries, ref, other, seeds, comparison):
    """The paired interval of ref - other ((method, value) pairs) over seeds for each gain in GAINS that every run has."""
    gain = {name: lambda s, a=a, b=b, k=k: k * (s[a] - s[b]) for name, a, b, k, _ in GAINS}
    names = [name for name, a, *_ in GAINS if all(s.get(a) is not None for s in summaries.values())]
    a, b = ([summaries[(m, s, v)] for s in seeds] for m, v in (ref, other))
    entry = {"value": other[1], "comparison": comparison, "reference": ref[0], "method": other[0]}
    for name in names:
        entry[name] = paired_interval([gain[name](x) - gain[name](y) for x, y in zip(a, b)])
    entry["paired_warm_start"] = all(x["accuracy_before"] == y["accuracy_before"] and x["reward_before"] == y["reward_before"]
                                     for x, y in zip(a, b))  # fmt: skip
    return entry


def analyse_table(summaries, methods, seeds, values):
    """Per (value, method): the mean +- std over seeds of the headline numbers."""
    table = []
    gain = {name: lambda s, a=a, b=b, k=k: k * (s[a] - s[b]) for name, a, b, k, _ in GAINS}
    # a gain whose numbers some run lacks (curve_gain without a logged evaluation) is left out everywhere
    names = [name for name, a, *_ in GAINS if all(s.get(a) is not None for s in summaries.values())]
    for v in values:
        for method in methods:
            ss = [summaries[(method, s, v)] for s in seeds]
            col = lambda key, scale=1.0: mean_std([scale * s[key] for s in ss])  # noqa: E731,B023
            row = {"value": v, "method": method, "seeds": seeds, "accuracy_before": col("accuracy_before", 100.0)}
            row.update(accuracy_after=col("accuracy_after", 100.0), acc_gain=mean_std([gain["acc_gain"](s) for s in ss]))
            row.update(reward_after=col("reward_after"), reward_gain=mean_std([gain["reward_gain"](s) for s in ss]))
            if "curve_gain" in names:
                row.update(reward_curve_mean=col("reward_curve_mean"), curve_gain=mean_std([gain["curve_gain"](s) for s in ss]))
            row.update(train_reward_last10=col("train_reward_last10"), clip_frac=col("clip_frac", 100.0))
            row.update(mean_response_len=col("mean_response_len"), wall_seconds=col("wall_seconds"))
            if all(s.get("log_rho_var") is not None for s in ss):
                row.update(log_rho_var=col("log_rho_var"))
            table.append(row)
    return table


def markdown(table, paired, seeds, sweep_key, note, cost=()):
    pm = lambda ms, fmt: f"{ms[0]:{fmt}} +- {ms[1]:{fmt}}"  # noqa: E731

    def ci(d, fmt):
        if d["lo"] is None:
            return f"{d['mean']:{fmt}} (n = 1: no interval)"
        return f"{d['mean']:{fmt}} [{d['lo']:{fmt}}, {d['hi']:{fmt}}]"

    lead = [sweep_key] if sweep_key else []
    head = lead + ["method", "held-out acc before (%)", "held-out acc after (%)", "gain (points)", "reward after (held-out, sampled)"]
    curve = bool(table) and "curve_gain" in table[0]
    head += ["reward gain"] + (["reward, mean over evals"] if curve else [])
    head += ["rollout reward, last 10 steps", "clip frac (%)", "mean response (tokens)", "wall time (s)"]
    shift = bool(table) and all("log_rho_var" in r for r in table)
    head += ["Var(log rho_H), all steps"] if shift else []
    title = f"## Sweep over {sweep_key}: mean +- std over seeds {seeds}" if sweep_key else f"## Methods: mean +- std over seeds {seeds}"
    lines = [title, "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in table:
        cells = [str(r["value"])] if sweep_key else []
        cells += [r["method"], pm(r["accuracy_before"], ".1f"), pm(r["accuracy_after"], ".1f"), pm(r["acc_gain"], ".1f")]
        cells += [pm(r["reward_after"], ".3f"), pm(r["reward_gain"], ".3f")]
        cells += [pm(r["reward_curve_mean"], ".3f")] if curve else []
        cells += [pm(r["train_reward_last10"], ".3f")]
        cells += [pm(r["clip_frac"], ".1f"), pm(r["mean_response_len"], ".1f"), pm(r["wall_seconds"], ".0f")]
        cells += [pm(r["log_rho_var"], ".4f")] if shift else []
        lines.append("| " + " | ".join(cells) + " |")
    head = lead + ["paired difference", "seeds", "acc gain (points): mean [95% CI]", "reward gain: mean [95% CI]"]
    head += (["reward over evals: mean [95% CI]"] if curve else []) + ["same warm start"]
    sections = [("## Paired by seed: mean difference and 95% interval (Student t over seeds)", paired)]
    if cost:
        sections.append((f"## The swept {sweep_key} per method, paired by seed: gains at its first value minus here, 95% interval", cost))
    for title, entries in sections:
        lines += ["", title, "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for p in entries:
            cells = [str(p["value"])] if sweep_key else []
            cells += [p["comparison"], str(p["acc_gain"]["n"]), ci(p["acc_gain"], ".1f"), ci(p["reward_gain"], ".3f")]
            cells += [ci(p["curve_gain"], ".3f")] if curve else []
            cells.append("yes" if p["paired_warm_start"] else "NO")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + f"\n\n{note}\n"


# -----------------------------------------------------------------------------
# the runs


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


def run_name(method, seed, sweep, value):
    method = method.replace(":", "+")  # an arm's knobs: ctpo+ratio=token
    if sweep is None:
        return f"{method}-s{seed}"
    return f"{method}-{sweep[0]}{value}-s{seed}".replace(os.sep, "_")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if "-h" in argv or "--help" in argv:
        print(help_text())
        return None
    opts, files, extra, sweep = parse(argv)
    methods, seeds, out_dir = opts["methods"], opts["seeds"], opts["out_dir"]
    values = sweep[1] if sweep else [None]
    axis = lambda v: [f"--{sweep[0]}={v}"] if sweep else []  # noqa: E731
    try:  # check every run's arguments before spending minutes on the first one
        base = train_tiny.parse_config([*files, *extra], check=False).loss_kwargs  # an arm's knobs go over these
        arm = {m: arm_args(m, base) for m in methods}
        configs = {
            (m, s, v): vars(train_tiny.parse_config([*files, f"--seed={s}", *extra, *arm[m], *axis(v)]))
            for m in methods
            for s in seeds
            for v in values
        }
    except ConfigError as e:
        raise CompareError(str(e)) from None
    if sweep:  # the sweep values as their parsed type, for the tables and the plot
        values = [configs[(methods[0], seeds[0], v)][sweep[0]] for v in values]
        if len(set(values)) != len(values):
            raise CompareError(f"--{sweep[0]}: expected distinct values, got {','.join(sweep[1])}")
        configs = {(m, s, configs[(methods[0], seeds[0], v)][sweep[0]]): c for (m, s, v), c in configs.items()}
    os.makedirs(out_dir, exist_ok=True)
    summaries, curves = {}, {}
    for v in values:
        for method in methods:
            for seed in seeds:
                name = run_name(method, seed, sweep, v)
                run_dir = os.path.join(out_dir, name)
                if opts["rerun"] or not up_to_date(run_dir, configs[(method, seed, v)]):
                    args = [*files, f"--seed={seed}", f"--out_dir={run_dir}", "--overwrite=True", *extra, *arm[method], *axis(v)]
                    t0 = time.time()
                    print(f"== {name}: python train_tiny.py {' '.join(args)}", flush=True)
                    with open(os.path.join(out_dir, f"{name}.log"), "w") as log:
                        r = subprocess.run(
                            [sys.executable, os.path.join(HERE, "train_tiny.py"), *args], stdout=log, stderr=subprocess.STDOUT
                        )
                    if r.returncode:
                        raise SystemExit(f"compare.py: {name} failed (exit {r.returncode}); see {log.name}")
                    print(f"   done in {time.time() - t0:.0f}s", flush=True)
                with open(os.path.join(run_dir, "metrics.jsonl")) as f:
                    curves[(method, seed, v)] = [json.loads(line) for line in f]
                with open(os.path.join(run_dir, "summary.json")) as f:  # + the curve's mean, computed here
                    c = curves[(method, seed, v)]
                    summaries[(method, seed, v)] = dict(json.load(f), reward_curve_mean=reward_curve_mean(c), log_rho_var=log_rho_var(c)[0])

    table, paired = analyse(summaries, methods, seeds, opts["reference"], values)
    cost = sweep_cost(summaries, methods, seeds, values) if sweep else []
    args_note = " ".join([*files, *extra]) or "(defaults)"
    note = f"seeds {seeds}; train_tiny.py arguments: {args_note}" + (f"; swept: --{sweep[0]}={','.join(map(str, values))}" if sweep else "")
    md = markdown(table, paired, seeds, sweep[0] if sweep else None, note, cost)
    with open(os.path.join(out_dir, "compare.md"), "w") as f:
        f.write(md)
    record = {
        "methods": methods,
        "seeds": seeds,
        "reference": opts["reference"],
        "sweep": {"key": sweep[0], "values": values} if sweep else None,
        "config_files": files,
        "extra_args": extra,
        "table": table,
        "paired": paired,
        "sweep_cost": cost,
        "runs": {run_name(m, s, sweep, v): summary for (m, s, v), summary in summaries.items()},
    }
    with open(os.path.join(out_dir, "compare.json"), "w") as f:
        json.dump(record, f, indent=2)
    print(md)
    task = next(iter(summaries.values()))["config"].get("task", "sort")
    plot(os.path.join(out_dir, "compare.png"), methods, seeds, values, sweep, curves, table, paired, task)
    print(f"wrote {out_dir}/compare.md, compare.json, compare.png")
    return record


# -----------------------------------------------------------------------------
# the plot


PLOT_GAINS = (("acc_gain", "held-out acc gain (points)"), ("reward_gain", "held-out reward gain"),
              ("curve_gain", "held-out reward over evals, gain"))  # fmt: skip


CURVE_KEYS = (("acc", 100.0, "held-out exact match, greedy (%)"), ("eval_reward", 1.0, "held-out reward (sampled)"),
              ("reward", 1.0, "rollout reward (10-step mean)"))  # fmt: skip


def panels(table, paired, curves, sweep):
    """The panels worth drawing: (curve keys, gains) whose numbers are not all equal (greedy exact match at 100% from
    the start, or a gain of 0 on every run, says nothing); no curves for a sweep."""

    def varies(xs):
        xs = [x for x in xs if x is not None]
        return bool(xs) and max(xs) - min(xs) > 1e-12

    present = paired[0] if paired else (table[0] if table else {})  # the gains analyse() computed (one method: no pairs)
    gains = [(g, label) for g, label in PLOT_GAINS if g in present]
    gains = [
        (g, label)
        for g, label in gains
        if varies([x for r in table for x in r[g]] + [p[g][k] for p in paired for k in ("mean", "lo", "hi")])
    ]
    keys = [c for c in CURVE_KEYS if varies([r.get(c[0]) for run in curves.values() for r in run])] if sweep is None else []
    return keys, gains


def plot(path, methods, seeds, values, sweep, curves, table, paired, task="sort"):
    """No sweep: left, the curves (held-out greedy exact match, held-out sampled reward, rollout reward; mean +- std
    over seeds); right, each paired gain's mean and 95% interval. A sweep: per gain, its mean +- std against the
    swept value (left) and the paired intervals (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def errbar(ax, x, d, **kw):  # a paired interval; a dot alone when n = 1
        if d["lo"] is None:
            ax.plot([x], [d["mean"]], "o", **kw)
        else:
            ax.errorbar([x], [d["mean"]], yerr=[[d["mean"] - d["lo"]], [d["hi"] - d["mean"]]], fmt="o", capsize=3, **kw)

    curve_keys, gains = panels(table, paired, curves, sweep)
    rows = max(len(curve_keys) if sweep is None else 0, len(gains), 1)
    seed_text = f"seeds {seeds}" if len(seeds) <= 5 else f"{len(seeds)} seeds ({seeds[0]}-{seeds[-1]})"
    fig, axes = plt.subplots(rows, 2, figsize=(12, 2.9 * rows), squeeze=False)
    if sweep is None:
        for k, method in enumerate(methods):
            for ax, (key, scale, _) in zip(axes[:, 0], curve_keys):
                per_seed = [{r["step"]: scale * r[key] for r in curves[(method, s, None)] if r.get(key) is not None} for s in seeds]
                steps = sorted(set.intersection(*(set(d) for d in per_seed)))
                if key == "reward":  # smooth the noisy per-step rollout reward over 10 steps
                    per_seed = [{st: sum(d.get(x, d[st]) for x in range(st - 9, st + 1)) / 10 for st in steps} for d in per_seed]
                ms = [mean_std([d[st] for d in per_seed]) for st in steps]
                style = ("-", "--", "-.", ":")[k % 4]  # equal methods' lines lie on each other: the dashes tell them apart
                ax.plot(
                    steps,
                    [m for m, _ in ms],
                    style,
                    marker="o" if key == "eval_reward" else None,
                    ms=3,
                    color=f"C{k}",
                    label=method,
                    lw=1.4,
                )
                ax.fill_between(steps, [m - s for m, s in ms], [m + s for m, s in ms], color=f"C{k}", alpha=0.15)
        for ax, (_, _, label) in zip(axes[:, 0], curve_keys):
            ax.set_ylabel(label, fontsize=9)
        axes[0, 0].set_title(f"{task} toy: mean +- std over {seed_text}", fontsize=10)
        if curve_keys:
            axes[0, 0].legend(fontsize=8, loc="best")
            axes[len(curve_keys) - 1, 0].set_xlabel("RL step")
        for ax, (g, label) in zip(axes[:, 1], gains):
            for i, p in enumerate(paired):
                errbar(ax, i, p[g], color=f"C{methods.index(p['method'])}")
            ax.set_xticks(range(len(paired)), [p["comparison"] for p in paired], fontsize=8)
            ax.set_ylabel(f"paired diff:\n{label}", fontsize=9)
            ax.axhline(0, color="gray", lw=0.8)
        axes[0, 1].set_title("reference - method, paired by seed: mean and 95% interval", fontsize=9)
    else:
        key = sweep[0]
        pos = {v: i for i, v in enumerate(values)}  # the values as evenly spaced categories (they may be 1, 4, 16 or strings)
        for (g, label), (a1, a2) in zip(gains, axes):
            for k, method in enumerate(methods):
                rs = [r for r in table if r["method"] == method]
                x = [pos[r["value"]] + 0.06 * (k - len(methods) / 2) for r in rs]
                a1.errorbar(x, [r[g][0] for r in rs], yerr=[r[g][1] for r in rs], fmt="o-", capsize=3, color=f"C{k}", label=method)
                for i, p in enumerate(p for p in paired if p["method"] == method):  # each comparison labelled once
                    label_p = p["comparison"] if i == 0 else None
                    errbar(a2, pos[p["value"]] + 0.06 * (k - len(methods) / 2), p[g], color=f"C{k}", label=label_p)
            a1.set_ylabel(f"{label}\nmean +- std over seeds", fontsize=9)
            a2.set_ylabel(f"paired diff: {label}\nreference - method, 95% CI", fontsize=9)
            a2.axhline(0, color="gray", lw=0.8)
            for ax in (a1, a2):
                ax.set_xticks(range(len(values)), [str(v) for v in values])
        axes[0, 0].set_title(f"{task} toy: sweep over {key}, {seed_text}", fontsize=10)
        axes[0, 0].legend(fontsize=8)
        if paired:
            axes[0, 1].legend(fontsize=8)
        unit = {"rollout_lag": " (policy versions the sampler is behind)", "num_minibatches": " (optimizer steps per rollout)"}.get(key, "")
        axes[-1, 0].set_xlabel(key + unit)
        axes[-1, 1].set_xlabel(key + unit)
    for ax in axes.flat:
        if ax.has_data():
            ax.grid(alpha=0.3)
        else:
            ax.set_visible(False)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    try:
        main()
    except ConfigError as e:
        print(f"compare.py: error: {e}", file=sys.stderr)
        sys.exit(2)
