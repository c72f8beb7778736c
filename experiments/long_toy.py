"""
Issue 11 experiments: a long-response toy (~130 tokens) where RL learns and log rho_t is a random walk.
Tasks: sort (train_tiny's, ~130 digits), walk, pairs, ipairs, fpairs, gpairs (each described above its code);
gpairs without the shift is the one chosen, moved into train_tiny.py as task = "pairs" (config/long.py).

This is a lab script, not the toy itself: it reuses train_tiny.py's task (make_batch, score, position_sums)
and ctpo's sampling / log-probs / advantages / loss, and adds what the experiments need to vary:
  - the reward's partial credit: by positions (train_tiny's) or by digit counts (reward_mode=count)
  - a deliberately imperfect teacher for the warm start (label_noise: each answer digit replaced by a
    random digit with this probability; the end token is never noised)
  - the RL optimizer: adam (lr, betas, eps) or sgd (momentum); grad clipping on/off
  - a cached warm start (keyed by the warm-start settings), so RL settings can be screened from one start
  - per-phase timings (warm-start step, rollout, update, eval), the load average, and the Figure 1
    statistics in bins of positions (std of log rho_t with ddof=1, fit sigma*sqrt(t) with weights
    sqrt(count) and no intercept, R^2, clip rates of the fixed [0.5, 5] and adaptive sqrt(t) windows)

    nice -n 19 timeout 900 python experiments/long_toy.py --out_dir=/tmp/long/x --rl_steps=100 [--key=value ...]
"""

import ast
import hashlib
import json
import math
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import ctpo  # noqa: E402
import train_tiny as tt  # noqa: E402  (the task: make_batch, score, position_sums; importing runs nothing)

# -----------------------------------------------------------------------------
CFG = dict(
    out_dir="/tmp/long/run",
    cache_dir="/tmp/long/cache",  # warm-start checkpoints, keyed by the warm-start settings
    seed=1337,
    threads=1,
    # task
    task="sort",  # sort (train_tiny's) | walk (follow a permutation) | pairs (free digit, its image under sigma, ...)
    #               | ipairs (pairs, with the table written as adjacent key-value pairs, values as their own tokens)
    #               | fpairs (ipairs with each key-value pair one prompt token) | gpairs (one global table)
    gpairs_shift=True,  # gpairs: the prompt's shift digit s is used (value F((r + s) mod 10)); False: s = 0
    walk_len=130,  # walk / pairs: answer digits (the response is one token longer: the end token); pairs: even
    min_digits=120,
    max_digits=136,
    partial_credit=0.5,
    reward_mode="position",  # position (train_tiny) | count (fraction of the 10 digit counts right)
    eval_size=512,
    eval_seed=2605,
    eval_interval=25,
    # model
    n_layer=2,
    n_head=4,
    n_embd=64,
    # warm start
    sft_steps=600,
    sft_batch=64,
    sft_lr=2e-3,
    sft_short_steps=0,  # curriculum: the first this many warm-start steps use answers of sft_short_len tokens
    sft_short_len=10,
    label_noise=0.0,  # probability that a supervised answer digit is replaced by a uniform random digit
    smooth=0.0,  # label smoothing over the 10 digits at digit targets: (1 - smooth) one-hot + smooth * uniform(digits)
    # RL
    method="ctpo",
    loss_kwargs={},
    rl_steps=100,
    n_prompts=16,
    group_size=8,
    num_minibatches=4,
    ppo_epochs=1,
    opt="adam",  # adam | sgd
    lr=2e-5,
    lr_warmup=10,
    beta1=0.9,
    beta2=0.999,
    adam_eps=1e-8,
    momentum=0.9,  # sgd only
    temperature=0.5,
    adv_scale=True,
    agg="token-mean",
    grad_clip=1.0,
    fixed_window=(0.5, 5.0),
    bin_width=16,
)
SFT_KEYS = (
    "task",
    "walk_len",
    "seed",
    "min_digits",
    "max_digits",
    "n_layer",
    "n_head",
    "n_embd",
    "sft_steps",
    "sft_batch",
    "sft_lr",
    "label_noise",
    "smooth",
    "sft_short_steps",
    "sft_short_len",
    "gpairs_shift",
    "eval_seed",
)


def parse(argv):
    c = dict(CFG)
    for a in argv:
        k, v = a[2:].split("=", 1)
        if k not in c:
            raise SystemExit(f"unknown key {k}")
        try:
            v = ast.literal_eval(v)
        except (ValueError, SyntaxError):
            pass
        if isinstance(c[k], float) and isinstance(v, int):
            v = float(v)
        if isinstance(c[k], tuple):
            v = tuple(v)
        if type(v) is not type(c[k]):
            raise SystemExit(f"--{k}: expected {type(c[k]).__name__}, got {v!r}")
        c[k] = v
    return c


# -----------------------------------------------------------------------------
# the walk task: the prompt is a random permutation sigma of the 10 digits, written as sigma(0) ... sigma(9),
# then a start digit s and '='; the answer is the walk sigma(s), sigma(sigma(s)), ... (walk_len digits), then '$'.
#     6803527419 2=  ->  0691723 0691723 ...  (here sigma(2) = 0, sigma(0) = 6, ...)
# Every answer token is the same kind of decision (look up sigma of the previous token in the prompt, or copy
# the token one cycle back): the difficulty is spread evenly along the answer, and no answer position has to
# be aligned with a prompt position. The reward checks each transition locally (an early mistake does not
# make the rest wrong): partial credit = transitions right (and the end token) / max(response length, L + 1).


def walk_batch(n, gen, L):
    sigma = torch.rand(n, 10, generator=gen).argsort(dim=1)  # (n, 10) sigma[x] = the digit that follows x
    start = torch.randint(0, 10, (n, 1), generator=gen)
    prompts = torch.cat([sigma, start, torch.full((n, 1), tt.EQ)], dim=1)  # (n, 12)
    walk = [start[:, 0]]
    for _ in range(L):
        walk.append(sigma.gather(1, walk[-1][:, None])[:, 0])
    targets = torch.cat([torch.stack(walk[1:], dim=1), torch.full((n, 1), tt.EOS)], dim=1)  # (n, L + 1)
    return prompts, targets


class WalkProblems:
    def __init__(self, gen, L, heldout, make=walk_batch):
        self.gen, self.L, self.heldout, self.make = gen, L, heldout, make

    def __call__(self, n):
        prompts, targets = self.make(n, self.gen, self.L)
        bad = [i for i, row in enumerate(prompts.tolist()) if tuple(row) in self.heldout]
        while bad:  # 36M possible prompts: rare, but a held-out prompt is never trained on
            p, t = self.make(len(bad), self.gen, self.L)
            prompts[bad], targets[bad] = p, t
            bad = [i for i in bad if tuple(prompts[i].tolist()) in self.heldout]
        return prompts, targets


def walk_score(responses, mask, prompts, L, partial_credit):
    """Reward, exact match and length of walk responses (B, T): transition t is right when the response's
    token t is sigma(previous token) (the start digit before the first), for t < L; token L must be '$'."""
    B, T = responses.shape
    W = max(T, L + 1)
    resp = torch.full((B, W), -1, dtype=torch.long)
    resp[:, :T] = torch.where(mask, responses, -1)
    prev = torch.cat([prompts[:, 10:11], resp[:, :-1]], dim=1)  # (B, W) the token before each position
    sigma = prompts[:, :10]
    want = torch.where((prev >= 0) & (prev < 10), sigma.gather(1, prev.clamp(0, 9)), -2)
    pos = torch.arange(W)[None, :]
    want = torch.where(pos < L, want, torch.where(pos == L, tt.EOS, -2))
    right = (resp == want).sum(dim=1)
    resp_len = mask.sum(dim=1)
    exact = (right == L + 1) & (resp_len == L + 1)
    partial = right.float() / torch.clamp(resp_len, min=L + 1).float()
    reward = (1 - partial_credit) * exact.float() + partial_credit * partial
    return reward, exact, resp_len


# -----------------------------------------------------------------------------
# the pairs task: the prompt is sigma(0) ... sigma(9) and '='; the answer is walk_len / 2 pairs (r, sigma(r)):
# r is ANY digit (free: the reward never looks at it; the supervised data draws it uniformly) and the next
# token must be sigma(r); then '$'.    6803527419=  ->  36 72 50 14 ... $
# Every second token is a fresh table lookup (r is random, so nothing can be copied from earlier in the
# answer): the difficulty is the same at every position. The free digits are high-entropy tokens that the
# reward ignores, as most tokens of a long LLM answer are; they make log rho_t a sum of many small steps.


def pairs_batch(n, gen, L):
    sigma = torch.rand(n, 10, generator=gen).argsort(dim=1)  # (n, 10)
    prompts = torch.cat([sigma, torch.full((n, 1), tt.EQ)], dim=1)  # (n, 11)
    r = torch.randint(0, 10, (n, L // 2), generator=gen)  # (n, L/2) the free digits
    ans = torch.stack([r, sigma.gather(1, r)], dim=2).view(n, L)  # r1 s(r1) r2 s(r2) ...
    return prompts, torch.cat([ans, torch.full((n, 1), tt.EOS)], dim=1)  # (n, L + 1)


def pairs_score(responses, mask, prompts, L, partial_credit):
    """Pair k is right when response token 2k + 1 is sigma(response token 2k); token L must be '$'.
    partial credit = (pairs right + end token right) / (L / 2 + 1); exact = all of them, length L + 1."""
    B, T = responses.shape
    W = max(T, L + 1)
    resp = torch.full((B, W), -1, dtype=torch.long)
    resp[:, :T] = torch.where(mask, responses, -1)
    free, img = resp[:, 0:L:2], resp[:, 1:L:2]  # (B, L/2)
    ok = (free >= 0) & (free < 10) & (img == prompts[:, :10].gather(1, free.clamp(0, 9)))
    right = ok.sum(dim=1) + (resp[:, L] == tt.EOS).long()
    resp_len = mask.sum(dim=1)
    exact = (right == L // 2 + 1) & (resp_len == L + 1)
    reward = (1 - partial_credit) * exact.float() + partial_credit * right.float() / (L // 2 + 1)
    return reward, exact, resp_len


# -----------------------------------------------------------------------------
# the ipairs task: pairs, but the table is written so that an induction head can read it (by content, no
# position arithmetic): the prompt is the 10 keys in a random order, each followed by its value, and the
# values are their own tokens (letters a-j), so a key and a value are never confused:
#     3c 0h 7a 1j ... 5e =   ->   7a 3c 7a 0h 1j ... $      (r free, then sigma(r); L / 2 pairs, then '$')
# Answer token 2k + 1 needs the prompt position whose previous token is r (the answer token just before it):
# a previous-token head plus an induction head, the circuit 2-layer transformers are known to form.

LETTER0 = 13  # the value tokens a-j are 13..22 (after train_tiny's 13 tokens)
IP_VOCAB = tt.VOCAB + "abcdefghij"


def ipairs_batch(n, gen, L):
    keys = torch.rand(n, 10, generator=gen).argsort(dim=1)  # (n, 10) the order of the keys in the prompt
    sigma = torch.rand(n, 10, generator=gen).argsort(dim=1)  # (n, 10) sigma[x]: the value of key x (0..9 -> a..j)
    vals = sigma.gather(1, keys) + LETTER0  # (n, 10)
    prompts = torch.cat([torch.stack([keys, vals], dim=2).view(n, 20), torch.full((n, 1), tt.EQ)], dim=1)  # (n, 21)
    r = torch.randint(0, 10, (n, L // 2), generator=gen)  # (n, L/2) the free digits
    ans = torch.stack([r, sigma.gather(1, r) + LETTER0], dim=2).view(n, L)
    return prompts, torch.cat([ans, torch.full((n, 1), tt.EOS)], dim=1)  # (n, L + 1)


def ipairs_score(responses, mask, prompts, L, partial_credit):
    """As pairs_score, with the table read from the prompt's key-value pairs."""
    B, T = responses.shape
    W = max(T, L + 1)
    resp = torch.full((B, W), -1, dtype=torch.long)
    resp[:, :T] = torch.where(mask, responses, -1)
    tab = torch.zeros(B, 10, dtype=torch.long).scatter_(1, prompts[:, 0:20:2], prompts[:, 1:20:2])  # (B, 10) key -> value token
    free, img = resp[:, 0:L:2], resp[:, 1:L:2]  # (B, L/2)
    ok = (free >= 0) & (free < 10) & (img == tab.gather(1, free.clamp(0, 9)))
    right = ok.sum(dim=1) + (resp[:, L] == tt.EOS).long()
    resp_len = mask.sum(dim=1)
    exact = (right == L // 2 + 1) & (resp_len == L + 1)
    reward = (1 - partial_credit) * exact.float() + partial_credit * right.float() / (L // 2 + 1)
    return reward, exact, resp_len


# the fpairs task: ipairs with each key-value pair of the table fused into ONE prompt token (100 pair tokens
# k:v), so the lookup needs no previous-token head: the answer position holding r attends to the prompt token
# whose key is r (one content match) and copies its value (one OV map): a one-layer associative recall.
#     [3:c][0:h][7:a] ... [5:e] =   ->   7a 3c 7a 0h ... $

PAIR0 = 23  # pair token k:v is PAIR0 + 10 k + v (v = 0..9 for a..j)
FP_VOCAB_SIZE = PAIR0 + 100


def fpairs_batch(n, gen, L):
    keys = torch.rand(n, 10, generator=gen).argsort(dim=1)  # (n, 10)
    sigma = torch.rand(n, 10, generator=gen).argsort(dim=1)  # (n, 10)
    prompts = torch.cat([PAIR0 + 10 * keys + sigma.gather(1, keys), torch.full((n, 1), tt.EQ)], dim=1)  # (n, 11)
    r = torch.randint(0, 10, (n, L // 2), generator=gen)
    ans = torch.stack([r, sigma.gather(1, r) + LETTER0], dim=2).view(n, L)
    return prompts, torch.cat([ans, torch.full((n, 1), tt.EOS)], dim=1)  # (n, L + 1)


def fpairs_score(responses, mask, prompts, L, partial_credit):
    """As ipairs_score, with the table read from the fused pair tokens."""
    kv = prompts[:, :10] - PAIR0  # (B, 10)
    unfused = torch.stack([kv // 10, kv % 10 + LETTER0], dim=2).view(-1, 20)  # (B, 20) as ipairs' prompt
    return ipairs_score(responses, mask, unfused, L, partial_credit)


# the gpairs task: pairs with ONE global table F (a fixed permutation, the same for every prompt, learned in
# the weights): answer token 2k + 1 is F(answer token 2k), a bigram: no lookup in the prompt, no alignment.
# The prompt is a shift digit s and '=' (gpairs_shift=True; else s = 0): the value is F((r + s) mod 10), so the
# answer position holding r must read s at the fixed prompt position 0. (The per-prompt tables of pairs, ipairs
# and fpairs were never learned by the 2x64 model in the warm-start budget; see NOTES.md.)
#     7=   ->   3c 9a 3c 0h ... $

GP_TABLE = torch.tensor([3, 7, 0, 9, 5, 1, 8, 2, 6, 4])  # F: a fixed permutation of 0..9, values a..j


def gpairs_batch(n, gen, L, shift=True):
    s = torch.randint(0, 10, (n, 1), generator=gen) if shift else torch.zeros(n, 1, dtype=torch.long)
    prompts = torch.cat([s, torch.full((n, 1), tt.EQ)], dim=1)  # (n, 2)
    r = torch.randint(0, 10, (n, L // 2), generator=gen)
    ans = torch.stack([r, GP_TABLE[(r + s) % 10] + LETTER0], dim=2).view(n, L)
    return prompts, torch.cat([ans, torch.full((n, 1), tt.EOS)], dim=1)  # (n, L + 1)


def gpairs_score(responses, mask, prompts, L, partial_credit):
    """As ipairs_score, with the table F((k + s) mod 10) for key k, s = prompts[:, 0]."""
    k = torch.arange(10)[None, :]
    unfused = torch.stack([k.expand(prompts.size(0), 10), GP_TABLE[(k + prompts[:, :1]) % 10] + LETTER0], dim=2).view(-1, 20)
    return ipairs_score(responses, mask, unfused, L, partial_credit)


# -----------------------------------------------------------------------------
# reward


def count_credit(responses, mask, prompts):
    """Fraction of the 10 digit values whose count in the response (up to its end token) equals the count
    in the prompt. Local credit: one miscounted digit costs 1/10, wherever it sits (positions shift)."""
    resp = torch.where(mask, responses, -1)
    dig = torch.arange(10)
    c_resp = (resp[:, :, None] == dig).sum(1)  # (B, 10)
    c_in = (prompts[:, :, None] == dig).sum(1)  # (B, 10)
    return (c_resp == c_in).float().mean(1)


def reward_fn(responses, mask, targets, prompts, C):
    if C.task == "gpairs":
        return gpairs_score(responses, mask, prompts, C.walk_len, C.partial_credit)
    if C.task == "fpairs":
        return fpairs_score(responses, mask, prompts, C.walk_len, C.partial_credit)
    if C.task == "ipairs":
        return ipairs_score(responses, mask, prompts, C.walk_len, C.partial_credit)
    if C.task == "pairs":
        return pairs_score(responses, mask, prompts, C.walk_len, C.partial_credit)
    if C.task == "walk":
        return walk_score(responses, mask, prompts, C.walk_len, C.partial_credit)
    reward, exact, resp_len = tt.score(responses, mask, targets, C.partial_credit)
    if C.reward_mode == "count":
        reward = (1 - C.partial_credit) * exact.float() + C.partial_credit * count_credit(responses, mask, prompts)
    return reward, exact, resp_len


# -----------------------------------------------------------------------------
# Figure 1 statistics in bins of positions


def fig1_stats(pos, bin_width, min_frac=0.01):
    """pos: dict of per-position lists (train_tiny.POS_KEYS), summed over steps. Bins positions 1..W in
    bins of bin_width; per bin: token-weighted mean t, count, std of log rho (ddof=1, pooled over the
    bin), clip rates. Fit std = sigma sqrt(t): weights w = sqrt(count), no intercept;
    R^2 = 1 - sum w (y - fit)^2 / sum w (y - ybar_w)^2 (weighted, centred)."""
    n = pos["n"]
    W = len(n)
    nmax = max(n)
    rows = []
    for b0 in range(0, W, bin_width):
        sl = range(b0, min(W, b0 + bin_width))
        cnt = sum(n[i] for i in sl)
        if cnt < 2 or cnt < min_frac * nmax * len(sl):
            continue
        s = sum(pos["sum"][i] for i in sl)
        ss = sum(pos["sumsq"][i] for i in sl)
        mean = s / cnt
        var = max(0.0, (ss - cnt * mean * mean) / (cnt - 1))
        tbar = sum((i + 1) * n[i] for i in sl) / cnt
        ds, dss = sum(pos["dsum"][i] for i in sl), sum(pos["dsumsq"][i] for i in sl)
        dvar = max(0.0, (dss - ds * ds / cnt) / (cnt - 1))
        rows.append(
            dict(
                t=tbar,
                n=cnt,
                std=math.sqrt(var),
                mean=mean,
                delta_std=math.sqrt(dvar),
                clip_fixed=sum(pos["clip_fixed"][i] for i in sl) / cnt,
                clip_adaptive=sum(pos["clip_adaptive"][i] for i in sl) / cnt,
                clip_method=sum(pos["clip_method"][i] for i in sl) / cnt,
            )
        )
    w = [math.sqrt(r["n"]) for r in rows]
    t = [r["t"] for r in rows]
    y = [r["std"] for r in rows]
    sigma = sum(wi * yi * math.sqrt(ti) for wi, yi, ti in zip(w, y, t)) / sum(wi * ti for wi, ti in zip(w, t))
    ybar = sum(wi * yi for wi, yi in zip(w, y)) / sum(w)
    ss_res = sum(wi * (yi - sigma * math.sqrt(ti)) ** 2 for wi, yi, ti in zip(w, y, t))
    ss_tot = sum(wi * (yi - ybar) ** 2 for wi, yi in zip(w, y))
    return dict(sigma=sigma, r2=1 - ss_res / ss_tot if ss_tot > 0 else float("nan"), bins=rows)


def sum_pos(rows, s0, s1):
    rows = [r for r in rows if "pos" in r and s0 <= r["step"] <= s1]
    W = max(len(r["pos"]["n"]) for r in rows)
    tot = {k: [0.0] * W for k in tt.POS_KEYS}
    for r in rows:
        for k in tt.POS_KEYS:
            for i, x in enumerate(r["pos"][k]):
                tot[k][i] += x
    return tot


# -----------------------------------------------------------------------------
# evaluation


@torch.no_grad()
def evaluate(model, prompts, targets, C, max_new):
    model.eval()
    g = torch.Generator().manual_seed(0)
    roll = ctpo.sample(model, prompts, max_new, tt.EOS, tt.PAD, temperature=1.0, top_k=1, generator=g)
    _, exact, glen = reward_fn(roll.responses, roll.mask, targets, prompts, C)
    q = prompts[:128].repeat_interleave(4, dim=0)
    qt = targets[:128].repeat_interleave(4, dim=0)
    g.manual_seed(1)
    s = ctpo.sample(model, q, max_new, tt.EOS, tt.PAD, temperature=C.temperature, generator=g)
    reward, sexact, slen = reward_fn(s.responses, s.mask, qt, q, C)
    # where the policy is uncertain: mean surprisal -log pi(a_t) of the sampled tokens, per bin of positions
    bw = C.bin_width
    W = s.mask.size(1)
    sur = []
    for b0 in range(0, W, bw):
        mk = s.mask[:, b0 : b0 + bw]
        sur.append(round((-(s.logp[:, b0 : b0 + bw] * mk).sum() / mk.sum().clamp(min=1)).item(), 4))
    return dict(
        surprisal_bins=sur,
        acc=exact.float().mean().item(),
        eval_reward=reward.mean().item(),
        eval_sexact=sexact.float().mean().item(),
        eval_len=slen.float().mean().item(),
    )


# -----------------------------------------------------------------------------


def warm_start(model, problems, C, P):
    unused = {"sft_short_steps", "sft_short_len"} if C["sft_short_steps"] == 0 else set()
    unused |= {"gpairs_shift"} if C["task"] != "gpairs" else set()
    keys = [k for k in SFT_KEYS if k not in unused]  # keys a run does not use stay out: earlier caches stay valid
    key = hashlib.sha1(json.dumps({k: C[k] for k in keys}, sort_keys=True).encode()).hexdigest()[:12]
    path = os.path.join(C["cache_dir"], f"ws_{key}.pt")
    if os.path.exists(path):
        ck = torch.load(path, weights_only=False)
        model.load_state_dict(ck["model"])
        problems.gen.set_state(ck["data_rng"])
        print(f"warm start loaded from {path} (took {ck['seconds']:.1f}s, {ck['s_per_step']:.3f} s/step, load {ck['load']})", flush=True)
        return ck["seconds"], ck["s_per_step"], True
    sft = torch.optim.AdamW(model.parameters(), lr=C["sft_lr"], weight_decay=0.0)
    model.train()
    t0 = time.time()
    noise_gen = torch.Generator().manual_seed(C["seed"] + 7)
    for it in range(C["sft_steps"]):
        for group in sft.param_groups:
            group["lr"] = C["sft_lr"] * (0.1 + 0.45 * (1 + math.cos(math.pi * it / max(1, C["sft_steps"]))))
        if hasattr(problems, "L"):  # the curriculum: short answers first (the lookup is learned in a short context)
            problems.L = C["sft_short_len"] if it < C["sft_short_steps"] else C["walk_len"]
        prompts, targets = problems(C["sft_batch"])
        inp = targets
        if C["label_noise"] > 0:  # the teacher's answer: digits replaced at random (never the end token / padding)
            lo = LETTER0 if C["task"] in ("ipairs", "fpairs", "gpairs") else 0  # pairs: only the values (letters) are noised
            flip = (torch.rand(targets.shape, generator=noise_gen) < C["label_noise"]) & (targets >= lo) & (targets < lo + 10)
            inp = torch.where(flip, torch.randint(lo, lo + 10, targets.shape, generator=noise_gen), targets)
        idx = torch.cat([prompts, inp], dim=1)
        logits = model(idx[:, :-1])[:, P - 1 :]
        tmask = torch.arange(targets.size(1))[None, :] <= (targets != tt.PAD).sum(dim=1, keepdim=True)
        ce = F.cross_entropy(logits.reshape(-1, logits.size(-1)), inp.reshape(-1), reduction="none").view_as(targets)
        if C["smooth"] > 0:  # soft targets at digit positions only: the end token is never smoothed, nor smoothed onto
            lp = F.log_softmax(logits.float(), dim=-1)  # (B, T, V)
            ce_dig = -lp[..., :10].mean(-1)  # cross-entropy against uniform(digits)
            ce = torch.where(inp < 10, (1 - C["smooth"]) * ce + C["smooth"] * ce_dig, ce)
        loss = (ce * tmask).sum() / tmask.sum()
        sft.zero_grad(set_to_none=True)
        loss.backward()
        sft.step()
        if (it + 1) % 100 == 0:
            print(
                f"warm start {it + 1}/{C['sft_steps']} loss {loss.item():.4f} {time.time() - t0:.1f}s load {os.getloadavg()[0]:.2f}",
                flush=True,
            )
    secs = time.time() - t0
    os.makedirs(C["cache_dir"], exist_ok=True)
    ld = f"{os.getloadavg()[0]:.2f}"
    torch.save(
        {
            "model": model.state_dict(),
            "data_rng": problems.gen.get_state(),
            "seconds": secs,
            "s_per_step": secs / max(1, C["sft_steps"]),
            "load": ld,
        },
        path,
    )
    return secs, secs / max(1, C["sft_steps"]), False


def main():
    C = parse(sys.argv[1:])
    torch.set_num_threads(C["threads"])
    torch.set_flush_denormal(True)
    os.makedirs(C["out_dir"], exist_ok=True)
    torch.manual_seed(C["seed"])
    S = type("C", (), {})()
    for k, v in C.items():
        setattr(S, k, v)
    egen, dgen = torch.Generator().manual_seed(C["eval_seed"]), torch.Generator().manual_seed(C["seed"])
    if C["task"] in ("walk", "pairs", "ipairs", "fpairs", "gpairs"):
        make = {"walk": walk_batch, "pairs": pairs_batch, "ipairs": ipairs_batch, "fpairs": fpairs_batch}.get(C["task"])
        make = make or (lambda n, gen, L: gpairs_batch(n, gen, L, C["gpairs_shift"]))
        eval_p, eval_t = make(C["eval_size"], egen, C["walk_len"])
        # gpairs has at most 10 distinct prompts: nothing can be held out (its evaluation draws fresh samples)
        heldout = set() if C["task"] == "gpairs" else {tuple(r) for r in eval_p.tolist()}
        problems = WalkProblems(dgen, C["walk_len"], heldout, make)
        P, max_new = eval_p.size(1), C["walk_len"] + 4
    else:
        eval_p, eval_t = tt.make_batch(C["eval_size"], egen, S)
        problems = tt.Problems(dgen, S, {tuple(r) for r in eval_p.tolist()})
        P, max_new = C["max_digits"] + 1, C["max_digits"] + 4
    sgen = torch.Generator().manual_seed(C["seed"] + 1)
    V = {"ipairs": len(IP_VOCAB), "gpairs": len(IP_VOCAB), "fpairs": FP_VOCAB_SIZE}.get(C["task"], len(tt.VOCAB))
    gconf = ctpo.GPTConfig(vocab_size=V, block_size=P + max_new, n_layer=C["n_layer"], n_head=C["n_head"], n_embd=C["n_embd"])
    model = ctpo.GPT(gconf)
    t_all = time.time()
    sft_secs, sft_sps, cached = warm_start(model, problems, C, P)
    t_ev = time.time()
    ev0 = evaluate(model, eval_p, eval_t, S, max_new)
    eval_secs = time.time() - t_ev
    print(f"after warm start: acc {100 * ev0['acc']:.1f}% sampled reward {ev0['eval_reward']:.3f} sampled exact "
          f"{100 * ev0['eval_sexact']:.1f}% len {ev0['eval_len']:.1f} | eval {eval_secs:.1f}s", flush=True)  # fmt: skip
    mpath = os.path.join(C["out_dir"], "metrics.jsonl")
    rows = [{"step": 0, **ev0, "eval_seconds": eval_secs, "load": os.getloadavg()[0]}]
    if C["opt"] == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=C["lr"], betas=(C["beta1"], C["beta2"]), eps=C["adam_eps"])
    else:
        opt = torch.optim.SGD(model.parameters(), lr=C["lr"], momentum=C["momentum"])
    n = C["n_prompts"]
    M = C["num_minibatches"]
    mb_rows = [torch.arange(n * C["group_size"]).view(n, C["group_size"])[j::M].flatten() for j in range(M)]
    t_roll = t_upd = 0.0
    for step in range(1, C["rl_steps"] + 1):
        for group in opt.param_groups:
            group["lr"] = C["lr"] * min(1.0, step / max(1, C["lr_warmup"]))
        t0 = time.time()
        model.eval()
        prompts, targets = problems(n)
        prompts = prompts.repeat_interleave(C["group_size"], 0)
        targets = targets.repeat_interleave(C["group_size"], 0)
        roll = ctpo.sample(model, prompts, max_new, tt.EOS, tt.PAD, temperature=C["temperature"], generator=sgen)
        rewards, exact, rlen = reward_fn(roll.responses, roll.mask, targets, prompts, S)
        adv = ctpo.group_advantages(rewards, C["group_size"], scale=C["adv_scale"])
        t1 = time.time()
        model.train()
        pos = torch.zeros(len(tt.POS_KEYS), max_new, dtype=torch.float64)
        gn, clipm, ntok = [], 0.0, 0.0
        for _ in range(C["ppo_epochs"]):
            for rws in mb_rows:
                mask, old, a = roll.mask[rws], roll.logp[rws], adv[rws]
                logp = ctpo.token_logprobs(model, prompts[rws], roll.responses[rws], mask, C["temperature"])
                loss, m = ctpo.policy_loss(logp, old, a, mask, method=C["method"], agg=C["agg"], num_tokens=None, **C["loss_kwargs"])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                gn.append(torch.nn.utils.clip_grad_norm_(model.parameters(), C["grad_clip"] if C["grad_clip"] > 0 else math.inf).item())
                opt.step()
                clipm += (m["n_clip_high"] + m["n_clip_low"] + m["n_clip_dual"]).item()
                ntok += m["n_tokens"].item()
                pos += tt.position_sums(logp.detach(), old, mask, a, m["clipped"], C["fixed_window"], max_new)
        t2 = time.time()
        t_roll += t1 - t0
        t_upd += t2 - t1
        last = int(pos[0].nonzero().max().item()) + 1
        row = dict(
            step=step,
            reward=rewards.mean().item(),
            exact=exact.float().mean().item(),
            mean_len=rlen.float().mean().item(),
            grad_norm=sum(gn) / len(gn),
            clip_frac=clipm / max(1.0, ntok),
            t_rollout=t1 - t0,
            t_update=t2 - t1,
            pos={k: pos[i, :last].tolist() for i, k in enumerate(tt.POS_KEYS)},
        )
        line = (f"step {step:4d} | reward {row['reward']:.3f} exact {100 * row['exact']:5.1f}% | len {row['mean_len']:.1f} | "
                f"gn {row['grad_norm']:.2f} clip {row['clip_frac']:.3f} | roll {t1 - t0:.2f}s upd {t2 - t1:.2f}s")  # fmt: skip
        if step % C["eval_interval"] == 0 or step == C["rl_steps"]:
            te = time.time()
            row.update(evaluate(model, eval_p, eval_t, S, max_new))
            row["eval_seconds"] = time.time() - te
            row["load"] = os.getloadavg()[0]
            line += (
                f" || held-out acc {100 * row['acc']:5.1f}% sampled reward {row['eval_reward']:.3f} sexact {100 * row['eval_sexact']:5.1f}%"
            )
            line += f" | load {row['load']:.2f}"
        print(line, flush=True)
        rows.append(row)
    with open(mpath, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    # ---- summary
    K = C["rl_steps"]
    figs = {}
    for name, (s0, s1) in {"all": (1, K), "first_half": (1, K // 2), "second_half": (K // 2 + 1, K)}.items():
        if s1 >= s0:
            figs[name] = fig1_stats(sum_pos(rows, s0, s1), C["bin_width"])
    ev = [r for r in rows if "acc" in r]
    rl = [r for r in rows if "reward" in r]
    summary = dict(
        config=C,
        acc_before=ev[0]["acc"],
        acc_after=ev[-1]["acc"],
        acc_max=max(r["acc"] for r in ev),
        reward_before=ev[0]["eval_reward"],
        reward_after=ev[-1]["eval_reward"],
        reward_max=max(r["eval_reward"] for r in ev),
        sexact_before=ev[0]["eval_sexact"],
        sexact_after=ev[-1]["eval_sexact"],
        curve=[(r["step"], round(r["acc"], 4), round(r["eval_reward"], 4), round(r["eval_sexact"], 4)) for r in ev],
        mean_len=sum(r["mean_len"] for r in rl) / len(rl),
        clip_frac=sum(r["clip_frac"] for r in rl) / len(rl),
        grad_norm=sum(r["grad_norm"] for r in rl) / len(rl),
        timing=dict(
            warm_start_seconds=sft_secs,
            warm_start_s_per_step=sft_sps,
            warm_start_cached=cached,
            rl_s_per_step=(t_roll + t_upd) / K,
            rollout_s_per_step=t_roll / K,
            update_s_per_step=t_upd / K,
            eval_seconds_mean=sum(r["eval_seconds"] for r in ev) / len(ev),
            n_evals=len(ev),
            wall_seconds_this_process=time.time() - t_all,
            load_avg_at_evals=[round(r["load"], 2) for r in ev],
        ),
        fig1={k: dict(sigma=v["sigma"], r2=v["r2"]) for k, v in figs.items()},
        fig1_bins_all=[{k: round(x, 5) for k, x in b.items()} for b in figs["all"]["bins"]],
    )
    with open(os.path.join(C["out_dir"], "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print(json.dumps({k: v for k, v in summary.items() if k not in ("config", "fig1_bins_all")}))
    for b in figs["all"]["bins"]:
        print(f"  t={b['t']:6.1f} n={b['n']:7.0f} std={b['std']:.4f} fit={figs['all']['sigma'] * math.sqrt(b['t']):.4f} "
              f"delta_std={b['delta_std']:.4f} clip fixed={100 * b['clip_fixed']:5.2f}% adaptive={100 * b['clip_adaptive']:5.2f}% "
              f"method={100 * b['clip_method']:5.2f}%")  # fmt: skip


if __name__ == "__main__":
    main()
