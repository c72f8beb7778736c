"""CTPO: Cumulative Token Policy Optimization, in one readable file.

Reference: "Rethinking Importance Sampling in LLM Policy Optimization: A Cumulative Token Perspective", Zhang, Ye,
Jin, Yu, Xiong, Sahu, Jiang, arXiv 2605.07331 (2026); the authors' code is the policy-loss mode `cum-token-cumprod-la`
of their verl fork (horizon-llm/CTPO). Related: PPO (Schulman et al. 2017), GRPO (Shao et al. 2024), Dr. GRPO (Liu
et al. 2025), GSPO (Zheng et al. 2025). The model follows nanoGPT (Karpathy).

The one idea. Data is sampled by an old policy pi_old; we update pi. Every token-level gradient term grad log
pi(a_t|s_t) * A_t needs an importance weight. With delta_t = log pi - log pi_old:

    token      (PPO / GRPO)  w_t = r_t = exp(delta_t)              cheap, biased (ignores the prefix)
    sequence                 w_t = prod_{t'<=H} r_t'               unbiased, variance explodes with H
    gspo                     w_t = (prod_{t'<=H} r_t')^(1/H)       stable, not an exact correction
    cumulative (CTPO)        w_t = rho_t = prod_{t'<=t} r_t'       unbiased for prefix advantages,
                                                                   strictly lower variance than sequence

log rho_t is a random walk: its spread grows like sqrt(t). So CTPO clips in log space with a window that widens
with the 1-indexed response position t:  log rho_t in [-clip_low * t^p, clip_high * t^p].

Sections: model | sampling, log-probs | advantages | ratios | clipping | the loss (token_losses, aggregate,
policy_loss) | what a reader may skip: knob checks, metrics, the call into the fused kernel (input checks:
ctpo_checks.py; the kernel's Python side: ctpo_ext.py).
"""

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

import ctpo_ext  # the fused op (csrc/): its loader and conventions; importing it builds nothing
from ctpo_checks import AGGS, BACKENDS, check_inputs, check_values  # noqa: F401 (input checks: skippable; BACKENDS public)

# -----------------------------------------------------------------------------
# The policy: a tiny tokenizer-free GPT (nanoGPT, minus the parts a toy does not need)


@dataclass
class GPTConfig:
    vocab_size: int = 16  # tokens are characters of the toy task; no tokenizer
    block_size: int = 64  # longest prompt + response the model ever sees
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0  # RL wants pi_old == pi at step 0, so no dropout by default


class KVCache:  # per-layer key/value buffers: sampling costs one token of compute per step
    def __init__(self, config, batch_size, max_len, device, dtype):
        shape = (batch_size, config.n_head, max_len, config.n_embd // config.n_head)
        self.k, self.v = ([torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)] for _ in "kv")
        self.pos = 0  # number of positions already written


class CausalSelfAttention(nn.Module):  # multi-head causal attention; with a cache, new queries see every cached key
    def __init__(self, config):
        super().__init__()
        assert config.n_embd % config.n_head == 0
        self.c_attn, self.c_proj = nn.Linear(config.n_embd, 3 * config.n_embd), nn.Linear(config.n_embd, config.n_embd)
        self.n_head, self.dropout = config.n_head, config.dropout

    def forward(self, x, cache=None, layer=0):
        B, L, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (z.view(B, L, self.n_head, C // self.n_head).transpose(1, 2) for z in (q, k, v))  # (B, nh, L, hs)
        if cache is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0)
        else:
            p = cache.pos
            cache.k[layer][:, :, p : p + L], cache.v[layer][:, :, p : p + L] = k, v
            k, v = cache.k[layer][:, :, : p + L], cache.v[layer][:, :, : p + L]  # (B, nh, p+L, hs)
            # query i (absolute position p+i) may attend to keys 0..p+i
            allowed = torch.ones(L, p + L, dtype=torch.bool, device=x.device).tril(diagonal=p)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, L, C))


class Block(nn.Module):  # pre-norm transformer block: x + attn(ln(x)), then x + mlp(ln(x))
    def __init__(self, config):
        super().__init__()
        C = config.n_embd
        self.ln_1, self.attn, self.ln_2 = nn.LayerNorm(C), CausalSelfAttention(config), nn.LayerNorm(C)
        self.mlp = nn.Sequential(nn.Linear(C, 4 * C), nn.GELU(), nn.Linear(4 * C, C), nn.Dropout(config.dropout))

    def forward(self, x, cache=None, layer=0):
        x = x + self.attn(self.ln_1(x), cache, layer)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):  # decoder-only transformer: the logits at position i score the token at position i + 1
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.wte, self.wpe = nn.Embedding(config.vocab_size, config.n_embd), nn.Embedding(config.block_size, config.n_embd)
        self.blocks = nn.ModuleList([Block(config) for _ in range(config.n_layer)])
        self.ln_f = nn.LayerNorm(config.n_embd)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.wte.weight = self.lm_head.weight  # weight tying, as in GPT-2
        self.apply(self._init_weights)

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)

    def forward(self, idx, cache=None):
        L, start = idx.size(1), 0 if cache is None else cache.pos
        if start + L > self.config.block_size:
            raise ValueError(f"idx: sequence of length {start + L} exceeds block_size {self.config.block_size}")
        x = self.wte(idx) + self.wpe(torch.arange(start, start + L, device=idx.device))  # (B, L, C)
        for i, block in enumerate(self.blocks):
            x = block(x, cache, i)
        if cache is not None:
            cache.pos += L
        return self.lm_head(self.ln_f(x))  # (B, L, V)


# -----------------------------------------------------------------------------
# Sampling (behaviour policy pi_old) and per-token log-probs (current policy pi)


@dataclass
class Rollout:
    responses: torch.Tensor  # (B, T) long; pad_id after EOS
    mask: torch.Tensor  # (B, T) bool; True for every sampled token, EOS included
    logp: torch.Tensor  # (B, T) float32 log pi_old(a_t|s_t) of the sampled tokens; 0 where mask is False


@torch.no_grad()
def sample(model, prompts, max_new_tokens, eos_id, pad_id, temperature=1.0, top_k=None, generator=None):
    """Sample responses with a KV cache: the tokens, response mask and behaviour log-probs (a Rollout).
    prompts: (B, P) long, one length P. The log-probs are the temperature-scaled model's, which `token_logprobs`
    recomputes exactly; top_k samples a truncated distribution whose log-probs differ (as in every recompute-based
    RL trainer): keep top_k=None when the ratio must be exact."""
    if prompts.dim() != 2 or prompts.dtype != torch.long:
        raise ValueError(f"prompts: expected a (B, P) long tensor, got {tuple(prompts.shape)} {prompts.dtype}")
    if not temperature > 0:
        raise ValueError(f"temperature: expected > 0 (use top_k=1 for greedy decoding), got {temperature}")
    B, P = prompts.shape
    cache = KVCache(model.config, B, P + max_new_tokens, prompts.device, next(model.parameters()).dtype)
    logits = model(prompts, cache)[:, -1]  # (B, V) scores the first response token
    responses = torch.full((B, max_new_tokens), pad_id, dtype=torch.long, device=prompts.device)
    mask = torch.zeros(B, max_new_tokens, dtype=torch.bool, device=prompts.device)
    logp = torch.zeros(B, max_new_tokens, dtype=torch.float32, device=prompts.device)
    done, T = torch.zeros(B, dtype=torch.bool, device=prompts.device), 0
    for i in range(max_new_tokens):
        scores = logprobs = F.log_softmax(logits.float() / temperature, dim=-1)  # (B, V)
        if top_k is not None:
            kth = torch.topk(scores, min(top_k, scores.size(-1)), dim=-1).values[:, -1:]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        tok = torch.multinomial(F.softmax(scores, dim=-1), 1, generator=generator).squeeze(1)  # (B,)
        live, T = ~done, i + 1
        responses[:, i] = torch.where(live, tok, pad_id)
        mask[:, i] = live  # the EOS token itself is a policy action: it stays in the loss
        logp[:, i] = torch.where(live, logprobs.gather(1, tok[:, None]).squeeze(1), 0.0)
        done |= tok == eos_id
        if bool(done.all()) or i == max_new_tokens - 1:
            break
        logits = model(tok[:, None], cache)[:, -1]
    return Rollout(responses[:, :T], mask[:, :T], logp[:, :T])


def token_logprobs(model, prompts, responses, mask, temperature=1.0):
    """log pi(a_t | s_t) for every response token, in one batched forward. Returns (B, T) float32. The logits at
    position i score token i + 1: response token P + t is scored at P + t - 1. Padding (mask False) gets exactly 0,
    whatever its id (pad may equal EOS)."""
    idx = torch.cat([prompts, responses], dim=1)  # (B, P+T)
    logits = model(idx[:, :-1])[:, prompts.size(1) - 1 :]  # (B, T, V): row t scores responses[:, t]
    logp = F.log_softmax(logits.float() / temperature, dim=-1).gather(2, responses.unsqueeze(2)).squeeze(2)  # (B, T)
    return torch.where(mask.bool(), logp, torch.zeros_like(logp))


# -----------------------------------------------------------------------------
# Advantages: one outcome advantage per response, relative to its group (GRPO)


def group_advantages(rewards, group_size, scale=True, eps=1e-6):
    """GRPO group-relative advantage A_i = (R_i - mean_group) / std_group; scale=False is Dr. GRPO.
    rewards: (B,) float, the G = group_size responses to one prompt in consecutive rows. Returns (B,) float32 (float64
    for float64 rewards). A group of equal rewards carries no signal and gets exactly A = 0 (its float mean can be off
    by an ulp, never to be divided by its tiny std). ValueError for a bad shape or group_size."""
    if not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size: expected a positive int, got {group_size!r}")
    if rewards.dim() != 1 or rewards.numel() % group_size != 0:
        raise ValueError(f"rewards: expected (B,) with B a multiple of group_size={group_size}, got {tuple(rewards.shape)}")
    r = rewards.to(torch.promote_types(rewards.dtype, torch.float32)).view(-1, group_size)  # (N, G)
    equal = (r == r[:, :1]).all(dim=1, keepdim=True)  # (N, 1) decided exactly, not by a rounded std
    adv = r - r.mean(dim=1, keepdim=True)
    if scale:
        std = r.std(dim=1, keepdim=True) if group_size > 1 else torch.zeros_like(adv)
        adv = torch.where(std > eps, adv / std.clamp(min=eps), torch.zeros_like(adv))  # std <= eps: no signal either
    return torch.where(equal, torch.zeros_like(adv), adv).view(-1)


# -----------------------------------------------------------------------------
# The importance-ratio family: each maps (delta = logp - old_logp, mask) to log w_t, (B, T).
# Stop-gradient form (the default): log w_t = sg(value) + delta_t - sg(delta_t): the method's ratio as value, but the
# gradient w_t * grad log pi(a_t|s_t) only, the paper's estimator sum_t rho_t A_t grad log pi(a_t|s_t). Differentiating
# the product itself adds grad log pi(a_t'|s_t') A_t for every t' < t, a noisier estimator: stop_gradient=False, for
# teaching and for gradcheck (whose finite differences see the value).


def response_position(mask):
    """t: the 1-indexed count of response tokens (mask = 1) so far, (B, T) long."""
    return mask.long().cumsum(dim=-1)


def _weights(value, delta, mask, stop_gradient):  # sg form: value of `value`, gradient of delta_t alone
    log_w = value.detach() + (delta - delta.detach()) if stop_gradient else value
    return torch.where(mask, log_w, torch.zeros_like(log_w))


def _row_sum(x):
    # (B, 1), summed in float64 like every S_t here and in the kernels: a float32 sum over thousands of tokens drifts,
    # and torch's float32 cumsum is float64 inside on the CPU but not on CUDA (the two would clip differently)
    return x.sum(dim=-1, keepdim=True, dtype=torch.float64).to(x.dtype)


def token_ratio(delta, mask, stop_gradient=True):
    """PPO / GRPO: log r_t = delta_t (both forms coincide)."""
    return _weights(delta, delta, mask, stop_gradient)


def sequence_ratio(delta, mask, stop_gradient=True):
    """Full sequence ratio prod_{t<=H} r_t on every token: log w_t = sum of delta over the whole response."""
    return _weights(_row_sum(torch.where(mask, delta, 0.0)).expand_as(delta), delta, mask, stop_gradient)


def gspo_ratio(delta, mask, stop_gradient=True):
    """GSPO: the geometric mean (prod_{t<=H} r_t)^(1/H) over the H response tokens, on every token."""
    mean = (_row_sum(torch.where(mask, delta, 0.0)) / mask.sum(dim=-1, keepdim=True).clamp(min=1)).expand_as(delta)  # (B, T)
    return _weights(mean, delta, mask, stop_gradient)


def cumulative_ratio(delta, mask, stop_gradient=True, geomean=False):
    """CTPO: log rho_t = S_t = sum_{t'<=t} m_t' delta_t'; geomean: S_t / t, the authors' second variant."""
    prefix = torch.where(mask, delta, 0.0).cumsum(dim=-1, dtype=torch.float64).to(delta.dtype)  # (B, T) S_t, see _row_sum
    if geomean:
        prefix = prefix / response_position(mask).clamp(min=1)
    return _weights(prefix, delta, mask, stop_gradient)


def cumulative_geomean_ratio(delta, mask, stop_gradient=True):
    """The authors' second variant, the prefix geometric mean: log w_t = S_t / t."""
    return cumulative_ratio(delta, mask, stop_gradient, geomean=True)


# -----------------------------------------------------------------------------
# Clipping: one window [lower_t, upper_t] on log w_t plus a dual-clip cap dual_t for A < 0 (Ye et al. 2020). PPO's
# ratio window [1 - eps_low, 1 + eps_high] is the constant log window [log(1 - eps_low), log1p(eps_high)]; CTPO's widens like t^p.


def ratio_clip_bounds(eps_low=0.2, eps_high=0.2, dual_c=3.0):
    """PPO's ratio clipping as log-space bounds (lower, upper, dual): scalars."""
    if not (0 <= eps_low < 1 and eps_high >= 0 and dual_c > 1):
        raise ValueError(f"ratio clip: need 0 <= eps_low < 1, eps_high >= 0, dual_c > 1; got {eps_low}, {eps_high}, {dual_c}")
    return math.log(1 - eps_low), math.log1p(eps_high), math.log(dual_c)


def adaptive_clip_bounds(t, clip_low=0.025, clip_high=0.05, clip_c=0.05, power=0.5, dtype=torch.float32):
    """CTPO's position-adaptive log window [-clip_low * t^p, clip_high * t^p], dual cap clip_c * t^p; t: (B, T). power=0:
    the fixed-window ablation. clip_c = clip_high (paper default): an A < 0 token above the window gets no gradient."""
    if not (clip_low >= 0 and clip_high >= 0 and clip_c > 0):
        raise ValueError(f"adaptive clip: need clip_low >= 0, clip_high >= 0, clip_c > 0; got {clip_low}, {clip_high}, {clip_c}")
    scale = t.clamp(min=1).double().pow(power).to(dtype)  # (B, T) t^p in float64, then rounded
    return -clip_low * scale, clip_high * scale, clip_c * scale


def clip_flags(log_w, adv, lower, upper, dual):
    """Tokens the clipped surrogate stops (paper's directions). high: A > 0, log w > upper; low: A < 0, log w < lower;
    dual: A < 0, log w > dual. A token exactly on a bound is not clipped."""
    return (adv > 0) & (log_w > upper), (adv < 0) & (log_w < lower), (adv < 0) & (log_w > dual)


def clipped_surrogate(log_w, adv, lower, upper, dual):
    """Per-token PPO surrogate with dual clip, in log space. Returns ((B, T) loss, flags). The value of
    max(-A w, -A clip(w, e^lower, e^upper)), then min(., -A e^dual) for A < 0, written with explicit regions
    (torch.where, never a mask product) so that the gradient is exactly -A w unclipped and exactly 0 clipped:
    min/max would halve it at a tie, and 0 * inf is NaN."""
    high, low, dual_hit = clip_flags(log_w, adv, lower, upper, dual)
    lower, upper, dual = (torch.as_tensor(b, dtype=log_w.dtype, device=log_w.device) for b in (lower, upper, dual))
    # sel: the log-weight each token uses, log w or its bound. Selecting before the exp keeps exp(log w) out of the
    # branches not taken: it can overflow, and the backward of an unused torch.where branch computes 0 * inf = NaN
    sel = torch.where(high, upper, torch.where(low, lower, torch.where(dual_hit, dual, log_w)))  # (B, T)
    sel = torch.where(adv == 0, torch.zeros_like(sel), sel)  # A = 0 carries no signal: never 0 * exp(overflow)
    return -adv * torch.exp(sel), (high, low, dual_hit)


# -----------------------------------------------------------------------------
# The loss, step by step: delta -> log w (importance_log_weights) -> position t and its window (clip_bounds) ->
# the clipped surrogate per token (token_losses) -> one number (aggregate) -> policy_loss

METHODS = {  # every knob can be overridden by keyword in policy_loss
    "grpo": dict(ratio="token", clip="ratio", eps_low=0.2, eps_high=0.2, dual_c=3.0),
    "gspo": dict(ratio="gspo", clip="ratio", eps_low=3e-4, eps_high=4e-4, dual_c=3.0),  # GSPO's own: 0.2 would never clip a geometric mean
    "sequence": dict(ratio="sequence", clip="ratio", eps_low=0.2, eps_high=0.2, dual_c=3.0),
    "ctpo": dict(ratio="cumulative", clip="adaptive", clip_low=0.025, clip_high=0.05, clip_c=0.05, power=0.5),
    "ctpo-fixed": dict(ratio="cumulative", clip="adaptive", clip_low=0.025, clip_high=0.05, clip_c=0.05, power=0.0),
    "ctpo-geomean": dict(ratio="cumulative-geomean", clip="adaptive", clip_low=0.025, clip_high=0.05, clip_c=0.05, power=-0.5),
}
COMMON = dict(geomean=False, stop_gradient=True, delta_max=20.0, log_w_max=10.0)  # paper: clamp delta to +-20, log rho <= 10


def importance_log_weights(logp, old_logp, mask, cfg):
    """log w_t for the method in cfg, computed in float32 or better. Returns (B, T)."""
    dtype = torch.promote_types(logp.dtype, torch.float32)
    logp = logp.to(dtype)
    delta = (logp - old_logp.to(dtype)).clamp(-cfg["delta_max"], cfg["delta_max"])  # (B, T)
    # the clamp guards the value only: d delta / d logp stays 1, as in the authors' sg(S) + logp - sg(logp)
    delta = delta.detach() + (logp - logp.detach())
    if cfg["ratio"] == "cumulative":
        log_w = cumulative_ratio(delta, mask, cfg["stop_gradient"], cfg["geomean"])
    else:
        log_w = RATIOS[cfg["ratio"]](delta, mask, cfg["stop_gradient"])
    return log_w.clamp(max=cfg["log_w_max"])  # exp() of a long sum must not overflow


def clip_bounds(t, cfg, dtype=torch.float32):
    """(lower, upper, dual) log-space bounds of the method in cfg: scalars or (B, T) tensors."""
    if cfg["clip"] == "ratio":
        return ratio_clip_bounds(cfg["eps_low"], cfg["eps_high"], cfg["dual_c"])
    return adaptive_clip_bounds(t, cfg["clip_low"], cfg["clip_high"], cfg["clip_c"], cfg["power"], dtype)


def token_losses(logp, old_logp, adv, mask, cfg):
    """The CTPO loss per token (and its PPO-family relatives), the Python reference the kernel matches:
    delta_t = clamp(logp - old_logp, +-20); S_t = sum_{t'<=t} m delta; log rho_t = min(sg(S_t) + logp_t - sg(logp_t),
    10) (importance_log_weights); t = mask tokens so far (response_position); window [-clip_low t^p, clip_high t^p],
    dual cap clip_c t^p (adaptive_clip_bounds); L_t = max(-A rho, -A clip(rho)), min(., -A e^(clip_c t^p)) for A < 0
    (clipped_surrogate); 0 off the mask. adv: (B,) or (B, T). Returns (loss (B, T), log_w, t, flags).
    """
    adv = adv[:, None].expand_as(logp) if adv.dim() == 1 else adv
    # padding may hold anything (-inf log-probs, NaN advantages): zeroed, no NaN reaches a value or a gradient
    logp, old_logp, adv = (torch.where(mask, x, torch.zeros((), dtype=x.dtype, device=x.device)) for x in (logp, old_logp, adv))
    t = response_position(mask)  # (B, T)
    log_w = importance_log_weights(logp, old_logp, mask, cfg)  # (B, T)
    lower, upper, dual = clip_bounds(t, cfg, log_w.dtype)
    loss, flags = clipped_surrogate(log_w, adv.to(log_w.dtype), lower, upper, dual)
    return torch.where(mask, loss, torch.zeros((), dtype=loss.dtype, device=loss.device)), log_w, t, tuple(f & mask for f in flags)


def kl_k3(logp, ref_logp):
    """k3 estimator of KL(pi || pi_ref) per token (Schulman 2020): exp(d) - d - 1 >= 0 with d = ref - logp."""
    d = (ref_logp - logp).clamp(-20, 20)
    return torch.exp(d) - d - 1


def aggregate(loss, mask, agg="token-mean", num_tokens=None, num_seqs=None, loss_scale_factor=None):
    """Reduce per-token losses (B, T) to a scalar over mask tokens (verl's loss_agg_mode names):
    token-mean:              sum_{i,t} L / num_tokens        (default: this batch's mask count)
    token-sum:               sum_{i,t} L
    seq-mean-token-mean:     sum_i (sum_t L / n_i) / num_seqs (default: rows with at least one token)
    seq-mean-token-sum:      sum_{i,t} L / num_seqs
    seq-mean-token-sum-norm: sum_{i,t} L / num_seqs / loss_scale_factor  (Dr. GRPO; default T, the padded length:
                             pass the max response length to keep it constant)
    With gradient accumulation or several ranks, pass the global num_tokens / num_seqs: then the micro-batch
    losses sum to exactly the full-batch loss and gradient.
    """
    if agg not in AGGS:
        raise ValueError(f"agg: unknown {agg!r}; expected one of {list(AGGS)}")
    row_loss, n_i = loss.sum(dim=-1), mask.sum(dim=-1)  # (B,), (B,)
    if agg == "token-mean":
        return row_loss.sum() / _at_least_one(n_i.sum() if num_tokens is None else num_tokens, row_loss)
    if agg == "token-sum":
        return row_loss.sum()
    denom = _at_least_one((n_i > 0).sum() if num_seqs is None else num_seqs, row_loss)
    if agg == "seq-mean-token-sum":
        return row_loss.sum() / denom
    if agg == "seq-mean-token-sum-norm":
        return row_loss.sum() / denom / _at_least_one(mask.shape[-1] if loss_scale_factor is None else loss_scale_factor, row_loss)
    return (row_loss / n_i.to(row_loss.dtype).clamp(min=1)).sum() / denom


def policy_loss(
    logp, old_logp, advantages, mask, method="ctpo", agg="token-mean", backend="python", num_tokens=None, num_seqs=None,
    ref_logp=None, beta=0.0, rollout_is_weights=None, loss_scale_factor=None, **knobs,
):  # fmt: skip
    """The CTPO loss (and its PPO/GRPO/GSPO/sequence relatives): one entry point. Returns (loss, metrics).
    logp, old_logp: (B, T) log pi(a_t|s_t) with gradient (`token_logprobs`), log pi_old(a_t|s_t) (`sample`); <= 0 at mask=1
    advantages: (B,) or (B, 1) one per response, or (B, T) per token;  mask: (B, T) bool or 0/1, 1 = a generated token
    method: grpo | gspo | sequence | ctpo | ctpo-fixed | ctpo-geomean; knobs override the preset: clip_low, clip_high,
        clip_c, power, eps_low, eps_high, dual_c, geomean, stop_gradient, delta_max, log_w_max, ratio, clip
    agg, num_tokens, num_seqs, loss_scale_factor: see `aggregate` (verl's loss_agg_mode names)
    backend: python (this file) | ext (the fused C++/CUDA op: every method, stop-gradient form only) | auto (ext if it builds)
    ref_logp, beta: optional k3 KL penalty to a frozen reference policy (paper: beta = 0)
    rollout_is_weights: optional (B, T) >= 0 weights on each token's loss (verl's truncated importance weights between
        the inference engine's and the trainer's log-probs)
    Only logp gets a gradient. The loss is float32 (float64 for float64 logp); metrics: see `loss_metrics`.
    Raises ValueError / TypeError naming a bad input or knob.
    """
    cfg, op_knobs = _method_config_cached(method, knobs)  # op_knobs: the fused op's form of cfg (ext_knobs)
    counts = (num_tokens, num_seqs, loss_scale_factor)
    mask, old_logp, adv, ref_logp, rollout_is_weights = check_inputs(
        logp, old_logp, advantages, mask, agg, backend, counts, ref_logp, beta, rollout_is_weights
    )
    use_ext = backend != "python" and ctpo_ext.usable(backend, logp, cfg["stop_gradient"])
    if use_ext:  # one fused op (ctpo_ext.py, csrc/): the loss, its metrics and the inputs' value checks in one pass
        loss, metrics = ctpo_ext.policy_loss(logp, old_logp, adv, mask, rollout_is_weights, *op_knobs, agg, *counts)
    else:
        check_values(logp, old_logp, adv, mask, rollout_is_weights)
        loss_tok, log_w, t, flags = token_losses(logp, old_logp, adv, mask, cfg)
        if rollout_is_weights is not None:  # where, not a product: padding weights may be anything
            loss_tok = torch.where(mask, loss_tok * rollout_is_weights.to(loss_tok.dtype), 0.0)
        loss = aggregate(loss_tok, mask, agg, *counts)
        metrics = loss_metrics(log_w, mask, flags)
    if beta != 0:
        # both zeroed on padding (which may hold -inf), so the backward never meets exp() of garbage there
        lp, ref = (torch.where(mask, x.float(), 0.0) for x in (logp, ref_logp))
        kl = torch.where(mask, kl_k3(lp, ref), 0.0)
        metrics["kl"] = aggregate(kl.detach(), mask, agg, *counts)
        loss = loss + beta * aggregate(kl, mask, agg, *counts)
    metrics["backend"] = "ext" if use_ext else "python"
    return loss, metrics


# =============================================================================
# What a reader may skip: the knobs' defaults and checks, metrics, and the fused op's arguments (the input checks
# are in ctpo_checks.py, the op's Python side in ctpo_ext.py)

RATIOS = {
    "token": token_ratio, "sequence": sequence_ratio, "gspo": gspo_ratio, "cumulative": cumulative_ratio,
    "cumulative-geomean": cumulative_geomean_ratio,
}  # fmt: skip
CLIP_DEFAULTS = {  # the knobs of each clipping family, for a preset switched to the other family
    "ratio": dict(eps_low=0.2, eps_high=0.2, dual_c=3.0),
    "adaptive": dict(clip_low=0.025, clip_high=0.05, clip_c=0.05, power=0.5),
}
KNOBS = {"ratio", "clip", *COMMON, *CLIP_DEFAULTS["ratio"], *CLIP_DEFAULTS["adaptive"]}
# Each numeric knob's range, checked before any work on every backend: a NaN compares False and would slip through
# the kernels' and the clamps' comparisons (clamp(x, nan) is nan; delta_max < 0 flips the clamp). inf: no clamp / cap.
KNOB_RANGES = {
    "delta_max": (lambda v: v > 0, "a number > 0 (inf: no clamp)"),
    "log_w_max": (lambda v: v >= 0, "a number >= 0 (the on-policy log w = 0 must be allowed; inf: no cap)"),
    "eps_low": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "eps_high": (lambda v: v >= 0, "a number >= 0 (inf: no upper clip)"),
    "dual_c": (lambda v: v > 1, "a number > 1 (inf: no dual clip)"),
    "clip_low": (lambda v: 0 <= v < math.inf, "a finite number >= 0"),
    "clip_high": (lambda v: 0 <= v < math.inf, "a finite number >= 0"),
    "clip_c": (lambda v: 0 < v < math.inf, "a finite number > 0"),
    "power": (lambda v: -math.inf < v < math.inf, "a finite number (0.5: the paper's sqrt(t); 0: a fixed window)"),
}


def method_config(method, **overrides):
    """The full knob dict of a preset, with overrides applied and every knob checked; unknown names are an error."""
    if not isinstance(method, str) or method not in METHODS:
        raise ValueError(f"method: unknown {method!r}; expected one of {sorted(METHODS)}")
    cfg = {**COMMON, **METHODS[method]}
    for k, v in overrides.items():
        if k not in KNOBS:
            raise TypeError(f"policy_loss: unknown keyword {k!r}; knobs are {sorted(KNOBS)}")
        cfg[k] = v
    if not all(isinstance(cfg[k], str) for k in ("ratio", "clip")) or cfg["ratio"] not in RATIOS or cfg["clip"] not in CLIP_DEFAULTS:
        raise ValueError(f"ratio / clip: unknown {cfg['ratio']!r} / {cfg['clip']!r}")
    if cfg["ratio"] == "cumulative-geomean":  # one spelling downstream: the cumulative ratio with geomean
        cfg["ratio"], cfg["geomean"] = "cumulative", True
    other = next(c for c in CLIP_DEFAULTS if c != cfg["clip"])
    cfg = {**CLIP_DEFAULTS[cfg["clip"]], **{k: v for k, v in cfg.items() if k not in CLIP_DEFAULTS[other]}}
    numeric = ("delta_max", "log_w_max", *CLIP_DEFAULTS[cfg["clip"]])
    for name in ("geomean", "stop_gradient", *numeric):
        want = "a bool" if name in ("geomean", "stop_gradient") else "a number"
        if (want == "a bool") != isinstance(cfg[name], bool) or not isinstance(cfg[name], (int, float)):
            raise TypeError(f"{name}: expected {want}, got {type(cfg[name]).__name__}")
        if name in numeric and not KNOB_RANGES[name][0](cfg[name]):
            raise ValueError(f"{name}: expected {KNOB_RANGES[name][1]}, got {cfg[name]!r}")
    return cfg


_CONFIGS = {}  # policy_loss's knobs: (method, (knob, type, value)...) -> (method_config, ext_knobs), read-only, 256 at most


def _method_config_cached(method, knobs):
    key = (method, *((k, type(v), v) for k, v in knobs.items())) if knobs else method  # with the type: True == 1, but not a number
    try:
        return _CONFIGS[key]
    except (KeyError, TypeError):  # not seen yet, or an unhashable knob (method_config says what is wrong with it)
        cfg = method_config(method, **knobs)
    out = (cfg, ext_knobs(cfg))
    if len(_CONFIGS) < 256:
        _CONFIGS[key] = out
    return out


def _at_least_one(count, like):
    # an empty batch gives loss 0, not 0/0. A Python (or symbolic) number stays one: as_tensor would make torch.compile
    # specialise on it, and recompile for every new T (the default loss_scale_factor)
    return count.to(like.dtype).clamp(min=1) if isinstance(count, torch.Tensor) else torch.sym_max(count, 1)


@torch.no_grad()
def loss_metrics(log_w, mask, flags):
    """Clip counts and fractions (high / low / dual, paper directions), weight statistics, per-position data:
    n_tokens, n_clip_* (0-dim int64); clip_frac_*, ratio_mean / min / max, ratio_q10 / q50 / q90 (`ctpo_ext.sampled_quantiles`)
    float32, all 1 (on-policy) without tokens; log_w and clipped (bool), (B, T), to plot against t (the paper's
    Figure 1). The fused op computes the same numbers (ratio_mean: its sum is in float64)."""
    high, low, dual = flags
    clipped, n = high | low | dual, mask.sum()
    nf, lw = n.clamp(min=1).float(), log_w.detach().float()
    m = {"n_tokens": n, "n_clip_high": high.sum(), "n_clip_low": low.sum(), "n_clip_dual": dual.sum()}
    for name, f in (("clip_frac_high", high), ("clip_frac_low", low), ("clip_frac_dual", dual), ("clip_frac", clipped)):
        m[name] = f.sum().float() / nf
    inf = torch.full((1,), math.inf, device=lw.device)  # a sentinel: B T may be 0
    lw_min, lw_max = (torch.cat([torch.where(mask, lw, s * math.inf).reshape(-1), s * inf]) for s in (1, -1))
    extremes = torch.stack([lw_min.amin(), lw_max.amax(), *ctpo_ext.sampled_quantiles(log_w, mask).float()])
    extremes = extremes.double().exp().float()  # as the kernel
    w = torch.cat([(torch.where(mask, lw.exp(), 0.0).sum() / nf)[None], extremes])
    w = torch.where(n == 0, 1.0, w)  # nothing to describe: the on-policy value 1, never NaN or inf
    m.update(zip(("ratio_mean", "ratio_min", "ratio_max", *(f"ratio_q{q}" for q in ctpo_ext.QUANTILES)), w.unbind()))
    m["log_w"], m["clipped"] = log_w.detach(), clipped
    return m


def ext_knobs(cfg):
    """The fused op's (ratio, lower, upper, dual, power, delta_max, log_w_max) for the method in cfg: the window on log
    w at position t is [lower t^p, upper t^p], dual cap dual t^p; PPO's ratio window is the constant one (p = 0)."""
    ratio = "cumulative-geomean" if cfg["ratio"] == "cumulative" and cfg["geomean"] else cfg["ratio"]
    if cfg["clip"] == "ratio":
        window = (*ratio_clip_bounds(cfg["eps_low"], cfg["eps_high"], cfg["dual_c"]), 0.0)
    else:
        window = (-cfg["clip_low"], cfg["clip_high"], cfg["clip_c"], cfg["power"])
    return ratio, *window, cfg["delta_max"], cfg["log_w_max"]
