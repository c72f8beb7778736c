"""
A toy RL run that learns in about half a minute on a CPU: a supervised warm start, then CTPO (or GRPO, GSPO, ...).

The task (tasks.py): sort 10-14 digits, '....3141592653=  ->  1123345569$' (11-15 response tokens, the end token
included; one wrong count makes the answer wrong). config/long.py: 137-token answers (docs/toy.md). config/automaton.py: a walk
on an automaton, where credit is entangled, and rollouts sampled by a policy rollout_lag steps old (docs/lag.md).

    python train_tiny.py                                   # CTPO, outputs in out-tiny/
    python train_tiny.py --method=grpo --out_dir=out-grpo  # any --key=value (or --key value) overrides a default
    python train_tiny.py config/long.py                    # a config file sets the defaults it changes
    python train_tiny.py --out_dir=out-tiny --resume=True --rl_steps=600   # continue a run exactly
    torchrun --standalone --nproc_per_node=2 train_tiny.py # DDP: rollouts sharded over the ranks
    python train_tiny.py --help                            # every config key, its default and what it does

Warm start: a short supervised run, stopped early (greedy accuracy imperfect, not hopeless). RL: each step samples group_size completions
for each of n_prompts prompts, scores them, turns the rewards into group advantages and takes num_minibatches x ppo_epochs optimizer steps
on that rollout: all mini-batches after the first are off-policy. Outputs in out_dir: metrics.jsonl (a row per RL step, with figure1.py's
per-position sums), summary.json, train.png, ckpt.pt (atomic; --resume=True continues it exactly); nothing else in out_dir is touched.
"""

import copy
import gc
import json
import math
import os
import random
import sys
import time
import traceback
from types import SimpleNamespace

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

import configurator
import ctpo
import figure1
import tasks
from configurator import ConfigError

# -----------------------------------------------------------------------------
# config: every value can be overridden by a config file, then --key=value (configurator.py)
# I/O
out_dir = "out-tiny"  # all outputs go here (other files in it are left alone)
overwrite = False  # True: delete this script's previous outputs in out_dir first (else they are an error)
resume = False  # True: continue from out_dir/ckpt.pt (rl_steps and the I/O keys may change, the rest must match)
eval_interval = 50  # evaluate held-out greedy accuracy every this many RL steps (and at the start and end)
ckpt_interval = 50  # write ckpt.pt every this many RL steps (and at the end); 0: only at the end
n_mistakes = 3  # how many held-out mistakes to print at the first and last evaluation
seed = 1337  # model init, training data, sampling
device = "auto"  # auto | cpu | cuda (auto: cuda if available)
threads = 1  # CPU threads per process (0: torch's default, one per core); 1: steady on a busy machine, see docs/toy.md
# task (tasks.py)
task = "sort"  # sort (sort digits) | pairs (the long-response toy of config/long.py) | automaton (config/automaton.py: a walk)
min_digits = 10  # sort: shortest digit string (the response is one token longer: the end token)
max_digits = 14  # sort: longest digit string
n_pairs = 68  # pairs: pairs per answer (the response is 2 n_pairs + 1 tokens: the end token); automaton: steps (n_pairs + 1 tokens)
partial_credit = 0.5  # reward = (1 - partial_credit) * exact_match + partial_credit * fraction of positions (pairs) right
eval_size = 512  # held-out prompts (greedy exact match)
eval_seed = 2605  # the held-out split is fixed by this seed, whatever the run's seed; training never sees it
# model (ctpo.GPT)
n_layer = 2  # transformer blocks
n_head = 4  # attention heads
n_embd = 64  # embedding width
# phase 1: supervised warm start
sft_steps = 100  # deliberately short: the policy should come out imperfect
sft_batch = 64  # sequences per step
sft_lr = 2e-3  # AdamW, cosine decay to sft_lr / 10
teacher_noise = 0.0  # the warm start's teacher replaces each supervised answer digit (pairs: value) by a random one with
#                     this probability: an imperfect policy that RL can sharpen (the end token is never replaced)
# phase 2: RL
method = "ctpo"  # grpo | gspo | sequence | ctpo | ctpo-fixed | ctpo-geomean (ctpo.policy_loss)
backend = "python"  # python | ext | auto (ext if the fused kernel builds, else python with a warning)
loss_kwargs = {}  # overrides of the method's knobs, e.g. --loss_kwargs="{'eps_low': 3e-4, 'eps_high': 4e-4}" (ctpo.policy_loss)
rl_steps = 200  # rollouts
n_prompts = 16  # prompts per rollout (over all ranks)
group_size = 8  # completions per prompt (G); the advantage is relative to the group
num_minibatches = 4  # optimizer steps per epoch over one rollout; all but the first are off-policy
ppo_epochs = 1  # passes over each rollout
rollout_lag = 0  # sample with the policy of this many RL steps before (async trainers' staleness, in policy versions: optimizer
#                 updates when num_minibatches = ppo_epochs = 1), its log-probs as old_logp; the warm start's until there is one
optimizer = "adam"  # adam | sgd (Adam: betas (0.9, 0.999), eps 1e-8; sgd: the update is exactly -lr * grad)
lr = 1e-4  # RL learning rate, constant after a linear warmup
lr_warmup = 10  # RL steps of linear warmup (a fresh Adam's first steps are sign-like: +-lr on every weight)
temperature = 0.5  # sampling temperature, also used by the log-probs in the loss; below 1 so that exploration
#                   goes to the genuinely uncertain tokens, not to noise on a dozen confident ones (T = 1 barely learns)
adv_scale = True  # divide the advantage by the group std (GRPO); False: Dr. GRPO
agg = "token-mean"  # loss aggregation (ctpo.AGGS); token-mean divides by the global token count
grad_clip = 1.0  # max grad norm; 0: off
fixed_window = (0.5, 5.0)  # the fixed ratio window logged for Figure 1 (the paper's [0.5, 5])
# testing hook
ddp_union_batch = False  # every rank draws the whole global batch and keeps its shard: DDP == one process, exactly
# -----------------------------------------------------------------------------
CONFIG_KEYS = [
    k for k, v in globals().items() if k.islower() and not k.startswith("_") and isinstance(v, (bool, int, float, str, tuple, dict))
]
DEFAULTS = {k: globals()[k] for k in CONFIG_KEYS}
RESUME_MAY_CHANGE = set("out_dir overwrite resume eval_interval ckpt_interval n_mistakes rl_steps backend device threads".split())
OUTPUTS = ("metrics.jsonl", "summary.json", "train.png", "ckpt.pt", "ckpt.pt.tmp")  # all this script ever writes in out_dir
USAGE = "usage: python train_tiny.py [config/NAME.py] [--key=value ...]"


def parse_config(argv, check=True):
    """The defaults, then the config files, then --key=value: a SimpleNamespace of every key (configurator.py)."""
    cfg = configurator.parse(argv, DEFAULTS)
    if check:
        check_config(cfg)
    return SimpleNamespace(**cfg)


def help_text(cfg):
    how = configurator.__doc__.strip().split("\n\n")
    lines = [USAGE, "", __doc__.strip().split("\n\n")[0], "", how[0], "", how[-1], ""]
    return "\n".join(lines + ["config keys (--key=default  # what it does):", *configurator.help_lines(__file__, cfg)])


def check_config(c, world_size=1):
    def need(ok, msg):
        if not ok:
            raise ConfigError(msg)

    choices = {"method": sorted(ctpo.METHODS), "backend": list(ctpo.BACKENDS), "agg": list(ctpo.AGGS), "device": ["auto", "cpu", "cuda"],
               "task": list(tasks.TASKS), "optimizer": ["adam", "sgd"]}  # fmt: skip
    for key, allowed in choices.items():
        need(c[key] in allowed, f"--{key}: expected one of {allowed}, got {c[key]!r}")
    try:
        ctpo.method_config(c["method"], **c["loss_kwargs"])
    except (TypeError, ValueError) as e:
        raise ConfigError(f"--loss_kwargs: {e}") from None
    for k in "n_pairs n_prompts num_minibatches ppo_epochs eval_size eval_interval n_layer n_head n_embd sft_batch".split():
        need(c[k] >= 1, f"--{k}: need >= 1, got {c[k]}")
    for k in "rl_steps sft_steps ckpt_interval n_mistakes lr_warmup threads rollout_lag grad_clip".split():
        need(c[k] >= 0, f"--{k}: need >= 0, got {c[k]}")
    for k in ("lr", "sft_lr", "temperature"):
        need(c[k] > 0 and math.isfinite(c[k]), f"--{k}: need a finite value > 0, got {c[k]}")
    lo, hi, fw = c["min_digits"], c["max_digits"], c["fixed_window"]
    need(1 <= lo <= hi <= 256, f"--min_digits/--max_digits: need 1 <= min <= max <= 256, got {lo}, {hi}")
    need(0.0 <= c["teacher_noise"] < 1.0, f"--teacher_noise: need a probability in [0, 1), got {c['teacher_noise']}")
    need(0.0 <= c["partial_credit"] <= 1.0, f"--partial_credit: need a value in [0, 1], got {c['partial_credit']}")
    need(c["group_size"] >= 2, f"--group_size: need >= 2 (the advantage is relative to the group), got {c['group_size']}")
    need(c["n_embd"] % c["n_head"] == 0, f"--n_embd: need a multiple of n_head={c['n_head']}, got {c['n_embd']}")
    need(len(fw) == 2 and 0 < fw[0] < 1 < fw[1], f"--fixed_window: need (lo, hi) with 0 < lo < 1 < hi, got {fw}")
    need(c["out_dir"] != "", "--out_dir: must not be empty")
    need(not (c["resume"] and c["overwrite"]), "--resume and --overwrite: choose one")
    per_rank, rem = divmod(c["n_prompts"], world_size)
    need(rem == 0, f"--n_prompts: need a multiple of the number of ranks ({world_size}), got {c['n_prompts']}")
    need(per_rank % c["num_minibatches"] == 0, f"--n_prompts: need the prompts per rank ({per_rank}) to be a multiple of num_minibatches="
                                               f"{c['num_minibatches']}")  # fmt: skip
    need(c["sft_batch"] % world_size == 0, f"--sft_batch: need a multiple of the number of ranks ({world_size}), got {c['sft_batch']}")


# -----------------------------------------------------------------------------
# the run: setup; held-out split, model; warm start (or resume); every RL step: rollout, advantages, update, log, eval, checkpoint


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if "-h" in argv or "--help" in argv:  # the keys with the defaults that the given config files set
        print(help_text(vars(parse_config([a for a in argv if a not in ("-h", "--help")], check=False))))
        return None
    C = parse_config(argv)
    t_start = time.time()
    if C.threads:  # the toy's tensors are tiny: threads mostly wait on each other, and spin-wait when a core is busy
        torch.set_num_threads(C.threads)
    torch.set_flush_denormal(True)  # near-converged weights and Adam moments go subnormal: 30x slower on a CPU
    ddp = int(os.environ.get("RANK", -1)) != -1
    device_type = "cuda" if C.device == "cuda" or (C.device == "auto" and torch.cuda.is_available()) else "cpu"
    if device_type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device=cuda: no CUDA device is available (use --device=auto or --device=cpu)")
    if ddp:
        __import__("torch.distributed.nn")  # now, not later through DDP: imported once the group exists, it holds the group
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    try:  # everything after init_process_group, so that any error still destroys the group below
        rank, world = (dist.get_rank(), dist.get_world_size()) if ddp else (0, 1)
        device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if device_type == "cuda" else "cpu")
        if device_type == "cuda":
            torch.cuda.set_device(device)
        check_config(vars(C), world)
        result = train(C, rank, world, device, ddp, t_start, configurator.split_argv(argv)[0])
        if ddp:
            dist.barrier()  # leave together: a rank that tears gloo down while rank 0 still writes can abort
        return result
    finally:
        if ddp:  # free the group (gloo's threads joined) now: at exit a gloo thread still dropping a tensor takes the GIL
            # mid-finalisation and aborts the rank. Nothing may hold it: an error's traceback (train()'s frame) is cleared, cycles collected
            if sys.exc_info()[2] is not None:
                traceback.clear_frames(sys.exc_info()[2])
            gc.collect()
            dist.destroy_process_group()


def train(C, rank, world, device, ddp, t_start, config_files):
    try:  # the loss backend actually used: fail now (ext missing, or a method it does not cover), not after the warm start
        z, on = torch.zeros(1, 2, device=device), torch.ones(1, 2, dtype=torch.bool, device=device)
        backend_used = ctpo.policy_loss(z, z, z[:, 0], on, method=C.method, backend=C.backend, **C.loss_kwargs)[1]["backend"]
    except RuntimeError as e:
        raise ConfigError(f"--backend={C.backend}: {e}") from None
    ckpt_path, metrics_path = prepare_out_dir(C, rank, ddp)
    task = tasks.make(vars(C))
    torch.manual_seed(C.seed)  # the same init on every rank (DDP also broadcasts rank 0's)
    random.seed(C.seed)
    eval_prompts, eval_targets = task.batch(C.eval_size, torch.Generator().manual_seed(C.eval_seed))
    rank_seed = C.seed if C.ddp_union_batch else C.seed + 1000 * rank  # ranks draw different data unless testing
    gens = {"data": torch.Generator().manual_seed(rank_seed), "sample": torch.Generator(device=device).manual_seed(rank_seed + 1)}
    problems = tasks.Problems(task, gens["data"], eval_prompts)
    per_rank = lambda n: n if C.ddp_union_batch else n // world  # problems each rank draws
    shard = lambda x: x.view(world, -1, *x.shape[1:])[rank] if C.ddp_union_batch else x  # union batch: keep this rank's block
    gconf = ctpo.GPTConfig(vocab_size=task.vocab_size, block_size=task.prompt_len + task.max_new, n_layer=C.n_layer, n_head=C.n_head,
                           n_embd=C.n_embd)  # fmt: skip
    raw_model = ctpo.GPT(gconf).to(device)
    model = DDP(raw_model, device_ids=[device.index] if device.type == "cuda" else None) if ddp else raw_model
    optimizer = (torch.optim.Adam if C.optimizer == "adam" else torch.optim.SGD)(raw_model.parameters(), lr=C.lr)
    sampler = copy.deepcopy(raw_model).eval() if C.rollout_lag else raw_model  # rollout_lag: a copy that holds the lagged policy

    def evaluate(show):  # held-out greedy exact match and sampled reward (tasks.evaluate), each rank on its shard
        p, t = eval_prompts[rank::world].to(device), eval_targets[rank::world].to(device)
        sums = tasks.evaluate(raw_model, task, p, t, C.temperature, C.partial_credit, max(1, 128 // world), 1 + rank, show * (rank == 0))
        sums = all_sum(sums)
        return (sums[0] / sums[1]).item(), (sums[2] / sums[3]).item()

    save = lambda step, elapsed: checkpoint(ckpt_path, raw_model, optimizer, gens, C, step, history, elapsed, rank, world, snapshots)
    log0(rank, f"ctpo toy | {task.name} | {sum(p.numel() for p in raw_model.parameters()) / 1e3:.0f}k params | {device} x {world} | "
               f"{torch.get_num_threads()} threads | method {C.method}")  # fmt: skip

    # ---- phase 1: the supervised warm start (sft_steps of AdamW on the answer's token-mean cross-entropy), or resume
    if C.resume:
        start_step, history, t_origin, snapshots = load_checkpoint(ckpt_path, metrics_path, raw_model, optimizer, gens, C, rank, world, ddp)
    else:
        sft = torch.optim.AdamW(raw_model.parameters(), lr=C.sft_lr, weight_decay=0.0)
        model.train()
        for it in range(C.sft_steps):
            for group in sft.param_groups:  # cosine from sft_lr to sft_lr / 10
                group["lr"] = C.sft_lr * (0.1 + 0.45 * (1 + math.cos(math.pi * it / max(1, C.sft_steps))))
            prompts, targets = (shard(x).to(device) for x in problems(per_rank(C.sft_batch)))
            targets = tasks.teacher(task, targets, C.teacher_noise, gens["data"])
            idx = torch.cat([prompts, targets], dim=1)
            logits = model(idx[:, :-1])[:, task.prompt_len - 1 :]  # row t scores targets[:, t]
            tmask = torch.arange(targets.size(1), device=device)[None, :] <= (targets != tasks.PAD).sum(dim=1, keepdim=True)
            ce = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), reduction="none").view_as(targets)
            loss = (ce * tmask).sum() / all_sum(tmask.sum().float()) * world  # DDP averages over ranks: a global token mean
            sft.zero_grad(set_to_none=True)
            loss.backward()
            sft.step()
            if it % 25 == 0 or it + 1 == C.sft_steps:  # a line every few seconds
                log0(rank, f"warm start {it + 1:4d}/{C.sft_steps} | loss {((ce * tmask).sum() / tmask.sum()).item():.4f} | "
                           f"{time.time() - t_start:.1f}s")  # fmt: skip
        acc, ev_reward = evaluate(C.n_mistakes)
        start_step, t_origin, snapshots = 1, t_start, []  # snapshots: the policies of the last rollout_lag + 1 steps, oldest first
        history = {"accuracy_before": acc, "reward_before": ev_reward, "sft_seconds": time.time() - t_start}
        log0(rank, f"after the warm start: held-out accuracy {100 * acc:.1f}% | sampled reward {ev_reward:.3f}")
        if rank == 0:
            with open(metrics_path, "w") as f:
                f.write(json.dumps({"step": 0, "acc": acc, "eval_reward": ev_reward, "elapsed": time.time() - t_start}) + "\n")
        save(0, time.time() - t_start)

    # ---- phase 2: RL
    n_local = C.n_prompts // world  # mini-batch j holds the groups of prompts j, j + M, ... (a group is G consecutive rows)
    minibatches = [torch.arange(n_local * C.group_size).view(n_local, C.group_size)[j :: C.num_minibatches].flatten().to(device)
                   for j in range(C.num_minibatches)]  # fmt: skip
    step = start_step - 1
    for step in range(start_step, C.rl_steps + 1):
        t0 = time.time()
        for group in optimizer.param_groups:
            group["lr"] = C.lr * min(1.0, step / max(1, C.lr_warmup))
        model.eval()  # rollout: G completions per prompt, sampled with the KV cache by the old policy (now's, or rollout_lag steps old)
        if C.rollout_lag:  # every rank holds the same snapshots (the same parameters)
            snapshots = [*snapshots, {k: v.detach().clone() for k, v in raw_model.state_dict().items()}][-C.rollout_lag - 1 :]
            sampler.load_state_dict(snapshots[0])
        prompts, targets = (x.to(device).repeat_interleave(C.group_size, dim=0) for x in problems(per_rank(C.n_prompts)))  # (B, P)
        roll = ctpo.sample(sampler, prompts, task.max_new, tasks.EOS, tasks.PAD, temperature=C.temperature, generator=gens["sample"])
        if C.ddp_union_batch:  # (responses are as long as the longest in the global batch: same shapes everywhere)
            prompts, targets = shard(prompts), shard(targets)
            roll = ctpo.Rollout(shard(roll.responses), shard(roll.mask), shard(roll.logp))
        rewards, exact, resp_len = task.score(roll.responses, roll.mask, targets, C.partial_credit)
        adv = ctpo.group_advantages(rewards, C.group_size, scale=C.adv_scale)  # advantages: the reward relative to the group
        model.train()  # update: ppo_epochs x num_minibatches optimizer steps on this one rollout
        stats = torch.zeros(7, dtype=torch.float64, device=device)  # tokens, clipped high/low/dual, sum of losses, of ratios, grad norms
        extremes = torch.full((2,), -math.inf, dtype=torch.float64, device=device)  # max ratio, -min ratio
        pos = torch.zeros(len(figure1.POS_KEYS), task.max_new, dtype=torch.float64, device=device)  # Figure 1 sums per position
        for _epoch in range(C.ppo_epochs):
            for rows in minibatches:
                mask, old_logp, a = roll.mask[rows], roll.logp[rows], adv[rows]
                logp = ctpo.token_logprobs(model, prompts[rows], roll.responses[rows], mask, C.temperature)
                # normalised by GLOBAL counts (all ranks), so that the ranks' losses add up to the union batch's
                num_tokens = all_sum(mask.sum().to(torch.float64)) if C.agg == "token-mean" else None
                num_seqs = all_sum(torch.tensor(float(rows.numel()), dtype=torch.float64, device=device)) if C.agg != "token-mean" else None
                loss, m = ctpo.policy_loss(logp, old_logp, a, mask, method=C.method, agg=C.agg, backend=C.backend, num_tokens=num_tokens,
                                           num_seqs=num_seqs, **C.loss_kwargs)  # fmt: skip
                optimizer.zero_grad(set_to_none=True)
                (loss * world).backward()  # DDP averages gradients over ranks: * world makes it their sum
                grad_norm = torch.nn.utils.clip_grad_norm_(raw_model.parameters(), C.grad_clip if C.grad_clip > 0 else math.inf)
                optimizer.step()
                with torch.no_grad():
                    n = m["n_tokens"].double()
                    vals = [n, m["n_clip_high"], m["n_clip_low"], m["n_clip_dual"], loss.detach(), m["ratio_mean"] * n, grad_norm]
                    stats += torch.stack([v.double() for v in vals])
                    extremes = torch.maximum(extremes, torch.stack([m["ratio_max"], -m["ratio_min"]]).double())
                    pos += figure1.position_sums(logp.detach(), old_logp, mask, a, m["clipped"], C.fixed_window, task.max_new)
        # log (every rank reduces the same row), evaluate, checkpoint
        row = metrics_row(step, stats, extremes, pos, (rewards, exact, resp_len), C, world, t0, t_origin)
        line = f"step {step:4d} | reward {row['reward']:.3f} | exact {100 * row['exact']:5.1f}%"
        if step % C.eval_interval == 0 or step == C.rl_steps:
            row["acc"], row["eval_reward"] = evaluate(C.n_mistakes if step == C.rl_steps else 0)
            line += f" | held-out acc {100 * row['acc']:5.1f}%"
        clip = f"{row['clip_frac_high']:.3f}/{row['clip_frac_low']:.3f}/{row['clip_frac_dual']:.3f}"
        log0(rank, f"{line} | clip h/l/d {clip} | len {row['mean_len']:.1f} | {row['tok_per_s']:.0f} tok/s | {row['elapsed']:.1f}s")
        if rank == 0:
            with open(metrics_path, "a") as f:
                f.write(json.dumps(row) + "\n")
        if (C.ckpt_interval and step % C.ckpt_interval == 0) or step == C.rl_steps:
            save(step, time.time() - t_origin)
    if rank == 0:
        return write_summary(C, task, metrics_path, step, history, time.time() - t_origin, backend_used, world, device, config_files)
    return None


# -----------------------------------------------------------------------------
# helpers: setup, evaluation, the Figure 1 sums, the metrics row, checkpoints, the summary and its plot


def all_sum(x, op=dist.ReduceOp.SUM):  # a no-op in a single process
    if dist.is_initialized():
        dist.all_reduce(x, op=op)
    return x


def log0(rank, *args):
    if rank == 0:
        print(*args, flush=True)


def prepare_out_dir(C, rank, ddp):
    """out_dir is in use only when it holds this script's outputs (OUTPUTS): never clobber them silently.
    Every rank checks before rank 0 touches anything; --overwrite deletes only OUTPUTS, never other files."""
    ckpt_path, metrics_path = os.path.join(C.out_dir, "ckpt.pt"), os.path.join(C.out_dir, "metrics.jsonl")
    if os.path.exists(C.out_dir) and not os.path.isdir(C.out_dir):
        raise ConfigError(f"--out_dir: {C.out_dir!r} is a file, not a folder")
    ours = [name for name in OUTPUTS if os.path.exists(os.path.join(C.out_dir, name))]
    if ours and not (C.overwrite or C.resume):
        raise ConfigError(f"--out_dir: {C.out_dir!r} holds a previous run ({', '.join(ours)}); "
                          "pass --resume=True to continue it or --overwrite=True to replace it")  # fmt: skip
    if C.resume and not os.path.exists(ckpt_path):
        raise ConfigError(f"--resume: no checkpoint at {ckpt_path}")
    if ddp:
        dist.barrier()
    if rank == 0:
        os.makedirs(C.out_dir, exist_ok=True)
        for name in ours if C.overwrite else ():
            os.remove(os.path.join(C.out_dir, name))
    return ckpt_path, metrics_path


def metrics_row(step, stats, extremes, pos, scored, C, world, t0, t_origin):
    """One step's sums, reduced over the ranks, as the metrics.jsonl row (every rank gets the same row)."""
    all_sum(extremes, op=dist.ReduceOp.MAX)
    stats[6] /= world  # the gradient (after DDP's all-reduce) and its norm are the same on every rank
    stats, pos = all_sum(stats), all_sum(pos)
    roll = all_sum(torch.stack([x.sum().double() for x in (*scored, torch.ones_like(scored[0]))]))  # reward, exact, length, count
    nr, ntok, updates = roll[3].item(), max(1.0, stats[0].item()), C.ppo_epochs * C.num_minibatches
    row = {"step": step, "reward": roll[0].item() / nr, "exact": roll[1].item() / nr,  # rollout (training prompts, sampled)
           "mean_len": roll[2].item() / nr,  # response tokens, end token included
           "loss": stats[4].item() / updates, "grad_norm": stats[6].item() / updates,  # before clipping, mean over the updates
           "clip_frac_high": stats[1].item() / ntok, "clip_frac_low": stats[2].item() / ntok, "clip_frac_dual": stats[3].item() / ntok,
           "ratio_mean": stats[5].item() / ntok, "ratio_max": extremes[0].item(), "ratio_min": -extremes[1].item(),
           "tok_per_s": roll[2].item() / (time.time() - t0), "elapsed": time.time() - t_origin}  # fmt: skip
    last = int(pos[0].nonzero().max().item()) + 1 if bool(pos[0].any()) else 0
    row["pos"] = {k: pos[i, :last].tolist() for i, k in enumerate(figure1.POS_KEYS)}
    return row


def checkpoint(path, model, optimizer, gens, C, step, history, elapsed, rank, world, snapshots):
    """ckpt.pt, written atomically by rank 0, with every rank's RNG state, the lagged policies and the length of metrics.jsonl now."""
    rng = {"torch": torch.get_rng_state(), "python": random.getstate(), **{k: g.get_state() for k, g in gens.items()}}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    states = [rng] * world
    if world > 1:
        dist.all_gather_object(states, rng)
    if rank == 0:
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step, "config": vars(C), "world_size": world,
                 "rng": states, "history": history, "wall_seconds": elapsed, "snapshots": snapshots,
                 "metrics_bytes": os.path.getsize(os.path.join(C.out_dir, "metrics.jsonl"))}  # fmt: skip
        with open(path + ".tmp", "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(path + ".tmp", path)  # atomic: a crash leaves the previous checkpoint intact


def load_checkpoint(path, metrics_path, model, optimizer, gens, C, rank, world, ddp):
    """Model, optimizer, RNG state, history, snapshots from ckpt.pt; metrics.jsonl cut back. -> (next step, history, t_origin, snapshots)"""
    ck = torch.load(path, map_location="cpu", weights_only=False)  # our own file: it holds RNG states
    bad = [k for k in CONFIG_KEYS if k not in RESUME_MAY_CHANGE and ck["config"].get(k, DEFAULTS[k]) != getattr(C, k)]
    if bad:
        raise ConfigError(f"--resume: {', '.join(bad)} differ from the checkpoint's config; only {sorted(RESUME_MAY_CHANGE)} may change")
    if ck["world_size"] != world:
        raise ConfigError(f"--resume: the checkpoint was written with {ck['world_size']} ranks, this run has {world}")
    model.load_state_dict(ck["model"])
    optimizer.load_state_dict(ck["optimizer"])
    s = ck["rng"][rank]
    torch.set_rng_state(s["torch"])
    random.setstate(s["python"])
    for k, g in gens.items():
        g.set_state(s[k])
    if "cuda" in s and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])
    if os.path.getsize(metrics_path) < ck["metrics_bytes"]:
        raise ConfigError(f"--resume: {metrics_path} is shorter than when {path} was written; it was edited or replaced")
    if ddp:
        dist.barrier()  # every rank has checked the file before rank 0 truncates it
    if rank == 0:
        os.truncate(metrics_path, ck["metrics_bytes"])  # drop rows written after the checkpoint
    log0(rank, f"resumed from {path} at RL step {ck['step']}")
    return ck["step"] + 1, ck["history"], time.time() - ck["wall_seconds"], ck.get("snapshots", [])


def write_summary(C, task, metrics_path, step, history, wall, backend_used, world, device, config_files):
    with open(metrics_path) as f:
        rows = [json.loads(line) for line in f]
    ev, rl = [r for r in rows if "acc" in r], [r for r in rows if "reward" in r]
    mean = lambda xs: sum(xs) / max(1, len(xs))
    summary = {
        "method": C.method, "seed": C.seed, "rl_steps": step,
        "accuracy_before": history["accuracy_before"], "accuracy_after": ev[-1]["acc"],
        "reward_before": history["reward_before"], "reward_after": ev[-1]["eval_reward"],
        "reward_definition": "mean reward of sampled completions (temperature) on 128 held-out prompts x 4",
        "train_reward_first": rl[0]["reward"] if rl else None, "train_reward_last10": mean([r["reward"] for r in rl[-10:]]),
        "mean_response_len": mean([r["mean_len"] for r in rl]), "mean_response_len_definition": "sampled RL responses, end token included",
        "clip_frac": mean([r["clip_frac_high"] + r["clip_frac_low"] + r["clip_frac_dual"] for r in rl]),
        "wall_seconds": wall, "warm_start_seconds": history["sft_seconds"],
        "backend_used": backend_used,  # auto falls back to python when the extension is missing
        "world_size": world, "device": str(device), "threads": torch.get_num_threads(), "config_files": list(config_files),
        "config": vars(C),
    }  # fmt: skip
    with open(os.path.join(C.out_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    figure1.plot_run(rows, os.path.join(C.out_dir, "train.png"), f"{task.name}, {C.method}, seed {C.seed}")
    print(f"accuracy {100 * summary['accuracy_before']:.1f}% -> {100 * summary['accuracy_after']:.1f}% | reward "
          f"{summary['reward_before']:.3f} -> {summary['reward_after']:.3f} | {wall:.1f}s | {C.out_dir}/summary.json")  # fmt: skip
    return summary


if __name__ == "__main__":
    try:
        main()
    except ConfigError as e:
        print(f"train_tiny.py: error: {e}", file=sys.stderr)
        sys.exit(2)
