"""Tests of the scripts' interfaces: --help, one-line usage errors with exit status 2, default outputs outside
tracked files, train_tiny.py's config files, figure1.py's binning and sqrt(t) fit on exact synthetic data,
and compare.py's paired intervals (an exact Student t quantile) on synthetic numbers."""

import json
import math
import os
import random
import subprocess
import sys

import pytest

import bias_variance
import compare
import configurator
import figure1
import train_tiny

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODULES = {"train_tiny.py": train_tiny, "compare.py": compare, "figure1.py": figure1, "bias_variance.py": bias_variance}
SCRIPTS = tuple(MODULES)


def script(*args, cwd=ROOT, timeout=120):
    env = {**os.environ, "PYTHONPATH": ROOT}
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


# -----------------------------------------------------------------------------
# --help and usage errors, every script


@pytest.mark.parametrize("name", SCRIPTS)
def test_help_exits_0(name):
    r = script(name, "--help")
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert "usage" in r.stdout.lower() and len(r.stdout.splitlines()) > 5


def test_short_help_flag(capsys):
    for name, mod in MODULES.items():
        if name in ("train_tiny.py", "compare.py"):  # their own --key=value parsers: main returns after printing
            assert mod.main(["-h"]) is None
        else:  # argparse exits 0
            with pytest.raises(SystemExit) as e:
                mod.main(["-h"])
            assert e.value.code == 0
        assert "usage" in capsys.readouterr().out.lower(), name


def test_train_tiny_help_lists_every_key_with_default_and_comment():
    r = script("train_tiny.py", "--help")
    assert r.returncode == 0
    assert "usage: python train_tiny.py [config/NAME.py] [--key=value ...]" in r.stdout
    lines = r.stdout.splitlines()
    for key in train_tiny.CONFIG_KEYS:
        line = next((x for x in lines if x.strip().startswith(f"--{key}=")), None)
        assert line is not None, key
        value, comment = line.strip()[len(key) + 3 :].split("  # ", 1)
        assert value.strip() == repr(train_tiny.DEFAULTS[key]) and len(comment) > 5, (key, line)
    # a comment continued on the next source line is joined into one
    assert "T = 1 barely learns" in next(x for x in lines if "--temperature=" in x)


def test_train_tiny_help_shows_a_config_files_defaults(tmp_path):
    cfg = tmp_path / "c.py"
    cfg.write_text("lr = 3e-5\nmin_digits = 30\nmax_digits = 40\n")
    text = train_tiny.help_text(vars(train_tiny.parse_config([str(cfg)], check=False)))
    assert "--lr=3e-05 " in text and "--min_digits=30 " in text and "--rl_steps=200 " in text


def test_compare_help_lists_its_keys():
    r = script("compare.py", "--help")
    for key, default in compare.KEYS.items():
        assert f"--{key}={default!r}" in r.stdout, key
    assert "train_tiny.py --help" in r.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["train_tiny.py", "--lr=fast"], "train_tiny.py: error: --lr: expected float"),
        (["train_tiny.py", "--nope=1"], "train_tiny.py: error: unknown config key 'nope'"),
        (["train_tiny.py", "lr=1"], "train_tiny.py: error: expected --key=value or a config file"),
        (["train_tiny.py", "missing.py"], "train_tiny.py: error: missing.py: cannot read the config file"),
        (["train_tiny.py", "--lr"], "train_tiny.py: error: --lr: expected a value (--lr=VALUE or --lr VALUE)"),
        (["train_tiny.py", "--lr", "--method=grpo"], "train_tiny.py: error: --lr: expected a value"),
        (["train_tiny.py", "--lr", "fast"], "train_tiny.py: error: --lr: expected float"),
        (["compare.py", "--seeds", "one"], "compare.py: error: --seeds: expected comma-separated integers"),
        (["compare.py", "--rerun=yes"], "compare.py: error: --rerun: expected bool"),
        (["compare.py", "--method=grpo"], "compare.py: error: --method is set per run by compare.py; use --methods="),
        (["compare.py", "--seeds=one"], "compare.py: error: --seeds: expected comma-separated integers"),
        (["compare.py", "--nope=1"], "compare.py: error: unknown key 'nope'; compare.py's keys: methods, seeds"),
        (["compare.py", "--methods=grpo,ppo"], "compare.py: error: --methods: expected distinct comma-separated names"),
        (["compare.py", "--lr=fast"], "compare.py: error: --lr: expected float"),
        (["compare.py", "--reference=gspo", "--methods=grpo,ctpo"], "compare.py: error: --reference: expected one of the methods run"),
        (["compare.py", "--lr=1,1.0"], "compare.py: error: --lr: expected distinct values"),
        (["compare.py", "--methods=grpo,ctpo:ratio=nope"], "compare.py: error: --methods: 'ctpo:ratio=nope': "),
        (["compare.py", "--methods=grpo,ctpo:ratio"], "compare.py: error: --methods: 'ctpo:ratio': expected method:knob=value"),
        (["compare.py", "--methods=ctpo,ctpo:nope=1"], "compare.py: error: --methods: 'ctpo:nope=1': "),
        (["figure1.py", "--run=missing"], "figure1.py: error: --run: 'missing' has no metrics.jsonl"),
        (["figure1.py", "--steps=1-5"], "figure1.py: error: --steps: expected A:B"),
        (["figure1.py", "--bin=-1"], "figure1.py: error: --bin: need >= 0"),
        (["figure1.py", "--bin=x"], "figure1.py: error: --bin: invalid int value"),
        (["bias_variance.py", "--H", "0"], "bias_variance.py: error: --H: need a horizon >= 1"),
        (["bias_variance.py", "--V", "1"], "bias_variance.py: error: --V: need >= 2"),
        (["bias_variance.py", "--kappa", "nan"], "bias_variance.py: error: --kappa: need a finite number"),
        (["bias_variance.py", "--nope"], "bias_variance.py: error: unrecognized arguments: --nope"),
    ],
)
def test_usage_errors(args, message, capsys):
    # in-process (fast): the message each script's main() gives; the exit path is tested below
    name, argv = args[0], args[1:]
    if name in ("train_tiny.py", "compare.py"):  # ConfigError / CompareError: printed as one line by the script's __main__
        with pytest.raises((train_tiny.ConfigError, compare.CompareError)) as e:
            MODULES[name].main(argv)
        err = f"{name}: error: {e.value}\n"
    else:
        with pytest.raises(SystemExit) as e:
            MODULES[name].main(argv)
        assert e.value.code == 2
        err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1, err


@pytest.mark.parametrize(
    "args",
    [["train_tiny.py", "--lr=fast"], ["compare.py", "--seeds=one"], ["figure1.py", "--run=missing"], ["bias_variance.py", "--H", "0"]],
)
def test_usage_error_exit_status_2_one_line_no_traceback(args):
    r = script(*args)
    assert r.returncode == 2, (r.returncode, r.stdout[-2000:], r.stderr[-2000:])
    assert r.stderr.startswith(f"{args[0]}: error: ") and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr


def test_compare_unknown_key_lists_train_tinys_keys_too():
    with pytest.raises(compare.CompareError, match="train_tiny.py's keys: .*rl_steps.*num_minibatches"):
        compare.parse(["--nope=1"])


# -----------------------------------------------------------------------------
# default outputs: the scripts' own out dirs, which .gitignore ignores; never a tracked file


def test_default_outputs_are_ignored_out_dirs():
    paths = {"train_tiny.py": train_tiny.DEFAULTS["out_dir"], "compare.py": compare.KEYS["out_dir"]}
    paths.update({"figure1.py": "out-figure1/figure1.png", "bias_variance.py": "out-lab/bias_variance.png"})
    assert paths["train_tiny.py"] == "out-tiny" and paths["compare.py"] == "out-compare"
    for name in ("figure1.py", "bias_variance.py"):
        assert f"(default: {paths[name]})" in " ".join(script(name, "--help").stdout.split()), name
    for name, path in paths.items():
        path = path if path.endswith(".png") else f"{path}/summary.json"  # a file inside an out dir (out*/ matches folders)
        r = subprocess.run(["git", "check-ignore", "-q", "--no-index", path], cwd=ROOT)
        assert r.returncode == 0, f"{name}: {path} is not ignored by .gitignore"


def test_bias_variance_default_run_writes_only_out_lab(tmp_path):
    r = script(os.path.join(ROOT, "bias_variance.py"), "--H", "3", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == ["out-lab", os.path.join("out-lab", "bias_variance.png")]


# -----------------------------------------------------------------------------
# train_tiny.py config files (nanoGPT style)


def write(path, text):
    path.write_text(text)
    return str(path)


def test_config_file_sets_defaults_and_the_command_line_wins(tmp_path):
    cfg = write(
        tmp_path / "c.py", "# a comment\nimport math\nlr = 3e-5\nrl_steps = 7\nfixed_window = [0.25, 4]\nsft_lr = 1\nmethod = 'grpo'\n"
    )
    C = train_tiny.parse_config([cfg, "--rl_steps=9"])
    assert C.lr == 3e-5 and C.rl_steps == 9 and C.method == "grpo"
    assert C.fixed_window == (0.25, 4) and C.sft_lr == 1.0 and type(C.sft_lr) is float  # list -> tuple, int -> float as on the command line
    assert C.n_prompts == train_tiny.DEFAULTS["n_prompts"]  # what the file does not set keeps its default
    # the command line wins whatever the order; files apply in order
    other = write(tmp_path / "d.py", "rl_steps = 11\nlr = 1e-3\n")
    assert train_tiny.parse_config(["--rl_steps=9", cfg]).rl_steps == 9
    C = train_tiny.parse_config([cfg, other])
    assert C.rl_steps == 11 and C.lr == 1e-3 and C.method == "grpo"


@pytest.mark.parametrize(
    "text, message",
    [
        ("lr = 1e-4\nlearning_rate = 3\n", "{path}: unknown config key 'learning_rate'; valid keys: out_dir"),
        ("rl_steps = 2.5\n", "{path}: rl_steps: expected int (like the default 200), got float 2.5"),
        ("adv_scale = 1\n", "{path}: adv_scale: expected bool"),
        ("lr = 'fast'\n", "{path}: lr: expected float"),
        ("lr = = 1\n", "{path}:1: SyntaxError"),
        ("lr = 1 / 0\n", "{path}: ZeroDivisionError"),
        ("group_size = 1\n", "--group_size: need >= 2"),  # the value checks apply as for command-line keys
    ],
)
def test_config_file_errors(tmp_path, text, message):
    path = write(tmp_path / "bad.py", text)
    with pytest.raises(train_tiny.ConfigError) as e:
        train_tiny.parse_config([path])
    assert str(e.value).startswith(message.format(path=path)), str(e.value)


def test_configurator_key_value_forms(tmp_path):
    """configurator.parse: the defaults, then config files in order, then --key=value and --key value in order."""
    defaults = {"lr": 1e-4, "steps": 10, "name": "a", "window": (0.5, 5.0), "flag": False, "kw": {}}
    cfg = write(tmp_path / "c.py", "lr = 3e-5\nsteps = 7\nname = 'from-file'\n")
    got = configurator.parse([cfg, "--steps", "9", "--name=b", "--window", "[1, 2]", "--flag", "True", "--kw={'x': 1}"], defaults)
    assert got == {"lr": 3e-5, "steps": 9, "name": "b", "window": (1, 2), "flag": True, "kw": {"x": 1}}
    assert configurator.parse(["--lr", "-1e-3", "--lr=2"], defaults)["lr"] == 2.0  # a negative number is a value; the last wins
    assert configurator.parse(["--name", "1,2"], defaults)["name"] == "1,2"  # a string key takes the text as it is
    assert configurator.parse([], defaults) == defaults and configurator.parse([], defaults) is not defaults
    for argv, message in (
        (["--steps"], "--steps: expected a value (--steps=VALUE or --steps VALUE)"),
        (["--steps", "--lr=1"], "--steps: expected a value"),
        (["--nope", "1"], "unknown config key 'nope'; valid keys: lr, steps, name, window, flag, kw"),
        (["--steps", "2.5"], "--steps: expected int (like the default 10), got float 2.5"),
        (["--flag=1"], "--flag: expected bool"),
        (["-x"], "expected --key=value or a config file"),
        ([str(tmp_path / "none.py")], f"{tmp_path / 'none.py'}: cannot read the config file"),
    ):
        with pytest.raises(configurator.ConfigError) as e:
            configurator.parse(argv, defaults)
        assert str(e.value).startswith(message) and "\n" not in str(e.value), (argv, str(e.value))


def test_configurator_help_reads_the_comments(tmp_path):
    src = write(tmp_path / "s.py", "import os\n# I/O\nout = 'x'  # where outputs go\nn = 3  # how many, a comment\n#   continued here\n"
                                   "# model\nwidth = 2\n# ---\ndef f():\n    out = 1  # not a key\n")  # fmt: skip
    lines = configurator.help_lines(src, {"out": "y", "n": 3, "width": 2})
    want = ["# I/O", "--out='y' # where outputs go", "--n=3 # how many, a comment continued here", "# model", "--width=2"]
    assert [" ".join(x.split()) for x in lines] == want


def test_train_tiny_key_value_forms_match():
    a = train_tiny.parse_config(["--method", "grpo", "--lr", "3e-4", "--fixed_window", "(0.4, 3)"])
    b = train_tiny.parse_config(["--method=grpo", "--lr=3e-4", "--fixed_window=(0.4, 3)"])
    assert a == b and a.method == "grpo" and a.lr == 3e-4 and a.fixed_window == (0.4, 3)
    assert compare.parse(["--methods", "grpo,ctpo", "--lr", "3e-4"])[2] == ["--lr=3e-4"]  # forwarded as --key=value


def test_config_long_parses_and_is_long():
    C = train_tiny.parse_config([os.path.join(ROOT, "config", "long.py")])
    assert C.out_dir == "out-long" and C.task == "pairs"
    assert 2 * C.n_pairs + 1 >= 128  # the target response, end token included


def test_config_automaton_parses_and_has_one_update_per_rollout():
    C = train_tiny.parse_config([os.path.join(ROOT, "config", "automaton.py")])
    assert C.out_dir == "out-automaton" and C.task == "automaton" and C.rollout_lag == 0
    assert C.num_minibatches == C.ppo_epochs == 1  # rollout_lag = k is then exactly k optimizer updates
    assert train_tiny.parse_config([os.path.join(ROOT, "config", "automaton.py"), "--rollout_lag=8"]).rollout_lag == 8


def test_compare_forwards_config_files_and_finds_the_sweep(tmp_path):
    cfg = write(tmp_path / "c.py", "rl_steps = 3\n")
    opts, files, extra, sweep = compare.parse([cfg, "--methods=grpo,ctpo", "--num_minibatches=1,4,16", "--fixed_window=(0.4, 3)"])
    assert files == [cfg] and extra == ["--fixed_window=(0.4, 3)"] and sweep == ("num_minibatches", ["1", "4", "16"])
    assert opts["reference"] == "ctpo" and opts["methods"] == ["grpo", "ctpo"] and opts["seeds"] == [1, 2, 3]
    assert compare.parse(["--methods=grpo,gspo"])[0]["reference"] == "grpo"  # no ctpo: the first method


def test_compare_arms_carry_their_knobs_into_loss_kwargs(tmp_path):
    opts = compare.parse(["--methods=grpo,ctpo,ctpo:ratio=token", "--rollout_lag=0,2"])[0]
    assert opts["methods"] == ["grpo", "ctpo", "ctpo:ratio=token"] and opts["reference"] == "ctpo"
    assert compare.arm_knobs("ctpo:ratio=token:clip_low=0.1") == {"ratio": "token", "clip_low": 0.1}
    assert compare.arm_args("grpo", {"eps_low": 0.1}) == ["--method=grpo"]  # no knobs: the given loss_kwargs as they are
    args = compare.arm_args("ctpo:ratio=token", {"clip_low": 0.1, "ratio": "cumulative"})  # the arm's knobs win
    C = train_tiny.parse_config(args)
    assert C.method == "ctpo" and C.loss_kwargs == {"clip_low": 0.1, "ratio": "token"}
    assert compare.run_name("ctpo:ratio=token", 3, ("rollout_lag", ["0", "2"]), 2) == "ctpo+ratio=token-rollout_lag2-s3"


def test_log_rho_var_by_hand():
    # two steps; position 3 is reached by 2 of 4 responses (half: it is H), position 4 by 1 (not)
    rows = [{"step": 0}, {"step": 1, "pos": {"n": [2, 2, 1, 1], "sum": [0, 0, 0.5, 1.0], "sumsq": [0, 0, 0.25, 1.0]}},
            {"step": 2, "pos": {"n": [2, 2, 1], "sum": [0, 0, -0.5], "sumsq": [0, 0, 0.25]}}]  # fmt: skip
    var, h = compare.log_rho_var(rows)
    assert h == 3 and var == pytest.approx(0.25)  # log rho_3 = +0.5 and -0.5: mean 0, variance 0.25
    assert compare.log_rho_var([{"step": 0}]) == (None, None)


# -----------------------------------------------------------------------------
# figure1.py: binning and the sqrt(t) fit


def exact_sums(counts, std_of_bin, bin):
    """Per-position sums whose pooled bins have mean 0 and std exactly std_of_bin(t_b), t_b the bin's mean
    position: position t gets sumsq_t = n_t * s^2 * (N_b - 1) / N_b * t / t_b with s = std_of_bin(t_b), so the
    bin's sum of squares is s^2 (N_b - 1) / N_b * (sum_t n_t t) / t_b = s^2 (N_b - 1): variance s^2 with ddof = 1.
    Within a bin the variance grows with t, as a random walk's does."""
    W = len(counts)
    tot = {k: [0.0] * W for k in figure1.POS_KEYS}
    for lo in range(0, W, bin):
        idx = range(lo, min(W, lo + bin))
        N = sum(counts[i] for i in idx)
        t_b = sum((i + 1) * counts[i] for i in idx) / N
        for i in idx:
            tot["n"][i] = counts[i]
            tot["sumsq"][i] = counts[i] * std_of_bin(t_b) ** 2 * (N - 1) / N * (i + 1) / t_b
    return tot


@pytest.mark.parametrize("bin", [1, 5, 7])
def test_fit_recovers_sigma_on_exact_sqrt_t_data(bin):
    sigma = 0.05
    counts = [float(4000 - 30 * t) for t in range(120)]  # fewer tokens at later positions, as in real runs
    tot = exact_sums(counts, lambda t: sigma * math.sqrt(t), bin)
    st = figure1.figure_stats(tot, bin=bin, min_frac=0)
    assert len(st["bins"]) == math.ceil(120 / bin) and st["bin"] == bin
    for b in st["bins"]:
        assert b["std"] == pytest.approx(sigma * math.sqrt(b["t"]), rel=1e-12)
    assert st["sigma"] == pytest.approx(sigma, rel=1e-12) and st["r2"] == pytest.approx(1.0, abs=1e-12)


def test_fit_by_hand():
    # bins at t = 1, 4, 9 (sqrt 1, 2, 3) with std 1, 2, 4 and counts 4, 16, 64 (weights 2, 4, 8 ~ 1, 2, 4):
    # sigma = (1*1*1 + 2*2*2 + 4*4*3) / (1*1 + 2*4 + 4*9) = 57 / 45 = 19/15; residuals -4/15, -8/15, 3/15;
    # SS_res = (16 + 2*64 + 4*9) / 225 = 0.8; weighted mean of std = (1 + 4 + 16) / 7 = 3; SS_tot = 4 + 2 + 4 = 10
    tot = {k: [0.0] * 9 for k in figure1.POS_KEYS}
    for t, s, n in ((1, 1.0, 4.0), (4, 2.0, 16.0), (9, 4.0, 64.0)):
        tot["n"][t - 1], tot["sumsq"][t - 1] = n, (n - 1) * s * s  # mean 0, std s with ddof = 1
    st = figure1.figure_stats(tot, bin=1, min_frac=0)  # the empty positions are skipped
    assert [b["t"] for b in st["bins"]] == [1, 4, 9]
    assert st["sigma"] == pytest.approx(19 / 15, rel=1e-13) and st["r2"] == pytest.approx(1 - 0.8 / 10, rel=1e-12)
    assert figure1.fit_sqrt([4.0], [1.0], [10.0])[1] is None  # one bin: no R^2


def test_var_fit_by_hand():
    # var = a + s^2 t exactly (a random walk with larger first steps): recovered, R^2 = 1; the paper's fit then misses
    t = [8.5, 24.5, 40.5, 56.5, 72.5]
    std = [math.sqrt(1e-4 + 4e-5 * x) for x in t]
    a, s, r2 = figure1.fit_var(t, std, [100.0, 90.0, 80.0, 70.0, 60.0])
    assert a == pytest.approx(1e-4, rel=1e-9) and s == pytest.approx(math.sqrt(4e-5), rel=1e-9) and r2 == pytest.approx(1.0, abs=1e-12)
    assert figure1.fit_sqrt(t, std, [100.0] * 5)[1] < 0.999
    assert figure1.fit_var(t[:2], std[:2], [1.0, 1.0]) == (None, None, None)  # two points: no R^2 for a 2-parameter fit
    assert figure1.fit_var([1.0, 2.0, 3.0], [0.3, 0.2, 0.1], [1.0] * 3)[1] is None  # shrinking spread: no s


def test_binning_matches_a_direct_computation_on_tokens():
    # tokens with a position-dependent mean and spread: pooled sums against the std (ddof = 1) of the raw values
    rng = random.Random(0)
    tokens = [
        (t, rng.gauss(0.01 * t, 0.05 * math.sqrt(t)), rng.random() < 0.1, rng.random() < 0.02)
        for t in range(1, 31)
        for _ in range(rng.randint(5, 40))
    ]
    tot = {k: [0.0] * 30 for k in figure1.POS_KEYS}
    for t, x, fixed, adaptive in tokens:
        for k, v in (
            ("n", 1),
            ("sum", x),
            ("sumsq", x * x),
            ("clip_fixed", fixed),
            ("clip_adaptive", adaptive),
            ("dsum", x),
            ("dsumsq", x * x),
        ):
            tot[k][t - 1] += v
    bins = figure1.bin_positions(tot, 8, min_frac=0)
    assert [(b["t_lo"], b["t_hi"]) for b in bins] == [(1, 8), (9, 16), (17, 24), (25, 30)]
    for b in bins:
        sel = [tok for tok in tokens if b["t_lo"] <= tok[0] <= b["t_hi"]]
        xs = [tok[1] for tok in sel]
        m = sum(xs) / len(xs)
        assert b["n"] == len(sel) and b["t"] == pytest.approx(sum(tok[0] for tok in sel) / len(sel), rel=1e-14)
        assert b["std"] == pytest.approx(math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)), rel=1e-9)
        assert b["clip_fixed"] == pytest.approx(sum(tok[2] for tok in sel) / len(sel), rel=1e-14)
        assert b["clip_adaptive"] == pytest.approx(sum(tok[3] for tok in sel) / len(sel), rel=1e-14)


def test_min_frac_and_auto_bin():
    counts = [100.0] * 40 + [3.0] * 10  # 10 rare overlong positions
    tot = exact_sums(counts, lambda t: 0.1 * math.sqrt(t), 1)
    assert figure1.auto_bin(tot, 0.05) == 40 // 16 and figure1.auto_bin(tot, 0.0) == 50 // 16
    assert len(figure1.bin_positions(tot, 1, 0.05)) == 40 and len(figure1.bin_positions(tot, 1, 0.0)) == 50  # rare positions dropped
    assert figure1.auto_bin({"n": [100.0] * 21}) == 1  # the default toy: no binning


def test_figure1_json_on_a_run_folder(tmp_path, capsys):
    # a run folder as train_tiny.py writes it: per-step rows with the per-position sums; the steps are pooled
    tot = exact_sums([500.0] * 32, lambda t: 0.05 * math.sqrt(t), 4)
    half = {k: [v / 2 for v in vals] for k, vals in tot.items()}
    half["clip_fixed"] = [0.01 * t * n / 2 for t, n in enumerate(tot["n"])]
    rows = [{"step": 0, "acc": 0.1}] + [{"step": s, "reward": 0.5, "pos": half} for s in (1, 2)] + [{"step": 3, "reward": 0.5, "pos": tot}]
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = figure1.main([f"--run={run}", "--bin=4", "--steps=1:2", "--json", "--min_frac=0"])
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(json.dumps(out[0]))
    assert {"sigma", "r2", "bins", "clip_rate"} <= set(printed) and set(printed["clip_rate"]) >= {"fixed", "adaptive"}
    assert printed["sigma"] == pytest.approx(0.05, rel=1e-12) and printed["r2"] == pytest.approx(1.0, abs=1e-12)
    assert printed["steps"] == [1, 2] and len(printed["bins"]) == 8 == len(printed["clip_rate"]["fixed"])
    # clip rate of bin b: sum over its positions of 0.01 * (t - 1) * n / (4 n) = 0.01 * mean(t - 1)
    assert printed["clip_rate"]["fixed"] == pytest.approx([0.01 * (4 * b + 1.5) for b in range(8)], rel=1e-12)
    png = tmp_path / "f" / "fig.png"
    figure1.main([f"--run={run}", f"--out={png}"])
    assert png.stat().st_size > 10_000


# -----------------------------------------------------------------------------
# compare.py: the t quantile and the paired intervals


def test_t_quantile_exact():
    # closed forms: df 1 (Cauchy) tan(pi (p - 1/2)); df 2 (2p - 1) / sqrt(2 p (1 - p));
    # df 4: 2 sqrt(q - 1), q = cos(acos(sqrt(a)) / 3) / sqrt(a), a = 4 p (1 - p)
    for p in (0.6, 0.9, 0.975, 0.995):
        assert compare.t_quantile(p, 1) == pytest.approx(math.tan(math.pi * (p - 0.5)), rel=1e-10)
        assert compare.t_quantile(p, 2) == pytest.approx((2 * p - 1) / math.sqrt(2 * p * (1 - p)), rel=1e-10)
        a = 4 * p * (1 - p)
        q = math.cos(math.acos(math.sqrt(a)) / 3) / math.sqrt(a)
        assert compare.t_quantile(p, 4) == pytest.approx(2 * math.sqrt(q - 1), rel=1e-10)
        assert compare.t_quantile(1 - p, 3) == pytest.approx(-compare.t_quantile(p, 3), rel=1e-12)
    # printed tables (t_{0.975}): 3.182 (df 3), 2.571 (5), 2.262 (9), 2.042 (30); the normal 1.960 as df grows
    for df, t in ((3, 3.182), (5, 2.571), (9, 2.262), (30, 2.042), (10**6, 1.960)):
        assert round(compare.t_quantile(0.975, df), 3) == t


def test_paired_interval_by_hand():
    # d = 1..5: mean 3, sd sqrt(2.5), t(0.975, 4) = 2.7764451 -> half width 2.7764451 * sqrt(2.5 / 5) = 1.9632432
    d = compare.paired_interval([1.0, 2.0, 3.0, 4.0, 5.0])
    assert d["n"] == 5 and d["mean"] == 3.0 and d["sd"] == pytest.approx(math.sqrt(2.5), rel=1e-15)
    assert d["lo"] == pytest.approx(3 - 1.9632432, abs=1e-7) and d["hi"] == pytest.approx(3 + 1.9632432, abs=1e-7)
    one = compare.paired_interval([0.7])
    assert one["mean"] == 0.7 and one["lo"] is None and one["hi"] is None


def summary(acc_before, acc_after, reward_before=0.5, reward_after=0.6):
    return {"accuracy_before": acc_before, "accuracy_after": acc_after, "reward_before": reward_before, "reward_after": reward_after,
            "train_reward_last10": 0.5, "clip_frac": 0.01, "mean_response_len": 20.0, "wall_seconds": 10.0}  # fmt: skip


def test_analyse_pairs_by_seed():
    # two seeds with very different warm starts: the paired difference removes them. ctpo gains (points)
    # 10, 12, 20 over seeds 1..3; grpo 8, 8, 17: ctpo - grpo = 2, 4, 3 -> mean 3, sd 1, half = 4.3027 / sqrt(3)
    seeds, before = [1, 2, 3], {1: 0.10, 2: 0.40, 3: 0.25}
    gains = {"ctpo": (0.10, 0.12, 0.20), "grpo": (0.08, 0.08, 0.17), "gspo": (0.10, 0.12, 0.20)}
    runs = {(m, s, v): summary(before[s], before[s] + gains[m][s - 1] * (1 + (v == 16)), 0.5, 0.5 + gains[m][s - 1])
            for m in gains for s in seeds for v in (1, 16)}  # fmt: skip
    table, paired = compare.analyse(runs, ["grpo", "gspo", "ctpo"], seeds, "ctpo", values=[1, 16])
    assert [(r["value"], r["method"]) for r in table] == [(v, m) for v in (1, 16) for m in ("grpo", "gspo", "ctpo")]
    assert [(p["value"], p["comparison"]) for p in paired] == [(v, f"ctpo - {m}") for v in (1, 16) for m in ("grpo", "gspo")]
    half = compare.t_quantile(0.975, 2) / math.sqrt(3)
    p = paired[0]["acc_gain"]
    assert p["mean"] == pytest.approx(3.0, rel=1e-12) and p["sd"] == pytest.approx(1.0, rel=1e-12)
    assert (p["lo"], p["hi"]) == (pytest.approx(3 - half, rel=1e-12), pytest.approx(3 + half, rel=1e-12))
    assert paired[0]["reward_gain"]["mean"] == pytest.approx(0.03, rel=1e-12) and paired[0]["paired_warm_start"]
    assert paired[1]["acc_gain"]["mean"] == pytest.approx(0.0, abs=1e-12) and paired[1]["acc_gain"]["hi"] == pytest.approx(0.0, abs=1e-12)
    assert paired[2]["acc_gain"]["mean"] == pytest.approx(6.0, rel=1e-12)  # at value 16 every accuracy gain doubles
    # unpaired, the seed-to-seed spread of the warm start would swamp it: the table's std is over seeds
    ctpo_row = next(r for r in table if r["method"] == "ctpo" and r["value"] == 1)
    assert ctpo_row["accuracy_after"][1] > 10 and ctpo_row["acc_gain"][0] == pytest.approx(14.0, rel=1e-12)
    md = compare.markdown(table, paired, seeds, "num_minibatches", "note")
    assert f"| 1 | ctpo - grpo | 3 | 3.0 [{3 - half:.1f}, {3 + half:.1f}] |" in md and "## Sweep over num_minibatches" in md
    assert "reward over evals" not in md and "curve_gain" not in paired[0]  # the synthetic runs have no curves
    # the sweep's own effect per method, paired by seed: gains at value 1 minus at 16 (ctpo: -10, -12, -20 points)
    cost = compare.sweep_cost(runs, ["grpo", "ctpo"], seeds, [1, 16])
    assert [(c["value"], c["comparison"]) for c in cost] == [(16, "grpo: at 1 - here"), (16, "ctpo: at 1 - here")]
    assert cost[1]["acc_gain"]["mean"] == pytest.approx(-14.0, rel=1e-12) and cost[1]["acc_gain"]["sd"] == pytest.approx(math.sqrt(28))
    assert cost[1]["reward_gain"]["mean"] == pytest.approx(0.0, abs=1e-12) and cost[1]["paired_warm_start"]
    md = compare.markdown(table, paired, seeds, "num_minibatches", "note", cost)
    assert "## The swept num_minibatches per method" in md and "| 16 | ctpo: at 1 - here | 3 | -14.0 [" in md
    # with the curves' means: a third paired gain (ctpo - grpo: 0.05 on every seed -> interval [0.05, 0.05])
    for (m, _, _), r in runs.items():
        r["reward_curve_mean"] = r["reward_before"] + 0.1 + (0.05 if m == "ctpo" else 0.0)
    table, paired = compare.analyse(runs, ["grpo", "ctpo"], seeds, "ctpo", values=[1])
    assert paired[0]["curve_gain"]["mean"] == pytest.approx(0.05, rel=1e-9) and paired[0]["curve_gain"]["sd"] == pytest.approx(0, abs=1e-12)
    assert table[1]["curve_gain"][0] == pytest.approx(0.15, rel=1e-9)
    md = compare.markdown(table, paired, seeds, None, "note")
    assert "reward over evals: mean [95% CI]" in md and "| ctpo - grpo | 3 | 3.0 [" in md and "0.050 [0.050, 0.050]" in md
    curve = [{"step": 0, "eval_reward": 0.3}, {"step": 5}, {"step": 50, "eval_reward": 0.5}, {"step": 100, "eval_reward": 0.7}]
    assert compare.reward_curve_mean(curve) == pytest.approx(0.6, rel=1e-15)
    assert compare.reward_curve_mean([{"step": 0, "eval_reward": 0.3}]) is None
    runs[("grpo", 2, 1)]["accuracy_before"] = 0.41  # a warm start that differs is flagged
    assert not compare.analyse(runs, ["grpo", "ctpo"], seeds, "ctpo", values=[1])[1][0]["paired_warm_start"]


def test_plot_leaves_out_panels_whose_numbers_are_all_equal():
    """A greedy exact match at 100% from the start (its curve flat, its gain 0 on every run) gets no panel; the
    sampled reward, which moves, keeps its curve and its paired gain."""
    seeds = [1, 2]
    runs = {(m, s, None): summary(1.0, 1.0, 0.5, 0.6 + 0.01 * s + 0.02 * (m == "ctpo")) for m in ("grpo", "ctpo") for s in seeds}
    curve = [{"step": 0, "acc": 1.0, "eval_reward": 0.5, "reward": 0.4}, {"step": 10, "acc": 1.0, "eval_reward": 0.6, "reward": 0.5}]
    curves = {(m, s, None): curve for m in ("grpo", "ctpo") for s in seeds}
    table, paired = compare.analyse(runs, ["grpo", "ctpo"], seeds, "ctpo")
    keys, gains = compare.panels(table, paired, curves, None)
    assert [k for k, _, _ in keys] == ["eval_reward", "reward"] and [g for g, _ in gains] == ["reward_gain"]
    assert compare.panels(table, paired, curves, ("rollout_lag", ["0"]))[0] == []  # a sweep draws no curves


def test_plots_of_a_comparison_and_a_sweep(tmp_path):
    """compare.plot on synthetic runs: the curves + paired intervals, and the sweep's panels, write a PNG each."""
    seeds = [1, 2]
    runs = {(m, s, v): dict(summary(0.1, 0.2 + 0.01 * s, 0.5, 0.6 + 0.01 * (m == "ctpo")), reward_curve_mean=0.55)
            for m in ("grpo", "ctpo") for s in seeds for v in (None, 4, 16)}  # fmt: skip
    curve = [{"step": 0, "acc": 0.1, "eval_reward": 0.5}] + [{"step": i, "reward": 0.5 + 0.01 * i} for i in range(1, 21)]
    curve += [{"step": 20, "acc": 0.2, "eval_reward": 0.6, "elapsed": 1.0}]
    curves = {(m, s, None): curve for m in ("grpo", "ctpo") for s in seeds}
    table, paired = compare.analyse({k: r for k, r in runs.items() if k[2] is None}, ["grpo", "ctpo"], seeds, "ctpo")
    compare.plot(tmp_path / "c.png", ["grpo", "ctpo"], seeds, [None], None, curves, table, paired, task="pairs")
    table, paired = compare.analyse({k: r for k, r in runs.items() if k[2]}, ["grpo", "ctpo"], seeds, "ctpo", values=[4, 16])
    compare.plot(tmp_path / "s.png", ["grpo", "ctpo"], seeds, [4, 16], ("num_minibatches", ["4", "16"]), {}, table, paired)
    # one method (no pairs) whose runs logged no evaluation after step 0 (no curve gain): the sweep still plots
    bare = {k: {x: y for x, y in r.items() if x != "reward_curve_mean"} for k, r in runs.items() if k[0] == "ctpo" and k[2]}
    table, paired = compare.analyse(bare, ["ctpo"], seeds, "ctpo", values=[4, 16])
    assert paired == [] and "curve_gain" not in table[0]
    compare.plot(tmp_path / "one.png", ["ctpo"], seeds, [4, 16], ("num_minibatches", ["4", "16"]), {}, table, paired)
    for name in ("c.png", "s.png", "one.png"):
        assert (tmp_path / name).stat().st_size > 10_000
