"""
A toy RL run that learns in about a minute on a CPU: supervised warm start, then CTPO (or GRPO, GSPO, ...).

The task: sort a string of 16-20 random digits. The prompt is the digits, left-padded with '.' to a
fixed width and closed by '='; the answer is the same digits in ascending order, then the end token
'$'. So a response is 17-21 tokens (the end token included: it is a policy action and is scored),
and a single wrong count anywhere in it makes the whole answer wrong: position matters.

    ...31415926535897932=  ->  11233455567899999$        (16..20 digits; '.' pads the prompt)

config/long.py switches to the long-response toy (task = "pairs", 137-token answers; see make_pairs and
docs/toy.md chapter 2).

Run it (defaults: about a minute on an idle 2-core CPU; the README has the measured numbers):

    python train_tiny.py                                   # CTPO, outputs in out-tiny/
    python train_tiny.py --method=grpo --out_dir=out-grpo  # any --key=value below overrides a default
    python train_tiny.py config/long.py                    # a config file sets the defaults it changes
    python train_tiny.py --out_dir=out-tiny --resume=True --rl_steps=300   # continue a run exactly
    torchrun --standalone --nproc_per_node=2 train_tiny.py # DDP: rollouts sharded over the ranks
    python train_tiny.py --help                            # every config key, its default and what it does

Phase 1 (warm start): a short supervised run, deliberately stopped early, so that greedy accuracy is
imperfect but not hopeless. Phase 2 (RL): every step samples group_size completions for each of
n_prompts prompts with the KV cache, scores them (exact match plus partial credit), turns the rewards
into group advantages and takes num_minibatches x ppo_epochs optimizer steps on that one rollout:
every mini-batch after the first is off-policy, so the importance ratios and their clipping matter.

Outputs in out_dir: metrics.jsonl (a row per RL step, with per-position log-ratio and clip sums for
figure1.py), summary.json, train.png, ckpt.pt (written atomically; --resume=True continues from it
with the same RNG state, and appends to metrics.jsonl without duplicating rows). Other files in
out_dir (a log you redirect there, notes) are never touched.
"""

import ast
import gc
import importlib
import io
import json
import math
import os
import random
import sys
import time
import tokenize
import traceback
import types
from types import SimpleNamespace

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

import ctpo

# -----------------------------------------------------------------------------
# default config values; every one can be overridden by a config file or as --key=value (nanoGPT style, type-checked)
# I/O
out_dir = "out-tiny"  # all outputs go here (other files in it are left alone)
overwrite = False  # True: delete this script's previous outputs in out_dir first (else they are an error)
resume = False  # True: continue from out_dir/ckpt.pt (rl_steps and the I/O keys may change, the rest must match)
eval_interval = 25  # evaluate held-out greedy accuracy every this many RL steps (and at the start and end)
ckpt_interval = 50  # write ckpt.pt every this many RL steps (and at the end); 0: only at the end
n_mistakes = 3  # how many held-out mistakes to print at the first and last evaluation
seed = 1337  # model init, training data, sampling
device = "auto"  # auto | cpu | cuda (auto: cuda if available)
# task
task = "sort"  # sort (sort a string of digits) | pairs (the long-response toy of config/long.py: free digit r, then F(r))
min_digits = 16  # sort: shortest digit string (the response is one token longer: the end token)
max_digits = 20  # sort: longest digit string
n_pairs = 68  # pairs: pairs per answer (the response is 2 n_pairs + 1 tokens: the end token)
partial_credit = 0.5  # reward = (1 - partial_credit) * exact_match + partial_credit * fraction of positions (pairs) right
eval_size = 512  # held-out prompts (greedy exact match)
eval_seed = 2605  # the held-out split is fixed by this seed, whatever the run's seed; training never sees it
# model (ctpo.GPT)
n_layer = 2  # transformer blocks
n_head = 4  # attention heads
n_embd = 64  # embedding width
# phase 1: supervised warm start
sft_steps = 150  # deliberately short: the policy should come out imperfect
sft_batch = 64  # sequences per step
sft_lr = 2e-3  # AdamW, cosine decay to sft_lr / 10
teacher_noise = 0.0  # the warm start's teacher replaces each supervised answer digit (pairs: value) by a random one with
#                     this probability: an imperfect policy that RL can sharpen (the end token is never replaced)
# phase 2: RL
method = "ctpo"  # grpo | gspo | sequence | ctpo | ctpo-fixed | ctpo-geomean (ctpo.policy_loss)
backend = "python"  # python | ext | auto (ext if the fused kernel builds, else python with a warning)
loss_kwargs = {}  # overrides of the method's knobs, e.g. --loss_kwargs="{'eps_low': 3e-4, 'eps_high': 4e-4}" (ctpo.policy_loss)
rl_steps = 400  # rollouts
n_prompts = 16  # prompts per rollout (over all ranks)
group_size = 8  # completions per prompt (G); the advantage is relative to the group
num_minibatches = 4  # optimizer steps per epoch over one rollout; all but the first are off-policy
ppo_epochs = 1  # passes over each rollout
optimizer = "adam"  # adam | sgd (Adam: betas (0.9, 0.999), eps 1e-8; sgd: the update is exactly -lr * grad)
lr = 1e-4  # RL learning rate, constant after a linear warmup
lr_warmup = 10  # RL steps of linear warmup (a fresh Adam's first steps are sign-like: +-lr on every weight)
temperature = 0.5  # sampling temperature, also used by the log-probs in the loss; below 1 so that exploration
#                   goes to the genuinely uncertain tokens, not to noise on 19 confident ones (T = 1 barely learns)
adv_scale = True  # divide the advantage by the group std (GRPO); False: Dr. GRPO
agg = "token-mean"  # loss aggregation (ctpo.AGGS); token-mean divides by the global token count
grad_clip = 1.0  # max grad norm; 0: off
fixed_window = (0.5, 5.0)  # the fixed ratio window logged for Figure 1 (the paper's [0.5, 5])
# testing hook
ddp_union_batch = False  # every rank draws the whole global batch and keeps its shard: DDP == one process, exactly
# -----------------------------------------------------------------------------
CONFIG_KEYS = [
    k for k, v in globals().items() if not k.startswith("_") and k.islower() and isinstance(v, (bool, int, float, str, tuple, dict))
]
DEFAULTS = {k: globals()[k] for k in CONFIG_KEYS}
RESUME_MAY_CHANGE = {"out_dir", "overwrite", "resume", "eval_interval", "ckpt_interval", "n_mistakes", "rl_steps", "backend", "device"}
OUTPUTS = ("metrics.jsonl", "summary.json", "train.png", "ckpt.pt", "ckpt.pt.tmp")  # all this script ever writes in out_dir
OPTIMIZERS = ("adam", "sgd")
TASKS = ("sort", "pairs")
USAGE = "usage: python train_tiny.py [config/NAME.py] [--key=value ...]"


class ConfigError(ValueError):
    """A usage error: main() prints it as one line, 'train_tiny.py: error: ...', and exits with status 2."""


def split_argv(argv):
    """Config files (arguments ending in .py, not starting with '-') and --key=value arguments, in order."""
    files, keys = [], []
    for arg in argv:
        if not arg.startswith("-") and arg.endswith(".py"):
            files.append(arg)
        elif arg.startswith("--") and "=" in arg:
            keys.append(arg)
        else:
            raise ConfigError(f"expected --key=value or a config file (config/NAME.py), got {arg!r}; see --help")
    return files, keys


def typed(key, value, where):
    """value with the default's type: ints pass for floats and lists for tuples; anything else is an error."""
    default = DEFAULTS[key]
    if isinstance(default, float) and type(value) is int:
        value = float(value)
    if isinstance(default, tuple) and isinstance(value, list):
        value = tuple(value)
    if type(value) is not type(default):
        raise ConfigError(
            f"{where}: expected {type(default).__name__} (like the default {default!r}), got {type(value).__name__} {value!r}"
        )
    return value


def read_config_file(path):
    """The assignments of a config file (plain Python, run in its own namespace, nanoGPT style): {key: value}."""
    try:
        with open(path) as f:
            src = f.read()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the config file ({e.strerror})") from None
    ns = {}
    try:
        exec(compile(src, path, "exec"), ns)
    except Exception as e:  # a syntax or runtime error in the user's file: one line, with the file and line
        where = f"{path}:{e.lineno}" if isinstance(e, SyntaxError) else path
        raise ConfigError(f"{where}: {type(e).__name__}: {e}") from None
    out = {}
    for key, value in ns.items():
        if key.startswith("_") or isinstance(value, types.ModuleType):  # __builtins__, helpers, `import math`
            continue
        if key not in DEFAULTS:
            raise ConfigError(f"{path}: unknown config key {key!r}; valid keys: {', '.join(CONFIG_KEYS)}")
        out[key] = typed(key, value, f"{path}: {key}")
    return out


def parse_config(argv, check=True):
    """Defaults, then each config file in order, then the --key=value overrides (values are Python
    literals; strings may be bare). Returns a SimpleNamespace of every config key."""
    files, keys = split_argv(argv)
    cfg = dict(DEFAULTS)
    for path in files:
        cfg.update(read_config_file(path))
    for arg in keys:
        key, val = arg[2:].split("=", 1)
        if key not in cfg:
            raise ConfigError(f"unknown config key {key!r}; valid keys: {', '.join(CONFIG_KEYS)}")
        try:
            value = ast.literal_eval(val)
        except (ValueError, SyntaxError):
            value = val  # a bare string such as --method=grpo
        cfg[key] = typed(key, value, f"--{key}")
    if check:
        check_config(cfg)
    return SimpleNamespace(**cfg)


def config_comments():
    """{key: comment} and the section headers of the config block above, read from this file's source."""
    with open(os.path.abspath(__file__)) as f:
        src = f.read()
    block = src.split("# default config values", 1)[1].split("\n# ---", 1)[0]
    lines, out, key = block.split("\n")[1:], [], None  # out: ("section", text) or ("key", name, comment)
    comments = {
        tok.start[0]: tok.string for tok in tokenize.generate_tokens(io.StringIO("\n".join(lines)).readline) if tok.type == tokenize.COMMENT
    }
    for i, line in enumerate(lines, start=1):
        text = comments.get(i, "#")[1:]
        if line.startswith("#") and text.startswith("  ") and key:  # a comment continued on the next line
            out[-1] = ("key", key, out[-1][2] + " " + text.strip())
        elif line.startswith("#"):
            out.append(("section", text.strip()))
        elif "=" in line:
            key = line.split("=", 1)[0].strip()
            out.append(("key", key, text.strip()))
    return out


def help_text(cfg):
    """The usage line, what the script does, and every config key with its value in cfg and its comment."""
    lines = [USAGE, "", __doc__.strip().split("\n\n")[0], ""]
    lines += [
        "A config file is Python assignments of the keys below (as config/long.py); it sets the defaults it changes,",
        "and --key=value arguments win over it. Values are Python literals (strings may be bare) of the default's type.",
        "",
        "config keys (--key=default  # what it does):",
    ]
    for item in config_comments():
        if item[0] == "section":
            lines.append(f"  # {item[1]}")
        else:
            _, key, comment = item
            arg = f"--{key}={cfg[key]!r}"
            lines.append(f"    {arg:<28}  # {comment}" if comment else f"    {arg}")
    return "\n".join(lines)


def check_config(c, world_size=1):
    def need(ok, msg):
        if not ok:
            raise ConfigError(msg)

    need(c["method"] in ctpo.METHODS, f"--method: expected one of {sorted(ctpo.METHODS)}, got {c['method']!r}")
    need(c["backend"] in ctpo.BACKENDS, f"--backend: expected one of {list(ctpo.BACKENDS)}, got {c['backend']!r}")
    try:
        ctpo.method_config(c["method"], **c["loss_kwargs"])
    except (TypeError, ValueError) as e:
        raise ConfigError(f"--loss_kwargs: {e}") from None
    need(c["agg"] in ctpo.AGGS, f"--agg: expected one of {list(ctpo.AGGS)}, got {c['agg']!r}")
    need(c["device"] in ("auto", "cpu", "cuda"), f"--device: expected auto, cpu or cuda, got {c['device']!r}")
    need(c["task"] in TASKS, f"--task: expected one of {list(TASKS)}, got {c['task']!r}")
    need(c["n_pairs"] >= 1, f"--n_pairs: need >= 1, got {c['n_pairs']}")
    need(0.0 <= c["teacher_noise"] < 1.0, f"--teacher_noise: need a probability in [0, 1), got {c['teacher_noise']}")
    need(c["optimizer"] in OPTIMIZERS, f"--optimizer: expected one of {list(OPTIMIZERS)}, got {c['optimizer']!r}")
    need(c["out_dir"] != "", "--out_dir: must not be empty")
    need(
        1 <= c["min_digits"] <= c["max_digits"] <= 256,
        f"--min_digits/--max_digits: need 1 <= min <= max <= 256, got {c['min_digits']}, {c['max_digits']}",
    )
    need(0.0 <= c["partial_credit"] <= 1.0, f"--partial_credit: need a value in [0, 1], got {c['partial_credit']}")
    need(c["group_size"] >= 2, f"--group_size: need >= 2 (the advantage is relative to the group), got {c['group_size']}")
    for k in ("n_prompts", "num_minibatches", "ppo_epochs", "eval_size", "eval_interval", "n_layer", "n_head", "n_embd", "sft_batch"):
        need(c[k] >= 1, f"--{k}: need >= 1, got {c[k]}")
    for k in ("rl_steps", "sft_steps", "ckpt_interval", "n_mistakes", "lr_warmup"):
        need(c[k] >= 0, f"--{k}: need >= 0, got {c[k]}")
    for k in ("lr", "sft_lr", "temperature"):
        need(c[k] > 0 and math.isfinite(c[k]), f"--{k}: need a finite value > 0, got {c[k]}")
    need(c["grad_clip"] >= 0, f"--grad_clip: need >= 0, got {c['grad_clip']}")
    need(c["n_embd"] % c["n_head"] == 0, f"--n_embd: need a multiple of n_head={c['n_head']}, got {c['n_embd']}")
    fw = c["fixed_window"]
    need(len(fw) == 2 and 0 < fw[0] < 1 < fw[1], f"--fixed_window: need (lo, hi) with 0 < lo < 1 < hi, got {fw}")
    per_rank, rem = divmod(c["n_prompts"], world_size)
    need(rem == 0, f"--n_prompts: need a multiple of the number of ranks ({world_size}), got {c['n_prompts']}")
    need(
        per_rank % c["num_minibatches"] == 0,
        f"--n_prompts: need the prompts per rank ({per_rank}) to be a multiple of num_minibatches={c['num_minibatches']}",
    )
    need(c["sft_batch"] % world_size == 0, f"--sft_batch: need a multiple of the number of ranks ({world_size}), got {c['sft_batch']}")
    need(not (c["resume"] and c["overwrite"]), "--resume and --overwrite: choose one")


# -----------------------------------------------------------------------------
# the task: tokens, data, reward

DIGITS = "0123456789"
EQ, EOS, BLANK = 10, 11, 12  # '=' ends the prompt, '$' ends the answer, '.' left-pads the prompt
LETTER0 = 13  # pairs: the values a..j are tokens 13..22 (their own tokens: a value is never mistaken for a key)
VOCAB = DIGITS + "=$." + "abcdefghij"  # sort uses the first 13 tokens only
PAD = EOS  # response padding after the end token (never scored: the mask is 0 there)


def decode(tokens):
    return "".join(VOCAB[i] for i in tokens)


def vocab_size(C):
    return len(VOCAB) if C.task == "pairs" else LETTER0  # sort's model (and so its default run) is unchanged


def lengths(C):
    """(prompt length P, max_new): the longest response is max_new - 3 tokens (3 spare for a late end token)."""
    return (1, 2 * C.n_pairs + 4) if C.task == "pairs" else (C.max_digits + 1, C.max_digits + 4)


def make_batch(n, gen, C):
    """n random problems of C.task: prompts (n, P) and targets (n, max_new - 3), both long (see make_pairs)."""
    return make_pairs(n, gen, C) if C.task == "pairs" else make_sort(n, gen, C)


def make_sort(n, gen, C):
    """n random problems. Returns prompts (n, max_digits + 1) and targets (n, max_digits + 1), both long.

    prompt: '.' * (max_digits - k) + k digits + '='; target: the k digits sorted + '$', then PAD.
    """
    D = C.max_digits
    k = torch.randint(C.min_digits, D + 1, (n,), generator=gen)  # (n,) digits per problem
    digits = torch.randint(0, 10, (n, D), generator=gen)  # (n, D)
    blank = torch.arange(D)[None, :] < (D - k)[:, None]  # (n, D) left padding
    prompts = torch.cat([torch.where(blank, BLANK, digits), torch.full((n, 1), EQ)], dim=1)
    srt = torch.where(blank, 10, digits).sort(dim=1).values  # blanks (as 10) sort last
    targets = torch.cat([srt, torch.full((n, 1), PAD)], dim=1)  # (n, D + 1)
    pos = torch.arange(D + 1)[None, :]
    targets = torch.where(pos < k[:, None], targets, PAD)
    targets = torch.where(pos == k[:, None], EOS, targets)
    return prompts, targets


# the pairs task (issue 11: a long response whose uncertainty is spread evenly along it). The answer is n_pairs
# pairs "r F(r)": r is ANY digit (free: the reward never looks at it; the teacher draws it uniformly), F a fixed
# table (a permutation of the digits, values written a..j), then '$'. The prompt is '=' alone: every problem
# is the same, and what varies is the policy's own choices (the held-out evaluation draws fresh samples).
#     =  ->  3j 9e 0d 3j 7c ... $         (F(3) = j, F(9) = e, F(0) = d, F(7) = c)
# Every value is a lookup of the token just before it (a bigram, learned in ~100 warm-start steps), so the
# difficulty is the same at every position and nothing needs aligning over a long distance. With teacher_noise
# the warm start learns the teacher's noisy values, and RL has something to learn: sharpen them.
PAIRS_TABLE = torch.tensor([9, 2, 5, 4, 7, 0, 8, 1, 3, 6])  # F(r) = a..j[PAIRS_TABLE[r]]


def make_pairs(n, gen, C):
    """prompts (n, 1) all '='; targets (n, 2 n_pairs + 1): r_1 F(r_1) ... r_K F(r_K) '$', r uniform digits."""
    r = torch.randint(0, 10, (n, C.n_pairs), generator=gen)  # (n, K) the free digits
    ans = torch.stack([r, PAIRS_TABLE[r] + LETTER0], dim=2).view(n, 2 * C.n_pairs)  # (n, 2K)
    return torch.full((n, 1), EQ), torch.cat([ans, torch.full((n, 1), EOS)], dim=1)


def score_pairs(responses, mask, n_pairs, partial_credit):
    """Pair k is right when response token 2k + 1 is F(response token 2k) (a digit); token 2 n_pairs must be '$'.
    partial credit = (pairs right + end token right) / (n_pairs + 1); exact = all of them and nothing after."""
    B, T = responses.shape
    L = 2 * n_pairs
    resp = torch.full((B, max(T, L + 1)), -1, dtype=torch.long, device=responses.device)
    resp[:, :T] = torch.where(mask, responses, -1)
    free, value = resp[:, 0:L:2], resp[:, 1:L:2]  # (B, K)
    table = PAIRS_TABLE.to(responses.device)
    ok = (free >= 0) & (free < 10) & (value == table[free.clamp(0, 9)] + LETTER0)
    right = ok.sum(dim=1) + (resp[:, L] == EOS).long()
    resp_len = mask.sum(dim=1)
    exact = (right == n_pairs + 1) & (resp_len == L + 1)
    reward = (1 - partial_credit) * exact.float() + partial_credit * right.float() / (n_pairs + 1)
    return reward, exact, resp_len


def task_score(responses, mask, targets, C, partial_credit=None):
    """(reward, exact, response length) of C.task's responses; partial_credit defaults to C's."""
    pc = C.partial_credit if partial_credit is None else partial_credit
    return score_pairs(responses, mask, C.n_pairs, pc) if C.task == "pairs" else score(responses, mask, targets, pc)


def teacher(targets, C, gen):
    """The warm start's supervised answer: targets with each digit (pairs: each value) replaced by a uniform
    random one with probability C.teacher_noise; the end token and padding never. No draw when it is 0."""
    if C.teacher_noise == 0:
        return targets
    lo = LETTER0 if C.task == "pairs" else 0
    noisy = (targets >= lo) & (targets < lo + 10) & (torch.rand(targets.shape, generator=gen) < C.teacher_noise)
    return torch.where(noisy, torch.randint(lo, lo + 10, targets.shape, generator=gen), targets)


class Problems:
    """Training problems from a generator, never equal to a held-out prompt."""

    def __init__(self, gen, C, heldout):
        self.gen, self.C, self.heldout = gen, C, heldout
        if C.task == "pairs":  # one prompt ('='): nothing can be held out, the evaluation draws fresh samples
            self.heldout = set()

    def __call__(self, n):
        prompts, targets = make_batch(n, self.gen, self.C)
        bad = [i for i, row in enumerate(prompts.tolist()) if tuple(row) in self.heldout]
        while bad:  # astronomically rare with 16+ digits, but a held-out prompt must never be trained on
            p, t = make_batch(len(bad), self.gen, self.C)
            prompts[bad], targets[bad] = p, t
            bad = [i for i in bad if tuple(prompts[i].tolist()) in self.heldout]
        return prompts, targets


def score(responses, mask, targets, partial_credit):
    """Per-response reward, exact match (bool) and response length. Responses are (B, T), targets (B, D+1).

    A response matches when every token up to and including its end token equals the target's; the
    partial credit is the number of positions right divided by the longer of the two lengths.
    """
    B = responses.size(0)
    W = max(responses.size(1), targets.size(1))
    resp = torch.full((B, W), -1, dtype=torch.long, device=responses.device)
    resp[:, : responses.size(1)] = torch.where(mask, responses, -1)
    tgt = torch.full((B, W), -2, dtype=torch.long, device=responses.device)
    tgt[:, : targets.size(1)] = targets
    tgt_len = (targets != PAD).sum(dim=1) + 1  # digits + the end token
    tgt = torch.where(torch.arange(W, device=tgt.device)[None, :] < tgt_len[:, None], tgt, -2)
    resp_len = mask.sum(dim=1)
    right = (resp == tgt).sum(dim=1)
    exact = (right == tgt_len) & (resp_len == tgt_len)
    partial = right.float() / torch.maximum(resp_len, tgt_len).float()
    reward = (1 - partial_credit) * exact.float() + partial_credit * partial
    return reward, exact, resp_len


def task_name(C):
    return f"pairs x {C.n_pairs}" if C.task == "pairs" else f"sort {C.min_digits}-{C.max_digits} digits"


# -----------------------------------------------------------------------------
# distributed helpers (no-ops in a single process)


def all_sum(x):
    if dist.is_initialized():
        dist.all_reduce(x)
    return x


def log0(rank, *args):
    if rank == 0:
        print(*args, flush=True)


# -----------------------------------------------------------------------------
# evaluation: held-out greedy exact match (minGPT adder style), and the mean sampled reward


@torch.no_grad()
def evaluate(model, prompts, targets, C, rank, world, device, show=0):
    """prompts/targets: the whole held-out set; each rank scores its shard. Returns (accuracy, reward)."""
    model.eval()
    p, t = prompts[rank::world].to(device), targets[rank::world].to(device)
    max_new = lengths(C)[1]
    g = torch.Generator(device=device).manual_seed(0)  # greedy: top_k=1 draws nothing random
    roll = ctpo.sample(model, p, max_new, EOS, PAD, temperature=1.0, top_k=1, generator=g)
    _, exact, _ = task_score(roll.responses, roll.mask, t, C, 0.0)
    # the sampled reward (training temperature) on the first 128 held-out prompts, 4 samples each, fixed seed
    q = p[: max(1, 128 // world)].repeat_interleave(4, dim=0)
    g.manual_seed(1 + rank)
    sroll = ctpo.sample(model, q, max_new, EOS, PAD, temperature=C.temperature, generator=g)
    reward, _, _ = task_score(sroll.responses, sroll.mask, t[: q.size(0) // 4].repeat_interleave(4, dim=0), C)
    sums = all_sum(
        torch.tensor([exact.sum().item(), exact.numel(), reward.sum().item(), reward.numel()], dtype=torch.float64, device=device)
    )
    if show and rank == 0:
        wrong = (~exact).nonzero().flatten()[:show].tolist()
        for i in wrong:
            got = decode(roll.responses[i][roll.mask[i]].tolist())
            want = decode(t[i][: (t[i] != PAD).sum() + 1].tolist())
            if C.task == "pairs":  # the answer is too long for a line, and any free digits are right
                got, want = f"{got[:20]}... (length {len(got)})", f"r F(r) x {C.n_pairs}, then $"
            print(f"  mistake: {decode(p[i].tolist()).lstrip('.')}  got {got:<22} want {want}")
    return (sums[0] / sums[1]).item(), (sums[2] / sums[3]).item()


# -----------------------------------------------------------------------------
# the paper's Figure 1, logged: per response position t, sums over the tokens of every mini-batch

POS_KEYS = ("n", "sum", "sumsq", "clip_adaptive", "clip_fixed", "clip_method", "dsum", "dsumsq")


@torch.no_grad()
def position_sums(logp, old_logp, mask, adv, clipped_by_method, fixed_window, width):
    """(8, width) float64: per position t (index t - 1) the token count, sum and sum of squares of the
    cumulative log-ratio log rho_t, how many tokens the CTPO sqrt(t) window, the fixed ratio window and
    the method's own loss clip, and the sum and sum of squares of the per-token delta_t. log rho_t is
    computed whatever the method (value only, as in CTPO). Clipped, as in the paper: (A > 0 and log rho
    above the window) or (A < 0 and below it)."""
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
# checkpointing: atomic, with every RNG state, on rank 0 only


def rng_state(gens):
    s = {"torch": torch.get_rng_state(), "python": random.getstate(), **{k: g.get_state() for k, g in gens.items()}}
    if torch.cuda.is_available():
        s["cuda"] = torch.cuda.get_rng_state_all()
    return s


def set_rng_state(s, gens):
    torch.set_rng_state(s["torch"])
    random.setstate(s["python"])
    for k, g in gens.items():
        g.set_state(s[k])
    if "cuda" in s and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def save_checkpoint(path, state):
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)  # atomic: a crash leaves the previous checkpoint intact


# -----------------------------------------------------------------------------
# plots


def plot_run(rows, path, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rl = [r for r in rows if "reward" in r]
    ev = [r for r in rows if "acc" in r]
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(6, 5.5), sharex=True)
    a1.plot([r["step"] for r in rl], [r["reward"] for r in rl], lw=1, alpha=0.6, label="rollout (train prompts)")
    a1.plot([r["step"] for r in ev], [r["eval_reward"] for r in ev], "o-", ms=3, label="held-out, sampled")
    a1.set_ylabel("mean reward")
    a1.legend(loc="lower right", fontsize=8)
    a1.grid(alpha=0.3)
    a2.plot([r["step"] for r in ev], [100 * r["acc"] for r in ev], "o-", ms=3, color="C2")
    a2.set_ylabel("held-out exact match, greedy (%)")
    a2.set_xlabel("RL step (0 = after the warm start)")
    a2.grid(alpha=0.3)
    a1.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# -----------------------------------------------------------------------------
# the run, in the order it happens: setup; warm start (or resume); then every RL step: rollout, update,
# bookkeeping (reduce over ranks, one metrics row), evaluation, checkpoint; finally the summary


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if "-h" in argv or "--help" in argv:  # the keys with the defaults that the given config files set
        print(help_text(vars(parse_config([a for a in argv if a not in ("-h", "--help")], check=False))))
        return None
    C = parse_config(argv)
    config_files = split_argv(argv)[0]
    t_start = time.time()
    torch.set_flush_denormal(True)  # near-converged weights and Adam moments go subnormal: 30x slower on a CPU

    # ---- device and DDP
    ddp = int(os.environ.get("RANK", -1)) != -1
    device_type = "cuda" if C.device == "cuda" or (C.device == "auto" and torch.cuda.is_available()) else "cpu"
    if ddp:
        importlib.import_module("torch.distributed.nn")  # before the group exists: see the teardown at the end
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    try:
        if ddp:
            rank, world, local_rank = dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0))
            check_config(vars(C), world)
        else:
            rank, world, local_rank = 0, 1, 0
        if device_type == "cuda" and not torch.cuda.is_available():
            raise ConfigError("--device=cuda: no CUDA device is available (use --device=auto or --device=cpu)")
        device = torch.device(f"cuda:{local_rank}" if device_type == "cuda" else "cpu")
        if device_type == "cuda":
            torch.cuda.set_device(device)
        result = run(C, rank, world, device, ddp, t_start, config_files)
        if ddp:
            dist.barrier()  # leave together: a rank that tears gloo down while rank 0 still writes can abort
        return result
    finally:
        if ddp:
            # Free the process group here, its threads joined, not at exit. A gloo worker thread drops a collective's
            # work (and its tensors) only after the caller has moved on, and dropping a tensor that has a Python object
            # takes the GIL: if that happens while the interpreter finalises, the thread is stopped inside C++ and the
            # rank aborts after its work is done ("terminate called without an active exception"). destroy_process_group
            # frees the group only when nothing else holds it: the DDP model (its reducer) and run()'s tensors go with
            # run()'s frame (on an error the traceback keeps that frame: clear it), gc.collect() frees what only a
            # reference cycle holds, and torch.distributed.nn, which binds group=group.WORLD as default arguments, is
            # imported before init_process_group (imported later, by DDP through torch._dynamo, it held the group).
            if sys.exc_info()[2] is not None:
                traceback.clear_frames(sys.exc_info()[2])
            gc.collect()
            dist.destroy_process_group()


def run(C, rank, world, device, ddp, t_start, config_files=()):
    backend_used = check_backend(C, device)
    ckpt_path, metrics_path = prepare_out_dir(C, rank, ddp)

    # ---- held-out split (fixed), generators, model
    torch.manual_seed(C.seed)  # the same init on every rank (DDP also broadcasts rank 0's)
    random.seed(C.seed)
    eval_prompts, eval_targets = make_batch(C.eval_size, torch.Generator().manual_seed(C.eval_seed), C)
    heldout = {tuple(r) for r in eval_prompts.tolist()}
    rank_seed = C.seed if C.ddp_union_batch else C.seed + 1000 * rank  # ranks draw different data unless testing
    gens = {"data": torch.Generator().manual_seed(rank_seed), "sample": torch.Generator(device=device).manual_seed(rank_seed + 1)}
    P, max_new = lengths(C)
    gconf = ctpo.GPTConfig(vocab_size=vocab_size(C), block_size=P + max_new, n_layer=C.n_layer, n_head=C.n_head, n_embd=C.n_embd)
    raw_model = ctpo.GPT(gconf).to(device)
    model = DDP(raw_model, device_ids=[device.index] if device.type == "cuda" else None) if ddp else raw_model
    if C.optimizer == "adam":
        optimizer = torch.optim.Adam(raw_model.parameters(), lr=C.lr)
    else:
        optimizer = torch.optim.SGD(raw_model.parameters(), lr=C.lr)
    n_params = sum(p.numel() for p in raw_model.parameters())
    log0(
        rank,
        f"ctpo toy | {task_name(C)} | {n_params / 1e3:.0f}k params | {device} x {world} | method {C.method}",
    )
    # everything the phases below share, in one place
    R = SimpleNamespace(C=C, rank=rank, world=world, device=device, ddp=ddp, model=model, raw_model=raw_model, optimizer=optimizer,
                        gens=gens, problems=Problems(gens["data"], C, heldout), eval_prompts=eval_prompts, eval_targets=eval_targets,
                        P=P, max_new=max_new, ckpt_path=ckpt_path, metrics_path=metrics_path)  # fmt: skip

    # ---- resume, or phase 1: supervised warm start
    if C.resume:
        start_step, history, t_origin = resume_run(R)  # elapsed = time.time() - t_origin, continued across a resume
    else:
        start_step, t_origin = 1, t_start
        warm_start(R, t_start)
        acc, ev_reward = evaluate(raw_model, eval_prompts, eval_targets, C, rank, world, device, show=C.n_mistakes)
        history = {"accuracy_before": acc, "reward_before": ev_reward, "sft_seconds": time.time() - t_start}
        log0(rank, f"after the warm start: held-out accuracy {100 * acc:.1f}% | sampled reward {ev_reward:.3f}")
        if rank == 0:
            with open(metrics_path, "w") as f:
                f.write(json.dumps({"step": 0, "acc": acc, "eval_reward": ev_reward, "elapsed": time.time() - t_start}) + "\n")
        checkpoint(R, 0, history, time.time() - t_start)

    # ---- phase 2: RL
    step = start_step - 1
    for step in range(start_step, C.rl_steps + 1):
        t0 = time.time()
        for group in optimizer.param_groups:
            group["lr"] = C.lr * min(1.0, step / max(1, C.lr_warmup))
        prompts, targets, roll = rollout(R)
        rewards, exact, resp_len = task_score(roll.responses, roll.mask, targets, C)
        adv = ctpo.group_advantages(rewards, C.group_size, scale=C.adv_scale)
        sums = update(R, prompts, roll, adv)
        row = metrics_row(R, step, sums, (rewards, exact, resp_len), t0, t_origin)
        line = f"step {step:4d} | reward {row['reward']:.3f} | exact {100 * row['exact']:5.1f}%"
        if step % C.eval_interval == 0 or step == C.rl_steps:
            final = step == C.rl_steps
            row["acc"], row["eval_reward"] = evaluate(
                raw_model, eval_prompts, eval_targets, C, rank, world, device, show=C.n_mistakes if final else 0
            )
            line += f" | held-out acc {100 * row['acc']:5.1f}%"
        clip = f"{row['clip_frac_high']:.3f}/{row['clip_frac_low']:.3f}/{row['clip_frac_dual']:.3f}"
        line += f" | clip h/l/d {clip} | len {row['mean_len']:.1f} | {row['tok_per_s']:.0f} tok/s | {row['elapsed']:.1f}s"
        log0(rank, line)
        if rank == 0:
            with open(metrics_path, "a") as f:
                f.write(json.dumps(row) + "\n")
        if (C.ckpt_interval and step % C.ckpt_interval == 0) or step == C.rl_steps:
            checkpoint(R, step, history, time.time() - t_origin)
    return write_summary(R, step, history, time.time() - t_origin, backend_used, config_files) if rank == 0 else None


# ---- setup


def check_backend(C, device):
    """The loss backend actually used: fail now (ext missing, or a method it does not cover), not after the warm start."""
    try:
        z, on = torch.zeros(1, 2, device=device), torch.ones(1, 2, dtype=torch.bool, device=device)
        return ctpo.policy_loss(z, z, z[:, 0], on, method=C.method, backend=C.backend, **C.loss_kwargs)[1]["backend"]
    except RuntimeError as e:
        raise ConfigError(f"--backend={C.backend}: {e}") from None


def prepare_out_dir(C, rank, ddp):
    """out_dir is in use only when it holds this script's outputs (OUTPUTS): refuse to clobber them silently.
    Every rank checks before rank 0 touches anything; --overwrite deletes only OUTPUTS, never other files."""
    ckpt_path, metrics_path = os.path.join(C.out_dir, "ckpt.pt"), os.path.join(C.out_dir, "metrics.jsonl")
    if os.path.exists(C.out_dir) and not os.path.isdir(C.out_dir):
        raise ConfigError(f"--out_dir: {C.out_dir!r} is a file, not a folder")
    ours = [name for name in OUTPUTS if os.path.exists(os.path.join(C.out_dir, name))]
    if ours and not (C.overwrite or C.resume):
        raise ConfigError(
            f"--out_dir: {C.out_dir!r} holds a previous run ({', '.join(ours)}); "
            "pass --resume=True to continue it or --overwrite=True to replace it"
        )
    if C.resume and not os.path.exists(ckpt_path):
        raise ConfigError(f"--resume: no checkpoint at {ckpt_path}")
    if ddp:
        dist.barrier()
    if rank == 0:
        os.makedirs(C.out_dir, exist_ok=True)
        for name in ours if C.overwrite else ():
            os.remove(os.path.join(C.out_dir, name))
    return ckpt_path, metrics_path


def shard(x, R):
    """The union-batch testing hook: keep this rank's contiguous block of the global batch."""
    return x.view(R.world, -1, *x.shape[1:])[R.rank] if R.C.ddp_union_batch else x


# ---- phase 1: supervised warm start, or resume


def warm_start(R, t_start):
    """sft_steps of AdamW on the token-mean cross-entropy of the answer (digits and end token)."""
    C, world, device, P = R.C, R.world, R.device, R.P
    sft = torch.optim.AdamW(R.raw_model.parameters(), lr=C.sft_lr, weight_decay=0.0)
    R.model.train()
    for it in range(C.sft_steps):
        for group in sft.param_groups:  # cosine from sft_lr to sft_lr / 10
            group["lr"] = C.sft_lr * (0.1 + 0.45 * (1 + math.cos(math.pi * it / max(1, C.sft_steps))))
        prompts, targets = R.problems(C.sft_batch if C.ddp_union_batch else C.sft_batch // world)
        prompts, targets = shard(prompts, R).to(device), shard(targets, R).to(device)
        targets = teacher(targets, C, R.gens["data"])
        idx = torch.cat([prompts, targets], dim=1)
        logits = R.model(idx[:, :-1])[:, P - 1 :]  # row t scores targets[:, t]
        tmask = torch.arange(targets.size(1), device=device)[None, :] <= (targets != PAD).sum(dim=1, keepdim=True)
        ce = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), reduction="none").view_as(targets)
        n_global = all_sum(tmask.sum().float())
        loss = (ce * tmask).sum() / n_global * world  # DDP averages over ranks: this makes it a global token mean
        sft.zero_grad(set_to_none=True)
        loss.backward()
        sft.step()
        if (it + 1) % 100 == 0 or it + 1 == C.sft_steps:
            local_mean = ((ce * tmask).sum() / tmask.sum()).item()
            log0(R.rank, f"warm start {it + 1:4d}/{C.sft_steps} | loss {local_mean:.4f} | {time.time() - t_start:.1f}s")


def resume_run(R):
    """Model, optimizer, every rank's RNG state and the history from ckpt.pt; metrics.jsonl cut back to the
    checkpoint's length. Returns (first RL step, history, t_origin)."""
    C, rank = R.C, R.rank
    ck = torch.load(R.ckpt_path, map_location="cpu", weights_only=False)  # our own file: it holds RNG states
    bad = [k for k in CONFIG_KEYS if k not in RESUME_MAY_CHANGE and ck["config"].get(k, DEFAULTS[k]) != getattr(C, k)]
    if bad:
        raise ConfigError(f"--resume: {', '.join(bad)} differ from the checkpoint's config; only {sorted(RESUME_MAY_CHANGE)} may change")
    if ck["world_size"] != R.world:
        raise ConfigError(f"--resume: the checkpoint was written with {ck['world_size']} ranks, this run has {R.world}")
    R.raw_model.load_state_dict(ck["model"])
    R.optimizer.load_state_dict(ck["optimizer"])
    set_rng_state(ck["rng"][rank], R.gens)
    if os.path.getsize(R.metrics_path) < ck["metrics_bytes"]:
        raise ConfigError(f"--resume: {R.metrics_path} is shorter than when {R.ckpt_path} was written; it was edited or replaced")
    if R.ddp:
        dist.barrier()  # every rank has checked the file before rank 0 truncates it
    if rank == 0:
        with open(R.metrics_path, "r+b") as f:
            f.truncate(ck["metrics_bytes"])  # drop rows written after the checkpoint
    log0(rank, f"resumed from {R.ckpt_path} at RL step {ck['step']}")
    return ck["step"] + 1, ck["history"], time.time() - ck["wall_seconds"]


def checkpoint(R, step, history, elapsed):
    """ckpt.pt (atomically, rank 0) with every rank's RNG state and the length of metrics.jsonl at this step."""
    states = [None] * R.world
    if R.ddp:
        dist.all_gather_object(states, rng_state(R.gens))
    else:
        states = [rng_state(R.gens)]
    if R.rank == 0:
        state = {"model": R.raw_model.state_dict(), "optimizer": R.optimizer.state_dict(), "step": step, "config": vars(R.C),
                 "world_size": R.world, "rng": states, "history": history, "wall_seconds": elapsed,
                 "metrics_bytes": os.path.getsize(R.metrics_path)}  # fmt: skip
        save_checkpoint(R.ckpt_path, state)


# ---- phase 2, one RL step: rollout, update, bookkeeping


@torch.no_grad()
def rollout(R):
    """G completions per prompt, sampled with the KV cache by the current (= old) policy.
    Returns prompts (B, P), targets (B, D+1) and a ctpo.Rollout of (B, T) tensors; a group in consecutive rows."""
    C = R.C
    R.model.eval()
    prompts, targets = R.problems(C.n_prompts if C.ddp_union_batch else C.n_prompts // R.world)
    prompts = prompts.to(R.device).repeat_interleave(C.group_size, dim=0)  # (B, P)
    targets = targets.to(R.device).repeat_interleave(C.group_size, dim=0)
    roll = ctpo.sample(R.raw_model, prompts, R.max_new, EOS, PAD, temperature=C.temperature, generator=R.gens["sample"])
    if C.ddp_union_batch:  # (responses are as long as the longest in the global batch: same shapes everywhere)
        prompts, targets = shard(prompts, R), shard(targets, R)
        roll = ctpo.Rollout(shard(roll.responses, R), shard(roll.mask, R), shard(roll.logp, R))
    return prompts, targets, roll


def update(R, prompts, roll, adv):
    """ppo_epochs x num_minibatches optimizer steps on one rollout; mini-batch j holds the groups of prompts
    j, j + M, ... Returns this rank's sums: stats (7,), extremes (2,) and the Figure 1 sums (len(POS_KEYS), max_new)."""
    C, device, world = R.C, R.device, R.world
    n_local = C.n_prompts // world
    mb_rows = [
        torch.arange(n_local * C.group_size).view(n_local, C.group_size)[j :: C.num_minibatches].flatten() for j in range(C.num_minibatches)
    ]
    R.model.train()
    stats = torch.zeros(7, dtype=torch.float64, device=device)  # tokens, clipped high/low/dual, sum of losses, sum of ratios, grad norms
    extremes = torch.full((2,), -math.inf, dtype=torch.float64, device=device)  # max ratio, -min ratio
    pos = torch.zeros(len(POS_KEYS), R.max_new, dtype=torch.float64, device=device)  # Figure 1 sums per position
    for _epoch in range(C.ppo_epochs):
        for rows in mb_rows:
            rows = rows.to(device)
            mask, old_logp, a = roll.mask[rows], roll.logp[rows], adv[rows]
            logp = ctpo.token_logprobs(R.model, prompts[rows], roll.responses[rows], mask, C.temperature)
            # the loss is normalised by GLOBAL counts (all ranks), so the ranks' losses add up to the union batch's
            num_tokens = all_sum(mask.sum().to(torch.float64)) if C.agg == "token-mean" else None
            num_seqs = all_sum(torch.tensor(float(rows.numel()), dtype=torch.float64, device=device)) if C.agg != "token-mean" else None
            loss, m = ctpo.policy_loss(
                logp, old_logp, a, mask, method=C.method, agg=C.agg, backend=C.backend, num_tokens=num_tokens, num_seqs=num_seqs,
                **C.loss_kwargs,
            )  # fmt: skip
            R.optimizer.zero_grad(set_to_none=True)
            (loss * world).backward()  # DDP averages gradients over ranks: * world makes it their sum
            grad_norm = torch.nn.utils.clip_grad_norm_(R.raw_model.parameters(), C.grad_clip if C.grad_clip > 0 else math.inf)
            R.optimizer.step()
            with torch.no_grad():
                n = m["n_tokens"].double()
                vals = [n, m["n_clip_high"], m["n_clip_low"], m["n_clip_dual"], loss.detach(), m["ratio_mean"] * n, grad_norm]
                stats += torch.stack([v.double() for v in vals])
                extremes = torch.maximum(extremes, torch.stack([m["ratio_max"], -m["ratio_min"]]).double())
                pos += position_sums(logp.detach(), old_logp, mask, a, m["clipped"], C.fixed_window, R.max_new)
    return stats, extremes, pos


def metrics_row(R, step, sums, scored, t0, t_origin):
    """Reduce one step's sums over the ranks into the metrics.jsonl row (every rank gets the same row)."""
    C, world = R.C, R.world
    stats, extremes, pos = sums
    if R.ddp:
        dist.all_reduce(extremes, op=dist.ReduceOp.MAX)
    stats[6] /= world  # the gradient (after DDP's all-reduce) and its norm are the same on every rank
    stats, pos = all_sum(stats), all_sum(pos)
    roll_stats = all_sum(torch.stack([x.sum().double() for x in (*scored, torch.ones_like(scored[0]))]))  # reward, exact, length, count
    nr, ntok = roll_stats[3].item(), max(1.0, stats[0].item())
    updates = C.ppo_epochs * C.num_minibatches
    row = {
        "step": step,
        "reward": roll_stats[0].item() / nr,  # rollout mean reward (training prompts, sampling temperature)
        "exact": roll_stats[1].item() / nr,
        "mean_len": roll_stats[2].item() / nr,  # response tokens, end token included
        "loss": stats[4].item() / updates,
        "grad_norm": stats[6].item() / updates,  # before clipping, mean over the updates
        "clip_frac_high": stats[1].item() / ntok,
        "clip_frac_low": stats[2].item() / ntok,
        "clip_frac_dual": stats[3].item() / ntok,
        "ratio_mean": stats[5].item() / ntok,
        "ratio_max": extremes[0].item(),
        "ratio_min": -extremes[1].item(),
        "tok_per_s": roll_stats[2].item() / (time.time() - t0),  # sampled response tokens / step time
        "elapsed": time.time() - t_origin,
    }
    last = int(pos[0].nonzero().max().item()) + 1 if bool(pos[0].any()) else 0
    row["pos"] = {k: pos[i, :last].tolist() for i, k in enumerate(POS_KEYS)}
    return row


# ---- the summary (rank 0)


def write_summary(R, step, history, wall, backend_used, config_files):
    C = R.C
    with open(R.metrics_path) as f:
        rows = [json.loads(line) for line in f]
    ev = [r for r in rows if "acc" in r]
    rl = [r for r in rows if "reward" in r]
    summary = {
        "method": C.method,
        "seed": C.seed,
        "rl_steps": step,
        "accuracy_before": history["accuracy_before"],
        "accuracy_after": ev[-1]["acc"],
        "reward_before": history["reward_before"],
        "reward_after": ev[-1]["eval_reward"],
        "reward_definition": "mean reward of sampled completions (temperature) on 128 held-out prompts x 4",
        "train_reward_first": rl[0]["reward"] if rl else None,
        "train_reward_last10": sum(r["reward"] for r in rl[-10:]) / max(1, len(rl[-10:])),
        "mean_response_len": sum(r["mean_len"] for r in rl) / max(1, len(rl)),
        "mean_response_len_definition": "sampled RL responses, end token included",
        "clip_frac": sum(r["clip_frac_high"] + r["clip_frac_low"] + r["clip_frac_dual"] for r in rl) / max(1, len(rl)),
        "wall_seconds": wall,
        "warm_start_seconds": history["sft_seconds"],
        "backend_used": backend_used,  # auto falls back to python when the extension is missing
        "world_size": R.world,
        "device": str(R.device),
        "config_files": list(config_files),
        "config": vars(C),
    }
    with open(os.path.join(C.out_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    plot_run(rows, os.path.join(C.out_dir, "train.png"), f"{task_name(C)}, {C.method}, seed {C.seed}")
    print(f"accuracy {100 * summary['accuracy_before']:.1f}% -> {100 * summary['accuracy_after']:.1f}% | reward "
          f"{summary['reward_before']:.3f} -> {summary['reward_after']:.3f} | {wall:.1f}s | {C.out_dir}/summary.json")  # fmt: skip
    return summary


if __name__ == "__main__":
    try:
        main()
    except ConfigError as e:
        print(f"train_tiny.py: error: {e}", file=sys.stderr)
        sys.exit(2)
