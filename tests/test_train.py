"""Tests of train_tiny.py (and compare.py, figure1.py): the task, a few-step smoke run of every method,
exact resume, DDP == one process on the union batch, and clear errors for bad configuration."""

import json
import os
import subprocess
import sys

import pytest
import torch

import ctpo
import ctpo_ext
import tasks
import train_tiny

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# a few-second configuration: a 1-layer model, a handful of prompts, no meaningful learning
TINY = ["--n_layer=1", "--n_embd=32", "--sft_steps=3", "--sft_batch=8", "--eval_size=16", "--n_prompts=4", "--group_size=2",
        "--num_minibatches=2", "--eval_interval=2", "--n_mistakes=1"]  # fmt: skip


TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


def clean_env():
    return {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}


def run(out_dir, *args):
    return train_tiny.main([f"--out_dir={out_dir}", *TINY, *args])


def rows(out_dir):
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def state(out_dir):
    return torch.load(os.path.join(out_dir, "ckpt.pt"), weights_only=False)


# -----------------------------------------------------------------------------
# the task


def test_task_targets_and_reward():
    task = tasks.Sort(16, 20)  # not the default 10-14: any range
    prompts, targets = task.batch(64, torch.Generator().manual_seed(0))
    assert prompts.shape == targets.shape == (64, 20 + 1)
    for p, t in zip(prompts.tolist(), targets.tolist()):
        digits = [x for x in p if x < 10]
        assert 16 <= len(digits) <= 20 and p[-1] == tasks.EQ
        assert t[: len(digits)] == sorted(digits) and t[len(digits)] == tasks.EOS
    # the target itself scores 1; a response with one wrong digit is not exact but gets partial credit
    mask = torch.arange(targets.size(1))[None, :] <= (targets != tasks.PAD).sum(1, keepdim=True)
    reward, exact, length = task.score(targets, mask, targets, 0.5)
    assert exact.all() and torch.allclose(reward, torch.ones(64)) and (length >= 16 + 1).all()
    wrong = targets.clone()
    wrong[:, 0] = (wrong[:, 0] + 1) % 10
    reward, exact, _ = task.score(wrong, mask, targets, 0.5)
    assert not exact.any() and ((reward > 0.4) & (reward < 0.5)).all()
    # stopping early (the end token too soon) is wrong, and so is a missing end token
    short = mask.clone()
    short[:, 1:] = False
    assert not task.score(targets, short, targets, 0.5)[1].any()


def test_pairs_task_targets_and_reward():
    task = tasks.make(vars(train_tiny.parse_config(["--task=pairs", "--n_pairs=5"])))
    assert isinstance(task, tasks.Pairs) and task.n_pairs == 5
    assert sorted(tasks.PAIRS_TABLE.tolist()) == list(range(10))  # F is a permutation of the digits
    assert task.vocab_size == 23 and tasks.make(train_tiny.DEFAULTS).vocab_size == 13  # sort's model unchanged
    prompts, targets = task.batch(64, torch.Generator().manual_seed(0))
    assert prompts.shape == (64, 1) and (prompts == tasks.EQ).all() and targets.shape == (64, 11)
    for t in targets.tolist():
        assert all(r < 10 and v == 13 + tasks.PAIRS_TABLE[r] for r, v in zip(t[0:10:2], t[1:10:2])) and t[10] == tasks.EOS
    assert len(set(targets[:, 0].tolist())) > 5  # the free digits vary
    mask = torch.ones_like(targets, dtype=torch.bool)
    reward, exact, length = task.score(targets, mask, targets, 0.5)
    assert exact.all() and torch.equal(reward, torch.ones(64)) and (length == 11).all()

    # by hand: F(3) = 4 + 13 = 'e', F(7) = 1 + 13 = 'b', F(0) = 9 + 13 = 'j'
    def resp(text):
        return torch.tensor([[tasks.VOCAB.index(ch) for ch in text]])

    def sc(text, n=None):
        r = resp(text)
        m = torch.zeros_like(r, dtype=torch.bool)
        m[:, : n or r.size(1)] = True
        reward, exact, length = task.score(r, m, targets[:1], 0.5)
        return round(reward.item(), 6), exact.item(), length.item()

    assert sc("3e7b0j3e7b$") == (1.0, True, 11)  # any free digits: every pair right, then the end token
    assert sc("3e7a0j3a7b$") == (round(0.5 * 4 / 6, 6), False, 11)  # two wrong values: 3 pairs + the end token of 6
    assert sc("3e7b$") == (round(0.5 * 2 / 6, 6), False, 5)  # stopping early: the end token is not where it must be
    assert sc("3e7b0j3e7b3e") == (round(0.5 * 5 / 6, 6), False, 12)  # no end token after 5 pairs
    assert sc("ee7b0j3e7b$") == (round(0.5 * 5 / 6, 6), False, 11)  # a value where a digit must be
    assert sc("3e7b0j3e7b$", n=11)[1] and not sc("3e7b0j3e7b$$", n=12)[1]  # nothing may follow the end token


def test_automaton_task_targets_and_reward():
    task = tasks.make(vars(train_tiny.parse_config(["--task=automaton", "--n_pairs=3"])))
    assert isinstance(task, tasks.Automaton) and task.n_pairs == 3 and task.max_new == 7
    A = tasks.AUTOMATON.tolist()
    assert A == [[2, 0, 1], [1, 2, 0], [0, 1, 2]]
    assert all(sorted(row) == [0, 1, 2] for row in A) and all(sorted(col) == [0, 1, 2] for col in zip(*A))  # a Latin square
    prompts, targets = task.batch(64, torch.Generator().manual_seed(0))
    assert prompts.shape == (64, 1) and (prompts == tasks.EQ).all() and targets.shape == (64, 4)
    for t in targets.tolist():  # each claim is the state the actions before it reached, from state 0
        s = 0
        for d in t[:3]:
            assert d // 3 == s
            s = A[s][d % 3]
        assert t[3] == tasks.EOS
    assert len(set(targets[:, 0].tolist())) == 3  # the first step: claim 0, any of the 3 actions

    def sc(text, n=None):  # the response's tokens: digits, '$', letters (a letter is not a step)
        r = torch.tensor([[tasks.VOCAB.index(ch) for ch in text]])
        m = torch.zeros_like(r, dtype=torch.bool)
        m[:, : n or r.size(1)] = True
        reward, exact, length = task.score(r, m, targets[:1], 0.5)
        return round(reward.item(), 6), exact.item(), length.item()

    # by hand: 0 = (claim 0, action 0): state 0 -> A[0][0] = 2; 7 = (claim 2, action 1): 2 -> A[2][1] = 1;
    # 5 = (claim 1, action 2): 1 -> 0; then the end token
    assert sc("075$") == (1.0, True, 4)
    assert sc("675$") == (round(0.5 * 3 / 4, 6), False, 4)  # claim 2 in state 0: wrong; action 0 still moves 0 -> 2
    # the warm start's bigram carries a wrong claim on: 3 = (claim 1, action 0), then the claim A[1][0] = 1 with
    # action 1 (4), then A[1][1] = 2 with action 2 (8); the actions took the walk 0 -> 2 -> 1: every claim wrong
    assert sc("348$") == (round(0.5 * 1 / 4, 6), False, 4)
    assert sc("a06$") == (round(0.5 * 3 / 4, 6), False, 4)  # a letter is a wrong step that leaves the state at 0
    assert sc("07$") == (round(0.5 * 2 / 4, 6), False, 3)  # stopping early
    assert sc("075") == (round(0.5 * 3 / 4, 6), False, 3)  # no end token
    assert sc("075$$") == (0.5, False, 5) and sc("075$$", n=4)[1]  # nothing may follow the end token
    assert task.vocab_size == tasks.LETTER0 and task.values == (0, 9)


@pytest.mark.parametrize("name", sorted(tasks.TASKS))
def test_task_interface(name):
    """Every task keeps the contract the training loop relies on (tasks.py's docstring): shapes, lengths that fit
    the model's block, a target that scores 1 and is exact, a wrong one that is not, value tokens a teacher may
    replace, and a one-line description of a mistake."""
    cfg = {**train_tiny.DEFAULTS, "task": name, "n_pairs": 6}
    task = tasks.make(cfg)
    prompts, targets = task.batch(32, torch.Generator().manual_seed(1))
    assert prompts.dtype == targets.dtype == torch.long and prompts.shape == (32, task.prompt_len) and targets.size(0) == 32
    assert 0 <= int(prompts.min()) and int(prompts.max()) < task.vocab_size and int(targets.max()) < task.vocab_size
    length = (targets != tasks.PAD).sum(1) + 1  # the answer, end token included
    assert int(length.max()) <= task.max_new - 3 and (targets.gather(1, (length - 1)[:, None]) == tasks.EOS).all()
    mask = torch.arange(targets.size(1))[None, :] < length[:, None]
    reward, exact, n = task.score(targets, mask, targets, 0.5)
    assert exact.all() and torch.equal(reward, torch.ones(32)) and torch.equal(n, length)
    lo, hi = task.values
    wrong = torch.where((targets >= lo) & (targets < hi), lo + (targets - lo + 1) % (hi - lo), targets)  # every value off by one
    reward, exact, _ = task.score(wrong, mask, targets, 0.5)
    assert not exact.any() and (reward < 0.5).all()
    assert isinstance(task.name, str) and isinstance(task.holds_out, bool)
    line = task.show(prompts[0], wrong[0][mask[0]], targets[0])
    assert isinstance(line, str) and "\n" not in line and "got" in line


def test_teacher_noise_changes_only_values():
    for name, lo in (("pairs", 13), ("sort", 0)):
        task = tasks.make({**train_tiny.DEFAULTS, "task": name})
        assert task.values == (lo, lo + 10)
        _, targets = task.batch(256, torch.Generator().manual_seed(0))
        gen = torch.Generator().manual_seed(1)
        noisy = tasks.teacher(task, targets, 0.5, gen)
        kind = (targets >= lo) & (targets < lo + 10)  # pairs: the values a..j; sort: the digits
        assert torch.equal(noisy[~kind], targets[~kind])  # free digits, the end token and padding never change
        assert ((noisy[kind] >= lo) & (noisy[kind] < lo + 10)).all()
        changed = (noisy != targets)[kind].float().mean().item()  # 0.5 * 9/10 expected; > 10k tokens: std < 0.005
        assert abs(changed - 0.45) < 0.03, changed
        state = gen.get_state()
        assert tasks.teacher(task, targets, 0.0, gen) is targets  # noise 0: no draw
        assert torch.equal(gen.get_state(), state)


def test_pairs_smoke(tmp_path):
    out = str(tmp_path / "pairs")
    summary = run(out, "--task=pairs", "--n_pairs=4", "--teacher_noise=0.3", "--rl_steps=2")
    assert summary["config"]["task"] == "pairs" and 1 <= summary["mean_response_len"] <= 2 * 4 + 4
    r = rows(out)
    assert [x["step"] for x in r] == [0, 1, 2] and len(r[1]["pos"]["n"]) <= 2 * 4 + 4


def test_heldout_split_is_fixed_and_excluded():
    task = tasks.Sort(16, 20)  # not the default 10-14: any range
    C = train_tiny.parse_config(["--seed=7"])
    a, _ = task.batch(32, torch.Generator().manual_seed(C.eval_seed))
    b, _ = task.batch(32, torch.Generator().manual_seed(train_tiny.DEFAULTS["eval_seed"]))
    assert torch.equal(a, b)  # the split does not depend on the run's seed
    # a generator that reproduces the held-out prompts is forced onto fresh ones
    problems = tasks.Problems(task, torch.Generator().manual_seed(C.eval_seed), a)
    p, _ = problems(32)
    assert not any(tuple(r) in {tuple(x) for x in a.tolist()} for r in p.tolist())
    assert tasks.Problems(tasks.Pairs(3), torch.Generator(), a).heldout == set()  # pairs: one prompt, nothing held out


# -----------------------------------------------------------------------------
# smoke runs: every method writes the files a user expects


@pytest.mark.parametrize("method", sorted(ctpo.METHODS))
def test_smoke_each_method(tmp_path, method):
    out = str(tmp_path / method)
    summary = run(out, f"--method={method}", "--rl_steps=3", "--backend=python")
    for name in ("metrics.jsonl", "summary.json", "train.png", "ckpt.pt"):
        assert os.path.getsize(os.path.join(out, name)) > 0, name
    assert not os.path.exists(os.path.join(out, "ckpt.pt.tmp"))
    with open(os.path.join(out, "summary.json")) as f:
        on_disk = json.load(f)
    for key in ("method", "accuracy_before", "accuracy_after", "reward_before", "reward_after", "mean_response_len", "wall_seconds"):
        assert key in on_disk and on_disk[key] == summary[key]
    assert on_disk["method"] == method and 0 <= on_disk["accuracy_after"] <= 1 and on_disk["mean_response_len"] >= 1
    r = rows(out)
    assert [x["step"] for x in r] == [0, 1, 2, 3]
    assert "acc" in r[0] and "acc" in r[2] and "acc" in r[3] and "acc" not in r[1]
    for x in r[1:]:
        for key in ("reward", "clip_frac_high", "clip_frac_low", "clip_frac_dual", "mean_len", "tok_per_s", "elapsed"):
            assert key in x and x[key] == x[key], key  # present, not NaN
        assert len(x["pos"]["n"]) == len(x["pos"]["sum"]) and sum(x["pos"]["n"]) > 0
    assert state(out)["step"] == 3


def test_auto_backend_without_the_extension(tmp_path, monkeypatch):
    def cannot_build(*args, **kwargs):
        raise RuntimeError("ctpo_ext: the C++ extension is unavailable (no compiler)")

    monkeypatch.setattr(ctpo.ctpo_ext, "load", cannot_build)  # as on a machine where the kernel cannot be built:
    monkeypatch.setattr(ctpo_ext, "_module", None)  # never loaded there (an earlier test may have loaded it here)
    monkeypatch.setattr(ctpo_ext, "_warned", False)
    with pytest.warns(UserWarning, match="falls back to Python"):
        summary = run(str(tmp_path / "auto"), "--backend=auto", "--rl_steps=1")
    assert summary["backend_used"] == "python"
    with pytest.raises(train_tiny.ConfigError, match="--backend=ext"):
        run(str(tmp_path / "ext"), "--backend=ext", "--rl_steps=1")


def test_figure1_and_compare(tmp_path):
    # compare.py on two methods x one seed, then figure1.py on one of its runs
    out = str(tmp_path / "cmp")
    cmd = [sys.executable, "compare.py", "--methods=grpo,ctpo", "--seeds=1", f"--out_dir={out}", "--rl_steps=2", *TINY]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    for name in ("compare.md", "compare.json", "compare.png"):
        assert os.path.getsize(os.path.join(out, name)) > 0
    table = open(os.path.join(out, "compare.md")).read()
    assert "| grpo |" in table and "| ctpo |" in table
    png = str(tmp_path / "fig1.png")
    r = subprocess.run(
        [sys.executable, "figure1.py", f"--run={out}/ctpo-s1", f"--out={png}", "--min_frac=0"], cwd=ROOT, capture_output=True, text=True
    )
    assert r.returncode == 0 and os.path.getsize(png) > 0, r.stdout + r.stderr
    assert "sigma =" in r.stdout


# -----------------------------------------------------------------------------
# rollout_lag: step s samples with the policy after step max(0, s - 1 - lag), and its log-probs are old_logp

LAG = ["--num_minibatches=1", "--optimizer=sgd", "--lr=0.5", "--lr_warmup=0", "--rl_steps=3", "--eval_interval=10"]


def no_time(out_dir):
    return [{k: v for k, v in r.items() if k not in ("elapsed", "tok_per_s")} for r in rows(out_dir)]


def test_rollout_lag_samples_with_the_policy_lag_steps_old(tmp_path):
    # Lags 0, 1, 2 share the policy until they sample with different ones: step 1 samples with the warm start
    # for every lag, step 2 with it for lag >= 1 (lag 0: step 1's policy), step 3 with step 1's for lag 1 and
    # with the warm start's for lag 2. Same data and sampling RNG, so equal policies give identical rows, exactly.
    for lag in (0, 1, 2):
        run(str(tmp_path / f"lag{lag}"), *LAG, f"--rollout_lag={lag}")
    r0, r1, r2 = (no_time(str(tmp_path / f"lag{lag}")) for lag in (0, 1, 2))
    assert r0[:2] == r1[:2] == r2[:2] and r0[2] != r1[2]  # rows 0 (warm start) and 1; lag 0 differs from step 2
    assert r1[2] == r2[2] and r1[3] != r2[3]
    # one mini-batch per rollout: on-policy (ratio 1 up to float rounding: the KV-cache sampler and the batched forward
    # round differently) exactly when the sampler is the current policy; lag 2 is 1 and 2 updates old at steps 2 and 3
    off = lambda r: max(abs(r["ratio_max"] - 1), abs(r["ratio_min"] - 1))  # noqa: E731
    assert all(off(r) < 1e-4 for r in r0[1:]) and off(r2[1]) < 1e-4
    assert off(r2[2]) > 1e-2 and off(r2[3]) > 1e-2
    # the checkpoint keeps the policies of the last lag + 1 steps, oldest first: after step 3, those after steps 0, 1, 2
    snaps = state(str(tmp_path / "lag2"))["snapshots"]
    assert len(snaps) == 3
    for i in range(3):  # the same run stopped after step i (the last step only evaluates and saves: no random draw)
        run(str(tmp_path / f"stop{i}"), *LAG, "--rollout_lag=2", f"--rl_steps={i}")
        model = state(str(tmp_path / f"stop{i}"))["model"]
        assert all(torch.equal(snaps[i][k], model[k]) for k in model), i


def test_rollout_lag_changes_nothing_when_the_policy_stands_still(tmp_path):
    # No reward at all (partial_credit 0, an untrained model never sorts 10+ digits): every advantage is exactly 0, so
    # are the gradients and Adam's steps, and every lagged policy equals the current one. The lagged path (a copy of
    # the model, snapshots loaded into it) must then give lag 0's run bit for bit: no extra random draws, the same samples.
    common = [*LAG, "--optimizer=adam", "--sft_steps=0", "--partial_credit=0", "--rl_steps=4"]
    run(str(tmp_path / "lag0"), *common)
    run(str(tmp_path / "lag3"), *common, "--rollout_lag=3")
    r0, r3 = no_time(str(tmp_path / "lag0")), no_time(str(tmp_path / "lag3"))
    assert all(r["reward"] == 0.0 for r in r0[1:]) and r0 == r3
    s0, s3 = state(str(tmp_path / "lag0")), state(str(tmp_path / "lag3"))
    assert all(torch.equal(s0["model"][k], s3["model"][k]) for k in s0["model"])
    assert len(s3["snapshots"]) == 4 and all(torch.equal(s3["snapshots"][0][k], s3["model"][k]) for k in s3["model"])


# -----------------------------------------------------------------------------
# resume: N steps straight == N/2 steps, stop, resume N/2 more


@pytest.mark.parametrize("lag", [0, 2])
def test_resume_is_exact(tmp_path, lag):
    # with rollout_lag > 0 the lagged policies are part of the checkpoint: step 3 samples with step 1's
    a, b = str(tmp_path / "straight"), str(tmp_path / "resumed")
    run(a, "--rl_steps=4", "--ckpt_interval=1", f"--rollout_lag={lag}")
    run(b, "--rl_steps=2", "--ckpt_interval=1", f"--rollout_lag={lag}")
    # a crash after writing a metrics row but before the next checkpoint: the row must not be duplicated
    with open(os.path.join(b, "metrics.jsonl"), "a") as f:
        f.write(json.dumps({"step": 3, "reward": -1.0}) + "\n")
    run(b, "--rl_steps=4", "--ckpt_interval=1", "--resume=True", f"--rollout_lag={lag}")
    sa, sb = state(a), state(b)
    assert sa["step"] == sb["step"] == 4
    for k in sa["model"]:
        assert torch.equal(sa["model"][k], sb["model"][k]), k
    assert len(sa["snapshots"]) == len(sb["snapshots"]) == (lag + 1 if lag else 0)
    for x, y in zip(sa["snapshots"], sb["snapshots"]):
        assert all(torch.equal(x[k], y[k]) for k in x)
    for i, st in sa["optimizer"]["state"].items():
        for k in st:
            assert torch.equal(st[k], sb["optimizer"]["state"][i][k]), (i, k)
    ra, rb = rows(a), rows(b)
    assert [x["step"] for x in rb] == [0, 1, 2, 3, 4]
    for x, y in zip(ra, rb):
        for key in ("reward", "acc", "clip_frac_low", "mean_len", "pos"):
            assert x.get(key) == y.get(key), (x["step"], key)


def test_resume_refuses_a_changed_config(tmp_path):
    out = str(tmp_path / "r")
    run(out, "--rl_steps=1")
    with pytest.raises(train_tiny.ConfigError, match="lr"):
        run(out, "--rl_steps=2", "--resume=True", "--lr=0.5")
    with pytest.raises(train_tiny.ConfigError, match="rollout_lag differ"):
        run(out, "--rl_steps=2", "--resume=True", "--rollout_lag=1")
    with pytest.raises(train_tiny.ConfigError, match="no checkpoint"):
        run(str(tmp_path / "missing"), "--resume=True")


# -----------------------------------------------------------------------------
# DDP: 2 gloo ranks on the CPU == one process on the union batch


def test_ddp_matches_single_process(tmp_path):
    # The same init (no warm start) and the same union batch of 8 prompts x 2, sharded 4 + 4 over the ranks. One
    # on-policy update with plain SGD and no gradient clipping, so the update is exactly -lr * (the all-reduced
    # gradient): a smooth function of the data (on-policy, every token is far from a clip boundary), in which DDP and
    # one process differ only by float32 summation order. Adam is not compared: for a parameter whose true gradient
    # is 0 (the attention key bias) it turns that summation noise into +-lr steps, whose size depends on the CPU.
    common = ["--sft_steps=0", "--n_prompts=8", "--num_minibatches=1", "--ddp_union_batch=True"]
    common += ["--optimizer=sgd", "--lr=1.0", "--lr_warmup=0", "--grad_clip=0"]
    init, single, ddp = (str(tmp_path / x) for x in ("init", "single", "ddp"))
    run(init, *common, "--rl_steps=0")  # the parameters before the update
    run(single, *common, "--rl_steps=1")
    cmd = [*TORCHRUN, "train_tiny.py", f"--out_dir={ddp}", *TINY, *common, "--rl_steps=1"]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120, env=clean_env())
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    s0, s1, s2 = state(init), state(single), state(ddp)
    assert s2["world_size"] == 2 and len(s2["rng"]) == 2
    before = s0["model"]
    # the updates in float64: -lr * grad with lr = 1 (each parameter once: the tied embedding has two names)
    keys = list({before[k].data_ptr(): k for k in before}.values())
    upd_1 = torch.cat([(s1["model"][k].double() - before[k].double()).flatten() for k in keys])
    upd_2 = torch.cat([(s2["model"][k].double() - before[k].double()).flatten() for k in keys])
    r1, r2 = rows(single)[1], rows(ddp)[1]
    assert upd_1.norm() > 1e-3 and upd_1.norm().item() == pytest.approx(r1["grad_norm"], rel=1e-3)  # SGD: |update| = lr |grad|
    # Tolerance 1e-3 (relative, in norm). Float32 summation order moves a sum of n terms by at most about
    # n * eps * sum|terms|: with ~350 tokens, eps = 6e-8 and a 10x cancellation in the policy gradient that
    # is 2e-4 at worst (~1e-7 measured). A real scaling bug moves it by O(1): a gradient scaled by world (2x) or
    # not all-reduced (one rank's half of the batch) gives a relative difference of 0.3 or more, and a loss
    # normalised by a rank's own token count instead of the global one several percent.
    rel = ((upd_1 - upd_2).norm() / upd_1.norm()).item()
    assert rel <= 1e-3, rel
    # the logged reductions over ranks: the gradient norm (a sum of squares: no cancellation), the loss (a sum
    # of terms of size |A| <= 1 with group size 2: absolute tolerance) and the rollout (identical samples)
    assert r2["grad_norm"] == pytest.approx(r1["grad_norm"], rel=1e-3) and r1["grad_norm"] > 0
    assert r2["loss"] == pytest.approx(r1["loss"], rel=1e-3, abs=1e-4)
    assert r2["reward"] == pytest.approx(r1["reward"], rel=1e-6) and r1["pos"]["n"] == r2["pos"]["n"]


@pytest.mark.parametrize("lag", [0, 2])
def test_ddp_resume_is_exact(tmp_path, lag):
    # 2 ranks, each with its own data and sampling RNG: the checkpoint holds every rank's RNG state (and the lagged policies)
    a, b = str(tmp_path / "straight"), str(tmp_path / "resumed")
    common = [*TINY, "--n_prompts=8", "--ckpt_interval=1", f"--rollout_lag={lag}"]
    for out, extra in ((a, ["--rl_steps=4"]), (b, ["--rl_steps=2"]), (b, ["--rl_steps=4", "--resume=True"])):
        r = subprocess.run(
            [*TORCHRUN, "train_tiny.py", f"--out_dir={out}", *common, *extra],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            env=clean_env(),
        )
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    sa, sb = state(a), state(b)
    assert sa["step"] == sb["step"] == 4 and len(sb["rng"]) == 2
    for k in sa["model"]:
        assert torch.equal(sa["model"][k], sb["model"][k]), k
    assert [x["step"] for x in rows(b)] == [0, 1, 2, 3, 4]
    assert [x.get("reward") for x in rows(a)] == [x.get("reward") for x in rows(b)]


TEARDOWN_CHECK = """
import os, sys
sys.path.insert(0, {root!r})
import torch.distributed as dist
import train_tiny

def gloo_threads():
    names = [open(f"/proc/self/task/{{t}}/comm").read().strip() for t in os.listdir("/proc/self/task")]
    return [n for n in names if "gloo" in n]

at_destroy = []  # gloo's threads when main() destroys the group: the check below is not vacuous
destroy = dist.destroy_process_group
def recording_destroy(*args, **kwargs):
    at_destroy.append(gloo_threads())
    destroy(*args, **kwargs)
dist.destroy_process_group = recording_destroy
try:
    train_tiny.main(sys.argv[1:])
except train_tiny.ConfigError as e:
    sys.stdout.write(f"ConfigError: {{e}}\\n")  # one write per line: the two ranks share the pipe
sys.stdout.write(f"teardown: {{at_destroy}} {{gloo_threads()}}\\n")
sys.stdout.flush()
assert len(at_destroy) == 1 and at_destroy[0], at_destroy
assert not gloo_threads(), gloo_threads()
"""


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="lists the threads in /proc (Linux)")
def test_ddp_teardown_frees_the_process_group(tmp_path):
    # main() must free the gloo process group (its threads joined) before it returns, after a run and after an error
    # raised once the group exists: a group left for interpreter finalisation can abort a rank after its work is done,
    # as a gloo thread that releases a tensor then takes the GIL. Gloo's threads live exactly as long as the group.
    script = tmp_path / "teardown_check.py"
    script.write_text(TEARDOWN_CHECK.format(root=ROOT))
    run_args = [f"--out_dir={tmp_path / 'run'}", *TINY, "--sft_steps=1", "--rl_steps=1"]
    error_args = [f"--out_dir={tmp_path / 'error'}", *TINY, "--n_prompts=3", "--num_minibatches=1"]  # 3 prompts on 2 ranks
    for args, error in ((run_args, False), (error_args, True)):
        cmd = [*TORCHRUN, str(script), *args]
        r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120, env=clean_env())
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        assert r.stdout.count("teardown:") == 2 and r.stdout.count("ConfigError: --n_prompts") == 2 * error, r.stdout[-3000:]


# -----------------------------------------------------------------------------
# configuration errors


@pytest.mark.parametrize(
    "arg, message",
    [
        ("--nope=1", "unknown config key 'nope'; valid keys: out_dir"),
        ("--lr=fast", "--lr: expected float"),
        ("--rl_steps=2.5", "--rl_steps: expected int"),
        ("--adv_scale=1", "--adv_scale: expected bool"),
        ("--method=ppo", "--method: expected one of"),
        ("--backend=cuda", "--backend: expected one of"),
        ("--group_size=1", "--group_size: need >= 2"),
        ("--lr=-1e-3", "--lr: need a finite value > 0"),
        ("--lr=1e999", "--lr: need a finite value > 0"),
        ("--optimizer=adamw", "--optimizer: expected one of"),
        ("--n_prompts=6", "multiple of num_minibatches"),
        ("--min_digits=30", "--min_digits/--max_digits"),
        ("--fixed_window=(2.0, 5.0)", "--fixed_window"),
        ("--rollout_lag=-1", "--rollout_lag: need >= 0"),
        ("lr=1", "expected --key=value"),
    ],
)
def test_bad_config_values(arg, message):
    with pytest.raises(train_tiny.ConfigError, match=message.replace("(", r"\(").replace("+", r"\+")):
        train_tiny.parse_config([arg])


def test_good_config_values():
    C = train_tiny.parse_config(["--lr=1", "--method=grpo", "--method='gspo'", "--fixed_window=[0.6, 4]", "--adv_scale=False"])
    assert C.lr == 1.0 and C.method == "gspo" and C.fixed_window == (0.6, 4) and C.adv_scale is False


def test_out_dir_in_use_only_when_it_holds_this_scripts_outputs(tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "sub").mkdir()
    run(str(out), "--rl_steps=1")  # only the user's files: not in use
    assert (out / "notes.txt").read_text() == "mine" and (out / "sub").is_dir()
    with pytest.raises(train_tiny.ConfigError, match="holds a previous run"):
        run(str(out), "--rl_steps=1")
    for name in train_tiny.OUTPUTS:  # any one of this script's outputs alone marks the folder as in use
        solo = tmp_path / f"solo-{name}"
        solo.mkdir()
        (solo / name).write_text("x")
        with pytest.raises(train_tiny.ConfigError, match=f"holds a previous run \\({name}\\)"):
            run(str(solo), "--rl_steps=1")
    f = tmp_path / "a-file"
    f.write_text("mine")
    with pytest.raises(train_tiny.ConfigError, match="is a file, not a folder"):
        run(str(f), "--rl_steps=1")
    assert f.read_text() == "mine"


def test_overwrite_deletes_only_this_scripts_outputs(tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    for name in train_tiny.OUTPUTS:  # stale outputs of an earlier run, a crash's ckpt.pt.tmp included
        (out / name).write_text("stale")
    mine = {"log.txt": "my log", "ckpt.pt.bak": "my copy", "metrics.jsonl.old": "my rows", "summary.md": "my notes"}
    for name, text in mine.items():
        (out / name).write_text(text)
    run(str(out), "--rl_steps=1", "--overwrite=True")
    for name, text in mine.items():
        assert (out / name).read_text() == text, name
    assert not (out / "ckpt.pt.tmp").exists()
    assert [x["step"] for x in rows(str(out))] == [0, 1] and state(str(out))["step"] == 1


def test_log_redirected_into_out_dir(tmp_path):
    # the shell creates X/log.txt before the script starts: the folder is not in use, and the log survives
    out = tmp_path / "X"
    out.mkdir()
    cmd = f"{sys.executable} train_tiny.py --out_dir={out} {' '.join(TINY)} --rl_steps=1 > {out}/log.txt 2>&1"
    r = subprocess.run(["bash", "-c", cmd], cwd=ROOT, capture_output=True, text=True, timeout=120)
    log = (out / "log.txt").read_text()
    assert r.returncode == 0, log[-3000:]
    assert "accuracy" in log and "summary.json" in log and (out / "summary.json").exists()


def test_cli_error_exit_code():
    r = subprocess.run([sys.executable, "train_tiny.py", "--group_size=one"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2 and "train_tiny.py: error: --group_size: expected int" in r.stderr and "Traceback" not in r.stderr
